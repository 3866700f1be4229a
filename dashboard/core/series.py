"""One key's series for the charts: read from Postgres by binary COPY, kept in a per-process
cache labelled with the run's series version, downsampled so that spikes survive. A long
series that this process does not hold is drawn from its summary (`dashboard.core.summary`),
which commits with the points, so a cold read of a million points stays fast.

The point writer (`dashboard.core.points`) tells the cache which steps each batch touched.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from dashboard.core import summary
from dashboard.core.models import MetricPoint, Run

log = logging.getLogger(__name__)

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


_COPY_ROW = summary.row_dtype(("step", ">i8"), ("value", ">f8"))


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
        f"SELECT step, value FROM {MetricPoint._meta.db_table} "
        f"WHERE {' AND '.join(where)} ORDER BY step"
    )
    rows = summary.copy_rows(sql, params, _COPY_ROW)
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
    """One key's series over [start, end], downsampled to at most `max_points` points.

    A series this process holds is read from its copy. Otherwise a range of many points is
    drawn from the summary (no copy is made: that is the slow read the summary avoids),
    and a range of few points in a long series is read raw, without copying the series.
    """
    if series_cache.holds(run.pk, key):
        steps, values = series_cache.get(run.pk, key, start, end)
        total = int(steps.shape[0])
    else:
        view = _overview(run.pk, key, start, end, max_points)
        if view is not None:
            steps, values, total = view.steps, view.values, view.total
        elif start is None and end is None:
            steps, values = series_cache.get(run.pk, key)
            total = int(steps.shape[0])
        else:
            steps, values = fetch_series(run.pk, key, start, end)
            total = int(steps.shape[0])
    idx = downsample(steps, values, max_points)
    picked = values[idx]
    out_values: list[float | None] = [
        float(v) if math.isfinite(v) else None for v in picked.tolist()
    ]
    return Series(key=key, total=total, steps=steps[idx].tolist(), values=out_values)


# Views drawn from the summary, each labelled with the run's series version when it was
# drawn (read first, so a view may hold newer points than its label, never older ones).
_VIEWS_KEPT = 128
_views: OrderedDict[tuple[int, str, int | None, int | None, int], tuple[int, summary.Overview]]
_views = OrderedDict()
_views_lock = threading.Lock()


def _overview(
    run_id: int, key: str, start: int | None, end: int | None, max_points: int
) -> summary.Overview | None:
    """`summary.overview`, kept while the run's series version stands: a chart's refresh
    of an unchanged long run costs one version lookup."""
    version = _series_version(run_id)
    view_key = (run_id, key, start, end, max_points)
    with _views_lock:
        kept = _views.get(view_key)
        if kept is not None and kept[0] == version:
            _views.move_to_end(view_key)
            return kept[1]
    view = summary.overview(run_id, key, start, end, max_points, fetch_series)
    with _views_lock:
        if view is None:
            _views.pop(view_key, None)
        else:
            _views[view_key] = (version, view)
            _views.move_to_end(view_key)
            while len(_views) > _VIEWS_KEPT:
                _views.popitem(last=False)
    return view


def _series_version(run_id: int) -> int:
    return Run.objects.filter(pk=run_id).values_list("series_version", flat=True).first() or 0


# --- the cache ----------------------------------------------------------------------------


class SeriesCache:
    """Whole series of (run, key) kept as numpy arrays in this process.

    Reading a million points back from Postgres takes seconds; a chart re-reads the same
    series on every refresh. Each copy is labelled with the run's `series_version`, which
    Postgres bumps in the transaction of every batch, so a copy is trusted only while that
    version stands: a Redis restart cannot make a stale copy look fresh. Redis only helps to
    patch a copy cheaply: every committed batch records there the lowest step it touched,
    and a copy whose every later version is on record re-fetches only from that step on (a
    live run appends, so that is the tail). Any gap in the record — Redis restarted, down
    when a batch committed, or the record trimmed — means a whole re-read from Postgres.
    """

    # Change records kept per run; a copy older than that is re-read whole.
    KEEP_CHANGES = 2000

    _RECORD = """
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1] .. ':' .. ARGV[2])
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[3]) - 1)
    redis.call('EXPIRE', KEYS[1], ARGV[4])
    """

    def __init__(self, max_bytes: int = 512 * 1024 * 1024, ttl_s: int = 30 * 86400) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        # (run_id, key) -> (series version, steps, values); LRU order.
        self._entries: OrderedDict[tuple[int, str], tuple[int, np.ndarray, np.ndarray]] = (
            OrderedDict()
        )
        self._bytes = 0
        self._redis = None

    def _client(self):  # type: ignore[no-untyped-def]
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(
                settings.REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5
            )
        return self._redis

    def _changes_key(self, run_id: int) -> str:
        return f"parity:series:{settings.DATABASES['default']['NAME']}:{run_id}:changes"

    def changed(self, run_id: int, version: int, min_step: int) -> None:
        """Record, after commit, that batch `version` of `run_id` touched steps >= min_step."""
        try:
            self._client().eval(
                self._RECORD,
                1,
                self._changes_key(run_id),
                version,
                min_step,
                self.KEEP_CHANGES,
                self.ttl_s,
            )
        except Exception:  # noqa: BLE001 - a cache must not fail a committed write
            # The gap in the record makes every copy of this run re-read whole: slower, right.
            log.warning("series cache: could not record a change of run %s", run_id, exc_info=True)

    def holds(self, run_id: int, key: str) -> bool:
        """Whether this process has a copy of the series (of any version)."""
        with self._lock:
            return (run_id, key) in self._entries

    def forget_all(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
        with _views_lock:
            _views.clear()

    def _drop(self, entry_key: tuple[int, str]) -> None:
        _, steps, values = self._entries.pop(entry_key)
        self._bytes -= steps.nbytes + values.nbytes

    def _lowest_change(self, run_id: int, version: int, current: int) -> int | None:
        """Lowest step touched by versions (version, current], if every one is on record."""
        try:
            changes = self._client().zrangebyscore(self._changes_key(run_id), version + 1, current)
        except Exception:  # noqa: BLE001 - re-read from Postgres
            log.warning("series cache: Redis unreachable, reading from Postgres", exc_info=True)
            return None
        recorded = {int(member.decode().split(":", 1)[0]) for member in changes}
        if len(recorded) != current - version:
            return None
        return min(int(member.decode().split(":", 1)[1]) for member in changes)

    def get(
        self, run_id: int, key: str, start: int | None = None, end: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one key within [start, end]."""
        entry_key = (run_id, key)
        # The version first, then the points: a copy may hold newer points than its label
        # says (re-fetched again later, harmless), never older ones.
        current = _series_version(run_id)
        with self._lock:
            entry = self._entries.get(entry_key)
        lowest = None
        if entry is not None and entry[0] < current:
            lowest = self._lowest_change(run_id, entry[0], current)
        if entry is not None and entry[0] == current:
            steps, values = entry[1], entry[2]
        elif entry is not None and lowest is not None:
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
