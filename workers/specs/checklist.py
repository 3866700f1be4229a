"""The spec of the vLLM V1 migration checklist: the user's model and sampling settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from workers.specs.common import (
    EngineSettings,
    PromptSpec,
    SamplingSettings,
    ServerSettings,
    ThresholdOverrides,
    TrainerSettings,
)

Check = Literal["processed_logprobs", "runtime_defaults", "weight_updates", "fp32_head"]
CHECKS: tuple[Check, ...] = (
    "processed_logprobs",
    "runtime_defaults",
    "weight_updates",
    "fp32_head",
)
# Each check's title and what it measures, in one line: the form's checkboxes and the
# checklist's row titles.
CHECK_LABELS: dict[Check, tuple[str, str]] = {
    "processed_logprobs": (
        "Processed logprobs",
        "Raw vs processed logprobs: does the engine return the distribution it sampled from "
        "(after temperature, top-p, ...)?",
    ),
    "runtime_defaults": (
        "Runtime defaults (generation_config)",
        "Does the model's generation_config.json fill sampling fields the trainer never sees?",
    ),
    "weight_updates": (
        "In-flight weight updates (prefix cache)",
        "Replays weight updates with and without reset_prefix_cache(): are stale cached "
        "prefixes scored with the old weights?",
    ),
    "fp32_head": (
        "fp32 lm_head",
        "Computes the lm_head in fp32 on the engine and the trainer: how much of the gap is "
        "the bf16 head's rounding?",
    ),
}


def _default_sampling() -> SamplingSettings:
    return SamplingSettings.model_validate(
        {"temperature": 0.7, "top_p": 0.9, "max_tokens": 32, "logprobs_topk": 0}
    )


class ChecklistSpec(PromptSpec):
    """A migration checklist: the user's model and sampling settings, measured per fix."""

    num_prompts: int | None = Field(
        16, ge=1, le=100_000, description="Use at most this many prompts (empty: all)."
    )
    sampling: SamplingSettings = Field(
        default_factory=_default_sampling,
        description=(
            "The sampling settings the RL loop uses. Fields left empty are filled by the "
            "engine (from the model's generation_config.json under generation_config='auto')."
        ),
    )
    server: ServerSettings = Field(
        default_factory=ServerSettings,
        description=(
            "Optional: check a server you already run (its URL). Its settings are fixed at "
            "its start: the checks that change only the trainer or the request run against "
            "it, the others say which flag to restart it with; empty: Parity builds vLLM "
            "in-process for each variant."
        ),
    )
    engine: EngineSettings = Field(
        default_factory=EngineSettings,
        description=(
            "The engine as the user runs it; logprobs_mode, generation_config and head_dtype "
            "are set by each variant. With a server URL, only what the server cannot report "
            "is taken from here."
        ),
    )
    trainer: TrainerSettings = Field(
        default_factory=TrainerSettings,
        description="The trainer as the user runs it; processing and head_dtype are set "
        "by each variant.",
    )
    thresholds: ThresholdOverrides = Field(
        default_factory=dict, description="Verdict threshold overrides (parity.metrics)."
    )
    checks: list[Check] = Field(
        default_factory=lambda: list(CHECKS),
        min_length=1,
        description="Which checks to run; 'all fixes together' needs all four.",
        json_schema_extra={"choice_labels": {k: list(v) for k, v in CHECK_LABELS.items()}},
    )
    include_replay: bool = Field(
        True, description="Run the weight-update replay (the in-flight weight updates row)."
    )
    replay_updates: int = Field(2, ge=1, le=10, description="Weight updates to replay.")
    replay_max_tokens: int = Field(
        16, ge=2, le=512, description="Tokens per sequence in the replay."
    )
    include_in_flight: bool = Field(
        True, description="Also replay one update in flight, where this vLLM offers it."
    )
    include_determinism: bool = Field(
        True,
        description=(
            "Also certify batch invariance: a small determinism certificate (batch size 1, "
            "full batch, shuffled) on the user's engine settings."
        ),
    )

    @field_validator("checks", mode="before")
    @classmethod
    def _checks_chosen(cls, v: object) -> object:
        # Before min_length, whose "List should have at least 1 item" tells a form user little.
        if isinstance(v, list | tuple) and not v:
            raise ValueError(f"choose at least one check ({', '.join(CHECKS)})")
        return v

    @field_validator("checks")
    @classmethod
    def _checks_unique(cls, v: list[Check]) -> list[Check]:
        return [c for c in CHECKS if c in v]

    @property
    def full(self) -> bool:
        """Whether every check runs (then the 'all fixes together' row is measured)."""
        return list(self.checks) == list(CHECKS)
