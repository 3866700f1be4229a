"""Alert rules, their per-run evaluation state, incidents, webhook endpoints and the outbox.

The life of an alert:

1. `store_points` upserts a batch, then (same transaction) `evaluate.evaluate_points` feeds
   each matching rule's `RuleState` the new values: ok → pending → firing → ok.
2. Going to firing opens an `Incident`; going back to ok resolves it. Each change writes one
   `Delivery` per endpoint of the rule, in that same transaction (the outbox): if the points
   roll back, so do the incident and its notifications.
3. After commit, Celery (queue "default") sends each delivery; every try is a
   `DeliveryAttempt`. A periodic sweep re-sends deliveries whose worker died.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import math
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from dashboard.core.models import Project, Run
from parity.reports.numbers import number


class WebhookEndpoint(models.Model):
    class Format(models.TextChoices):
        STANDARD = "standard", "Standard Webhooks (Alertmanager v4 JSON, signed)"
        SLACK = "slack", "Slack incoming webhook"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhook_endpoints")
    name = models.CharField(max_length=100)
    url = models.URLField(max_length=2000)
    format = models.CharField(max_length=10, choices=Format.choices, default=Format.STANDARD)
    # Kept in clear because every delivery is signed with it; shown to the user only once.
    secret = models.CharField(max_length=100, editable=False)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=300, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def new_secret() -> str:
        """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
        return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.secret:
            self.secret = self.new_secret()
        super().save(*args, **kwargs)

    def disable(self, reason: str) -> None:
        self.enabled = False
        self.disabled_reason = reason[:300]
        WebhookEndpoint.objects.filter(pk=self.pk).update(
            enabled=False, disabled_reason=self.disabled_reason
        )

    def enable(self) -> None:
        self.enabled = True
        self.disabled_reason = ""
        self.save(update_fields=["enabled", "disabled_reason"])


class AlertRule(models.Model):
    class Condition(models.TextChoices):
        ABOVE = "above", "value above threshold"
        BELOW = "below", "value below threshold"
        RISE = "rise", "rises by more than X % over the trailing N steps"

    class Severity(models.TextChoices):
        INFO = "info"
        WARNING = "warning"
        CRITICAL = "critical"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="alert_rules")
    name = models.CharField(max_length=100)
    enabled = models.BooleanField(default=True)
    metric_key = models.CharField(max_length=128, help_text="e.g. kl_k3, clip_rate")
    run_name_pattern = models.CharField(
        max_length=200, blank=True, help_text="Only runs whose name matches this glob (grpo-*)."
    )
    run_tag = models.CharField(max_length=64, blank=True, help_text="Only runs with this tag.")

    class RunKinds(models.TextChoices):
        TRAINING = "training", "Training runs"
        ANY = "any", "Every run (comparisons, replays and checklists too)"

    # Training runs by default: a comparison stores one point per metric, on which a rule
    # "for 3 points" would wait forever.
    run_kinds = models.CharField(max_length=10, choices=RunKinds.choices, default=RunKinds.TRAINING)
    condition = models.CharField(max_length=5, choices=Condition.choices, default=Condition.ABOVE)
    threshold = models.FloatField(help_text="The level, or the rise in percent for 'rise'.")
    window_steps = models.PositiveIntegerField(
        default=100, help_text="'rise' only: compare with the value up to this many steps back."
    )
    recovery_threshold = models.FloatField(
        null=True,
        blank=True,
        help_text="Resolve only once past this value (hysteresis); empty = the threshold.",
    )
    for_steps = models.PositiveIntegerField(
        default=1, help_text="The condition must hold for this many consecutive points."
    )
    for_seconds = models.FloatField(
        default=0, help_text="…and for at least this long (point times)."
    )
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.WARNING)
    endpoints = models.ManyToManyField(WebhookEndpoint, blank=True, related_name="rules")
    cooldown_s = models.PositiveIntegerField(
        default=0, help_text="After a resolution, stay quiet this long for the same run."
    )
    repeat_interval_s = models.PositiveIntegerField(
        default=0, help_text="Re-notify a still-firing incident this often; 0 = never."
    )
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["project", "metric_key"])]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.for_steps is not None and self.for_steps < 1:
            raise ValidationError({"for_steps": "Must be at least 1 (one point)."})
        if self.condition == self.Condition.RISE and (self.window_steps or 0) < 1:
            raise ValidationError({"window_steps": "A rise needs a window of at least 1 step."})
        if self.recovery_threshold is None or self.threshold is None:
            return
        # A recovery level on the wrong side of the threshold would resolve while still breaching.
        if self.condition == self.Condition.BELOW:
            if self.recovery_threshold < self.threshold:
                raise ValidationError(
                    {
                        "recovery_threshold": "For 'below', recovery must be at or above "
                        "the threshold."
                    }
                )
        elif self.recovery_threshold > self.threshold:
            raise ValidationError(
                {"recovery_threshold": "Recovery must be at or below the threshold."}
            )

    @property
    def recovery(self) -> float:
        return self.threshold if self.recovery_threshold is None else self.recovery_threshold

    def matches_run(self, run: Run) -> bool:
        if self.run_kinds == self.RunKinds.TRAINING and run.kind != Run.Kind.TRAINING:
            return False
        if self.run_name_pattern and not fnmatch.fnmatchcase(run.name, self.run_name_pattern):
            return False
        return not self.run_tag or self.run_tag in (run.tags or [])

    def breaches(self, signal: float) -> bool:
        if self.condition == self.Condition.BELOW:
            return signal < self.threshold
        return signal > self.threshold

    def recovered(self, signal: float) -> bool:
        if self.condition == self.Condition.BELOW:
            return signal >= self.recovery
        return signal <= self.recovery

    def describe(self) -> str:
        if self.condition == self.Condition.RISE:
            rise = number(self.threshold)
            text = f"{self.metric_key} rises > {rise}% over {self.window_steps} steps"
        else:
            op = ">" if self.condition == self.Condition.ABOVE else "<"
            text = f"{self.metric_key} {op} {number(self.threshold)}"
        if self.for_steps > 1:
            text += f" for {self.for_steps} points"
        if self.for_seconds:
            text += f" for {number(self.for_seconds)} s"
        return text


class Transition(models.TextChoices):
    """What one new value did to a rule's state for a run."""

    NONE = "none"
    PENDING = "pending"
    CANCEL = "cancel"  # pending, then a value inside the limit: no incident
    SUPPRESSED = "suppressed"  # breach during the cooldown after a resolution
    FIRE = "fire"
    HOLD = "hold"  # firing and not yet recovered
    RESOLVE = "resolve"


class RuleState(models.Model):
    """Where one rule stands for one run; the row lock serialises concurrent batches."""

    class State(models.TextChoices):
        OK = "ok"
        PENDING = "pending"
        FIRING = "firing"

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="states")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="alert_states")
    state = models.CharField(max_length=8, choices=State.choices, default=State.OK)
    consecutive = models.PositiveIntegerField(default=0)
    since_step = models.BigIntegerField(null=True, blank=True)
    since_time = models.DateTimeField(null=True, blank=True)
    last_step = models.BigIntegerField(null=True, blank=True)
    last_value = models.FloatField(null=True, blank=True)
    last_resolved_at = models.DateTimeField(null=True, blank=True)
    incident = models.ForeignKey(
        "Incident", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "run"], name="unique_rule_state")]

    def advance(
        self, rule: AlertRule, step: int, signal: float, at: datetime, now: datetime
    ) -> Transition:
        """Feed one value (in step order); return what changed. Pure: saves nothing.

        `at` is the point's own time (for "for T seconds", so a back-filled batch counts
        its real span); `now` is the wall clock (for the cooldown, which is about people).
        """
        self.last_step = step
        self.last_value = signal
        if self.state == self.State.FIRING:
            if rule.recovered(signal):
                self._reset()
                self.last_resolved_at = now
                return Transition.RESOLVE
            return Transition.HOLD
        if not rule.breaches(signal):
            was_pending = self.state == self.State.PENDING
            self._reset()
            return Transition.CANCEL if was_pending else Transition.NONE
        if self.state == self.State.OK:
            if self.in_cooldown(rule, now):
                return Transition.SUPPRESSED
            self.state = self.State.PENDING
            self.consecutive = 0
            self.since_step = step
            self.since_time = at
        self.consecutive += 1
        held_s = (at - self.since_time).total_seconds() if self.since_time else 0.0
        if self.consecutive >= rule.for_steps and held_s >= rule.for_seconds:
            self.state = self.State.FIRING
            return Transition.FIRE
        return Transition.PENDING

    def in_cooldown(self, rule: AlertRule, now: datetime) -> bool:
        return bool(
            rule.cooldown_s
            and self.last_resolved_at is not None
            and now - self.last_resolved_at < timedelta(seconds=rule.cooldown_s)
        )

    def _reset(self) -> None:
        self.state = self.State.OK
        self.consecutive = 0
        self.since_step = None
        self.since_time = None


class Incident(models.Model):
    """One episode of one rule on one run: from firing to resolved, notified once each way."""

    class State(models.TextChoices):
        FIRING = "firing"
        RESOLVED = "resolved"

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="incidents")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="alert_incidents")
    state = models.CharField(max_length=8, choices=State.choices, default=State.FIRING)
    severity = models.CharField(max_length=10)
    metric_key = models.CharField(max_length=128)
    # The rule's limits when it fired: a later edit of the rule does not rewrite history.
    threshold = models.FloatField()
    recovery_threshold = models.FloatField()
    started_step = models.BigIntegerField(help_text="First breaching step (pending since).")
    started_at = models.DateTimeField()
    fired_step = models.BigIntegerField()
    fired_value = models.FloatField()
    fired_at = models.DateTimeField()
    peak_value = models.FloatField()
    resolved_step = models.BigIntegerField(null=True, blank=True)
    resolved_value = models.FloatField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    # Empty: the metric recovered; else why it ended without recovering ("the run finished").
    resolved_reason = models.CharField(max_length=100, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    last_notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-fired_at"]
        constraints = [
            # One episode at a time: a second firing incident for the same rule and run is
            # a duplicate by definition, whatever races produced it.
            models.UniqueConstraint(
                fields=["rule", "run"],
                condition=models.Q(state="firing"),
                name="one_firing_incident_per_rule_run",
            )
        ]
        indexes = [models.Index(fields=["run", "-fired_at"])]

    def __str__(self) -> str:
        return f"{self.rule} on {self.run} ({self.state})"

    @property
    def fingerprint(self) -> str:
        """Stable per rule and run, as Alertmanager's is per label set."""
        return hashlib.sha256(f"parity:{self.rule_id}:{self.run_id}".encode()).hexdigest()[:16]

    @property
    def is_acknowledged(self) -> bool:
        return self.acknowledged_at is not None

    def acknowledge(self, user: Any) -> None:
        if self.acknowledged_at is None:
            self.acknowledged_at = timezone.now()
            self.acknowledged_by = user
            self.save(update_fields=["acknowledged_at", "acknowledged_by"])

    def track(self, signal: float) -> None:
        """Keep the worst value seen while firing."""
        above = self.rule.condition != AlertRule.Condition.BELOW
        if math.isfinite(signal) and (
            (above and signal > self.peak_value) or (not above and signal < self.peak_value)
        ):
            self.peak_value = signal


def new_webhook_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


class Delivery(models.Model):
    """One notification to one endpoint: the outbox row, sent at least once."""

    class Event(models.TextChoices):
        FIRING = "firing"
        RESOLVED = "resolved"
        TEST = "test"

    class Status(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        DELIVERED = "delivered"
        FAILED = "failed"

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    incident = models.ForeignKey(
        Incident, on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries"
    )
    event = models.CharField(max_length=8, choices=Event.choices)
    # Same id on every retry of this delivery: receivers deduplicate on it.
    webhook_id = models.CharField(max_length=64, unique=True, default=new_webhook_id)
    # Rendered once, so every retry sends the same bytes.
    body = models.TextField()
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    retry_until = models.DateTimeField()
    claimed_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created"]
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(fields=["status", "next_attempt_at"]),
            models.Index(fields=["status", "claimed_at"]),
            models.Index(fields=["endpoint", "-created"]),
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.endpoint} ({self.status})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.retry_until is None:
            self.retry_until = self.created + timedelta(seconds=settings.WEBHOOK_RETRY_FOR_S)
        super().save(*args, **kwargs)

    @property
    def is_final(self) -> bool:
        return self.status in (self.Status.DELIVERED, self.Status.FAILED)


class DeliveryAttempt(models.Model):
    """One try at sending a delivery, written before the request so a crash leaves a trace."""

    class Outcome(models.TextChoices):
        IN_FLIGHT = "in_flight"
        SUCCESS = "success"
        RETRY = "retry"  # failed, will be tried again
        FAILED = "failed"  # failed for good
        LOST = "lost"  # the worker died during this attempt; the sweep re-sent the delivery

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempts_log")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=9, choices=Outcome.choices, default=Outcome.IN_FLIGHT)
    error = models.TextField(blank=True)
    response_excerpt = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-started_at", "-number"]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}: {self.outcome}"
