"""#17 §8: a delivery created while the broker was down is sent at the first sweep after it
is back, not a whole stale window (60 s) plus a tick later."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard.alerts.delivery import sweep
from dashboard.alerts.models import AlertRule, Delivery, WebhookEndpoint
from dashboard.core import broker
from dashboard.core.models import Project, Run
from dashboard.core.points import Point, store_points

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def test_a_delivery_unsent_during_an_outage_goes_at_the_next_sweep(
    broker_on_private_redis: Any, settings: Any
) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    project = Project.objects.create(slug="p", name="p")
    endpoint = WebhookEndpoint.objects.create(
        project=project, name="hook", url="http://127.0.0.1:9/hook"
    )
    rule = AlertRule.objects.create(
        project=project, name="kl", metric_key="kl_k3", threshold=0.5, for_steps=1
    )
    rule.endpoints.set([endpoint])
    run = Run.objects.create(project=project, name="r")

    broker_on_private_redis.stop()
    store_points(run, [Point("kl_k3", 1, 0.9)])  # fires; its delivery cannot be queued
    delivery = Delivery.objects.get()
    broker_on_private_redis.start()
    assert broker.message_ids([settings.WEBHOOK_QUEUE]) == set()

    sweep()
    held = broker.message_ids([settings.WEBHOOK_QUEUE])
    assert held is not None and any(i.startswith(f"delivery-{delivery.pk}-") for i in held)
    sweep()  # its message is there now: not sent twice
    assert len(broker.message_ids([settings.WEBHOOK_QUEUE]) or ()) == 1
