"""#17 §2: a job whose broker message was lost in a Redis restart is sent again and runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dashboard.core import broker
from dashboard.core.models import Job, Project, start_job
from dashboard.core.tasks import requeue_lost_jobs
from tests.conftest import Worker, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def test_a_queued_job_whose_message_was_lost_is_sent_again_and_runs(
    broker_on_private_redis: Any, settings: Any, artifacts_dir: Path
) -> None:
    project = Project.objects.create(slug="p", name="p")
    job = start_job(project, "ping", {"n": 1})
    assert job.celery_task_id in broker.message_ids(["gpu"])

    broker_on_private_redis.restart()  # no persistence: the message is gone
    assert broker.message_ids(["gpu"]) == set()
    settings.JOB_REQUEUE_AFTER_S = 0
    assert requeue_lost_jobs() == [job.pk]
    job.refresh_from_db()
    assert broker.message_ids(["gpu"]) == {job.celery_task_id}
    assert requeue_lost_jobs() == []  # its message is there now: nothing sent twice

    worker = Worker("gpu", artifacts_dir / "celery-worker-faults.log", "faults")
    worker.extra_env = {"CELERY_BROKER_URL": broker_on_private_redis.url}
    worker.start()
    try:
        wait_for(lambda: Job.objects.get(pk=job.pk).status == Job.Status.SUCCEEDED, 60)
    finally:
        worker.stop()


def test_nothing_is_sent_again_when_the_broker_cannot_be_listed(
    broker_on_private_redis: Any, settings: Any
) -> None:
    project = Project.objects.create(slug="p", name="p")
    job = start_job(project, "ping", {"n": 1})
    broker_on_private_redis.stop()
    settings.JOB_REQUEUE_AFTER_S = 0
    assert requeue_lost_jobs() == []
    assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED
