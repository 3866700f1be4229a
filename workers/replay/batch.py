"""A batch the replay sampled, and how two runs of the same requests differ. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from parity.reports.replay import BatchDiff

if TYPE_CHECKING:
    from workers.rollout import Rollout


@dataclass
class Batch:
    """One batch of the replay: what the engine sampled, with prefix-cache hits."""

    rollout: Rollout
    num_cached_tokens: list[int | None]


def compare_batches(a: Batch, b: Batch) -> BatchDiff:
    """How two runs of the same requests differ: sequences with different tokens, and
    |lr_a - lr_b| over the common token prefix of each sequence (and the first token after
    it, where both sampled one: the logprob of the token that differs)."""
    diff_seqs, max_abs, total, n = 0, 0.0, 0.0, 0
    first_diff: list[int | None] = []
    for ta, tb, la, lb in zip(
        a.rollout.token_ids, b.rollout.token_ids, a.rollout.lr, b.rollout.lr, strict=True
    ):
        shortest = min(len(ta), len(tb))
        common = 0
        while common < shortest and ta[common] == tb[common]:
            common += 1
        if common != len(ta) or len(ta) != len(tb):
            diff_seqs += 1
            first_diff.append(common)
        else:
            first_diff.append(None)
        upto = common + 1 if common < shortest else common
        for x, y in zip(la[:upto], lb[:upto], strict=True):
            d = abs(x - y)
            max_abs, total, n = max(max_abs, d), total + d, n + 1
    return BatchDiff(
        sequences=len(a.rollout.token_ids),
        sequences_with_different_tokens=diff_seqs,
        first_different_token=first_diff,
        lr_abs_diff_mean_on_common_tokens=total / n if n else None,
        lr_abs_diff_max_on_common_tokens=max_abs if n else None,
        identical=diff_seqs == 0 and max_abs == 0.0,
    )
