"""workers.reporting: what every job's result passes through before Postgres."""

from __future__ import annotations

import math

import pytest

from workers.reporting import json_safe

pytestmark = pytest.mark.unit


def test_json_safe_makes_text_storable_in_postgres() -> None:
    out = json_safe({"a\x00": ["x\x00y", math.nan, (1.5, math.inf)], "n": 3})
    assert out == {"a\u2400": ["x\u2400y", None, [1.5, None]], "n": 3}
