"""The Celery app, beside the settings (Celery's Django layout): `celery -A dashboard worker`.

Queue "gpu": comparisons, replays, checklists; queue "default": the rest. Tasks are found in
each installed app's `tasks.py`.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

# Jobs are queued once their row is committed by Job.enqueue (transaction.on_commit), which
# also undoes the job when the broker refuses it.
app = Celery("parity")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Task names predate the move to dashboard/ and stay: queued messages name them.
app.conf.beat_schedule = {
    "fail-dead-jobs": {"task": "workers.tasks.fail_dead_jobs", "schedule": 30.0},
    "requeue-lost-jobs": {"task": "dashboard.core.tasks.requeue_lost_jobs", "schedule": 30.0},
    "sweep-webhook-deliveries": {
        "task": "dashboard.alerts.tasks.sweep_deliveries",
        "schedule": float(os.environ.get("WEBHOOK_SWEEP_EVERY_S", 10)),
    },
}
