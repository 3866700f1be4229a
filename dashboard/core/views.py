"""Pages. Thin: look up what the user may see, render."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from dashboard.core.auth import visible_projects
from dashboard.core.models import ApiToken, Job, Project, Run


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when Postgres and Redis both answer, 503 (with which one failed) otherwise."""
    import redis

    state: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        state["postgres"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, that is the point of the page
        state["postgres"] = f"down: {type(exc).__name__}"
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2).ping()
        state["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        state["redis"] = f"down: {type(exc).__name__}"
    healthy = all(value == "ok" for value in state.values())
    return JsonResponse({"status": "ok" if healthy else "down", **state}, status=200 if healthy else 503)


def home(request: HttpRequest) -> HttpResponse:
    project = visible_projects(request).first()
    if project is None:
        return render(request, "no_projects.html")
    return redirect("project", slug=project.slug)


def _project(request: HttpRequest, slug: str) -> Project:
    return get_object_or_404(visible_projects(request), slug=slug)


def project_dashboard(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    runs = project.runs.all()[:50]
    jobs = project.jobs.select_related("run")[:10]
    return render(
        request,
        "project.html",
        {"project": project, "projects": visible_projects(request), "runs": runs, "jobs": jobs},
    )


def tokens(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    created_clear = None
    if request.method == "POST":
        name = request.POST.get("name", "").strip() or "token"
        _, created_clear = ApiToken.issue(request.user, project, name[:100])
    return render(
        request,
        "tokens.html",
        {
            "project": project,
            "projects": visible_projects(request),
            "tokens": project.tokens.filter(user=request.user),
            "created_clear": created_clear,
        },
    )


@require_POST
def revoke_token(request: HttpRequest, slug: str, token_id: int) -> HttpResponse:
    project = _project(request, slug)
    token = get_object_or_404(project.tokens.filter(user=request.user), pk=token_id)
    token.revoke()
    messages.info(request, f"Token {token.prefix}… revoked.")
    return redirect("tokens", slug=project.slug)


def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(Run.objects.filter(project__in=visible_projects(request)), pk=run_id)
    return render(
        request,
        "run.html",
        {"run": run, "project": run.project, "projects": visible_projects(request), "jobs": run.jobs.all()},
    )


def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(
        Job.objects.filter(project__in=visible_projects(request)).select_related("run", "project"),
        pk=job_id,
    )
    metrics = (job.result or {}).get("metrics", {}).get("values", {})
    return render(
        request,
        "job.html",
        {"job": job, "project": job.project, "projects": visible_projects(request), "metrics": metrics},
    )
