"""The compare page's numbers: for each metric, each run's value at the latest step every run
has, its mean and max over the whole run, and whether the runs differ enough to mark.

Latest values alone compared a run at step 900 with one at step 40; and a 5 % rule marked
almost every row, since two runs of one configuration already differ that much by noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection

from dashboard.core.models import MetricPoint, Run
from dashboard.core.presenters import fmt, judge
from parity.metrics import METRIC_KEYS

# A row is marked when the whole-run means differ by more than this share of the larger...
REL_DIFF = 0.3
# ...and, for a metric with a verdict threshold, by more than this share of that threshold
# (kl_k1 at ±1e-6 in both runs is not a difference, whatever the ratio).
NOISE_SHARE = 0.1
DIFF_RULE = (
    f"A row is marked ≠ when the runs' means over the whole run differ by more than "
    f"{REL_DIFF:.0%} of the larger (|a − b| / max(|a|, |b|)) and, for a metric with a verdict "
    f"threshold, by more than {NOISE_SHARE:.0%} of that threshold; or when their values at the "
    f"common step fall in different verdict levels (pass, warn, fail)."
)
# Each round moves a metric's bound down to the latest step one of the runs has under it.
COMMON_STEP_ROUNDS = 8

_POINTS = MetricPoint._meta.db_table
_NONFINITE = "('NaN', 'Infinity', '-Infinity')"

_STATS = f"""
SELECT run_id, key, count(*),
  avg(value) FILTER (WHERE value NOT IN {_NONFINITE}),
  max(value) FILTER (WHERE value NOT IN {_NONFINITE})
FROM {_POINTS} WHERE run_id = ANY(%s) GROUP BY run_id, key
"""

_AT_OR_BEFORE = f"""
SELECT r.id, k.key, p.step, p.value
FROM unnest(%s::bigint[]) AS r(id)
CROSS JOIN unnest(%s::text[], %s::bigint[]) AS k(key, bound)
CROSS JOIN LATERAL (
  SELECT step, value FROM {_POINTS} WHERE run_id = r.id AND key = k.key AND step <= k.bound
  ORDER BY step DESC LIMIT 1
) p
"""


@dataclass(frozen=True)
class Stats:
    """One key of one run over the whole run (mean and max of its finite values)."""

    n: int
    mean: float | None
    max: float | None


def whole_run_stats(run_ids: Sequence[int]) -> dict[tuple[int, str], Stats]:
    """Count, mean and max of every key of each run: one pass over their points."""
    with connection.cursor() as cursor:
        cursor.execute(_STATS, [list(run_ids)])
        return {(rid, key): Stats(n, mean, high) for rid, key, n, mean, high in cursor.fetchall()}


def common_steps(
    run_ids: Sequence[int], last_steps: dict[str, int]
) -> dict[str, tuple[int, dict[int, float]]]:
    """For each key (with the smallest last step among the runs), the latest step at which
    every run has a point, with each run's value there. A key whose runs share no step in a
    few rounds (sparse, interleaved steps) is left out."""
    found: dict[str, tuple[int, dict[int, float]]] = {}
    bounds = dict(last_steps)
    for _ in range(COMMON_STEP_ROUNDS):
        if not bounds:
            break
        keys = list(bounds)
        at: dict[str, dict[int, tuple[int, float]]] = {k: {} for k in keys}
        with connection.cursor() as cursor:
            cursor.execute(_AT_OR_BEFORE, [list(run_ids), keys, [bounds[k] for k in keys]])
            for rid, key, step, value in cursor.fetchall():
                at[key][rid] = (step, value)
        bounds = {}
        for key, per_run in at.items():
            if len(per_run) < len(run_ids):
                continue  # one run has nothing at or before the bound: no common step
            steps = {step for step, _ in per_run.values()}
            if len(steps) == 1:
                found[key] = (steps.pop(), {rid: value for rid, (_, value) in per_run.items()})
            else:
                bounds[key] = min(steps)
    return found


def differs(
    means: Sequence[float | None], states: Sequence[str], rule: dict[str, Any] | None
) -> bool:
    """The DIFF_RULE: True for a difference worth a reader's eye, not for noise."""
    if len(set(states)) > 1:
        return True
    finite = [m for m in means if m is not None and math.isfinite(m)]
    if len(finite) < 2:
        return False
    lo, hi = min(finite), max(finite)
    gap, scale = hi - lo, max(abs(lo), abs(hi))
    bound = (rule or {}).get("warn", (rule or {}).get("fail"))
    floor = NOISE_SHARE * abs(bound) if bound is not None else 0.0
    return scale > 0 and gap / scale > REL_DIFF and gap > floor


def _delta(means: Sequence[float | None]) -> str:
    """Two runs: the second's mean against the first's ("−50 %"); more: the spread."""
    finite = [m for m in means if m is not None and math.isfinite(m)]
    if len(finite) < 2 or len(finite) < len(means):
        return "–"
    if len(means) == 2:
        a, b = finite
        return "–" if a == 0 else f"{(b - a) / abs(a) * 100:+.0f} %".replace("-", "−")
    lo, hi = min(finite), max(finite)
    scale = max(abs(lo), abs(hi))
    return f"{(hi - lo) / scale * 100:.0f} % spread" if scale else "0 % spread"


def metric_table(
    runs: Sequence[Run], last_steps: dict[int, dict[str, int]], thresholds: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per metric any run has: the metric's common step, and per run the value
    there, the whole-run mean and max, each judged against the verdict table."""
    ids = [run.pk for run in runs]
    keys = sorted({k for steps in last_steps.values() for k in steps})
    order = {key: i for i, key in enumerate(METRIC_KEYS)}
    keys.sort(key=lambda k: (order.get(k, len(order)), k))
    stats = whole_run_stats(ids)
    shared = {
        k: min(last_steps[rid][k] for rid in ids)
        for k in keys
        if all(k in last_steps[rid] for rid in ids)
    }
    common = common_steps(ids, shared) if len(ids) > 1 else {}
    rows = []
    for key in keys:
        rule = thresholds.get(key)
        step, at_step = common.get(key, (None, {}))
        cells = []
        for rid in ids:
            s = stats.get((rid, key))
            value = at_step.get(rid)
            cells.append(
                {
                    "value": fmt(value),
                    "state": judge(value, rule),
                    "mean": fmt(s.mean if s else None),
                    "mean_state": judge(s.mean if s else None, rule),
                    "max": fmt(s.max if s else None),
                    "n": s.n if s else 0,
                }
            )
        means = [s.mean if (s := stats.get((rid, key))) else None for rid in ids]
        states = [c["state"] for c in cells] if step is not None else []
        rows.append(
            {
                "key": key,
                "step": step,
                "cells": cells,
                "delta": _delta(means),
                "differs": differs(means, states, rule),
            }
        )
    return rows
