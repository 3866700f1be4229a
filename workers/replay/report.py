"""What a replay measured: the result types, the per-step values the job streams, the summary
a caller puts in a table row, and the CLI's text report.

`ReplayResult.to_dict()` is the stored result (`parity.reports.replay.ReplayReport`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from parity.metrics import scalar_values
from parity.reports import REPORT_VERSION, Verdict
from parity.reports.numbers import number
from parity.reports.replay import (
    Baseline,
    Capabilities,
    ChecksumReport,
    FlagsSummary,
    InFlightReport,
    MetricValues,
    PrefixCacheReport,
    PrefixCacheSummary,
    ReplayFingerprint,
    ReplayReport,
    ReplaySummary,
    RetiedKernel,
    UpdateFlags,
    UpdateInfo,
    UpdateReport,
)
from workers.engines.base import ADAPTER_ENGINES
from workers.replay.flags import Flag, flags_summary


@dataclass
class UpdateResult:
    """Update k: the engine's tokens scored at W_k and at W_k-1, checksums, flags."""

    step: int
    metrics: MetricValues  # METRICS.md values against W_k
    metrics_vs_previous: MetricValues  # the same tokens against W_{k-1}
    verdict: Verdict
    reasons: list[str]
    flags: dict[str, Flag]
    checksums: ChecksumReport
    prefix_cache: PrefixCacheReport
    update: UpdateInfo
    in_flight: InFlightReport | None = None

    def fired(self) -> list[str]:
        return [name for name, flag in self.flags.items() if flag.fired]

    def step_values(self) -> dict[str, float]:
        """The numbers stored as this update's step: its metrics against W_k, the same
        against W_k-1 (`*_prev`), the flags (1.0 = fired) and the un-reset run's metrics."""
        extra: dict[str, Any] = {
            "kl_k3_prev": self.metrics_vs_previous.get("kl_k3"),
            "abs_diff_mean_prev": self.metrics_vs_previous.get("abs_diff_mean"),
            "params_not_updated": len(self.checksums["not_updated"]),
            **{name: float(flag.fired) for name, flag in self.flags.items()},
        }
        if "without_reset" in self.prefix_cache:
            no_reset = self.prefix_cache["without_reset"]["metrics"]
            extra["abs_diff_mean_no_reset"] = no_reset["abs_diff_mean"]
            extra["kl_k3_no_reset"] = no_reset["kl_k3"]
        return {**scalar_values(self.metrics), **scalar_values(extra)}

    def to_dict(self) -> UpdateReport:
        return UpdateReport(
            step=self.step,
            metrics=self.metrics,
            metrics_vs_previous=self.metrics_vs_previous,
            verdict=self.verdict,
            reasons=self.reasons,
            flags=UpdateFlags(
                stale_weights=self.flags["stale_weights"].to_dict(),
                partial_update=self.flags["partial_update"].to_dict(),
                mismatch_spike=self.flags["mismatch_spike"].to_dict(),
            ),
            checksums=self.checksums,
            prefix_cache=self.prefix_cache,
            update=self.update,
            in_flight=self.in_flight,
        )


@dataclass
class ReplayResult:
    """Everything a replay measured; `to_dict()` is the job's result JSON."""

    spec: dict[str, Any]
    model: str
    engine: dict[str, Any]
    fingerprint: ReplayFingerprint
    capabilities: Capabilities
    baseline: Baseline
    updates: list[UpdateResult]
    prefix_cache_summary: PrefixCacheSummary
    verdict: Verdict
    seconds: float
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def flags_summary(self) -> FlagsSummary:
        """Flag name -> the updates (k) where it fired."""
        return flags_summary({u.step: u.flags for u in self.updates})

    def summary(self) -> ReplaySummary:
        """The few numbers a caller (e.g. the migration checklist) puts in a table row."""

        def mean(key: str) -> float | None:
            vals = scalar_values({str(u.step): u.metrics.get(key) for u in self.updates})
            return sum(vals.values()) / len(vals) if vals else None

        flags = self.flags_summary
        return ReplaySummary(
            updates=len(self.updates),
            verdict=self.verdict,
            flags=flags,
            any_flag=any(flags.values()),
            baseline_abs_diff_mean=self.baseline["metrics"].get("abs_diff_mean"),
            baseline_kl_k3=self.baseline["metrics"].get("kl_k3"),
            post_update_abs_diff_mean=mean("abs_diff_mean"),
            post_update_kl_k3=mean("kl_k3"),
            params_not_updated=sorted(
                {n for u in self.updates for n in u.checksums["not_updated"]}
            ),
            reset_prefix_cache=self.spec.get("reset_prefix_cache"),
            update_mode=self.spec.get("update_mode"),
            prefix_cache=self.prefix_cache_summary.get("summary"),
        )

    def step_values(self) -> dict[int, dict[str, float]]:
        """Step 0 = the W0 baseline's metrics, step k = update k's (`UpdateResult`)."""
        steps = {0: scalar_values(self.baseline["metrics"])}
        for u in self.updates:
            steps[u.step] = u.step_values()
        return steps

    def engine_findings(self) -> list[str]:
        """What the replay found vLLM itself doing (`engine_findings`)."""
        return engine_findings(
            {u.step: u.update for u in self.updates}, self.capabilities.get("vllm_version")
        )

    def to_dict(self) -> ReplayReport:
        return ReplayReport(
            version=REPORT_VERSION,
            spec=self.spec,
            model=self.model,
            engine=self.engine,
            fingerprint=self.fingerprint,
            capabilities=self.capabilities,
            baseline=self.baseline,
            updates=[u.to_dict() for u in self.updates],
            prefix_cache_summary=self.prefix_cache_summary,
            verdict=self.verdict,
            seconds=self.seconds,
            timings=self.timings,
            flags_summary=self.flags_summary,
            summary=self.summary(),
            engine_findings=self.engine_findings(),
            notes=self.notes,
        )


def engine_findings(updates: Mapping[int, UpdateInfo], vllm_version: str | None) -> list[str]:
    """Findings about vLLM itself, in words with their numbers, from the updates' reports.

    Today one: vLLM's layerwise reload leaves a tied output head's kernel serving the old
    weights (`workers.weight_sync`, module docstring), seen when a re-tied kernel differed
    from the updated shared parameter before Parity rebuilt it.
    """
    stale: dict[tuple[str, str], list[tuple[int, RetiedKernel]]] = {}
    for step, info in sorted(updates.items()):
        for r in info.get("retied_kernels", []):
            if r["stale_before"]:
                stale.setdefault((r["module"], r["tied_to"]), []).append((step, r))
    out = []
    for (module, tied_to), seen in stale.items():
        steps = [step for step, _ in seen]
        worst = max(r["max_abs_diff_before"] for _, r in seen)
        rebuilt = [r for _, r in seen if r["rebuilt"]]
        if len(rebuilt) == len(seen):
            after = max(r["max_abs_diff_after"] for r in rebuilt)
            outcome = (
                f"Parity rebuilt the kernel from the shared parameter after each of these "
                f"updates (max |kernel - {tied_to}| after: {fmt(after)})"
            )
        else:
            outcome = (
                f"the kernel was not rebuilt at updates {[s for s, r in seen if not r['rebuilt']]}"
            )
        out.append(
            f"vLLM {vllm_version or '?'}'s layerwise reload left the tied output head "
            f"{module} serving stale weights after updates {steps}: it loads no weight into "
            f"{module}, so its kernel is not rebuilt, and the kernel differed from the updated "
            f"{tied_to} by up to {fmt(worst)} (first {seen[0][1]['probe_columns']} input "
            f"columns); {outcome}. Any user of vLLM's reload-based weight transfer on a model "
            f"with tied embeddings serves a stale head on this platform."
        )
    return out


# --- for people ----------------------------------------------------------------------------


def fmt(x: object) -> str:
    """A number in a replay's words and text report (parity.reports.numbers, 3 digits)."""
    return number(x, digits=3, missing="n/a")


def headline(r: ReplayResult) -> str:
    fired = {k: v for k, v in r.flags_summary.items() if v}
    flags = "; ".join(f"{k} at updates {v}" for k, v in fired.items()) or "no flags"
    return f"{len(r.updates)} updates, {flags}, verdict {r.verdict}"


def text_report(r: ReplayResult) -> str:
    """The CLI's report: one line per update, the flags that fired, the prefix cache."""
    engine = ADAPTER_ENGINES.get(r.capabilities.get("adapter", "vllm"), "vLLM")
    lines = [
        f"replay of {len(r.updates)} updates on {r.model} ({engine} "
        f"{r.capabilities.get('vllm_version')}): verdict {r.verdict}, {r.seconds:.1f} s"
    ]
    b = r.baseline["metrics"]
    lines.append(
        f"  W0 baseline: abs_diff_mean {fmt(b.get('abs_diff_mean'))}, kl_k3 {fmt(b.get('kl_k3'))}"
    )
    for u in r.updates:
        m, p = u.metrics, u.metrics_vs_previous
        lines.append(
            f"  update {u.step}: vs W_k abs_diff_mean {fmt(m.get('abs_diff_mean'))} kl_k3 "
            f"{fmt(m.get('kl_k3'))} | vs W_k-1 abs_diff_mean {fmt(p.get('abs_diff_mean'))} "
            f"kl_k3 {fmt(p.get('kl_k3'))} | params {u.checksums['matched']}/"
            f"{u.checksums['n_params']} match W_k" + _served_version(u.update)
        )
        for name in u.fired():
            lines.append(f"    FLAG {name}: {u.flags[name].reason}")
    lines.append("  prefix cache: " + str(r.prefix_cache_summary.get("summary", "not measured")))
    lines.extend(f"  ENGINE FINDING: {finding}" for finding in r.engine_findings())
    lines.extend(f"  note: {note}" for note in r.notes)
    return "\n".join(lines)


def _served_version(info: UpdateInfo) -> str:
    """The update's weight version where the engine labels its weights (SGLang), else ""."""
    v = info.get("weight_version")
    if v is None:
        return ""
    if v["matches"]:
        return f" | weight_version {v['reported']}"
    return f" | weight_version {v['reported']} (expected {v['expected']}; /generate {v['sampled']})"
