"""Webhooks that arrive: a real receiver process, a real Celery worker, real Postgres/Redis.

The first test posts its points through the ingest API (POST /api/runs/{id}/points), as a
training loop does; the others call `store_points`, the one path that endpoint and job
results both go through.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from dashboard.alerts import delivery as outbox
from dashboard.alerts.models import AlertRule, Delivery, DeliveryAttempt, Incident, WebhookEndpoint
from dashboard.alerts.tasks import deliver, sweep_deliveries
from dashboard.alerts.transports import Event, transport_for
from dashboard.core.models import Run
from dashboard.core.points import Point, store_points
from tests.conftest import Worker, wait_for
from tests.integration.alerts_support import QUEUE, Receiver, apply_settings, start_worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def alerts_worker(django_db_setup: Any, artifacts_dir: Path) -> Iterator[Worker]:
    worker = start_worker(
        QUEUE, artifacts_dir / f"alerts-worker-{os.getpid()}.log", f"alerts{os.getpid()}"
    )
    yield worker
    worker.stop()


@pytest.fixture
def receiver(artifacts_dir: Path, request: Any) -> Iterator[Receiver]:
    rec = Receiver(artifacts_dir / f"receiver-{os.getpid()}-{request.node.name[:40]}.jsonl")
    yield rec
    rec.stop()


@pytest.fixture
def run(project_a: Any, settings: Any) -> Run:
    apply_settings(settings)
    return Run.objects.create(project=project_a, name="grpo-7b")


def endpoint_rule(project: Any, url: str, **rule: Any) -> tuple[WebhookEndpoint, AlertRule]:
    endpoint = WebhookEndpoint.objects.create(project=project, name="ops", url=url)
    fields: dict[str, Any] = {"name": "KL drift", "metric_key": "kl_k3", "threshold": 0.05}
    fields.update(rule)
    alert_rule = AlertRule.objects.create(project=project, **fields)
    alert_rule.endpoints.add(endpoint)
    return endpoint, alert_rule


def put(run: Run, start: int, *values: float) -> None:
    store_points(run, [Point("kl_k3", start + i, v) for i, v in enumerate(values)])


def test_firing_then_resolved_reach_the_receiver_signed(
    transactional_db: Any,
    alerts_worker: Worker,
    receiver: Receiver,
    run: Run,
    project_a: Any,
    client: Any,
    alice_token: str,
) -> None:
    receiver.start()
    endpoint, _ = endpoint_rule(project_a, receiver.url, for_steps=2, recovery_threshold=0.03)

    def post(start: int, *values: float) -> None:
        points = [{"key": "kl_k3", "step": start + i, "value": v} for i, v in enumerate(values)]
        response = client.post(
            f"/api/runs/{run.pk}/points",
            {"points": points},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {alice_token}",
        )
        assert response.status_code == 200, response.content

    post(3999, 0.01, 0.08)  # pending at 4000
    post(4001, 0.09)  # fires
    post(4002, 0.04, 0.02)  # holds at 0.04 (hysteresis), resolves at 0.02

    got = wait_for(lambda: len(receiver.requests()) >= 2 and receiver.requests(), timeout=30)
    wh = Webhook(endpoint.secret)
    bodies = [wh.verify(r["body"], r["headers"]) for r in got]  # raises unless signed right
    assert [b["status"] for b in bodies] == ["firing", "resolved"]
    firing, resolved = bodies
    assert firing["alerts"][0]["labels"] == {
        "alertname": "KL drift",
        "severity": "warning",
        "project": "proj-a",
        "run": "grpo-7b",
        "metric": "kl_k3",
    }
    assert firing["parity"]["step"] == 4001 and firing["parity"]["value"] == 0.09
    assert firing["alerts"][0]["generatorURL"].endswith(f"/runs/{run.pk}/")
    assert resolved["parity"]["step"] == 4003 and resolved["parity"]["value"] == 0.02
    assert resolved["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    assert got[0]["headers"]["webhook-id"] != got[1]["headers"]["webhook-id"]

    incident = Incident.objects.get()
    assert (incident.state, incident.fired_step, incident.resolved_step) == ("resolved", 4001, 4003)
    wait_for(lambda: not Delivery.objects.exclude(status="delivered").exists(), timeout=10)
    attempts = DeliveryAttempt.objects.all()
    assert [(a.outcome, a.status_code) for a in attempts] == [("success", 200)] * 2
    assert all('"received"' in a.response_excerpt and a.latency_ms is not None for a in attempts)


def test_receiver_down_then_503_then_back_nothing_lost(
    transactional_db: Any, alerts_worker: Worker, receiver: Receiver, run: Run, project_a: Any
) -> None:
    endpoint_rule(project_a, receiver.url)  # nothing listens there yet: connection refused
    put(run, 1, 0.5)
    delivery = Delivery.objects.get()
    wait_for(lambda: DeliveryAttempt.objects.filter(delivery=delivery).count() >= 2, timeout=20)
    receiver.start("--responses", "503,503,200")

    wait_for(lambda: Delivery.objects.get().status == "delivered", timeout=30)
    delivery.refresh_from_db()
    attempts = list(DeliveryAttempt.objects.filter(delivery=delivery).order_by("number"))
    assert [a.number for a in attempts] == list(range(1, delivery.attempts + 1))
    refused = [a for a in attempts if a.status_code is None]
    assert len(refused) >= 2 and all("connect" in a.error.lower() for a in refused)
    assert all(a.outcome == "retry" for a in attempts[:-1])
    assert [a.status_code for a in attempts if a.status_code] == [503, 503, 200]
    assert attempts[-1].outcome == "success"
    got = receiver.requests()
    assert len(got) == 3
    # The same message every time: same id for deduplication, same bytes.
    assert {r["headers"]["webhook-id"] for r in got} == {delivery.webhook_id}
    assert {r["body"] for r in got} == {delivery.body}


def test_a_worker_killed_mid_delivery_is_swept_and_resent(
    transactional_db: Any,
    alerts_worker: Worker,
    receiver: Receiver,
    run: Run,
    project_a: Any,
    artifacts_dir: Path,
) -> None:
    # The first request hangs (the receiver never answers it); later ones are answered.
    receiver.start("--hang-first", "1", "--hang-s", "60")
    endpoint, rule = endpoint_rule(project_a, receiver.url)
    rule.endpoints.clear()  # written by hand below, to route it to the doomed worker
    put(run, 1, 0.5)
    incident = Incident.objects.get()
    body = transport_for(endpoint).render(Event.for_incident(incident, "firing"))
    delivery = Delivery.objects.create(
        endpoint=endpoint, incident=incident, event="firing", body=body
    )

    doomed_queue = f"{QUEUE}-doomed"
    doomed = start_worker(
        doomed_queue, artifacts_dir / f"alerts-doomed-{os.getpid()}.log", f"doomed{os.getpid()}"
    )
    try:
        deliver.apply_async((delivery.pk,), queue=doomed_queue)
        wait_for(lambda: len(receiver.requests()) == 1, timeout=20)
        assert Delivery.objects.get().status == "sending"
    finally:
        doomed.stop(kill=True)  # SIGKILL while the request is in flight

    time.sleep(2.5)  # the claim goes stale (WEBHOOK_SENDING_STALE_S = 2 in the tests)
    assert Delivery.objects.get().status == "sending"  # nobody else would ever finish it
    sweep_deliveries.apply_async(queue=QUEUE)  # as beat would, on the surviving worker

    wait_for(lambda: Delivery.objects.get().status == "delivered", timeout=20)
    outcomes = list(DeliveryAttempt.objects.order_by("number").values_list("number", "outcome"))
    assert outcomes == [(1, "lost"), (2, "success")]
    got = receiver.requests()
    assert len(got) == 2 and {r["headers"]["webhook-id"] for r in got} == {delivery.webhook_id}


@pytest.mark.parametrize(
    "status,final_status,enabled",
    [(410, "failed", False), (404, "failed", True), (301, "failed", True)],
)
def test_final_answers_are_not_retried(
    transactional_db: Any,
    receiver: Receiver,
    run: Run,
    project_a: Any,
    status: int,
    final_status: str,
    enabled: bool,
) -> None:
    receiver.start("--responses", str(status), "--location", "http://169.254.169.254/")
    endpoint, rule = endpoint_rule(project_a, receiver.url)
    rule.endpoints.clear()
    body = transport_for(endpoint).render(Event.test(endpoint))
    delivery = Delivery.objects.create(endpoint=endpoint, event="firing", body=body)
    assert outbox.send(delivery.pk) == final_status
    delivery.refresh_from_db()
    endpoint.refresh_from_db()
    assert delivery.status == final_status and delivery.attempts == 1
    assert endpoint.enabled is enabled
    assert outbox.send(delivery.pk) == "skipped"  # nothing left to do
    assert len(receiver.requests()) == 1


def test_retry_now_resends_a_failed_delivery(
    transactional_db: Any, alerts_worker: Worker, receiver: Receiver, run: Run, project_a: Any
) -> None:
    receiver.start("--responses", "400,200")
    endpoint, rule = endpoint_rule(project_a, receiver.url)
    put(run, 1, 0.5)
    wait_for(lambda: Delivery.objects.get().status == "failed", timeout=20)
    assert outbox.retry_now(Delivery.objects.get())
    wait_for(lambda: Delivery.objects.get().status == "delivered", timeout=20)
    assert list(
        DeliveryAttempt.objects.order_by("number").values_list("status_code", "outcome")
    ) == [(400, "failed"), (200, "success")]
