"""CDNOW's real customers: the layers and migration shown in docs/layers.md, reproduced.

The warehouse computes them (DuckDB and chdb); pandas computes the same
rules independently from the raw file; both must equal the tables in the docs.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from tests.layers.cdnow import CUSTOMERS, ROWS, load_cdnow
from zhiying.profiles.layers import service
from zhiying.profiles.layers.models import (
    LAYER_VALUES,
    LifecycleRules,
    ValueFrequencyRules,
    cut_points,
    end_of_day,
    lifecycle_stage,
    quadrant,
    score,
)
from zhiying.runtime import Stores

DOCS = Path(__file__).resolve().parents[2] / "docs" / "layers.md"
START, END = date(1997, 12, 31), date(1998, 6, 30)


def doc_table(marker: str) -> list[list[str]]:
    """The rows of the markdown table right after ``<!-- marker -->`` (header and rule dropped)."""
    lines = DOCS.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"<!-- {marker} -->") + 1
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([cell.strip().strip("*`") for cell in line.strip("|").split("|")])
    return rows[2:]


def doc_counts(marker: str) -> dict[str, int]:
    return {r[0]: int(r[1].replace(",", "")) for r in doc_table(marker) if r[0] != "total"}


def doc_matrix(marker: str) -> dict[tuple[str, str], int]:
    lines = DOCS.read_text(encoding="utf-8").splitlines()
    header = lines[lines.index(f"<!-- {marker} -->") + 1]
    to_values = [c.strip().strip("*`") for c in header.strip("|").split("|")][1:]
    return {
        (row[0], to): int(n.replace(",", ""))
        for row in doc_table(marker)
        for to, n in zip(to_values, row[1:], strict=True)
    }


def pandas_layers(path: Path, day: date) -> tuple[Counter[str], dict[str, str]]:
    """Lifecycle counts and each customer's quadrant, from the raw file with pandas."""
    frame = pd.read_csv(
        path, sep=r"\s+", dtype={"customer_id": str, "date": str, "dollar_value": str}
    )
    frame["day"] = pd.to_datetime(frame["date"], format="%Y%m%d")
    frame["cents"] = frame["dollar_value"].map(lambda s: round(float(s) * 100))
    frame = frame[frame["day"] <= pd.Timestamp(day)]
    as_of = pd.Timestamp(day)
    per = frame.groupby("customer_id").agg(
        first=("day", "min"), last=("day", "max"), orders=("day", "size")
    )
    life = LifecycleRules()
    stages = Counter(
        lifecycle_stage((as_of - r.first).days, (as_of - r.last).days, int(r.orders), life)
        for r in per.itertuples()
    )
    recent = frame[frame["day"] > as_of - pd.Timedelta(days=365)]
    fm = recent.groupby("customer_id").agg(f=("day", "size"), m=("cents", "sum"))
    fm = fm.reindex(per.index, fill_value=0)
    active = fm[fm["f"] > 0]
    rules = ValueFrequencyRules()
    f_hist, m_hist = active["f"].value_counts(), active["m"].value_counts()
    f_cuts = cut_points(list(f_hist.index), list(f_hist.values), rules.bins)
    m_cuts = cut_points(list(m_hist.index), list(m_hist.values), rules.bins)
    quadrants = {
        str(c): quadrant(score(int(r.f), f_cuts), score(int(r.m), m_cuts), rules)
        for c, r in zip(fm.index, fm.itertuples(), strict=True)
    }
    return stages, quadrants


@pytest.fixture
def cdnow(shared_data: Path) -> Path:
    return shared_data / "cdnow" / "CDNOW_master.txt.gz"


def test_cdnow_layers_and_migration_match_the_docs(wh_stores: Stores, cdnow: Path) -> None:
    assert load_cdnow(wh_stores.warehouse, cdnow) == ROWS
    for day in (START, END):
        service.compute_layers(
            wh_stores, as_of=end_of_day(day), layers=["lifecycle", "value_frequency"]
        )
    for layer in ("lifecycle", "value_frequency"):
        got = service.distribution(wh_stores, layer, end_of_day(END))
        assert got.counts == doc_counts(f"cdnow {layer} {END}")
        assert got.total == CUSTOMERS
    for layer in ("lifecycle", "value_frequency"):
        matrix = service.migration(wh_stores, layer, end_of_day(START), end_of_day(END))
        documented = doc_matrix(f"cdnow {layer} {START} {END}")
        assert matrix.counts == {k: v for k, v in documented.items() if v}
    # the figure the issue asks about, stated in the docs' prose as well
    moved = matrix.moved("high_frequency_high_value", "low_frequency_low_value")
    assert re.search(
        rf"\b{moved:,}\b customers moved from high-frequency-high-value",
        DOCS.read_text(encoding="utf-8"),
    )


def test_pandas_reproduces_the_documented_cdnow_layers(cdnow: Path) -> None:
    stages, quadrants = pandas_layers(cdnow, END)
    assert {v: stages.get(v, 0) for v in LAYER_VALUES["lifecycle"]} == doc_counts(
        f"cdnow lifecycle {END}"
    )
    counts = Counter(quadrants.values())
    assert {v: counts.get(v, 0) for v in LAYER_VALUES["value_frequency"]} == doc_counts(
        f"cdnow value_frequency {END}"
    )
