"""The rule state machine (RuleState.advance) and signals, on unsaved models: no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError

from dashboard.alerts.evaluate import rise_pct
from dashboard.alerts.models import AlertRule, RuleState
from dashboard.core.models import Run

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rule(**kw: object) -> AlertRule:
    fields: dict[str, object] = {"name": "kl", "metric_key": "kl_k3", "threshold": 0.5}
    fields.update(kw)
    return AlertRule(**fields)


def feed(
    r: AlertRule,
    values: list[float],
    state: RuleState | None = None,
    *,
    start: int = 1,
    dt: float = 1.0,
    now: datetime = T0,
) -> tuple[RuleState, list[str]]:
    state = state or RuleState()
    out = []
    for i, value in enumerate(values):
        step = start + i
        out.append(str(state.advance(r, step, value, T0 + timedelta(seconds=step * dt), now)))
    return state, out


def test_single_spike_with_for_3_never_fires() -> None:
    _, out = feed(rule(for_steps=3), [0.1, 0.9, 0.1, 0.1])
    assert out == ["none", "pending", "cancel", "none"]


def test_fires_on_the_third_consecutive_breach() -> None:
    state, out = feed(rule(for_steps=3), [0.9, 0.9, 0.9])
    assert out == ["pending", "pending", "fire"]
    assert state.state == RuleState.State.FIRING and state.since_step == 1


def test_an_interruption_restarts_the_count() -> None:
    _, out = feed(rule(for_steps=3), [0.9, 0.9, 0.2, 0.9, 0.9, 0.9])
    assert out == ["pending", "pending", "cancel", "pending", "pending", "fire"]


def test_for_one_step_fires_immediately() -> None:
    _, out = feed(rule(), [0.4, 0.6])
    assert out == ["none", "fire"]


def test_firing_holds_until_the_recovery_threshold_hysteresis() -> None:
    # Hovering around the 0.5 line must not flap: only 0.3 or less resolves.
    _, out = feed(rule(recovery_threshold=0.3), [0.6, 0.45, 0.55, 0.31, 0.3])
    assert out == ["fire", "hold", "hold", "hold", "resolve"]


def test_below_condition_and_its_recovery() -> None:
    _, out = feed(
        rule(condition="below", threshold=0.9, recovery_threshold=0.95), [0.95, 0.8, 0.92, 0.96]
    )
    assert out == ["none", "fire", "hold", "resolve"]


def test_for_seconds_uses_point_times() -> None:
    # Points 2 s apart; the breach must last 5 s: fires at the 4th point (6 s after the 1st).
    _, out = feed(rule(for_seconds=5), [0.9, 0.9, 0.9, 0.9], dt=2.0)
    assert out == ["pending", "pending", "pending", "fire"]


def test_cooldown_suppresses_a_new_episode_then_lets_it_through() -> None:
    r = rule(cooldown_s=600)
    state, out = feed(r, [0.9, 0.1], now=T0)
    assert out == ["fire", "resolve"]
    _, out = feed(r, [0.9], state, start=3, now=T0 + timedelta(seconds=60))
    assert out == ["suppressed"]
    _, out = feed(r, [0.9], state, start=4, now=T0 + timedelta(seconds=601))
    assert out == ["fire"]


def test_rise_percent_over_the_trailing_window() -> None:
    history = [(0, 1.0), (5, 1.2), (10, 1.5), (20, 2.0)]
    assert rise_pct(history, 10, 1.5, window=10) == pytest.approx(50.0)  # vs step 0
    assert rise_pct(history, 20, 2.0, window=10) == pytest.approx(100 / 3)  # vs step 10
    assert rise_pct(history, 0, 1.0, window=10) is None  # nothing earlier
    assert rise_pct([(0, 0.0), (1, 1.0)], 1, 1.0, window=5) is None  # no percent of zero


def test_rise_rule_compares_percent() -> None:
    r = rule(condition="rise", threshold=20, window_steps=10)
    assert r.breaches(25.0) and not r.breaches(15.0)
    assert r.describe() == "kl_k3 rises > 20% over 10 steps"


def test_rule_narrowed_by_run_name_pattern_and_tag() -> None:
    r = rule(run_name_pattern="grpo-*", run_tag="prod")
    assert r.matches_run(Run(name="grpo-7b", tags=["prod", "a"]))
    assert not r.matches_run(Run(name="grpo-7b", tags=["dev"]))
    assert not r.matches_run(Run(name="ppo-7b", tags=["prod"]))
    assert rule().matches_run(Run(name="anything", tags=[]))


@pytest.mark.parametrize(
    "condition,threshold,recovery",
    [("above", 0.5, 0.6), ("below", 0.5, 0.4), ("rise", 20, 30)],
)
def test_recovery_on_the_wrong_side_is_rejected(
    condition: str, threshold: float, recovery: float
) -> None:
    with pytest.raises(ValidationError) as err:
        rule(condition=condition, threshold=threshold, recovery_threshold=recovery).clean()
    assert "recovery_threshold" in err.value.message_dict
