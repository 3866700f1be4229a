"""The replay's own vLLM V1 engine: built with the weight-sync worker extension, asked what
it offers for weight updates, sampled between updates, and shut down after the replay.

vLLM is imported inside the functions (a replay is a job kind the web process only validates).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from parity.reports.replay import Capabilities, UpdateInfo
from workers.replay.batch import Batch
from workers.replay.weights import Handle, write_weights
from workers.specs import EngineSettings, SamplingSettings

if TYPE_CHECKING:
    from workers.rollout import Engine
    from workers.trainer import Kind
    from workers.weight_sync import ParamChecksum


def build_engine(model: str, settings: EngineSettings, extension: str) -> Engine:
    """A vLLM V1 engine with the weight-sync extension, built for this replay only.

    Not the comparisons' warm engine: a replay changes the engine's weights, so its engine
    must never serve a later comparison (shut it down with `shutdown_replay_engine`).
    """
    from workers import rollout

    rollout.shutdown_engine()
    key = ("replay", model, uuid.uuid4().hex)
    return rollout.build_engine(model, settings, key, worker_extension_cls=extension)


def shutdown_replay_engine(engine: Engine) -> None:
    """Shut the replay's engine down and take its extension out of vLLM's worker class.

    vLLM injects `worker_extension_cls` by appending it to the worker class's `__bases__`,
    for the life of the process. With the engine core in this process (rollout's default),
    a later engine with a *different* extension class would then trip vLLM's attribute
    conflict check, so the injected base is removed again here.
    """
    llm = engine.llm
    try:
        worker_cls_name = llm.llm_engine.vllm_config.parallel_config.worker_cls
    except AttributeError:
        worker_cls_name = None
    core = getattr(llm.llm_engine, "engine_core", None)
    try:
        if core is not None:
            core.shutdown()
    except Exception:  # noqa: BLE001 - must not mask the error that ended the replay
        import logging

        logging.getLogger(__name__).warning("replay engine shutdown failed", exc_info=True)
    finally:
        if isinstance(worker_cls_name, str):
            _uninstall_extension(worker_cls_name)
        import gc

        del llm, core
        gc.collect()


def _uninstall_extension(worker_cls_name: str) -> None:
    from vllm.utils.import_utils import resolve_obj_by_qualname

    from workers.weight_sync import WeightSyncExtension

    try:
        worker_cls = resolve_obj_by_qualname(worker_cls_name)
    except Exception:  # noqa: BLE001 - nothing to undo if the class cannot be found
        return
    bases = tuple(
        b
        for b in worker_cls.__bases__
        if not (isinstance(b, type) and issubclass(b, WeightSyncExtension))
    )
    if bases != worker_cls.__bases__:
        worker_cls.__bases__ = bases


def capabilities(llm: Any) -> Capabilities:
    """What this vLLM offers for weight updates, read from the installed version."""
    import inspect
    from typing import get_args

    import vllm

    try:
        from vllm.v1.engine import PauseMode

        pause_modes = [str(m) for m in get_args(PauseMode)]
    except ImportError:
        pause_modes = []
    try:
        from vllm.v1.engine.async_llm import AsyncLLM

        pause, resume = (
            hasattr(AsyncLLM, "pause_generation"),
            hasattr(AsyncLLM, "resume_generation"),
        )
    except ImportError:
        pause = resume = False
    cfg = llm.llm_engine.vllm_config
    info = llm.collective_rpc("parity_extension_info")
    out = Capabilities(
        vllm_version=str(vllm.__version__),
        llm_collective_rpc=hasattr(llm, "collective_rpc"),
        llm_reset_prefix_cache=hasattr(llm, "reset_prefix_cache"),
        pause_modes=pause_modes,
        async_llm_pause_generation=pause,
        async_llm_resume_generation=resume,
        engine_core_multiprocessing=os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0",
        async_scheduling=bool(getattr(cfg.scheduler_config, "async_scheduling", False)),
        kv_block_size=int(cfg.cache_config.block_size),
        builtin_weight_transfer_config=getattr(cfg, "weight_transfer_config", None) is not None,
        extension=info[0] if info else None,
    )
    if out["llm_reset_prefix_cache"]:
        out["reset_prefix_cache_params"] = list(
            inspect.signature(llm.reset_prefix_cache).parameters
        )
    sleep = getattr(llm, "sleep", None)
    if sleep is not None:
        out["llm_sleep_params"] = list(inspect.signature(sleep).parameters)
    return out


def generate_batch(
    engine: Engine, prompt_ids: Sequence[Sequence[int]], sampling: SamplingSettings
) -> Batch:
    """Sample on the engine as it is now (rollout.generate), same seeds every time."""
    from workers import rollout

    r = rollout.generate(engine, prompt_ids, sampling)
    cached = r.extra.get("num_cached_tokens") if r.extra else None
    return Batch(r, list(cached) if cached else [None] * len(r.token_ids))


class InProcessReplay:
    """The replay's engine when Parity builds it: vLLM in this process with the weight-sync
    extension (`build_engine`); the same steps as `workers.replay.server.ServerReplay`."""

    adapter = "vllm"
    checksum_method = "parity_extension"
    checksums_unavailable: str | None = None
    not_comparable: dict[str, str] = {}  # noqa: RUF012 - never written: every param is read
    # The trainer scores the kind the spec's logprobs_mode says; seeds reproduce a batch.
    logprobs_kind: Kind | None = None
    unseeded: str | None = None

    def __init__(self, engine: Engine, load_mode: str) -> None:
        self.engine = engine
        self.load_mode = load_mode
        self._files: list[Path] = []

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def effective_settings(self) -> dict[str, Any]:
        return self.engine.effective_settings()

    def capabilities(self) -> Capabilities:
        return capabilities(self.engine.llm)

    def sample(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingSettings) -> Batch:
        return generate_batch(self.engine, prompt_ids, sampling)

    def push(self, state: Mapping[str, Any], handle: Handle | None) -> UpdateInfo:
        """W_k into the engine through the extension (`parity_update_weights`): a checkpoint
        directory as it is, else W_k written to a file the engine reads (deleted on close)."""
        if handle is None:
            path = write_weights(state)
            self._files.append(path)
            handle = {"kind": "safetensors", "path": str(path)}
        kwargs = {"handle": handle, "mode": self.load_mode}
        t0 = time.perf_counter()
        res = self.engine.llm.collective_rpc("parity_update_weights", kwargs=kwargs)[0]
        return update_info(res, time.perf_counter() - t0)

    def reset_prefix_cache(self) -> bool | None:
        return bool(self.engine.llm.reset_prefix_cache())

    def prepare(self, w0: Mapping[str, Any]) -> None:
        """Nothing to calibrate: the extension reads every parameter through its kernel."""

    def checksums(self) -> dict[str, ParamChecksum] | None:
        return cast(
            "dict[str, ParamChecksum]", self.engine.llm.collective_rpc("parity_param_checksums")[0]
        )

    def expected_checksums(
        self, state: Mapping[str, Any], engine: Mapping[str, ParamChecksum]
    ) -> dict[str, ParamChecksum]:
        from workers.replay.checksums import expected_checksums

        return expected_checksums(state, engine)

    def close(self, w0_path: str) -> str | None:
        for path in self._files:
            path.unlink(missing_ok=True)
        shutdown_replay_engine(self.engine)
        return None


def update_info(res: Mapping[str, Any], seconds: float) -> UpdateInfo:
    """What the worker extension's parity_update_weights reported, in counts."""
    received, sent = list(res.get("received", [])), list(res.get("sent", []))
    info = UpdateInfo(
        rpc_seconds=seconds,
        load_seconds=res.get("seconds"),
        received=len(received),
        sent=len(sent),
        withheld_by_extension=sorted(set(received) - set(sent)),
        loaded_vllm_params=len(res.get("loaded", [])),
        running_requests_at_update=res.get("running_requests", {}),
    )
    if res.get("retied"):
        info["retied_kernels"] = list(res["retied"])
    return info
