"""The one way a report writes a number for people: pages, Markdown, CLI text and messages."""

from __future__ import annotations

import math
from typing import Any


def number(value: Any, digits: int = 4, missing: str = "–") -> str:
    """`value` for people: integers as integers; floats with `digits` significant digits, in
    scientific notation (one digit fewer) only below 1e-3 or from 1e5 on, where fixed
    notation would bury the digits in zeros ("9.29e-05", "0.0123", "16"); `missing` for
    None. Anything that is not a number is shown as it is."""
    if value is None:
        return missing
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:d}"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.{digits - 2}e}"
    if value == int(value):
        return f"{int(value):d}"
    return f"{value:.{digits}g}"
