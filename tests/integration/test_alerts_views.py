"""The alert pages: rules, endpoints (secret once, SSRF message, test event, attempts,
retry now), incidents (acknowledge), and that other projects' objects are 404."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.template import Context, Template

from dashboard.alerts.models import AlertRule, Delivery, Incident, WebhookEndpoint
from dashboard.core.models import Run
from dashboard.core.points import Point, store_points
from tests.integration.alerts_support import Receiver, apply_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver(artifacts_dir: Path, request: Any) -> Iterator[Receiver]:
    rec = Receiver(artifacts_dir / f"receiver-views-{os.getpid()}-{request.node.name[:30]}.jsonl")
    yield rec
    rec.stop()


@pytest.fixture(autouse=True)
def _alert_settings(settings: Any) -> None:
    apply_settings(settings)


def test_create_rule_and_list_it(alice_client: Any, project_a: Any) -> None:
    endpoint = WebhookEndpoint.objects.create(project=project_a, name="ops", url="https://e.com/")
    response = alice_client.post(
        "/p/proj-a/alerts/rules/new",
        {
            "name": "KL drift",
            "enabled": "on",
            "metric_key": "kl_k3",
            "condition": "above",
            "threshold": "0.05",
            "window_steps": "100",
            "recovery_threshold": "0.03",
            "for_steps": "3",
            "for_seconds": "0",
            "severity": "critical",
            "endpoints": [endpoint.pk],
            "cooldown_s": "600",
            "repeat_interval_s": "0",
            "run_kinds": "training",
            "run_name_pattern": "grpo-*",
            "run_tag": "",
        },
    )
    assert response.status_code == 302
    rule = AlertRule.objects.get()
    assert rule.for_steps == 3 and list(rule.endpoints.all()) == [endpoint]
    page = alice_client.get("/p/proj-a/alerts/").content.decode()
    assert "kl_k3 &gt; 0.05 for 3 points" in page and "training runs <code>grpo-*" in page


def test_rule_with_recovery_on_the_wrong_side_is_refused(alice_client: Any) -> None:
    response = alice_client.post(
        "/p/proj-a/alerts/rules/new",
        {
            "name": "bad",
            "metric_key": "kl_k3",
            "condition": "above",
            "threshold": "0.05",
            "recovery_threshold": "0.1",
            "window_steps": "100",
            "for_steps": "1",
            "for_seconds": "0",
            "severity": "warning",
            "cooldown_s": "0",
            "repeat_interval_s": "0",
        },
    )
    assert response.status_code == 200
    assert "Recovery must be at or below the threshold." in response.content.decode()
    assert not AlertRule.objects.exists()


def test_endpoint_secret_is_shown_once(alice_client: Any, receiver: Receiver) -> None:
    response = alice_client.post(
        "/p/proj-a/alerts/endpoints/new", {"name": "ops", "url": receiver.url, "format": "standard"}
    )
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.secret.startswith("whsec_")
    assert endpoint.secret in response.content.decode()
    assert (
        endpoint.secret
        not in alice_client.get(f"/p/proj-a/alerts/endpoints/{endpoint.pk}/").content.decode()
    )
    assert endpoint.secret not in alice_client.get("/p/proj-a/alerts/endpoints/").content.decode()


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/hook", "http://169.254.169.254/", "http://[::1]/"]
)
def test_endpoint_to_a_private_address_is_refused_with_a_message(
    alice_client: Any, settings: Any, url: str
) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = []
    response = alice_client.post(
        "/p/proj-a/alerts/endpoints/new", {"name": "x", "url": url, "format": "standard"}
    )
    assert response.status_code == 200
    assert "WEBHOOK_ALLOWED_HOSTS" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_send_test_event_shows_the_receivers_answer(
    alice_client: Any, project_a: Any, receiver: Receiver
) -> None:
    receiver.start("--responses", "202")
    endpoint = WebhookEndpoint.objects.create(project=project_a, name="ops", url=receiver.url)
    # Redirect after the POST (#16 §11): a reload must not send a second test event.
    response = alice_client.post(f"/p/proj-a/alerts/endpoints/{endpoint.pk}/test")
    assert response.status_code == 302
    page = alice_client.get(response["Location"]).content.decode()
    assert 'id="test-result"' in page and "answered <strong>202</strong>" in page
    assert "&quot;received&quot;: 0" in page  # the body excerpt
    assert receiver.requests()[0]["headers"]["webhook-id"] == Delivery.objects.get().webhook_id


def test_endpoint_page_lists_attempts_and_retry_now(
    alice_client: Any, project_a: Any, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    from dashboard.alerts import delivery as outbox

    receiver.start("--responses", "500,200")
    endpoint = WebhookEndpoint.objects.create(project=project_a, name="ops", url=receiver.url)
    rule = AlertRule.objects.create(project=project_a, name="r", metric_key="kl_k3", threshold=0.5)
    rule.endpoints.add(endpoint)
    run = Run.objects.create(project=project_a, name="grpo-1")
    store_points(run, [Point("kl_k3", 1, 0.9)])
    delivery = Delivery.objects.get()
    assert outbox.send(delivery.pk) == "pending"  # 500: retry later
    page = alice_client.get(f"/p/proj-a/alerts/endpoints/{endpoint.pk}/").content.decode()
    assert delivery.webhook_id in page and "attempt-retry" in page and ">500<" in page
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        alice_client.post(f"/p/proj-a/alerts/deliveries/{delivery.pk}/retry")
    assert callbacks  # queued once the retry is committed
    assert outbox.send(delivery.pk) == "delivered"  # due now, no waiting for the backoff
    page = alice_client.get(f"/p/proj-a/alerts/endpoints/{endpoint.pk}/").content.decode()
    assert "attempt-success" in page and ">200<" in page


def test_incidents_list_acknowledge_and_run_page_snippet(
    alice_client: Any, alice: Any, project_a: Any
) -> None:
    AlertRule.objects.create(project=project_a, name="KL drift", metric_key="kl_k3", threshold=0.5)
    run = Run.objects.create(project=project_a, name="grpo-1")
    store_points(run, [Point("kl_k3", 7, 0.9)])
    incident = Incident.objects.get()
    page = alice_client.get("/p/proj-a/alerts/incidents/?state=firing").content.decode()
    assert "KL drift" in page and "at step 7" in page and "Acknowledge" in page
    response = alice_client.post(
        f"/p/proj-a/alerts/incidents/{incident.pk}/ack", {"next": "https://evil.example/"}
    )
    assert response.status_code == 302 and response["Location"] == "/p/proj-a/alerts/incidents/"
    incident.refresh_from_db()
    assert incident.acknowledged_by == alice and incident.is_acknowledged
    html = Template("{% load alerts %}{% run_incidents run %}").render(Context({"run": run}))
    assert "KL drift" in html and "alice" in html


def test_other_projects_alerts_are_404(alice_client: Any, make_member: Any) -> None:
    from dashboard.core.models import Project

    make_member("bob", "proj-b")
    other = Project.objects.get(slug="proj-b")
    endpoint = WebhookEndpoint.objects.create(project=other, name="b", url="https://e.com/")
    assert alice_client.get("/p/proj-b/alerts/").status_code == 404
    assert alice_client.get(f"/p/proj-a/alerts/endpoints/{endpoint.pk}/").status_code == 404
    assert alice_client.post(f"/p/proj-a/alerts/endpoints/{endpoint.pk}/test").status_code == 404


def test_rules_table_says_when_an_endpoint_is_disabled(alice_client: Any, project_a: Any) -> None:
    # #16 §11: a rule whose only endpoint is disabled notifies nobody; the table says so.
    endpoint = WebhookEndpoint.objects.create(project=project_a, name="ops", url="https://e.com/")
    rule = AlertRule.objects.create(project=project_a, name="kl", metric_key="kl_k3", threshold=1)
    rule.endpoints.add(endpoint)
    endpoint.disable("410 Gone from the receiver")
    page = alice_client.get("/p/proj-a/alerts/").content.decode()
    assert (
        'ops</a> <span class="badge warn" title="410 Gone from the receiver">disabled</span>'
        in page
    )


def _offered(page: str) -> list[tuple[str, str]]:
    """The rule form's metric picker: (key, note) of each option of its datalist."""
    import html
    import re

    picker = page.split('<datalist id="metric-key-options">')[1].split("</datalist>")[0]
    return [
        (html.unescape(key), html.unescape(note))
        for key, note in re.findall(r'<option value="([^"]*)" label="([^"]*)">', picker)
    ]


def test_rule_form_offers_this_projects_keys_most_used_first(
    alice_client: Any, project_a: Any, make_member: Any
) -> None:
    # #16 §11: the metric comes from a picker of the project's keys, free text still allowed.
    from dashboard.core.models import Project

    for name, keys in (
        ("grpo-1", ["reward", "kl_k3"]),
        ("grpo-2", ["reward", "rollout_corr/k3_kl"]),
        ("grpo-3", ["reward", "kl_k3"]),
    ):
        run = Run.objects.create(project=project_a, name=name)
        store_points(run, [Point(key, step, 0.1) for key in keys for step in range(3)])
    make_member("bob", "proj-b")
    other = Run.objects.create(project=Project.objects.get(slug="proj-b"), name="secret-run")
    store_points(other, [Point("bobs/private_key", 1, 1.0)])

    page = alice_client.get("/p/proj-a/alerts/rules/new").content.decode()
    assert 'id="id_metric_key"' in page and 'list="metric-key-options"' in page
    offered = _offered(page)
    keys = [key for key, _ in offered]
    assert keys[:3] == ["reward", "kl_k3", "rollout_corr/k3_kl"]  # by how many runs sent them
    assert offered[0][1] == "sent by 3 runs"
    assert offered[2][1] == "sent by 1 run · verl's kl_k3"
    assert "bobs/private_key" not in page  # another project's keys stay there
    # The canonical names follow, once each, saying which frameworks' keys they also watch.
    assert keys.count("kl_k3") == 1
    assert {"abs_diff_mean", "clip_rate", "stale_cache_ratio"} <= set(keys)
    note = dict(offered)["abs_diff_mean"]
    assert note.startswith("canonical · also ") and "TRL sampling/" in note

    # Free text still: a key no run has sent yet is a valid rule.
    response = alice_client.post(
        "/p/proj-a/alerts/rules/new",
        {
            "name": "custom",
            "metric_key": "my/new_metric",
            "condition": "above",
            "threshold": "1",
            "window_steps": "100",
            "for_steps": "1",
            "for_seconds": "0",
            "severity": "warning",
            "cooldown_s": "0",
            "repeat_interval_s": "0",
            "run_kinds": "training",
        },
    )
    assert response.status_code == 302
    assert AlertRule.objects.get().metric_key == "my/new_metric"


def test_rule_form_picker_is_bounded(alice_client: Any, project_a: Any) -> None:
    from dashboard.alerts import forms

    run = Run.objects.create(project=project_a, name="per-layer")
    n = forms.PICKER_KEYS + 20
    store_points(run, [Point(f"layer{i:04d}/grad_norm", 1, 1.0) for i in range(n)])
    page = alice_client.get("/p/proj-a/alerts/rules/new").content.decode()
    keys = [key for key, _ in _offered(page)]
    sent = [key for key in keys if key.startswith("layer")]
    assert len(sent) == forms.PICKER_KEYS
    assert "kl_k3" in keys  # the canonical names are still offered
