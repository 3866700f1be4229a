"""#16 §5: the runs list moves when runs start, finish or fire, pushed over the project's
socket (it polled every 5 s; the poll is now a 30 s fallback)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.browser.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_runs_appear_and_finish_without_waiting_for_a_poll(
    live_server_proc: Any, project_a: Any, alice_token: str, page: Any
) -> None:
    from dashboard.core.models import Run

    Run.objects.create(project=project_a, name="first", status="running")
    api = f"{live_server_proc.url}/api"
    auth = {"Authorization": f"Bearer {alice_token}"}
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    login(page, live_server_proc.url)
    page.goto(f"{live_server_proc.url}/p/proj-a/")
    page.wait_for_function("() => document.querySelector('#runs') !== null")
    time.sleep(1.5)  # the project's socket is open
    assert any(f"/ws/projects/{project_a.pk}/" in url for url in sockets)

    started = time.monotonic()
    # As a training loop does it: through the API, in the server's process.
    created = httpx.post(f"{api}/runs", json={"project": "proj-a", "name": "arrived-later"},
                         headers=auth)  # fmt: skip
    assert created.status_code == 201
    page.wait_for_selector("#runs >> text=arrived-later", timeout=4_000)
    run_id = created.json()["id"]
    assert httpx.patch(f"{api}/runs/{run_id}", json={"status": "finished"},
                       headers=auth).status_code == 200  # fmt: skip
    row = page.locator("#runs tr", has_text="arrived-later")
    row.locator(".status-finished").wait_for(timeout=4_000)
    assert time.monotonic() - started < 8  # far inside the 30 s fallback poll
    assert not page.js_errors, page.js_errors
