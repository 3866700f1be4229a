"""#16 §15: the result page's fingerprint is grouped by side without repeats, and its timings
follow the pipeline."""

from __future__ import annotations

import pytest

from dashboard.core.presenters import fingerprint_groups, flatten, timing_rows

pytestmark = pytest.mark.unit

FINGERPRINT = {
    "model": "tiny",
    "num_prompts": 8,
    "engine": {
        "adapter": "vllm",
        "vllm_version": "0.32.0",
        "head_dtype": "float32",
        "dtype": "bfloat16",
        "settings": {"head_dtype": "float32", "dtype": "auto", "enable_prefix_caching": True},
    },
    "trainer": {"transformers_version": "4.57", "dtype": "bfloat16", "temperature": 1.0},
    "sampling": {"temperature": 1.0, "top_p": 1.0},
    "sampling_requested": {"temperature": 1.0, "top_p": 0.9},
    "versions": {"vllm": "0.32.0", "torch": "2.8", "transformers": "4.57", "python": "3.12"},
    "device": "cpu",
    "extra": {"a": 1},
}


def rows_by_group() -> dict[str, dict[str, dict]]:
    return {g["title"]: {r["key"]: r for r in g["rows"]} for g in fingerprint_groups(FINGERPRINT)}


def test_fingerprint_groups_by_side_in_a_fixed_order() -> None:
    titles = [g["title"] for g in fingerprint_groups(FINGERPRINT)]
    assert titles == ["Model and prompts", "Engine", "Trainer", "Sampling", "Platform", "Other"]


def test_a_setting_with_the_same_value_under_two_paths_is_one_row() -> None:
    groups = rows_by_group()
    engine = groups["Engine"]
    assert "engine.settings.head_dtype" not in engine
    assert engine["engine.head_dtype"]["also"] == ["engine.settings.head_dtype"]
    # The vLLM and transformers versions show once, beside their side; Platform keeps the rest.
    assert engine["engine.vllm_version"]["also"] == ["versions.vllm"]
    assert groups["Trainer"]["trainer.transformers_version"]["also"] == ["versions.transformers"]
    assert set(groups["Platform"]) == {"device", "versions.python", "versions.torch"}
    # Requested as it was used: one row; requested otherwise: both rows.
    sampling = groups["Sampling"]
    assert sampling["sampling.temperature"]["also"] == ["sampling_requested.temperature"]
    assert {"sampling.top_p", "sampling_requested.top_p"} <= set(sampling)


def test_differing_values_and_equal_settings_of_different_sides_all_stay() -> None:
    groups = rows_by_group()
    # The engine ran bfloat16 where its settings said auto: that difference is the point.
    assert groups["Engine"]["engine.dtype"]["value"] == "bfloat16"
    assert groups["Engine"]["engine.settings.dtype"]["value"] == "auto"
    # The trainer's dtype equals the engine's but is the trainer's own setting.
    assert groups["Trainer"]["trainer.dtype"]["also"] == []
    assert groups["Engine"]["engine.dtype"]["also"] == []
    assert groups["Trainer"]["trainer.temperature"]["value"] == "1"  # one number style


def test_no_path_is_lost() -> None:
    shown = [
        path
        for g in fingerprint_groups(FINGERPRINT)
        for r in g["rows"]
        for path in (r["key"], *r["also"])
    ]
    assert sorted(shown) == sorted(flatten(FINGERPRINT))


def test_timings_follow_the_pipeline_whatever_order_they_are_stored_in() -> None:
    stored = {
        "report_s": 0.1,
        "score_s": 2.0,
        "metrics_s": 0.2,
        "trainer_load_s": 1.0,
        "generate_s": 3.0,
        "engine_load_s": 9.0,
    }
    names = [row["name"] for row in timing_rows(stored)]
    assert names == ["engine load", "generate", "trainer load", "score", "metrics", "report"]
    checklist = {"b.score_s": 1.0, "b.engine_load_s": 1.0, "a.total_s": 1.0, "a.generate_s": 1.0}
    assert [row["name"] for row in timing_rows(checklist)] == [
        "a.generate",
        "a.total",
        "b.engine load",
        "b.score",
    ]


def test_the_engine_that_answered_is_named_with_its_own_version() -> None:
    """An SGLang server's version was shown as "vLLM 0.5.23"."""
    from dashboard.core.presenters import engine_answered

    sglang = {"fingerprint": {"engine": {"adapter": "sglang", "vllm_version": "0.5.23"}}}
    in_process = {"fingerprint": {"vllm_version": "0.32.0", "engine": {}}}

    assert engine_answered(sglang)["version"] == "SGLang 0.5.23"
    assert engine_answered(sglang)["label"] == "SGLang server"
    assert engine_answered(in_process)["version"] == "vLLM 0.32.0"
