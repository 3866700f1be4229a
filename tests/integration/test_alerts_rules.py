"""Rules evaluated as points are stored (store_points hook): incidents and their outbox rows.

No broker is involved: with the `db` fixture the test's transaction never commits, so no
on-commit send happens; what is checked is what the transaction wrote.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from dashboard.alerts.models import AlertRule, Delivery, Incident, RuleState, WebhookEndpoint
from dashboard.core.models import Run
from dashboard.core.points import Point, store_points

pytestmark = pytest.mark.integration


@pytest.fixture
def run(project_a: Any) -> Run:
    return Run.objects.create(project=project_a, name="grpo-7b", tags=["prod"])


@pytest.fixture
def endpoints(project_a: Any) -> list[WebhookEndpoint]:
    return [
        WebhookEndpoint.objects.create(project=project_a, name="std", url="https://example.com/a"),
        WebhookEndpoint.objects.create(
            project=project_a, name="slack", url="https://hooks.slack.com/x", format="slack"
        ),
    ]


def make_rule(project: Any, endpoints: list[WebhookEndpoint] | None = None, **kw: Any) -> AlertRule:
    fields: dict[str, Any] = {"name": "KL drift", "metric_key": "kl_k3", "threshold": 0.5}
    fields.update(kw)
    rule = AlertRule.objects.create(project=project, **fields)
    rule.endpoints.set(endpoints or [])
    return rule


def put(run: Run, start: int, *values: float, key: str = "kl_k3") -> None:
    store_points(run, [Point(key, start + i, v) for i, v in enumerate(values)])


def test_rules_are_evaluated_only_for_batches_whose_keys_they_watch(
    project_a: Any, run: Run
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    rule = make_rule(project_a, metric_key="kl_k3", for_steps=1)
    with CaptureQueriesContext(connection) as unwatched:
        put(run, 1, 0.9, key="clip_rate")
    # The "does a rule watch a key" question rides the upsert: no alerts query at all.
    assert not [q for q in unwatched.captured_queries if "alerts_" in q["sql"]]
    assert not RuleState.objects.exists()
    put(run, 2, 0.9)
    assert RuleState.objects.get(rule=rule, run=run).state == "firing"


def test_no_fire_on_a_single_spike_with_for_3(project_a: Any, run: Run, endpoints: Any) -> None:
    rule = make_rule(project_a, endpoints, for_steps=3)
    put(run, 1, 0.1, 0.9, 0.1, 0.2)
    assert not Incident.objects.exists() and not Delivery.objects.exists()
    assert RuleState.objects.get(rule=rule, run=run).state == "ok"


def test_sustained_breach_fires_once_and_writes_one_delivery_per_endpoint(
    project_a: Any, run: Run, endpoints: Any
) -> None:
    rule = make_rule(project_a, endpoints, for_steps=3)
    put(run, 1, 0.9, 0.9)
    assert RuleState.objects.get(rule=rule, run=run).state == "pending"
    put(run, 3, 0.95)
    incident = Incident.objects.get()
    assert (incident.state, incident.started_step, incident.fired_step, incident.fired_value) == (
        "firing",
        1,
        3,
        0.95,
    )
    deliveries = Delivery.objects.filter(incident=incident)
    assert sorted(d.endpoint.name for d in deliveries) == ["slack", "std"]
    assert all(d.event == "firing" and d.status == "pending" for d in deliveries)
    # Still breaching, in several batches: the same episode, no new incident or delivery.
    put(run, 4, 0.99, 1.2)
    put(run, 6, 0.8)
    assert Incident.objects.count() == 1 and Delivery.objects.count() == 2
    incident.refresh_from_db()
    assert incident.peak_value == 1.2


def test_recovery_resolves_with_hysteresis_and_notifies(
    project_a: Any, run: Run, endpoints: Any
) -> None:
    make_rule(project_a, endpoints[:1], recovery_threshold=0.3)
    put(run, 1, 0.7, 0.45, 0.55, 0.4)
    incident = Incident.objects.get()
    assert incident.state == "firing"
    put(run, 5, 0.2)
    incident.refresh_from_db()
    assert (incident.state, incident.resolved_step, incident.resolved_value) == ("resolved", 5, 0.2)
    assert list(Delivery.objects.order_by("created").values_list("event", flat=True)) == [
        "firing",
        "resolved",
    ]
    # A new episode is a new incident.
    put(run, 6, 0.9)
    assert Incident.objects.count() == 2


def test_cooldown_keeps_a_new_episode_quiet(project_a: Any, run: Run, endpoints: Any) -> None:
    make_rule(project_a, endpoints[:1], cooldown_s=3600)
    put(run, 1, 0.9, 0.1, 0.9, 0.95, 0.1, 0.9)
    assert Incident.objects.count() == 1
    assert Delivery.objects.count() == 2  # firing + resolved, nothing for the re-breaches


def test_resent_batch_is_not_replayed(project_a: Any, run: Run, endpoints: Any) -> None:
    make_rule(project_a, endpoints[:1])
    put(run, 1, 0.9, 0.1)
    put(run, 1, 0.9, 0.1)  # a client retrying the same batch
    assert Incident.objects.count() == 1 and Delivery.objects.count() == 2


def test_repeat_interval_renotifies_a_long_firing_incident(
    project_a: Any, run: Run, endpoints: Any
) -> None:
    from datetime import timedelta

    from dashboard.alerts.delivery import renotify

    make_rule(project_a, endpoints[:1], repeat_interval_s=60)
    put(run, 1, 0.9)
    incident = Incident.objects.get()
    put(run, 2, 0.9)
    assert renotify() == 0  # not yet due
    assert Delivery.objects.count() == 1
    # Due even though no point arrived since: the run may have died while firing.
    Incident.objects.filter(pk=incident.pk).update(
        last_notified_at=incident.last_notified_at - timedelta(seconds=61)
    )
    assert renotify() == 1
    assert renotify() == 0
    assert list(Delivery.objects.values_list("event", flat=True)) == ["firing", "firing"]
    assert Incident.objects.count() == 1
    put(run, 3, 0.1)  # resolved: no more repeats
    Incident.objects.update(last_notified_at=incident.last_notified_at - timedelta(hours=1))
    assert renotify() == 0


def test_rise_rule_uses_stored_history(project_a: Any, run: Run, endpoints: Any) -> None:
    make_rule(project_a, endpoints[:1], condition="rise", threshold=50, window_steps=10)
    put(run, 0, *[0.01] * 10)  # steps 0..9 flat
    assert not Incident.objects.exists()
    put(run, 10, 0.02)  # +100 % against step 0
    incident = Incident.objects.get()
    assert incident.fired_step == 10 and incident.fired_value == pytest.approx(100.0)


def test_rules_are_narrowed_by_run_name_and_tag(project_a: Any, run: Run, endpoints: Any) -> None:
    make_rule(project_a, endpoints[:1], run_tag="nightly")
    make_rule(project_a, endpoints[:1], name="ppo only", run_name_pattern="ppo-*")
    put(run, 1, 0.9)
    assert not Incident.objects.exists()
    make_rule(project_a, endpoints[:1], name="grpo", run_name_pattern="grpo-*", run_tag="prod")
    put(run, 2, 0.9)
    assert Incident.objects.get().rule.name == "grpo"


def test_other_keys_and_disabled_things_are_ignored(
    project_a: Any, run: Run, endpoints: Any
) -> None:
    make_rule(project_a, endpoints[:1], enabled=False)
    put(run, 1, 0.9)
    assert not Incident.objects.exists()
    rule = make_rule(project_a, endpoints, name="on")
    endpoints[1].disable("test")
    put(run, 2, 0.9, key="clip_rate")
    assert not Incident.objects.exists()
    put(run, 3, 0.9)
    assert Incident.objects.get().rule == rule
    assert [d.endpoint.name for d in Delivery.objects.all()] == ["std"]


def test_incident_and_deliveries_roll_back_with_the_points(
    project_a: Any, run: Run, endpoints: Any
) -> None:
    make_rule(project_a, endpoints)
    with pytest.raises(RuntimeError), transaction.atomic():
        put(run, 1, 0.9)
        assert Delivery.objects.count() == 2
        raise RuntimeError("the ingest request failed after storing")
    assert not Incident.objects.exists() and not Delivery.objects.exists()
    assert not run.points.exists()


def test_deliveries_are_sent_only_after_commit(
    project_a: Any,
    run: Run,
    endpoints: Any,
    django_capture_on_commit_callbacks: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dashboard.alerts import delivery

    sent: list[int] = []
    monkeypatch.setattr(delivery, "enqueue", lambda pk, countdown=None: sent.append(pk))
    make_rule(project_a, endpoints)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        put(run, 1, 0.9)
    assert sent == []
    for callback in callbacks:
        callback()
    assert sorted(sent) == sorted(Delivery.objects.values_list("pk", flat=True))


def test_a_lost_state_row_continues_the_episode(project_a: Any, run: Run, endpoints: Any) -> None:
    make_rule(project_a, endpoints[:1])
    put(run, 1, 0.9)
    RuleState.objects.all().delete()  # e.g. removed by hand in the admin
    put(run, 2, 0.95)  # would fire again: must not fail the ingest nor duplicate
    assert Incident.objects.count() == 1 and Delivery.objects.count() == 1
    put(run, 3, 0.1)
    assert Incident.objects.get().state == "resolved"


def test_incident_changes_are_published_to_the_run_page_after_commit(
    project_a: Any,
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from dashboard.core import live

    published: list[tuple[str, str, dict[str, Any]]] = []
    monkeypatch.setattr(
        live, "publish", lambda group, kind, data: published.append((group, kind, data))
    )
    make_rule(project_a)
    with django_capture_on_commit_callbacks(execute=True):
        put(run, 1, 0.9, 0.1)
    incidents = [(g, d["state"], d["step"], d["end"]) for g, k, d in published if k == "incident"]
    assert incidents == [(f"run.{run.pk}", "firing", 1, None), (f"run.{run.pk}", "resolved", 1, 2)]


# --- what a rule watches, and incidents ending with their run (#16 §4) ---------------------


def test_rules_watch_training_runs_unless_told_otherwise(project_a: Any) -> None:
    # A one-point comparison run used to sit at "pending 1/3 points" forever.
    rule = make_rule(project_a, for_steps=3)
    comparison = Run.objects.create(project=project_a, name="preflight", kind="comparison")
    put(comparison, 0, 0.9)
    assert not RuleState.objects.filter(run=comparison).exists()
    rule.run_kinds = AlertRule.RunKinds.ANY
    rule.save()
    put(comparison, 1, 0.9)
    assert RuleState.objects.get(run=comparison).consecutive == 1


@pytest.mark.parametrize("status", ["finished", "failed", "crashed"])
def test_an_incident_ends_when_its_run_ends_and_says_why(
    project_a: Any, run: Run, endpoints: list[WebhookEndpoint], status: str
) -> None:
    make_rule(project_a, endpoints, for_steps=1)
    put(run, 1, 0.9)
    incident = Incident.objects.get()
    assert incident.state == "firing"
    with transaction.atomic():
        run.set_status(status)
    incident.refresh_from_db()
    assert incident.state == "resolved" and incident.resolved_at is not None
    assert incident.resolved_reason == f"the run {status}"
    assert incident.resolved_value is None  # no recovering point: the run ended
    resolved = Delivery.objects.filter(incident=incident, event="resolved")
    assert resolved.count() == len(endpoints)
    assert f"the run {status}" in resolved.first().body
    assert not RuleState.objects.filter(run=run).exclude(state="ok").exists()


def test_a_pending_rule_is_cleared_when_its_run_ends(project_a: Any, run: Run) -> None:
    make_rule(project_a, for_steps=3)
    put(run, 1, 0.9)
    assert RuleState.objects.get(run=run).state == "pending"
    run.set_status("finished")
    assert RuleState.objects.get(run=run).state == "ok"
