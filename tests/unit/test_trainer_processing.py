"""The trainer's sampling processing on hand-made logits, against an obviously-correct
per-row reference written from the definitions (not from vLLM's code)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from workers.trainer import Processing, _penalty_context, entropy_of, process_logprobs  # noqa: E402

pytestmark = pytest.mark.unit


def reference_logprobs(
    logits: np.ndarray,
    p: Processing,
    prompt: set[int] | None = None,
    output: list[int] | None = None,
) -> np.ndarray:
    """One row, float64, step by step: penalties, temperature, min-p, top-k, top-p, renorm."""
    x = logits.astype(np.float64).copy()
    if p.kind == "raw":
        return x - np.logaddexp.reduce(x)
    if p.kind == "temperature":
        x = x / p.temperature
        return x - np.logaddexp.reduce(x)
    prompt, output = prompt or set(), output or []
    seen = prompt | set(output)
    for v in range(x.size):
        if v in seen and p.repetition_penalty != 1.0:
            x[v] = x[v] / p.repetition_penalty if x[v] > 0 else x[v] * p.repetition_penalty
        count = output.count(v)
        x[v] -= p.frequency_penalty * count + p.presence_penalty * (count > 0)
    if p.temperature < 1e-5:
        return x - np.logaddexp.reduce(x)
    x = x / p.temperature
    keep = np.ones(x.size, dtype=bool)
    if p.min_p > 0:
        probs = np.exp(x - np.logaddexp.reduce(x))
        keep &= probs >= p.min_p * probs.max()
    if 0 < p.top_k < x.size:
        kth = np.sort(x[keep])[::-1][min(p.top_k, keep.sum()) - 1]
        keep &= x >= kth
    if p.top_p < 1.0:
        # Nucleus over the distribution that survived so far: walk down from the most likely
        # token, keeping tokens while the mass strictly before them is below p.
        y = np.where(keep, x, -np.inf)
        probs = np.exp(y - np.logaddexp.reduce(y))
        mass = 0.0
        nucleus = np.zeros(x.size, dtype=bool)
        for v in np.argsort(-probs, kind="stable"):
            if mass >= p.top_p or probs[v] == 0:
                break
            nucleus[v] = True
            mass += probs[v]
        keep &= nucleus
    y = np.where(keep, x, -np.inf)
    return y - np.logaddexp.reduce(y)


def run(logits: np.ndarray, p: Processing, **kw: object) -> np.ndarray:
    out = process_logprobs(torch.tensor(logits, dtype=torch.float32), p, **kw)  # type: ignore[arg-type]
    return out.numpy().astype(np.float64)


@pytest.fixture
def logits() -> np.ndarray:
    # Peaked rows with distinct values (no ties at any cut-off), like a real model's.
    rng = np.random.default_rng(0)
    return rng.normal(0.0, 3.0, size=(64, 200))


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert np.array_equal(np.isfinite(got), np.isfinite(want)), "different surviving support"
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], atol=2e-5)


@pytest.mark.parametrize(
    "processing",
    [
        Processing(kind="raw"),
        Processing(kind="temperature", temperature=0.7),
        Processing(kind="processed", temperature=1.0),
        Processing(kind="processed", temperature=0.7, top_p=0.9),
        Processing(kind="processed", temperature=1.3, top_k=20),
        Processing(kind="processed", temperature=0.8, top_k=30, top_p=0.8),
        Processing(kind="processed", temperature=0.6, min_p=0.05),
        Processing(kind="processed", temperature=0.9, min_p=0.02, top_k=50, top_p=0.95),
        Processing(kind="processed", temperature=1.0, top_p=0.5),
    ],
    ids=lambda p: f"{p.kind}-T{p.temperature}-p{p.top_p}-k{p.top_k}-m{p.min_p}",
)
def test_processing_matches_the_reference(logits: np.ndarray, processing: Processing) -> None:
    got = run(logits, processing)
    want = np.stack([reference_logprobs(row, processing) for row in logits])
    assert_close(got, want)


def test_truncated_distributions_are_renormalised_over_the_survivors(logits: np.ndarray) -> None:
    got = run(logits, Processing(kind="processed", temperature=0.7, top_p=0.9, top_k=40))
    np.testing.assert_allclose(np.exp(got).sum(axis=1), 1.0, atol=1e-5)
    assert np.isinf(got).any(axis=1).all()  # every row lost some support


def test_top_p_keeps_the_token_that_crosses_p() -> None:
    # probs 0.5, 0.3, 0.15, 0.05: p=0.6 keeps the first two (0.5 < 0.6, then 0.8 >= 0.6).
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    got = np.exp(run(logits, Processing(kind="processed", top_p=0.6)))[0]
    np.testing.assert_allclose(got, [0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0], atol=1e-6)


def test_top_p_always_keeps_the_most_likely_token() -> None:
    logits = np.log(np.array([[0.9, 0.05, 0.05]]))
    got = np.exp(run(logits, Processing(kind="processed", top_p=0.01)))[0]
    np.testing.assert_allclose(got, [1.0, 0.0, 0.0], atol=1e-6)


def test_top_k_keeps_ties_at_the_cut() -> None:
    logits = np.array([[3.0, 2.0, 2.0, 1.0]])
    got = run(logits, Processing(kind="processed", top_k=2))[0]
    assert np.isfinite(got).tolist() == [True, True, True, False]


def test_greedy_ignores_temperature_and_truncation() -> None:
    logits = np.array([[2.0, 1.0, 0.5, -1.0]])
    greedy = run(logits, Processing(kind="processed", temperature=0.0, top_p=0.5, top_k=1))
    np.testing.assert_allclose(greedy, run(logits, Processing(kind="raw")), atol=1e-6)


def test_log_s_offset_of_a_full_vocabulary_trainer(logits: np.ndarray) -> None:
    """lt(full vocabulary) - lr(truncated) = log S for every surviving token."""
    truncated = Processing(kind="processed", temperature=0.7, top_p=0.9)
    full = Processing(kind="temperature", temperature=0.7)
    lr, lt = run(logits, truncated), run(logits, full)
    survivors = np.isfinite(lr)
    log_s = np.log(np.where(survivors, np.exp(lt), 0.0).sum(axis=1, keepdims=True))
    d = lt - lr
    np.testing.assert_allclose(d[survivors], np.broadcast_to(log_s, d.shape)[survivors], atol=1e-5)


def test_penalties_match_the_reference() -> None:
    rng = np.random.default_rng(1)
    vocab = 50
    prompt = [3, 7, 7, 11]
    response = [5, 3, 5, 9, 5, 12]
    p = Processing(
        kind="processed",
        temperature=0.8,
        repetition_penalty=1.3,
        frequency_penalty=0.4,
        presence_penalty=0.2,
        top_k=25,
    )
    logits = rng.normal(0.0, 2.0, size=(len(response), vocab))
    ids = torch.tensor([prompt + response])
    prompt_mask, counts = _penalty_context(
        ids, torch.tensor([len(prompt)]), torch.tensor([len(response)]), vocab, "cpu"
    )
    got = run(logits, p, prompt_mask=prompt_mask, output_counts=counts)
    want = np.stack(
        [
            reference_logprobs(logits[j], p, prompt=set(prompt), output=response[:j])
            for j in range(len(response))
        ]
    )
    assert_close(got, want)


def test_penalty_context_of_a_padded_batch() -> None:
    vocab, pad = 20, 0
    prompts = [[1, 2], [4, 4, 5]]
    responses = [[6, 6, 7], [8]]
    width = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    ids = torch.full((2, width), pad)
    for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[b, : len(p) + len(r)] = torch.tensor(p + r)
    prompt_mask, counts = _penalty_context(
        ids, torch.tensor([2, 3]), torch.tensor([3, 1]), vocab, "cpu"
    )
    assert prompt_mask.shape == counts.shape == (4, vocab)
    assert [set(torch.nonzero(row).flatten().tolist()) for row in prompt_mask] == [
        {1, 2},
        {1, 2},
        {1, 2},
        {4, 5},
    ]
    assert [{int(v): int(row[v]) for v in torch.nonzero(row).flatten()} for row in counts] == [
        {},
        {6: 1},
        {6: 2},
        {},
    ]


def test_entropy_of_a_truncated_distribution() -> None:
    lp = torch.log(torch.tensor([[0.5, 0.5, 0.0, 0.0]]))
    assert math.isclose(float(entropy_of(lp)[0]), math.log(2), rel_tol=1e-6)


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.999])
def test_top_p_without_torch_sort_equals_the_sorted_cut(
    top_p: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bf16 logits tie often, so many rows have equal values straddling the cut (the rows
    # that must take torch.sort's path); -inf from an earlier top-k and NaN rows too.
    from workers import trainer
    from workers.trainer import _top_p, _top_p_sorted

    # The numpy path whatever this machine's torch thread count.
    monkeypatch.setattr(trainer, "_NUMPY_SORT_MAX_THREADS", 1 << 30)
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(400, 256, generator=gen) * 3).to(torch.bfloat16).float() / 0.7
    logits[:50, :200] = float("-inf")
    for x in (logits, torch.randn(64, 300, generator=gen) * 3, logits[:0]):
        assert torch.equal(_top_p(x, top_p), _top_p_sorted(x, top_p))
    with_nan = logits.clone()
    with_nan[3, 7] = float("nan")
    got, want = _top_p(with_nan, top_p), _top_p_sorted(with_nan, top_p)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0))


def test_entropy_of_equals_the_definition_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(300, 256, generator=gen) * 40  # some finite log-probs underflow exp
    x[:, :100] = float("-inf")
    lp = x.log_softmax(dim=-1)
    p = lp.exp()
    want = -torch.where(p > 0, p * lp, torch.zeros_like(p)).sum(dim=-1)
    assert torch.equal(entropy_of(lp), want)


def test_processing_for_comparison_resolves_match_engine() -> None:
    from workers.specs import EngineSettings, SamplingSettings, TrainerSettings

    req = SamplingSettings(temperature=0.7, top_p=0.9).requested()
    raw_engine, processed_engine = (
        EngineSettings(logprobs_mode="raw"),
        EngineSettings(logprobs_mode="processed"),
    )
    match = TrainerSettings(processing="match_engine")
    assert Processing.for_comparison(match, raw_engine, req).kind == "raw"
    p = Processing.for_comparison(match, processed_engine, req)
    assert (p.kind, p.temperature, p.top_p, p.top_k) == ("processed", 0.7, 0.9, 0)
    assert p.truncates
    forced = Processing.for_comparison(
        TrainerSettings(processing="temperature"), processed_engine, req
    )
    assert forced.kind == "temperature"
