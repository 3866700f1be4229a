"""`python -m workers.replay`: the flags it has always had still spell the same spec, and the
flags generated from ReplaySpec leave the replay's own defaults alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.replay.cli import build_parser, main, spec_from_args
from workers.reporting import UserError
from workers.specs import ReplaySpec

pytestmark = pytest.mark.unit


def spec(*argv: str) -> ReplaySpec:
    return spec_from_args(build_parser().parse_args(list(argv)))


def test_no_flags_give_the_spec_defaults() -> None:
    assert spec() == ReplaySpec()
    assert spec().sampling.max_tokens == 24 and spec().sampling.logprobs_topk == 0


def test_one_sampling_flag_changes_that_field_only() -> None:
    s = spec("--temperature", "0.5")
    assert s.sampling.temperature == 0.5
    assert (s.sampling.max_tokens, s.sampling.logprobs_topk) == (24, 0)


def test_the_replay_flags_of_old_spell_the_same_spec() -> None:
    s = spec(
        "--model",
        "m",
        "--updates",
        "2",
        "--seed",
        "7",
        "--step-size",
        "0.1",
        "--dtype",
        "float32",
        "--no-reset-prefix-cache",
        "--update-mode",
        "in_flight",
        "--pause-mode",
        "abort",
        "--load-mode",
        "direct",
        "--max-tokens",
        "8",
    )
    assert s.model == "m" and s.num_updates == 2
    assert s.source.model_dump() == {"kind": "synthetic", "seed": 7, "step_size": 0.1}
    assert s.engine.dtype == s.trainer.dtype == "float32"
    assert not s.reset_prefix_cache
    assert (s.update_mode, s.pause_mode, s.load_mode) == ("in_flight", "abort", "direct")
    assert s.sampling.max_tokens == 8 and s.sampling.seed == 0  # --seed is the trajectory's


def test_section_flags_win_over_dtype_and_the_sampling_seed_keeps_its_long_form() -> None:
    s = spec("--dtype", "float32", "--trainer-dtype", "bfloat16", "--sampling-seed", "3")
    assert (s.engine.dtype, s.trainer.dtype, s.sampling.seed) == ("float32", "bfloat16", 3)


def test_checkpoints_give_one_update_per_directory_unless_told() -> None:
    s = spec("--checkpoints", "a", "b", "c")
    assert s.source.model_dump() == {"kind": "checkpoints", "dirs": ["a", "b", "c"]}
    assert s.updates == 3
    assert spec("--checkpoints", "a", "b", "c", "--updates", "2").updates == 2


def test_contradicting_flags_are_user_errors() -> None:
    with pytest.raises(UserError, match="do not go with --checkpoints"):
        spec("--checkpoints", "a", "--seed", "1")
    with pytest.raises(UserError, match="only 1 checkpoint directories"):
        spec("--checkpoints", "a", "--updates", "3")


def test_the_cli_exits_2_with_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--updates", "0"]) == 2
    assert "num_updates" in capsys.readouterr().err


def test_prompts_come_from_a_jsonl_file_like_the_other_clis(tmp_path: Path) -> None:
    # Issue 11 §4: the replay and checklist CLIs take --prompts FILE.jsonl as compare does.
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"prompt": "The capital of France is"}\n'
        '{"messages": [{"role": "user", "content": "Hi"}]}\n',
        encoding="utf-8",
    )
    spec = spec_from_args(build_parser().parse_args(["--prompts", str(path)]))
    assert spec.prompt_items() == [
        {"prompt": "The capital of France is"},
        {"messages": [{"role": "user", "content": "Hi"}]},
    ]
    texts = spec_from_args(build_parser().parse_args(["--prompt", "a", "--prompt", "b"]))
    assert texts.prompt_items() == [{"prompt": "a"}, {"prompt": "b"}]
    with pytest.raises(UserError, match="not both"):
        spec_from_args(build_parser().parse_args(["--prompt", "a", "--prompts", str(path)]))
    with pytest.raises(ValueError, match="prompt 1"):
        ReplaySpec(prompts=[{"nope": 1}])
