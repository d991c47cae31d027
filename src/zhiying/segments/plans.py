"""Compiled segment plans, reused across instants.

Why: compiling a rule (ibis + sqlglot) costs 4–16 ms for the benchmark's rules
(session 8; 20–100 ms before session 6), a tenth to a third of running a small
segment on a million people, and the same rules are counted, previewed and
materialised again and again — each time as of a new ``at``.

How: the SQL of a rule depends on ``at`` only through instant literals
(``compiler.instant``: ``at`` itself and ``at`` minus a window's fixed
length), unless the rule has date tests or anniversaries (days of ``at``'s
calendar) or reads other segments (their snapshots). So the first call
compiles as of its ``at`` and keeps the result; a call at another instant
compiles once more and compares the two texts token by token. When every
difference is an instant literal moved by exactly the difference of the two
instants, the text becomes a *template*: later calls splice their own
instants into it, without compiling. Anything else (a date, a token that
appears in one text only) marks the rule as not shiftable, and it is compiled
afresh at each call, as before. The comparison is exact, so a template never
changes a literal the instant did not produce (an absolute date in the rule
stays as it is).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import ibis.backends.sql.compilers as sql_compilers

from zhiying.segments.compiler import Catalog, CompiledRule, SqlDialect, compile_rule
from zhiying.segments.models import AndGroup, NotGroup, OrGroup, Rule, SegmentCondition, to_utc

INSTANT_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
"""How ``compiler.instant`` writes an instant (naive UTC, microseconds)."""

CAPACITY = 256
"""Rules whose plans are kept (least recently used first out)."""

TextOf = Callable[[CompiledRule], str]


@dataclass(frozen=True)
class Template:
    """A SQL text with the spans (start, end inclusive) of its instant literals, each
    held as its distance before ``at``."""

    text: str
    spans: tuple[tuple[int, int, timedelta], ...]

    def at(self, when: datetime) -> str:
        naive = to_utc(when).replace(tzinfo=None)
        out: list[str] = []
        position = 0
        for start, end, before in self.spans:
            out.append(self.text[position:start])
            out.append("'" + (naive - before).strftime(INSTANT_FORMAT) + "'")
            position = end + 1
        out.append(self.text[position:])
        return "".join(out)


def template(
    first: str, first_at: datetime, second: str, second_at: datetime, dialect: SqlDialect
) -> Template | None:
    """The template of ``first`` if ``second`` differs from it only by instant literals
    moved by ``second_at - first_at``; None otherwise."""
    tokenize = getattr(sql_compilers, dialect).compiler.dialect().tokenize
    a, b = tokenize(first), tokenize(second)
    if len(a) != len(b):
        return None
    moved = to_utc(second_at) - to_utc(first_at)
    base = to_utc(first_at).replace(tzinfo=None)
    spans: list[tuple[int, int, timedelta]] = []
    for x, y in zip(a, b, strict=True):
        if x.token_type == y.token_type and x.text == y.text:
            continue
        if x.token_type != y.token_type or x.token_type.name != "STRING":
            return None
        try:
            tx = datetime.strptime(x.text, INSTANT_FORMAT)
            ty = datetime.strptime(y.text, INSTANT_FORMAT)
        except ValueError:
            return None
        if ty - tx != moved or first[x.start] != "'" or first[x.end] != "'":
            return None
        spans.append((x.start, x.end, base - tx))
    return Template(first, tuple(spans))


@dataclass
class _Plan:
    """What is known of one rule: its first compilation and the templates found so far
    (None: that text does not shift)."""

    at: datetime
    compiled: CompiledRule
    templates: dict[tuple[object, ...], Template | None] = field(default_factory=dict)


class Plans:
    """Per-process plans of rules, keyed by the rule's JSON (thread-safe)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._plans: OrderedDict[str, _Plan] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()
        self.compiles = 0
        """Compilations made (for tests and benchmarks)."""

    def compiled(self, rule: Rule, at: datetime, catalog: Catalog | None = None) -> PlannedRule:
        """``rule`` as of ``at``: its SQL texts, compiled only when no plan serves.

        A rule seen for the first time is compiled here, so a rule that cannot
        compile raises now (``UnsupportedRule`` naming the path), not later.
        """
        at = to_utc(at)
        if not reads_segments(rule):
            self._plan(rule, at, catalog)
        return PlannedRule(self, rule, at, catalog)

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()

    def text(
        self,
        rule: Rule,
        at: datetime,
        catalog: Catalog | None,
        dialect: SqlDialect,
        key: tuple[object, ...],
        text_of: TextOf,
    ) -> str:
        """One SQL text (``key`` names it, ``text_of`` makes it) of ``rule`` as of ``at``."""
        if reads_segments(rule):  # snapshots move on their own: never reused
            return text_of(self._compile(rule, at, catalog))
        plan = self._plan(rule, at, catalog)
        if at == plan.at:
            return text_of(plan.compiled)
        if key in plan.templates:
            found = plan.templates[key]
            if found is not None:
                return found.at(at)
            return text_of(self._compile(rule, at, catalog))
        other = text_of(self._compile(rule, at, catalog))
        shifted = template(text_of(plan.compiled), plan.at, other, at, dialect)
        with self._lock:
            plan.templates[key] = shifted
        return other

    def _plan(self, rule: Rule, at: datetime, catalog: Catalog | None) -> _Plan:
        """The plan of ``rule``, made by compiling it as of ``at`` when there is none."""
        name = rule.model_dump_json()
        with self._lock:
            plan = self._plans.get(name)
            if plan is not None:
                self._plans.move_to_end(name)
                return plan
        plan = _Plan(at, self._compile(rule, at, catalog))
        with self._lock:
            self._plans[name] = plan
            while len(self._plans) > self._capacity:
                self._plans.popitem(last=False)
        return plan

    def _compile(self, rule: Rule, at: datetime, catalog: Catalog | None) -> CompiledRule:
        self.compiles += 1
        return compile_rule(rule, at, catalog)


@dataclass(frozen=True)
class PlannedRule:
    """The SQL texts of a rule as of ``at`` (``CompiledRule``'s, through ``Plans``)."""

    plans: Plans
    rule: Rule
    at: datetime
    catalog: Catalog | None

    def sql(self, dialect: SqlDialect, *, pretty: bool = True) -> str:
        return self.plans.text(
            self.rule,
            self.at,
            self.catalog,
            dialect,
            ("sql", dialect, pretty),
            lambda c: c.sql(dialect, pretty=pretty),
        )

    def count_sql(self, dialect: SqlDialect) -> str:
        return self.plans.text(
            self.rule,
            self.at,
            self.catalog,
            dialect,
            ("count", dialect),
            lambda c: c.count_sql(dialect),
        )

    def sample_sql(self, dialect: SqlDialect, sample: int) -> str:
        return self.plans.text(
            self.rule,
            self.at,
            self.catalog,
            dialect,
            ("sample", dialect, sample),
            lambda c: c.sample_sql(dialect, sample),
        )


def reads_segments(rule: Rule) -> bool:
    """Whether ``rule`` has a segment condition anywhere (its SQL then depends on snapshots)."""
    if isinstance(rule, SegmentCondition):
        return True
    if isinstance(rule, AndGroup | OrGroup):
        return any(reads_segments(r) for r in rule.rules)
    if isinstance(rule, NotGroup):
        return reads_segments(rule.rule)
    return False


PLANS = Plans()
"""This process's plans (``segments.service`` compiles through it)."""

__all__ = ["PLANS", "PlannedRule", "Plans", "Template", "reads_segments", "template"]
