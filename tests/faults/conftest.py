"""Fault tests: services of our own on spare ports, stopped and started by the test.

The machine's shared Postgres and Redis are never stopped; a test that needs an outage starts
a private one (no persistence: a restart loses everything, as a crashed cache would) and
points the part under test at it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port


class PrivateRedis:
    """A redis-server on a free port that a test can stop and start again."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (the fault tests start their own)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"private redis did not start; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def private_redis(artifacts_dir: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(artifacts_dir / "private-redis.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def broker_on_private_redis(private_redis: PrivateRedis) -> Iterator[PrivateRedis]:
    """This process's Celery app sends to (and lists) a private Redis the test may restart."""
    from dashboard.celery import app

    def point_at(url: str) -> None:
        app.conf.broker_url = url
        app._after_fork()  # drop the connection and producer pools made for the old URL

    shared = app.conf.broker_url
    point_at(private_redis.url)
    yield private_redis
    point_at(shared)
