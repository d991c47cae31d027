"""SQL that reads a file and turns its rows into message parts (pure: builds text only).

Two kinds of input reach :func:`zhiying.ingest.bulk_rules.checked_select`:

* JSONL of Segment messages: each line's top-level keys are extracted as JSON
  text, exactly what the HTTP endpoint would decode;
* rows of a CSV, whitespace-separated text, Parquet or JSONL file with a
  :class:`~zhiying.ingest.mapping.Mapping`: each target of the mapping is
  rendered as the JSON text a Segment client would have sent (identifiers go to
  ``context.externalIds``, typed order fields to ``properties``), so both kinds
  meet the same validation rules.

Every relation carries ``__row``, the 1-based data row number of the file
(header and blank lines not counted; for JSONL, the line number).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zhiying.errors import ValidationFailed
from zhiying.ingest.bulk_rules import PARTS, ident, lit
from zhiying.ingest.formats import FileFormat, ImportKind
from zhiying.ingest.mapping import (
    LineItemSpec,
    Mapping,
    ProductsColumn,
    ValueSpecModel,
)
from zhiying.ingest.models import MAX_EVENT_BYTES

ORDER_COMPLETED = "Order Completed"
_SIZE_MARGIN = 1024  # a line this far under the limit cannot exceed it once compacted
_US = chr(31)  # unit separator between hashed fields


@dataclass(frozen=True)
class Column:
    """A source column and its DuckDB type (from ``DESCRIBE``)."""

    name: str
    type: str


def source_sql(path: Path, fmt: FileFormat, mapping: Mapping, header: Sequence[str] = ()) -> str:
    """A relation over the file with the source columns and ``__row``.

    ``header`` is needed for the whitespace format (its column names); CSV is
    read with every column as text so identifiers keep their leading zeros.
    """
    p = lit(str(path))
    src = mapping.source
    if fmt == "parquet":
        return (
            f"SELECT * EXCLUDE (file_row_number), file_row_number + 1 AS __row "
            f"FROM read_parquet({p}, file_row_number = true)"
        )
    if fmt == "csv":
        nulls = ", ".join(lit(v) for v in src.null_values)
        return (
            f"SELECT * EXCLUDE (ordinality), ordinality AS __row FROM read_csv({p}, "
            f"header = {str(src.header).lower()}, delim = {lit(src.delimiter)}, "
            f"quote = {lit(src.quote)}, all_varchar = true, nullstr = [{nulls}], "
            f"strict_mode = false) WITH ORDINALITY"
        )
    lines = lines_sql(path)
    if fmt == "whitespace":
        fields = "regexp_split_to_array(regexp_replace(line, '^\\s+|\\s+$', '', 'g'), '\\s+')"
        cols = ", ".join(
            f"nullif(__f[{i}], '') AS {ident(name)}" for i, name in enumerate(header, start=1)
        )
        skip = 1 if src.header else 0
        return (
            f"SELECT {cols}, __row - {skip} AS __row FROM (SELECT {fields} AS __f, __row "
            f"FROM ({lines}) WHERE __row > {skip} AND regexp_matches(line, '\\S'))"
        )
    # jsonl read as rows of a mapping: DuckDB detects the columns.
    return (
        f"SELECT *, row_number() OVER () AS __row FROM read_json({p}, format = 'newline_delimited')"
    )


def lines_sql(path: Path) -> str:
    """Every line of a text file (gzip allowed) with its 1-based line number ``__row``.

    Read as a one-column CSV whose delimiter and quote never occur in JSON text.
    """
    return (
        f"SELECT line, ordinality AS __row FROM read_csv({lit(str(path))}, "
        f"columns = {{'line': 'VARCHAR'}}, header = false, delim = chr(1), quote = '', "
        f"escape = '', auto_detect = false, max_line_size = 67108864, strict_mode = false, "
        f"null_padding = true) WITH ORDINALITY"
    )


def segment_parts_sql(path: Path) -> str:
    """Message parts of a JSONL file of Segment messages (blank lines skipped).

    A line that starts with ``{`` is parsed once: its keys are read into a STRUCT of
    JSON texts (``from_json``; its fields are columns, where the elements of a
    ``json_extract`` list would be copied out one by one) under ``try``, which yields
    NULL only for malformed JSON. A key that holds ``null`` reads as SQL NULL, as an
    absent key does; the rules treat both alike. Only the other lines (not objects,
    or not JSON) are parsed again to tell which.
    """
    shape = "{" + ", ".join(f'"{key}": "JSON"' for key, _ in PARTS) + "}"
    parts = ", ".join(f"__j.{ident(key)}::VARCHAR AS {col}" for key, col in PARTS)
    size = (
        f"CASE WHEN strlen(line) > {MAX_EVENT_BYTES - _SIZE_MARGIN} AND __valid "
        f"THEN strlen(json(line)) ELSE strlen(line) END"
    )
    object_start = "(left(line, 1) = '{' OR regexp_matches(line, '^[ \\t\\r\\n]*[{]'))"
    return (
        f"SELECT __row, line AS __raw, NULL::VARCHAR AS __hsrc, 1 AS __lines, __top, "
        f"coalesce(__top = 'OBJECT', FALSE) AS __ok, {size} AS __size, {parts} "
        f"FROM (SELECT line, __row, __j, __valid, CASE WHEN __j IS NOT NULL THEN 'OBJECT' "
        f"WHEN __valid THEN json_type(line) END AS __top "
        f"FROM (SELECT line, __row, __j, __j IS NOT NULL OR json_valid(line) AS __valid "
        f"FROM (SELECT line, __row, CASE WHEN {object_start} THEN "
        f"try(from_json(line, {lit(shape)})) END AS __j "
        f"FROM ({lines_sql(path)}) "
        f"WHERE line IS NOT NULL AND (left(line, 1) = '{{' OR regexp_matches(line, '\\S')))))"
    )


# --- mapped rows ---------------------------------------------------------------------


def _text_expr(spec: ValueSpecModel, columns: dict[str, Column]) -> str:
    """The spec's value as SQL, after its text transforms (no type conversion yet)."""
    if spec.row_number:
        base = "__row"
    elif spec.column is not None:
        if spec.column not in columns:
            raise KeyError(spec.column)
        base = ident(spec.column)
    else:
        value = spec.value
        if isinstance(value, bool):
            base = "TRUE" if value else "FALSE"
        elif isinstance(value, int | float):
            base = repr(value)
        else:
            base = lit(str(value))
    if not spec.is_text_transformed:
        return base
    text = f"({base})::VARCHAR"
    if spec.strip:
        text = f"trim({text})"
    if spec.lower:
        text = f"lower({text})"
    if spec.upper:
        text = f"upper({text})"
    if spec.zfill:
        n = spec.zfill
        text = f"(CASE WHEN length({text}) < {n} THEN lpad({text}, {n}, '0') ELSE {text} END)"
    if spec.prefix:
        text = f"({lit(spec.prefix)} || {text})"
    return text


def _is_temporal(sql_type: str) -> bool:
    return sql_type.startswith(("TIMESTAMP", "DATE"))


def _timestamp_json(spec: ValueSpecModel, columns: dict[str, Column], timezone: str) -> str:
    """An ISO-8601 JSON string for a timestamp spec; unreadable values pass through as
    text so the message rules reject them with the HTTP path's reason."""
    base = _text_expr(spec, columns)
    col = columns.get(spec.column or "")
    utc = f"timezone('UTC', timezone({lit(timezone)}, __t))"
    if col is not None and _is_temporal(col.type) and not spec.is_text_transformed:
        if "WITH TIME ZONE" in col.type:
            parsed = f"timezone('UTC', {base})"
        else:
            parsed = f"timezone('UTC', timezone({lit(timezone)}, {base}::TIMESTAMP))"
        return f"to_json(strftime({parsed}, '%Y-%m-%dT%H:%M:%S.%fZ'))"
    if spec.format is None:
        # ISO text as sent; naive values in a non-UTC zone get the zone's offset.
        if timezone == "UTC":
            return f"to_json(({base})::VARCHAR)"
        naive = f"TRY_CAST(({base})::VARCHAR AS TIMESTAMP)"
        has_zone = f"regexp_matches(({base})::VARCHAR, '(Z|[+-][0-9]{{2}}:?[0-9]{{2}})$')"
        return (
            f"to_json(CASE WHEN NOT {has_zone} AND {naive} IS NOT NULL THEN "
            f"strftime({utc.replace('__t', naive)}, '%Y-%m-%dT%H:%M:%S.%fZ') "
            f"ELSE ({base})::VARCHAR END)"
        )
    parsed_naive = f"try_strptime(({base})::VARCHAR, {lit(spec.format)})"
    return (
        f"to_json(coalesce(strftime({utc.replace('__t', f'{parsed_naive}::TIMESTAMP')}, "
        f"'%Y-%m-%dT%H:%M:%S.%fZ'), ({base})::VARCHAR))"
    )


_ID_TYPES = ("VARCHAR", "BIGINT", "INTEGER", "UBIGINT", "HUGEINT")
_CASTS = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "number": "DOUBLE",
    "decimal": "DECIMAL(38, 10)",
    "boolean": "BOOLEAN",
}


def _value_json(
    spec: ValueSpecModel, columns: dict[str, Column], timezone: str, inferred: str | None = None
) -> str:
    """The spec's value as JSON text (typed per ``spec.type``; otherwise as read)."""
    kind = spec.type or inferred
    if kind == "timestamp":
        return _timestamp_json(spec, columns, timezone)
    base = _text_expr(spec, columns)
    if kind == "json":
        return f"json(({base})::VARCHAR)"
    if kind == "integer":
        # TRY_CAST would round 1.5 to 2; a whole number is digits only.
        return (
            f"CASE WHEN regexp_full_match(trim(({base})::VARCHAR), '-?[0-9]+') "
            f"THEN to_json(TRY_CAST(trim(({base})::VARCHAR) AS BIGINT)) "
            f"ELSE to_json(({base})::VARCHAR) END"
        )
    if kind is not None:
        cast = _CASTS[kind]
        # An unreadable value stays text; the row then fails the rule for that field
        # (typed Segment fields) or keeps the text (free-form properties and traits).
        return f"coalesce(to_json(TRY_CAST({base} AS {cast})), to_json(({base})::VARCHAR))"
    col = columns.get(spec.column or "")
    if col is not None and _is_temporal(col.type) and not spec.is_text_transformed:
        return _timestamp_json(spec, columns, timezone)
    return f"to_json({base})"


def _object_json(entries: Sequence[tuple[str, str]], base: str | None = None) -> str | None:
    """``json_object`` of (key, JSON-text expression) pairs, merged over ``base``."""
    if not entries:
        return base
    args = ", ".join(f"{lit(k)}, ({v})::JSON" for k, v in entries)
    obj = f"json_object({args})"
    return obj if base is None else f"json_merge_patch(coalesce({base}, '{{}}'), {obj})"


@dataclass(frozen=True)
class MappedPlan:
    """How a mapping reads one file: the parts SQL, whether rows are grouped, and the
    expressions (over the parts) of a row's raw text and of the text its derived
    messageId hashes."""

    sql: str
    grouped: bool
    raw_sql: str = "__raw"
    hash_sql: str = "__hsrc"
    raw_lookup: str | None = None
    """When set, the parts carry no source row: this relation ``(__row, __src)`` over the
    source gives it, to be read for the rejected rows only (``raw_by_lookup``); their raw
    text is ``to_json(__src)`` of its Arrow form, as when ``__src`` travels in the parts."""


_SEGMENT_NAMES = {
    "messageid": "message_id",
    "message_id": "message_id",
    "type": "type",
    "event": "event",
    "name": "name",
    "userid": "user_id",
    "user_id": "user_id",
    "anonymousid": "anonymous_id",
    "anonymous_id": "anonymous_id",
    "groupid": "group_id",
    "group_id": "group_id",
    "timestamp": "timestamp",
    "channel": "channel",
    "order_id": "order_id",
    "revenue": "revenue",
    "currency": "currency",
    "coupon": "coupon",
}


def default_mapping(columns: Sequence[Column], kind: ImportKind) -> Mapping:
    """The mapping used without ``--mapping``: columns named like Segment fields.

    ``messageId``/``message_id``, ``type``, ``event``, ``userId``/``user_id``,
    ... map to themselves; ``properties``/``traits``/``context`` columns hold a
    JSON object; ``properties.X``/``traits.X``/``context.X`` columns set key X;
    ``products`` holds the product list; every other column becomes a property.
    """
    data: dict[str, object] = {"kind": kind}
    props: dict[str, str] = {}
    traits: dict[str, str] = {}
    context: dict[str, str] = {}
    for col in columns:
        low = col.name.lower()
        if low in _SEGMENT_NAMES:
            data[_SEGMENT_NAMES[low]] = col.name
        elif low in ("properties", "traits", "context"):
            data[f"{low}_json"] = col.name
        elif low == "products":
            data["products"] = col.name
        elif low.startswith("properties."):
            props[col.name.split(".", 1)[1]] = col.name
        elif low.startswith("traits."):
            traits[col.name.split(".", 1)[1]] = col.name
        elif low.startswith("context."):
            context[col.name.split(".", 1)[1]] = col.name
        elif low in ("sentat", "sent_at", "originaltimestamp", "original_timestamp", "receivedat"):
            continue
        else:
            props[col.name] = col.name
    data["properties"] = props
    data["traits"] = traits
    data["context"] = context
    from zhiying.ingest.mapping import parse_mapping

    return parse_mapping(data, where="default mapping")


def mapped_parts_sql(
    source: str,
    columns: Sequence[Column],
    mapping: Mapping,
    kind: ImportKind,
    inferred: dict[str, str] | None = None,
    raw_by_lookup: bool = False,
) -> MappedPlan:
    """Message parts for the rows of ``source`` read through ``mapping``.

    ``kind`` fixes the message: ``users`` → ``identify``; ``orders`` →
    ``track`` ``Order Completed`` (grouped by ``order_id`` when products are
    line items); ``events`` → ``type`` from the mapping, else ``track``.
    ``inferred`` gives a type per column for the ``*_from_*_columns`` options.
    ``raw_by_lookup`` (ungrouped rows of a source that can be re-read by ``__row``
    cheaply, i.e. Parquet): the parts do not carry the source row, the text a derived
    messageId hashes is computed only where the row has no usable messageId, and the
    raw text of rejected rows comes from ``MappedPlan.raw_lookup``.
    """
    cols = {c.name: c for c in columns}
    tz = mapping.source.timezone
    inferred = inferred or {}
    missing = sorted(c for c in mapping.used_columns() if c not in cols)
    if missing:
        raise ValidationFailed(
            f"the mapping names columns the file does not have: {', '.join(missing)}; "
            f"the file has: {', '.join(cols)}",
            field="mapping",
        )

    def val(spec: ValueSpecModel) -> str:
        return _value_json(spec, cols, tz)

    def text_val(spec: ValueSpecModel | None) -> str | None:
        # Segment's id and name fields keep what was read (numbers stay numbers,
        # as a client would send them), after transforms.
        if spec is None:
            return None
        plain = spec.type is None and spec.column is not None and not spec.is_text_transformed
        if plain and cols[str(spec.column)].type in _ID_TYPES:
            return f"to_json({ident(str(spec.column))})"
        return val(spec)

    rest = [c for c in columns if c.name not in mapping.used_columns()]

    def rest_entries() -> list[tuple[str, str]]:
        return [
            (
                c.name,
                _value_json(
                    ValueSpecModel(column=c.name),
                    cols,
                    tz,
                    inferred.get(c.name) if mapping.infer_types else None,
                ),
            )
            for c in rest
        ]

    if kind == "users":
        msg_type = "to_json('identify')"
    elif kind == "orders":
        msg_type = "to_json('track')"
    else:
        msg_type = text_val(mapping.type) or "to_json('track')"
    event = text_val(mapping.event)
    if kind == "orders" and event is None:
        event = f"to_json({lit(ORDER_COMPLETED)})"

    line_items = isinstance(mapping.products, LineItemSpec)
    grouped = kind == "orders" and line_items and mapping.order_id is not None

    prop_entries = [(k, val(s)) for k, s in mapping.properties.items()]
    if mapping.properties_from_other_columns:
        prop_entries += rest_entries()
    for key, spec in (
        ("order_id", mapping.order_id),
        ("currency", mapping.currency),
        ("coupon", mapping.coupon),
    ):
        text = text_val(spec)
        if text is not None:
            prop_entries.append((key, text))
    if mapping.revenue is not None:
        prop_entries.append(("revenue", _money_json(mapping.revenue, cols)))
    line = "NULL"
    if isinstance(mapping.products, ProductsColumn):
        col = cols[mapping.products.column]
        ref = ident(col.name)
        prod = f"json({ref})" if col.type in ("VARCHAR", "JSON") else f"to_json({ref})"
        prop_entries.append(("products", prod))
    elif isinstance(mapping.products, LineItemSpec):
        line = _line_item_json(mapping.products, cols, tz)
        if not grouped:
            prop_entries.append(("products", f"json_array(({line})::JSON)"))
    pay = "NULL"
    if mapping.payment_type is not None:
        pay = f"({_text_expr(mapping.payment_type, cols)})::VARCHAR"
        if not grouped:
            prop_entries.append(
                ("payment_types", f"to_json(list_filter([{pay}], lambda x: x IS NOT NULL))")
            )

    traits_entries = [(k, val(s)) for k, s in mapping.traits.items()]
    if mapping.traits_from_all_columns:
        traits_entries += rest_entries()

    ctx_entries = [(k, val(s)) for k, s in mapping.context.items()]
    if mapping.identifiers:
        ext = ", ".join(
            f"{{'type': {lit(k)}, 'id': ({_text_expr(spec, cols)})::VARCHAR}}"
            for k, spec in mapping.identifiers.items()
        )
        ctx_entries.append(
            ("externalIds", f"to_json(list_filter([{ext}], lambda x: x.id IS NOT NULL))")
        )

    def base(col: str | None) -> str | None:
        return None if col is None else f"({ident(col)})::VARCHAR"

    parts: dict[str, str | None] = {
        "p_mid": text_val(mapping.message_id),
        "p_type": msg_type,
        "p_uid": text_val(mapping.user_id),
        "p_aid": text_val(mapping.anonymous_id),
        "p_event": event,
        "p_name": text_val(mapping.name),
        "p_gid": text_val(mapping.group_id),
        "p_pid": None,
        "p_props": _object_json(prop_entries, base(mapping.properties_json)),
        "p_traits": _object_json(traits_entries, base(mapping.traits_json)),
        "p_ctx": _object_json(ctx_entries, base(mapping.context_json)),
        "p_integ": None,
        "p_channel": text_val(mapping.channel),
        "p_ots": None,
        "p_ts": None if mapping.timestamp is None else _timestamp_json(mapping.timestamp, cols, tz),
        "p_sent": None,
    }
    hashed = sorted(mapping.used_columns() | {c.name for c in rest})

    def content(ref: Callable[[str], str]) -> str:
        return (
            f"concat_ws({lit(_US)}, {lit(mapping.id_namespace)}, {lit(kind)}"
            + "".join(f", coalesce(({ref(c)})::VARCHAR, chr(0))" for c in hashed)
            + (", __row::VARCHAR" if _uses_row(mapping) else "")
            + ")"
        )

    src = "struct_pack(" + ", ".join(f"{ident(c.name)} := {ident(c.name)}" for c in columns) + ")"
    row_parts = ", ".join(f"({expr or 'NULL'})::VARCHAR AS {col}" for col, expr in parts.items())
    key = ""
    if grouped and mapping.order_id is not None:
        key = f", ({_text_expr(mapping.order_id, cols)})::VARCHAR AS __key"
    size = " + ".join(f"coalesce(strlen({col}), 0)" for col in parts) + " + 200"
    head = (
        f"SELECT __row, __raw, __hsrc, __lines, 'OBJECT' AS __top, TRUE AS __ok, {size} AS __size"
    )
    if not grouped and raw_by_lookup:
        # A messageId JSON text that is not a non-empty string may lead to a derived id
        # (numbers do not, but hashing them too is harmless): the rules decide.
        m = f"(({parts['p_mid'] or 'NULL'})::VARCHAR)"
        mid = f"{m} IS NULL OR left({m}, 1) <> '\"' OR {m} = '\"\"'"
        rows = (
            f"SELECT __row, NULL::VARCHAR AS __raw, CASE WHEN {mid} THEN {content(ident)} "
            f"END AS __hsrc, {row_parts} FROM ({source})"
        )
        return MappedPlan(
            f"{head}, {', '.join(parts)} FROM (SELECT *, 1 AS __lines FROM ({rows}))",
            grouped=False,
            raw_sql="__raw",
            hash_sql="__hsrc",
            raw_lookup=f"SELECT __row, {src} AS __src FROM ({source})",
        )
    if not grouped:
        # The raw row and the hashed text are needed for few rows (rejected ones, ones
        # without a messageId): the source columns travel as a struct and are turned
        # into text only for those rows (see checked_select's raw_sql / hash_sql).
        rows = (
            f"SELECT __row, NULL::VARCHAR AS __raw, NULL::VARCHAR AS __hsrc, {src} AS __src, "
            f"{row_parts} FROM ({source})"
        )
        return MappedPlan(
            f"{head}, __src, {', '.join(parts)} FROM (SELECT *, 1 AS __lines FROM ({rows}))",
            grouped=False,
            raw_sql="to_json(__src)::VARCHAR",
            hash_sql=content(lambda c: f"struct_extract(__src, {lit(c)})"),
        )
    rows = (
        f"SELECT __row, to_json({src}) AS __raw, {content(ident)} AS __hsrc, {row_parts}, "
        f"({line})::VARCHAR AS __line, {pay} AS __pay" + key + f" FROM ({source})"
    )
    return MappedPlan(_grouped_sql(rows, head, parts, mapping), grouped=True)


def _uses_row(mapping: Mapping) -> bool:
    specs = [
        mapping.message_id,
        mapping.user_id,
        mapping.anonymous_id,
        *mapping.identifiers.values(),
    ]
    return any(s is not None and s.row_number for s in specs)


def _money_json(spec: ValueSpecModel, cols: dict[str, Column]) -> str:
    """Money as a client would send it: the text as written (exact), or a number column."""
    base = _text_expr(spec, cols)
    col = cols.get(spec.column or "")
    if col is not None and not spec.is_text_transformed and col.type != "VARCHAR":
        return f"to_json({base})"
    text = f"trim(({base})::VARCHAR)"
    # a plain amount becomes a JSON number token written exactly as in the file
    return (
        f"CASE WHEN regexp_full_match({text}, '-?[0-9]{{1,13}}(\\.[0-9]{{1,2}})?') "
        f"THEN json({text}) ELSE to_json({text}) END"
    )


def _line_item_json(spec: LineItemSpec, cols: dict[str, Column], tz: str) -> str:
    entries = []
    for key in LineItemSpec.model_fields:
        sub: ValueSpecModel | None = getattr(spec, key)
        if sub is None:
            continue
        expr = _money_json(sub, cols) if key == "price" else _value_json(sub, cols, tz)
        entries.append(f"{lit(key)}, ({expr})::JSON")
    return f"json_object({', '.join(entries)})"


def _grouped_sql(rows: str, head: str, parts: dict[str, str | None], mapping: Mapping) -> str:
    """Orders with one row per line item: one message per ``order_id``.

    Order-level values come from the order's first row in the file; ``products``
    lists its lines in file order; ``payment_types`` the distinct payment types;
    without a mapped ``revenue``, revenue is the sum of price × quantity
    (quantity 1 when absent) when every line has a readable price.
    """
    extra = ["'products', to_json(list(__line::JSON ORDER BY __row))"]
    if mapping.payment_type is not None:
        extra.append(
            "'payment_types', to_json(coalesce(list(DISTINCT __pay ORDER BY __pay) "
            "FILTER (WHERE __pay IS NOT NULL), []))"
        )
    if (
        mapping.revenue is None
        and isinstance(mapping.products, LineItemSpec)
        and (mapping.products.price is not None)
    ):
        line_total = (
            "TRY_CAST(__line ->> '$.price' AS DECIMAL(18, 2)) * "
            "coalesce(TRY_CAST(__line ->> '$.quantity' AS INTEGER), 1)"
        )
        extra.append(
            f"'revenue', CASE WHEN bool_and(({line_total}) IS NOT NULL) "
            f"THEN to_json(sum({line_total})) END"
        )
    group_props = f"json_object({', '.join(extra)})"
    props = f"json_merge_patch(coalesce(first(p_props ORDER BY __row), '{{}}'), {group_props})"
    grouped_cols = ", ".join(
        f"{props}::VARCHAR AS p_props"
        if col == "p_props"
        else f"first({col} ORDER BY __row) AS {col}"
        for col in parts
    )
    return (
        f"{head}, {', '.join(parts)} FROM (SELECT min(__row) AS __row, count(*) AS __lines, "
        f"to_json(list(__raw::JSON ORDER BY __row))::VARCHAR AS __raw, "
        f"concat_ws({lit(_US)}, {lit(mapping.id_namespace)}, 'orders', __key) AS __hsrc, "
        f"{grouped_cols} FROM ({rows}) GROUP BY coalesce(__key, chr(0) || __row::VARCHAR), __key)"
    )
