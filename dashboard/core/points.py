"""Metric points.

Writing: one statement per batch, one transaction (with the after-store hooks of the apps
built on core), then a live broadcast. Reading: keys, latest values, CSV export; a
key's series for the charts is in `dashboard.core.series`.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any, NamedTuple

import numpy as np
import psycopg
from django.core.exceptions import EmptyResultSet
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone
from psycopg.adapt import Dumper, PyFormat
from psycopg.pq import Format

from dashboard.core import hooks, live, summary
from dashboard.core.models import MetricPoint, Run
from dashboard.core.series import series_cache
from parity.metrics import MetricsResult, Thresholds, compute_metrics, scalar_values


class Point(NamedTuple):
    # A NamedTuple, not a frozen dataclass: an API batch builds up to 10,000 of them, at
    # less than half the cost (measured: 0.4 against 1.0 ms per 1,000).
    key: str
    step: int
    value: float
    time: datetime | None = None


class _BinaryArray(bytes):
    """A one-dimensional int4/int8/float8 array already in Postgres' binary array format.

    Built with numpy in microseconds, where psycopg dumps a list element by element in
    Python (~1.5 ms per 1,000-element array, a good part of a batch's cost).
    """

    oid: int

    @classmethod
    def of(cls, array: np.ndarray, oid: int) -> _BinaryArray:
        # Header: dimensions, has-nulls, element type, then length and lower bound of the
        # one dimension; then per element its byte length and its big-endian value.
        item = array.dtype.newbyteorder(">")
        body = np.empty(array.shape[0], dtype=[("size", ">i4"), ("value", item)])
        body["size"] = item.itemsize
        body["value"] = array
        out = cls(struct.pack(">iiiii", 1, 0, oid, array.shape[0], 1) + body.tobytes())
        out.oid = _ARRAY_OIDS[oid]
        return out


_INT4_OID, _INT8_OID, _FLOAT8_OID = 23, 20, 701
_ARRAY_OIDS = {_INT4_OID: 1007, _INT8_OID: 1016, _FLOAT8_OID: 1022}


class _BinaryArrayDumper(Dumper):
    format = Format.BINARY

    def get_key(self, obj: Any, format: PyFormat) -> Any:  # noqa: A002 - psycopg's name
        return (type(obj), obj.oid)

    def upgrade(self, obj: Any, format: PyFormat) -> Dumper:  # noqa: A002
        dumper = type(self)(type(obj))
        dumper.oid = obj.oid
        return dumper

    def dump(self, obj: Any) -> bytes:
        return bytes(obj)


# The unique (run, key, step) constraint: a batch that hits it holds a re-sent point.
_UNIQUE_POINT = "unique_point"


@cache
def _store_sql(after_store: tuple[hooks.AfterStore, ...], upsert: bool) -> str:
    """One statement for a whole batch: the run (if the caller may write to it), the insert,
    the run's last_step and series version, the series summary, and for each after-store
    hook whether it applies (for alerts: does an enabled rule of the run's project watch a
    key of the batch).

    Five round trips folded into one. `{run}` is the caller's run query, filled in per call.
    Without `upsert` the points are plainly inserted (a re-sent point breaks the unique
    constraint: the caller then sends the upsert); `ON CONFLICT` and the RETURNING that
    tells a re-send cost a quarter of the statement (measured: 11-12 ms against 8-9 ms per
    1,000 points), and a batch is rarely a re-send.
    """
    points_table = MetricPoint._meta.db_table
    run_table = Run._meta.db_table
    when = "".join(
        f",\n       (SELECT {hook.when_sql or 'TRUE'} FROM r, batch)" for hook in after_store
    )
    on_conflict = (
        """
    ON CONFLICT (run_id, key, step)
    DO UPDATE SET value = EXCLUDED.value, wall_time = EXCLUDED.wall_time
    -- xmax is set on a row this statement updated, not on one it inserted: a re-send.
    RETURNING NOT (xmax = 0) AS replaced"""
        if upsert
        else ""
    )
    replaced = "(SELECT bool_or(replaced) FROM ins)" if upsert else "FALSE"
    return f"""
WITH r AS MATERIALIZED ({{run}}),
batch AS MATERIALIZED (SELECT %b::text[] AS keys),
ins AS (
    INSERT INTO {points_table} (run_id, key, step, value, wall_time)
    SELECT r.id, batch.keys[u.key_index], u.step, u.value,
           COALESCE(u.wall_time, %b::timestamptz)
    FROM r, batch, unnest(%b::int4[], %b::int8[], %b::float8[], %b::timestamptz[])
         AS u(key_index, step, value, wall_time){on_conflict}
),
upd AS (
    UPDATE {run_table} SET last_step = GREATEST(COALESCE(last_step, %b), %b),
                           series_version = series_version + 1
    WHERE id IN (SELECT id FROM r)
    RETURNING series_version
),{summary.merge_sql(upsert)}
SELECT (SELECT count(*) FROM r), (SELECT series_version FROM upd),
       {replaced}{when}
"""


def store_points(run: Run, points: Iterable[Point]) -> int:
    """Upsert a batch of points for one run: it lands whole or not at all.

    A re-sent (run, key, step) replaces the old value, so a client may retry a batch
    freely. Returns the number of distinct points written. After commit the batch is
    published to the run's channel group.
    """
    written = _store(run.pk, points, run=run)
    assert written is not None
    return written


def store_visible_points(runs: QuerySet[Run], run_id: int, points: Iterable[Point]) -> int | None:
    """`store_points` for run `run_id` if it is one of `runs` (the caller's visible runs);
    None, with nothing written, if it is not.

    The visibility check rides the upsert's statement: no separate fetch of the run.
    """
    return _store(run_id, points, runs=runs)


def _store(
    run_id: int,
    points: Iterable[Point],
    run: Run | None = None,
    runs: QuerySet[Run] | None = None,
) -> int | None:
    now = timezone.now()
    # Postgres refuses to update the same row twice in one statement: last one wins.
    latest: dict[tuple[str, int], Point] = {}
    for point in points:
        latest[(point.key, point.step)] = point
    if runs is None:
        runs = Run.objects.filter(pk=run_id)
    else:
        runs = runs.filter(pk=run_id)
    if not latest:
        if run is None and not runs.exists():
            return None
        return 0
    rows = list(latest.values())
    keys = [p.key for p in rows]
    # The batch's distinct keys once, and each point's (1-based) index into them.
    distinct: dict[str, int] = {}
    key_index = [distinct.setdefault(k, len(distinct) + 1) for k in keys]
    steps = [p.step for p in rows]
    values = [p.value for p in rows]
    step_array = np.asarray(steps, dtype=np.int64)
    value_array = np.asarray(values, dtype=np.float64)
    # NULL: the statement's `now` (the usual case, where no point carries its own time).
    times = [p.time for p in rows] if any(p.time is not None for p in rows) else None
    max_step = int(step_array.max())
    key_array = np.asarray(key_index, dtype=np.int32)
    buckets = summary.summarize(key_array, step_array, value_array)
    try:
        run_sql, run_params = runs.values("id", "project_id").query.sql_with_params()
    except EmptyResultSet:  # a filter that matches nothing by construction
        return None
    if "%" in run_sql.replace("%s", ""):
        raise RuntimeError("unexpected % in the run query")  # never: ids and joins only
    after_store = hooks.after_store()
    params = [
        *run_params,
        list(distinct),
        now,
        _BinaryArray.of(key_array, _INT4_OID),
        _BinaryArray.of(step_array, _INT8_OID),
        _BinaryArray.of(value_array, _FLOAT8_OID),
        times,
        max_step,
        max_step,
        _BinaryArray.of(buckets.key_index, _INT4_OID),
        _BinaryArray.of(buckets.level, _INT4_OID),
        _BinaryArray.of(buckets.bucket, _INT8_OID),
        _BinaryArray.of(buckets.n, _INT4_OID),
        _BinaryArray.of(buckets.min_step, _INT8_OID),
        _BinaryArray.of(buckets.min_value, _FLOAT8_OID),
        _BinaryArray.of(buckets.max_step, _INT8_OID),
        _BinaryArray.of(buckets.max_value, _FLOAT8_OID),
    ]

    def write(upsert: bool) -> int | None:
        with transaction.atomic():
            connection.ensure_connection()
            # Binary parameters on a server-side-binding cursor (same connection, same
            # transaction): Django's cursor would print the four arrays into the SQL text,
            # which costs as much as the upsert itself (measured: ~2x the whole insert).
            with psycopg.Cursor(connection.connection) as cursor:
                cursor.adapters.register_dumper(_BinaryArray, _BinaryArrayDumper)
                cursor.execute(_store_sql(after_store, upsert).replace("{run}", run_sql), params)
                found, series_version, replaced, *applies = cursor.fetchone()  # type: ignore[misc]
            if not found:
                return None
            if replaced:
                summary.recompute(run_id, list(distinct), buckets)
            # The hooks ride the same transaction (alerts: incidents and their webhook outbox
            # rows commit with the points or not at all); one whose condition does not hold
            # for this batch is skipped without a query.
            hook_run = run
            for hook, apply in zip(after_store, applies, strict=True):
                if apply:
                    if hook_run is None:
                        hook_run = Run.objects.get(pk=run_id)
                    hook.call(hook_run, rows)
            group = f"run.{run_id}"
            transaction.on_commit(
                lambda: live.publish(
                    group,
                    "points",
                    {
                        # A non-finite value (an MLflow client may send one) goes out as null.
                        "points": [
                            {"key": k, "step": s, "value": v}
                            for k, s, v in zip(keys, steps, values, strict=True)
                        ]
                    },
                )
            )
            min_step = int(step_array.min())
            transaction.on_commit(lambda: series_cache.changed(run_id, series_version, min_step))
        return len(rows)

    try:
        return write(upsert=False)
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.constraint_name != _UNIQUE_POINT:
            raise
    # A re-sent point: the failed insert left nothing, so the batch goes again as an upsert.
    return write(upsert=True)


def store_step_values(run: Run, step: int, values: Mapping[str, float]) -> int:
    """Store one step's named values (e.g. every metric of a comparison at step 0)."""
    return store_points(run, (Point(key, step, float(v)) for key, v in values.items()))


def store_logprobs(
    run: Run, step: int, lt: Any, lr: Any, seq_lens: Any = None, entropy: Any = None
) -> tuple[MetricsResult, int]:
    """Compute every METRICS.md metric of one step's raw arrays and store them as points.

    The project's thresholds apply (they set the clip and IS bounds). Metrics that cannot be
    computed (None) are not stored. Raises ValueError naming the bad array.
    """
    thresholds = Thresholds.from_dict(run.project.thresholds)
    result = compute_metrics(lt, lr, seq_lens, entropy=entropy, thresholds=thresholds)
    written = store_step_values(run, step, scalar_values(result.values))
    return result, written


# --- reading ------------------------------------------------------------------------------

_POINTS = MetricPoint._meta.db_table

_KEYS = f"""
WITH RECURSIVE k(key) AS (
    (SELECT key FROM {_POINTS} WHERE run_id = %(run)s ORDER BY key LIMIT 1)
    UNION ALL
    SELECT (SELECT p.key FROM {_POINTS} p
            WHERE p.run_id = %(run)s AND p.key > k.key ORDER BY p.key LIMIT 1)
    FROM k WHERE k.key IS NOT NULL
)
SELECT k.key, f.step, l.step, l.value, l.wall_time FROM k
CROSS JOIN LATERAL (
    SELECT step FROM {_POINTS} WHERE run_id = %(run)s AND key = k.key ORDER BY step LIMIT 1
) f
CROSS JOIN LATERAL (
    SELECT step, value, wall_time FROM {_POINTS} WHERE run_id = %(run)s AND key = k.key
    ORDER BY step DESC LIMIT 1
) l
WHERE k.key IS NOT NULL
"""


def list_keys(run: Run | int) -> list[dict[str, Any]]:
    """The keys of a run with their first and last step, the last value and its time.

    A skip scan over the (run, key, step) index: one probe per key, not a pass over
    every point, so a run with millions of points answers in milliseconds.
    """
    run_id = run if isinstance(run, int) else run.pk
    with connection.cursor() as cursor:
        cursor.execute(_KEYS, {"run": run_id})
        return [
            {
                "key": key,
                "first_step": first,
                "last_step": last,
                "last_value": value,
                "last_time": time,
            }
            for key, first, last, value, time in cursor.fetchall()
        ]


_RUNS = Run._meta.db_table

_PROJECT_KEYS = f"""
WITH RECURSIVE recent AS MATERIALIZED (
    SELECT id, created FROM {_RUNS} WHERE project_id = %(project)s
    ORDER BY created DESC LIMIT %(runs)s
),
k(run_id, key) AS (
    SELECT recent.id, (SELECT key FROM {_POINTS} WHERE run_id = recent.id ORDER BY key LIMIT 1)
    FROM recent
    UNION ALL
    SELECT k.run_id, (SELECT p.key FROM {_POINTS} p
                      WHERE p.run_id = k.run_id AND p.key > k.key ORDER BY p.key LIMIT 1)
    FROM k WHERE k.key IS NOT NULL
)
SELECT k.key, count(*) AS n_runs, max(recent.created) AS last_seen
FROM k JOIN recent ON recent.id = k.run_id
WHERE k.key IS NOT NULL
GROUP BY k.key
ORDER BY n_runs DESC, last_seen DESC, k.key
LIMIT %(limit)s
"""


def project_keys(project_id: int, runs: int = 50, limit: int = 200) -> list[tuple[str, int]]:
    """The keys a project's latest `runs` runs sent, with how many of them sent each: most
    used first, then most recently seen; at most `limit`.

    The same skip scan as `list_keys`, per run: one index probe per key of each run.
    """
    with connection.cursor() as cursor:
        cursor.execute(_PROJECT_KEYS, {"project": project_id, "runs": runs, "limit": limit})
        return [(key, n_runs) for key, n_runs, _ in cursor.fetchall()]


_LATEST = f"""
SELECT r.id, k.key, p.value
FROM unnest(%s::bigint[]) AS r(id) CROSS JOIN unnest(%s::text[]) AS k(key)
CROSS JOIN LATERAL (
  SELECT value FROM {_POINTS} WHERE run_id = r.id AND key = k.key
  ORDER BY step DESC LIMIT 1
) p
"""


def latest_values(run_ids: Sequence[int], keys: Sequence[str]) -> dict[int, dict[str, float]]:
    """The last value of each of `keys` for each run (one index probe per pair)."""
    out: dict[int, dict[str, float]] = {rid: {} for rid in run_ids}
    if not run_ids:
        return out
    with connection.cursor() as cursor:
        cursor.execute(_LATEST, [list(run_ids), list(keys)])
        for rid, key, value in cursor.fetchall():
            out[rid][key] = value
    return out


CSV_HEADER = "key,step,value,time\n"


async def csv_rows(run: Run, chunk_bytes: int = 256 * 1024) -> AsyncIterator[str | bytes]:
    """A run's points as CSV (key, step, value, time), ordered by key then step.

    Async so that the ASGI server streams it chunk by chunk (a sync iterator would be
    collected whole into memory first). Each chunk is one hop to the request's sync thread,
    where a COPY streams the rows out of Postgres.
    """
    from asgiref.sync import sync_to_async

    yield CSV_HEADER
    chunks = _csv_chunks(run, chunk_bytes)
    fetch = sync_to_async(next, thread_sensitive=True)
    while (chunk := await fetch(chunks, None)) is not None:
        yield chunk


def _csv_chunks(run: Run, chunk_bytes: int) -> Iterator[bytes]:
    # Postgres writes the CSV itself (COPY): ten times faster than formatting rows in
    # Python. Floats come out shortest-exact; times as ISO 8601 through to_json.
    sql = (
        "COPY (SELECT key, step, value, to_json(wall_time) #>> '{}' "
        f"FROM {MetricPoint._meta.db_table} WHERE run_id = %s ORDER BY key, step) "
        "TO STDOUT WITH (FORMAT csv)"
    )
    connection.ensure_connection()
    buf = bytearray()
    with psycopg.Cursor(connection.connection) as cursor:
        with cursor.copy(sql, [run.pk]) as copy:
            for data in copy:
                buf += data
                if len(buf) >= chunk_bytes:
                    yield bytes(buf)
                    buf.clear()
    if buf:
        yield bytes(buf)
