"""The alert pages in Chromium: create an endpoint (secret once) and a rule, see an incident
fire, acknowledge it, and read every attempt on the endpoint page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import login, shot

pytestmark = pytest.mark.browser


def test_endpoint_rule_incident_and_attempts(
    transactional_db: Any,
    alice: Any,
    project_a: Any,
    live_server_proc: Any,
    page: Any,
    artifacts_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dashboard.alerts import delivery as outbox
    from dashboard.alerts.models import Delivery, DeliveryAttempt, Incident, WebhookEndpoint
    from dashboard.core.models import Run
    from dashboard.core.points import Point, store_points

    monkeypatch.setattr(outbox, "enqueue", lambda pk, countdown=None: None)  # nothing is sent
    base = live_server_proc.url
    login(page, base)

    # A public address literal: accepted without DNS, and never contacted by this test.
    page.goto(f"{base}/p/proj-a/alerts/endpoints/new")
    page.fill("input[name=name]", "ops")
    page.fill("input[name=url]", "https://93.184.215.14/hook")
    page.click("#endpoint-form button[type=submit]")
    secret = page.text_content("#endpoint-secret").strip()
    assert secret.startswith("whsec_") and secret == WebhookEndpoint.objects.get().secret
    shot(page, artifacts_dir, "alerts-endpoint-created")

    page.goto(f"{base}/p/proj-a/alerts/rules/new")
    page.fill("input[name=name]", "KL drift")
    page.fill("input[name=metric_key]", "kl_k3")
    page.fill("input[name=threshold]", "0.05")
    page.fill("input[name=recovery_threshold]", "0.03")
    page.fill("input[name=for_steps]", "2")
    page.check("input[name=endpoints]")
    page.click("#rule-form button[type=submit]")
    page.wait_for_selector("#rules")
    assert "kl_k3 > 0.05 for 2 points" in page.text_content("#rules")
    shot(page, artifacts_dir, "alerts-rules")

    run = Run.objects.create(project=project_a, name="grpo-7b")
    store_points(run, [Point("kl_k3", 4000, 0.08), Point("kl_k3", 4001, 0.09)])
    delivery = Delivery.objects.get()
    DeliveryAttempt.objects.create(
        delivery=delivery,
        number=1,
        outcome="retry",
        error="Could not connect: refused",
        latency_ms=2,
    )
    DeliveryAttempt.objects.create(
        delivery=delivery,
        number=2,
        outcome="success",
        status_code=200,
        latency_ms=41,
        response_excerpt='{"ok": true}',
    )
    Delivery.objects.filter(pk=delivery.pk).update(status="delivered", attempts=2)

    page.goto(f"{base}/p/proj-a/alerts/incidents/")
    assert "at step 4001" in page.text_content("#incidents")
    page.click("#incidents button[type=submit]")
    page.wait_for_selector("#incidents")
    assert Incident.objects.get().acknowledged_by == alice
    assert "alice" in page.text_content("#incidents")
    shot(page, artifacts_dir, "alerts-incidents")

    page.goto(f"{base}/p/proj-a/alerts/endpoints/{delivery.endpoint_id}/")
    text = page.text_content("#deliveries")
    assert delivery.webhook_id in text and "refused" in text and "41 ms" in text
    shot(page, artifacts_dir, "alerts-endpoint")
    assert page.js_errors == []
