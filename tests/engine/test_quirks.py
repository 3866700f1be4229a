"""Real checkpoints, real quirks (issue 11 §4): a pad id outside the embedding, a base model
with no chat template.

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

from workers.reporting import NullReporter

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
