"""Projects and runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Schema

from dashboard.core.auth import visible_projects, visible_runs

router = Router(tags=["runs"])


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


@router.get("/projects", response=list[ProjectOut])
def list_projects(request: HttpRequest) -> Any:
    return visible_projects(request)


@router.get("/runs/{run_id}", response=RunOut)
def get_run(request: HttpRequest, run_id: int) -> Any:
    return get_object_or_404(visible_runs(request).select_related("project"), pk=run_id)


# Ingest and the chart reads live under /runs too; mounted here so the API shell stays as is.
from dashboard.core.api import ingest  # noqa: E402

router.add_router("", ingest.router)


@router.patch("/runs/{run_id}", response=RunOut, summary="Update a run's status or tags")
def update_run(request: HttpRequest, run_id: int, payload: ingest.RunPatch) -> Any:
    """Status moves set `started` / `finished`; `tags` replaces the run's tags."""
    run = get_run(request, run_id)
    if payload.tags is not None:
        run.tags = payload.tags
        run.save(update_fields=["tags"])
    if payload.status:
        run.set_status(payload.status)
    return run
