"""The checklist's judgement: from measured variants and replay summaries to one row per check
(status, before/after numbers, the reason in words) and the job's verdict.

Pure: no engine, no torch. Every number a row shows was measured; a row whose variant could
not run says "could-not-run" with that variant's reason, never an invented number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from parity.reports import Verdict
from parity.reports.checklist import (
    Cell,
    Recommendation,
    ReplayEntry,
    Replays,
    ReplaySummary,
    Row,
    RowCheck,
    Status,
)
from parity.reports.determinism import DeterminismReport
from workers.checklist.measured import Measured, as_verdict, gap, num, with_numbers, worst
from workers.checklist.plan import needs_restart
from workers.checklist.recommendations import recommendation
from workers.specs import CHECK_LABELS, NEUTRAL_SAMPLING, ChecklistSpec

ROW_TITLES: dict[RowCheck, str] = {
    **{check: title for check, (title, _) in CHECK_LABELS.items()},
    "all_fixes": "All fixes together",
    "determinism": "Batch invariance (determinism)",
}
# A fix "matters" when it removes at least a third of the gap (before > 1.5 x after) and more
# than this many nats of mean |d|: below that, two runs of the same setup differ as much.
NOISE_ABS_DIFF_MEAN = 0.002
MATTERS_RATIO = 1.5


def matters(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether a fix measurably shrinks the gap: mean |d| down by a third or more and by more
    than the noise floor, or kl_k3 halved from above its warn level."""
    b, a = before.get("abs_diff_mean"), after.get("abs_diff_mean")
    if isinstance(b, int | float) and isinstance(a, int | float):
        if b > MATTERS_RATIO * a and b - a > NOISE_ABS_DIFF_MEAN:
            return True
    kb, ka = before.get("kl_k3"), after.get("kl_k3")
    return isinstance(kb, int | float) and isinstance(ka, int | float) and kb > 2 * ka and kb > 1e-3


def sampling_desc(eff: Mapping[str, Any]) -> str:
    parts = [f"T={num(float(eff['temperature']))}"]
    if eff["top_p"] < 1.0:
        parts.append(f"top_p={num(float(eff['top_p']))}")
    if eff["top_k"] > 0:
        parts.append(f"top_k={eff['top_k']}")
    if eff["min_p"] > 0:
        parts.append(f"min_p={num(float(eff['min_p']))}")
    for k, neutral in (
        ("repetition_penalty", 1.0),
        ("presence_penalty", 0.0),
        ("frequency_penalty", 0.0),
    ):
        if eff[k] != neutral:
            parts.append(f"{k}={num(float(eff[k]))}")
    return ", ".join(parts)


def is_neutral(eff: Mapping[str, Any]) -> bool:
    return all(eff[k] == v for k, v in NEUTRAL_SAMPLING.items()) or (
        float(eff["temperature"]) < 1e-5
        and eff["repetition_penalty"] == 1.0
        and eff["presence_penalty"] == 0.0
        and eff["frequency_penalty"] == 0.0
    )


def make_row(
    check: RowCheck,
    status: Status,
    reason: str,
    *,
    before: Cell | None = None,
    after: Cell | None = None,
    others: list[Cell] | None = None,
    details: dict[str, Any] | None = None,
    recommendation: Recommendation | None = None,
) -> Row:
    return {
        "check": check,
        "title": ROW_TITLES[check],
        "status": status,
        "reason": reason,
        "before": before,
        "after": after,
        "others": others or [],
        "details": details or {},
        "recommendation": recommendation or {},
    }


def not_measured(measured: Mapping[str, Measured], *names: str) -> str | None:
    """The could-not-run reason when a variant the row needs did not run, else None."""
    for name in names:
        m = measured.get(name)
        if m is None:
            return f"variant {name!r} was not planned"
        if not m.ok:
            return f"variant '{m.label}' could not run: {m.error}"
    return None


def build_rows(
    spec: ChecklistSpec,
    measured: Mapping[str, Measured],
    replays: Replays,
    determinism: DeterminismReport | str | None = None,
) -> list[Row]:
    """One row per check (in CHECKS order, selected ones only) plus 'all fixes together',
    and the batch-invariance row when a certificate ran (`determinism`: its report, or why
    it could not run)."""
    builders: dict[str, Callable[[], Row]] = {
        "processed_logprobs": lambda: _row_processed(spec, measured),
        "runtime_defaults": lambda: _row_runtime_defaults(spec, measured),
        "weight_updates": lambda: row_weight_updates(spec, replays),
        "fp32_head": lambda: _row_fp32_head(spec, measured),
    }
    rows = [builders[check]() for check in spec.checks]
    rows.append(_row_all_fixes(spec, measured, replays, rows))
    if determinism is not None:
        rows.append(determinism_row(determinism))
    return rows


def determinism_row(report: DeterminismReport | str, server: str | None = None) -> Row:
    """The batch-invariance row from a determinism certificate (or why it could not run):
    pass when every batch shape was bit-exact against batch size 1, else needs-fix with the
    certificate's numbers. Not part of 'all fixes together': only loops that rely on batch
    invariance need it. `server`: the engine of the server it ran against, if any (its
    batch-invariant mode is a start option)."""
    rec: Recommendation = {
        "vllm_serve": "VLLM_BATCH_INVARIANT=1 vllm serve MODEL ...  # GPU kernels only",
        "trainer": "use the same batch-invariant kernels in the trainer, then re-certify "
        "(python -m workers.determinism)",
    }
    if server == "sglang":
        rec["sglang_serve"] = (
            "python -m sglang.launch_server --model-path MODEL --enable-deterministic-inference"
        )
    if isinstance(report, str):
        return make_row("determinism", "could-not-run", report, recommendation=rec)
    pairs = [
        {k: p[k] for k in ("run", "bit_equal_frac", "abs_diff_max", "diverged_seqs")}  # type: ignore[literal-required]
        for p in report["pairs"]
    ]
    details = {"verdict": report["verdict"], "reasons": report["reasons"], "pairs": pairs}
    if report["verdict"] == "pass":
        return make_row("determinism", "pass", report["reasons"][0], details=details)
    restart = ""
    if server is not None:
        restart = ". Batch-invariant kernels " + needs_restart(server, "batch_invariant")
    return make_row(
        "determinism",
        "needs-fix",
        "not batch-invariant: " + "; ".join(report["reasons"]) + restart,
        details=details,
        recommendation=rec,
    )


def _row_processed(spec: ChecklistSpec, measured: Mapping[str, Measured]) -> Row:
    rec = recommendation("processed_logprobs", spec)
    missing = not_measured(measured, "raw_logprobs", "processed")
    if missing:
        return make_row("processed_logprobs", "could-not-run", missing, recommendation=rec)
    raw, proc = measured["raw_logprobs"], measured["processed"]
    before, after = raw.cell("before"), proc.cell("after")
    eff = proc.sampling["effective"]
    desc = sampling_desc(eff)
    details = {"sampling": eff, "trainer_processing": proc.trainer.get("processing")}
    if is_neutral(eff):
        return make_row(
            "processed_logprobs",
            "not-applicable",
            f"sampling at {desc} leaves the distribution unprocessed: raw and processed "
            "logprobs are the same here",
            before=before,
            after=after,
            details=details,
            recommendation=rec,
        )
    if matters(before, after):
        status: Status = "needs-fix"
        reason = (
            f"with raw logprobs (vLLM's default) the engine's lr is not the probability of "
            f"the distribution it sampled from ({desc}): {gap(before)} against a trainer that "
            f"applies the same processing; with processed logprobs {gap(after)}"
        )
    else:
        status = "pass"
        reason = (
            f"at {desc} raw and processed logprobs give the same gap here "
            f"({gap(before)} vs {gap(after)})"
        )
    return make_row(
        "processed_logprobs",
        status,
        reason,
        before=before,
        after=after,
        details=details,
        recommendation=rec,
    )


def _row_runtime_defaults(spec: ChecklistSpec, measured: Mapping[str, Measured]) -> Row:
    rec = recommendation("runtime_defaults", spec)
    missing = not_measured(measured, "genconfig_auto", "processed")
    if missing:
        return make_row("runtime_defaults", "could-not-run", missing, recommendation=rec)
    auto, fixed = measured["genconfig_auto"], measured["processed"]
    before, after = auto.cell("before"), fixed.cell("after")
    differs = auto.sampling["changed_by_defaults"]
    model_defaults = auto.sampling["model_defaults"]
    details = {
        "differs": differs,
        "model_defaults": model_defaults,
        "requested": auto.sampling["requested"],
        "effective": auto.sampling["effective"],
    }
    if not differs:
        sets = ", ".join(f"{k}={num(v)}" for k, v in model_defaults.items())
        return make_row(
            "runtime_defaults",
            "not-applicable",
            "generation_config='auto' changes none of the sampling parameters you leave "
            f"unset (the model's generation_config.json sets {sets or 'no sampling defaults'})"
            "; effective = requested",
            before=before,
            after=after,
            details=details,
            recommendation=rec,
        )
    listed = ", ".join(
        f"{k} {num(v['requested'])} → {num(v['effective'])}" for k, v in differs.items()
    )
    if matters(before, after):
        gap_words = f"the gap it causes: {gap(before)}; with every field explicit {gap(after)}"
    else:
        gap_words = (
            f"the gap barely changes ({gap(before)} vs {gap(after)} with every field "
            "explicit), but the engine samples with parameters you did not ask for"
        )
    return make_row(
        "runtime_defaults",
        "needs-fix",
        f"generation_config='auto' (vLLM's default) applied the model's "
        f"generation_config.json to fields you left unset: {listed} (requested → effective); "
        f"{gap_words}",
        before=before,
        after=after,
        details=details,
        recommendation=rec,
    )


def _replay_cells(rep: ReplaySummary) -> tuple[Cell, Cell] | None:
    """(without reset, with reset) cells from a between-batches replay's measured updates."""
    ups = [u for u in rep["updates"] if u["prefix_cache"].get("measured")]
    if not ups:
        return None
    cells: list[Cell] = []
    for side, label in (
        ("without_reset", "update without reset_prefix_cache()"),
        ("with_reset", "update + reset_prefix_cache()"),
    ):
        ms = [u["prefix_cache"][side]["metrics"] for u in ups]

        def vals(key: str, ms: list[dict[str, Any]] = ms) -> list[float]:
            return [float(m[key]) for m in ms if isinstance(m.get(key), int | float)]

        cell: Cell = {
            "role": "before" if side == "without_reset" else "after",
            "variant": f"replay_{side}",
            "label": label,
        }
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


def _not_run(rep: ReplayEntry | None) -> str:
    """Why a replay has no numbers, for a row's reason."""
    if rep is None:
        return "not run"
    if rep["status"] == "could-not-run":
        return rep["error"]
    if rep["status"] == "not-offered":
        return rep["reason"]
    return "measured"


def row_weight_updates(spec: ChecklistSpec, replays: Replays) -> Row:
    rec = recommendation("weight_updates", spec)
    if not spec.include_replay:
        return make_row(
            "weight_updates",
            "not-applicable",
            "skipped: include_replay is off, so no weight update was replayed",
            recommendation=rec,
        )
    rep = replays.get("between_batches")
    if rep is None or rep["status"] != "measured":
        return make_row(
            "weight_updates",
            "could-not-run",
            f"the weight-update replay could not run: {_not_run(rep)}",
            recommendation=rec,
        )
    cells = _replay_cells(rep)
    before, after = cells if cells else (None, None)
    fl = rep["flags_summary"]
    inflight = replays.get("in_flight")
    others: list[Cell] = []
    notes: list[str] = []
    in_flight_matters = False
    in_flight_details: dict[str, Any] | None = None
    if inflight is None:
        notes.append("in-flight update not replayed (include_in_flight is off)")
    elif inflight["status"] == "measured" and inflight["updates"]:
        u = inflight["updates"][0]
        cell = with_numbers(
            {
                "role": "in flight",
                "variant": "replay_in_flight",
                "label": "update in flight (paused with mode='keep'), tokens after the update",
                "verdict": u["verdict"],
            },
            u["metrics"],
        )
        others.append(cell)
        in_flight_matters = after is not None and matters(cell, after)
        notes.append(
            "in flight: the tokens sampled after the update, whose KV up to the update was "
            f"computed with the old weights: {gap(cell)}"
            + (f" vs {gap(after)} between batches with the reset" if after else "")
        )
        in_flight_details = {
            "status": "measured",
            "reason": None,
            "error": None,
            "info": u["in_flight"],
        }
    else:
        why = _not_run(inflight) if inflight["status"] != "measured" else None
        notes.append(f"in-flight update: {why}")
        in_flight_details = {
            "status": inflight["status"],
            "reason": inflight.get("reason"),
            "error": inflight.get("error"),
        }
    pc = rep["prefix_cache_summary"]
    details = {
        "flags_summary": fl,
        "prefix_cache": pc,
        "in_flight": in_flight_details,
        "notes": notes,
    }
    bad = {k: v for k, v in fl.items() if v and k in ("stale_weights", "partial_update")}
    engine = rep.get("engine") or {}
    if bad:
        reasons = [
            f"update {u['step']}: {f['reason']}"
            for u in rep["updates"]
            for name, f in u["flags"].items()
            if f["fired"] and name in bad
        ]
        status: Status = "needs-fix"
        reason = "the engine did not serve the new weights even with reset_prefix_cache(): " + (
            "; ".join(reasons)
        )
    elif not engine.get("enable_prefix_caching", True):
        status = "not-applicable"
        reason = (
            "prefix caching is off (enable_prefix_caching=False): no KV of old weights can be "
            "reused, so the reset changes nothing"
        )
    elif before and after and pc.get("updates_where_outputs_differ") and matters(before, after):
        status = "needs-fix"
        reason = (
            f"without reset_prefix_cache() the engine reused KV computed with the previous "
            f"weights after {pc['updates_where_outputs_differ']} of {pc['updates_measured']} "
            f"updates: {gap(before)} against the new weights; with the reset {gap(after)}"
        )
    elif in_flight_matters:
        status = "needs-fix"
        reason = "between batches the update is served correctly, but in flight it is not"
    else:
        status = "pass"
        reason = "every update was served with the new weights; " + str(
            pc.get("summary") or "reset_prefix_cache() was not measured"
        )
    if not bad:
        notes.insert(
            0,
            f"no stale_weights or partial_update flag after any of the "
            f"{len(rep['updates'])} updates",
        )
    if notes:
        reason += ". " + "; ".join(notes)
    return make_row(
        "weight_updates",
        status,
        reason,
        before=before,
        after=after,
        others=others,
        details=details,
        recommendation=rec,
    )


def _row_fp32_head(spec: ChecklistSpec, measured: Mapping[str, Measured]) -> Row:
    rec = recommendation("fp32_head", spec)
    missing = not_measured(measured, "processed", "all_fixes")
    if missing:
        return make_row("fp32_head", "could-not-run", missing, recommendation=rec)
    model_head, both = measured["processed"], measured["all_fixes"]
    one = measured.get("fp32_trainer_only")
    before = model_head.cell("before")
    before["label"] = f"{model_head.engine.get('head_dtype')} lm_head on both sides"
    after = both.cell("after")
    after["label"] = "fp32 lm_head on both sides"
    others: list[Cell] = []
    notes: list[str] = []
    if one is not None and one.ok:
        cell = one.cell("one side only")
        others.append(cell)
        worse = matters(cell, before)
        notes.append(
            f"fp32 on the trainer only: {gap(cell)} — "
            + (
                "worse than the model dtype on both sides: never change one side alone"
                if worse
                else "no better than the model dtype on both sides"
            )
        )
    elif one is not None:
        notes.append(f"fp32 on the trainer only could not run: {one.error}")
    details = {
        "engine_head_dtype": {
            "before": model_head.engine.get("head_dtype"),
            "after": both.engine.get("head_dtype"),
        },
        "notes": notes,
    }
    if both.engine.get("head_dtype") != "float32":
        return make_row(
            "fp32_head",
            "could-not-run",
            f"vLLM ran the lm_head in {both.engine.get('head_dtype')} despite "
            "hf_overrides={'head_dtype': 'float32'} (this platform does not support it)",
            before=before,
            others=others,
            details=details,
            recommendation=rec,
        )
    if model_head.engine.get("dtype") == "float32":
        return make_row(
            "fp32_head",
            "not-applicable",
            "the model runs in float32: the lm_head is already fp32 on both sides",
            before=before,
            after=after,
            others=others,
            details=details,
            recommendation=rec,
        )
    if matters(before, after):
        status: Status = "needs-fix"
        reason = (
            f"the lm_head in {model_head.engine.get('head_dtype')} rounds the logits on each "
            f"side differently: {gap(before)}; fp32 on both sides {gap(after)}"
        )
    else:
        status = "pass"
        reason = (
            f"an fp32 lm_head on both sides shrinks the gap by less than a third here "
            f"({gap(before)} vs {gap(after)}): not needed for this setup"
        )
    if notes:
        reason += ". " + "; ".join(notes)
    return make_row(
        "fp32_head",
        status,
        reason,
        before=before,
        after=after,
        others=others,
        details=details,
        recommendation=rec,
    )


def all_fixes_not_measured(spec: ChecklistSpec, rec: Recommendation) -> Row:
    """The 'all fixes together' row of a checklist that did not run every check."""
    return make_row(
        "all_fixes",
        "not-applicable",
        "measured only when all four checks run (this run: " + ", ".join(spec.checks) + ")",
        recommendation=rec,
    )


def _row_all_fixes(
    spec: ChecklistSpec,
    measured: Mapping[str, Measured],
    replays: Replays,
    rows: Sequence[Row],
) -> Row:
    rec = recommendation("all_fixes", spec)
    if not spec.full:
        return all_fixes_not_measured(spec, rec)
    missing = not_measured(measured, "v1_defaults", "all_fixes")
    if missing:
        return make_row("all_fixes", "could-not-run", missing, recommendation=rec)
    v1, fixed = measured["v1_defaults"], measured["all_fixes"]
    before, after = v1.cell("before"), fixed.cell("after")
    reasons = [f"comparison: {r}" for r in fixed.reasons]
    verdicts: list[object] = [fixed.verdict]
    rep = replays.get("between_batches")
    others: list[Cell] = []
    if rep is not None and rep["status"] == "measured":
        for u in rep["updates"]:
            verdicts.append(u["verdict"])
            reasons += [f"after update {u['step']}: {r}" for r in u["reasons"]]
            fired = [name for name, f in u["flags"].items() if f["fired"]]
            if fired:
                verdicts.append("fail")
                reasons.append(f"after update {u['step']}: flags {', '.join(fired)}")
        cells = _replay_cells(rep)
        if cells:
            after_updates: Cell = {**cells[1], "role": "after updates"}
            others.append(after_updates)
    final = worst(verdicts) or "fail"
    needs = [r["title"] for r in rows if r["status"] == "needs-fix"]
    unknown = [r["title"] for r in rows if r["status"] == "could-not-run"]
    words = (
        f"V1 defaults: {gap(before)} (verdict {v1.verdict}); all fixes: {gap(after)} → "
        f"verdict {final} against the project's thresholds"
    )
    if needs:
        words += f". Fixes this setup needs: {', '.join(needs)}"
    if unknown:
        words += f". Not measured: {', '.join(unknown)}"
    status: Status = "pass" if final == "pass" else "needs-fix"
    return make_row(
        "all_fixes",
        status,
        words,
        before=before,
        after=after,
        others=others,
        details={"verdict": final, "reasons": reasons},
        recommendation=rec,
    )


def overall_verdict(rows: Sequence[Row]) -> Verdict:
    """The job's verdict: 'all fixes together' against the thresholds when measured, else
    the worst verdict of the rows' 'after' numbers (nothing measured: fail)."""
    all_fixes = next((r for r in rows if r["check"] == "all_fixes"), None)
    if all_fixes and all_fixes["status"] in ("pass", "needs-fix"):
        return as_verdict(all_fixes["details"]["verdict"]) or "fail"
    return worst([r["after"].get("verdict") for r in rows if r["after"]]) or "fail"
