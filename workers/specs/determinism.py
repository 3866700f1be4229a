"""The spec of a determinism certificate: the same prompts and seeds sampled by the engine in
several batch shapes, compared run against run."""

from __future__ import annotations

from pydantic import Field

from workers.specs.common import (
    EngineSettings,
    PromptSpec,
    SamplingSettings,
    ServerSettings,
    TrainerSettings,
)


def _default_sampling() -> SamplingSettings:
    # Group sampling (n=2) at T=1: the certificate also checks that a group's samples stay
    # distinct; no top-k logprobs (the runs compare the sampled tokens' logprobs only).
    return SamplingSettings.model_validate(
        {"temperature": 1.0, "max_tokens": 32, "n": 2, "logprobs_topk": 0}
    )


class DeterminismSpec(PromptSpec):
    """A determinism certificate: batch size 1 (the reference), one full batch, a shuffled
    batch and, on an engine Parity builds, another max_num_seqs; each compared with the
    reference, and the reference scored by the trainer."""

    num_prompts: int | None = Field(
        8, ge=1, le=100_000, description="Use at most this many prompts (empty: all)."
    )
    server: ServerSettings = Field(
        default_factory=ServerSettings,
        description=(
            "Optional: the engine as a server you already run (its URL); empty: Parity builds "
            "vLLM in-process with the engine settings below."
        ),
    )
    engine: EngineSettings = Field(
        default_factory=EngineSettings,
        description=(
            "How vLLM V1 is built; its max_num_seqs is the full batch's (empty: vLLM's "
            "default). With a server URL, only what the server cannot report is taken from here."
        ),
    )
    trainer: TrainerSettings = Field(
        default_factory=TrainerSettings,
        description="How the trainer scores the reference run (trainer vs engine bit_equal_frac).",
    )
    sampling: SamplingSettings = Field(
        default_factory=_default_sampling,
        description="What every run asks the engine for: the same prompts, seeds and n.",
    )
    shuffle_seed: int = Field(
        default=0, ge=0, le=2**31 - 1, description="Seed of the shuffled batch's prompt order."
    )
    other_max_num_seqs: int | None = Field(
        default=1,
        ge=1,
        le=4096,
        description=(
            "A second max_num_seqs to sample the full batch at (in-process engines only: a "
            "server's is fixed when it starts); empty: skip this run."
        ),
    )
    score_with_trainer: bool = Field(
        default=True, description="Score the reference run with the trainer (trainer vs engine)."
    )
    fail_abs_diff_max: float = Field(
        default=0.05,
        gt=0.0,
        le=100.0,
        description=(
            "Fail when two runs' logprobs of the same token differ by more than this (nats); "
            "any difference at all is a warn."
        ),
    )
    fail_diverged_seq_frac: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="Fail when more than this fraction of sequences sample different tokens.",
    )
    warn_identical_group_frac: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description=(
            "Warn when more than this fraction of groups (n > 1, temperature > 0) have every "
            "sample identical (a seed reused across a group)."
        ),
    )
