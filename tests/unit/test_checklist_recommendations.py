"""The settings the checklist recommends, as code: filled in with the user's model and
sampling, only the processing steps that sampling needs, in vLLM's order."""

from __future__ import annotations

import json

import pytest

from workers.checklist import recommendation
from workers.specs import ChecklistSpec

pytestmark = pytest.mark.unit


def spec(**sampling: float | int) -> ChecklistSpec:
    return ChecklistSpec(model="org/My-Model", sampling={"max_tokens": 32, **sampling})


def test_trainer_processing_follows_vllms_order_with_only_the_steps_used() -> None:
    code = recommendation(
        "processed_logprobs", spec(temperature=0.6, top_k=20, min_p=0.05, top_p=0.95)
    )["trainer"]
    lines = code.splitlines()
    steps = [
        next(i for i, line in enumerate(lines) if marker in line)
        for marker in (
            "logits.float()",
            "/ 0.6",
            "0.05 * probs.amax",
            "topk(20",
            "1 - 0.95",
            "log_softmax",
        )
    ]
    assert steps == sorted(steps)  # temperature, min-p, top-k, top-p, renormalise
    assert "apply_penalties" not in code


def test_trainer_processing_for_plain_sampling_is_a_log_softmax() -> None:
    code = recommendation("processed_logprobs", spec(temperature=1.0))["trainer"]
    assert "logits /" not in code and "topk" not in code and "sort" not in code
    assert code.splitlines()[-1].startswith("logprobs = logits.log_softmax(-1)")


def test_greedy_and_penalties() -> None:
    code = recommendation("processed_logprobs", spec(temperature=0.0, repetition_penalty=1.1))[
        "trainer"
    ]
    assert "apply_penalties" in code and "greedy: nothing else applies" in code
    assert "topk" not in code


def test_runtime_defaults_spell_out_every_field_the_engine_could_fill() -> None:
    rec = recommendation("runtime_defaults", spec(temperature=0.7, top_p=0.9))
    sampling = json.loads(rec["trainer"].split("sampling = ", 1)[1])
    assert sampling == {
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }
    assert "SamplingParams(temperature=0.7, top_p=0.9, top_k=0, min_p=0.0" in rec["vllm_llm"]
    assert rec["vllm_serve"] == "vllm serve org/My-Model --generation-config vllm"


def test_every_row_has_all_three_settings_with_the_model_filled_in() -> None:
    s = spec(temperature=0.7, top_p=0.9)
    for check in (
        "processed_logprobs",
        "runtime_defaults",
        "weight_updates",
        "fp32_head",
        "all_fixes",
    ):
        rec = recommendation(check, s)
        assert set(rec) == {"vllm_llm", "vllm_serve", "trainer"}, check
        assert "org/My-Model" in rec["vllm_serve"], check


def test_all_fixes_is_one_llm_call_with_every_fix() -> None:
    rec = recommendation("all_fixes", spec(temperature=0.7, top_p=0.9))
    llm = rec["vllm_llm"]
    assert 'model="org/My-Model"' in llm
    for fix in (
        'logprobs_mode="processed_logprobs"',
        'generation_config="vllm"',
        'hf_overrides={"head_dtype": "float32"}',
        "llm.reset_prefix_cache()",
    ):
        assert fix in llm
    assert '--hf-overrides \'{"head_dtype": "float32"}\'' in rec["vllm_serve"]
    assert rec["trainer"].startswith("# fp32 lm_head, then the engine's sampling processing")


def test_a_model_path_is_quoted_as_a_python_string() -> None:
    rec = recommendation("fp32_head", ChecklistSpec(model='/models/"odd" dir'))
    assert 'LLM(model="/models/\\"odd\\" dir"' in rec["vllm_llm"]
