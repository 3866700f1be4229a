"""parity.metrics against METRICS.md: properties, a slow reference, hand-computed examples."""

from __future__ import annotations

import json
import math
import statistics
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parity import metrics
from parity.metrics import (
    METRIC_KEYS,
    OPTIONAL_KEYS,
    MetricsResult,
    Thresholds,
    compute_metrics,
    verdict,
    worst_sequences,
)

pytestmark = pytest.mark.unit

FAST = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Metrics computed from raw moments in one pass (var = E[x^2] - E[x]^2) carry an absolute
# error of ~sqrt(eps) when the spread is tiny next to the mean; everything else is tight.
LOOSE = {"is_std": 1e-6, "prob_diff_std": 1e-6, "prob_pearson": 1e-6}


# --- a slow, obviously correct reference (loops on purpose) -------------------------------


def _clamp(x: float) -> float:
    return min(max(x, -20.0), 20.0)


def _quantile(sorted_vals: list[float], q: float) -> float:
    n = len(sorted_vals)
    h = (n - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, n - 1)
    a, b, t = sorted_vals[lo], sorted_vals[hi], h - lo
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def _pearson(x: list[float], y: list[float]) -> float | None:
    mx, my = _mean(x), _mean(y)
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    if sxx <= 1e-13 * math.fsum(a * a for a in x) or syy <= 1e-13 * math.fsum(b * b for b in y):
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def reference(
    lt: Sequence[float], lr: Sequence[float], seq_lens: Sequence[int], t: Thresholds | None = None
) -> dict[str, Any]:
    t = t or Thresholds()
    out: dict[str, Any] = {
        "nonfinite_trainer": sum(1 for x in lt if not math.isfinite(x)),
        "nonfinite_rollout": sum(1 for x in lr if not math.isfinite(x)),
    }
    seqs: list[list[tuple[float, float, int]]] = []
    i = 0
    for length in seq_lens:
        s = []
        for pos in range(length):
            if math.isfinite(lt[i]) and math.isfinite(lr[i]):
                s.append((float(lt[i]), float(lr[i]), pos))
            i += 1
        seqs.append(s)
    toks = [x for s in seqs for x in s]
    n = len(toks)
    out["n_tokens"] = n
    out["n_sequences"] = sum(1 for s in seqs if s)
    if n == 0:
        return out
    d = [a - b for a, b, _ in toks]
    dc = [_clamp(x) for x in d]
    rho = [math.exp(x) for x in dc]
    ad = sorted(abs(x) for x in d)
    pt = [math.exp(a) for a, _, _ in toks]
    pr = [math.exp(b) for _, b, _ in toks]
    pdiff = [abs(a - b) for a, b in zip(pt, pr, strict=True)]
    mean_rho = _mean(rho)
    out.update(
        abs_diff_mean=_mean(ad),
        abs_diff_max=ad[-1],
        abs_diff_p50=_quantile(ad, 0.5),
        abs_diff_p90=_quantile(ad, 0.9),
        abs_diff_p99=_quantile(ad, 0.99),
        abs_diff_p999=_quantile(ad, 0.999),
        rms_diff=math.sqrt(_mean([x * x for x in d])),
        bias=_mean(d),
        prob_diff_mean=_mean(pdiff),
        prob_diff_max=max(pdiff),
        prob_diff_std=statistics.pstdev(pdiff),
        prob_pearson=_pearson(pt, pr),
        kl_k1=_mean([b - a for a, b, _ in toks]),
        kl_k2=_mean([x * x / 2 for x in d]),
        kl_k3=_mean([math.expm1(x) - x for x in dc]),
        chi2_token=_mean([r * r for r in rho]) - 1,
        ess=1 / _mean([(r / mean_rho) ** 2 for r in rho]),
        is_mean=mean_rho,
        is_min=min(rho),
        is_max=max(rho),
        is_std=statistics.pstdev(rho),
        clip_rate=sum(1 for r in rho if r < 1 - t.eps_low or r > 1 + t.eps_high) / n,
        clip_rate_low=sum(1 for r in rho if r < 1 - t.eps_low) / n,
        clip_rate_high=sum(1 for r in rho if r > 1 + t.eps_high) / n,
        tis_clip_frac=sum(1 for r in rho if r > t.tis_c) / n,
        mis_masked_frac=sum(1 for r in rho if r < 1 / t.tis_c or r > t.tis_c) / n,
        bit_equal_frac=sum(1 for a, b, _ in toks if struct.pack("<d", a) == struct.pack("<d", b))
        / n,
        trainer_ppl=math.exp(-_mean([a for a, _, _ in toks])),
    )
    live = [s for s in seqs if s]
    big_s = [math.fsum(a - b for a, b, _ in s) for s in live]
    lpd = [_mean([b for _, b, _ in s]) - _mean([a for a, _, _ in s]) for s in live]
    out.update(
        seq_log_ratio_mean=_mean(big_s),
        seq_log_ratio_max=max(big_s),
        log_ppl_diff=_mean(lpd),
        ppl_ratio=_mean([math.exp(_clamp(x)) for x in lpd]),
        chi2_seq=_mean([math.exp(2 * _clamp(x)) for x in big_s]) - 1,
        seq_max_abs_diff_mean=_mean([max(abs(a - b) for a, b, _ in s) for s in live]),
        catastrophic_seq_frac=sum(1 for s in live if any(abs(a - b) > 1 for a, b, _ in s))
        / len(live),
        veto_frac=sum(1 for s in live if any(math.exp(_clamp(a - b)) < 1e-4 for a, b, _ in s))
        / len(live),
    )
    by_lr = []
    lr_edges = [-math.inf, -10, -5, -2, -0.5, math.inf]
    for lo, hi in zip(lr_edges[:-1], lr_edges[1:], strict=True):
        sel = [(a, b) for a, b, _ in toks if lo <= b < hi]
        by_lr.append(_ref_stratum(sel))
    by_pos = []
    for lo, hi in ((0, 15), (16, 63), (64, 255), (256, 10**9)):
        sel = [(a, b) for a, b, p in toks if lo <= p <= hi]
        by_pos.append(_ref_stratum(sel))
    out["_by_lr"] = by_lr
    out["_by_position"] = by_pos
    out["_per_seq_S"] = [math.fsum(a - b for a, b, _ in s) if s else None for s in seqs]
    out["_per_seq_max"] = [max(abs(a - b) for a, b, _ in s) if s else None for s in seqs]
    out["_abs_sorted"] = ad
    return out


def _ref_stratum(sel: list[tuple[float, float]]) -> tuple[int, float | None, float | None]:
    if not sel:
        return 0, None, None
    d = [a - b for a, b in sel]
    return (
        len(sel),
        _mean([abs(x) for x in d]),
        _mean([math.expm1(_clamp(x)) - _clamp(x) for x in d]),
    )


def _close(got: Any, want: Any, key: str, tol: float | None = None) -> None:
    if want is None:
        assert got is None, f"{key}: got {got!r}, want None"
        return
    assert got is not None, f"{key}: got None, want {want!r}"
    tol = LOOSE.get(key, 1e-9) if tol is None else tol
    assert math.isclose(got, want, rel_tol=1e-9, abs_tol=tol), f"{key}: {got!r} != {want!r}"


def assert_strata_close(
    got: list[dict[str, Any]], want: list[dict[str, Any]], totals: dict[str, Any]
) -> None:
    """Bucket by bucket. A bucket may be the totals minus the other buckets (the top lr
    bucket is), so its absolute error may scale with the total rather than the bucket."""
    n = totals["n_tokens"]
    for g, w in zip(got, want, strict=True):
        assert g["n_tokens"] == w["n_tokens"], (g, w)
        for key in ("abs_diff_mean", "kl_k3"):
            scale = 1e-13 * totals[key] * n / w["n_tokens"] if w["n_tokens"] else 0.0
            _close(g[key], w[key], f"{w['bucket']}.{key}", 1e-9 + scale)


def assert_matches_reference(res: MetricsResult, ref: dict[str, Any]) -> None:
    for key, want in ref.items():
        if key.startswith("_"):
            continue
        _close(res.values[key], want, key)
    if "_by_lr" not in ref:
        return
    for name in ("by_lr", "by_position"):
        want = [
            {"bucket": g["bucket"], "n_tokens": c, "abs_diff_mean": a, "kl_k3": k}
            for g, (c, a, k) in zip(res.strata[name], ref["_" + name], strict=True)
        ]
        assert_strata_close(res.strata[name], want, ref)
    for got, want in zip(res.per_sequence["seq_log_ratio"], ref["_per_seq_S"], strict=True):
        _close(got, want, "per_sequence.seq_log_ratio")
    for got, want in zip(res.per_sequence["max_abs_diff"], ref["_per_seq_max"], strict=True):
        _close(got, want, "per_sequence.max_abs_diff")
    h = res.histogram
    edges = h["edges"]
    want_counts = [0] * len(h["counts"])
    zeros = 0
    for x in ref["_abs_sorted"]:
        if x == 0:
            zeros += 1
            continue
        j = max(0, sum(1 for e in edges[1:-1] if x >= e))
        want_counts[j] += 1
    assert h["zeros"] == zeros
    assert h["counts"] == want_counts


# --- strategies -------------------------------------------------------------------------------


@st.composite
def batches(draw: Any, max_seqs: int = 6, max_len: int = 300) -> tuple[np.ndarray, ...]:
    """(lt, lr, seq_lens). Hypothesis picks the structure and the mixture; numpy the values,
    because drawing thousands of floats one by one makes every example slow."""
    # Mostly short sequences; sometimes one long enough for every position bucket.
    lens = draw(
        st.lists(st.integers(0, 40) | st.integers(0, max_len), min_size=1, max_size=max_seqs)
    )
    n = sum(lens)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # lr: near 0, anywhere down to -30, exactly 0, exactly on a stratum edge.
    w_lr = np.array(draw(st.tuples(*[st.integers(0, 3)] * 4))) + 1e-9
    lr_kind = rng.choice(4, size=n, p=w_lr / w_lr.sum())
    lr = np.select(
        [lr_kind == 0, lr_kind == 1, lr_kind == 2],
        [-rng.exponential(0.3, n), rng.uniform(-30.0, 0.0, n), np.zeros(n)],
        rng.choice(np.array(metrics.LR_EDGES), size=n),
    )
    # d: bit-identical, tiny, healthy noise, misconfiguration, past the clamp.
    w_d = np.array(draw(st.tuples(*[st.integers(0, 3)] * 5))) + 1e-9
    d_kind = rng.choice(5, size=n, p=w_d / w_d.sum())
    delta = np.select(
        [d_kind == 0, d_kind == 1, d_kind == 2, d_kind == 3],
        [
            np.zeros(n),
            rng.uniform(-1e-6, 1e-6, n),
            rng.normal(0.0, 0.02, n),
            rng.uniform(-3.0, 3.0, n),
        ],
        rng.uniform(-40.0, 40.0, n),
    )
    return lr + delta, lr, np.array(lens, dtype=np.int64)


@contextmanager
def tiny_blocks(block: int = 37, dot_slice: int = 5) -> Iterator[None]:
    """Blocks much shorter than sequences, so block edges cut pieces everywhere."""
    with (
        mock.patch.object(metrics, "_BLOCK", block),
        mock.patch.object(metrics, "_DOT_SLICE", dot_slice),
    ):
        yield


@contextmanager
def quantile_misses() -> Iterator[None]:
    """Predict the quantile bins from one sample point, so the fallback pass runs."""
    with mock.patch.object(metrics, "_QSAMPLE", 1), mock.patch.object(metrics, "_QSIGMA", 0.0):
        yield


# --- properties ------------------------------------------------------------------------------


@FAST
@given(batches())
def test_matches_slow_reference(batch: tuple[np.ndarray, ...]) -> None:
    lt, lr, lens = batch
    ref = reference(lt.tolist(), lr.tolist(), lens.tolist())
    assert_matches_reference(compute_metrics(lt, lr, lens), ref)


@FAST
@given(batches())
def test_matches_slow_reference_across_block_edges(batch: tuple[np.ndarray, ...]) -> None:
    lt, lr, lens = batch
    ref = reference(lt.tolist(), lr.tolist(), lens.tolist())
    with tiny_blocks():
        assert_matches_reference(compute_metrics(lt, lr, lens), ref)


@FAST
@given(st.integers(0, 200), st.integers(1, 64), st.integers(0, 2**32 - 1), st.booleans())
def test_dot_equals_an_exact_sum_of_products(n: int, dot_slice: int, seed: int, old: bool) -> None:
    # Row-wise vecdot over whole slices plus the remainder (numpy >= 2), or the slice loop.
    rng = np.random.default_rng(seed)
    x, y = rng.normal(0.0, 1.0, n), rng.exponential(1.0, n)
    want = math.fsum((x * y).tolist())
    scale = math.fsum(np.abs(x * y).tolist())
    with mock.patch.object(metrics, "_DOT_SLICE", dot_slice):
        with mock.patch.object(metrics, "_vecdot", None if old else metrics._vecdot):
            got = metrics._dot(x, y)
    assert abs(got - want) <= 1e-13 * scale


@FAST
@given(batches())
def test_quantiles_exact_when_the_bin_prediction_misses(batch: tuple[np.ndarray, ...]) -> None:
    lt, lr, lens = batch
    with quantile_misses(), tiny_blocks():
        res = compute_metrics(lt, lr, lens)
    if lt.size:
        a = np.abs(lt - lr)
        for name, q in metrics.QUANTILES:
            assert res.values[name] == float(np.quantile(a, q))


@FAST
@given(batches())
def test_identical_inputs_have_no_gap(batch: tuple[np.ndarray, ...]) -> None:
    _, lr, lens = batch
    v = compute_metrics(lr.copy(), lr, lens).values
    if lr.size == 0:
        return
    for key in (
        "abs_diff_mean",
        "abs_diff_max",
        "abs_diff_p50",
        "abs_diff_p90",
        "abs_diff_p99",
        "abs_diff_p999",
        "rms_diff",
        "bias",
        "kl_k1",
        "kl_k2",
        "kl_k3",
        "chi2_token",
        "clip_rate",
        "clip_rate_low",
        "clip_rate_high",
        "tis_clip_frac",
        "mis_masked_frac",
        "prob_diff_mean",
        "prob_diff_max",
        "is_std",
        "seq_log_ratio_mean",
        "log_ppl_diff",
        "chi2_seq",
        "seq_max_abs_diff_mean",
        "catastrophic_seq_frac",
        "veto_frac",
    ):
        assert v[key] == 0.0, key
    assert v["ess"] == 1.0
    assert v["is_mean"] == v["is_min"] == v["is_max"] == v["ppl_ratio"] == 1.0
    assert v["bit_equal_frac"] == 1.0


@FAST
@given(
    st.integers(1, 300),
    st.integers(0, 2**32 - 1),
    st.sampled_from([1e-300, 1e-12, 1e-9, 1e-6, 1e-3, 1.0, 30.0]),
)
def test_kl_k3_is_never_negative(n: int, seed: int, scale: float) -> None:
    # Gaps down to subnormal size, where expm1(d) - d is all rounding.
    rng = np.random.default_rng(seed)
    lr = rng.uniform(-50.0, 0.0, n)
    for lt in (lr + rng.uniform(-scale, scale, n), lr + scale, lr - scale, lr[::-1].copy()):
        res = compute_metrics(lt, lr, [n])
        assert res.values["kl_k3"] is not None and res.values["kl_k3"] >= 0.0
        for strata in res.strata.values():
            assert all(b["kl_k3"] is None or b["kl_k3"] >= 0.0 for b in strata)


@FAST
@given(batches(), st.randoms(use_true_random=False))
def test_reordering_sequences_changes_no_aggregate(batch: tuple[np.ndarray, ...], rnd: Any) -> None:
    lt, lr, lens = batch
    order = list(range(lens.size))
    rnd.shuffle(order)
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
    idx = np.concatenate([np.arange(starts[s], starts[s] + lens[s]) for s in order]).astype(
        np.int64
    )
    a = compute_metrics(lt, lr, lens)
    b = compute_metrics(lt[idx], lr[idx], lens[order])
    for key, va in a.values.items():
        _close(b.values[key], va, key)
    if a.values["n_tokens"]:
        for name in ("by_lr", "by_position"):
            assert_strata_close(b.strata[name], a.strata[name], a.values)
    assert a.histogram == b.histogram
    for key in ("seq_log_ratio", "max_abs_diff", "abs_diff_mean"):
        for j, s in enumerate(order):
            _close(b.per_sequence[key][j], a.per_sequence[key][s], key)


_bad = st.sampled_from([math.nan, math.inf, -math.inf])


@FAST
@given(batches(), st.data())
def test_nonfinite_is_counted_and_never_propagates(
    batch: tuple[np.ndarray, ...], data: Any
) -> None:
    lt, lr, lens = batch
    n = lt.size
    if n == 0:
        return
    bad_t = data.draw(st.lists(st.integers(0, n - 1), max_size=5))
    bad_r = data.draw(st.lists(st.integers(0, n - 1), max_size=5))
    lt2, lr2 = lt.copy(), lr.copy()
    for i in bad_t:
        lt2[i] = data.draw(_bad)
    for i in bad_r:
        lr2[i] = data.draw(_bad)
    res = compute_metrics(lt2, lr2, lens)
    # lt = -inf against a finite lr is the truncation boundary, not a trainer fault.
    boundary = {i for i in bad_t if lt2[i] == -math.inf and math.isfinite(lr2[i])}
    assert res.values["truncation_boundary"] == len(boundary)
    assert res.values["nonfinite_trainer"] == len(set(bad_t) - boundary)
    assert res.values["nonfinite_rollout"] == len(set(bad_r))

    keep = np.isfinite(lt2) & np.isfinite(lr2)
    seq_of = np.repeat(np.arange(lens.size), lens)
    kept_lens = np.bincount(seq_of[keep], minlength=lens.size)
    clean = compute_metrics(lt[keep], lr[keep], kept_lens)
    for key, want in clean.values.items():
        if key in (
            "nonfinite_trainer",
            "nonfinite_rollout",
            "truncation_boundary",
            "truncation_boundary_frac",
        ):
            continue
        _close(res.values[key], want, key)
    # Positions stay those of the original sequence, so the pieces that are summed differ
    # and sums may differ in the last bit.
    if clean.values["n_tokens"]:
        assert_strata_close(res.strata["by_lr"], clean.strata["by_lr"], clean.values)
    assert res.histogram == clean.histogram
    assert res.scatter == clean.scatter
    assert res.per_sequence["n_tokens"] == clean.per_sequence["n_tokens"]
    for key in ("seq_log_ratio", "max_abs_diff", "abs_diff_mean"):
        for got, want in zip(res.per_sequence[key], clean.per_sequence[key], strict=True):
            _close(got, want, key)
    json.dumps(res.to_dict(), allow_nan=False)
    if bad_t or bad_r:
        assert res.verdict == "fail"


@FAST
@given(batches())
def test_output_is_plain_json(batch: tuple[np.ndarray, ...]) -> None:
    lt, lr, lens = batch
    res = compute_metrics(lt.astype(np.float32), lr.astype(np.float32), lens, scatter_max_points=50)
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert set(d) == {
        "values",
        "strata",
        "histogram",
        "scatter",
        "per_sequence",
        "verdict",
        "reasons",
    }
    for key, v in res.values.items():
        assert v is None or type(v) in (int, float), (key, type(v))
    assert list(res.values) == [k for k in METRIC_KEYS if k not in OPTIONAL_KEYS]
    assert len(res.scatter["lr"]) == len(res.scatter["lt"]) == min(50, lt.size)
    assert sum(res.histogram["counts"]) + res.histogram["zeros"] == res.values["n_tokens"]


# --- input errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lt", "lr", "seq_lens", "message"),
    [
        ([0.0, -1.0], [0.0, -1.0], [1], "sum to 1 but lt and lr have 2 tokens"),
        ([0.0, -1.0], [0.0], None, "lr has 1 entries but lt has 2"),
        ([0.0, -1.0], [0.0, -1.0], [3, -1], r"seq_lens must be >= 0, seq_lens\[1\] = -1"),
        ([0.0, -1.0], [0.0, -1.0], [1.0, 1.0], "seq_lens must be integers"),
        ([[0.0, -1.0]], [[0.0, -1.0]], None, "lt must be 1-D"),
        ([0.0], [0.0], [[1]], "seq_lens must be 1-D"),
    ],
)
def test_bad_inputs_raise_clear_errors(lt: Any, lr: Any, seq_lens: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(lt, lr, seq_lens)


def test_optional_inputs_must_match_length() -> None:
    with pytest.raises(ValueError, match="token_ids has 1 entries but lt has 2"):
        compute_metrics([0.0, 0.0], [0.0, 0.0], token_ids=[1])
    with pytest.raises(ValueError, match=r"trainer_topk must have shape \(n_tokens=2, k\)"):
        compute_metrics([0.0, 0.0], [0.0, 0.0], trainer_topk=[1, 2], rollout_topk=[[1], [2]])


def test_unknown_threshold_is_named() -> None:
    with pytest.raises(ValueError, match="unknown threshold 'fail_abs_dif_mean'"):
        Thresholds.from_dict({"fail_abs_dif_mean": 0.2})
    with pytest.raises(ValueError, match="eps_low"):
        Thresholds.from_dict({"eps_low": 1.5})
    assert Thresholds.from_dict(None) == Thresholds()
    assert Thresholds.from_dict({"tis_c": 4}).tis_c == 4.0


# --- hand-computed examples ------------------------------------------------------------------


def test_known_rho_gives_known_clip_rates() -> None:
    # rho = 3, 0.25, 1, 1.1: one above 1.2 and above C=2, one below 0.8 and below 1/C.
    rho = np.array([3.0, 0.25, 1.0, 1.1])
    lr = np.full(4, -1.0)
    v = compute_metrics(lr + np.log(rho), lr).values
    assert v["clip_rate_high"] == 0.25
    assert v["clip_rate_low"] == 0.25
    assert v["clip_rate"] == 0.5
    assert v["tis_clip_frac"] == 0.25
    assert v["mis_masked_frac"] == 0.5
    assert v["is_max"] == pytest.approx(3.0)
    assert v["is_min"] == pytest.approx(0.25)
    assert v["is_mean"] == pytest.approx(5.35 / 4)
    # Wider epsilons from the project settings: rho 1.1 and 3 are inside [0.5, 3.5].
    v = compute_metrics(
        lr + np.log(rho), lr, thresholds=Thresholds(eps_low=0.5, eps_high=2.5)
    ).values
    assert v["clip_rate"] == 0.25


def test_known_rho_gives_known_ess_and_chi2() -> None:
    # rho = 1, 3: mean 2, mean square 5 -> ess 4/5, chi2 4.
    v = compute_metrics(np.array([-1.0, math.log(3.0) - 1.0]), np.array([-1.0, -1.0])).values
    assert v["ess"] == pytest.approx(0.8)
    assert v["chi2_token"] == pytest.approx(4.0)
    assert v["is_std"] == pytest.approx(1.0)


def test_known_small_batch() -> None:
    # Two sequences: d = [0.1, -0.3] and [1.5].
    lr = np.array([-0.2, -1.0, -3.0])
    lt = lr + np.array([0.1, -0.3, 1.5])
    res = compute_metrics(lt, lr, [2, 1])
    v = res.values
    assert v["n_tokens"] == 3 and v["n_sequences"] == 2
    assert v["abs_diff_mean"] == pytest.approx(1.9 / 3)
    assert v["abs_diff_max"] == pytest.approx(1.5)
    assert v["abs_diff_p50"] == pytest.approx(0.3)
    assert v["abs_diff_p90"] == pytest.approx(0.3 + 0.8 * 1.2)
    assert v["bias"] == pytest.approx(1.3 / 3)
    assert v["kl_k1"] == pytest.approx(-1.3 / 3)
    assert v["kl_k2"] == pytest.approx((0.01 + 0.09 + 2.25) / 6)
    k3 = [math.exp(x) - 1 - x for x in (0.1, -0.3, 1.5)]
    assert v["kl_k3"] == pytest.approx(sum(k3) / 3)
    assert v["seq_log_ratio_mean"] == pytest.approx((-0.2 + 1.5) / 2)
    assert v["seq_log_ratio_max"] == pytest.approx(1.5)
    assert v["log_ppl_diff"] == pytest.approx((0.1 - 1.5) / 2)
    assert v["ppl_ratio"] == pytest.approx((math.exp(0.1) + math.exp(-1.5)) / 2)
    assert v["chi2_seq"] == pytest.approx((math.exp(-0.4) + math.exp(3.0)) / 2 - 1)
    assert v["seq_max_abs_diff_mean"] == pytest.approx((0.3 + 1.5) / 2)
    assert v["catastrophic_seq_frac"] == 0.5
    assert v["veto_frac"] == 0.0
    assert v["trainer_ppl"] == pytest.approx(math.exp(-float(lt.mean())))
    assert res.per_sequence["seq_log_ratio"] == pytest.approx([-0.2, 1.5])
    assert res.per_sequence["n_tokens"] == [2, 1]
    by_lr = {b["bucket"]: b for b in res.strata["by_lr"]}
    assert by_lr["[-5,-2)"]["n_tokens"] == 1
    assert by_lr["[-5,-2)"]["abs_diff_mean"] == pytest.approx(1.5)
    assert by_lr["[-2,-0.5)"]["n_tokens"] == 1
    assert by_lr["[-0.5,0]"]["n_tokens"] == 1
    assert by_lr["[-inf,-10)"] == {
        "bucket": "[-inf,-10)",
        "lo": None,
        "hi": -10.0,
        "n_tokens": 0,
        "abs_diff_mean": None,
        "kl_k3": None,
    }
    assert [b["n_tokens"] for b in res.strata["by_position"]] == [3, 0, 0, 0]


def test_positions_are_bucketed_within_each_sequence() -> None:
    lens = [300, 20]
    lt = np.zeros(320)
    lr = np.zeros(320)
    lt[299] = 0.5  # position 299 of sequence 0
    lt[300 + 17] = 0.25  # position 17 of sequence 1
    res = compute_metrics(lt, lr, lens)
    pos = {b["bucket"]: b for b in res.strata["by_position"]}
    assert [pos[k]["n_tokens"] for k in ("0-15", "16-63", "64-255", "256+")] == [32, 52, 192, 44]
    assert pos["256+"]["abs_diff_mean"] == pytest.approx(0.5 / 44)
    assert pos["16-63"]["abs_diff_mean"] == pytest.approx(0.25 / 52)
    assert pos["0-15"]["abs_diff_mean"] == 0.0


def test_veto_and_clamp() -> None:
    # d = -10 gives rho 4.5e-5 < 1e-4 (veto); d = 50 is clamped to 20 before exp.
    lr = np.array([-0.1, -60.0, -0.5])
    lt = np.array([-10.1, -10.0, -0.5])
    res = compute_metrics(lt, lr, [1, 2])
    v = res.values
    assert v["veto_frac"] == 0.5
    assert v["is_max"] == pytest.approx(math.exp(20.0))
    assert v["is_min"] == pytest.approx(math.exp(-10.0))
    assert v["abs_diff_max"] == 50.0
    assert v["kl_k3"] == pytest.approx((math.expm1(-10) + 10 + math.expm1(20) - 20) / 3)
    # Probabilities are not clamped: |exp(lt) - exp(lr)| of the real values.
    want = [abs(math.exp(a) - math.exp(b)) for a, b in zip(lt, lr, strict=True)]
    assert v["prob_diff_max"] == pytest.approx(max(want))
    assert v["prob_diff_mean"] == pytest.approx(sum(want) / 3)
    assert v["chi2_seq"] == pytest.approx((math.exp(-20) + math.exp(40)) / 2 - 1)


def test_every_rho_tiny() -> None:
    # rho = exp(-20) everywhere: equal weights, so ess is 1 and is_mean is exp(-20) itself
    # (built from 1 + E[rho - 1] it would cancel to noise).
    v = compute_metrics(np.full(5, -40.0), np.zeros(5)).values
    assert v["ess"] == pytest.approx(1.0)
    assert v["is_mean"] == pytest.approx(math.exp(-20.0), rel=1e-6)
    assert v["chi2_token"] == pytest.approx(-1.0)
    assert v["veto_frac"] == 1.0


def test_bit_equal_distinguishes_signed_zero() -> None:
    v = compute_metrics([0.0, -0.0, -1.0, -1.0], [-0.0, -0.0, -1.0, -1.5]).values
    assert v["bit_equal_frac"] == 0.5
    assert compute_metrics([-0.0], [0.0]).histogram["zeros"] == 1


def test_pearson_is_none_without_variance() -> None:
    v = compute_metrics(np.full(10, -0.3), np.full(10, -0.5)).values
    assert v["prob_pearson"] is None
    v = compute_metrics(np.array([-0.1, -0.2, -0.3]), np.array([-0.1, -0.25, -0.3])).values
    assert 0.9 < v["prob_pearson"] <= 1.0


def test_no_tokens() -> None:
    res = compute_metrics([], [], [0, 0])
    assert res.values["n_tokens"] == 0 and res.values["n_sequences"] == 0
    assert res.values["abs_diff_mean"] is None and res.values["kl_k3"] is None
    assert res.per_sequence["max_abs_diff"] == [None, None]
    assert res.verdict == "warn"
    json.dumps(res.to_dict(), allow_nan=False)
    everything_nan = compute_metrics([math.nan, 0.0], [0.0, math.inf])
    assert everything_nan.values["nonfinite_trainer"] == 1
    assert everything_nan.values["nonfinite_rollout"] == 1
    assert everything_nan.values["n_tokens"] == 0
    assert everything_nan.verdict == "fail"


def test_tokens_outside_the_trainers_support_are_a_truncation_boundary_not_a_fault() -> None:
    # METRICS.md: finite lr, lt = -inf is the truncation boundary, counted apart and left out
    # of every other metric; NaN or +inf on the trainer side is still a fault.
    lt = [-1.0, -math.inf, -0.5, -0.25, math.nan]
    lr = [-1.0, -2.0, -0.5, -0.25, -0.3]
    res = compute_metrics(lt, lr, [3, 2])
    assert res.values["truncation_boundary"] == 1
    assert res.values["truncation_boundary_frac"] == pytest.approx(1 / 5)
    assert res.values["nonfinite_trainer"] == 1  # the NaN only
    assert res.values["n_tokens"] == 3 and res.values["abs_diff_mean"] == 0.0
    assert res.verdict == "fail"  # the NaN
    only_boundary = compute_metrics(lt[:4], lr[:4], [4])
    assert only_boundary.values["nonfinite_trainer"] == 0
    assert only_boundary.values["truncation_boundary"] == 1
    # 1 of 4 is far above the 1e-2 fail rule, and the reason says what happened.
    assert only_boundary.verdict == "fail"
    assert only_boundary.reasons[0].startswith("truncation_boundary_frac 0.25 > 0.01 (fail): 1 ")
    clean = compute_metrics([-1.0, -0.5], [-1.0, -0.5])
    assert clean.values["truncation_boundary"] == 0
    assert clean.values["truncation_boundary_frac"] == 0.0


def test_overflowing_inputs_stay_json() -> None:
    # Finite but absurd log-probs: d overflows to inf; nothing may turn into inf/NaN output.
    res = compute_metrics([1e308, -0.5], [-1e308, -0.5], [1, 1])
    json.dumps(res.to_dict(), allow_nan=False)
    assert res.values["nonfinite_trainer"] == res.values["nonfinite_rollout"] == 0
    assert res.values["abs_diff_max"] is None and res.values["rms_diff"] is None
    assert sum(res.histogram["counts"]) + res.histogram["zeros"] == 2


def test_empty_sequences_are_skipped_by_sequence_metrics() -> None:
    res = compute_metrics([-1.0, -2.0], [-1.5, -2.0], [0, 1, 0, 1, 0])
    assert res.values["n_sequences"] == 2
    assert res.values["catastrophic_seq_frac"] == 0.0
    assert res.per_sequence["seq_log_ratio"] == [None, 0.5, None, 0.0, None]
    assert worst_sequences(res) == [1, 3]


def test_agreement_metrics() -> None:
    lt = np.array([-0.1, -0.2, -0.3, -0.4])
    lr = lt.copy()
    res = compute_metrics(
        lt,
        lr,
        [2, 2],
        entropy=np.full(4, 0.5),
        token_ids=[5, 6, 5, 6],
        trainer_token_ids=[5, 6, 5, 7],
        trainer_argmax=[5, 1, 2, 3],
        rollout_argmax=[5, 1, 9, 9],
        trainer_topk=[[5, 0], [6, 1], [2, 5], [3, 0]],
        rollout_topk=[[5, 1], [1, 6], [9, 2], [9, 0]],
    )
    v = res.values
    assert v["token_mismatch"] == 1
    assert v["argmax_agree"] == 0.5
    # Rollout token in trainer top-k and trainer top-1 in rollout top-k: positions 0, 1, 2.
    assert v["topk_containment"] == 0.75
    assert v["distinct_2"] == 1.0
    assert v["kl_ent_ratio"] == 0.0
    assert res.verdict == "fail"
    assert "token_mismatch 1 > 0 (fail): " + WORDS["token_mismatch"] in res.reasons
    rep = compute_metrics([0.0] * 5, [0.0] * 5, [5], token_ids=[1, 2, 1, 2, 1]).values
    assert rep["distinct_2"] == pytest.approx(2 / 4)


def test_kl_ent_ratio() -> None:
    lr = np.array([-1.0, -1.0])
    lt = lr + np.array([0.1, -0.1])
    v = compute_metrics(lt, lr, entropy=[2.0, 4.0]).values
    assert v["kl_ent_ratio"] == pytest.approx(v["kl_k3"] / 3.0)
    assert compute_metrics(lt, lr, entropy=[0.0, 0.0]).values["kl_ent_ratio"] is None


def test_histogram_is_log_spaced_and_exact() -> None:
    a = np.array([0.0, 1e-12, 1e-6, 1e-3, 0.5, 25.0])
    res = compute_metrics(-a, np.zeros(a.size), hist_bins=30)
    h = res.histogram
    edges = np.array(h["edges"])
    assert len(edges) == 31 and np.all(np.diff(edges) > 0)
    assert edges[0] == pytest.approx(1e-8, rel=0.05)
    assert edges[-1] > 25.0
    ratios = edges[1:] / edges[:-1]
    assert ratios.max() / ratios.min() < 1.2  # log-spaced up to the snapping
    assert h["zeros"] == 1
    assert sum(h["counts"]) == 5
    assert h["counts"][0] == 1  # 1e-12 lies below edges[0] and is kept in the first bin


def test_scatter_is_bounded_and_seeded() -> None:
    rng = np.random.default_rng(1)
    lr = -rng.exponential(size=5000)
    lt = lr + rng.normal(0, 0.01, 5000)
    a = compute_metrics(lt, lr, scatter_max_points=100, seed=3).scatter
    b = compute_metrics(lt, lr, scatter_max_points=100, seed=3).scatter
    c = compute_metrics(lt, lr, scatter_max_points=100, seed=4).scatter
    assert a == b and a != c and len(a["lr"]) == 100
    i = int(np.flatnonzero(lr == a["lr"][0])[0])
    assert a["lt"][0] == lt[i]


def test_worst_sequences_by_max_then_abs_sum() -> None:
    lr = np.zeros(6)
    lt = np.array([0.5, 0.0, -0.5, -0.5, 0.9, 0.1])
    res = compute_metrics(lt, lr, [1, 1, 2, 1, 1])
    # max |d|: [0.5, 0, 0.5, 0.9, 0.1]; sequences 0 and 2 tie on 0.5, |S| 0.5 vs 1.0.
    assert worst_sequences(res, k=3) == [3, 2, 0]
    assert worst_sequences(res, k=0) == []


# --- verdict ---------------------------------------------------------------------------------

# Every fail or warn says, in words a user can act on, what the rule it tripped means.
WORDS = {
    "nonfinite_trainer": (
        "the trainer returned NaN/inf log-probs for these tokens (not the truncation boundary): "
        "check its dtype and inputs for overflow"
    ),
    "nonfinite_rollout": "the engine returned NaN/inf log-probs for these tokens",
    "token_mismatch": (
        "the trainer scored tokens other than the ones the engine sampled: the comparison itself "
        "is broken at those positions"
    ),
    "abs_diff_mean": (
        "the two sides disagree by this many nats per token on average; healthy runs are about "
        "0.01-0.03"
    ),
    "kl_k1": (
        "the k1 estimate of KL(rollout || trainer) is this large; it cancels between tokens, so a"
        " large value is a systematic offset"
    ),
    "kl_k3": (
        "the k3 estimate of KL(rollout || trainer), the one verl and prime-rl log, is above what "
        "a healthy run shows"
    ),
    "chi2_token": ("the importance ratios spread this much: off-policy corrections will be noisy"),
    "ess": "the importance weights are worth only this share of the tokens as samples",
    "clip_rate": (
        "this share of tokens would already be clipped by PPO at step 0 "
        "(ratio outside [1 - eps_low, 1 + eps_high])"
    ),
    "catastrophic_seq_frac": (
        "this share of sequences has a token whose probability is off by more than a factor e"
    ),
}

HEALTHY = {
    "n_tokens": 100,
    "nonfinite_trainer": 0,
    "nonfinite_rollout": 0,
    "abs_diff_mean": 0.01,
    "kl_k1": 0.0,
    "kl_k3": 1e-4,
    "chi2_token": 0.01,
    "ess": 0.99,
    "clip_rate": 0.0,
    "catastrophic_seq_frac": 0.0,
}


@pytest.mark.parametrize(
    ("change", "want", "reason"),
    [
        ({}, "pass", None),
        (
            {"nonfinite_trainer": 2},
            "fail",
            "nonfinite_trainer 2 > 0 (fail): " + WORDS["nonfinite_trainer"],
        ),
        (
            {"nonfinite_rollout": 1},
            "fail",
            "nonfinite_rollout 1 > 0 (fail): " + WORDS["nonfinite_rollout"],
        ),
        ({"token_mismatch": 3}, "fail", "token_mismatch 3 > 0 (fail): " + WORDS["token_mismatch"]),
        (
            {"abs_diff_mean": 0.142},
            "fail",
            "abs_diff_mean 0.142 > 0.1 (fail): " + WORDS["abs_diff_mean"],
        ),
        ({"kl_k1": -0.2}, "fail", "|kl_k1| 0.2 > 0.1 (fail): " + WORDS["kl_k1"]),
        ({"chi2_token": 1.5}, "fail", "chi2_token 1.5 > 1 (fail): " + WORDS["chi2_token"]),
        ({"ess": 0.2}, "fail", "ess 0.2 < 0.3 (fail): " + WORDS["ess"]),
        (
            {"abs_diff_mean": 0.05},
            "warn",
            "abs_diff_mean 0.05 > 0.03 (warn): " + WORDS["abs_diff_mean"],
        ),
        ({"kl_k3": 0.002}, "warn", "kl_k3 0.002 > 0.001 (warn): " + WORDS["kl_k3"]),
        ({"clip_rate": 0.02}, "warn", "clip_rate 0.02 > 0.01 (warn): " + WORDS["clip_rate"]),
        (
            {"catastrophic_seq_frac": 0.01},
            "warn",
            "catastrophic_seq_frac 0.01 > 0 (warn): " + WORDS["catastrophic_seq_frac"],
        ),
        ({"n_tokens": 0}, "warn", "n_tokens 0: no finite tokens to compare (warn)"),
        (
            {"truncation_boundary": 3, "truncation_boundary_frac": 3 / 512},
            "warn",
            "truncation_boundary_frac 0.00586 > 0.001 (warn): 3 sampled tokens (0.59%) fell "
            "outside the trainer's own top-p/top-k/min-p support (lt = -inf) and are left out "
            "of every other metric; near the cut-off a tiny logit difference moves a token "
            "across it",
        ),
        (
            {"truncation_boundary": 20, "truncation_boundary_frac": 0.02},
            "fail",
            "truncation_boundary_frac 0.02 > 0.01 (fail): 20 sampled tokens (2%) fell "
            "outside the trainer's own top-p/top-k/min-p support (lt = -inf) and are left out "
            "of every other metric; near the cut-off a tiny logit difference moves a token "
            "across it",
        ),
    ],
)
def test_verdict_for_each_threshold(
    change: dict[str, float], want: str, reason: str | None
) -> None:
    got, reasons = verdict({**HEALTHY, **change})
    assert got == want
    assert reasons == ([] if reason is None else [reason])


def test_verdict_lists_fail_and_warn_reasons_and_skips_none() -> None:
    got, reasons = verdict({**HEALTHY, "ess": 0.1, "clip_rate": 0.5, "kl_k3": None})
    assert got == "fail"
    assert reasons == [
        "ess 0.1 < 0.3 (fail): " + WORDS["ess"],
        "clip_rate 0.5 > 0.01 (warn): " + WORDS["clip_rate"],
    ]


def test_project_thresholds_change_the_verdict() -> None:
    t = Thresholds.from_dict({"warn_abs_diff_mean": 0.005})
    assert verdict(HEALTHY, t)[0] == "warn"
    lr = np.full(1000, -0.7)
    res = compute_metrics(lr + 0.01, lr, thresholds=t)
    assert res.verdict == "warn"
    assert res.reasons == ["abs_diff_mean 0.01 > 0.005 (warn): " + WORDS["abs_diff_mean"]]
