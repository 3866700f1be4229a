"""The one way a report writes a number for people: pages, Markdown, CLI text and messages."""

from __future__ import annotations

import math
from typing import Any


def number(value: Any, digits: int = 4, missing: str = "–") -> str:
    """`value` with `digits` significant digits; integers (and integral floats) as integers,
    scientific notation only where fixed notation would need more than four zeros, `missing`
    for None. Anything that is not a number is shown as it is."""
    if value is None:
        return missing
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:d}"
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):d}"
    return f"{value:.{digits}g}"
