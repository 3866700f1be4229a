"""The one way Parity writes a number for people: pages, Markdown, CLI text and messages.

The browser has the same rule in static/js/numbers.js; tests/number_style.json is the table
of value -> text that both must produce. Rounding is done on the exact binary value, half
away from zero, as JavaScript's toPrecision/toExponential do, so the two agree to the digit.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

# Fixed notation in [1e-3, 1e5): below, the digits drown in zeros; above, in trailing zeros.
SMALL = Decimal("0.001")
LARGE = Decimal(100_000)


def _significant(value: float, digits: int) -> Decimal:
    exact = Decimal(value)
    return exact.quantize(Decimal(1).scaleb(exact.adjusted() - digits + 1), ROUND_HALF_UP)


def _plain(d: Decimal) -> str:
    """`d` in fixed notation without trailing zeros ("12350", "0.003407", "16")."""
    text = format(d, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def number(value: Any, digits: int = 4, missing: str = "–") -> str:
    """`value` for people: integers (counts, steps) exactly; floats with `digits` significant
    digits in fixed notation ("0.003407", "16", "12350"), or with one digit fewer in
    scientific notation when the rounded value is below 1e-3 or from 1e5 on ("9.29e-5",
    "1.23e+5"); trailing zeros dropped; "NaN", "inf", "-inf"; `missing` for None. Anything
    that is not a number is shown as it is."""
    if value is None:
        return missing
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:d}"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    rounded = _significant(value, digits)
    if SMALL <= abs(rounded) < LARGE:
        return _plain(rounded)
    short = _significant(value, max(digits - 1, 1))
    exponent = short.adjusted()
    return f"{_plain(short.scaleb(-exponent))}e{exponent:+d}"
