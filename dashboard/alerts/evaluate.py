"""Rule evaluation as points arrive: core's point writer calls `evaluate_points` inside its
transaction (an after-store hook, registered in `dashboard.alerts.hooks`).

Only the rules of the run's project that watch one of the batch's keys are looked at (one
indexed query per batch), and only the new points are fed to them — the points table is
never scanned. Each (rule, run) state row is locked while it advances, so two batches of the
same run evaluate one after the other, in step order.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from dashboard.alerts.delivery import notify
from dashboard.alerts.models import AlertRule, Delivery, Incident, RuleState, Transition
from dashboard.core import live
from dashboard.core.models import MetricPoint, Run

if TYPE_CHECKING:
    from dashboard.core.points import Point


def evaluate_points(run: Run, points: Sequence[Point]) -> None:
    """Advance every matching rule of `run`'s project with the stored `points`."""
    by_key: dict[str, list[Point]] = {}
    for point in points:
        by_key.setdefault(point.key, []).append(point)
    rules = [
        rule
        for rule in AlertRule.objects.filter(
            project_id=run.project_id, enabled=True, metric_key__in=list(by_key)
        )
        if rule.matches_run(run)
    ]
    if not rules:
        return
    now = timezone.now()
    for rule in rules:
        batch = sorted(by_key[rule.metric_key], key=lambda p: p.step)
        evaluate_rule(rule, run, batch, now)


def evaluate_rule(rule: AlertRule, run: Run, batch: Sequence[Point], now: datetime) -> None:
    state = _locked_state(rule, run)
    incident = state.incident
    if incident is not None:
        incident.rule = rule
        incident.run = run
    for step, signal, at in signals(rule, run, batch, now):
        # A re-sent or late batch is stored but not replayed: alerts move forward in steps.
        if state.last_step is not None and step <= state.last_step:
            continue
        transition = state.advance(rule, step, signal, at, now)
        if transition == Transition.FIRE:
            # Normally None; a state row lost or reset by hand must not turn the ingest into
            # an IntegrityError on the one-firing-incident constraint: continue that episode.
            incident = Incident.objects.filter(
                rule=rule, run=run, state=Incident.State.FIRING
            ).first()
            if incident is not None:
                incident.rule, incident.run = rule, run
                incident.track(signal)
                state.incident = incident
                continue
            incident = Incident.objects.create(
                rule=rule,
                run=run,
                severity=rule.severity,
                metric_key=rule.metric_key,
                threshold=rule.threshold,
                recovery_threshold=rule.recovery,
                started_step=state.since_step if state.since_step is not None else step,
                started_at=state.since_time or at,
                fired_step=step,
                fired_value=signal,
                fired_at=now,
                peak_value=signal,
                last_notified_at=now,
            )
            state.incident = incident
            notify(incident, Delivery.Event.FIRING)
            _publish(incident)
        elif transition == Transition.HOLD and incident is not None:
            # Repeats are time-based, so the periodic sweep sends them (delivery.renotify):
            # a run that crashed while firing sends no more points but still deserves them.
            incident.track(signal)
        elif transition == Transition.RESOLVE and incident is not None:
            incident.state = Incident.State.RESOLVED
            incident.resolved_step = step
            incident.resolved_value = signal
            incident.resolved_at = now
            incident.last_notified_at = now
            incident.save()
            notify(incident, Delivery.Event.RESOLVED)
            _publish(incident)
            state.incident = None
            incident = None
    if incident is not None:
        incident.save(update_fields=["peak_value"])
    state.save()


def _publish(incident: Incident) -> None:
    """Tell the run's open pages (group run.<id>, kind "incident") once the change commits."""
    data = {
        "id": incident.pk,
        "rule": incident.rule.name,
        "key": incident.metric_key,
        "state": incident.state,
        "severity": incident.severity,
        "step": incident.started_step,
        "fired_step": incident.fired_step,
        "end": incident.resolved_step,
        "value": incident.resolved_value
        if incident.resolved_step is not None
        else incident.fired_value,
    }
    group = incident.run.group_name
    transaction.on_commit(lambda: live.publish(group, "incident", data))


def _locked_state(rule: AlertRule, run: Run) -> RuleState:
    # Insert-if-missing then lock: concurrent first batches cannot create two rows.
    RuleState.objects.bulk_create([RuleState(rule=rule, run=run)], ignore_conflicts=True)
    return (
        RuleState.objects.select_for_update(of=("self",))
        .select_related("incident")
        .get(rule=rule, run=run)
    )


def signals(
    rule: AlertRule, run: Run, batch: Sequence[Point], now: datetime
) -> list[tuple[int, float, datetime]]:
    """(step, value the rule compares, point time) for each point, in step order.

    For "above"/"below" that is the value itself; for "rise", the percent change against
    the earliest point of the trailing window of `window_steps` steps.
    """
    finite = [p for p in batch if math.isfinite(p.value)]
    if rule.condition != AlertRule.Condition.RISE:
        return [(p.step, p.value, p.time or now) for p in finite]
    if not finite:
        return []
    window = rule.window_steps
    history = list(
        MetricPoint.objects.filter(
            run=run,
            key=rule.metric_key,
            step__gte=finite[0].step - window,
            step__lte=finite[-1].step,
        )
        .order_by("step")
        .values_list("step", "value")
    )
    out = []
    for p in finite:
        pct = rise_pct(history, p.step, p.value, window)
        if pct is not None:
            out.append((p.step, pct, p.time or now))
    return out


def rise_pct(
    history: Sequence[tuple[int, float]], step: int, value: float, window: int
) -> float | None:
    """Percent change of `value` over the earliest point in [step - window, step).

    None when the window holds no earlier point or its value is 0 (no meaningful percent).
    `history` is (step, value) sorted by step.
    """
    steps = [s for s, _ in history]
    i = bisect.bisect_left(steps, step - window)
    if i >= len(history) or history[i][0] >= step:
        return None
    base = history[i][1]
    if base == 0 or not math.isfinite(base):
        return None
    return (value - base) / abs(base) * 100.0
