"""Webhook formats, one class each, in the manner of healthchecks' hc/api/transports.py.

`Transport.render` turns an event into the body (once, when the delivery is written, so every
retry sends the same bytes); `Transport.send` posts it through the SSRF guard and either
returns the receiver's answer or raises `TransportError(message, permanent=...)`, so that the
retry-or-give-up decision lives in one place (`delivery.py`).
"""

from __future__ import annotations

import email.utils
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from django.conf import settings
from django.utils import timezone
from standardwebhooks import Webhook

from dashboard.alerts import ssrf
from parity.reports.numbers import number

if TYPE_CHECKING:
    from dashboard.alerts.models import Delivery, Incident, WebhookEndpoint

# Alertmanager's "no end yet" timestamp: receivers written for it expect exactly this.
ZERO_TIME = "0001-01-01T00:00:00Z"


class TransportError(Exception):
    """A failed attempt. `permanent` ones are not retried; the others back off and retry."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        disable_endpoint: bool = False,
        answer: ssrf.Answer | None = None,
        latency_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after
        self.disable_endpoint = disable_endpoint
        self.answer = answer
        self.latency_ms = answer.latency_ms if answer is not None else latency_ms


@dataclass(frozen=True)
class Event:
    """Everything a notification says, independent of the format."""

    kind: str  # firing | resolved | test
    project: str
    project_name: str
    rule_id: int | None
    rule: str
    condition: str
    severity: str
    run_id: int | None
    run: str
    metric: str
    value: float | None
    threshold: float | None
    recovery_threshold: float | None
    step: int | None
    started_at: str
    ends_at: str | None
    incident_id: int | None
    fingerprint: str
    url: str
    fired_value: float | None = None
    # Why a resolved incident ended without its metric recovering ("the run finished").
    reason: str | None = None
    fired_step: int | None = None
    resolved_value: float | None = None
    resolved_step: int | None = None

    @property
    def status(self) -> str:
        return "resolved" if self.kind == "resolved" else "firing"

    @classmethod
    def for_incident(cls, incident: Incident, kind: str) -> Event:
        rule, run = incident.rule, incident.run
        resolved = kind == "resolved"
        return cls(
            kind=kind,
            project=run.project.slug,
            project_name=run.project.name,
            rule_id=rule.pk,
            rule=rule.name,
            condition=rule.describe(),
            severity=incident.severity,
            run_id=run.pk,
            run=run.name,
            metric=incident.metric_key,
            value=incident.resolved_value if resolved else incident.peak_value,
            threshold=incident.threshold,
            recovery_threshold=incident.recovery_threshold,
            step=incident.resolved_step if resolved else incident.fired_step,
            started_at=_iso(incident.fired_at),
            ends_at=_iso(incident.resolved_at) if resolved and incident.resolved_at else None,
            incident_id=incident.pk,
            fingerprint=incident.fingerprint,
            url=f"{settings.SITE_URL}/runs/{run.pk}/",
            fired_value=incident.fired_value,
            fired_step=incident.fired_step,
            resolved_value=incident.resolved_value,
            resolved_step=incident.resolved_step,
            reason=(incident.resolved_reason or None) if resolved else None,
        )

    @classmethod
    def test(cls, endpoint: WebhookEndpoint) -> Event:
        project = endpoint.project
        return cls(
            kind="test",
            project=project.slug,
            project_name=project.name,
            rule_id=None,
            rule="Parity test event",
            condition="test",
            severity="info",
            run_id=None,
            run="",
            metric="test",
            value=None,
            threshold=None,
            recovery_threshold=None,
            step=None,
            started_at=_iso(timezone.now()),
            ends_at=None,
            incident_id=None,
            fingerprint="test",
            url=f"{settings.SITE_URL}/p/{project.slug}/alerts/endpoints/{endpoint.pk}/",
        )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _fmt(value: float | None) -> str:
    return number(value)


def _retry_after(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        # ASCII delta-seconds only (isdigit also takes "²", which float() refuses); a wait
        # of more than six digits (11 days) is no wait this outbox honours.
        return float(value) if value.isascii() and len(value) <= 6 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - timezone.now()).total_seconds())


class Transport:
    """Base class: render an event, send a delivery, judge the answer."""

    content_type: ClassVar[str] = "application/json"

    def __init__(self, endpoint: WebhookEndpoint) -> None:
        self.endpoint = endpoint

    def render(self, event: Event) -> str:
        raise NotImplementedError

    def headers(self, delivery: Delivery) -> dict[str, str]:
        return {}

    def send(self, delivery: Delivery) -> ssrf.Answer:
        headers = {
            "Content-Type": self.content_type,
            "User-Agent": "Parity-Webhooks/1",
            **self.headers(delivery),
        }
        try:
            answer = ssrf.post(self.endpoint.url, delivery.body.encode(), headers)
        except ssrf.Refused as exc:
            raise TransportError(str(exc), permanent=True) from exc
        except ssrf.ResolveError as exc:
            raise TransportError(str(exc)) from exc
        except ssrf.NetworkError as exc:
            raise TransportError(str(exc), latency_ms=exc.latency_ms) from exc
        self.check(answer)
        return answer

    def check(self, answer: ssrf.Answer) -> None:
        """Raise TransportError unless `answer` is a success."""
        code = answer.status_code
        if 200 <= code < 300:
            return
        if 300 <= code < 400:
            location = answer.headers.get("location", "")
            raise TransportError(
                f"The receiver answered {code} (redirect to {location or 'nowhere'}); Parity does "
                "not follow redirects: set the endpoint URL to the final address.",
                permanent=True,
                answer=answer,
            )
        if code == 410:
            raise TransportError(
                "The receiver answered 410 Gone: the endpoint was disabled. Re-enable it once "
                "the receiver exists again.",
                permanent=True,
                disable_endpoint=True,
                answer=answer,
            )
        if code in (408, 429) or code >= 500:
            raise TransportError(
                f"The receiver answered {code}; will retry.",
                retry_after=_retry_after(answer.headers.get("retry-after")),
                answer=answer,
            )
        raise TransportError(
            f"The receiver answered {code}; a client error is not retried — check the URL "
            "and the receiver's configuration.",
            permanent=True,
            answer=answer,
        )


class Standard(Transport):
    """Alertmanager webhook v4 body, signed per the Standard Webhooks spec."""

    def render(self, event: Event) -> str:
        labels = {
            "alertname": event.rule,
            "severity": event.severity,
            "project": event.project,
            "run": event.run,
            "metric": event.metric,
        }
        annotations = {
            "summary": _summary(event),
            "description": event.condition,
            "value": _fmt(event.value),
            "threshold": _fmt(event.threshold),
            "step": "" if event.step is None else str(event.step),
        }
        if event.reason:
            annotations["reason"] = event.reason
        alert = {
            "status": event.status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": event.started_at,
            "endsAt": event.ends_at or ZERO_TIME,
            "generatorURL": event.url,
            "fingerprint": event.fingerprint,
        }
        body: dict[str, Any] = {
            "version": "4",
            "groupKey": f"{{}}:{{alertname={json.dumps(event.rule)}, run={json.dumps(event.run)}}}",
            "truncatedAlerts": 0,
            "status": event.status,
            "receiver": self.endpoint.name,
            "groupLabels": {"alertname": event.rule, "run": event.run},
            "commonLabels": labels,
            "commonAnnotations": annotations,
            "externalURL": settings.SITE_URL,
            "alerts": [alert],
            # Typed copy of the incident for receivers that know Parity.
            "parity": {
                **asdict(event),
                "state": event.status,
            },
        }
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    def headers(self, delivery: Delivery) -> dict[str, str]:
        # A fresh timestamp each attempt: receivers reject signatures older than ~5 minutes,
        # and a retry may come hours later. The id stays the same, for deduplication.
        now = datetime.now(UTC)
        signature = Webhook(self.endpoint.secret).sign(delivery.webhook_id, now, delivery.body)
        return {
            "webhook-id": delivery.webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        }


class Slack(Transport):
    """Slack incoming webhook: text for notifications, blocks for the channel."""

    def render(self, event: Event) -> str:
        icon = {"firing": ":rotating_light:", "resolved": ":white_check_mark:"}.get(
            event.kind, ":information_source:"
        )
        text = f"{icon} {_summary(event)}"
        fields = [
            {"type": "mrkdwn", "text": f"*Metric*\n`{event.metric}`"},
            {"type": "mrkdwn", "text": f"*Value*\n{_fmt(event.value)}"},
            {"type": "mrkdwn", "text": f"*Threshold*\n{_fmt(event.threshold)}"},
            {"type": "mrkdwn", "text": f"*Step*\n{'–' if event.step is None else event.step}"},
        ]
        blocks = [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{text}*\n{event.condition}"}},
            {"type": "section", "fields": fields},
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": f"<{event.url}|Open in Parity> · {event.severity}"}
                ],
            },
        ]
        return json.dumps({"text": text, "blocks": blocks}, separators=(",", ":"))


def _summary(event: Event) -> str:
    if event.kind == "test":
        return f"Test event from Parity for project {event.project_name}"
    verb = "FIRING" if event.kind == "firing" else "RESOLVED"
    where = f" on run {event.run}" if event.run else ""
    if event.reason:
        return f"[{verb}] {event.rule}{where}: ended because {event.reason} (still firing then)"
    return (
        f"[{verb}] {event.rule}{where}: {event.metric} = {_fmt(event.value)} at step "
        f"{event.step} (threshold {_fmt(event.threshold)})"
    )


TRANSPORTS: dict[str, type[Transport]] = {"standard": Standard, "slack": Slack}


def transport_for(endpoint: WebhookEndpoint) -> Transport:
    return TRANSPORTS[endpoint.format](endpoint)
