"""The HTTP API: a checkout from template to refund, problem details, OpenAPI."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from zhiying.api.app import create_app
from zhiying.clock import ManualClock
from zhiying.keys.service import create_key
from zhiying.runtime import Stores

TEMPLATE = {
    "name": "满200减40",
    "benefit": {"kind": "full_reduction", "threshold": 20000, "reduction": 4000},
    "validity": {"days_after_issue": 7},
    "limits": {"quantity": 100, "budget": 400000},
}
CART = {"lines": [{"line_id": "a", "product_id": "p1", "unit_price": 12500, "quantity": 2}]}


def client(stores: Stores) -> TestClient:
    key = create_key(stores.engine, "admin", stores.clock.now())
    c = TestClient(create_app(stores))
    c.headers["Authorization"] = f"Bearer {key}"
    return c


def test_checkout_through_the_api_with_idempotent_redeem(stores: Stores) -> None:
    c = client(stores)
    t = c.post("/api/coupons/templates", json={"spec": TEMPLATE}).json()["template_id"]
    code = c.post(f"/api/coupons/templates/{t}/issue", json={"one_id": "u1"}).json()["coupon"][
        "code"
    ]
    q = c.post("/api/coupons/quote", json={"one_id": "u1", "cart": CART}).json()
    assert q["total_discount"] == 4000 and q["best"][0]["code"] == code
    lock = c.post(
        "/api/coupons/orders/o1/lock", json={"one_id": "u1", "codes": [code], "cart": CART}
    )
    assert lock.status_code == 200 and lock.json()["payable"] == 21000
    first = c.post("/api/coupons/orders/o1/redeem", json={}, headers={"Idempotency-Key": "pay1"})
    replay = c.post("/api/coupons/orders/o1/redeem", json={}, headers={"Idempotency-Key": "pay1"})
    assert first.status_code == replay.status_code == 200 and first.json() == replay.json()
    again = c.post("/api/coupons/orders/o1/redeem", json={})
    assert again.status_code == 409
    assert again.json()["errors"][0]["rule"] == "redeemed"
    ledger = c.get(f"/api/coupons/codes/{code}/ledger").json()
    assert [r["action"] for r in ledger] == ["issued", "locked", "redeemed"]
    wallet = c.get("/api/coupons/wallets/u1").json()
    assert wallet[0]["state"] == "redeemed" and wallet[0]["template_name"] == "满200减40"
    events = stores.warehouse.query("SELECT count(*) AS n FROM events").column("n")[0].as_py()
    assert events == 3  # published by the background task after each change


def test_refusals_are_problem_details_naming_the_rule(stores: Stores) -> None:
    c = client(stores)
    t = c.post("/api/coupons/templates", json={"spec": TEMPLATE}).json()["template_id"]
    code = c.post(f"/api/coupons/templates/{t}/issue", json={"one_id": "u1"}).json()["coupon"][
        "code"
    ]
    small = {"lines": [{"line_id": "a", "product_id": "p1", "unit_price": 15000}]}
    r = c.post("/api/coupons/orders/o1/lock", json={"one_id": "u1", "codes": [code], "cart": small})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["rule"] == "min_spend"
    assert "needs 200.00 in scope, cart has 150.00" in r.json()["detail"]
    unbounded = {**TEMPLATE, "benefit": {"kind": "percent_off", "percent_off_bp": 3000}}
    bad = c.post("/api/coupons/templates", json={"spec": unbounded})
    assert bad.status_code == 422


def test_routes_need_an_admin_key_and_appear_in_openapi(stores: Stores) -> None:
    anonymous = TestClient(create_app(stores))
    assert anonymous.get("/api/coupons/templates").status_code == 401
    paths = anonymous.get("/openapi.json").json()["paths"]
    assert "/api/coupons/orders/{order_id}/redeem" in paths and "/api/coupons/quote" in paths


def test_maintenance_expires_ended_coupons_and_exports_their_events(
    stores: Stores, clock: ManualClock
) -> None:
    c = client(stores)
    t = c.post("/api/coupons/templates", json={"spec": TEMPLATE}).json()["template_id"]
    code = c.post(f"/api/coupons/templates/{t}/issue", json={"one_id": "u1"}).json()["coupon"][
        "code"
    ]
    clock.advance(timedelta(days=8))  # past the 7-day validity
    swept = c.post("/api/coupons/maintenance").json()
    assert swept == {"locks_released": 0, "expired": 1, "events_published": 1}
    assert c.get("/api/coupons/wallets/u1").json()[0]["state"] == "expired"
    assert [r["action"] for r in c.get(f"/api/coupons/codes/{code}/ledger").json()] == [
        "issued",
        "expired",
    ]
    assert c.post("/api/coupons/maintenance").json()["expired"] == 0
