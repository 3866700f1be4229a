"""Real checkpoints, real quirks (issue 11 §4): a pad id outside the embedding, a base model
with no chat template, prompts longer than the engine's context.

Each quirk is a copy of the tiny model with one thing changed, as real checkpoints come.
Small runs (a few tokens per sequence): the engine build is the cost.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from workers.reporting import NullReporter, UserError

pytestmark = pytest.mark.engine

SAMPLING = {"temperature": 0.7, "max_tokens": 4, "logprobs_topk": 0}
ENGINE = {"dtype": "float32", "logprobs_mode": "processed", "generation_config": "vllm"}
TRAINER = {"dtype": "float32"}


def quirky(tiny_model: Path, out: Path, change: Callable[[Path], None]) -> Path:
    """A copy of the tiny model in `out`, with `change` applied to the copy."""
    shutil.copytree(tiny_model, out)
    change(out)
    return out


def add_pad_without_resizing(path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.add_special_tokens({"pad_token": "<|pad|>"})
    tok.save_pretrained(path)


def remove_chat_template(path: Path) -> None:
    (path / "chat_template.jinja").unlink(missing_ok=True)
    config = path / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def no_template(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quirky(tiny_model, tmp_path_factory.mktemp("quirks") / "base", remove_chat_template)


def compare(model: Path, **spec: Any) -> Any:
    from workers.compare import run_comparison
    from workers.specs import ComparisonSpec

    data = {
        "model": str(model),
        "sampling": SAMPLING,
        "engine": ENGINE,
        "trainer": TRAINER,
        **spec,
    }
    return run_comparison(ComparisonSpec.model_validate(data), NullReporter())


# --- a pad id outside the embedding ---------------------------------------------------------


def test_a_pad_id_outside_the_embedding_is_never_looked_up(
    tiny_model: Path, tmp_path: Path, _engine_session: None
) -> None:
    from workers import trainer
    from workers.specs import TrainerSettings

    path = quirky(tiny_model, tmp_path / "pad", add_pad_without_resizing)
    tm, _ = trainer.get_trainer(str(path), TrainerSettings(dtype="float32", device="cpu"))
    assert tm.tokenizer.pad_token_id >= tm.model.get_input_embeddings().num_embeddings
    prompts, responses = [[1, 40, 41, 42, 43], [1, 50]], [[60, 61], [70, 71, 72]]
    processing = trainer.Processing()
    batch = trainer.score(tm, prompts, responses, processing)  # one padded batch
    alone = [trainer.score(tm, [prompts[i]], [responses[i]], processing) for i in range(2)]
    assert batch.lt.shape == (5,) and np.isfinite(batch.lt).all()
    # Padded positions are masked: padding changes no score.
    np.testing.assert_allclose(batch.lt, np.concatenate([s.lt for s in alone]), atol=1e-5)


# --- a base model with no chat template -----------------------------------------------------


def test_the_builtin_set_on_a_model_without_a_chat_template_renders_chats_as_text(
    no_template: Path, _engine_session: None
) -> None:
    from workers import prompts

    chats = [i for i, item in enumerate(prompts.builtin()) if "messages" in item]
    out = compare(no_template)
    counts, notes = out.result["counts"], out.result["notes"]
    assert counts["prompts"] == len(prompts.builtin())
    assert counts["sequences"] == counts["prompts"]
    (note,) = notes
    assert note.startswith(f"the model's tokenizer has no chat template: {len(chats)} chat")
    assert f"prompts {chats[0] + 1}, " in note and "plain text" in note
    assert out.result["metrics"]["values"]["token_mismatch"] == 0


# --- prompts longer than the engine's context -----------------------------------------------


def test_prompts_too_long_for_max_model_len_are_skipped_with_a_note(
    tiny_model: Path, _engine_session: None
) -> None:
    from transformers import AutoTokenizer

    from workers import prompts

    tok = AutoTokenizer.from_pretrained(tiny_model)
    lens = [len(ids) for ids in prompts.render(prompts.builtin()[:6], tok)]
    out = compare(tiny_model, num_prompts=6, engine={**ENGINE, "max_model_len": 16})
    too_long = [i for i, n in enumerate(lens) if n >= 16]
    assert 0 < len(too_long) < 6, lens
    counts = out.result["counts"]
    assert counts["prompts"] == counts["sequences"] == 6 - len(too_long)
    (note,) = out.result["notes"]
    assert note.startswith(f"skipped {len(too_long)} of 6 prompts (prompts ")
    assert "max_model_len=16" in note
    # The worst sequences still name the prompts they continue.
    kept = [i for i in range(6) if i not in too_long]
    assert {s["prompt_index"] for s in out.result["worst_sequences"]} <= set(kept)


def test_a_prompt_set_with_nothing_short_enough_is_a_user_error(
    tiny_model: Path, _engine_session: None
) -> None:
    long = [{"prompt": "a long prompt " * 20}] * 2
    with pytest.raises(UserError, match="none of the 2 prompts fits .*max_model_len=16"):
        compare(tiny_model, prompts=long, engine={**ENGINE, "max_model_len": 16})


def test_the_checklist_renders_and_skips_the_same_way(
    no_template: Path, _engine_session: None
) -> None:
    from workers.checklist import run_checklist
    from workers.specs import ChecklistSpec

    class Stages:
        def __init__(self) -> None:
            self.messages: list[str] = []

        def stage(self, message: str, progress: float | None = None) -> None:
            self.messages.append(message)

        def step_values(self, step: int, values: Any) -> None:
            pass

    items = [
        {"messages": [{"role": "user", "content": "Say hi."}]},
        {"prompt": "a long prompt " * 20},
        {"prompt": "The capital of France is"},
    ]
    stages = Stages()
    result = run_checklist(
        ChecklistSpec(
            model=str(no_template),
            prompts=items,
            sampling=SAMPLING,
            engine={**ENGINE, "max_model_len": 16},
            trainer=TRAINER,
            checks=["runtime_defaults"],
        ),
        stages,
    )
    assert all(m.ok for m in result.variants), [m.error for m in result.variants]
    assert {m.values["n_sequences"] for m in result.variants} == {2}
    # The checklist report has no notes key: the stage messages say it.
    said = "\n".join(stages.messages)
    assert said.count("the model's tokenizer has no chat template: 1 chat prompt (prompt 1)") == 1
    assert said.count("skipped 1 of 3 prompts (prompt 2)") == 1


def test_a_reused_trainer_takes_the_new_batch_size_and_processing(tiny_model: Path) -> None:
    # The loaded model is reused across jobs whose settings differ only in how it scores; the
    # reused trainer must score with the new settings, not the ones it was loaded with.
    from workers import trainer
    from workers.specs import TrainerSettings

    first, _ = trainer.get_trainer(str(tiny_model), TrainerSettings(batch_size=16))
    again, reused = trainer.get_trainer(
        str(tiny_model), TrainerSettings(batch_size=2, processing="raw")
    )
    assert reused and again is first
    assert again.settings.batch_size == 2 and again.settings.processing == "raw"


def test_a_replay_skips_prompts_too_long_for_the_engine_with_a_note(tiny_model: Path) -> None:
    # Issue 11 §4: prompts longer than the model's context failed the whole replay.
    from workers.replay import run_replay_job

    spec: dict[str, Any] = {
        "model": str(tiny_model),
        "num_updates": 1,
        "engine": {"dtype": "float32", "max_model_len": 64},
        "trainer": {"dtype": "float32"},
        "sampling": {"temperature": 1.0, "max_tokens": 4, "logprobs_topk": 0},
        "measure_prefix_cache": False,
        "prompts": ["The capital of France is", "word " * 200, "Once upon a time"],
    }
    outcome = run_replay_job(spec, NullReporter())
    notes = outcome.result["notes"]
    assert len(notes) == 1 and notes[0].startswith("skipped 1 of 3 prompts (prompt 2)")
    assert len(outcome.result["baseline"]["prompt_tokens"]) == 2
    with pytest.raises(UserError, match="none of the 1 prompts fits"):
        run_replay_job({**spec, "prompts": ["word " * 200]}, NullReporter())


def test_a_seeded_comparison_with_many_samples_runs_on_the_cpu_engine(
    comparison: Callable[..., Any],
) -> None:
    # #17 §10: vLLM rewinds a seeded request's generator when it discards the sample of a
    # partial (chunked) prefill, and CPU generators refuse ("CPU Generator does not use
    # offset"). 32 prompts x n=32 overflow one step's token budget, so prompts get chunked.
    outcome = comparison(num_prompts=None, sampling={"n": 32, "seed": 1, "max_tokens": 8})
    assert outcome.result["counts"]["sequences"] >= 32 * 32
    assert outcome.result["fingerprint"]["engine"]["chunked_prefill"] is False
