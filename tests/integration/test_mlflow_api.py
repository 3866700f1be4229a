"""The real `mlflow` client against a live daphne: Parity as an MLflow tracking server."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import mlflow  # the `mlflow` extra (mlflow-skinny), which make install installs
import pytest
import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from websockets.sync.client import connect

from dashboard.alerts.models import AlertRule, Delivery, Incident, WebhookEndpoint
from dashboard.core.models import MetricPoint, MlflowExperiment, Run
from tests.conftest import Server

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def tracking(
    live_server_proc: Server, alice_token: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The one-variable setup of docs/mlflow.md: MLFLOW_TRACKING_URI and MLFLOW_TRACKING_TOKEN."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", live_server_proc.url)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", alice_token)
    # A 4xx is never retried; fail fast on anything else instead of backing off for minutes.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(live_server_proc.url)
    yield live_server_proc.url
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def post(url: str, endpoint: str, token: str, body: Any) -> httpx.Response:
    return httpx.post(
        f"{url}/api/2.0/mlflow/{endpoint}",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def test_a_training_run_logged_with_the_mlflow_client_reads_back_whole(
    tracking: str, alice_token: str, project_a: Any, alice_client: Any
) -> None:
    experiment = mlflow.set_experiment("grpo-qwen")
    with mlflow.start_run(run_name="grpo-mlflow") as active:
        run_id = active.info.run_id
        mlflow.log_params({"lr": "1e-6", "model": "tiny-llama"})
        for step in range(3):
            mlflow.log_metrics({"kl_k3": 0.001 * step, "reward": step / 10}, step=step)
        mlflow.log_metric("clip_rate", 0.02, step=2)
        mlflow.set_tag("framework", "verl")
        MlflowClient().log_batch(
            run_id,
            metrics=[Metric("abs_diff_mean", 0.01 * i, now_ms(), i) for i in range(1500)],
            params=[Param("dtype", "bfloat16")],
            tags=[RunTag("weight_sync", "nccl")],
        )
    run = Run.objects.get(pk=int(run_id))
    assert run.project == project_a and run.name == "grpo-mlflow"
    assert run.status == "finished" and run.finished is not None
    assert run.last_step == 1499
    assert MlflowExperiment.objects.get(pk=int(experiment.experiment_id)).name == "grpo-qwen"
    # The client split the 1,500 metrics into two requests (MLflow's 1,000 per batch).
    assert MetricPoint.objects.filter(run=run, key="abs_diff_mean").count() == 1500

    got = MlflowClient().get_run(run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "grpo-mlflow"
    assert got.info.experiment_id == experiment.experiment_id
    assert got.data.params == {"lr": "1e-6", "model": "tiny-llama", "dtype": "bfloat16"}
    assert got.data.metrics == {
        "kl_k3": pytest.approx(0.002),
        "reward": pytest.approx(0.2),
        "clip_rate": pytest.approx(0.02),
        "abs_diff_mean": pytest.approx(14.99),
    }
    assert got.data.tags["framework"] == "verl" and got.data.tags["weight_sync"] == "nccl"
    assert got.data.tags["mlflow.runName"] == "grpo-mlflow"
    assert got.info.start_time <= got.info.end_time
    history = MlflowClient().get_metric_history(run_id, "reward")
    assert [(m.step, m.value) for m in history] == [(0, 0.0), (1, 0.1), (2, 0.2)]

    # The same points in the run's series API, as the charts read them.
    series = httpx.get(
        f"{tracking}/api/runs/{run_id}/series",
        params={"key": "reward"},
        headers={"Authorization": f"Bearer {alice_token}"},
    ).json()
    assert series["steps"] == [0, 1, 2] and series["values"] == pytest.approx([0.0, 0.1, 0.2])

    # The params are the run's config: the run page's fingerprint table shows them.
    page = alice_client.get(f"/runs/{run_id}/").content.decode()
    assert "tiny-llama" in page and "bfloat16" in page

    # set_experiment again finds the same experiment; a second run of the same name is kept
    # apart (MLflow allows it; Parity names are unique per project).
    assert mlflow.set_experiment("grpo-qwen").experiment_id == experiment.experiment_id
    with mlflow.start_run(run_name="grpo-mlflow") as again:
        assert again.info.run_id != run_id
        assert again.info.run_name.startswith("grpo-mlflow-")


def test_points_arrive_live_on_the_runs_websocket(
    tracking: str, client: Any, alice: Any, live_server_proc: Server
) -> None:
    client.force_login(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    mlflow.set_experiment("live")
    with mlflow.start_run() as active:
        run_id = active.info.run_id
        ws_url = live_server_proc.url.replace("http://", "ws://") + f"/ws/runs/{run_id}/"
        with connect(
            ws_url, additional_headers={"Cookie": cookie, "Origin": live_server_proc.url}
        ) as ws:
            # A NaN is stored as MLflow stores it (the loop must not crash) and goes out as
            # null, which JSON can carry and the charts draw as a gap.
            mlflow.log_metrics({"clip_rate": 0.05, "kl_k3": 0.002, "loss": float("nan")}, step=7)
            message = json.loads(ws.recv(timeout=10))
    assert message["kind"] == "points"
    assert sorted((p["key"], p["step"], p["value"]) for p in message["data"]["points"]) == [
        ("clip_rate", 7, 0.05),
        ("kl_k3", 7, 0.002),
        ("loss", 7, None),
    ]
    series = client.get(f"/api/runs/{run_id}/series", {"key": "loss"}).json()
    assert series["steps"] == [7] and series["values"] == [None]
    assert math.isnan(MlflowClient().get_run(run_id).data.metrics["loss"])
    assert client.get(f"/runs/{run_id}/").status_code == 200


def test_an_alert_rule_fires_on_metrics_logged_through_mlflow(
    tracking: str, project_a: Any
) -> None:
    endpoint = WebhookEndpoint.objects.create(
        project=project_a, name="std", url="https://example.com/hook"
    )
    rule = AlertRule.objects.create(
        project=project_a, name="KL drift", metric_key="kl_k3", threshold=0.01, for_steps=2
    )
    rule.endpoints.set([endpoint])
    mlflow.set_experiment("alerts")
    with mlflow.start_run() as active:
        for step, kl in enumerate([0.001, 0.02, 0.03]):
            mlflow.log_metric("kl_k3", kl, step=step)
    incident = Incident.objects.get(rule=rule, run_id=int(active.info.run_id))
    assert incident.fired_step == 2
    # Leaving the `with` ended the run (end_run: FINISHED), and the incident with it.
    assert incident.resolved_reason == "the run finished"
    events = Delivery.objects.filter(incident=incident, endpoint=endpoint).values_list("event")
    assert sorted(e for (e,) in events) == ["firing", "resolved"]


def test_a_resent_batch_writes_nothing_twice(tracking: str, alice_token: str) -> None:
    mlflow.set_experiment("retry")
    run_id = mlflow.start_run().info.run_id
    body = {
        "run_id": run_id,
        "metrics": [
            {"key": "kl_k3", "value": 0.1 * i, "timestamp": now_ms(), "step": i} for i in range(10)
        ],
        "params": [{"key": "lr", "value": "1e-6"}],
        "tags": [{"key": "t", "value": "v"}],
    }
    for _ in range(2):
        assert post(tracking, "runs/log-batch", alice_token, body).json() == {}
    run = Run.objects.get(pk=int(run_id))
    assert MetricPoint.objects.filter(run=run).count() == 10
    assert run.fingerprint == {"lr": "1e-6"}
    # A param is logged once (MLflow's rule): another value is refused, nothing of it written.
    body["params"] = [{"key": "lr", "value": "3e-6"}]
    body["metrics"][0]["value"] = 42.0
    response = post(tracking, "runs/log-batch", alice_token, body)
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "param 'lr' is already '1e-6'" in response.json()["message"]
    assert MetricPoint.objects.get(run=run, key="kl_k3", step=0).value == 0.0


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (lambda b: b["metrics"].extend(b["metrics"][0] for _ in range(1001)), "metrics", "1000"),
        (
            lambda b: b.update(params=[{"key": f"p{i}", "value": "x"} for i in range(101)]),
            "params",
            "at most 100 params",
        ),
        (
            lambda b: b.update(tags=[{"key": f"t{i}", "value": "x"} for i in range(101)]),
            "tags",
            "at most 100 tags",
        ),
        (lambda b: b["metrics"][0].update(timestamp=10**20), "metrics[0].timestamp", "range"),
        (lambda b: b["metrics"][0].update(timestamp=-5), "metrics[0].timestamp", "range"),
        (lambda b: b["metrics"][0].update(timestamp="soon"), "metrics[0].timestamp", "integer"),
        (lambda b: b["metrics"][0].update(step=-1), "metrics[0].step", "range"),
        (lambda b: b["metrics"][0].update(value="high"), "metrics[0].value", "number"),
        (lambda b: b["metrics"][0].update(key="k" * 129), "metrics[0].key", "at most 128"),
        (lambda b: b["metrics"][0].update(key="a\x00b"), "metrics[0].key", "NUL"),
        (lambda b: b.update(metrics={"key": "x"}), "metrics", "must be a list"),
    ],
)
def test_a_bad_batch_is_a_400_naming_the_field_and_writes_nothing(
    tracking: str, alice_token: str, change: Any, field: str, reason: str
) -> None:
    mlflow.set_experiment("limits")
    run_id = mlflow.start_run().info.run_id
    body: dict[str, Any] = {
        "run_id": run_id,
        "metrics": [{"key": "kl_k3", "value": 0.5, "timestamp": now_ms(), "step": 1}],
    }
    change(body)
    response = post(tracking, "runs/log-batch", alice_token, body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error_code"] == "INVALID_PARAMETER_VALUE" and error["field"] == field
    assert reason in error["message"] and error["message"].startswith(field)
    assert not MetricPoint.objects.filter(run_id=int(run_id)).exists()


def test_unsupported_routes_name_what_parity_does_not_serve(
    tracking: str, alice_token: str
) -> None:
    mlflow.set_experiment("unsupported")
    with pytest.raises(MlflowException) as raised:
        mlflow.search_runs(experiment_names=["unsupported"])
    assert raised.value.error_code == "ENDPOINT_NOT_FOUND"
    assert "does not support POST /api/2.0/mlflow/runs/search" in raised.value.message
    # An artifact upload reaches Parity and is refused by name, not written somewhere local.
    # (MLflow's artifact client raises the HTTP error itself, with the body in its message.)
    with mlflow.start_run(), pytest.raises(requests.HTTPError) as failed:
        mlflow.log_text("notes", "notes.txt")
    assert "does not support PUT /api/2.0/mlflow-artifacts/artifacts/" in str(failed.value)
    for method, path in [
        ("GET", "/api/2.0/mlflow-artifacts/artifacts/x.txt"),
        ("POST", "/api/3.0/mlflow/traces"),
        ("GET", "/api/2.0/mlflow/runs/log-batch"),  # right endpoint, wrong method
    ]:
        response = httpx.request(
            method, tracking + path, headers={"Authorization": f"Bearer {alice_token}"}
        )
        assert response.status_code == 404
        assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND"
        assert f"does not support {method} {path}" in response.json()["message"]


def test_a_bad_token_is_an_mlflow_shaped_401(
    tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "pty_not-a-token")
    with pytest.raises(MlflowException) as raised:
        mlflow.set_experiment("nope")
    assert raised.value.error_code == "UNAUTHENTICATED"
    assert "not valid" in raised.value.message
    response = httpx.post(f"{tracking}/api/2.0/mlflow/experiments/create", json={"name": "x"})
    assert response.status_code == 401
    assert response.json()["error_code"] == "UNAUTHENTICATED"
    assert "MLFLOW_TRACKING_TOKEN" in response.json()["message"]


def test_runs_and_experiments_stay_in_the_tokens_project(
    tracking: str, alice_token: str, make_member: Any
) -> None:
    from dashboard.core.models import ApiToken, Project

    bob = make_member("bob", "proj-b")
    _, bob_token = ApiToken.issue(bob, Project.objects.get(slug="proj-b"), "b")
    mlflow.set_experiment("mine")
    run_id = mlflow.start_run().info.run_id
    response = httpx.get(
        f"{tracking}/api/2.0/mlflow/runs/get",
        params={"run_id": run_id},
        headers={"Authorization": f"Bearer {bob_token}"},
    )
    assert response.status_code == 404
    assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    response = httpx.get(
        f"{tracking}/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": "mine"},
        headers={"Authorization": f"Bearer {bob_token}"},
    )
    assert response.status_code == 404
    metrics = [{"key": "x", "value": 1.0, "timestamp": now_ms(), "step": 0}]
    response = post(tracking, "runs/log-batch", bob_token, {"run_id": run_id, "metrics": metrics})
    assert response.status_code == 404
    assert not MetricPoint.objects.filter(run_id=int(run_id)).exists()


def test_a_resumed_run_is_running_again_and_ends_again(tracking: str) -> None:
    mlflow.set_experiment("resume")
    with mlflow.start_run() as first:
        mlflow.log_metric("reward", 0.1, step=0)
    with mlflow.start_run(run_id=first.info.run_id):
        assert Run.objects.get(pk=int(first.info.run_id)).status == "running"
        assert MlflowClient().get_run(first.info.run_id).info.end_time is None
        mlflow.log_metric("reward", 0.2, step=1)
    run = Run.objects.get(pk=int(first.info.run_id))
    assert run.status == "finished" and run.last_step == 1


def test_unknown_ids_and_a_nul_in_the_query_are_mlflow_shaped(
    tracking: str, alice_token: str
) -> None:
    response = post(tracking, "runs/create", alice_token, {"experiment_id": "999999"})
    assert response.status_code == 404
    assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    response = post(tracking, "runs/log-batch", alice_token, {"run_id": "not-a-parity-id"})
    assert response.status_code == 404
    assert "No run with id 'not-a-parity-id'" in response.json()["message"]
    response = post(tracking, "runs/log-batch", alice_token, {"metrics": []})
    assert response.status_code == 400 and response.json()["field"] == "run_id"
    response = httpx.post(
        f"{tracking}/api/2.0/mlflow/runs/create",
        content=b"{not json",
        headers={"Authorization": f"Bearer {alice_token}"},
    )
    assert response.status_code == 400 and response.json()["error_code"] == "MALFORMED_REQUEST"
    response = httpx.get(
        f"{tracking}/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": "a\x00b"},
        headers={"Authorization": f"Bearer {alice_token}"},
    )
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "NUL" in response.json()["message"]
