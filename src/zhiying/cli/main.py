"""The ``zhiying`` command: mounts every command group."""

from __future__ import annotations

import typer

from zhiying.cli import coupons as coupons_cli
from zhiying.cli import db, importer, keys, serve
from zhiying.cli import demo as demo_cli
from zhiying.cli import profiles as profiles_cli
from zhiying.cli import segments as segments_cli
from zhiying.cli import tags as tags_cli
from zhiying.cli import worker as worker_cli

app = typer.Typer(
    name="zhiying",
    help="Zhiying (智营): closed-loop marketing operations.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(db.app, name="db")
app.add_typer(keys.app, name="keys")
app.add_typer(coupons_cli.app, name="coupons")
app.add_typer(importer.app, name="import")
app.add_typer(profiles_cli.profile_app, name="profile")
app.add_typer(profiles_cli.events_app, name="events")
app.add_typer(tags_cli.tags_app, name="tags")
app.add_typer(tags_cli.layers_app, name="layers")
app.add_typer(segments_cli.app, name="segment")
app.command()(serve.serve)
app.command()(demo_cli.demo)
app.command()(worker_cli.worker)


if __name__ == "__main__":
    app()
