"""#16 §6: one number style. Python's `number` writes every value of the shared table as the
table says (tests/browser/test_numbers.py checks the browser's numbers.js against it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parity.reports.numbers import number

CASES = json.loads((Path(__file__).parents[1] / "number_style.json").read_text())["cases"]


@pytest.mark.parametrize(("text", "digits", "expected"), CASES)
def test_number_writes_the_shared_table(text: str, digits: int, expected: str) -> None:
    assert number(float(text), digits) == expected


def test_integers_are_exact_and_missing_is_a_dash() -> None:
    # Counts and steps stay whole, however large; only floats are rounded.
    assert number(1234567) == "1234567"
    assert number(None) == "–"
    assert number(None, missing="n/a") == "n/a"
    assert number("sdpa") == "sdpa"
    assert number(True) == "True"


def test_the_numbers_the_issue_saw_on_one_page_now_read_alike() -> None:
    assert [number(v) for v in (9.294e-05, 9.387e-4, 0.00340704, 0.0029704400482997418, 16.0)] == [
        "9.29e-5",
        "9.39e-4",
        "0.003407",
        "0.00297",
        "16",
    ]
    assert number(12345.6) == "12350"  # fixed below 1e5, as the rule says
