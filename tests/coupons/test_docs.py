"""The worked example of docs/coupons.md, run as written (its ``# value`` comments are
checked), so the page cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zhiying.coupons.service import CouponNotApplicable
from zhiying.runtime import Stores

DOC = Path(__file__).resolve().parents[2] / "docs" / "coupons.md"


def test_worked_example_in_the_docs_runs_and_its_numbers_hold(stores: Stores) -> None:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"## Worked example.*?```python\n(.*?)```", text, re.S)
    assert block is not None
    checked: list[str] = []

    def check(value: object, expected: str) -> None:
        assert repr(value).replace("'", '"') == expected, (value, expected)
        checked.append(expected)

    source = re.sub(
        r"^(\S[^=\n]*?)\s+# (\S.*?)(?: = .*)?$",
        lambda m: f"_check({m.group(1)}, {m.group(2)!r})",
        block.group(1),
        flags=re.M,
    )
    namespace: dict[str, object] = {"engine": stores.engine, "_check": check}
    exec(source, namespace)
    assert checked == ["4000", '{"a": 2400, "b": 1600}', "21600"]
    with pytest.raises(CouponNotApplicable, match=r"needs 200\.00 in scope, cart has 150\.00"):
        exec(
            'other = svc.issue(engine, t.template_id, "one_43", now).coupon.code\n'
            'svc.lock(engine, "order-2", "one_43", [other], '
            'Cart((CartLine("a", "lipstick", 15000),)), now)',
            namespace,
        )
