from __future__ import annotations

from django.urls import path

from dashboard.alerts import views

app_name = "alerts"

urlpatterns = [
    path("p/<slug:slug>/alerts/", views.rules, name="rules"),
    path("p/<slug:slug>/alerts/rules/new", views.rule_edit, name="rule_new"),
    path("p/<slug:slug>/alerts/rules/<int:rule_id>/", views.rule_edit, name="rule_edit"),
    path("p/<slug:slug>/alerts/rules/<int:rule_id>/delete", views.rule_delete, name="rule_delete"),
    path("p/<slug:slug>/alerts/incidents/", views.incidents, name="incidents"),
    path(
        "p/<slug:slug>/alerts/incidents/<int:incident_id>/ack",
        views.incident_ack,
        name="incident_ack",
    ),
    path("p/<slug:slug>/alerts/endpoints/", views.endpoints, name="endpoints"),
    path("p/<slug:slug>/alerts/endpoints/new", views.endpoint_new, name="endpoint_new"),
    path(
        "p/<slug:slug>/alerts/endpoints/<int:endpoint_id>/",
        views.endpoint_detail,
        name="endpoint",
    ),
    path(
        "p/<slug:slug>/alerts/endpoints/<int:endpoint_id>/test",
        views.endpoint_test,
        name="endpoint_test",
    ),
    path(
        "p/<slug:slug>/alerts/endpoints/<int:endpoint_id>/toggle",
        views.endpoint_toggle,
        name="endpoint_toggle",
    ),
    path(
        "p/<slug:slug>/alerts/deliveries/<int:delivery_id>/retry",
        views.delivery_retry,
        name="delivery_retry",
    ),
]
