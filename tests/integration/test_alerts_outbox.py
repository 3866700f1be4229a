"""Outbox bookkeeping on the database, with the transport stubbed: retry scheduling,
Retry-After, giving up after the retry window, and the sweep's two jobs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from dashboard.alerts import delivery as outbox
from dashboard.alerts.models import Delivery, DeliveryAttempt, WebhookEndpoint
from dashboard.alerts.transports import Standard, TransportError
from tests.integration.alerts_support import apply_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch, settings: Any) -> list[tuple[int, float | None]]:
    apply_settings(settings)
    sent: list[tuple[int, float | None]] = []
    monkeypatch.setattr(outbox, "enqueue", lambda pk, countdown=None: sent.append((pk, countdown)))
    return sent


@pytest.fixture
def delivery(project_a: Any) -> Delivery:
    endpoint = WebhookEndpoint.objects.create(project=project_a, name="e", url="https://e.com/")
    return Delivery.objects.create(endpoint=endpoint, event="firing", body="{}")


def fail_with(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> None:
    def send(self: Standard, delivery: Delivery) -> Any:
        raise TransportError("boom", **kw)

    monkeypatch.setattr(Standard, "send", send)


def test_retryable_failure_is_rescheduled_with_backoff(
    delivery: Delivery, queued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_with(monkeypatch)
    assert outbox.send(delivery.pk) == "pending"
    delivery.refresh_from_db()
    wait = (delivery.next_attempt_at - timezone.now()).total_seconds()
    assert 0 < wait <= 0.2 and delivery.last_error == "boom"
    assert queued and queued[0][0] == delivery.pk and 0.1 <= queued[0][1] <= 0.2
    assert DeliveryAttempt.objects.get().outcome == "retry"
    assert outbox.send(delivery.pk) == "skipped"  # not due yet: nobody sends it early


def test_retry_after_is_respected(
    delivery: Delivery, queued: list[Any], monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    fail_with(monkeypatch, retry_after=900)
    outbox.send(delivery.pk)
    delivery.refresh_from_db()
    assert (delivery.next_attempt_at - timezone.now()).total_seconds() > 890
    assert queued == []  # too far out for a countdown: the sweep will pick it up


def test_gives_up_only_after_the_retry_window(
    delivery: Delivery, queued: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_with(monkeypatch)
    Delivery.objects.filter(pk=delivery.pk).update(
        retry_until=timezone.now() - timedelta(seconds=1)
    )
    assert outbox.send(delivery.pk) == "failed"
    delivery.refresh_from_db()
    assert delivery.last_error.startswith("Gave up after 1 attempts")
    assert DeliveryAttempt.objects.get().outcome == "failed"


def test_default_retry_window_is_at_least_a_day(project_a: Any) -> None:
    endpoint = WebhookEndpoint.objects.create(project=project_a, name="e", url="https://e.com/")
    d = Delivery.objects.create(endpoint=endpoint, event="firing", body="{}")
    assert d.retry_until - d.created >= timedelta(hours=24)


def test_sweep_reclaims_dead_workers_and_lost_messages(
    project_a: Any, delivery: Delivery, queued: list[Any]
) -> None:
    long_ago = timezone.now() - timedelta(minutes=5)
    Delivery.objects.filter(pk=delivery.pk).update(
        status="sending", claimed_at=long_ago, attempts=1
    )
    DeliveryAttempt.objects.create(delivery=delivery, number=1)  # in flight when the worker died
    lost = Delivery.objects.create(
        endpoint=delivery.endpoint, event="firing", body="{}", next_attempt_at=long_ago
    )
    # Due, and no message for it in the broker (never queued): sent too. (One whose message
    # the broker holds is not: tests/faults/test_deliveries_after_broker_outage.py.)
    fresh = Delivery.objects.create(endpoint=delivery.endpoint, event="firing", body="{}")
    busy = Delivery.objects.create(
        endpoint=delivery.endpoint,
        event="firing",
        body="{}",
        status="sending",
        claimed_at=timezone.now(),
    )
    assert outbox.sweep() == {"reclaimed": 1, "enqueued": 3, "repeated": 0}
    assert sorted(pk for pk, _ in queued) == sorted([delivery.pk, lost.pk, fresh.pk])
    delivery.refresh_from_db()
    assert delivery.status == "pending" and DeliveryAttempt.objects.get().outcome == "lost"
    assert Delivery.objects.get(pk=busy.pk).status == "sending"


def test_disabled_endpoint_fails_its_pending_deliveries(
    delivery: Delivery, queued: list[Any]
) -> None:
    delivery.endpoint.disable("410 Gone")
    assert outbox.send(delivery.pk) == "failed"
    assert "410 Gone" in Delivery.objects.get().last_error
    assert not DeliveryAttempt.objects.exists()
