"""Pure pricing: which coupons apply to a cart, for how much, and the best combination.

No I/O, no clock: ``quote(cart, coupons, at)`` is a function of its inputs.

Rounding (all amounts are integer minor units):

* Percent off: ``amount × bp / 10000`` rounded half up to the minor unit, *then* capped
  by ``max_discount`` and by the amount in scope.
* Buy N get M: the free units of a line are worth ``line_amount × free_units /
  quantity`` rounded down (the shop never gives more than the units' value).
* Allocation of an order-level discount to lines is pro rata to what each eligible line
  still costs, by the largest-remainder method: every line gets the floor of its share,
  the leftover minor units go one each to the lines with the largest remainders (ties:
  the larger line, then the earlier line). Allocations therefore sum exactly to the
  discount and never exceed a line's amount, so a partial refund of a line knows exactly
  how much discount it carried.

A combination applies its coupons in a fixed order (stage item → order → shipping,
then priority, group, code); each coupon sees what the earlier ones left, so a
threshold is checked against the amount still payable. Each coupon's discount can only
grow when the amounts it sees grow, so a coupon's stand-alone discount bounds what it
can give in any combination: the search for the best combination is a branch and bound
over stacking groups with that bound, and a coupon that gives nothing alone is never
worth combining.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter, itemgetter

from zhiying.coupons.models import (
    KIND_BUY,
    KIND_FIXED,
    KIND_FULL,
    KIND_PERCENT,
    KIND_SHIP,
    BuyNGetM,
    Candidate,
    Cart,
    FreeShipping,
    Scope,
    fmt_money,
)

_DAY_NAMES = ("", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

# --- results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a coupon does not apply: the rule that refused, in words, and the numbers."""

    code: str
    template_id: str
    rule: str
    message: str
    needed: int | None = None
    actual: int | None = None


@dataclass(frozen=True, slots=True)
class LineAmount:
    line_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class AppliedCoupon:
    """One coupon of a combination: its discount and where it lands (lines, shipping)."""

    code: str
    template_id: str
    discount: int
    lines: tuple[LineAmount, ...]
    shipping: int


@dataclass(frozen=True, slots=True)
class Option:
    """A coupon that applies to the cart on its own, with its stand-alone discount."""

    code: str
    template_id: str
    discount: int
    group: str
    exclusive: bool


@dataclass(frozen=True, slots=True)
class Quote:
    """The answer of ``quote``: options, the best combination and every refusal.

    ``payable = subtotal + shipping_fee - total_discount`` and is never negative;
    ``line_payable`` is what each line costs after the best combination.
    """

    subtotal: int
    shipping_fee: int
    options: tuple[Option, ...]
    best: tuple[AppliedCoupon, ...]
    total_discount: int
    payable: int
    line_payable: tuple[LineAmount, ...]
    refused: tuple[Refusal, ...]


@dataclass(frozen=True, slots=True)
class Priced:
    """A given combination priced (``price_combination``): refusals mean it cannot be used."""

    applied: tuple[AppliedCoupon, ...]
    total_discount: int
    payable: int
    refused: tuple[Refusal, ...]


# --- preparation ------------------------------------------------------------------------

_FULL, _PERCENT, _FIXED, _BUY, _SHIP = KIND_FULL, KIND_PERCENT, KIND_FIXED, KIND_BUY, KIND_SHIP


class _Prep:
    """A candidate that passed the time and cart checks, compiled for the inner loops:
    the benefit's terms as plain ints (``kind``, ``a``–``d``, see ``Terms``), its eligible
    lines (summed with one ``itemgetter`` call) and their bit mask."""

    __slots__ = (
        "a", "all_lines", "b", "bound", "c", "cand", "d", "eligible", "exclusive", "group",
        "key", "kind", "mask", "pick", "standalone",
    )  # fmt: skip

    def __init__(
        self, cand: Candidate, eligible: tuple[int, ...], mask: int, all_lines: bool
    ) -> None:
        t = cand.spec.terms
        self.cand = cand
        self.eligible = eligible
        self.mask = mask
        self.all_lines = all_lines
        self.pick = itemgetter(*eligible) if len(eligible) > 1 else None
        self.kind, self.a, self.b, self.c, self.d = t.kind, t.a, t.b, t.c, t.d
        self.group = t.group
        self.exclusive = t.exclusive
        self.key = (t.stage_rank, t.priority, t.group, cand.code)
        self.standalone = 0
        self.bound = 0  # most it can give in any combination (see _search)

    def total(self, amounts: Sequence[int]) -> int:
        """What the eligible lines still cost."""
        if self.all_lines:
            return sum(amounts)
        if self.pick is not None:
            return sum(self.pick(amounts))
        return amounts[self.eligible[0]] if self.eligible else 0


_KEY = attrgetter("key")  # application order of a combination


def _refuse(
    c: Candidate, rule: str, message: str, needed: int | None = None, actual: int | None = None
) -> Refusal:
    return Refusal(c.code, c.template_id, rule, message, needed, actual)


def _check_time(c: Candidate, at: datetime) -> Refusal | None:
    v = c.spec.validity
    if at < c.valid_from:
        local = c.valid_from.astimezone(v.zone)
        return _refuse(c, "not_started", f"usable from {local:%Y-%m-%d %H:%M} ({v.timezone})")
    if at >= c.valid_until:
        local = c.valid_until.astimezone(v.zone)
        return _refuse(c, "expired", f"expired at {local:%Y-%m-%d %H:%M} ({v.timezone})")
    if v.weekdays or v.hours:
        local = at.astimezone(v.zone)
        if v.weekdays and local.isoweekday() not in v.weekdays:
            days = ", ".join(_DAY_NAMES[d] for d in sorted(v.weekdays))
            return _refuse(
                c, "weekday", f"usable on {days}; it is {_DAY_NAMES[local.isoweekday()]}"
            )
        if v.hours and not any(w.contains(local.time()) for w in v.hours):
            spans = ", ".join(str(w) for w in v.hours)
            return _refuse(c, "hours", f"usable {spans} ({v.timezone}); it is {local:%H:%M}")
    return None


def _check_cart(c: Candidate, cart: Cart) -> Refusal | None:
    s = c.spec.scope
    if not (s.stores or s.cities or s.channels):
        return None
    for field, allowed, value in (
        ("store", s.stores, cart.store_id),
        ("city", s.cities, cart.city),
        ("channel", s.channels, cart.channel),
    ):
        if allowed and value not in allowed:
            listed = ", ".join(sorted(allowed))
            return _refuse(c, field, f"only for {field} {listed}; the cart's {field} is {value}")
    return None


def _prepare(
    cart: Cart, coupons: Iterable[Candidate], at: datetime
) -> tuple[list[_Prep], list[Refusal]]:
    preps: list[_Prep] = []
    refused: list[Refusal] = []
    seen: set[str] = set()
    n = len(cart.lines)
    every = (1 << n) - 1
    all_lines = tuple(range(n))
    index = _LineIndex(cart)
    lines_of: dict[int, tuple[int, ...]] = {every: all_lines}
    for c in coupons:
        if c.code in seen:
            refused.append(_refuse(c, "duplicate", "this coupon is offered twice"))
            continue
        seen.add(c.code)
        why = _check_time(c, at) or _check_cart(c, cart)
        if why is not None:
            refused.append(why)
            continue
        scope = c.spec.scope
        mask = index.mask(scope) if scope.line_filtered else every
        eligible = lines_of.get(mask)
        if eligible is None:
            eligible = lines_of[mask] = tuple(i for i in all_lines if mask >> i & 1)
        if not eligible and not isinstance(c.spec.benefit, FreeShipping):
            refused.append(_refuse(c, "scope", "no line of the cart is in the coupon's scope"))
            continue
        preps.append(_Prep(c, eligible, mask, mask == every))
    return preps, refused


class _LineIndex:
    """Bit masks of the cart's lines by product, category and brand: a scope's lines are
    a few dictionary lookups and bit operations (``Scope.covers`` over the whole cart)."""

    __slots__ = ("brands", "categories", "every", "products")

    def __init__(self, cart: Cart) -> None:
        self.every = (1 << len(cart.lines)) - 1
        self.products: dict[str, int] = {}
        self.categories: dict[str | None, int] = {}
        self.brands: dict[str | None, int] = {}
        for i, line in enumerate(cart.lines):
            bit = 1 << i
            self.products[line.product_id] = self.products.get(line.product_id, 0) | bit
            self.categories[line.category] = self.categories.get(line.category, 0) | bit
            self.brands[line.brand] = self.brands.get(line.brand, 0) | bit

    def mask(self, scope: Scope) -> int:
        m = self.every
        for wanted, by in (
            (scope.products, self.products),
            (scope.categories, self.categories),
            (scope.brands, self.brands),
        ):
            if wanted:
                m &= _union(wanted, by)
        for unwanted, by in (
            (scope.exclude_products, self.products),
            (scope.exclude_categories, self.categories),
            (scope.exclude_brands, self.brands),
        ):
            if unwanted:
                m &= ~_union(unwanted, by)
        return m


def _union(values: frozenset[str], by: dict[str, int] | dict[str | None, int]) -> int:
    m = 0
    if len(values) < len(by):
        for v in values:
            m |= by.get(v, 0)
    else:
        for k, bits in by.items():
            if k in values:
                m |= bits
    return m


# --- one coupon on the amounts still payable ----------------------------------------------


def allocate(
    discount: int, eligible: Sequence[int], amounts: Sequence[int]
) -> list[tuple[int, int]]:
    """Spread ``discount`` over ``eligible`` lines pro rata to ``amounts`` (largest remainder).

    Requires ``0 <= discount <= sum of eligible amounts``; returns ``(line index, amount)``
    pairs summing to ``discount``, each at most its line's amount.
    """
    total = 0
    for i in eligible:
        total += amounts[i]
    if discount == 0 or total == 0:
        return []
    shares = []
    given = 0
    for i in eligible:
        q = discount * amounts[i] // total
        shares.append(q)
        given += q
    leftover = discount - given
    if leftover:
        # largest remainder first; ties to the larger line, then the earlier one
        ranked = sorted(
            (-(discount * amounts[i] - q * total), -amounts[i], k)
            for k, (i, q) in enumerate(zip(eligible, shares, strict=True))
        )
        for _, _, k in ranked[:leftover]:
            shares[k] += 1
    return [(i, q) for i, q in zip(eligible, shares, strict=True) if q]


_Short = tuple[str, int, int]  # (rule, needed, actual)
_Step = tuple[_Prep, list[tuple[int, int]], int, _Short | None]  # coupon, lines, shipping, short


def _discount(p: _Prep, total: int, shipping: int) -> int | _Short:
    """The discount of an order or shipping coupon on ``total`` in scope, or its shortfall."""
    kind = p.kind
    if kind == _FULL:
        if total < p.a:
            return ("min_spend", p.a, total)
        d = p.b * (total // p.a) if p.c else p.b
        if 0 <= p.d < d:
            d = p.d
        return d if d < total else total
    if kind == _PERCENT:
        if total < p.a:
            return ("min_spend", p.a, total)
        d = (total * p.b + 5000) // 10000
        if 0 <= p.c < d:
            d = p.c
        return d if d < total else total
    if kind == _FIXED:
        if total < p.a:
            return ("min_spend", p.a, total)
        return p.b if p.b < total else total
    if total < p.a:  # free shipping
        return ("min_spend", p.a, total)
    return shipping if p.b < 0 or shipping < p.b else p.b


def _free_units(
    p: _Prep, amounts: Sequence[int], qty: Sequence[int]
) -> list[tuple[int, int]] | _Short:
    """Buy N get M: the free units' value per line (cheapest units first), or the shortfall."""
    units = 0
    for i in p.eligible:
        units += qty[i]
    size = p.a + p.b
    if units < size:
        return ("min_units", size, units)
    free = (units // size) * p.b
    if 0 <= p.c < free:
        free = p.c
    cap = p.d
    out: list[tuple[int, int]] = []
    # cheapest units first (the float ratio only orders the lines)
    for i in sorted(p.eligible, key=lambda j: (amounts[j] / qty[j], j)):
        if free <= 0:
            break
        k = min(qty[i], free)
        free -= k
        d = amounts[i] * k // qty[i]
        if cap >= 0:
            d = min(d, cap)
            cap -= d
        if d:
            out.append((i, d))
    return out


def _apply(
    p: _Prep, amounts: Sequence[int], qty: Sequence[int], shipping: int, spread: bool = True
) -> tuple[list[tuple[int, int]], int, _Short | None]:
    """Discount of one coupon on the current amounts: (line allocations, shipping, shortfall).

    With ``spread=False`` an order-level discount is not allocated to lines but returned
    as one pair ``(-1, discount)`` (for callers that only need the amount).
    """
    if p.kind == _BUY:
        units = _free_units(p, amounts, qty)
        if isinstance(units, tuple):
            return [], 0, units
        return units, 0, None
    d = _discount(p, p.total(amounts), shipping)
    if isinstance(d, tuple):
        return [], 0, d
    if p.kind == _SHIP:
        return [], d, None
    if not spread:
        return ([(-1, d)] if d else []), 0, None
    return allocate(d, p.eligible, amounts), 0, None


def _shortfall_message(p: _Prep, short: _Short) -> Refusal:
    rule, needed, actual = short
    c = p.cand
    if rule == "min_units":
        b = c.spec.benefit
        assert isinstance(b, BuyNGetM)
        msg = f"needs {needed} units in scope (buy {b.buy} get {b.get}), cart has {actual}"
    else:
        msg = f"needs {fmt_money(needed)} in scope, cart has {fmt_money(actual)}"
    return _refuse(c, rule, msg, needed, actual)


def _run(
    combo: Sequence[_Prep], base: Sequence[int], qty: Sequence[int], shipping: int
) -> tuple[int, list[_Step], list[int], int]:
    """Apply ``combo`` (already in application order) to ``base`` amounts."""
    amounts = list(base)
    total = 0
    steps = []
    for p in combo:
        allocs, ship, short = _apply(p, amounts, qty, shipping)
        for i, a in allocs:
            amounts[i] -= a
            total += a
        shipping -= ship
        total += ship
        steps.append((p, allocs, ship, short))
    return total, steps, amounts, shipping


def _search(preps: list[_Prep], base: list[int], qty: list[int], shipping: int) -> list[_Prep]:
    """Branch and bound over stacking groups for the combination with the largest discount.

    Ties go to fewer coupons (the customer keeps the rest), then to smaller codes.
    """
    useful = [p for p in preps if p.standalone > 0]
    for p in useful:
        # Free units are valued with a floor per line, so on smaller amounts the cheapest
        # units can land on other lines and gain up to one minor unit per line.
        # Its cap (max_discount) bounds it too.
        p.bound = p.standalone
        if p.kind == _BUY:
            p.bound += len(p.eligible)
            if 0 <= p.d < p.bound:
                p.bound = p.d
    best: list[_Prep] = []
    best_val = 0
    best_codes: tuple[str, ...] = ()

    def beats(value: int, combo: list[_Prep], codes: tuple[str, ...]) -> bool:
        return (value, -len(combo)) > (best_val, -len(best)) or (
            value == best_val and len(combo) == len(best) and codes < best_codes
        )

    def consider(combo: list[_Prep], value: int) -> None:
        nonlocal best, best_val, best_codes
        codes = tuple(sorted(p.cand.code for p in combo))
        if beats(value, combo, codes):
            best, best_val, best_codes = combo, value, codes

    for p in useful:
        if p.exclusive:
            consider([p], p.standalone)
    groups: dict[str, list[_Prep]] = {}
    for p in useful:
        if not p.exclusive:
            groups.setdefault(p.group, []).append(p)
    levels = sorted(groups.values(), key=lambda g: -max(p.bound for p in g))
    for g in levels:
        g.sort(key=lambda p: (-p.bound, p.cand.code))
    suffix = [0] * (len(levels) + 1)
    for i in range(len(levels) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + levels[i][0].bound

    chosen: list[_Prep] = []
    # Leaves share prefixes (in application order): remember the amounts after each.
    states: dict[tuple[int, ...], tuple[list[int], int, int]] = {(): (base, shipping, 0)}

    def value_of(combo: list[_Prep]) -> int:
        ids = tuple(id(p) for p in combo)
        k = len(ids)
        while ids[:k] not in states:
            k -= 1
        amounts, ship, total = states[ids[:k]]
        for j in range(k, len(combo)):
            amounts = list(amounts)
            allocs, ship_d, _ = _apply(combo[j], amounts, qty, ship, spread=j + 1 < len(combo))
            for i, a in allocs:
                if i >= 0:
                    amounts[i] -= a
                total += a
            ship -= ship_d
            total += ship_d
            states[ids[: j + 1]] = (amounts, ship, total)
        return total

    def dfs(level: int, bound: int) -> None:
        nonlocal best, best_val, best_codes
        if bound + suffix[level] < best_val:
            return
        if level == len(levels):
            if chosen:
                combo = sorted(chosen, key=_KEY)
                codes = tuple(sorted(p.cand.code for p in combo))
                # The value is at most ``bound``: skip the evaluation when even that loses.
                if not beats(bound, combo, codes):
                    return
                value = value_of(combo) if len(combo) > 1 else combo[0].standalone
                if beats(value, combo, codes):
                    best, best_val, best_codes = combo, value, codes
            return
        if bound + suffix[level] == best_val and len(chosen) > len(best):
            return  # at most a tie, with more coupons
        for p in levels[level]:
            if bound + p.bound + suffix[level + 1] < best_val:
                break  # sorted by bound: the rest bound even lower
            chosen.append(p)
            dfs(level + 1, bound + p.bound)
            chosen.pop()
        dfs(level + 1, bound)

    dfs(0, 0)
    return best


def _applied(steps: Iterable[_Step], cart: Cart) -> tuple[AppliedCoupon, ...]:
    out = []
    for p, allocs, ship, _ in steps:
        lines = tuple(LineAmount(cart.lines[i].line_id, a) for i, a in sorted(allocs))
        discount = sum(a for _, a in allocs) + ship
        out.append(AppliedCoupon(p.cand.code, p.cand.template_id, discount, lines, ship))
    return tuple(out)


def quote(cart: Cart, coupons: Iterable[Candidate], at: datetime) -> Quote:
    """Price ``cart`` against the customer's ``coupons`` at instant ``at``.

    Returns every coupon that applies on its own (``options``), the best combination for
    the customer with each coupon's discount allocated to lines (``best``), and a
    ``Refusal`` naming the rule for every coupon that does not apply.
    """
    base = [line.amount for line in cart.lines]
    qty = [line.quantity for line in cart.lines]
    preps, refused = _prepare(cart, coupons, at)
    options = []
    for p in preps:
        allocs, ship, short = _apply(p, base, qty, cart.shipping_fee, spread=False)
        if short is not None:
            refused.append(_shortfall_message(p, short))
            continue
        p.standalone = sum(a for _, a in allocs) + ship
        if p.standalone == 0:
            rule = "no_shipping_fee" if isinstance(p.cand.spec.benefit, FreeShipping) else "zero"
            refused.append(_refuse(p.cand, rule, "gives nothing off this cart"))
            continue
        options.append(Option(p.cand.code, p.cand.template_id, p.standalone, p.group, p.exclusive))
    best = _search(preps, base, qty, cart.shipping_fee)
    total, steps, amounts, _ = _run(best, base, qty, cart.shipping_fee)
    return Quote(
        subtotal=sum(base),
        shipping_fee=cart.shipping_fee,
        options=tuple(sorted(options, key=lambda o: (-o.discount, o.code))),
        best=_applied(steps, cart),
        total_discount=total,
        payable=sum(base) + cart.shipping_fee - total,
        line_payable=tuple(
            LineAmount(line.line_id, a) for line, a in zip(cart.lines, amounts, strict=True)
        ),
        refused=tuple(refused),
    )


def stacking_refusals(coupons: Sequence[Candidate]) -> list[Refusal]:
    """Refusals when ``coupons`` cannot be used together (exclusivity, one per group)."""
    out: list[Refusal] = []
    if len(coupons) > 1:
        for c in coupons:
            if c.spec.stacking.exclusive:
                out.append(_refuse(c, "exclusive", "this coupon cannot be combined with others"))
    by_group: dict[str, str] = {}
    for c in coupons:
        other = by_group.get(c.spec.group)
        if other is not None:
            out.append(
                _refuse(
                    c,
                    "stacking_group",
                    f"only one {c.spec.group!r} coupon per order; {other} is already used",
                )
            )
        else:
            by_group[c.spec.group] = c.code
    return out


def price_combination(cart: Cart, coupons: Sequence[Candidate], at: datetime) -> Priced:
    """Price exactly ``coupons`` together (as chosen at checkout).

    Any refusal (time, scope, stacking, or a coupon that gives nothing in this
    combination) is returned; the caller must not use a combination with refusals.
    """
    base = [line.amount for line in cart.lines]
    qty = [line.quantity for line in cart.lines]
    refused = stacking_refusals(coupons)
    preps, more = _prepare(cart, coupons, at)
    refused.extend(more)
    combo = sorted(preps, key=lambda p: p.key)
    total, steps, _, _ = _run(combo, base, qty, cart.shipping_fee)
    for p, allocs, ship, short in steps:
        if short is not None:
            refused.append(_shortfall_message(p, short))
        elif not allocs and not ship:
            why = "gives nothing off this cart in this combination"
            refused.append(_refuse(p.cand, "zero", why))
    return Priced(
        applied=_applied(steps, cart),
        total_discount=total,
        payable=sum(base) + cart.shipping_fee - total,
        refused=tuple(refused),
    )
