"""Fault tests: services of our own on spare ports, stopped and started by the test.

The machine's shared Postgres and Redis are never stopped; a test that needs an outage starts
a private one (no persistence: a restart loses everything, as a crashed cache would) and
points the part under test at it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT, free_port, process_env


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


def _as_postgres(*args: str) -> list[str]:
    # initdb and postgres refuse to run as root: CI and these machines run the tests as root.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


class PrivatePostgres:
    """A Postgres cluster of its own (fsync off, throwaway) that a test can stop and start,
    with Parity's schema migrated into database `parity`."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="parity-pg-"))
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/parity"
        self.log_path = log_path
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        subprocess.run(
            _as_postgres("initdb", "-D", str(self.dir / "data"), "-U", "postgres",
                         "--auth=trust", "-E", "UTF8"),
            check=True, capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        subprocess.run(
            _as_postgres("pg_ctl", "-D", str(self.dir / "data"), "-o", options,
                         "-l", str(self.dir / "server.log"), "-w", "start"),
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        subprocess.run(
            _as_postgres("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop"),
            capture_output=True,
        )

    def migrate(self, env: dict[str, str]) -> None:
        subprocess.run(
            ["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "parity"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=ROOT, env=env, check=True, capture_output=True,
        )  # fmt: skip

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_services(
    private_redis: PrivateRedis, artifacts_dir: Path, django_db_setup: object
) -> Iterator[tuple[PrivatePostgres, PrivateRedis, dict[str, str]]]:
    """A private Postgres (migrated) and Redis, and the environment of a process using both."""
    postgres = PrivatePostgres(artifacts_dir / "private-postgres.log")
    postgres.start()
    env = process_env(DATABASE_URL=postgres.url, REDIS_URL=private_redis.url,
                      CELERY_BROKER_URL=private_redis.url)  # fmt: skip
    try:
        postgres.migrate(env)
        yield postgres, private_redis, env
    finally:
        postgres.remove()
