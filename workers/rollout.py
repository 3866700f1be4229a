"""The rollout side: vLLM V1 built from `EngineSettings`, kept warm, sampling with logprobs.

The engine core runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0` unless the
environment says otherwise): on CPU that is one engine start of ~4 s instead of two process
spawns of ~45 s, a shutdown that frees everything, and no child process for a Celery solo
worker to lose. The process keeps the last engine and reuses it for a request with the same
model (and model files) and the same engine settings; anything else shuts it down first.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.reporting import UserError
from workers.specs import NEUTRAL_SAMPLING, EngineSettings, SamplingSettings

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

REPO_ROOT = Path(__file__).resolve().parent.parent
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Sampling fields a model's generation_config.json can set (vllm/config/model.py,
# get_diff_sampling_param), in the order reports list them.
SAMPLING_FIELDS = tuple(NEUTRAL_SAMPLING)


def resolve_model(model: str) -> str:
    """The local directory or hub id vLLM and transformers should load, checked cheaply.

    Raises UserError before any engine work when `model` is a path that does not exist, a
    directory without config.json, or a hub id that is neither cached nor reachable.
    """
    path = Path(model).expanduser()
    if not path.exists() and not path.is_absolute():
        # The defaults name the demo model relative to the repository; a worker started
        # elsewhere, or a bare name under PARITY_MODELS_DIR, should still find it.
        candidates = [REPO_ROOT / path]
        if "/" not in model and os.environ.get("PARITY_MODELS_DIR"):
            candidates.insert(0, Path(os.environ["PARITY_MODELS_DIR"]) / model)
        path = next((c for c in candidates if c.exists()), path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"model directory {model!r} has no config.json: point at the folder that "
                "holds config.json and the weights"
            )
        return str(path.resolve())
    if path.exists():
        raise UserError(f"model {model!r} is a file; pass the model's directory instead")
    looks_like_path = model.startswith(("/", ".", "~")) or not _HUB_ID.match(model)
    if looks_like_path:
        raise UserError(
            f"model path {model!r} does not exist on this worker (working directory "
            f"{os.getcwd()}); build the demo model with `python -m workers.tiny_model "
            "--out var/models` or give an existing model directory"
        )
    return _check_hub_id(model)


def _check_hub_id(repo_id: str) -> str:
    try:
        import huggingface_hub
        from huggingface_hub.utils import EntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - transformers depends on it
        return repo_id
    if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str):
        return repo_id
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise UserError(
            f"model {repr(repo_id)} is neither a local directory nor in the Hugging Face "
            "cache, and HF_HUB_OFFLINE is set on this worker"
        )
    try:
        huggingface_hub.hf_hub_download(repo_id, "config.json")
    except RepositoryNotFoundError:
        raise UserError(
            f"model {repr(repo_id)} is not a local directory and the Hugging Face hub has "
            "no such repository (or it needs a token this worker does not have)"
        ) from None
    except EntryNotFoundError:
        raise UserError(f"hub repository {repo_id!r} has no config.json: not a model") from None
    except Exception as exc:  # noqa: BLE001 - network errors of every kind mean the same here
        raise UserError(
            f"model {repr(repo_id)} is not a local directory and the Hugging Face hub "
            f"could not be reached from this worker ({type(exc).__name__})"
        ) from None
    return repo_id


def model_files_key(model: str) -> str:
    """Changes when a local model's files change, so a rebuilt model is never served stale."""
    path = Path(model)
    if not path.is_dir():
        return model
    parts = sorted(
        f"{p.name}:{st.st_size}:{st.st_mtime_ns}"
        for p in path.iterdir()
        if p.is_file() and (st := p.stat())
    )
    return "|".join(parts)


@dataclass
class Engine:
    """A built vLLM V1 `LLM` and what it was built from: the in-process adapter of
    `workers.engines.RolloutEngine`."""

    model: str
    settings: EngineSettings
    llm: Any
    load_seconds: float
    key: tuple[str, str, str]
    adapter: str = "vllm"

    @property
    def version(self) -> str:
        import vllm

        return str(vllm.__version__)

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        sampling: SamplingSettings,
        *,
        progress: Progress | None = None,
    ) -> Rollout:
        """`generate` (below) on this engine."""
        return generate(self, prompt_token_ids, sampling, progress=progress)

    def effective_settings(self) -> dict[str, Any]:
        """The engine's settings as vLLM resolved them (defaults filled in)."""
        import vllm.envs as envs

        cfg = self.llm.llm_engine.vllm_config
        mc = cfg.model_config
        return {
            "dtype": str(mc.dtype).removeprefix("torch."),
            "head_dtype": str(mc.head_dtype).removeprefix("torch."),
            "logprobs_mode": mc.logprobs_mode,
            "generation_config": mc.generation_config,
            "enable_prefix_caching": bool(cfg.cache_config.enable_prefix_caching),
            "max_num_seqs": cfg.scheduler_config.max_num_seqs,
            "chunked_prefill": bool(cfg.scheduler_config.enable_chunked_prefill),
            "max_num_batched_tokens": cfg.scheduler_config.max_num_batched_tokens,
            "max_model_len": mc.max_model_len,
            "enforce_eager": bool(mc.enforce_eager),
            "seed": mc.seed,
            "gpu_memory_utilization": cfg.cache_config.gpu_memory_utilization,
            "multiprocessing": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0",
            # What a server reports from its environment too (the determinism certificate).
            "batch_invariant": bool(envs.VLLM_BATCH_INVARIANT),
        }

    @property
    def max_model_len(self) -> int:
        return int(self.llm.llm_engine.vllm_config.model_config.max_model_len)


_lock = threading.Lock()
_current: Engine | None = None


def get_engine(model: str, settings: EngineSettings) -> tuple[Engine, bool]:
    """(engine, reused): the warm engine when it was built from the same model files and the
    same settings, else a new one, built after the previous engine was shut down."""
    global _current
    resolved = resolve_model(model)
    key = (resolved, model_files_key(resolved), settings.model_dump_json())
    with _lock:
        if _current is not None and _current.key == key:
            return _current, True
        _shutdown_locked()
        _current = build_engine(resolved, settings, key)
        return _current, False


def shutdown_engine() -> None:
    """Shut the warm engine down and free its memory (no-op when there is none)."""
    with _lock:
        _shutdown_locked()


def discard_engine(engine: Engine) -> None:
    """Shut `engine` down if it is the warm one, so that it is never reused."""
    with _lock:
        if _current is engine:
            _shutdown_locked()


def _shutdown_locked() -> None:
    global _current
    engine, _current = _current, None
    if engine is None:
        return
    core = getattr(engine.llm.llm_engine, "engine_core", None)
    try:
        if core is not None:
            core.shutdown()
    except Exception:  # noqa: BLE001 - a failed shutdown must not block the next engine
        log.warning("vLLM engine shutdown failed", exc_info=True)
    del engine, core
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def engine_kwargs(model: str, settings: EngineSettings) -> dict[str, Any]:
    """The `vllm.LLM(...)` arguments for these settings (also shown to users as the fix)."""
    kwargs: dict[str, Any] = {
        "model": model,
        "dtype": settings.dtype,
        "logprobs_mode": settings.vllm_logprobs_mode,
        "generation_config": settings.generation_config,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "enforce_eager": settings.enforce_eager,
        "seed": settings.seed,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
    }
    if settings.max_num_seqs is not None:
        kwargs["max_num_seqs"] = settings.max_num_seqs
    if settings.max_model_len is not None:
        kwargs["max_model_len"] = settings.max_model_len
    if settings.head_dtype == "float32":
        kwargs["hf_overrides"] = {"head_dtype": "float32"}
    return kwargs


def platform_kwargs(model: str, settings: EngineSettings) -> dict[str, Any]:
    """Arguments the platform needs beyond the user's settings (effective_settings shows them).

    On the CPU, prompts are prefilled whole: vLLM discards the sample of a partial (chunked)
    prefill and rewinds that request's seeded generator, which CPU generators refuse ("CPU
    Generator does not use offset"), so a seeded run whose prompts overflow one step's token
    budget (e.g. n=32) failed. Without chunking the budget must hold the longest prompt.
    """
    from vllm.platforms import current_platform

    longest = settings.max_model_len or _configured_max_len(model)
    if not current_platform.is_cpu() or longest is None:
        return {}
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(4096, longest)}


def _configured_max_len(model: str) -> int | None:
    """max_position_embeddings from a local model's config.json (None when unknown)."""
    try:
        config = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("max_position_embeddings") or config.get("text_config", {}).get(
        "max_position_embeddings"
    )
    return int(value) if isinstance(value, int) and value > 0 else None


def build_engine(
    model: str, settings: EngineSettings, key: tuple[str, str, str], **extra: Any
) -> Engine:
    """A new vLLM V1 engine for these settings, outside the warm cache.

    `extra` goes to `vllm.LLM` as is (the replay's `worker_extension_cls`).
    """
    from vllm import LLM

    started = time.perf_counter()
    kwargs = engine_kwargs(model, settings) | platform_kwargs(model, settings)
    try:
        llm = LLM(**kwargs, **extra, disable_log_stats=True)
    except (OSError, ValueError) as exc:
        # vLLM reports unusable models and settings (unknown architecture, unsupported
        # dtype or head size, too little memory) as these; anything else is a crash.
        raise UserError(f"vLLM could not load {repr(model)}: {first_line(exc)}") from exc
    return Engine(model, settings, llm, time.perf_counter() - started, key)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, bounded: what a failed job shows."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


@dataclass
class Rollout:
    """What the engine sampled. Sequence i continues prompt `prompt_index[i]`."""

    prompt_token_ids: list[list[int]]
    prompt_index: list[int]
    token_ids: list[list[int]]
    lr: list[list[float]]
    finish_reasons: list[str | None]
    requested: dict[str, Any]
    effective: dict[str, Any]
    model_defaults: dict[str, Any]
    vllm_version: str
    topk_ids: list[list[list[int]]] | None = None
    topk_logprobs: list[list[list[float]]] | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def changed_by_defaults(self) -> dict[str, tuple[Any, Any]]:
        """{field: (requested, effective)} for every sampling field the engine's defaults
        changed."""
        return {
            k: (self.requested[k], self.effective[k])
            for k in SAMPLING_FIELDS
            if self.requested[k] != self.effective[k]
        }


def model_sampling_defaults(llm: Any) -> dict[str, Any]:
    """The sampling fields in which the engine's defaults differ from vLLM's neutral ones:
    non-empty only when generation_config="auto" picked them up from the model."""
    from vllm import SamplingParams

    defaults, neutral = llm.get_default_sampling_params(), SamplingParams()
    return {
        k: getattr(defaults, k)
        for k in (*SAMPLING_FIELDS, "max_tokens")
        if getattr(defaults, k) != getattr(neutral, k)
    }


def server_sampling(sampling: SamplingSettings, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """What a server samples with for a request of `sampling`: each field as asked, else the
    server's default for it (`defaults`), else the neutral value; greedy (T=0) ignores
    top-p, top-k and min-p. vLLM's merge (completion/protocol.py to_sampling_params), which
    SGLang's /generate shares with its preferred sampling params."""
    out = {
        k: getattr(sampling, k)
        if getattr(sampling, k) is not None
        else defaults.get(k, NEUTRAL_SAMPLING[k])
        for k in SAMPLING_FIELDS
    }
    if out["temperature"] < 1e-5:
        out.update(top_p=1.0, top_k=0, min_p=0.0)
    out.update(max_tokens=sampling.max_tokens, n=sampling.n, seed=sampling.seed)
    return out


def effective_sampling(sampling: SamplingSettings, llm: Any) -> Any:
    """The `SamplingParams` vLLM runs for this request: each field as set by the user, else
    the engine's default (`LLM.get_default_sampling_params()`, i.e. the model's
    generation_config.json under "auto"), else vLLM's neutral default.

    This is vLLM's own merge for requests ("Priority: user -> server default -> OpenAI
    default", vllm/entrypoints/openai/completion/protocol.py, to_sampling_params). Offline
    `LLM.generate(prompts)` with no SamplingParams applies the same defaults.
    """
    from vllm import SamplingParams

    defaults = llm.get_default_sampling_params()
    values = {
        k: getattr(sampling, k) if getattr(sampling, k) is not None else getattr(defaults, k)
        for k in SAMPLING_FIELDS
    }
    return SamplingParams(
        **values,
        n=sampling.n,
        seed=sampling.seed,
        max_tokens=sampling.max_tokens,
        logprobs=sampling.logprobs_topk,
        # Text is decoded only for the few sequences a report shows.
        detokenize=False,
    )


def sampling_dict(params: Any) -> dict[str, Any]:
    """The fields of a `SamplingParams` that decide which tokens are sampled and scored."""
    out = {k: getattr(params, k) for k in SAMPLING_FIELDS}
    out.update(max_tokens=params.max_tokens, n=params.n, seed=params.seed)
    return out


class _ProgressBar:
    """The part of tqdm's interface `LLM.generate(use_tqdm=...)` uses, reporting finished
    requests to a callback instead of drawing a bar."""

    def __init__(self, callback: Progress, total: int, **_: Any) -> None:
        self.callback, self.total, self.n = callback, total, 0
        self.started = time.perf_counter()
        self.postfix: Any = None

    @property
    def format_dict(self) -> dict[str, float]:
        return {"elapsed": max(time.perf_counter() - self.started, 1e-9)}

    def update(self, n: int = 1) -> None:
        self.n += n
        self.callback(self.n, self.total)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def generate(
    engine: Engine,
    prompt_token_ids: Sequence[Sequence[int]],
    sampling: SamplingSettings,
    *,
    progress: Progress | None = None,
) -> Rollout:
    """Sample `sampling.n` completions of every prompt (token ids) with the engine's
    logprob of each sampled token (`lr`) and, when `sampling.logprobs_topk` > 0, the top-k.

    The reported `effective` parameters are read back from the `SamplingParams` object that
    was passed to vLLM, after vLLM's own normalisation (e.g. greedy resets top-p/top-k).
    `progress(done, total)` counts finished requests the way vLLM's progress bar does.
    """
    import vllm
    from vllm.inputs import TokensPrompt

    too_long = [i for i, ids in enumerate(prompt_token_ids) if len(ids) >= engine.max_model_len]
    if too_long:
        raise UserError(
            f"{len(too_long)} prompt(s) (first: prompt {too_long[0] + 1}, "
            f"{len(prompt_token_ids[too_long[0]])} tokens) do not fit the engine's "
            f"max_model_len={engine.max_model_len}; shorten them or raise max_model_len"
        )
    params = effective_sampling(sampling, engine.llm)
    requests = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_token_ids]
    use_tqdm: Any = False
    if progress is not None:

        def use_tqdm(iterable: Any = None, **kwargs: Any) -> Any:
            # vLLM also wraps its prompt-rendering loop in the bar; only the run counts.
            if iterable is not None:
                return iterable
            return _ProgressBar(progress, kwargs.get("total", len(requests)))

    started = time.perf_counter()
    try:
        outputs = engine.llm.generate(requests, params, use_tqdm=use_tqdm)
    except BaseException:
        # An interrupted generate (time limit, Ctrl-C, engine error) leaves requests inside
        # the engine that the next generate would return along with its own.
        discard_engine(engine)
        raise
    seconds = time.perf_counter() - started
    if len(outputs) != len(requests):
        discard_engine(engine)
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(requests)} prompts")

    k = sampling.logprobs_topk
    prompt_index: list[int] = []
    token_ids: list[list[int]] = []
    lr: list[list[float]] = []
    finish: list[str | None] = []
    topk_ids: list[list[list[int]]] = []
    topk_lps: list[list[list[float]]] = []
    for i, out in enumerate(outputs):
        for completion in out.outputs:
            ids = list(completion.token_ids)
            steps = completion.logprobs or []
            if len(steps) != len(ids):
                raise RuntimeError(
                    f"vLLM returned {len(steps)} logprob entries for {len(ids)} tokens"
                )
            prompt_index.append(i)
            token_ids.append(ids)
            lr.append([step[t].logprob for step, t in zip(steps, ids, strict=True)])
            finish.append(completion.finish_reason)
            if k:
                ranked = [sorted(step.items(), key=lambda kv: kv[1].rank or 0) for step in steps]
                topk_ids.append([[t for t, lp in r if lp.rank and lp.rank <= k] for r in ranked])
                topk_lps.append(
                    [[lp.logprob for t, lp in r if lp.rank and lp.rank <= k] for r in ranked]
                )
    return Rollout(
        prompt_token_ids=[list(ids) for ids in prompt_token_ids],
        prompt_index=prompt_index,
        token_ids=token_ids,
        lr=lr,
        finish_reasons=finish,
        requested=sampling.requested(),
        effective=sampling_dict(params),
        model_defaults=model_sampling_defaults(engine.llm),
        vllm_version=vllm.__version__,
        topk_ids=topk_ids if k else None,
        topk_logprobs=topk_lps if k else None,
        seconds=seconds,
    )
