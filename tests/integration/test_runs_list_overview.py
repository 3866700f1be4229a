"""#16 §9: the runs list draws each run whole (not its last 120 steps), on a scale that holds
zero and the threshold, with incidents marked; its metric columns sort."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.urls import reverse

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def _run(project: Any, name: str, values: dict[int, float], **kw: Any) -> Any:
    from dashboard.core.models import Run
    from dashboard.core.points import Point, store_points

    run = Run.objects.create(project=project, name=name, **kw)
    store_points(run, [Point("kl_k3", step, v) for step, v in values.items()])
    run.refresh_from_db()
    return run


def _spark(body: str, name: str) -> str:
    row = body[body.index(f">{name}</a>") :]
    return row[: row.index("</tr>")]


def _ys(svg: str) -> list[float]:
    points = re.search(r'<polyline points="([^"]+)"', svg).group(1)  # type: ignore[union-attr]
    return [float(p.split(",")[1]) for p in points.split()]


def test_the_whole_run_is_drawn_and_an_early_spike_survives(
    alice_client: Any, project_a: Any
) -> None:
    from dashboard.core import summary

    # 5,000 steps: past the raw read, drawn from the summary; the spike is long before the
    # last 120 steps that the list used to draw.
    values = {step: 1e-4 for step in range(5000)}
    values[700] = 0.05
    run = _run(project_a, "spiky", values)
    steps, got = summary.run_overviews({run.pk: run.last_step}, "kl_k3")[run.pk]
    assert steps[0] == 0 and steps[-1] == 4999 and 0.05 in got
    assert len(steps) < 1000
    body = alice_client.get(reverse("project", args=["proj-a"])).content.decode()
    svg = _spark(body, "spiky")
    ys = _ys(svg)
    # The spike reaches the top; the flat 1e-4 stays at the bottom (zero is on the scale).
    assert min(ys) < 4 and sorted(ys)[len(ys) // 2] > 24
    assert "steps 0 to 4999: max 0.05" in svg


def test_a_flat_run_below_its_threshold_is_drawn_flat(alice_client: Any, project_a: Any) -> None:
    _run(project_a, "flat", {step: 1e-4 * (1 + 0.01 * (step % 7)) for step in range(300)})
    body = alice_client.get(reverse("project", args=["proj-a"])).content.decode()
    svg = _spark(body, "flat")
    ys = _ys(svg)
    # Stretched to the full height, a 6% wobble used to fill the cell; now it is a line.
    assert max(ys) - min(ys) < 1
    assert 'class="threshold"' in svg


def test_incidents_are_marked_on_the_sparkline(alice_client: Any, project_a: Any) -> None:
    from dashboard.alerts.models import AlertRule

    AlertRule.objects.create(
        project=project_a, name="kl", metric_key="kl_k3", condition="above", threshold=0.01
    )
    values = {step: 1e-4 for step in range(200)}
    values.update({s: 0.05 for s in range(100, 110)})
    _run(project_a, "fired", values)
    svg = _spark(alice_client.get(reverse("project", args=["proj-a"])).content.decode(), "fired")
    assert svg.count('class="incident"') == 1
    assert "1 incident" in svg


def test_metric_columns_sort_both_ways_with_runs_without_the_metric_last(
    alice_client: Any, project_a: Any
) -> None:
    _run(project_a, "low", {0: 1e-4})
    _run(project_a, "high", {0: 0.02})
    _run(project_a, "mid", {0: 0.003})
    from dashboard.core.models import Run

    Run.objects.create(project=project_a, name="none")
    url = reverse("project", args=["proj-a"])

    def order(sort: str) -> list[str]:
        body = alice_client.get(url, {"sort": sort}).content.decode()
        return re.findall(r'<a href="/runs/\d+/?">([^<]+)</a>', body)

    assert order("-kl_k3") == ["high", "mid", "low", "none"]
    assert order("kl_k3") == ["low", "mid", "high", "none"]
    body = alice_client.get(url, {"sort": "-kl_k3"}).content.decode()
    header = body[body.index('aria-sort="descending"') :][:200]
    assert "kl_k3" in header and "sort=kl_k3" in header  # a second click flips it


def test_a_long_run_without_a_summary_is_still_drawn_whole(project_a: Any) -> None:
    from django.db import connection

    from dashboard.core import summary
    from dashboard.core.models import MetricPoint, Run

    # Written around the point writer (as bulk SQL would): no summary rows.
    run = Run.objects.create(project=project_a, name="bulk", last_step=99_999)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {MetricPoint._meta.db_table} (run_id, key, step, value, wall_time) "
            "SELECT %s, 'kl_k3', s, s * 1e-6, now() FROM generate_series(0, 99999) AS s",
            [run.pk],
        )
    steps, values = summary.run_overviews({run.pk: 99_999}, "kl_k3")[run.pk]
    assert steps[0] == 0 and steps[-1] > 99_000 and 100 < len(steps) <= 256
    assert steps == sorted(set(steps))
