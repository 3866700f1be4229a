"""A job sent through the real Redis broker is run by a real Celery worker process."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard.core.models import Job, Project, Run, start_job
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_ping_job_runs_in_a_real_worker_and_lands_in_postgres(
    celery_worker_proc: Any, project_a: Project
) -> None:
    job = start_job(project_a, Job.Kind.PING, {"hello": "world"})

    def finished() -> Job | None:
        job.refresh_from_db()
        return job if job.is_final else None

    wait_for(finished, timeout=60)
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.result["echo"] == {"hello": "world"}
    assert job.worker_host and job.started and job.finished
    assert job.progress == 1.0


def test_job_is_queued_only_after_commit(project_a: Project) -> None:
    from django.db import transaction

    with transaction.atomic():
        job = start_job(project_a, Job.Kind.PING, {})
        # Still inside the transaction: a worker could not see the row yet, so no message either.
        assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED
    assert Job.objects.filter(pk=job.pk).exists()


def test_dead_worker_job_ends_failed_not_running_forever(project_a: Project) -> None:
    from datetime import timedelta

    from django.utils import timezone

    run = Run.objects.create(
        project=project_a, name="r", kind=Run.Kind.COMPARISON, status="running"
    )
    job = Job.objects.create(
        project=project_a,
        run=run,
        kind=Job.Kind.COMPARISON,
        status=Job.Status.RUNNING,
        stage="generating 3/8",
        heartbeat_at=timezone.now() - timedelta(minutes=10),
    )
    assert Job.fail_dead(heartbeat_timeout_s=60) == [job.pk]
    job.refresh_from_db()
    run.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "generating 3/8" in job.error
    assert run.status == Run.Status.CRASHED
