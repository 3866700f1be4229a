"""A checklist that ran against a vLLM server, on its job page in Chromium: which engine
answered, and the rows whose fix is a start option of the server marked apart from failures;
screenshotted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import login, shot
from tests.unit.test_checklist_server import V1_SERVER, spec, three
from workers.checklist import ChecklistResult
from workers.checklist.rows import overall_verdict
from workers.checklist.server_rows import build_server_rows

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

URL = "http://10.0.0.5:8000"


def server_report() -> dict[str, Any]:
    checklist = spec(include_replay=False)
    measured = three()
    rows = build_server_rows(checklist, V1_SERVER, measured, {})
    result = ChecklistResult(
        model="/models/tiny-llama",
        vllm_version="0.32.0",
        sampling_requested=checklist.sampling.requested(),
        rows=rows,
        variants=list(measured.values()),
        replays={},
        verdict=overall_verdict(rows),
        engine_builds=0,
        seconds=12.5,
        timings={},
        spec=checklist.model_dump(mode="json"),
        engine={
            "adapter": "vllm-server",
            "label": "vLLM server",
            "version": "0.32.0",
            "url": URL,
            "unknown": [],
        },
    )
    return dict(result.to_dict())


def test_a_checklist_against_a_server_names_it_and_marks_restarts(
    live_server_proc: Any, project_a: Any, page: Any, artifacts_dir: Path
) -> None:
    from dashboard.core.models import Job, Run

    report = server_report()
    run = Run.objects.create(
        project=project_a,
        name="checklist-server",
        kind="checklist",
        status="finished",
        verdict=report["verdict"],
    )
    job = Job.objects.create(
        project=project_a,
        run=run,
        kind="checklist",
        status="succeeded",
        progress=1.0,
        result=report,
        spec={"model": "/models/tiny-llama", "server": {"url": URL}},
    )
    url = live_server_proc.url
    login(page, url)
    page.goto(f"{url}/jobs/{job.pk}/")
    page.wait_for_selector("#checklist-table")
    answered = page.text_content("#engine-answered") or ""
    assert "vLLM server" in answered and URL in answered and "0.32.0" in answered
    restart = page.locator("#check-processed_logprobs td .badge").first
    assert restart.text_content() == "needs restart"
    assert "status-restart" in (restart.get_attribute("class") or "")
    assert "verdict-fail" not in (restart.get_attribute("class") or "")
    assert "--logprobs-mode processed_logprobs" in page.text_content("#check-processed_logprobs")
    assert "as configured" in page.text_content("#checklist-table thead")
    shot(page, artifacts_dir, "checklist-result-server")
