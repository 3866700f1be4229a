"""The alerts JSON API: rules, endpoints (secret once, SSRF), incidents and acknowledge."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard.alerts.models import AlertRule, Incident, WebhookEndpoint
from dashboard.core.models import Run
from dashboard.core.points import Point, store_points
from tests.integration.alerts_support import apply_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def api(client: Any, alice_token: str, settings: Any) -> Any:
    apply_settings(settings)

    class Api:
        def get(self, path: str) -> Any:
            return client.get("/api" + path, HTTP_AUTHORIZATION=f"Bearer {alice_token}")

        def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
            return client.post(
                "/api" + path,
                body or {},
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {alice_token}",
            )

    return Api()


def test_endpoint_then_rule_then_incident(api: Any, project_a: Any) -> None:
    created = api.post(
        "/projects/proj-a/webhook-endpoints", {"name": "ops", "url": "http://127.0.0.1:9/hook"}
    )
    assert created.status_code == 201, created.content
    assert created.json()["secret"].startswith("whsec_")
    listed = api.get("/projects/proj-a/webhook-endpoints").json()
    assert listed[0]["name"] == "ops" and "secret" not in listed[0]

    endpoint_id = created.json()["id"]
    rule = api.post(
        "/projects/proj-a/alert-rules",
        {
            "name": "KL",
            "metric_key": "kl_k3",
            "threshold": 0.05,
            "for_steps": 2,
            "endpoints": [endpoint_id],
        },
    )
    assert rule.status_code == 201, rule.content
    assert rule.json()["description"] == "kl_k3 > 0.05 for 2 points"
    assert rule.json()["endpoints"] == [endpoint_id]

    run = Run.objects.create(project=project_a, name="r1")
    store_points(run, [Point("kl_k3", 1, 0.1), Point("kl_k3", 2, 0.2)])
    incidents = api.get(f"/runs/{run.pk}/incidents").json()
    assert [(i["state"], i["fired_step"], i["started_step"]) for i in incidents] == [
        ("firing", 2, 1)
    ]
    assert api.get("/projects/proj-a/incidents?state=resolved").json() == []
    acked = api.post(f"/incidents/{incidents[0]['id']}/ack")
    assert acked.status_code == 200 and acked.json()["acknowledged_at"]


def test_bad_rule_names_the_field(api: Any) -> None:
    response = api.post(
        "/projects/proj-a/alert-rules",
        {"name": "x", "metric_key": "k", "threshold": 1, "recovery_threshold": 2},
    )
    assert response.status_code == 422 and response.json()["field"] == "recovery_threshold"
    response = api.post(
        "/projects/proj-a/alert-rules",
        {"name": "x", "metric_key": "k", "threshold": 1, "endpoints": [999]},
    )
    assert response.status_code == 422 and response.json()["field"] == "endpoints"
    assert not AlertRule.objects.exists()


def test_private_endpoint_url_is_refused(api: Any, settings: Any) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = []
    response = api.post(
        "/projects/proj-a/webhook-endpoints", {"name": "m", "url": "http://169.254.169.254/"}
    )
    assert response.status_code == 422 and response.json()["field"] == "url"
    assert "metadata" in response.json()["detail"]
    assert not WebhookEndpoint.objects.exists()


def test_other_projects_incidents_are_404(api: Any, make_member: Any) -> None:
    from dashboard.core.models import Project

    make_member("bob", "proj-b")
    other = Project.objects.get(slug="proj-b")
    AlertRule.objects.create(project=other, name="b", metric_key="k", threshold=0)
    run = Run.objects.create(project=other, name="b1")
    store_points(run, [Point("k", 1, 1.0)])
    incident = Incident.objects.get()
    assert api.get(f"/runs/{run.pk}/incidents").status_code == 404
    assert api.post(f"/incidents/{incident.pk}/ack").status_code == 404
    assert api.get("/projects/proj-b/incidents").status_code == 404


@pytest.mark.parametrize(
    "body,field",
    [
        ({"name": "a\u0000b", "metric_key": "k", "threshold": 1}, "name"),
        ({"name": "a", "metric_key": "k", "threshold": 1, "for_steps": 0}, "for_steps"),
        ({"name": "a", "metric_key": "k", "threshold": 1, "cooldown_s": -1}, "cooldown_s"),
        ({"name": "", "metric_key": "k", "threshold": 1}, "name"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(api: Any, body: dict[str, Any], field: str) -> None:
    response = api.post("/projects/proj-a/alert-rules", body)
    assert response.status_code == 422, response.content
    assert field in response.json()["detail"]
