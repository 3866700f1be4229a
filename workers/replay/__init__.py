"""Weight-update replay: push a sequence of weights into a running vLLM V1 engine the way RL
frameworks do, and prove after every update that the engine serves what the trainer sent.

For each update k = 1..N (issue 4):

1. W_k comes from a seeded synthetic trajectory (W_k = W_{k-1} + step_size x rms(W0) x noise,
   per tensor, standing in for optimiser steps) or from checkpoint directories.
2. W_k goes into the *running* engine through `workers.weight_sync.WeightSyncExtension`:
   `llm.collective_rpc("parity_update_weights", ...)` -> `model.load_weights(...)`; then,
   if asked, `llm.reset_prefix_cache()`. `update_mode="in_flight"` lands the update between
   two engine steps while the batch's requests are half-way through decoding.
3. The engine samples on prompts that share a long prefix with every earlier batch, so a
   stale prefix cache *would* be hit (vLLM V1 caches only full KV blocks: 128 tokens on CPU).
4. The trainer (loaded once; its state dict swapped) scores those exact tokens at W_k and at
   W_{k-1}; METRICS.md metrics are computed against W_k (`workers.measure`).
5. The engine's per-parameter checksums (HF names, read through the serving kernels) are
   compared with the trainer's W_k.
6. Flags: `stale_weights`, `partial_update`, `mismatch_spike`, each with its numbers.

Whether `reset_prefix_cache()` matters is *measured*: after each update the same requests
(same seeds) run once before the reset (prefix blocks computed with W_{k-1} still cached)
and once after it, and both are scored against W_k. A control at W0 (the same requests
twice, the second hitting the cache) gives the difference caching alone makes.

    python -m workers.replay --model var/models/tiny-llama --updates 3 --json

The package, by concern (the judgement is pure Python, testable without torch or an engine):

    weights.py       W0, the synthetic trajectory, checkpoints; the trainer's state swap
    engine.py        the replay's own engine: build, capabilities, sample, shut down
    batch.py         a sampled batch, and how two runs of the same requests differ (pure)
    in_flight.py     the engine driven step by step, the update landing mid-decode
    checksums.py     hash the trainer's W_k (torch), then judge the checksum dicts (pure)
    flags.py         stale_weights, partial_update, mismatch_spike (pure)
    prefix_cache.py  the with/without reset_prefix_cache() measurement (pure)
    run.py           run_replay (the per-update loop) and run_replay_job (the Celery runner)
    report.py        ReplayResult and its stored form (parity.reports.replay), text report
    cli.py           the command line, generated from ReplaySpec

torch and vLLM are imported inside functions: importing this package costs neither.
"""

from workers.replay.batch import Batch, compare_batches
from workers.replay.checksums import compare_checksums, expected_checksums, judge_checksums
from workers.replay.engine import (
    build_engine,
    capabilities,
    generate_batch,
    shutdown_replay_engine,
)
from workers.replay.flags import FLAG_NAMES, Flag, flags_for_update
from workers.replay.in_flight import generate_in_flight
from workers.replay.report import ReplayResult, UpdateResult, text_report
from workers.replay.run import run_replay, run_replay_job
from workers.replay.weights import read_checkpoint, synthetic_trajectory, trainer_state_load
from workers.specs.replay import CheckpointSource, FlagSettings, ReplaySpec, SyntheticSource

__all__ = [
    "FLAG_NAMES",
    "Batch",
    "CheckpointSource",
    "Flag",
    "FlagSettings",
    "ReplayResult",
    "ReplaySpec",
    "SyntheticSource",
    "UpdateResult",
    "build_engine",
    "capabilities",
    "compare_batches",
    "compare_checksums",
    "expected_checksums",
    "flags_for_update",
    "generate_batch",
    "generate_in_flight",
    "judge_checksums",
    "read_checkpoint",
    "run_replay",
    "run_replay_job",
    "shutdown_replay_engine",
    "synthetic_trajectory",
    "text_report",
    "trainer_state_load",
]
