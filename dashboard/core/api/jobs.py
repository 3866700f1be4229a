"""Jobs: comparisons, replays and checklists run by the gpu workers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Schema

from dashboard.core.auth import visible_projects
from dashboard.core.models import Job

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


@router.get("/jobs/{job_id}", response=JobOut)
def get_job(request: HttpRequest, job_id: int) -> Any:
    return get_object_or_404(Job.objects.filter(project__in=visible_projects(request)), pk=job_id)
