"""The tiny model builder: deterministic, idempotent, peaked, with a chat template, and one
variant per model family with that family's quirks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from workers.tiny_model import (  # noqa: E402
    FAMILIES,
    GENCONFIG_DEFAULTS,
    MARKER,
    QWEN2_GENERATION_DEFAULTS,
    VARIANTS,
    build_tiny_model,
    is_built,
    recipe_hash,
)

pytestmark = pytest.mark.unit


NEW_FAMILIES = ("qwen2", "qwen3")
# The recipe hashes of the Llama builds as they were before the other families existed: a
# change here rebuilds every var/models/tiny-llama* and changes what earlier results ran on.
LLAMA_RECIPES = {
    "base": "fb21943ef4430720b1fe59cb3b8bdce1714f98acafcc6bfc9d8e0d161c0477da",
    "genconfig": "c13d279403f27b0b2f9dac54d098bf90328e676c19b2dd8266a7ad4bf0f60e89",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("families")
    return {v: build_tiny_model(out, variant=v) for v in ("base", *NEW_FAMILIES)}


def safetensors_keys(model: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


def next_token_stats(model_dir: Path) -> tuple[float, float, float]:
    """(median top-token probability, fraction of positions below 0.9, fraction of positions
    whose most likely next token is the current input token), over 12 built-in prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.prompts import builtin, render

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    top, repeats = [], []
    with torch.inference_mode():
        for ids in render(builtin()[:12], tok):
            probs = model(torch.tensor([ids])).logits[0].softmax(-1)
            top.append(probs.max(-1).values)
            repeats.append(probs.argmax(-1) == torch.tensor(ids))
    p_max = torch.cat(top)
    return (
        float(p_max.median()),
        float((p_max < 0.9).float().mean()),
        float(torch.cat(repeats).float().mean()),
    )


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


@pytest.mark.parametrize("variant", ["base", *NEW_FAMILIES])
def test_next_token_distributions_are_peaked(families: dict[str, Path], variant: str) -> None:
    median, below_09, repeats = next_token_stats(families[variant])
    assert 0.3 <= median <= 0.9, median
    # top-p 0.9 must actually truncate: the best token alone is usually below 0.9.
    assert below_09 > 0.5
    # Not a model that only echoes its input (what an untrained tied head does).
    assert repeats < 0.1, repeats


# --- the model families --------------------------------------------------------------------


def test_llama_recipes_are_unchanged() -> None:
    assert {v: recipe_hash(v, 0) for v in LLAMA_RECIPES} == LLAMA_RECIPES


def test_every_variant_has_its_own_recipe_and_directory() -> None:
    from workers.tiny_model import default_name

    assert set(VARIANTS) >= {"base", "genconfig", *NEW_FAMILIES}
    assert len({recipe_hash(v, 0) for v in VARIANTS}) == len(VARIANTS)
    assert len({default_name(v) for v in VARIANTS}) == len(VARIANTS)
    assert default_name("qwen2") == "tiny-qwen2" and default_name("qwen3", 2) == "tiny-qwen3-s2"


@pytest.mark.parametrize("variant", ["base", *NEW_FAMILIES])
def test_each_family_loads_in_transformers_with_every_weight(
    families: dict[str, Path], variant: str
) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir = families[variant]
    family = FAMILIES[variant]
    config = AutoConfig.from_pretrained(model_dir)
    assert config.model_type == family.model_type
    assert config.architectures == [family.architecture]
    assert config.vocab_size == family.vocab_size
    assert config.num_key_value_heads == family.kv_heads
    assert config.hidden_size // config.num_attention_heads == 64  # a vLLM CPU head size
    assert getattr(config, "head_dim", 64) == 64
    tok = AutoTokenizer.from_pretrained(model_dir)
    # Every token id has an embedding row and every row a token.
    assert len(tok) == config.vocab_size
    assert max(tok.get_vocab().values()) == config.vocab_size - 1
    model, info = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, output_loading_info=True
    )
    assert type(model).__name__ == family.architecture
    assert not any(info.values()), info  # no missing, unexpected or mismatched weight


def test_qwen2_is_tied_with_biases_and_an_odd_vocabulary(families: dict[str, Path]) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = families["qwen2"]
    config = AutoConfig.from_pretrained(model_dir)
    assert config.tie_word_embeddings is True
    assert config.vocab_size % 64 != 0  # vLLM pads its embedding rows to a multiple of 64
    keys = safetensors_keys(model_dir)
    assert "lm_head.weight" not in keys
    for i in range(config.num_hidden_layers):
        for proj in ("q_proj", "k_proj", "v_proj"):
            assert f"model.layers.{i}.self_attn.{proj}.bias" in keys
        assert f"model.layers.{i}.self_attn.o_proj.bias" not in keys
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # Tied: the output head is the input embedding, one tensor.
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    bias = model.model.layers[0].self_attn.k_proj.bias.detach()
    assert float(bias.abs().mean()) > 0.1


def test_qwen3_has_query_and_key_norms_and_an_untied_head(families: dict[str, Path]) -> None:
    from safetensors import safe_open
    from transformers import AutoConfig

    model_dir = families["qwen3"]
    config = AutoConfig.from_pretrained(model_dir)
    assert config.tie_word_embeddings is False
    keys = safetensors_keys(model_dir)
    assert "lm_head.weight" in keys
    assert not any(k.endswith(".bias") for k in keys)
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        for i in range(config.num_hidden_layers):
            for norm in ("q_norm", "k_norm"):
                w = f.get_tensor(f"model.layers.{i}.self_attn.{norm}.weight")
                assert w.shape == (64,)
                assert float((w.float() - 1).abs().max()) > 0.1  # not the identity


@pytest.mark.parametrize("variant", NEW_FAMILIES)
def test_qwen_tokenizers_have_no_bos_and_chatml(families: dict[str, Path], variant: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(families[variant])
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert tok.bos_token is None
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok("hello")["input_ids"] == tok("hello", add_special_tokens=False)["input_ids"]
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_generation_defaults_per_family(families: dict[str, Path]) -> None:
    qwen2 = json.loads((families["qwen2"] / "generation_config.json").read_text())
    for key, value in QWEN2_GENERATION_DEFAULTS.items():
        assert qwen2[key] == value
    qwen3 = json.loads((families["qwen3"] / "generation_config.json").read_text())
    assert not set(qwen3) & {"temperature", "top_p", "top_k", "repetition_penalty"}


@pytest.mark.parametrize("variant", NEW_FAMILIES)
def test_family_builds_are_deterministic_and_idempotent(
    families: dict[str, Path], variant: str, tmp_path: Path
) -> None:
    model_dir = families[variant]
    before = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    assert build_tiny_model(model_dir.parent, variant=variant) == model_dir
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == before
    again = build_tiny_model(tmp_path, variant=variant)
    a = json.loads((model_dir / MARKER).read_text())
    b = json.loads((again / MARKER).read_text())
    assert a["files"] == b["files"] and a["recipe"] == recipe_hash(variant, 0)
    assert is_built(again, variant) and not is_built(again, "base")
