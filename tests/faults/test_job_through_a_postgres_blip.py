"""#17 §5: a job rides out a short Postgres outage, and a long one fails it naming Postgres."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ROOT, Worker, wait_for

pytestmark = [pytest.mark.faults]

START_JOB = """
import django; django.setup()
from dashboard.core.models import Project, start_job
project, _ = Project.objects.get_or_create(slug="p", defaults={"name": "p"})
print(start_job(project, "ping", {"ticks": %d, "tick_s": 0.25}).pk)
"""


def _job(url: str, job_id: int) -> tuple[str, float, str] | None:
    try:
        with psycopg.connect(url.replace("postgres://", "postgresql://"), connect_timeout=1) as c:
            return c.execute(
                "SELECT status, progress, error FROM core_job WHERE id = %s", [job_id]
            ).fetchone()
    except psycopg.OperationalError:
        return None


def _run_job_through_outage(
    services: Any, artifacts_dir: Path, outage_s: float, env_extra: dict[str, str]
) -> tuple[str, float, str]:
    postgres, _, env = services
    env = env | env_extra
    worker = Worker("gpu", artifacts_dir / "celery-worker-pg-blip.log", "pgblip")
    worker.extra_env = {k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    worker.extra_env |= env_extra
    worker.start()
    try:
        out = subprocess.run(
            [sys.executable, "-c", START_JOB % 200], cwd=ROOT, env=env, check=True,
            capture_output=True, text=True,
        )  # fmt: skip
        job_id = int(out.stdout.strip().splitlines()[-1])
        wait_for(lambda: (_job(postgres.url, job_id) or ("", 0.0, ""))[1] > 0.02, 60)
        postgres.stop()
        time.sleep(outage_s)
        postgres.start()
        return wait_for(
            lambda: (j := _job(postgres.url, job_id)) and j[0] in ("succeeded", "failed") and j,
            120,
        )
    finally:
        worker.stop()


def test_a_job_rides_out_a_short_postgres_outage(
    private_services: Any, artifacts_dir: Path
) -> None:
    status, progress, error = _run_job_through_outage(private_services, artifacts_dir, 5, {})
    assert (status, error) == ("succeeded", "")
    assert progress == 1.0


def test_a_long_postgres_outage_fails_the_job_naming_the_database(
    private_services: Any, artifacts_dir: Path
) -> None:
    status, _, error = _run_job_through_outage(
        private_services, artifacts_dir, 8, {"JOB_DB_RETRY_S": "3"}
    )
    assert status == "failed"
    assert "Postgres" in error and "unreachable" in error
