"""#16 §10: the compare page compares runs at a step they share and over the whole run, and
marks only differences worth a look (the 5 % rule marked almost every row)."""

from __future__ import annotations

import html
import json
from typing import Any

import pytest
from django.urls import reverse

from dashboard.core.compare import DIFF_RULE, differs

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def _run(project: Any, name: str, points: dict[str, dict[int, float]]) -> Any:
    from dashboard.core.models import Run
    from dashboard.core.points import Point, store_points

    run = Run.objects.create(project=project, name=name, status="finished")
    store_points(run, [Point(k, s, v) for k, steps in points.items() for s, v in steps.items()])
    return run


def _compare(client: Any, *runs: Any) -> Any:
    response = client.get(reverse("compare", args=["proj-a"]), {"run": [r.pk for r in runs]})
    assert response.status_code == 200
    return response


def test_runs_are_compared_at_their_latest_common_step_and_over_the_whole_run(
    alice_client: Any, project_a: Any
) -> None:
    # The long run went on to step 99; the short one stopped at 40, logging only even steps
    # from 32 on: the latest step both have is 40, where latest values would compare 99 and 40.
    long = _run(project_a, "long", {"kl_k3": {s: 1e-4 * (s + 1) for s in range(100)}})
    short = _run(
        project_a,
        "short",
        {"kl_k3": {s: 2e-4 * (s + 1) for s in [*range(31), *range(32, 41, 2)]}},
    )
    row = _compare(alice_client, long, short).context["metric_table"][0]
    assert row["key"] == "kl_k3" and row["step"] == 40
    at_step, other = row["cells"]
    assert (at_step["value"], other["value"]) == ("0.0041", "0.0082")
    assert at_step["mean"] == "0.00505" and at_step["max"] == "0.01"
    assert at_step["n"] == 100 and other["n"] == 36
    # The short run's mean is lower although its latest value is higher.
    assert row["delta"] == "−25 %"

    gappy = _run(project_a, "gappy", {"kl_k3": {s: 1e-4 for s in range(0, 41, 3)}})
    row = _compare(alice_client, long, short, gappy).context["metric_table"][0]
    assert row["step"] == 36  # every third step meets the short run's even steps at 36
    assert row["delta"].endswith("spread")


def test_only_meaningful_differences_are_marked_and_the_rule_is_on_the_page(
    alice_client: Any, project_a: Any
) -> None:
    steps = range(50)
    a = _run(
        project_a,
        "a",
        {
            "kl_k3": {s: 2e-4 for s in steps},
            "clip_rate": {s: 0.002 for s in steps},
            "kl_k1": {s: 1e-6 for s in steps},
            "entropy": {s: 1.0 for s in steps},
            "abs_diff_mean": {s: 0.01 for s in steps},
        },
    )
    b = _run(
        project_a,
        "b",
        {
            "kl_k3": {s: 2.2e-4 for s in steps},  # 10 %: run-to-run noise
            "clip_rate": {s: 0.006 for s in steps},  # 3x
            "kl_k1": {s: -1e-6 for s in steps},  # opposite sign, but a millionth of the bound
            "entropy": {s: 1.1 for s in steps},
            "abs_diff_mean": {s: 0.01 if s < 49 else 0.05 for s in steps},  # warns at the end
        },
    )
    response = _compare(alice_client, a, b)
    marked = {row["key"] for row in response.context["metric_table"] if row["differs"]}
    assert marked == {"clip_rate", "abs_diff_mean"}
    body = response.content.decode()
    rule = body[body.index('id="compare-rule"') :]
    assert html.escape(DIFF_RULE) in rule[: rule.index("</p>")]
    assert "differ by more than 30%" in DIFF_RULE


def test_difference_rule() -> None:
    kl_k3 = {"op": ">", "warn": 1e-3}
    assert not differs([2e-4, 2.2e-4], ["", ""], kl_k3)
    assert differs([2e-4, 6e-4], ["", ""], kl_k3)
    assert not differs([2e-6, 6e-6], ["", ""], kl_k3)  # far below the line: noise
    assert differs([2e-4, 2e-4], ["", "warn"], kl_k3)
    assert differs([1.0, 2.0], [], None)  # no threshold: the ratio alone
    assert not differs([1.0, None], [], None)


def test_compare_charts_carry_thresholds_and_each_runs_incidents(
    alice_client: Any, project_a: Any
) -> None:
    from django.utils import timezone

    from dashboard.alerts.models import AlertRule, Incident

    a = _run(project_a, "a", {"kl_k3": {s: 1e-4 for s in range(10)}})
    b = _run(project_a, "b", {"kl_k3": {s: 3e-3 for s in range(10)}})
    rule = AlertRule.objects.create(
        project=project_a, name="kl", metric_key="kl_k3", threshold=2e-3
    )
    now = timezone.now()
    Incident.objects.create(
        rule=rule, run=b, state="firing", severity="warning", metric_key="kl_k3",
        threshold=2e-3, recovery_threshold=2e-3, started_step=3, started_at=now,
        fired_step=3, fired_value=3e-3, fired_at=now, peak_value=3e-3,
    )  # fmt: skip
    body = _compare(alice_client, a, b).content.decode()
    config = json.loads(body.split('id="chart-config" type="application/json">')[1].split("<")[0])
    labels = [line["label"] for line in config["thresholds"]["kl_k3"]]
    assert labels.count("default warn") == 1 and labels.count("alert “kl”") == 1  # once each
    [incident] = config["incidents"]
    assert incident["series"] == 1 and incident["step"] == 3 and incident["label"].startswith("b:")
