"""Typed report contracts: the shapes of the results Parity stores in `Job.result`.

A stored result is a persistent API: pages, Markdown, JSON exports and tests read these types,
never alias chains over untyped dicts. Each top-level report carries `version`; a result
stored before versions existed reads as version 1 (`version_of`). A change to a shape that
readers would misread bumps the version, and readers keep understanding the older ones.

One module per report: `comparison`, `replay`, `checklist`. Stdlib only (TypedDicts), so the
client, the workers and the dashboard can all import them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

REPORT_VERSION = 1

Verdict = Literal["pass", "warn", "fail"]


def version_of(result: Mapping[str, Any]) -> int:
    """The report version of a stored result (1 for results stored before versions)."""
    v = result.get("version", 1)
    return v if isinstance(v, int) and not isinstance(v, bool) else 1
