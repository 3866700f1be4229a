"""#16 §12: `make demo` shows a webhook delivery end to end, with nothing to configure: the
demo's rule sends to a local receiver that checks the signature."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from dashboard.alerts.models import Delivery, DeliveryAttempt
from tests.conftest import ROOT, free_port, wait_for
from tests.integration.alerts_support import QUEUE, apply_settings, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def demo_receiver(settings: Any, tmp_path: Path, artifacts_dir: Path) -> Iterator[Path]:
    apply_settings(settings)
    settings.DEMO_RECEIVER_PORT = free_port()
    settings.DEMO_RECEIVER_SECRET_FILE = tmp_path / "secret"
    call_command("demo_setup", "--no-jobs", stdout=open(os.devnull, "w"))
    log = artifacts_dir / "demo-receiver.log"
    secret = settings.DEMO_RECEIVER_SECRET_FILE.read_text()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "dashboard.demo.receiver", "--port",
         str(settings.DEMO_RECEIVER_PORT), "--secret", secret],
        cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    yield log
    receiver.kill()
    receiver.wait()


def test_the_demo_incident_reaches_its_receiver_signed(
    demo_receiver: Path, artifacts_dir: Path
) -> None:
    deliveries = Delivery.objects.filter(endpoint__name="demo receiver")
    # The GRPO run's drift episode (firing, resolved) and the verl run's stale cache.
    drift = deliveries.filter(incident__rule__name="kl_k3 drift")
    assert sorted(d.event for d in drift) == ["firing", "resolved"]
    assert deliveries.filter(incident__rule__name="stale prefix cache", event="firing").exists()
    worker = start_worker(QUEUE, artifacts_dir / "demo-alerts-worker.log", f"demo{os.getpid()}")
    try:
        from dashboard.alerts.delivery import sweep

        sweep()  # the demo's deliveries were queued before any worker ran
        wait_for(lambda: all(d.status == "delivered" for d in deliveries.all()), 60)
    finally:
        worker.stop()
    n = deliveries.count()
    assert DeliveryAttempt.objects.filter(delivery__in=deliveries, status_code=200).count() == n
    lines = demo_receiver.read_text().splitlines()
    assert sum("200 signature ok" in line for line in lines) == n, lines
