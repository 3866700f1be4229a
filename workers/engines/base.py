"""What an engine adapter offers: the rollout side of a measurement, wherever the engine runs.

Every job kind samples through `RolloutEngine` and never asks where the engine lives: the
in-process vLLM the worker builds (`workers.rollout.Engine`), a vLLM server over HTTP
(`workers.engines.vllm_server`), or an SGLang engine. The contract is token ids in, sampled
token ids and the engine's logprob of each out (`Rollout`); the trainer side always runs on
the Parity worker, on the same weights.

`ManagedEngine` is what weight-update replays need on top: an update path, a cache flush and
pause/resume. An adapter that cannot do one of these raises `Unsupported` with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from workers.rollout import Rollout
    from workers.specs import EngineSettings, SamplingSettings
    from workers.trainer import Kind

Progress = Callable[[int, int], None]
PauseMode = Literal["abort", "wait", "keep"]

# The value of a setting an engine cannot report (never guessed): shown as is.
UNKNOWN = "unknown"
# How reports and pages name the adapter that answered.
ADAPTER_LABELS = {
    "vllm": "vLLM (in-process)",
    "vllm-server": "vLLM server",
    "sglang": "SGLang server",
}
# The engine each adapter runs, as its version is named ("SGLang 0.5.23").
ADAPTER_ENGINES = {"vllm": "vLLM", "vllm-server": "vLLM", "sglang": "SGLang"}


class Unsupported(Exception):
    """The engine has no way to do this (e.g. a server started without its dev endpoints)."""


@runtime_checkable
class RolloutEngine(Protocol):
    """The rollout side of a measurement."""

    # Which adapter answered: "vllm" (in-process), "vllm-server", "sglang", ...
    adapter: str
    # Seconds it took to build or reach the engine.
    load_seconds: float
    # The engine settings the trainer's processing follows: for an engine Parity builds, the
    # ones it was built with; for a server, what the server reports, the rest as assumed.
    # An engine whose logprobs are of a distribution vLLM's logprobs_mode cannot name (SGLang:
    # "temperature") says which in a `logprobs_kind` attribute (see `logprobs_kind` below).
    settings: EngineSettings

    @property
    def max_model_len(self) -> int: ...

    @property
    def version(self) -> str:
        """The engine's version as the engine itself reports it."""
        ...

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        sampling: SamplingSettings,
        *,
        progress: Progress | None = None,
    ) -> Rollout:
        """Sample `sampling.n` completions per prompt, with the engine's logprob (`lr`) of
        every sampled token and, when `sampling.logprobs_topk` > 0, its top-k."""
        ...

    def effective_settings(self) -> dict[str, Any]:
        """The engine's settings as it resolved them; `UNKNOWN` for what it cannot report."""
        ...


@runtime_checkable
class ManagedEngine(RolloutEngine, Protocol):
    """An engine that can take new weights while it serves (the replay's needs)."""

    def prompt_logprobs(self, prompt_token_ids: Sequence[int]) -> list[float | None]:
        """The engine's logprob of each prompt token given the ones before (None first)."""
        ...

    def update_weights_from_disk(self, path: str) -> None:
        """Load every weight from `path` (a model directory) into the running engine."""
        ...

    def reset_prefix_cache(self) -> bool | None:
        """Drop the engine's prefix cache; what the engine answered, None when it does not."""
        ...

    def pause(self, mode: PauseMode = "wait") -> None: ...

    def resume(self) -> None: ...


def logprobs_kind(engine: RolloutEngine) -> Kind:
    """The distribution the engine's logprobs describe, as the trainer's `Processing` kinds
    name it: the adapter's own `logprobs_kind` where it has one, else its logprobs_mode."""
    kind = getattr(engine, "logprobs_kind", None)
    if kind in ("raw", "processed", "temperature"):
        return kind  # type: ignore[no-any-return]
    return "processed" if engine.settings.logprobs_mode == "processed" else "raw"
