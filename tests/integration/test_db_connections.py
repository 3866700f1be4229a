"""The web process keeps a connection a request closed for the next request
(dashboard.core.db.base), against the real Postgres: reused when alive, replaced when
Postgres dropped it (a restart, an admin's terminate), never handed out inside a transaction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection

from dashboard.core.db.base import DatabaseWrapper, close_idle

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


@pytest.fixture
def wrapper() -> Iterator[DatabaseWrapper]:
    """A second connection handle to the test database, set up as the web process's."""
    settings = {**connection.settings_dict, "CONN_MAX_AGE": 0, "IDLE_CONNECTIONS": 2}
    settings["ENGINE"] = "dashboard.core.db"
    w = DatabaseWrapper(settings)
    yield w
    w.close()
    close_idle()  # the test database is dropped at the end of the session


def backend_pid(w: DatabaseWrapper) -> int:
    with w.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def terminate(pid: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_closed_connection_serves_the_next_request(wrapper: DatabaseWrapper) -> None:
    first = backend_pid(wrapper)
    wrapper.close()
    assert wrapper.connection is None
    assert backend_pid(wrapper) == first


def test_a_connection_postgres_dropped_is_replaced_without_an_error(
    wrapper: DatabaseWrapper,
) -> None:
    first = backend_pid(wrapper)
    wrapper.close()
    terminate(first)
    second = backend_pid(wrapper)  # the idle one fails its check: a new one, no error
    assert second != first


def test_a_connection_closed_inside_a_transaction_is_not_kept(wrapper: DatabaseWrapper) -> None:
    wrapper.connect()
    raw: Any = wrapper.connection
    first = backend_pid(wrapper)
    raw.autocommit = False
    raw.execute("SELECT 1")  # a transaction is open
    assert raw.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    wrapper.close()
    assert raw.closed
    assert backend_pid(wrapper) != first
