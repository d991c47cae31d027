"""``zhiying import``: bulk import of events, users and orders from files (docs/import.md).

The import machinery (pyarrow, pandas, DuckDB…) is imported inside the commands
so that the CLI starts without it (see ``zhiying.cli.common``). Typer reads the
option types and defaults when it builds the commands: they come from the light
``zhiying.ingest.formats``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress as RichProgress
from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from zhiying.cli.common import console, stores_for_cli
from zhiying.ingest.formats import DEFAULT_CHUNK_SIZE, FileFormat

if TYPE_CHECKING:
    from zhiying.ingest.bulk import ImportReport, Progress
    from zhiying.ingest.formats import ImportKind
    from zhiying.ingest.mapping import Mapping


app = typer.Typer(
    help="Bulk import from CSV, whitespace-separated text, Parquet or JSONL files.",
    no_args_is_help=True,
)

FileArg = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The file (.gz ok).")
]
FormatOpt = Annotated[
    FileFormat | None,
    typer.Option("--format", help="csv, jsonl, parquet or whitespace (default: from the name)."),
]
MappingOpt = Annotated[
    Path | None,
    typer.Option("--mapping", exists=True, dir_okay=False, help="Mapping file (.toml or .json)."),
]
RejectsOpt = Annotated[
    Path | None,
    typer.Option(
        "--rejects",
        help="Where rejected rows go (.csv or .jsonl); default: <file>.rejects.csv here, "
        "written only when a row is rejected.",
    ),
]
ChunkOpt = Annotated[
    int,
    typer.Option(
        "--chunk-size",
        min=1,
        help="Rows read and validated per chunk (events are stored in batches of up to 1M rows).",
    ),
]


def _run(
    kind: ImportKind,
    file: Path,
    fmt: FileFormat | None,
    mapping_path: Path | None,
    rejects: Path | None,
    chunk_size: int,
) -> None:
    from zhiying.ingest.bulk import import_file
    from zhiying.ingest.mapping import load_mapping

    mapping: Mapping | None = None
    with stores_for_cli() as stores:
        if mapping_path is not None:
            mapping = load_mapping(mapping_path)
        rejects_path = rejects or Path(f"{file.name}.rejects.csv")
        with RichProgress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            TextColumn("read {task.fields[read]:,}"),
            TextColumn("stored [green]{task.fields[stored]:,}"),
            TextColumn("duplicates {task.fields[dups]:,}"),
            TextColumn("rejected [red]{task.fields[rejected]:,}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bar:
            task = bar.add_task(f"import {kind}", read=0, stored=0, dups=0, rejected=0)

            def show(p: Progress) -> None:
                bar.update(
                    task, read=p.rows_read, stored=p.stored, dups=p.duplicates, rejected=p.rejected
                )

            report = import_file(
                stores,
                file,
                kind=kind,
                fmt=fmt,
                mapping=mapping,
                chunk_size=chunk_size,
                rejects_path=rejects_path,
                progress=show,
            )
    _summary(report)


def _summary(report: ImportReport) -> None:
    table = Table(title=f"{report.path.name} ({report.format})", show_header=False)
    table.add_row("rows read", f"{report.rows_read:,}")
    table.add_row("events built", f"{report.events:,}")
    table.add_row("stored", f"{report.inserted:,}")
    table.add_row("duplicates (already stored)", f"{report.duplicates:,}")
    table.add_row("rejected", f"{report.rejected:,}")
    table.add_row("identity merges / conflicts", f"{report.merges:,} / {report.conflicts:,}")
    table.add_row("time", f"{report.seconds:.1f} s ({report.events_per_second:,.0f} events/s)")
    console.print(table)
    if report.rejected:
        for row, field, reason in report.first_rejections[:5]:
            console.print(f"  row {row}: [bold]{field or '(message)'}[/bold]: {reason}")
        console.print(f"every rejected row is listed in {report.rejects_path}")


@app.command()
def events(
    file: FileArg,
    fmt: FormatOpt = None,
    mapping: MappingOpt = None,
    rejects: RejectsOpt = None,
    chunk_size: ChunkOpt = DEFAULT_CHUNK_SIZE,
) -> None:
    """Events: JSONL of Segment messages, or CSV/Parquet rows through a mapping."""
    _run("events", file, fmt, mapping, rejects, chunk_size)


@app.command()
def users(
    file: FileArg,
    mapping: Annotated[
        Path,
        typer.Option("--mapping", exists=True, dir_okay=False, help="Mapping (.toml/.json)."),
    ],
    fmt: FormatOpt = None,
    rejects: RejectsOpt = None,
    chunk_size: ChunkOpt = DEFAULT_CHUNK_SIZE,
) -> None:
    """Users: one identify call per row (identifiers and traits from the mapping)."""
    _run("users", file, fmt, mapping, rejects, chunk_size)


@app.command()
def orders(
    file: FileArg,
    mapping: Annotated[
        Path,
        typer.Option("--mapping", exists=True, dir_okay=False, help="Mapping (.toml/.json)."),
    ],
    fmt: FormatOpt = None,
    rejects: RejectsOpt = None,
    chunk_size: ChunkOpt = DEFAULT_CHUNK_SIZE,
) -> None:
    """Orders: `Order Completed` events; line items grouped by order id."""
    _run("orders", file, fmt, mapping, rejects, chunk_size)


@app.command("dead-letters")
def dead_letters(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="Dead-letter files (.arrows); default: every file in the spool's dead/.",
        ),
    ] = None,
) -> None:
    """Events the server set aside because a store kept refusing them (docs/ingestion.md,
    "Poison rows"): store them again once the cause is fixed. Stop the server first
    (it holds the warehouse); rows stored since are skipped by messageId."""
    from zhiying.ingest.dead_letters import restore_dead_letters
    from zhiying.ingest.spool import dead_letter_files
    from zhiying.ingest.writer import spool_directory

    with stores_for_cli() as stores:
        if not files:
            spool = spool_directory(stores)
            files = [] if spool is None else dead_letter_files(spool)
        if not files:
            console.print("no dead-letter files")
            return
        results = restore_dead_letters(stores, files)
    table = Table(title="dead letters")
    for column in ("file", "rows", "stored", "duplicates", "result"):
        table.add_column(column)
    for r in results:
        outcome = "[red]refused[/red]" if r.error_class else "stored/"
        table.add_row(r.path.name, f"{r.rows:,}", f"{r.inserted:,}", f"{r.duplicates:,}", outcome)
    console.print(table)
    for r in results:
        if r.error_class:
            console.print(f"[red]refused again[/red] ({r.error_class}), kept: {r.path.name}")
    if any(r.error_class for r in results):
        raise typer.Exit(1)
