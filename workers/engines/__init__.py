"""Engine adapters: where the rollout side of a measurement runs.

- in-process vLLM V1, built and kept warm by the worker (`workers.rollout.Engine`);
- a vLLM server the user runs, over HTTP (`workers.engines.vllm_server`);
- an SGLang server the user runs, over its native HTTP API (`workers.engines.sglang_server`,
  on the client `workers.engines.sglang`).

`open_engine` is the one place that picks between them from a job's settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.engines.base import (
    ADAPTER_ENGINES,
    ADAPTER_LABELS,
    UNKNOWN,
    ManagedEngine,
    RolloutEngine,
    Unsupported,
    logprobs_kind,
)

if TYPE_CHECKING:
    from workers.specs import EngineSettings, ServerSettings

__all__ = [
    "ADAPTER_ENGINES",
    "ADAPTER_LABELS",
    "UNKNOWN",
    "ManagedEngine",
    "RolloutEngine",
    "Unsupported",
    "logprobs_kind",
    "open_engine",
    "release",
]


def open_engine(
    model_path: str, settings: EngineSettings, server: ServerSettings | None = None
) -> tuple[RolloutEngine, bool]:
    """(engine, reused): the user's server when `server.url` is set (connected and checked
    against `model_path`, UserError otherwise), else the warm in-process vLLM for
    `settings` (built if needed)."""
    if server is not None and server.url:
        import importlib

        # One adapter module per engine a URL may be (specs.SERVER_ENGINES), each with
        # connect(server, model_path, assumed_settings).
        adapter = importlib.import_module(f"workers.engines.{server.engine}_server")
        return adapter.connect(server, model_path, settings), False
    from workers import rollout

    return rollout.get_engine(model_path, settings)


def release(engine: RolloutEngine) -> None:
    """Let go of an engine a job no longer needs: a server's connections are closed; the
    in-process engine stays warm for the next job."""
    close = getattr(engine, "close", None)
    if close is not None:
        close()
