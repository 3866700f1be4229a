"""What the checklist measures: the comparison variants the selected checks need, in run
order, and the weight-update replays. Pure (specs only): no engine is touched here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from parity.reports.checklist import ReplayKey
from workers.specs import (
    NEUTRAL_SAMPLING,
    RL_ENGINE,
    RL_TRAINER,
    ChecklistSpec,
    EngineSettings,
    ReplaySpec,
    SamplingSettings,
    TrainerSettings,
)


@dataclass(frozen=True)
class Variant:
    """One measured configuration: how the engine is built, how the trainer scores, and
    whether the user's sampling goes as given or with every field explicit."""

    name: str
    label: str
    engine: EngineSettings
    trainer: TrainerSettings
    explicit_sampling: bool
    # Re-score this earlier variant's rollout instead of sampling again (trainer-only change).
    rescore_of: str | None = None


def plan_variants(spec: ChecklistSpec) -> list[Variant]:
    """The comparisons the selected checks need, in run order: grouped by engine settings
    (one engine build per group) and, within a group, by trainer settings."""
    base_e = spec.engine.model_copy(update={"head_dtype": "model"})
    raw_auto = base_e.model_copy(update={"logprobs_mode": "raw", "generation_config": "auto"})
    proc_auto = base_e.model_copy(
        update={"logprobs_mode": "processed", "generation_config": "auto"}
    )
    fixed_e = base_e.model_copy(update=RL_ENGINE)
    t_model = spec.trainer.model_copy(update={"head_dtype": "model", "processing": "processed"})
    t_fp32 = t_model.model_copy(update={"head_dtype": "float32"})
    checks = set(spec.checks)
    want: set[str] = set()
    if spec.full:
        want |= {"v1_defaults", "all_fixes"}
    if "processed_logprobs" in checks:
        want |= {"raw_logprobs", "processed"}
    if "runtime_defaults" in checks:
        want |= {"genconfig_auto", "processed"}
    if "fp32_head" in checks:
        want |= {"processed", "fp32_trainer_only", "all_fixes"}
    every = [
        Variant(
            "v1_defaults",
            "V1 defaults: raw logprobs, generation_config=auto, model-dtype lm_head",
            raw_auto,
            t_model,
            explicit_sampling=False,
        ),
        Variant(
            "raw_logprobs",
            "raw logprobs (sampling fields explicit)",
            raw_auto,
            t_model,
            explicit_sampling=True,
        ),
        Variant(
            "genconfig_auto",
            "processed logprobs, generation_config=auto fills unset fields",
            proc_auto,
            t_model,
            explicit_sampling=False,
        ),
        Variant(
            "processed",
            "processed logprobs, sampling explicit, model-dtype lm_head both sides",
            proc_auto,
            t_model,
            explicit_sampling=True,
        ),
        Variant(
            "fp32_trainer_only",
            "fp32 lm_head on the trainer only",
            proc_auto,
            t_fp32,
            explicit_sampling=True,
            rescore_of="processed",
        ),
        Variant(
            "all_fixes",
            "all fixes: processed logprobs, generation_config=vllm, fp32 lm_head both sides",
            fixed_e,
            t_fp32,
            explicit_sampling=False,
        ),
    ]
    return [v for v in every if v.name in want]


def explicit(sampling: SamplingSettings) -> SamplingSettings:
    """`sampling` with every field the engine could fill set to what the trainer assumes
    (vLLM's neutral default where unset): nothing is left to generation_config."""
    requested = sampling.requested()
    return sampling.model_copy(update={k: requested[k] for k in NEUTRAL_SAMPLING})


# --- the weight-update replays -------------------------------------------------------------


def replay_plan(spec: ChecklistSpec) -> list[tuple[ReplayKey, str]]:
    """(key, label) of the replays the spec asks for, in run order."""
    if "weight_updates" not in spec.checks or not spec.include_replay:
        return []
    out: list[tuple[ReplayKey, str]] = [
        (
            "between_batches",
            f"{spec.replay_updates} weight updates, with and without reset_prefix_cache()",
        )
    ]
    if spec.include_in_flight:
        out.append(("in_flight", "one weight update in flight (requests paused, mode='keep')"))
    return out


def replay_spec_for(spec: ChecklistSpec, model_path: str, mode: ReplayKey) -> ReplaySpec:
    """The ReplaySpec of one checklist replay: the engine and trainer with every other fix
    applied (so the row measures the update path alone), the user's sampling with every
    field explicit, one sample per prompt, the replay's long shared-prefix prompts (a stale
    prefix cache is hit only when prompts share full KV blocks)."""
    engine = spec.engine.model_copy(update=RL_ENGINE)
    trainer = spec.trainer.model_copy(update=RL_TRAINER)
    sampling = explicit(spec.sampling).model_copy(
        update={"max_tokens": spec.replay_max_tokens, "n": 1, "logprobs_topk": 0}
    )
    common: dict[str, Any] = {
        "model": model_path,
        "engine": engine,
        "trainer": trainer,
        "sampling": sampling,
        "thresholds": spec.thresholds,
        "reset_prefix_cache": True,
    }
    if mode == "in_flight":
        return ReplaySpec(
            **common,
            num_updates=1,
            update_mode="in_flight",
            pause_mode="keep",
            measure_prefix_cache=False,
        )
    return ReplaySpec(
        **common,
        num_updates=spec.replay_updates,
        update_mode="between_batches",
        measure_prefix_cache=True,
    )


def in_flight_offered(caps: Mapping[str, Any] | None) -> tuple[bool | None, str]:
    """(offered, why) from the first replay's capabilities; None when they are unknown."""
    if not caps:
        return None, "capabilities unknown (the first replay did not run)"
    if "mode" in caps.get("llm_sleep_params", []) and "keep" in caps.get("pause_modes", []):
        return True, (
            f"vLLM {caps.get('vllm_version')} pauses running requests with "
            "LLM.sleep(level=0, mode='keep')"
        )
    return False, (
        f"vLLM {caps.get('vllm_version')} offers no in-flight update mode "
        "(no LLM.sleep(level=0, mode='keep'); pause modes: "
        f"{caps.get('pause_modes') or 'none'})"
    )
