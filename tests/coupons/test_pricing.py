"""Pricing is pure and exact: discounts, reasons, allocation, and the best combination."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import combinations
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.coupons.factories import T0, cand, spec
from zhiying.coupons.models import Candidate, Cart, CartLine, Validity
from zhiying.coupons.pricing import allocate, price_combination, quote, stacking_refusals

FULL_200_40 = {"kind": "full_reduction", "threshold": 20000, "reduction": 4000}


def cart_of(*amounts: int, shipping: int = 0, **kw: Any) -> Cart:
    lines = tuple(CartLine(f"l{i}", f"p{i}", a) for i, a in enumerate(amounts))
    return Cart(lines, shipping_fee=shipping, **kw)


def test_full_reduction_applies_at_threshold_and_explains_shortfall() -> None:
    c = cand("A", spec(FULL_200_40))
    assert quote(cart_of(12000, 13000), [c], T0).total_discount == 4000
    refused = quote(cart_of(15000), [c], T0).refused
    assert [(r.rule, r.message) for r in refused] == [
        ("min_spend", "needs 200.00 in scope, cart has 150.00")
    ]


def test_stepped_reduction_repeats_per_threshold_up_to_cap() -> None:
    stepped = {**FULL_200_40, "stepped": True}
    assert quote(cart_of(45000), [cand("A", spec(stepped))], T0).total_discount == 8000
    capped = spec({**stepped, "max_reduction": 6000})
    assert quote(cart_of(90000), [cand("A", capped)], T0).total_discount == 6000


def test_percent_off_rounds_half_up_then_caps() -> None:
    s = spec({"kind": "percent_off", "percent_off_bp": 3000, "max_discount": 1000})
    assert quote(cart_of(2000), [cand("A", s)], T0).total_discount == 600
    assert quote(cart_of(5000), [cand("A", s)], T0).total_discount == 1000
    # 30% of 0.05 is 0.015: half up gives 0.02
    assert quote(cart_of(5), [cand("A", s)], T0).total_discount == 2


def test_fixed_amount_never_exceeds_the_amount_in_scope() -> None:
    s = spec({"kind": "fixed_amount", "amount": 5000})
    q = quote(cart_of(3000, shipping=800), [cand("A", s)], T0)
    assert (q.total_discount, q.payable) == (3000, 800)


def test_buy_twelve_get_one_frees_the_cheapest_unit_of_thirteen() -> None:
    s = spec({"kind": "buy_n_get_m", "buy": 12, "get": 1})
    beers = Cart((CartLine("a", "ipa", 800, 6), CartLine("b", "lager", 500, 7)))
    q = quote(beers, [cand("A", s)], T0)
    assert q.total_discount == 500 and q.best[0].lines[0].line_id == "b"
    twelve = Cart((CartLine("a", "ipa", 800, 12),))
    [why] = quote(twelve, [cand("A", s)], T0).refused
    assert why.message == "needs 13 units in scope (buy 12 get 1), cart has 12"


def test_free_shipping_waives_the_fee_up_to_its_cap() -> None:
    s = spec({"kind": "free_shipping", "min_spend": 9900, "max_discount": 1000})
    assert quote(cart_of(10000, shipping=1200), [cand("A", s)], T0).total_discount == 1000
    [why] = quote(cart_of(10000), [cand("A", s)], T0).refused
    assert why.rule == "no_shipping_fee"


def test_scope_excludes_lines_and_refuses_other_cities() -> None:
    s = spec(FULL_200_40, scope={"categories": ["beauty"], "exclude_brands": ["shiseido"]})
    lines = (
        CartLine("a", "p1", 15000, category="beauty", brand="lancome"),
        CartLine("b", "p2", 15000, category="beauty", brand="shiseido"),
        CartLine("c", "p3", 15000, category="baby"),
    )
    [why] = quote(Cart(lines), [cand("A", s)], T0).refused
    assert why.message == "needs 200.00 in scope, cart has 150.00"
    city = spec(FULL_200_40, scope={"cities": ["Beijing"]})
    [why] = quote(cart_of(30000, city="Chongqing"), [cand("A", city)], T0).refused
    assert (why.rule, why.message) == (
        "city",
        "only for city Beijing; the cart's city is Chongqing",
    )


def test_usable_days_and_hours_are_read_in_the_templates_time_zone() -> None:
    v = Validity(days_after_issue=30, weekdays=frozenset({1, 2, 3, 4, 5}), hours=(
        {"start": "10:00", "end": "22:00"},  # type: ignore[arg-type]
    ))  # fmt: skip
    s = spec(FULL_200_40, validity=v)
    sunday = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # 12:00 Sunday in Shanghai
    monday_early = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)  # 09:00 Monday in Shanghai
    monday_noon = datetime(2026, 11, 2, 4, 0, tzinfo=UTC)
    c = cand("A", s)
    assert quote(cart_of(30000), [c], sunday).refused[0].message == (
        "usable on Mon, Tue, Wed, Thu, Fri; it is Sun"
    )
    assert quote(cart_of(30000), [c], monday_early).refused[0].rule == "hours"
    assert quote(cart_of(30000), [c], monday_noon).total_discount == 4000


def test_allocation_is_pro_rata_with_remainder_to_largest_share() -> None:
    # 10.00 over 1/3 and 2/3: 333.33 and 666.67 → the larger remainder takes the cent
    assert allocate(1000, [0, 1], [100, 200]) == [(0, 333), (1, 667)]
    assert allocate(2, [0, 1, 2], [100, 100, 100]) == [(0, 1), (1, 1)]


def test_best_combination_stacks_order_and_shipping_coupons_but_not_exclusive_ones() -> None:
    full = cand("FULL", spec(FULL_200_40))
    pct = cand("PCT", spec({"kind": "percent_off", "percent_off_bp": 1000, "max_discount": 3000}))
    ship = cand("SHIP", spec({"kind": "free_shipping"}))
    solo = cand(
        "SOLO", spec({"kind": "fixed_amount", "amount": 4500}, stacking={"exclusive": True})
    )
    q = quote(cart_of(25000, shipping=1000), [full, pct, ship, solo], T0)
    assert {a.code for a in q.best} == {"FULL", "SHIP"} and q.total_discount == 5000
    q2 = quote(cart_of(25000), [full, pct, ship, solo], T0)
    assert [a.code for a in q2.best] == ["SOLO"] and q2.total_discount == 4500


def test_combination_applies_later_coupons_to_what_earlier_ones_left() -> None:
    first = cand("F", spec({"kind": "fixed_amount", "amount": 1000}, stacking={"group": "shop"}))
    full = cand("R", spec(FULL_200_40, stacking={"group": "platform", "priority": 1}))
    priced = price_combination(cart_of(20500), [first, full], T0)
    assert [r.rule for r in priced.refused] == ["min_spend"]
    assert stacking_refusals([first, cand("G", spec({"kind": "fixed_amount", "amount": 5}))]) == []


# --- invariants ------------------------------------------------------------------------

CATS = ["a", "b", "c"]


@st.composite
def carts(draw: st.DrawFn) -> Cart:
    n = draw(st.integers(1, 5))
    lines = tuple(
        CartLine(
            f"l{i}",
            f"p{i}",
            draw(st.integers(0, 30000)),
            draw(st.integers(1, 15)),
            category=draw(st.sampled_from(CATS)),
        )
        for i in range(n)
    )
    return Cart(lines, shipping_fee=draw(st.integers(0, 2000)))


benefits = st.one_of(
    st.builds(
        lambda t, r, s, m: {
            "kind": "full_reduction",
            "threshold": t,
            "reduction": r,
            "stepped": s,
            "max_reduction": m,
        },
        st.integers(1, 40000),
        st.integers(1, 20000),
        st.booleans(),
        st.none() | st.integers(1, 30000),
    ),
    st.builds(
        lambda bp, cap, ms: {
            "kind": "percent_off",
            "percent_off_bp": bp,
            "max_discount": cap,
            "min_spend": ms,
        },
        st.integers(1, 10000),
        st.none() | st.integers(1, 20000),
        st.integers(0, 30000),
    ),
    st.builds(
        lambda a, ms: {"kind": "fixed_amount", "amount": a, "min_spend": ms},
        st.integers(1, 30000),
        st.integers(0, 30000),
    ),
    st.builds(
        lambda b, g, cap: {"kind": "buy_n_get_m", "buy": b, "get": g, "max_discount": cap},
        st.integers(1, 6),
        st.integers(1, 3),
        st.none() | st.integers(1, 20000),
    ),
    st.builds(
        lambda ms, cap: {"kind": "free_shipping", "min_spend": ms, "max_discount": cap},
        st.integers(0, 30000),
        st.none() | st.integers(1, 2000),
    ),
)


@st.composite
def coupon_sets(draw: st.DrawFn) -> list[Candidate]:
    n = draw(st.integers(1, 6))
    out = []
    for i in range(n):
        s = spec(
            draw(benefits),
            scope={"categories": draw(st.sets(st.sampled_from(CATS), max_size=2))},
            stacking={
                "group": draw(st.sampled_from([None, "g1", "g2"])),
                "exclusive": i % 3 == 0 and draw(st.booleans()),
                "priority": draw(st.integers(0, 2)),
            },
        )
        out.append(cand(f"C{i}", s))
    return out


@settings(max_examples=200, deadline=None)
@given(carts(), coupon_sets())
def test_discounts_never_exceed_what_is_eligible_and_allocations_add_up(
    cart: Cart, coupons: list[Candidate]
) -> None:
    q = quote(cart, coupons, T0)
    assert 0 <= q.total_discount <= q.subtotal + q.shipping_fee
    assert q.payable == q.subtotal + q.shipping_fee - q.total_discount >= 0
    assert sum(a.discount for a in q.best) == q.total_discount
    by_line = {line.line_id: line.amount for line in cart.lines}
    for applied in q.best:
        assert sum(x.amount for x in applied.lines) + applied.shipping == applied.discount
        c = next(c for c in coupons if c.code == applied.code)
        for x in applied.lines:
            line = next(ln for ln in cart.lines if ln.line_id == x.line_id)
            assert c.spec.scope.covers(line) and 0 < x.amount <= by_line[x.line_id]
            by_line[x.line_id] -= x.amount
    assert {p.line_id: p.amount for p in q.line_payable} == by_line
    assert all(v >= 0 for v in by_line.values())


@settings(max_examples=200, deadline=None)
@given(carts(), coupon_sets())
def test_chosen_combination_is_optimal_against_brute_force(
    cart: Cart, coupons: list[Candidate]
) -> None:
    best = 0
    for k in range(1, len(coupons) + 1):
        for combo in combinations(coupons, k):
            if not stacking_refusals(list(combo)):
                best = max(best, price_combination(cart, list(combo), T0).total_discount)
    q = quote(cart, coupons, T0)
    assert q.total_discount == best
    assert not stacking_refusals([c for c in coupons if c.code in {a.code for a in q.best}])
