"""The canonical mismatch numbers of runs that sent their framework's keys, and what a run's
weight versions say, for the run pages.

Keys are stored as sent; here a canonical name (kl_k3) is read from whichever key gives it
on that run (parity.frameworks), and every number says where it came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from dashboard.core.models import Run
from dashboard.core.points import latest_values
from dashboard.core.presenters import fmt
from dashboard.core.series import series_cache
from dashboard.core.summary import run_overviews
from parity.frameworks import FRAMEWORK_KEYS, Resolved, resolve_all, watched_keys
from parity.weight_versions import (
    GAP_KEYS,
    MIN_RATIO,
    STALE_CACHE_FIX,
    STALE_CACHE_NAME,
    WEIGHT_VERSION_KEY,
    stale_cache_signature,
    version_gaps,
    version_starts,
)

# The canonical panel of a run page, in METRICS.md's order.
PANEL_KEYS = (
    "clip_rate",
    "kl_k3",
    "kl_k1",
    "abs_diff_mean",
    "abs_diff_max",
    "prob_diff_mean",
    "prob_pearson",
    "chi2_token",
    "chi2_seq",
    "log_ppl_diff",
    "ppl_ratio",
    "ess",
    "is_mean",
    "is_min",
    "is_max",
    "is_std",
    "token_mult_prob_error",
)


# For the run page's script: a framework's key -> (its canonical name, where it came from).
ALIASES = {k.key: (k.canonical, k.label) for k in FRAMEWORK_KEYS}


def breakable(label: str) -> SafeString:
    """A source label that may wrap after each "/" of the key (long keys on a phone)."""
    return mark_safe("/<wbr>".join(escape(part) for part in label.split("/")))


def all_keys(canonicals: Iterable[str]) -> list[str]:
    """Every stored key that may give one of `canonicals`."""
    return [key for canonical in canonicals for key in watched_keys(canonical)]


def panel(latest: dict[str, tuple[int, float]]) -> list[dict[str, Any]]:
    """The canonical panel of one run (key -> (last step, value)), when at least one of its
    numbers comes from a framework's key; [] for a run that sent Parity's own keys only."""
    found = resolve_all(PANEL_KEYS, latest)
    if not any(r.source for r in found.values()):
        return []
    rows = []
    for canonical, resolved in found.items():
        step, value = latest[resolved.key]
        rows.append(
            {
                "canonical": canonical,
                "value": fmt(value),
                "step": step,
                "source": breakable(resolved.label),
                "from_framework": resolved.source is not None,
                "note": resolved.note,
            }
        )
    return rows


def chart_keys(
    charts: Sequence[Sequence[str]], keys: Iterable[str]
) -> tuple[list[list[str]], dict[str, Resolved]]:
    """Default charts with each canonical key replaced by the key that gives it on this run,
    and how each replaced key was resolved (by stored key)."""
    present = set(keys)
    out: list[list[str]] = []
    replaced: dict[str, Resolved] = {}
    for chart in charts:
        found = resolve_all(chart, present)
        picked = [found[k].key for k in chart if k in found]
        replaced.update({r.key: r for r in found.values() if r.source})
        if picked:
            out.append(picked)
    return out, replaced


def chart_label(resolved: Resolved) -> str:
    """A framework's key on a chart, named as the canonical metric: "kl_k3 ← verl ..."."""
    return f"{resolved.canonical} ← {resolved.label}"


# The headline numbers of a run, in the order the runs list shows them (METRICS.md names).
SUMMARY_KEYS = ("kl_k3", "clip_rate", "abs_diff_mean")


def summaries(
    runs: Sequence[Run], summary_keys: Sequence[str], spark_key: str
) -> tuple[dict[int, list[dict[str, Any]]], dict[int, tuple[list[int], list[float]]]]:
    """The runs list's headline cells (value and, for a framework's key, its source) and
    each run's whole `spark_key` series, overviewed (summary.run_overviews), each canonical
    name read from whichever key gives it."""
    run_ids = [run.pk for run in runs]
    last_steps = {run.pk: run.last_step for run in runs}
    latest = latest_values(run_ids, all_keys(summary_keys))
    cells: dict[int, list[dict[str, Any]]] = {}
    spark_source: dict[str, list[int]] = {}
    for run_id in run_ids:
        found = resolve_all((*summary_keys, spark_key), latest[run_id])
        row = []
        for key in summary_keys:
            resolved: Resolved | None = found.get(key)
            value = latest[run_id][resolved.key] if resolved else None
            row.append(
                {
                    "value": fmt(value),
                    "source": breakable(resolved.label) if resolved and resolved.source else "",
                }
            )
        cells[run_id] = row
        spark = found.get(spark_key)
        spark_source.setdefault(spark.key if spark else spark_key, []).append(run_id)
    spark: dict[int, tuple[list[int], list[float]]] = {}
    for key, ids in spark_source.items():
        spark.update(run_overviews({rid: last_steps[rid] for rid in ids}, key))
    return cells, spark


def weight_versions(run: Run, keys: Iterable[str]) -> dict[str, Any] | None:
    """Where the run's weight version changes (chart marks), the gap right after each update
    against the rest of its version, and the stale-cache diagnosis when it shows; None for a
    run that sends no weight_version."""
    present = set(keys)
    if WEIGHT_VERSION_KEY not in present:
        return None
    v_steps, v_values = series_cache.get(run.pk, WEIGHT_VERSION_KEY)
    starts = version_starts(v_steps.tolist(), v_values.tolist())
    marks = [{"step": step, "label": f"v{version:g}"} for step, version in starts[1:]]
    out: dict[str, Any] = {"marks": marks, "updates": len(marks), "gap_key": None, "rows": []}
    gap = next(iter(resolve_all(GAP_KEYS, present).values()), None)
    if gap is None:
        return out
    g_steps, g_values = series_cache.get(run.pk, gap.key)
    gaps = version_gaps(v_steps.tolist(), v_values.tolist(), g_steps.tolist(), g_values.tolist())
    signature = stale_cache_signature(gaps)
    label = gap.canonical if gap.source is None else f"{gap.canonical} ({gap.label})"
    out.update(
        gap_key=label,
        rows=[
            {
                "version": f"v{g.version:g}",
                "first_step": g.first_step,
                "last_step": g.last_step,
                "after_update": fmt(g.after_update),
                "rest_mean": fmt(g.rest_mean),
                "n_rest": g.n_rest,
                "ratio": "–" if g.ratio is None else f"{fmt(g.ratio, 3)}×",
                "jumped": g.ratio is not None and g.ratio >= MIN_RATIO and g.decays,
            }
            for g in gaps
        ],
        signature=signature,
        diagnosis=signature.describe(label) if signature else "",
        name=STALE_CACHE_NAME,
        fix=STALE_CACHE_FIX,
    )
    return out
