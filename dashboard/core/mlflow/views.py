"""The MLflow tracking endpoints: thin handlers over core's runs and point writer.

One view serves `/api/2.0/mlflow/<endpoint>`, authenticates the bearer token (the client's
MLFLOW_TRACKING_TOKEN) and dispatches on (method, endpoint); what Parity does not serve is an
MLflow-shaped ENDPOINT_NOT_FOUND naming it. Metrics go through `dashboard.core.points`, the
native ingest's writer (live charts, series cache and alert rules follow).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from dashboard.core.api.types import plain_id
from dashboard.core.auth import NOT_AUTHENTICATED_BECAUSE, TokenAuth, visible_projects
from dashboard.core.mlflow import protocol
from dashboard.core.mlflow.protocol import MlflowError, invalid, millis, not_found
from dashboard.core.models import MlflowExperiment, MlflowRun, Project, Run
from dashboard.core.outages import RETRY_AFTER_S, service_down
from dashboard.core.points import Point, list_keys, store_points, store_visible_points

log = logging.getLogger(__name__)

MAX_RUN_NAME = Run._meta.get_field("name").max_length
MAX_EXPERIMENT_NAME = MlflowExperiment._meta.get_field("name").max_length


@dataclass
class Call:
    request: HttpRequest
    project: Project
    body: dict[str, Any]


Handler = Callable[[Call], dict[str, Any]]
ROUTES: dict[tuple[str, str], Handler] = {}


def route(method: str, endpoint: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ROUTES[(method, endpoint)] = handler
        return handler

    return register


@csrf_exempt  # bearer tokens only, no cookies: nothing for a cross-site form to ride on
def dispatch(request: HttpRequest, api: str, endpoint: str) -> JsonResponse:
    try:
        project = _authenticate(request)
        handler = ROUTES.get((request.method or "", endpoint)) if api == "2.0/mlflow" else None
        if handler is None:
            raise _unsupported(request, api, endpoint)
        return JsonResponse(handler(Call(request, project, _body(request))))
    except MlflowError as exc:
        return JsonResponse(exc.body(), status=exc.status)
    except Exception as exc:  # noqa: BLE001 - an outage is a 503, a bug a 500 with a reference
        return _server_error(request, exc)


def _authenticate(request: HttpRequest) -> Project:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise MlflowError(
            401,
            "UNAUTHENTICATED",
            "Authentication required: set MLFLOW_TRACKING_TOKEN to a Parity API token "
            "(sent as 'Authorization: Bearer <token>').",
        )
    if TokenAuth().authenticate(request, token.strip()) is None:
        raise MlflowError(401, "UNAUTHENTICATED", getattr(request, NOT_AUTHENTICATED_BECAUSE))
    project = visible_projects(request).first()
    if project is None:
        raise MlflowError(
            403, "PERMISSION_DENIED", "The token's user is no longer a member of its project."
        )
    return project


def _unsupported(request: HttpRequest, api: str, endpoint: str) -> MlflowError:
    supported = ", ".join(f"{m} {e}" for m, e in sorted(ROUTES, key=lambda r: r[1]))
    return MlflowError(
        404,
        "ENDPOINT_NOT_FOUND",
        f"Parity's MLflow-compatible tracking API does not support {request.method} "
        f"/api/{api}/{endpoint}: it stores experiments, runs, metrics, params and tags, not "
        f"artifacts, models, traces or searches. Supported under /api/2.0/mlflow/: {supported}.",
    )


def _body(request: HttpRequest) -> dict[str, Any]:
    if request.method == "GET":
        return {k: request.GET.get(k) for k in request.GET}
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise MlflowError(400, "MALFORMED_REQUEST", f"The body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise MlflowError(400, "MALFORMED_REQUEST", "The body must be a JSON object.")
    return body


def _server_error(request: HttpRequest, exc: Exception) -> JsonResponse:
    service = service_down(exc)
    if service is not None:
        log.warning(
            "MLflow %s %s: %s is unavailable: %s", request.method, request.path, service, exc
        )
        response = JsonResponse(
            {
                "error_code": "TEMPORARILY_UNAVAILABLE",
                "message": f"{service} is unavailable; retry in {RETRY_AFTER_S} s.",
            },
            status=503,
        )
        response["Retry-After"] = str(RETRY_AFTER_S)
        return response
    reference = secrets.token_hex(4)
    log.error("MLflow %s %s failed [%s]", request.method, request.path, reference, exc_info=exc)
    return JsonResponse(
        {
            "error_code": "INTERNAL_ERROR",
            "message": f"Internal server error (reference {reference}); the server log has it.",
        },
        status=500,
    )


# --- experiments ----------------------------------------------------------------------------


def _experiment_json(experiment: MlflowExperiment, mlflow_id: str | None = None) -> dict[str, Any]:
    created = millis(experiment.created)
    return {
        "experiment_id": mlflow_id or str(experiment.pk),
        "name": experiment.name,
        # Artifacts are not stored; this scheme sends the client's uploads to this server,
        # which refuses them by name (an empty location would have the client write them to
        # its own working directory, a silent drop from Parity's side).
        "artifact_location": f"mlflow-artifacts:/{mlflow_id or experiment.pk}",
        "lifecycle_stage": "active",
        "creation_time": created,
        "last_update_time": created,
        "tags": [{"key": k, "value": v} for k, v in experiment.tags.items()],
    }


def _default_experiment(project: Project) -> MlflowExperiment:
    experiment, _ = MlflowExperiment.objects.get_or_create(
        project=project, name=MlflowExperiment.DEFAULT_NAME
    )
    return experiment


def _experiment(call: Call, value: Any, field: str = "experiment_id") -> MlflowExperiment:
    if value is None or value == "":
        raise invalid(field, "is required")
    if str(value) == "0":
        return _default_experiment(call.project)
    pk = plain_id(str(value))
    experiment = (
        MlflowExperiment.objects.filter(project=call.project, pk=pk).first() if pk else None
    )
    if experiment is None:
        raise not_found(f"No experiment with id {value!r} in project '{call.project.slug}'.")
    return experiment


def _mlflow_id(experiment: MlflowExperiment) -> str:
    return "0" if experiment.name == MlflowExperiment.DEFAULT_NAME else str(experiment.pk)


@route("GET", "experiments/get-by-name")
def get_experiment_by_name(call: Call) -> dict[str, Any]:
    name = protocol.text(call.body, "experiment_name", MAX_EXPERIMENT_NAME)
    if name == MlflowExperiment.DEFAULT_NAME:
        experiment = _default_experiment(call.project)
    else:
        experiment = MlflowExperiment.objects.filter(project=call.project, name=name).first()
    if experiment is None:
        raise not_found(f"No experiment named {name!r} in project '{call.project.slug}'.")
    return {"experiment": _experiment_json(experiment, _mlflow_id(experiment))}


@route("GET", "experiments/get")
def get_experiment(call: Call) -> dict[str, Any]:
    experiment = _experiment(call, call.body.get("experiment_id"))
    return {"experiment": _experiment_json(experiment, _mlflow_id(experiment))}


@route("POST", "experiments/create")
def create_experiment(call: Call) -> dict[str, Any]:
    name = protocol.text(call.body, "name", MAX_EXPERIMENT_NAME)
    tags = dict(
        protocol.key_value(item, f"tags[{i}]", protocol.MAX_TAG_VAL_LENGTH)
        for i, item in enumerate(protocol.entity_list(call.body, "tags", 100))
    )
    try:
        with transaction.atomic():
            experiment = MlflowExperiment.objects.create(project=call.project, name=name, tags=tags)
    except IntegrityError as exc:
        raise MlflowError(
            400,
            "RESOURCE_ALREADY_EXISTS",
            f"An experiment named {name!r} already exists in project '{call.project.slug}'.",
            "name",
        ) from exc
    return {"experiment_id": _mlflow_id(experiment)}


# --- runs -----------------------------------------------------------------------------------


def _run(call: Call, lock: bool = False) -> Run:
    value = call.body.get("run_id") or call.body.get("run_uuid")
    if not value:
        raise invalid("run_id", "is required")
    pk = plain_id(str(value))
    runs = Run.objects.filter(project=call.project)
    if lock:
        runs = runs.select_for_update()
    run = runs.filter(pk=pk).first() if pk else None
    if run is None:
        raise not_found(f"No run with id {value!r} in project '{call.project.slug}'.")
    return run


def _mlflow_of(run: Run) -> MlflowRun:
    """The run's MLflow side; a run made by Parity's own API gets one in the default
    experiment the first time an MLflow client touches it."""
    try:
        return run.mlflow
    except MlflowRun.DoesNotExist:
        mlflow, _ = MlflowRun.objects.get_or_create(
            run=run, defaults={"experiment": _default_experiment(run.project)}
        )
        return mlflow


def _run_info(run: Run, mlflow: MlflowRun) -> dict[str, Any]:
    experiment_id = _mlflow_id(mlflow.experiment)
    info: dict[str, Any] = {
        "run_id": str(run.pk),
        "run_uuid": str(run.pk),
        "run_name": run.name,
        "experiment_id": experiment_id,
        "user_id": mlflow.user_id,
        "status": protocol.STATUS_TO_MLFLOW.get(run.status, "RUNNING"),
        "start_time": millis(run.started or run.created),
        "artifact_uri": f"mlflow-artifacts:/{experiment_id}/{run.pk}/artifacts",
        "lifecycle_stage": "active",
    }
    if run.finished is not None:
        info["end_time"] = millis(run.finished)
    return info


def _params(run: Run) -> dict[str, str]:
    # A run made by parity.Monitor has its config here too, not always as strings.
    return {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in (run.fingerprint or {}).items()
    }


def _run_json(run: Run, mlflow: MlflowRun) -> dict[str, Any]:
    metrics = [
        {
            "key": k["key"],
            "value": protocol.double(k["last_value"]),
            "timestamp": millis(k["last_time"]),
            "step": k["last_step"],
        }
        for k in list_keys(run)
    ]
    return {
        "info": _run_info(run, mlflow),
        "data": {
            "metrics": metrics,
            "params": [{"key": k, "value": v} for k, v in _params(run).items()],
            "tags": [{"key": k, "value": v} for k, v in mlflow.tags.items()],
        },
        "inputs": {},
    }


def _free_name(project: Project, name: str) -> str:
    """MLflow lets runs share a name; a Parity run's name is unique in its project."""
    if not Run.objects.filter(project=project, name=name).exists():
        return name
    return f"{name[: MAX_RUN_NAME - 5]}-{secrets.token_hex(2)}"


@route("POST", "runs/create")
def create_run(call: Call) -> dict[str, Any]:
    body = call.body
    experiment = _experiment(call, body.get("experiment_id") or "0")
    tags = dict(
        protocol.key_value(item, f"tags[{i}]", protocol.MAX_TAG_VAL_LENGTH)
        for i, item in enumerate(protocol.entity_list(body, "tags", 100))
    )
    name = protocol.optional_text(body, "run_name", MAX_RUN_NAME) or tags.get("mlflow.runName")
    if name:
        name = protocol.checked_text("run_name", name, MAX_RUN_NAME)
    else:
        name = f"mlflow-{timezone.now():%Y%m%d-%H%M%S}"
    user_id = protocol.optional_text(body, "user_id", 250) or tags.get("mlflow.user", "")
    start = body.get("start_time")
    started = protocol.timestamp(start, "start_time") if start is not None else timezone.now()
    for attempt in range(3):
        wanted = name if attempt == 0 else f"{name[: MAX_RUN_NAME - 5]}-{secrets.token_hex(2)}"
        try:
            with transaction.atomic():
                run = Run.objects.create(
                    project=call.project,
                    name=_free_name(call.project, wanted),
                    kind=Run.Kind.TRAINING,
                    status=Run.Status.RUNNING,
                    started=started,
                )
                tags["mlflow.runName"] = run.name
                mlflow = MlflowRun.objects.create(
                    run=run, experiment=experiment, tags=tags, user_id=user_id[:250]
                )
            break
        except IntegrityError:  # another request took the name in between
            if attempt == 2:
                raise
    return {"run": _run_json(run, mlflow)}


@route("GET", "runs/get")
def get_run(call: Call) -> dict[str, Any]:
    run = _run(call)
    return {"run": _run_json(run, _mlflow_of(run))}


@route("POST", "runs/update")
def update_run(call: Call) -> dict[str, Any]:
    body = call.body
    status = body.get("status")
    if status is not None and status not in protocol.STATUS_TO_PARITY:
        raise invalid("status", f"must be one of {', '.join(protocol.STATUS_TO_PARITY)}")
    end = body.get("end_time")
    finished = protocol.timestamp(end, "end_time") if end is not None else None
    new_name = protocol.optional_text(body, "run_name", MAX_RUN_NAME)
    with transaction.atomic():
        run = _run(call, lock=True)
        mlflow = _mlflow_of(run)
        if new_name and new_name != run.name:
            if Run.objects.filter(project=call.project, name=new_name).exists():
                raise invalid("run_name", f"another run of this project is named {new_name!r}")
            run.name = new_name
            run.save(update_fields=["name"])
            mlflow.tags["mlflow.runName"] = new_name
            mlflow.save(update_fields=["tags"])
        if status is not None:
            if status == "RUNNING" and run.finished is not None:
                # mlflow.start_run(run_id=...) resumes an ended run: it is no longer ended.
                run.finished = None
                run.save(update_fields=["finished"])
            run.set_status(protocol.STATUS_TO_PARITY[status])
        if finished is not None and run.finished is not None:
            run.finished = finished
            run.save(update_fields=["finished"])
    return {"run_info": _run_info(run, mlflow)}


# --- logging --------------------------------------------------------------------------------


def _log(call: Call, batch: protocol.Batch) -> dict[str, Any]:
    """Store one request's metrics, params and tags: all of it or, on any error, none."""
    points = [Point(m.key, m.step, m.value, m.time) for m in batch.metrics]
    if not batch.params and not batch.tags:
        # The usual batch: metrics only, in the point writer's one statement.
        value = call.body.get("run_id") or call.body.get("run_uuid")
        pk = plain_id(str(value)) if value else None
        if pk is None:
            _run(call)  # names the missing or unknown run
        written = store_visible_points(Run.objects.filter(project=call.project), pk, points)
        if written is None:
            raise not_found(f"No run with id {value!r} in project '{call.project.slug}'.")
        return {}
    with transaction.atomic():
        run = _run(call, lock=True)
        params = dict(run.fingerprint or {})
        logged = _params(run)
        for key, value in batch.params.items():
            if key in logged and logged[key] != value:
                # MLflow's rule: a param is logged once; a re-sent equal value is fine.
                raise invalid(
                    "params",
                    f"param {key!r} is already {logged[key]!r} for this run; "
                    f"a param cannot change (got {value!r})",
                )
            params.setdefault(key, value)
        if params != run.fingerprint:
            run.fingerprint = params
            run.save(update_fields=["fingerprint"])
        if batch.tags:
            mlflow = _mlflow_of(run)
            mlflow.tags.update(batch.tags)
            mlflow.save(update_fields=["tags"])
        store_points(run, points)
    return {}


@route("POST", "runs/log-batch")
def log_batch(call: Call) -> dict[str, Any]:
    return _log(call, protocol.batch(call.body))


@route("POST", "runs/log-metric")
def log_metric(call: Call) -> dict[str, Any]:
    return _log(call, protocol.Batch([protocol.metric(call.body)], {}, {}))


@route("POST", "runs/log-parameter")
def log_param(call: Call) -> dict[str, Any]:
    key, value = protocol.key_value(call.body, "", protocol.MAX_PARAM_VAL_LENGTH)
    return _log(call, protocol.Batch([], {key: value}, {}))


@route("POST", "runs/set-tag")
def set_tag(call: Call) -> dict[str, Any]:
    key, value = protocol.key_value(call.body, "", protocol.MAX_TAG_VAL_LENGTH)
    return _log(call, protocol.Batch([], {}, {key: value}))


@route("GET", "metrics/get-history")
def get_metric_history(call: Call) -> dict[str, Any]:
    run = _run(call)
    key = protocol.text(call.body, "metric_key", protocol.MAX_METRIC_KEY_LENGTH)
    rows = run.points.filter(key=key).order_by("step").values_list("step", "value", "wall_time")
    return {
        "metrics": [
            {"key": key, "value": protocol.double(value), "timestamp": millis(time), "step": step}
            for step, value, time in rows
        ]
    }
