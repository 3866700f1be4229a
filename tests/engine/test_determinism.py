"""The determinism certificate on real engines: the in-process vLLM (fp32 and bf16) and the
session's real vLLM server process (tests/engine/fixtures.py: vllm_server).

Nothing here assumes bit-exactness: the numbers are whatever the engine gives, and the tests
check that they are measured over the right sequences and judged as the report says.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from workers.engines.launch import LocalServer
from workers.reporting import NullReporter

pytestmark = pytest.mark.engine

SMALL = {"num_prompts": 4, "sampling": {"temperature": 1.0, "max_tokens": 12, "n": 2}}


def certify(model: Path, **spec: Any) -> Any:
    from workers.determinism import run_determinism_job

    started = time.perf_counter()
    outcome = run_determinism_job({**SMALL, "model": str(model), **spec}, NullReporter())
    r = outcome.result
    print(
        f"\n{r['engine']['label']} {r['engine'].get('dtype')}: verdict {r['verdict']}; "
        + "; ".join(
            f"{p['run']} bit_equal {p['bit_equal_frac']} max|Δ| {p['abs_diff_max']} "
            f"diverged {p['diverged_seqs']}/{p['n_sequences']}"
            for p in r["pairs"]
        )
        + f"; trainer bit_equal {r['trainer']['bit_equal_frac']}; "
        f"wall {time.perf_counter() - started:.1f} s"
    )
    return outcome


def check_consistent(outcome: Any) -> None:
    """Every measured pair compares the reference's sequences, and the verdict says why."""
    r = outcome.result
    assert [run["name"] for run in r["runs"]][:3] == ["batch_1", "full_batch", "shuffled"]
    reference = r["runs"][0]
    assert reference["requests_per_call"] == 1 and reference["n_sequences"] == 8
    assert reference["groups"]["n"] == 2 and reference["groups"]["n_groups"] == 4
    for pair in r["pairs"]:
        assert pair["n_sequences"] == 8 and pair["tokens_compared"] > 0
        assert 0.0 <= pair["bit_equal_frac"] <= 1.0
        # A wrongly un-shuffled run would continue other prompts: nearly every sequence
        # would diverge at its first token.
        assert pair["diverged_seq_frac"] <= 0.5, pair
        exact = pair["bit_equal_frac"] == 1.0 and pair["diverged_seqs"] == 0
        assert (pair["verdict"] == "pass") == exact
    assert outcome.verdict == r["verdict"] and r["reasons"]
    if r["verdict"] == "pass":
        assert r["reasons"][0].startswith("bit-exact")
    trainer = r["trainer"]
    assert trainer["status"] == "measured" and trainer["n_tokens"] == reference["n_tokens"]
    assert trainer["engine_claims"] is False and trainer["meaningful"] is False
    assert 0.0 <= trainer["bit_equal_frac"] <= 1.0
    assert outcome.step_values[0]["bit_equal_frac"] == min(p["bit_equal_frac"] for p in r["pairs"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_in_process_engine_is_certified_at_two_max_num_seqs(
    tiny_model: Path, dtype: str
) -> None:
    outcome = certify(
        tiny_model, engine={"dtype": dtype}, trainer={"dtype": dtype, "device": "cpu"}
    )
    check_consistent(outcome)
    r = outcome.result
    assert r["engine"]["adapter"] == "vllm" and r["engine"]["batch_invariant"] is False
    other = r["runs"][3]
    assert other["name"] == "max_num_seqs" and other["status"] == "measured", other
    assert other["max_num_seqs"] == 1 and r["runs"][0]["max_num_seqs"] != 1
    assert [p["run"] for p in r["pairs"]] == ["full_batch", "shuffled", "max_num_seqs"]


def test_a_vllm_server_is_certified_and_says_its_max_num_seqs_is_fixed(
    vllm_server: LocalServer,
) -> None:
    server = {"url": vllm_server.url, "api_key": vllm_server.api_key}
    outcome = certify(vllm_server.model, server=server)
    check_consistent(outcome)
    r = outcome.result
    assert r["engine"]["adapter"] == "vllm-server" and r["engine"]["url"] == vllm_server.url
    # Read from the server (dev mode): not assumed.
    assert r["engine"]["batch_invariant"] is False and r["engine"]["dtype"] == "bfloat16"
    other = r["runs"][3]
    assert other["status"] == "not-applicable"
    assert "max_num_seqs is fixed when it starts" in other["reason"]
    assert [p["run"] for p in r["pairs"]] == ["full_batch", "shuffled"]
    assert vllm_server.api_key not in str(r)
