"""The replay itself: start the engine on W0 (or reach the user's server, which serves W0),
measure the baseline, then for k = 1..N push W_k, sample, score at W_k and W_k-1
(workers.measure), compare checksums and decide the flags.

The engine is a `ReplayTarget`: Parity's own in-process vLLM (`engine.InProcessReplay`), a
vLLM server (`server.ServerReplay`) or an SGLang server (`sglang.SGLangReplay`); all offer the
same steps, each through its own path."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from parity.metrics import Thresholds, scalar_values
from parity.reports import Verdict
from parity.reports.replay import (
    Baseline,
    CacheControl,
    ChecksumMethod,
    ChecksumReport,
    InFlightReport,
    ReplayFingerprint,
    UpdateInfo,
)
from workers import measure
from workers.replay.batch import Batch, compare_batches
from workers.replay.checksums import Checksums, judge_checksums
from workers.replay.engine import InProcessReplay, build_engine
from workers.replay.flags import flags_for_update
from workers.replay.in_flight import generate_in_flight
from workers.replay.prefix_cache import metric_summary, prefix_cache_report, prefix_cache_summary
from workers.replay.report import ReplayResult, UpdateResult, headline
from workers.replay.server import ServerReplay
from workers.replay.sglang import SGLangReplay
from workers.replay.weights import Handle, read_checkpoint, trainer_state_load, weights_source
from workers.reporting import JobOutcome, NullReporter, Reporter, UserError, json_safe
from workers.specs import parse_spec
from workers.specs.replay import ReplaySpec

if TYPE_CHECKING:
    from parity.metrics import MetricsResult
    from workers.engines.sglang_server import SGLangServer
    from workers.engines.vllm_server import VllmServer
    from workers.trainer import Processing, TrainerModel

ServerTarget = ServerReplay | SGLangReplay
ReplayTarget = InProcessReplay | ServerTarget
_VERDICT_ORDER: tuple[Verdict, ...] = ("pass", "warn", "fail")


def run_replay_job(spec: Mapping[str, Any], reporter: Reporter) -> JobOutcome:
    """Celery entry point (the job kind's runner): validate, replay, package."""
    result = run_replay(parse_spec(ReplaySpec, spec), reporter)
    return JobOutcome(
        result=json_safe(result.to_dict()),
        fingerprint=dict(result.fingerprint),
        verdict=result.verdict,
        step_values=result.step_values(),
    )


@dataclass
class _Replay:
    """What every step of one replay shares: the spec, the engine, the trainer, the prompts."""

    spec: ReplaySpec
    target: ReplayTarget
    trainer: TrainerModel
    prompt_ids: list[list[int]]
    thresholds: Thresholds
    processing: Processing | None = None

    def sample(self) -> Batch:
        return self.target.sample(self.prompt_ids, self.spec.sampling)

    def checksums(
        self,
        state: Mapping[str, Any],
        previous_expected: Checksums | None,
        previous_engine: Checksums | None,
    ) -> tuple[ChecksumReport, Checksums | None, Checksums | None]:
        """(the judgement, the engine's checksums, `state`'s): the engine's weights read the
        way this engine allows (`ReplayTarget.checksum_method`), or why they cannot be."""
        t = self.target
        engine = t.checksums()
        if engine is None:
            report = ChecksumReport(
                n_params=0,
                matched=0,
                status=None,
                not_updated=[],
                not_updated_detail={},
                missing_in_engine=[],
                unchanged_in_engine=[],
                unchanged_in_trainer=[],
                method="not_available",
                unavailable=t.checksums_unavailable or "not available",
            )
            return report, None, None
        expected = t.expected_checksums(state, engine)
        report = judge_checksums(engine, expected, previous_expected, previous_engine)
        report["method"] = cast("ChecksumMethod", t.checksum_method)
        if t.not_comparable:
            report["not_comparable"] = dict(t.not_comparable)
        return report, engine, expected

    def score(self, batch: Batch) -> measure.Scored:
        """The trainer's lt of the batch's tokens at the weights it holds now."""
        assert self.processing is not None, "the baseline sets the processing"
        return measure.score(self.trainer, batch.rollout, self.processing)

    def metrics(self, scored: measure.Scored) -> MetricsResult:
        return measure.metrics(scored, self.thresholds)


def run_replay(spec: ReplaySpec, reporter: Reporter | None = None) -> ReplayResult:
    """Run the replay `spec` describes and return everything it measured.

    Streams one step per update (step 0 = the baseline at W0) through
    `reporter.step_values` as soon as it is measured. Raises UserError for problems the
    user can fix (missing model or checkpoint, checkpoints that do not fit the model).
    """
    from workers import prompts as prompt_sets
    from workers import rollout
    from workers import trainer as trainer_mod

    reporter = reporter or NullReporter()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    model = rollout.resolve_model(spec.model)
    if not Path(model).is_dir():
        raise UserError(f"a replay needs a local model directory (W0); {spec.model!r} is not one")
    n_updates = spec.updates
    total_steps = n_updates + 1

    server: ServerTarget | None = None
    if spec.server.url:
        # Reached first: a server that cannot take updates fails the job in a second.
        reporter.stage(f"connecting to the server at {spec.server.url}", 0.0)
        t = time.perf_counter()
        server = _open_server(spec, model)
        timings["engine_start"] = time.perf_counter() - t

    reporter.stage("loading W0 and the trainer", 0.0)
    w0 = read_checkpoint(model)
    try:
        trainer, _ = trainer_mod.get_trainer(model, spec.trainer)
        # Rendered before the engine starts, so a prompt problem fails the job in a second.
        rendered = prompt_sets.render_set(spec.prompt_items(), trainer.tokenizer)
    except BaseException:
        if server is not None:
            server.server.close()
        raise
    notes = rendered.notes()

    target: ReplayTarget
    if server is None:
        reporter.stage("starting the engine on W0", 0.02)
        t = time.perf_counter()
        target = InProcessReplay(build_engine(model, spec.engine, spec.extension), spec.load_mode)
        timings["engine_start"] = time.perf_counter() - t
    else:
        target = server
    try:
        kept, skipped_notes = prompt_sets.fitting(rendered.ids, target.max_model_len)
    except UserError:
        target.close(model)
        raise
    prompt_ids = [rendered.ids[i] for i in kept]
    notes += skipped_notes
    for note in notes:
        reporter.stage(note, 0.02)
    engine_settings = target.effective_settings()
    r = _Replay(spec, target, trainer, prompt_ids, Thresholds.from_dict(spec.thresholds))
    updates: list[UpdateResult] = []
    try:
        caps = target.capabilities()
        target.prepare(w0)
        reporter.stage("baseline at W0", 0.05)
        batch0 = r.sample()
        r.processing = trainer_mod.Processing.for_comparison(
            spec.trainer, spec.engine, batch0.rollout.effective, target.logprobs_kind
        )
        m0 = r.metrics(r.score(batch0))
        checks0, cs0, expected0 = r.checksums(w0, None, None)
        # Control: the same requests again at W0, now served from the prefix cache. Any
        # difference is what caching alone does, with no weight change involved.
        control = r.sample()
        baseline = Baseline(
            metrics=m0.values,
            verdict=_verdict(m0.verdict),
            reasons=m0.reasons,
            checksums=checks0,
            prompt_tokens=[len(p) for p in prompt_ids],
            num_cached_tokens_first_run=batch0.num_cached_tokens,
            prefix_cache_control=CacheControl(
                **compare_batches(batch0, control), num_cached_tokens=control.num_cached_tokens
            ),
            effective_sampling=batch0.rollout.effective,
        )
        reporter.step_values(0, scalar_values(m0.values))

        prev_state: Mapping[str, Any] = w0
        prev_cs, prev_expected = cs0, expected0
        states = weights_source(spec, w0, n_updates)
        for k in range(1, n_updates + 1):
            reporter.stage(f"update {k}/{n_updates}: pushing W_{k}", k / total_steps)
            wk, handle = next(states)
            main, probe, update_info, in_flight = _push_and_sample(r, wk, handle)
            checks, cs, expected = r.checksums(wk, prev_expected, prev_cs)

            reporter.stage(
                f"update {k}/{n_updates}: scoring at W_{k} and W_{k - 1}", (k + 0.5) / total_steps
            )
            u = _judge_update(
                r, k, wk, prev_state, main, probe, baseline, checks, update_info, in_flight
            )
            updates.append(u)
            reporter.step_values(k, u.step_values())
            fired = u.fired()
            reporter.stage(
                f"update {k}/{n_updates}: "
                + ("flags " + ", ".join(fired) if fired else "no flags"),
                (k + 1) / total_steps,
            )
            prev_state, prev_cs, prev_expected = wk, cs, expected
    finally:
        closing_note = target.close(model)
        if closing_note:
            notes.append(closing_note)
        # The trainer is cached for the next job: give it back its checkpoint weights.
        try:
            trainer_state_load(trainer, w0)
        except Exception:  # noqa: BLE001 - a trainer we cannot restore must not be reused
            trainer_mod.drop_trainer()

    verdicts = [baseline["verdict"]] + [u.verdict for u in updates]
    any_flag = any(u.fired() for u in updates)
    wrong_versions = _wrong_weight_versions(updates)
    notes += wrong_versions
    overall: Verdict = (
        "fail" if any_flag or wrong_versions else max(verdicts, key=_VERDICT_ORDER.index)
    )
    fingerprint = ReplayFingerprint(
        kind="replay",
        vllm_version=caps.get("vllm_version"),
        engine=engine_settings,
        sampling=batch0.rollout.effective,
        update_mode=spec.update_mode,
        pause_mode=spec.pause_mode if spec.update_mode == "in_flight" else None,
        reset_prefix_cache=spec.reset_prefix_cache,
        # A server loads through its own update path, with the extension it started with.
        load_mode=spec.load_mode if server is None else server.load_mode,
        extension=spec.extension if server is None else server.extension_name,
        source=spec.source.model_dump(mode="json"),
    )
    result = ReplayResult(
        spec=spec.model_dump(mode="json"),
        model=model,
        engine=engine_settings,
        fingerprint=fingerprint,
        capabilities=caps,
        baseline=baseline,
        updates=updates,
        prefix_cache_summary=prefix_cache_summary(baseline, updates, target.unseeded),
        verdict=overall,
        seconds=time.perf_counter() - started,
        timings=timings,
        notes=notes,
    )
    reporter.stage("replay done: " + headline(result), 1.0)
    return result


def _open_server(spec: ReplaySpec, model: str) -> ServerTarget:
    """The user's server, connected, checked and able to take updates (UserError if not)."""
    from workers import engines

    engine, _ = engines.open_engine(model, spec.engine, spec.server)
    try:
        if spec.server.engine == "sglang":
            return SERVER_REPLAYS["sglang"](cast("SGLangServer", engine))
        return SERVER_REPLAYS["vllm"](cast("VllmServer", engine))
    except BaseException:
        engines.release(engine)
        raise


# The replay target of each engine a server URL may be (tests plant faults through it).
SERVER_REPLAYS: dict[str, Any] = {"vllm": ServerReplay, "sglang": SGLangReplay}


def _wrong_weight_versions(updates: list[UpdateResult]) -> list[str]:
    """A note for every update after which the engine said it serves another weight version
    than the replay gave it (engines that label their weights: SGLang)."""
    out = []
    for u in updates:
        v = u.update.get("weight_version")
        if v is not None and not v["matches"]:
            out.append(
                f"after update {u.step} the server reported weight_version {v['reported']!r} "
                f"(/model_info) and {v['sampled']} (its /generate results), not the "
                f"{v['expected']!r} the update set: another client changed its weights, or "
                "the update did not take"
            )
    return out


def _push_and_sample(
    r: _Replay, wk: Mapping[str, Any], handle: Handle | None
) -> tuple[Batch, Batch | None, UpdateInfo, InFlightReport | None]:
    """Push W_k into the engine and sample: (the batch the update is judged on, the same
    requests the other way round for the prefix-cache measurement, what the push did, what
    happened at an in-flight update's boundary)."""
    spec = r.spec

    def push() -> UpdateInfo:
        return r.target.push(wk, handle)

    probe: Batch | None = None
    if spec.update_mode == "in_flight":
        # The spec refuses in_flight with a server: only the in-process step loop can.
        assert isinstance(r.target, InProcessReplay)
        main, in_flight, update_info = generate_in_flight(
            r.target.engine,
            r.prompt_ids,
            spec.sampling,
            push,
            pause_mode=spec.pause_mode,
            reset=spec.reset_prefix_cache,
            recompute=spec.in_flight_recompute,
        )
        if spec.measure_prefix_cache:
            probe = r.sample()  # the next batch
        return main, probe, update_info, in_flight

    update_info = push()
    reset_ok: bool | None = None
    if spec.reset_prefix_cache:
        if spec.measure_prefix_cache:
            probe = r.sample()  # no reset yet: W_k-1's prefix blocks still cached
        reset_ok = r.target.reset_prefix_cache()
        main = r.sample()
    else:
        main = r.sample()
        if spec.measure_prefix_cache:
            reset_ok = r.target.reset_prefix_cache()
            probe = r.sample()  # after a reset
    update_info["reset_prefix_cache_returned"] = reset_ok
    if isinstance(r.target, SGLangReplay):
        update_info["weight_version"] = r.target.weight_version(main)
    return main, probe, update_info, None


def _judge_update(
    r: _Replay,
    k: int,
    wk: Mapping[str, Any],
    prev_state: Mapping[str, Any],
    main: Batch,
    probe: Batch | None,
    baseline: Baseline,
    checks: ChecksumReport,
    update_info: UpdateInfo,
    in_flight: InFlightReport | None,
) -> UpdateResult:
    """Score the update's batch at W_k and at W_k-1 and decide its flags.

    In flight, only the tokens sampled after the update are judged against W_k (and W_k-1);
    the ones before it are reported against W_k-1, which produced them.
    """
    boundary = in_flight["boundary"] if in_flight is not None else None
    trainer_state_load(r.trainer, wk)
    cur_all = r.score(main)
    probe_scored = r.score(probe) if probe is not None else None
    trainer_state_load(r.trainer, prev_state)
    prev_all = r.score(main)
    trainer_state_load(r.trainer, wk)

    cur, prev = cur_all.window(keep_from=boundary), prev_all.window(keep_from=boundary)
    m_cur, m_prev = r.metrics(cur), r.metrics(prev)
    flags = flags_for_update(
        m_cur.values,
        m_prev.values,
        baseline["metrics"],
        checks,
        _separation(cur, prev),
        r.spec.flags,
    )
    m_probe = r.metrics(probe_scored) if probe_scored is not None else None
    if in_flight is not None and boundary is not None:
        before = prev_all.window(keep_until=boundary)
        in_flight["before_update_vs_previous_weights"] = metric_summary(r.metrics(before))
        in_flight["tokens_after_update"] = int(cur.seq_lens.sum())
    return UpdateResult(
        step=k,
        metrics=m_cur.values,
        metrics_vs_previous=m_prev.values,
        verdict=_verdict(m_cur.verdict),
        reasons=m_cur.reasons,
        flags=flags,
        checksums=checks,
        prefix_cache=prefix_cache_report(r.spec, main, probe, m_cur, m_probe),
        update=update_info,
        in_flight=in_flight,
    )


def _separation(a: measure.Scored, b: measure.Scored) -> float | None:
    """Mean |lt_a - lt_b| over the same tokens: how far two trainer weights are apart here."""
    import numpy as np

    if a.lt.size == 0 or a.lt.size != b.lt.size:
        return None
    d = np.abs(a.lt - b.lt)
    d = d[np.isfinite(d)]
    return float(d.mean()) if d.size else None


def _verdict(v: str) -> Verdict:
    """parity.metrics' verdict string as the report's type (it is always one of them)."""
    if v not in _VERDICT_ORDER:
        raise ValueError(f"unknown verdict {v!r}")
    return cast(Verdict, v)
