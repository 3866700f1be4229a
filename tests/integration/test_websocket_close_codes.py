"""#15 §8: what a real browser-like client sees when daphne refuses or cannot serve a socket.

The page stops retrying on 4401/4404 only if it receives them, which requires accepting the
handshake first: a close before accept reaches the browser as a bare HTTP 403.
"""

from __future__ import annotations

from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from dashboard.core.models import Project, Run
from tests.conftest import Server

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _open(server: Server, path: str, cookie: str = "") -> Any:
    headers = {"Origin": server.url}
    if cookie:
        headers["Cookie"] = cookie
    return connect(server.url.replace("http", "ws") + path, additional_headers=headers)


def _close_code(server: Server, path: str, cookie: str = "") -> int | None:
    with _open(server, path, cookie) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        return ws.close_code


def _cookie(client: Any, user: Any) -> str:
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def test_anonymous_socket_gets_4401_not_http_403(
    live_server_proc: Server, project_a: Project
) -> None:
    run = Run.objects.create(project=project_a, name="r")
    assert _close_code(live_server_proc, f"/ws/runs/{run.pk}/") == 4401


def test_other_projects_run_gets_4404(
    live_server_proc: Server, client: Any, make_member: Any, project_a: Project
) -> None:
    run = Run.objects.create(project=project_a, name="r")
    cookie = _cookie(client, make_member("mallory", "proj-m"))
    assert _close_code(live_server_proc, f"/ws/runs/{run.pk}/", cookie) == 4404


def test_unknown_socket_path_gets_4404_not_http_500(
    live_server_proc: Server, client: Any, alice: Any
) -> None:
    assert _close_code(live_server_proc, "/ws/nothing-here/", _cookie(client, alice)) == 4404


def test_a_non_json_frame_is_ignored_and_the_socket_stays_open(
    live_server_proc: Server, client: Any, alice: Any, project_a: Project
) -> None:
    from dashboard.core import live

    run = Run.objects.create(project=project_a, name="r")
    with _open(live_server_proc, f"/ws/runs/{run.pk}/", _cookie(client, alice)) as ws:
        ws.send("this is not json {")
        live.publish(f"run.{run.pk}", "status", {"status": "running"})
        assert '"status"' in ws.recv(timeout=5)


def test_foreign_origin_is_still_refused_at_the_handshake(
    live_server_proc: Server, client: Any, alice: Any, project_a: Project
) -> None:
    run = Run.objects.create(project=project_a, name="r")
    url = live_server_proc.url.replace("http", "ws") + f"/ws/runs/{run.pk}/"
    headers = {"Origin": "http://localhost:3000", "Cookie": _cookie(client, alice)}
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers=headers)
    assert refused.value.response.status_code == 403
