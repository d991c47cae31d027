"""Two stored ONE_IDs first seen at the same instant: the one minted first wins their
merge (docs/identity.md, rule 4), on every resolution path, whatever the random text
of the ONE_IDs, on SQLite and PostgreSQL.

The stream: a phone seen three times, then a union id, all in minute 0, cut into a
first batch of those four events; then one event carrying both. Both ONE_IDs are
stored with the same first-seen time when the linking event comes, so only the mint
order can decide; the phone's ONE_ID was minted first.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from tests.identity.events import NOW
from tests.identity.replay import replay
from zhiying.identity import service
from zhiying.identity.cache import IdentityCache
from zhiying.identity.service import Resolution, resolve_events

PHONE = "+8613800000001"


def _e(minute: int = 0, **ids: str) -> dict[str, Any]:
    return {
        "type_": "track",
        "user_id": None,
        "anonymous_id": None,
        "ids": ids,
        "previous_id": None,
        "minute": minute,
    }


TWINS = [_e(phone=PHONE), _e(phone=PHONE), _e(phone=PHONE), _e(wechat_unionid="w1")]
LINK = [_e(phone=PHONE, wechat_unionid="w1")]

# Per event, the ONE_ID it resolved to: named by its smallest identifier; the union id's
# ONE_ID lost the merge of event m4, which met the phone (recorded ``via`` the phone).
P, W = f"phone:{PHONE}", f"lost:phone:{PHONE}:m4"


def _path(name: str) -> tuple[Callable[[sa.Connection, pa.Table], Resolution], Any]:
    """A resolution path: per tuple, per tuple with the identifier cache, set-based."""
    cache = IdentityCache() if name == "cached" else None

    def resolve(conn: sa.Connection, rows: pa.Table) -> Resolution:
        return resolve_events(conn, rows, NOW, cache, set_based=name == "set_based")

    def committed(r: Resolution) -> None:
        if cache is not None:
            cache.apply(r.generation, r.cache_entries)

    return resolve, committed


PATHS = ["per_tuple", "cached", "set_based"]


def _stored(engine: sa.Engine, path: str, stream: list[dict[str, Any]], cut: int) -> Any:
    resolve, committed = _path(path)
    return replay(engine, stream, [cut], resolve, committed)


def test_twins_merge_into_the_one_minted_first_on_every_path_every_time(
    engine: sa.Engine,
) -> None:
    results = [
        (path, _stored(engine, path, TWINS + LINK, len(TWINS))) for path in PATHS for _ in range(5)
    ]
    first = results[0][1]
    assert first["rows"] == [P, P, P, W, P]
    assert [m[:2] for m in first["merges"]] == [(P, W)]
    assert [(o[0], o[2], o[4]) for o in first["one_ids"]] == [(W, P, 1), (P, None, 0)]
    for path, stored in results:
        assert stored == first, path


@pytest.fixture
def reversed_text(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Mint ONE_IDs whose text sorts in reverse of the order they are minted in, so
    a tie broken by the text picks the ONE_ID minted last."""
    numbers = itertools.count()

    def one() -> str:
        return f"u_{10**12 - next(numbers):020d}"

    monkeypatch.setattr(service, "_Minter", lambda: one)
    monkeypatch.setattr(service, "_mint_many", lambda count: [one() for _ in range(count)])
    yield


@pytest.mark.parametrize("path", PATHS)
def test_the_text_of_twin_one_ids_does_not_decide_their_merge(
    engine: sa.Engine, path: str, reversed_text: None
) -> None:
    stored = _stored(engine, path, TWINS + LINK, len(TWINS))
    assert stored["rows"] == [P, P, P, W, P]
    assert [m[:2] for m in stored["merges"]] == [(P, W)]


def test_many_twins_merge_alike_on_both_paths(engine: sa.Engine) -> None:
    """300 pairs of twins (COPY on PostgreSQL), minted in one batch by the static
    classes and, for every third pair, by the resolver (a phone and a member number
    first seen apart, then together: two roots, so residual); each pair's merge goes to
    its ONE_ID minted first: the phone's for odd pairs, the union id's for even ones."""
    first: list[dict[str, Any]] = []
    lost: list[bool] = []  # per event of the first batch: is its ONE_ID the pair's loser?
    link: list[dict[str, Any]] = []
    for i in range(300):
        phone, union = f"+86139{i:08d}", f"w{i}"
        phones = [_e(phone=phone)]
        if i % 3 == 0:
            phones += [_e(member_no=f"c{i}"), _e(phone=phone, member_no=f"c{i}")]
        phone_first = i % 2 == 1
        if phone_first:
            first += [*phones, _e(wechat_unionid=union)]
            lost += [False] * len(phones) + [True]
        else:
            first += [_e(wechat_unionid=union), *phones]
            lost += [False] + [True] * len(phones)
        link.append(_e(minute=1, phone=phone, wechat_unionid=union))
    per_tuple = _stored(engine, "per_tuple", first + link, len(first))
    set_based = _stored(engine, "set_based", first + link, len(first))
    assert set_based == per_tuple
    assert [r.startswith("lost:") for r in per_tuple["rows"][: len(first)]] == lost
    assert len(per_tuple["merges"]) == 300 + 100
    rank = {name: minted for name, _, _, _, minted in per_tuple["one_ids"]}
    for name, _, winner, _, minted in per_tuple["one_ids"]:
        assert winner is None or rank[winner] < minted, name
