"""Alert pages. Thin: find what the user may see, call the model or outbox, render."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from dashboard.alerts import delivery as outbox
from dashboard.alerts.forms import AlertRuleForm, WebhookEndpointForm
from dashboard.alerts.models import (
    AlertRule,
    Delivery,
    DeliveryAttempt,
    Incident,
    RuleState,
    WebhookEndpoint,
)
from dashboard.core.api.types import plain_id
from dashboard.core.auth import visible_projects
from dashboard.core.models import Project


def _project(request: HttpRequest, slug: str) -> Project:
    return get_object_or_404(visible_projects(request), slug=slug)


def _page(request: HttpRequest, template: str, project: Project, **context: object) -> HttpResponse:
    return render(
        request, template, {"project": project, "projects": visible_projects(request), **context}
    )


def rules(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    active = (
        RuleState.objects.filter(rule__project=project)
        .exclude(state=RuleState.State.OK)
        .select_related("rule", "run")
    )
    return _page(
        request,
        "alerts/rules.html",
        project,
        rules=project.alert_rules.prefetch_related("endpoints"),
        active=active,
    )


def rule_edit(request: HttpRequest, slug: str, rule_id: int | None = None) -> HttpResponse:
    project = _project(request, slug)
    rule = (
        get_object_or_404(project.alert_rules, pk=rule_id)
        if rule_id
        else AlertRule(project=project)
    )
    form = AlertRuleForm(request.POST or None, instance=rule)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.info(request, f"Rule “{rule.name}” saved.")
        return redirect("alerts:rules", slug=project.slug)
    return _page(request, "alerts/rule_form.html", project, form=form, rule=rule)


@require_POST
def rule_delete(request: HttpRequest, slug: str, rule_id: int) -> HttpResponse:
    project = _project(request, slug)
    rule = get_object_or_404(project.alert_rules, pk=rule_id)
    rule.delete()
    messages.info(request, f"Rule “{rule.name}” deleted.")
    return redirect("alerts:rules", slug=project.slug)


def incidents(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    rows = Incident.objects.filter(rule__project=project).select_related(
        "rule", "run", "acknowledged_by"
    )
    state = request.GET.get("state", "")
    if state in Incident.State.values:
        rows = rows.filter(state=state)
    return _page(request, "alerts/incidents.html", project, incidents=rows[:200], state=state)


@require_POST
def incident_ack(request: HttpRequest, slug: str, incident_id: int) -> HttpResponse:
    project = _project(request, slug)
    incident = get_object_or_404(Incident.objects.filter(rule__project=project), pk=incident_id)
    incident.acknowledge(request.user)
    messages.info(request, f"Incident #{incident.pk} acknowledged.")
    target = request.POST.get("next", "")
    # Only back to a page of this site (the run page, the list): never an open redirect.
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return redirect("alerts:incidents", slug=project.slug)
    return redirect(target)


def endpoints(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    return _page(
        request, "alerts/endpoints.html", project, endpoints=project.webhook_endpoints.all()
    )


def endpoint_new(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    form = WebhookEndpointForm(request.POST or None, instance=WebhookEndpoint(project=project))
    if request.method == "POST" and form.is_valid():
        endpoint = form.save()
        # The one time the secret is shown: rendered, not redirected, so a reload loses it.
        return _page(request, "alerts/endpoint_created.html", project, endpoint=endpoint)
    return _page(request, "alerts/endpoint_form.html", project, form=form)


def _endpoint(request: HttpRequest, slug: str, endpoint_id: int) -> WebhookEndpoint:
    project = _project(request, slug)
    return get_object_or_404(project.webhook_endpoints.select_related("project"), pk=endpoint_id)


def endpoint_detail(request: HttpRequest, slug: str, endpoint_id: int) -> HttpResponse:
    endpoint = _endpoint(request, slug, endpoint_id)
    # After "Send test event": its result, named in the URL the POST redirected to.
    test_id = plain_id(request.GET.get("test", ""))
    test = endpoint.deliveries.filter(pk=test_id, event="test").first() if test_id else None
    deliveries = endpoint.deliveries.select_related("incident", "incident__run").prefetch_related(
        Prefetch("attempts_log", queryset=DeliveryAttempt.objects.order_by("number"))
    )[:50]
    return _page(
        request,
        "alerts/endpoint.html",
        endpoint.project,
        endpoint=endpoint,
        deliveries=deliveries,
        test=test,
    )


@require_POST
def endpoint_test(request: HttpRequest, slug: str, endpoint_id: int) -> HttpResponse:
    endpoint = _endpoint(request, slug, endpoint_id)
    test = outbox.send_test(endpoint)
    # Redirect after POST: reloading the result page must not send another test event.
    url = reverse("alerts:endpoint", kwargs={"slug": slug, "endpoint_id": endpoint.pk})
    return redirect(f"{url}?test={test.pk}")


@require_POST
def endpoint_toggle(request: HttpRequest, slug: str, endpoint_id: int) -> HttpResponse:
    endpoint = _endpoint(request, slug, endpoint_id)
    if endpoint.enabled:
        endpoint.disable("Disabled by " + request.user.get_username())
    else:
        endpoint.enable()
    return redirect("alerts:endpoint", slug=slug, endpoint_id=endpoint.pk)


@require_POST
def delivery_retry(request: HttpRequest, slug: str, delivery_id: int) -> HttpResponse:
    project = _project(request, slug)
    delivery = get_object_or_404(Delivery.objects.filter(endpoint__project=project), pk=delivery_id)
    if outbox.retry_now(delivery):
        messages.info(request, f"Delivery {delivery.webhook_id} queued to be sent again now.")
    else:
        messages.info(
            request, f"Delivery {delivery.webhook_id} is {delivery.status}; nothing to retry."
        )
    return redirect("alerts:endpoint", slug=slug, endpoint_id=delivery.endpoint_id)
