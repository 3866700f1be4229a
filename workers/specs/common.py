"""The settings every job spec shares (engine, trainer, sampling) and the field types of
their common fields: one definition for the CLI, the API, the browser form and the job.

Defaults mirror what a user who sets nothing runs with vLLM V1 (`logprobs_mode` raw,
`generation_config="auto"`, vLLM's sampling defaults), except where this product's CPU demo
needs otherwise (`gpu_memory_utilization`, `enforce_eager`), so that a comparison left at its
defaults measures the setup people actually have; the diagnoses then name what to change.
Every default works on the tiny demo model (`python -m workers.tiny_model`).

Sampling fields left unset (None) behave exactly as in a vLLM request: the engine fills them
from its default sampling parameters, which under `generation_config="auto"` come from the
model's generation_config.json. The trainer only knows what was asked for (unset = vLLM's
neutral default), which is how that hidden difference shows up in the metrics.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from workers import prompts as prompt_sets
from workers.reporting import UserError

# vLLM clamps 0 < temperature < 0.01 up to 0.01 (vllm/sampling_params.py, _MAX_TEMP); rather
# than silently sampling at a temperature the user did not ask for, such values are refused.
MIN_TEMPERATURE = 0.01
# vLLM's neutral defaults for unset request fields (entrypoints/openai/completion/protocol.py,
# _DEFAULT_SAMPLING_PARAMS): what the trainer assumes when the user leaves a field unset.
NEUTRAL_SAMPLING: dict[str, float | int] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
# vLLM's max_logprobs default: an engine refuses requests for more top logprobs than this.
MAX_LOGPROBS = 20
# The setup the migration checklist recommends for RL (its "all fixes"): the engine returns
# processed logprobs and fills nothing from generation_config.json, and both sides compute
# the lm_head in fp32. One definition for the checklist's variants and the form's preset.
RL_ENGINE: dict[str, Any] = {
    "logprobs_mode": "processed",
    "generation_config": "vllm",
    "head_dtype": "float32",
}
RL_TRAINER: dict[str, Any] = {"head_dtype": "float32", "processing": "match_engine"}


def vllm_default(value: Any) -> dict[str, Any]:
    """Field metadata: what vLLM itself uses when the setting is not given, so that the form
    can say which of Parity's defaults are vLLM's own (what changing nothing gives)."""
    return {"vllm_default": value}


S = TypeVar("S", bound=BaseModel)


class Settings(BaseModel):
    """Frozen, and unknown fields are refused (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineSettings(Settings):
    """How vLLM V1 is built: what changes the engine itself (a different value, a new engine)."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="bfloat16",
        description="Weights and activations dtype ('auto': the model config's).",
        json_schema_extra=vllm_default("auto"),
    )
    logprobs_mode: Literal["processed", "raw"] = Field(
        default="raw",
        description=(
            "Which logprobs the engine returns: 'processed' = of the distribution it samples "
            "from, after penalties, temperature, min-p, top-k/top-p (vLLM "
            "logprobs_mode='processed_logprobs'); 'raw' = of the model's unprocessed "
            "distribution (vLLM's default, 'raw_logprobs')."
        ),
        json_schema_extra=vllm_default("raw"),
    )
    generation_config: Literal["auto", "vllm"] = Field(
        default="auto",
        description=(
            "'auto' (vLLM's default) applies the model's generation_config.json to every "
            "sampling field you leave unset; 'vllm' uses vLLM's neutral defaults."
        ),
        json_schema_extra=vllm_default("auto"),
    )
    enable_prefix_caching: bool = Field(
        default=True,
        description="vLLM prefix caching (V1 default on).",
        json_schema_extra=vllm_default(True),
    )
    max_num_seqs: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Most sequences the engine batches per step (empty: vLLM's default).",
        json_schema_extra=vllm_default(None),
    )
    enforce_eager: bool = Field(
        default=True,
        description="Skip torch.compile and CUDA graphs (much faster engine start).",
        json_schema_extra=vllm_default(False),
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="The engine's global random seed.",
        json_schema_extra=vllm_default(0),
    )
    gpu_memory_utilization: float = Field(
        default=0.2,
        gt=0.0,
        le=1.0,
        description=(
            "Fraction of accelerator memory vLLM may use; on CPU the fraction of RAM reserved "
            "for the engine."
        ),
        json_schema_extra=vllm_default(0.9),
    )
    head_dtype: Literal["model", "float32"] = Field(
        default="model",
        description=(
            "lm_head dtype: 'float32' computes the logits in fp32 "
            "(vLLM hf_overrides={'head_dtype': 'float32'})."
        ),
        json_schema_extra=vllm_default("model"),
    )
    max_model_len: int | None = Field(
        default=None,
        ge=16,
        description="Context length (empty: the model's own).",
        json_schema_extra=vllm_default(None),
    )

    @property
    def vllm_logprobs_mode(self) -> str:
        """The value of vLLM's `logprobs_mode` engine argument."""
        return f"{self.logprobs_mode}_logprobs"


# Which engines a server URL may be (one adapter module each: workers.engines.<name>_server).
SERVER_ENGINES = ("vllm", "sglang")
_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")


def _server_url(v: str | None) -> str | None:
    if v is None or not v.strip():
        return None
    url = v.strip().rstrip("/")
    if not _URL.match(url):
        raise ValueError(
            f"{v!r} is not an http(s) base URL; give the server's address, e.g. "
            "http://10.0.0.5:8000"
        )
    # Users paste the OpenAI base URL (".../v1") as often as the server's.
    return url.removesuffix("/v1")


def _blank_is_none(v: str | None) -> str | None:
    return v.strip() or None if v is not None else None


class ServerSettings(Settings):
    """An engine the user already runs as a server, reached over HTTP (empty URL: Parity
    builds vLLM in-process from the model). The server was started with its own settings:
    the engine section below then only fills in what the server cannot report."""

    url: Annotated[str | None, AfterValidator(_server_url)] = Field(
        default=None,
        max_length=500,
        description=(
            "Base URL of a running vLLM or SGLang server, e.g. http://10.0.0.5:8000 (empty: "
            "Parity builds vLLM in-process from the model)."
        ),
    )
    api_key: Annotated[str | None, AfterValidator(_blank_is_none)] = Field(
        default=None,
        max_length=500,
        description="The server's --api-key, when it has one (sent as a Bearer token).",
        json_schema_extra={"secret": True},
    )
    served_model: Annotated[str | None, AfterValidator(_blank_is_none)] = Field(
        default=None,
        max_length=500,
        description=(
            "The name the server serves the model under (empty: its only model, which must "
            "have been started from a directory of the same name as the model above)."
        ),
    )
    engine: Literal["vllm", "sglang"] = Field(
        default="vllm", description="Which engine serves the URL: vLLM or SGLang."
    )
    timeout_s: float = Field(
        default=600.0, gt=0.0, le=86_400.0, description="Seconds to wait for one request."
    )


# Spec fields never shown back or logged (the job page, the API's job view).
SECRET_FIELDS = ("server.api_key",)


def redact(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A job spec with its secrets replaced by "***" (set) so that pages can show it."""
    out = dict(spec)
    for path in SECRET_FIELDS:
        section, name = path.split(".")
        if isinstance(out.get(section), Mapping) and out[section].get(name):
            out[section] = {**out[section], name: "***"}
    return out


class TrainerSettings(Settings):
    """How the trainer side (HF transformers) loads the model and scores the engine's tokens."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="Trainer dtype ('auto': the model config's)."
    )
    head_dtype: Literal["model", "float32"] = Field(
        default="model", description="lm_head dtype: 'float32' projects the hidden states in fp32."
    )
    attn_implementation: Literal["eager", "sdpa"] = Field(
        default="sdpa", description="transformers attention implementation."
    )
    processing: Literal["match_engine", "raw", "processed", "temperature"] = Field(
        default="match_engine",
        description=(
            "Which distribution the trainer scores: 'match_engine' = the same kind the engine "
            "returns (its logprobs_mode); 'raw' = full-vocabulary log-softmax at T=1; "
            "'processed' = penalties, temperature, min-p, top-k/top-p with renormalisation; "
            "'temperature' = logits / T on the full vocabulary (what most RL trainers do)."
        ),
    )
    batch_size: int = Field(default=16, ge=1, le=1024, description="Sequences per forward pass.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where the trainer runs ('auto': cuda when available)."
    )


class SamplingSettings(Settings):
    """What the rollout asks vLLM for; empty fields take the engine's default."""

    temperature: float | None = Field(
        default=None,
        ge=0.0,
        le=2.0,
        description="0 = greedy; empty: engine default (1.0 unless auto).",
        json_schema_extra=vllm_default(None),
    )
    top_p: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Nucleus mass, in (0, 1].",
        json_schema_extra=vllm_default(None),
    )
    top_k: int | None = Field(
        default=None,
        ge=-1,
        description="Keep the k most likely tokens (0 or -1: off).",
        json_schema_extra=vllm_default(None),
    )
    min_p: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Drop tokens below min_p x the top probability.",
        json_schema_extra=vllm_default(None),
    )
    repetition_penalty: float | None = Field(
        default=None,
        gt=0.0,
        le=10.0,
        description="> 1 discourages tokens already in prompt or output.",
        json_schema_extra=vllm_default(None),
    )
    presence_penalty: float | None = Field(
        default=None,
        ge=-2.0,
        le=2.0,
        description="Subtracted from tokens already in the output.",
        json_schema_extra=vllm_default(None),
    )
    frequency_penalty: float | None = Field(
        default=None,
        ge=-2.0,
        le=2.0,
        description="Subtracted per occurrence in the output.",
        json_schema_extra=vllm_default(None),
    )
    max_tokens: int = Field(
        default=64,
        ge=1,
        le=8192,
        description="Tokens to sample per sequence.",
        json_schema_extra=vllm_default(16),
    )
    n: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Samples per prompt.",
        json_schema_extra=vllm_default(1),
    )
    seed: int | None = Field(
        default=0,
        ge=0,
        le=2**63 - 1,
        description="Per-request seed (empty: unseeded).",
        json_schema_extra=vllm_default(None),
    )
    logprobs_topk: int = Field(
        default=5,
        ge=0,
        le=MAX_LOGPROBS,
        description="Top-k logprobs to fetch from the engine per token (argmax/top-k agreement).",
    )

    @field_validator("temperature")
    @classmethod
    def _temperature_not_clamped(cls, v: float | None) -> float | None:
        if v is not None and (not math.isfinite(v) or 0.0 < v < MIN_TEMPERATURE):
            raise ValueError(
                f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}: vLLM would "
                f"silently raise {v} to {MIN_TEMPERATURE}"
            )
        return v

    @model_validator(mode="after")
    def _greedy_needs_one_sample(self) -> SamplingSettings:
        if self.temperature == 0.0 and self.n > 1:
            raise ValueError("n must be 1 when temperature is 0 (greedy sampling is deterministic)")
        return self

    def requested(self) -> dict[str, Any]:
        """The sampling parameters as the user (and so the trainer) sees them: set fields as
        given, unset ones at vLLM's neutral defaults."""
        out: dict[str, Any] = {
            k: (getattr(self, k) if getattr(self, k) is not None else v)
            for k, v in NEUTRAL_SAMPLING.items()
        }
        out.update(max_tokens=self.max_tokens, n=self.n, seed=self.seed)
        return out


def _model_ref(v: str) -> str:
    if not v.strip():
        raise ValueError("model must name a local directory or a hub id")
    return v.strip()


def _inline_prompts(v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if v is None:
        return v
    if not v:
        raise ValueError("prompts is empty; leave it unset to use the built-in set")
    return [prompt_sets.check_item(item, f"prompt {i + 1}") for i, item in enumerate(v)]


def _known_thresholds(v: dict[str, float]) -> dict[str, float]:
    from parity.metrics import Thresholds

    Thresholds.from_dict(v)  # raises on an unknown key, naming it
    return v


# Field types shared by every job spec (comparison, replay, checklist).
ModelRef = Annotated[str, AfterValidator(_model_ref)]
InlinePrompts = Annotated[list[dict[str, Any]] | None, AfterValidator(_inline_prompts)]
ThresholdOverrides = Annotated[dict[str, float], AfterValidator(_known_thresholds)]


class PromptSpec(Settings):
    """The fields of a job that samples from a model on a prompt set (comparison, checklist)."""

    model: ModelRef = Field(
        default="var/models/tiny-llama",
        min_length=1,
        max_length=500,
        description="Local model directory on the worker, or a Hugging Face hub id.",
    )
    prompt_set: str = Field(
        default=prompt_sets.BUILTIN,
        min_length=1,
        max_length=200,
        description="'builtin' (shipped with Parity) or the name of the inline prompts below.",
    )
    prompts: InlinePrompts = Field(
        default=None,
        description=(
            'Inline prompts: [{"prompt": "..."}] or [{"messages": [{"role": "user", '
            '"content": "..."}]}]; these replace the built-in set.'
        ),
    )
    num_prompts: int | None = Field(
        default=None, ge=1, le=100_000, description="Use at most this many prompts (empty: all)."
    )

    @model_validator(mode="after")
    def _prompt_source_exists(self) -> PromptSpec:
        if self.prompts is None and self.prompt_set != prompt_sets.BUILTIN:
            raise ValueError(
                f"prompt set {self.prompt_set!r} has no prompts: pass them inline in 'prompts' "
                f"or use prompt_set={prompt_sets.BUILTIN!r}"
            )
        return self


def validation_message(exc: ValidationError) -> str:
    """The one wording of a spec error, for the API, the forms, the job and the CLI: one
    "where: what" per field, e.g. "sampling.temperature: Input should be ...; model: ..."."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def parse_spec(model: type[S], data: Mapping[str, Any]) -> S:
    """`data` validated as `model`; a UserError worded by `validation_message` otherwise."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise UserError(validation_message(exc)) from None
