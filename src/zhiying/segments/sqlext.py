"""Our own ibis operations, with one compile rule per warehouse dialect.

ibis 12 compiles typed columns (including arrays of structs) to every dialect
we target, but not JSON (see DESIGN.md), and its timestamp literals are read
in the server's time zone on ClickHouse. Small operations fill the gaps:

- ``JsonScalar(arg, path, kind)``: a scalar of the JSON text ``arg`` at
  ``path``, typed by ``kind``. It is NULL when the key is missing or holds a
  value of another JSON type, so ``{"size": 5}`` never equals the text ``"5"``.
  On PySpark it reads Spark 4's VARIANT (``parse_json``), which keeps the
  JSON type (``get_json_object`` cannot tell the number 5 from the text "5").
- ``UtcInstant(text)``: a UTC instant literal. The warehouse stores naive
  timestamps meaning UTC; ClickHouse columns are ``DateTime64(6, 'UTC')``, so
  its literal names the zone instead of trusting the session's.
- ``ElementField(arg, field)``: a field of a struct (a ``products`` element).
  ibis compiles struct fields on PostgreSQL as ``to_jsonb(arg) -> 'fN'``,
  which holds only for anonymous records and, for text, yields the JSON
  literal with its quotes; PostgreSQL's own ``(arg).field`` reads a field of
  a composite type. Other dialects compile it as ibis's ``StructField``.

- ``Money(text, precision, scale)``: a DECIMAL literal written from its digits,
  ``CAST('0.29' AS DECIMAL(18, 2))`` on every dialect. ibis writes decimal
  literals on ClickHouse as ``toDecimal64(0.29, 2)``, which converts the
  float 0.28999… and truncates it to 0.28.
- ``TieBreakKey(names, values)``: an ordering key of several columns (a trait's
  timestamp, then its message id), compared field by field. It is a struct on
  every dialect but DuckDB, where it compiles to ``create_sort_key(…)``, a
  BLOB compared byte by byte: as the key of ``arg_max_null`` it costs about
  what the timestamp alone does, a struct about 15 % more of the whole seed
  query (DuckDB compares structs value by value). Both order NULL fields last.
- ``NullIfNoRows(arg, rows)``: the aggregate ``arg``, NULL when the group had
  no row for it (``rows`` = 0). ClickHouse's ``minIf``/``maxIf``/``argMaxIf``
  return the type's default (1970-01-01, ``''``) over no rows, so it compiles
  to ``if(rows > 0, arg, NULL)`` there; DuckDB, PostgreSQL and Spark already
  return NULL and get ``arg`` alone (one aggregate fewer per row).

Rules are registered on ibis's compiler classes once, at import; the
expression built by ``zhiying.segments.compiler`` is the same for every
dialect. ``to_sqlglot(expr, dialect)`` compiles it with a subclass of ibis's
compiler for that dialect that does less work per compile (see ``_Lean``);
``ibis.to_sql(expr, dialect=...)`` writes an equivalent query.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections import deque
from dataclasses import dataclass
from functools import reduce
from typing import Any, ClassVar, Literal

import ibis
import ibis.backends.sql.rewrites as sql_rewrites
import ibis.expr.datatypes as dt
import ibis.expr.operations as ops
import ibis.expr.rules as rlz
import ibis.expr.types as ir
import sqlglot as sg
import sqlglot.expressions as sge
from ibis.backends.sql.compilers import (
    ClickHouseCompiler,
    DuckDBCompiler,
    PostgresCompiler,
    PySparkCompiler,
)
from ibis.common.annotations import attribute
from ibis.common.graph import Graph, _recursive_lookup
from ibis.common.patterns import AnyOf, Capture, InstanceOf, NoMatch, Object, Replace
from ibis.expr.datashape import Scalar as ScalarShape
from ibis.expr.rewrites import replace_parameter

JsonKind = Literal["string", "number", "boolean", "present"]

_DTYPES: dict[str, dt.DataType] = {
    "string": dt.string,
    "number": dt.float64,
    "boolean": dt.string,
    "present": dt.boolean,
}


class JsonScalar(ops.Value):  # type: ignore[misc]
    """The value at ``path`` inside JSON text ``arg`` when it has JSON type ``kind``.

    Numbers come out as float64, strings as text, booleans as the text
    ``true``/``false`` (so they compare like boolean traits); ``kind="present"``
    is true when the key exists and is not JSON ``null``.
    """

    arg: ops.Value[dt.String]
    path: tuple[str, ...]
    kind: str

    shape = rlz.shape_like("arg")

    @attribute  # type: ignore[untyped-decorator]
    def dtype(self) -> dt.DataType:
        return _DTYPES[self.kind]


class LatestValue(ops.ArgMax):  # type: ignore[misc]
    """``arg`` of the row with the greatest ``key`` (``arg`` may be NULL there).

    ibis compiles ``argmax`` on DuckDB as ``FIRST(arg ORDER BY key DESC)``,
    which sorts every group; DuckDB's ``arg_max_null`` gives the same answer
    in one pass (about a third less CPU on a million trait rows). Other
    dialects compile it as ibis's ``argmax``.
    """


class TieBreakKey(ops.StructColumn):  # type: ignore[misc]
    """Order rows by ``values`` in turn (see the module docstring)."""


class NullIfNoRows(ops.Value):  # type: ignore[misc]
    """``arg`` (an aggregate), NULL when ``rows`` (the count of rows it read) is 0."""

    arg: ops.Value
    rows: ops.Value[dt.Integer]

    dtype = rlz.dtype_like("arg")
    shape = rlz.shape_like("arg")


class ElementField(ops.StructField):  # type: ignore[misc]
    """Field ``field`` of the struct ``arg`` (see the module docstring)."""


class UtcInstant(ops.Value):  # type: ignore[misc]
    """A UTC instant written ``YYYY-MM-DD HH:MM:SS.ffffff``."""

    text: str

    shape = ScalarShape()
    dtype = dt.Timestamp(scale=6)


class Money(ops.Value):  # type: ignore[misc]
    """An exact DECIMAL(``precision``, ``scale``) literal written ``text`` (see above)."""

    text: str
    precision: int
    scale: int

    shape = ScalarShape()

    @attribute  # type: ignore[untyped-decorator]
    def dtype(self) -> dt.DataType:
        return dt.Decimal(self.precision, self.scale)


def money(text: str, precision: int, scale: int) -> ir.DecimalScalar:
    """The decimal ``text`` (plain digits, e.g. ``"0.29"``) as an exact literal."""
    return Money(text, precision, scale).to_expr()


def json_scalar(arg: ir.StringValue, path: tuple[str, ...], kind: JsonKind) -> ir.Value:
    return JsonScalar(arg, path, kind).to_expr()


def latest_value(arg: ir.Column, key: ir.Column, where: ir.BooleanValue | None = None) -> ir.Scalar:
    """The ``arg`` of the row with the greatest ``key`` (among rows passing ``where``)."""
    return LatestValue(arg, key, where=where).to_expr()


def tie_break_key(**fields: ir.Value) -> ir.Value:
    """An ordering key: rows compare by the first field, ties by the next, and so on."""
    return TieBreakKey(tuple(fields), tuple(v.op() for v in fields.values())).to_expr()


def null_if_no_rows(arg: ir.Value, rows: ir.IntegerValue) -> ir.Value:
    """``arg``, or NULL when ``rows`` is 0 (see the module docstring)."""
    return NullIfNoRows(arg, rows).to_expr()


def element_field(arg: ir.StructValue, field: str) -> ir.Value:
    """``arg[field]``, compiled for a composite type on PostgreSQL."""
    return ElementField(arg, field).to_expr()


def utc_instant(text: str) -> ir.TimestampScalar:
    return UtcInstant(text).to_expr()


def _str(value: str) -> Any:
    return sge.convert(value)


@functools.lru_cache(maxsize=64)
def _parsed_type(text: str) -> sge.DataType:
    """``sge.DataType.build(text)``, parsed once per text (parsing ``TIMESTAMP`` for every
    instant literal was 6 % of translating the seed rule). Never handed out: ``_type``
    copies it."""
    return sge.DataType.build(text)


def _type(text: str) -> sge.DataType:
    """The data type ``text`` (``"TIMESTAMP"``, ``"DECIMAL(18, 2)"``), a fresh tree."""
    return _parsed_type(text).copy()


# --- DuckDB: json_type / json_extract_string with a JSONPath -----------------------


def _jsonpath(path: tuple[str, ...]) -> str:
    return "$" + "".join(f'."{key}"' for key in path)


_DUCKDB_TYPES = {
    "string": ["VARCHAR"],
    "number": ["BIGINT", "UBIGINT", "DOUBLE", "HUGEINT"],
    "boolean": ["BOOLEAN"],
}


def _duckdb_json(self: Any, op: JsonScalar, *, arg: Any, path: Any, kind: Any) -> Any:
    jp = _str(_jsonpath(path))
    jtype = self.f.json_type(arg, jp)
    if kind == "present":
        return sge.and_(jtype.is_(sge.null()).not_(), sge.NEQ(this=jtype, expression=_str("NULL")))
    text = self.f.json_extract_string(arg, jp)
    value = {
        "string": text,
        "number": sge.cast(text, _type("DOUBLE")),
        "boolean": text,
    }[kind]
    cond = sge.In(this=jtype, expressions=[_str(t) for t in _DUCKDB_TYPES[kind]])
    return self.if_(cond, value, sge.null())


# --- ClickHouse: JSONType / JSONExtract* with the keys as arguments ----------------

_CLICKHOUSE_TYPES = {
    "string": ["String"],
    "number": ["Int64", "UInt64", "Double"],
    "boolean": ["Bool"],
}


def _clickhouse_json(self: Any, op: JsonScalar, *, arg: Any, path: Any, kind: Any) -> Any:
    keys = [_str(k) for k in path]
    jtype = self.f.JSONType(arg, *keys)
    if kind == "present":
        return sge.NEQ(this=self.f.coalesce(jtype, _str("Null")), expression=_str("Null"))
    value = {
        "string": self.f.JSONExtractString(arg, *keys),
        "number": self.f.JSONExtractFloat(arg, *keys),
        "boolean": self.if_(self.f.JSONExtractBool(arg, *keys).eq(1), _str("true"), _str("false")),
    }[kind]
    cond = sge.In(this=jtype, expressions=[_str(t) for t in _CLICKHOUSE_TYPES[kind]])
    return self.if_(cond, value, sge.null())


# --- PostgreSQL: jsonb #> / #>> with a text[] path -----------------------------------

_PG_TYPES = {"string": "string", "number": "number", "boolean": "boolean"}


def _postgres_json(self: Any, op: JsonScalar, *, arg: Any, path: Any, kind: Any) -> Any:
    doc = sge.cast(arg, _type("JSONB"))
    pg_path = _str("{" + ",".join(path) + "}")
    node = sge.JSONBExtract(this=doc, expression=pg_path)
    jtype = self.f.jsonb_typeof(node)
    if kind == "present":
        return sge.and_(jtype.is_(sge.null()).not_(), sge.NEQ(this=jtype, expression=_str("null")))
    text = sge.JSONBExtractScalar(this=doc, expression=pg_path)
    value = {
        "string": text,
        "number": sge.cast(text, _type("DOUBLE")),
        "boolean": text,
    }[kind]
    return self.if_(sge.EQ(this=jtype, expression=_str(_PG_TYPES[kind])), value, sge.null())


# --- PySpark: VARIANT (Spark 4) --------------------------------------------------------

_SPARK_NUMBERS = ("TINYINT", "SMALLINT", "INT", "BIGINT", "FLOAT", "DOUBLE")


def _pyspark_json(self: Any, op: JsonScalar, *, arg: Any, path: Any, kind: Any) -> Any:
    # ``get_json_object`` returns the number 5 and the text "5" alike; the VARIANT of
    # ``parse_json`` keeps the JSON type, which ``schema_of_variant`` names.
    doc = sge.Anonymous(this="PARSE_JSON", expressions=[arg])  # sqlglot drops parse_json
    jp = _str(_jsonpath(path).replace('"', ""))
    node = self.f.variant_get(doc, jp)
    jtype = self.f.schema_of_variant(node)
    if kind == "present":
        return sge.and_(jtype.is_(sge.null()).not_(), sge.NEQ(this=jtype, expression=_str("VOID")))
    if kind == "number":
        is_number = sge.or_(
            sge.In(this=jtype, expressions=[_str(t) for t in _SPARK_NUMBERS]),
            self.f.startswith(jtype, _str("DECIMAL")),
        )
        return self.if_(is_number, self.f.variant_get(doc, jp, _str("double")), sge.null())
    expected = "STRING" if kind == "string" else "BOOLEAN"
    text = self.f.variant_get(doc, jp, _str("string"))
    return self.if_(sge.EQ(this=jtype, expression=_str(expected)), text, sge.null())


# --- UTC instants -------------------------------------------------------------------


def _instant_cast(self: Any, op: UtcInstant, *, text: Any) -> Any:
    return sge.cast(_str(text), _type("TIMESTAMP"), copy=False)


def _instant_clickhouse(self: Any, op: UtcInstant, *, text: Any) -> Any:
    return self.f.toDateTime64(_str(text), sge.convert(6), _str("UTC"))


def _money(self: Any, op: Money, *, text: Any, precision: Any, scale: Any) -> Any:
    return sge.cast(_str(text), _type(f"DECIMAL({precision}, {scale})"), copy=False)


def _field_postgres(self: Any, op: ElementField, *, arg: Any, field: Any) -> Any:
    # Needs ``products`` typed as an array of a composite type with the Arrow struct's
    # field names (tests/segments/engines.py creates one).
    return sge.Column(this=sge.to_identifier(field, quoted=True), table=sge.Paren(this=arg))


def _field_generic(self: Any, op: ElementField, *, arg: Any, field: Any) -> Any:
    return self.visit_StructField(op, arg=arg, field=field)


def _latest_duckdb(self: Any, op: LatestValue, *, arg: Any, key: Any, where: Any) -> Any:
    return self.agg.arg_max_null(arg, key, where=where)


def _latest_generic(self: Any, op: LatestValue, *, arg: Any, key: Any, where: Any) -> Any:
    return self.visit_ArgMax(op, arg=arg, key=key, where=where)


def _sort_key_duckdb(self: Any, op: TieBreakKey, *, names: Any, values: Any) -> Any:
    args: list[Any] = []
    for value in values:
        args += [value, sge.convert("ASC NULLS LAST")]
    return self.f.create_sort_key(*args)


def _sort_key_generic(self: Any, op: TieBreakKey, *, names: Any, values: Any) -> Any:
    return self.visit_StructColumn(op, names=names, values=values)


def _null_if_no_rows_clickhouse(self: Any, op: NullIfNoRows, *, arg: Any, rows: Any) -> Any:
    return self.if_(sge.GT(this=rows, expression=sge.convert(0)), arg, sge.null())


def _null_if_no_rows_generic(self: Any, op: NullIfNoRows, *, arg: Any, rows: Any) -> Any:
    return arg


_RULES: dict[type, tuple[Any, Any]] = {
    DuckDBCompiler: (_duckdb_json, _instant_cast),
    ClickHouseCompiler: (_clickhouse_json, _instant_clickhouse),
    PostgresCompiler: (_postgres_json, _instant_cast),
    PySparkCompiler: (_pyspark_json, _instant_cast),
}


class _PySparkOptions(ibis.config.Config):  # type: ignore[misc]
    """ibis reads ``options.pyspark`` when compiling float literals; the backend
    (and pyspark, ~450 MB) is not installed just to print SQL, so supply the
    option it would register, with ibis's default."""

    treat_nan_as_null: bool = False


if ibis.options.pyspark is None:
    ibis.options.pyspark = _PySparkOptions()


def _register(compiler: type, op: type, rule: Any) -> None:
    """Set ``compiler.visit_<op>`` to ``rule``, never over one of ibis's own rules: an
    operation named like one of ibis's (``SortKey``) would silently change how ibis
    compiles its own everywhere in the process (every ``ORDER BY``)."""
    name = f"visit_{op.__name__}"
    existing = getattr(compiler, name, None)
    if existing is not None and getattr(existing, "__module__", None) != __name__:
        raise RuntimeError(f"{compiler.__name__}.{name} is ibis's own; rename {op.__name__}")
    setattr(compiler, name, rule)


for _compiler, (_json_rule, _instant_rule) in _RULES.items():
    _register(_compiler, JsonScalar, _json_rule)
    _register(_compiler, UtcInstant, _instant_rule)
    _register(_compiler, Money, _money)
    _register(
        _compiler, LatestValue, _latest_duckdb if _compiler is DuckDBCompiler else _latest_generic
    )
    _register(
        _compiler,
        TieBreakKey,
        _sort_key_duckdb if _compiler is DuckDBCompiler else _sort_key_generic,
    )
    _register(
        _compiler,
        NullIfNoRows,
        _null_if_no_rows_clickhouse
        if _compiler is ClickHouseCompiler
        else _null_if_no_rows_generic,
    )
    _register(
        _compiler,
        ElementField,
        _field_postgres if _compiler is PostgresCompiler else _field_generic,
    )


# --- a leaner ibis → sqlglot translation ---------------------------------------------


def _is_star(op: Any) -> bool:
    """``op.is_star_selection()`` without building a ``Field`` per parent column (a wide
    ``events`` made that a tenth of a segment's compile)."""
    parent = op.parent
    selections = op.selections
    names = parent.schema.names
    if len(selections) != len(names):
        return False
    for (name, value), column in zip(selections.items(), names, strict=True):
        if name != column or not isinstance(value, ops.Field) or value.name != column:
            return False
        if value.rel is not parent and value.rel != parent:
            return False
    return True


_SQLIZE = (
    replace_parameter
    | sql_rewrites.remove_aliases
    | sql_rewrites.project_to_select
    | sql_rewrites.filter_to_select
    | sql_rewrites.sort_to_select
    | sql_rewrites.distinct_to_select
    | sql_rewrites.fill_null_to_select
    | sql_rewrites.drop_null_to_select
    | sql_rewrites.drop_columns_to_select
    | sql_rewrites.first_to_firstvalue
)


def _match_types(pattern: Any) -> tuple[type, ...] | None:
    """The node types ``pattern`` can match at all; None when that is not known.

    ibis's rewrite patterns are mostly ``Replace(InstanceOf(T) | Object(T, …) | …)``:
    a node of another type never matches, so only nodes of these types need the
    (much slower) full match. Unknown pattern kinds give None: test every node.
    """
    if isinstance(pattern, Replace):
        return _match_types(pattern.matcher)
    if isinstance(pattern, Capture):
        return _match_types(pattern.pattern)
    if isinstance(pattern, Object):
        return _match_types(pattern.type)
    if isinstance(pattern, InstanceOf):
        return pattern.type if isinstance(pattern.type, tuple) else (pattern.type,)
    if isinstance(pattern, AnyOf):
        found: list[type] = []
        for each in pattern.patterns:
            types = _match_types(each)
            if types is None:
                return None
            found.extend(types)
        return tuple(found)
    return None


@dataclass(frozen=True)
class _Pass:
    """A rewrite pass and the node types it can match (None: any)."""

    pattern: Any
    types: tuple[type, ...] | None

    @classmethod
    def of(cls, pattern: Any) -> _Pass:
        return cls(pattern, _match_types(pattern))

    def matches(self, graph: Graph, context: dict[str, Any]) -> bool:
        """Whether the pass matches some node of ``graph`` (then it changes something)."""
        types = self.types
        return any(
            (types is None or isinstance(node, types))
            and self.pattern.match(node, context) is not NoMatch
            for node in graph
        )


_SQLIZE_PASS = _Pass.of(_SQLIZE)
_CTE_TYPES = (sql_rewrites.Select, ops.Aggregate, ops.JoinChain, ops.Set, ops.Limit, ops.Sample)
_NOT_COUNTED = (ops.Field, ops.CountStar, ops.CountDistinctStar)


def _ctes(root: ops.Relation, graph: Graph) -> set[ops.Relation]:
    """``sql_rewrites.extract_ctes(root)`` (ibis 12) computed on ``graph`` (``root``'s
    nodes → children) instead of one more walk of the expression.

    A relation is a CTE when it is aliased, or when it is a query read by more than
    one node, not counting fields and ``COUNT(*)`` (a table read for two columns
    is read once) and nodes reached only through those.
    """
    reached: dict[Any, tuple[Any, ...]] = {}
    queue = deque([root] if not isinstance(root, _NOT_COUNTED) else [])
    while queue:
        node = queue.popleft()
        if node not in reached:
            children = tuple(c for c in graph[node] if not isinstance(c, _NOT_COUNTED))
            reached[node] = children
            queue.extend(children)
    readers: dict[Any, int] = {}
    for children in reached.values():
        for child in children:
            readers[child] = readers.get(child, 0) + 1
    return {
        node
        for node in reached
        if isinstance(node, ops.AliasedRelation)
        or (readers.get(node, 0) > 1 and isinstance(node, _CTE_TYPES))
    }


class _Lean:
    """ibis's ``translate`` (ibis 12) with less work per compile; same SQL otherwise.

    ibis rewrites the whole graph up to six times before it writes any SQL
    (unbind, lowered operations, backend rewrites, SQL-level relations, fusing
    selects, CTE wrapping), each pass recreating every node above a change:
    half of a segment's compile. Here:

    - no unbind (the segment tables are unbound already);
    - the lowered-operation and backend-rewrite passes, and the pass turning
      relations into SQL-level ``Select`` nodes, run only when some node
      matches them (a pass that matches nothing changes nothing; the segment
      compiler builds ``Select`` nodes itself, ``compiler.select``); a node is
      matched against a pass only when it is of a type the pass can match
      (``_match_types``: testing every node against every pattern was a fifth
      of this step);
    - the graph is walked once (``Graph.from_bfs``) and that walk serves the
      checks above, the CTEs (``_ctes``) and the translation itself, where
      ibis walks it again for each (and recomputes every node's children);
    - selects are never fused: merging each ``SELECT`` into the one around it
      scored every candidate by walking both subtrees (a third of the step,
      seed 48 → 31 ms) and every engine flattens nested subqueries itself
      (DuckDB and chdb measured: the same query time);
    - CTEs are collected while the SQL is written rather than by one more pass
      wrapping them in ``CTE`` nodes;
    - ``visit_Select`` tests "is it ``SELECT *``" without building a field per
      column of the parent (27 for ``events``);
    - a subquery is aliased without being copied first.

    It is a subclass per dialect, so ibis's own compilers (tags, layers, anyone
    else in the process) are untouched.
    """

    # Set per dialect subclass (see ``_LEAN``): the lowered-operation and backend-rewrite
    # passes, and the post-rewrite pass, of that dialect's compiler.
    rewrite_passes: ClassVar[tuple[_Pass, ...]] = ()
    post_pass: ClassVar[Any] = None

    def lean(self, op: ops.Relation) -> tuple[sge.With | None, sge.Select]:
        """``op`` as (its CTEs, the query without them)."""
        compiler: Any = self
        # A pass that matches no node of the graph changes nothing (nodes are rewritten
        # bottom-up, so nothing above an unmatched node changes either).
        graph = Graph.from_bfs(op)
        if any(p.matches(graph, {}) for p in self.rewrite_passes):
            for p in self.rewrite_passes:
                op = op.replace(p.pattern)
            graph = Graph.from_bfs(op)
        # The expression is mostly built of SQL-level ``Select`` nodes already
        # (``compiler.select``); often nothing is left to turn into one.
        context: dict[str, Any] = {"params": {}}
        if _SQLIZE_PASS.matches(graph, context):
            op = op.replace(_SQLIZE, context=context)
            graph = Graph.from_bfs(op)
        if self.post_pass is not None:
            rewritten = op.replace(self.post_pass)
            if rewritten is not op:
                op = rewritten
                graph = Graph.from_bfs(op)
        ctes = _ctes(op, graph)
        quoted = compiler.quoted
        counter = itertools.count()
        written: list[sge.CTE] = []

        def fn(node: Any, **kwargs: Any) -> Any:
            result = compiler.visit_node(node, **kwargs)
            if node is op or not isinstance(node, ops.Relation):
                return result
            name = node.name if isinstance(node, ops.AliasedRelation) else f"t{next(counter)}"
            alias = sg.to_identifier(name, quoted=quoted)
            if node in ctes:
                body = result.this if isinstance(result, sge.Subquery) else result
                written.append(sge.CTE(this=body, alias=alias))
                ref = sge.table_(name, quoted=quoted)
                alias = sg.to_identifier(f"t{next(counter)}", quoted=quoted)
                return ref.as_(alias, quoted=quoted, table=True)
            if isinstance(result, sge.Subquery):
                return result.as_(alias, quoted=quoted, copy=False)
            try:
                return result.subquery(alias, copy=False)
            except AttributeError:
                return result.as_(alias, quoted=quoted, table=isinstance(result, sge.Table))

        # ``Node.map(fn)``, on the graph already walked: the same (topological) order,
        # so the same ``t0``, ``t1``… names.
        results: dict[Any, Any] = {}
        ordered, _ = graph.toposort()
        for node in ordered:
            kwargs = {
                k: _recursive_lookup(v, results)
                for k, v in zip(node.__argnames__, node.__args__, strict=True)
            }
            results[node] = fn(node, **kwargs)
        out = results[op]
        if isinstance(out, sge.Table):
            out = sg.select(sge.Star(), copy=False).from_(out, copy=False)
        elif isinstance(out, sge.Subquery):
            out = out.this
        return (sge.With(expressions=written) if written else None), out

    def visit_Select(
        self,
        op: Any,
        *,
        parent: Any,
        selections: Any,
        predicates: Any,
        qualified: Any,
        sort_keys: Any,
        distinct: Any,
    ) -> Any:
        compiler: Any = self
        if not (selections or predicates or qualified or sort_keys or distinct):
            return parent
        result = parent
        if selections:
            if _is_star(op) and (not qualified or compiler.supports_qualify):
                fields = [sge.Star()]
            else:
                fields = list(compiler._cleanup_names(selections))
            result = sg.select(*fields, copy=False).from_(result, copy=False)
        if predicates:
            result = result.where(*predicates, copy=False)
        if qualified:
            result = result.qualify(*qualified, copy=False)
        if sort_keys:
            result = result.order_by(*sort_keys, copy=False)
        if distinct:
            result = result.distinct()
        return result


def _lean_compiler(base: type) -> Any:
    """A ``_Lean`` subclass of ``base`` with its passes prepared once."""
    rewrites = [
        reduce(operator.or_, rules)
        for rules in (tuple(base.lowered_ops.values()), base.rewrites)  # type: ignore[attr-defined]
        if rules
    ]
    post: tuple[Any, ...] = base.post_rewrites  # type: ignore[attr-defined]
    namespace = {
        "__slots__": (),
        "rewrite_passes": tuple(_Pass.of(p) for p in rewrites),
        "post_pass": reduce(operator.or_, post) if post else None,
    }
    return type(f"Lean{base.__name__}", (_Lean, base), namespace)()


_LEAN: dict[str, Any] = {
    "duckdb": _lean_compiler(DuckDBCompiler),
    "clickhouse": _lean_compiler(ClickHouseCompiler),
    "postgres": _lean_compiler(PostgresCompiler),
    "pyspark": _lean_compiler(PySparkCompiler),
}


def to_sqlglot(expr: ir.Table, dialect: str) -> tuple[sge.With | None, sge.Select]:
    """``expr`` (over unbound tables) compiled for ``dialect``: (CTEs, the query)."""
    compiler: Any = _LEAN[dialect]
    return compiler.lean(expr.op())  # type: ignore[no-any-return]
