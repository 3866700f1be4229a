"""The checklist's judgement against a server the user runs (`spec.server.url`).

A server's engine settings are fixed at its start, so only what changes the trainer or the
request is measured there (`plan.plan_server_variants`): the server as configured, with every
sampling field explicit, and re-scored with an fp32 lm_head on the trainer. A fix that is an
engine option is not run: its row says "needs-restart" with the exact flag
(`plan.needs_restart`) and shows what was measured without it. Where the server already runs
with the fix, the row says so and passes from the measurement.

Pure: no engine, no torch. The weight-update and batch-invariance rows are the in-process
ones (`rows`): their replay and certificate ran against the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from parity.reports.checklist import Cell, Replays, Row, Status
from parity.reports.determinism import DeterminismReport
from workers.checklist.measured import Measured, gap, worst
from workers.checklist.plan import RESTART_FLAGS, Served, needs_restart
from workers.checklist.recommendations import recommendation
from workers.checklist.rows import (
    all_fixes_not_measured,
    determinism_row,
    is_neutral,
    make_row,
    matters,
    not_measured,
    row_weight_updates,
    sampling_desc,
)
from workers.specs import ChecklistSpec


def _assumed(served: Served, setting: str) -> str:
    """A note when the server did not report `setting` (the plan took the spec's value)."""
    if setting not in served.assumed:
        return ""
    return (
        f" (assumed from the spec: the server does not report its {setting}; a vLLM server "
        "reports it when started with VLLM_SERVER_DEV_MODE=1)"
    )


def build_server_rows(
    spec: ChecklistSpec,
    served: Served,
    measured: Mapping[str, Measured],
    replays: Replays,
    determinism: DeterminismReport | str | None = None,
) -> list[Row]:
    """One row per selected check, 'all fixes together', and the batch-invariance row when
    a certificate ran: as `rows.build_rows`, judged against a server."""
    builders = {
        "processed_logprobs": lambda: _processed(spec, served, measured),
        "runtime_defaults": lambda: _runtime_defaults(spec, served, measured),
        "weight_updates": lambda: row_weight_updates(spec, replays),
        "fp32_head": lambda: _fp32_head(spec, served, measured),
    }
    rows = [builders[check]() for check in spec.checks]
    rows.append(_all_fixes(spec, served, measured, rows))
    if determinism is not None:
        rows.append(determinism_row(determinism, served.engine))
    return rows


def _processed(spec: ChecklistSpec, served: Served, measured: Mapping[str, Measured]) -> Row:
    rec = recommendation("processed_logprobs", spec)
    missing = not_measured(measured, "explicit")
    if missing:
        return make_row("processed_logprobs", "could-not-run", missing, recommendation=rec)
    m = measured["explicit"]
    eff = m.sampling["effective"]
    desc = sampling_desc(eff)
    details = {"sampling": eff, "trainer_processing": m.trainer.get("processing")}
    if served.logprobs == "processed":
        return make_row(
            "processed_logprobs",
            "pass",
            "the server already returns processed logprobs "
            f"({RESTART_FLAGS['vllm']['processed_logprobs']}){_assumed(served, 'logprobs_mode')}"
            f": {gap(m.cell('after'))} against a trainer that applies the same processing "
            f"({desc})",
            after=m.cell("after"),
            details=details,
            recommendation=rec,
        )
    before = m.cell("before")
    if is_neutral(eff):
        return make_row(
            "processed_logprobs",
            "not-applicable",
            f"sampling at {desc} leaves the distribution unprocessed: raw and processed "
            "logprobs are the same here",
            before=before,
            details=details,
            recommendation=rec,
        )
    if served.engine == "sglang":
        truncates = eff["top_p"] < 1.0 or eff["top_k"] > 0 or eff["min_p"] > 0
        status: Status = "needs-fix" if truncates else "pass"
        return make_row(
            "processed_logprobs",
            status,
            "SGLang returns log_softmax(logits / T) over the full vocabulary and has no "
            f"processed-logprobs mode at any setting: {gap(before)} against a trainer that "
            f"applies {desc}"
            + (
                "; the top-p/top-k/min-p truncation is not in the engine's logprobs, so the "
                "trainer must score the same way (processing='temperature')"
                if truncates
                else "; at this sampling that is the distribution it samples from"
            ),
            before=before,
            details=details,
            recommendation=rec,
        )
    return make_row(
        "processed_logprobs",
        "needs-restart",
        f"the server returns raw logprobs (vLLM's default){_assumed(served, 'logprobs_mode')}: "
        f"{gap(before)} against a trainer that applies the sampling processing ({desc}); "
        "processed logprobs " + needs_restart(served.engine, "processed_logprobs"),
        before=before,
        details=details,
        recommendation=rec,
    )


def _runtime_defaults(spec: ChecklistSpec, served: Served, measured: Mapping[str, Measured]) -> Row:
    rec = recommendation("runtime_defaults", spec)
    missing = not_measured(measured, "as_configured", "explicit")
    if missing:
        return make_row("runtime_defaults", "could-not-run", missing, recommendation=rec)
    given, fixed = measured["as_configured"], measured["explicit"]
    before, after = given.cell("before"), fixed.cell("after")
    differs = given.sampling["changed_by_defaults"]
    details = {
        "differs": differs,
        "model_defaults": given.sampling["model_defaults"],
        "requested": given.sampling["requested"],
        "effective": given.sampling["effective"],
    }
    flag = RESTART_FLAGS[served.engine]["neutral_defaults"]
    if not differs:
        why = (
            f"the server fills unset sampling fields with neutral defaults ({flag})"
            if served.neutral_defaults
            else "the server's defaults change none of the sampling parameters you leave unset"
        )
        return make_row(
            "runtime_defaults",
            "not-applicable",
            f"{why}; effective = requested",
            before=before,
            after=after,
            details=details,
            recommendation=rec,
        )
    listed = ", ".join(f"{k} {v['requested']} → {v['effective']}" for k, v in differs.items())
    gap_words = (
        f"the gap it causes: {gap(before)}; with every field explicit {gap(after)}"
        if matters(before, after)
        else f"the gap barely changes ({gap(before)} vs {gap(after)} with every field "
        "explicit), but the server samples with parameters you did not ask for"
    )
    return make_row(
        "runtime_defaults",
        "needs-fix",
        "the server applied the model's generation_config.json to fields you left unset: "
        f"{listed} (requested → effective); {gap_words}. Fix it in the request (every "
        f"field explicit, measured here) or restart the server with {flag}",
        before=before,
        after=after,
        details=details,
        recommendation=rec,
    )


def _fp32_head(spec: ChecklistSpec, served: Served, measured: Mapping[str, Measured]) -> Row:
    rec = recommendation("fp32_head", spec)
    missing = not_measured(measured, "explicit", "fp32_trainer")
    if missing:
        return make_row("fp32_head", "could-not-run", missing, recommendation=rec)
    model_head, fp32 = measured["explicit"], measured["fp32_trainer"]
    details = {
        "engine_head_dtype": {"before": served.head_dtype, "after": "float32"},
        "notes": [],
    }
    if served.dtype == "float32":
        return make_row(
            "fp32_head",
            "not-applicable",
            "the server runs the model in float32: its lm_head is already fp32",
            before=model_head.cell("before"),
            details=details,
            recommendation=rec,
        )
    if served.head_dtype == "float32":
        after = fp32.cell("after")
        after["label"] = "fp32 lm_head on both sides"
        return make_row(
            "fp32_head",
            "pass",
            f"the server already computes the lm_head in fp32 "
            f"({RESTART_FLAGS[served.engine]['fp32_head']}){_assumed(served, 'head_dtype')}; "
            f"with the trainer's in fp32 too: {gap(after)}",
            after=after,
            details=details,
            recommendation=rec,
        )
    before = model_head.cell("before")
    before["label"] = f"{served.dtype} lm_head on both sides"
    one = fp32.cell("one side only")
    worse = matters(one, before)
    return make_row(
        "fp32_head",
        "needs-restart",
        f"the server's lm_head runs in {served.dtype}{_assumed(served, 'head_dtype')}: "
        f"{gap(before)}; fp32 on the trainer only: {gap(one)} — "
        + (
            "worse: never change one side alone"
            if worse
            else "no better than the model dtype on both sides"
        )
        + ". fp32 on both sides "
        + needs_restart(served.engine, "fp32_head"),
        before=before,
        others=[one],
        details=details,
        recommendation=rec,
    )


def _all_fixes(
    spec: ChecklistSpec,
    served: Served,
    measured: Mapping[str, Measured],
    rows: Sequence[Row],
) -> Row:
    rec = recommendation("all_fixes", spec)
    if not spec.full:
        return all_fixes_not_measured(spec, rec)
    missing = not_measured(measured, "as_configured", "fp32_trainer")
    if missing:
        return make_row("all_fixes", "could-not-run", missing, recommendation=rec)
    given = measured["as_configured"]
    before = given.cell("before")
    before["label"] = "as configured: the server's settings, sampling as given"
    # The engine-side fixes this server lacks; the request-side one (every sampling field
    # explicit) is in the measured variant.
    lacking = []
    if served.engine == "vllm" and served.logprobs != "processed":
        lacking.append("processed_logprobs")
    if served.head_dtype != "float32" and served.dtype != "float32":
        lacking.append("fp32_head")
    needs = [r["title"] for r in rows if r["status"] in ("needs-fix", "needs-restart")]
    if lacking:
        return make_row(
            "all_fixes",
            "needs-restart",
            f"as configured: {gap(before)} (verdict {given.verdict}); all fixes together "
            + needs_restart(served.engine, *lacking)
            + (f". Checks that need a change: {', '.join(needs)}" if needs else ""),
            before=before,
            details={"verdict": given.verdict, "reasons": given.reasons},
            recommendation=rec,
        )
    fixed = measured["fp32_trainer"]
    after: Cell = fixed.cell("after")
    after["label"] = "the server's settings, sampling explicit, fp32 lm_head on the trainer"
    final = worst([fixed.verdict]) or "fail"
    words = (
        f"the server already runs the engine-side fixes; as configured: {gap(before)} "
        f"(verdict {given.verdict}); with every sampling field explicit and the trainer's "
        f"lm_head in fp32: {gap(after)} → verdict {final} against the project's thresholds"
    )
    if needs:
        words += f". Checks that need a change: {', '.join(needs)}"
    return make_row(
        "all_fixes",
        "pass" if final == "pass" else "needs-fix",
        words,
        before=before,
        after=after,
        details={"verdict": final, "reasons": [f"comparison: {r}" for r in fixed.reasons]},
        recommendation=rec,
    )
