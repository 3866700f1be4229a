"""Postgres for the web process: a connection a finished request closes is kept for the next
request (up to IDLE_CONNECTIONS of them), and checked with one round trip before reuse.

Under ASGI each request runs its database work in a thread of its own, so Django's
persistent connections (CONN_MAX_AGE) never outlive a request: every request paid a new
connection, ~10 ms of the ~50 ms a 1,000-point batch takes (#15, bench/bench_ingest.py).

Django's own pool (psycopg_pool) is not used: while Postgres is down it holds a request up
to its timeout instead of failing at once, and after an outage it reconnects on a growing
backoff, where /healthz must answer 503 at once and 200 within a second of recovery (#17).
Here a dead idle connection fails its check and a new one is opened as before, so an outage
looks exactly as it did without the reuse.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import psycopg
from django.db.backends.postgresql import base
from django.utils.asyncio import async_unsafe

# Idle connections by what they connect to (a test run points the same alias at another
# database): a reused connection is always one opened with the same parameters.
_idle: dict[tuple[tuple[str, str], ...], deque[psycopg.Connection[Any]]] = {}


def _key(conn_params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in conn_params.items()))


def _reusable(conn: psycopg.Connection[Any]) -> bool:
    """Open, outside any transaction, in autocommit (as Django leaves a connection it
    closes outside a transaction)."""
    return (
        not conn.closed
        and conn.autocommit
        and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    )


def _alive(conn: psycopg.Connection[Any]) -> bool:
    """One round trip: a connection Postgres dropped (a restart) fails it."""
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return _reusable(conn)


def close_idle() -> None:
    """Close every idle connection (before a test drops the database they point at)."""
    for idle in _idle.values():
        while idle:
            try:
                idle.pop().close()
            except IndexError:
                break


class DatabaseWrapper(base.DatabaseWrapper):
    @async_unsafe
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        # Where `_close` returns this connection: the parameters it was opened with.
        self._idle_key = _key(conn_params)
        idle = _idle.get(self._idle_key)
        while idle:
            try:
                conn = idle.pop()
            except IndexError:  # another thread took the last one
                break
            if _alive(conn):
                # What the parent sets on a new connection (no isolation level is configured:
                # see `dashboard.settings`, which enables this wrapper).
                self.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
                return conn
            conn.close()
        return super().get_new_connection(conn_params)

    def _close(self) -> None:
        conn = self.connection
        limit = int(self.settings_dict.get("IDLE_CONNECTIONS", 0))
        if conn is not None and limit and not self.errors_occurred and _reusable(conn):
            idle = _idle.setdefault(self._idle_key, deque())
            if len(idle) < limit:
                idle.append(conn)
                return
        super()._close()
