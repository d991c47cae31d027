"""The ClickHouse server adapter (clickhouse-connect) beyond what the shared warehouse
tests cover: its URLs, and several threads sharing it as ``zhiying serve`` does.

The shared tests run every warehouse test on ``clickhouse+chdb://`` too (``warehouse_url``
in tests/conftest.py): the adapter's client code on clickhouse-connect's embedded chDB
backend, since no ClickHouse server can run here."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest

from zhiying.warehouse import open_warehouse

pytestmark = pytest.mark.chdb


def test_threads_sharing_the_adapter_store_and_read_every_row(tmp_path: Path) -> None:
    """The server's loader, API handlers and worker share one adapter; its client keeps a
    session (the staging table is a temporary table), which serves one statement at a
    time: every insert and read of 4 threads must succeed and every row be stored once."""
    wh = open_warehouse(f"clickhouse+chdb://{tmp_path / 'cc'}", create=False)
    try:
        wh.execute("CREATE TABLE t (thread Int32, n Int32) ENGINE = MergeTree ORDER BY (thread, n)")
        errors: list[BaseException] = []

        def work(thread: int) -> None:
            try:
                for n in range(15):
                    batch = pa.table(
                        {
                            "thread": pa.array([thread] * 20, pa.int32()),
                            "n": pa.array(range(n * 20, n * 20 + 20), pa.int32()),
                        }
                    )
                    assert wh.insert("t", batch) >= 0
                    wh.query("SELECT count() AS c FROM t")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        counts = wh.query(
            "SELECT thread, count() AS c, uniqExact(n) AS u FROM t GROUP BY thread ORDER BY thread"
        )
        assert counts.column("c").to_pylist() == [300] * 4
        assert counts.column("u").to_pylist() == [300] * 4
    finally:
        wh.close()


def test_clickhouses_urls_ask_for_tls_on_port_8443(monkeypatch: pytest.MonkeyPatch) -> None:
    """``clickhouses://`` must reach the server over HTTPS (it used to connect in plain
    HTTP on 8123); ``clickhouse://`` stays HTTP on 8123. Checked where the URL's parts
    reach clickhouse-connect's ``get_client``."""
    import clickhouse_connect

    seen: list[dict[str, object]] = []

    def record(**connect: object) -> None:
        seen.append(connect)
        raise RuntimeError("stop before connecting")

    monkeypatch.setattr(clickhouse_connect, "get_client", record)
    for url in (
        "clickhouses://u:p%40ss@ch.example/zy",
        "clickhouse://ch.example/zy",
        "clickhouses://ch.example:9440/zy",
    ):
        with pytest.raises(RuntimeError):
            open_warehouse(url)
    default = {"username": "default", "password": ""}
    assert seen == [
        {"host": "ch.example", "port": 8443, "username": "u", "password": "p@ss", "secure": True},
        {"host": "ch.example", "port": 8123, **default, "secure": False},
        {"host": "ch.example", "port": 9440, **default, "secure": True},
    ]
