from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def test_healthz_ok_when_postgres_and_redis_answer(client: Any) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}


def test_healthz_reports_down_redis_as_503(client: Any, settings: Any) -> None:
    # Nothing listens on port 1: a real connection refusal, not a mock.
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert body["postgres"] == "ok"
    assert body["redis"].startswith("down")
