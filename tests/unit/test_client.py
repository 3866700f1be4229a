"""parity.Monitor without a server process: a fake server behind httpx.MockTransport."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from parity.client import Monitor, scalar_values
from parity.metrics import compute_metrics

pytestmark = pytest.mark.unit


class FakeServer:
    """Records the points it accepts, keyed like the real one; can be down or slow."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, int], float] = {}
        self.requests: list[tuple[str, str]] = []
        self.down = False
        self.status_5xx = 0  # answer this many requests with 503 first
        self.delay = 0.0
        self.run_status: str | None = None
        self.retry_after: str | None = None  # sent with the 503s
        self.attempts: list[float] = []  # when each request arrived, down or not
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.attempts.append(time.monotonic())
            if self.down:
                raise httpx.ConnectError("connection refused", request=request)
            self.requests.append((request.method, request.url.path))
            if self.status_5xx:
                self.status_5xx -= 1
                headers = {"Retry-After": self.retry_after} if self.retry_after else {}
                return httpx.Response(503, json={"detail": "busy"}, headers=headers)
            path = request.url.path
            if path == "/api/runs":
                return httpx.Response(201, json={"id": 7})
            if path == "/api/runs/7/points":
                for p in json.loads(request.content)["points"]:
                    self.points[(p["key"], p["step"])] = p["value"]
                return httpx.Response(200, json={"written": 0})
            if path == "/api/runs/7" and request.method == "PATCH":
                self.run_status = json.loads(request.content)["status"]
                return httpx.Response(200, json={"id": 7})
            return httpx.Response(404, json={"detail": "not found"})


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


def monitor(server: FakeServer, tmp_path: Path, **kwargs: Any) -> Monitor:
    options: dict[str, Any] = dict(flush_interval=0.02, max_backoff=0.05, spill_dir=tmp_path)
    options.update(kwargs)
    return Monitor(
        "http://parity.test",
        "pty_x",
        project="p",
        run="r",
        transport=httpx.MockTransport(server),
        **options,
    )


def expected(n_steps: int, keys: tuple[str, ...] = ("reward",)) -> dict[tuple[str, int], float]:
    return {(k, s): float(s) for s in range(n_steps) for k in keys}


def test_log_step_returns_the_metrics_of_the_masked_tokens(
    server: FakeServer, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    lr = -rng.exponential(1.0, (4, 16))
    lt = lr + rng.normal(0, 0.02, lr.shape)
    mask = np.zeros((4, 16), dtype=bool)
    for i, n in enumerate([16, 3, 9, 1]):
        mask[i, :n] = True
    mon = monitor(server, tmp_path)
    values = mon.log_step(5, trainer_logprobs=lt.tolist(), rollout_logprobs=lr, mask=mask)
    local = compute_metrics(lt[mask], lr[mask], [16, 3, 9, 1]).values
    assert values == local
    assert mon.finish(timeout=10)
    assert server.points == {(k, 5): v for k, v in scalar_values(local).items()}
    assert server.run_status == "finished"


def test_accepts_torch_like_tensors_without_torch() -> None:
    class Tensor:  # the four calls Monitor makes on a torch tensor
        def __init__(self, a: np.ndarray) -> None:
            self.a = a

        def detach(self) -> Tensor:
            return self

        def float(self) -> Tensor:
            return Tensor(self.a.astype(np.float32))

        def cpu(self) -> Tensor:
            return self

        def numpy(self) -> np.ndarray:
            return self.a

    lr = np.linspace(-3, -0.1, 50)
    mon = Monitor(project="p", run="r", url="", spill_dir=False)  # no server: compute only
    values = mon.log_step(0, trainer_logprobs=Tensor(lr + 0.01), rollout_logprobs=Tensor(lr))
    assert values["n_tokens"] == 50
    assert values == compute_metrics((lr + 0.01).astype(np.float32), lr.astype(np.float32)).values


def test_nonfinite_scalars_are_skipped_not_sent(
    server: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mon = monitor(server, tmp_path)
    with caplog.at_level(logging.WARNING, "parity.client"):
        mon.log(1, {"reward": 0.5, "loss": float("nan"), "note": "x"})
    assert "skipping" in caplog.text
    assert mon.finish(timeout=10)
    assert server.points == {("reward", 1): 0.5}
    with pytest.raises(ValueError):
        mon.log(-1, {"reward": 1.0})


def test_retries_5xx_with_backoff(server: FakeServer, tmp_path: Path) -> None:
    server.status_5xx = 3
    mon = monitor(server, tmp_path)
    for step in range(10):
        mon.log(step, {"reward": float(step)})
    assert mon.finish(timeout=10)
    assert server.points == expected(10)


def test_outage_overflow_spills_to_disk_and_replays_in_full(
    server: FakeServer, tmp_path: Path
) -> None:
    server.down = True
    # A long flush interval: the backlog must still go out back to back.
    mon = monitor(server, tmp_path, max_buffer=50, batch_size=20, flush_interval=1.0)
    for step in range(500):
        mon.log(step, {"reward": float(step)})
    spill = tmp_path / "p__r.jsonl"
    assert spill.exists() and mon.pending <= 50 + 20
    assert mon.dropped == 0
    server.down = False
    assert mon.flush(timeout=5)
    assert server.points == expected(500)
    assert not spill.exists()
    mon.finish(timeout=5)


def test_unsent_points_survive_the_process_in_the_spill_file(
    server: FakeServer, tmp_path: Path
) -> None:
    server.down = True
    first = monitor(server, tmp_path)
    for step in range(30):
        first.log(step, {"reward": float(step)})
    assert not first.finish(timeout=0.3)
    assert (tmp_path / "p__r.jsonl").exists()
    server.down = False
    second = monitor(server, tmp_path)  # the restarted job, same run name
    assert second.flush(timeout=10)
    assert server.points == expected(30)
    second.finish(timeout=5)


def test_full_buffer_without_spill_drops_with_a_warning(
    server: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.down = True
    mon = monitor(server, tmp_path, max_buffer=10, spill_dir=False)
    with caplog.at_level(logging.WARNING, "parity.client"):
        for step in range(100):
            mon.log(step, {"reward": float(step)})
    assert mon.dropped >= 80
    assert "dropping points" in caplog.text
    mon.finish(timeout=0.2)


def test_logging_never_waits_for_a_slow_server(server: FakeServer, tmp_path: Path) -> None:
    server.delay = 1.0
    mon = monitor(server, tmp_path)
    started = time.perf_counter()
    for step in range(1000):
        mon.log(step, {"reward": float(step), "kl_k3": 0.001})
    assert time.perf_counter() - started < 0.5
    mon.finish(timeout=0.1)


def test_refused_token_stops_sending_without_raising(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"detail": "Authentication required"})

    mon = Monitor(
        "http://parity.test",
        "bad",
        project="p",
        run="r",
        spill_dir=tmp_path,
        flush_interval=0.02,
        transport=httpx.MockTransport(refuse),
    )
    mon.log(0, {"reward": 1.0})
    time.sleep(0.2)
    mon.log(1, {"reward": 1.0})  # no exception, just dropped
    assert not mon.finish(timeout=1)


def test_during_an_outage_the_sender_backs_off_by_time_not_by_calls(
    server: FakeServer, tmp_path: Path
) -> None:
    # Issue 17 §6: once the buffer was full, every log() woke the sender, so it retried at
    # the training loop's rate (50 failed requests per 5 s).
    server.down = True
    mon = monitor(server, tmp_path, batch_size=1, max_backoff=0.4, flush_interval=0.01)
    started = time.monotonic()
    step = 0
    while time.monotonic() - started < 1.5:
        mon.log(step, {"reward": float(step)})
        step += 1
        time.sleep(0.002)
    tries = len(server.attempts)
    server.down = False
    mon.finish()
    assert 2 <= tries <= 12, f"{tries} requests in 1.5 s of outage for {step} log() calls"
    assert server.points == expected(step)


def test_the_sender_waits_as_long_as_retry_after_says(server: FakeServer, tmp_path: Path) -> None:
    # Issue 17 §7: a 503 with Retry-After (Postgres or Redis down) is honoured.
    server.status_5xx, server.retry_after = 1, "1"
    mon = monitor(server, tmp_path, max_backoff=0.05)
    mon.log(0, {"reward": 0.0})
    mon.finish()
    first, second = server.attempts[:2]
    assert second - first >= 0.9
    assert server.points == expected(1)


def test_a_steps_weight_version_is_sent_as_its_own_key(server: FakeServer, tmp_path: Path) -> None:
    lr = np.linspace(-3, -0.1, 20)
    mon = monitor(server, tmp_path)
    values = mon.log_step(3, trainer_logprobs=lr + 0.01, rollout_logprobs=lr, weight_version=2)
    assert "weight_version" not in values  # a label of the step, not a metric of its tokens
    mon.log_step(4, trainer_logprobs=lr, rollout_logprobs=lr, upload_raw=True, weight_version=3)
    with pytest.raises(ValueError, match="weight_version must be a finite number"):
        mon.log_step(5, trainer_logprobs=lr, rollout_logprobs=lr, weight_version=float("nan"))
    assert mon.finish(timeout=10)
    assert server.points[("weight_version", 3)] == 2.0
    assert server.points[("weight_version", 4)] == 3.0
    assert ("weight_version", 5) not in server.points and ("n_tokens", 5) not in server.points
