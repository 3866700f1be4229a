"""What the checklist measures: the comparison variants the selected checks need, in run
order, and the weight-update replays. Pure (specs only): no engine is touched here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

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


# --- against a server the user runs -------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """What the checklist plans with about a running server: the settings its checks
    concern, as the adapter reports them (`assumed`: those it could not report, taken from
    the spec)."""

    engine: Literal["vllm", "sglang"]
    # The distribution its logprobs describe (workers.engines.logprobs_kind).
    logprobs: Literal["raw", "processed", "temperature"]
    # Whether unset sampling fields get neutral defaults (vLLM generation_config="vllm",
    # SGLang --sampling-defaults openai) rather than the model's generation_config.json.
    neutral_defaults: bool
    head_dtype: Literal["model", "float32"]
    dtype: str
    assumed: frozenset[str] = frozenset()


# The exact start option of each engine setting a check may need (verified against vLLM
# 0.32's arg_utils/ModelConfig and SGLang 0.5.23's server args; None: the engine has none).
RESTART_FLAGS: dict[str, dict[str, str | None]] = {
    "vllm": {
        "processed_logprobs": "--logprobs-mode processed_logprobs",
        "raw_logprobs": "--logprobs-mode raw_logprobs",
        "neutral_defaults": "--generation-config vllm",
        "fp32_head": '--hf-overrides \'{"head_dtype": "float32"}\'',
        "batch_invariant": "VLLM_BATCH_INVARIANT=1 (environment)",
    },
    "sglang": {
        # SGLang returns log_softmax(logits / T) over the full vocabulary, or with
        # SGLANG_RETURN_ORIGINAL_LOGPROB=1 the raw ones; no setting gives processed ones.
        "processed_logprobs": None,
        "raw_logprobs": "SGLANG_RETURN_ORIGINAL_LOGPROB=1 (environment)",
        "neutral_defaults": "--sampling-defaults openai",
        "fp32_head": "--enable-fp32-lm-head",
        "batch_invariant": "--enable-deterministic-inference",
    },
}
RESTART_WHY = "a server's settings are fixed at its start"


def needs_restart(engine: str, *settings: str) -> str:
    """The row text for fixes a server can only get at its start: "needs the server
    restarted with <flag> ... (a server's settings are fixed at its start)"."""
    flags = [RESTART_FLAGS[engine][s] for s in settings]
    return (
        "needs the server restarted with "
        + " ".join(f for f in flags if f is not None)
        + f" ({RESTART_WHY})"
    )


def plan_server_variants(spec: ChecklistSpec, served: Served) -> list[Variant]:
    """The variants the selected checks need against a running server, in run order: only
    those that change the trainer or the request, since the engine's settings are the
    server's. Each row then says which of its fixes need a restart (`needs_restart`).

        as_configured ...... the server as it runs, the user's sampling as given
        explicit ........... the same server, every sampling field explicit
        fp32_trainer ....... explicit's tokens re-scored with an fp32 lm_head on the trainer
    """
    engine = spec.engine  # what the adapter reports is applied when it connects
    t_model = spec.trainer.model_copy(update={"head_dtype": "model", "processing": "processed"})
    checks = set(spec.checks)
    want: set[str] = set()
    if spec.full or "runtime_defaults" in checks:
        want.add("as_configured")
    if checks & {"processed_logprobs", "runtime_defaults", "fp32_head"}:
        want.add("explicit")
    if "fp32_head" in checks or spec.full:
        want |= {"explicit", "fp32_trainer"}
    fp32_label = (
        "fp32 lm_head on both sides (the server's is fp32)"
        if served.head_dtype == "float32"
        else "fp32 lm_head on the trainer only"
    )
    every = [
        Variant(
            "as_configured",
            "as configured: the server's own settings, sampling as given",
            engine,
            t_model,
            explicit_sampling=False,
        ),
        Variant(
            "explicit",
            "the server's own settings, every sampling field explicit",
            engine,
            t_model,
            explicit_sampling=True,
        ),
        Variant(
            "fp32_trainer",
            fp32_label,
            engine,
            t_model.model_copy(update={"head_dtype": "float32"}),
            explicit_sampling=True,
            rescore_of="explicit",
        ),
    ]
    return [v for v in every if v.name in want]


def explicit(sampling: SamplingSettings) -> SamplingSettings:
    """`sampling` with every field the engine could fill set to what the trainer assumes
    (vLLM's neutral default where unset): nothing is left to generation_config."""
    requested = sampling.requested()
    return sampling.model_copy(update={k: requested[k] for k in NEUTRAL_SAMPLING})


# --- the weight-update replays -------------------------------------------------------------


# The servers whose updates `workers.replay` drives through their own update path (vLLM's
# dev-mode endpoints: workers/replay/server.py; SGLang's update API: workers/replay/sglang.py).
REPLAY_SERVER_ENGINES = ("vllm", "sglang")


def replay_not_offered(spec: ChecklistSpec, key: ReplayKey) -> str | None:
    """Why a planned replay cannot run against the spec's server; None when it can."""
    if not spec.server.url:
        return None
    if spec.server.engine not in REPLAY_SERVER_ENGINES:
        return (
            f"weight-update replays against a {spec.server.engine} server are not supported "
            f"by this Parity (workers.replay drives {', '.join(REPLAY_SERVER_ENGINES)} "
            "servers only)"
        )
    if key == "in_flight":
        return (
            "an update in flight is replayed only on an engine Parity builds: over HTTP it "
            "cannot see how far a request has decoded to land the update half-way"
        )
    return None


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
        "server": spec.server,
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
