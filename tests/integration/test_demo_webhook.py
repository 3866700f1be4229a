"""#16 §12: `make demo` shows a webhook delivery end to end, with nothing to configure: the
demo's rule sends to a local receiver that checks the signature."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboard.alerts.models import Delivery, DeliveryAttempt
from tests.integration.alerts_support import deliver_with_a_worker, demo_with_receiver

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def demo_receiver(settings: Any, tmp_path: Path, artifacts_dir: Path) -> Iterator[Path]:
    with demo_with_receiver(settings, tmp_path, artifacts_dir / "demo-receiver.log") as log:
        yield log


def test_the_demo_incident_reaches_its_receiver_signed(
    demo_receiver: Path, artifacts_dir: Path
) -> None:
    deliveries = Delivery.objects.filter(endpoint__name="demo receiver")
    # The GRPO run's drift episode (firing, resolved) and the verl run's stale cache.
    drift = deliveries.filter(incident__rule__name="kl_k3 drift")
    assert sorted(d.event for d in drift) == ["firing", "resolved"]
    assert deliveries.filter(incident__rule__name="stale prefix cache", event="firing").exists()
    deliver_with_a_worker(
        deliveries, artifacts_dir / "demo-alerts-worker.log", f"demo{os.getpid()}"
    )
    n = deliveries.count()
    assert DeliveryAttempt.objects.filter(delivery__in=deliveries, status_code=200).count() == n
    lines = demo_receiver.read_text().splitlines()
    assert sum("200 signature ok" in line for line in lines) == n, lines
