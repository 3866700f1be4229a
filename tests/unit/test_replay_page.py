"""The replay result template shows what the replay found vLLM doing and what it skipped."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_engine_findings_and_notes_are_on_the_page() -> None:
    from django.template.loader import render_to_string

    finding = "vLLM 0.32.0's layerwise reload left the tied output head serving stale weights"
    note = "skipped 1 of 3 prompts (prompt 2): no room to sample"
    result = {
        "model": "m",
        "verdict": "pass",
        "seconds": 1.0,
        "updates": [],
        "baseline": {"metrics": {}},
        "prefix_cache_summary": {},
        "capabilities": {},
        "engine_findings": [finding],
        "notes": [note],
    }
    out = render_to_string("replay_result.html", {"result": result})
    assert 'id="replay-engine-findings"' in out and "tied output head serving stale" in out
    assert 'id="replay-notes"' in out and "skipped 1 of 3 prompts" in out
    older = render_to_string("replay_result.html", {"result": {**result, "engine_findings": []}})
    assert "replay-engine-findings" not in older
