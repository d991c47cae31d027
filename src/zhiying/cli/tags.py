"""``zhiying tags`` and ``zhiying layers``: define and refresh tags, compute and compare layers.

The tag and layer services (pandas, DuckDB…) are imported inside the functions
so that the CLI starts without them (see ``zhiying.cli.common``).
"""

from __future__ import annotations

import json
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from zhiying.cli.common import console, stores_for_cli
from zhiying.errors import ValidationFailed

tags_app = typer.Typer(help="Tags: static, semi-static and dynamic.", no_args_is_help=True)
layers_app = typer.Typer(
    help="User layers: lifecycle, value_frequency, promotion_sensitivity.", no_args_is_help=True
)


def _as_of(text: str | None, option: str = "--as-of") -> datetime | None:
    from zhiying.profiles.layers.models import parse_as_of

    if text is None:
        return None
    try:
        return parse_as_of(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    )


# --- tags -----------------------------------------------------------------------


def read_definitions(path: Path) -> list[Any]:
    """Definitions from a JSON or TOML file: one definition, a list, or ``{"tags": [...]}``."""
    text = path.read_text(encoding="utf-8")
    data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    if isinstance(data, dict) and "tags" in data:
        data = data["tags"]
    return data if isinstance(data, list) else [data]


@tags_app.command("define")
def define(file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True)) -> None:
    """Create or replace the tag definitions in FILE (JSON or TOML)."""
    from zhiying.profiles.tags import service as tags_service

    try:
        raw = read_definitions(file)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc}") from exc
    with stores_for_cli() as stores:
        defs = [tags_service.parse_definition(d) for d in raw]
        names = [d.name for d in defs]
        if len(set(names)) != len(names):
            raise ValidationFailed("a tag name repeats in the file", field="name")
        records = tags_service.define_tags(stores, defs)
    for r in records:
        console.print(f"defined [bold]{r.definition.name}[/bold] ({r.definition.kind})")


@tags_app.command("list")
def list_() -> None:
    """List tag definitions and when each was last refreshed."""
    from zhiying.profiles.tags import service as tags_service

    with stores_for_cli() as stores:
        records = tags_service.list_tags(stores)
    table = Table("name", "kind", "refresh", "last as of", "description")
    for r in records:
        d = r.definition
        table.add_row(
            d.name,
            d.kind,
            d.refresh,
            r.last_as_of.isoformat() if r.last_as_of else "never",
            d.description,
        )
    console.print(table)


@tags_app.command("refresh")
def refresh(
    as_of: str | None = typer.Option(None, "--as-of", help="YYYY-MM-DD (end of day) or ISO."),
    tag: list[str] | None = typer.Option(None, "--tag", help="Only these tags (repeatable)."),
    due: bool = typer.Option(False, "--due", help="Only the tags whose schedule says so."),
) -> None:
    """Recompute tags for every person in one warehouse pass."""
    from zhiying.profiles.tags import service as tags_service

    at = _as_of(as_of)
    with stores_for_cli() as stores, _progress() as bar:
        task = bar.add_task("starting", total=3)

        def report(step: str, done: int, total: int) -> None:
            bar.update(task, description=step, completed=done, total=total)

        if due:
            result = tags_service.refresh_due(stores, progress=report)
        else:
            result = tags_service.refresh(stores, as_of=at, names=tag or None, progress=report)
    if result is None:
        console.print("no tag is due")
        return
    console.print(
        f"refreshed {len(result.tags)} tags as of {result.as_of.isoformat()}: "
        f"{result.rows} values, {result.history_rows} history rows (run {result.run_id})"
    )


@tags_app.command("fold-history")
def fold_history() -> None:
    """Copy the values earlier refreshes replaced (DuckDB segments) into tag_history."""
    from zhiying.profiles.tags import service as tags_service

    with stores_for_cli() as stores:
        folded = tags_service.fold_history(stores)
    console.print(f"folded {folded} history segments into tag_history")


# --- layers ---------------------------------------------------------------------


def _check_layer(name: str) -> str:
    from zhiying.profiles.layers.models import LAYER_NAMES

    if name not in LAYER_NAMES:
        raise typer.BadParameter(f"layers are {', '.join(LAYER_NAMES)}", param_hint="--layer")
    return name


@layers_app.command("compute")
def compute(
    as_of: str = typer.Option(..., "--as-of", help="YYYY-MM-DD (end of day) or ISO instant."),
    layer: list[str] | None = typer.Option(None, "--layer", help="Only these (repeatable)."),
) -> None:
    """Classify every customer as of a date and print each layer's distribution."""
    from zhiying.profiles.layers import service as layers_service
    from zhiying.profiles.layers.models import LAYER_NAMES

    at = _as_of(as_of)
    names = [_check_layer(n) for n in layer] if layer else None
    with stores_for_cli() as stores, _progress() as bar:
        task = bar.add_task("starting", total=len(names or LAYER_NAMES))

        def report(step: str, done: int, total: int) -> None:
            bar.update(task, description=step, completed=done, total=total)

        runs = layers_service.compute_layers(stores, as_of=at, layers=names, progress=report)
    for run in runs:
        _print_counts(run.layer, run.as_of, run.counts)


def _print_counts(layer: str, at: datetime, counts: dict[str, int]) -> None:
    total = sum(counts.values())
    table = Table("value", "customers", "share", title=f"{layer} as of {at.isoformat()}")
    for value, n in counts.items():
        table.add_row(value, f"{n:,}", f"{n / total:.1%}" if total else "-")
    table.add_row("total", f"{total:,}", "")
    console.print(table)


@layers_app.command("distribution")
def distribution(
    layer: str = typer.Option("lifecycle", "--layer"),
    as_of: str = typer.Option(..., "--as-of"),
) -> None:
    """Customers per value of a computed layer."""
    from zhiying.profiles.layers import service as layers_service

    at = _as_of(as_of)
    assert at is not None
    with stores_for_cli() as stores:
        d = layers_service.distribution(stores, _check_layer(layer), at)
    _print_counts(d.layer, d.as_of, d.counts)


@layers_app.command("migration")
def migration(
    layer: str = typer.Option("value_frequency", "--layer"),
    from_: str = typer.Option(..., "--from"),
    to: str = typer.Option(..., "--to"),
    compute_missing: bool = typer.Option(
        True, "--compute/--no-compute", help="Compute a date not computed yet."
    ),
) -> None:
    """Migration matrix: customers by value at --from (rows) and at --to (columns)."""
    from zhiying.profiles.layers import service as layers_service

    start, end = _as_of(from_, "--from"), _as_of(to, "--to")
    assert start is not None and end is not None
    name = _check_layer(layer)
    with stores_for_cli() as stores:
        if compute_missing:
            done = set(layers_service.computed_dates(stores, name))
            for at in (start, end):
                if at not in done:
                    layers_service.compute_layers(stores, as_of=at, layers=[name])
        matrix = layers_service.migration(stores, name, start, end)
    table = Table(
        "from \\ to",
        *matrix.to_values,
        title=f"{name}: {start.date()} → {end.date()}",
    )
    for value, row in zip(matrix.from_values, matrix.rows(), strict=True):
        table.add_row(value, *(f"{n:,}" for n in row))
    console.print(table)
