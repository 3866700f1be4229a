"""The tiny model builder: deterministic, idempotent, peaked, with a chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from workers.tiny_model import GENCONFIG_DEFAULTS, MARKER, build_tiny_model, is_built  # noqa: E402

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models"))


def test_builds_a_loadable_llama_with_chat_template(built: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    assert built.name == "tiny-llama"
    config = AutoConfig.from_pretrained(built)
    assert config.model_type == "llama" and config.head_dim == 64  # a vLLM CPU head size
    tok = AutoTokenizer.from_pretrained(built)
    assert len(tok) == config.vocab_size
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    text = tok.decode(ids)
    assert text.startswith("<s><|im_start|>user\nhi<|im_end|>") and text.endswith("assistant\n")
    assert tok("hello")["input_ids"][0] == tok.bos_token_id


def test_rebuilding_is_a_no_op(built: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in built.iterdir()}
    assert build_tiny_model(built.parent) == built
    assert {p.name: p.stat().st_mtime_ns for p in built.iterdir()} == before
    assert is_built(built, "base")


def test_builds_are_deterministic(built: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path)
    a = json.loads((built / MARKER).read_text())["files"]
    b = json.loads((again / MARKER).read_text())["files"]
    assert a == b


def test_a_damaged_build_is_rebuilt(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path)
    (model / "model.safetensors").write_bytes(b"broken")
    assert not is_built(model, "base")
    build_tiny_model(tmp_path)
    assert is_built(model, "base")


def test_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "tiny-llama").mkdir()
    (tmp_path / "tiny-llama" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_tiny_model(tmp_path)
    assert (tmp_path / "tiny-llama" / "mine.txt").read_text() == "keep me"


def test_genconfig_variant_has_non_neutral_defaults(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path, variant="genconfig")
    gen = json.loads((model / "generation_config.json").read_text())
    for key, value in GENCONFIG_DEFAULTS.items():
        assert gen[key] == value


def test_next_token_distributions_are_peaked(built: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.prompts import builtin, render

    tok = AutoTokenizer.from_pretrained(built)
    model = AutoModelForCausalLM.from_pretrained(built, dtype=torch.float32)
    top = []
    with torch.inference_mode():
        for ids in render(builtin()[:12], tok):
            probs = model(torch.tensor([ids])).logits[0].softmax(-1)
            top.append(probs.max(-1).values)
    p_max = torch.cat(top)
    median = float(p_max.median())
    assert 0.3 <= median <= 0.9, median
    # top-p 0.9 must actually truncate: the best token alone is usually below 0.9.
    assert float((p_max < 0.9).float().mean()) > 0.5
