"""An in-flight weight update: the engine driven step by step, the update landing while the
batch's requests are half-way through decoding (update_mode="in_flight")."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from parity.reports.replay import InFlightReport, UpdateInfo, VllmCall
from workers.replay.batch import Batch
from workers.specs import SamplingSettings

if TYPE_CHECKING:
    from workers.rollout import Engine


def generate_in_flight(
    engine: Engine,
    prompt_ids: Sequence[Sequence[int]],
    sampling: SamplingSettings,
    update: Callable[[], UpdateInfo],
    *,
    pause_mode: str,
    reset: bool,
    recompute: bool,
) -> tuple[Batch, InFlightReport, UpdateInfo]:
    """Sample with the weight update landing while the requests are half-way decoded.

    Drives the engine step by step (`LLMEngine.add_request` / `step`): once every request
    has at least half of `max_tokens`, the requests are paused as `pause_mode` says
    (LLM.sleep(level=0, mode=...)), `update()` runs, the prefix cache is reset if asked
    (with `reset_running_requests=recompute`), and decoding resumes
    (LLM.wake_up(tags=["scheduling"])).

    Returns:
        The batch; what happened at the boundary (per sequence the number of tokens sampled
        before the update, and every vLLM call's outcome: an unsupported mode is recorded,
        not faked); what `update()` returned.
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
    info = InFlightReport(pause_mode=pause_mode, calls=[], boundary=[])
    updated: UpdateInfo | None = None
    boundary: dict[str, int] | None = None
    resubmitted: dict[str, tuple[str, list[int], list[float]]] = {}

    def call(name: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - what this vLLM refuses is a finding
            error = f"{type(exc).__name__}: {rollout.first_line(exc)}"
            info["calls"].append(VllmCall(call=name, ok=False, error=error))
            return False, None
        returned = value if isinstance(value, bool | int | None) else None
        info["calls"].append(VllmCall(call=name, ok=True, returned=returned))
        return True, returned

    def ntok(rid: str) -> int:
        out = latest.get(rid)
        return len(out.outputs[0].token_ids) if out is not None and out.outputs else 0

    while eng.has_unfinished_requests():
        for out in eng.step():
            latest[out.request_id] = out
        if boundary is None and all(
            ntok(r) >= half or (r in latest and latest[r].finished) for r in ids
        ):
            boundary = {r: ntok(r) for r in ids}
            paused = False
            if pause_mode != "none":
                paused, _ = call(
                    f"LLM.sleep(level=0, mode={pause_mode!r})",
                    lambda: llm.sleep(level=0, mode=pause_mode),
                )
            info["paused"] = paused
            updated = update()
            if reset or recompute:
                _, info["reset_prefix_cache_returned"] = call(
                    f"LLM.reset_prefix_cache(reset_running_requests={recompute})",
                    lambda: llm.reset_prefix_cache(reset_running_requests=recompute),
                )
            if paused:
                call("LLM.wake_up(tags=['scheduling'])", lambda: llm.wake_up(tags=["scheduling"]))
            if pause_mode == "abort" and paused:
                _resubmit(eng, ids, prompts, latest, params, sampling, resubmitted)
                info["resubmitted"] = len(resubmitted)
    if boundary is None or updated is None:
        # Every request finished before reaching half its tokens: update afterwards.
        boundary = {r: ntok(r) for r in ids}
        updated = update()
        info["note"] = "all requests finished before the update point; updated afterwards"

    token_ids: list[list[int]] = []
    lr: list[list[float]] = []
    finish: list[str | None] = []
    for r in ids:
        out = latest[r].outputs[0]
        toks, lps, reason = list(out.token_ids), _token_logprobs(out), out.finish_reason
        if r in resubmitted:
            new_id, done, done_lps = resubmitted[r]
            tail = latest[new_id].outputs[0]
            toks, lps = done + list(tail.token_ids), done_lps + _token_logprobs(tail)
            reason = tail.finish_reason
        token_ids.append(toks)
        lr.append(lps)
        finish.append(reason)
    r_out = rollout.Rollout(
        prompt_token_ids=[list(p) for p in prompt_ids],
        prompt_index=list(range(len(prompt_ids))),
        token_ids=token_ids,
        lr=lr,
        finish_reasons=finish,
        requested=sampling.requested(),
        effective=rollout.sampling_dict(params),
        model_defaults=rollout.model_sampling_defaults(llm),
        vllm_version=_vllm_version(),
    )
    info["boundary"] = [boundary[r] for r in ids]
    cached = [getattr(latest[r], "num_cached_tokens", None) for r in ids]
    return Batch(r_out, cached), info, updated


def _resubmit(
    eng: Any,
    ids: Sequence[str],
    prompts: dict[str, list[int]],
    latest: dict[str, Any],
    params: Any,
    sampling: SamplingSettings,
    resubmitted: dict[str, tuple[str, list[int], list[float]]],
) -> None:
    """Aborted requests end where they stand; like partial-rollout frameworks, resubmit each
    one with its tokens so far appended to the prompt (into `resubmitted`: request id ->
    (new id, tokens so far, their logprobs))."""
    from vllm.inputs import TokensPrompt

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
        eng.add_request(new_id, TokensPrompt(prompt_token_ids=prompts[r] + done), rest)
        latest.pop(new_id, None)


def _token_logprobs(completion: Any) -> list[float]:
    steps = completion.logprobs or []
    ids = list(completion.token_ids)
    if len(steps) != len(ids):
        raise RuntimeError(f"vLLM returned {len(steps)} logprob entries for {len(ids)} tokens")
    return [step[t].logprob for step, t in zip(steps, ids, strict=True)]


def _vllm_version() -> str:
    import vllm

    return str(vllm.__version__)
