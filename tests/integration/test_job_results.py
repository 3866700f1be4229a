"""What the job task stores: results Postgres can hold, and a failed save that says why."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from dashboard.core import tasks
from dashboard.core.models import Job, Project, Run
from workers.reporting import JobOutcome, Reporter

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _job(project: Project) -> Job:
    run = Run.objects.create(project=project, name="r", kind=Run.Kind.COMPARISON)
    return Job.objects.create(project=project, run=run, kind=Job.Kind.COMPARISON, spec={})


def _runner(result: dict[str, Any]) -> Any:
    def run(spec: Mapping[str, Any], reporter: Reporter) -> JobOutcome:
        return JobOutcome(result=result, verdict="pass", step_values={0: {"kl_k3": 0.1}})

    return run


def test_a_nul_in_sampled_token_text_is_stored_visibly(
    project_a: Project, monkeypatch: Any
) -> None:
    # Issue 17 §9: a comparison whose engine sampled the tokenizer's NUL token could not be
    # saved (Postgres refuses \u0000 in jsonb) and then sat at 100% until the sweep.
    job = _job(project_a)
    result = {"worst_sequences": [{"tokens": [{"text": "a\x00b"}]}], "k\x00": 1}
    monkeypatch.setattr(tasks, "_runner", lambda kind: _runner(result))
    tasks.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.result["worst_sequences"][0]["tokens"][0]["text"] == "a\u2400b"
    assert job.result["k\u2400"] == 1


def test_a_result_that_cannot_be_saved_fails_the_job_at_once_with_the_reason(
    project_a: Project, monkeypatch: Any
) -> None:
    job = _job(project_a)
    monkeypatch.setattr(tasks, "_runner", lambda kind: _runner({"x": object()}))
    tasks.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error.startswith("The job's result could not be saved: ")
    assert "not JSON serializable" in job.error
    assert job.run is not None and job.run.status == Run.Status.FAILED
    # Nothing of the failed save was kept: no points of the half-written outcome.
    assert not job.run.points.exists()
