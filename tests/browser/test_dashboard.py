"""The dashboard in a real browser: live charts, every page rendered, the 1M-point run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import login, shot
from tests.integration.test_pages import RESULT

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _post_points(server: Any, token: str, run_id: int, points: list[dict[str, Any]]) -> None:
    response = httpx.post(
        f"{server.url}/api/runs/{run_id}/points",
        json={"points": points},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def _count(page: Any, key: str) -> int:
    return int(page.get_attribute(f'.chart-panel[data-keys="{key}"]', "data-points") or 0)


def test_points_posted_through_the_api_appear_without_reload(
    live_server_proc: Any, alice_token: str, project_a: Any, page: Any, artifacts_dir: Path
) -> None:
    from dashboard.core.models import Run

    run = Run.objects.create(project=project_a, name="grpo-live", status="running")
    _post_points(
        live_server_proc,
        alice_token,
        run.pk,
        [
            {"key": k, "step": s, "value": v}
            for s in range(50)
            for k, v in (("kl_k3", 1e-4 * (1 + s / 10)), ("clip_rate", 0.002 + s * 1e-4))
        ],
    )
    login(page, live_server_proc.url)
    page.goto(f"{live_server_proc.url}/runs/{run.pk}/")
    page.wait_for_selector("#charts[data-ready='1']")
    page.wait_for_selector("#live-state[data-state='live']")
    assert _count(page, "kl_k3") == 50, page.evaluate(
        "JSON.stringify(window.parityStore.get('kl_k3').x)"
    )
    page.evaluate("window.__marker = 'same page'")

    _post_points(
        live_server_proc,
        alice_token,
        run.pk,
        [
            {"key": k, "step": s, "value": v}
            for s in range(50, 80)
            for k, v in (("kl_k3", 5e-3), ("clip_rate", 0.02), ("abs_diff_mean", 0.04))
        ],
    )
    page.wait_for_function(
        "document.querySelector('.chart-panel[data-keys=\"kl_k3\"]').dataset.points === '80'"
    )
    assert _count(page, "clip_rate") == 80
    # A key the page had never seen becomes selectable.
    assert page.locator("#add-key option[value='abs_diff_mean']").count() == 1
    assert page.evaluate("window.__marker") == "same page"  # no reload happened
    assert page.text_content("#last-step") == "79"

    # A dropped socket comes back and back-fills what was posted meanwhile.
    page.evaluate("window.parityLive.drop(2000)")
    page.wait_for_selector("#live-state[data-state='reconnecting']")
    _post_points(
        live_server_proc, alice_token, run.pk, [{"key": "kl_k3", "step": 80, "value": 6e-3}]
    )
    assert _count(page, "kl_k3") == 80  # no socket: only the back-fill can bring it
    page.wait_for_function(
        "document.querySelector('.chart-panel[data-keys=\"kl_k3\"]').dataset.points === '81'"
    )
    page.wait_for_selector("#live-state[data-state='live']")

    # Keyboard: focus a chart, zoom in with "+", reset with "0".
    panel = page.locator('.chart-panel[data-keys="kl_k3"]')
    panel.focus()
    page.keyboard.press("+")
    page.wait_for_function(
        "document.querySelector('.chart-panel[data-keys=\"kl_k3\"]').classList.contains('is-zoomed')"
    )
    page.keyboard.press("0")
    page.check("#log-scale")
    shot(page, artifacts_dir, "run-live-1280")
    assert not page.js_errors, page.js_errors


def _seed_project(project: Any) -> dict[str, Any]:
    """A training run with a drift episode, and a finished comparison with a full result."""
    from dashboard.core.models import Job, Run
    from dashboard.core.points import Point, store_points

    train = Run.objects.create(
        project=project,
        name="grpo-qwen-bf16",
        status="running",
        tags=["bf16", "grpo"],
        fingerprint={
            "model": "tiny-llama",
            "engine": {
                "vllm_version": "0.32.0",
                "dtype": "bfloat16",
                "logprobs_mode": "processed_logprobs",
                "enable_prefix_caching": True,
            },
        },
    )
    points = []
    for s in range(600):
        drift = 1.0 + (8.0 if 300 <= s < 380 else 0.0)
        points += [
            Point("kl_k3", s, 4e-4 * drift * (1 + 0.2 * ((s * 7) % 11) / 11)),
            Point("kl_k1", s, 2e-4 * drift * (((s * 13) % 7) - 3) / 3),
            Point("clip_rate", s, 0.004 * drift + 0.001 * ((s * 5) % 3)),
            Point("abs_diff_mean", s, 0.012 * drift**0.5),
            Point("abs_diff_max", s, 0.4 * drift**0.5 + 0.05 * ((s * 3) % 5)),
        ]
    store_points(train, points)
    other = Run.objects.create(
        project=project,
        name="grpo-qwen-fp32-head",
        status="finished",
        tags=["fp32-head"],
        fingerprint={
            "model": "tiny-llama",
            "engine": {
                "vllm_version": "0.32.0",
                "dtype": "bfloat16",
                "logprobs_mode": "processed_logprobs",
                "enable_prefix_caching": False,
            },
        },
    )
    store_points(
        other, [Point(k, s, v * 0.5) for k, s, v in ((p.key, p.step, p.value) for p in points)]
    )
    cmp_run = Run.objects.create(
        project=project, name="preflight-tiny", kind="comparison", status="finished", verdict="warn"
    )
    result = json.loads(json.dumps(RESULT))
    result["metrics"]["histogram"] = {
        "edges": [10 ** (e / 4) for e in range(-24, 5)],
        "counts": [int(400 * 2.718 ** (-((i - 14) ** 2) / 18)) for i in range(28)],
        "zeros": 12,
    }
    lr = [-0.02 * i for i in range(300)]
    result["metrics"]["scatter"] = {
        "lr": lr,
        "lt": [x + 0.03 * ((i * 7) % 5 - 2) for i, x in enumerate(lr)],
    }
    words = "The quick brown fox jumps over the lazy dog and then returns home to".split()
    result["worst_sequences"] = [
        {
            "seq_log_ratio": 2.5 - i * 0.3,
            "max_abs_d": 1.4 - i * 0.2,
            "prompt": f"Prompt {i}: tell a story",
            "tokens": [
                {
                    "text": " " + w,
                    "lt": -1.0,
                    "lr": -1.0 - ((j * 5 + i) % 9 - 4) * 0.3,
                    "d": ((j * 5 + i) % 9 - 4) * 0.3,
                    "rank": 1 + j % 4,
                }
                for j, w in enumerate(words * 2)
            ],
        }
        for i in range(4)
    ]
    job = Job.objects.create(
        project=project,
        run=cmp_run,
        kind="comparison",
        status="succeeded",
        progress=1.0,
        stage="done",
        result=result,
        spec={"model": "var/models/tiny-llama"},
    )
    running = Job.objects.create(
        project=project,
        kind="comparison",
        status="running",
        progress=0.4,
        stage="generating 3/8",
        spec={},
    )
    from django.utils import timezone

    from dashboard.alerts.models import AlertRule, Incident

    rule = AlertRule.objects.create(
        project=project, name="kl drift", metric_key="kl_k3", threshold=2e-3
    )
    now = timezone.now()
    Incident.objects.create(
        rule=rule,
        run=train,
        state="resolved",
        severity="warning",
        metric_key="kl_k3",
        threshold=2e-3,
        recovery_threshold=2e-3,
        started_step=300,
        started_at=now,
        fired_step=302,
        fired_value=3e-3,
        fired_at=now,
        peak_value=4e-3,
        resolved_step=380,
        resolved_value=4e-4,
        resolved_at=now,
    )
    return {"train": train, "other": other, "job": job, "running": running}


def test_every_page_renders_and_is_screenshotted(
    live_server_proc: Any,
    project_a: Any,
    alice_token: str,
    make_member: Any,
    page: Any,
    artifacts_dir: Path,
) -> None:
    url = live_server_proc.url
    make_member("alice", "empty-project")
    seeded = _seed_project(project_a)
    login(page, url)

    page.goto(f"{url}/p/empty-project/")
    assert "No runs yet" in page.text_content("main")
    shot(page, artifacts_dir, "runs-empty")

    page.goto(f"{url}/p/proj-a/")
    assert page.locator("#runs tbody tr").count() == 3
    page.check("#runs input[name=run] >> nth=1")
    assert page.locator("svg.spark polyline").count() >= 2
    shot(page, artifacts_dir, "runs-list")
    # A run created meanwhile (through the API, as a training loop does) appears without a
    # reload: the project's socket says so and the table refreshes itself.
    created = httpx.post(
        f"{url}/api/runs",
        json={"project": "proj-a", "name": "arrived-later"},
        headers={"Authorization": f"Bearer {alice_token}"},
    )
    assert created.status_code == 201
    page.wait_for_selector("#runs >> text=arrived-later", timeout=15_000)
    assert page.locator("#runs input[name=run]:checked").count() == 1  # the tick survived

    page.goto(f"{url}/runs/{seeded['train'].pk}/")
    page.wait_for_selector("#charts[data-ready='1']")
    assert _count(page, "abs_diff_mean,abs_diff_max") == 1200
    page.select_option("#add-key", "kl_k1")
    page.wait_for_selector('.chart-panel[data-keys="kl_k1"] >> nth=1')
    shot(page, artifacts_dir, "run-1280")

    page.goto(f"{url}/jobs/{seeded['job'].pk}/")
    page.wait_for_selector("#histogram canvas")
    assert page.get_attribute("#scatter", "data-points") == "300"
    assert page.locator("#metrics tbody tr").count() >= 7
    assert page.locator("#worst details").count() == 4
    page.locator("#worst .tok[tabindex='0']").first.focus()
    assert not page.is_hidden("#tok-tip")
    shot(page, artifacts_dir, "comparison-result")

    page.goto(f"{url}/jobs/{seeded['running'].pk}/")
    assert page.get_attribute("#job-progress", "aria-valuenow") == "40"
    shot(page, artifacts_dir, "job-running")

    page.goto(f"{url}/p/proj-a/compare/?run={seeded['train'].pk}&run={seeded['other'].pk}")
    page.wait_for_selector("#charts[data-ready='1']")
    assert page.locator("#compare-metrics tr.differs").count() >= 4
    assert page.locator("#compare-fingerprint tr.differs").count() == 1
    shot(page, artifacts_dir, "compare")

    page.goto(f"{url}/p/proj-a/new/comparison/")
    shot(page, artifacts_dir, "new-comparison")

    page.set_viewport_size({"width": 3840, "height": 2160})
    page.goto(f"{url}/runs/{seeded['train'].pk}/")
    page.wait_for_selector("#charts[data-ready='1']")
    shot(page, artifacts_dir, "run-4k", full_page=False)
    assert not page.js_errors, page.js_errors


def test_run_of_a_million_points_loads_fast(
    live_server_proc: Any, project_a: Any, page: Any, artifacts_dir: Path
) -> None:
    from django.db import connection

    from dashboard.core.models import MetricPoint, Run

    run = Run.objects.create(project=project_a, name="million", status="running", last_step=199_999)
    keys = ["clip_rate", "kl_k3", "kl_k1", "abs_diff_mean", "abs_diff_max"]
    with connection.cursor() as cursor:
        # 5 keys x 200,000 steps = 1,000,000 points, written by Postgres itself in seconds.
        cursor.execute(
            f"""INSERT INTO {MetricPoint._meta.db_table} (run_id, key, step, value, wall_time)
            SELECT %s, k, s, abs(sin(s / 5000.0)) * 1e-3 + (s %% 97) * 1e-6, now()
            FROM unnest(%s::text[]) AS k, generate_series(0, 199999) AS s""",
            [run.pk, keys],
        )
        cursor.execute(f"ANALYZE {MetricPoint._meta.db_table}")
    assert MetricPoint.objects.filter(run=run).count() == 1_000_000
    login(page, live_server_proc.url)
    timings = []
    for _ in range(2):  # the first visit also warms daphne's imports and Postgres' cache
        started = time.monotonic()
        page.goto(f"{live_server_proc.url}/runs/{run.pk}/")
        page.wait_for_selector("#charts[data-ready='1']", timeout=60_000)
        timings.append(time.monotonic() - started)
    shown = _count(page, "kl_k3")
    assert 0 < shown <= 6000  # downsampled, not a million points in the browser
    # Zooming refines: the visible range is fetched again at full resolution.
    panel = page.locator('.chart-panel[data-keys="kl_k3"]')
    panel.focus()
    for _ in range(6):
        page.keyboard.press("+")
    js = "Number(document.querySelector('.chart-panel[data-keys=\"kl_k3\"]').dataset.points)"
    page.wait_for_function(f"{js} > {shown}", timeout=30_000)
    shot(page, artifacts_dir, "run-million")

    # The other pages that read this run: the runs list and the compare page.
    other = Run.objects.create(project=project_a, name="small", status="finished")
    started = time.monotonic()
    page.goto(f"{live_server_proc.url}/p/proj-a/")
    page.wait_for_selector("#runs >> text=million")
    runs_list_s = time.monotonic() - started
    assert page.locator("svg.spark polyline").count() == 1
    started = time.monotonic()
    page.goto(f"{live_server_proc.url}/p/proj-a/compare/?run={run.pk}&run={other.pk}")
    page.wait_for_selector("#compare-metrics")
    compare_s = time.monotonic() - started
    report = {
        "points": 1_000_000,
        "run_page_load_s": [round(t, 3) for t in timings],
        "runs_list_load_s": round(runs_list_s, 3),
        "compare_page_load_s": round(compare_s, 3),
        "kl_k3_points_shown": shown,
    }
    (artifacts_dir / "million-point-run.json").write_text(json.dumps(report, indent=2))
    print("1M-point run page:", report)
    assert timings[-1] < 10 and runs_list_s < 10 and compare_s < 10, report
    assert not page.js_errors, page.js_errors
