"""#16 §12 in Chromium: after `demo_setup` and a real worker's deliveries to the demo's own
receiver, the demo user opens the endpoint page and sees each signed delivery and its attempts,
with nothing configured."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import shot
from tests.browser.test_forms import fits_a_phone
from tests.integration.alerts_support import deliver_with_a_worker, demo_with_receiver

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def demo_receiver(settings: Any, tmp_path: Path, artifacts_dir: Path) -> Iterator[Path]:
    log = artifacts_dir / "demo-receiver-browser.log"
    with demo_with_receiver(settings, tmp_path, log) as log:
        yield log


def test_the_demo_user_sees_the_signed_deliveries_and_their_attempts(
    demo_receiver: Path, live_server_proc: Any, page: Any, artifacts_dir: Path
) -> None:
    from dashboard.alerts.models import Delivery
    from dashboard.demo.management.commands.demo_setup import DEMO_PASSWORD, DEMO_USER

    deliveries = Delivery.objects.filter(endpoint__name="demo receiver")
    log = artifacts_dir / "demo-alerts-worker-browser.log"
    deliver_with_a_worker(deliveries, log, f"demobrowser{os.getpid()}")
    # What the receiver logged: "<time> <webhook-id> 200 signature ok: ..." per delivery.
    checked = {
        line.split()[1]: line for line in demo_receiver.read_text().splitlines() if line.strip()
    }

    url = live_server_proc.url
    page.goto(f"{url}/accounts/login/")
    page.fill("input[name=username]", DEMO_USER)  # the login `make demo` prints
    page.fill("input[name=password]", DEMO_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda u: "/accounts/login/" not in u)
    page.goto(f"{url}/p/demo/alerts/endpoints/")
    page.click("#endpoints >> text=demo receiver")
    page.wait_for_selector("#deliveries")

    rows = page.locator("#deliveries > tbody > tr")
    assert rows.count() == deliveries.count() >= 3  # drift firing and resolved, stale cache
    for i in range(rows.count()):
        row = rows.nth(i)
        assert row.get_attribute("class") == "delivery-delivered"
        webhook_id = row.locator("td:nth-child(2) code").text_content().strip()
        # Signed: the receiver checked this delivery's signature with the endpoint's secret.
        assert "200 signature ok" in checked[webhook_id]
        attempt = row.locator("table.attempts tr.attempt-success")
        assert attempt.count() == 1
        cells = attempt.locator("td").all_text_contents()
        assert cells[0] == "#1" and cells[3] == "200"
        assert "signature ok" in cells[5]  # the receiver's answer, as it was sent back
    text = page.text_content("#deliveries")
    assert "firing" in text and "resolved" in text and "grpo-demo-drift" in text
    shot(page, artifacts_dir, "demo-endpoint-deliveries")
    fits_a_phone(page, artifacts_dir, "demo-endpoint-deliveries")
    assert not page.js_errors, page.js_errors
