"""The identity rules, in memory (no store)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from zhiying.identity.resolver import (
    Ident,
    KnownOneId,
    Observation,
    Resolver,
    partition,
    union_find_partition,
)

T0 = datetime(2026, 10, 1, tzinfo=UTC)


def counter() -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"o{next(numbers)}"


def obs(
    minute: int,
    *idents: Ident,
    type_: str = "track",
    previous_id: str | None = None,
    message_id: str | None = None,
) -> Observation:
    at = T0 + timedelta(minutes=minute)
    return Observation(
        identifiers=tuple(idents),
        first_at=at,
        last_at=at,
        message_id=message_id or f"m{minute}",
        event_type=type_,
        previous_id=previous_id,
    )


def U(v: str) -> Ident:
    return ("user_id", v)


def A(v: str) -> Ident:
    return ("anonymous_id", v)


def test_user_id_and_anonymous_id_on_one_event_are_one_person() -> None:
    r = Resolver(counter())
    before = r.observe(obs(0, A("a1")))
    after = r.observe(obs(1, U("u1"), A("a1"), type_="identify"))
    assert before == after == r.owner(U("u1"))
    assert r.merges == []  # the anonymous ONE_ID simply became the user's


def test_anonymous_device_that_logs_in_merges_into_the_user_and_the_user_wins() -> None:
    r = Resolver(counter())
    user = r.observe(obs(0, U("u1"), A("phone-app")))
    device = r.observe(obs(5, A("web")))
    assert device != user
    now = r.observe(obs(6, U("u1"), A("web"), type_="identify", message_id="login"))
    assert now == user and r.find(device) == user
    (merge,) = r.merges
    assert (merge.winner, merge.loser, merge.kind, merge.value, merge.message_id) == (
        user,
        device,
        "anonymous_id",
        "web",
        "login",
    )


def test_without_a_user_id_the_older_one_id_wins() -> None:
    r = Resolver(counter())
    older = r.observe(obs(0, A("a1"), ("device_id", "d1")))
    newer = r.observe(obs(1, A("a2")))
    r.observe(obs(2, A("a2"), ("device_id", "d1")))
    assert r.merges[0].winner == older and r.merges[0].loser == newer


def test_two_user_ids_never_merge_through_a_shared_device() -> None:
    r = Resolver(counter())
    alice = r.observe(obs(0, U("alice"), ("device_id", "family-tablet")))
    bob = r.observe(obs(1, U("bob"), ("device_id", "family-tablet"), message_id="bob-login"))
    assert bob != alice and r.find(alice) == alice
    assert r.owner(("device_id", "family-tablet")) == alice  # stays with its first owner
    assert r.merges == []
    (c,) = r.conflicts
    assert (c.one_id, c.other_one_id, c.kind, c.rule, c.message_id) == (
        bob,
        alice,
        "device_id",
        "one_user_id",
        "bob-login",
    )


def test_two_user_ids_never_merge_through_a_shared_phone_without_user_id_on_the_event() -> None:
    r = Resolver(counter())
    alice = r.observe(obs(0, U("alice"), ("phone", "+8613800000001")))
    bob = r.observe(obs(1, U("bob"), ("email", "bob@example.com")))
    # A store POS event knows the phone and the e-mail but no user id.
    went_to = r.observe(obs(2, ("phone", "+8613800000001"), ("email", "bob@example.com")))
    assert r.find(alice) != r.find(bob)
    assert went_to == alice  # phone outranks e-mail
    assert [c.rule for c in r.conflicts] == ["one_user_id"]


def test_one_wechat_unionid_per_one_id() -> None:
    r = Resolver(counter())
    first = r.observe(obs(0, ("wechat_unionid", "w1"), ("wechat_openid", "o1")))
    second = r.observe(obs(1, ("wechat_unionid", "w2"), ("wechat_openid", "o1")))
    assert r.find(first) != r.find(second)
    assert r.conflicts[0].rule == "one_wechat_unionid"
    assert r.owner(("wechat_openid", "o1")) == first


def test_second_user_id_value_on_one_event_gets_its_own_one_id_and_a_conflict() -> None:
    r = Resolver(counter())
    target = r.observe(obs(0, U("u1"), ("user_id", "u2"), A("a")))
    assert r.owner(U("u2")) not in (None, target)
    assert r.conflicts[0].rule == "one_user_id" and r.conflicts[0].value == "u2"


def test_alias_links_previous_anonymous_id_to_user_id() -> None:
    r = Resolver(counter())
    user = r.observe(obs(0, U("u1")))
    anon = r.observe(obs(1, A("a9")))
    linked = r.observe(obs(2, U("u1"), type_="alias", previous_id="a9"))
    assert linked == user and r.find(anon) == user
    assert r.merges[0].reason.startswith("alias")


def test_alias_to_another_known_user_id_is_a_conflict_not_a_merge() -> None:
    r = Resolver(counter())
    old = r.observe(obs(0, U("old-member-7")))
    new = r.observe(obs(1, U("u7")))
    r.observe(obs(2, U("u7"), type_="alias", previous_id="old-member-7"))
    assert r.find(old) != r.find(new)
    assert r.conflicts[0].kind == "user_id" and r.conflicts[0].rule == "one_user_id"


def test_event_without_identifiers_has_no_one_id() -> None:
    assert Resolver(counter()).observe(obs(0)) is None


def test_loaded_one_id_keeps_its_user_id_limit() -> None:
    r = Resolver(counter())
    r.load({("device_id", "d"): "stored"}, {"stored": KnownOneId(T0, {"user_id": "alice"}, 1)})
    bob = r.observe(obs(1, U("bob"), ("device_id", "d")))
    assert bob != "stored" and r.conflicts[0].other_one_id == "stored"


def test_between_stored_twins_the_one_minted_first_wins_whatever_its_text() -> None:
    r = Resolver(counter())
    r.load(
        {("phone", "p"): "u_zzz", ("wechat_unionid", "w"): "u_aaa"},
        {"u_zzz": KnownOneId(T0, {}, 7), "u_aaa": KnownOneId(T0, {"wechat_unionid": "w"}, 9)},
    )
    assert r.observe(obs(5, ("phone", "p"), ("wechat_unionid", "w"))) == "u_zzz"
    assert (r.merges[0].winner, r.merges[0].loser) == ("u_zzz", "u_aaa")


def test_a_stored_one_id_wins_over_twins_minted_in_the_batch_which_win_in_mint_order() -> None:
    r = Resolver(lambda: f"u_{9 - r.minted_count}")  # later mints sort first as text
    r.load({("phone", "p"): "u_stored"}, {"u_stored": KnownOneId(T0, {}, 3)})
    first, second = r.observe(obs(0, A("a1"))), r.observe(obs(0, A("a2")))
    assert (first, second) == ("u_9", "u_8")
    assert r.observe(obs(0, A("a2"), A("a1"))) == first
    assert r.observe(obs(0, A("a1"), ("phone", "p"))) == "u_stored"
    assert [(m.winner, m.loser) for m in r.merges] == [(first, second), ("u_stored", first)]


def test_plain_union_find_would_merge_what_the_rules_keep_apart() -> None:
    tuples = [[U("alice"), ("device_id", "d")], [U("bob"), ("device_id", "d")]]
    assert len(union_find_partition(tuples)) == 1
    r = Resolver(counter())
    for i, t in enumerate(tuples):
        r.observe(obs(i, *t))
    assert len(partition(r.assignments())) == 2


# --- properties ---------------------------------------------------------------------------

USERS = [f"u{i}" for i in range(4)]
ANONS = [f"a{i}" for i in range(5)]
OTHERS: list[Ident] = [
    ("phone", "+8613800000001"),
    ("phone", "+8613800000002"),
    ("device_id", "d1"),
    ("device_id", "d2"),
    ("wechat_unionid", "w1"),
    ("wechat_unionid", "w2"),
    ("member_no", "m1"),
]


@st.composite
def event_stream(draw: st.DrawFn) -> list[Observation]:
    n = draw(st.integers(1, 40))
    stream = []
    for i in range(n):
        type_ = draw(st.sampled_from(["track", "track", "identify", "alias"]))
        user = draw(st.none() | st.sampled_from(USERS))
        anon = draw(st.none() | st.sampled_from(ANONS))
        others = draw(st.lists(st.sampled_from(OTHERS), max_size=2, unique=True))
        idents: list[Ident] = []
        if user:
            idents.append(U(user))
        if anon:
            idents.append(A(anon))
        idents.extend(others)
        previous = None
        if type_ == "alias":
            previous = draw(st.sampled_from(USERS + ANONS))
        stream.append(obs(i, *idents, type_=type_, previous_id=previous, message_id=f"m{i}"))
    return stream


class MemoryStore:
    """What the service keeps between batches, loaded back the way the service loads it."""

    def __init__(self, new_id: Callable[[], str]) -> None:
        self.new_id = new_id
        self.owners: dict[Ident, str] = {}
        self.created: dict[str, datetime] = {}
        self.orders: dict[str, int] = {}

    def resolve(self, batch: list[Observation]) -> list[str | None]:
        wanted: set[Ident] = set()
        for o in batch:
            wanted.update(o.identifiers)
            if o.previous_id is not None:
                wanted |= {U(o.previous_id), A(o.previous_id)}
        owners = {i: self.owners[i] for i in wanted if i in self.owners}
        known = {
            one_id: KnownOneId(
                self.created[one_id],
                {
                    k: v
                    for (k, v), o in self.owners.items()
                    if o == one_id and k in ("user_id", "wechat_unionid")
                },
                self.orders[one_id],
            )
            for one_id in set(owners.values())
        }
        r = Resolver(self.new_id)
        r.load(owners, known)
        targets = [r.observe(o) for o in batch]
        self.created.update(r.new_one_ids)
        for one_id in r.new_one_ids:  # in the order minted
            self.orders[one_id] = len(self.orders) + 1
        for loser in r.merged_away:
            winner = r.find(loser)
            for ident, one_id in list(self.owners.items()):
                if one_id == loser:
                    self.owners[ident] = winner
        self.owners.update(r.assignments())
        return [None if t is None else r.find(t) for t in targets]


@settings(max_examples=120, deadline=None)
@given(event_stream(), st.lists(st.integers(0, 40), max_size=4))
def test_resolution_does_not_depend_on_how_the_stream_is_cut_into_batches(
    stream: list[Observation], cuts: list[int]
) -> None:
    whole = MemoryStore(counter())
    whole.resolve(stream)
    pieces = MemoryStore(counter())
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    for start, end in itertools.pairwise(bounds):
        pieces.resolve(stream[start:end])
    assert partition(pieces.owners) == partition(whole.owners)


@settings(max_examples=120, deadline=None)
@given(event_stream())
def test_every_one_id_holds_at_most_one_user_id_and_events_go_to_their_user(
    stream: list[Observation],
) -> None:
    r = Resolver(counter())
    targets = [r.observe(o) for o in stream]
    for group in partition(r.assignments()):
        assert len([i for i in group if i[0] == "user_id"]) <= 1
        assert len([i for i in group if i[0] == "wechat_unionid"]) <= 1
    for o, target in zip(stream, targets, strict=True):
        users = [v for k, v in o.identifiers if k == "user_id"]
        if users:
            assert r.find(target or "") == r.owner(U(users[0]))


@settings(max_examples=120, deadline=None)
@given(event_stream())
def test_resolving_only_first_occurrences_equals_resolving_every_event(
    stream: list[Observation],
) -> None:
    every = Resolver(counter())
    for o in stream:
        every.observe(o)
    firsts = Resolver(counter())
    seen: set[tuple[tuple[Ident, ...], str | None]] = set()
    for o in stream:
        key = (o.identifiers, o.previous_id)
        if key not in seen:
            seen.add(key)
            firsts.observe(o)
    assert partition(firsts.assignments()) == partition(every.assignments())
