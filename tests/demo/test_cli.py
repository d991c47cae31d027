"""``zhiying demo`` from the command line (Typer's CliRunner, a temporary data dir)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zhiying.cli.demo import command_name
from zhiying.cli.main import app

runner = CliRunner()


def test_demo_prints_the_summary_and_next_steps_and_can_run_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "demo"
    args = ["demo", "--users", "60", "--days", "2", "--seed", "5", "--data-dir", str(data_dir)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for text in ("events stored", "GMV by city", "Events by channel", "messages/s", "Try next"):
        assert text in result.output
    assert f"ZHIYING_DATA_DIR={data_dir} {command_name()} profile show user_id:m" in result.output
    assert (data_dir / "warehouse.duckdb").exists()
    _runs_the_printed_event_count(result.output)
    _runs_the_printed_segment_preview(result.output, data_dir, monkeypatch)

    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "wiped the previous demo" in again.output
    # A fresh run, not a second copy: the same events count as the first time.
    first_count = _stored(result.output)
    assert first_count > 0 and _stored(again.output) == first_count


def _runs_the_printed_event_count(output: str) -> None:
    """The suggested event count runs as printed, in a shell from the directory the
    demo ran in: the command names a ``zhiying`` the shell finds without an
    activated virtual environment."""
    line = next(line for line in output.splitlines() if "events count" in line).strip()
    env = {k: v for k, v in os.environ.items() if k != "ZHIYING_DATA_DIR"}
    done = subprocess.run(line, shell=True, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    count = done.stdout.split(" events ", 1)[0].strip()
    assert count.replace(",", "").isdigit() and int(count.replace(",", "")) > 0, done.stdout


def _runs_the_printed_segment_preview(
    output: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The suggested preview of the seed segment runs as printed (from the repository
    root, as `make demo` does) and counts as of the simulated period's end."""
    line = next(line for line in output.splitlines() if "zhiying segment preview" in line)
    args = shlex.split(line.split(f" {command_name()} ", 1)[1])
    assert args[args.index("--at") + 1] == "2022-01-08T00:00:00+08:00"
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("ZHIYING_DATA_DIR", str(data_dir))
    preview = runner.invoke(app, args)
    assert preview.exit_code == 0, preview.output
    assert "people as of 2022-01-07T16:00:00+00:00" in preview.output


def _stored(output: str) -> int:
    line = next(line for line in output.splitlines() if "events stored" in line)
    return int(line.split("│")[-2].strip().replace(",", ""))


def test_demo_refuses_to_wipe_a_directory_it_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    result = runner.invoke(
        app, ["demo", "--users", "5", "--days", "1", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "not made by `zhiying demo`" in result.output
    assert precious.read_text() == "keep me"
