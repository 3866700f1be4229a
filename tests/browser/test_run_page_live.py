"""#16 §1, §2, §4 in a browser: on an open run page, an incident that fires, the run's end and
the incident ending with it all arrive over the socket, without a reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import login, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_incident_and_run_end_arrive_live(
    live_server_proc: Any, project_a: Any, alice_token: str, page: Any, artifacts_dir: Path
) -> None:
    from dashboard.alerts.models import AlertRule
    from dashboard.core.models import Run

    AlertRule.objects.create(
        project=project_a, name="kl drift", metric_key="kl_k3", threshold=0.5, for_steps=1
    )
    run = Run.objects.create(project=project_a, name="live-truth", status="running")
    api = f"{live_server_proc.url}/api/runs/{run.pk}"
    auth = {"Authorization": f"Bearer {alice_token}"}
    ok = httpx.post(f"{api}/points", json={"points": [{"key": "kl_k3", "step": 0, "value": 0.1}]},
                    headers=auth)  # fmt: skip
    assert ok.status_code == 200
    login(page, live_server_proc.url)
    page.goto(f"{live_server_proc.url}/runs/{run.pk}/")
    page.wait_for_selector("#charts[data-ready='1']")
    page.wait_for_selector("#live-state[data-state='live']")
    assert "No alert has fired" in page.text_content("#run-incidents")

    fire = {"points": [{"key": "kl_k3", "step": s, "value": 0.9} for s in (1, 2)]}
    assert httpx.post(f"{api}/points", json=fire, headers=auth).status_code == 200
    page.wait_for_selector("#run-incidents .incident-firing", timeout=10_000)
    assert page.evaluate("window.parityIncidents.length") == 1  # the charts' shading

    assert httpx.patch(api, json={"status": "finished"}, headers=auth).status_code == 200
    page.wait_for_selector("#run-status:text('finished')", timeout=10_000)
    page.wait_for_selector("#run-incidents .incident-resolved", timeout=10_000)
    assert "ended: the run finished" in page.text_content("#run-incidents")
    # The connection's state is said apart from the run's, and quietly.
    assert page.text_content("#live-state") == "● connected"
    shot(page, artifacts_dir, "run-live-incident-ended")
    assert not page.js_errors, page.js_errors


def test_step_axis_ticks_are_whole_steps(
    live_server_proc: Any, project_a: Any, alice_token: str, page: Any
) -> None:
    # #16 §7: a 3-step run had ticks at 0.1, 0.2, ...
    from dashboard.core.models import Run

    run = Run.objects.create(project=project_a, name="short", status="running")
    points = [{"key": "kl_k3", "step": s, "value": 0.1} for s in range(3)]
    httpx.post(
        f"{live_server_proc.url}/api/runs/{run.pk}/points",
        json={"points": points},
        headers={"Authorization": f"Bearer {alice_token}"},
    )
    login(page, live_server_proc.url)
    page.goto(f"{live_server_proc.url}/runs/{run.pk}/")
    page.wait_for_selector("#charts[data-ready='1']")
    ticks = page.evaluate("window.parityCharts[0].plot.axes[0]._values")
    assert ticks and all(float(t) == int(float(t)) for t in ticks), ticks


def test_charts_say_loading_while_their_series_load(
    live_server_proc: Any, project_a: Any, alice_token: str, page: Any
) -> None:
    # #16 §3: while loading, the charts said "No points for this metric yet".
    from dashboard.core.models import Run

    run = Run.objects.create(project=project_a, name="slow", status="running")
    points = [{"key": "kl_k3", "step": s, "value": 0.1} for s in range(3)]
    httpx.post(
        f"{live_server_proc.url}/api/runs/{run.pk}/points",
        json={"points": points},
        headers={"Authorization": f"Bearer {alice_token}"},
    )
    login(page, live_server_proc.url)
    held: list[Any] = []
    page.route("**/series?*", lambda route: held.append(route))  # answered later
    page.goto(f"{live_server_proc.url}/runs/{run.pk}/")
    page.wait_for_function("document.querySelectorAll('.chart-panel').length > 0")
    panel = page.locator(".chart-panel").first
    text = "getComputedStyle(el.querySelector('.plot'), '::before').content"
    assert "Loading points" in panel.evaluate(f"(el) => {text}")
    for route in held:
        route.continue_()
    page.unroute("**/series?*")
    page.wait_for_selector("#charts[data-ready='1']")
    assert panel.evaluate(f"(el) => {text}") in ("none", "normal")
