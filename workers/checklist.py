"""The vLLM V1 migration checklist (issue 8), measured on the user's own model.

For each of the four known fix areas (seed, METRICS.md "known offsets") the checklist runs the
V1 default and the fix as comparisons on the same prompts and seeds, and reports per row a
status, the measured before/after numbers and the setting to use:

    row                  before (V1 default)                after (fix)
    processed_logprobs   engine raw logprobs                processed logprobs
    runtime_defaults     generation_config="auto"           every sampling field explicit
    weight_updates       load_weights, no prefix reset      load_weights + reset_prefix_cache()
    fp32_head            model-dtype lm_head, both sides    fp32 lm_head on both sides
    all_fixes            all V1 defaults together           all fixes, vs the thresholds

In every variant the trainer scores the engine's tokens the way an RL trainer should: under
the sampling distribution it was told about (temperature, top-k, top-p, min-p, penalties,
renormalised; `workers.trainer.process_logprobs`). So "before" numbers are the gap an RL
loop really sees with the V1 default, and "after" the gap that remains with the fix.

Variants are run grouped by engine settings, so that one warm engine serves all variants it
can (`workers.rollout.get_engine` keys on model + settings), and trainer-only variants
re-score a rollout that was already sampled:

    engine raw / auto / model head ........ V1 defaults, raw logprobs
    engine processed / auto / model head .. generation_config defaults, processed logprobs,
                                            (trainer fp32 head) fp32 on one side only
    engine processed / vllm / fp32 head ... fp32 both sides = all fixes
    replay engine(s) (workers.replay) ..... weight updates with / without reset, in flight

    python -m workers.checklist --model var/models/tiny-llama --temperature 0.7 --top-p 0.9
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pydantic

from workers import prompts as prompt_sets
from workers.reporting import (
    JobOutcome,
    NullReporter,
    PrintReporter,
    Reporter,
    UserError,
    json_safe,
)
from workers.specs import (
    NEUTRAL_SAMPLING,
    EngineSettings,
    SamplingSettings,
    TrainerSettings,
    parse_spec,
    validation_message,
)
from workers.specs.checklist import CHECKS, ChecklistSpec

Status = Literal["pass", "needs-fix", "not-applicable", "could-not-run"]
ROW_TITLES = {
    "processed_logprobs": "Processed logprobs",
    "runtime_defaults": "Runtime defaults (generation_config)",
    "weight_updates": "In-flight weight updates (prefix cache)",
    "fp32_head": "fp32 lm_head",
    "all_fixes": "All fixes together",
}
# A fix "matters" when it removes at least a third of the gap (before > 1.5 x after) and more
# than this many nats of mean |d|: below that, two runs of the same setup differ as much.
NOISE_ABS_DIFF_MEAN = 0.002
MATTERS_RATIO = 1.5
# Common |d| bins of the overlaid histogram (nats): every variant on the same edges, so the
# bars line up; |d| = 0 exactly is counted apart (a log axis has no 0).
HIST_EDGES = np.geomspace(1e-6, 100.0, 57)
# The numbers each before/after cell shows (the three, plus what qualifies them).
CELL_KEYS = ("abs_diff_mean", "kl_k3", "abs_diff_max", "n_tokens", "nonfinite_trainer")


# --- variants ------------------------------------------------------------------------------


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
    proc_auto = base_e.model_copy(update={"logprobs_mode": "processed",
                                          "generation_config": "auto"})
    fixed_e = base_e.model_copy(update={"logprobs_mode": "processed", "generation_config": "vllm",
                                        "head_dtype": "float32"})
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
        Variant("v1_defaults", "V1 defaults: raw logprobs, generation_config=auto, "
                "model-dtype lm_head", raw_auto, t_model, explicit_sampling=False),
        Variant("raw_logprobs", "raw logprobs (sampling fields explicit)", raw_auto, t_model,
                explicit_sampling=True),
        Variant("genconfig_auto", "processed logprobs, generation_config=auto fills unset "
                "fields", proc_auto, t_model, explicit_sampling=False),
        Variant("processed", "processed logprobs, sampling explicit, model-dtype lm_head "
                "both sides", proc_auto, t_model, explicit_sampling=True),
        Variant("fp32_trainer_only", "fp32 lm_head on the trainer only", proc_auto, t_fp32,
                explicit_sampling=True, rescore_of="processed"),
        Variant("all_fixes", "all fixes: processed logprobs, generation_config=vllm, fp32 "
                "lm_head both sides", fixed_e, t_fp32, explicit_sampling=False),
    ]
    return [v for v in every if v.name in want]


def explicit(sampling: SamplingSettings) -> SamplingSettings:
    """`sampling` with every field the engine could fill set to what the trainer assumes
    (vLLM's neutral default where unset): nothing is left to generation_config."""
    requested = sampling.requested()
    return sampling.model_copy(update={k: requested[k] for k in NEUTRAL_SAMPLING})


# --- results -------------------------------------------------------------------------------


@dataclass
class Measured:
    """One variant's outcome: its numbers, or why it could not run."""

    name: str
    label: str
    status: Literal["measured", "could-not-run"]
    error: str | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    verdict: str | None = None
    reasons: list[str] = field(default_factory=list)
    histogram: dict[str, Any] | None = None
    engine_reused: bool | None = None
    # The variant whose sampled tokens this one scored (no new generation), if any.
    rollout_of: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "measured"

    def cell(self, role: str) -> dict[str, Any]:
        """The before/after cell of a row: this variant's headline numbers."""
        out: dict[str, Any] = {"role": role, "variant": self.name, "label": self.label,
                               "verdict": self.verdict}
        out.update({k: self.values.get(k) for k in CELL_KEYS if k in self.values})
        return out


@dataclass
class ChecklistResult:
    """Everything the checklist measured; `to_dict()` is the job's result JSON."""

    model: str
    vllm_version: str | None
    sampling_requested: dict[str, Any]
    rows: list[dict[str, Any]]
    variants: list[Measured]
    replays: dict[str, Any]
    verdict: str
    engine_builds: int
    seconds: float
    timings: dict[str, float]
    spec: dict[str, Any]

    def histograms(self) -> dict[str, Any]:
        """Per-variant |d| counts on the common edges, for one overlaid chart."""
        series = [
            {"variant": m.name, "label": m.label, **m.histogram}
            for m in self.variants if m.ok and m.histogram is not None
        ]
        return {"edges": [float(x) for x in HIST_EDGES], "series": series}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "checklist",
            "model": self.model,
            "vllm_version": self.vllm_version,
            "sampling_requested": self.sampling_requested,
            "verdict": self.verdict,
            "rows": self.rows,
            "variants": [{k: v for k, v in asdict(m).items() if k != "histogram"}
                         for m in self.variants],
            "histograms": self.histograms(),
            "replays": self.replays,
            "engine_builds": self.engine_builds,
            "seconds": self.seconds,
            "timings": self.timings,
            "spec": self.spec,
        }
        out = json_safe(out)
        out["markdown"] = render_markdown(out)
        return out


def abs_d_histogram(lt: np.ndarray, lr: np.ndarray) -> dict[str, Any]:
    """|lt - lr| counted on HIST_EDGES: `counts` per bin (values below the first edge in the
    first bin, above the last in the last), `zeros` (d == 0 exactly) and `nonfinite`."""
    d = np.asarray(lt, dtype=np.float64) - np.asarray(lr, dtype=np.float64)
    finite = np.isfinite(d)
    a = np.abs(d[finite])
    zeros = int(np.count_nonzero(a == 0.0))
    a = np.clip(a[a > 0.0], HIST_EDGES[0], HIST_EDGES[-1])
    counts, _ = np.histogram(a, bins=HIST_EDGES)
    return {"counts": [int(c) for c in counts], "zeros": zeros,
            "nonfinite": int(np.count_nonzero(~finite))}


# --- running -------------------------------------------------------------------------------


def _reraise_if_fatal(exc: BaseException) -> None:
    # Celery's soft time limit arrives as an exception inside whatever runs; it must end the
    # job, not be written into a row as "could not run". Matched by name: engine code does
    # not import Celery.
    if type(exc).__name__ in ("SoftTimeLimitExceeded", "TimeLimitExceeded"):
        raise exc


def _reason(exc: BaseException) -> str:
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:500]
    return text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}"


class _Progress:
    """'variant i/N: label — stage' messages with an overall fraction."""

    def __init__(self, reporter: Reporter, total: int) -> None:
        self.reporter, self.total = reporter, max(total, 1)

    def say(self, index: int, label: str, stage: str, frac: float = 0.0) -> None:
        self.reporter.stage(f"variant {index + 1}/{self.total}: {label} — {stage}",
                            min(1.0, (index + frac) / self.total))


def run_checklist(spec: ChecklistSpec, reporter: Reporter | None = None) -> ChecklistResult:
    """Run every selected check on `spec.model` and return the rows with measured numbers.

    Raises UserError before any engine work for a missing model, a bad prompt set or bad
    thresholds, and when no variant at all could run (the reason of the first). A variant
    that fails on its own (an option this vLLM or device refuses) is recorded with its
    exact reason, and the rows that need it say "could-not-run"; no number is invented.
    """
    from parity.metrics import Thresholds, compute_metrics
    from workers import rollout
    from workers import trainer as trainer_mod

    reporter = reporter or NullReporter()
    started = time.perf_counter()
    try:
        thresholds = Thresholds.from_dict(spec.thresholds)
    except ValueError as exc:
        raise UserError(f"thresholds: {exc}") from None
    model_path = rollout.resolve_model(spec.model)
    items = prompt_sets.load(spec.prompt_set, spec.prompts, spec.num_prompts)
    plan = plan_variants(spec)
    replay_steps = _replay_plan(spec)
    progress = _Progress(reporter, len(plan) + len(replay_steps))
    timings: dict[str, float] = {}
    builds = 0

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompt_ids = prompt_sets.render(items, tokenizer)
    sampling_as_given = spec.sampling
    sampling_explicit = explicit(spec.sampling)

    measured: dict[str, Measured] = {}
    rollouts: dict[str, Any] = {}
    by_key: dict[tuple[str, str], str] = {}
    for i, v in enumerate(plan):
        t0 = time.perf_counter()
        m = Measured(v.name, v.label, "measured")
        try:
            if v.rescore_of is not None:
                if v.rescore_of not in rollouts:
                    raise UserError(f"needs the rollout of variant {v.rescore_of!r}, which "
                                    f"could not run: {measured[v.rescore_of].error}")
                ro, eng_settings = rollouts[v.rescore_of]
                m.engine_reused, m.rollout_of = True, v.rescore_of
            else:
                progress.say(i, v.label, "loading engine")
                engine, reused = rollout.get_engine(model_path, v.engine)
                builds += 0 if reused else 1
                m.engine_reused = reused
                if not reused:
                    m.seconds["engine_load_s"] = engine.load_seconds
                eng_settings = engine.effective_settings()
                sampling = sampling_explicit if v.explicit_sampling else sampling_as_given
                # Same engine, same effective parameters, same seeds: the same tokens. Reuse
                # them (e.g. explicit fields on a model whose generation_config sets none).
                same_key = (v.engine.model_dump_json(), json.dumps(rollout.sampling_dict(
                    rollout.effective_sampling(sampling, engine.llm)), sort_keys=True))
                if same_key in by_key:
                    m.rollout_of = by_key[same_key]
                    ro = rollouts[m.rollout_of][0]
                else:
                    progress.say(i, v.label, "generating", 0.3)
                    ro = rollout.generate(engine, prompt_ids, sampling)
                    m.seconds["generate_s"] = ro.seconds
                    by_key[same_key] = v.name
                rollouts[v.name] = (ro, eng_settings)
            m.engine = {k: eng_settings.get(k) for k in
                        ("dtype", "head_dtype", "logprobs_mode", "generation_config",
                         "enable_prefix_caching")}
            m.sampling = {
                "requested": ro.requested, "effective": ro.effective,
                "model_defaults": ro.model_defaults,
                "changed_by_defaults": {k: {"requested": a, "effective": b}
                                        for k, (a, b) in ro.changed_by_defaults.items()},
            }
            progress.say(i, v.label, "scoring with the trainer", 0.6)
            tm, _ = trainer_mod.get_trainer(model_path, v.trainer)
            # The trainer applies the sampling processing it was told about (the requested
            # parameters): what an RL trainer computes its importance ratios with.
            processing = trainer_mod.Processing.for_comparison(v.trainer, v.engine, ro.requested)
            seq_prompts = [ro.prompt_token_ids[j] for j in ro.prompt_index]
            scores = trainer_mod.score(tm, seq_prompts, ro.token_ids, processing)
            m.seconds["score_s"] = scores.seconds
            m.trainer = {"dtype": v.trainer.dtype, "head_dtype": v.trainer.head_dtype,
                         "processing": asdict(processing)}
            seq_lens = np.array([len(t) for t in ro.token_ids], dtype=np.int64)
            lr = np.fromiter((x for seq in ro.lr for x in seq), dtype=np.float64,
                             count=int(seq_lens.sum()))
            token_ids = np.fromiter((t for seq in ro.token_ids for t in seq), dtype=np.int64,
                                    count=lr.size)
            metrics = compute_metrics(scores.lt, lr, seq_lens, entropy=scores.entropy,
                                      token_ids=token_ids, trainer_token_ids=scores.token_ids,
                                      thresholds=thresholds)
            m.values, m.verdict, m.reasons = metrics.values, metrics.verdict, metrics.reasons
            m.histogram = abs_d_histogram(scores.lt, lr)
            progress.say(i, v.label, f"abs_diff_mean {_num(m.values.get('abs_diff_mean'))}",
                         1.0)
        except Exception as exc:  # noqa: BLE001 - one variant's failure is that row's finding
            _reraise_if_fatal(exc)
            m.status, m.error = "could-not-run", _reason(exc)
            progress.say(i, v.label, f"could not run: {m.error}", 1.0)
        m.seconds["total_s"] = time.perf_counter() - t0
        measured[v.name] = m

    if plan and all(not m.ok for m in measured.values()):
        # Nothing could be measured on this model at all (e.g. vLLM or transformers cannot
        # load it): that is the job's error, not five rows of the same reason.
        first = next(iter(measured.values()))
        raise UserError(f"no variant of the checklist could run; the first failed with: "
                        f"{first.error}")
    replays: dict[str, Any] = {}
    builds += _run_replays(spec, model_path, replay_steps, replays, progress, len(plan))

    rows = build_rows(spec, measured, replays, thresholds)
    all_fixes = next((r for r in rows if r["check"] == "all_fixes"), None)
    overall = _overall_verdict(rows, all_fixes)
    for m in measured.values():
        for k, s in m.seconds.items():
            timings[f"{m.name}.{k}"] = s
    for key, rep in replays.items():
        if isinstance(rep.get("seconds"), int | float):
            timings[f"replay_{key}.total_s"] = float(rep["seconds"])
    reporter.stage(f"checklist done: verdict {overall}, {builds} engine builds", 1.0)
    import vllm

    return ChecklistResult(
        model=model_path, vllm_version=str(vllm.__version__),
        sampling_requested=spec.sampling.requested(), rows=rows,
        variants=list(measured.values()), replays=replays, verdict=overall,
        engine_builds=builds, seconds=time.perf_counter() - started, timings=timings,
        spec=spec.model_dump(mode="json"),
    )


# --- the weight-update replay --------------------------------------------------------------


def _replay_plan(spec: ChecklistSpec) -> list[tuple[str, str]]:
    """(key, label) of the replays the spec asks for, in run order."""
    if "weight_updates" not in spec.checks or not spec.include_replay:
        return []
    out = [("between_batches", f"{spec.replay_updates} weight updates, with and without "
            "reset_prefix_cache()")]
    if spec.include_in_flight:
        out.append(("in_flight", "one weight update in flight (requests paused, mode='keep')"))
    return out


def replay_spec_for(spec: ChecklistSpec, model_path: str, mode: str) -> Any:
    """The ReplaySpec of one checklist replay: the engine and trainer with every other fix
    applied (so the row measures the update path alone), the user's sampling with every
    field explicit, one sample per prompt, the replay's long shared-prefix prompts (a stale
    prefix cache is hit only when prompts share full KV blocks)."""
    from workers.replay import ReplaySpec

    engine = spec.engine.model_copy(update={"logprobs_mode": "processed",
                                            "generation_config": "vllm",
                                            "head_dtype": "float32"})
    trainer = spec.trainer.model_copy(update={"head_dtype": "float32",
                                              "processing": "match_engine"})
    sampling = explicit(spec.sampling).model_copy(
        update={"max_tokens": spec.replay_max_tokens, "n": 1, "logprobs_topk": 0})
    common: dict[str, Any] = {
        "model": model_path, "engine": engine, "trainer": trainer, "sampling": sampling,
        "thresholds": spec.thresholds, "reset_prefix_cache": True,
    }
    if mode == "in_flight":
        return ReplaySpec(**common, num_updates=1, update_mode="in_flight", pause_mode="keep",
                          measure_prefix_cache=False)
    return ReplaySpec(**common, num_updates=spec.replay_updates,
                      update_mode="between_batches", measure_prefix_cache=True)


def in_flight_offered(caps: Mapping[str, Any] | None) -> tuple[bool | None, str]:
    """(offered, why) from the first replay's capabilities; None when they are unknown."""
    if not caps:
        return None, "capabilities unknown (the first replay did not run)"
    if "mode" in caps.get("llm_sleep_params", []) and "keep" in caps.get("pause_modes", []):
        return True, (f"vLLM {caps.get('vllm_version')} pauses running requests with "
                      "LLM.sleep(level=0, mode='keep')")
    return False, (f"vLLM {caps.get('vllm_version')} offers no in-flight update mode "
                   "(no LLM.sleep(level=0, mode='keep'); pause modes: "
                   f"{caps.get('pause_modes') or 'none'})")


class _ReplayReporter:
    """Forwards a replay's stages as the checklist's 'variant i/N' progress."""

    def __init__(self, progress: _Progress, index: int, label: str) -> None:
        self.progress, self.index, self.label = progress, index, label

    def stage(self, message: str, progress: float | None = None) -> None:
        self.progress.say(self.index, self.label, message, progress or 0.0)

    def step_values(self, step: int, values: Mapping[str, float]) -> None:
        # Replay steps are the checklist's internals, not points of the job's run.
        pass


def _run_replays(spec: ChecklistSpec, model_path: str, steps: Sequence[tuple[str, str]],
                 replays: dict[str, Any], progress: _Progress, offset: int) -> int:
    """Run the planned replays into `replays` (key -> summary); returns the engines built."""
    from workers.replay import run_replay

    builds = 0
    for j, (key, label) in enumerate(steps):
        index = offset + j
        if key == "in_flight":
            caps = replays.get("between_batches", {}).get("capabilities")
            offered, why = in_flight_offered(caps)
            if offered is False:
                replays[key] = {"status": "not-offered", "reason": why}
                progress.say(index, label, f"skipped: {why}", 1.0)
                continue
        progress.say(index, label, "starting the replay engine")
        t0 = time.perf_counter()
        try:
            result = run_replay(replay_spec_for(spec, model_path, key),
                                _ReplayReporter(progress, index, label))
        except Exception as exc:  # noqa: BLE001 - recorded as the row's reason
            _reraise_if_fatal(exc)
            replays[key] = {"status": "could-not-run", "error": _reason(exc),
                            "seconds": time.perf_counter() - t0}
            progress.say(index, label, f"could not run: {replays[key]['error']}", 1.0)
            continue
        builds += 1  # every replay builds its own engine (workers.replay.build_engine)
        replays[key] = summarise_replay(result)
    return builds


_SUMMARY_KEYS = ("n_tokens", "abs_diff_mean", "abs_diff_max", "kl_k3", "kl_k1",
                 "nonfinite_trainer", "token_mismatch", "bit_equal_frac")


def summarise_replay(result: Any) -> dict[str, Any]:
    """What the checklist keeps of a ReplayResult: flags, per-update numbers, the prefix-cache
    measurement and the in-flight boundary (the full replay is its own job kind)."""
    updates = []
    for u in result.updates:
        updates.append({
            "step": u.step,
            "metrics": {k: u.metrics.get(k) for k in _SUMMARY_KEYS},
            "metrics_vs_previous": {k: u.metrics_vs_previous.get(k) for k in _SUMMARY_KEYS},
            "verdict": u.verdict,
            "reasons": u.reasons,
            "flags": {name: {"fired": f.fired, "reason": f.reason}
                      for name, f in u.flags.items()},
            "checksums": {k: u.checksums.get(k) for k in ("status", "n_params", "matched",
                                                          "not_updated")},
            "prefix_cache": u.prefix_cache,
            "in_flight": u.in_flight,
        })
    return {
        "status": "measured",
        "summary": result.summary() if hasattr(result, "summary") else None,
        "verdict": result.verdict,
        "flags_summary": result.flags_summary,
        "prefix_cache_summary": result.prefix_cache_summary,
        "baseline": {k: result.baseline["metrics"].get(k) for k in _SUMMARY_KEYS},
        "updates": updates,
        "capabilities": result.capabilities,
        "engine": result.engine,
        "update_mode": result.fingerprint.get("update_mode"),
        "seconds": result.seconds,
    }


# --- rows ----------------------------------------------------------------------------------


def matters(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether a fix measurably shrinks the gap: mean |d| down by a third or more and by more
    than the noise floor, or kl_k3 halved from above its warn level."""
    b, a = before.get("abs_diff_mean"), after.get("abs_diff_mean")
    if isinstance(b, int | float) and isinstance(a, int | float):
        if b > MATTERS_RATIO * a and b - a > NOISE_ABS_DIFF_MEAN:
            return True
    kb, ka = before.get("kl_k3"), after.get("kl_k3")
    return (isinstance(kb, int | float) and isinstance(ka, int | float)
            and kb > 2 * ka and kb > 1e-3)


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return "n/a"
    if isinstance(x, int):
        return str(x)
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.4g}"


def _gap(cell: Mapping[str, Any] | None) -> str:
    if not cell:
        return "not measured"
    return (f"mean |d| {_num(cell.get('abs_diff_mean'))}, kl_k3 {_num(cell.get('kl_k3'))}, "
            f"max |d| {_num(cell.get('abs_diff_max'))}")


def _sampling_desc(eff: Mapping[str, Any]) -> str:
    parts = [f"T={_num(float(eff['temperature']))}"]
    if eff["top_p"] < 1.0:
        parts.append(f"top_p={_num(float(eff['top_p']))}")
    if eff["top_k"] > 0:
        parts.append(f"top_k={eff['top_k']}")
    if eff["min_p"] > 0:
        parts.append(f"min_p={_num(float(eff['min_p']))}")
    for k, neutral in (("repetition_penalty", 1.0), ("presence_penalty", 0.0),
                       ("frequency_penalty", 0.0)):
        if eff[k] != neutral:
            parts.append(f"{k}={_num(float(eff[k]))}")
    return ", ".join(parts)


def _neutral(eff: Mapping[str, Any]) -> bool:
    return all(eff[k] == v for k, v in NEUTRAL_SAMPLING.items()) or (
        float(eff["temperature"]) < 1e-5 and eff["repetition_penalty"] == 1.0
        and eff["presence_penalty"] == 0.0 and eff["frequency_penalty"] == 0.0)


def _row(check: str, status: Status, reason: str, *, before: dict[str, Any] | None = None,
         after: dict[str, Any] | None = None, others: list[dict[str, Any]] | None = None,
         details: dict[str, Any] | None = None,
         recommendation: dict[str, str] | None = None) -> dict[str, Any]:
    return {"check": check, "title": ROW_TITLES[check], "status": status, "reason": reason,
            "before": before, "after": after, "others": others or [],
            "details": details or {}, "recommendation": recommendation or {}}


def _missing(measured: Mapping[str, Measured], *names: str) -> str | None:
    """The could-not-run reason when a variant the row needs did not run, else None."""
    for name in names:
        m = measured.get(name)
        if m is None:
            return f"variant {name!r} was not planned"
        if not m.ok:
            return f"variant '{m.label}' could not run: {m.error}"
    return None


def build_rows(spec: ChecklistSpec, measured: Mapping[str, Measured],
               replays: Mapping[str, Any], thresholds: Any) -> list[dict[str, Any]]:
    """One row per check (in CHECKS order, selected ones only) plus 'all fixes together'."""
    rows: list[dict[str, Any]] = []
    builders: dict[str, Callable[[], dict[str, Any]]] = {
        "processed_logprobs": lambda: _row_processed(spec, measured),
        "runtime_defaults": lambda: _row_runtime_defaults(spec, measured),
        "weight_updates": lambda: _row_weight_updates(spec, replays),
        "fp32_head": lambda: _row_fp32_head(spec, measured),
    }
    for check in spec.checks:
        rows.append(builders[check]())
    rows.append(_row_all_fixes(spec, measured, replays, rows))
    return rows


def _row_processed(spec: ChecklistSpec, measured: Mapping[str, Measured]) -> dict[str, Any]:
    rec = recommendation("processed_logprobs", spec)
    missing = _missing(measured, "raw_logprobs", "processed")
    if missing:
        return _row("processed_logprobs", "could-not-run", missing, recommendation=rec)
    raw, proc = measured["raw_logprobs"], measured["processed"]
    before, after = raw.cell("before"), proc.cell("after")
    eff = proc.sampling["effective"]
    desc = _sampling_desc(eff)
    details = {"sampling": eff, "trainer_processing": proc.trainer.get("processing")}
    if _neutral(eff):
        return _row("processed_logprobs", "not-applicable",
                    f"sampling at {desc} leaves the distribution unprocessed: raw and "
                    "processed logprobs are the same here", before=before, after=after,
                    details=details, recommendation=rec)
    if matters(before, after):
        status: Status = "needs-fix"
        reason = (f"with raw logprobs (vLLM's default) the engine's lr is not the probability "
                  f"of the distribution it sampled from ({desc}): {_gap(before)} against a "
                  f"trainer that applies the same processing; with processed logprobs "
                  f"{_gap(after)}")
    else:
        status = "pass"
        reason = (f"at {desc} raw and processed logprobs give the same gap here "
                  f"({_gap(before)} vs {_gap(after)})")
    return _row("processed_logprobs", status, reason, before=before, after=after,
                details=details, recommendation=rec)


def _row_runtime_defaults(spec: ChecklistSpec,
                          measured: Mapping[str, Measured]) -> dict[str, Any]:
    missing = _missing(measured, "genconfig_auto", "processed")
    if missing:
        return _row("runtime_defaults", "could-not-run", missing,
                    recommendation=recommendation("runtime_defaults", spec))
    auto, fixed = measured["genconfig_auto"], measured["processed"]
    before, after = auto.cell("before"), fixed.cell("after")
    differs = auto.sampling["changed_by_defaults"]
    details = {"differs": differs, "model_defaults": auto.sampling["model_defaults"],
               "requested": auto.sampling["requested"], "effective": auto.sampling["effective"]}
    rec = recommendation("runtime_defaults", spec)
    if not differs:
        return _row("runtime_defaults", "not-applicable",
                    "generation_config='auto' changes none of the sampling parameters you "
                    "leave unset (the model's generation_config.json sets "
                    + (", ".join(f"{k}={_num(v)}" for k, v in auto.sampling["model_defaults"]
                                 .items()) or "no sampling defaults")
                    + "); effective = requested", before=before, after=after,
                    details=details, recommendation=rec)
    listed = ", ".join(f"{k} {_num(v['requested'])} → {_num(v['effective'])}"
                       for k, v in differs.items())
    gap_words = (f"the gap it causes: {_gap(before)}; with every field explicit "
                 f"{_gap(after)}" if matters(before, after) else
                 f"the gap barely changes ({_gap(before)} vs {_gap(after)} with every field "
                 "explicit), but the engine samples with parameters you did not ask for")
    return _row("runtime_defaults", "needs-fix",
                f"generation_config='auto' (vLLM's default) applied the model's "
                f"generation_config.json to fields you left unset: {listed} (requested → "
                f"effective); {gap_words}", before=before, after=after, details=details,
                recommendation=rec)


def _replay_cells(rep: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(without reset, with reset) cells from a between-batches replay's measured updates."""
    ups = [u for u in rep.get("updates", []) if u["prefix_cache"].get("measured")]
    if not ups:
        return None
    cells = []
    for side, label in (("without_reset", "update without reset_prefix_cache()"),
                        ("with_reset", "update + reset_prefix_cache()")):
        ms = [u["prefix_cache"][side]["metrics"] for u in ups]

        def vals(key: str, ms: list[dict[str, Any]] = ms) -> list[float]:
            return [float(m[key]) for m in ms if isinstance(m.get(key), int | float)]

        cell: dict[str, Any] = {"role": "before" if side == "without_reset" else "after",
                                "variant": f"replay_{side}", "label": label}
        if vals("abs_diff_mean"):
            cell["abs_diff_mean"] = sum(vals("abs_diff_mean")) / len(vals("abs_diff_mean"))
        if vals("kl_k3"):
            cell["kl_k3"] = sum(vals("kl_k3")) / len(vals("kl_k3"))
        if vals("abs_diff_max"):
            cell["abs_diff_max"] = max(vals("abs_diff_max"))
        if vals("n_tokens"):
            cell["n_tokens"] = int(sum(vals("n_tokens")))
        cells.append(cell)
    return cells[0], cells[1]


def _row_weight_updates(spec: ChecklistSpec, replays: Mapping[str, Any]) -> dict[str, Any]:
    rec = recommendation("weight_updates", spec)
    if not spec.include_replay:
        return _row("weight_updates", "not-applicable",
                    "skipped: include_replay is off, so no weight update was replayed",
                    recommendation=rec)
    rep = replays.get("between_batches", {})
    if rep.get("status") != "measured":
        return _row("weight_updates", "could-not-run",
                    f"the weight-update replay could not run: {rep.get('error', 'not run')}",
                    recommendation=rec)
    cells = _replay_cells(rep)
    before, after = cells if cells else (None, None)
    fl = rep["flags_summary"]
    inflight = replays.get("in_flight")
    others: list[dict[str, Any]] = []
    notes: list[str] = []
    in_flight_matters = False
    if inflight is None:
        notes.append("in-flight update not replayed (include_in_flight is off)")
    elif inflight.get("status") == "measured" and inflight["updates"]:
        u = inflight["updates"][0]
        cell = {"role": "in flight", "variant": "replay_in_flight",
                "label": "update in flight (paused with mode='keep'), tokens after the update",
                "verdict": u["verdict"]}
        cell.update({k: u["metrics"].get(k) for k in CELL_KEYS if k in u["metrics"]})
        others.append(cell)
        in_flight_matters = after is not None and matters(cell, after)
        notes.append(f"in flight: the tokens sampled after the update, whose KV up to the "
                     f"update was computed with the old weights: {_gap(cell)}"
                     + (f" vs {_gap(after)} between batches with the reset"
                        if after else ""))
    else:
        notes.append("in-flight update: " + str(inflight.get("reason") or inflight.get("error")))
    details = {"flags_summary": fl, "prefix_cache": rep["prefix_cache_summary"],
               "in_flight": None if inflight is None else {
                   k: inflight.get(k) for k in ("status", "reason", "error")},
               "notes": notes}
    if inflight and inflight.get("status") == "measured" and inflight["updates"]:
        details["in_flight"]["info"] = inflight["updates"][0]["in_flight"]
    bad = {k: v for k, v in fl.items() if v and k in ("stale_weights", "partial_update")}
    engine = rep.get("engine") or {}
    pc = rep["prefix_cache_summary"]
    if bad:
        reasons = []
        for u in rep["updates"]:
            reasons += [f"update {u['step']}: {f['reason']}" for name, f in u["flags"].items()
                        if f["fired"] and name in bad]
        status: Status = "needs-fix"
        reason = ("the engine did not serve the new weights even with "
                  "reset_prefix_cache(): " + "; ".join(reasons))
    elif not engine.get("enable_prefix_caching", True):
        status = "not-applicable"
        reason = ("prefix caching is off (enable_prefix_caching=False): no KV of old weights "
                  "can be reused, so the reset changes nothing")
    elif before and after and pc.get("updates_where_outputs_differ") and matters(before, after):
        status = "needs-fix"
        reason = (f"without reset_prefix_cache() the engine reused KV computed with the "
                  f"previous weights after {pc['updates_where_outputs_differ']} of "
                  f"{pc['updates_measured']} updates: {_gap(before)} against the new weights; "
                  f"with the reset {_gap(after)}")
    elif in_flight_matters:
        status = "needs-fix"
        reason = "between batches the update is served correctly, but in flight it is not"
    else:
        status = "pass"
        reason = ("every update was served with the new weights; " + str(pc.get("summary")
                  or "reset_prefix_cache() was not measured"))
    if not bad:
        notes.insert(0, f"no stale_weights or partial_update flag after any of the "
                        f"{len(rep['updates'])} updates")
    if notes:
        reason += ". " + "; ".join(notes)
    return _row("weight_updates", status, reason, before=before, after=after, others=others,
                details=details, recommendation=rec)


def _row_fp32_head(spec: ChecklistSpec, measured: Mapping[str, Measured]) -> dict[str, Any]:
    rec = recommendation("fp32_head", spec)
    missing = _missing(measured, "processed", "all_fixes")
    if missing:
        return _row("fp32_head", "could-not-run", missing, recommendation=rec)
    model_head, both = measured["processed"], measured["all_fixes"]
    one = measured.get("fp32_trainer_only")
    before = model_head.cell("before")
    before["label"] = f"{model_head.engine.get('head_dtype')} lm_head on both sides"
    after = both.cell("after")
    after["label"] = "fp32 lm_head on both sides"
    others = []
    notes = []
    if one is not None and one.ok:
        cell = one.cell("one side only")
        others.append(cell)
        worse = matters(cell, before)
        notes.append(f"fp32 on the trainer only: {_gap(cell)} — "
                     + ("worse than the model dtype on both sides: never change one side alone"
                        if worse else "no better than the model dtype on both sides"))
    elif one is not None:
        notes.append(f"fp32 on the trainer only could not run: {one.error}")
    details = {"engine_head_dtype": {"before": model_head.engine.get("head_dtype"),
                                     "after": both.engine.get("head_dtype")},
               "notes": notes}
    if both.engine.get("head_dtype") != "float32":
        return _row("fp32_head", "could-not-run",
                    f"vLLM ran the lm_head in {both.engine.get('head_dtype')} despite "
                    "hf_overrides={'head_dtype': 'float32'} (this platform does not support "
                    "it)", before=before, others=others, details=details, recommendation=rec)
    if model_head.engine.get("dtype") == "float32":
        return _row("fp32_head", "not-applicable",
                    "the model runs in float32: the lm_head is already fp32 on both sides",
                    before=before, after=after, others=others, details=details,
                    recommendation=rec)
    if matters(before, after):
        status: Status = "needs-fix"
        reason = (f"the lm_head in {model_head.engine.get('head_dtype')} rounds the logits on "
                  f"each side differently: {_gap(before)}; fp32 on both sides {_gap(after)}")
    else:
        status = "pass"
        reason = (f"an fp32 lm_head on both sides shrinks the gap by less than a third here "
                  f"({_gap(before)} vs {_gap(after)}): not needed for this setup")
    if notes:
        reason += ". " + "; ".join(notes)
    return _row("fp32_head", status, reason, before=before, after=after, others=others,
                details=details, recommendation=rec)


_RANK = ("pass", "warn", "fail")


def _worst(verdicts: Sequence[str | None]) -> str | None:
    known = [v for v in verdicts if v in _RANK]
    return max(known, key=_RANK.index) if known else None


def _row_all_fixes(spec: ChecklistSpec, measured: Mapping[str, Measured],
                   replays: Mapping[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    rec = recommendation("all_fixes", spec)
    if not spec.full:
        return _row("all_fixes", "not-applicable",
                    "measured only when all four checks run (this run: "
                    + ", ".join(spec.checks) + ")", recommendation=rec)
    missing = _missing(measured, "v1_defaults", "all_fixes")
    if missing:
        return _row("all_fixes", "could-not-run", missing, recommendation=rec)
    v1, fixed = measured["v1_defaults"], measured["all_fixes"]
    before, after = v1.cell("before"), fixed.cell("after")
    reasons = [f"comparison: {r}" for r in fixed.reasons]
    verdicts: list[str | None] = [fixed.verdict]
    rep = replays.get("between_batches")
    others = []
    if rep and rep.get("status") == "measured":
        for u in rep["updates"]:
            verdicts.append(u["verdict"])
            reasons += [f"after update {u['step']}: {r}" for r in u["reasons"]]
            fired = [name for name, f in u["flags"].items() if f["fired"]]
            if fired:
                verdicts.append("fail")
                reasons.append(f"after update {u['step']}: flags {', '.join(fired)}")
        cells = _replay_cells(rep)
        if cells:
            others.append(cells[1] | {"role": "after updates"})
    final = _worst(verdicts) or "fail"
    needs = [r["title"] for r in rows if r["status"] == "needs-fix"]
    unknown = [r["title"] for r in rows if r["status"] == "could-not-run"]
    words = (f"V1 defaults: {_gap(before)} (verdict {v1.verdict}); all fixes: {_gap(after)} "
             f"→ verdict {final} against the project's thresholds")
    if needs:
        words += f". Fixes this setup needs: {', '.join(needs)}"
    if unknown:
        words += f". Not measured: {', '.join(unknown)}"
    status: Status = "pass" if final == "pass" else "needs-fix"
    return _row("all_fixes", status, words, before=before, after=after, others=others,
                details={"verdict": final, "reasons": reasons}, recommendation=rec)


def _overall_verdict(rows: Sequence[dict[str, Any]], all_fixes: dict[str, Any] | None) -> str:
    """The job's verdict: 'all fixes together' against the thresholds when measured, else
    the worst verdict of the rows' 'after' numbers (nothing measured: fail)."""
    if all_fixes and all_fixes["status"] in ("pass", "needs-fix"):
        return str(all_fixes["details"]["verdict"])
    return _worst([r["after"].get("verdict") for r in rows if r.get("after")]) or "fail"


# --- recommendations -----------------------------------------------------------------------


def _py(v: Any) -> str:
    return repr(float(v)) if isinstance(v, float) else repr(v)


def _sampling_params_code(spec: ChecklistSpec) -> str:
    req = explicit(spec.sampling).requested()
    args = ", ".join(f"{k}={_py(req[k])}" for k in NEUTRAL_SAMPLING)
    return f"SamplingParams({args}, logprobs=0)"


def _trainer_processing_code(spec: ChecklistSpec) -> str:
    req = explicit(spec.sampling).requested()
    t, top_p, top_k, min_p = (float(req["temperature"]), float(req["top_p"]),
                              int(req["top_k"]), float(req["min_p"]))
    lines = ["# vLLM's order (v1/sample/sampler.py): penalties, temperature, min-p, top-k, "
             "top-p, renormalise",
             "logits = logits.float()"]
    if req["repetition_penalty"] != 1.0 or req["presence_penalty"] != 0.0 \
            or req["frequency_penalty"] != 0.0:
        lines.append("logits = apply_penalties(logits, ...)  # repetition, frequency, presence "
                     "as vLLM")
    if t < 1e-5:
        lines.append("logprobs = logits.log_softmax(-1)  # greedy: nothing else applies")
        return "\n".join(lines)
    if t != 1.0:
        lines.append(f"logits = logits / {_py(t)}")
    if min_p > 0:
        lines += ["probs = logits.softmax(-1)",
                  f"logits = logits.masked_fill(probs < {_py(min_p)} * probs.amax(-1, "
                  "keepdim=True), float('-inf'))"]
    if top_k > 0:
        lines += [f"kth = logits.topk({top_k}, dim=-1).values[..., -1:]",
                  "logits = logits.masked_fill(logits < kth, float('-inf'))"]
    if top_p < 1.0:
        lines += ["srt, idx = logits.sort(dim=-1)  # ascending",
                  f"drop = srt.softmax(-1).cumsum(-1) <= 1 - {_py(top_p)}",
                  "drop[..., -1] = False  # always keep the most likely token",
                  "logits = logits.scatter(-1, idx, srt.masked_fill(drop, float('-inf')))"]
    lines.append("logprobs = logits.log_softmax(-1)  # renormalised over the survivors")
    return "\n".join(lines)


def recommendation(check: str, spec: ChecklistSpec) -> dict[str, str]:
    """Copy-pasteable settings for one row: `vllm_llm` (offline LLM(...)), `vllm_serve`
    (the server's flags) and `trainer` (what the trainer side must do), as code."""
    model, m = spec.model, json.dumps(spec.model)
    fp32 = '{"head_dtype": "float32"}'
    if check == "processed_logprobs":
        return {
            "vllm_llm": f'llm = LLM(model={m}, logprobs_mode="processed_logprobs")',
            "vllm_serve": f"vllm serve {model} --logprobs-mode processed_logprobs",
            "trainer": _trainer_processing_code(spec),
        }
    if check == "runtime_defaults":
        return {
            "vllm_llm": (f'llm = LLM(model={m}, generation_config="vllm")\n'
                         f"# or leave nothing to the model's generation_config.json:\n"
                         f"params = {_sampling_params_code(spec)}"),
            "vllm_serve": f"vllm serve {model} --generation-config vllm",
            "trainer": ("# the trainer applies exactly the parameters the engine samples with:\n"
                        + "sampling = " + json.dumps({k: explicit(spec.sampling).requested()[k]
                                                      for k in NEUTRAL_SAMPLING})),
        }
    if check == "weight_updates":
        return {
            "vllm_llm": ("# after every weight update, before the next rollout:\n"
                         "llm.collective_rpc(...)  # your weight sync -> model.load_weights()\n"
                         "llm.reset_prefix_cache()\n"
                         "# updating in flight: pause, update, recompute the paused requests\n"
                         "# (not measured by this checklist):\n"
                         "llm.sleep(level=0, mode=\"keep\")\n"
                         "llm.reset_prefix_cache(reset_running_requests=True)\n"
                         "llm.wake_up(tags=[\"scheduling\"])"),
            "vllm_serve": (f"VLLM_SERVER_DEV_MODE=1 vllm serve {model}\n"
                           "# after every weight update:\n"
                           "curl -X POST http://localhost:8000/reset_prefix_cache"),
            "trainer": ("# start the next rollout only after the engine acknowledged the "
                        "update\n# and its prefix cache was reset"),
        }
    if check == "fp32_head":
        return {
            "vllm_llm": f"llm = LLM(model={m}, hf_overrides={fp32})",
            "vllm_serve": f"vllm serve {model} --hf-overrides '{fp32}'",
            "trainer": ("# fp32 on BOTH sides: one side alone makes the gap no smaller\n"
                        "hidden = model.model(input_ids, attention_mask=mask).last_hidden_state\n"
                        "logits = torch.nn.functional.linear(hidden.float(), "
                        "model.lm_head.weight.float())"),
        }
    return {
        "vllm_llm": (f"llm = LLM(\n    model={m},\n    logprobs_mode=\"processed_logprobs\",\n"
                     f"    generation_config=\"vllm\",\n    hf_overrides={fp32},\n)\n"
                     f"params = {_sampling_params_code(spec)}\n"
                     "# after every weight update: llm.reset_prefix_cache()"),
        "vllm_serve": (f"vllm serve {model} --logprobs-mode processed_logprobs "
                       f"--generation-config vllm \\\n    --hf-overrides '{fp32}'"),
        "trainer": ("# fp32 lm_head, then the engine's sampling processing:\n"
                    + _trainer_processing_code(spec)),
    }


# --- Markdown ------------------------------------------------------------------------------

_STATUS_MD = {"pass": "✅ pass", "needs-fix": "⚠️ needs fix", "not-applicable": "➖ n/a",
              "could-not-run": "❌ could not run"}


def _md_cell(cell: Mapping[str, Any] | None) -> str:
    if not cell:
        return "—"
    # Escaped pipes: these cells live in a Markdown table.
    names = {"abs_diff_mean": "mean \\|d\\|", "kl_k3": "kl_k3", "abs_diff_max": "max \\|d\\|"}
    parts = [f"{names[k]} {_num(cell.get(k))}" for k in names if k in cell]
    if cell.get("nonfinite_trainer"):
        # Why a small gap can still fail: a sampled token outside the trainer's own
        # top-p/top-k support has lt = -inf (METRICS.md counts it, never averages it in).
        parts.append(f"non-finite lt {cell['nonfinite_trainer']}")
    return "<br>".join(parts) or "not measured"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(result: Mapping[str, Any]) -> str:
    """A Markdown report of a checklist result (its JSON) to paste into a pull request: the
    rows with status and measured before/after numbers, then each row's recommendation in
    code blocks. Numbers that were not measured are shown as "—", never filled in."""
    lines = [f"## vLLM V1 migration checklist — verdict: **{result.get('verdict', '?')}**", ""]
    req = result.get("sampling_requested") or {}
    meta = [f"model `{result.get('model')}`", f"vLLM {result.get('vllm_version')}"]
    if req:
        meta.append("sampling " + ", ".join(f"{k}={req[k]}" for k in
                                            ("temperature", "top_p", "top_k", "min_p")
                                            if k in req))
    lines += [" · ".join(meta), ""]
    lines += ["| check | status | before (V1 default) | after (fix) | finding |",
              "|---|---|---|---|---|"]
    for row in result.get("rows", []):
        lines.append(
            f"| {row['title']} | {_STATUS_MD.get(row['status'], row['status'])} | "
            f"{_md_cell(row.get('before'))} | {_md_cell(row.get('after'))} | "
            f"{_md_escape(row.get('reason', ''))} |")
    others = [(row, c) for row in result.get("rows", []) for c in row.get("others", [])]
    if others:
        lines += ["", "Other measured variants:", ""]
        for row, c in others:
            lines.append(f"- {row['title']}, {c.get('label')}: "
                         + _md_cell(c).replace("<br>", ", "))
    lines += ["", "_mean |d| = mean \\|lt − lr\\| (nats), kl_k3 and max |d| as defined in "
              "METRICS.md; the trainer applies the sampling processing it was given._", ""]
    for row in result.get("rows", []):
        rec = row.get("recommendation") or {}
        if row["status"] not in ("needs-fix",) and row["check"] != "all_fixes":
            continue
        if not rec:
            continue
        lines += [f"### {row['title']}", ""]
        for key, title, lang in (("vllm_llm", "vLLM (offline `LLM`)", "python"),
                                 ("vllm_serve", "vLLM server", "bash"),
                                 ("trainer", "Trainer", "python")):
            if rec.get(key):
                lines += [f"{title}:", "", f"```{lang}", rec[key], "```", ""]
    if result.get("seconds") is not None:
        lines.append(f"_{result.get('engine_builds')} engine builds, "
                     f"{_num(result.get('seconds'))} s._")
    return "\n".join(lines).rstrip() + "\n"


# --- job and CLI ---------------------------------------------------------------------------


def run_checklist_job(spec: Mapping[str, Any], reporter: Reporter) -> JobOutcome:
    """Celery entry point (workers.tasks.RUNNERS["checklist"]): validate, run, package.

    step_values: only step 0, the 'all fixes together' numbers (the setup the checklist
    recommends), like a comparison's step 0. The other variants are deliberately
    misconfigured; as points of the run they would trip the project's alert rules.
    """
    parsed = parse_spec(ChecklistSpec, spec)
    result = run_checklist(parsed, reporter)
    data = result.to_dict()
    fixed = next((m for m in result.variants if m.name == "all_fixes" and m.ok), None)
    steps: dict[int, dict[str, float]] = {}
    if fixed is not None:
        steps[0] = {k: float(v) for k, v in fixed.values.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                    and math.isfinite(v)}
    fingerprint = json_safe({
        "kind": "checklist",
        "model": parsed.model,
        "model_path": result.model,
        "vllm_version": result.vllm_version,
        "sampling_requested": result.sampling_requested,
        "engine": parsed.engine.model_dump(mode="json"),
        "trainer": parsed.trainer.model_dump(mode="json"),
        "checks": list(parsed.checks),
        "variants": {m.name: {"engine": m.engine, "trainer_head_dtype": m.trainer.get(
            "head_dtype")} for m in result.variants if m.ok},
    })
    return JobOutcome(result=data, fingerprint=fingerprint, verdict=result.verdict,
                      step_values=steps)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m workers.checklist",
        description="The vLLM V1 migration checklist, measured on your model.")
    p.add_argument("--model", default=ChecklistSpec.model_fields["model"].default,
                   help="model directory or hub id")
    p.add_argument("--prompts", dest="prompts_file", metavar="FILE.jsonl",
                   help='JSONL prompt set: {"prompt": ...} or {"messages": [...]} per line')
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--dtype", default="bfloat16",
                   choices=["auto", "bfloat16", "float16", "float32"],
                   help="engine and trainer dtype")
    p.add_argument("--checks", default=",".join(CHECKS),
                   help=f"comma-separated subset of {', '.join(CHECKS)}")
    p.add_argument("--no-replay", action="store_true", help="skip the weight-update replay")
    p.add_argument("--no-in-flight", action="store_true", help="skip the in-flight replay")
    p.add_argument("--replay-updates", type=int, default=2)
    p.add_argument("--threshold", action="append", default=[], metavar="KEY=VALUE",
                   help="verdict threshold override, e.g. warn_abs_diff_mean=0.05")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the result as JSON")
    out.add_argument("--markdown", action="store_true", help="print the Markdown report")
    return p


def spec_from_args(args: argparse.Namespace) -> ChecklistSpec:
    """The ChecklistSpec the flags describe (UserError on invalid values)."""
    sampling: dict[str, Any] = {"temperature": args.temperature, "top_p": args.top_p,
                                "max_tokens": args.max_tokens, "logprobs_topk": 0}
    for key in ("top_k", "min_p", "repetition_penalty"):
        if getattr(args, key) is not None:
            sampling[key] = getattr(args, key)
    thresholds: dict[str, Any] = {}
    for item in args.threshold:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--threshold {item!r}: expected KEY=VALUE")
        thresholds[key.strip()] = value.strip()
    data: dict[str, Any] = {
        "model": args.model, "num_prompts": args.num_prompts, "sampling": sampling,
        "engine": {"dtype": args.dtype}, "trainer": {"dtype": args.dtype},
        "checks": [c.strip() for c in args.checks.split(",") if c.strip()],
        "include_replay": not args.no_replay, "include_in_flight": not args.no_in_flight,
        "replay_updates": args.replay_updates, "thresholds": thresholds,
    }
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise UserError(f"cannot read prompt file {args.prompts_file}: {exc.strerror}") \
                from None
        data["prompts"] = prompt_sets.parse_jsonl(text)
        data["prompt_set"] = args.prompts_file
    try:
        return ChecklistSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        raise UserError(validation_message(exc)) from None


def format_text(result: Mapping[str, Any]) -> str:
    """The short summary the CLI prints by default: one line per row."""
    lines = [f"verdict: {str(result['verdict']).upper()}  ({result['engine_builds']} engine "
             f"builds, {_num(result['seconds'])} s)"]
    def plain(cell: Mapping[str, Any] | None) -> str:
        return _md_cell(cell).replace("<br>", ", ").replace("\\|", "|")

    for row in result["rows"]:
        lines.append(f"  [{row['status']:>14}] {row['title']}: before "
                     f"{plain(row.get('before'))} | after {plain(row.get('after'))}")
        lines.append(f"      {row['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = spec_from_args(args)
        # vLLM logs to stdout (its handler binds the stream when vllm is first imported, in
        # here): keep stdout for the report alone, so that --json output parses.
        with contextlib.redirect_stdout(sys.stderr):
            result = run_checklist(spec, PrintReporter())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data = result.to_dict()
    if args.json:
        print(json.dumps(data, indent=1))
    elif args.markdown:
        print(data["markdown"])
    else:
        print(format_text(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
