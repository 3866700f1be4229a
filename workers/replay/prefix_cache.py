"""Whether `reset_prefix_cache()` matters, measured: after each update the same requests (same
seeds) run once with the prefix blocks computed at W_k-1 still cached and once after a reset,
both scored against W_k; a control at W0 gives the difference caching alone makes.

Pure: builds the report pieces from metrics and batches that are already measured.
"""

from __future__ import annotations

from collections.abc import Sequence

from parity.metrics import MetricsResult, scalar_values
from parity.reports.replay import (
    Baseline,
    CacheControl,
    CacheSide,
    MetricSummary,
    PrefixCacheReport,
    PrefixCacheSummary,
)
from workers.replay.batch import Batch, compare_batches
from workers.replay.report import UpdateResult, fmt
from workers.specs.replay import ReplaySpec


def metric_summary(m: MetricsResult) -> MetricSummary:
    """The few metrics a prefix-cache or in-flight measurement is reported with."""
    v = m.values
    return MetricSummary(
        n_tokens=v.get("n_tokens"),
        abs_diff_mean=v.get("abs_diff_mean"),
        abs_diff_max=v.get("abs_diff_max"),
        kl_k3=v.get("kl_k3"),
        kl_k1=v.get("kl_k1"),
        bit_equal_frac=v.get("bit_equal_frac"),
        clip_rate=v.get("clip_rate"),
        token_mismatch=v.get("token_mismatch"),
    )


def prefix_cache_report(
    spec: ReplaySpec,
    main: Batch,
    probe: Batch | None,
    m_main: MetricsResult,
    m_probe: MetricsResult | None,
) -> PrefixCacheReport:
    """The with/without reset_prefix_cache measurement of one update.

    `main` is the batch the update is judged on, `probe` the same requests the other way
    (before the reset when the spec resets, after one when it does not; in flight, the next
    batch), both with their metrics against W_k.
    """
    if probe is None or m_probe is None:
        return PrefixCacheReport(measured=False)
    if spec.update_mode == "in_flight":
        return PrefixCacheReport(
            measured=False,
            note="in_flight: the next batch is reported instead",
            next_batch_vs_current=metric_summary(m_probe),
            next_batch_num_cached_tokens=probe.num_cached_tokens,
        )
    if spec.reset_prefix_cache:
        with_b, with_m, without_b, without_m = main, m_main, probe, m_probe
    else:
        with_b, with_m, without_b, without_m = probe, m_probe, main, m_main
    return PrefixCacheReport(
        measured=True,
        without_reset=CacheSide(
            metrics=metric_summary(without_m), num_cached_tokens=without_b.num_cached_tokens
        ),
        with_reset=CacheSide(
            metrics=metric_summary(with_m), num_cached_tokens=with_b.num_cached_tokens
        ),
        outputs=compare_batches(without_b, with_b),
    )


def _mean(xs: Sequence[object]) -> float | None:
    vals = list(scalar_values({str(i): x for i, x in enumerate(xs)}).values())
    return sum(vals) / len(vals) if vals else None


def prefix_cache_summary(
    baseline: Baseline, updates: Sequence[UpdateResult], unseeded: str | None = None
) -> PrefixCacheSummary:
    """What reset_prefix_cache measurably did over the whole replay, in numbers and words.

    `unseeded`: why two runs of the same requests sample different tokens on this engine
    (None: the seeds reproduce them); then only the cache hits and the metrics against W_k
    are compared, never the tokens."""
    control = baseline["prefix_cache_control"]
    measured = [u.prefix_cache for u in updates if u.prefix_cache["measured"]]
    if not measured:
        return PrefixCacheSummary(measured=False, control_at_w0=control)

    without = _mean([pc["without_reset"]["metrics"]["abs_diff_mean"] for pc in measured])
    with_ = _mean([pc["with_reset"]["metrics"]["abs_diff_mean"] for pc in measured])
    kl_without = _mean([pc["without_reset"]["metrics"]["kl_k3"] for pc in measured])
    kl_with = _mean([pc["with_reset"]["metrics"]["kl_k3"] for pc in measured])
    differ = sum(1 for pc in measured if not pc["outputs"]["identical"])
    hits = [sum(x or 0 for x in pc["without_reset"]["num_cached_tokens"]) for pc in measured]
    if unseeded is not None:
        words = _unseeded_words(unseeded, control, hits, (without, with_, kl_without, kl_with))
    elif differ == 0:
        words = (
            "reset_prefix_cache() changed nothing measurable: the requests after each "
            "update gave identical tokens and logprobs with and without it"
        )
    else:
        words = (
            f"without reset_prefix_cache() the engine served different outputs after "
            f"{differ} of {len(measured)} updates; mean abs_diff_mean against W_k "
            f"{fmt(without)} without the reset vs {fmt(with_)} with it "
            f"(kl_k3 {fmt(kl_without)} vs {fmt(kl_with)})"
        )
    if control["identical"] is False and unseeded is None:
        words += (
            "; note: at W0 a cached rerun already differs from the first run "
            f"(lr max diff {fmt(control['lr_abs_diff_max_on_common_tokens'])}), "
            "so caching alone changes numerics here"
        )
    return PrefixCacheSummary(
        measured=True,
        updates_measured=len(measured),
        updates_where_outputs_differ=differ,
        abs_diff_mean_vs_w_k_without_reset=without,
        abs_diff_mean_vs_w_k_with_reset=with_,
        kl_k3_vs_w_k_without_reset=kl_without,
        kl_k3_vs_w_k_with_reset=kl_with,
        cached_prompt_tokens_without_reset=hits,
        control_at_w0=control,
        summary=words,
    )


def _unseeded_words(
    unseeded: str,
    control: CacheControl,
    hits: list[int],
    means: tuple[float | None, float | None, float | None, float | None],
) -> str:
    """The summary where tokens cannot be compared: the cache hits and the metrics only."""
    without, with_, kl_without, kl_with = means
    control_hits = sum(x or 0 for x in control["num_cached_tokens"])
    if not any(hits) and control_hits:
        cache = (
            "the engine dropped its prefix cache itself at every update: no prompt token "
            f"came from the cache after an update without a reset ({control_hits} did in a "
            "rerun at W0)"
        )
    else:
        cache = (
            f"prompt tokens from the cache after each update without a reset: {hits} "
            f"({control_hits} in a rerun at W0)"
        )
    return (
        f"{cache}; mean abs_diff_mean against W_k {fmt(without)} without the reset vs "
        f"{fmt(with_)} with it (kl_k3 {fmt(kl_without)} vs {fmt(kl_with)}); tokens not "
        f"compared: {unseeded}"
    )
