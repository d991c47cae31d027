"""Refreshing 10 dynamic tags for 1M users: Zhiying vs one hand-written DuckDB statement vs pandas.

    .venv/bin/python -m bench.tags [--users 1000000] [--events-per-user 8] [--no-pandas]
                                   [--old-path]

Synthetic events (one DuckDB file in a temporary directory): per user about
``events-per-user`` events over the last 400 days — 40 % page views, 30 %
product views, 30 % orders with revenue, a coupon on a quarter of them, 1-3
products from 20 categories. The same 10 tags are computed three ways:

* **zhiying**: ``tags.service.refresh`` — the compiled ibis statement whose
  rows are written once into a new ``tag_values`` that replaces the old one;
  the replaced values become history (target < 10 s). Timed: a first refresh,
  a retry of the same instant, the next day's refresh, and separately the
  fold of the replaced table into ``tag_history`` (``storage.fold_history``,
  a copy the scheduler does when no refresh is due);
* **old path** (``--old-path``): last session's write path on the same
  statement — ``DELETE`` + ``INSERT`` into ``tag_values``, then a copy of
  the dynamic rows into ``tag_history``;
* **hand SQL**: the same tags written by hand as one DuckDB statement
  (``CREATE TABLE ... AS SELECT``, wide: one column per tag), the floor;
* **pandas**: the same tags with ``groupby`` on a DataFrame already in memory
  (loading it is not timed).

Values are cross-checked: every tag's total over all users must agree.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from zhiying.clock import ManualClock
from zhiying.config import Settings
from zhiying.profiles.tags import service, storage
from zhiying.profiles.tags.compiler import tags_sql
from zhiying.profiles.tags.models import DynamicTag, EventFilter, EventSelector
from zhiying.runtime import Stores, open_stores
from zhiying.warehouse.schema import EVENTS, MONEY, PERSON_KEYS, PRODUCT

NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
ORDERS = EventSelector(events=["Order Completed"])
CATEGORIES = [f"cat{i:02d}" for i in range(20)]
CHANNELS = ["app", "web", "mini_program", "store"]


def tags() -> list[DynamicTag]:
    visits = EventSelector(filters=[EventFilter(column="type", op="in", value=["page"])])
    coupon_orders = EventSelector(
        events=["Order Completed"], filters=[EventFilter(column="coupon", op="not_null")]
    )
    return [
        DynamicTag(name="orders_90d", where=ORDERS, window_days=90, aggregate="count"),
        DynamicTag(
            name="coupon_orders_90d", where=coupon_orders, window_days=90, aggregate="count"
        ),
        DynamicTag(name="days_since_visit", where=visits, aggregate="days_since_last"),
        DynamicTag(
            name="favourite_category",
            where=ORDERS,
            window_days=365,
            aggregate="top",
            of="products.category",
        ),
        DynamicTag(name="aov", where=ORDERS, aggregate="avg", of="revenue"),
        DynamicTag(
            name="revenue_365d", where=ORDERS, window_days=365, aggregate="sum", of="revenue"
        ),
        DynamicTag(name="days_since_first_order", where=ORDERS, aggregate="days_since_first"),
        DynamicTag(name="items_30d", where=ORDERS, window_days=30, aggregate="sum", of="items"),
        DynamicTag(name="channels_180d", window_days=180, aggregate="distinct_count", of="channel"),
        DynamicTag(
            name="max_order_90d", where=ORDERS, window_days=90, aggregate="max", of="revenue"
        ),
    ]


def make_events(users: int, per_user: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = users * per_user
    user = rng.integers(0, users, n)
    ids = pa.array(np.char.add("u", np.arange(users).astype(str)))
    one_id = pc.take(ids, pa.array(user))
    start = (NOW - timedelta(days=400)).replace(tzinfo=None)
    offsets = rng.integers(0, 400 * 86_400_000_000, n)
    ts = pa.array(np.datetime64(start, "us") + offsets.astype("timedelta64[us]"))
    kind = rng.random(n)
    is_page = kind < 0.4
    is_order = kind >= 0.7
    event = np.where(is_page, None, np.where(is_order, "Order Completed", "Product Viewed"))
    cents = rng.integers(100, 50_000, n)
    revenue = pc.cast(
        pa.array(np.where(is_order, cents / 100, np.nan), from_pandas=True), MONEY, safe=False
    )
    coupon = np.where(is_order & (rng.random(n) < 0.25), "C", None)
    lines = np.where(is_order, rng.integers(1, 4, n), 0)
    offsets_list = np.concatenate([[0], np.cumsum(lines)]).astype(np.int32)
    total = int(offsets_list[-1])
    category = pa.DictionaryArray.from_arrays(
        pa.array(rng.integers(0, len(CATEGORIES), total).astype(np.int32)), pa.array(CATEGORIES)
    ).cast(pa.string())
    quantity = pa.array(rng.integers(1, 4, total).astype(np.int32))
    products = pa.ListArray.from_arrays(
        pa.array(offsets_list),
        pa.StructArray.from_arrays(
            [
                category
                if f.name == "category"
                else quantity
                if f.name == "quantity"
                else pa.nulls(total, f.type)
                for f in PRODUCT
            ],
            fields=list(PRODUCT),
        ),
    )
    columns = {
        "message_id": pa.array(np.char.add("m", np.arange(n).astype(str))),
        "type": pa.array(np.where(is_page, "page", "track")),
        "event": pa.array(event),
        "one_id": one_id,
        "person_key": pa.array(user + 1, pa.int64()),
        "timestamp": ts,
        "received_at": ts,
        "channel": pa.array(np.array(CHANNELS)[rng.integers(0, len(CHANNELS), n)]),
        "revenue": revenue,
        "coupon": pa.array(coupon),
        "products": products,
        "identifiers": pa.nulls(n, EVENTS.field("identifiers").type),
    }
    return pa.Table.from_arrays(
        [columns.get(f.name, pa.nulls(n, f.type)) for f in EVENTS], schema=EVENTS
    )


HAND_SQL = """
CREATE OR REPLACE TABLE baseline AS
WITH e AS (
  SELECT person_key AS person, type, event, "timestamp" AS ts, channel, revenue, coupon, products
  FROM events WHERE "timestamp" <= TIMESTAMP '{now}' AND person_key IS NOT NULL
),
scalar AS (
  SELECT person,
    count(*) FILTER (WHERE event = 'Order Completed' AND ts > TIMESTAMP '{now}' - INTERVAL 90 DAY)
      AS orders_90d,
    count(*) FILTER (WHERE event = 'Order Completed' AND coupon IS NOT NULL
      AND ts > TIMESTAMP '{now}' - INTERVAL 90 DAY) AS coupon_orders_90d,
    date_diff('day', max(ts) FILTER (WHERE type = 'page'), TIMESTAMP '{now}') AS days_since_visit,
    avg(revenue) FILTER (WHERE event = 'Order Completed') AS aov,
    coalesce(sum(revenue) FILTER (WHERE event = 'Order Completed'
      AND ts > TIMESTAMP '{now}' - INTERVAL 365 DAY), 0) AS revenue_365d,
    date_diff('day', min(ts) FILTER (WHERE event = 'Order Completed'), TIMESTAMP '{now}')
      AS days_since_first_order,
    coalesce(sum(list_sum(list_transform(products, lambda p: coalesce(p.quantity, 1))))
      FILTER (WHERE event = 'Order Completed' AND ts > TIMESTAMP '{now}' - INTERVAL 30 DAY), 0)
      AS items_30d,
    count(DISTINCT channel) FILTER (WHERE ts > TIMESTAMP '{now}' - INTERVAL 180 DAY)
      AS channels_180d,
    max(revenue) FILTER (WHERE event = 'Order Completed'
      AND ts > TIMESTAMP '{now}' - INTERVAL 90 DAY) AS max_order_90d
  FROM e GROUP BY person
),
cats AS (
  SELECT person, p.category AS category, sum(coalesce(p.quantity, 1)) AS w
  FROM (SELECT person, unnest(products) AS p FROM e
        WHERE event = 'Order Completed' AND ts > TIMESTAMP '{now}' - INTERVAL 365 DAY)
  WHERE p.category IS NOT NULL
  GROUP BY ALL
),
fav AS (SELECT person, category AS favourite_category
        FROM (SELECT person, category,
                     row_number() OVER (PARTITION BY person ORDER BY w DESC, category) AS rn
              FROM cats) WHERE rn = 1)
SELECT k.one_id AS person, scalar.* EXCLUDE (person), fav.favourite_category
FROM scalar LEFT JOIN fav USING (person) JOIN person_keys AS k ON k.person_key = scalar.person
"""


def pandas_tags(frame: pd.DataFrame, products: pd.DataFrame) -> pd.DataFrame:
    now = pd.Timestamp(NOW.replace(tzinfo=None))
    day = now.normalize()
    order = frame["event"] == "Order Completed"
    age = now - frame["timestamp"]
    g = frame.assign(
        o90=order & (age < pd.Timedelta(days=90)),
        c90=order & frame["coupon"].notna() & (age < pd.Timedelta(days=90)),
        visit=frame["timestamp"].where(frame["type"] == "page"),
        rev=frame["revenue"].where(order),
        r365=frame["revenue"].where(order & (age < pd.Timedelta(days=365))),
        first=frame["timestamp"].where(order),
        i30=frame["items"].where(order & (age < pd.Timedelta(days=30))),
        ch180=frame["channel"].where(age < pd.Timedelta(days=180)),
        m90=frame["revenue"].where(order & (age < pd.Timedelta(days=90))),
    ).groupby("one_id")
    out = pd.DataFrame(
        {
            "orders_90d": g["o90"].sum(),
            "coupon_orders_90d": g["c90"].sum(),
            "days_since_visit": (day - g["visit"].max().dt.normalize()).dt.days,
            "aov": g["rev"].mean(),
            "revenue_365d": g["r365"].sum(),
            "days_since_first_order": (day - g["first"].min().dt.normalize()).dt.days,
            "items_30d": g["i30"].sum(),
            "channels_180d": g["ch180"].nunique(),
            "max_order_90d": g["m90"].max(),
        }
    )
    recent = products[(now - products["timestamp"]) < pd.Timedelta(days=365)]
    weights = recent.groupby(["one_id", "category"], sort=False)["quantity"].sum().reset_index()
    weights = weights.sort_values(["one_id", "quantity", "category"], ascending=[True, False, True])
    fav = weights.drop_duplicates("one_id").set_index("one_id")["category"]
    out["favourite_category"] = fav
    return out


def timed(label: str, fn: object) -> float:
    """Wall time of ``fn()``; CPU time of this process (all engine threads) printed beside it."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()  # type: ignore[operator]
    elapsed = time.perf_counter() - start
    load = os.getloadavg()[0]
    print(
        f"  {label:<50} wall {elapsed:7.2f} s   cpu {time.process_time() - cpu:7.2f} s"
        f"   load {load:4.1f}",
        flush=True,
    )
    return elapsed


def old_path(stores: Stores) -> None:
    """Last session's write path: DELETE + INSERT into tag_values, then copy to tag_history."""
    wh = stores.warehouse
    select = tags_sql(tags(), NOW, wh.dialect, aliases=False)
    names = ", ".join(f"'{t.name}'" for t in tags())
    stamp = NOW.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S")
    wh.execute(f"DELETE FROM tag_values WHERE tag IN ({names})")
    wh.execute(f"INSERT INTO tag_values {select}")
    wh.execute(f"DELETE FROM tag_history WHERE tag IN ({names}) AND computed_at = '{stamp}'")
    wh.execute(f"INSERT INTO tag_history SELECT * FROM tag_values WHERE tag IN ({names})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events-per-user", type=int, default=8)
    parser.add_argument("--no-pandas", action="store_true")
    parser.add_argument("--old-path", action="store_true", help="also time last session's path")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="zhiying-bench-tags-"))
    stores: Stores = open_stores(Settings(data_dir=tmp), clock=ManualClock(NOW))
    t0 = time.perf_counter()
    events = make_events(args.users, args.events_per_user)
    stores.warehouse.insert("events", events)
    users = np.arange(args.users)
    stores.warehouse.insert(
        "person_keys",
        pa.table(
            {"person_key": users + 1, "one_id": np.char.add("u", users.astype(str))},
            schema=PERSON_KEYS,
        ),
    )
    print(
        f"{events.num_rows:,} events for {args.users:,} users generated and stored "
        f"in {time.perf_counter() - t0:.1f} s (DuckDB file {tmp})",
        flush=True,
    )
    service.define_tags(stores, tags())
    print("10 dynamic tags, every user, as of", NOW.isoformat())
    results: dict[str, float] = {}
    results["zhiying refresh (1st)"] = timed(
        "zhiying: refresh (compute + write once)", lambda: service.refresh(stores)
    )
    results["zhiying refresh (retry)"] = timed(
        "zhiying: retry of the same instant (replaces it)", lambda: service.refresh(stores)
    )
    now_text = NOW.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S")
    results["hand SQL"] = timed(
        "baseline: hand-written DuckDB statement",
        lambda: stores.warehouse.execute(HAND_SQL.format(now=now_text)),
    )
    ours = stores.warehouse.query(
        "SELECT tag, sum(number) AS total, count(*) AS n FROM tag_values GROUP BY tag"
    ).to_pydict()
    ours_total = dict(zip(ours["tag"], ours["total"], strict=True))
    base = stores.warehouse.query(
        "SELECT "
        + ", ".join(f"sum({t.name})::DOUBLE AS {t.name}" for t in tags() if t.numeric)
        + ", count(favourite_category) AS fav, "
        "(SELECT count(*) FROM baseline b JOIN tag_values v ON v.one_id = b.person "
        " AND v.tag = 'favourite_category' AND v.value = b.favourite_category) AS fav_same "
        "FROM baseline"
    ).to_pylist()[0]
    for t in tags():
        if t.numeric:
            assert abs(ours_total[t.name] - base[t.name]) <= 1e-6 * max(1.0, abs(base[t.name])), t
    assert base["fav"] == base["fav_same"], "favourite category differs"
    print("  check: zhiying and hand SQL agree on every tag", flush=True)

    if not args.no_pandas:
        frame = events.select(
            ["one_id", "type", "event", "timestamp", "channel", "revenue", "coupon"]
        ).to_pandas()
        frame["revenue"] = frame["revenue"].astype("float64")
        flat = pc.list_flatten(events.column("products"))
        parents = pc.list_parent_indices(events.column("products"))
        qty = pc.struct_field(flat, "quantity")
        per_event = np.bincount(
            parents.to_numpy(), weights=qty.to_numpy(zero_copy_only=False), minlength=len(frame)
        )
        frame["items"] = per_event
        products = pd.DataFrame(
            {
                "one_id": pc.take(events.column("one_id"), parents).to_numpy(zero_copy_only=False),
                "timestamp": pc.take(events.column("timestamp"), parents).to_pandas(),
                "category": pc.struct_field(flat, "category").to_numpy(zero_copy_only=False),
                "quantity": qty.to_numpy(zero_copy_only=False),
            }
        )
        out: list[pd.DataFrame] = []
        results["pandas"] = timed(
            "baseline: pandas groupby (data already in memory)",
            lambda: out.append(pandas_tags(frame, products)),
        )
        got = out[0]
        for t in tags():
            if t.numeric:
                theirs = float(got[t.name].sum())
                assert abs(theirs - ours_total[t.name]) <= 1e-6 * max(1.0, abs(theirs)), t.name
        fav = stores.warehouse.query(
            "SELECT one_id, value FROM tag_values WHERE tag = 'favourite_category'"
        ).to_pandas()
        same = fav.set_index("one_id")["value"].eq(got["favourite_category"].reindex(fav.one_id))
        assert bool(same.all()) and len(fav) == int(got["favourite_category"].notna().sum())
        print("  check: pandas agrees on every tag", flush=True)
    next_day = NOW + timedelta(days=1)
    results["zhiying refresh (next day)"] = timed(
        "zhiying: next day's refresh (1st day -> history)",
        lambda: service.refresh(stores, as_of=next_day),
    )
    results["fold history segment"] = timed(
        "zhiying: fold that history into tag_history",
        lambda: storage.fold_history(stores.warehouse),
    )
    if args.old_path:
        results["old path"] = timed(
            "old path: delete+insert tag_values, copy history", lambda: old_path(stores)
        )
    stores.close()
    print("\nsummary (seconds): " + ", ".join(f"{k} {v:.2f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
