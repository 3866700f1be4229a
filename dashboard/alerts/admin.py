from __future__ import annotations

from django.contrib import admin

from dashboard.alerts.models import (
    AlertRule,
    Delivery,
    DeliveryAttempt,
    Incident,
    RuleState,
    WebhookEndpoint,
)


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "project",
        "metric_key",
        "condition",
        "threshold",
        "severity",
        "enabled",
    )
    list_filter = ("enabled", "severity", "condition", "project")
    filter_horizontal = ("endpoints",)


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ("name", "project", "format", "url", "enabled", "disabled_reason")
    list_filter = ("enabled", "format")
    # The secret is deliberately not shown: it was shown once, at creation.
    exclude = ("secret",)


@admin.register(Incident)
class IncidentAdmin(admin.ModelAdmin):
    list_display = (
        "rule",
        "run",
        "state",
        "fired_step",
        "fired_value",
        "resolved_step",
        "acknowledged_at",
    )
    list_filter = ("state", "severity")


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    readonly_fields = (
        "number",
        "started_at",
        "outcome",
        "status_code",
        "latency_ms",
        "error",
        "response_excerpt",
        "worker",
    )


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "webhook_id",
        "endpoint",
        "event",
        "status",
        "attempts",
        "next_attempt_at",
        "created",
    )
    list_filter = ("status", "event")
    inlines = [DeliveryAttemptInline]


admin.site.register(RuleState)
