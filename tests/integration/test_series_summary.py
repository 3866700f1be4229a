"""#15 cold chart reads: a long series is drawn from the summary written with its points,
which is never older than the points, spikes and re-sends included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dashboard.core.models import MetricPoint, Project, Run, SeriesSummary
from dashboard.core.points import Point, store_points
from dashboard.core.series import read_series, series_cache
from dashboard.core.summary import LEVELS, RAW_LIMIT

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

N = RAW_LIMIT + 36_000  # long enough to be drawn from the summary


@pytest.fixture
def run(db: object) -> Run:
    series_cache.forget_all()
    return Run.objects.create(project=Project.objects.create(slug="p", name="p"), name="r")


def _store(run: Run, steps: range, values: np.ndarray, key: str = "clip_rate") -> None:
    for lo in range(0, len(steps), 10_000):
        store_points(
            run, [Point(key, s, float(values[s - steps[0]])) for s in steps[lo : lo + 10_000]]
        )


def _check_summary(run: Run) -> None:
    """The summary holds, per bucket, what the stored points say: the count, the finite min
    and max, and steps where those values are (any one of them, on a tie)."""
    points = {
        (key, step): value
        for key, step, value in MetricPoint.objects.filter(run=run).values_list(
            "key", "step", "value"
        )
    }
    want: dict[tuple[str, int, int], list] = {}
    for (key, step), value in points.items():
        for level in LEVELS:
            row = want.setdefault((key, level, step >> level), [0, None, None])
            row[0] += 1
            if math.isfinite(value):
                row[1] = value if row[1] is None else min(row[1], value)
                row[2] = value if row[2] is None else max(row[2], value)
    got = {}
    for r in SeriesSummary.objects.filter(run=run):
        got[(r.key, r.level, r.bucket)] = [r.n, r.min_value, r.max_value]
        if r.min_value is not None:
            assert points[(r.key, r.min_step)] == r.min_value
            assert points[(r.key, r.max_step)] == r.max_value
    assert got == want


def test_summary_follows_appends_resends_and_nan(run: Run) -> None:
    store_points(run, [Point("a", s, float(s % 7)) for s in range(0, 300)])
    store_points(run, [Point("a", s, float("nan")) for s in range(300, 330)])
    store_points(run, [Point("b", s, -float(s)) for s in range(5000, 5100)])
    # Re-sends: the min of a bucket goes up (an incremental merge could not know), a NaN
    # becomes a number, and a value is sent twice unchanged.
    store_points(run, [Point("a", 0, 100.0), Point("a", 310, -3.0), Point("b", 5000, -0.0)])
    store_points(run, [Point("a", 1, 1.0)])
    _check_summary(run)


def test_a_batch_that_resends_some_points_and_adds_others_lands_whole(run: Run) -> None:
    # The batch's plain insert meets the stored points; it is sent again as an upsert.
    store_points(run, [Point("a", s, 1.0) for s in range(0, 100)])
    assert store_points(run, [Point("a", s, 2.0) for s in range(50, 150)]) == 100
    values = dict(MetricPoint.objects.filter(run=run).values_list("step", "value"))
    assert values == {s: 1.0 if s < 50 else 2.0 for s in range(150)}
    run.refresh_from_db()
    assert run.last_step == 149
    _check_summary(run)


def test_a_long_series_is_drawn_from_the_summary_and_keeps_its_spike(run: Run) -> None:
    values = np.sin(np.arange(N) / 900.0)
    values[77_777] = 40.0
    values[12_345] = -40.0
    _store(run, range(N), values)
    series = read_series(run, "clip_rate", max_points=2000)
    assert series.total == N and len(series.steps) <= 2000
    assert series.steps == sorted(series.steps)
    assert series.steps[0] == 0 and series.steps[-1] == N - 1  # exact ends
    assert (77_777, 40.0) in zip(series.steps, series.values, strict=True)
    assert (12_345, -40.0) in zip(series.steps, series.values, strict=True)
    assert not series_cache.holds(run.pk, "clip_rate")  # no whole copy was read
    # A view of few points comes from the coarsest level, spike and all.
    few = read_series(run, "clip_rate", max_points=20)
    assert few.total == N and len(few.steps) <= 20 and 77_777 in few.steps
    # A range of a few points is read raw, exactly.
    part = read_series(run, "clip_rate", 50_000, 50_009)
    assert part.steps == list(range(50_000, 50_010)) and part.total == 10
    assert part.values == pytest.approx(values[50_000:50_010].tolist())
    # A large range that does not start on a bucket still has exact ends and total.
    wide = read_series(run, "clip_rate", 1_001, N - 1_001, max_points=500)
    assert wide.total == N - 2_001 and wide.steps[0] == 1_001 and wide.steps[-1] == N - 1_001


def test_a_resent_point_shows_in_the_next_overview(run: Run) -> None:
    _store(run, range(N), np.zeros(N))
    assert 0.0 == max(v for v in read_series(run, "clip_rate").values if v is not None)
    store_points(run, [Point("clip_rate", 4_242, 9.0)])
    series = read_series(run, "clip_rate")
    assert (4_242, 9.0) in zip(series.steps, series.values, strict=True)
    store_points(run, [Point("clip_rate", 4_242, 0.0)])  # and back: the spike is gone
    assert 9.0 not in read_series(run, "clip_rate").values
    _check_summary(run)
