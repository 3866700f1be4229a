"""A replay's job page in Chromium for a replay stored from a real SGLang server
(tests/browser/data/replay_sglang.json, written by a 2-update replay against SGLang 0.5.23
on the tiny Llama), screenshotted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import login, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

STORED = Path(__file__).parent / "data" / "replay_sglang.json"


def test_an_sglang_replay_page_names_sglang_its_checksums_and_weight_versions(
    live_server_proc: Any, project_a: Any, page: Any, artifacts_dir: Path
) -> None:
    from dashboard.core.models import Job, Run

    result = json.loads(STORED.read_text())
    run = Run.objects.create(
        project=project_a, name="replay-sglang", kind="replay", status="finished",
        verdict=result["verdict"],
    )  # fmt: skip
    job = Job.objects.create(
        project=project_a, run=run, kind="replay", status="succeeded", progress=1.0,
        result=result, spec=result["spec"],
    )  # fmt: skip
    url = live_server_proc.url
    login(page, url)

    page.goto(f"{url}/jobs/{job.pk}/")
    page.wait_for_selector("#replay-updates")
    answered = page.text_content("#engine-answered") or ""
    assert "SGLang server" in answered and "SGLang 0.5.23" in answered and "vLLM" not in answered
    assert "SGLang's own /weights_checker digests, 15 parameters" in (
        page.text_content("#replay-checksums") or ""
    )
    assert page.locator("#replay-updates td.weight-version").all_text_contents() == ["1", "2"]
    shot(page, artifacts_dir, "replay-result-sglang")
    assert not page.js_errors, page.js_errors
