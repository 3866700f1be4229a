"""#16 §6: the browser writes numbers as Python does: static/js/numbers.js against the shared
table that tests/unit/test_numbers.py checks `parity.reports.numbers.number` against."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CASES = json.loads((Path(__file__).parents[1] / "number_style.json").read_text())["cases"]


def test_numbers_js_writes_the_shared_table(live_server_proc: Any, alice: Any, page: Any) -> None:
    login(page, live_server_proc.url)
    got = page.evaluate(
        """async (cases) => {
          const { number } = await import("/static/js/numbers.js");
          return cases.map(([text, digits]) => number(Number(text), digits));
        }""",
        CASES,
    )
    differ = [(c, g) for c, g in zip(CASES, got, strict=True) if c[2] != g]
    assert differ == []
    assert page.evaluate('async () => (await import("/static/js/numbers.js")).number(null)') == "–"
    assert page.js_errors == []
