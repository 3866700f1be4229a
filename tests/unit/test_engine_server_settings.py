"""The vLLM server adapter's pure parts: its spec, the flags that start a server, what it
reads from a server's config, and the sampling merge it reports."""

from __future__ import annotations

from typing import Any

import pytest

from workers.engines.vllm_server import _settings, server_args
from workers.reporting import UserError
from workers.specs import ComparisonSpec, EngineSettings, parse_spec, redact

pytestmark = pytest.mark.unit


def test_a_server_url_is_normalised_to_the_servers_base() -> None:
    spec = ComparisonSpec.model_validate({"server": {"url": " http://10.0.0.5:8000/v1/ "}})
    assert spec.server.url == "http://10.0.0.5:8000"
    assert ComparisonSpec().server.url is None
    assert (
        ComparisonSpec.model_validate({"server": {"url": "", "api_key": " "}}).server.api_key
        is None
    )


def test_a_url_that_is_not_http_is_refused_naming_the_field() -> None:
    with pytest.raises(
        UserError, match=r"server.url: 'localhost:8000' is not an http\(s\) base URL"
    ):
        parse_spec(ComparisonSpec, {"server": {"url": "localhost:8000"}})


def test_the_api_key_is_redacted_for_display_and_kept_for_the_worker() -> None:
    spec = ComparisonSpec.model_validate({"server": {"url": "http://h:1", "api_key": "s3cret"}})
    data = spec.model_dump(mode="json")
    assert data["server"]["api_key"] == "s3cret"
    assert redact(data)["server"]["api_key"] == "***"
    assert redact({"model": "m"}) == {"model": "m"}


def test_server_flags_follow_the_engine_settings() -> None:
    args = server_args("/m", EngineSettings(logprobs_mode="processed", head_dtype="float32"))
    joined = " ".join(args)
    assert "--logprobs-mode processed_logprobs" in joined and "--generation-config auto" in joined
    assert "--enforce-eager" in args and '{"head_dtype": "float32"}' in args
    assert "--enable-prefix-caching" in args


def _config(**model: Any) -> dict[str, Any]:
    mc = {"dtype": "torch.float32", "logprobs_mode": "processed_logprobs", "seed": 3, **model}
    return {"model_config": mc, "scheduler_config": {"max_num_seqs": 8}, "cache_config": {}}


def test_what_the_server_reports_wins_over_the_spec_and_the_rest_is_named_assumed() -> None:
    settings, assumed = _settings(_config(generation_config="vllm"), False, 512, EngineSettings())
    assert settings.dtype == "float32" and settings.logprobs_mode == "processed"
    assert settings.generation_config == "vllm" and settings.max_num_seqs == 8
    assert settings.enable_prefix_caching is False and settings.max_model_len == 512
    assert "dtype" not in assumed and "gpu_memory_utilization" in assumed


def test_without_server_info_only_the_public_facts_are_taken() -> None:
    settings, assumed = _settings(None, None, 512, EngineSettings(logprobs_mode="processed"))
    assert settings.logprobs_mode == "processed"  # the spec's, marked assumed
    assert {"dtype", "logprobs_mode", "generation_config", "enable_prefix_caching"} <= set(assumed)
    assert "max_model_len" not in assumed


def test_a_setting_parity_cannot_model_stays_assumed_rather_than_guessed() -> None:
    config = _config(logprobs_mode="processed_logits", generation_config="/some/dir")
    settings, assumed = _settings(config, True, 512, EngineSettings())
    assert settings.logprobs_mode == "raw" and "logprobs_mode" in assumed
    assert "generation_config" in assumed
