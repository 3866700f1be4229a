"""#17 §4: the first websocket after a Redis restart is served, not answered with HTTP 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from dashboard.core.models import Project, Run
from tests.conftest import Server

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server_on_private_redis(
    private_redis: Any, artifacts_dir: Path, django_db_setup: Any
) -> Iterator[Server]:
    server = Server(artifacts_dir / "daphne-private-redis.log")
    server.extra_env = {"REDIS_URL": private_redis.url}
    server.start()
    yield server
    server.stop()


def _opens(server: Server, path: str, cookie: str) -> bool:
    url = server.url.replace("http", "ws") + path
    with connect(url, additional_headers={"Origin": server.url, "Cookie": cookie}) as ws:
        try:
            ws.recv(timeout=1)
        except TimeoutError:
            return True  # open and quiet: joined its group
    return False


def test_first_socket_after_a_redis_restart_opens(
    server_on_private_redis: Server, private_redis: Any, client: Any, alice: Any
) -> None:
    run = Run.objects.create(project=Project.objects.get(slug="proj-a"), name="r")
    client.force_login(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    path = f"/ws/runs/{run.pk}/"
    assert _opens(server_on_private_redis, path, cookie)
    private_redis.restart()
    assert _opens(server_on_private_redis, path, cookie)


def test_socket_while_redis_is_down_is_told_to_try_again(
    server_on_private_redis: Server, private_redis: Any, client: Any, alice: Any
) -> None:
    run = Run.objects.create(project=Project.objects.get(slug="proj-a"), name="r")
    client.force_login(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    private_redis.stop()
    url = server_on_private_redis.url.replace("http", "ws") + f"/ws/runs/{run.pk}/"
    with connect(
        url, additional_headers={"Origin": server_on_private_redis.url, "Cookie": cookie}
    ) as ws:
        with pytest.raises(Exception):  # noqa: B017 - closed by the server
            ws.recv(timeout=15)
        assert ws.close_code == 4503  # retried by the page, unlike 4401/4404
