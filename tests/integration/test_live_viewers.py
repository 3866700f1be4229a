"""#15 live latency: many viewers of one run each get every update, once, in order, as the
one frame the publisher encoded (the pub/sub channel layer fans out in-process)."""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from dashboard.core.models import Project, Run
from tests.conftest import Server

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

VIEWERS = 20
STEPS = 10


def test_every_viewer_gets_every_step_once_in_order(
    live_server_proc: Server, client: Any, alice: Any, alice_token: str
) -> None:
    run = Run.objects.create(project=Project.objects.get(slug="proj-a"), name="watched")
    client.force_login(alice)
    headers = {"Cookie": f"sessionid={client.cookies['sessionid'].value}"}
    headers["Origin"] = live_server_proc.url
    ws_url = live_server_proc.url.replace("http://", "ws://") + f"/ws/runs/{run.pk}/"
    with ExitStack() as stack:
        sockets = [
            stack.enter_context(connect(ws_url, additional_headers=headers)) for _ in range(VIEWERS)
        ]
        for step in range(STEPS):
            body = {"points": [{"key": k, "step": step, "value": 0.5} for k in ("a", "b")]}
            r = httpx.post(
                f"{live_server_proc.url}/api/runs/{run.pk}/points",
                json=body,
                headers={"Authorization": f"Bearer {alice_token}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
        for ws in sockets:
            frames = [json.loads(ws.recv(timeout=10)) for _ in range(STEPS)]
            assert [f["kind"] for f in frames] == ["points"] * STEPS
            assert [f["data"]["points"][0]["step"] for f in frames] == list(range(STEPS))
            assert frames[0]["data"]["points"] == [
                {"key": "a", "step": 0, "value": 0.5},
                {"key": "b", "step": 0, "value": 0.5},
            ]
            with pytest.raises(TimeoutError):  # and nothing twice
                ws.recv(timeout=0.5)
