"""The per-update flags of a replay, decided from numbers alone (pure: no torch, no engine).

flags = flags_for_update(metrics, metrics_vs_previous, baseline, checksums, separation,
                         spec.flags)
flags["stale_weights"].fired, flags["stale_weights"].reason, flags["stale_weights"].evidence
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from parity.reports.replay import (
    ChecksumReport,
    FlagName,
    FlagReport,
    FlagsSummary,
    KlAndAbs,
    PartialEvidence,
    SpikeCheck,
    SpikeEvidence,
    StaleEvidence,
)
from workers.specs.replay import FlagSettings

FLAG_NAMES: tuple[FlagName, ...] = ("stale_weights", "partial_update", "mismatch_spike")


@dataclass
class Flag:
    """One per-update flag: whether it fired and the numbers behind it."""

    fired: bool
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> FlagReport:
        return FlagReport(fired=self.fired, reason=self.reason, evidence=dict(self.evidence))


def _num(m: Mapping[str, Any], key: str) -> float:
    """m[key] as a float; NaN when it is missing, not a number or not finite."""
    v = m.get(key)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else math.nan


def flags_for_update(
    values: Mapping[str, Any],
    values_prev: Mapping[str, Any],
    baseline: Mapping[str, Any],
    checksums: ChecksumReport | Mapping[str, Any],
    separation: float | None,
    settings: FlagSettings,
) -> dict[str, Flag]:
    """The three flags of one update, each with the numbers it was decided on.

    Args:
        values: the metrics of the engine's tokens against W_k.
        values_prev: the metrics of the same tokens against W_k-1.
        baseline: the metrics at W0, before any update.
        checksums: the update's `judge_checksums` report.
        separation: the trainer's own mean |lt(W_k) - lt(W_k-1)| on these tokens.
        settings: the spec's thresholds.

    Returns:
        name -> Flag for `FLAG_NAMES`:

        - stale_weights: the engine still serves W_{k-1}. Only when no parameter took W_k
          (checksum status "none", or no checksums to go by), and there is evidence of
          W_{k-1}: some parameter holds W_{k-1}'s values exactly (checksums), or the engine's
          tokens fit W_{k-1} at least stale_margin times better than W_k on both kl_k3 and
          abs_diff_mean with the update resolvable (`separation` above stale_resolution x
          the W0 baseline abs_diff_mean; below that, numerical noise could decide the
          comparison). When some or all parameters took W_k the weights are not stale,
          whatever the tokens fit: that is partial_update's cause, or not a weight at all.
        - partial_update: some parameters took W_k and some did not (per-parameter
          checksums); when none did, the engine did not update at all, which stale_weights
          reports.
        - mismatch_spike: kl_k3 above spike_factor x its W0 baseline and above
          spike_floor_kl_k3, or abs_diff_mean above spike_factor x baseline and above
          spike_floor_abs_diff_mean.
    """
    return {
        "stale_weights": _stale(values, values_prev, baseline, checksums, separation, settings),
        "partial_update": _partial(checksums),
        "mismatch_spike": _spike(values, baseline, settings),
    }


def _kl_and_abs(m: Mapping[str, Any]) -> KlAndAbs:
    return KlAndAbs(kl_k3=_num(m, "kl_k3"), abs_diff_mean=_num(m, "abs_diff_mean"))


def _stale(
    values: Mapping[str, Any],
    values_prev: Mapping[str, Any],
    baseline: Mapping[str, Any],
    checksums: Mapping[str, Any],
    separation: float | None,
    settings: FlagSettings,
) -> Flag:
    base_abs = _num(baseline, "abs_diff_mean")
    resolvable = (
        separation is not None
        and math.isfinite(base_abs)
        and separation > settings.stale_resolution * base_abs
    )
    cur, prev = _kl_and_abs(values), _kl_and_abs(values_prev)
    cur_kl, cur_abs = _num(cur, "kl_k3"), _num(cur, "abs_diff_mean")
    prev_kl, prev_abs = _num(prev, "kl_k3"), _num(prev, "abs_diff_mean")
    fits_prev = bool(
        resolvable
        and prev_kl * settings.stale_margin < cur_kl
        and prev_abs * settings.stale_margin < cur_abs
    )
    status = checksums.get("status")
    held_prev = sum(
        1
        for d in checksums.get("not_updated_detail", {}).values()
        if d.get("equals_previous_weights")
    )
    evidence = StaleEvidence(
        vs_current=cur,
        vs_previous=prev,
        margin=settings.stale_margin,
        update_separation_abs_diff_mean=separation,
        baseline_abs_diff_mean=base_abs,
        resolution_needed=settings.stale_resolution * base_abs,
        resolvable=bool(resolvable),
        params_equal_to_previous_weights=held_prev,
        checksum_status=status,
        tokens_fit_previous=fits_prev,
    )
    fit = (
        f"the engine's tokens fit W_k-1 much better than W_k (kl_k3 {prev_kl:.3g} vs "
        f"{cur_kl:.3g}, abs_diff_mean {prev_abs:.3g} vs {cur_abs:.3g})"
    )
    if status in ("full", "partial"):
        took = (
            "every parameter holds W_k"
            if status == "full"
            else f"{checksums.get('matched')} of {checksums.get('n_params')} parameters "
            "took W_k (a partial update, not stale weights)"
        )
        tokens = f"; {fit}, which the weights do not explain" if fits_prev else ""
        return Flag(False, f"not stale: {took} (checksums){tokens}", evidence)
    if held_prev:
        n = checksums.get("n_params")
        reason = f"no parameter took W_k and {held_prev} of {n} hold W_k-1's values (checksums)"
        return Flag(True, reason + (f"; {fit}" if fits_prev else ""), evidence)
    if fits_prev:
        return Flag(True, fit, evidence)
    if not resolvable:
        return Flag(
            False,
            "inconclusive: the update moves the trainer's logprobs less than the resolution "
            "needed to tell W_k from W_k-1",
            evidence,
        )
    return Flag(False, "the engine's tokens do not fit W_k-1 clearly better than W_k", evidence)


def _partial(checksums: Mapping[str, Any]) -> Flag:
    names = list(checksums.get("not_updated", []))
    evidence = PartialEvidence(
        not_updated=names,
        matched=checksums.get("matched"),
        n_params=checksums.get("n_params"),
        missing_in_engine=list(checksums.get("missing_in_engine", [])),
        detail=dict(checksums.get("not_updated_detail", {})),
    )
    status = checksums.get("status")
    if status is None:
        why = checksums.get("unavailable") or "the engine's weights could not be read"
        return Flag(False, f"cannot be judged: checksums {why}", evidence)
    if status == "partial":
        more = " ..." if len(names) > 10 else ""
        return Flag(
            True,
            f"{len(names)} of {checksums.get('n_params')} parameters did not take the new "
            f"weights: {', '.join(names[:10])}{more}",
            evidence,
        )
    if status == "none":
        return Flag(
            False,
            "no parameter took the new weights (not a partial update: stale_weights says "
            "whether the engine holds W_k-1)",
            evidence,
        )
    return Flag(False, "every parameter equals the trainer's W_k", evidence)


def _spike(values: Mapping[str, Any], baseline: Mapping[str, Any], settings: FlagSettings) -> Flag:
    def check(key: str, floor: float) -> SpikeCheck:
        b, v = _num(baseline, key), _num(values, key)
        return SpikeCheck(
            value=v,
            baseline=b,
            ratio=v / b if b > 0 else math.inf,
            factor=settings.spike_factor,
            floor=floor,
            fired=bool(v > settings.spike_factor * b and v > floor),
        )

    checks = {
        "kl_k3": check("kl_k3", settings.spike_floor_kl_k3),
        "abs_diff_mean": check("abs_diff_mean", settings.spike_floor_abs_diff_mean),
    }
    evidence = SpikeEvidence(kl_k3=checks["kl_k3"], abs_diff_mean=checks["abs_diff_mean"])
    fired = [(key, s) for key, s in checks.items() if s["fired"]]
    if not fired:
        return Flag(False, "no metric above its spike threshold", evidence)
    return Flag(
        True,
        "; ".join(
            f"{key} {s['value']:.3g} is {s['ratio']:.1f}x the W0 baseline {s['baseline']:.3g} "
            f"(floor {s['floor']:g})"
            for key, s in fired
        ),
        evidence,
    )


def flags_summary(flags_by_step: Mapping[int, Mapping[str, Flag]]) -> FlagsSummary:
    """Flag name -> the updates (k) where it fired, in update order."""
    out = FlagsSummary(stale_weights=[], partial_update=[], mismatch_spike=[])
    for step, flags in flags_by_step.items():
        for name in FLAG_NAMES:
            flag = flags.get(name)
            if flag is not None and flag.fired:
                out[name].append(step)
    return out
