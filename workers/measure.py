"""The one measurement pipeline: engine -> generate -> trainer -> processing -> score -> metrics.

Every job kind measures the same way. A comparison runs it once; the checklist once per
variant (re-scoring a rollout it already has where only the trainer side changes); a replay
samples with its own weight-synced engine and scores with a trainer whose weights it swaps,
so it calls the two halves (`score`, `metrics`) directly.

    sampled = sample(model_path, engine_settings, prompt_ids, sampling)
    m = measure(model_path, trainer_settings, engine_settings, sampled.rollout, thresholds)
    m.metrics.values["abs_diff_mean"]

The trainer always scores exactly the token ids the engine returned; a disagreement is counted
in `token_mismatch`, never hidden.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from parity.metrics import MetricsResult, Thresholds, compute_metrics
from workers import prompts as prompt_sets
from workers.specs import EngineSettings, SamplingSettings, ServerSettings, TrainerSettings

if TYPE_CHECKING:
    from workers.engines import RolloutEngine
    from workers.rollout import Rollout
    from workers.trainer import Kind, Processing, TrainerModel

Progress = Callable[[int, int], None]


@dataclass
class Sampled:
    """The engine side of a measurement: what it sampled, and on which engine."""

    engine: RolloutEngine
    engine_reused: bool
    # Sequences continue prompts by their index in the prompt set, skipped ones included.
    rollout: Rollout
    # Prompts (0-based) too long for the engine's max_model_len: not sampled.
    skipped: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def sample(
    model_path: str,
    engine_settings: EngineSettings,
    prompt_ids: Sequence[Sequence[int]],
    sampling: SamplingSettings,
    *,
    server: ServerSettings | None = None,
    progress: Progress | None = None,
) -> Sampled:
    """Engine -> generate: the user's server when `server.url` is set, else the warm
    in-process engine for these settings (built if needed), sampling `sampling` on every
    prompt that fits its max_model_len (`sample_on`)."""
    from workers import engines

    engine, reused = engines.open_engine(model_path, engine_settings, server)
    sampled = sample_on(engine, reused, prompt_ids, sampling, progress=progress)
    sampled.notes += getattr(engine, "notes", [])
    return sampled


def sample_on(
    engine: RolloutEngine,
    engine_reused: bool,
    prompt_ids: Sequence[Sequence[int]],
    sampling: SamplingSettings,
    *,
    progress: Progress | None = None,
) -> Sampled:
    """Generate on an engine the caller already holds, on every prompt that fits its
    max_model_len; the others are skipped and `notes` says which (UserError when none fits)."""
    kept, notes = prompt_sets.fitting(prompt_ids, engine.max_model_len)
    if len(kept) == len(prompt_ids):
        return Sampled(
            engine, engine_reused, engine.generate(prompt_ids, sampling, progress=progress)
        )
    ro = engine.generate([prompt_ids[i] for i in kept], sampling, progress=progress)
    ro = replace(
        ro,
        prompt_token_ids=[list(p) for p in prompt_ids],
        prompt_index=[kept[i] for i in ro.prompt_index],
    )
    skipped = sorted(set(range(len(prompt_ids))) - set(kept))
    return Sampled(engine, engine_reused, ro, skipped, notes)


@dataclass
class Scored:
    """Engine and trainer log-probs of the same response tokens, flattened in sequence order.

    `lt`, `lr`, `token_ids` (the engine's), `trainer_token_ids` and the optional per-token
    arrays share one index; `seq_lens[s]` tokens belong to sequence s.
    """

    lt: np.ndarray
    lr: np.ndarray
    seq_lens: np.ndarray
    token_ids: np.ndarray
    trainer_token_ids: np.ndarray
    entropy: np.ndarray | None = None
    trainer_argmax: np.ndarray | None = None
    trainer_topk: np.ndarray | None = None
    rollout_topk: np.ndarray | None = None
    rank: np.ndarray | None = None
    lt_reference: np.ndarray | None = None
    seconds: float = 0.0

    def window(
        self, keep_from: Sequence[int] | None = None, keep_until: Sequence[int] | None = None
    ) -> Scored:
        """Only tokens [keep_from[s], keep_until[s]) of each sequence s (e.g. the tokens
        sampled after an in-flight weight update)."""
        if keep_from is None and keep_until is None:
            return self
        offsets = np.concatenate([[0], np.cumsum(self.seq_lens)])
        keep = np.zeros(int(offsets[-1]), dtype=bool)
        lens = np.zeros(len(self.seq_lens), dtype=np.int64)
        for s, n in enumerate(self.seq_lens):
            a = keep_from[s] if keep_from is not None else 0
            b = keep_until[s] if keep_until is not None else int(n)
            a, b = max(0, min(a, int(n))), max(0, min(b, int(n)))
            if b > a:
                keep[offsets[s] + a : offsets[s] + b] = True
                lens[s] = b - a

        def cut(x: np.ndarray | None) -> np.ndarray | None:
            return None if x is None else x[keep]

        return replace(
            self,
            lt=self.lt[keep],
            lr=self.lr[keep],
            seq_lens=lens,
            token_ids=self.token_ids[keep],
            trainer_token_ids=self.trainer_token_ids[keep],
            entropy=cut(self.entropy),
            trainer_argmax=cut(self.trainer_argmax),
            trainer_topk=cut(self.trainer_topk),
            rollout_topk=cut(self.rollout_topk),
            rank=cut(self.rank),
            lt_reference=cut(self.lt_reference),
        )


def flatten(ro: Rollout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lr, token_ids, seq_lens) of a rollout, flattened in sequence order."""
    seq_lens = np.fromiter((len(t) for t in ro.token_ids), dtype=np.int64, count=len(ro.token_ids))
    n = int(seq_lens.sum())
    lr = np.fromiter((x for seq in ro.lr for x in seq), dtype=np.float64, count=n)
    token_ids = np.fromiter((t for seq in ro.token_ids for t in seq), dtype=np.int64, count=n)
    return lr, token_ids, seq_lens


def rollout_topk(ro: Rollout, n_tokens: int) -> np.ndarray | None:
    """The engine's top-k token ids as an (n_tokens, k) array, -1 where it returned fewer."""
    if ro.topk_ids is None:
        return None
    rows = [row for seq in ro.topk_ids for row in seq]
    k = max((len(r) for r in rows), default=0)
    if k == 0:
        return None
    out = np.full((n_tokens, k), -1, dtype=np.int64)
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=n_tokens)
    flat = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(lengths.sum()))
    mask = np.arange(k)[None, :] < lengths[:, None]
    out[mask] = flat
    return out


def score(
    tm: TrainerModel,
    ro: Rollout,
    processing: Processing,
    *,
    topk: int = 0,
    reference: Processing | None = None,
    progress: Progress | None = None,
) -> Scored:
    """Trainer -> score: the trainer's lt of exactly the rollout's tokens under `processing`
    (and under `reference` too, from the same logits, when given), beside the engine's lr."""
    from workers import trainer

    prompts = [ro.prompt_token_ids[i] for i in ro.prompt_index]
    scores = trainer.score(
        tm, prompts, ro.token_ids, processing, topk=topk, reference=reference, progress=progress
    )
    lr, token_ids, seq_lens = flatten(ro)
    return Scored(
        lt=scores.lt,
        lr=lr,
        seq_lens=seq_lens,
        token_ids=token_ids,
        trainer_token_ids=scores.token_ids,
        entropy=scores.entropy,
        trainer_argmax=scores.argmax,
        trainer_topk=scores.topk,
        rollout_topk=rollout_topk(ro, lr.size),
        rank=scores.rank,
        lt_reference=scores.lt_reference,
        seconds=scores.seconds,
    )


def metrics(s: Scored, thresholds: Thresholds | None = None) -> MetricsResult:
    """-> metrics: every METRICS.md metric of the scored tokens (parity.metrics)."""
    return compute_metrics(
        s.lt,
        s.lr,
        s.seq_lens,
        entropy=s.entropy,
        token_ids=s.token_ids,
        trainer_token_ids=s.trainer_token_ids,
        trainer_argmax=s.trainer_argmax,
        rollout_argmax=None if s.rollout_topk is None else s.rollout_topk[:, 0],
        trainer_topk=s.trainer_topk,
        rollout_topk=s.rollout_topk,
        thresholds=thresholds,
    )


def reference_metrics(s: Scored, thresholds: Thresholds | None = None) -> MetricsResult | None:
    """The metrics of the same tokens under the reference processing, when it was scored."""
    if s.lt_reference is None:
        return None
    return compute_metrics(s.lt_reference, s.lr, s.seq_lens, thresholds=thresholds)


@dataclass
class Measurement:
    """The trainer side of a measurement, from loading the trainer to the metrics."""

    trainer: TrainerModel
    trainer_reused: bool
    processing: Processing  # what the trainer applied
    engine_processing: Processing  # what the engine's logprobs describe
    scored: Scored
    metrics: MetricsResult
    # The same tokens scored with the engine's processing, when the trainer's differs.
    reference: MetricsResult | None
    metrics_seconds: float


def measure(
    model_path: str,
    trainer_settings: TrainerSettings,
    engine_settings: EngineSettings,
    ro: Rollout,
    thresholds: Thresholds | None,
    *,
    topk: int = 0,
    with_reference: bool = False,
    engine_kind: Kind | None = None,
    progress: Progress | None = None,
) -> Measurement:
    """Trainer -> processing -> score -> metrics for a rollout the engine sampled.

    The trainer processes the logits with the sampling parameters it was told about (the
    requested ones, as an RL trainer does); with `with_reference`, the same tokens are also
    scored under the engine's effective processing, so a report can say how much of the gap
    the difference explains. `engine_kind` names the engine's logprobs where its
    logprobs_mode cannot (`workers.engines.logprobs_kind`).
    """
    from workers import trainer

    tm, reused = trainer.get_trainer(model_path, trainer_settings)
    processing = trainer.Processing.for_comparison(
        trainer_settings, engine_settings, ro.requested, engine_kind
    )
    matched = trainer.Processing.for_engine(engine_settings, ro.effective, engine_kind)
    reference = matched if with_reference and matched != processing else None
    scored = score(tm, ro, processing, topk=topk, reference=reference, progress=progress)
    started = time.perf_counter()
    result, reference_result = metrics(scored, thresholds), reference_metrics(scored, thresholds)
    return Measurement(
        trainer=tm,
        trainer_reused=reused,
        processing=processing,
        engine_processing=matched,
        scored=scored,
        metrics=result,
        reference=reference_result,
        metrics_seconds=time.perf_counter() - started,
    )
