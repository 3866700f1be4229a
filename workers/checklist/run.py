"""Running the checklist: every planned variant through the one measurement pipeline
(`workers.measure`), then the weight-update replays (`workers.replay`), then the rows.

Against a server the user runs (`spec.server.url`), the variants are the ones that change only
the trainer or the request (`plan.plan_server_variants`), all on that server; the replay and
the certificate run against it too, and `server_rows` judges the rows.

Variants run grouped by engine settings, so one warm engine serves every variant it can
(`workers.rollout.get_engine` keys on model + settings); a variant whose effective sampling
equals an earlier one's on the same engine scores that rollout instead of sampling again, and
a trainer-only variant (`rescore_of`) re-scores the rollout it names.

torch, vLLM and transformers are imported inside the functions that use them: importing this
module (and so `workers.checklist`) stays cheap for the web process and the pure tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from parity.metrics import Thresholds, scalar_values
from parity.reports.checklist import ReplayKey, Replays
from parity.reports.determinism import DeterminismReport
from workers import measure, rollout
from workers import prompts as prompt_sets
from workers.checklist.measured import Measured, as_verdict, num
from workers.checklist.plan import (
    Served,
    Variant,
    explicit,
    in_flight_offered,
    plan_server_variants,
    plan_variants,
    replay_not_offered,
    replay_plan,
    replay_spec_for,
)
from workers.checklist.report import ChecklistResult, abs_d_histogram, summarise_replay
from workers.checklist.rows import build_rows, overall_verdict
from workers.checklist.server_rows import build_server_rows
from workers.reporting import JobOutcome, NullReporter, Reporter, UserError, json_safe
from workers.specs import ChecklistSpec, DeterminismSpec, parse_spec, redact

if TYPE_CHECKING:
    from workers.engines import RolloutEngine
    from workers.rollout import Rollout


def _reraise_if_fatal(exc: BaseException) -> None:
    # Celery's soft time limit arrives as an exception inside whatever runs; it must end the
    # job, not be written into a row as "could not run". Matched by name: engine code does
    # not import Celery.
    if type(exc).__name__ in ("SoftTimeLimitExceeded", "TimeLimitExceeded"):
        raise exc


def _reason(exc: BaseException) -> str:
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:500]
    return text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}"


class Progress:
    """'variant i/N: label — stage' messages with an overall fraction."""

    def __init__(self, reporter: Reporter, total: int) -> None:
        self.reporter, self.total = reporter, max(total, 1)

    def say(self, index: int, label: str, stage: str, frac: float = 0.0) -> None:
        self.reporter.stage(
            f"variant {index + 1}/{self.total}: {label} — {stage}",
            min(1.0, (index + frac) / self.total),
        )


_ENGINE_KEYS = (
    "dtype",
    "head_dtype",
    "logprobs_mode",
    "generation_config",
    "enable_prefix_caching",
)


def run_checklist(spec: ChecklistSpec, reporter: Reporter | None = None) -> ChecklistResult:
    """Run every selected check on `spec.model` and return the rows with measured numbers.

    Raises UserError before any engine work for a missing model, a bad prompt set or bad
    thresholds, and when no variant at all could run (the reason of the first). A variant
    that fails on its own (an option this vLLM or device refuses) is recorded with its
    exact reason, and the rows that need it say "could-not-run"; no number is invented.

    As in a comparison, chats on a model without a chat template are rendered as plain text
    and prompts too long for an engine are skipped; the report's `notes` say so.
    """
    reporter = reporter or NullReporter()
    started = time.perf_counter()
    try:
        thresholds = Thresholds.from_dict(spec.thresholds)
    except ValueError as exc:
        raise UserError(f"thresholds: {exc}") from None
    model_path = rollout.resolve_model(spec.model)
    items = prompt_sets.load(spec.prompt_set, spec.prompts, spec.num_prompts)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # Rendered before any engine loads, so a prompt problem fails the job in a second.
    rendered = prompt_sets.render_set(items, tokenizer)
    for note in rendered.notes():
        reporter.stage(note)
    from workers import engines

    server: RolloutEngine | None = None
    served: Served | None = None
    if spec.server.url:
        # Reached first: a server that is down or serves another model fails the job now.
        reporter.stage(f"connecting to the server at {spec.server.url}", 0.0)
        server, _ = engines.open_engine(model_path, spec.engine, spec.server)
        served = served_by(spec, server)
    try:
        plan = plan_variants(spec) if served is None else plan_server_variants(spec, served)
        replay_steps = replay_plan(spec)
        progress = Progress(reporter, len(plan) + len(replay_steps) + spec.include_determinism)
        variants = _Variants(spec, model_path, rendered.ids, thresholds, progress, server)
        for i, v in enumerate(plan):
            variants.run(i, v)
    finally:
        if server is not None:
            # The replay and the certificate open their own connections.
            engines.release(server)
    measured = variants.measured
    builds = variants.builds

    if plan and all(not m.ok for m in measured.values()):
        # Nothing could be measured on this model at all (e.g. vLLM or transformers cannot
        # load it): that is the job's error, not five rows of the same reason.
        first = next(iter(measured.values()))
        raise UserError(
            f"no variant of the checklist could run; the first failed with: {first.error}"
        )
    replays: Replays = {}
    timings: dict[str, float] = {}
    builds += run_replays(spec, model_path, replay_steps, replays, progress, len(plan))

    certificate = None
    if spec.include_determinism:
        certificate = run_certificate(spec, model_path, progress, len(plan) + len(replay_steps))
        if not isinstance(certificate, str):
            timings["determinism.total_s"] = certificate["wall_s"]
    if served is None:
        rows = build_rows(spec, measured, replays, certificate)
    else:
        rows = build_server_rows(spec, served, measured, replays, certificate)
    overall = overall_verdict(rows)
    for m in measured.values():
        for k, s in m.seconds.items():
            timings[f"{m.name}.{k}"] = s
    for key, rep in (
        ("between_batches", replays.get("between_batches")),
        ("in_flight", replays.get("in_flight")),
    ):
        if rep is not None and rep["status"] != "not-offered":
            timings[f"replay_{key}.total_s"] = float(rep["seconds"])
    reporter.stage(f"checklist done: verdict {overall}, {builds} engine builds", 1.0)
    answered = engine_answered(server)
    return ChecklistResult(
        model=model_path,
        # The vLLM that answered: the server's own, none for SGLang.
        vllm_version=answered["version"] if answered["adapter"].startswith("vllm") else None,
        sampling_requested=spec.sampling.requested(),
        rows=rows,
        variants=list(measured.values()),
        replays=replays,
        verdict=overall,
        engine_builds=builds,
        seconds=time.perf_counter() - started,
        timings=timings,
        # The API key stays out of the stored result (pages and the Markdown show it).
        spec=redact(spec.model_dump(mode="json")),
        notes=rendered.notes() + variants.notes,
        engine=answered,
    )


def served_by(spec: ChecklistSpec, engine: RolloutEngine) -> Served:
    """What the connected server runs with, as the checklist plans with it."""
    from workers.engines import logprobs_kind

    settings = engine.settings
    if spec.server.engine == "sglang":
        info = getattr(engine, "info", None)
        neutral = getattr(info, "sampling_defaults", None) == "openai"
    else:
        neutral = settings.generation_config == "vllm"
    return Served(
        engine=spec.server.engine,
        logprobs=logprobs_kind(engine),
        neutral_defaults=neutral,
        head_dtype=settings.head_dtype,
        dtype=settings.dtype,
        assumed=frozenset(getattr(engine, "assumed", ())),
    )


def engine_answered(server: RolloutEngine | None) -> dict[str, Any]:
    """Which engine answered the checklist's variants (the in-process vLLM when `server` is
    None): adapter, label, version, url, and what the server could not report."""
    from workers.engines import ADAPTER_LABELS

    if server is None:
        import vllm

        return {"adapter": "vllm", "label": ADAPTER_LABELS["vllm"], "version": vllm.__version__}
    eff = server.effective_settings()
    return {
        "adapter": server.adapter,
        "label": ADAPTER_LABELS.get(server.adapter, server.adapter),
        "version": server.version,
        "url": eff.get("url"),
        "unknown": eff.get("unknown", []),
        "settings": eff,
    }


class _Variants:
    """Measures the planned variants in order, sharing warm engines and rollouts."""

    def __init__(
        self,
        spec: ChecklistSpec,
        model_path: str,
        prompt_ids: list[list[int]],
        thresholds: Thresholds,
        progress: Progress,
        server: RolloutEngine | None = None,
    ) -> None:
        self.spec, self.model_path, self.prompt_ids = spec, model_path, prompt_ids
        self.thresholds, self.progress = thresholds, progress
        # The user's server, when every variant samples there (connected once).
        self.server = server
        self.sampling_explicit = explicit(spec.sampling)
        self.measured: dict[str, Measured] = {}
        self.builds = 0
        self.rollouts: dict[str, tuple[Rollout, dict[str, Any]]] = {}
        # (engine settings, effective sampling) -> the variant that sampled with them.
        self.by_key: dict[tuple[str, str], str] = {}
        self.notes: list[str] = []  # what sampling had to work around, once each

    def run(self, i: int, v: Variant) -> Measured:
        """Measure variant `v` (the i-th of the plan): its numbers, or why it could not run."""
        t0 = time.perf_counter()
        m = Measured(v.name, v.label, "measured")
        try:
            ro, eng_settings = self._rollout(i, v, m)
            m.engine = dict(eng_settings)
            m.sampling = {
                "requested": ro.requested,
                "effective": ro.effective,
                "model_defaults": ro.model_defaults,
                "changed_by_defaults": {
                    k: {"requested": a, "effective": b}
                    for k, (a, b) in ro.changed_by_defaults.items()
                },
            }
            self.progress.say(i, v.label, "scoring with the trainer", 0.6)
            # The trainer applies the sampling processing it was told about (the requested
            # parameters): what an RL trainer computes its importance ratios with.
            if self.server is None:
                result = measure.measure(self.model_path, v.trainer, v.engine, ro, self.thresholds)
            else:
                from workers.engines import logprobs_kind

                result = measure.measure(
                    self.model_path,
                    v.trainer,
                    self.server.settings,
                    ro,
                    self.thresholds,
                    engine_kind=logprobs_kind(self.server),
                )
            m.seconds["score_s"] = result.scored.seconds
            m.trainer = {
                "dtype": v.trainer.dtype,
                "head_dtype": v.trainer.head_dtype,
                "processing": asdict(result.processing),
            }
            m.values, m.reasons = result.metrics.values, result.metrics.reasons
            m.verdict = as_verdict(result.metrics.verdict)
            m.histogram = abs_d_histogram(result.scored.lt, result.scored.lr)
            gap_now = num(m.values.get("abs_diff_mean"))
            self.progress.say(i, v.label, f"abs_diff_mean {gap_now}", 1.0)
        except Exception as exc:  # noqa: BLE001 - one variant's failure is that row's finding
            _reraise_if_fatal(exc)
            m.status, m.error = "could-not-run", _reason(exc)
            self.progress.say(i, v.label, f"could not run: {m.error}", 1.0)
        m.seconds["total_s"] = time.perf_counter() - t0
        self.measured[v.name] = m
        return m

    def _rollout(self, i: int, v: Variant, m: Measured) -> tuple[Rollout, dict[str, Any]]:
        """(rollout, the engine's effective settings) for `v`: sampled now, or one that an
        earlier variant sampled with the same engine and parameters."""
        if v.rescore_of is not None:
            if v.rescore_of not in self.rollouts:
                raise UserError(
                    f"needs the rollout of variant {v.rescore_of!r}, which could not run: "
                    f"{self.measured[v.rescore_of].error}"
                )
            m.engine_reused, m.rollout_of = True, v.rescore_of
            return self.rollouts[v.rescore_of]
        sampling = self.sampling_explicit if v.explicit_sampling else self.spec.sampling
        engine: RolloutEngine
        if self.server is not None:
            engine, reused = self.server, bool(self.rollouts)
            m.engine_reused = reused
            # The adapter's own merge of the request with the server's defaults.
            effective = self.server.effective_sampling(sampling)  # type: ignore[attr-defined]
        else:
            self.progress.say(i, v.label, "loading engine")
            # The engine first, on its own: its default sampling parameters decide whether
            # an earlier rollout already holds the tokens this variant would sample.
            built, reused = rollout.get_engine(self.model_path, v.engine)
            engine = built
            self.builds += 0 if reused else 1
            m.engine_reused = reused
            if not reused:
                m.seconds["engine_load_s"] = built.load_seconds
            # Same engine, same effective parameters, same seeds: the same tokens. Reuse
            # them (e.g. explicit fields on a model whose generation_config sets none).
            effective = rollout.sampling_dict(rollout.effective_sampling(sampling, built.llm))
        key = (v.engine.model_dump_json(), json.dumps(effective, sort_keys=True))
        if key in self.by_key:
            m.rollout_of = self.by_key[key]
            ro = self.rollouts[m.rollout_of][0]
        else:
            self.progress.say(i, v.label, "generating", 0.3)
            sampled = measure.sample_on(engine, reused, self.prompt_ids, sampling)
            ro = sampled.rollout
            m.seconds["generate_s"] = ro.seconds
            for note in sampled.notes:
                if note not in self.notes:
                    self.notes.append(note)
                    self.progress.say(i, v.label, note, 0.3)
            self.by_key[key] = v.name
        self.rollouts[v.name] = (ro, _variant_engine(engine))
        return self.rollouts[v.name]


def _variant_engine(engine: RolloutEngine) -> dict[str, Any]:
    """The engine settings a variant ran with: as the engine reports them, else (a server
    that does not report one) as the adapter took them, and the kind of its logprobs."""
    from workers.engines import logprobs_kind

    reported = engine.effective_settings()
    out = {k: reported.get(k, getattr(engine.settings, k)) for k in _ENGINE_KEYS}
    if "logprobs_mode" not in reported:
        out["logprobs_mode"] = logprobs_kind(engine)
    out["adapter"] = engine.adapter
    return out


class _ReplayReporter:
    """Forwards a replay's stages as the checklist's 'variant i/N' progress."""

    def __init__(self, progress: Progress, index: int, label: str) -> None:
        self.progress, self.index, self.label = progress, index, label

    def stage(self, message: str, progress: float | None = None) -> None:
        self.progress.say(self.index, self.label, message, progress or 0.0)

    def step_values(self, step: int, values: Mapping[str, float]) -> None:
        # Replay steps are the checklist's internals, not points of the job's run.
        pass


def run_replays(
    spec: ChecklistSpec,
    model_path: str,
    steps: Sequence[tuple[ReplayKey, str]],
    replays: Replays,
    progress: Progress,
    offset: int,
) -> int:
    """Run the planned replays into `replays` (key -> summary); returns the engines built."""
    builds = 0
    for j, (key, label) in enumerate(steps):
        index = offset + j
        not_offered = replay_not_offered(spec, key)
        if not_offered is not None:
            replays[key] = {"status": "not-offered", "reason": not_offered}
            progress.say(index, label, f"skipped: {not_offered}", 1.0)
            continue
        if key == "in_flight":
            between = replays.get("between_batches")
            caps = None
            if between is not None and between["status"] == "measured":
                caps = between["capabilities"]
            offered, why = in_flight_offered(caps)
            if offered is False:
                replays[key] = {"status": "not-offered", "reason": why}
                progress.say(index, label, f"skipped: {why}", 1.0)
                continue
        from workers.replay import run_replay

        progress.say(index, label, "starting the replay engine")
        t0 = time.perf_counter()
        try:
            result = run_replay(
                replay_spec_for(spec, model_path, key), _ReplayReporter(progress, index, label)
            )
        except Exception as exc:  # noqa: BLE001 - recorded as the row's reason
            _reraise_if_fatal(exc)
            error = _reason(exc)
            replays[key] = {
                "status": "could-not-run",
                "error": error,
                "seconds": time.perf_counter() - t0,
            }
            progress.say(index, label, f"could not run: {error}", 1.0)
            continue
        # Every replay builds its own engine (workers.replay.build_engine), except on a server.
        builds += 0 if spec.server.url else 1
        replays[key] = summarise_replay(result)
    return builds


def run_certificate(
    spec: ChecklistSpec, model_path: str, progress: Progress, index: int
) -> DeterminismReport | str:
    """The batch-invariance row's measurement, kept cheap: a small determinism certificate
    (4 prompts, 8 tokens, groups of 2 when sampling) on the user's engine settings, without a
    second engine build or the trainer; its report, or why it could not run."""
    from workers.determinism import run_determinism

    label = "batch invariance (determinism certificate)"
    greedy = spec.sampling.temperature == 0.0
    sampling = explicit(spec.sampling).model_copy(
        update={"max_tokens": 8, "n": 1 if greedy else 2, "logprobs_topk": 0}
    )
    certificate = DeterminismSpec(
        model=model_path,
        prompt_set=spec.prompt_set,
        prompts=spec.prompts,
        num_prompts=min(4, spec.num_prompts or 4),
        server=spec.server,
        engine=spec.engine,
        trainer=spec.trainer,
        sampling=sampling,
        other_max_num_seqs=None,
        score_with_trainer=False,
    )
    try:
        return run_determinism(certificate, _ReplayReporter(progress, index, label))
    except Exception as exc:  # noqa: BLE001 - recorded as the row's reason
        _reraise_if_fatal(exc)
        progress.say(index, label, f"could not run: {_reason(exc)}", 1.0)
        return _reason(exc)


def run_checklist_job(spec: Mapping[str, Any], reporter: Reporter) -> JobOutcome:
    """Celery entry point (workers.specs.kinds, "checklist"): validate, run, package.

    step_values: only step 0, the 'all fixes together' numbers (the setup the checklist
    recommends), like a comparison's step 0. The other variants are deliberately
    misconfigured; as points of the run they would trip the project's alert rules.
    """
    parsed = parse_spec(ChecklistSpec, spec)
    result = run_checklist(parsed, reporter)
    data = result.to_dict()
    fixed = next((m for m in result.variants if m.name == "all_fixes" and m.ok), None)
    steps = {0: scalar_values(fixed.values)} if fixed is not None else {}
    fingerprint = json_safe(
        {
            "kind": "checklist",
            "model": parsed.model,
            "model_path": result.model,
            "vllm_version": result.vllm_version,
            "engine_answered": {k: v for k, v in result.engine.items() if k != "settings"},
            "sampling_requested": result.sampling_requested,
            "engine": parsed.engine.model_dump(mode="json"),
            "trainer": parsed.trainer.model_dump(mode="json"),
            "checks": list(parsed.checks),
            "variants": {
                m.name: {"engine": m.engine, "trainer_head_dtype": m.trainer.get("head_dtype")}
                for m in result.variants
                if m.ok
            },
        }
    )
    return JobOutcome(
        result=dict(data), fingerprint=fingerprint, verdict=result.verdict, step_values=steps
    )
