"""Pages. Thin: look up what the user may see, render.

Every page of a project object goes through `visible_projects`, so another project's run,
job or comparison answers 404 (never 403: ids reveal nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from pydantic import TypeAdapter, ValidationError

from dashboard.core import canonical, hooks
from dashboard.core.api.types import RunName, Tag, plain_id
from dashboard.core.auth import visible_projects
from dashboard.core.compare import DIFF_RULE, metric_table
from dashboard.core.forms import RunFilterForm, SpecForm
from dashboard.core.models import ApiToken, Job, Project, Run, start_job
from dashboard.core.points import list_keys
from dashboard.core.presenters import (
    D_BINS,
    comparison_context,
    determinism_context,
    engine_answered,
    fingerprint_groups,
    flat_text,
    flatten,
    fmt,
    sparkline,
    thresholds_for,
    timing_rows,
)
from workers.specs import JOB_KINDS, SPEC_KINDS, redact
from workers.specs.comparison import RECOMMENDED_RL

SUMMARY_KEYS = canonical.SUMMARY_KEYS
SPARK_KEY = "kl_k3"
# Charts every run page opens with; each inner tuple shares one chart.
DEFAULT_CHARTS: tuple[tuple[str, ...], ...] = (
    ("clip_rate",),
    ("kl_k3",),
    ("kl_k1",),
    ("abs_diff_mean", "abs_diff_max"),
)
RUNS_PER_PAGE = 25
COMPARE_MAX = 6


# --- health, home, tokens -----------------------------------------------------------------


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
    return JsonResponse(
        {"status": "ok" if healthy else "down", **state}, status=200 if healthy else 503
    )


def home(request: HttpRequest) -> HttpResponse:
    project = visible_projects(request).first()
    if project is None:
        return render(request, "no_projects.html")
    return redirect("project", slug=project.slug)


def _project(request: HttpRequest, slug: str) -> Project:
    return get_object_or_404(visible_projects(request), slug=slug)


def _page(
    request: HttpRequest, template: str, project: Project, status: int = 200, **context: Any
) -> HttpResponse:
    return render(
        request,
        template,
        {"project": project, "projects": visible_projects(request), **context},
        status=status,
    )


def tokens(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    created_clear = None
    if request.method == "POST":
        name = request.POST.get("name", "").strip() or "token"
        _, created_clear = ApiToken.issue(request.user, project, name[:100])
    return _page(
        request,
        "tokens.html",
        project,
        tokens=project.tokens.filter(user=request.user),
        created_clear=created_clear,
    )


@require_POST
def revoke_token(request: HttpRequest, slug: str, token_id: int) -> HttpResponse:
    project = _project(request, slug)
    token = get_object_or_404(project.tokens.filter(user=request.user), pk=token_id)
    token.revoke()
    messages.info(request, f"Token {token.prefix}… revoked.")
    return redirect("tokens", slug=project.slug)


def latest_by_key(run_id: int) -> dict[str, tuple[int, float]]:
    """Every key of a run with its latest (step, value)."""
    return {k["key"]: (k["last_step"], k["last_value"]) for k in list_keys(run_id)}


def _open_incidents(run_ids: Sequence[int]) -> dict[int, int]:
    """Open incidents per run, from the apps that raise them (alerts)."""
    counts: dict[int, int] = {}
    for pages in hooks.run_pages():
        for run_id, n in pages.open_incidents(run_ids).items():
            counts[run_id] = counts.get(run_id, 0) + n
    return counts


def _chart_annotations(run: Run) -> dict[str, Any]:
    """Threshold lines (verdict defaults, and what apps add: alert rules) and incidents."""
    lines: dict[str, list[dict[str, Any]]] = {}
    for key, rule in thresholds_for(run.project).items():
        for level in ("warn", "fail"):
            if level in rule:
                values = [rule[level], -rule[level]] if rule["op"] == "abs>" else [rule[level]]
                for value in values:
                    lines.setdefault(key, []).append(
                        {"value": value, "label": f"default {level}", "level": level}
                    )
    incidents: list[dict[str, Any]] = []
    for pages in hooks.run_pages():
        more_lines, spans = pages.chart_marks(run)
        for key, key_lines in more_lines.items():
            lines.setdefault(key, []).extend(key_lines)
        incidents.extend(spans)
    return {"thresholds": lines, "incidents": incidents}


# --- runs list ----------------------------------------------------------------------------


def _incident_spans(run_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Each run's incidents as step spans, from the apps that raise them (alerts)."""
    spans: dict[int, list[dict[str, Any]]] = {}
    for pages in hooks.run_pages():
        if pages.incident_spans is not None:
            for run_id, more in pages.incident_spans(run_ids).items():
                spans.setdefault(run_id, []).extend(more)
    return spans


def _spark_threshold(project: Project) -> float | None:
    """The sparkline's reference line: the project's warn level for its metric."""
    rule = thresholds_for(project).get(SPARK_KEY) or {}
    return rule.get("warn") if rule.get("op") in (">", "abs>") else None


def project_dashboard(request: HttpRequest, slug: str) -> HttpResponse:
    """The runs of a project: filter, sort, paginate; `?partial=1` returns just the table."""
    project = _project(request, slug)
    form = RunFilterForm(request.GET)
    runs = form.filter(project.runs.all())
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    ids = [run.pk for run in page.object_list]
    # A run that sent only its framework's keys shows them under the canonical names.
    latest, spark = canonical.summaries(page.object_list, SUMMARY_KEYS, SPARK_KEY)
    incidents = _open_incidents(ids)
    spans = _incident_spans(ids)
    threshold = _spark_threshold(project)
    rows = [
        {
            "run": run,
            "latest": latest[run.pk],
            "spark": sparkline(*spark[run.pk], threshold, spans.get(run.pk, ())),
            "incidents": incidents.get(run.pk, 0),
        }
        for run in page.object_list
    ]
    query = request.GET.copy()
    query.pop("page", None)
    query.pop("partial", None)
    sort_query = query.copy()
    sort_query.pop("sort", None)
    current = (form.cleaned_data.get("sort") if form.is_valid() else "") or "-created"
    sorts = {}
    for column, first in (
        ("name", "name"),
        ("kind", "kind"),
        ("status", "status"),
        ("last_step", "-last_step"),
        ("created", "-created"),
        # Metrics: the largest mismatch first, where a reader looks for trouble.
        *((key, "-" + key) for key in SUMMARY_KEYS),
    ):
        active = current.lstrip("-") == column
        # A second click on the active column flips its direction.
        target = (current[1:] if current.startswith("-") else "-" + current) if active else first
        sort_query["sort"] = target
        sorts[column] = {
            "url": "?" + sort_query.urlencode(),
            "aria": ("descending" if current.startswith("-") else "ascending") if active else "",
        }
    context = {
        "form": form,
        "page": page,
        "rows": rows,
        "summary_keys": [{"key": key, "sort": sorts[key]} for key in SUMMARY_KEYS],
        "spark_key": SPARK_KEY,
        "query": query.urlencode(),
        "sorts": sorts,
        "filtered": any(request.GET.get(k) for k in ("q", "tag", "status", "kind")),
        "jobs": project.jobs.select_related("run")[:10],
        "new_kinds": [JOB_KINDS[k] for k in SPEC_KINDS],
    }
    if request.GET.get("partial"):
        return render(request, "_runs_table.html", {"project": project, **context})
    return _page(request, "project.html", project, **context)


# --- one run ------------------------------------------------------------------------------


def _visible_run(request: HttpRequest, run_id: int) -> Run:
    return get_object_or_404(
        Run.objects.filter(project__in=visible_projects(request)).select_related("project"),
        pk=run_id,
    )


def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _visible_run(request, run_id)
    job = run.jobs.order_by("-created").first()
    # A comparison or a certificate is one measurement (its numbers sit at step 0): its result
    # page is its page.
    one_measurement = (Run.Kind.COMPARISON, Run.Kind.DETERMINISM)
    if run.kind in one_measurement and job is not None and request.GET.get("charts") != "1":
        return redirect("job", job_id=job.pk)
    latest = latest_by_key(run.pk)
    # The default charts, each canonical key read from whichever key gives it on this run.
    charts, replaced = canonical.chart_keys(DEFAULT_CHARTS, latest)
    if not latest:
        charts = [list(chart) for chart in DEFAULT_CHARTS]
    elif not charts:
        # A run that posts only other keys (e.g. a replay) still opens on something to see.
        charts = [[k] for k in sorted(latest)[:4]]
    versions = canonical.weight_versions(run, latest)
    annotations = _chart_annotations(run)
    lines = annotations["thresholds"]
    for key, resolved in replaced.items():
        # A framework's key charted as a canonical metric gets that metric's lines.
        lines.setdefault(key, lines.get(resolved.canonical, []))
    others = run.project.runs.exclude(pk=run.pk).only("id", "name")[:50]
    return _page(
        request,
        "run.html",
        run.project,
        run=run,
        job=job,
        jobs=run.jobs.all()[:20],
        keys=sorted(latest),
        latest=sorted(latest.items()),
        charts=charts,
        chart_config={
            "run": run.pk,
            "charts": charts,
            "keys": sorted(latest),
            "last_step": run.last_step,
            "live": run.status in (Run.Status.PENDING, Run.Status.RUNNING)
            or run.kind == "training",
            "labels": {k: canonical.chart_label(r) for k, r in replaced.items()},
            "aliases": canonical.ALIASES,
            "versions": versions["marks"] if versions else [],
            "version": (
                {"step": latest["weight_version"][0], "value": latest["weight_version"][1]}
                if "weight_version" in latest
                else None
            ),
            **annotations,
        },
        panel=canonical.panel(latest),
        versions=versions,
        fingerprint=flat_text(run.fingerprint),
        others=others,
    )


# --- comparison result (the job page) -----------------------------------------------------


def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(
        Job.objects.filter(project__in=visible_projects(request)).select_related("run", "project"),
        pk=job_id,
    )
    result = job.result or {}
    context: dict[str, Any] = {"verdict": job.run.verdict if job.run else ""}
    if job.kind == Job.Kind.COMPARISON and result:
        thresholds = thresholds_for(job.project, job.spec.get("thresholds"))
        context.update(comparison_context(result, thresholds))
    elif job.kind == Job.Kind.DETERMINISM and result:
        context.update(determinism_context(result))
    elif job.kind == Job.Kind.REPLAY and result:
        context["engine"] = engine_answered(result)
    return _page(
        request,
        "job.html",
        job.project,
        job=job,
        result=result,
        **context,
        timings=timing_rows(result.get("timings")),
        fingerprint=fingerprint_groups(
            result.get("fingerprint") or (job.run.fingerprint if job.run else {})
        ),
        spec=flat_text(redact(job.spec)),
        d_bins=D_BINS,
    )


# --- compare ------------------------------------------------------------------------------


def compare(request: HttpRequest, slug: str) -> HttpResponse:
    """Two or more runs side by side: metrics, fingerprints, and overlaid series."""
    project = _project(request, slug)
    ids: list[int] = []
    for raw in request.GET.getlist("run"):
        for part in raw.split(","):
            run_id = plain_id(part)
            if run_id is not None and run_id not in ids:
                ids.append(run_id)
    ids = ids[:COMPARE_MAX]
    found = {run.pk: run for run in project.runs.filter(pk__in=ids)}
    if len(found) != len(ids):
        raise Http404("No such run in this project.")
    runs = [found[i] for i in ids]
    per_run = {run.pk: latest_by_key(run.pk) for run in runs}
    last_steps = {rid: {k: sv[0] for k, sv in latest.items()} for rid, latest in per_run.items()}
    table = metric_table(runs, last_steps, thresholds_for(project))
    keys = [row["key"] for row in table]
    fingerprints = [flatten(run.fingerprint) for run in runs]
    fp_keys = sorted({k for fp in fingerprints for k in fp})
    fp_table = [
        {
            "key": key,
            "cells": [fmt(fp[key]) if key in fp else "—" for fp in fingerprints],
            "differs": len({repr(fp.get(key)) for fp in fingerprints}) > 1,
        }
        for key in fp_keys
    ]
    shared = [k for k in keys if all(k in per_run[r.pk] for r in runs)]
    multi_step = [k for k in shared if any(per_run[r.pk][k][0] > 0 for r in runs)]
    candidates = project.runs.exclude(pk__in=ids).only("id", "name", "kind")[:100]
    return _page(
        request,
        "compare.html",
        project,
        runs=runs,
        metric_table=table,
        diff_rule=DIFF_RULE,
        fp_table=fp_table,
        candidates=candidates,
        ids=ids,
        only_diff=request.GET.get("diff") == "1",
        chart_config={
            "runs": [{"id": r.pk, "name": r.name} for r in runs],
            **_compare_annotations(runs),
            "keys": multi_step or shared,
            "charts": [
                [k]
                for k in [
                    k for k in ("clip_rate", "kl_k3", "kl_k1", "abs_diff_mean") if k in multi_step
                ]
                or multi_step[:4]
            ],
        },
    )


def _compare_annotations(runs: Sequence[Run]) -> dict[str, Any]:
    """The run page's lines and incidents for runs side by side: each line once per metric,
    each incident marked in its run's series colour and named after its run."""
    lines: dict[str, list[dict[str, Any]]] = {}
    incidents: list[dict[str, Any]] = []
    for series, run in enumerate(runs):
        marks = _chart_annotations(run)
        for key, key_lines in marks["thresholds"].items():
            known = lines.setdefault(key, [])
            known.extend(line for line in key_lines if line not in known)
        for span in marks["incidents"]:
            incidents.append({**span, "series": series, "label": f"{run.name}: {span['label']}"})
    return {"thresholds": lines, "incidents": incidents}


# --- new jobs -----------------------------------------------------------------------------


def _initial_spec(kind: str) -> dict[str, Any]:
    """Defaults that work on the demo model: `python -m workers.tiny_model` builds it here."""
    tiny = str(settings.PARITY_MODELS_DIR / "tiny-llama")
    return {"model": tiny}


@require_http_methods(["GET", "POST"])
def new_job(request: HttpRequest, slug: str, kind: str) -> HttpResponse:
    """The New comparison / replay / checklist forms, generated from the kind's spec."""
    project = _project(request, slug)
    if kind not in SPEC_KINDS:
        raise Http404("No such job kind.")
    data = request.POST if request.method == "POST" else None
    preset = request.GET.get("preset") if kind == Job.Kind.COMPARISON else None
    initial = _initial_spec(kind) | (RECOMMENDED_RL if preset == "rl" else {})
    form = SpecForm(JOB_KINDS[kind].spec, data=data, initial=initial)
    run_name, tags, run_errors = _run_fields(request.POST)
    if data is not None and form.is_valid() and not run_errors:
        spec = form.spec.model_dump(mode="json")
        job = start_job(project, kind, spec, user=request.user, run_name=run_name, tags=tags)
        return redirect(reverse("job", args=[job.pk]))
    return _page(
        request,
        "new_job.html",
        project,
        kind=kind,
        form=form,
        preset=preset,
        run_name=request.POST.get("run_name", ""),
        tags=request.POST.get("tags", ""),
        run_errors=run_errors,
        status=400 if data is not None else 200,
    )


_RUN_NAME = TypeAdapter(RunName)
_TAGS = TypeAdapter(list[Tag])


def _run_fields(post: Mapping[str, str]) -> tuple[str, list[str], dict[str, str]]:
    """The form's run name and comma-separated tags, checked by the API's own rules (the
    form used to cut what the API refuses)."""
    run_name = post.get("run_name", "").strip()
    tags = [t.strip() for t in post.get("tags", "").split(",") if t.strip()]
    errors = {}
    for field, adapter, value in (("run_name", _RUN_NAME, run_name), ("tags", _TAGS, tags)):
        if value:
            try:
                adapter.validate_python(value)
            except ValidationError as exc:
                error = exc.errors()[0]
                where = f"“{error['input']}”: " if field == "tags" else ""
                errors[field] = where + error["msg"].replace("String should have", "must have")
    return run_name, tags, errors
