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
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Worker, free_port

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
