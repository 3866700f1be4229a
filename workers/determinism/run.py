"""Running the certificate: the same prompts and seeds sampled by one engine adapter several
ways, each run compared with batch size 1 (`judge`), and the reference scored by the trainer
through the one measurement pipeline (`workers.measure`).

    batch_1       one prompt per generate call (the reference)
    full_batch    every prompt in one call
    shuffled      one call in a fixed random order, un-shuffled before comparing
    max_num_seqs  the full batch on an engine built with another max_num_seqs (in-process
                  only: a server's is fixed when it starts, and the report says so)

torch, vLLM and transformers are imported inside the functions that use them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from parity.reports import REPORT_VERSION
from parity.reports.determinism import (
    DeterminismReport,
    GroupReport,
    PairReport,
    RunName,
    RunReport,
    TrainerReport,
)
from workers import engines, measure
from workers import prompts as prompt_sets
from workers.determinism.judge import Sequences, compare_runs, groups, verdict
from workers.reporting import JobOutcome, Reporter, UserError, json_safe
from workers.specs import DeterminismSpec, parse_spec

if TYPE_CHECKING:
    from workers.engines import RolloutEngine
    from workers.rollout import Rollout

LABELS: dict[RunName, str] = {
    "batch_1": "batch size 1",
    "full_batch": "full batch",
    "shuffled": "shuffled batch",
    "max_num_seqs": "other max_num_seqs",
}


def run_determinism_job(spec: Mapping[str, Any], reporter: Reporter) -> JobOutcome:
    """The Celery entry point (workers.specs.kinds, "determinism"): validate, run, package.

    step_values: step 0 holds the worst pair's bit_equal_frac and max |Δ| and the trainer's
    bit_equal_frac, so runs can be charted and alerted on like a comparison's step 0."""
    report = run_determinism(parse_spec(DeterminismSpec, spec), reporter)
    measured = [p for p in report["pairs"] if p["bit_equal_frac"] is not None]
    step: dict[str, float] = {}
    if measured:
        step["bit_equal_frac"] = min(p["bit_equal_frac"] or 0.0 for p in measured)
        step["diverged_seq_frac"] = max(p["diverged_seq_frac"] or 0.0 for p in measured)
    diffs = [p["abs_diff_max"] for p in measured if p["abs_diff_max"] is not None]
    if diffs:
        step["abs_diff_max"] = max(diffs)
    if report["trainer"]["bit_equal_frac"] is not None:
        step["trainer_bit_equal_frac"] = report["trainer"]["bit_equal_frac"]
    return JobOutcome(
        result=json_safe(dict(report)),
        fingerprint=json_safe(report["fingerprint"]),
        verdict=report["verdict"],
        step_values={0: step} if step else {},
    )


def run_determinism(spec: DeterminismSpec, reporter: Reporter) -> DeterminismReport:
    """Sample every run, compare each with batch size 1, score the reference with the trainer.

    Raises UserError before any engine work for a missing model or a bad prompt set, and when
    the engine cannot sample the reference. A later run that fails on its own (e.g. an engine
    this device cannot build at another max_num_seqs) is reported "could-not-run" with its
    reason; no number is invented.
    """
    from workers import rollout

    started = time.perf_counter()
    timings: dict[str, float] = {}
    model_path = rollout.resolve_model(spec.model)
    items = prompt_sets.load(spec.prompt_set, spec.prompts, spec.num_prompts)
    from transformers import AutoTokenizer

    # Rendered before any engine work: a prompt problem is known in a second.
    rendered = prompt_sets.render_set(items, AutoTokenizer.from_pretrained(model_path))
    notes = rendered.notes()

    reporter.stage("loading engine", 0.0)
    engine, reused = engines.open_engine(model_path, spec.engine, spec.server)
    timings["engine_load_s"] = 0.0 if reused else engine.load_seconds
    notes += getattr(engine, "notes", [])
    try:
        kept, skipped = prompt_sets.fitting(rendered.ids, engine.max_model_len)
        notes += skipped
        prompts = [rendered.ids[i] for i in kept]
        eff = engine.effective_settings()
        runs: dict[RunName, tuple[RunReport, Rollout | None]] = {}
        same_engine: tuple[RunName, ...] = ("batch_1", "full_batch", "shuffled")
        for i, name in enumerate(same_engine):
            reporter.stage(f"sampling: {LABELS[name]}", 0.05 + 0.6 * i / 4)
            runs[name] = _sample(name, engine, prompts, spec, eff)
            timings[f"{name}_s"] = runs[name][0]["seconds"]
        reporter.stage(f"sampling: {LABELS['max_num_seqs']}", 0.5)
        runs["max_num_seqs"] = _other_max_num_seqs(engine, model_path, prompts, spec, eff)
        timings["max_num_seqs_s"] = runs["max_num_seqs"][0]["seconds"]
    finally:
        engines.release(engine)

    reference = runs["batch_1"][1]
    assert reference is not None
    ref_seqs = Sequences(reference.token_ids, reference.lr)
    pairs: list[PairReport] = []
    for name, (_, ro) in runs.items():
        if name != "batch_1" and ro is not None:
            pairs.append(compare_runs(name, LABELS[name], ref_seqs, Sequences(ro.token_ids, ro.lr)))

    engine_claims = claims_batch_invariance(eff.get("batch_invariant"))
    reporter.stage("scoring the reference with the trainer", 0.75)
    t0 = time.perf_counter()
    trainer = _trainer(spec, model_path, engine.settings, reference, engine_claims)
    timings["trainer_s"] = time.perf_counter() - t0

    overall, reasons = verdict(
        pairs,
        {name: run["groups"] for name, (run, _) in runs.items()},
        trainer,
        spec,
        engine_claims,
    )
    who = _engine_answered(engine, eff)
    fingerprint = {
        "kind": "determinism",
        "model": spec.model,
        "model_path": model_path,
        "engine": {**who, "effective": eff, "settings": spec.engine.model_dump()},
        "trainer": spec.trainer.model_dump(),
        "sampling": reference.effective,
        "sampling_requested": reference.requested,
        "shuffle_seed": spec.shuffle_seed,
        "prompt_set": spec.prompt_set,
        "num_prompts": len(prompts),
    }
    reporter.stage(f"done: verdict {overall}", 1.0)
    return {
        "version": REPORT_VERSION,
        "kind": "determinism",
        "verdict": overall,
        "reasons": reasons,
        "model": model_path,
        "reference": "batch_1",
        "runs": [run for run, _ in runs.values()],
        "pairs": pairs,
        "trainer": trainer,
        "engine": who,
        "sampling": reference.effective,
        "fingerprint": fingerprint,
        "timings": timings,
        "wall_s": time.perf_counter() - started,
        "notes": notes,
    }


def claims_batch_invariance(value: Any) -> bool | None:
    """An engine's batch-invariance setting as reported (VLLM_BATCH_INVARIANT, a bool or its
    environment string) -> True/False, None when it is not known."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | str) and str(value).strip().lower() in ("1", "true"):
        return True
    if isinstance(value, int | str) and str(value).strip().lower() in ("0", "false", ""):
        return False
    return None


def trainer_claims_determinism() -> tuple[bool, str]:
    """(claims, why): the trainer runs in this process, so it claims determinism when torch's
    deterministic algorithms are on or VLLM_BATCH_INVARIANT=1 is set here (vLLM's
    batch-invariant kernels then replace torch's in this process on the GPU)."""
    import torch

    if torch.are_deterministic_algorithms_enabled():
        return True, "torch.use_deterministic_algorithms(True) in the trainer"
    if claims_batch_invariance(os.environ.get("VLLM_BATCH_INVARIANT", "0")):
        return True, "VLLM_BATCH_INVARIANT=1 in the trainer's process"
    return False, "the trainer runs torch's default (not batch-invariant) kernels"


# --- the runs ------------------------------------------------------------------------------


def _sample(
    name: RunName,
    engine: RolloutEngine,
    prompts: Sequence[Sequence[int]],
    spec: DeterminismSpec,
    eff: Mapping[str, Any],
) -> tuple[RunReport, Rollout]:
    """One run on `engine`, its sequences in canonical order (prompt by prompt, sample by
    sample), whatever order they were sampled in."""
    t0 = time.perf_counter()
    if name == "batch_1":
        parts = [engine.generate([p], spec.sampling) for p in prompts]
        ro = _concat(parts, prompts)
        per_call = 1
    elif name == "shuffled":
        order = np.random.default_rng(spec.shuffle_seed).permutation(len(prompts))
        ro = _unshuffle(engine.generate([prompts[i] for i in order], spec.sampling), order)
        per_call = len(prompts)
    else:
        ro = engine.generate(prompts, spec.sampling)
        per_call = len(prompts)
    return _run_report(name, ro, spec, eff.get("max_num_seqs"), per_call, t0), ro


def _other_max_num_seqs(
    engine: RolloutEngine,
    model_path: str,
    prompts: Sequence[Sequence[int]],
    spec: DeterminismSpec,
    eff: Mapping[str, Any],
) -> tuple[RunReport, Rollout | None]:
    other, current = spec.other_max_num_seqs, eff.get("max_num_seqs")
    if other is None:
        return _not_run("not-applicable", "not asked for (other_max_num_seqs is empty)", other)
    if engine.adapter != "vllm":
        return _not_run(
            "not-applicable",
            f"a server's max_num_seqs is fixed when it starts (this one runs with {current}); "
            f"to compare, start a second server with --max-num-seqs {other} and certify it too",
            current,
        )
    if other == current:
        return _not_run(
            "not-applicable",
            f"the engine already runs with max_num_seqs={other}: choose another value",
            other,
        )
    from workers import rollout

    t0 = time.perf_counter()
    try:
        settings = engine.settings.model_copy(update={"max_num_seqs": other})
        # Builds a second in-process engine (the warm one is shut down first).
        other_engine, _ = engines.open_engine(model_path, settings)
        ro = other_engine.generate(prompts, spec.sampling)
        max_seqs = other_engine.effective_settings().get("max_num_seqs")
    except Exception as exc:  # noqa: BLE001 - this run's failure is its finding
        if type(exc).__name__ in ("SoftTimeLimitExceeded", "TimeLimitExceeded"):
            raise
        return _not_run("could-not-run", rollout.first_line(exc), other)
    return _run_report("max_num_seqs", ro, spec, max_seqs, len(prompts), t0), ro


def _run_report(
    name: RunName,
    ro: Rollout,
    spec: DeterminismSpec,
    max_num_seqs: Any,
    per_call: int,
    started: float,
) -> RunReport:
    group: GroupReport | None = groups(ro.token_ids, spec.sampling.n)
    return {
        "name": name,
        "label": LABELS[name],
        "status": "measured",
        "reason": "",
        "max_num_seqs": max_num_seqs,
        "requests_per_call": per_call,
        "n_sequences": len(ro.token_ids),
        "n_tokens": sum(len(t) for t in ro.token_ids),
        "seconds": time.perf_counter() - started,
        "groups": group,
    }


def _not_run(status: Any, reason: str, max_num_seqs: Any) -> tuple[RunReport, None]:
    report: RunReport = {
        "name": "max_num_seqs",
        "label": LABELS["max_num_seqs"],
        "status": status,
        "reason": reason,
        "max_num_seqs": max_num_seqs,
        "requests_per_call": None,
        "n_sequences": 0,
        "n_tokens": 0,
        "seconds": 0.0,
        "groups": None,
    }
    return report, None


def _concat(parts: Sequence[Rollout], prompts: Sequence[Sequence[int]]) -> Rollout:
    """One-prompt rollouts as one rollout over every prompt."""
    first = parts[0]
    return replace(
        first,
        prompt_token_ids=[list(p) for p in prompts],
        prompt_index=[i for i, ro in enumerate(parts) for _ in ro.token_ids],
        token_ids=[t for ro in parts for t in ro.token_ids],
        lr=[x for ro in parts for x in ro.lr],
        finish_reasons=[f for ro in parts for f in ro.finish_reasons],
        topk_ids=None,
        topk_logprobs=None,
        seconds=sum(ro.seconds for ro in parts),
    )


def _unshuffle(ro: Rollout, order: np.ndarray) -> Rollout:
    """A rollout sampled on prompts[order] back in prompt order (samples keep their order
    within a prompt: a stable sort)."""
    original = [int(order[i]) for i in ro.prompt_index]
    idx = sorted(range(len(original)), key=lambda s: original[s])
    prompts = [[] for _ in range(len(order))]  # type: list[list[int]]
    for pos, i in enumerate(order):
        prompts[int(i)] = ro.prompt_token_ids[pos]
    return replace(
        ro,
        prompt_token_ids=prompts,
        prompt_index=[original[s] for s in idx],
        token_ids=[ro.token_ids[s] for s in idx],
        lr=[ro.lr[s] for s in idx],
        finish_reasons=[ro.finish_reasons[s] for s in idx],
        topk_ids=None,
        topk_logprobs=None,
    )


def _trainer(
    spec: DeterminismSpec,
    model_path: str,
    engine_settings: Any,
    reference: Rollout,
    engine_claims: bool | None,
) -> TrainerReport:
    """The reference run scored by the trainer: bit_equal_frac and |Δ| of trainer vs engine,
    flagged meaningful only when both claim determinism."""
    trainer_claims, trainer_why = trainer_claims_determinism()
    engine_why = {
        True: "the engine claims batch invariance (VLLM_BATCH_INVARIANT=1)",
        False: "the engine does not claim batch invariance",
        None: "the engine does not report whether it is batch-invariant",
    }[engine_claims]
    out: TrainerReport = {
        "status": "skipped",
        "reason": "score_with_trainer is off",
        "n_tokens": 0,
        "bit_equal_frac": None,
        "abs_diff_mean": None,
        "abs_diff_max": None,
        "engine_claims": engine_claims,
        "trainer_claims": trainer_claims,
        "meaningful": bool(engine_claims) and trainer_claims,
        "claims": f"{engine_why}; {trainer_why}",
    }
    if not spec.score_with_trainer:
        return out
    try:
        m = measure.measure(model_path, spec.trainer, engine_settings, reference, None)
    except UserError as exc:
        return {**out, "status": "could-not-run", "reason": str(exc)}
    values = m.metrics.values
    return {
        **out,
        "status": "measured",
        "reason": "",
        "n_tokens": int(values.get("n_tokens") or 0),
        "bit_equal_frac": values.get("bit_equal_frac"),
        "abs_diff_mean": values.get("abs_diff_mean"),
        "abs_diff_max": values.get("abs_diff_max"),
    }


def _engine_answered(engine: RolloutEngine, eff: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "adapter": engine.adapter,
        "label": engines.ADAPTER_LABELS.get(engine.adapter, engine.adapter),
        "version": engine.version,
        "url": eff.get("url"),
        "batch_invariant": eff.get("batch_invariant"),
        "max_num_seqs": eff.get("max_num_seqs"),
        "dtype": eff.get("dtype"),
        "unknown": list(eff.get("unknown") or []),
    }
