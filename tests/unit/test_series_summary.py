"""The per-batch summary rows (dashboard.core.summary.summarize) against a brute force."""

from __future__ import annotations

import numpy as np
import pytest

from dashboard.core.summary import LEVELS, summarize

pytestmark = pytest.mark.unit


def test_each_bucket_has_its_count_and_finite_min_and_max() -> None:
    rng = np.random.default_rng(0)
    steps = rng.choice(20_000, size=3_000, replace=False).astype(np.int64)
    key_index = rng.integers(1, 4, size=steps.shape[0]).astype(np.int32)
    values = rng.normal(size=steps.shape[0])
    values[::97] = np.nan
    values[5] = np.inf
    rows = summarize(key_index, steps, values)
    seen = 0
    for i in range(rows.n.shape[0]):
        k, level, b = rows.key_index[i], rows.level[i], rows.bucket[i]
        mine = (key_index == k) & ((steps >> level) == b)
        assert rows.n[i] == mine.sum()
        finite = mine & np.isfinite(values)
        if finite.any():
            assert rows.min_value[i] == values[finite].min()
            assert rows.max_value[i] == values[finite].max()
            assert values[steps == rows.min_step[i]][0] == rows.min_value[i]
            assert values[steps == rows.max_step[i]][0] == rows.max_value[i]
        else:
            assert np.isnan(rows.min_value[i]) and np.isnan(rows.max_value[i])
        seen += rows.n[i]
    assert seen == steps.shape[0] * len(LEVELS)


def test_an_all_nan_bucket_has_no_min_or_max() -> None:
    rows = summarize(
        np.array([1, 1], dtype=np.int32), np.array([0, 1], dtype=np.int64), np.full(2, np.nan)
    )
    assert rows.n.tolist() == [2] * len(LEVELS)
    assert np.isnan(rows.min_value).all() and np.isnan(rows.max_value).all()
