"""Runs that sent their framework's keys, and runs with weight versions, on the pages."""

from __future__ import annotations

import html
import json
from typing import Any

import pytest
from django.urls import reverse

from dashboard.core.models import Run
from dashboard.core.points import Point, store_points

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def verl_run(project: Any, name: str = "verl-grpo") -> Run:
    run = Run.objects.create(project=project, name=name, kind="training")
    store_points(
        run,
        [
            Point(key, step, value * (1 + step))
            for step in range(5)
            for key, value in (
                ("rollout_corr/k3_kl", 0.002),
                ("rollout_corr/kl", -0.001),
                ("training/rollout_probs_diff_mean", 0.004),
                ("sampling/sampling_logp_difference/mean", 0.03),  # TRL's, for abs_diff_mean
                ("critic/score/mean", 0.5),
            )
        ],
    )
    return run


def test_runs_list_shows_the_canonical_numbers_and_where_they_came_from(
    alice_client: Any, project_a: Any
) -> None:
    verl_run(project_a)
    response = alice_client.get(reverse("project", args=["proj-a"]))
    # Keys may wrap after each "/" (<wbr>); the text is the key.
    page = html.unescape(response.content.decode()).replace("<wbr>", "")
    assert "0.01" in page  # kl_k3 from verl's key at step 4: 0.002 * 5
    assert "verl rollout_corr/k3_kl" in page
    assert "TRL sampling/sampling_logp_difference/mean" in page
    assert "<polyline" in page  # the kl_k3 trend, drawn from verl's key


def test_run_page_has_the_canonical_panel_with_sources_and_caveats(
    alice_client: Any, project_a: Any
) -> None:
    run = verl_run(project_a)
    response = alice_client.get(reverse("run", args=[run.pk]))
    page = html.unescape(response.content.decode()).replace("<wbr>", "")
    assert 'id="canonical-panel"' in page
    for canonical, source in (
        ("kl_k3", "verl rollout_corr/k3_kl"),
        ("kl_k1", "verl rollout_corr/kl"),
        ("prob_diff_mean", "verl training/rollout_probs_diff_mean"),
    ):
        assert f'<th scope="row">{canonical}</th>' in page and source in page
    assert "probability space, not log space" in page
    config = response.context["chart_config"]
    # The default charts open on the framework's keys, labelled as the canonical metric.
    assert ["rollout_corr/k3_kl"] in config["charts"]
    assert config["labels"]["rollout_corr/k3_kl"] == "kl_k3 ← verl rollout_corr/k3_kl"
    assert config["thresholds"]["rollout_corr/k3_kl"] == config["thresholds"]["kl_k3"]
    # Stored as sent: the key list is the framework's.
    assert "rollout_corr/k3_kl" in config["keys"] and "kl_k3" not in config["keys"]


def test_a_run_with_parity_keys_only_has_no_canonical_panel(
    alice_client: Any, project_a: Any
) -> None:
    run = Run.objects.create(project=project_a, name="native")
    store_points(run, [Point("kl_k3", 0, 0.001), Point("clip_rate", 0, 0.0)])
    response = alice_client.get(reverse("run", args=[run.pk]))
    assert b'id="canonical-panel"' not in response.content
    assert response.context["chart_config"]["labels"] == {}


def weight_run(project: Any, jump: float) -> Run:
    run = Run.objects.create(project=project, name=f"updates-{jump}", kind="training")
    points = []
    for step in range(40):
        version = step // 10
        gap = 0.01 + (jump * 0.4 ** (step % 10) if version else 0.0)
        points += [Point("weight_version", step, version), Point("abs_diff_mean", step, gap)]
    store_points(run, points)
    return run


def test_run_page_names_the_stale_cache_signature_with_its_numbers(
    alice_client: Any, project_a: Any
) -> None:
    run = weight_run(project_a, jump=0.2)
    response = alice_client.get(reverse("run", args=[run.pk]))
    page = html.unescape(response.content.decode())
    assert 'id="stale-cache"' in page
    assert "Stale KV/prefix cache after weight updates" in page
    assert "Right after a weight update, abs_diff_mean was" in page
    assert "after 3 of 3 updates" in page
    assert "reset_prefix_cache()" in page
    assert 'id="version-gaps"' in page and "v1" in page and "10–19" in page
    config = response.context["chart_config"]
    assert config["versions"] == [
        {"step": 10, "label": "v1"},
        {"step": 20, "label": "v2"},
        {"step": 30, "label": "v3"},
    ]
    assert config["version"] == {"step": 39, "value": 3.0}
    json.dumps(config)  # it goes into the page as JSON


def test_run_page_shows_the_gaps_but_names_nothing_when_the_gap_is_flat(
    alice_client: Any, project_a: Any
) -> None:
    run = weight_run(project_a, jump=0.0)
    page = html.unescape(alice_client.get(reverse("run", args=[run.pk])).content.decode())
    assert 'id="stale-cache"' not in page and 'id="stale-cache-none"' in page
    assert "no stale-cache signature" in page and 'id="version-gaps"' in page


def test_the_demos_verl_run_names_the_stale_cache_and_fires_its_rule(
    alice_client: Any, project_a: Any
) -> None:
    from dashboard.alerts.models import AlertRule, Incident
    from dashboard.demo.seed import seed_verl_stale_cache_run

    rule = AlertRule.objects.create(
        project=project_a, name="stale", metric_key="stale_cache_ratio", threshold=2.0
    )
    run = seed_verl_stale_cache_run(project_a, updates=4, steps_per_version=12)
    page = html.unescape(alice_client.get(reverse("run", args=[run.pk])).content.decode())
    assert 'id="stale-cache"' in page and "kl_k3 (verl rollout_corr/k3_kl)" in page
    assert Incident.objects.filter(rule=rule, run=run).exists()
