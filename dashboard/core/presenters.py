"""How results look on the pages: metric rows judged against the verdict table, worst
sequences as coloured tokens, sampling and strata tables, sparklines.

Pure functions of a job's result (typed by `parity.reports`) and a project's thresholds; the
views stay thin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from dashboard.core.models import Project
from parity.metrics import METRIC_KEYS, VERDICT_RULES, Thresholds, breaches, rule_bound
from parity.reports.comparison import (
    ComparisonReport,
    MetricsReport,
    SamplingReport,
    WorstSequence,
)
from parity.reports.numbers import number
from workers.engines import ADAPTER_LABELS

SEVERITY_CSS = {"error": "fail", "warning": "warn"}

# Token colours: d = lt - lr, bucketed; blue = trainer lower, orange = trainer higher.
D_BINS = (-1.0, -0.3, -0.1, -0.03, 0.03, 0.1, 0.3, 1.0)


def fmt(value: Any) -> str:
    """A metric for people (parity.reports.numbers: the one number style)."""
    return number(value)


def sparkline(values: Sequence[float], width: int = 120, height: int = 28) -> str:
    """SVG polyline points for a small trend line (no JS, no request per row)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return ""
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    step = width / (len(values) - 1)
    pts = []
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            continue
        pts.append(f"{i * step:.1f},{height - 2 - (v - lo) / span * (height - 4):.1f}")
    return " ".join(pts)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: fingerprints as rows that diff line by line."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key in sorted(data):
            out.update(flatten(data[key], f"{prefix}{key}."))
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for i, item in enumerate(data):
            out.update(flatten(item, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = data
    return out


def thresholds_for(project: Project, overrides: Any = None) -> dict[str, dict[str, Any]]:
    """The verdict table in force: METRICS.md defaults, the project's overrides, then the
    job's own (`spec.thresholds`), as {metric: {"op", "warn"?, "fail"?}}."""
    merged: dict[str, Any] = {}
    for source in (project.thresholds, overrides):
        if isinstance(source, dict):
            merged.update(source)
    try:
        t = Thresholds.from_dict(merged)
    except ValueError:  # a bad stored override must not take the result page down
        t = Thresholds()
    table: dict[str, dict[str, Any]] = {}
    for key, (op, levels) in VERDICT_RULES.items():
        rule: dict[str, Any] = {"op": op}
        for level, bound in levels.items():
            rule[level] = rule_bound(bound, t)
        table[key] = rule
    return table


def judge(value: Any, rule: dict[str, Any] | None) -> str:
    """ "fail", "warn" or "" for one metric value against its threshold rule."""
    if rule is None or not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    if not math.isfinite(value):
        return "fail"
    for level in ("fail", "warn"):
        if level in rule and breaches(rule["op"], value, rule[level]):
            return level
    return ""


def _rule_text(rule: dict[str, Any] | None) -> str:
    if not rule:
        return ""
    sym = {"<": "<", ">": ">", "abs>": "|x| >"}[rule["op"]]
    return " · ".join(
        f"{level} {sym} {rule[level]:g}" for level in ("warn", "fail") if level in rule
    )


def metric_rows(
    values: dict[str, Any],
    thresholds: dict[str, dict[str, Any]],
    reference: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The metrics table; `reference` adds the values the same tokens give when the trainer
    matches the engine's processing (what fixing the configuration would show)."""
    order = {key: i for i, key in enumerate(METRIC_KEYS)}
    rows = []
    for key in sorted(values, key=lambda k: (order.get(k, len(order)), k)):
        value = values[key]
        rule = thresholds.get(key)
        rows.append(
            {
                "key": key,
                "value": fmt(value),
                "state": judge(value, rule),
                "rule": _rule_text(rule),
                "ref": fmt(reference.get(key)) if reference else None,
                "ref_state": judge(reference.get(key), rule) if reference else "",
            }
        )
    return rows


def _d_class(d: Any) -> int:
    if not isinstance(d, int | float) or not math.isfinite(d):
        return 9  # shown hatched: non-finite
    for i, bound in enumerate(D_BINS):
        if d < bound:
            return i
    return len(D_BINS)


def _tokens(seq: WorstSequence) -> list[dict[str, Any]]:
    """Per-token rows of a worst sequence: its tokens with a colour class and a tooltip."""
    tokens = []
    for token in seq["tokens"]:
        d = token["d"]
        tokens.append(
            {
                **token,
                "cls": _d_class(d),
                "tip": " · ".join(
                    f"{name} {fmt(token[name])}"  # type: ignore[literal-required]
                    for name in ("lt", "lr", "d", "rank")
                    if token[name] is not None  # type: ignore[literal-required]
                ),
                # d is None where lt or lr was not finite: drawn hatched (class 9) instead.
                "hot": d is not None and abs(d) >= 0.1,
            }
        )
    return tokens


def worst_sequences(result: ComparisonReport) -> list[dict[str, Any]]:
    out = []
    for i, seq in enumerate(result.get("worst_sequences") or []):
        info = {
            k: fmt(v) for k, v in seq.items() if not isinstance(v, list | dict) and k != "prompt"
        }
        out.append({"n": i + 1, "info": info, "tokens": _tokens(seq), "prompt": seq["prompt"]})
    return out


def sampling_rows(sampling: SamplingReport) -> list[dict[str, Any]]:
    """Requested vs effective sampling parameters; a row differs when vLLM changed it."""
    requested = sampling.get("requested") or {}
    effective = sampling.get("effective") or {}
    defaults = sampling.get("model_defaults") or {}
    changed = sampling.get("changed_by_defaults") or {}
    rows = []
    for key in sorted(set(requested) | set(effective)):
        differs = key in changed or (
            key in requested and key in effective and requested[key] != effective[key]
        )
        rows.append(
            {
                "key": key,
                "requested": fmt(requested.get(key)),
                "effective": fmt(effective.get(key)),
                "model_default": fmt(defaults.get(key)) if key in defaults else "",
                "differs": differs,
            }
        )
    return rows


def diagnoses(result: ComparisonReport) -> list[dict[str, Any]]:
    """The diagnoses with the CSS class of their severity."""
    return [
        {**item, "css": SEVERITY_CSS.get(item["severity"], "")}
        for item in result.get("diagnoses") or []
    ]


def strata(metrics: MetricsReport) -> list[dict[str, Any]]:
    """Stratified buckets as rows with bar widths relative to the largest bucket."""
    out = []
    strata = metrics.get("strata") or {}
    for name, title in (
        ("by_lr", "By rollout log-prob lr"),
        ("by_position", "By response position"),
    ):
        buckets = strata.get(name)
        if not buckets:
            continue
        rows: list[dict[str, Any]] = [
            {
                "label": b["bucket"],
                "abs_diff_mean": b["abs_diff_mean"],
                "kl_k3": b["kl_k3"],
                "count": b["n_tokens"],
            }
            for b in buckets
        ]
        for metric in ("abs_diff_mean", "kl_k3"):
            top = max((r[metric] for r in rows if r[metric] is not None), default=0) or 1
            for r in rows:
                v = r[metric]
                r[metric + "_pct"] = (
                    max(0.0, min(100.0, 100 * v / top)) if v is not None and math.isfinite(v) else 0
                )
        out.append({"name": name, "title": title, "rows": rows})
    return out


def comparison_context(
    report: ComparisonReport, thresholds: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Everything the job page shows of a comparison report, judged against `thresholds`."""
    metrics = report["metrics"]
    reference = report.get("reference")
    return {
        "verdict": metrics["verdict"],
        "reasons": metrics["reasons"],
        "metrics": metric_rows(metrics["values"], thresholds, reference and reference["values"]),
        "reference": reference,
        "sampling": sampling_rows(report["sampling"]),
        "counts": report["counts"],
        "engine": engine_answered(report),
        "notes": report.get("notes", []),
        "diagnoses": diagnoses(report),
        "strata": strata(metrics),
        "worst": worst_sequences(report),
        "plots": {"histogram": metrics["histogram"], "scatter": metrics["scatter"]},
    }


def engine_answered(report: Mapping[str, Any]) -> dict[str, Any]:
    """Which engine adapter answered a comparison or a replay, its version, where, and what it
    could not report."""
    fingerprint = report.get("fingerprint", {})
    engine = fingerprint.get("engine", {})
    adapter = engine.get("adapter", "vllm")  # reports before adapters were in-process
    return {
        "label": ADAPTER_LABELS.get(adapter, adapter),
        # A replay's fingerprint has the version beside the engine settings.
        "version": engine.get("vllm_version") or fingerprint.get("vllm_version"),
        "url": engine.get("url"),
        "unknown": engine.get("unknown") or [],
    }


def timing_rows(timings: dict[str, float] | None) -> list[dict[str, Any]]:
    """A job's stage timings (any kind) as bars relative to their total."""
    rows = [(k, v) for k, v in (timings or {}).items() if isinstance(v, int | float)]
    total = sum(v for _, v in rows) or 1.0
    return [
        {"name": k.removesuffix("_s").replace("_", " "), "seconds": v, "pct": 100 * v / total}
        for k, v in rows
    ]
