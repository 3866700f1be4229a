"""Jobs: comparisons, replays and checklists run by the gpu workers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pydantic
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Schema

from dashboard.core.api import ApiError
from dashboard.core.api.types import JsonObject, Slug, Tag, Text
from dashboard.core.auth import visible_projects
from dashboard.core.models import Job, start_job
from workers.specs import JOB_KINDS, redact, validation_message

router = Router(tags=["jobs"])


class JobOut(Schema):
    id: int
    kind: str
    status: str
    progress: float
    stage: str
    error: str
    spec: dict[str, Any]
    result: dict[str, Any] | None
    run_id: int | None
    worker_host: str
    created: datetime
    started: datetime | None
    finished: datetime | None

    @staticmethod
    def resolve_spec(obj: Job) -> dict[str, Any]:
        # The worker needs a server's API key; nobody reading the job does.
        return redact(obj.spec)


class JobIn(Schema):
    project: Slug
    kind: Job.Kind
    spec: JsonObject = {}  # the job spec: any JSON a jsonb column can hold
    run_name: Text(200) = ""  # type: ignore[valid-type]
    tags: list[Tag] = []


def validate_spec(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The job spec as the worker will run it: defaults filled in, values checked.

    Every kind with a spec model (workers.specs.kinds) is validated here, in the web process;
    a kind without one (ping) takes any JSON object. Raises ApiError(422) worded by
    `validation_message`, naming the first offending field (`spec.<path>`).
    """
    job_kind = JOB_KINDS.get(kind)
    if job_kind is None:
        raise ApiError(422, f"unknown job kind {kind!r}", field="kind")
    if job_kind.spec is None:
        return spec
    try:
        return job_kind.spec.model_validate(spec).model_dump(mode="json")
    except pydantic.ValidationError as exc:
        field = ".".join(["spec", *(str(part) for part in exc.errors()[0]["loc"])])
        raise ApiError(422, validation_message(exc), field=field) from exc


@router.post("/jobs", response={201: JobOut})
def create_job(request: HttpRequest, payload: JobIn) -> Any:
    project = get_object_or_404(visible_projects(request), slug=payload.project)
    spec = validate_spec(payload.kind, payload.spec)
    job = start_job(
        project, payload.kind, spec, user=request.user, run_name=payload.run_name, tags=payload.tags
    )
    return 201, job


@router.get("/jobs/{job_id}", response=JobOut)
def get_job(request: HttpRequest, job_id: int) -> Any:
    return get_object_or_404(Job.objects.filter(project__in=visible_projects(request)), pk=job_id)
