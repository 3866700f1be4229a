"""The trainer's processing against vLLM's own sampler, on the same logits.

Runs the installed vLLM V1 `Sampler` (vllm/v1/sample/sampler.py) with processed logprobs of
the whole vocabulary (`max_num_logprobs=-1`) and checks that `workers.trainer.process_logprobs`
returns the same distribution. No engine is built: this is seconds.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402

from workers.trainer import Processing, _penalty_context, process_logprobs  # noqa: E402

pytestmark = pytest.mark.engine

VOCAB = 300
BATCH = 6


def vllm_processed_logprobs(
    logits: torch.Tensor, p: Processing, prompts: list[list[int]], outputs: list[list[int]]
) -> torch.Tensor:
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.logits_processor.builtin import MinPLogitsProcessor
    from vllm.v1.sample.logits_processor.interface import BatchUpdate
    from vllm.v1.sample.metadata import SamplingMetadata
    from vllm.v1.sample.sampler import Sampler

    b = logits.shape[0]
    procs = []
    if p.min_p:
        config = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=b))
        min_p = MinPLogitsProcessor(config, torch.device("cpu"), False)  # type: ignore[arg-type]
        min_p.update_state(
            BatchUpdate(
                batch_size=b,
                removed=[],
                moved=[],
                added=[
                    (i, SamplingParams(min_p=p.min_p), prompts[i], outputs[i]) for i in range(b)
                ],
            )
        )
        procs.append(min_p)
    greedy = p.temperature < 1e-5
    no_penalties = not p.has_penalties
    width = max(len(x) for x in prompts)
    prompt_ids = torch.tensor([x + [VOCAB] * (width - len(x)) for x in prompts])
    meta = SamplingMetadata(
        temperature=torch.full((b,), 0.0 if greedy else p.temperature),
        all_greedy=greedy,
        all_random=not greedy,
        top_p=torch.full((b,), p.top_p) if p.top_p < 1 else None,
        top_k=torch.full((b,), p.top_k, dtype=torch.int32) if 0 < p.top_k < VOCAB else None,
        generators={},
        max_num_logprobs=-1,
        no_penalties=no_penalties,
        prompt_token_ids=None if no_penalties else prompt_ids,
        frequency_penalties=torch.full((b,), p.frequency_penalty),
        presence_penalties=torch.full((b,), p.presence_penalty),
        repetition_penalties=torch.full((b,), p.repetition_penalty),
        output_token_ids=outputs,
        allowed_token_ids_mask=None,
        bad_words_token_ids={},
        logitsprocs=LogitsProcessors(procs),
    )
    out = Sampler(logprobs_mode="processed_logprobs")(logits.clone(), meta)
    return out.logprobs_tensors.logprobs


@pytest.mark.parametrize(
    "processing",
    [
        Processing(kind="processed", temperature=0.7),
        Processing(kind="processed", temperature=0.7, top_p=0.9),
        Processing(kind="processed", temperature=1.2, top_k=25),
        Processing(kind="processed", temperature=0.8, top_k=40, top_p=0.85),
        Processing(kind="processed", temperature=0.6, min_p=0.05),
        Processing(kind="processed", temperature=0.9, min_p=0.02, top_k=60, top_p=0.95),
        Processing(kind="processed", temperature=0.7, top_p=0.9, repetition_penalty=1.3),
        Processing(
            kind="processed",
            temperature=1.0,
            repetition_penalty=0.8,
            frequency_penalty=0.5,
            presence_penalty=-0.3,
            top_k=30,
        ),
        Processing(kind="processed", temperature=0.0, repetition_penalty=1.2),
    ],
    ids=lambda p: (
        f"T{p.temperature}-p{p.top_p}-k{p.top_k}-m{p.min_p}"
        f"-rep{p.repetition_penalty}-f{p.frequency_penalty}"
    ),
)
def test_trainer_processing_equals_vllm_sampler(processing: Processing) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(BATCH, VOCAB, generator=gen) * 3
    prompts = [torch.randint(0, VOCAB, (5 + i,), generator=gen).tolist() for i in range(BATCH)]
    outputs = [torch.randint(0, VOCAB, (i,), generator=gen).tolist() for i in range(BATCH)]

    want = vllm_processed_logprobs(logits, processing, prompts, outputs)

    # The trainer sees one row per response position; here, the position after outputs[i].
    width = max(len(p) + len(o) + 1 for p, o in zip(prompts, outputs, strict=True))
    ids = torch.zeros(BATCH, width, dtype=torch.long)
    for i, (p, o) in enumerate(zip(prompts, outputs, strict=True)):
        ids[i, : len(p) + len(o) + 1] = torch.tensor(p + o + [0])
    mask, counts = _penalty_context(
        ids,
        torch.tensor([len(p) for p in prompts]),
        torch.tensor([len(o) + 1 for o in outputs]),
        VOCAB,
        "cpu",
    )
    last = torch.cumsum(torch.tensor([len(o) + 1 for o in outputs]), 0) - 1
    got = process_logprobs(logits, processing, prompt_mask=mask[last], output_counts=counts[last])

    assert torch.equal(torch.isfinite(got), torch.isfinite(want)), "different support"
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], atol=1e-5, rtol=1e-5)
