"""The checklist's judgement from hand-built measurements and replay summaries: each row's
status and reason, the job's verdict, and the report contract. No engine, no torch."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from parity.reports.checklist import ChecklistReport, ReplaySummary, Row, VariantReport
from workers.checklist import ChecklistResult, Measured, build_rows, summarise_replay
from workers.checklist.rows import overall_verdict
from workers.specs import ChecklistSpec

pytestmark = pytest.mark.unit

SAMPLED = {
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}


def measured(
    name: str,
    adm: float,
    *,
    verdict: str = "pass",
    dtype: str = "bfloat16",
    head: str = "bfloat16",
    effective: dict[str, Any] | None = None,
    model_defaults: dict[str, Any] | None = None,
    reasons: list[str] | None = None,
    nonfinite: int = 0,
) -> Measured:
    eff = effective or SAMPLED
    return Measured(
        name,
        f"{name} label",
        "measured",
        engine={"dtype": dtype, "head_dtype": head},
        trainer={"dtype": dtype, "head_dtype": "float32", "processing": {"kind": "processed"}},
        sampling={
            "requested": eff,
            "effective": eff,
            "model_defaults": model_defaults or {},
            "changed_by_defaults": {},
        },
        values={
            "abs_diff_mean": adm,
            "kl_k3": adm / 10,
            "abs_diff_max": adm * 5,
            "n_tokens": 100,
            "nonfinite_trainer": nonfinite,
            "bias": -adm,
        },
        verdict=verdict,
        reasons=reasons or [],
    )


def full_measurements(**over: Measured) -> dict[str, Measured]:
    m = {
        "v1_defaults": measured("v1_defaults", 0.3, verdict="fail"),
        "raw_logprobs": measured("raw_logprobs", 0.3, verdict="fail"),
        "genconfig_auto": measured("genconfig_auto", 0.02),
        "processed": measured("processed", 0.02),
        "fp32_trainer_only": measured("fp32_trainer_only", 0.02),
        "all_fixes": measured("all_fixes", 0.01, head="float32"),
    }
    return m | over


def update(
    step: int,
    *,
    without: float = 0.01,
    with_: float = 0.01,
    verdict: str = "pass",
    stale: bool = False,
    measured: bool = True,
) -> dict[str, Any]:
    def side(adm: float) -> dict[str, Any]:
        return {
            "metrics": {
                "abs_diff_mean": adm,
                "kl_k3": adm / 10,
                "abs_diff_max": adm * 4,
                "n_tokens": 40,
            },
            "num_cached_tokens": [128],
        }

    return {
        "step": step,
        "metrics": {
            "abs_diff_mean": with_,
            "kl_k3": with_ / 10,
            "abs_diff_max": with_ * 4,
            "n_tokens": 40,
            "nonfinite_trainer": 0,
        },
        "metrics_vs_previous": {},
        "verdict": verdict,
        "reasons": [f"reason {step}"] if verdict != "pass" else [],
        "flags": {
            "stale_weights": {"fired": stale, "reason": "engine serves W_0"},
            "partial_update": {"fired": False, "reason": ""},
        },
        "checksums": {},
        "prefix_cache": (
            {"measured": True, "without_reset": side(without), "with_reset": side(with_)}
            if measured
            else {"measured": False}
        ),
        "in_flight": None,
    }


def replay(
    updates: list[dict[str, Any]], *, differ: int = 0, prefix_caching: bool = True
) -> dict[str, Any]:
    flags: dict[str, list[int]] = {"stale_weights": [], "partial_update": [], "mismatch_spike": []}
    for u in updates:
        for name, f in u["flags"].items():
            if f["fired"]:
                flags[name].append(u["step"])
    return {
        "status": "measured",
        "summary": None,
        "verdict": "pass",
        "flags_summary": flags,
        "prefix_cache_summary": {
            "measured": True,
            "updates_measured": len(updates),
            "updates_where_outputs_differ": differ,
            "summary": "reset_prefix_cache() changed nothing measurable",
        },
        "baseline": {},
        "updates": updates,
        "capabilities": {},
        "engine": {"enable_prefix_caching": prefix_caching},
        "update_mode": "between_batches",
        "seconds": 2.0,
    }


def rows_of(
    measurements: dict[str, Measured], replays: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Row]:
    return {r["check"]: r for r in build_rows(ChecklistSpec(**spec), measurements, replays or {})}


# --- processed logprobs --------------------------------------------------------------------


def test_processed_logprobs_needs_fix_when_raw_logprobs_widen_the_gap() -> None:
    row = rows_of(full_measurements(), include_replay=False)["processed_logprobs"]
    assert row["status"] == "needs-fix"
    assert "T=0.7, top_p=0.9" in row["reason"]
    assert row["before"]["variant"] == "raw_logprobs" and row["after"]["variant"] == "processed"
    assert row["before"]["abs_diff_mean"] == 0.3 and row["after"]["abs_diff_mean"] == 0.02


def test_processed_logprobs_passes_when_both_give_the_same_gap() -> None:
    m = full_measurements(raw_logprobs=measured("raw_logprobs", 0.021))
    row = rows_of(m, include_replay=False)["processed_logprobs"]
    assert row["status"] == "pass"
    assert "give the same gap" in row["reason"]


def test_processed_logprobs_not_applicable_for_unprocessed_sampling() -> None:
    neutral = SAMPLED | {"temperature": 1.0, "top_p": 1.0}
    m = full_measurements(processed=measured("processed", 0.02, effective=neutral))
    row = rows_of(m, include_replay=False)["processed_logprobs"]
    assert row["status"] == "not-applicable"
    assert row["before"] is not None  # measured numbers are still shown


# --- runtime defaults ----------------------------------------------------------------------


def test_runtime_defaults_not_applicable_names_what_the_model_file_sets() -> None:
    m = full_measurements(
        genconfig_auto=measured("genconfig_auto", 0.02, model_defaults={"top_k": 20})
    )
    row = rows_of(m, include_replay=False)["runtime_defaults"]
    assert row["status"] == "not-applicable"
    assert "sets top_k=20" in row["reason"]


# --- fp32 lm_head --------------------------------------------------------------------------


def test_fp32_head_needs_fix_and_warns_about_one_side_only() -> None:
    m = full_measurements(
        processed=measured("processed", 0.05),
        fp32_trainer_only=measured("fp32_trainer_only", 0.2),
        all_fixes=measured("all_fixes", 0.01, head="float32"),
    )
    row = rows_of(m, include_replay=False)["fp32_head"]
    assert row["status"] == "needs-fix"
    assert [c["variant"] for c in (row["before"], row["after"], *row["others"])] == [
        "processed",
        "all_fixes",
        "fp32_trainer_only",
    ]
    assert row["before"]["label"] == "bfloat16 lm_head on both sides"
    assert "never change one side alone" in row["reason"]


def test_fp32_head_not_applicable_for_a_float32_model() -> None:
    m = full_measurements(processed=measured("processed", 0.05, dtype="float32"))
    row = rows_of(m, include_replay=False)["fp32_head"]
    assert row["status"] == "not-applicable"


# --- weight updates ------------------------------------------------------------------------


def test_weight_updates_needs_fix_when_the_reset_removes_a_stale_cache_gap() -> None:
    rep = replay([update(1, without=0.2, with_=0.01), update(2, without=0.3, with_=0.01)], differ=2)
    row = rows_of(full_measurements(), {"between_batches": rep}, include_in_flight=False)[
        "weight_updates"
    ]
    assert row["status"] == "needs-fix"
    assert "after 2 of 2 updates" in row["reason"]
    assert row["before"]["abs_diff_mean"] == pytest.approx(0.25)  # mean over the updates
    assert row["before"]["abs_diff_max"] == pytest.approx(1.2)  # max over the updates
    assert row["before"]["n_tokens"] == 80 and row["after"]["abs_diff_mean"] == 0.01
    assert "include_in_flight is off" in row["reason"]


def test_weight_updates_needs_fix_when_a_stale_weights_flag_fired() -> None:
    rep = replay([update(1), update(2, stale=True)])
    row = rows_of(full_measurements(), {"between_batches": rep}, include_in_flight=False)[
        "weight_updates"
    ]
    assert row["status"] == "needs-fix"
    assert "update 2: engine serves W_0" in row["reason"]


def test_weight_updates_pass_with_the_replay_summary_words() -> None:
    rep = replay([update(1), update(2)])
    row = rows_of(full_measurements(), {"between_batches": rep}, include_in_flight=False)[
        "weight_updates"
    ]
    assert row["status"] == "pass"
    assert "changed nothing measurable" in row["reason"]
    assert "no stale_weights or partial_update flag after any of the 2 updates" in row["reason"]


def test_weight_updates_not_applicable_without_prefix_caching() -> None:
    rep = replay([update(1, without=0.2)], differ=1, prefix_caching=False)
    row = rows_of(full_measurements(), {"between_batches": rep}, include_in_flight=False)[
        "weight_updates"
    ]
    assert row["status"] == "not-applicable"


def test_weight_updates_in_flight_gap_is_its_own_cell_and_can_need_a_fix() -> None:
    in_flight = replay([update(1, with_=0.2, measured=False)])
    in_flight["updates"][0]["in_flight"] = {"boundary": [4, 5]}
    rep = replay([update(1), update(2)])
    row = rows_of(full_measurements(), {"between_batches": rep, "in_flight": in_flight})[
        "weight_updates"
    ]
    assert row["status"] == "needs-fix"
    assert "in flight it is not" in row["reason"]
    assert row["others"][0]["variant"] == "replay_in_flight"
    assert row["others"][0]["abs_diff_mean"] == 0.2
    assert row["details"]["in_flight"]["info"] == {"boundary": [4, 5]}


def test_weight_updates_could_not_run_says_why_without_numbers() -> None:
    failed = {"status": "could-not-run", "error": "RuntimeError: no GPU", "seconds": 1.0}
    row = rows_of(full_measurements(), {"between_batches": failed})["weight_updates"]
    assert row["status"] == "could-not-run"
    assert row["reason"].endswith("RuntimeError: no GPU")
    assert row["before"] is None and row["after"] is None


# --- all fixes and the verdict -------------------------------------------------------------


def test_all_fixes_verdict_is_the_worst_of_the_comparison_and_the_updates() -> None:
    rep = replay([update(1, verdict="warn"), update(2)])
    rows = build_rows(
        ChecklistSpec(include_in_flight=False), full_measurements(), {"between_batches": rep}
    )
    row = rows[-1]
    assert row["check"] == "all_fixes" and row["status"] == "needs-fix"
    assert row["details"]["verdict"] == "warn"
    assert "after update 1: reason 1" in row["details"]["reasons"]
    assert row["others"][0]["role"] == "after updates"
    assert "Fixes this setup needs: Processed logprobs" in row["reason"]
    assert overall_verdict(rows) == "warn"


def test_a_fired_flag_fails_all_fixes() -> None:
    rep = replay([update(1, stale=True)])
    row = rows_of(full_measurements(), {"between_batches": rep}, include_in_flight=False)[
        "all_fixes"
    ]
    assert row["details"]["verdict"] == "fail"
    assert "after update 1: flags stale_weights" in row["details"]["reasons"]


def test_all_fixes_passes_when_everything_passes() -> None:
    rows = build_rows(ChecklistSpec(include_replay=False), full_measurements(), {})
    assert rows[-1]["status"] == "pass" and overall_verdict(rows) == "pass"


def test_without_all_fixes_the_verdict_is_the_worst_after_number() -> None:
    m = {
        "genconfig_auto": measured("genconfig_auto", 0.02),
        "processed": measured("processed", 0.02, verdict="warn"),
    }
    rows = build_rows(ChecklistSpec(checks=["runtime_defaults"]), m, {})
    assert rows[-1]["status"] == "not-applicable"
    assert overall_verdict(rows) == "warn"
    assert (
        overall_verdict(build_rows(ChecklistSpec(checks=["runtime_defaults"]), {}, {})) == "fail"
    )  # nothing measured


# --- the replay summary and the report contract --------------------------------------------


def fake_replay_result() -> Any:
    flag = SimpleNamespace(fired=False, reason="")
    u = SimpleNamespace(
        step=1,
        metrics={"abs_diff_mean": 0.01, "kl_k3": 0.001, "clip_rate": 0.0},
        metrics_vs_previous={"abs_diff_mean": 0.2},
        verdict="pass",
        reasons=[],
        flags={"stale_weights": flag, "partial_update": flag},
        checksums={"status": "ok", "n_params": 3, "matched": 3, "not_updated": [], "x": 1},
        prefix_cache={"measured": False},
        in_flight=None,
    )
    return SimpleNamespace(
        updates=[u],
        verdict="pass",
        flags_summary={"stale_weights": [], "partial_update": [], "mismatch_spike": []},
        prefix_cache_summary={"measured": False},
        baseline={"metrics": {"abs_diff_mean": 0.0}},
        capabilities={"vllm_version": "0.32.0"},
        engine={"enable_prefix_caching": True},
        fingerprint={"update_mode": "between_batches"},
        seconds=3.5,
        summary=lambda: {"updates": 1},
    )


def test_summarise_replay_keeps_the_numbers_rows_read() -> None:
    s = summarise_replay(fake_replay_result())
    assert set(s) == set(ReplaySummary.__annotations__)
    assert s["status"] == "measured" and s["summary"] == {"updates": 1}
    u = s["updates"][0]
    assert u["metrics"]["abs_diff_mean"] == 0.01 and "clip_rate" not in u["metrics"]
    assert u["metrics"]["n_tokens"] is None  # a key the replay did not measure stays empty
    assert u["flags"]["stale_weights"] == {"fired": False, "reason": ""}
    assert "x" not in u["checksums"] and s["update_mode"] == "between_batches"
    row = rows_of(full_measurements(), {"between_batches": s}, include_in_flight=False)[
        "weight_updates"
    ]
    assert row["status"] == "pass"


def test_the_result_json_has_exactly_the_contract_keys() -> None:
    m = full_measurements()
    m["v1_defaults"].histogram = {"counts": [1, 0], "zeros": 2, "nonfinite": 1}
    m["all_fixes"].values["kl_k3"] = float("nan")
    spec = ChecklistSpec(include_replay=False)
    rows = build_rows(spec, m, {})
    data = ChecklistResult(
        model="/m",
        vllm_version="0.32.0",
        sampling_requested=spec.sampling.requested(),
        rows=rows,
        variants=list(m.values()),
        replays={},
        verdict=overall_verdict(rows),
        engine_builds=3,
        seconds=1.5,
        timings={},
        spec=spec.model_dump(mode="json"),
    ).to_dict()
    assert set(data) == set(ChecklistReport.__annotations__)
    assert data["version"] == 1 and data["kind"] == "checklist"
    for row in data["rows"]:
        assert set(row) == set(Row.__annotations__)
    for v in data["variants"]:
        assert set(v) == set(VariantReport.__annotations__)
    assert data["histograms"]["series"] == [
        {
            "variant": "v1_defaults",
            "label": "v1_defaults label",
            "counts": [1, 0],
            "zeros": 2,
            "nonfinite": 1,
        }
    ]
    fixed = next(v for v in data["variants"] if v["name"] == "all_fixes")
    assert fixed["values"]["kl_k3"] is None  # NaN is stored as null (jsonb refuses NaN)
    assert data["markdown"].startswith("## vLLM V1 migration checklist — verdict: **pass**")
