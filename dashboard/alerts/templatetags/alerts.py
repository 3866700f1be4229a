"""`{% load alerts %}{% run_incidents run %}`: a run's incidents, for the run page."""

from __future__ import annotations

from typing import Any

from django import template

from dashboard.alerts.models import Incident

register = template.Library()


@register.inclusion_tag("alerts/_run_incidents.html", takes_context=True)
def run_incidents(context: Any, run: Any, limit: int = 20) -> dict[str, Any]:
    incidents = Incident.objects.filter(run=run).select_related("rule", "run", "acknowledged_by")
    return {
        "incidents": list(incidents[:limit]),
        "project": run.project,
        "request": context.get("request"),
        "csrf_token": context.get("csrf_token"),
    }
