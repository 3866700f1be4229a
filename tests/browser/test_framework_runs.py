"""A run that sent verl's and slime's keys with weight versions, in a real browser: the
canonical names on the charts and the panel, version marks (live too), the stale-cache
diagnosis; screenshots at desktop and phone width."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import login, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PER_VERSION = 8


def version_points(version: int) -> list[dict[str, Any]]:
    """One weight version of a run whose engine kept a stale prefix cache: the gap jumps at
    each update and decays as the cached requests turn over."""
    points = []
    for k in range(PER_VERSION):
        step = version * PER_VERSION + k
        gap = 0.012 + (0.15 * 0.45**k if version else 0.0)
        points += [
            {"key": "weight_version", "step": step, "value": version},
            {"key": "train/train_rollout_logprob_abs_diff", "step": step, "value": gap},
            {"key": "rollout_corr/k3_kl", "step": step, "value": gap * gap / 2},
            {"key": "rollout_corr/kl", "step": step, "value": -gap * gap / 3},
        ]
    return points


def post(server: Any, token: str, run_id: int, points: list[dict[str, Any]]) -> None:
    response = httpx.post(
        f"{server.url}/api/runs/{run_id}/points",
        json={"points": points},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def test_framework_keys_and_weight_updates_on_the_run_page_and_the_runs_list(
    live_server_proc: Any, alice_token: str, project_a: Any, page: Any, artifacts_dir: Path
) -> None:
    from dashboard.core.models import Run

    run = Run.objects.create(project=project_a, name="slime-verl-stale", status="running")
    for version in range(4):
        post(live_server_proc, alice_token, run.pk, version_points(version))
    login(page, live_server_proc.url)
    page.goto(f"{live_server_proc.url}/runs/{run.pk}/")
    page.wait_for_selector("#charts[data-ready='1']")
    page.wait_for_selector("#live-state[data-state='live']")

    titles = page.locator(".chart-panel").all_text_contents()
    assert any("kl_k3 ← verl rollout_corr/k3_kl" in t for t in titles), titles
    assert any("abs_diff_mean ← slime train/train_rollout_logprob_abs_diff" in t for t in titles)
    assert "verl rollout_corr/k3_kl" in page.text_content("#canonical-panel")
    diagnosis = page.text_content("#stale-cache")
    assert "Stale KV/prefix cache after weight updates" in diagnosis
    assert "abs_diff_mean (slime train/train_rollout_logprob_abs_diff) was 5.5×" in diagnosis
    assert "after 3 of 3 updates" in diagnosis
    assert page.evaluate("window.parityCharts[0].versions.map((v) => v.step)") == [8, 16, 24]
    shot(page, artifacts_dir, "run-framework-keys-desktop")

    # A new version streams in: its mark appears without a reload.
    post(live_server_proc, alice_token, run.pk, version_points(4))
    page.wait_for_function("window.parityCharts[0].versions.length === 4")
    assert page.evaluate("window.parityCharts[0].versions[3]") == {"step": 32, "label": "v4"}

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.wait_for_selector("#charts[data-ready='1']")
    shot(page, artifacts_dir, "run-framework-keys-phone")

    page.goto(f"{live_server_proc.url}/p/proj-a/")
    row = page.locator(f"tr[data-run='{run.pk}']")
    assert "verl rollout_corr/k3_kl" in row.text_content()
    assert row.locator("svg.spark polyline").count() == 1
    shot(page, artifacts_dir, "runs-framework-keys-phone")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.reload()
    shot(page, artifacts_dir, "runs-framework-keys-desktop")
    assert not page.js_errors, page.js_errors


def test_an_open_empty_run_page_charts_a_frameworks_keys_as_they_arrive(
    live_server_proc: Any, alice_token: str, project_a: Any, page: Any
) -> None:
    from dashboard.core.models import Run

    run = Run.objects.create(project=project_a, name="verl-fresh", status="running")
    login(page, live_server_proc.url)
    page.goto(f"{live_server_proc.url}/runs/{run.pk}/")
    page.wait_for_selector("#charts[data-ready='1']")
    page.wait_for_selector("#live-state[data-state='live']")
    assert page.locator('.chart-panel[data-keys="kl_k3"]').count() == 1
    post(live_server_proc, alice_token, run.pk, version_points(0))
    panel = page.locator('.chart-panel[data-keys="rollout_corr/k3_kl"]')
    panel.wait_for()
    page.wait_for_function(
        "document.querySelector('.chart-panel[data-keys=\"rollout_corr/k3_kl\"]')"
        ".dataset.points === '8'"
    )
    assert panel.locator("h3").text_content() == "kl_k3 ← verl rollout_corr/k3_kl"
    assert page.locator('.chart-panel[data-keys="kl_k3"]').count() == 0
    assert not page.js_errors, page.js_errors
