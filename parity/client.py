"""The client training loops import: metrics computed in-process, sent in the background.

    mon = parity.Monitor(project="grpo", run="qwen-7b-lr1e-6", config={...})
    mon.log_step(step, trainer_logprobs=lt, rollout_logprobs=lr, mask=mask)
    mon.log(step, {"reward": 0.41})
    mon.finish()

Promises to the training loop:
- `log_step` / `log` never wait for the network and never raise because of it: points go
  to a bounded in-memory buffer that a daemon thread sends in batches.
- A server blip costs nothing: failed batches are retried with exponential backoff (5xx,
  429, connection errors), and re-sending is safe because the server upserts on
  (run, key, step).
- A long outage costs no memory beyond `max_buffer` points: the overflow is appended to a
  spill file (JSONL, one point a line) that is replayed once the server answers, also by
  the next Monitor of the same run if this process ends first. Only when the spill file is
  full (or disabled) are points dropped, with a warning.
- At `finish()` and at interpreter exit the buffer is flushed (bounded by `finish_timeout`);
  what could not be sent is saved to the spill file.

Depends on numpy and httpx only: no Django, and torch tensors are accepted without importing
torch. One file on purpose (past ~600 lines): it is what users vendor or read when a point
goes missing, and the buffer, the sender thread and the spill file share one condition.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import random
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from parity.metrics import MetricsResult, Thresholds, compute_metrics, scalar_values
from parity.weight_versions import WEIGHT_VERSION_KEY

__all__ = ["Monitor", "scalar_values", "to_numpy"]

log = logging.getLogger("parity.client")

MAX_BATCH = 10_000  # the server's limit per request
MAX_KEY_LEN = 128
# Retry these: the request may succeed later. Any other 4xx is a bug in what was sent.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# The longest Retry-After honoured: a server asking for more gets asked again sooner.
MAX_RETRY_AFTER_S = 300.0


def _retry_after_s(value: str | None) -> float:
    """A Retry-After in delta-seconds (ASCII digits), capped; 0 for none or anything else."""
    value = (value or "").strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 6:
        return 0.0
    return min(float(value), MAX_RETRY_AFTER_S)


def to_numpy(x: Any) -> np.ndarray:
    """numpy view of a list, an array or a torch tensor (any device, bf16 included)."""
    if hasattr(x, "detach"):
        # torch: leave autograd, widen bf16/fp16 (numpy has no bf16), move to host.
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _flatten(
    lt: np.ndarray, lr: np.ndarray, mask: Any, seq_lens: Any, entropy: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, Any, np.ndarray | None]:
    """Response tokens as flat arrays plus per-sequence lengths, from padded or flat input."""
    if lt.shape != lr.shape:
        raise ValueError(f"trainer_logprobs has shape {lt.shape} but rollout_logprobs {lr.shape}")
    if mask is not None:
        m = to_numpy(mask).astype(bool)
        if m.shape != lt.shape:
            raise ValueError(f"mask has shape {m.shape} but the logprobs {lt.shape}")
        if lt.ndim == 2:
            seq_lens = m.sum(axis=1)
        return lt[m], lr[m], seq_lens, (entropy[m] if entropy is not None else None)
    if lt.ndim == 2 and seq_lens is None:
        # Padded without a mask: every position is a response token.
        seq_lens = np.full(lt.shape[0], lt.shape[1], dtype=np.int64)
    if lt.ndim == 2:
        return lt.ravel(), lr.ravel(), seq_lens, entropy.ravel() if entropy is not None else None
    return lt, lr, seq_lens, entropy


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    return int(step)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:100] or "_"


class _Spill:
    """An append-only JSONL file of points, read back from the front.

    `read` hands out lines from the read offset; `commit` moves the committed offset once
    they are on the server, and the file is removed when all of it is. A process that ends
    with a spill file leaves it for the next Monitor of the same run, which sends it again
    from the start (duplicates are harmless: the server upserts).
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.read_offset = 0
        self.size = path.stat().st_size if path.exists() else 0

    @property
    def pending(self) -> bool:
        return self.read_offset < self.size

    @property
    def active(self) -> bool:
        return self.size > 0

    def append(self, points: list[dict[str, Any]]) -> int:
        """Append as many points as fit; return how many were written."""
        lines = [json.dumps(p, separators=(",", ":")) + "\n" for p in points]
        data = "".join(lines).encode()
        if self.size + len(data) > self.max_bytes:
            room = self.max_bytes - self.size
            n, used = 0, 0
            for line in lines:
                if used + len(line) > room:
                    break
                used += len(line)
                n += 1
            lines = lines[:n]
            data = "".join(lines).encode()
        if data:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(data)
            self.size += len(data)
        return len(lines)

    def read(self, max_points: int) -> tuple[list[dict[str, Any]], int]:
        """Up to max_points points from the read offset, and the offset after them."""
        points: list[dict[str, Any]] = []
        with open(self.path, "rb") as f:
            f.seek(self.read_offset)
            offset = self.read_offset
            while len(points) < max_points:
                line = f.readline()
                if not line:
                    break
                offset += len(line)
                try:
                    points.append(json.loads(line))
                except ValueError:
                    log.warning("parity: skipping a corrupt line in %s", self.path)
        return points, offset

    def commit(self, offset: int) -> None:
        self.read_offset = offset
        if self.read_offset >= self.size:
            self.clear()

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.read_offset = 0
        self.size = 0


class _Item:
    """One request the sender makes; `points` are what it carries (for accounting/fallback)."""

    __slots__ = ("kind", "points", "body", "content_type", "spill_offset")

    def __init__(
        self,
        kind: str,
        points: list[dict[str, Any]],
        body: bytes | None = None,
        spill_offset: int | None = None,
        content_type: str = "",
    ) -> None:
        self.kind = kind  # "points" | "raw"
        self.points = points
        self.body = body
        self.content_type = content_type
        self.spill_offset = spill_offset


class Monitor:
    """Send one run's per-step metrics to a Parity server without slowing the loop down."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        project: str,
        run: str,
        config: Mapping[str, Any] | None = None,
        tags: list[str] | None = None,
        kind: str = "training",
        thresholds: Thresholds | Mapping[str, float] | None = None,
        batch_size: int = 1000,
        flush_interval: float = 1.0,
        max_buffer: int = 100_000,
        max_raw_bytes: int = 64 * 1024 * 1024,
        spill_dir: str | os.PathLike[str] | None = None,
        max_spill_bytes: int = 1024**3,
        timeout: float = 10.0,
        max_backoff: float = 30.0,
        finish_timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`url`/`token` default to $PARITY_URL / $PARITY_TOKEN; without a URL nothing is sent
        (metrics are still computed and returned). `config` becomes the run's fingerprint.
        `spill_dir` (default $PARITY_SPILL_DIR or ~/.cache/parity/spill; False disables
        spilling) holds the spill file of this run. `transport` is httpx's (tests, proxies).
        """
        self.url = (url or os.environ.get("PARITY_URL") or "").rstrip("/")
        token = token or os.environ.get("PARITY_TOKEN")
        self.project = project
        self.run_name = run
        self.thresholds = (
            thresholds
            if isinstance(thresholds, Thresholds) or thresholds is None
            else Thresholds.from_dict(thresholds)
        )
        self.batch_size = max(1, min(batch_size, MAX_BATCH))
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.max_raw_bytes = max_raw_bytes
        self.max_backoff = max_backoff
        self.finish_timeout = finish_timeout
        self.run_id: int | None = None
        self.dropped = 0  # points lost for good (spill full or disabled); also warned about
        self.sent = 0  # points the server acknowledged
        self._run_spec = {
            "project": project,
            "name": run,
            "kind": kind,
            "fingerprint": _json_safe(dict(config or {})),
            "tags": list(tags or []),
            "status": "running",
        }
        self._cond = threading.Condition()
        self._buffer: deque[dict[str, Any]] = deque()
        self._raw: deque[_Item] = deque()
        self._raw_bytes = 0
        self._inflight: _Item | None = None
        self._status: str | None = None
        self._closing = False
        self._deadline: float | None = None
        self._disabled: str | None = None
        self._last_drop_warning = 0.0
        self._spill: _Spill | None = None
        if spill_dir is not False:
            base = Path(
                spill_dir
                or os.environ.get("PARITY_SPILL_DIR")
                or Path.home() / ".cache" / "parity" / "spill"
            )
            self._spill = _Spill(base / f"{_slug(project)}__{_slug(run)}.jsonl", max_spill_bytes)
            if self._spill.active:
                log.warning("parity: replaying %s left by an earlier process", self._spill.path)
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0  # monotonic time before which the sender sends nothing
        self._retry_after = 0.0  # seconds the server asked for with its last refusal
        self._http: httpx.Client | None = None
        if not self.url:
            self._disabled = "no server URL (pass url= or set PARITY_URL)"
            log.warning("parity: %s; metrics are computed but not sent", self._disabled)
            return
        if not token:
            log.warning(
                "parity: no token (pass token= or set PARITY_TOKEN); the server will refuse"
            )
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token or ''}"},
            timeout=timeout,
            transport=transport,
        )
        self._thread = threading.Thread(target=self._send_loop, name="parity-monitor", daemon=True)
        self._thread.start()
        # A weak reference: registering the bound method would keep every Monitor alive.
        ref = weakref.ref(self)
        atexit.register(_at_exit, ref)

    # --- what the training loop calls -------------------------------------------------------

    def log_step(
        self,
        step: int,
        *,
        trainer_logprobs: Any,
        rollout_logprobs: Any,
        mask: Any = None,
        seq_lens: Any = None,
        entropy: Any = None,
        upload_raw: bool = False,
        weight_version: float | None = None,
    ) -> dict[str, Any]:
        """Compute every METRICS.md metric of this step's response tokens, queue them, and
        return them (metric key -> value, None where it cannot be computed).

        `trainer_logprobs` (lt) and `rollout_logprobs` (lr) are flat arrays of response tokens
        with `seq_lens` per sequence, or padded [batch, time] arrays with a response `mask`
        of the same shape. `upload_raw=True` sends the arrays and lets the server compute
        (same function, same values) instead of sending the values. `weight_version` (the
        policy version that served this step's rollouts) goes with the step as the
        `weight_version` key: the run page marks where it changes and judges the gap after
        each update (parity.weight_versions).
        """
        step = _check_step(step)
        version = None if weight_version is None else float(weight_version)
        if version is not None and not math.isfinite(version):
            raise ValueError(f"weight_version must be a finite number, got {weight_version!r}")
        lt = to_numpy(trainer_logprobs)
        lr = to_numpy(rollout_logprobs)
        ent = to_numpy(entropy) if entropy is not None else None
        lt, lr, lens, ent = _flatten(lt, lr, mask, seq_lens, ent)
        result = self.compute(lt, lr, lens, entropy=ent)
        values = dict(result.values)
        points = self._points(step, scalar_values(values))
        if version is not None:
            # Its own point, so that a raw upload (which carries only the arrays) keeps it.
            self._enqueue(self._points(step, {WEIGHT_VERSION_KEY: version}))
        if upload_raw and not self._disabled:
            content_type, body = _pack_raw(step, lt, lr, lens, ent)
            with self._cond:
                if self._raw_bytes + len(body) <= self.max_raw_bytes:
                    self._raw.append(_Item("raw", points, body, content_type=content_type))
                    self._raw_bytes += len(body)
                    self._cond.notify()
                    return values
            log.warning("parity: raw upload buffer full; sending step %d as values", step)
        self._enqueue(points)
        return values

    def compute(
        self, lt: Any, lr: Any, seq_lens: Any = None, *, entropy: Any = None
    ) -> MetricsResult:
        """parity.metrics on flat arrays with this monitor's thresholds; nothing is sent."""
        return compute_metrics(lt, lr, seq_lens, entropy=entropy, thresholds=self.thresholds)

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        """Queue any scalars for `step` ({"reward": 0.41, ...}).

        Values that are not finite numbers are skipped with a warning: the server would
        refuse the whole batch for one NaN.
        """
        step = _check_step(step)
        clean = scalar_values(values)
        skipped = [k for k in values if k not in clean]
        if skipped:
            log.warning("parity: step %d: skipping non-finite or non-numeric %s", step, skipped)
        self._enqueue(self._points(step, clean))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is on the server; False if `timeout` ran out."""
        if self._thread is None:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while not self._idle():
                if self._disabled or not self._thread.is_alive():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.1 if left is None else min(left, 0.1))
        return True

    def finish(self, status: str = "finished", timeout: float | None = None) -> bool:
        """Send what is queued, set the run's status, stop. True when all of it arrived.

        Waits at most `timeout` (default `finish_timeout`); what is still unsent then is
        saved to the spill file for the next Monitor of this run.
        """
        if self._thread is None:
            return False
        timeout = self.finish_timeout if timeout is None else timeout
        with self._cond:
            if self._closing:
                return self._idle()
            self._status = status
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout + 1.0)
        with self._cond:
            ok = self._idle()
            self._save_unsent()
        if self._http is not None:
            self._http.close()
        return ok

    @property
    def pending(self) -> int:
        """Points queued in memory and not yet acknowledged (the spill file not counted)."""
        with self._cond:
            inflight = len(self._inflight.points) if self._inflight else 0
            return len(self._buffer) + sum(len(i.points) for i in self._raw) + inflight

    # --- queueing -----------------------------------------------------------------------------

    def _points(self, step: int, values: Mapping[str, float]) -> list[dict[str, Any]]:
        now = time.time()
        out = []
        for key, value in values.items():
            if not key or len(key) > MAX_KEY_LEN or "\x00" in key:
                log.warning("parity: skipping key %r (1 to %d characters)", key[:40], MAX_KEY_LEN)
                continue
            out.append({"key": key, "step": step, "value": value, "time": now})
        return out

    def _enqueue(self, points: list[dict[str, Any]]) -> None:
        if not points or (self._disabled and self._thread is None):
            return
        with self._cond:
            if self._disabled:
                self._drop(len(points), self._disabled)
                return
            # Once points spill, later ones follow them to disk so the order is kept.
            spilling = self._spill is not None and self._spill.active
            room = 0 if spilling else max(0, self.max_buffer - len(self._buffer))
            self._buffer.extend(points[:room])
            rest = points[room:]
            if rest:
                self._to_spill(rest)
            if len(self._buffer) >= self.batch_size or rest:
                self._cond.notify()

    def _to_spill(self, points: list[dict[str, Any]]) -> None:
        written = 0
        if self._spill is not None:
            try:
                written = self._spill.append(points)
            except OSError as exc:
                log.warning("parity: cannot write spill file %s: %s", self._spill.path, exc)
        if written < len(points):
            self._drop(len(points) - written, "buffer and spill file full")

    def _drop(self, n: int, why: str) -> None:
        self.dropped += n
        now = time.monotonic()
        if now - self._last_drop_warning > 10:
            self._last_drop_warning = now
            log.warning("parity: dropping points (%s); %d dropped so far", why, self.dropped)

    def _idle(self) -> bool:
        spill_pending = self._spill is not None and self._spill.active
        return (
            not self._buffer
            and not self._raw
            and self._inflight is None
            and not spill_pending
            and self._status is None
        )

    def _save_unsent(self) -> None:
        """At the end: everything unsent goes to the spill file (raw uploads as values)."""
        unsent: list[dict[str, Any]] = []
        if self._inflight is not None and self._inflight.spill_offset is None:
            unsent.extend(self._inflight.points)
        self._inflight = None
        unsent.extend(self._buffer)
        self._buffer.clear()
        for item in self._raw:
            unsent.extend(item.points)
        self._raw.clear()
        self._raw_bytes = 0
        if unsent:
            self._to_spill(unsent)
            if self._spill is not None:
                log.warning(
                    "parity: %d points not sent; saved to %s for the next run with this name",
                    len(unsent),
                    self._spill.path,
                )
        if self._status is not None:
            log.warning("parity: could not set the run's status to %r", self._status)

    # --- the sender thread --------------------------------------------------------------------

    def _next(self) -> _Item | str | None:
        """Under the lock: the next thing to send (a retry first), "status", or None."""
        if self._inflight is not None:
            return self._inflight
        if self._buffer:
            n = min(self.batch_size, len(self._buffer))
            item = _Item("points", [self._buffer.popleft() for _ in range(n)])
        elif self._spill is not None and self._spill.pending:
            points, offset = self._spill.read(self.batch_size)
            item = _Item("points", points, spill_offset=offset)
        elif self._raw:
            item = self._raw.popleft()
            self._raw_bytes -= len(item.body or b"")
        elif self._status is not None:
            return "status"
        else:
            return None
        self._inflight = item
        return item

    def _send_loop(self) -> None:
        attempt = 0
        while True:
            with self._cond:
                # Wait to fill a batch only when nothing else is ready: a backlog on disk
                # after an outage goes out back to back, not one batch per interval.
                backlog = (
                    len(self._buffer) >= self.batch_size
                    or self._inflight is not None
                    or bool(self._raw)
                    or (self._spill is not None and self._spill.pending)
                )
                if not self._closing and not backlog:
                    self._cond.wait(self.flush_interval)
                if self._closing and (
                    self._idle() or time.monotonic() > (self._deadline or 0) or self._disabled
                ):
                    self._cond.notify_all()
                    return
                if self._disabled:
                    continue
                # Back off by time, not by calls: log() wakes this thread on every point,
                # and a retry must still wait its turn.
                wait_s = self._retry_at - time.monotonic()
                if wait_s > 0:
                    if self._closing and self._deadline is not None:
                        wait_s = min(wait_s, max(0.0, self._deadline - time.monotonic()))
                    self._cond.wait(wait_s)
                    continue
                job = self._next() if self.run_id is not None else "run"
            if job is None:
                continue
            try:
                ok = self._send(job)
            except Exception:  # noqa: BLE001 - the sender must outlive any surprise
                log.exception("parity: unexpected error while sending; will retry")
                ok = False
            if ok:
                attempt = 0
                continue
            attempt += 1
            delay = min(self.max_backoff, 0.25 * 2 ** min(attempt, 20)) * (
                0.5 + random.random() / 2
            )
            with self._cond:
                # The server's Retry-After (a 503 while Postgres or Redis is down) wins.
                self._retry_at = time.monotonic() + max(delay, self._retry_after)
                self._retry_after = 0.0

    def _send(self, job: _Item | str) -> bool:
        """One request; True when it is done with (sent, or refused for good)."""
        assert self._http is not None
        try:
            if job == "run":
                response = self._http.post("/api/runs", json=self._run_spec)
            elif job == "status":
                response = self._http.patch(
                    f"/api/runs/{self.run_id}", json={"status": self._status}
                )
            elif isinstance(job, _Item) and job.kind == "raw":
                path = (
                    "logprobs.msgpack" if job.content_type == "application/msgpack" else "logprobs"
                )
                response = self._http.post(
                    f"/api/runs/{self.run_id}/{path}",
                    content=job.body,
                    headers={"Content-Type": job.content_type},
                )
            else:
                assert isinstance(job, _Item)
                response = self._http.post(
                    f"/api/runs/{self.run_id}/points", json={"points": job.points}
                )
        except httpx.HTTPError as exc:
            log.debug("parity: %s; will retry", exc)
            return False
        if response.status_code in RETRY_STATUSES:
            log.debug("parity: server answered %d; will retry", response.status_code)
            self._retry_after = _retry_after_s(response.headers.get("Retry-After"))
            return False
        refused = response.status_code >= 400
        if refused:
            detail = response.text[:500]
            if job == "run" or response.status_code in (401, 403):
                with self._cond:
                    self._disabled = f"server refused ({response.status_code}: {detail})"
                    self._cond.notify_all()
                log.error("parity: %s; nothing more will be sent", self._disabled)
                return True
            log.warning(
                "parity: server refused a %s batch (%d: %s); dropping it",
                job if isinstance(job, str) else job.kind,
                response.status_code,
                detail,
            )
        with self._cond:
            if job == "run":
                self.run_id = int(response.json()["id"])
            elif job == "status":
                self._status = None
            elif isinstance(job, _Item):
                if refused:
                    self.dropped += len(job.points)
                else:
                    self.sent += len(job.points)
                if job.spill_offset is not None and self._spill is not None:
                    self._spill.commit(job.spill_offset)
                self._inflight = None
            self._cond.notify_all()
        return True

    def _at_exit(self) -> None:
        if self._thread is not None and self._thread.is_alive() and not self._closing:
            # Flush only: whether the run finished or crashed is for finish() to say.
            self.flush(self.finish_timeout)
            with self._cond:
                self._closing = True
                self._deadline = time.monotonic()
                self._cond.notify_all()
            self._thread.join(2.0)
            with self._cond:
                self._save_unsent()


def _at_exit(ref: weakref.ReferenceType[Monitor]) -> None:
    monitor = ref()
    if monitor is not None:
        monitor._at_exit()


def _pack_raw(
    step: int, lt: np.ndarray, lr: np.ndarray, seq_lens: Any, entropy: np.ndarray | None
) -> tuple[str, bytes]:
    """(content type, body) of a raw upload: msgpack with binary arrays, JSON without msgpack.

    float32/float64 go as they are (the server widens to float64 exactly as
    parity.metrics does here), so both sides compute on identical numbers.
    """

    def native(a: Any, kind: str) -> np.ndarray:
        a = np.asarray(a)
        if kind == "f":
            return a.astype("<f4" if a.dtype == np.float32 else "<f8", copy=False)
        return a.astype("<i8", copy=False)

    arrays = {
        "lt": (lt, "f"),
        "lr": (lr, "f"),
        "seq_lens": (seq_lens, "i"),
        "entropy": (entropy, "f"),
    }
    try:
        import msgpack
    except ImportError:
        body = {
            "step": step,
            **{
                name: native(a, kind).tolist()
                for name, (a, kind) in arrays.items()
                if a is not None
            },
        }
        return "application/json", json.dumps(body).encode()
    packed: dict[str, Any] = {"step": step}
    for name, (a, kind) in arrays.items():
        if a is not None:
            x = np.ascontiguousarray(native(a, kind))
            packed[name] = {"dtype": x.dtype.str, "data": x.tobytes()}
    return "application/msgpack", msgpack.packb(packed, use_bin_type=True)


def _json_safe(value: Any) -> Any:
    """A config as JSON the server accepts: finite numbers, strings; anything else as str."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, np.integer):
        return int(value)
    return str(value)
