"""The websocket route over the real Redis channel layer."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from dashboard.asgi import application
from dashboard.core import live
from dashboard.core.models import Project, Run

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _session_cookie(client: Any, user: Any) -> bytes:
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def _communicator(path: str, cookie: bytes | None) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000")]
    if cookie:
        headers.append((b"cookie", cookie))
    return WebsocketCommunicator(application, path, headers=headers)


async def test_group_message_from_outside_reaches_the_socket(
    client: Any, alice: Any, project_a: Project
) -> None:
    run = await Run.objects.acreate(project=project_a, name="live")
    cookie = await sync_to_async(_session_cookie)(client, alice)
    communicator = _communicator(f"/ws/runs/{run.pk}/", cookie)
    connected, _ = await communicator.connect()
    assert connected
    # Published by code outside the consumer, through Redis (as the ingest API and workers do).
    await sync_to_async(live.publish)(
        f"run.{run.pk}", "points", {"points": [{"key": "kl_k3", "step": 1, "value": 0.5}]}
    )
    message = await communicator.receive_json_from(timeout=5)
    assert message == {
        "kind": "points",
        "data": {"points": [{"key": "kl_k3", "step": 1, "value": 0.5}]},
    }
    await communicator.disconnect()


# Refusals (4401, 4404) are tested against a live daphne: test_websocket_close_codes.py.


async def test_foreign_origin_is_refused(client: Any, alice: Any, project_a: Project) -> None:
    run = await Run.objects.acreate(project=project_a, name="live")
    cookie = await sync_to_async(_session_cookie)(client, alice)
    communicator = WebsocketCommunicator(
        application,
        f"/ws/runs/{run.pk}/",
        headers=[
            (b"origin", b"http://evil.example"),
            (b"host", b"127.0.0.1:8000"),
            (b"cookie", cookie),
        ],
    )
    connected, _ = await communicator.connect()
    assert not connected


async def test_an_idle_socket_stays_open_for_a_minute(
    client: Any, alice: Any, project_a: Project
) -> None:
    # Issue 17 §3: redis-py's 5 s socket timeout equalled channels-redis's 5 s blocking read,
    # so an idle socket was closed with 1011 every ~6 s, outage or not.
    run = await Run.objects.acreate(project=project_a, name="idle")
    cookie = await sync_to_async(_session_cookie)(client, alice)
    communicator = _communicator(f"/ws/runs/{run.pk}/", cookie)
    connected, _ = await communicator.connect()
    assert connected
    for _ in range(12):  # 60 s, looking every 5 s for a close
        assert await communicator.receive_nothing(timeout=5, interval=0.5), (
            await communicator.receive_output()
        )
    await sync_to_async(live.publish)(f"run.{run.pk}", "status", {"status": "running"})
    message = await communicator.receive_json_from(timeout=5)
    assert message["kind"] == "status"
    await communicator.disconnect()


@pytest.mark.parametrize(
    "origin",
    [b"http://localhost:3000", b"https://127.0.0.1", b"http://127.0.0.1:8001", b"null"],
)
async def test_an_origin_on_another_port_or_scheme_is_refused(
    client: Any, alice: Any, project_a: Project, origin: bytes
) -> None:
    # Issue 15 §7: the Origin check compared host names only, so another app on the same
    # host (another port, or https) could read a logged-in user's live streams.
    run = await Run.objects.acreate(project=project_a, name="live")
    cookie = await sync_to_async(_session_cookie)(client, alice)
    communicator = WebsocketCommunicator(
        application,
        f"/ws/runs/{run.pk}/",
        headers=[(b"origin", origin), (b"host", b"127.0.0.1:8000"), (b"cookie", cookie)],
    )
    connected, _ = await communicator.connect()
    assert not connected
