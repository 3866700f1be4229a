"""Build the tiny models that the tests and the demo run through vLLM and the trainer.

Nothing is downloaded: the byte-level BPE tokenizer is trained here on a small built-in
corpus, and the weights are drawn from a seeded generator and scaled so that next-token
distributions are peaked like a real language model's (top-p actually truncates, logprobs
of sampled tokens are mostly between -3 and 0). Head dim is 64 because vLLM's CPU attention
supports only head sizes 32, 64, 80, 96, 112 and 128.

Variants, one model family each (`FAMILIES`), so that the engine tests meet the quirks real
checkpoints bring into vLLM and the trainer:

- "base": Llama-style, untied lm_head, vocabulary 1024; "genconfig": the same model with a
  non-neutral generation_config.json;
- "qwen2": Qwen2ForCausalLM, input and output embeddings tied (no lm_head.weight in the
  checkpoint), q/k/v biases, grouped-query attention, a vocabulary of 390 (not a multiple of
  64, so vLLM pads its embedding rows) and Qwen2.5-Instruct-like sampling defaults;
- "qwen3": Qwen3ForCausalLM, RMSNorm on the queries and keys (non-unit weights), grouped-query
  attention, untied.

    python -m workers.tiny_model --out var/models            # every variant
    python -m workers.tiny_model --out var/models --variant qwen2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

Variant = Literal["base", "genconfig", "qwen2", "qwen3"]
VARIANTS: tuple[Variant, ...] = ("base", "genconfig", "qwen2", "qwen3")

# Bump when the recipe changes, so that existing builds are rebuilt rather than reused.
BUILD_VERSION = 1
MARKER = ".parity-tiny-model.json"

VOCAB_SIZE = 1024
HIDDEN = 128
INTERMEDIATE = 256
LAYERS = 2
HEADS = 2
HEAD_DIM = 64
MAX_POSITIONS = 2048
# Std of the lm_head rows. Hidden states leave the final RMSNorm with unit RMS, so a logit's
# std is about LM_HEAD_STD * sqrt(HIDDEN); this value gives a typical top-token probability
# of about 0.3-0.9 (see tests/unit/test_tiny_model.py).
LM_HEAD_STD = 0.45

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, IM_END]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The Qwen families' tokenizer is Qwen's own: no BOS, <|endoftext|> pads, <|im_end|> ends a
# turn, ChatML without a BOS, Qwen's pre-tokenizer regex and NFC (transformers loads a
# qwen2/qwen3 checkpoint's tokenizer as Qwen2Tokenizer, which rebuilds exactly that pipeline
# from the vocabulary and merges, and adds <|endoftext|> if the vocabulary lacks it).
ENDOFTEXT = "<|endoftext|>"
QWEN_SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
QWEN_CHAT_TEMPLATE = CHAT_TEMPLATE.removeprefix("{{ bos_token }}")
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The non-neutral sampling defaults of the "genconfig" variant: what vLLM's default
# generation_config="auto" silently applies to every request that does not set them.
GENCONFIG_DEFAULTS = {
    "temperature": 0.6,
    "top_p": 0.8,
    "top_k": 20,
    "repetition_penalty": 1.1,
}
# What Qwen2.5-Instruct's generation_config.json ships (the "qwen2" variant's).
QWEN2_GENERATION_DEFAULTS = {
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "repetition_penalty": 1.05,
}
GENERATION_DEFAULTS: dict[Variant, dict[str, float | int]] = {
    "genconfig": GENCONFIG_DEFAULTS,
    "qwen2": QWEN2_GENERATION_DEFAULTS,
}


@dataclass(frozen=True)
class Family:
    """The architecture of a variant: the quirks of one real model family, at tiny size."""

    model_type: str
    architecture: str
    tokenizer: Literal["llama", "qwen"]
    vocab_size: int
    kv_heads: int
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool


LLAMA = Family("llama", "LlamaForCausalLM", "llama", VOCAB_SIZE, HEADS, False, False, False)
# 390 = 6 mod 64: vLLM pads the vocabulary rows of its embedding (and so of a tied head) to a
# multiple of 64, and the padded logits must never reach a logprob.
QWEN2 = Family("qwen2", "Qwen2ForCausalLM", "qwen", 390, 1, True, True, False)
QWEN3 = Family("qwen3", "Qwen3ForCausalLM", "qwen", VOCAB_SIZE, 1, False, False, True)
FAMILIES: dict[Variant, Family] = {
    "base": LLAMA,
    "genconfig": LLAMA,
    "qwen2": QWEN2,
    "qwen3": QWEN3,
}
# Std of the q/k/v biases: as large as a projection's output (about 1 per element), so that
# a bias dropped or double-counted on either side moves the logits visibly.
QKV_BIAS_STD = 0.5
# q/k RMSNorm weights are 1 + N(0, QK_NORM_STD): not the identity, so a norm skipped or
# applied with the wrong weight shows.
QK_NORM_STD = 0.2

CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single
step. Reinforcement learning trains a policy by sampling rollouts and scoring them with a
reward model. The trainer computes the log probability of every sampled token, and the rollout
engine returns its own.
When the two disagree, the importance ratio drifts away from one and the policy update becomes
biased. Temperature scales the logits before the softmax; top-p keeps the smallest set of
tokens whose mass reaches p; top-k keeps the k most likely tokens; min-p drops tokens far less
likely than the best one.
Once upon a time there was a small robot who lived in a lighthouse by the sea. Every night it
counted the ships that passed and wrote their names in a notebook. One stormy evening a ship
came too close. The robot turned the great lamp toward the rocks and the sailors steered away
just in time. In the morning the captain climbed the stairs to thank the robot, and they became
friends.
Water boils at one hundred degrees Celsius at sea level. The boiling point drops as altitude
rises, because the air pressure is lower. Ice melts at zero degrees. Salt water freezes at a
lower temperature. Photosynthesis turns sunlight, water and carbon dioxide into sugar and
oxygen inside the leaves of plants.
The heart pumps blood through arteries and veins; the lungs move oxygen into the blood.
def add(a, b):
    return a + b

for i in range(10):
    print(i * i)

class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()

SELECT name, count(*) FROM users GROUP BY name ORDER BY count(*) DESC;
What is the capital of France? The capital of France is Paris. What is the capital of Japan?
The capital of Japan is Tokyo. What is two plus two? Two plus two is four. What is seven times
eight? Seven times eight is fifty-six. Translate to French: good morning. Bonjour. Translate to
Spanish: thank you. Gracias.
Summarize the following paragraph in one sentence. Write a short poem about the autumn rain.
Explain why the sky is blue. Sunlight is scattered by the molecules of the air, and blue light
is scattered more than red light because it has a shorter wavelength. List three fruits: apple,
banana, cherry. List three colors: red, green, blue.
The meeting is scheduled for Monday at ten o'clock in the main conference room on the second
floor. Please remember to bring your laptop, the quarterly report, and a list of questions for
the team. Dear customer, thank you for your order. Your package will arrive within three to
five business days. If you have any questions, please reply to this email or call our support
line.
The mountain path was steep and narrow. Halfway up, the hikers stopped to rest beside a cold
stream, and watched the clouds drift slowly over the valley below. Numbers: 0 1 2 3 4 5 6 7 8 9
10 11 12 13 14 15 16 17 18 19 20 32 64 128 256 512 1024 2048. Gradient descent updates the
weights in the direction that lowers the loss. The learning rate sets the size of each step.
Too large a step diverges; too small a step wastes compute.
A language model predicts the next token from the tokens before it. Sampling from that
distribution, one token at a time, produces text. Greedy decoding always picks the most likely
token. The library opens at nine and closes at six. Children read picture books in the corner
by the window, while students study at the long wooden tables under the old brass lamps.
Chapter one. It was a bright cold day in April, and the clocks were striking thirteen. User:
How do I reverse a list in Python? Assistant: Use my_list.reverse() or reversed(my_list). User:
What is the weather like today? Assistant: I cannot check live weather, but I can explain
forecasts. System: You are a helpful, concise assistant. Answer the question and explain your
reasoning briefly.
"""


def default_name(variant: Variant, seed: int = 0) -> str:
    """The directory name a variant is built under inside an output folder."""
    if variant == "base":
        name = "tiny-llama"
    elif FAMILIES[variant] is LLAMA:
        name = f"tiny-llama-{variant}"
    else:
        name = f"tiny-{variant}"
    return name if seed == 0 else f"{name}-s{seed}"


def recipe_hash(variant: Variant, seed: int) -> str:
    """Hash of everything that determines the build's content."""
    family = FAMILIES[variant]
    recipe: dict[str, Any] = {
        "build_version": BUILD_VERSION,
        "variant": variant,
        "seed": seed,
        "shape": [
            family.vocab_size,
            HIDDEN,
            INTERMEDIATE,
            LAYERS,
            HEADS,
            HEAD_DIM,
            MAX_POSITIONS,
        ],
        "lm_head_std": LM_HEAD_STD,
        "special": SPECIAL_TOKENS if family.tokenizer == "llama" else QWEN_SPECIAL_TOKENS,
        "chat_template": CHAT_TEMPLATE if family.tokenizer == "llama" else QWEN_CHAT_TEMPLATE,
        "genconfig": GENERATION_DEFAULTS.get(variant),
        "corpus": hashlib.sha256(CORPUS.encode()).hexdigest(),
    }
    if family is not LLAMA:
        # Only the later families carry these keys: the Llama builds' hashes (and so every
        # existing var/models build) stay what they were.
        recipe["family"] = asdict(family)
        recipe["quirks"] = {
            "qkv_bias_std": QKV_BIAS_STD,
            "qk_norm_std": QK_NORM_STD,
            "pretokenize": QWEN_PRETOKENIZE_REGEX,
        }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def is_built(model_dir: Path, variant: Variant, seed: int = 0) -> bool:
    """True when `model_dir` holds an intact build of exactly this recipe."""
    try:
        marker = json.loads((model_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("recipe") != recipe_hash(variant, seed):
        return False
    files = marker.get("files", {})
    return bool(files) and all(
        (model_dir / name).is_file() and _sha256(model_dir / name) == digest
        for name, digest in files.items()
    )


def build_tiny_model(out_dir: str | Path, *, variant: Variant = "base", seed: int = 0) -> Path:
    """Build the tiny model under `out_dir/<default_name(variant, seed)>` and return its path.

    Deterministic for a given (variant, seed) and idempotent: when the directory already
    holds this exact build (checked against the content hashes in its marker file) nothing
    is written. The build is assembled in a temporary directory and moved into place, so a
    reader never sees a half-written model.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    out = Path(out_dir)
    model_dir = out / default_name(variant, seed)
    if is_built(model_dir, variant, seed):
        return model_dir
    if model_dir.exists() and not (model_dir / MARKER).exists():
        raise FileExistsError(
            f"{model_dir} exists and is not a tiny-model build; refusing to overwrite it"
        )
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.", dir=out))
    try:
        _write_model(tmp, variant, seed)
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        marker = {
            "recipe": recipe_hash(variant, seed),
            "variant": variant,
            "seed": seed,
            "files": files,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if model_dir.exists():
            shutil.rmtree(model_dir)
        os.replace(tmp, model_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return model_dir


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train_tokenizer(family: Family) -> Any:
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    # Byte-level, so that any user prompt tokenizes without unknown tokens.
    if family.tokenizer == "qwen":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=family.vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS if family.tokenizer == "llama" else QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    if family.tokenizer == "llama":
        bos_id = tok.token_to_id(BOS)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
        )
    return tok


def _hf_tokenizer(family: Family) -> Any:
    """The transformers tokenizer of `family`, as its hub checkpoints ship it."""
    from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

    raw_tok = _train_tokenizer(family)
    if family.tokenizer == "llama":
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=raw_tok,
            bos_token=BOS,
            eos_token=EOS,
            pad_token=PAD,
            additional_special_tokens=[IM_START, IM_END],
            model_max_length=MAX_POSITIONS,
        )
        tokenizer.chat_template = CHAT_TEMPLATE
        return tokenizer
    bpe = json.loads(raw_tok.to_str())["model"]
    # Qwen's tokenizer has no unknown token (its byte-level alphabet covers every input) and
    # no BOS; the stubs type both as str.
    no_token: Any = None
    merges: Any = [tuple(pair) for pair in bpe["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe["vocab"],
        merges=merges,
        unk_token=no_token,
        bos_token=no_token,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=MAX_POSITIONS,
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def _write_model(model_dir: Path, variant: Variant, seed: int) -> None:
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    family = FAMILIES[variant]
    tokenizer = _hf_tokenizer(family)
    tokenizer.save_pretrained(model_dir)
    vocab = len(tokenizer)
    if vocab != family.vocab_size:
        # Every token id must have an embedding row, and no row may lack a token (vLLM would
        # detokenise a sampled id the tokenizer does not know).
        raise RuntimeError(f"tokenizer has {vocab} tokens, {variant} needs {family.vocab_size}")

    config = _config(family, tokenizer)
    config.architectures = [family.architecture]
    config.save_pretrained(model_dir)

    gen_kwargs: dict[str, object] = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if variant in GENERATION_DEFAULTS:
        gen_kwargs.update(do_sample=True, **GENERATION_DEFAULTS[variant])
    GenerationConfig(**gen_kwargs).save_pretrained(model_dir)

    save_file(
        _weights(family, seed), str(model_dir / "model.safetensors"), metadata={"format": "pt"}
    )


def _config(family: Family, tokenizer: Any) -> Any:
    """The transformers config of `family` (its own config class, as a hub checkpoint has)."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common: dict[str, Any] = {
        "vocab_size": family.vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": family.kv_heads,
        "max_position_embeddings": MAX_POSITIONS,
        "tie_word_embeddings": family.tie_word_embeddings,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "dtype": "bfloat16",
    }
    if family is LLAMA:
        return LlamaConfig(head_dim=HEAD_DIM, rms_norm_eps=1e-5, **common)
    if family is QWEN2:
        # Qwen2's head dim is hidden / heads (no head_dim field): 128 / 2 = 64. Its q/k/v
        # biases are built in, not a config switch.
        assert HIDDEN // HEADS == HEAD_DIM
        return Qwen2Config(rms_norm_eps=1e-6, use_sliding_window=False, **common)
    if family is QWEN3:
        return Qwen3Config(
            head_dim=HEAD_DIM,
            rms_norm_eps=1e-6,
            attention_bias=family.qkv_bias,
            use_sliding_window=False,
            **common,
        )
    raise ValueError(f"no config for family {family.model_type!r}")


def _weights(family: Family, seed: int) -> dict[str, Any]:
    """Seeded weights in the HF checkpoint layout of `family`, stored as bfloat16.

    The draws for the Llama family come in the order they always have (the quirks' extra
    tensors are drawn only for the families that have them), so its builds stay the same.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    vocab = family.vocab_size
    q_out, kv_out = HEADS * HEAD_DIM, family.kv_heads * HEAD_DIM

    def normal(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * std).to(torch.bfloat16)

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=torch.bfloat16)

    # A tied embedding is also the output head, so it takes the head's scale; the input side
    # does not mind, every layer normalises its input first.
    embed_std = LM_HEAD_STD if family.tie_word_embeddings else 1.0
    w: dict[str, torch.Tensor] = {"model.embed_tokens.weight": normal(vocab, HIDDEN, std=embed_std)}
    attn_std = HIDDEN**-0.5
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = ones(HIDDEN)
        w[p + "post_attention_layernorm.weight"] = ones(HIDDEN)
        w[p + "self_attn.q_proj.weight"] = normal(q_out, HIDDEN, std=attn_std)
        w[p + "self_attn.k_proj.weight"] = normal(kv_out, HIDDEN, std=attn_std)
        w[p + "self_attn.v_proj.weight"] = normal(kv_out, HIDDEN, std=attn_std)
        w[p + "self_attn.o_proj.weight"] = normal(HIDDEN, q_out, std=attn_std)
        w[p + "mlp.gate_proj.weight"] = normal(INTERMEDIATE, HIDDEN, std=attn_std)
        w[p + "mlp.up_proj.weight"] = normal(INTERMEDIATE, HIDDEN, std=attn_std)
        w[p + "mlp.down_proj.weight"] = normal(HIDDEN, INTERMEDIATE, std=INTERMEDIATE**-0.5)
        if family.qkv_bias:
            w[p + "self_attn.q_proj.bias"] = normal(q_out, std=QKV_BIAS_STD)
            w[p + "self_attn.k_proj.bias"] = normal(kv_out, std=QKV_BIAS_STD)
            w[p + "self_attn.v_proj.bias"] = normal(kv_out, std=QKV_BIAS_STD)
        if family.qk_norm:
            w[p + "self_attn.q_norm.weight"] = 1 + normal(HEAD_DIM, std=QK_NORM_STD)
            w[p + "self_attn.k_norm.weight"] = 1 + normal(HEAD_DIM, std=QK_NORM_STD)
    if family.tie_word_embeddings:
        # The residual stream still carries the input token's embedding, and with a tied head
        # that embedding scores itself highest: an untrained tied model mostly repeats its
        # input. Random signs on the final norm's weight decorrelate the two (logit scale
        # unchanged), as training would.
        signs = torch.randint(0, 2, (HIDDEN,), generator=gen) * 2 - 1
        w["model.norm.weight"] = signs.to(torch.bfloat16)
    else:
        w["model.norm.weight"] = ones(HIDDEN)
        w["lm_head.weight"] = normal(vocab, HIDDEN, std=LM_HEAD_STD)
    return {k: v.contiguous() for k, v in w.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.tiny_model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="var/models", help="folder to build the model(s) in")
    parser.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    variants = VARIANTS if args.variant == "all" else (args.variant,)
    for variant in variants:
        print(build_tiny_model(args.out, variant=variant, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
