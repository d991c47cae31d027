"""The rules of ``zhiying.ingest.models`` as DuckDB SQL: one pass over millions of messages.

The HTTP path validates one decoded message at a time in Python
(:func:`zhiying.ingest.models.validate_message`). Bulk import cannot afford a
Python call per row, so this module states the *same* rules as SQL over a
relation of "message parts": one JSON-text column per top-level Segment key
(``p_mid`` = ``messageId``, ``p_type`` = ``type``, ...), plus ``__row`` and
``__size``. :func:`checked_select` turns that relation into

* every ``EVENTS`` column, computed as ``validate_message`` computes it;
* ``__bad`` and ``__errors``: the list of ``{field, reason}`` structs, in the
  order the Python validator reports them, with the same texts.

Limits and reason texts come from ``zhiying.ingest.models`` (its constants are
imported, its reason sentences are reproduced here); ``tests/bulk/
test_parity.py`` feeds the same good and bad messages through both paths and
compares rows and rejections, so a change on one side that the other misses
fails a test.

Where SQL cannot match Python exactly at reasonable cost, the uncommon cases go
to the models' own pure functions through DuckDB scalar UDFs, which DuckDB only
calls for the rows inside the ``CASE`` branch that needs them:

* timestamps that are not a plain ``YYYY-MM-DD[THH:MM[:SS[.ffffff]]][Z|±HH:MM]``
  → :func:`zhiying.ingest.models.parse_timestamp`;
* money that is not a plain ``-ddd[.dd]`` → :func:`zhiying.ingest.models.parse_money`;
* identifiers (phone → E.164, e-mail, custom kinds) →
  :func:`zhiying.identity.identifiers.normalize`, cached per distinct value;
* Python's ``repr`` of a bad value inside a reason sentence.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final

import duckdb
import orjson
from email_validator import SPECIAL_USE_DOMAIN_NAMES

from zhiying.identity.identifiers import (
    CUSTOM_KIND,
    DEVICE_ID,
    EMAIL,
    MAX_VALUE_LENGTH,
    PHONE,
    InvalidIdentifier,
    normalize,
)
from zhiying.ingest.models import (
    EARLIEST,
    MAX_EVENT_BYTES,
    MAX_FUTURE,
    MAX_MESSAGE_ID_LENGTH,
    MAX_TEXT_LENGTH,
    MESSAGE_TYPES,
    TRAIT_IDENTIFIERS,
    parse_money,
    parse_timestamp,
)
from zhiying.warehouse.schema import EVENTS

# The top-level keys a message is split into, with the part column that holds each.
PARTS: Final = (
    ("messageId", "p_mid"),
    ("type", "p_type"),
    ("userId", "p_uid"),
    ("anonymousId", "p_aid"),
    ("event", "p_event"),
    ("name", "p_name"),
    ("groupId", "p_gid"),
    ("previousId", "p_pid"),
    ("properties", "p_props"),
    ("traits", "p_traits"),
    ("context", "p_ctx"),
    ("integrations", "p_integ"),
    ("channel", "p_channel"),
    ("originalTimestamp", "p_ots"),
    ("timestamp", "p_ts"),
    ("sentAt", "p_sent"),
)
PART_COLUMNS: Final = tuple(col for _, col in PARTS)

_INT32_MAX: Final = 2**31 - 1
# Python's str.strip() removes every character whose isspace() is true.
_PY_SPACE: Final = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
_ISO_FAST: Final = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9]"
    r"(\.[0-9]{1,6})?)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?"
)
# JSON numbers and strings that DuckDB turns into DECIMAL(18, 2) exactly as
# parse_money does: at most 2 decimals, and (for numbers, which arrive as
# doubles) at most 15 significant digits so the double's repr is the text.
_MONEY_FAST_NUMBER: Final = r"-?[0-9]{1,13}(\.[0-9]{1,2})?"
_MONEY_FAST_TEXT: Final = r"-?[0-9]{1,16}(\.[0-9]{1,2})?"
_EMAIL_FAST: Final = (
    r"[A-Za-z0-9_+-]+(\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,63}"
)
_PRODUCT_TEXT: Final = ("product_id", "sku", "name", "brand", "category", "coupon")
# context keys read by the rules, extracted once per row (identifiers, channel)
_CTX_PATHS: Final = ("device", "traits", "externalIds", "channel", "app", "page", "userAgent")
_SEGMENT_CHANNELS: Final = (("browser", "web"), ("mobile", "app"), ("server", "server"))


def _py_strip(text: str) -> str:
    """``text.strip()`` as Python does it; the Unicode trim runs only when an end is not
    printable ASCII (every Python whitespace character is ≤ U+0020 or > U+007E)."""
    return (
        f"(CASE WHEN unicode({text}) BETWEEN 33 AND 126 AND unicode(right({text}, 1)) "
        f"BETWEEN 33 AND 126 THEN {text} ELSE trim({text}, {lit(_PY_SPACE)}) END)"
    )


def lit(value: str) -> str:
    """A DuckDB string literal."""
    return "'" + value.replace("'", "''") + "'"


def ident(name: str) -> str:
    """A DuckDB quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


# --- UDFs: the models' own functions, for the rows SQL does not handle -------------


def _loads(text: str) -> Any:
    return orjson.loads(text)


def _udf_repr40(text: str) -> str:
    """``repr(str(value)[:40])`` of a JSON value, as the models put it in reasons."""
    return repr(str(_loads(text))[:40])


def _udf_timestamp(text: str) -> dict[str, Any]:
    try:
        return {"value": parse_timestamp(_loads(text)), "error": None}
    except ValueError as exc:
        return {"value": None, "error": str(exc)}


def _udf_money(text: str) -> dict[str, Any]:
    try:
        return {"value": parse_money(_loads(text)), "error": None}
    except ValueError as exc:
        return {"value": None, "error": str(exc)}
    except ArithmeticError:
        # e.g. 1e400: parse_money's quantize overflows (the HTTP path fails there too)
        return {"value": None, "error": "too large (at most 16 digits before the decimal point)"}


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


@lru_cache(maxsize=1 << 18)
def _normalized(kind: str, text: str, region: str) -> tuple[str | None, str | None]:
    raw = _loads(text)
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return None, f"must be a string, got {_type_name(raw)}"
    try:
        return normalize(kind, raw, region), None
    except InvalidIdentifier as exc:
        return None, exc.reason


def _udf_iso(at: datetime) -> str:
    return at.isoformat()


def register_udfs(con: duckdb.DuckDBPyConnection, default_region: str) -> None:
    """Register the Python fallbacks this module's SQL calls (``zy_*``) on ``con``."""

    def identifier(kind: str, text: str) -> dict[str, Any]:
        value, error = _normalized(kind, text, default_region)
        return {"value": value, "error": error}

    con.create_function("zy_repr40", _udf_repr40, ["VARCHAR"], "VARCHAR")
    con.create_function(
        "zy_ts", _udf_timestamp, ["VARCHAR"], "STRUCT(value TIMESTAMP, error VARCHAR)"
    )
    con.create_function(
        "zy_money", _udf_money, ["VARCHAR"], "STRUCT(value DECIMAL(18, 2), error VARCHAR)"
    )
    con.create_function(
        "zy_ident", identifier, ["VARCHAR", "VARCHAR"], "STRUCT(value VARCHAR, error VARCHAR)"
    )
    con.create_function("zy_iso", _udf_iso, ["TIMESTAMP"], "VARCHAR")


# --- SQL building blocks ---------------------------------------------------------------


def _tn(t: str) -> str:
    """The models' ``_type_name`` of a value whose ``json_type`` is ``t``."""
    return (
        f"(CASE {t} WHEN 'NULL' THEN 'null' WHEN 'BOOLEAN' THEN 'boolean' "
        f"WHEN 'VARCHAR' THEN 'string' WHEN 'ARRAY' THEN 'array' WHEN 'OBJECT' THEN 'object' "
        f"ELSE 'number' END)"
    )


def _jt(expr: str) -> str:
    """``json_type`` of a JSON text, or 'NULL' when absent.

    A valid JSON text that starts with ``"``, ``{`` or ``[`` is a string, an object or an
    array, so those are told by their first byte without parsing the value (the texts of
    objects are the long ones); anything else (numbers, literals, leading blanks) is
    parsed. Callers only pass valid JSON text (``json_type`` would raise otherwise).
    """
    return (
        f"(CASE WHEN {expr} IS NULL THEN 'NULL' ELSE CASE left({expr}::VARCHAR, 1) "
        f"WHEN '\"' THEN 'VARCHAR' WHEN '{{' THEN 'OBJECT' WHEN '[' THEN 'ARRAY' "
        f"ELSE coalesce(json_type({expr}), 'NULL') END END)"
    )


def _js(expr: str) -> str:
    """The string a JSON text holds (NULL unless it is a string), as ``->> '$'`` reads it.

    A string without a backslash has no escapes, so its value is the text between the
    quotes (``substring`` with a length costs half of a ``[2:-2]`` slice); others are
    decoded by the JSON reader.
    """
    text = f"{expr}::VARCHAR"
    return (
        f"(CASE WHEN {_jt(expr)} = 'VARCHAR' THEN CASE WHEN left({text}, 1) = '\"' "
        f"AND NOT contains({text}, '\\') THEN substring({text}, 2, length({text}) - 2) "
        f"ELSE {expr} ->> '$' END END)"
    )


def _is_num(t: str) -> str:
    return f"{t} IN ('BIGINT', 'UBIGINT', 'DOUBLE', 'HUGEINT')"


def _num_text(p: str, t: str) -> str:
    """``str(value)`` of a JSON number as Python prints it (ints as is, floats by repr)."""
    return f"(CASE WHEN {t} = 'DOUBLE' THEN {p}::DOUBLE::VARCHAR ELSE {p} END)"


@dataclass(frozen=True)
class _Err:
    """One rule: when ``cond`` holds, the message is refused with (field, reason)."""

    cond: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"CASE WHEN {self.cond} THEN {{'field': {self.field}, 'reason': {self.reason}}} END"


def _err(cond: str, field: str, reason: str) -> _Err:
    return _Err(cond, field, reason)


class _Text:
    """``models._text``: a string (numbers as text when ``numbers``), at most MAX_TEXT_LENGTH."""

    def __init__(self, p: str, t: str, s: str, field_sql: str, numbers: bool) -> None:
        self.p, self.t, self.s, self.field, self.numbers = p, t, s, field_sql, numbers

    def value(self) -> str:
        num = f"WHEN {_is_num(self.t)} THEN {_num_text(self.p, self.t)} " if self.numbers else ""
        return (
            f"(CASE WHEN {self.t} = 'VARCHAR' AND length({self.s}) <= {MAX_TEXT_LENGTH} "
            f"THEN {self.s} {num}END)"
        )

    def type_bad(self) -> str:
        ok = (
            "'VARCHAR', 'NULL', 'BIGINT', 'UBIGINT', 'DOUBLE', 'HUGEINT'"
            if self.numbers
            else ("'VARCHAR', 'NULL'")
        )
        return f"({self.t} NOT IN ({ok}))"

    def too_long(self) -> str:
        return f"({self.t} = 'VARCHAR' AND length({self.s}) > {MAX_TEXT_LENGTH})"

    def errors(self, guard: str = "TRUE") -> list[_Err]:
        expected = "a string or a number" if self.numbers else "a string"
        return [
            _err(
                f"{guard} AND {self.type_bad()}",
                self.field,
                f"'must be {expected}, got ' || {_tn(self.t)}",
            ),
            _err(
                f"{guard} AND {self.too_long()}",
                self.field,
                lit(f"longer than {MAX_TEXT_LENGTH} characters"),
            ),
        ]


def _money_value(p: str, t: str, s: str) -> tuple[str, str, str]:
    """(fast condition, fast value, slow UDF call) for ``models._money``."""
    fast = (
        f"(({_is_num(t)} AND regexp_full_match({p}, '{_MONEY_FAST_NUMBER}')) OR "
        f"({t} = 'VARCHAR' AND regexp_full_match({s}, '{_MONEY_FAST_TEXT}')))"
    )
    fast_value = f"(CASE WHEN {t} = 'VARCHAR' THEN {s} ELSE {p} END)::DECIMAL(18, 2)"
    return fast, fast_value, f"zy_money({p})"


def _identity_cols(key: str, p: str, guard: str = "TRUE") -> dict[str, str]:
    """``models._identity`` for one key: the stripped text ``x_<p>`` (of a present value)
    and the error ``k_<p>``, which reads ``x_<p>`` (so a stage after the one that
    computes it); ``v_<p>`` is ``x_<p>`` when ``k_<p>`` is NULL."""
    t, s = f"t_{p}", f"s_{p}"
    present = f"({guard} AND {t} <> 'NULL' AND NOT ({t} = 'VARCHAR' AND {s} = ''))"
    raw = (
        f"(CASE WHEN {t} = 'VARCHAR' THEN {_py_strip(s)} "
        f"WHEN {_is_num(t)} THEN {_num_text(p, t)} END)"
    )
    return {
        f"x_{p}": f"CASE WHEN {present} THEN {raw} END",
        f"k_{p}": (
            f"CASE WHEN NOT {present} THEN NULL "
            f"WHEN {t} NOT IN ('VARCHAR', 'BIGINT', 'UBIGINT', 'DOUBLE', 'HUGEINT') "
            f"THEN 'must be a string or a number, got ' || {_tn(t)} "
            f"WHEN x_{p} = '' THEN 'must not be blank' "
            # strlen (bytes, O(1)) >= length (characters): the count only for long ones
            f"WHEN strlen(x_{p}) > {MAX_VALUE_LENGTH} AND length(x_{p}) > {MAX_VALUE_LENGTH} "
            f"THEN {lit(f'longer than {MAX_VALUE_LENGTH} characters')} END"
        ),
        "__key": key,
    }


def _truthy(p: str) -> str:
    """Python truthiness of a JSON value (non-empty object/array/string, non-zero number)."""
    t = _jt(p)
    return (
        f"(CASE {t} WHEN 'OBJECT' THEN {p} <> '{{}}' WHEN 'ARRAY' THEN {p} <> '[]' "
        f"WHEN 'VARCHAR' THEN {p} <> '\"\"' WHEN 'BOOLEAN' THEN {p} = 'true' "
        f"WHEN 'NULL' THEN FALSE ELSE {p}::DOUBLE <> 0 END)"
    )


def checked_select(
    parts_sql: str,
    *,
    received_at: datetime,
    source: str,
    raw_sql: str = "__raw",
    hash_sql: str = "coalesce(__hsrc, __raw)",
) -> str:
    """SQL over ``parts_sql`` returning the ``EVENTS`` columns plus ``__row``, ``__bad``,
    ``__errors`` (list of ``{field, reason}``, only for bad rows), ``__raw`` (only for bad
    rows) and ``__h`` (content hash for rows without a ``messageId``).

    ``parts_sql`` must provide ``__row``, ``__ok`` (the row is a JSON object),
    ``__top`` (its ``json_type`` otherwise, NULL when not JSON at all), ``__size``
    (compact JSON bytes, or NULL when unknown), ``__raw`` (the source text of the
    row), ``__hsrc`` (the text a derived messageId hashes; NULL means ``__raw``),
    ``__lines`` (source rows behind the message), every column of :data:`PART_COLUMNS`, and the
    results of :func:`products_sql` and :func:`identifiers_sql` over the same parts
    aligned to its rows (``__pa_items``, ``__pa_errors``, ``__ia_items``,
    ``__ia_errors``; NULL or empty for rows those relations do not list — see
    :func:`zhiying.ingest.bulk.with_side_results`). ``received_at`` is naive UTC.
    ``raw_sql`` and ``hash_sql`` compute ``__raw`` and the hashed text from the
    parts; they are evaluated only for the rows that need them.
    """
    received = f"TIMESTAMP '{received_at.isoformat(sep=' ')}'"
    types_list = ", ".join(MESSAGE_TYPES)
    max_future_us = int(MAX_FUTURE.total_seconds() * 1_000_000)
    future_hours = f"{MAX_FUTURE.total_seconds() / 3600:.0f}"
    earliest = f"TIMESTAMP '{EARLIEST.isoformat(sep=' ')}'"
    earliest_text = EARLIEST.date().isoformat()

    # 1. json types and string values of every part.
    t_cols = []
    for col in PART_COLUMNS:
        t_cols.append(f"{_jt(col)} AS t_{col}")
        t_cols.append(f"{_js(col)} AS s_{col}")
    stage_t = f"SELECT *, {', '.join(t_cols)} FROM ({parts_sql})"

    # 2. identity keys, kind, texts, timestamps (fast path), property parts.
    kind = (
        f"CASE WHEN t_p_type = 'VARCHAR' AND s_p_type IN "
        f"({', '.join(lit(k) for k in MESSAGE_TYPES)}) THEN s_p_type END"
    )
    ident_specs = [
        _identity_cols("userId", "p_uid"),
        _identity_cols("anonymousId", "p_aid"),
        _identity_cols("groupId", "p_gid", guard="__kind = 'group'"),
        _identity_cols("previousId", "p_pid", guard="__kind = 'alias'"),
    ]
    a_cols = [f"{kind} AS __kind"]
    stage_a0 = f"SELECT *, {', '.join(a_cols)} FROM ({stage_t})"
    x_cols = [f"{spec[name]} AS {name}" for spec in ident_specs for name in spec if name[0] == "x"]
    stage_a = f"SELECT *, {', '.join(x_cols)} FROM ({stage_a0})"

    b_cols: list[str] = []
    for spec in ident_specs:
        for name, expr in spec.items():
            if name[0] == "k":
                b_cols.append(f"{expr} AS {name}")
    for col in ("p_ots", "p_ts", "p_sent"):
        t, s = f"t_{col}", f"s_{col}"
        fast = f"({t} = 'VARCHAR' AND regexp_full_match({s}, '{_ISO_FAST}') AND {s}[1:4] <> '0000')"
        # Only a text with an offset (at least 22 characters, not ending in Z) needs the
        # time-zone cast; the plain one reads Z and zone-less texts as UTC at half the cost.
        b_cols.append(
            f"CASE WHEN {fast} THEN CASE WHEN ends_with({s}, 'Z') OR strlen({s}) < 22 "
            f"THEN TRY_CAST({s} AS TIMESTAMP) "
            f"ELSE TRY_CAST({s} AS TIMESTAMPTZ)::TIMESTAMP END END AS f_{col}"
        )
    props_paths = ["order_id", "revenue", "currency", "coupon", "products"]
    b_cols.append(
        f"CASE WHEN t_p_props = 'OBJECT' AND p_props <> '{{}}' THEN json_extract(p_props, "
        f"[{', '.join(lit('$.' + k) for k in props_paths)}]) END AS __pp"
    )
    b_cols.append(
        f"CASE WHEN t_p_ctx = 'OBJECT' AND p_ctx <> '{{}}' THEN json_extract(p_ctx, "
        f"[{', '.join(lit('$.' + k) for k in _CTX_PATHS)}]) END AS __cx"
    )
    stage_b = f"SELECT *, {', '.join(b_cols)} FROM ({stage_a})"

    # 3. values with their slow paths; properties' typed fields.
    c_cols = []
    for _, p in (("", "p_uid"), ("", "p_aid"), ("", "p_gid"), ("", "p_pid")):
        c_cols.append(f"CASE WHEN k_{p} IS NULL THEN x_{p} END AS v_{p}")
    for col in ("p_ots", "p_sent"):
        c_cols.append(
            f"CASE WHEN t_{col} <> 'NULL' AND f_{col} IS NULL THEN zy_ts({col}) END AS r_{col}"
        )
    for i, key in enumerate(props_paths, start=1):
        c_cols.append(f"__pp[{i}]::VARCHAR AS q_{key}")
        c_cols.append(f"{_jt(f'__pp[{i}]')} AS tq_{key}")
        c_cols.append(f"{_js(f'__pp[{i}]')} AS sq_{key}")
    stage_c = f"SELECT *, {', '.join(c_cols)} FROM ({stage_b})"

    d_cols = [
        "coalesce(f_p_ots, r_p_ots.value) AS v_p_ots",
        "coalesce(f_p_sent, r_p_sent.value) AS v_p_sent",
        # timestamp is read only when originalTimestamp gave nothing.
        "CASE WHEN coalesce(f_p_ots, r_p_ots.value) IS NULL AND t_p_ts <> 'NULL' "
        "AND f_p_ts IS NULL THEN zy_ts(p_ts) END AS r_p_ts",
    ]
    fast, fast_value, slow = _money_value("q_revenue", "tq_revenue", "sq_revenue")
    d_cols.append(
        f"CASE WHEN tq_revenue IN ('NULL', 'BOOLEAN', 'OBJECT', 'ARRAY') OR {fast} THEN NULL "
        f"ELSE {slow} END AS r_revenue"
    )
    d_cols.append(f"CASE WHEN {fast} THEN {fast_value} END AS f_revenue")
    stage_d = f"SELECT *, {', '.join(d_cols)} FROM ({stage_c})"

    # Products and identifier candidates are few per row and absent from most rows:
    # they are read from a narrow scan of the parts, validated as flat rows (one per
    # item) and listed back per row by a join, which keeps the per-item rules out of
    # list lambdas (DuckDB evaluates big lambdas slowly) and off the rows without any.
    e_cols = [
        "coalesce(v_p_ots, CASE WHEN v_p_ots IS NULL THEN coalesce(f_p_ts, r_p_ts.value) END) "
        "AS __original",
        "CASE WHEN tq_products = 'ARRAY' THEN {'items': coalesce(__pa_items, []), "
        "'errors': coalesce(__pa_errors, [])} END AS __prod",
        "{'items': coalesce(__ia_items, []), 'errors': coalesce(__ia_errors, [])} AS __ids",
    ]
    stage_e = f"SELECT *, {', '.join(e_cols)} FROM ({stage_d})"
    timestamp = (
        f"CASE WHEN __original IS NULL THEN {received} WHEN v_p_sent IS NULL THEN __original "
        f"ELSE make_timestamp(epoch_us({received}) - (epoch_us(v_p_sent) - epoch_us(__original))) "
        f"END AS __timestamp"
    )
    stage_f = f"SELECT *, {timestamp} FROM ({stage_e})"

    # 4. the error list, in the order validate_message adds them.
    event = _Text("p_event", "t_p_event", "s_p_event", lit("event"), numbers=False)
    name_text = _Text("p_name", "t_p_name", "s_p_name", lit("name"), numbers=False)
    order_id = _Text("q_order_id", "tq_order_id", "sq_order_id", lit("properties.order_id"), True)
    coupon = _Text("q_coupon", "tq_coupon", "sq_coupon", lit("properties.coupon"), True)
    mid_ok = (
        f"(t_p_mid = 'NULL' OR (t_p_mid = 'VARCHAR' AND (s_p_mid = '' OR "
        f"length(s_p_mid) <= {MAX_MESSAGE_ID_LENGTH})) OR t_p_mid IN ('BIGINT', 'UBIGINT'))"
    )
    errs: list[_Err] = [
        _err(
            f"NOT {mid_ok}",
            lit("messageId"),
            lit(f"must be a string of at most {MAX_MESSAGE_ID_LENGTH} characters"),
        ),
        _err("t_p_type = 'NULL'", lit("type"), lit(f"missing; one of {types_list}")),
        _err(
            "t_p_type <> 'NULL' AND __kind IS NULL",
            lit("type"),
            f"zy_repr40(p_type) || {lit(' is not one of ' + types_list)}",
        ),
    ]
    for spec in ident_specs[:2]:
        p = next(k for k in spec if k.startswith("k_"))[2:]
        errs.append(_err(f"k_{p} IS NOT NULL", lit(spec["__key"]), f"k_{p}"))
    errs.append(
        _err(
            "v_p_uid IS NULL AND v_p_aid IS NULL AND k_p_uid IS NULL AND k_p_aid IS NULL",
            lit("userId"),
            lit("userId or anonymousId is required"),
        )
    )
    errs += event.errors("__kind = 'track'")
    errs.append(
        _err(
            f"__kind = 'track' AND coalesce({event.value()}, '') = '' "
            f"AND NOT {event.type_bad()} AND NOT {event.too_long()}",
            lit("event"),
            lit("track needs an event name"),
        )
    )
    errs += name_text.errors("__kind IN ('page', 'screen')")
    for key, p, need in (("groupId", "p_gid", "group"), ("previousId", "p_pid", "alias")):
        errs.append(_err(f"k_{p} IS NOT NULL", lit(key), f"k_{p}"))
        errs.append(
            _err(
                f"__kind = '{need}' AND v_{p} IS NULL AND k_{p} IS NULL",
                lit(key),
                lit(f"{need} needs a {key}"),
            )
        )
    for key, col in (
        ("properties", "p_props"),
        ("traits", "p_traits"),
        ("context", "p_ctx"),
        ("integrations", "p_integ"),
    ):
        errs.append(
            _err(
                f"t_{col} NOT IN ('NULL', 'OBJECT')",
                lit(key),
                f"'must be an object, got ' || {_tn(f't_{col}')}",
            )
        )
    errs.append(
        _err(
            "t_p_channel NOT IN ('NULL', 'VARCHAR')",
            lit("channel"),
            f"'must be a string, got ' || {_tn('t_p_channel')}",
        )
    )
    errs.append(_err("r_p_ots.error IS NOT NULL", lit("originalTimestamp"), "r_p_ots.error"))
    errs.append(_err("r_p_ts.error IS NOT NULL", lit("timestamp"), "r_p_ts.error"))
    errs.append(_err("r_p_sent.error IS NOT NULL", lit("sentAt"), "r_p_sent.error"))
    too_late = (
        f"Z is more than {future_hours} hours after the server received it "
        "(after clock-skew correction)"
    )
    errs.append(
        _err(
            f"epoch_us(__timestamp) > epoch_us({received}) + {max_future_us}",
            lit("timestamp"),
            f"zy_iso(__timestamp) || {lit(too_late)}",
        )
    )
    errs.append(
        _err(
            f"epoch_us(__timestamp) <= epoch_us({received}) + {max_future_us} "
            f"AND __timestamp < {earliest}",
            lit("timestamp"),
            f"zy_iso(__timestamp) || {lit(f'Z is before {earliest_text}')}",
        )
    )
    has_pp = "__pp IS NOT NULL"
    errs += order_id.errors(has_pp)
    errs.append(
        _err(
            f"{has_pp} AND tq_revenue IN ('BOOLEAN', 'OBJECT', 'ARRAY')",
            lit("properties.revenue"),
            f"'must be a number or a numeric string, got ' || {_tn('tq_revenue')}",
        )
    )
    errs.append(_err("r_revenue.error IS NOT NULL", lit("properties.revenue"), "r_revenue.error"))
    errs.append(
        _err(
            f"{has_pp} AND tq_currency <> 'NULL' AND NOT coalesce(regexp_full_match("
            f"sq_currency, '[A-Za-z]{{3}}'), FALSE)",
            lit("properties.currency"),
            lit("must be a 3-letter ISO 4217 code such as CNY or USD"),
        )
    )
    errs += coupon.errors(has_pp)
    errs.append(
        _err(
            f"{has_pp} AND tq_products NOT IN ('NULL', 'ARRAY')",
            lit("properties.products"),
            f"'must be an array, got ' || {_tn('tq_products')}",
        )
    )
    conds = ", ".join(f"({e.cond}) AS __c{i}" for i, e in enumerate(errs))
    stage_g0 = f"SELECT *, {conds} FROM ({stage_f})"
    listed = ", ".join(
        f"CASE WHEN __c{i} THEN {{'field': {e.field}, 'reason': {e.reason}}} END"
        for i, e in enumerate(errs)
    )
    all_errors = (
        f"list_filter(flatten([[{listed}], coalesce(__prod.errors, []), "
        f"coalesce(__ids.errors, [])]), lambda x: x IS NOT NULL)"
    )
    oversize = f"(__size IS NOT NULL AND __size > {MAX_EVENT_BYTES})"
    any_cond = " OR ".join(f"coalesce(__c{i}, FALSE)" for i in range(len(errs)))
    bad = (
        f"(__top IS NULL OR NOT __ok OR {oversize} OR {any_cond} "
        f"OR len(coalesce(__prod.errors, [])) > 0 OR len(coalesce(__ids.errors, [])) > 0)"
    )
    errors = (
        f"CASE WHEN __top IS NULL THEN [{{'field': '', 'reason': 'not valid JSON'}}] "
        f"WHEN NOT __ok THEN [{{'field': '', 'reason': 'must be a JSON object, got ' || "
        f"{_tn('__top')}}}] "
        f"WHEN {oversize} THEN [{{'field': '', 'reason': 'message is ' || __size || "
        f"{lit(f' bytes; the limit is {MAX_EVENT_BYTES} bytes (32 KB)')}}}] "
        f"ELSE {all_errors} END"
    )
    stage_g = f"SELECT *, {bad} AS __bad FROM ({stage_g0})"

    channel = _channel_sql()
    revenue = "coalesce(f_revenue, r_revenue.value)"
    currency = "CASE WHEN tq_currency = 'VARCHAR' THEN upper(sq_currency) END"
    out = {
        "message_id": (
            "CASE WHEN t_p_mid = 'VARCHAR' AND s_p_mid <> '' THEN s_p_mid "
            "WHEN t_p_mid IN ('BIGINT', 'UBIGINT') THEN p_mid END"
        ),
        "type": "__kind",
        "event": f"CASE WHEN __kind = 'track' THEN {event.value()} END",
        "name": f"CASE WHEN __kind IN ('page', 'screen') THEN {name_text.value()} END",
        "user_id": "v_p_uid",
        "anonymous_id": "v_p_aid",
        "one_id": "NULL::VARCHAR",
        "timestamp": "__timestamp",
        "received_at": received,
        "sent_at": "v_p_sent",
        "original_timestamp": "__original",
        "source": lit(source),
        "channel": channel,
        "order_id": f"CASE WHEN {has_pp} THEN {order_id.value()} END",
        "revenue": revenue,
        "currency": currency,
        "coupon": f"CASE WHEN {has_pp} THEN {coupon.value()} END",
        "products": "__prod.items",
        "group_id": "v_p_gid",
        "previous_id": "v_p_pid",
        "identifiers": "coalesce(__ids.items, [])",
        "properties": "CASE WHEN t_p_props = 'OBJECT' THEN p_props END",
        "traits": "CASE WHEN t_p_traits = 'OBJECT' THEN p_traits END",
        "context": "CASE WHEN t_p_ctx = 'OBJECT' THEN p_ctx END",
        "person_key": "NULL::BIGINT",  # set by store_events
    }
    assert list(out) == EVENTS.names
    select = ", ".join(f"{expr} AS {ident(name)}" for name, expr in out.items())
    return (
        f"SELECT {select}, __row, __bad, "
        f"CASE WHEN __bad THEN {errors} END AS __errors, "
        f"CASE WHEN __bad THEN {raw_sql} END AS __raw, "
        f"CASE WHEN NOT __bad AND NOT (t_p_mid = 'VARCHAR' AND s_p_mid <> '') "
        f"AND t_p_mid NOT IN ('BIGINT', 'UBIGINT') THEN md5({hash_sql}) END AS __h, "
        "__lines "
        f"FROM ({stage_g})"
    )


def _quantity(q: str, field_sql: str, t: str, s: str) -> tuple[str, list[_Err]]:
    """``models._quantity``: a whole number within INT32 (value, errors); ``t``/``s`` are
    the value's json type and string value."""
    stripped = _py_strip(s)
    whole = (
        f"(CASE WHEN {t} IN ('BIGINT', 'UBIGINT', 'HUGEINT') THEN TRY_CAST({q} AS HUGEINT) "
        f"WHEN {t} = 'DOUBLE' AND {q}::DOUBLE = floor({q}::DOUBLE) "
        f"AND abs({q}::DOUBLE) < 1e30 THEN {q}::DOUBLE::HUGEINT "
        f"WHEN {t} = 'VARCHAR' AND regexp_full_match({stripped}, '-*[0-9]+') "
        f"THEN TRY_CAST({stripped} AS HUGEINT) END)"
    )
    value = f"CASE WHEN abs({whole}) <= {_INT32_MAX} THEN {whole}::INTEGER END"
    errors = [
        _err(
            f"{t} <> 'NULL' AND {whole} IS NULL",
            field_sql,
            f"'must be a whole number, got ' || zy_repr40({q})",
        ),
        _err(f"abs({whole}) > {_INT32_MAX}", field_sql, "'out of range'"),
    ]
    return value, errors


def _money(q: str, field_sql: str, t: str, s: str) -> tuple[str, list[_Err]]:
    """``models._money`` on a JSON-text expression: (value, errors); ``t``/``s`` are the
    value's json type and string value."""
    fast, fast_value, slow = _money_value(q, t, s)
    slow_call = (
        f"(CASE WHEN {t} IN ('NULL', 'BOOLEAN', 'OBJECT', 'ARRAY') OR {fast} THEN NULL "
        f"ELSE {slow} END)"
    )
    value = f"CASE WHEN {fast} THEN {fast_value} ELSE {slow_call}.value END"
    errors = [
        _err(
            f"{t} IN ('BOOLEAN', 'OBJECT', 'ARRAY')",
            field_sql,
            f"'must be a number or a numeric string, got ' || {_tn(t)}",
        ),
        _err(f"{slow_call}.error IS NOT NULL", field_sql, f"{slow_call}.error"),
    ]
    return value, errors


def products_sql(parts_sql: str) -> str:
    """``models._products`` as a relation ``(__row, item, err)``: one row per element of
    every ``properties.products`` array, ordered by ``__row`` and element.

    Each element is a flat row (its keys extracted once); the rules run as plain
    vectorised expressions. ``item`` is the element's product (NULL when it is not an
    object), ``err`` the list of its ``{field, reason}`` errors (NULL entries mean
    none). A message's ``items`` are its elements' ``item`` in order, its ``errors``
    the non-NULL entries of its ``err`` lists in order: the lists are assembled in
    Arrow (:func:`zhiying.ingest.bulk.with_side_results`), which costs far less than
    ordered ``list()`` aggregates."""
    keys = [*_PRODUCT_TEXT, "price", "quantity"]
    paths = ", ".join(lit("$." + k) for k in keys)
    where = "'properties.products[' || (__i - 1) || ']'"
    typed = ", ".join(
        f"{_jt(f'q[{n}]')} AS t{n}, {_js(f'q[{n}]')} AS s{n}" for n in range(1, len(keys) + 1)
    )
    fields: list[str] = []
    errors: list[_Err] = []
    for n, key in enumerate(_PRODUCT_TEXT, start=1):
        text = _Text(f"q[{n}]", f"t{n}", f"s{n}", f"{where} || '.{key}'", numbers=True)
        fields.append(f"'{key}': {text.value()}")
        errors += text.errors()
    np, nq = len(keys) - 1, len(keys)
    price, price_errors = _money(f"q[{np}]", f"{where} || '.price'", f"t{np}", f"s{np}")
    quantity, quantity_errors = _quantity(f"q[{nq}]", f"{where} || '.quantity'", f"t{nq}", f"s{nq}")
    fields += [f"'price': {price}", f"'quantity': {quantity}"]
    errors += price_errors + quantity_errors
    elements = (
        "SELECT __row, it, __i, coalesce(json_type(it) = 'OBJECT', FALSE) AS ok, "
        f"CASE WHEN json_type(it) = 'OBJECT' THEN json_extract(it, [{paths}])::VARCHAR[] "
        "END AS q FROM (SELECT __row, unnest(from_json(q_products, '[\"JSON\"]')) AS it, "
        "unnest(range(1, json_array_length(q_products)::BIGINT + 1)) AS __i "
        f"FROM ({_product_lists(parts_sql)}) WHERE q_products <> '[]')"
    )
    checked = (
        f"SELECT __row, __i, CASE WHEN ok THEN {{{', '.join(fields)}}} END AS item, "
        f"CASE WHEN NOT ok THEN [{{'field': {where}, "
        f"'reason': 'must be an object, got ' || {_tn(_jt('it'))}}}] "
        f"WHEN {' OR '.join(f'coalesce({e.cond}, FALSE)' for e in errors)} "
        f"THEN [{', '.join(str(e) for e in errors)}] END AS errs "
        f"FROM (SELECT *, {typed} FROM ({elements}))"
    )
    return f"SELECT __row, item, errs AS err FROM ({checked}) ORDER BY __row, __i"


def _product_lists(parts_sql: str) -> str:
    """``(__row, q_products)`` of the parts whose ``properties.products`` is an array.

    A cheap text test skips the rows that cannot have one (a JSON key can be
    written with escapes, so text with a backslash is always parsed)."""
    return (
        "SELECT __row, q_products FROM (SELECT __row, CASE WHEN json_type(p_props) = 'OBJECT' "
        "THEN json_extract(p_props, '$.products') END AS q_products FROM "
        f"(SELECT __row, p_props FROM ({parts_sql}) WHERE contains(p_props, 'products') "
        "OR contains(p_props, '\\'))) WHERE json_type(q_products) = 'ARRAY'"
    )


def _candidate_lists(parts_sql: str) -> str:
    """``(__row, __cands)`` of the parts that may carry identifiers (same text test)."""
    maybe = " OR ".join(
        f"contains(p_ctx, {lit(k)})" for k in ("device", "traits", "externalIds", "\\")
    )
    kind = (
        "CASE WHEN json_type(p_type) = 'VARCHAR' AND p_type ->> '$' = 'identify' "
        "THEN 'identify' END"
    )
    narrow = (
        f"SELECT __row, p_traits, p_ctx, {_jt('p_ctx')} AS t_p_ctx, "
        f"{_jt('p_traits')} AS t_p_traits, {kind} AS __kind, "
        "CASE WHEN json_type(p_ctx) = 'OBJECT' AND p_ctx <> '{}' THEN json_extract(p_ctx, "
        f"[{', '.join(lit('$.' + k) for k in _CTX_PATHS)}]) END AS __cx "
        f"FROM ({parts_sql}) WHERE (p_traits IS NOT NULL AND p_traits <> 'null') OR {maybe}"
    )
    # each traits object parsed once for all its identifier keys
    paths = f"[{', '.join(lit('$.' + key) for key, _ in TRAIT_IDENTIFIERS)}]"
    bags = ", ".join(
        f"CASE WHEN {guard} THEN json_extract({bag}, {paths}) END AS {name}"
        for name, guard, bag in _TRAIT_BAGS
    )
    return f"SELECT __row, {_candidates_sql()} AS __cands FROM (SELECT *, {bags} FROM ({narrow}))"


# (column, guard, JSON text) of the two traits objects identifiers are read from
_TRAIT_BAGS: Final = (
    ("__tv", "__kind = 'identify' AND t_p_traits = 'OBJECT' AND p_traits <> '{}'", "p_traits"),
    ("__ctv", "json_type(__cx[2]) = 'OBJECT' AND __cx[2]::VARCHAR <> '{}'", "__cx[2]"),
)


def identifiers_sql(parts_sql: str) -> str:
    """``models._identifiers`` as a relation ``(__row, item, err)`` over the rows with at
    least one candidate, ordered by ``__row`` and candidate: ``item`` a normalised
    ``{kind, value}`` not seen earlier in the message (else NULL), ``err`` a candidate's
    ``{field, reason}`` (else NULL). A message's ``items`` and ``errors`` are the
    non-NULL ``item`` and ``err`` values in order (assembled in Arrow, as for
    :func:`products_sql`)."""
    resolved = (
        "SELECT __row, __i, c.kind AS kind, c.field AS field, c.raw AS raw, c.err AS err "
        "FROM (SELECT __row, unnest(__cands) AS c, unnest(range(1, len(__cands) + 1)) AS __i "
        f"FROM ({_candidate_lists(parts_sql)}) WHERE len(__cands) > 0)"
    )
    checked = (
        "SELECT __row, __i, kind, field, CASE WHEN err IS NOT NULL "
        "THEN {'value': NULL::VARCHAR, 'error': err} "
        f"ELSE {_ident_expr('kind', 'raw')} END AS r FROM ({resolved}) "
        "WHERE err IS NOT NULL OR NOT (raw IS NULL OR raw IN ('null', '\"\"'))"
    )
    first = (
        "SELECT *, r.value IS NOT NULL AND row_number() OVER "
        "(PARTITION BY __row, kind, r.value ORDER BY __i) = 1 AS __first "
        f"FROM ({checked})"
    )
    return (
        "SELECT __row, CASE WHEN __first THEN {'kind': kind, 'value': r.value} END AS item, "
        "CASE WHEN r.error IS NOT NULL THEN {'field': field, 'reason': r.error} END AS err "
        f"FROM ({first}) WHERE __first OR r.error IS NOT NULL ORDER BY __row, __i"
    )


def _candidates_sql() -> str:
    """``models._identifiers``' candidates in its order: {kind, raw, field, err} structs."""

    def cand(kind: str, raw: str, field_sql: str) -> str:
        return (
            f"{{'kind': {kind}, 'raw': ({raw})::VARCHAR, 'field': {field_sql}, "
            f"'err': NULL::VARCHAR}}"
        )

    parts: list[str] = []
    device = cand(lit(DEVICE_ID), "json_extract(__cx[1], '$.id')", "'context.device.id'")
    parts.append(f"CASE WHEN json_type(__cx[1]) = 'OBJECT' THEN [{device}] END")
    for where, (values, guard, _) in zip(("traits", "context.traits"), _TRAIT_BAGS, strict=True):
        items = ", ".join(
            cand(lit(kind), f"{values}[{i}]", lit(f"{where}.{key}"))
            for i, (key, kind) in enumerate(TRAIT_IDENTIFIERS, start=1)
        )
        parts.append(f"CASE WHEN {guard} THEN [{items}] END")
    ext = "__cx[3]"
    where = "'context.externalIds[' || (i - 1) || ']'"
    external = cand("lower(it ->> '$.type')", "json_extract(it, '$.id')", where + " || '.id'")
    item = (
        "CASE WHEN coalesce(json_type(it), 'NULL') <> 'OBJECT' THEN "
        f"{{'kind': NULL, 'raw': NULL, 'field': {where}, "
        f"'err': 'must be an object, got ' || {_tn(_jt('it'))}}} "
        "WHEN json_type(it, '$.type') IS DISTINCT FROM 'VARCHAR' OR it ->> '$.type' = '' THEN "
        f"{{'kind': NULL, 'raw': NULL, 'field': {where} || '.type', "
        "'err': 'must be a non-empty string'} "
        f"ELSE {external} END"
    )
    parts.append(
        f"CASE WHEN t_p_ctx = 'OBJECT' AND coalesce(json_type({ext}), 'NULL') <> 'NULL' THEN "
        f"CASE WHEN json_type({ext}) <> 'ARRAY' THEN [{{'kind': NULL, 'raw': NULL, "
        f"'field': 'context.externalIds', 'err': 'must be an array, got ' || {_tn(_jt(ext))}}}] "
        f"ELSE list_transform(from_json({ext}, '[\"JSON\"]'), lambda it, i: {item}) END END"
    )
    return (
        "CASE WHEN t_p_ctx = 'OBJECT' OR (__kind = 'identify' AND t_p_traits = 'OBJECT') "
        f"THEN flatten([{', '.join(f'coalesce({p}, [])' for p in parts)}]) END"
    )


def _ident_expr(kind: str, raw: str) -> str:
    """``normalize(kind, raw)`` as {value, error}: SQL for the shapes whose result is
    plain (custom kinds and device ids with a clean string, ASCII e-mail addresses
    that email_validator provably leaves alone but for case), the UDF otherwise."""
    text = f"({raw} ->> '$')"
    simple_kind = (
        f"{kind} NOT IN ({lit(PHONE)}, {lit(EMAIL)}) AND regexp_full_match({kind}, "
        f"'{CUSTOM_KIND.pattern.strip('^$')}')"
    )
    clean = (
        f"json_type({raw}) = 'VARCHAR' AND unicode({text}) BETWEEN 33 AND 126 "
        f"AND unicode(right({text}, 1)) BETWEEN 33 AND 126 "
        f"AND length({text}) <= {MAX_VALUE_LENGTH}"
    )
    special = ", ".join(lit(name) for name in SPECIAL_USE_DOMAIN_NAMES)
    email = (
        f"{kind} = {lit(EMAIL)} AND json_type({raw}) = 'VARCHAR' "
        f"AND regexp_full_match({text}, '{_EMAIL_FAST}') AND strlen({text}) <= 254 "
        f"AND strlen(split_part({text}, '@', 1)) <= 64 AND NOT contains({text}, '--') "
        f"AND lower(regexp_extract({text}, '[^.]+$')) NOT IN ({special})"
    )
    return (
        f"CASE WHEN {simple_kind} AND {clean} THEN {{'value': {text}, 'error': NULL::VARCHAR}} "
        f"WHEN {email} THEN {{'value': lower({text}), 'error': NULL::VARCHAR}} "
        f"ELSE zy_ident({kind}, {raw}) END"
    )


def _channel_sql() -> str:
    """``models.derive_channel``."""
    ctx_channel = "(__cx[4] ->> '$')"
    explicit = (
        "CASE WHEN t_p_channel = 'VARCHAR' AND s_p_channel <> '' THEN s_p_channel "
        "WHEN t_p_ctx = 'OBJECT' AND p_ctx <> '{}' AND json_type(__cx[4]) = 'VARCHAR' "
        f"AND {ctx_channel} <> '' THEN {ctx_channel} END"
    )
    lowered = f"lower({_py_strip(f'({explicit})')})"
    mapped = " ".join(f"WHEN {lit(k)} THEN {lit(v)}" for k, v in _SEGMENT_CHANNELS)

    def truthy(key: str) -> str:
        return _truthy(f"__cx[{_CTX_PATHS.index(key) + 1}]")

    has_ctx = "t_p_ctx = 'OBJECT' AND p_ctx <> '{}'"
    return (
        f"CASE WHEN ({explicit}) IS NOT NULL THEN (CASE {lowered} {mapped} ELSE {lowered} END) "
        f"WHEN {has_ctx} AND ({truthy('app')} OR {truthy('device')}) THEN 'app' "
        f"WHEN {has_ctx} AND ({truthy('page')} OR {truthy('userAgent')}) THEN 'web' "
        "ELSE 'server' END"
    )
