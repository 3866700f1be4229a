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
from dashboard.core.points import list_keys
from dashboard.core.series import fetch_series
from parity.frameworks import FRAMEWORK_KEYS, resolve_all, watched_keys
from parity.weight_versions import (
    GAP_KEYS,
    STALE_CACHE_KEY,
    WEIGHT_VERSION_KEY,
    version_gaps,
    version_starts,
)

if TYPE_CHECKING:
    from dashboard.core.points import Point


# (stored key, a name a rule may watch it under): a framework's key stands for its
# canonical metric (parity.frameworks); a weight version change brings a stale-cache ratio.
WATCHED_AS: tuple[tuple[str, str], ...] = (
    *((k.key, k.canonical) for k in FRAMEWORK_KEYS),
    (WEIGHT_VERSION_KEY, STALE_CACHE_KEY),
)


def evaluate_points(run: Run, points: Sequence[Point]) -> None:
    """Advance every matching rule of `run`'s project with the stored `points`.

    A rule on a canonical name (kl_k3) watches whichever key gives it (verl's
    rollout_corr/k3_kl, prime-rl's mismatch_kl/all/mean, ...); Parity's own key first.
    """
    by_key: dict[str, list[Point]] = {}
    for point in points:
        by_key.setdefault(point.key, []).append(point)
    names = set(by_key) | {name for key, name in WATCHED_AS if key in by_key}
    rules = [
        rule
        for rule in AlertRule.objects.filter(
            project_id=run.project_id, enabled=True, metric_key__in=list(names)
        )
        if rule.matches_run(run)
    ]
    if not rules:
        return
    now = timezone.now()
    for rule in rules:
        if rule.metric_key == STALE_CACHE_KEY and rule.metric_key not in by_key:
            evaluate_rule(rule, run, [], now, signals=stale_cache_signals(run, by_key, now))
            continue
        key = next(k for k in watched_keys(rule.metric_key) if k in by_key)
        batch = sorted(by_key[key], key=lambda p: p.step)
        evaluate_rule(rule, run, batch, now, key=key)


def evaluate_rule(
    rule: AlertRule,
    run: Run,
    batch: Sequence[Point],
    now: datetime,
    key: str | None = None,
    signals: list[tuple[int, float, datetime]] | None = None,
) -> None:
    """Advance one rule with `batch` (points of `key`, default the rule's own) or with
    precomputed `signals` (step, value the rule compares, time)."""
    if signals is None:
        signals = rule_signals(rule, run, batch, now, key=key)
    state = _locked_state(rule, run)
    incident = state.incident
    if incident is not None:
        incident.rule = rule
        incident.run = run
    for step, signal, at in signals:
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


def end_with_run(run: Run) -> None:
    """The run ended (finished, failed, crashed): its firing incidents end too, saying why,
    and its pending rules stop waiting for points that will not come. Runs in the
    transaction that set the run's status."""
    now = timezone.now()
    reason = f"the run {run.status}"
    for incident in Incident.objects.select_related("rule").filter(
        run=run, state=Incident.State.FIRING
    ):
        incident.run = run
        incident.state = Incident.State.RESOLVED
        incident.resolved_at = now
        incident.resolved_step = run.last_step  # where the chart's shading stops
        incident.resolved_reason = reason
        incident.last_notified_at = now
        incident.save()
        notify(incident, Delivery.Event.RESOLVED)
        _publish(incident)
    for state in RuleState.objects.filter(run=run).exclude(state=RuleState.State.OK):
        state._reset()
        state.incident = None
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
    live.runs_changed(incident.run.project_id)


def _locked_state(rule: AlertRule, run: Run) -> RuleState:
    # Insert-if-missing then lock: concurrent first batches cannot create two rows.
    RuleState.objects.bulk_create([RuleState(rule=rule, run=run)], ignore_conflicts=True)
    return (
        RuleState.objects.select_for_update(of=("self",))
        .select_related("incident")
        .get(rule=rule, run=run)
    )


def rule_signals(
    rule: AlertRule, run: Run, batch: Sequence[Point], now: datetime, key: str | None = None
) -> list[tuple[int, float, datetime]]:
    """(step, value the rule compares, point time) for each point, in step order.

    For "above"/"below" that is the value itself; for "rise", the percent change against
    the earliest point of the trailing window of `window_steps` steps (of `key`, the stored
    key the rule watches through; default its own).
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
            key=key or rule.metric_key,
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


def stale_cache_signals(
    run: Run, by_key: dict[str, list[Point]], now: datetime
) -> list[tuple[int, float, datetime]]:
    """The stale-cache ratio of each weight version that this batch ended, at the step where
    the next version began: the gap right after that version's update over the rest of it
    (parity.weight_versions). A version is judged once it is over, so the ratio is final.
    """
    new_versions = by_key.get(WEIGHT_VERSION_KEY, [])
    if not new_versions:
        return []
    first, last = min(p.step for p in new_versions), max(p.step for p in new_versions)
    keys = [k["key"] for k in list_keys(run)]
    gap = next(iter(resolve_all(GAP_KEYS, keys).values()), None)
    if gap is None:
        return []
    v_steps, v_values = fetch_series(run.pk, WEIGHT_VERSION_KEY, end=last)
    g_steps, g_values = fetch_series(run.pk, gap.key, end=last)
    gaps = version_gaps(v_steps.tolist(), v_values.tolist(), g_steps.tolist(), g_values.tolist())
    starts = [step for step, _ in version_starts(v_steps.tolist(), v_values.tolist())]
    out = []
    for g in gaps:
        later = [s for s in starts if s > g.first_step]
        ratio = g.ratio
        if later and first <= later[0] <= last and ratio is not None and math.isfinite(ratio):
            out.append((later[0], ratio, now))
    return out
