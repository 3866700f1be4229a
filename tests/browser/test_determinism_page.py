"""The determinism certificate's job page in Chromium: a stored certificate (in-process and
server) and the new-certificate form, screenshotted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import login, shot
from tests.unit.test_determinism_page import certificate_report

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_certificate_page_shows_runs_verdict_and_engine(
    live_server_proc: Any, project_a: Any, page: Any, artifacts_dir: Path
) -> None:
    from dashboard.core.models import Job, Run

    url = live_server_proc.url
    jobs = {}
    for server in (False, True):
        report = certificate_report(server=server)
        run = Run.objects.create(
            project=project_a,
            name=f"determinism-{'server' if server else 'local'}",
            kind="determinism",
            status="finished",
            verdict=report["verdict"],
        )
        jobs[server] = Job.objects.create(
            project=project_a,
            run=run,
            kind="determinism",
            status="succeeded",
            progress=1.0,
            result=report,
            spec={"model": "var/models/tiny-llama"},
        )
    login(page, url)

    page.goto(f"{url}/runs/{jobs[False].run_id}/")  # one measurement: its page is the job's
    page.wait_for_selector("#determinism-runs")
    assert page.text_content("#verdict") == "fail"
    assert page.locator("#determinism-runs tbody tr").count() == 4
    assert "verdict-fail" in (page.get_attribute("#run-max_num_seqs .badge", "class") or "")
    assert "vLLM (in-process)" in page.text_content("#engine-answered")
    shot(page, artifacts_dir, "determinism-result")

    page.goto(f"{url}/jobs/{jobs[True].pk}/")
    assert "fixed when it starts" in page.text_content("#run-max_num_seqs")
    assert "http://10.0.0.5:8000" in page.text_content("#engine-answered")
    shot(page, artifacts_dir, "determinism-result-server")

    page.goto(f"{url}/p/proj-a/new/determinism/")
    assert page.locator("#id_server__url").count() == 1
    assert page.locator("#id_other_max_num_seqs").count() == 1
    shot(page, artifacts_dir, "new-determinism")
    assert not page.js_errors, page.js_errors
