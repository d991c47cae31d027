"""The ``zhiying`` command: mounts every command group."""

from __future__ import annotations

import typer

from zhiying.cli import db, keys, serve

app = typer.Typer(
    name="zhiying",
    help="Zhiying (智营): closed-loop marketing operations.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(db.app, name="db")
app.add_typer(keys.app, name="keys")
app.command()(serve.serve)


if __name__ == "__main__":
    app()
