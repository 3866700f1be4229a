"""Seed data for the demo project: a synthetic training run with a drift episode.

The logprobs are synthetic but the metrics are real: every step's arrays go through
`parity.metrics.compute_metrics`, exactly as a training loop's `Monitor.log_step` would.
"""

from __future__ import annotations

import numpy as np

from dashboard.core.models import Project, Run
from dashboard.core.points import Point, store_points
from parity.metrics import compute_metrics


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
