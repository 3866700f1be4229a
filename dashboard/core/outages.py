"""Which service an exception says is down: one answer for the API and the pages.

A Postgres or Redis outage is the user's to wait out, not a server bug: both answer 503 with
the service named and a Retry-After (which parity.Monitor honours).
"""

from __future__ import annotations

import kombu.exceptions
import redis.exceptions
from django import db

RETRY_AFTER_S = 5

_OUTAGES: tuple[tuple[tuple[type[BaseException], ...], str], ...] = (
    ((db.OperationalError, db.InterfaceError), "Postgres"),
    (
        (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            kombu.exceptions.OperationalError,  # the Celery broker (Redis) refused a message
        ),
        "Redis",
    ),
)


def service_down(exc: BaseException) -> str | None:
    """ "Postgres" or "Redis" when `exc` is that service being unreachable, else None."""
    for types, service in _OUTAGES:
        if isinstance(exc, types):
            return service
    return None
