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
from parity.reports.determinism import DeterminismReport
from parity.reports.numbers import number
from workers.engines import ADAPTER_ENGINES, ADAPTER_LABELS

SEVERITY_CSS = {"error": "fail", "warning": "warn"}

# Token colours: d = lt - lr, bucketed; blue = trainer lower, orange = trainer higher.
D_BINS = (-1.0, -0.3, -0.1, -0.03, 0.03, 0.1, 0.3, 1.0)


def fmt(value: Any, digits: int = 4) -> str:
    """A metric for people (parity.reports.numbers: the one number style)."""
    return number(value, digits)


def sparkline(
    steps: Sequence[int],
    values: Sequence[float],
    threshold: float | None = None,
    incidents: Sequence[dict[str, Any]] = (),
    bins: int = 60,
    width: int = 120,
    height: int = 28,
) -> dict[str, Any] | None:
    """A whole run as a small SVG trend (no JS, no request per row): each of `bins` step
    ranges drawn as its min and max, so one spike survives. The y scale holds zero and the
    `threshold` (a flat 1e-4 line far below it stays flat at the bottom instead of being
    stretched into noise), and the threshold and `incidents` (spans of steps) are marked.
    None for fewer than two points."""
    if len(steps) < 2:
        return None
    first, last = steps[0], steps[-1]
    span_x = (last - first) or 1
    lows: dict[int, float] = {}
    highs: dict[int, float] = {}
    for step, value in zip(steps, values, strict=True):
        b = min(bins - 1, (step - first) * bins // span_x)
        lows[b] = min(lows.get(b, value), value)
        highs[b] = max(highs.get(b, value), value)
    lo = min(0.0, *lows.values())
    hi = max(0.0, *highs.values(), *([threshold] if threshold is not None else []))
    span_y = (hi - lo) or 1.0

    def x(step: float) -> float:
        return (step - first) / span_x * width

    def y(value: float) -> float:
        return height - 2 - (value - lo) / span_y * (height - 4)

    points = []
    for b in sorted(lows):
        bx = (b + 0.5) * width / bins
        # Alternate the order so that the line runs on from where the last bin ended.
        pair = (lows[b], highs[b]) if b % 2 else (highs[b], lows[b])
        points += [f"{bx:.1f},{y(v):.1f}" for v in dict.fromkeys(pair)]
    marks = []
    for inc in incidents:
        start = max(first, inc["step"])
        end = last if inc.get("end") is None else min(last, inc["end"])
        if start <= last and end >= first:
            marks.append({"x": f"{x(start):.1f}", "w": f"{max(x(end) - x(start), 1.5):.1f}"})
    peak = max(highs.values())
    return {
        "points": " ".join(points),
        "threshold_y": None if threshold is None else f"{y(threshold):.1f}",
        "incidents": marks,
        "label": (
            f"steps {first} to {last}: max {fmt(peak)}"
            + (f", threshold {fmt(threshold)}" if threshold is not None else "")
            + (f", {len(marks)} incident{'s' if len(marks) != 1 else ''}" if marks else "")
        ),
    }


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
        f"{level} {sym} {fmt(rule[level])}" for level in ("warn", "fail") if level in rule
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


def engine_version(adapter: str, version: str | None) -> str | None:
    """An engine's version with the engine's name ("SGLang 0.5.23"); None when unknown."""
    return f"{ADAPTER_ENGINES.get(adapter, adapter)} {version}" if version else None


def engine_answered(report: Mapping[str, Any]) -> dict[str, Any]:
    """Which engine adapter answered a comparison or a replay, its version, where, and what it
    could not report."""
    fingerprint = report.get("fingerprint", {})
    engine = fingerprint.get("engine", {})
    adapter = engine.get("adapter", "vllm")  # reports before adapters were in-process
    # A replay's fingerprint has the version beside the engine settings; either way it is
    # the answering engine's own (an SGLang server's under the same key).
    version = engine.get("vllm_version") or fingerprint.get("vllm_version")
    return {
        "label": ADAPTER_LABELS.get(adapter, adapter),
        "version": engine_version(adapter, version),
        "url": engine.get("url"),
        "unknown": engine.get("unknown") or [],
    }


# A job's stages in the order the measurement runs them (workers/measure.py: engine ->
# generate -> trainer -> processing -> score -> metrics), then what follows. Stored
# timings come back from jsonb with their keys reordered, so the order is written here.
TIMING_ORDER = (
    "engine_load",
    "engine_start",
    "generate",
    "trainer_load",
    "processing",
    "score",
    "metrics",
    "report",
    "total",
)


def _timing_order(key: str) -> tuple[str, int, str]:
    # Checklist timings are per variant ("baseline.score_s"): each variant's stages in order.
    group, _, stage = key.rpartition(".")
    name = stage.removesuffix("_s")
    rank = TIMING_ORDER.index(name) if name in TIMING_ORDER else len(TIMING_ORDER)
    return group, rank, name


def timing_rows(timings: dict[str, float] | None) -> list[dict[str, Any]]:
    """A job's stage timings (any kind) in pipeline order, as bars relative to their total."""
    rows = [(k, v) for k, v in (timings or {}).items() if isinstance(v, int | float)]
    rows.sort(key=lambda kv: _timing_order(kv[0]))
    total = sum(v for _, v in rows) or 1.0
    return [
        {"name": k.removesuffix("_s").replace("_", " "), "seconds": v, "pct": 100 * v / total}
        for k, v in rows
    ]


def determinism_context(report: DeterminismReport) -> dict[str, Any]:
    """Everything the job page shows of a determinism certificate: the verdict, who answered,
    one row per run against batch size 1 (bars for bit_equal_frac and diverged sequences),
    and trainer vs engine."""
    pairs = {p["run"]: p for p in report["pairs"]}
    rows = []
    for run in report["runs"]:
        pair = pairs.get(run["name"])
        groups = run["groups"]
        bit = pair["bit_equal_frac"] if pair else None
        diverged = pair["diverged_seq_frac"] if pair else None
        rows.append(
            {
                "name": run["name"],
                "label": run["label"],
                "reference": run["name"] == report["reference"],
                "status": run["status"],
                "reason": run["reason"],
                "verdict": pair["verdict"] if pair else "",
                "max_num_seqs": fmt(run["max_num_seqs"]),
                "per_call": fmt(run["requests_per_call"]),
                "sequences": run["n_sequences"],
                "tokens": fmt(pair["tokens_compared"]) if pair else "",
                "bit_equal_frac": fmt(bit),
                "bit_pct": 100 * bit if isinstance(bit, int | float) else 0,
                "abs_diff_max": fmt(pair["abs_diff_max"]) if pair else "",
                "abs_diff_mean": fmt(pair["abs_diff_mean"]) if pair else "",
                "diverged": f"{pair['diverged_seqs']}/{pair['n_sequences']}" if pair else "",
                "diverged_pct": 100 * diverged if isinstance(diverged, int | float) else 0,
                "earliest": fmt(pair["earliest_divergence"]) if pair else "",
                "duplicate_groups": fmt(groups["duplicate_group_frac"]) if groups else "",
                "identical_groups": fmt(groups["identical_group_frac"]) if groups else "",
                "seconds": run["seconds"],
            }
        )
    engine = report["engine"]
    return {
        "reasons": report["reasons"],
        "engine": {
            "label": engine.get("label") or ADAPTER_LABELS.get(engine["adapter"], "?"),
            "version": engine_version(engine["adapter"], engine.get("version")),
            "url": engine.get("url"),
            "unknown": engine.get("unknown") or [],
        },
        "notes": report.get("notes", []),
        "certificate": {
            "rows": rows,
            "groups": any(run["groups"] for run in report["runs"]),
            "trainer": {
                **report["trainer"],
                "bit_equal_frac": fmt(report["trainer"]["bit_equal_frac"]),
                "abs_diff_mean": fmt(report["trainer"]["abs_diff_mean"]),
                "abs_diff_max": fmt(report["trainer"]["abs_diff_max"]),
            },
            "batch_invariant": fmt(engine.get("batch_invariant")),
            "dtype": engine.get("dtype"),
            "sampling": report["sampling"],
        },
    }


def flat_text(data: Any) -> dict[str, str]:
    """`flatten`, each value written for people (numbers in the one number style)."""
    return {key: fmt(value) for key, value in flatten(data).items()}


# The fingerprint's sides, in the order the page shows them; a top-level key not named here
# goes to "Other".
FINGERPRINT_SIDES = (
    ("Model and prompts", ("model", "model_path", "prompt_set", "num_prompts")),
    ("Engine", ("engine",)),
    ("Trainer", ("trainer",)),
    ("Sampling", ("sampling", "sampling_requested", "sampling_model_defaults")),
    ("Platform", ("versions", "device")),
)


def _setting(path: str, side: str) -> tuple[str, str]:
    """Which setting a fingerprint path records, whichever part of the report wrote it:
    `engine.settings.head_dtype` and `engine.head_dtype` are the engine's `head_dtype`;
    `engine.vllm_version` and `versions.vllm` both the vLLM version. Equal settings of
    different sides (the engine's and the trainer's dtype) are different settings."""
    parts = path.split(".")
    if parts[0] == "versions" or parts[-1].endswith("_version"):
        return "versions", parts[-1].removesuffix("_version")
    return side, parts[-1]


def fingerprint_groups(fingerprint: Any) -> list[dict[str, Any]]:
    """The fingerprint as rows grouped by side (model, engine, trainer, sampling, platform,
    other). A setting whose value is the same under several paths (the engine's effective
    `head_dtype` and the one its settings asked for; `versions.vllm` and
    `engine.vllm_version`) is one row, its other paths listed in `also`; where the values
    differ, each path keeps its row, since that difference is the point."""
    flat = flatten(fingerprint)
    side_of = {top: title for title, tops in FINGERPRINT_SIDES for top in tops}
    titles = [title for title, _ in FINGERPRINT_SIDES] + ["Other"]
    groups: dict[str, list[dict[str, Any]]] = {title: [] for title in titles}
    for path in sorted(flat, key=lambda p: (p.count("."), p)):
        groups[side_of.get(path.split(".")[0], "Other")].append({"key": path, "also": []})
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    out = []
    for title in titles:
        rows = []
        for row in groups[title]:
            value = flat[row["key"]]
            same = (*_setting(row["key"], title), repr(value))
            if same in seen:
                seen[same]["also"].append(row["key"])
                continue
            row["value"] = fmt(value)
            seen[same] = row
            rows.append(row)
        if rows:
            out.append({"title": title, "rows": sorted(rows, key=lambda r: r["key"])})
    return out
