"""Time parity.metrics.compute_metrics against one numpy.sum pass over the same arrays.

    python bench/bench_metrics.py [--tokens 10000000] [--dtype float64|float32]

Target: compute_metrics <= 10x (np.sum(lt) + np.sum(lr)), both measured here, in this run.
Also prints the cost of the two transcendental passes METRICS.md needs at the least
(expm1 of d for rho and k3, exp of lr for the probabilities), which bounds what is reachable
on the CPU at hand: numpy only vectorises float64 exp on AVX-512.
Wall-clock is what the target is about; thread CPU time is printed too because on a shared
machine wall-clock also counts the time other processes held the core.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from parity.metrics import compute_metrics  # noqa: E402

TARGET = 10.0


def make_batch(n_tokens: int, seed: int, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lr: log-probs of sampled tokens (mostly confident, a long low-probability tail);
    lt = lr + bf16-sized noise, as a healthy trainer/engine pair gives."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 1025, size=n_tokens // 512 + 16)
    lens = lens[: int(np.searchsorted(np.cumsum(lens), n_tokens)) + 1]
    lens[-1] -= int(lens.sum()) - n_tokens
    lens = lens[lens > 0]
    confident = np.log(rng.beta(8.0, 0.6, n_tokens))
    tail = -0.5 - rng.exponential(3.0, n_tokens)
    lr = np.where(rng.random(n_tokens) < 0.9, confident, tail).clip(-40.0, 0.0)
    lt = np.minimum(lr + rng.normal(0.0, 0.02, n_tokens), 0.0)
    return lt.astype(dtype), lr.astype(dtype), lens


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(best wall seconds, best thread-CPU seconds) over `repeats` runs."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.thread_time() - c0)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    args = ap.parse_args()

    lt, lr, lens = make_batch(args.tokens, args.seed, args.dtype)
    print(f"{lt.size:,} tokens in {lens.size:,} sequences (1..1024), {args.dtype}")

    compute_metrics(lt, lr, lens)  # warm-up: page in, import-time work
    base_w, base_c = best_of(lambda: (np.sum(lt), np.sum(lr)), 3 * args.repeats)
    metr_w, metr_c = best_of(lambda: compute_metrics(lt, lr, lens), args.repeats)
    lr64 = lr.astype(np.float64)  # compute_metrics works in float64 whatever comes in
    d = lt.astype(np.float64) - lr64
    floor_w, floor_c = best_of(lambda: (np.expm1(d), np.exp(lr64)), args.repeats)

    print(f"np.sum(lt) + np.sum(lr)       {base_w * 1e3:8.1f} ms wall {base_c * 1e3:8.1f} ms cpu")
    print(
        f"compute_metrics (best of {args.repeats})   "
        f"{metr_w * 1e3:8.1f} ms wall {metr_c * 1e3:8.1f} ms cpu"
    )
    print(f"  of which at least expm1+exp {floor_w * 1e3:8.1f} ms wall {floor_c * 1e3:8.1f} ms cpu")
    ratio, ratio_c = metr_w / base_w, metr_c / base_c
    verdict = "meets" if ratio <= TARGET else "misses"
    print(
        f"ratio {ratio:.1f}x wall ({ratio_c:.1f}x cpu): {verdict} the <= {TARGET:g}x target; "
        f"expm1+exp alone is {floor_w / base_w:.1f}x"
    )


if __name__ == "__main__":
    main()
