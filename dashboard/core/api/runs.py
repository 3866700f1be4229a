"""The run resource: projects, and runs created, read, listed and updated.

A run's points, logprobs, keys, series and CSV are in `points.py`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Query, Router, Schema

from dashboard.core.api import ingest_operation_id, query_text
from dashboard.core.api.types import JsonObject, RunName, Slug, Tag
from dashboard.core.auth import visible_projects, visible_runs
from dashboard.core.models import Run

router = Router(tags=["runs"])

RunStatus = Literal["pending", "running", "finished", "failed", "crashed"]
# Run.Kind's values ("training" and every job kind that makes a run), as a Literal: the
# OpenAPI schema lists them inline.
RunKind = Literal[tuple(Run.Kind.values)]  # type: ignore[valid-type]


class ProjectOut(Schema):
    id: int
    name: str
    slug: str


class RunOut(Schema):
    id: int
    project: str
    name: str
    kind: str
    status: str
    verdict: str
    fingerprint: dict[str, Any]
    tags: list[str]
    last_step: int | None
    created: datetime
    started: datetime | None
    finished: datetime | None

    @staticmethod
    def resolve_project(obj: Any) -> str:
        return obj.project.slug


class RunIn(Schema):
    project: Slug = Field(description="Slug of the project; a token only reaches its own.")
    name: RunName
    kind: RunKind = "training"
    fingerprint: JsonObject = Field(
        default_factory=dict, description="Model, engine and trainer settings, versions."
    )
    tags: list[Tag] = Field(default_factory=list, max_length=100)
    status: RunStatus | None = None


class RunPatch(Schema):
    status: RunStatus | None = None
    tags: list[Tag] | None = Field(default=None, max_length=100)


class RunPage(Schema):
    count: int
    items: list[RunOut]


@router.get("/projects", response=list[ProjectOut])
def list_projects(request: HttpRequest) -> Any:
    return visible_projects(request)


@router.get("/runs/{run_id}", response=RunOut)
def get_run(request: HttpRequest, run_id: int) -> Any:
    return get_object_or_404(visible_runs(request).select_related("project"), pk=run_id)


@router.patch("/runs/{run_id}", response=RunOut, summary="Update a run's status or tags")
def update_run(request: HttpRequest, run_id: int, payload: RunPatch) -> Any:
    """Status moves set `started` / `finished`; `tags` replaces the run's tags."""
    run = get_run(request, run_id)
    if payload.tags is not None:
        run.tags = payload.tags
        run.save(update_fields=["tags"])
    if payload.status:
        run.set_status(payload.status)
    return run


@router.post(
    "/runs",
    response={200: RunOut, 201: RunOut},
    summary="Create or get a run",
    tags=["runs", "ingest"],
    operation_id=ingest_operation_id("create_run"),
)
def create_run(request: HttpRequest, payload: RunIn) -> Any:
    """Create the run (project, name), or return the existing one (200) with the new tags added.

    Idempotent, so a restarted training job can call it again with the same name.
    """
    project = get_object_or_404(visible_projects(request), slug=payload.project)
    run, created = Run.objects.get_or_create(
        project=project,
        name=payload.name,
        defaults={"kind": payload.kind, "fingerprint": payload.fingerprint, "tags": payload.tags},
    )
    if not created:
        new_tags = [t for t in payload.tags if t not in run.tags]
        if new_tags or (payload.fingerprint and not run.fingerprint):
            run.tags = run.tags + new_tags
            run.fingerprint = run.fingerprint or payload.fingerprint
            run.save(update_fields=["tags", "fingerprint"])
    if payload.status:
        run.set_status(payload.status)
    return (201 if created else 200), run


@router.get(
    "/projects/{slug}/runs",
    response=RunPage,
    summary="List a project's runs",
    tags=["runs", "ingest"],
    operation_id=ingest_operation_id("list_runs"),
)
def list_runs(
    request: HttpRequest,
    slug: str,
    name: Annotated[str | None, Query(max_length=200, description="Substring of the name.")] = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    status: RunStatus | None = None,
    kind: RunKind | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Any:
    """Newest first; `count` is the total matching, `items` one page of them."""
    for field, value in (("slug", slug), ("name", name), ("tag", tag)):
        if value is not None:
            query_text(field, value)
    project = get_object_or_404(visible_projects(request), slug=slug)
    runs = project.runs.select_related("project")
    if name:
        runs = runs.filter(name__icontains=name)
    if tag:
        runs = runs.filter(tags__contains=[tag])
    if status:
        runs = runs.filter(status=status)
    if kind:
        runs = runs.filter(kind=kind)
    return {"count": runs.count(), "items": list(runs[offset : offset + limit])}
