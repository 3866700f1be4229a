"""#16 §7 and §8 in a browser: charts people can read (threshold labels, log and fraction
axes) and one zoom for every chart of the page, kept in the URL."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.browser.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PANEL = '.chart-panel[data-keys="{}"]'


def _run_with(
    server: Any, project: Any, token: str, values: dict[str, Any], steps: int = 40
) -> Any:
    """A running run whose keys each take `values[key](step)` at every step."""
    from dashboard.core.models import Run

    run = Run.objects.create(project=project, name="charted", status="running")
    points = [{"key": k, "step": s, "value": f(s)} for s in range(steps) for k, f in values.items()]
    response = httpx.post(
        f"{server.url}/api/runs/{run.pk}/points",
        json={"points": points},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return run


def _open(page: Any, server: Any, path: str) -> None:
    login(page, server.url)
    page.goto(server.url + path)
    page.wait_for_selector("#charts[data-ready='1']")


def _chart(keys: str) -> str:
    return f"window.parityCharts.find((c) => c.keys.join(',') === '{keys}')"


def test_threshold_labels_are_readable_and_name_their_series(
    live_server_proc: Any, project_a: Any, alice_token: str, page: Any
) -> None:
    from dashboard.alerts.models import AlertRule

    # Far below every line: the default warn and fail and two alert rules are all "above view".
    for name, threshold in (("mean high", 0.05), ("mean higher", 0.2)):
        AlertRule.objects.create(
            project=project_a, name=name, metric_key="abs_diff_mean", threshold=threshold
        )
    run = _run_with(
        live_server_proc,
        project_a,
        alice_token,
        {"abs_diff_mean": lambda s: 1e-3 + s * 1e-5, "abs_diff_max": lambda s: 2e-3 + s * 1e-5},
    )
    _open(page, live_server_proc, f"/runs/{run.pk}/")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.wait_for_timeout(100)
    labels = page.evaluate(f"{_chart('abs_diff_mean,abs_diff_max')}.thresholdLabels")
    assert len(labels) == 4, labels
    for i, a in enumerate(labels):
        # Each line says which series it judges: on a mean/max chart that is not obvious.
        assert "abs_diff_mean " in a["text"], a
        for b in labels[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, (a, b)
    page.locator(PANEL.format("abs_diff_mean,abs_diff_max")).screenshot(
        path="/tmp/charts-shots/thresholds-above-view.png"
    )
    assert not page.js_errors, page.js_errors


def test_log_scale_ticks_are_positive(
    live_server_proc: Any, project_a: Any, alice_token: str, page: Any
) -> None:
    # kl_k1 crosses zero: its axis read "1e-6 / 0 / -1e-6" with log scale on.
    run = _run_with(
        live_server_proc,
        project_a,
        alice_token,
        {"kl_k3": lambda s: 1e-4 * (1 + s), "kl_k1": lambda s: 1e-4 * ((s % 7) - 3)},
    )
    _open(page, live_server_proc, f"/runs/{run.pk}/")
    page.check("#log-scale")
    page.wait_for_timeout(100)
    for keys in ("kl_k3", "kl_k1"):
        ticks = page.evaluate(f"{_chart(keys)}.plot.axes[1]._values.filter((t) => t !== '')")
        assert ticks, keys
        assert all(not t.startswith("-") and float(t) > 0 for t in ticks) or keys == "kl_k1", (
            keys,
            ticks,
        )
    # A metric with values at or below zero cannot be drawn on a log axis: it stays linear
    # and says so, instead of ticking 0 and negatives as if they were on a log scale.
    assert page.evaluate(f"{_chart('kl_k1')}.plot.scales.y.distr") == 1
    assert "linear" in page.text_content(PANEL.format("kl_k1") + " .scale-note")
    assert page.evaluate(f"{_chart('kl_k3')}.plot.scales.y.distr") == 3
    page.locator(PANEL.format("kl_k1")).screenshot(path="/tmp/charts-shots/log-kl_k1.png")
    assert not page.js_errors, page.js_errors


def test_fraction_metric_keeps_a_fraction_axis(
    live_server_proc: Any, project_a: Any, alice_token: str, page: Any
) -> None:
    # A clip rate of 0 all along got a 0-100 axis.
    run = _run_with(live_server_proc, project_a, alice_token, {"clip_rate": lambda s: 0.0})
    _open(page, live_server_proc, f"/runs/{run.pk}/")
    y = page.evaluate(f"(({{min, max}}) => [min, max])({_chart('clip_rate')}.plot.scales.y)")
    assert y[0] == 0 and 0 < y[1] <= 1, y
    page.locator(PANEL.format("clip_rate")).screenshot(path="/tmp/charts-shots/clip-zero.png")


X_RANGES = (
    "window.parityCharts.map((c) => [c.keys.join(','), c.plot.scales.x.min, c.plot.scales.x.max])"
)


def test_zoom_is_shared_by_every_chart_and_survives_a_reload(
    live_server_proc: Any, project_a: Any, alice_token: str, page: Any
) -> None:
    run = _run_with(
        live_server_proc,
        project_a,
        alice_token,
        {
            "kl_k3": lambda s: 1e-4 * (1 + s % 5),
            "clip_rate": lambda s: 0.01,
            "abs_diff_max": lambda s: 0.3,
            "entropy": lambda s: 2.0,
        },
        steps=200,
    )
    _open(page, live_server_proc, f"/runs/{run.pk}/")
    opened = page.evaluate("window.parityCharts.length")
    page.select_option("#add-key", "entropy")
    page.wait_for_function(f"window.parityCharts.length === {opened + 1}")
    page.wait_for_selector(PANEL.format("entropy") + ":not(.is-loading)")

    # Drag across the kl_k3 chart: every other chart follows.
    over = page.locator(PANEL.format("kl_k3") + " .u-over")
    over.scroll_into_view_if_needed()
    box = over.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + 20, steps=5)
    page.mouse.up()
    ranges = page.evaluate(X_RANGES)
    lo, hi = ranges[1][1], ranges[1][2]
    assert 30 < lo < hi < 120, ranges
    for keys, a, b in ranges:
        assert (round(a), round(b)) == (round(lo), round(hi)), (keys, ranges)
    page.wait_for_function("location.search.includes('x=')")
    assert "add=entropy" in page.evaluate("location.search")
    # The followers fetch their visible range at full resolution too.
    page.wait_for_function(
        f"document.querySelector('{PANEL.format('entropy')}').dataset.points >= {int(hi - lo)}"
    )

    # Log scale rebuilds the charts: the zoom stays.
    page.check("#log-scale")
    assert page.evaluate(X_RANGES) == ranges
    page.reload()
    page.wait_for_selector("#charts[data-ready='1']")
    assert page.is_checked("#log-scale")
    restored = page.evaluate(X_RANGES)
    assert [k for k, _, _ in restored] == [k for k, _, _ in ranges]  # the added chart is back
    for keys, a, b in restored:
        assert (a, b) == (int(lo), int(hi) + 1) or (a, b) == (int(lo), int(hi)), (keys, restored)

    # Reset on one chart resets all, and the URL forgets the range.
    page.click(PANEL.format("clip_rate") + " button[data-act=reset]")
    for keys, a, b in page.evaluate(X_RANGES):
        assert (a, b) == (0, 199), keys
    assert "x=" not in page.evaluate("location.search")
    page.click(PANEL.format("entropy") + " button[data-act=remove]")
    assert "add=" not in page.evaluate("location.search")
    assert not page.js_errors, page.js_errors


def test_compare_page_compares_whole_runs_with_lines_and_incidents(
    live_server_proc: Any, project_a: Any, page: Any
) -> None:
    from tests.browser.test_dashboard import _seed_project

    seeded = _seed_project(project_a)
    path = f"/p/proj-a/compare/?run={seeded['train'].pk}&run={seeded['other'].pk}"
    _open(page, live_server_proc, path)
    headers = page.text_content("#compare-metrics thead")
    assert "at step" in headers and "mean" in headers and "max" in headers
    assert "differ by more than 30%" in page.text_content("#compare-rule")
    # The second run is the first at half size: every metric but kl_k1, which hovers around
    # zero far below its threshold in both, differs.
    marked = page.eval_on_selector_all(
        "#compare-metrics tr.differs", "rs => rs.map(r => r.dataset.key)"
    )
    assert sorted(marked) == ["abs_diff_max", "abs_diff_mean", "clip_rate", "kl_k3"]
    assert page.text_content('#compare-metrics tr[data-key="kl_k3"] td.delta').strip() == "−50 %"

    kl = "window.parityCharts.find((c) => c.el.dataset.keys === 'kl_k3')"
    page.wait_for_function(f"{kl}.thresholdLabels.length > 0")
    labels = [t["text"] for t in page.evaluate(f"{kl}.thresholdLabels")]
    assert any("kl drift" in t for t in labels), labels
    assert page.evaluate(f"{kl}.incidents.map((i) => i.series)") == [0]

    # Zoom is shared here too.
    page.evaluate(f"{kl}.zoomTo(100, 200)")
    for keys, a, b in page.evaluate(X_RANGES):
        assert (a, b) == (100, 200), keys
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path="/tmp/charts-shots/compare-1280.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    page.screenshot(path="/tmp/charts-shots/compare-390.png", full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.goto(f"{live_server_proc.url}/runs/{seeded['train'].pk}/?x=250..450&add=kl_k1")
    page.wait_for_selector("#charts[data-ready='1']")
    page.wait_for_timeout(300)
    page.screenshot(path="/tmp/charts-shots/run-390.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.wait_for_timeout(300)
    page.screenshot(path="/tmp/charts-shots/run-1280.png", full_page=True)
    assert not page.js_errors, page.js_errors
