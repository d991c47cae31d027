"""A real ``zhiying serve`` in a subprocess on loopback, for tests that need real HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(data_dir: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    """Start ``zhiying serve`` on ``port`` with ``data_dir`` (plus ``env``) and wait, at
    most 60 s, until ``/health`` answers; the caller stops the process."""
    process = subprocess.Popen(
        [sys.executable, "-m", "zhiying.cli.main", "serve", "--port", str(port)],
        env={**os.environ, "ZHIYING_DATA_DIR": str(data_dir), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server did not start: {process.stderr.read()!r}")  # type: ignore[union-attr]
        time.sleep(0.2)
