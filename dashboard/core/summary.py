"""A multi-resolution summary of each (run, key) series, so that a zoomed-out chart of a long
run reads a few thousand rows instead of every point.

Per level, a bucket holds 2**level consecutive steps; its row keeps the count of points
and the min and max finite values with their steps. The point writer merges each batch's
buckets in the batch's own statement (`merge_sql`), so the summary commits with the points
and can never be older than they are. A batch that replaced stored points (a re-send)
cannot be merged incrementally (the old min may be gone): its buckets are recomputed from
the points in the same transaction (`recompute`).

A view keeps every bucket's min and max point, so a single-step spike survives; the first
and last bucket of the range are read raw, so its ends are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from django.db import connection

from dashboard.core.models import MetricPoint, SeriesSummary

# Buckets of 64 and 1,024 steps: a view of 2,000 points of a 1M-step series reads 15.6k
# fine rows, one of 10M steps 9.8k coarse rows; any range of more than RAW_LIMIT points has
# about 1,000 buckets or more at the finest. Each level costs every batch one upsert per key
# (measured: three levels took ~8% off 1,000-point batches, ~19% off 20-point ones).
LEVELS = (6, 10)
# A range of at most this many points is read raw (exact, and a cold read stays < 100 ms).
RAW_LIMIT = 64_000

_SUMMARY = SeriesSummary._meta.db_table
_POINTS = MetricPoint._meta.db_table


@dataclass(frozen=True)
class Buckets:
    """One batch's summary rows, every level; `key_index` is 1-based like the batch's."""

    key_index: np.ndarray
    level: np.ndarray
    bucket: np.ndarray
    n: np.ndarray
    min_step: np.ndarray
    min_value: np.ndarray  # NaN where a bucket has no finite value
    max_step: np.ndarray
    max_value: np.ndarray


def summarize(key_index: np.ndarray, steps: np.ndarray, values: np.ndarray) -> Buckets:
    """The summary rows of one batch (distinct (key, step) pairs), at every level."""
    finite = np.isfinite(values)
    low = np.where(finite, values, np.inf)
    high = np.where(finite, values, -np.inf)
    parts: list[tuple[np.ndarray, ...]] = []
    for level in LEVELS:
        bucket = steps >> level
        # Grouped by (key, bucket), each group ordered by value: its first is the min; the
        # same groups ordered by the negated-max sort give the max at the group's end.
        by_low = np.lexsort((low, bucket, key_index))
        by_high = np.lexsort((high, bucket, key_index))
        k, b = key_index[by_low], bucket[by_low]
        starts = np.flatnonzero(np.r_[True, (k[1:] != k[:-1]) | (b[1:] != b[:-1])])
        ends = np.r_[starts[1:], k.shape[0]] - 1
        lo, hi = by_low[starts], by_high[ends]
        parts.append(
            (
                k[starts],
                np.full(starts.shape[0], level, dtype=np.int32),
                b[starts],
                (ends - starts + 1).astype(np.int32),
                steps[lo],
                np.where(finite[lo], values[lo], np.nan),
                steps[hi],
                np.where(finite[hi], values[hi], np.nan),
            )
        )
    return Buckets(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def merge_sql(upsert: bool) -> str:
    """The CTE that merges a batch's `Buckets` (eight array parameters, in field order) into
    the summary, unless the batch's upsert replaced a stored point (`ins.replaced`): then the
    caller recomputes. It joins `upd` so that it runs only once the run's row is locked,
    which orders every batch of a run: the recompute sees all that came before it."""
    replaced = "WHERE NOT EXISTS (SELECT FROM ins WHERE ins.replaced)" if upsert else ""
    return f"""
summ AS (
    INSERT INTO {_SUMMARY} AS s
        (run_id, key, level, bucket, n, min_step, min_value, max_step, max_value)
    SELECT r.id, batch.keys[u.key_index], u.level, u.bucket, u.n,
           u.min_step, NULLIF(u.min_value, 'NaN'), u.max_step, NULLIF(u.max_value, 'NaN')
    FROM r, upd, batch,
         unnest(%b::int4[], %b::int4[], %b::int8[], %b::int4[],
                %b::int8[], %b::float8[], %b::int8[], %b::float8[])
         AS u(key_index, level, bucket, n, min_step, min_value, max_step, max_value)
    {replaced}
    ON CONFLICT (run_id, key, level, bucket) DO UPDATE SET
        n = s.n + EXCLUDED.n,
        min_step = CASE WHEN s.min_value IS NULL OR EXCLUDED.min_value < s.min_value
                        THEN EXCLUDED.min_step ELSE s.min_step END,
        min_value = LEAST(s.min_value, EXCLUDED.min_value),
        max_step = CASE WHEN s.max_value IS NULL OR EXCLUDED.max_value > s.max_value
                        THEN EXCLUDED.max_step ELSE s.max_step END,
        max_value = GREATEST(s.max_value, EXCLUDED.max_value)
    RETURNING 1
)"""


_FINITE = "p.value NOT IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)"

_RECOMPUTE = f"""
INSERT INTO {_SUMMARY} AS s
    (run_id, key, level, bucket, n, min_step, min_value, max_step, max_value)
SELECT %(run)s, t.key, t.level, t.bucket, a.n, a.min_step, a.min_value, a.max_step, a.max_value
FROM unnest(%(keys)s::text[], %(levels)s::int4[], %(buckets)s::int8[]) AS t(key, level, bucket)
CROSS JOIN LATERAL (
    SELECT count(*) AS n,
           (array_agg(p.step ORDER BY p.value) FILTER (WHERE {_FINITE}))[1] AS min_step,
           min(p.value) FILTER (WHERE {_FINITE}) AS min_value,
           (array_agg(p.step ORDER BY p.value DESC) FILTER (WHERE {_FINITE}))[1] AS max_step,
           max(p.value) FILTER (WHERE {_FINITE}) AS max_value
    FROM {_POINTS} p
    WHERE p.run_id = %(run)s AND p.key = t.key
      AND p.step BETWEEN t.bucket << t.level AND (t.bucket << t.level) + ((1::int8 << t.level) - 1)
) a
ON CONFLICT (run_id, key, level, bucket) DO UPDATE SET
    n = EXCLUDED.n, min_step = EXCLUDED.min_step, min_value = EXCLUDED.min_value,
    max_step = EXCLUDED.max_step, max_value = EXCLUDED.max_value
"""


def recompute(run_id: int, keys: list[str], buckets: Buckets) -> None:
    """Rebuild the given buckets from the points (inside the batch's transaction, which
    holds the run's row lock, so no other batch of the run is half-way)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _RECOMPUTE,
            {
                "run": run_id,
                "keys": [keys[i - 1] for i in buckets.key_index.tolist()],
                "levels": buckets.level.tolist(),
                "buckets": buckets.bucket.tolist(),
            },
        )


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overview:
    """Candidate points of a zoomed-out view: every bucket's min and max point, the range's
    first and last buckets raw. `total` counts every point of the range."""

    steps: np.ndarray
    values: np.ndarray
    total: int


def copy_rows(sql: str, params: list[object], dtype: np.dtype) -> np.ndarray:
    """The rows of `COPY (sql) TO STDOUT (FORMAT BINARY)` as a numpy record array; `dtype`
    spells a row (a 2-byte field count, then a 4-byte length before each field), and every
    field must be non-NULL and fixed-width. Several times faster than a tuple per row."""
    buf = bytearray()
    with connection.cursor() as cursor:
        raw = cursor.cursor  # the psycopg cursor: Django's wrapper has no copy()
        with raw.copy(f"COPY ({sql}) TO STDOUT (FORMAT BINARY)", params) as copy:
            for chunk in copy:
                buf += chunk
    # A 19-byte header and a 2-byte trailer around the rows.
    if len(buf) <= 21:
        return np.empty(0, dtype=dtype)
    return np.frombuffer(bytes(buf[19:-2]), dtype=dtype)


def row_dtype(*fields: tuple[str, str]) -> np.dtype:
    """The `copy_rows` dtype of rows of these (name, big-endian numpy type) fields."""
    spec: list[tuple[str, str]] = [("count", ">i2")]
    for i, (name, kind) in enumerate(fields):
        spec += [(f"len{i}", ">i4"), (name, kind)]
    return np.dtype(spec)


_ROW = row_dtype(
    ("bucket", ">i8"),
    ("n", ">i8"),
    ("min_step", ">i8"),
    ("min_value", ">f8"),
    ("max_step", ">i8"),
    ("max_value", ">f8"),
)
_ROWS = f"""
SELECT bucket, n::int8, COALESCE(min_step, 0), COALESCE(min_value, 'NaN'),
       COALESCE(max_step, 0), COALESCE(max_value, 'NaN')
FROM {_SUMMARY}
WHERE run_id = %s AND key = %s AND level = %s AND bucket BETWEEN %s AND %s ORDER BY bucket
"""

_MIN_STEP, _MAX_STEP = -(2**63), 2**63 - 1


def _rows(run_id: int, key: str, level: int, start: int, end: int) -> np.ndarray:
    return copy_rows(_ROWS, [run_id, key, level, start >> level, end >> level], _ROW)


def overview(
    run_id: int,
    key: str,
    start: int | None,
    end: int | None,
    max_points: int,
    fetch: Callable[[int, str, int, int], tuple[np.ndarray, np.ndarray]],
) -> Overview | None:
    """The candidates of a view of [start, end] from the summary, or None when the range
    holds few enough points (<= RAW_LIMIT) to be read raw. `fetch(run_id, key, lo, hi)`
    reads raw points.

    The coarsest level with more than `max_points` buckets in the range is used (two
    candidates per point drawn, as MinMaxLTTB's own preselection); failing that, the finest.
    """
    lo = _MIN_STEP if start is None else start
    hi = _MAX_STEP if end is None else end
    coarse_to_fine = sorted(LEVELS, reverse=True)
    level = coarse_to_fine[0]
    rows = _rows(run_id, key, level, lo, hi)
    if int(rows["n"].sum()) <= RAW_LIMIT:
        return None
    for finer in coarse_to_fine[1:]:
        if rows.shape[0] >= max_points + 2:
            break
        level, rows = finer, _rows(run_id, key, finer, lo, hi)
    # The first and last buckets may stick out of the range: read their points in it raw.
    head_steps, head_values = fetch(run_id, key, lo, ((int(rows["bucket"][0]) + 1) << level) - 1)
    tail_steps, tail_values = fetch(run_id, key, int(rows["bucket"][-1]) << level, hi)
    middle = rows[1:-1]
    total = int(head_steps.shape[0] + middle["n"].sum() + tail_steps.shape[0])
    middle = middle[~np.isnan(middle["min_value"])]
    min_steps, max_steps = middle["min_step"].astype(np.int64), middle["max_step"].astype(np.int64)
    min_values = middle["min_value"].astype(np.float64)
    max_values = middle["max_value"].astype(np.float64)
    # Per bucket its min and max point in step order; one point where they are the same.
    min_first = min_steps <= max_steps
    mid_steps = np.column_stack(
        [np.where(min_first, min_steps, max_steps), np.where(min_first, max_steps, min_steps)]
    ).ravel()
    mid_values = np.column_stack(
        [np.where(min_first, min_values, max_values), np.where(min_first, max_values, min_values)]
    ).ravel()
    keep = np.r_[True, mid_steps[1:] != mid_steps[:-1]][: mid_steps.shape[0]]
    return Overview(
        steps=np.concatenate([head_steps, mid_steps[keep], tail_steps]),
        values=np.concatenate([head_values, mid_values[keep], tail_values]),
        total=total,
    )


# --- whole-run overviews (the runs list's sparklines) -------------------------------------

# A run of up to this many steps is read raw; longer ones from the level whose buckets give
# at most about this many rows (min and max point each).
_OVERVIEW_ROWS = 4096
_OVERVIEW_RAW = f"""
SELECT run_id, step, value FROM {_POINTS}
WHERE run_id = ANY(%s) AND key = %s
  AND value NOT IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)
ORDER BY run_id, step
"""
_OVERVIEW_LEVEL = f"""
SELECT run_id, min_step, min_value, max_step, max_value FROM {_SUMMARY}
WHERE run_id = ANY(%s) AND key = %s AND level = %s AND min_value IS NOT NULL
ORDER BY run_id, bucket
"""
# Points written around the point writer (bulk SQL) have no summary: probe the index at
# evenly spaced steps instead (a spike between probes may be missed there).
_OVERVIEW_PROBES = 256
_OVERVIEW_PROBE = f"""
SELECT r.id, p.step, p.value
FROM unnest(%s::bigint[], %s::bigint[]) AS r(id, stride)
CROSS JOIN generate_series(0, {_OVERVIEW_PROBES - 1}) AS g(i)
CROSS JOIN LATERAL (
  SELECT step, value FROM {_POINTS} WHERE run_id = r.id AND key = %s AND step >= g.i * r.stride
  ORDER BY step LIMIT 1
) p
ORDER BY r.id, g.i
"""


def run_overviews(
    last_steps: dict[int, int | None], key: str
) -> dict[int, tuple[list[int], list[float]]]:
    """The finite points of `key` over each whole run, in step order: every point of a short
    run; a bucket's min and max point of a long one (so a one-step spike survives). Runs are
    given with their last step; one query per level used, whatever the number of runs."""
    out: dict[int, tuple[list[int], list[float]]] = {rid: ([], []) for rid in last_steps}
    by_level: dict[int | None, list[int]] = {}
    for rid, last in last_steps.items():
        rows, level = last or 0, None
        for candidate in LEVELS:
            if rows > _OVERVIEW_ROWS:
                level, rows = candidate, (last or 0) >> candidate
        by_level.setdefault(level, []).append(rid)
    with connection.cursor() as cursor:
        for level, ids in by_level.items():
            if level is None:
                cursor.execute(_OVERVIEW_RAW, [ids, key])
                for rid, step, value in cursor.fetchall():
                    out[rid][0].append(step)
                    out[rid][1].append(value)
                continue
            cursor.execute(_OVERVIEW_LEVEL, [ids, key, level])
            for rid, min_step, min_value, max_step, max_value in cursor.fetchall():
                steps, values = out[rid]
                pair = sorted(((min_step, min_value), (max_step, max_value)))
                for step, value in pair if pair[0][0] != pair[1][0] else pair[:1]:
                    steps.append(step)
                    values.append(value)
            unsummarized = [rid for rid in ids if not out[rid][0]]
            if unsummarized:
                strides = [(last_steps[rid] or 0) // _OVERVIEW_PROBES + 1 for rid in unsummarized]
                cursor.execute(_OVERVIEW_PROBE, [unsummarized, strides, key])
                for rid, step, value in cursor.fetchall():
                    steps, values = out[rid]
                    if (not steps or step > steps[-1]) and math.isfinite(value):
                        steps.append(step)
                        values.append(value)
    return out
