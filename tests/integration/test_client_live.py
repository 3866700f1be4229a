"""parity.Monitor against a real daphne process: every point arrives once, outages included."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from dashboard.core.models import MetricPoint, Run
from parity.client import Monitor, scalar_values
from tests.conftest import Server

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def synthetic_step(step: int, n_seq: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Padded [batch, time] lt/lr with a response mask, as a GRPO loop has them."""
    rng = np.random.default_rng(step)
    lr = -rng.exponential(1.0, (n_seq, 32)).astype(np.float32)
    lt = lr + rng.normal(0, 0.02 + 0.001 * step, lr.shape).astype(np.float32)
    mask = np.arange(32)[None, :] < rng.integers(4, 33, n_seq)[:, None]
    return lt, lr, mask


def stored_points(run: Run) -> dict[tuple[str, int], float]:
    return {
        (k, s): v
        for k, s, v in MetricPoint.objects.filter(run=run).values_list("key", "step", "value")
    }


@pytest.fixture
def spill_dir(tmp_path: Path) -> Path:
    return tmp_path / "spill"


def test_hundred_steps_arrive_and_a_resent_batch_changes_nothing(
    live_server_proc: Server, alice_token: str, project_a: Any, spill_dir: Path
) -> None:
    mon = Monitor(
        live_server_proc.url,
        alice_token,
        project="proj-a",
        run="grpo-live",
        config={"lr": 1e-6, "vllm": "0.11"},
        tags=["live"],
        spill_dir=spill_dir,
        flush_interval=0.05,
    )
    sent: dict[tuple[str, int], float] = {}
    for step in range(100):
        lt, lr, mask = synthetic_step(step)
        values = mon.log_step(step, trainer_logprobs=lt, rollout_logprobs=lr, mask=mask)
        mon.log(step, {"reward": step / 100})
        sent.update({(k, step): v for k, v in scalar_values(values).items()})
        sent[("reward", step)] = step / 100
    assert mon.finish(timeout=60)
    run = Run.objects.get(project=project_a, name="grpo-live")
    assert run.status == "finished" and run.last_step == 99
    assert run.fingerprint == {"lr": 1e-6, "vllm": "0.11"} and run.tags == ["live"]
    assert stored_points(run) == sent
    # The retry of a batch the server already has: same rows, same values.
    batch = [{"key": k, "step": s, "value": v} for (k, s), v in list(sent.items())[:1000]]
    response = httpx.post(
        f"{live_server_proc.url}/api/runs/{run.pk}/points",
        json={"points": batch},
        headers={"Authorization": f"Bearer {alice_token}"},
    )
    assert response.status_code == 200
    assert stored_points(run) == sent


def test_raw_upload_gives_exactly_the_local_metrics(
    live_server_proc: Server, alice_token: str, project_a: Any, spill_dir: Path
) -> None:
    mon = Monitor(
        live_server_proc.url,
        alice_token,
        project="proj-a",
        run="raw",
        spill_dir=spill_dir,
        flush_interval=0.05,
    )
    local = {}
    for step in range(3):
        lt, lr, mask = synthetic_step(step, n_seq=16)
        local[step] = mon.log_step(
            step, trainer_logprobs=lt, rollout_logprobs=lr, mask=mask, upload_raw=True
        )
    assert mon.finish(timeout=30)
    run = Run.objects.get(project=project_a, name="raw")
    for step, values in local.items():
        server = dict(MetricPoint.objects.filter(run=run, step=step).values_list("key", "value"))
        assert server == scalar_values(values)


@pytest.fixture
def own_server(artifacts_dir: Path, django_db_setup: Any) -> Iterator[Server]:
    server = Server(artifacts_dir / "daphne-restart.log")
    server.start()
    yield server
    server.stop()


def test_server_killed_and_restarted_mid_run_loses_and_duplicates_nothing(
    own_server: Server, alice_token: str, project_a: Any, spill_dir: Path
) -> None:
    # A small memory buffer, so the outage also goes through the spill file.
    mon = Monitor(
        own_server.url,
        alice_token,
        project="proj-a",
        run="outage",
        spill_dir=spill_dir,
        flush_interval=0.05,
        max_buffer=300,
        max_backoff=0.5,
    )
    for step in range(50):
        mon.log(step, {"reward": float(step), "kl_k3": step * 1e-4})
    assert mon.flush(timeout=30)
    assert own_server.proc is not None
    own_server.proc.kill()  # no graceful shutdown: the way a crash looks to the client
    own_server.proc.wait()
    for step in range(50, 400):
        mon.log(step, {"reward": float(step), "kl_k3": step * 1e-4})
    assert mon.pending > 0 and any(spill_dir.iterdir())
    own_server.start()  # same port
    assert mon.finish(timeout=60)
    run = Run.objects.get(project=project_a, name="outage")
    expected = {("reward", s): float(s) for s in range(400)}
    expected.update({("kl_k3", s): s * 1e-4 for s in range(400)})
    assert stored_points(run) == expected
    assert MetricPoint.objects.filter(run=run).count() == 800
    assert run.status == "finished"
    assert not any(spill_dir.iterdir())


def test_schemathesis_finds_no_server_errors(
    live_server_proc: Server, alice_token: str, project_a: Any, tmp_path: Path
) -> None:
    # A real run, so that fuzzed bodies also reach the write paths of an existing run.
    run = Run.objects.create(project=project_a, name="fuzz-target")
    MetricPoint.objects.create(run=run, key="kl_k3", step=0, value=0.1)
    report = tmp_path / "st.json"
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{live_server_proc.url}/api/schema",
        "-H",
        f"Authorization: Bearer {alice_token}",
        "--checks",
        "not_a_server_error",
        # The ingest and run operations (this module's API); a few hundred cases, seconds.
        "--include-path-regex",
        r"^/api/(runs|projects/\{slug\}/runs$)",
        "--max-examples",
        "10",
        "--seed",
        "7",
        "--workers",
        "2",
        "--phases",
        "examples,fuzzing",
        "--max-time",
        "20",
        "--request-timeout",
        "20",
        "--suppress-health-check",
        "all",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    output = result.stdout + result.stderr
    assert "not_a_server_error" not in _failures(report), output[-4000:]
    assert result.returncode == 0, output[-4000:]


def _failures(report: Path) -> str:
    if not report.exists():
        return ""
    failed = [line for line in report.read_text().splitlines() if '"failure' in line.lower()]
    return json.dumps(failed)[:4000]
