"""#17 §1: the series cache must never outlive the truth it caches, Redis restart included."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from dashboard.core.models import Project, Run
from dashboard.core.points import Point, store_points
from dashboard.core.series import SeriesCache, series_cache

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def reader(private_redis: Any, monkeypatch: pytest.MonkeyPatch) -> SeriesCache:
    """The cache of another process (daphne) reading what this one (the ingest) writes,
    both talking to a Redis the test may restart."""
    monkeypatch.setattr(series_cache, "_redis", redis.Redis.from_url(private_redis.url))
    cache = SeriesCache()
    cache._redis = redis.Redis.from_url(private_redis.url)
    return cache


def _steps(cache: SeriesCache, run: Run) -> list[int]:
    return cache.get(run.pk, "kl_k3")[0].tolist()


def test_series_after_a_redis_restart_has_every_point(
    reader: SeriesCache, private_redis: Any
) -> None:
    run = Run.objects.create(project=Project.objects.create(slug="p", name="p"), name="r")
    for step in range(3):
        store_points(run, [Point("kl_k3", step, 0.1)])
    assert _steps(reader, run) == [0, 1, 2]  # now cached in this process

    private_redis.restart()  # every version counter and change record is gone
    for step in range(3, 6):
        store_points(run, [Point("kl_k3", step, 0.1)])
    assert _steps(reader, run) == [0, 1, 2, 3, 4, 5]
    store_points(run, [Point("kl_k3", 6, 0.1)])
    assert _steps(reader, run) == list(range(7))


def test_series_is_right_when_a_change_record_was_lost(
    reader: SeriesCache, private_redis: Any
) -> None:
    run = Run.objects.create(project=Project.objects.create(slug="p", name="p"), name="r")
    store_points(run, [Point("kl_k3", 0, 0.1)])
    assert _steps(reader, run) == [0]
    private_redis.stop()  # this batch commits, its change record cannot be written
    store_points(run, [Point("kl_k3", 1, 0.1)])
    private_redis.start()
    store_points(run, [Point("kl_k3", 2, 0.1)])
    assert _steps(reader, run) == [0, 1, 2]
