"""The webhook outbox: write deliveries with the change that causes them, send them after commit.

At least once: a delivery is claimed (pending → sending) by one worker, attempted, then marked
delivered, re-scheduled with backoff, or failed for good. A worker that dies mid-attempt
leaves the row "sending"; `sweep` hands it out again once its claim is stale. Receivers
deduplicate on `webhook-id`, which every retry of a delivery repeats.
"""

from __future__ import annotations

import logging
import random
import socket
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from dashboard.alerts.models import Delivery, DeliveryAttempt, Incident, WebhookEndpoint
from dashboard.alerts.transports import Event, TransportError, transport_for
from dashboard.core import broker

if TYPE_CHECKING:
    from dashboard.alerts import ssrf

log = logging.getLogger(__name__)


# --- writing (inside the caller's transaction) ------------------------------------------


def notify(incident: Incident, event: str) -> list[Delivery]:
    """Write one delivery per enabled endpoint of the incident's rule; send them after commit.

    Must run in the transaction that changed the incident: the rows commit or vanish with it.
    """
    rule = incident.rule
    deliveries: list[Delivery] = []
    payload = Event.for_incident(incident, event)
    for endpoint in rule.endpoints.filter(enabled=True):
        body = transport_for(endpoint).render(payload)
        deliveries.append(
            Delivery.objects.create(endpoint=endpoint, incident=incident, event=event, body=body)
        )
    for delivery in deliveries:
        enqueue_on_commit(delivery.pk)
    return deliveries


_TASK_PREFIX = "delivery-"


def _with_messages(queue: str) -> set[int] | None:
    """Deliveries the broker holds a message for (waiting, or held by a worker until its
    countdown); None when the broker's messages cannot be listed."""
    ids = broker.message_ids([queue])
    if ids is None:
        return None
    return {int(i.split("-")[1]) for i in ids if i.startswith(_TASK_PREFIX) and i.count("-") == 2}


def enqueue_on_commit(delivery_id: int, countdown: float | None = None) -> None:
    transaction.on_commit(lambda: enqueue(delivery_id, countdown))


def enqueue(delivery_id: int, countdown: float | None = None) -> None:
    """Hand a delivery to Celery. A broker outage is logged, not raised: the row is durable
    and the sweep sends it once the broker is back."""
    from dashboard.alerts.tasks import deliver

    try:
        deliver.apply_async(
            (delivery_id,),
            countdown=countdown,
            queue=settings.WEBHOOK_QUEUE,
            # Named after the delivery: the sweep finds which ones the broker holds.
            task_id=f"{_TASK_PREFIX}{delivery_id}-{uuid.uuid4().hex[:12]}",
        )
    except Exception:  # noqa: BLE001 - see docstring
        log.warning("could not enqueue delivery %s; the sweep will", delivery_id, exc_info=True)


# --- sending (in a worker, autocommit) ----------------------------------------------------


def claim(delivery_id: int) -> Delivery | None:
    """Take a due, pending delivery for this worker; None when it is not ours to send."""
    now = timezone.now()
    taken = Delivery.objects.filter(
        pk=delivery_id, status=Delivery.Status.PENDING, next_attempt_at__lte=now
    ).update(status=Delivery.Status.SENDING, claimed_at=now, attempts=models.F("attempts") + 1)
    if not taken:
        return None
    return Delivery.objects.select_related("endpoint", "endpoint__project").get(pk=delivery_id)


def send(delivery_id: int) -> str:
    """Claim, attempt once, record; return the delivery's status afterwards (or "skipped")."""
    delivery = claim(delivery_id)
    if delivery is None:
        return "skipped"
    endpoint = delivery.endpoint
    if not endpoint.enabled and delivery.event != Delivery.Event.TEST:
        _finish(
            delivery,
            Delivery.Status.FAILED,
            error=f"Endpoint disabled: {endpoint.disabled_reason or 'by a user'}.",
        )
        return delivery.status
    # Written (and committed) before the request, so a worker killed mid-request still
    # leaves the attempt on the endpoint page.
    attempt = DeliveryAttempt.objects.create(
        delivery=delivery, number=delivery.attempts, worker=socket.gethostname()[:200]
    )
    try:
        answer = transport_for(endpoint).send(delivery)
    except TransportError as exc:
        _record_failure(delivery, attempt, exc)
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the row "sending" forever
        log.exception("delivery %s crashed", delivery.pk)
        _record_failure(
            delivery, attempt, TransportError(f"Internal error: {type(exc).__name__}: {exc}")
        )
    else:
        _record_answer(attempt, DeliveryAttempt.Outcome.SUCCESS, answer, "")
        _finish(delivery, Delivery.Status.DELIVERED)
    return delivery.status


def backoff_s(attempts: int, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter; a receiver's Retry-After wins when it asks for longer.

    Half fixed, half random ("equal jitter"): many deliveries failing together (a receiver
    outage) spread out when it comes back, and none retries immediately.
    """
    delay = min(
        settings.WEBHOOK_RETRY_MAX_S, settings.WEBHOOK_RETRY_BASE_S * 2 ** max(attempts - 1, 0)
    )
    delay = delay / 2 + random.uniform(0, delay / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.WEBHOOK_RETRY_FOR_S))
    return delay


def _record_failure(delivery: Delivery, attempt: DeliveryAttempt, exc: TransportError) -> None:
    now = timezone.now()
    endpoint = delivery.endpoint
    if exc.disable_endpoint:
        endpoint.disable(exc.message)
    out_of_time = now >= delivery.retry_until
    final = exc.permanent or out_of_time or delivery.event == Delivery.Event.TEST
    error = exc.message
    if out_of_time and not exc.permanent:
        since = f"{delivery.created:%Y-%m-%d %H:%M} UTC"
        error = f"Gave up after {delivery.attempts} attempts since {since}: {error}"
    outcome = DeliveryAttempt.Outcome.FAILED if final else DeliveryAttempt.Outcome.RETRY
    _record_answer(attempt, outcome, exc.answer, exc.message, exc.latency_ms)
    if final:
        _finish(delivery, Delivery.Status.FAILED, error=error)
        return
    delay = backoff_s(delivery.attempts, exc.retry_after)
    moved = Delivery.objects.filter(
        pk=delivery.pk, status=Delivery.Status.SENDING, claimed_at=delivery.claimed_at
    ).update(
        status=Delivery.Status.PENDING,
        next_attempt_at=now + timedelta(seconds=delay),
        last_error=error,
    )
    delivery.status = Delivery.Status.PENDING
    # Long waits are left to the sweep rather than parked in a worker's memory as ETA tasks.
    if moved and delay <= settings.WEBHOOK_ETA_MAX_S:
        enqueue(delivery.pk, countdown=delay)


def _record_answer(
    attempt: DeliveryAttempt,
    outcome: str,
    answer: ssrf.Answer | None,
    error: str,
    latency_ms: int | None = None,
) -> None:
    attempt.outcome = outcome
    attempt.error = error
    if answer is not None:
        attempt.status_code = answer.status_code
        attempt.response_excerpt = answer.body[: settings.WEBHOOK_EXCERPT_CHARS]
        attempt.latency_ms = answer.latency_ms
    else:
        attempt.latency_ms = latency_ms
    attempt.save(
        update_fields=["outcome", "error", "status_code", "response_excerpt", "latency_ms"]
    )


def _finish(delivery: Delivery, status: str, error: str = "") -> None:
    now = timezone.now()
    fields: dict[str, object] = {"status": status, "last_error": error}
    if status == Delivery.Status.DELIVERED:
        fields["delivered_at"] = now
    # Conditional on still being ours: if the sweep took it over meanwhile, a success still
    # counts (it arrived) but a failure must not overwrite the new attempt's state.
    rows = Delivery.objects.filter(pk=delivery.pk)
    if status != Delivery.Status.DELIVERED:
        rows = rows.filter(status=Delivery.Status.SENDING, claimed_at=delivery.claimed_at)
    rows.exclude(status=Delivery.Status.DELIVERED).update(**fields)
    delivery.status = status
    delivery.last_error = error


# --- housekeeping and user actions --------------------------------------------------------


def sweep(limit: int = 500) -> dict[str, int]:
    """Re-send what no worker is sending: claims gone stale (worker died), and due retries
    whose task message was lost or was never sent (broker down, long backoff); then send
    the repeats of long-firing incidents."""
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.WEBHOOK_SENDING_STALE_S)
    reclaimed = 0
    stale: list[int] = []
    with transaction.atomic():
        stale = list(
            Delivery.objects.select_for_update(skip_locked=True)
            .filter(status=Delivery.Status.SENDING, claimed_at__lt=stale_before)
            .values_list("pk", flat=True)[:limit]
        )
        if stale:
            DeliveryAttempt.objects.filter(
                delivery_id__in=stale, outcome=DeliveryAttempt.Outcome.IN_FLIGHT
            ).update(
                outcome=DeliveryAttempt.Outcome.LOST,
                error="The worker stopped during this attempt (killed or crashed); re-sent.",
            )
            reclaimed = Delivery.objects.filter(pk__in=stale).update(
                status=Delivery.Status.PENDING, next_attempt_at=now, claimed_at=None
            )
    # Due deliveries with no message in the broker (never sent: the broker was down; or
    # lost in its restart) go now. When the broker cannot be listed, only those overdue by a
    # whole stale window: one merely due has its countdown task on the way, and re-sending
    # every backlogged row each sweep would pile up duplicates behind a busy worker.
    held = _with_messages(settings.WEBHOOK_QUEUE)
    due_before = now if held is not None else stale_before
    overdue = [
        pk
        for pk in Delivery.objects.filter(
            status=Delivery.Status.PENDING, next_attempt_at__lte=due_before
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
        if held is None or pk not in held
    ]
    resend = list(dict.fromkeys([*stale, *overdue]))
    for pk in resend:
        enqueue(pk)
    return {
        "reclaimed": reclaimed,
        "enqueued": len(resend),
        "repeated": renotify(now),
    }


def renotify(now: datetime | None = None) -> int:
    """Notify again every incident still firing past its rule's repeat interval."""
    now = now or timezone.now()
    repeated = 0
    with transaction.atomic():
        firing = (
            Incident.objects.select_for_update(of=("self",), skip_locked=True)
            .filter(state=Incident.State.FIRING, rule__repeat_interval_s__gt=0, rule__enabled=True)
            .select_related("rule", "run", "run__project")
        )
        for incident in firing:
            last = incident.last_notified_at or incident.fired_at
            if (now - last).total_seconds() < incident.rule.repeat_interval_s:
                continue
            incident.last_notified_at = now
            incident.save(update_fields=["last_notified_at"])
            notify(incident, Delivery.Event.FIRING)
            repeated += 1
    return repeated


def retry_now(delivery: Delivery) -> bool:
    """Send again right away: a pending one skips its wait, a failed one gets a fresh window."""
    now = timezone.now()
    if delivery.status == Delivery.Status.PENDING:
        Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.PENDING).update(
            next_attempt_at=now
        )
    elif delivery.status == Delivery.Status.FAILED:
        Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.FAILED).update(
            status=Delivery.Status.PENDING,
            next_attempt_at=now,
            retry_until=now + timedelta(seconds=settings.WEBHOOK_RETRY_FOR_S),
        )
    else:
        return False
    enqueue_on_commit(delivery.pk)
    return True


def send_test(endpoint: WebhookEndpoint) -> Delivery:
    """Send a test event now, in this process, once; the attempt holds the receiver's answer."""
    body = transport_for(endpoint).render(Event.test(endpoint))
    delivery = Delivery.objects.create(endpoint=endpoint, event=Delivery.Event.TEST, body=body)
    send(delivery.pk)
    delivery.refresh_from_db()
    return delivery
