"""Rules on a canonical name watch a framework's key for it; a rule on the stale-cache ratio
watches weight updates. Real Postgres, the real point writer and its after-store hook."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard.alerts.models import AlertRule, Incident, RuleState
from dashboard.core.models import MetricPoint, Run
from dashboard.core.points import Point, store_points

pytestmark = pytest.mark.integration


@pytest.fixture
def run(project_a: Any) -> Run:
    return Run.objects.create(project=project_a, name="verl-grpo")


def rule(project: Any, key: str, threshold: float, **kw: Any) -> AlertRule:
    return AlertRule.objects.create(
        project=project, name=f"{key} drift", metric_key=key, threshold=threshold, **kw
    )


def test_a_rule_on_kl_k3_fires_on_verls_key_and_the_key_is_stored_as_sent(
    project_a: Any, run: Run
) -> None:
    kl = rule(project_a, "kl_k3", 0.01)
    store_points(run, [Point("rollout_corr/k3_kl", 1, 0.001), Point("reward", 1, 0.3)])
    assert RuleState.objects.get(rule=kl, run=run).state == "ok"
    store_points(run, [Point("rollout_corr/k3_kl", 2, 0.05)])
    incident = Incident.objects.get(rule=kl)
    assert (incident.metric_key, incident.fired_step, incident.fired_value) == ("kl_k3", 2, 0.05)
    assert set(MetricPoint.objects.filter(run=run).values_list("key", flat=True)) == {
        "rollout_corr/k3_kl",
        "reward",
    }


def test_a_rise_rule_reads_its_history_from_the_frameworks_key(project_a: Any, run: Run) -> None:
    rise = rule(project_a, "abs_diff_mean", 100, condition="rise", window_steps=5)
    key = "sampling/sampling_logp_difference/mean"  # TRL
    store_points(run, [Point(key, s, 0.01) for s in range(3)])
    store_points(run, [Point(key, 3, 0.05)])  # +400 % over the window
    assert Incident.objects.get(rule=rise).fired_value == pytest.approx(400)


def test_parity_s_own_key_wins_when_a_batch_has_both(project_a: Any, run: Run) -> None:
    kl = rule(project_a, "kl_k3", 0.01)
    store_points(run, [Point("kl_k3", 1, 0.001), Point("mismatch_kl/all/mean", 1, 0.5)])
    assert RuleState.objects.get(rule=kl, run=run).state == "ok"


def test_a_rule_on_another_canonical_name_is_not_woken(project_a: Any, run: Run) -> None:
    rule(project_a, "kl_k1", 0.01)
    store_points(run, [Point("rollout_corr/k3_kl", 1, 0.5)])
    assert not RuleState.objects.exists()


def stale_cache_steps(start: int, version: int, per: int = 6) -> list[Point]:
    """One version's steps: the gap jumps at the update and decays as requests turn over."""
    points = []
    for k in range(per):
        points.append(Point("weight_version", start + k, float(version)))
        gap = 0.01 + (0.2 * 0.4**k if version > 0 else 0.0)
        points.append(Point("train/train_rollout_logprob_abs_diff", start + k, gap))  # slime
    return points


def test_the_stale_cache_ratio_fires_once_a_version_that_jumped_and_decayed_is_over(
    project_a: Any, run: Run
) -> None:
    stale = rule(project_a, "stale_cache_ratio", 2.0)
    store_points(run, stale_cache_steps(0, 0))
    store_points(run, stale_cache_steps(6, 1))
    assert not Incident.objects.exists()  # version 1 is not over yet
    store_points(run, stale_cache_steps(12, 2))
    incident = Incident.objects.get(rule=stale)
    assert incident.fired_step == 12 and incident.fired_value > 5
    assert not MetricPoint.objects.filter(key="stale_cache_ratio").exists()  # none derived
