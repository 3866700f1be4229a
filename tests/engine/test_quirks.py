"""Real checkpoints, real quirks (issue 11 §4): a pad id outside the embedding, a base model
with no chat template, prompts longer than the engine's context.

Each quirk is a copy of the tiny model with one thing changed, as real checkpoints come.
Small runs (a few tokens per sequence): the engine build is the cost.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.engine


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
