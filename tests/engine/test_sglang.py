"""The SGLang client against a real SGLang 0.5.23 server (CPU engine) on the tiny Llama, and
SGLang's logprobs against the transformers trainer on the same tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.engine.sglang_support import sglang_python, start_server
from workers.engines.sglang import SGLangClient, SGLangError
from workers.specs import SamplingSettings, TrainerSettings

PROMPTS = [[1, 50 + i, 60 + 2 * i, 70 + 3 * i, 80 + i] for i in range(8)]
# The server runs in float32 (sglang_support) against the float32 trainer: measured max
# |lr - lt| below 5e-5 here, so any other model, stale weights or wrong tokens show. (In bf16
# on both sides the gap is the kernels': mean 0.02, max 0.14, like vLLM's; README.)
LOGPROB_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with other weights (seed 1): what a weight update loads."""
    from workers.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models-b"), variant="base", seed=1)


@pytest.fixture(scope="module")
def sglang(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SGLangClient]:
    sglang_python()
    log = tmp_path_factory.mktemp("sglang") / "server.log"
    with start_server(tiny_model, log) as url:
        with SGLangClient(url) as client:
            yield client


def trainer_lt(model: Path, prompts: list[list[int]], responses: list[list[int]]) -> np.ndarray:
    from workers import trainer

    model_t, _ = trainer.get_trainer(
        str(model), TrainerSettings(dtype="float32", device="cpu", attn_implementation="eager")
    )
    return trainer.score(model_t, prompts, responses, trainer.Processing(kind="raw")).lt


def test_server_info_names_engine_version_and_settings(sglang: SGLangClient) -> None:
    info = sglang.server_info()

    assert (info.engine, info.version, info.dtype, info.device) == (
        "sglang", "0.5.23", "float32", "cpu",
    )  # fmt: skip
    assert info.prefix_caching and not info.deterministic
    assert info.attention_backend == "torch_native"
    assert "logprobs_mode" in info.unknown and "seed" in info.unknown


def test_generate_returns_each_samples_tokens_and_logprobs(sglang: SGLangClient) -> None:
    samples = sglang.generate(
        PROMPTS[:3], SamplingSettings(temperature=1.0, max_tokens=6, n=2), prompt_logprobs=True
    )

    assert [s.prompt_index for s in samples] == [0, 0, 1, 1, 2, 2]
    for s in samples:
        assert len(s.token_ids) == len(s.logprobs) == 6 and s.finish_reason == "length"
        assert all(lp <= 0.0 for lp in s.logprobs)
        assert s.prompt_logprobs is not None and len(s.prompt_logprobs) == 5
        assert s.prompt_logprobs[0] is None and all(lp is not None for lp in s.prompt_logprobs[1:])


def test_logprobs_match_the_trainer_on_the_same_tokens(
    sglang: SGLangClient, tiny_model: Path
) -> None:
    samples = sglang.generate(PROMPTS, SamplingSettings(temperature=1.0, max_tokens=16))
    lr = np.concatenate([s.logprobs for s in samples])

    lt = trainer_lt(tiny_model, PROMPTS, [s.token_ids for s in samples])

    assert len(lr) == len(lt) == 8 * 16
    assert float(np.max(np.abs(lr - lt))) < LOGPROB_TOLERANCE


def test_weight_update_from_disk_serves_the_new_weights(
    sglang: SGLangClient, tiny_model: Path, model_b: Path
) -> None:
    # Prompt logprobs of a prompt the radix cache already holds: a stale cache would serve
    # the old weights' KV for it.
    sampling = SamplingSettings(temperature=1.0, max_tokens=4)
    before = sglang.generate(PROMPTS[:1], sampling, prompt_logprobs=True)[0]
    try:
        sglang.update_weights_from_disk(str(model_b), weight_version="b")
        after = sglang.generate(PROMPTS[:1], sampling, prompt_logprobs=True)[0]
        assert sglang.server_info().weight_version == "b"
    finally:
        sglang.update_weights_from_disk(str(tiny_model), weight_version="a")

    lt_prompt = trainer_lt(model_b, [PROMPTS[0][:1]], [PROMPTS[0][1:]])
    lr_prompt = np.array(after.prompt_logprobs[1:], dtype=float)  # type: ignore[index]
    assert float(np.max(np.abs(lr_prompt - lt_prompt))) < LOGPROB_TOLERANCE
    assert before.prompt_logprobs != after.prompt_logprobs


def test_update_from_a_missing_checkpoint_is_a_clear_error(sglang: SGLangClient) -> None:
    with pytest.raises(SGLangError, match="update_weights_from_disk|could not load"):
        sglang.update_weights_from_disk("/nonexistent/checkpoint")
    # The weight-update session was closed: the server still generates.
    assert sglang.generate(PROMPTS[:1], SamplingSettings(max_tokens=2))[0].token_ids


def test_pause_resume_and_flush_cache(sglang: SGLangClient) -> None:
    sglang.pause("abort")
    sglang.resume()
    sglang.flush_cache()

    assert len(sglang.generate(PROMPTS[:2], SamplingSettings(max_tokens=3))) == 2


def test_a_tied_head_qwen2_matches_the_trainer(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Qwen2: tied embeddings (no lm_head in the checkpoint), q/k/v biases, GQA, a vocabulary
    of 390 that SGLang pads: its own server, the same agreement as the Llama."""
    sglang_python()
    model = tiny_models["qwen2"]
    with start_server(model, tmp_path / "server.log") as url:
        with SGLangClient(url) as client:
            samples = client.generate(PROMPTS, SamplingSettings(temperature=1.0, max_tokens=8))
    lr = np.concatenate([s.logprobs for s in samples])

    lt = trainer_lt(model, PROMPTS, [s.token_ids for s in samples])

    assert float(np.max(np.abs(lr - lt))) < LOGPROB_TOLERANCE


def test_unreachable_server_is_a_clear_error() -> None:
    with SGLangClient("http://127.0.0.1:9", timeout=5) as client:
        with pytest.raises(SGLangError, match=r"http://127.0.0.1:9 unreachable \(/generate\)"):
            client.generate(PROMPTS[:1], SamplingSettings(max_tokens=1))
