"""Answer classification (retry or give up), backoff, and the two body formats."""

from __future__ import annotations

import json
from typing import Any

import pytest
from standardwebhooks import Webhook

from dashboard.alerts import ssrf
from dashboard.alerts.delivery import backoff_s
from dashboard.alerts.models import Delivery, WebhookEndpoint
from dashboard.alerts.transports import Event, Slack, Standard, TransportError

pytestmark = pytest.mark.unit


def answer(code: int, **headers: str) -> ssrf.Answer:
    return ssrf.Answer(
        status_code=code, body="b", headers=headers, latency_ms=5, address="127.0.0.1"
    )


def endpoint(fmt: str = "standard") -> WebhookEndpoint:
    return WebhookEndpoint(
        name="ops",
        url="https://hooks.example.com/x",
        format=fmt,
        secret=WebhookEndpoint.new_secret(),
    )


def event(kind: str = "firing") -> Event:
    return Event(
        kind=kind,
        project="proj-a",
        project_name="Proj A",
        rule_id=1,
        rule="KL drift",
        condition="kl_k3 > 0.05",
        severity="critical",
        run_id=7,
        run="grpo-7b",
        metric="kl_k3",
        value=0.08,
        threshold=0.05,
        recovery_threshold=0.04,
        step=4000,
        started_at="2026-01-01T00:00:00Z",
        ends_at=None if kind == "firing" else "2026-01-01T01:00:00Z",
        incident_id=3,
        fingerprint="abc",
        url="http://127.0.0.1:8000/runs/7/",
    )


@pytest.mark.parametrize("code", [200, 201, 202, 204])
def test_2xx_is_success(code: int) -> None:
    Standard(endpoint()).check(answer(code))


@pytest.mark.parametrize(
    "code,permanent",
    [
        (301, True),
        (302, True),
        (307, True),
        (400, True),
        (401, True),
        (404, True),
        (422, True),
        (408, False),
        (429, False),
        (500, False),
        (502, False),
        (503, False),
    ],
)
def test_failure_classes(code: int, permanent: bool) -> None:
    with pytest.raises(TransportError) as err:
        Standard(endpoint()).check(answer(code))
    assert err.value.permanent is permanent
    assert not err.value.disable_endpoint


def test_410_gone_disables_the_endpoint() -> None:
    with pytest.raises(TransportError) as err:
        Standard(endpoint()).check(answer(410))
    assert err.value.permanent and err.value.disable_endpoint


def test_retry_after_seconds_and_date() -> None:
    with pytest.raises(TransportError) as err:
        Standard(endpoint()).check(answer(429, **{"retry-after": "120"}))
    assert err.value.retry_after == 120
    with pytest.raises(TransportError) as err:
        Standard(endpoint()).check(answer(503, **{"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert err.value.retry_after == 0  # in the past: no extra wait


@pytest.mark.parametrize("value", ["²", "٣", "9" * 5000])
def test_a_hostile_retry_after_is_ignored_not_a_crash(value: str) -> None:
    # str.isdigit accepts "²" and Arabic-Indic digits, which float() refuses; 5,000 digits
    # would be an absurd wait. A receiver's header must never crash the delivery.
    with pytest.raises(TransportError) as err:
        Standard(endpoint()).check(answer(503, **{"retry-after": value}))
    assert err.value.retry_after is None


def test_backoff_grows_with_jitter_and_honours_retry_after(settings: Any) -> None:
    settings.WEBHOOK_RETRY_BASE_S, settings.WEBHOOK_RETRY_MAX_S = 10, 3600
    for attempts, low, high in [(1, 5, 10), (2, 10, 20), (3, 20, 40), (20, 1800, 3600)]:
        delays = [backoff_s(attempts) for _ in range(50)]
        assert all(low <= d <= high for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert backoff_s(1, retry_after=600) == 600


def test_standard_body_is_alertmanager_v4_and_signature_verifies() -> None:
    ep = endpoint()
    transport = Standard(ep)
    body = transport.render(event())
    data = json.loads(body)
    assert data["version"] == "4" and data["status"] == "firing"
    alert = data["alerts"][0]
    assert set(alert) >= {
        "status",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "fingerprint",
        "generatorURL",
    }
    assert alert["labels"]["alertname"] == "KL drift" and alert["labels"]["metric"] == "kl_k3"
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["generatorURL"] == "http://127.0.0.1:8000/runs/7/"
    assert data["parity"]["value"] == 0.08 and data["parity"]["step"] == 4000
    delivery = Delivery(endpoint=ep, event="firing", body=body)
    headers = transport.headers(delivery)
    assert headers["webhook-id"] == delivery.webhook_id and headers["webhook-signature"].startswith(
        "v1,"
    )
    assert Webhook(ep.secret).verify(body, headers) == data


def test_resolved_body_has_an_end() -> None:
    data = json.loads(Standard(endpoint()).render(event("resolved")))
    assert data["status"] == "resolved" and data["alerts"][0]["endsAt"] == "2026-01-01T01:00:00Z"


def test_slack_body_has_text_blocks_and_link() -> None:
    data = json.loads(Slack(endpoint("slack")).render(event()))
    assert "KL drift" in data["text"] and "0.08" in data["text"]
    assert any("runs/7" in json.dumps(block) for block in data["blocks"])
