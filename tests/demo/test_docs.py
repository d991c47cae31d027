"""docs/demo.md cannot drift: its sample tables are what the demo prints, its options exist.

Regenerate the sample after a deliberate change with
``ZHIYING_REGEN_DOCS=1 .venv/bin/pytest tests/demo/test_docs.py``.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

from rich.console import Console

from zhiying.cli.demo import print_summary
from zhiying.demo.run import run_demo
from zhiying.runtime import Stores

DOC = Path(__file__).resolve().parents[2] / "docs" / "demo.md"
START, END = "<!-- sample:start -->", "<!-- sample:end -->"
# The worked example in the page: `zhiying demo --users 300 --days 7 --seed 42`.
USERS, DAYS, SEED = 1000, 7, 42


def test_the_sample_in_the_docs_is_what_the_demo_prints(stores: Stores) -> None:
    summary = run_demo(stores, USERS, DAYS, SEED, parallel=False)
    out = Console(file=io.StringIO(), width=90, record=True, color_system=None)
    print_summary(summary, out)
    printed = "\n".join(line.rstrip() for line in out.export_text().splitlines())
    block = f"{START}\n```text\n{printed}\n```\n{END}"
    text = DOC.read_text(encoding="utf-8")
    current = re.search(re.escape(START) + ".*?" + re.escape(END), text, flags=re.S)
    assert current is not None, f"{DOC} lost its {START} … {END} markers"
    if os.environ.get("ZHIYING_REGEN_DOCS"):
        DOC.write_text(text.replace(current.group(0), block), encoding="utf-8")
        return
    assert current.group(0) == block, (
        "docs/demo.md's sample is stale; regenerate it with "
        "ZHIYING_REGEN_DOCS=1 .venv/bin/pytest tests/demo/test_docs.py"
    )


def test_the_docs_name_every_option_of_the_command() -> None:
    text = DOC.read_text(encoding="utf-8")
    for option in ("--users", "--days", "--seed", "--data-dir"):
        assert f"`{option}" in text, option
    assert f"zhiying demo --users {USERS} --days {DAYS} --seed {SEED}" in text
