"""The comparison settings: defaults, validation messages, the published JSON schema."""

from __future__ import annotations

import json

import pydantic
import pytest

from workers.specs import (
    ComparisonSpec,
    EngineSettings,
    SamplingSettings,
    TrainerSettings,
    spec_model,
)

pytestmark = pytest.mark.unit


def errors(model: type[pydantic.BaseModel], data: dict[str, object]) -> dict[str, str]:
    with pytest.raises(pydantic.ValidationError) as exc:
        model.model_validate(data)
    return {".".join(map(str, e["loc"])): e["msg"] for e in exc.value.errors()}


def test_defaults_are_valid_and_mirror_vllm() -> None:
    spec = ComparisonSpec()
    assert spec.model == "var/models/tiny-llama"
    assert spec.engine.logprobs_mode == "raw"  # vLLM's default: raw_logprobs
    assert spec.engine.generation_config == "auto"  # vLLM's default
    assert spec.engine.vllm_logprobs_mode == "raw_logprobs"
    assert spec.engine.enforce_eager and spec.engine.gpu_memory_utilization == 0.2
    assert spec.sampling.temperature is None  # unset: the engine's default applies
    assert ComparisonSpec.model_validate(json.loads(spec.model_dump_json())) == spec


def test_requested_fills_unset_fields_with_neutral_defaults() -> None:
    req = SamplingSettings(temperature=0.7, top_k=20).requested()
    assert req["temperature"] == 0.7 and req["top_k"] == 20
    assert req["top_p"] == 1.0 and req["min_p"] == 0.0 and req["repetition_penalty"] == 1.0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", -1, "greater than or equal to 0"),
        ("temperature", 3.0, "less than or equal to 2"),
        ("temperature", 0.001, "must be 0 (greedy) or at least 0.01"),
        ("top_p", 0.0, "greater than 0"),
        ("top_p", 1.5, "less than or equal to 1"),
        ("top_k", -2, "greater than or equal to -1"),
        ("min_p", 1.2, "less than or equal to 1"),
        ("repetition_penalty", 0.0, "greater than 0"),
        ("max_tokens", 0, "greater than or equal to 1"),
        ("logprobs_topk", 50, "less than or equal to 20"),
        ("top_p", "lots", "valid number"),
    ],
)
def test_invalid_sampling_values_name_the_field(field: str, value: object, message: str) -> None:
    errs = errors(ComparisonSpec, {"sampling": {field: value}})
    assert message in errs[f"sampling.{field}"]


def test_greedy_needs_one_sample() -> None:
    errs = errors(SamplingSettings, {"temperature": 0, "n": 4})
    assert "n must be 1 when temperature is 0" in errs[""]


def test_unknown_settings_are_refused() -> None:
    errs = errors(ComparisonSpec, {"engine": {"logprob_mode": "raw"}})
    assert "engine.logprob_mode" in errs
    errs = errors(EngineSettings, {"logprobs_mode": "processed_logprobs"})
    assert "'processed' or 'raw'" in errs["logprobs_mode"]


def test_thresholds_are_checked_against_parity_metrics() -> None:
    assert ComparisonSpec(thresholds={"warn_abs_diff_mean": 0.05}).thresholds
    errs = errors(ComparisonSpec, {"thresholds": {"warn_abs_diff": 0.05}})
    assert "unknown threshold 'warn_abs_diff'" in errs["thresholds"]


def test_inline_prompts_are_validated() -> None:
    spec = ComparisonSpec(prompt_set="mine", prompts=[{"prompt": "hi", "id": 1}])
    assert spec.prompts == [{"prompt": "hi"}]
    errs = errors(ComparisonSpec, {"prompts": [{"prompt": "ok"}, {"text": "no"}]})
    assert errs["prompts"].startswith("Value error, prompt 2: expected an object")
    errs = errors(ComparisonSpec, {"prompt_set": "uploaded-set"})
    assert "has no prompts" in errs[""]


def test_json_schema_is_clean() -> None:
    schema = ComparisonSpec.model_json_schema()
    json.dumps(schema)  # serialisable
    defs = schema["$defs"]
    assert set(defs) >= {"EngineSettings", "TrainerSettings", "SamplingSettings"}
    for name in ("EngineSettings", "TrainerSettings", "SamplingSettings"):
        assert defs[name]["additionalProperties"] is False
        for field, prop in defs[name]["properties"].items():
            assert "default" in prop, f"{name}.{field} has no default"
    assert defs["EngineSettings"]["properties"]["logprobs_mode"]["enum"] == ["processed", "raw"]
    temp = defs["SamplingSettings"]["properties"]["temperature"]
    assert {"type": "null"} in temp["anyOf"]


def test_every_field_is_described() -> None:
    for model in (EngineSettings, TrainerSettings, SamplingSettings, ComparisonSpec):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"


def test_spec_model_lookup() -> None:
    assert spec_model("comparison") is ComparisonSpec
    with pytest.raises(KeyError):
        spec_model("no-such-kind")


def test_every_kind_names_a_runner_that_exists_without_importing_it() -> None:
    import importlib.util

    from workers.specs import JOB_KINDS

    for kind in JOB_KINDS.values():
        module, _, function = kind.runner.partition(":")
        assert function, kind.runner
        assert importlib.util.find_spec(module) is not None, kind.runner


def test_ping_echoes_its_spec() -> None:
    from workers.ping import ping
    from workers.reporting import NullReporter

    outcome = ping({"hello": "world"}, NullReporter())
    assert outcome.result["echo"] == {"hello": "world"} and outcome.result["pong"]


@pytest.mark.parametrize(
    ("fail_on", "verdict", "code"),
    [
        (None, "fail", 0),
        ("never", "fail", 0),
        ("fail", "warn", 0),
        ("fail", "fail", 1),
        ("warn", "warn", 1),
        ("warn", "pass", 0),
        ("warn", "something-new", 1),  # an unknown verdict counts as fail
    ],
)
def test_fail_on_sets_the_exit_code_of_the_verdict_clis(
    fail_on: str | None, verdict: str, code: int
) -> None:
    import argparse

    from workers.cli import verdict_exit_code

    assert verdict_exit_code(argparse.Namespace(fail_on=fail_on), verdict) == code
