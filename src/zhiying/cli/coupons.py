"""``zhiying coupons``: templates, batch issuance with a progress bar, wallets, ledgers,
sweeps, block lists and the risk report.

The coupon services are imported inside the commands so that the CLI starts
without them (see ``zhiying.cli.common``).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from zhiying.cli.common import console, err_console, stores_for_cli
from zhiying.errors import ValidationFailed

app = typer.Typer(
    help="Coupons: templates, issuance, wallets, ledger, abuse.", no_args_is_help=True
)
templates_app = typer.Typer(help="Coupon templates.", no_args_is_help=True)
app.add_typer(templates_app, name="templates")


@templates_app.command("create")
def create_template(
    spec_file: Path = typer.Argument(..., exists=True, help="Template spec as JSON."),
    template_id: str | None = typer.Option(None, "--id", help="Template id (default: generated)."),
) -> None:
    """Create a template from a JSON spec (see docs/coupons.md)."""
    from zhiying.coupons import service as svc
    from zhiying.coupons.models import TemplateSpec

    with stores_for_cli() as stores:
        try:
            spec = TemplateSpec.model_validate_json(spec_file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValidationFailed(f"{spec_file}: {exc}", field="spec") from exc
        t = svc.create_template(stores.engine, spec, stores.clock.now(), template_id)
    console.print(f"created template [bold]{t.template_id}[/bold] ({spec.name})")


@templates_app.command("list")
def list_templates() -> None:
    """Templates with their counters (money in currency units)."""
    from zhiying.coupons import service as svc
    from zhiying.coupons.models import fmt_money

    with stores_for_cli() as stores:
        rows = svc.list_templates(stores.engine)
    table = Table("id", "name", "kind", "status", "issued", "redeemed", "budget used", "spent")
    for t in rows:
        budget = t.spec.limits.budget
        table.add_row(
            t.template_id,
            t.spec.name,
            t.spec.benefit.kind,
            t.status,
            f"{t.issued_count}" + (f"/{t.spec.limits.quantity}" if t.spec.limits.quantity else ""),
            str(t.redeemed_count),
            fmt_money(t.budget_committed) + (f"/{fmt_money(budget)}" if budget else ""),
            fmt_money(t.discount_spent),
        )
    console.print(table)


@app.command()
def issue(
    template_id: str = typer.Argument(..., help="Template to issue."),
    batch_key: str = typer.Option(..., help="Idempotency key of the batch (re-runs are safe)."),
    csv_file: Path | None = typer.Option(
        None, "--csv", exists=True, help="CSV of user refs: kind:value, user ids, one_id:X."
    ),
    one_ids_file: Path | None = typer.Option(
        None, "--one-ids", exists=True, help="One ONE_ID per line (e.g. a segment export)."
    ),
    segment_id: str | None = typer.Option(
        None, "--segment", help="A saved segment: issue to its current members."
    ),
    chunk_size: int = typer.Option(20000, min=1, help="People per transaction."),
) -> None:
    """Issue one coupon to every member of a segment, every person of a CSV or of a
    ONE_ID list, with a progress bar (also ``issue-batch``)."""
    from zhiying.coupons import audience
    from zhiying.coupons import service as svc

    if sum(x is not None for x in (csv_file, one_ids_file, segment_id)) != 1:
        raise typer.BadParameter("give exactly one of --segment, --csv or --one-ids")
    with stores_for_cli() as stores:
        if segment_id is not None:
            people = audience.segment_members(stores, segment_id, stores.clock.now())
            console.print(f"segment {segment_id}: {len(people)} members")
        elif csv_file is not None:
            resolved = audience.resolve(
                stores.engine,
                audience.read_refs(csv_file),
                stores.settings.default_phone_region,
            )
            people = resolved.one_ids
            if resolved.unresolved or resolved.invalid:
                err_console.print(
                    f"[yellow]skipped[/yellow] {len(resolved.unresolved)} unknown and "
                    f"{len(resolved.invalid)} unreadable references"
                )
        else:
            assert one_ids_file is not None
            people = [
                line.strip()
                for line in one_ids_file.read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("issuing", total=len(people))
            result = svc.issue_batch(
                stores.engine,
                stores.warehouse,
                template_id,
                people,
                stores.clock.now(),
                batch_key=batch_key,
                chunk_size=chunk_size,
                progress=lambda done: bar.update(task, completed=done),
                dedup_days=stores.settings.dedup_window_days,
            )
    console.print(
        f"issued {result.issued} · already had {result.already_issued} · "
        f"over per-user limit {result.over_user_limit} · blocked {result.blocked} · "
        f"not issued {result.not_issued}"
        + (f" (stopped: {result.stopped_by} used up)" if result.stopped_by else "")
    )
    if result.events_pending:
        err_console.print(
            f"[yellow]{result.events_pending} events wait in the ledger outbox;[/yellow] "
            "`zhiying coupons sweep` exports them"
        )


app.command("issue-batch")(issue)


@app.command()
def wallet(one_id: str) -> None:
    """A person's coupons."""
    from zhiying.coupons import service as svc
    from zhiying.coupons.models import fmt_money

    with stores_for_cli() as stores:
        rows = svc.wallet(stores.engine, one_id)
    table = Table("code", "template", "state", "face value", "valid until", "order")
    for c in rows:
        table.add_row(
            c.code,
            c.template_name or c.template_id,
            c.state,
            fmt_money(c.face_value) if c.face_value is not None else "—",
            f"{c.valid_until:%Y-%m-%d %H:%M}",
            c.order_id or "",
        )
    console.print(table)


@app.command("ledger")
def show_ledger(code: str) -> None:
    """Every transition of one coupon."""
    from zhiying.coupons import ledger
    from zhiying.coupons import service as svc
    from zhiying.coupons.models import fmt_money

    with stores_for_cli() as stores:
        svc.get_coupon(stores.engine, code)
        with stores.engine.connect() as conn:
            entries = ledger.history(conn, code)
    table = Table("seq", "at (UTC)", "action", "from", "to", "order", "amount", "reason")
    for e in entries:
        table.add_row(
            str(e.seq),
            f"{e.at:%Y-%m-%d %H:%M:%S}",
            e.action,
            e.from_state or "",
            e.to_state,
            e.order_id or "",
            fmt_money(e.amount) if e.amount is not None else "",
            e.reason,
        )
    console.print(table)


@app.command()
def sweep() -> None:
    """Release timed-out locks, expire ended coupons, export pending ledger events."""
    from zhiying.coupons import maintenance

    with stores_for_cli() as stores:
        done = maintenance.sweep(stores)
    console.print(
        f"released {done.locks_released} locks · expired {done.expired} coupons · "
        f"exported {done.events_published} events"
    )


@app.command()
def block(
    kind: str = typer.Argument(..., help="device_id, phone, ip, address, payment_account, one_id…"),
    value: str = typer.Argument(...),
    reason: str = typer.Option(..., help="Why (shown in the block list)."),
) -> None:
    """Block an identifier from claiming and redeeming (only its hash is stored)."""
    from zhiying.coupons import abuse

    with stores_for_cli() as stores:
        h = abuse.block(stores.engine, kind, value, reason, stores.clock.now())
    console.print(f"blocked {kind} {h[:12]}…")


@app.command("risk-report")
def risk_report(
    min_accounts: int = typer.Option(3, min=2, help="Accounts sharing an identifier to report."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Clusters of (new) accounts behind one identifier, and one-shot redeemers."""
    from zhiying.coupons import abuse

    with stores_for_cli() as stores:
        report = abuse.risk_report(stores.engine, stores.clock.now(), min_accounts=min_accounts)
    if as_json:
        print(json.dumps([c.__dict__ for c in report.clusters], ensure_ascii=False))
        return
    table = Table("kind", "hash", "accounts", "new", "claims", "redeemed", "one-shot")
    for c in report.clusters:
        table.add_row(
            c.kind,
            c.value_hash,
            str(c.accounts),
            str(c.new_accounts),
            str(c.claims),
            str(c.redemptions),
            str(c.one_shot_accounts),
        )
    console.print(table)
    console.print(
        f"one-shot redeemers: {report.one_shot_accounts} ({report.one_shot_share:.0%} of redeemers)"
    )
