"""The ``zhiying`` command starts without the analytical stack.

Every command pays for what ``zhiying.cli.main`` imports before it runs, so the
command modules import the services inside the command functions. These tests
run a fresh interpreter (the test process has imported everything already) and
look at ``sys.modules`` after importing the CLI and after ``--help``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from zhiying.cli.main import app

HEAVY = (
    "pandas",
    "ibis",
    "pyspark",
    "duckdb",
    "chdb",
    "sqlalchemy",
    "alembic",
    "pyarrow",
    "numpy",
    "fastapi",
    "uvicorn",
)
"""Packages a command imports when it needs them, never at start-up (pydantic is
not here: Typer itself imports it to parse some option types)."""

_CHILD = """
import json, sys
from typer.testing import CliRunner
from zhiying.cli.main import app
args = json.loads(sys.argv[1])
result = None
if args is not None:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
heavy = json.loads(sys.argv[2])
print(json.dumps({
    "loaded": sorted(m for m in heavy if m in sys.modules),
    "exit_code": None if result is None else result.exit_code,
    "output": None if result is None else result.output,
}))
"""


def _fresh(args: list[str] | None) -> dict[str, Any]:
    """Import the CLI in a new interpreter, run it with ``args`` (None: import only)."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(args), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


def _names_listed(output: str) -> set[str]:
    """First word of each row of Rich's command panels."""
    return {line.strip("│ ").split(" ")[0] for line in output.splitlines() if line.startswith("│")}


def _registered() -> set[str]:
    groups = {g.name for g in app.registered_groups if g.name}
    commands = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    return groups | commands


def test_importing_the_cli_loads_no_heavy_package() -> None:
    assert _fresh(None)["loaded"] == []


def test_help_lists_every_group_without_loading_a_heavy_package() -> None:
    report = _fresh(["--help"])
    assert report["exit_code"] == 0
    assert report["loaded"] == []
    expected = _registered()
    assert {"db", "import", "segment", "tags", "layers", "coupons", "serve", "demo"} <= expected
    assert expected <= _names_listed(report["output"])


def test_help_of_a_command_with_typed_options_loads_no_heavy_package() -> None:
    report = _fresh(["import", "events", "--help"])
    assert report["exit_code"] == 0
    assert report["loaded"] == []
    assert "--chunk-size" in report["output"] and "--format" in report["output"]
