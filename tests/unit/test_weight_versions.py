"""The gap after each weight update, and the stale-cache signature, on synthetic series."""

from __future__ import annotations

import math

import pytest

from parity.weight_versions import (
    stale_cache_signature,
    version_gaps,
    version_starts,
)

pytestmark = pytest.mark.unit


def run_with_updates(jump: float, n_versions: int = 4, per: int = 10, base: float = 0.01):
    """A version every `per` steps; the gap jumps to `jump` at each update and decays."""
    steps = list(range(n_versions * per))
    versions = [float(s // per) for s in steps]
    gaps = []
    for s in steps:
        k = s % per
        gaps.append(base + (jump - base) * 0.3**k if s >= per else base)
    return steps, versions, steps, gaps


def test_version_starts_are_where_the_value_changes() -> None:
    assert version_starts([0, 1, 2, 5, 6], [0, 0, 1, 1, 3]) == [(0, 0.0), (2, 1.0), (6, 3.0)]
    assert version_starts([0, 1], [math.nan, 2]) == [(1, 2.0)]


def test_a_jump_that_decays_after_each_update_is_the_signature() -> None:
    gaps = version_gaps(*run_with_updates(jump=0.2))
    assert [(g.version, g.first_step) for g in gaps] == [(1.0, 10), (2.0, 20), (3.0, 30)]
    assert gaps[0].after_update == pytest.approx(0.2) and gaps[0].n_rest == 9
    assert gaps[0].complete and not gaps[-1].complete
    assert all(g.ratio and g.ratio > 5 and g.decays for g in gaps)
    sig = stale_cache_signature(gaps)
    assert sig is not None and sig.shows and (sig.jumped, sig.judged) == (3, 3)
    text = sig.describe("abs_diff_mean")
    assert text.startswith("Right after a weight update, abs_diff_mean was")
    assert "after 3 of 3 updates" in text and "old weights" in text


def test_a_flat_gap_is_no_signature() -> None:
    sig = stale_cache_signature(version_gaps(*run_with_updates(jump=0.01)))
    assert sig is not None and not sig.shows and sig.jumped == 0
    assert sig.median_ratio == pytest.approx(1.0)
    assert "no stale-cache signature" in sig.describe("kl_k3")


def test_a_jump_that_stays_up_is_not_a_cache_turning_over() -> None:
    steps = list(range(30))
    versions = [float(s // 10) for s in steps]
    # One spike at the update's step, then a level that does not fall: no turnover.
    gaps_up = [0.01 if s < 10 else (0.5 if s % 10 == 0 else 0.2 + 0.001 * s) for s in steps]
    flat = stale_cache_signature(version_gaps(steps, versions, steps, gaps_up))
    assert flat is not None and not flat.shows  # 2.3x at the update, no decay


def test_one_update_is_not_enough_to_name_it() -> None:
    sig = stale_cache_signature(version_gaps(*run_with_updates(jump=0.2, n_versions=2)))
    assert sig is not None and sig.judged == 1 and not sig.shows


def test_no_update_or_no_rest_gives_nothing_to_judge() -> None:
    assert version_gaps([0, 1, 2], [0, 0, 0], [0, 1, 2], [0.1, 0.1, 0.1]) == []
    gaps = version_gaps([0, 5], [0, 1], [0, 5], [0.01, 0.3])  # the update's step only
    assert gaps[0].rest_mean is None and gaps[0].ratio is None
    assert stale_cache_signature(gaps) is None


def test_versions_sent_only_at_updates_and_gaps_without_a_version_yet() -> None:
    # MLflow path: weight_version logged only when it changes; gap points before it ignored.
    gap = [0.01 + 0.3 * 0.4 ** (s % 10) if s >= 10 else 0.01 for s in range(30)]
    gaps = version_gaps([3, 10, 20], [0, 1, 2], list(range(30)), gap)
    assert [(g.first_step, g.n_rest) for g in gaps] == [(10, 9), (20, 9)]
    sig = stale_cache_signature(gaps)
    assert sig is not None and sig.shows
