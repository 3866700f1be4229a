"""Seed data for the demo project: a synthetic training run with a drift episode, and a
verl-style run (verl's own keys) whose engine serves a stale prefix cache after each update.

The logprobs are synthetic but the metrics are real: every step's arrays go through
`parity.metrics.compute_metrics`, exactly as a training loop's `Monitor.log_step` would.
"""

from __future__ import annotations

import numpy as np

from dashboard.core.models import Project, Run
from dashboard.core.points import Point, store_points
from parity.metrics import compute_metrics
from parity.weight_versions import WEIGHT_VERSION_KEY

# verl's keys for the numbers it logs (parity.frameworks), from Parity's metrics of the step.
VERL_KEYS = {
    "rollout_corr/kl": "kl_k1",
    "rollout_corr/k3_kl": "kl_k3",
    "rollout_corr/chi2_token": "chi2_token",
    "rollout_corr/rollout_is_eff_sample_size": "ess",
    "rollout_corr/rollout_is_mean": "is_mean",
    "training/rollout_probs_diff_mean": "prob_diff_mean",
    "training/rollout_actor_probs_pearson_corr": "prob_pearson",
}


def synthetic_step(
    rng: np.random.Generator, noise: float, n_seq: int = 16, max_len: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One GRPO step's (lt, lr, seq_lens): peaked rollout logprobs, trainer = rollout + noise.

    The noise grows on low-probability tokens, as real mismatch does.
    """
    seq_lens = rng.integers(max_len // 4, max_len, size=n_seq)
    n = int(seq_lens.sum())
    lr = -rng.exponential(0.6, size=n)
    lt = lr + rng.normal(0.0, noise, size=n) * (1.0 + np.abs(lr))
    return lt, lr, seq_lens


def drift_noise(step: int, steps: int) -> float:
    """Healthy (~0.01 nats) with a drift episode around 60-75 % of the run."""
    base = 0.008
    start, end = int(steps * 0.6), int(steps * 0.75)
    if start <= step < end:
        ramp = min(step - start, end - step) / max((end - start) / 2, 1)
        return base + 0.09 * ramp
    return base


def seed_training_run(
    project: Project, name: str = "grpo-demo-drift", steps: int = 1000, seed: int = 0
) -> Run:
    """Create (or refill) a finished training run with one point per metric per step."""
    run, _ = Run.objects.get_or_create(
        project=project,
        name=name,
        defaults={
            "kind": Run.Kind.TRAINING,
            "tags": ["demo", "grpo"],
            "fingerprint": {
                "model": "tiny-llama (synthetic demo)",
                "trainer": {"dtype": "bfloat16"},
                "engine": {
                    "vllm": "0.32.0",
                    "logprobs_mode": "processed_logprobs",
                    "dtype": "bfloat16",
                },
            },
        },
    )
    run.set_status(Run.Status.RUNNING)
    rng = np.random.default_rng(seed)
    batch: list[Point] = []
    for step in range(steps):
        lt, lr, seq_lens = synthetic_step(rng, drift_noise(step, steps))
        values = compute_metrics(lt, lr, seq_lens).values
        batch.extend(Point(key, step, float(v)) for key, v in values.items() if v is not None)
        batch.append(Point("reward", step, float(0.2 + 0.5 * step / steps + rng.normal(0, 0.03))))
        if len(batch) >= 5000:
            store_points(run, batch)
            batch = []
    store_points(run, batch)
    run.set_status(Run.Status.FINISHED)
    return run


def seed_verl_stale_cache_run(
    project: Project,
    name: str = "verl-stale-prefix-cache",
    updates: int = 8,
    steps_per_version: int = 25,
    seed: int = 1,
) -> Run:
    """A finished run as verl logs it (its keys, plus weight_version): after each weight
    update the engine still serves KV computed with the old weights, so the gap jumps and
    decays as cached requests turn over."""
    run, _ = Run.objects.get_or_create(
        project=project,
        name=name,
        defaults={
            "kind": Run.Kind.TRAINING,
            "tags": ["demo", "verl"],
            "fingerprint": {"framework": "verl", "engine": {"enable_prefix_caching": True}},
        },
    )
    run.set_status(Run.Status.RUNNING)
    rng = np.random.default_rng(seed)
    batch: list[Point] = []
    for step in range(updates * steps_per_version):
        version, k = divmod(step, steps_per_version)
        stale = 0.12 * 0.7**k if version else 0.0  # share of requests still on old KV
        lt, lr, seq_lens = synthetic_step(rng, 0.008 + stale)
        values = compute_metrics(lt, lr, seq_lens).values
        batch.extend(
            Point(key, step, float(values[canonical]))
            for key, canonical in VERL_KEYS.items()
            if values.get(canonical) is not None
        )
        batch.append(Point(WEIGHT_VERSION_KEY, step, float(version)))
    store_points(run, batch)
    run.set_status(Run.Status.FINISHED)
    return run
