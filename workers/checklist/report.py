"""The checklist's result: everything it measured, and `to_dict()`, the job's result JSON
(`parity.reports.checklist.ChecklistReport`). Pure (numpy): no engine is touched here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from parity.reports import Verdict
from parity.reports.checklist import (
    VERSION,
    ChecklistReport,
    Histograms,
    HistogramSeries,
    Replays,
    ReplaySummary,
    ReplayUpdate,
    Row,
)
from workers.checklist.markdown import render_markdown
from workers.checklist.measured import Measured, as_verdict
from workers.reporting import json_safe

# Common |d| bins of the overlaid histogram (nats): every variant on the same edges, so the
# bars line up; |d| = 0 exactly is counted apart (a log axis has no 0).
HIST_EDGES = np.geomspace(1e-6, 100.0, 57)


def abs_d_histogram(lt: np.ndarray, lr: np.ndarray) -> dict[str, Any]:
    """|lt - lr| counted on HIST_EDGES: `counts` per bin (values below the first edge in the
    first bin, above the last in the last), `zeros` (d == 0 exactly) and `nonfinite`."""
    d = np.asarray(lt, dtype=np.float64) - np.asarray(lr, dtype=np.float64)
    finite = np.isfinite(d)
    a = np.abs(d[finite])
    zeros = int(np.count_nonzero(a == 0.0))
    a = np.clip(a[a > 0.0], HIST_EDGES[0], HIST_EDGES[-1])
    counts, _ = np.histogram(a, bins=HIST_EDGES)
    return {
        "counts": [int(c) for c in counts],
        "zeros": zeros,
        "nonfinite": int(np.count_nonzero(~finite)),
    }


@dataclass
class ChecklistResult:
    """Everything the checklist measured; `to_dict()` is the job's result JSON."""

    model: str
    vllm_version: str | None
    sampling_requested: dict[str, Any]
    rows: list[Row]
    variants: list[Measured]
    replays: Replays
    verdict: Verdict
    engine_builds: int
    seconds: float
    timings: dict[str, float]
    spec: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    # Which engine answered (run.engine_answered): adapter, label, version, url, unknown.
    engine: dict[str, Any] = field(default_factory=dict)

    def histograms(self) -> Histograms:
        """Per-variant |d| counts on the common edges, for one overlaid chart."""
        series: list[HistogramSeries] = [
            {
                "variant": m.name,
                "label": m.label,
                "counts": m.histogram["counts"],
                "zeros": m.histogram["zeros"],
                "nonfinite": m.histogram["nonfinite"],
            }
            for m in self.variants
            if m.ok and m.histogram is not None
        ]
        return {"edges": [float(x) for x in HIST_EDGES], "series": series}

    def to_dict(self) -> ChecklistReport:
        body: ChecklistReport = {
            "version": VERSION,
            "kind": "checklist",
            "model": self.model,
            "vllm_version": self.vllm_version,
            "sampling_requested": self.sampling_requested,
            "verdict": self.verdict,
            "rows": self.rows,
            "variants": [m.report() for m in self.variants],
            "histograms": self.histograms(),
            "replays": self.replays,
            "engine_builds": self.engine_builds,
            "seconds": self.seconds,
            "timings": self.timings,
            "spec": self.spec,
            "markdown": "",
            "notes": self.notes,
            "engine": self.engine,
        }
        out: ChecklistReport = json_safe(body)
        out["markdown"] = render_markdown(out)
        return out


# --- what the checklist keeps of a replay ----------------------------------------------------


class _Flag(Protocol):
    @property
    def fired(self) -> bool: ...
    @property
    def reason(self) -> str: ...


class _Update(Protocol):
    @property
    def step(self) -> int: ...
    @property
    def metrics(self) -> Mapping[str, Any]: ...
    @property
    def metrics_vs_previous(self) -> Mapping[str, Any]: ...
    @property
    def verdict(self) -> str: ...
    @property
    def reasons(self) -> list[str]: ...
    @property
    def flags(self) -> Mapping[str, _Flag]: ...
    @property
    def checksums(self) -> Mapping[str, Any]: ...
    @property
    def prefix_cache(self) -> Mapping[str, Any]: ...
    @property
    def in_flight(self) -> Mapping[str, Any] | None: ...


class ReplayOutcome(Protocol):
    """The attributes of `workers.replay.ReplayResult` the checklist reads (read-only, so
    the replay may type its parts more precisely)."""

    @property
    def updates(self) -> Sequence[_Update]: ...
    @property
    def verdict(self) -> str: ...
    @property
    def flags_summary(self) -> Mapping[str, Any]: ...
    @property
    def prefix_cache_summary(self) -> Mapping[str, Any]: ...
    @property
    def baseline(self) -> Mapping[str, Any]: ...
    @property
    def capabilities(self) -> Mapping[str, Any]: ...
    @property
    def engine(self) -> Mapping[str, Any]: ...
    @property
    def fingerprint(self) -> Mapping[str, Any]: ...
    @property
    def seconds(self) -> float: ...


# The numbers kept per update; the full replay is its own job kind.
_SUMMARY_KEYS = (
    "n_tokens",
    "abs_diff_mean",
    "abs_diff_max",
    "kl_k3",
    "kl_k1",
    "nonfinite_trainer",
    "token_mismatch",
    "bit_equal_frac",
)


def summarise_replay(result: ReplayOutcome) -> ReplaySummary:
    """What the checklist keeps of a ReplayResult: flags, per-update numbers, the prefix-cache
    measurement and the in-flight boundary (the full replay is its own job kind)."""
    updates: list[ReplayUpdate] = [
        {
            "step": u.step,
            "metrics": {k: u.metrics.get(k) for k in _SUMMARY_KEYS},
            "metrics_vs_previous": {k: u.metrics_vs_previous.get(k) for k in _SUMMARY_KEYS},
            "verdict": as_verdict(u.verdict) or "fail",
            "reasons": u.reasons,
            "flags": {name: {"fired": f.fired, "reason": f.reason} for name, f in u.flags.items()},
            "checksums": {
                k: u.checksums.get(k) for k in ("status", "n_params", "matched", "not_updated")
            },
            "prefix_cache": dict(u.prefix_cache),
            "in_flight": None if u.in_flight is None else dict(u.in_flight),
        }
        for u in result.updates
    ]
    summary = getattr(result, "summary", None)
    return {
        "status": "measured",
        "summary": summary() if callable(summary) else None,
        "verdict": as_verdict(result.verdict) or "fail",
        "flags_summary": dict(result.flags_summary),
        "prefix_cache_summary": dict(result.prefix_cache_summary),
        "baseline": {k: result.baseline["metrics"].get(k) for k in _SUMMARY_KEYS},
        "updates": updates,
        "capabilities": dict(result.capabilities),
        "engine": dict(result.engine),
        "update_mode": result.fingerprint.get("update_mode"),
        "seconds": result.seconds,
    }
