"""POST /api/jobs: a job is queued only from a valid spec; every bad input is a clear 4xx."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest

from dashboard.core.api import ApiError
from dashboard.core.api.jobs import validate_spec
from dashboard.core.models import Job, Run

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def _post(client: Any, token: str, body: Any) -> Any:
    return client.post(
        "/api/jobs",
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def test_valid_comparison_is_queued_with_defaults_filled_in(
    client: Any, alice_token: str, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _post(
            client,
            alice_token,
            {
                "project": "proj-a",
                "kind": "comparison",
                "spec": {"model": "/models/m"},
                "run_name": "pre-flight",
            },
        )
    assert response.status_code == 201, response.content
    job = Job.objects.get()
    assert job.status == Job.Status.QUEUED
    assert (
        job.spec["sampling"]["max_tokens"] > 0
    )  # defaults are stored: what runs is what was shown
    assert Run.objects.get().name == "pre-flight"
    assert len(callbacks) >= 1  # sent to the broker only on commit


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"sampling": {"temperature": -1}}, "spec.sampling.temperature"),
        ({"sampling": {"top_p": 1.5}}, "spec.sampling.top_p"),
        ({"engine": {"dtype": "int3"}}, "spec.engine.dtype"),
    ],
)
def test_invalid_sampling_or_engine_value_is_422_naming_the_field(
    client: Any, alice_token: str, spec: dict, field: str
) -> None:
    response = _post(client, alice_token, {"project": "proj-a", "kind": "comparison", "spec": spec})
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert not Job.objects.exists() and not Run.objects.exists()


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"num_updates": 0}, "spec.num_updates"),
        ({"source": {"kind": "nope"}}, "spec.source"),
        ({"no_such_setting": 1}, "spec.no_such_setting"),
    ],
)
def test_bad_replay_spec_is_422_worded_like_every_spec_error(
    client: Any, alice_token: str, spec: dict, field: str
) -> None:
    from workers.specs import ReplaySpec, validation_message

    response = _post(client, alice_token, {"project": "proj-a", "kind": "replay", "spec": spec})
    assert response.status_code == 422, response.content
    body = response.json()
    assert body["field"] == field
    with pytest.raises(pydantic.ValidationError) as exc:
        ReplaySpec.model_validate(spec)
    assert body["detail"] == validation_message(exc.value)
    assert not Job.objects.exists() and not Run.objects.exists()


def test_unknown_kind_is_422(client: Any, alice_token: str) -> None:
    response = _post(client, alice_token, {"project": "proj-a", "kind": "nope", "spec": {}})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "kind"
    assert not Job.objects.exists()
    with pytest.raises(ApiError) as exc:  # the same answer where the API schema is bypassed
        validate_spec("nope", {})
    assert (exc.value.status, exc.value.field) == (422, "kind")


def test_nul_in_any_text_is_422_not_500(client: Any, alice_token: str) -> None:
    for body in (
        {"project": "proj\x00a", "kind": "ping"},
        {"project": "proj-a", "kind": "ping", "run_name": "a\x00b"},
        {"project": "proj-a", "kind": "comparison", "spec": {"model": "m\x00"}},
    ):
        assert _post(client, alice_token, body).status_code == 422, body
    assert not Job.objects.exists()


def test_unknown_or_foreign_project_is_404(client: Any, alice_token: str, make_member: Any) -> None:
    make_member("bob", "proj-b")
    assert _post(client, alice_token, {"project": "proj-b", "kind": "ping"}).status_code == 404
    assert _post(client, alice_token, {"project": "nope", "kind": "ping"}).status_code == 404


def test_malformed_json_is_400(client: Any, alice_token: str) -> None:
    response = client.post(
        "/api/jobs",
        data="{not json",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {alice_token}",
    )
    assert response.status_code == 400


@pytest.mark.django_db
def test_an_internal_error_is_json_without_a_traceback_even_in_debug(
    client: Any, alice_token: str, monkeypatch: Any, settings: Any
) -> None:
    # Issue 15 §11: DEBUG=1 is the default (make demo), and a 500 sent API clients the full
    # traceback: code, paths and settings of the server.
    settings.DEBUG = True

    def broken(request: Any) -> Any:
        raise RuntimeError("secret internals at /srv/parity/settings.py")

    monkeypatch.setattr("dashboard.core.api.runs.visible_projects", broken)
    response = client.get("/api/projects", HTTP_AUTHORIZATION=f"Bearer {alice_token}")
    assert response.status_code == 500
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["detail"].startswith("Internal server error")
    assert "secret internals" not in response.content.decode()
    assert "Traceback" not in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("error", "service"),
    [
        ("django.db.OperationalError", "Postgres"),
        ("redis.exceptions.ConnectionError", "Redis"),
    ],
)
def test_a_service_outage_is_a_503_naming_it_with_retry_after(
    client: Any, alice_token: str, monkeypatch: Any, error: str, service: str
) -> None:
    # Issue 17 §7: during an outage the API answered 500 with a traceback; clients need a
    # clear 503 that names the service and says when to retry (parity.Monitor honours it).
    import importlib

    module, _, name = error.rpartition(".")
    exc_type = getattr(importlib.import_module(module), name)

    def down(request: Any) -> Any:
        raise exc_type("connection refused")

    monkeypatch.setattr("dashboard.core.api.runs.visible_projects", down)
    response = client.get("/api/projects", HTTP_AUTHORIZATION=f"Bearer {alice_token}")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["detail"].startswith(f"{service} is unavailable")


@pytest.mark.django_db(transaction=True)
def test_job_creation_during_a_broker_outage_is_a_503_and_saves_nothing(
    client: Any, alice_token: str, monkeypatch: Any
) -> None:
    # Issue 17 §2: POST /api/jobs while Redis was down answered 500 *and* saved the job and
    # its run, so a client's retry left a second job stuck "queued" forever.
    import kombu.exceptions

    def broker_down(*args: Any, **kwargs: Any) -> Any:
        raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr("dashboard.core.tasks.run_job.apply_async", broker_down)
    response = client.post(
        "/api/jobs",
        data={"project": "proj-a", "kind": "comparison", "spec": {}},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {alice_token}",
    )
    assert response.status_code == 503, response.content[:300]
    assert response.json()["detail"].startswith("Redis is unavailable")
    assert not Job.objects.exists() and not Run.objects.exists()


def test_a_server_api_key_is_kept_for_the_worker_but_never_shown(
    client: Any, alice_token: str, django_capture_on_commit_callbacks: Any
) -> None:
    spec = {"model": "/models/m", "server": {"url": "http://10.0.0.5:8000/v1", "api_key": "s3"}}
    with django_capture_on_commit_callbacks(execute=False):
        response = _post(
            client, alice_token, {"project": "proj-a", "kind": "comparison", "spec": spec}
        )
    assert response.status_code == 201, response.content
    job = Job.objects.get()
    assert job.spec["server"] == {
        **job.spec["server"],
        "url": "http://10.0.0.5:8000",
        "api_key": "s3",
    }
    assert response.json()["spec"]["server"]["api_key"] == "***"
    shown = client.get(f"/api/jobs/{job.pk}", HTTP_AUTHORIZATION=f"Bearer {alice_token}").json()
    assert shown["spec"]["server"]["api_key"] == "***" and "s3" not in json.dumps(shown)


def test_a_server_url_that_is_not_http_is_422_naming_the_field(
    client: Any, alice_token: str
) -> None:
    spec = {"server": {"url": "10.0.0.5:8000"}}
    response = _post(client, alice_token, {"project": "proj-a", "kind": "comparison", "spec": spec})
    assert response.status_code == 422
    assert response.json()["field"] == "spec.server.url"
    assert "not an http(s) base URL" in response.content.decode()
