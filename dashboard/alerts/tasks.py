"""Celery tasks (queue "default"): thin, by id, idempotent — the logic is in delivery.py."""

from __future__ import annotations

from celery import shared_task

from dashboard.alerts import delivery


# A delivery attempt is bounded by the 10 s total timeout; the limits only catch a hang
# in our own code, so the job-sized global limits do not apply.
@shared_task(
    name="dashboard.alerts.tasks.deliver",
    queue="default",
    acks_late=True,
    soft_time_limit=60,
    time_limit=90,
)
def deliver(delivery_id: int) -> str:
    return delivery.send(delivery_id)


@shared_task(
    name="dashboard.alerts.tasks.sweep_deliveries",
    queue="default",
    soft_time_limit=240,
    time_limit=300,
)
def sweep_deliveries() -> dict[str, int]:
    return delivery.sweep()
