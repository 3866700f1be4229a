"""parity.metrics' blocked pass against a straightforward whole-array numpy computation.

The slow loop reference in test_metrics.py checks the definitions on small batches; this one
checks the fast path where it is fast: a few 64K-token blocks, the real block and dot-slice
sizes, float64 and float32 inputs, every optional panel.

What must be bit-identical and why: counts, maxima, minima, the quantiles (order statistics
and numpy's own lerp), the clip/TIS/MIS fractions (counts of rho past a cut), the veto and
catastrophic fractions, per-sequence max |d|, the histogram and every stratum count are
computed from the same float64 values by the same operations, only in blocks.

What may differ and by how much: everything that is a sum is added in another order (per
block, BLAS dots and einsum's SIMD lanes where numpy's reference is pairwise), so it agrees
to a relative 1e-12 (observed ~1e-15). Three exceptions are stated where they are checked:
the variances from raw moments (`is_std`, `prob_diff_std`, `prob_pearson`), which the module
documents to an absolute ~1e-8; the lr strata, differences of sums below each edge, which
are good to ~1e-16 of the sums below their upper edge; and exp(lt) - exp(lr), which the pass
forms as exp(lr) * expm1(d) (more accurate than the reference's own difference).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from parity import metrics
from parity.metrics import CLAMP, QUANTILES, Thresholds, compute_metrics

REL = 1e-12
# Sums of a few 100K terms in another order: far above the ~1e-15 seen, far below any
# difference a user could see.
MOMENTS = 1e-8  # the module's documented absolute error of variances from raw moments


def make_batch(seed: int, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """~200K tokens (several blocks) in sequences of 0..2000: confident and tail lr, healthy
    noise with bit-equal, misconfigured and past-the-clamp d, NaN, inf and the truncation
    boundary."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(150_000, 260_000))
    cuts = np.sort(rng.integers(0, n + 1, size=n // 700))
    lens = np.diff(np.concatenate(([0], cuts, [n])))
    confident = np.log(rng.beta(8.0, 0.6, n))
    tail = -0.5 - rng.exponential(3.0, n)
    lr = np.where(rng.random(n) < 0.85, confident, tail).clip(-40.0, 0.0)
    kind = rng.choice(4, size=n, p=[0.1, 0.85, 0.049, 0.001])
    noise = np.select(
        [kind == 0, kind == 1, kind == 2],
        [np.zeros(n), rng.normal(0.0, 0.02, n), rng.uniform(-3.0, 3.0, n)],
        rng.uniform(-40.0, 40.0, n),
    )
    lt = np.minimum(lr + noise, 0.0)
    lt[rng.integers(0, n, 5)] = np.nan
    lr[rng.integers(0, n, 3)] = np.inf
    lt[rng.integers(0, n, 7)] = -np.inf  # the truncation boundary
    return lt.astype(dtype), lr.astype(dtype), lens


def reference(lt_in: np.ndarray, lr_in: np.ndarray, lens: np.ndarray) -> dict[str, Any]:
    """METRICS.md, one numpy expression per metric over whole arrays: no blocks."""
    t = Thresholds()
    lt_all, lr_all = lt_in.astype(np.float64), lr_in.astype(np.float64)
    fin = np.isfinite(lt_all) & np.isfinite(lr_all)
    seq_all = np.repeat(np.arange(lens.size), lens)
    pos_all = np.arange(lt_all.size) - np.repeat(np.cumsum(lens) - lens, lens)
    lt, lr, seq, pos = lt_all[fin], lr_all[fin], seq_all[fin], pos_all[fin]
    n = lt.size
    d = lt - lr
    a = np.abs(d)
    dc = np.clip(d, -CLAMP, CLAMP)
    rho = np.exp(dc)
    pt, pr = np.exp(lt), np.exp(lr)
    pdiff = np.abs(pt - pr)
    per_seq_n = np.bincount(seq, minlength=lens.size)
    has = per_seq_n > 0
    big_s = np.bincount(seq, weights=d, minlength=lens.size)[has]
    starts = np.flatnonzero(np.r_[True, seq[1:] != seq[:-1]])
    seq_max = np.maximum.reduceat(a, starts)
    seq_min = np.minimum.reduceat(d, starts)
    lpd = -big_s / per_seq_n[has]
    return {
        "values": {
            "n_tokens": n,
            "n_sequences": int(has.sum()),
            "abs_diff_mean": a.mean(),
            "abs_diff_max": a.max(),
            **{name: float(np.quantile(a, q)) for name, q in QUANTILES},
            "rms_diff": math.sqrt(np.mean(d * d)),
            "bias": d.mean(),
            "kl_k1": np.mean(lr - lt),
            "kl_k2": np.mean(d * d / 2),
            "kl_k3": np.mean(np.expm1(dc) - dc),
            "chi2_token": np.mean(rho * rho) - 1,
            "ess": 1 / np.mean((rho / rho.mean()) ** 2),
            "is_mean": rho.mean(),
            # exp is monotone: the extreme rho is the exp of the extreme d, taken with libm's
            # exp as the module does (numpy's SIMD exp may differ from it by an ulp).
            "is_min": math.exp(dc.min()),
            "is_max": math.exp(dc.max()),
            "is_std": rho.std(),
            "prob_diff_mean": pdiff.mean(),
            "prob_diff_max": pdiff.max(),
            "prob_diff_std": pdiff.std(),
            "prob_pearson": float(np.corrcoef(pt, pr)[0, 1]),
            "clip_rate": np.mean((rho < 1 - t.eps_low) | (rho > 1 + t.eps_high)),
            "clip_rate_low": np.mean(rho < 1 - t.eps_low),
            "clip_rate_high": np.mean(rho > 1 + t.eps_high),
            "tis_clip_frac": np.mean(rho > t.tis_c),
            "mis_masked_frac": np.mean((rho < 1 / t.tis_c) | (rho > t.tis_c)),
            "bit_equal_frac": np.mean(lt.view(np.int64) == lr.view(np.int64)),
            "trainer_ppl": math.exp(-lt.mean()),
            "seq_log_ratio_mean": big_s.mean(),
            "seq_log_ratio_max": big_s.max(),
            "log_ppl_diff": lpd.mean(),
            "ppl_ratio": np.mean(np.exp(np.clip(lpd, -CLAMP, CLAMP))),
            "chi2_seq": np.mean(np.exp(2 * np.clip(big_s, -CLAMP, CLAMP))) - 1,
            "seq_max_abs_diff_mean": seq_max.mean(),
            "catastrophic_seq_frac": np.mean(seq_max > 1.0),
            "veto_frac": np.mean(np.exp(np.clip(seq_min, -CLAMP, CLAMP)) < 1e-4),
        },
        "a": a,
        "k3": np.expm1(dc) - dc,
        "lr": lr,
        "pos": pos,
        "seq_n": per_seq_n.tolist(),
        "seq_max": seq_max.tolist(),
        "seq_S": big_s.tolist(),
    }


EXACT = {
    "n_tokens",
    "n_sequences",
    "abs_diff_max",
    *(name for name, _ in QUANTILES),
    "is_min",
    "is_max",
    "clip_rate",
    "clip_rate_low",
    "clip_rate_high",
    "tis_clip_frac",
    "mis_masked_frac",
    "bit_equal_frac",
    "catastrophic_seq_frac",
    "veto_frac",
    "seq_max_abs_diff_mean",
}
FROM_MOMENTS = {"is_std", "prob_diff_std", "prob_pearson"}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("seed", range(4))
def test_fast_path_equals_a_whole_array_computation(seed: int, dtype: str) -> None:
    lt, lr, lens = make_batch(seed, dtype)
    res = compute_metrics(lt, lr, lens)
    ref = reference(lt, lr, lens)
    got = res.values

    assert got["nonfinite_trainer"] == 5 and got["nonfinite_rollout"] <= 3
    assert got["truncation_boundary"] == 7
    for key, want in ref["values"].items():
        if key in EXACT:
            assert got[key] == want, key
        elif key in FROM_MOMENTS:
            assert math.isclose(got[key], want, rel_tol=REL, abs_tol=MOMENTS), key
        elif key == "prob_diff_max":
            # The reference's exp(lt) - exp(lr) itself is off by ~1 ulp of exp(lr) <= 1.
            assert math.isclose(got[key], want, rel_tol=REL, abs_tol=1e-15), key
        elif key in ("bias", "kl_k1"):
            # Means of signed terms that cancel: measured against the mean |d|.
            scale = ref["values"]["abs_diff_mean"]
            assert math.isclose(got[key], want, rel_tol=REL, abs_tol=REL * scale), key
        else:
            assert math.isclose(got[key], want, rel_tol=REL), key

    per_seq = res.per_sequence
    assert per_seq["n_tokens"] == ref["seq_n"]
    assert [x for x in per_seq["max_abs_diff"] if x is not None] == ref["seq_max"]
    got_s = [x for x in per_seq["seq_log_ratio"] if x is not None]
    assert np.allclose(got_s, ref["seq_S"], rtol=REL, atol=REL * np.abs(ref["seq_S"]).max())

    _assert_strata(res.strata, ref)
    _assert_histogram(res.histogram, ref["a"])


def _assert_strata(strata: dict[str, list[dict[str, Any]]], ref: dict[str, Any]) -> None:
    a, k3, lr, pos = ref["a"], ref["k3"], ref["lr"], ref["pos"]
    lr_edges = [-math.inf, *metrics.LR_EDGES, math.inf]
    pos_edges = [*metrics.POS_EDGES, math.inf]
    by_lr = [(lr >= lr_edges[i]) & (lr < lr_edges[i + 1]) for i in range(len(lr_edges) - 1)]
    by_pos = [(pos >= pos_edges[i]) & (pos < pos_edges[i + 1]) for i in range(len(pos_edges) - 1)]
    for name, masks in (("by_lr", by_lr), ("by_position", by_pos)):
        for bucket, sel in zip(strata[name], masks, strict=True):
            count = int(sel.sum())
            assert bucket["n_tokens"] == count, (name, bucket)
            if count == 0:
                assert bucket["abs_diff_mean"] is None and bucket["kl_k3"] is None
                continue
            for key, x in (("abs_diff_mean", a), ("kl_k3", k3)):
                # An lr stratum is a difference of sums below two edges (the top one the
                # totals minus the rest): its error is relative to everything below its
                # upper edge, not to itself.
                below = x.sum() if name == "by_lr" else x[sel].sum()
                tol = REL * below / count
                assert math.isclose(bucket[key], x[sel].mean(), rel_tol=REL, abs_tol=tol), (
                    name,
                    bucket["bucket"],
                    key,
                )


def _assert_histogram(h: dict[str, Any], a: np.ndarray) -> None:
    edges = np.array(h["edges"])
    nonzero = a[a != 0]
    # counts[0] also takes the non-zero |d| below edges[0], counts[-1] everything from
    # edges[-2] up.
    bins = np.searchsorted(edges[1:-1], nonzero, side="right")
    assert h["zeros"] == int(np.count_nonzero(a == 0))
    assert h["counts"] == np.bincount(bins, minlength=edges.size - 1).tolist()
