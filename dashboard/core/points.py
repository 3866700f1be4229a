"""Writing metric points: one statement per batch, one transaction, then a live broadcast."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from dashboard.core import live
from dashboard.core.models import MetricPoint, Run


@dataclass(frozen=True)
class Point:
    key: str
    step: int
    value: float
    time: datetime | None = None


_UPSERT = f"""
INSERT INTO {MetricPoint._meta.db_table} (run_id, key, step, value, wall_time)
SELECT %s, u.key, u.step, u.value, u.wall_time
FROM unnest(%s::text[], %s::bigint[], %s::float8[], %s::timestamptz[])
     AS u(key, step, value, wall_time)
ON CONFLICT (run_id, key, step)
DO UPDATE SET value = EXCLUDED.value, wall_time = EXCLUDED.wall_time
"""


def store_points(run: Run, points: Iterable[Point]) -> int:
    """Upsert a batch of points for one run: it lands whole or not at all.

    A re-sent (run, key, step) replaces the old value, so a client may retry a batch
    freely. Returns the number of distinct points written. After commit the batch is
    published to the run's channel group.
    """
    now = timezone.now()
    # Postgres refuses to update the same row twice in one statement: last one wins.
    latest: dict[tuple[str, int], Point] = {}
    for point in points:
        latest[(point.key, point.step)] = point
    if not latest:
        return 0
    rows = list(latest.values())
    keys = [p.key for p in rows]
    steps = [p.step for p in rows]
    values = [p.value for p in rows]
    times = [p.time or now for p in rows]
    max_step = max(steps)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(_UPSERT, [run.pk, keys, steps, values, times])
        Run.objects.filter(pk=run.pk).update(
            last_step=_greatest("last_step", max_step),
        )
        # Alerts ride the same transaction: incidents and their webhook outbox rows
        # commit with the points or not at all. Imported here: alerts imports core.
        from dashboard.alerts.evaluate import evaluate_points

        evaluate_points(run, rows)
        payload = [
            {"key": p.key, "step": p.step, "value": p.value} for p in rows
        ]
        transaction.on_commit(lambda: live.publish(run.group_name, "points", {"points": payload}))
    return len(rows)


def store_step_values(run: Run, step: int, values: Mapping[str, float]) -> int:
    """Store one step's named values (e.g. every metric of a comparison at step 0)."""
    return store_points(run, (Point(key, step, float(v)) for key, v in values.items()))


def _greatest(field: str, value: int):  # type: ignore[no-untyped-def]
    from django.db.models import F, Value
    from django.db.models.functions import Coalesce, Greatest

    return Greatest(Coalesce(F(field), Value(value)), Value(value))
