"""#17, done when: a private Redis and a private Postgres are each killed and restarted
around a live ingest (parity.Monitor), a viewer (websocket) and a job (a real worker), and
nothing is lost, nothing duplicated, nothing stuck, no chart stale."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from websockets.sync.client import connect

from parity import Monitor
from tests.conftest import ROOT, Server, Worker, wait_for

pytestmark = [pytest.mark.faults]

SETUP = """
import django, json; django.setup()
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from dashboard.core.models import ApiToken, Membership, Project, start_job
user = User.objects.create_user("ops", password="pw")
project = Project.objects.create(slug="ops", name="ops")
Membership.objects.create(user=user, project=project, role="owner")
_, token = ApiToken.issue(user, project, "faults")
session = SessionStore()
session["_auth_user_id"] = str(user.pk)
session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
session["_auth_user_hash"] = user.get_session_auth_hash()
session.create()
job = start_job(project, "ping", {"ticks": 120, "tick_s": 0.25})
print(json.dumps({"token": token, "session": session.session_key, "job": job.pk}))
"""


def _query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url.replace("postgres://", "postgresql://"), connect_timeout=2) as c:
        return c.execute(sql, params).fetchall()


def test_ingest_viewer_and_job_through_a_redis_and_a_postgres_restart(
    private_services: Any, artifacts_dir: Path, tmp_path: Path
) -> None:
    postgres, redis_server, env = private_services
    keep = {k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    setup = subprocess.run(
        [sys.executable, "-c", SETUP], cwd=ROOT, env=env, check=True, capture_output=True,
        text=True,
    )  # fmt: skip
    ids = json.loads(setup.stdout.strip().splitlines()[-1])
    server = Server(artifacts_dir / "daphne-outages.log")
    server.extra_env = keep
    worker = Worker("gpu", artifacts_dir / "celery-worker-outages.log", "outages")
    worker.extra_env = keep
    server.start()
    worker.start()
    try:
        mon = Monitor(
            server.url, ids["token"], project="ops", run="through-outages",
            spill_dir=tmp_path / "spill", flush_interval=0.05, max_backoff=0.5,
        )  # fmt: skip
        steps = iter(range(400))

        def log(n: int) -> None:
            for _ in range(n):
                step = next(steps)
                mon.log(step, {"kl_k3": step * 1e-4, "reward": float(step)})
                time.sleep(0.01)

        log(100)
        assert mon.flush(timeout=30)
        # The job holds its message no more once running: the outages hit a running job.
        wait_for(
            lambda: (
                _query(postgres.url, "SELECT status FROM core_job WHERE id = %s", ids["job"])
                == [("running",)]
            ),
            60,
        )
        run_id = _query(postgres.url, "SELECT id FROM core_run WHERE name = 'through-outages'")[0][
            0
        ]
        auth = {"Authorization": f"Bearer {ids['token']}"}
        series = f"{server.url}/api/runs/{run_id}/series"
        assert len(httpx.get(series, params={"key": "kl_k3"}, headers=auth).json()["steps"]) == 100

        redis_server.stop()
        log(50)
        time.sleep(3)
        redis_server.start()
        log(50)
        postgres.stop()
        log(50)
        time.sleep(3)
        postgres.start()
        log(150)
        assert mon.finish(timeout=90)

        # Nothing lost, nothing duplicated.
        rows = _query(
            postgres.url, "SELECT key, step, count(*) FROM core_metricpoint WHERE run_id = %s "
            "GROUP BY key, step", run_id,
        )  # fmt: skip
        assert len(rows) == 800 and {r[2] for r in rows} == {1}
        # No stale chart: the series the charts read has every step.
        got = httpx.get(series, params={"key": "kl_k3", "max_points": 1000}, headers=auth)
        assert got.json()["steps"] == list(range(400))
        # Nothing stuck: the job that ran through both outages finished.
        wait_for(
            lambda: (
                _query(postgres.url, "SELECT status FROM core_job WHERE id = %s", ids["job"])
                == [("succeeded",)]
            ),
            120,
        )
        # The viewer comes back: a socket opens and receives what is posted next.
        url = server.url.replace("http", "ws") + f"/ws/runs/{run_id}/"
        headers = {"Origin": server.url, "Cookie": f"sessionid={ids['session']}"}
        with connect(url, additional_headers=headers) as ws:
            posted = httpx.post(
                f"{server.url}/api/runs/{run_id}/points", headers=auth,
                json={"points": [{"key": "kl_k3", "step": 400, "value": 0.5}]},
            )  # fmt: skip
            assert posted.status_code == 200
            frame = json.loads(ws.recv(timeout=10))
            assert frame["kind"] == "points" and frame["data"]["points"][0]["step"] == 400
    finally:
        worker.stop()
        server.stop()
