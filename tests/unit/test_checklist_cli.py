"""`python -m workers.checklist`'s flags: generated from ChecklistSpec, plus the short forms
(`--dtype`, `--checks a,b`, `--no-replay`, `--no-in-flight`). Parsing only, no engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.checklist.cli import build_parser, spec_from_args
from workers.reporting import UserError
from workers.specs import CHECKS, ChecklistSpec

pytestmark = pytest.mark.unit


def spec_of(*argv: str) -> ChecklistSpec:
    return spec_from_args(build_parser().parse_args(list(argv)))


def test_no_flags_is_the_specs_default() -> None:
    assert spec_of() == ChecklistSpec()


def test_a_sampling_flag_keeps_the_checklists_other_sampling_defaults() -> None:
    s = spec_of("--temperature", "1.0", "--top-k", "20", "--max-tokens", "8")
    default = ChecklistSpec().sampling
    assert (s.sampling.temperature, s.sampling.top_k, s.sampling.max_tokens) == (1.0, 20, 8)
    assert s.sampling.top_p == default.top_p == 0.9
    assert s.sampling.logprobs_topk == default.logprobs_topk


def test_short_forms() -> None:
    s = spec_of(
        "--model",
        "/m",
        "--num-prompts",
        "4",
        "--dtype",
        "float16",
        "--checks",
        "fp32_head, processed_logprobs",
        "--no-replay",
        "--no-in-flight",
        "--replay-updates",
        "3",
        "--threshold",
        "warn_abs_diff_mean=0.05",
        "--min-p",
        "0.05",
        "--repetition-penalty",
        "1.1",
    )
    assert (s.model, s.num_prompts) == ("/m", 4)
    assert s.engine.dtype == s.trainer.dtype == "float16"
    assert s.checks == ["processed_logprobs", "fp32_head"]
    assert not s.include_replay and not s.include_in_flight and s.replay_updates == 3
    assert s.thresholds == {"warn_abs_diff_mean": 0.05}
    assert (s.sampling.min_p, s.sampling.repetition_penalty) == (0.05, 1.1)


def test_one_side_dtype_wins_over_dtype() -> None:
    s = spec_of("--dtype", "float16", "--trainer-dtype", "float32")
    assert (s.engine.dtype, s.trainer.dtype) == ("float16", "float32")


def test_generated_long_forms_still_work() -> None:
    s = spec_of("--no-include-replay", "--engine-enable-prefix-caching")
    assert not s.include_replay and s.engine.enable_prefix_caching
    assert list(spec_of("--include-replay").checks) == list(CHECKS)


def test_prompt_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n', encoding="utf-8")
    s = spec_of("--prompts", str(path))
    assert s.prompt_set == "mine.jsonl" and s.prompts is not None and len(s.prompts) == 2


def test_bad_values_are_user_errors_in_the_specs_wording() -> None:
    with pytest.raises(UserError, match=r"checks\.0"):
        spec_of("--checks", "bogus")
    with pytest.raises(UserError, match="sampling.temperature"):
        spec_of("--temperature", "-1")
    with pytest.raises(UserError, match="KEY=VALUE"):
        spec_of("--threshold", "nope")


def test_json_and_markdown_are_output_options_not_spec_fields() -> None:
    args = build_parser().parse_args(["--json"])
    assert args.json and spec_from_args(args) == ChecklistSpec()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--json", "--markdown"])


def test_help_shows_the_checklists_sampling_defaults() -> None:
    text = build_parser().format_help()
    assert "--dtype" in text and "--no-replay" in text and "--checks" in text
    temperature = next(a for a in build_parser()._actions if a.dest == "sampling.temperature")
    assert temperature.help is not None and "(default: 0.7)" in temperature.help


def test_every_cli_takes_dtype_for_both_sides_and_a_section_flag_wins() -> None:
    from workers.compare import build_parser as compare_parser
    from workers.compare import spec_from_args as compare_spec

    s = compare_spec(compare_parser().parse_args(["--dtype", "float32", "--trainer-dtype", "auto"]))
    assert (s.engine.dtype, s.trainer.dtype) == ("float32", "auto")
