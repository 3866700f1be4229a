"""The instrument on each model family (issue 11 §2): Llama, Qwen2 and Qwen3 built tiny.

Every family brings its own quirk into vLLM and the trainer (workers/tiny_model.py):

- llama ("base"): untied lm_head, vocabulary 1024, BOS; the reference every other test uses;
- qwen2: input and output embeddings tied (no lm_head.weight in the checkpoint), q/k/v
  biases, grouped-query attention, a vocabulary of 390 that vLLM pads to 448 rows, a
  tokenizer without BOS;
- qwen3: RMSNorm on the queries and keys, grouped-query attention, untied.

In fp32 on both sides with an fp32 head the two should agree to float rounding, so a family
whose mapping is wrong anywhere (a bias dropped, a norm skipped, a padded logit let through,
a tied head not followed) shows as |d| far above 1e-5. The replays check that weight updates
reach every one of the family's tensors, and that the planted faults are caught on it.

Cost: one engine per comparison mode per family (a different model is a different engine) and
one per replay; prompts and rollouts are short. Comparisons run first, while the warm engine
lives; every replay builds its own engine and shuts the warm one down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine.extensions import SKIPPED_MLP_PARAM
from workers.reporting import NullReporter

pytestmark = pytest.mark.engine

PARTIAL_MLP = "tests.engine.extensions.PartialMlpUpdateExtension"
STALE = "tests.engine.extensions.StaleUpdateExtension"
FP32 = {"dtype": "float32", "head_dtype": "float32"}
RAW = {**FP32, "logprobs_mode": "raw", "generation_config": "vllm"}
PROCESSED = {**FP32, "logprobs_mode": "processed", "generation_config": "vllm"}
NUM_PROMPTS = 6
MAX_TOKENS = 12
# fp32 engine and trainer, fp32 heads: what is left is summation order, about 1e-6 nats.
FP32_ABS_DIFF = 1e-5

# The Llama family is the "base" variant; the ids name the families.
FAMILIES = [
    pytest.param("base", id="llama"),
    pytest.param("qwen2", id="qwen2"),
    pytest.param("qwen3", id="qwen3"),
]


@pytest.fixture(scope="module")
def timings() -> Iterator[dict[str, float]]:
    """Per-test wall times, printed at the end of the module (run with -s to see them)."""
    times: dict[str, float] = {}
    yield times
    print(
        "\nmodel-family engine tests:",
        ", ".join(f"{k} {v:.1f}s" for k, v in times.items()),
        f"(total {sum(times.values()):.1f}s)",
    )


def checkpoint_names(model: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


def compared_params(model: Path) -> tuple[int, ...]:
    """How many parameters a replay's checksums may compare: every tensor of the checkpoint,
    and a tied head either not at all (it is the embedding) or as its own entry."""
    from transformers import AutoConfig

    n = len(checkpoint_names(model))
    return (n, n + 1) if AutoConfig.from_pretrained(model).tie_word_embeddings else (n,)


def compare(comparison: Any, variant: str, engine: dict[str, Any], **sampling: Any) -> Any:
    return comparison(
        variant,
        num_prompts=NUM_PROMPTS,
        engine=engine,
        trainer=FP32,
        sampling={"max_tokens": MAX_TOKENS, **sampling},
    )


def check_fp32_agreement(out: Any, model: Path) -> dict[str, Any]:
    """The assertions every fp32 comparison shares; returns the metric values."""
    from transformers import AutoConfig

    v = out.result["metrics"]["values"]
    assert v["n_tokens"] > 0
    assert v["token_mismatch"] == 0
    assert v["nonfinite_trainer"] == 0 and v["nonfinite_rollout"] == 0
    assert v["abs_diff_mean"] < FP32_ABS_DIFF, v["abs_diff_mean"]
    assert abs(v["bias"]) < FP32_ABS_DIFF
    fp = out.fingerprint
    assert fp["engine"]["dtype"] == "float32" and fp["engine"]["head_dtype"] == "float32"
    assert fp["trainer"]["dtype"] == "float32" and fp["trainer"]["head_dtype"] == "float32"
    # Only real token ids are ever sampled: vLLM's padded vocabulary rows stay out.
    vocab = AutoConfig.from_pretrained(model).vocab_size
    ids = [t["id"] for s in out.result["worst_sequences"] for t in s["tokens"]]
    assert ids and max(ids) < vocab
    return v


# --- comparisons: fp32 engine, fp32 trainer, fp32 heads -------------------------------------


@pytest.mark.parametrize("variant", FAMILIES)
def test_raw_logprobs_agree_to_float_rounding(
    comparison: Any, tiny_models: dict[str, Path], timings: dict[str, float], variant: str
) -> None:
    out = compare(comparison, variant, RAW)
    timings[f"raw[{variant}]"] = out.result["test_wall_s"]
    v = check_fp32_agreement(out, tiny_models[variant])
    assert v["truncation_boundary"] == 0  # raw: nothing is truncated
    assert out.fingerprint["trainer"]["processing_applied"] == "raw"
    assert out.verdict == "pass", out.result["metrics"]["reasons"]


@pytest.mark.parametrize("variant", FAMILIES)
def test_processed_top_p_logprobs_agree_to_float_rounding(
    comparison: Any, tiny_models: dict[str, Path], timings: dict[str, float], variant: str
) -> None:
    out = compare(comparison, variant, PROCESSED, temperature=0.7, top_p=0.9)
    timings[f"processed[{variant}]"] = out.result["test_wall_s"]
    v = check_fp32_agreement(out, tiny_models[variant])
    assert out.fingerprint["trainer"]["processing_applied"] == "processed"
    assert out.fingerprint["sampling"]["top_p"] == 0.9
    # A token right at the nucleus edge may fall out of the trainer's own nucleus (METRICS.md
    # truncation_boundary): counted apart, never in abs_diff_mean; in fp32 at most one.
    assert v["truncation_boundary"] <= 1
    if v["truncation_boundary"] == 0:
        assert out.verdict == "pass", out.result["metrics"]["reasons"]


# --- replays: fp32, two synthetic updates ---------------------------------------------------


def replay(model: Path, **kw: Any) -> Any:
    from workers.replay import run_replay_job

    spec = {
        "model": str(model),
        "num_updates": 2,
        "engine": {**FP32, "generation_config": "vllm"},
        "trainer": FP32,
        "sampling": {"temperature": 1.0, "max_tokens": 8, "logprobs_topk": 0},
        "measure_prefix_cache": False,
        **kw,
    }
    outcome = run_replay_job(spec, NullReporter())
    json.dumps(outcome.result, allow_nan=False)  # the job stores it as JSON
    return outcome


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param("base", id="llama"),
        pytest.param("qwen2", id="qwen2"),
        pytest.param("qwen3", id="qwen3"),
    ],
)
def test_clean_replay_raises_no_flag(
    tiny_models: dict[str, Path], timings: dict[str, float], variant: str
) -> None:
    model = tiny_models[variant]
    started = time.perf_counter()
    outcome = replay(model)
    timings[f"clean[{variant}]"] = time.perf_counter() - started
    result = outcome.result

    # Every tensor of the family's checkpoint is checksummed in the engine and took W_k.
    for u in result["updates"]:
        assert u["checksums"]["status"] == "full", u["checksums"]["not_updated"]
        assert u["checksums"]["n_params"] in compared_params(model)
        assert u["checksums"]["missing_in_engine"] == []
        assert u["update"]["withheld_by_extension"] == []
    # The engine serves W_k: fp32 agreement after every update, far from W_k-1.
    assert result["baseline"]["metrics"]["abs_diff_mean"] < FP32_ABS_DIFF
    for u in result["updates"]:
        m = u["metrics"]
        assert m["token_mismatch"] == 0
        assert m["abs_diff_mean"] < FP32_ABS_DIFF, (u["step"], m["abs_diff_mean"])
        assert u["metrics_vs_previous"]["abs_diff_mean"] > 100 * FP32_ABS_DIFF
    assert result["flags_summary"] == {
        "stale_weights": [],
        "partial_update": [],
        "mismatch_spike": [],
    }
    assert outcome.verdict == "pass"


@pytest.mark.parametrize("variant", FAMILIES)
def test_planted_partial_update_fires_partial_update(
    tiny_models: dict[str, Path], timings: dict[str, float], variant: str
) -> None:
    started = time.perf_counter()
    # An MLP weight every family has (tests/engine/test_replay.py withholds lm_head.weight,
    # which a tied checkpoint does not have).
    outcome = replay(tiny_models[variant], extension=PARTIAL_MLP)
    timings[f"partial[{variant}]"] = time.perf_counter() - started
    result = outcome.result

    for u in result["updates"]:
        # First, that the fault was planted at all on this family's checkpoint.
        assert u["update"]["withheld_by_extension"] == [SKIPPED_MLP_PARAM]
        assert u["checksums"]["status"] == "partial"
        assert u["checksums"]["not_updated"] == [SKIPPED_MLP_PARAM]
    assert result["flags_summary"]["partial_update"] == [1, 2]
    assert outcome.verdict == "fail"


@pytest.mark.parametrize("variant", FAMILIES)
def test_planted_stale_update_fires_stale_weights(
    tiny_models: dict[str, Path], timings: dict[str, float], variant: str
) -> None:
    model = tiny_models[variant]
    started = time.perf_counter()
    outcome = replay(model, extension=STALE)
    timings[f"stale[{variant}]"] = time.perf_counter() - started
    result = outcome.result

    assert result["flags_summary"]["stale_weights"] == [1, 2]
    assert result["flags_summary"]["partial_update"] == []
    for u in result["updates"]:
        assert u["checksums"]["status"] == "none"
        stale = u["flags"]["stale_weights"]["evidence"]
        assert stale["resolvable"]
        assert stale["vs_previous"]["kl_k3"] < stale["vs_current"]["kl_k3"]
    # From update 2 on the engine holds exactly W_1: every parameter compared.
    last = result["updates"][-1]
    assert last["checksums"]["n_params"] in compared_params(model)
    held = last["flags"]["stale_weights"]["evidence"]["params_equal_to_previous_weights"]
    assert held == last["checksums"]["n_params"]
    assert outcome.verdict == "fail"
