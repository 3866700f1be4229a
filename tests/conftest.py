"""Shared fixtures: users and projects, and the real processes (daphne, Celery) tests talk to."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# The tiny models and the vLLM server process, shared by the engine and browser tests.
pytest_plugins = ("tests.engine.fixtures",)
ARTIFACTS = ROOT / "test-artifacts"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests run last (after pytest-django's own ordering by database use).

    Playwright's sync API keeps an event loop running in the main thread until the session
    ends, and async tests cannot start theirs beside it.
    """
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


# --- people and projects ------------------------------------------------------------------


@pytest.fixture
def make_member(db: Any) -> Callable[..., Any]:
    """make_member("alice", "proj-a") -> a user who is a member of that project."""
    from django.contrib.auth.models import User

    from dashboard.core.models import Membership, Project

    def make(username: str, project_slug: str, role: str = "member") -> Any:
        user, created = User.objects.get_or_create(username=username)
        if created:
            user.set_password("pw-" + username)
            user.save()
        project, _ = Project.objects.get_or_create(
            slug=project_slug, defaults={"name": project_slug}
        )
        Membership.objects.get_or_create(user=user, project=project, defaults={"role": role})
        return user

    return make


@pytest.fixture
def alice(make_member: Callable[..., Any]) -> Any:
    return make_member("alice", "proj-a", role="owner")


@pytest.fixture
def project_a(alice: Any) -> Any:
    from dashboard.core.models import Project

    return Project.objects.get(slug="proj-a")


@pytest.fixture
def alice_client(client: Any, alice: Any) -> Any:
    client.force_login(alice)
    return client


@pytest.fixture
def alice_token(alice: Any, project_a: Any) -> str:
    from dashboard.core.models import ApiToken

    _, clear = ApiToken.issue(alice, project_a, "test")
    return clear


# --- real processes -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_env(**extra: str) -> dict[str, str]:
    """Environment for a child process that must see the test database and Redis."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="dashboard.settings_test",
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        REDIS_URL=settings.REDIS_URL,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class ChildProcess:
    """A process of the product (daphne, a Celery worker) started by a test, logging to a file."""

    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    # Overrides of process_env() (e.g. a fault test's private broker).
    extra_env: dict[str, str] = {}
    log_start = 0

    def _log_since_start(self) -> bytes:
        with open(self.log_path, "rb") as log:
            log.seek(self.log_start)
            return log.read()

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        self.log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            env=process_env(**self.extra_env),
            stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
        )
        return self.proc

    def wait_ready(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited; see {self.log_path}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} not ready within {timeout:.0f} s; see {self.log_path}")

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Server(ChildProcess):
    """A daphne process (HTTP + websockets) serving the test database."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path

    def start(self) -> None:
        self.spawn("daphne", "-b", "127.0.0.1", "-p", str(self.port), "dashboard.asgi:application")

        def answers() -> bool:
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code in (200, 503)
            except httpx.HTTPError:
                return False

        self.wait_ready(answers, "daphne", timeout=60)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def live_server_proc(
    django_db_setup: Any, django_db_blocker: Any, artifacts_dir: Path
) -> Iterator[Server]:
    """A real daphne process for the whole session (tests using it need transactional_db)."""
    server = Server(artifacts_dir / "daphne.log")
    server.start()
    yield server
    server.stop()


class Worker(ChildProcess):
    """A real Celery worker process (solo pool, as in production)."""

    def __init__(self, queues: str, log_path: Path, name: str) -> None:
        self.queues = queues
        self.log_path = log_path
        self.name = name

    def start(self) -> None:
        self.spawn(
            "celery", "-A", "dashboard", "worker", "-Q", self.queues,
            "--pool", "solo", "--concurrency", "1", "-n", f"{self.name}@%h",
            "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        )  # fmt: skip
        # The log is appended to: only a "ready." written by this start counts.
        self.wait_ready(lambda: b"ready." in self._log_since_start(), "celery worker", 90)


@pytest.fixture(scope="session")
def celery_worker_proc(
    django_db_setup: Any, django_db_blocker: Any, artifacts_dir: Path
) -> Iterator[Worker]:
    """One real worker on both queues for the session (tests using it need transactional_db)."""
    _purge_queues()
    worker = Worker("gpu,default", artifacts_dir / "celery-worker.log", "test")
    worker.start()
    yield worker
    worker.stop()


def _purge_queues() -> None:
    # Leftover messages from an earlier, interrupted run would be executed against this one.
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    for queue in ("gpu", "default", "celery"):
        client.delete(queue)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Poll until predicate() is truthy; return its value or fail with the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """pytest-django's test database; before it is dropped, every other session on it is
    ended. A thread a test ran keeps its idle connection open (seen: one idle session after
    tests/integration), and DROP DATABASE then failed ("being accessed by other users"),
    leaving one test database behind per full run."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
