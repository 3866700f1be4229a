"""Metric points.

Writing: one statement per batch, one transaction, then a live broadcast.
Reading: series downsampled for charts (kept in a per-process cache), keys, CSV export.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from django.core.exceptions import EmptyResultSet
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone
from psycopg.adapt import Dumper, PyFormat
from psycopg.pq import Format

from dashboard.core import live
from dashboard.core.models import MetricPoint, Run
from parity.client import scalar_values
from parity.metrics import MetricsResult, Thresholds, compute_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Point:
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


_STORE_SQL: str | None = None


def _store_sql() -> str:
    """One statement for a whole batch: the run (if the caller may write to it), the upsert,
    the run's last_step, and whether any enabled alert rule of its project watches a key.

    Four round trips folded into one. Built on first use: alerts imports core.
    """
    global _STORE_SQL
    if _STORE_SQL is None:
        from dashboard.alerts.models import AlertRule

        points_table = MetricPoint._meta.db_table
        run_table = Run._meta.db_table
        _STORE_SQL = f"""
WITH r AS MATERIALIZED ({{run}}),
ins AS (
    INSERT INTO {points_table} (run_id, key, step, value, wall_time)
    SELECT r.id, (%b::text[])[u.key_index], u.step, u.value,
           COALESCE(u.wall_time, %b::timestamptz)
    FROM r, unnest(%b::int4[], %b::int8[], %b::float8[], %b::timestamptz[])
         AS u(key_index, step, value, wall_time)
    ON CONFLICT (run_id, key, step)
    DO UPDATE SET value = EXCLUDED.value, wall_time = EXCLUDED.wall_time
    RETURNING 1
),
upd AS (
    UPDATE {run_table} SET last_step = GREATEST(COALESCE(last_step, %b), %b)
    WHERE id IN (SELECT id FROM r)
    RETURNING 1
)
SELECT (SELECT count(*) FROM r),
       EXISTS (SELECT 1 FROM {AlertRule._meta.db_table} a JOIN r ON a.project_id = r.project_id
               WHERE a.enabled AND a.metric_key = ANY(%b::text[]))
"""
    return _STORE_SQL


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
    try:
        run_sql, run_params = runs.values("id", "project_id").query.sql_with_params()
    except EmptyResultSet:  # a filter that matches nothing by construction
        return None
    if "%" in run_sql.replace("%s", ""):
        raise RuntimeError("unexpected % in the run query")  # never: ids and joins only
    sql = _store_sql().replace("{run}", run_sql)
    params = [
        *run_params,
        list(distinct),
        now,
        _BinaryArray.of(np.asarray(key_index, dtype=np.int32), _INT4_OID),
        _BinaryArray.of(step_array, _INT8_OID),
        _BinaryArray.of(value_array, _FLOAT8_OID),
        times,
        max_step,
        max_step,
        list(distinct),
    ]
    with transaction.atomic():
        connection.ensure_connection()
        # Binary parameters on a server-side-binding cursor (same connection, same
        # transaction): Django's cursor would print the four arrays into the SQL text,
        # which costs as much as the upsert itself (measured: ~2x the whole insert).
        with psycopg.Cursor(connection.connection) as cursor:
            cursor.adapters.register_dumper(_BinaryArray, _BinaryArrayDumper)
            cursor.execute(sql, params)
            found, has_rules = cursor.fetchone()  # type: ignore[misc]
        if not found:
            return None
        if has_rules:
            # Alerts ride the same transaction: incidents and their webhook outbox rows
            # commit with the points or not at all. Imported here: alerts imports core.
            # Skipped (no query at all) when no enabled rule of the project watches a key
            # of the batch, which is exactly when evaluate_points would do nothing.
            from dashboard.alerts.evaluate import evaluate_points

            if run is None:
                run = Run.objects.get(pk=run_id)
            evaluate_points(run, rows)
        group = f"run.{run_id}"
        transaction.on_commit(
            lambda: live.publish(
                group,
                "points",
                {
                    "points": [
                        {"key": k, "step": s, "value": v}
                        for k, s, v in zip(keys, steps, values, strict=True)
                    ]
                },
            )
        )
        min_step = int(step_array.min())
        transaction.on_commit(lambda: series_cache.changed(run_id, min_step))
    return len(rows)


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

# Charts never need more points than pixels; this bounds one response.
MAX_SERIES_POINTS = 100_000


@dataclass(frozen=True)
class Series:
    """One key of one run over a step range: `total` points there, `steps`/`values` returned."""

    key: str
    total: int
    steps: list[int]
    values: list[float | None]

    @property
    def downsampled(self) -> bool:
        return len(self.steps) < self.total


# Postgres binary COPY of (bigint, float8): a 19-byte header, then per row a 2-byte field
# count and a 4-byte length before each field, all big-endian; a 2-byte trailer.
_COPY_ROW = np.dtype(
    [("n", ">i2"), ("l1", ">i4"), ("step", ">i8"), ("l2", ">i4"), ("value", ">f8")]
)


def fetch_series(
    run_id: int, key: str, start: int | None = None, end: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All (step, value) of one key in [start, end], ordered by step, as numpy arrays.

    Binary COPY into numpy is several times faster than building a Python tuple per row,
    which matters at a million points.
    """
    where = ["run_id = %s", "key = %s"]
    params: list[object] = [run_id, key]
    if start is not None:
        where.append("step >= %s")
        params.append(start)
    if end is not None:
        where.append("step <= %s")
        params.append(end)
    sql = (
        f"COPY (SELECT step, value FROM {MetricPoint._meta.db_table} "
        f"WHERE {' AND '.join(where)} ORDER BY step) TO STDOUT (FORMAT BINARY)"
    )
    buf = bytearray()
    with connection.cursor() as cursor:
        raw = cursor.cursor  # the psycopg cursor: Django's wrapper has no copy()
        with raw.copy(sql, params) as copy:
            for chunk in copy:
                buf += chunk
    if len(buf) <= 21:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    rows = np.frombuffer(bytes(buf[19:-2]), dtype=_COPY_ROW)
    return rows["step"].astype(np.int64), rows["value"].astype(np.float64)


def downsample(steps: np.ndarray, values: np.ndarray, max_points: int) -> np.ndarray:
    """Indices of at most `max_points` points that keep the shape, spikes included.

    MinMaxLTTB (tsdownsample): min/max preselection then LTTB, so a single-step spike in
    clip rate survives a 500x reduction, where plain striding or averaging would hide it.
    """
    n = steps.shape[0]
    if n <= max_points:
        return np.arange(n)
    from tsdownsample import MinMaxLTTBDownsampler

    finite = np.isfinite(values)
    if not finite.all():
        # Workers may store NaN; LTTB's triangle areas would be NaN. Keep those points out.
        keep = np.flatnonzero(finite)
        if keep.shape[0] <= max_points:
            return keep
        return keep[downsample(steps[keep], values[keep], max_points)]
    return np.asarray(MinMaxLTTBDownsampler().downsample(steps, values, n_out=max_points))


def read_series(
    run: Run, key: str, start: int | None = None, end: int | None = None, max_points: int = 2000
) -> Series:
    """One key's series over [start, end], downsampled to at most `max_points` points."""
    steps, values = series_cache.get(run.pk, key, start, end)
    idx = downsample(steps, values, max_points)
    picked = values[idx]
    out_values: list[float | None] = [
        float(v) if math.isfinite(v) else None for v in picked.tolist()
    ]
    return Series(key=key, total=int(steps.shape[0]), steps=steps[idx].tolist(), values=out_values)


_POINTS = MetricPoint._meta.db_table

_KEYS = f"""
WITH RECURSIVE k(key) AS (
    (SELECT key FROM {_POINTS} WHERE run_id = %(run)s ORDER BY key LIMIT 1)
    UNION ALL
    SELECT (SELECT p.key FROM {_POINTS} p
            WHERE p.run_id = %(run)s AND p.key > k.key ORDER BY p.key LIMIT 1)
    FROM k WHERE k.key IS NOT NULL
)
SELECT k.key, f.step, l.step, l.value FROM k
CROSS JOIN LATERAL (
    SELECT step FROM {_POINTS} WHERE run_id = %(run)s AND key = k.key ORDER BY step LIMIT 1
) f
CROSS JOIN LATERAL (
    SELECT step, value FROM {_POINTS} WHERE run_id = %(run)s AND key = k.key
    ORDER BY step DESC LIMIT 1
) l
WHERE k.key IS NOT NULL
"""


def list_keys(run: Run | int) -> list[dict[str, Any]]:
    """The keys of a run with their first and last step and the last value.

    A skip scan over the (run, key, step) index: one probe per key, not a pass over
    every point, so a run with millions of points answers in milliseconds.
    """
    run_id = run if isinstance(run, int) else run.pk
    with connection.cursor() as cursor:
        cursor.execute(_KEYS, {"run": run_id})
        return [
            {"key": key, "first_step": first, "last_step": last, "last_value": value}
            for key, first, last, value in cursor.fetchall()
        ]


_LATEST = f"""
SELECT r.id, k.key, p.value
FROM unnest(%s::bigint[]) AS r(id) CROSS JOIN unnest(%s::text[]) AS k(key)
CROSS JOIN LATERAL (
  SELECT value FROM {_POINTS} WHERE run_id = r.id AND key = k.key
  ORDER BY step DESC LIMIT 1
) p
"""

_TAIL = f"""
SELECT r.id, p.value
FROM unnest(%s::bigint[]) AS r(id)
CROSS JOIN LATERAL (
  SELECT step, value FROM {_POINTS} WHERE run_id = r.id AND key = %s
  ORDER BY step DESC LIMIT %s
) p
ORDER BY r.id, p.step
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


def tails(run_ids: Sequence[int], key: str, n: int) -> dict[int, list[float]]:
    """The last `n` values of `key` for each run, oldest first (the runs list's sparklines)."""
    out: dict[int, list[float]] = {rid: [] for rid in run_ids}
    if not run_ids:
        return out
    with connection.cursor() as cursor:
        cursor.execute(_TAIL, [list(run_ids), key, n])
        for rid, value in cursor.fetchall():
            out[rid].append(value)
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


# --- series cache -------------------------------------------------------------------------


class SeriesCache:
    """Whole series of (run, key) kept as numpy arrays in this process, kept fresh by Redis.

    Reading a million points back from Postgres takes seconds; a chart re-reads the same
    series on every refresh. Every committed batch bumps a per-run version in Redis and
    records the lowest step it touched; a reader whose copy is older re-fetches only the
    steps from there on (a live run appends, so that is the tail). Postgres stays the truth:
    with Redis unreachable, or the change log trimmed past a copy, reads go to Postgres.
    """

    # Change records kept per run; a copy older than that is re-read whole.
    KEEP_CHANGES = 2000

    _BUMP = """
    local v = redis.call('INCR', KEYS[1])
    redis.call('ZADD', KEYS[2], v, v .. ':' .. ARGV[1])
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[2]) - 1)
    redis.call('EXPIRE', KEYS[1], ARGV[3])
    redis.call('EXPIRE', KEYS[2], ARGV[3])
    return v
    """

    def __init__(self, max_bytes: int = 512 * 1024 * 1024, ttl_s: int = 30 * 86400) -> None:
        import threading
        from collections import OrderedDict

        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        # (run_id, key) -> (version, steps, values); LRU order.
        self._entries: OrderedDict[tuple[int, str], tuple[int, np.ndarray, np.ndarray]] = (
            OrderedDict()
        )
        self._bytes = 0
        self._redis = None

    def _client(self):  # type: ignore[no-untyped-def]
        if self._redis is None:
            import redis
            from django.conf import settings

            self._redis = redis.Redis.from_url(
                settings.REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5
            )
        return self._redis

    def _keys(self, run_id: int) -> tuple[str, str]:
        from django.conf import settings

        base = f"parity:series:{settings.DATABASES['default']['NAME']}:{run_id}"
        return base + ":version", base + ":changes"

    def changed(self, run_id: int, min_step: int) -> None:
        """Record, after commit, that steps >= min_step of `run_id` may have changed."""
        try:
            self._client().eval(
                self._BUMP, 2, *self._keys(run_id), min_step, self.KEEP_CHANGES, self.ttl_s
            )
        except Exception:  # noqa: BLE001 - a cache must not fail a committed write
            log.warning("series cache: could not record a change of run %s", run_id, exc_info=True)
            # Without the record, copies of this run could go stale: drop them here, and
            # let other processes find out from the version they can no longer trust.
            self.forget(run_id)

    def forget(self, run_id: int) -> None:
        with self._lock:
            for entry_key in [k for k in self._entries if k[0] == run_id]:
                self._drop(entry_key)

    def _drop(self, entry_key: tuple[int, str]) -> None:
        _, steps, values = self._entries.pop(entry_key)
        self._bytes -= steps.nbytes + values.nbytes

    def _since(self, run_id: int, version: int) -> tuple[int, int | None] | None:
        """(current version, lowest step changed after `version`); None: Redis unusable."""
        version_key, changes_key = self._keys(run_id)
        try:
            pipe = self._client().pipeline(transaction=True)
            pipe.get(version_key)
            pipe.zrangebyscore(changes_key, f"({version}", "+inf", withscores=True)
            pipe.zrange(changes_key, 0, 0, withscores=True)
            current_raw, changes, oldest = pipe.execute()
        except Exception:  # noqa: BLE001 - fall back to Postgres
            log.warning("series cache: Redis unreachable, reading from Postgres", exc_info=True)
            return None
        current = int(current_raw or 0)
        if current <= version or not changes:
            return current, None
        # A copy is only patchable when every change after it is still on record.
        if not oldest or int(oldest[0][1]) > version + 1:
            return current, -1
        lowest = min(int(member.decode().split(":", 1)[1]) for member, _ in changes)
        return current, lowest

    def get(
        self, run_id: int, key: str, start: int | None = None, end: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one key within [start, end]."""
        entry_key = (run_id, key)
        with self._lock:
            entry = self._entries.get(entry_key)
        version = entry[0] if entry else 0
        since = self._since(run_id, version)
        if since is None:
            return fetch_series(run_id, key, start, end)
        current, lowest = since
        if entry is not None and current == version:
            steps, values = entry[1], entry[2]
        elif entry is not None and lowest is not None and lowest >= 0 and current > version:
            tail_steps, tail_values = fetch_series(run_id, key, lowest)
            cut = int(np.searchsorted(entry[1], lowest, side="left"))
            steps = np.concatenate([entry[1][:cut], tail_steps])
            values = np.concatenate([entry[2][:cut], tail_values])
        else:
            steps, values = fetch_series(run_id, key)
        self._put(entry_key, current, steps, values)
        lo = 0 if start is None else int(np.searchsorted(steps, start, side="left"))
        hi = steps.shape[0] if end is None else int(np.searchsorted(steps, end, side="right"))
        return steps[lo:hi], values[lo:hi]

    def _put(
        self, entry_key: tuple[int, str], version: int, steps: np.ndarray, values: np.ndarray
    ) -> None:
        size = steps.nbytes + values.nbytes
        with self._lock:
            if entry_key in self._entries:
                self._drop(entry_key)
            if size > self.max_bytes:
                return
            self._entries[entry_key] = (version, steps, values)
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))


series_cache = SeriesCache()
