"""Weight-update replay: push a sequence of weights into a running vLLM V1 engine the way RL
frameworks do, and prove after every update that the engine serves what the trainer sent.

For each update k = 1..N (issue 4):

1. W_k comes from a seeded synthetic trajectory (W_k = W_{k-1} + step_size x rms(W0) x noise,
   per tensor, standing in for optimiser steps) or from checkpoint directories.
2. W_k goes into the *running* engine through `workers.weight_sync.WeightSyncExtension`:
   `llm.collective_rpc("parity_update_weights", ...)` -> `model.load_weights(...)`; then,
   if asked, `llm.reset_prefix_cache()`. `update_mode="in_flight"` lands the update between
   two engine steps while the batch's requests are half-way through decoding.
3. The engine samples on prompts that share a long prefix with every earlier batch, so a
   stale prefix cache *would* be hit (vLLM V1 caches only full KV blocks: 128 tokens on CPU).
4. The trainer (loaded once; its state dict swapped) scores those exact tokens at W_k and at
   W_{k-1}; METRICS.md metrics are computed against W_k by `parity.metrics`.
5. The engine's per-parameter checksums (HF names, read through the serving kernels) are
   compared with the trainer's W_k.
6. Flags: `stale_weights`, `partial_update`, `mismatch_spike`, each with its numbers.

Whether `reset_prefix_cache()` matters is *measured*: after each update the same requests
(same seeds) run once before the reset (prefix blocks computed with W_{k-1} still cached)
and once after it, and both are scored against W_k. A control at W0 (the same requests
twice, the second hitting the cache) gives the difference caching alone makes.

    python -m workers.replay --model var/models/tiny-llama --updates 3 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workers.reporting import JobOutcome, NullReporter, PrintReporter, Reporter, UserError
from workers.specs import EngineSettings, SamplingSettings, parse_spec
from workers.specs.replay import (
    EXTENSION_QUALNAME,
    FlagSettings,
    ReplaySpec,
    SyntheticSource,
)

# --- results -------------------------------------------------------------------------------


@dataclass
class Flag:
    """One per-update flag: whether it fired and the numbers behind it."""

    fired: bool
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class UpdateResult:
    step: int
    metrics: dict[str, Any]            # METRICS.md values against W_k
    metrics_vs_previous: dict[str, Any]  # the same tokens against W_{k-1}
    verdict: str
    reasons: list[str]
    flags: dict[str, Flag]
    checksums: dict[str, Any]
    prefix_cache: dict[str, Any]
    update: dict[str, Any]
    in_flight: dict[str, Any] | None = None

    def fired(self) -> list[str]:
        return [name for name, flag in self.flags.items() if flag.fired]


@dataclass
class ReplayResult:
    """Everything a replay measured; `to_dict()` is the job's result JSON."""

    spec: dict[str, Any]
    model: str
    engine: dict[str, Any]
    fingerprint: dict[str, Any]
    capabilities: dict[str, Any]
    baseline: dict[str, Any]
    updates: list[UpdateResult]
    prefix_cache_summary: dict[str, Any]
    verdict: str
    seconds: float
    timings: dict[str, float]

    @property
    def flags_summary(self) -> dict[str, list[int]]:
        """Flag name -> the updates (k) where it fired."""
        out: dict[str, list[int]] = {"stale_weights": [], "partial_update": [],
                                     "mismatch_spike": []}
        for u in self.updates:
            for name in u.fired():
                out.setdefault(name, []).append(u.step)
        return out

    def summary(self) -> dict[str, Any]:
        """The few numbers a caller (e.g. the migration checklist) puts in a table row."""
        def mean(key: str) -> float | None:
            vals = [_f(u.metrics.get(key)) for u in self.updates]
            vals = [v for v in vals if math.isfinite(v)]
            return sum(vals) / len(vals) if vals else None

        return {
            "updates": len(self.updates),
            "verdict": self.verdict,
            "flags": self.flags_summary,
            "any_flag": any(self.flags_summary.values()),
            "baseline_abs_diff_mean": self.baseline["metrics"].get("abs_diff_mean"),
            "baseline_kl_k3": self.baseline["metrics"].get("kl_k3"),
            "post_update_abs_diff_mean": mean("abs_diff_mean"),
            "post_update_kl_k3": mean("kl_k3"),
            "params_not_updated": sorted({n for u in self.updates
                                          for n in u.checksums.get("not_updated", [])}),
            "reset_prefix_cache": self.spec.get("reset_prefix_cache"),
            "update_mode": self.spec.get("update_mode"),
            "prefix_cache": self.prefix_cache_summary.get("summary"),
        }

    def step_values(self) -> dict[int, dict[str, float]]:
        steps = {0: step_values_of(self.baseline["metrics"], {})}
        for u in self.updates:
            steps[u.step] = update_step_values(u)
        return steps

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["flags_summary"] = self.flags_summary
        out["summary"] = self.summary()
        return out


# --- weights -------------------------------------------------------------------------------


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    """HF-named tensors of every *.safetensors file in `directory` (UserError when none)."""
    from safetensors.torch import load_file

    path = Path(directory)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        raise UserError(f"checkpoint directory {str(directory)!r} has no *.safetensors files")
    state: dict[str, Any] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def synthetic_trajectory(w0: Mapping[str, Any], source: SyntheticSource,
                         n: int) -> Iterator[dict[str, Any]]:
    """W_1..W_n: W_k = W_{k-1} + step_size x rms(W0[name]) x N(0, 1), in each tensor's dtype.

    Deterministic in (seed, k, name). The sum is taken in float32 and rounded once to the
    checkpoint dtype, so the trainer and the engine receive bit-identical tensors.
    """
    import torch

    scale = {name: float(t.float().pow(2).mean().sqrt()) or 1.0 for name, t in w0.items()}
    current = dict(w0)
    for k in range(1, n + 1):
        gen = torch.Generator().manual_seed(source.seed * 1_000_003 + k)
        nxt: dict[str, Any] = {}
        for name in sorted(current):
            t = current[name]
            noise = torch.randn(t.shape, generator=gen, dtype=torch.float32)
            nxt[name] = (t.float() + source.step_size * scale[name] * noise).to(t.dtype)
        current = nxt
        yield nxt


def trainer_state_load(trainer: Any, state: Mapping[str, Any]) -> None:
    """Put `state` (HF names) into the loaded trainer model in place, casting to its dtype.

    Raises UserError when a name does not exist in the trainer's model, RuntimeError when a
    parameter of the model was not given. Refreshes the trainer's fp32 head copy.
    """
    import torch

    params = dict(trainer.model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise UserError(
            f"{len(unknown)} weight name(s) are not parameters of the trainer's model "
            f"(first: {unknown[0]!r}): the checkpoints do not fit this model"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device))
    head = trainer.model.get_output_embeddings()
    if trainer.settings.head_dtype == "float32":
        trainer.head_weight = head.weight.detach().to(torch.float32)
        bias = getattr(head, "bias", None)
        trainer.head_bias = None if bias is None else bias.detach().to(torch.float32)


# --- checksums -----------------------------------------------------------------------------


def compare_checksums(engine: Mapping[str, Mapping[str, Any]], expected: Mapping[str, Any],
                      previous_expected: Mapping[str, Any] | None,
                      previous_engine: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """Per-parameter comparison of the engine's checksums with the trainer's weights.

    `expected`: HF name -> tensor (W_k); each is cast to the dtype the engine holds that
    parameter in (as load_weights casts it) before hashing. Returns counts, the names that
    did not take W_k (`not_updated`, with the numbers), the names whose engine checksum did
    not change in this update (`unchanged_in_engine`) and, of those, the ones W_k also did
    not change (`unchanged_in_trainer`), names W_k has and the engine lacks, and the update
    status "full" | "partial" | "none".
    """
    import torch

    from workers.weight_sync import tensor_checksum

    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    not_updated: dict[str, dict[str, Any]] = {}
    matched = 0
    missing = sorted(set(expected) - set(engine))
    for name in sorted(set(expected) & set(engine)):
        got = engine[name]
        dtype = dtypes.get(got["dtype"], expected[name].dtype)
        want = tensor_checksum(expected[name].to(dtype))
        if want["sha256"] == got["sha256"]:
            matched += 1
            continue
        entry: dict[str, Any] = {
            "engine_sum": got["sum"], "expected_sum": want["sum"],
            "sum_diff": got["sum"] - want["sum"],
            "engine_abs_sum": got["abs_sum"], "expected_abs_sum": want["abs_sum"],
            "source": got.get("source"),
        }
        if previous_expected is not None and name in previous_expected:
            prev = tensor_checksum(previous_expected[name].to(dtype))
            entry["equals_previous_weights"] = prev["sha256"] == got["sha256"]
        not_updated[name] = entry
    unchanged_engine = sorted(
        name for name in engine
        if previous_engine is not None and name in previous_engine
        and previous_engine[name]["sha256"] == engine[name]["sha256"]
    )
    unchanged_trainer = sorted(
        name for name in unchanged_engine
        if previous_expected is not None and name in previous_expected and name in expected
        and torch.equal(previous_expected[name], expected[name])
    )
    n = len(set(expected) & set(engine))
    status = "full" if not not_updated and not missing else (
        "none" if matched == 0 else "partial")
    return {
        "n_params": n,
        "matched": matched,
        "status": status,
        "not_updated": sorted(not_updated),
        "not_updated_detail": not_updated,
        "missing_in_engine": missing,
        "unchanged_in_engine": unchanged_engine,
        "unchanged_in_trainer": unchanged_trainer,
    }


# --- flags ---------------------------------------------------------------------------------


def flags_for_update(values: Mapping[str, Any], values_prev: Mapping[str, Any],
                     baseline: Mapping[str, Any], checksums: Mapping[str, Any],
                     separation: float | None, settings: FlagSettings) -> dict[str, Flag]:
    """The three flags of one update, each with the numbers it was decided on.

    - stale_weights: the engine's tokens fit W_{k-1} at least stale_margin times better than
      W_k on both kl_k3 and abs_diff_mean, and the update is resolvable (the trainer's own
      mean |lt(W_k) - lt(W_{k-1})| on these tokens is above stale_resolution x the W0
      baseline abs_diff_mean; below that, numerical noise could decide the comparison).
    - partial_update: some parameters took W_k and some did not (per-parameter checksums);
      when none did, the engine did not update at all, which stale_weights reports.
    - mismatch_spike: kl_k3 above spike_factor x its W0 baseline and above
      spike_floor_kl_k3, or abs_diff_mean above spike_factor x baseline and above
      spike_floor_abs_diff_mean.
    """
    def num(m: Mapping[str, Any], key: str) -> float:
        v = m.get(key)
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else math.nan

    base_abs = num(baseline, "abs_diff_mean")
    resolvable = (separation is not None and math.isfinite(base_abs)
                  and separation > settings.stale_resolution * base_abs)
    cur = {k: num(values, k) for k in ("kl_k3", "abs_diff_mean")}
    prev = {k: num(values_prev, k) for k in ("kl_k3", "abs_diff_mean")}
    closer_to_prev = all(prev[k] * settings.stale_margin < cur[k] for k in cur)
    stale_evidence = {
        "vs_current": cur, "vs_previous": prev, "margin": settings.stale_margin,
        "update_separation_abs_diff_mean": separation,
        "baseline_abs_diff_mean": base_abs,
        "resolution_needed": settings.stale_resolution * base_abs,
        "resolvable": bool(resolvable),
        "params_equal_to_previous_weights": sum(
            1 for d in checksums.get("not_updated_detail", {}).values()
            if d.get("equals_previous_weights")
        ),
    }
    if not resolvable:
        stale = Flag(False, "inconclusive: the update moves the trainer's logprobs less than "
                     "the resolution needed to tell W_k from W_k-1", stale_evidence)
    elif closer_to_prev:
        stale = Flag(True, f"the engine's tokens fit W_k-1 much better than W_k (kl_k3 "
                     f"{prev['kl_k3']:.3g} vs {cur['kl_k3']:.3g}, abs_diff_mean "
                     f"{prev['abs_diff_mean']:.3g} vs {cur['abs_diff_mean']:.3g})",
                     stale_evidence)
    else:
        stale = Flag(False, "the engine's tokens do not fit W_k-1 clearly better than W_k",
                     stale_evidence)

    names = checksums.get("not_updated", [])
    partial_evidence = {"not_updated": names, "matched": checksums.get("matched"),
                        "n_params": checksums.get("n_params"),
                        "missing_in_engine": checksums.get("missing_in_engine", []),
                        "detail": checksums.get("not_updated_detail", {})}
    if checksums.get("status") == "partial":
        partial = Flag(True, f"{len(names)} of {checksums.get('n_params')} parameters did not "
                       f"take the new weights: {', '.join(names[:10])}"
                       + (" ..." if len(names) > 10 else ""), partial_evidence)
    elif checksums.get("status") == "none":
        partial = Flag(False, "no parameter took the new weights (a stale engine, not a "
                       "partial update)", partial_evidence)
    else:
        partial = Flag(False, "every parameter equals the trainer's W_k", partial_evidence)

    spikes: dict[str, Any] = {}
    floors = {"kl_k3": settings.spike_floor_kl_k3,
              "abs_diff_mean": settings.spike_floor_abs_diff_mean}
    for key, floor in floors.items():
        b, v = num(baseline, key), cur[key]
        ratio = v / b if b > 0 else math.inf
        spikes[key] = {"value": v, "baseline": b, "ratio": ratio,
                       "factor": settings.spike_factor, "floor": floor,
                       "fired": bool(v > settings.spike_factor * b and v > floor)}
    fired = [k for k, s in spikes.items() if s["fired"]]
    spike = Flag(bool(fired), (
        "; ".join(f"{k} {spikes[k]['value']:.3g} is {spikes[k]['ratio']:.1f}x the W0 baseline "
                  f"{spikes[k]['baseline']:.3g} (floor {spikes[k]['floor']:g})" for k in fired)
        if fired else "no metric above its spike threshold"), spikes)
    return {"stale_weights": stale, "partial_update": partial, "mismatch_spike": spike}


# --- step values ---------------------------------------------------------------------------


def step_values_of(metrics: Mapping[str, Any], extra: Mapping[str, float]) -> dict[str, float]:
    """The numeric METRICS.md values plus `extra`, as stored for one step."""
    out = {k: float(v) for k, v in metrics.items()
           if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
    out.update(extra)
    return out


def update_step_values(u: UpdateResult) -> dict[str, float]:
    extra: dict[str, float] = {
        "kl_k3_prev": _f(u.metrics_vs_previous.get("kl_k3")),
        "abs_diff_mean_prev": _f(u.metrics_vs_previous.get("abs_diff_mean")),
        "params_not_updated": float(len(u.checksums.get("not_updated", []))),
        "stale_weights": float(u.flags["stale_weights"].fired),
        "partial_update": float(u.flags["partial_update"].fired),
        "mismatch_spike": float(u.flags["mismatch_spike"].fired),
    }
    no_reset = u.prefix_cache.get("without_reset", {}).get("metrics", {})
    if no_reset:
        extra["abs_diff_mean_no_reset"] = _f(no_reset.get("abs_diff_mean"))
        extra["kl_k3_no_reset"] = _f(no_reset.get("kl_k3"))
    return step_values_of(u.metrics, {k: v for k, v in extra.items() if math.isfinite(v)})


def _f(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


# --- the engine ----------------------------------------------------------------------------


def build_engine(model: str, settings: EngineSettings, extension: str) -> Any:
    """A vLLM V1 engine with the weight-sync extension, built for this replay only.

    Not the comparisons' warm engine: a replay changes the engine's weights, so its engine
    must never serve a later comparison (shut it down with `shutdown_replay_engine`).
    """
    from workers import rollout

    rollout.shutdown_engine()
    key = ("replay", model, uuid.uuid4().hex)
    return rollout.build_engine(model, settings, key, worker_extension_cls=extension)


def shutdown_replay_engine(engine: Any) -> None:
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
    bases = tuple(b for b in worker_cls.__bases__
                  if not (isinstance(b, type) and issubclass(b, WeightSyncExtension)))
    if bases != worker_cls.__bases__:
        worker_cls.__bases__ = bases


def capabilities(llm: Any) -> dict[str, Any]:
    """What this vLLM offers for weight updates, read from the installed version."""
    import inspect

    import vllm

    out: dict[str, Any] = {"vllm_version": vllm.__version__}
    out["llm_collective_rpc"] = hasattr(llm, "collective_rpc")
    out["llm_reset_prefix_cache"] = hasattr(llm, "reset_prefix_cache")
    if out["llm_reset_prefix_cache"]:
        out["reset_prefix_cache_params"] = list(
            inspect.signature(llm.reset_prefix_cache).parameters)
    sleep = getattr(llm, "sleep", None)
    if sleep is not None:
        sig = inspect.signature(sleep)
        out["llm_sleep_params"] = list(sig.parameters)
    try:
        from typing import get_args

        from vllm.v1.engine import PauseMode

        out["pause_modes"] = list(get_args(PauseMode))
    except ImportError:
        out["pause_modes"] = []
    try:
        from vllm.v1.engine.async_llm import AsyncLLM

        out["async_llm_pause_generation"] = hasattr(AsyncLLM, "pause_generation")
        out["async_llm_resume_generation"] = hasattr(AsyncLLM, "resume_generation")
    except ImportError:
        out["async_llm_pause_generation"] = out["async_llm_resume_generation"] = False
    out["engine_core_multiprocessing"] = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0"
    cfg = llm.llm_engine.vllm_config
    out["async_scheduling"] = bool(getattr(cfg.scheduler_config, "async_scheduling", False))
    out["kv_block_size"] = int(cfg.cache_config.block_size)
    out["builtin_weight_transfer_config"] = getattr(cfg, "weight_transfer_config", None) is not None
    info = llm.collective_rpc("parity_extension_info")
    out["extension"] = info[0] if info else None
    return out


# --- generation ----------------------------------------------------------------------------


@dataclass
class Batch:
    """One batch of the replay: what the engine sampled, with prefix-cache hits."""

    rollout: Any
    num_cached_tokens: list[int | None]


def generate_batch(engine: Any, prompt_ids: Sequence[Sequence[int]],
                   sampling: SamplingSettings) -> Batch:
    """Sample on the engine as it is now (rollout.generate), same seeds every time."""
    from workers import rollout

    r = rollout.generate(engine, prompt_ids, sampling)
    cached = r.extra.get("num_cached_tokens") if r.extra else None
    return Batch(r, list(cached) if cached else [None] * len(r.token_ids))


def generate_in_flight(engine: Any, prompt_ids: Sequence[Sequence[int]],
                       sampling: SamplingSettings, update: Callable[[], dict[str, Any]], *,
                       pause_mode: str, reset: bool,
                       recompute: bool) -> tuple[Batch, dict[str, Any]]:
    """Sample with the weight update landing while the requests are half-way decoded.

    Drives the engine step by step (`LLMEngine.add_request` / `step`): once every request
    has at least half of `max_tokens`, the requests are paused as `pause_mode` says
    (LLM.sleep(level=0, mode=...)), `update()` runs, the prefix cache is reset if asked
    (with `reset_running_requests=recompute`), and decoding resumes
    (LLM.wake_up(tags=["scheduling"])). Returns the batch and what happened at the
    boundary: per sequence the number of tokens sampled before the update, and every
    vLLM call's outcome (an unsupported mode is recorded, not faked).
    """
    from vllm.inputs import TokensPrompt

    from workers import rollout

    llm = engine.llm
    eng = llm.llm_engine
    params = rollout.effective_sampling(sampling, llm)
    half = max(1, sampling.max_tokens // 2)
    ids = [f"replay-{uuid.uuid4().hex[:8]}-{i}" for i in range(len(prompt_ids))]
    prompts = {rid: list(p) for rid, p in zip(ids, prompt_ids, strict=True)}
    for rid in ids:
        eng.add_request(rid, TokensPrompt(prompt_token_ids=prompts[rid]), params)
    latest: dict[str, Any] = {}
    info: dict[str, Any] = {"pause_mode": pause_mode, "calls": []}
    boundary: dict[str, int] | None = None
    resubmitted: dict[str, tuple[str, list[int], list[float]]] = {}

    def call(name: str, fn: Callable[[], Any]) -> Any:
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - what this vLLM refuses is a finding
            info["calls"].append({"call": name, "ok": False,
                                  "error": f"{type(exc).__name__}: {rollout.first_line(exc)}"})
            return exc
        info["calls"].append({"call": name, "ok": True,
                              "returned": value if isinstance(value, bool | int | None) else None})
        return value

    def ntok(rid: str) -> int:
        out = latest.get(rid)
        return len(out.outputs[0].token_ids) if out is not None and out.outputs else 0

    while eng.has_unfinished_requests():
        for out in eng.step():
            latest[out.request_id] = out
        if boundary is None and all(ntok(r) >= half or (r in latest and latest[r].finished)
                                    for r in ids):
            boundary = {r: ntok(r) for r in ids}
            paused = False
            if pause_mode != "none":
                res = call(f"LLM.sleep(level=0, mode={pause_mode!r})",
                           lambda: llm.sleep(level=0, mode=pause_mode))
                paused = not isinstance(res, Exception)
            info["paused"] = paused
            info["update"] = update()
            if reset or recompute:
                info["reset_prefix_cache_returned"] = call(
                    f"LLM.reset_prefix_cache(reset_running_requests={recompute})",
                    lambda: llm.reset_prefix_cache(reset_running_requests=recompute))
            if paused:
                call("LLM.wake_up(tags=['scheduling'])",
                     lambda: llm.wake_up(tags=["scheduling"]))
            if pause_mode == "abort" and paused:
                # Aborted requests end where they stand; like partial-rollout frameworks,
                # resubmit each one with its tokens so far appended to the prompt.
                for r in ids:
                    out = latest.get(r)
                    if out is None or out.outputs[0].finish_reason not in (None, "abort"):
                        continue
                    if eng.has_unfinished_requests():
                        eng.abort_request([r])
                    done = list(out.outputs[0].token_ids)
                    lps = _token_logprobs(out.outputs[0])
                    new_id = r + "-resumed"
                    left = sampling.max_tokens - len(done)
                    if left <= 0:
                        continue
                    resubmitted[r] = (new_id, done, lps)
                    rest = params.clone()
                    rest.max_tokens = left
                    eng.add_request(new_id, TokensPrompt(prompt_token_ids=prompts[r] + done),
                                    rest)
                    latest.pop(new_id, None)
                info["resubmitted"] = len(resubmitted)
    if boundary is None:
        # Every request finished before reaching half its tokens: update afterwards.
        boundary = {r: ntok(r) for r in ids}
        info["update"] = update()
        info["note"] = "all requests finished before the update point; updated afterwards"

    token_ids: list[list[int]] = []
    lr: list[list[float]] = []
    finish: list[str | None] = []
    for r in ids:
        out = latest[r].outputs[0]
        toks, lps = list(out.token_ids), _token_logprobs(out)
        reason = out.finish_reason
        if r in resubmitted:
            new_id, done, done_lps = resubmitted[r]
            tail = latest[new_id].outputs[0]
            toks, lps, reason = done + list(tail.token_ids), done_lps + _token_logprobs(tail), \
                tail.finish_reason
        token_ids.append(toks)
        lr.append(lps)
        finish.append(reason)
    r_out = rollout.Rollout(
        prompt_token_ids=[list(p) for p in prompt_ids],
        prompt_index=list(range(len(prompt_ids))),
        token_ids=token_ids, lr=lr, finish_reasons=finish,
        requested=sampling.requested(), effective=rollout.sampling_dict(params),
        model_defaults=rollout.model_sampling_defaults(llm),
        vllm_version=_vllm_version(),
    )
    info["boundary"] = [boundary[r] for r in ids]
    cached = [getattr(latest[r], "num_cached_tokens", None) for r in ids]
    return Batch(r_out, cached), info


def _token_logprobs(completion: Any) -> list[float]:
    steps = completion.logprobs or []
    ids = list(completion.token_ids)
    if len(steps) != len(ids):
        raise RuntimeError(f"vLLM returned {len(steps)} logprob entries for {len(ids)} tokens")
    return [step[t].logprob for step, t in zip(steps, ids, strict=True)]


def _vllm_version() -> str:
    import vllm

    return str(vllm.__version__)


# --- scoring -------------------------------------------------------------------------------


@dataclass
class Scored:
    lt: Any
    lr: Any
    seq_lens: list[int]
    token_ids: Any
    trainer_token_ids: Any


def score_batch(trainer: Any, batch: Batch, processing: Any,
                keep_from: Sequence[int] | None = None,
                keep_until: Sequence[int] | None = None) -> Scored:
    """The trainer's lt for the batch's tokens (at whatever weights it holds now), and the
    engine's lr, flattened; optionally only tokens [keep_from[i], keep_until[i]) of each."""
    import numpy as np

    from workers import trainer as trainer_mod

    r = batch.rollout
    prompts = [r.prompt_token_ids[i] for i in r.prompt_index]
    scores = trainer_mod.score(trainer, prompts, r.token_ids, processing)
    lt_all, ids_all = scores.lt, scores.token_ids
    lt, lr, toks, ttoks, lens = [], [], [], [], []
    offset = 0
    for i, seq in enumerate(r.token_ids):
        n = len(seq)
        a = keep_from[i] if keep_from is not None else 0
        b = keep_until[i] if keep_until is not None else n
        a, b = max(0, min(a, n)), max(0, min(b, n))
        lt.append(lt_all[offset + a:offset + b])
        ttoks.append(ids_all[offset + a:offset + b])
        lr.append(np.asarray(r.lr[i][a:b], dtype=np.float64))
        toks.append(np.asarray(seq[a:b], dtype=np.int64))
        lens.append(max(0, b - a))
        offset += n
    def cat(xs: list[Any], dt: Any) -> Any:
        return np.concatenate(xs).astype(dt) if xs else np.empty(0, dtype=dt)

    return Scored(cat(lt, np.float64), cat(lr, np.float64), lens, cat(toks, np.int64),
                  cat(ttoks, np.int64))


def metrics_of(s: Scored, thresholds: Any) -> Any:
    from parity.metrics import compute_metrics

    return compute_metrics(s.lt, s.lr, s.seq_lens, token_ids=s.token_ids,
                           trainer_token_ids=s.trainer_token_ids, thresholds=thresholds)


def separation(a: Scored, b: Scored) -> float | None:
    """Mean |lt_a - lt_b| over the same tokens: how far two trainer weights are apart here."""
    import numpy as np

    if len(a.lt) == 0 or len(a.lt) != len(b.lt):
        return None
    d = np.abs(np.asarray(a.lt) - np.asarray(b.lt))
    d = d[np.isfinite(d)]
    return float(d.mean()) if d.size else None


def compare_batches(a: Batch, b: Batch) -> dict[str, Any]:
    """How two runs of the same requests differ: sequences with different tokens, and
    |lr_a - lr_b| over the common token prefix of each sequence."""
    diff_seqs, max_abs, total, n = 0, 0.0, 0.0, 0
    first_diff: list[int | None] = []
    for ta, tb, la, lb in zip(a.rollout.token_ids, b.rollout.token_ids, a.rollout.lr,
                              b.rollout.lr, strict=True):
        common = 0
        while common < min(len(ta), len(tb)) and ta[common] == tb[common]:
            common += 1
        if common != len(ta) or len(ta) != len(tb):
            diff_seqs += 1
            first_diff.append(common)
        else:
            first_diff.append(None)
        for x, y in zip(la[:common + 1 if common < min(len(ta), len(tb)) else common],
                        lb[:common + 1 if common < min(len(ta), len(tb)) else common],
                        strict=True):
            d = abs(x - y)
            max_abs, total, n = max(max_abs, d), total + d, n + 1
    return {
        "sequences": len(a.rollout.token_ids),
        "sequences_with_different_tokens": diff_seqs,
        "first_different_token": first_diff,
        "lr_abs_diff_mean_on_common_tokens": total / n if n else None,
        "lr_abs_diff_max_on_common_tokens": max_abs if n else None,
        "identical": diff_seqs == 0 and max_abs == 0.0,
    }


def _summary(m: Any) -> dict[str, Any]:
    keys = ("n_tokens", "abs_diff_mean", "abs_diff_max", "kl_k3", "kl_k1", "bit_equal_frac",
            "clip_rate", "token_mismatch")
    return {k: m.values.get(k) for k in keys}


# --- the replay ----------------------------------------------------------------------------


def run_replay(spec: ReplaySpec, reporter: Reporter | None = None) -> ReplayResult:
    """Run the replay `spec` describes and return everything it measured.

    Streams one step per update (step 0 = the baseline at W0) through
    `reporter.step_values` as soon as it is measured. Raises UserError for problems the
    user can fix (missing model or checkpoint, checkpoints that do not fit the model).
    """
    from parity.metrics import Thresholds, verdict
    from workers import prompts as prompt_sets
    from workers import rollout
    from workers import trainer as trainer_mod

    reporter = reporter or NullReporter()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    thresholds = Thresholds.from_dict(spec.thresholds)
    model = rollout.resolve_model(spec.model)
    if not Path(model).is_dir():
        raise UserError(f"a replay needs a local model directory (W0); {spec.model!r} is not one")
    n_updates = spec.updates
    total_steps = n_updates + 1

    reporter.stage("loading W0 and the trainer", 0.0)
    w0 = read_checkpoint(model)
    trainer, _ = trainer_mod.get_trainer(model, spec.trainer)
    prompt_ids = prompt_sets.render([{"prompt": p} for p in spec.prompt_texts()],
                                    trainer.tokenizer)

    reporter.stage("starting the engine on W0", 0.02)
    t = time.perf_counter()
    engine = build_engine(model, spec.engine, spec.extension)
    timings["engine_start"] = time.perf_counter() - t
    engine_settings = engine.effective_settings()
    tmp_files: list[Path] = []
    try:
        caps = capabilities(engine.llm)
        reporter.stage("baseline at W0", 0.05)
        batch0 = generate_batch(engine, prompt_ids, spec.sampling)
        processing = trainer_mod.Processing.for_comparison(
            spec.trainer, spec.engine, batch0.rollout.effective)
        s0 = score_batch(trainer, batch0, processing)
        m0 = metrics_of(s0, thresholds)
        cs0 = engine.llm.collective_rpc("parity_param_checksums")[0]
        check0 = compare_checksums(cs0, w0, None, None)
        # Control: the same requests again at W0, now served from the prefix cache. Any
        # difference is what caching alone does, with no weight change involved.
        control = generate_batch(engine, prompt_ids, spec.sampling)
        baseline = {
            "metrics": m0.values, "verdict": m0.verdict, "reasons": m0.reasons,
            "checksums": check0,
            "prompt_tokens": [len(p) for p in prompt_ids],
            "num_cached_tokens_first_run": batch0.num_cached_tokens,
            "prefix_cache_control": {
                **compare_batches(batch0, control),
                "num_cached_tokens": control.num_cached_tokens,
            },
            "effective_sampling": batch0.rollout.effective,
        }
        reporter.step_values(0, step_values_of(m0.values, {}))

        prev_state: dict[str, Any] = w0
        prev_cs = cs0
        updates: list[UpdateResult] = []
        states = _weights_source(spec, w0, n_updates)
        for k in range(1, n_updates + 1):
            reporter.stage(f"update {k}/{n_updates}: pushing W_{k}", k / total_steps)
            wk, handle = next(states)
            if handle is None:
                path = _write_weights(wk)
                tmp_files.append(path)
                handle = {"kind": "safetensors", "path": str(path)}
            rpc_kwargs = {"handle": handle, "mode": spec.load_mode}

            def push(rpc_kwargs: dict[str, Any] = rpc_kwargs) -> dict[str, Any]:
                t0 = time.perf_counter()
                res = engine.llm.collective_rpc("parity_update_weights", kwargs=rpc_kwargs)[0]
                return _update_summary(res, time.perf_counter() - t0)

            in_flight_info: dict[str, Any] | None = None
            probe: Batch | None = None
            if spec.update_mode == "in_flight":
                main, in_flight_info = generate_in_flight(
                    engine, prompt_ids, spec.sampling, push, pause_mode=spec.pause_mode,
                    reset=spec.reset_prefix_cache, recompute=spec.in_flight_recompute)
                update_info = in_flight_info.pop("update")
                if spec.measure_prefix_cache:
                    probe = generate_batch(engine, prompt_ids, spec.sampling)
            else:
                update_info = push()
                reset_ok: Any = None
                if spec.reset_prefix_cache:
                    if spec.measure_prefix_cache:
                        probe = generate_batch(engine, prompt_ids, spec.sampling)  # no reset
                    reset_ok = engine.llm.reset_prefix_cache()
                    main = generate_batch(engine, prompt_ids, spec.sampling)
                else:
                    main = generate_batch(engine, prompt_ids, spec.sampling)
                    if spec.measure_prefix_cache:
                        reset_ok = engine.llm.reset_prefix_cache()
                        probe = generate_batch(engine, prompt_ids, spec.sampling)  # after reset
                update_info["reset_prefix_cache_returned"] = reset_ok
            cs = engine.llm.collective_rpc("parity_param_checksums")[0]
            checks = compare_checksums(cs, wk, prev_state, prev_cs)

            reporter.stage(f"update {k}/{n_updates}: scoring at W_{k} and W_{k - 1}",
                           (k + 0.5) / total_steps)
            boundary = in_flight_info["boundary"] if in_flight_info else None
            trainer_state_load(trainer, wk)
            s_cur = score_batch(trainer, main, processing, keep_from=boundary)
            s_probe = score_batch(trainer, probe, processing) if probe is not None else None
            trainer_state_load(trainer, prev_state)
            s_prev = score_batch(trainer, main, processing, keep_from=boundary)
            s_before = (score_batch(trainer, main, processing, keep_until=boundary)
                        if boundary is not None else None)
            trainer_state_load(trainer, wk)

            m_cur = metrics_of(s_cur, thresholds)
            m_prev = metrics_of(s_prev, thresholds)
            flags = flags_for_update(m_cur.values, m_prev.values, m0.values, checks,
                                     separation(s_cur, s_prev), spec.flags)
            prefix = _prefix_cache_report(spec, main, probe, m_cur,
                                          metrics_of(s_probe, thresholds) if s_probe else None)
            if in_flight_info is not None and s_before is not None:
                in_flight_info["before_update_vs_previous_weights"] = _summary(
                    metrics_of(s_before, thresholds))
                in_flight_info["tokens_after_update"] = int(sum(s_cur.seq_lens))
            u = UpdateResult(
                step=k, metrics=m_cur.values, metrics_vs_previous=m_prev.values,
                verdict=m_cur.verdict, reasons=m_cur.reasons, flags=flags, checksums=checks,
                prefix_cache=prefix, update=update_info, in_flight=in_flight_info,
            )
            updates.append(u)
            reporter.step_values(k, update_step_values(u))
            fired = u.fired()
            reporter.stage(f"update {k}/{n_updates}: " + (
                "flags " + ", ".join(fired) if fired else "no flags"), (k + 1) / total_steps)
            prev_state, prev_cs = wk, cs
    finally:
        for path in tmp_files:
            path.unlink(missing_ok=True)
        shutdown_replay_engine(engine)
        # The trainer is cached for the next job: give it back its checkpoint weights.
        try:
            trainer_state_load(trainer, w0)
        except Exception:  # noqa: BLE001 - a trainer we cannot restore must not be reused
            trainer_mod.drop_trainer()

    verdicts = [m0.verdict] + [u.verdict for u in updates]
    any_flag = any(u.fired() for u in updates)
    overall = "fail" if any_flag else max(verdicts, key=("pass", "warn", "fail").index)
    _ = verdict  # the per-update verdicts come from compute_metrics
    fingerprint = {
        "kind": "replay",
        "vllm_version": caps.get("vllm_version"),
        "engine": engine_settings,
        "sampling": batch0.rollout.effective,
        "update_mode": spec.update_mode,
        "pause_mode": spec.pause_mode if spec.update_mode == "in_flight" else None,
        "reset_prefix_cache": spec.reset_prefix_cache,
        "load_mode": spec.load_mode,
        "extension": spec.extension,
        "source": spec.source.model_dump(mode="json"),
    }
    result = ReplayResult(
        spec=spec.model_dump(mode="json"), model=model, engine=fingerprint["engine"],
        fingerprint=fingerprint, capabilities=caps, baseline=baseline, updates=updates,
        prefix_cache_summary=_prefix_cache_summary(baseline, updates, spec),
        verdict=overall, seconds=time.perf_counter() - started, timings=timings,
    )
    reporter.stage("replay done: " + _headline(result), 1.0)
    return result


def _weights_source(spec: ReplaySpec, w0: Mapping[str, Any],
                    n: int) -> Iterator[tuple[dict[str, Any], dict[str, str] | None]]:
    """(W_k, handle) for k = 1..n; handle None means "write W_k to a file for the engine"."""
    if isinstance(spec.source, SyntheticSource):
        for wk in synthetic_trajectory(w0, spec.source, n):
            yield wk, None
    else:
        for d in spec.source.dirs[:n]:
            yield read_checkpoint(d), {"kind": "dir", "path": str(Path(d).resolve())}


def _write_weights(state: Mapping[str, Any]) -> Path:
    from workers.weight_sync import write_weight_file

    return write_weight_file(state)


def _update_summary(res: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    received, sent = list(res.get("received", [])), list(res.get("sent", []))
    return {
        "rpc_seconds": seconds,
        "load_seconds": res.get("seconds"),
        "received": len(received),
        "sent": len(sent),
        "withheld_by_extension": sorted(set(received) - set(sent)),
        "loaded_vllm_params": len(res.get("loaded", [])),
        "running_requests_at_update": res.get("running_requests", {}),
    }


def _prefix_cache_report(spec: ReplaySpec, main: Batch, probe: Batch | None, m_main: Any,
                         m_probe: Any) -> dict[str, Any]:
    """The with/without reset_prefix_cache measurement of one update."""
    if probe is None or m_probe is None:
        return {"measured": False}
    if spec.update_mode == "in_flight":
        return {"measured": False, "note": "in_flight: the next batch is reported instead",
                "next_batch_vs_current": _summary(m_probe),
                "next_batch_num_cached_tokens": probe.num_cached_tokens}
    if spec.reset_prefix_cache:
        with_b, with_m, without_b, without_m = main, m_main, probe, m_probe
    else:
        with_b, with_m, without_b, without_m = probe, m_probe, main, m_main
    return {
        "measured": True,
        "without_reset": {"metrics": _summary(without_m),
                          "num_cached_tokens": without_b.num_cached_tokens},
        "with_reset": {"metrics": _summary(with_m),
                       "num_cached_tokens": with_b.num_cached_tokens},
        "outputs": compare_batches(without_b, with_b),
    }


def _prefix_cache_summary(baseline: Mapping[str, Any], updates: Sequence[UpdateResult],
                          spec: ReplaySpec) -> dict[str, Any]:
    """What reset_prefix_cache measurably did over the whole replay, in numbers and words."""
    measured = [u for u in updates if u.prefix_cache.get("measured")]
    control = baseline.get("prefix_cache_control", {})
    if not measured:
        return {"measured": False, "control_at_w0": control}

    def mean(xs: list[Any]) -> float | None:
        vals = [float(x) for x in xs if isinstance(x, int | float)]
        return sum(vals) / len(vals) if vals else None

    without = mean([u.prefix_cache["without_reset"]["metrics"]["abs_diff_mean"] for u in measured])
    with_ = mean([u.prefix_cache["with_reset"]["metrics"]["abs_diff_mean"] for u in measured])
    kl_without = mean([u.prefix_cache["without_reset"]["metrics"]["kl_k3"] for u in measured])
    kl_with = mean([u.prefix_cache["with_reset"]["metrics"]["kl_k3"] for u in measured])
    differ = sum(1 for u in measured if not u.prefix_cache["outputs"]["identical"])
    hits = [sum(x or 0 for x in u.prefix_cache["without_reset"]["num_cached_tokens"])
            for u in measured]
    if differ == 0:
        words = ("reset_prefix_cache() changed nothing measurable: the requests after each "
                 "update gave identical tokens and logprobs with and without it")
    else:
        words = (f"without reset_prefix_cache() the engine served different outputs after "
                 f"{differ} of {len(measured)} updates; mean abs_diff_mean against W_k "
                 f"{_fmt(without)} without the reset vs {_fmt(with_)} with it "
                 f"(kl_k3 {_fmt(kl_without)} vs {_fmt(kl_with)})")
    if control.get("identical") is False:
        words += ("; note: at W0 a cached rerun already differs from the first run "
                  f"(lr max diff {_fmt(control.get('lr_abs_diff_max_on_common_tokens'))}), "
                  "so caching alone changes numerics here")
    return {
        "measured": True,
        "updates_measured": len(measured),
        "updates_where_outputs_differ": differ,
        "abs_diff_mean_vs_w_k_without_reset": without,
        "abs_diff_mean_vs_w_k_with_reset": with_,
        "kl_k3_vs_w_k_without_reset": kl_without,
        "kl_k3_vs_w_k_with_reset": kl_with,
        "cached_prompt_tokens_without_reset": hits,
        "control_at_w0": control,
        "summary": words,
    }


def _fmt(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, int | float) else "n/a"


def _headline(r: ReplayResult) -> str:
    fired = {k: v for k, v in r.flags_summary.items() if v}
    flags = "; ".join(f"{k} at updates {v}" for k, v in fired.items()) or "no flags"
    return f"{len(r.updates)} updates, {flags}, verdict {r.verdict}"


# --- job and CLI ---------------------------------------------------------------------------


def run_replay_job(spec: Mapping[str, Any], reporter: Reporter) -> JobOutcome:
    """Celery entry point (workers.tasks.RUNNERS["replay"]): validate, replay, package."""
    parsed = parse_spec(ReplaySpec, spec)
    result = run_replay(parsed, reporter)
    return JobOutcome(result=_jsonable(result.to_dict()), fingerprint=result.fingerprint,
                      verdict=result.verdict, step_values=result.step_values())


def _jsonable(obj: Any) -> Any:
    """Plain JSON: non-finite floats become None (JSON has no NaN/inf)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.replay",
        description="Replay weight updates into a running vLLM V1 engine and check each one.")
    parser.add_argument("--model", default="var/models/tiny-llama", help="model directory (W0)")
    parser.add_argument("--updates", type=int, default=3, help="number of updates")
    parser.add_argument("--step-size", type=float, default=SyntheticSource().step_size,
                        help="relative step of the synthetic trajectory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic trajectory")
    parser.add_argument("--checkpoints", nargs="+", help="checkpoint dirs W_1..W_N instead")
    parser.add_argument("--no-reset-prefix-cache", action="store_true",
                        help="do not call reset_prefix_cache() after updates")
    parser.add_argument("--update-mode", choices=["between_batches", "in_flight"],
                        default="between_batches")
    parser.add_argument("--pause-mode", choices=["keep", "abort", "wait", "none"],
                        default="keep")
    parser.add_argument("--load-mode", choices=["layerwise", "direct"], default="layerwise")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--dtype", default="bfloat16",
                        choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--extension", default=EXTENSION_QUALNAME)
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = parser.parse_args(argv)
    # vLLM logs to stdout by default; stdout is for the report (and must be pure JSON).
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    source: dict[str, Any] = (
        {"kind": "checkpoints", "dirs": args.checkpoints} if args.checkpoints
        else {"kind": "synthetic", "seed": args.seed, "step_size": args.step_size})
    try:
        spec = ReplaySpec.model_validate({
            "model": args.model,
            "num_updates": None if args.checkpoints else args.updates,
            "source": source,
            "reset_prefix_cache": not args.no_reset_prefix_cache,
            "update_mode": args.update_mode,
            "pause_mode": args.pause_mode,
            "load_mode": args.load_mode,
            "engine": {"dtype": args.dtype},
            "trainer": {"dtype": args.dtype},
            "sampling": {"temperature": args.temperature, "max_tokens": args.max_tokens,
                         "logprobs_topk": 0},
            "extension": args.extension,
        })
        result = run_replay(spec, PrintReporter())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(_jsonable(result.to_dict()), indent=2))
    else:
        print(_text_report(result))
    return 0


def _text_report(r: ReplayResult) -> str:
    lines = [f"replay of {len(r.updates)} updates on {r.model} (vLLM "
             f"{r.capabilities.get('vllm_version')}): verdict {r.verdict}, {r.seconds:.1f} s"]
    b = r.baseline["metrics"]
    lines.append(f"  W0 baseline: abs_diff_mean {_fmt(b.get('abs_diff_mean'))}, "
                 f"kl_k3 {_fmt(b.get('kl_k3'))}")
    for u in r.updates:
        m, p = u.metrics, u.metrics_vs_previous
        lines.append(
            f"  update {u.step}: vs W_k abs_diff_mean {_fmt(m.get('abs_diff_mean'))} kl_k3 "
            f"{_fmt(m.get('kl_k3'))} | vs W_k-1 abs_diff_mean {_fmt(p.get('abs_diff_mean'))} "
            f"kl_k3 {_fmt(p.get('kl_k3'))} | params {u.checksums['matched']}/"
            f"{u.checksums['n_params']} match W_k")
        for name in u.fired():
            lines.append(f"    FLAG {name}: {u.flags[name].reason}")
    lines.append("  prefix cache: " + str(r.prefix_cache_summary.get("summary", "not measured")))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
