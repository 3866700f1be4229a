"""The migration checklist against the session's real vLLM server (tests/engine/fixtures.py:
vllm_server, started with vLLM's defaults: raw logprobs, generation_config auto, bf16 head,
dev mode). One tiny checklist serves every assertion; its wall time is printed (run with
-s), not asserted."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from workers.engines.launch import LocalServer
from workers.reporting import JobOutcome, NullReporter

pytestmark = pytest.mark.engine

TINY = {
    "num_prompts": 4,
    "sampling": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 8, "logprobs_topk": 0},
    "replay_updates": 1,
    "replay_max_tokens": 8,
}


@pytest.fixture(scope="module")
def against_server(vllm_server: LocalServer, _engine_session: None) -> JobOutcome:
    from workers.checklist import run_checklist_job

    spec = TINY | {
        "model": vllm_server.model,
        "server": {"url": vllm_server.url, "api_key": vllm_server.api_key},
    }
    started = time.perf_counter()
    outcome = run_checklist_job(spec, NullReporter())
    print(f"\nchecklist against the vLLM server: {time.perf_counter() - started:.1f} s")
    return outcome


def rows(outcome: JobOutcome) -> dict[str, dict[str, Any]]:
    return {r["check"]: r for r in outcome.result["rows"]}


def test_the_result_names_the_server_that_answered(
    against_server: JobOutcome, vllm_server: LocalServer
) -> None:
    result = against_server.result
    json.dumps(result, allow_nan=False)  # stored as jsonb
    engine = result["engine"]
    assert engine["adapter"] == "vllm-server" and engine["url"] == vllm_server.url
    assert engine["version"] == result["vllm_version"] != "unknown"
    assert result["engine_builds"] == 0  # nothing was built in-process
    assert [v["name"] for v in result["variants"]] == ["as_configured", "explicit", "fp32_trainer"]
    assert all(v["status"] == "measured" for v in result["variants"])
    assert {v["engine"]["adapter"] for v in result["variants"]} == {"vllm-server"}
    assert f"vLLM server {engine['version']} at {vllm_server.url}" in result["markdown"]
    assert vllm_server.api_key not in json.dumps(result)


def test_engine_options_say_which_flag_and_show_what_was_measured(
    against_server: JobOutcome,
) -> None:
    by = rows(against_server)
    processed = by["processed_logprobs"]
    assert processed["status"] == "needs-restart", processed["reason"]
    assert processed["before"]["abs_diff_mean"] > 0.05  # raw logprobs vs T=0.7, top_p=0.9
    assert (
        "--logprobs-mode processed_logprobs (a server's settings are fixed at its start)"
        in (processed["reason"])
    )
    head = by["fp32_head"]
    assert head["status"] == "needs-restart", head["reason"]
    assert head["before"]["n_tokens"] > 0 and head["others"][0]["variant"] == "fp32_trainer"
    assert by["all_fixes"]["status"] == "needs-restart"
    assert by["all_fixes"]["before"]["variant"] == "as_configured"
    # The tiny base model's generation_config.json sets no sampling field.
    assert by["runtime_defaults"]["status"] == "not-applicable", by["runtime_defaults"]["reason"]


def test_weight_updates_and_determinism_ran_against_the_server(
    against_server: JobOutcome,
) -> None:
    result = against_server.result
    replay = result["replays"]["between_batches"]
    assert replay["status"] == "measured", replay
    assert replay["engine"]["adapter"] == "vllm-server"
    assert result["replays"]["in_flight"]["status"] == "not-offered"
    assert "in flight" in result["replays"]["in_flight"]["reason"]
    by = rows(against_server)
    assert by["weight_updates"]["status"] in ("pass", "needs-fix"), by["weight_updates"]["reason"]
    assert by["weight_updates"]["details"]["flags_summary"]["stale_weights"] == []
    assert by["determinism"]["status"] in ("pass", "needs-fix"), by["determinism"]["reason"]
    assert by["determinism"]["details"]["pairs"]
