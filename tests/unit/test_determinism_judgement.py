"""The determinism certificate's judgement (workers.determinism.judge): runs in, numbers and a
verdict out, without an engine."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from parity.reports.determinism import TrainerReport
from workers.determinism.judge import Sequences, compare_runs, first_divergence, groups, verdict
from workers.specs import DeterminismSpec

pytestmark = pytest.mark.unit

REF = Sequences(
    token_ids=[[1, 2, 3, 4], [5, 6, 7], [8, 9]],
    lr=[[-0.5, -1.25, -0.125, -2.0], [-0.25, -0.75, -3.0], [-1.0, -0.5]],
)


def trainer(**kw: Any) -> TrainerReport:
    base: TrainerReport = {
        "status": "measured",
        "reason": "",
        "n_tokens": 9,
        "bit_equal_frac": 0.5,
        "abs_diff_mean": 1e-3,
        "abs_diff_max": 1e-2,
        "engine_claims": False,
        "trainer_claims": False,
        "meaningful": False,
        "claims": "",
    }
    return {**base, **kw}  # type: ignore[typeddict-item]


def test_first_divergence_is_the_first_differing_token_or_the_shorter_end() -> None:
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 9, 3]) == 1
    assert first_divergence([1, 2, 3], [1, 2]) == 2
    assert first_divergence([], []) is None


def test_identical_runs_are_bit_exact_and_pass() -> None:
    pair = compare_runs("full_batch", "full batch", REF, REF)
    assert pair["bit_equal_frac"] == 1.0 and pair["abs_diff_max"] == 0.0
    assert pair["tokens_compared"] == 9 and pair["diverged_seqs"] == 0
    assert pair["first_divergence"] == [None, None, None]
    v, reasons = verdict([pair], {}, trainer(), DeterminismSpec(), engine_claims=False)
    assert v == "pass" and pair["verdict"] == "pass"
    assert reasons[0].startswith("bit-exact: 1 runs sampled the same tokens")


def test_logprobs_are_compared_only_before_the_first_divergence() -> None:
    other = Sequences(
        token_ids=[[1, 2, 3, 4], [5, 99, 7], [8, 9]],
        lr=[[-0.5, -1.25 + 1e-6, -0.125, -2.0], [-0.25, -9.0, -9.0], [-1.0, -0.5]],
    )
    pair = compare_runs("shuffled", "shuffled batch", REF, other)
    # Sequence 1 diverges at position 1: only its first token is compared (8 tokens in all).
    assert pair["tokens_compared"] == 4 + 1 + 2
    assert pair["bit_equal_frac"] == pytest.approx(6 / 7)
    assert pair["abs_diff_max"] == pytest.approx(1e-6)
    assert pair["abs_diff_mean"] == pytest.approx(1e-6 / 7)
    assert pair["diverged_seqs"] == 1 and pair["diverged_seq_frac"] == pytest.approx(1 / 3)
    assert pair["first_divergence"] == [None, 1, None] and pair["earliest_divergence"] == 1


def test_bit_equality_is_bitwise() -> None:
    a = Sequences([[1, 2]], [[0.0, float("nan")]])
    b = Sequences([[1, 2]], [[-0.0, float("nan")]])
    pair = compare_runs("full_batch", "full batch", a, b)
    # -0.0 is not 0.0's bits; a NaN in both is (and is left out of |Δ|).
    assert pair["bit_equal_frac"] == 0.5 and pair["abs_diff_max"] == 0.0


def test_small_differences_warn_with_the_numbers() -> None:
    other = Sequences(REF.token_ids, [[x + 1e-5 for x in s] for s in REF.lr])
    pair = compare_runs("full_batch", "full batch", REF, other)
    v, reasons = verdict([pair], {}, trainer(), DeterminismSpec(), engine_claims=False)
    assert v == "warn" and pair["verdict"] == "warn"
    assert reasons == [
        "full batch: bit_equal_frac 0 (max |Δ| 1e-5) (warn): not bit-exact against batch size 1"
    ]


def test_differences_past_the_limits_fail() -> None:
    big = Sequences(REF.token_ids, [[x + 0.1 for x in s] for s in REF.lr])
    pair = compare_runs("full_batch", "full batch", REF, big)
    v, reasons = verdict([pair], {}, trainer(), DeterminismSpec(), engine_claims=False)
    assert v == "fail" and reasons == ["full batch: max |Δ logprob| 0.1 > 0.05 (fail)"]
    diverged = Sequences([[0], [0], [0]], [[-1.0], [-1.0], [-1.0]])
    pair = compare_runs("shuffled", "shuffled batch", REF, diverged)
    v, reasons = verdict([pair], {}, trainer(), DeterminismSpec(), engine_claims=False)
    assert v == "fail"
    assert "diverged_seq_frac 1 > 0.25 (fail): sampled tokens depend on the batch" in reasons[0]


def test_any_difference_fails_when_the_engine_claims_batch_invariance() -> None:
    other = Sequences(REF.token_ids, [[x + 1e-7 for x in s] for s in REF.lr])
    pair = compare_runs("max_num_seqs", "other max_num_seqs", REF, other)
    v, reasons = verdict([pair], {}, trainer(), DeterminismSpec(), engine_claims=True)
    assert v == "fail"
    assert reasons[0].endswith("the engine claims batch invariance but is not bit-exact")


def test_groups_count_duplicate_and_identical_samples() -> None:
    ids = [[1, 2], [1, 2], [1, 2], [3], [4], [3], [5], [6], [7]]
    g = groups(ids, 3)
    assert g == {
        "n": 3,
        "n_groups": 3,
        "duplicate_group_frac": pytest.approx(2 / 3),
        "identical_group_frac": pytest.approx(1 / 3),
    }
    assert groups(ids, 1) is None


def test_identical_groups_warn_unless_greedy() -> None:
    pair = compare_runs("full_batch", "full batch", REF, REF)
    same = groups([[1], [1], [2], [2]], 2)
    spec = DeterminismSpec()
    v, reasons = verdict([pair], {"batch_1": same}, trainer(), spec, engine_claims=False)
    assert v == "warn"
    assert "batch_1: identical_group_frac 1 > 0.5 (warn)" in reasons[0]


def test_trainer_vs_engine_counts_only_when_both_claim_determinism() -> None:
    pair = compare_runs("full_batch", "full batch", REF, REF)
    spec = DeterminismSpec()
    v, _ = verdict([pair], {}, trainer(bit_equal_frac=0.1), spec, engine_claims=False)
    assert v == "pass"
    both = trainer(bit_equal_frac=0.1, engine_claims=True, trainer_claims=True, meaningful=True)
    v, reasons = verdict([pair], {}, both, spec, engine_claims=True)
    assert v == "fail" and reasons[0].startswith("trainer vs engine: bit_equal_frac 0.1 < 1")


def test_runs_of_different_prompts_are_refused() -> None:
    with pytest.raises(ValueError, match="did not sample the same prompts"):
        compare_runs("full_batch", "full batch", REF, Sequences([[1]], [[-1.0]]))


def test_a_shuffled_rollout_comes_back_in_prompt_order() -> None:
    from workers.determinism.run import _unshuffle
    from workers.rollout import Rollout

    order = np.array([2, 0, 1])
    prompts = [[10], [11], [12]]
    # Sampled on [prompts[2], prompts[0], prompts[1]], two samples each.
    ro = Rollout(
        prompt_token_ids=[prompts[i] for i in order],
        prompt_index=[0, 0, 1, 1, 2, 2],
        token_ids=[[20], [21], [0], [1], [10], [11]],
        lr=[[-2.0], [-2.1], [-0.0], [-0.1], [-1.0], [-1.1]],
        finish_reasons=["length"] * 6,
        requested={},
        effective={},
        model_defaults={},
        vllm_version="x",
    )
    back = _unshuffle(ro, order)
    assert back.prompt_token_ids == prompts
    assert back.prompt_index == [0, 0, 1, 1, 2, 2]
    assert back.token_ids == [[0], [1], [10], [11], [20], [21]]
    assert back.lr == [[-0.0], [-0.1], [-1.0], [-1.1], [-2.0], [-2.1]]


def test_batch_invariance_claims_read_from_what_engines_report() -> None:
    from workers.determinism.run import claims_batch_invariance

    assert claims_batch_invariance(True) is True
    assert claims_batch_invariance("1") is True and claims_batch_invariance(0) is False
    assert claims_batch_invariance("unknown") is None and claims_batch_invariance(None) is None
