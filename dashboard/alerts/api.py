"""Alert rules, incidents and webhook endpoints over the JSON API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema

from dashboard.alerts import ssrf
from dashboard.alerts.models import AlertRule, Incident, WebhookEndpoint
from dashboard.core.api import ApiError
from dashboard.core.api.types import MetricKey, Text
from dashboard.core.auth import visible_projects, visible_runs

router = Router(tags=["alerts"])


Name = Text(100, 1)
Pattern = Text(200)
Tag = Text(64)  # empty: the rule is not narrowed by tag
Url = Text(2000, 1)
Finite = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=2_147_483_647)]


class RuleIn(Schema):
    name: Name
    metric_key: MetricKey
    condition: AlertRule.Condition = AlertRule.Condition.ABOVE
    threshold: Finite
    window_steps: Annotated[int, Field(ge=1, le=2_147_483_647)] = 100
    recovery_threshold: Finite | None = None
    for_steps: Annotated[int, Field(ge=1, le=2_147_483_647)] = 1
    for_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0
    severity: AlertRule.Severity = AlertRule.Severity.WARNING
    endpoints: list[int] = []
    cooldown_s: Count = 0
    repeat_interval_s: Count = 0
    run_kinds: AlertRule.RunKinds = AlertRule.RunKinds.TRAINING
    run_name_pattern: Pattern = ""
    run_tag: Tag = ""
    enabled: bool = True


class RuleOut(Schema):
    id: int
    name: str
    metric_key: str
    condition: str
    threshold: float
    window_steps: int
    recovery_threshold: float | None
    for_steps: int
    for_seconds: float
    severity: str
    endpoints: list[int]
    cooldown_s: int
    repeat_interval_s: int
    run_kinds: str
    run_name_pattern: str
    run_tag: str
    enabled: bool
    description: str

    @staticmethod
    def resolve_endpoints(obj: AlertRule) -> list[int]:
        return [e.pk for e in obj.endpoints.all()]

    @staticmethod
    def resolve_description(obj: AlertRule) -> str:
        return obj.describe()


class IncidentOut(Schema):
    id: int
    rule_id: int
    rule: str
    run_id: int
    state: str
    severity: str
    metric_key: str
    threshold: float
    recovery_threshold: float
    started_step: int
    fired_step: int
    fired_value: float
    fired_at: datetime
    peak_value: float
    resolved_step: int | None
    resolved_value: float | None
    resolved_at: datetime | None
    resolved_reason: str = Field(
        description="Empty when the metric recovered; else why the incident ended."
    )
    acknowledged_at: datetime | None

    @staticmethod
    def resolve_rule(obj: Incident) -> str:
        return obj.rule.name


class EndpointIn(Schema):
    name: Name
    url: Url
    format: WebhookEndpoint.Format = WebhookEndpoint.Format.STANDARD


class EndpointOut(Schema):
    id: int
    name: str
    url: str
    format: str
    enabled: bool
    disabled_reason: str
    created: datetime


class EndpointCreated(EndpointOut):
    secret: str  # returned this once only


def _project(request: HttpRequest, slug: str) -> Any:
    return get_object_or_404(visible_projects(request), slug=slug)


@router.get("/projects/{slug}/alert-rules", response=list[RuleOut])
def list_rules(request: HttpRequest, slug: str) -> Any:
    return _project(request, slug).alert_rules.prefetch_related("endpoints")


@router.post("/projects/{slug}/alert-rules", response={201: RuleOut})
def create_rule(request: HttpRequest, slug: str, payload: RuleIn) -> Any:
    project = _project(request, slug)
    data = payload.dict()
    endpoint_ids = data.pop("endpoints")
    endpoints = list(project.webhook_endpoints.filter(pk__in=endpoint_ids))
    if len(endpoints) != len(set(endpoint_ids)):
        raise ApiError(422, "endpoints: unknown endpoint id for this project", field="endpoints")
    rule = AlertRule(project=project, **data)
    try:
        rule.full_clean()
    except ValidationError as exc:
        field, errors = next(iter(exc.message_dict.items()))
        raise ApiError(422, f"{field}: {errors[0]}", field=field) from exc
    rule.save()
    rule.endpoints.set(endpoints)
    return 201, rule


@router.get("/projects/{slug}/incidents", response=list[IncidentOut])
def list_incidents(request: HttpRequest, slug: str, state: str = "") -> Any:
    rows = Incident.objects.filter(rule__project=_project(request, slug)).select_related("rule")
    return rows.filter(state=state)[:500] if state else rows[:500]


@router.get("/runs/{run_id}/incidents", response=list[IncidentOut])
def run_incidents(request: HttpRequest, run_id: int) -> Any:
    """A run's incidents, for marking episodes on its charts."""
    run = get_object_or_404(visible_runs(request), pk=run_id)
    return Incident.objects.filter(run=run).select_related("rule")[:500]


@router.post("/incidents/{incident_id}/ack", response=IncidentOut)
def acknowledge(request: HttpRequest, incident_id: int) -> Any:
    incident = get_object_or_404(
        Incident.objects.filter(rule__project__in=visible_projects(request)).select_related("rule"),
        pk=incident_id,
    )
    incident.acknowledge(request.user)
    return incident


@router.get("/projects/{slug}/webhook-endpoints", response=list[EndpointOut])
def list_endpoints(request: HttpRequest, slug: str) -> Any:
    return _project(request, slug).webhook_endpoints.all()


@router.post("/projects/{slug}/webhook-endpoints", response={201: EndpointCreated})
def create_endpoint(request: HttpRequest, slug: str, payload: EndpointIn) -> Any:
    project = _project(request, slug)
    try:
        ssrf.vet(payload.url)
    except (ssrf.Refused, ssrf.ResolveError) as exc:
        raise ApiError(422, f"url: {exc}", field="url") from exc
    endpoint = WebhookEndpoint(
        project=project, name=payload.name, url=payload.url, format=payload.format
    )
    try:
        endpoint.full_clean(exclude=["secret"])
    except ValidationError as exc:
        field, errors = next(iter(exc.message_dict.items()))
        raise ApiError(422, f"{field}: {errors[0]}", field=field) from exc
    endpoint.save()
    return 201, endpoint
