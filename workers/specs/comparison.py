"""The spec of a comparison: sample with vLLM V1, score the same tokens with the trainer."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from workers.specs.common import (
    NEUTRAL_SAMPLING,
    RL_ENGINE,
    RL_TRAINER,
    EngineSettings,
    PromptSpec,
    SamplingSettings,
    ServerSettings,
    ThresholdOverrides,
    TrainerSettings,
)


class ComparisonSpec(PromptSpec):
    """One comparison: sample with vLLM V1 (in-process or a server), score the same tokens
    with the trainer, compare."""

    server: ServerSettings = Field(
        default_factory=ServerSettings,
        description=(
            "Optional: the rollout engine as a server you already run (its URL); empty: "
            "Parity builds vLLM in-process with the engine settings below."
        ),
    )
    engine: EngineSettings = Field(
        default_factory=EngineSettings,
        description=(
            "How vLLM V1 is built (the rollout side); with a server URL, only what the server "
            "cannot report is taken from here."
        ),
    )
    trainer: TrainerSettings = Field(
        default_factory=TrainerSettings,
        description="How the trainer (transformers) loads the model and scores the tokens.",
    )
    sampling: SamplingSettings = Field(
        default_factory=SamplingSettings,
        description="What the rollout asks vLLM for; empty fields take the engine's defaults.",
    )
    thresholds: ThresholdOverrides = Field(
        default_factory=dict,
        description='Verdict threshold overrides, e.g. {"warn_abs_diff_mean": 0.05}.',
    )


# The comparison form's one-click preset (as {"section.field": value}): the setup the
# checklist recommends for RL, with every sampling field explicit so that nothing is left to
# the model's generation_config.json.
RECOMMENDED_RL: dict[str, Any] = {
    **{f"engine.{k}": v for k, v in RL_ENGINE.items()},
    **{f"trainer.{k}": v for k, v in RL_TRAINER.items()},
    **{f"sampling.{k}": v for k, v in NEUTRAL_SAMPLING.items()},
}
