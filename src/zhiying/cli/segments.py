"""``zhiying segment``: compile, count, preview, store, materialise and export segments.

RULE.json is a rule, or a document ``{"name", "description", "rule"}`` as in
``docs/examples/segments/``. ``--at`` (ISO 8601; no offset means UTC) is the
instant relative windows end at, so a count is reproducible. ``count`` and
``preview`` ask the running ``zhiying serve`` when it holds the embedded
warehouse; the other commands say so and stop.

The segment service and compiler (ibis, pandas, DuckDB…) are imported inside
the functions so that the CLI starts without them (see ``zhiying.cli.common``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import typer
from rich.table import Table

from zhiying.cli.common import console, err_console, stores_for_cli
from zhiying.errors import StoreBusy, ZhiyingError

if TYPE_CHECKING:
    from zhiying.segments.models import PreviewResult, Rule

app = typer.Typer(help="Segments: rules that select people.", no_args_is_help=True)


def _preview_here_or_there(rule: Rule, at: datetime | None, sample: int) -> PreviewResult:
    """Preview with the local stores, or through the running server when it holds
    the embedded warehouse (``ZHIYING_API_URL`` + admin key in ``ZHIYING_API_KEY``)."""
    from zhiying.config import get_settings
    from zhiying.runtime import open_stores
    from zhiying.segments import service
    from zhiying.segments.models import PreviewResult, rule_json

    settings = get_settings()
    try:
        stores = open_stores(settings)
    except StoreBusy as busy:
        if not settings.api_key:
            raise _fail(
                ZhiyingError(
                    f"{busy.message}. To ask that server, set ZHIYING_API_KEY to an admin key "
                    "(`zhiying keys create --admin`) and ZHIYING_API_URL if needed"
                )
            ) from busy
        body = orjson.dumps(
            {"rule": rule_json(rule), "at": at.isoformat() if at else None, "sample": sample}
        )
        request = urllib.request.Request(
            settings.api_url.rstrip("/") + "/api/segments/preview",
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {settings.api_key}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return PreviewResult.model_validate_json(response.read())
        except urllib.error.HTTPError as exc:
            problem = json.loads(exc.read() or b"{}")
            errors = problem.get("errors") or [{}]
            raise _fail(
                ZhiyingError(problem.get("detail", str(exc)), field=errors[0].get("field"))
            ) from exc
        except urllib.error.URLError as exc:
            raise _fail(
                ZhiyingError(f"{busy.message}, and no server answers at {settings.api_url}")
            ) from exc
    except ZhiyingError as exc:
        raise _fail(exc) from exc
    try:
        return service.preview(stores, rule, at, sample)
    except ZhiyingError as exc:
        raise _fail(exc) from exc
    finally:
        stores.close()


RuleFile = typer.Argument(..., exists=True, dir_okay=False, help="RULE.json")
AtOption = typer.Option(None, "--at", help="Evaluate as of this instant (default: now).")


def _read(path: Path) -> tuple[Rule, dict[str, Any]]:
    from zhiying.segments.models import parse_rule, parse_rule_document

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{path} is not JSON: {exc}") from exc
    raw, meta = parse_rule_document(doc)
    return parse_rule(raw), meta


def _at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO 8601 instant: {text!r}", param_hint="--at") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _fail(exc: ZhiyingError) -> typer.Exit:
    where = f" ({exc.field})" if exc.field else ""
    err_console.print(f"[red]error{where}:[/red] {exc.message}")
    return typer.Exit(1)


@app.command()
def sql(
    rule_file: Path = RuleFile,
    dialect: str = typer.Option(
        "duckdb", "--dialect", help="duckdb | clickhouse | postgres | pyspark"
    ),
    at: str | None = AtOption,
) -> None:
    """Print the SQL a rule compiles to (no warehouse needed unless it refers to segments)."""
    from zhiying.segments import service
    from zhiying.segments.compiler import DIALECTS, compile_rule

    if dialect not in DIALECTS:
        raise typer.BadParameter(f"choose one of {', '.join(DIALECTS)}", param_hint="--dialect")
    when = _at(at) or datetime.now(UTC)
    try:
        rule, _ = _read(rule_file)
        if service.referenced_segments(rule):
            with stores_for_cli() as stores, stores.engine.connect() as conn:
                compiled = compile_rule(rule, when, service.StoreCatalog(conn))
        else:
            compiled = compile_rule(rule, when)
    except ZhiyingError as exc:
        raise _fail(exc) from exc
    print(compiled.sql(dialect))


@app.command()
def count(rule_file: Path = RuleFile, at: str | None = AtOption) -> None:
    """Count the people a rule selects."""
    try:
        rule, _ = _read(rule_file)
    except ZhiyingError as exc:
        raise _fail(exc) from exc
    print(_preview_here_or_there(rule, _at(at), 0).count)


@app.command()
def preview(
    rule_file: Path = RuleFile,
    at: str | None = AtOption,
    sample: int = typer.Option(10, help="How many profiles to show."),
) -> None:
    """Count, a sample of profiles and the SQL that ran."""
    try:
        rule, _ = _read(rule_file)
    except ZhiyingError as exc:
        raise _fail(exc) from exc
    result = _preview_here_or_there(rule, _at(at), sample)
    console.print(f"[bold]{result.count}[/bold] people as of {result.at.isoformat()}")
    table = Table("one_id", "traits")
    for p in result.sample:
        table.add_row(p.one_id, json.dumps(p.traits, ensure_ascii=False, default=str))
    console.print(table)


@app.command()
def create(
    rule_file: Path = RuleFile,
    name: str | None = typer.Option(None, help="Name (default: the document's name)."),
    refresh_every: int | None = typer.Option(
        None, "--refresh-every", help="Materialise every N minutes (>= 5)."
    ),
) -> None:
    """Store a segment from RULE.json."""
    from zhiying.segments import service
    from zhiying.segments.models import SegmentCreate

    try:
        rule, meta = _read(rule_file)
        data = SegmentCreate(
            name=name or meta.get("name") or rule_file.stem,
            description=meta.get("description", ""),
            rule=rule,
            refresh_every_minutes=refresh_every or meta.get("refresh_every_minutes"),
        )
    except ZhiyingError as exc:
        raise _fail(exc) from exc
    with stores_for_cli() as stores:
        seg = service.create_segment(stores, data)
    print(seg.segment_id)


@app.command("list")
def list_() -> None:
    """List segments with their last snapshot."""
    from zhiying.segments import service

    with stores_for_cli() as stores:
        segs = service.list_segments(stores)
        last = service.last_snapshots(stores)
    table = Table("segment id", "name", "refresh (min)", "version", "last snapshot", "members")
    for s in segs:
        snap = last.get(s.segment_id)
        table.add_row(
            s.segment_id,
            s.name,
            str(s.refresh_every_minutes or ""),
            str(s.version),
            snap.snapshot_at.isoformat() if snap else "",
            str(snap.member_count) if snap else "",
        )
    console.print(table)


@app.command()
def show(segment_id: str) -> None:
    """Print a segment as JSON."""
    from zhiying.segments import service
    from zhiying.segments.models import rule_json

    with stores_for_cli() as stores:
        s = service.get_segment(stores, segment_id)
    doc = {
        "segment_id": s.segment_id,
        "name": s.name,
        "description": s.description,
        "refresh_every_minutes": s.refresh_every_minutes,
        "version": s.version,
        "rule": rule_json(s.rule),
    }
    print(json.dumps(doc, indent=2, ensure_ascii=False))


@app.command()
def update(
    segment_id: str,
    rule_file: Path | None = typer.Option(None, "--rule", exists=True, dir_okay=False),
    name: str | None = typer.Option(None),
    refresh_every: int | None = typer.Option(None, "--refresh-every"),
) -> None:
    """Change a segment's rule, name or refresh interval."""
    from zhiying.segments import service
    from zhiying.segments.models import SegmentUpdate

    fields: dict[str, Any] = {}
    try:
        if rule_file is not None:
            fields["rule"] = _read(rule_file)[0]
        if name is not None:
            fields["name"] = name
        if refresh_every is not None:
            fields["refresh_every_minutes"] = refresh_every
        data = SegmentUpdate(**fields)
    except ZhiyingError as exc:
        raise _fail(exc) from exc
    with stores_for_cli() as stores:
        seg = service.update_segment(stores, segment_id, data)
    print(f"{seg.segment_id} version {seg.version}")


@app.command()
def delete(segment_id: str) -> None:
    """Delete a segment with its snapshots."""
    from zhiying.segments import service

    with stores_for_cli() as stores:
        service.delete_segment(stores, segment_id)
    print(f"deleted {segment_id}")


@app.command()
def materialise(
    segment_id: str | None = typer.Argument(None),
    due: bool = typer.Option(False, "--due", help="Every segment whose interval has elapsed."),
    at: str | None = AtOption,
) -> None:
    """Snapshot a segment's members (entered/exited people become events)."""
    from zhiying.segments import service

    if (segment_id is None) == (not due):
        raise typer.BadParameter("give a SEGMENT_ID or --due")
    with stores_for_cli() as stores:
        if segment_id is not None:
            done = [service.materialise(stores, segment_id, _at(at))]
            failed: list[tuple[str, str]] = []
        else:
            run = service.materialise_due(stores)
            done, failed = run.done, run.failed
    for s in done:
        print(
            f"{s.segment_id} {s.snapshot_at.isoformat()} members={s.member_count} "
            f"entered={s.entered} exited={s.exited}"
        )
    for seg, reason in failed:
        err_console.print(f"[red]{seg}:[/red] {reason}")
    if failed:
        raise typer.Exit(1)


@app.command()
def export(
    segment_id: str,
    out: Path = typer.Option(..., "--out", help="File to write."),
    fmt: str = typer.Option("csv", "--format", help="csv | parquet"),
    live: bool = typer.Option(False, "--live", help="Evaluate now, not the last snapshot."),
    at: str | None = AtOption,
) -> None:
    """Write the members (one_id, segment_id, as_of) as CSV or Parquet."""
    from zhiying.segments import service

    if fmt not in ("csv", "parquet"):
        raise typer.BadParameter("csv or parquet", param_hint="--format")
    with stores_for_cli() as stores:
        data = service.export_members(stores, segment_id, fmt, live=live, at=_at(at))  # type: ignore[arg-type]
    out.write_bytes(data)
    print(f"wrote {out}")
