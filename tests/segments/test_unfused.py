"""``sqlext.unfused``: ibis's ``fuse_selects`` is off for the compiling thread only."""

from __future__ import annotations

import threading

import ibis

from zhiying.segments import sqlext


def _two_selects() -> str:
    t = ibis.table({"a": "int64", "b": "int64"}, name="t")
    return str(ibis.to_sql(t.filter(t["a"] > 1).select("a"), dialect="duckdb"))


def test_unfused_turns_fuse_selects_off_for_its_own_thread_only() -> None:
    fused = _two_selects()
    inside, release = threading.Event(), threading.Event()
    seen: list[tuple[bool, str]] = []

    def compile_unfused() -> None:
        with sqlext.unfused():
            seen.append((ibis.options.sql.fuse_selects, _two_selects()))
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=compile_unfused)
    worker.start()
    try:
        assert inside.wait(10)
        # Meanwhile another thread (tags, layers) compiles as before.
        assert ibis.options.sql.fuse_selects is True
        assert _two_selects() == fused
    finally:
        release.set()
        worker.join()
    assert seen[0][0] is False
    assert seen[0][1] != fused  # unfused: a subquery more
    assert ibis.options.sql.fuse_selects is True


def test_the_process_wide_option_stays_settable() -> None:
    before = ibis.options.sql.fuse_selects
    try:
        ibis.options.sql.fuse_selects = False
        assert ibis.options.sql.fuse_selects is False
        with sqlext.unfused():
            assert ibis.options.sql.fuse_selects is False
        ibis.options.sql.fuse_selects = True
        with sqlext.unfused():
            assert ibis.options.sql.fuse_selects is False
        assert ibis.options.sql.fuse_selects is True
    finally:
        ibis.options.sql.fuse_selects = before
