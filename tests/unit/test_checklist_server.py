"""The checklist against a server the user runs, from hand-built measurements: which variants
run on the server, which rows say "needs the server restarted with <flag>", and their exact
wording. No engine, no torch."""

from __future__ import annotations

from typing import Any

import pytest

from workers.checklist import Measured, Served, needs_restart, plan_server_variants, render_markdown
from workers.checklist.cli import format_text
from workers.checklist.plan import RESTART_FLAGS, replay_not_offered
from workers.checklist.rows import overall_verdict
from workers.checklist.server_rows import build_server_rows
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
SERVER = {"url": "http://10.0.0.5:8000"}
V1_SERVER = Served("vllm", "raw", False, "model", "bfloat16")
FIXED_SERVER = Served("vllm", "processed", True, "float32", "bfloat16")
SGLANG_SERVER = Served("sglang", "temperature", False, "model", "bfloat16")


def spec(**over: Any) -> ChecklistSpec:
    return ChecklistSpec.model_validate({"server": SERVER, "sampling": SAMPLED} | over)


def measured(
    name: str, adm: float, *, verdict: str = "pass", differs: dict[str, Any] | None = None
) -> Measured:
    return Measured(
        name,
        f"{name} label",
        "measured",
        engine={"dtype": "bfloat16"},
        trainer={"dtype": "bfloat16", "head_dtype": "model", "processing": {"kind": "processed"}},
        sampling={
            "requested": SAMPLED,
            "effective": SAMPLED,
            "model_defaults": {},
            "changed_by_defaults": differs or {},
        },
        values={"abs_diff_mean": adm, "kl_k3": adm / 10, "abs_diff_max": adm * 5, "n_tokens": 9},
        verdict=verdict,  # type: ignore[arg-type]
    )


def three(**over: Measured) -> dict[str, Measured]:
    return {
        "as_configured": measured("as_configured", 0.3, verdict="fail"),
        "explicit": measured("explicit", 0.3, verdict="fail"),
        "fp32_trainer": measured("fp32_trainer", 0.31, verdict="fail"),
    } | over


def rows_of(served: Served, m: dict[str, Measured], **spec_over: Any) -> dict[str, Any]:
    built = build_server_rows(spec(include_replay=False, **spec_over), served, m, {})
    return {r["check"]: r for r in built}


# --- the plan ------------------------------------------------------------------------------


def test_a_server_runs_only_the_trainer_and_request_variants() -> None:
    plan = plan_server_variants(spec(), V1_SERVER)
    assert [v.name for v in plan] == ["as_configured", "explicit", "fp32_trainer"]
    assert [v.explicit_sampling for v in plan] == [False, True, True]
    assert plan[2].rescore_of == "explicit" and plan[2].trainer.head_dtype == "float32"
    # Nothing of the engine is changed per variant: it is the server's.
    assert {v.engine for v in plan} == {spec().engine}


def test_a_single_check_plans_only_what_its_row_needs() -> None:
    assert [
        v.name for v in plan_server_variants(spec(checks=["processed_logprobs"]), V1_SERVER)
    ] == ["explicit"]
    assert [v.name for v in plan_server_variants(spec(checks=["runtime_defaults"]), V1_SERVER)] == [
        "as_configured",
        "explicit",
    ]
    assert plan_server_variants(spec(checks=["weight_updates"]), V1_SERVER) == []


def test_restart_flags_are_each_engines_own() -> None:
    assert needs_restart("vllm", "processed_logprobs") == (
        "needs the server restarted with --logprobs-mode processed_logprobs "
        "(a server's settings are fixed at its start)"
    )
    assert needs_restart("vllm", "processed_logprobs", "fp32_head") == (
        "needs the server restarted with --logprobs-mode processed_logprobs "
        '--hf-overrides \'{"head_dtype": "float32"}\' (a server\'s settings are fixed at '
        "its start)"
    )
    assert RESTART_FLAGS["vllm"]["neutral_defaults"] == "--generation-config vllm"
    assert RESTART_FLAGS["sglang"]["fp32_head"] == "--enable-fp32-lm-head"
    assert RESTART_FLAGS["sglang"]["neutral_defaults"] == "--sampling-defaults openai"
    assert RESTART_FLAGS["sglang"]["batch_invariant"] == "--enable-deterministic-inference"
    assert RESTART_FLAGS["sglang"]["processed_logprobs"] is None  # SGLang has no such mode


def test_replays_on_a_server() -> None:
    assert replay_not_offered(spec(), "between_batches") is None
    assert "in flight" in (replay_not_offered(spec(), "in_flight") or "")
    # SGLang's updates go through its own update API (workers/replay/sglang.py).
    sglang = spec(server=SERVER | {"engine": "sglang"})
    assert replay_not_offered(sglang, "between_batches") is None
    assert "in flight" in (replay_not_offered(sglang, "in_flight") or "")
    in_process = ChecklistSpec()
    assert replay_not_offered(in_process, "between_batches") is None
    assert replay_not_offered(in_process, "in_flight") is None


# --- the rows ------------------------------------------------------------------------------


def test_v1_server_rows_measure_what_they_can_and_name_the_flag() -> None:
    rows = rows_of(V1_SERVER, three())
    processed = rows["processed_logprobs"]
    assert processed["status"] == "needs-restart"
    assert processed["before"]["variant"] == "explicit" and processed["after"] is None
    assert processed["reason"].startswith("the server returns raw logprobs (vLLM's default): ")
    assert processed["reason"].endswith(
        "processed logprobs needs the server restarted with --logprobs-mode "
        "processed_logprobs (a server's settings are fixed at its start)"
    )
    head = rows["fp32_head"]
    assert head["status"] == "needs-restart"
    assert [c["variant"] for c in (head["before"], *head["others"])] == [
        "explicit",
        "fp32_trainer",
    ]
    assert '--hf-overrides \'{"head_dtype": "float32"}\'' in head["reason"]
    assert rows["runtime_defaults"]["status"] == "not-applicable"
    every = rows["all_fixes"]
    assert every["status"] == "needs-restart" and every["after"] is None
    assert "--logprobs-mode processed_logprobs --hf-overrides" in every["reason"]


def test_a_server_already_running_the_fixes_passes_from_its_measurement() -> None:
    m = three(explicit=measured("explicit", 0.01), fp32_trainer=measured("fp32_trainer", 0.005))
    rows = rows_of(FIXED_SERVER, m)
    assert rows["processed_logprobs"]["status"] == "pass"
    assert rows["processed_logprobs"]["reason"].startswith(
        "the server already returns processed logprobs (--logprobs-mode processed_logprobs)"
    )
    assert rows["processed_logprobs"]["after"]["abs_diff_mean"] == 0.01
    assert rows["fp32_head"]["status"] == "pass"
    assert rows["fp32_head"]["after"]["variant"] == "fp32_trainer"
    assert (
        "the server fills unset sampling fields with neutral defaults (--generation-config vllm)"
        in rows["runtime_defaults"]["reason"]
    )
    every = rows["all_fixes"]
    assert every["status"] == "pass" and every["after"]["abs_diff_mean"] == 0.005
    assert overall_verdict(list(rows.values())) == "pass"


def test_runtime_defaults_are_fixed_in_the_request_on_a_server() -> None:
    differs = {"temperature": {"requested": 1.0, "effective": 0.6}}
    m = three(as_configured=measured("as_configured", 0.3, differs=differs))
    row = rows_of(V1_SERVER, m)["runtime_defaults"]
    assert row["status"] == "needs-fix"
    assert "temperature 1.0 → 0.6" in row["reason"]
    assert row["reason"].endswith(
        "Fix it in the request (every field explicit, measured here) or restart the server "
        "with --generation-config vllm"
    )


def test_sglang_rows_name_sglang_flags_and_its_logprobs() -> None:
    rows = rows_of(SGLANG_SERVER, three(), server=SERVER | {"engine": "sglang"})
    processed = rows["processed_logprobs"]
    assert processed["status"] == "needs-fix"
    assert "no processed-logprobs mode at any setting" in processed["reason"]
    assert "processing='temperature'" in processed["reason"]
    assert "--enable-fp32-lm-head" in rows["fp32_head"]["reason"]
    assert "--logprobs-mode" not in rows["all_fixes"]["reason"]
    assert "--enable-fp32-lm-head" in rows["all_fixes"]["reason"]


def test_a_variant_that_failed_is_could_not_run_not_restart() -> None:
    failed = Measured("explicit", "explicit label", "could-not-run", error="HTTP 500")
    rows = rows_of(V1_SERVER, three(explicit=failed))
    assert rows["processed_logprobs"]["status"] == "could-not-run"
    assert "HTTP 500" in rows["processed_logprobs"]["reason"]


def test_reports_name_the_engine_and_mark_restarts_apart() -> None:
    rows = list(rows_of(V1_SERVER, three()).values())
    result = {
        "model": "/m",
        "vllm_version": "0.32.0",
        "verdict": "fail",
        "rows": rows,
        "engine_builds": 0,
        "seconds": 1.0,
        "engine": {
            "adapter": "vllm-server",
            "label": "vLLM server",
            "version": "0.32.0",
            "url": "http://10.0.0.5:8000",
        },
    }
    md = render_markdown(result)
    assert "vLLM server 0.32.0 at http://10.0.0.5:8000" in md
    assert "| before (as configured) |" in md
    assert "🔁 needs server restart" in md and "❌" not in md
    text = format_text(result)
    assert "engine: vLLM server 0.32.0 at http://10.0.0.5:8000" in text
    assert "[ needs-restart] Processed logprobs" in text
