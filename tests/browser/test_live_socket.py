"""The run page's live socket in a real browser: it stays open on an idle page (#15 §6) and
stops for good when refused (#15 §8), instead of reconnecting forever."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.browser.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_open_run_page_keeps_one_socket_for_a_minute(
    live_server_proc: Any, project_a: Any, page: Any
) -> None:
    from dashboard.core.models import Run

    run = Run.objects.create(project=project_a, name="idle-page", status="running")
    sockets: list[str] = []
    # The run page's sockets (the runs list, where login lands, has its project's own).
    page.on("websocket", lambda ws: sockets.append(ws.url) if "/ws/runs/" in ws.url else None)
    login(page, live_server_proc.url)
    page.goto(f"{live_server_proc.url}/runs/{run.pk}/")
    page.wait_for_selector("#live-state[data-state='live']")
    time.sleep(60)
    assert page.get_attribute("#live-state", "data-state") == "live"
    assert len(sockets) == 1, sockets  # no reconnect in a minute
    assert page.js_errors == []


def test_a_refused_socket_is_not_retried(
    live_server_proc: Any, project_a: Any, make_member: Any, page: Any
) -> None:
    from dashboard.core.models import Run

    run = Run.objects.create(project=project_a, name="closed-page", status="running")
    sockets: list[str] = []
    # The run page's sockets (the runs list, where login lands, has its project's own).
    page.on("websocket", lambda ws: sockets.append(ws.url) if "/ws/runs/" in ws.url else None)
    login(page, live_server_proc.url)
    page.goto(f"{live_server_proc.url}/runs/{run.pk}/")
    page.wait_for_selector("#live-state[data-state='live']")
    # The session ends (signed out elsewhere): the next connect is refused with 4401.
    from django.contrib.sessions.models import Session

    Session.objects.all().delete()
    page.evaluate("window.parityLive.drop()")
    page.wait_for_selector("#live-state[data-state='closed']", timeout=15_000)
    time.sleep(5)
    assert len(sockets) == 2, sockets  # the first, and the refused one: no retry loop
