"""Run every benchmark in ``bench/`` one after another (``make bench``)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    names = sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if m.name not in {"run_all", "common"}
    )
    failed = []
    for name in names:
        module = f"bench.{name}"
        print(f"\n===== {module} =====", flush=True)
        code = subprocess.call([sys.executable, "-m", module])
        if code != 0:
            failed.append(module)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
