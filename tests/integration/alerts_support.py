"""Helpers for the alert tests: a webhook receiver process and a Celery worker of our own.

The worker listens on a queue named after this test process, so parallel suites (and the
session's shared worker) never take each other's deliveries, and it runs with small backoff
and the receiver's host allow-listed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Worker, free_port, wait_for

QUEUE = f"alerts-test-{os.getpid()}"

ENV = {
    "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1,localhost",
    "WEBHOOK_RETRY_BASE_S": "0.2",
    "WEBHOOK_RETRY_MAX_S": "1",
    "WEBHOOK_SENDING_STALE_S": "2",
    "WEBHOOK_QUEUE": QUEUE,
}

SETTINGS = {
    "WEBHOOK_ALLOWED_HOSTS": ["127.0.0.1", "localhost"],
    "WEBHOOK_RETRY_BASE_S": 0.2,
    "WEBHOOK_RETRY_MAX_S": 1.0,
    "WEBHOOK_SENDING_STALE_S": 2.0,
    "WEBHOOK_QUEUE": QUEUE,
}


def apply_settings(settings: Any) -> None:
    for name, value in SETTINGS.items():
        setattr(settings, name, value)


def start_worker(queue: str, log_path: Path, name: str) -> Worker:
    """A real Celery worker (solo pool) with the alert test environment."""
    log_path.unlink(missing_ok=True)  # Worker.start looks for "ready." in this log
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ENV.items():
            mp.setenv(key, value)
        worker = Worker(queue, log_path, name)
        worker.start()
    return worker


class Receiver:
    """tests/integration/webhook_receiver.py as a process on 127.0.0.1."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.log_path = log_path
        self.log_path.unlink(missing_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> Receiver:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests/integration/webhook_receiver.py"),
                "--port",
                str(self.port),
                "--log",
                str(self.log_path),
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("webhook receiver did not start")

    def requests(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def demo_with_receiver(settings: Any, secret_dir: Path, log_path: Path) -> Iterator[Path]:
    """`demo_setup --no-jobs` with the demo's receiver on a free port, as `make demo` starts
    them (#16 §12); yields the receiver's log (one line per delivery it checked)."""
    from django.core.management import call_command

    apply_settings(settings)
    settings.DEMO_RECEIVER_PORT = free_port()
    settings.DEMO_RECEIVER_SECRET_FILE = secret_dir / "secret"
    call_command("demo_setup", "--no-jobs", stdout=open(os.devnull, "w"))
    secret = settings.DEMO_RECEIVER_SECRET_FILE.read_text()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "dashboard.demo.receiver", "--port",
         str(settings.DEMO_RECEIVER_PORT), "--secret", secret],
        cwd=ROOT, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield log_path
    finally:
        receiver.kill()
        receiver.wait()


def deliver_with_a_worker(deliveries: Any, log_path: Path, name: str) -> None:
    """Send the queued `deliveries` (a queryset) with a real worker; wait for all of them."""
    from dashboard.alerts.delivery import sweep

    worker = start_worker(QUEUE, log_path, name)
    try:
        sweep()  # deliveries queued before any worker ran
        wait_for(lambda: all(d.status == "delivered" for d in deliveries.all()), 60)
    finally:
        worker.stop()
