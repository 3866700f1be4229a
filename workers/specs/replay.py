"""The spec of a weight-update replay: N updates pushed into one running vLLM V1 engine."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from workers import prompts as prompt_sets
from workers.specs.common import (
    EngineSettings,
    ModelRef,
    SamplingSettings,
    ServerSettings,
    Settings,
    ThresholdOverrides,
    TrainerSettings,
)

# The worker extension Parity ships (workers.weight_sync; named here, not imported: torch).
EXTENSION_QUALNAME = "workers.weight_sync.WeightSyncExtension"
# Worker extensions a spec may name: this product's, and the planted-fault ones of the tests.
# Anything else would let a job spec make the gpu worker import arbitrary code.
EXTENSION_PREFIXES = ("workers.weight_sync.", "tests.engine.extensions.")

# Long shared prefix of the default prompts: ~300 tokens with the tiny model's tokenizer,
# i.e. more than two full 128-token KV blocks of vLLM's CPU backend (16 on most GPUs), so
# every batch after the first hits the prefix cache.
SHARED_PREFIX = (
    "System: You are a helpful, concise assistant. Answer the question and explain your "
    "reasoning briefly.\n"
    "Reinforcement learning trains a policy by sampling rollouts and scoring them with a "
    "reward model. The trainer computes the log probability of every sampled token, and the "
    "rollout engine returns its own. When the two disagree, the importance ratio drifts away "
    "from one and the policy update becomes biased. Temperature scales the logits before the "
    "softmax; top-p keeps the smallest set of tokens whose mass reaches p; top-k keeps the k "
    "most likely tokens; min-p drops tokens far less likely than the best one.\n"
    "Gradient descent updates the weights in the direction that lowers the loss. The learning "
    "rate sets the size of each step. Too large a step diverges; too small a step wastes "
    "compute. A language model predicts the next token from the tokens before it. Sampling "
    "from that distribution, one token at a time, produces text. Greedy decoding always picks "
    "the most likely token.\n"
    "The library opens at nine and closes at six. Children read picture books in the corner "
    "by the window, while students study at the long wooden tables under the old brass lamps.\n"
)
DEFAULT_QUESTIONS = (
    "User: What is the capital of France?\nAssistant:",
    "User: Explain why the sky is blue.\nAssistant:",
    "User: Write a short poem about the autumn rain.\nAssistant:",
    "User: How do I reverse a list in Python?\nAssistant:",
)


class SyntheticSource(Settings):
    """Seeded perturbations of W0 standing in for optimiser steps (no checkpoints needed)."""

    kind: Literal["synthetic"] = "synthetic"
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the perturbations.")
    step_size: float = Field(
        0.05,
        gt=0.0,
        le=1.0,
        description=(
            "Relative step: each update adds step_size x rms(W0 tensor) x N(0, 1) to every "
            "element of every tensor."
        ),
    )


class CheckpointSource(Settings):
    """W_1..W_N from checkpoint directories (safetensors, HF names), in order."""

    kind: Literal["checkpoints"] = "checkpoints"
    dirs: list[str] = Field(
        ...,
        min_length=1,
        max_length=1000,
        description="Checkpoint directories on the worker, W_1 first.",
    )


Source = Annotated[SyntheticSource | CheckpointSource, Field(discriminator="kind")]


class FlagSettings(Settings):
    """When the per-update flags fire (see `flags_for_update`)."""

    spike_factor: float = Field(
        3.0, gt=1.0, description="mismatch_spike: metric above factor x its W0 baseline ..."
    )
    spike_floor_kl_k3: float = Field(
        1e-3, ge=0.0, description="... and kl_k3 above this (METRICS.md warn threshold) ..."
    )
    spike_floor_abs_diff_mean: float = Field(
        0.03, ge=0.0, description="... or abs_diff_mean above this (METRICS.md warn)."
    )
    stale_margin: float = Field(
        2.0,
        ge=1.0,
        description=(
            "stale_weights: W_k-1 must fit the engine's tokens this many times better than "
            "W_k, on kl_k3 and on abs_diff_mean (a tie is not staleness) ..."
        ),
    )
    stale_resolution: float = Field(
        2.0,
        gt=0.0,
        description=(
            "stale_weights needs the update to be resolvable: the trainer's own |lt(W_k) - "
            "lt(W_k-1)| mean above this x the W0 baseline abs_diff_mean."
        ),
    )


class ReplaySpec(Settings):
    """A weight-update replay (issue 4): N updates pushed into one running vLLM V1 engine,
    in-process or a server (`server.url`: its own update path, workers.replay.server)."""

    model: ModelRef = Field(
        "var/models/tiny-llama",
        min_length=1,
        max_length=500,
        description="Local model directory on the worker (W0).",
    )
    server: ServerSettings = Field(
        default_factory=ServerSettings,
        description=(
            "Optional: replay into a vLLM server you already run (its URL; it needs "
            "VLLM_SERVER_DEV_MODE=1 and must read the worker's files: W_k is handed to it as "
            "a directory); empty: Parity builds vLLM in-process with the engine settings below."
        ),
    )
    engine: EngineSettings = Field(default_factory=EngineSettings)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    sampling: SamplingSettings = Field(
        default_factory=lambda: SamplingSettings(temperature=1.0, max_tokens=24, logprobs_topk=0)
    )
    num_updates: int | None = Field(
        3,
        ge=1,
        le=1000,
        description="Updates to replay (empty with checkpoints: one per directory).",
    )
    source: Source = Field(default_factory=SyntheticSource)
    reset_prefix_cache: bool = Field(
        True, description="Call llm.reset_prefix_cache() after every weight update."
    )
    update_mode: Literal["between_batches", "in_flight"] = Field(
        "between_batches",
        description=(
            "'between_batches': update while the engine is idle; 'in_flight': update between "
            "two engine steps while the batch is half-way through decoding."
        ),
    )
    pause_mode: Literal["keep", "abort", "wait", "none"] = Field(
        "keep",
        description=(
            "in_flight only: how requests are paused around the update (vLLM "
            "LLM.sleep(level=0, mode=...)): 'keep' freezes them and resumes them on the new "
            "weights, 'abort' ends them and resubmits their tokens so far as prompts, 'wait' "
            "drains them first, 'none' updates between two steps without pausing."
        ),
    )
    in_flight_recompute: bool = Field(
        False,
        description=(
            "in_flight only: reset the prefix cache with reset_running_requests=True, which "
            "preempts the running requests so their KV is recomputed with the new weights."
        ),
    )
    load_mode: Literal["layerwise", "direct"] = Field(
        "layerwise",
        description=(
            "How the worker loads the weights: 'layerwise' = vLLM's in-place reload (kernels "
            "re-processed); 'direct' = bare model.load_weights() as older RL frameworks do."
        ),
    )
    prompts: list[str | dict[str, Any]] | None = Field(
        None,
        description=(
            'Prompts: texts, or items as elsewhere ({"prompt": "..."} or {"messages": [...]}); '
            "empty: a long shared prefix + short questions, built in."
        ),
    )
    measure_prefix_cache: bool = Field(
        True, description="Run each update's batch with and without a prefix-cache reset."
    )
    extension: str = Field(EXTENSION_QUALNAME, description="vLLM worker_extension_cls.")
    flags: FlagSettings = Field(default_factory=FlagSettings)
    thresholds: ThresholdOverrides = Field(
        default_factory=dict, description="Verdict threshold overrides (parity.metrics)."
    )

    @field_validator("prompts")
    @classmethod
    def _prompts_not_empty(
        cls, v: list[str | dict[str, Any]] | None
    ) -> list[str | dict[str, Any]] | None:
        if v is None:
            return v
        if not v or any(not p for p in v):
            raise ValueError("prompts must be non-empty; leave unset for the built-in set")
        return [
            p if isinstance(p, str) else prompt_sets.check_item(p, f"prompt {i + 1}")
            for i, p in enumerate(v)
        ]

    @field_validator("extension")
    @classmethod
    def _known_extension(cls, v: str) -> str:
        if not v.startswith(EXTENSION_PREFIXES):
            raise ValueError(f"extension must be a class under {' or '.join(EXTENSION_PREFIXES)}")
        return v

    @model_validator(mode="after")
    def _updates_fit_source(self) -> ReplaySpec:
        if isinstance(self.source, CheckpointSource):
            if self.num_updates is not None and self.num_updates > len(self.source.dirs):
                raise ValueError(
                    f"num_updates={self.num_updates} but only {len(self.source.dirs)} "
                    "checkpoint directories were given"
                )
        elif self.num_updates is None:
            raise ValueError("num_updates is required with a synthetic source")
        if self.sampling.n != 1:
            raise ValueError("sampling.n must be 1 in a replay (one sample per prompt)")
        if self.server.url and self.update_mode == "in_flight":
            # Landing the update half-way needs the engine's step loop (in_flight.py); over
            # HTTP a request's progress is not visible until it ends (no streaming here).
            raise ValueError(
                "update_mode 'in_flight' is not supported against a server yet: Parity cannot "
                "see how far a request has decoded over HTTP to land the update half-way; use "
                "'between_batches', or leave server.url empty for the in-process engine"
            )
        return self

    @property
    def updates(self) -> int:
        if isinstance(self.source, CheckpointSource):
            return self.num_updates or len(self.source.dirs)
        assert self.num_updates is not None
        return self.num_updates

    def prompt_items(self) -> list[dict[str, Any]]:
        """The prompts as prompt-set items (workers.prompts), the built-in ones by default."""
        if self.prompts:
            return [{"prompt": p} if isinstance(p, str) else p for p in self.prompts]
        return [{"prompt": SHARED_PREFIX + q} for q in DEFAULT_QUESTIONS]
