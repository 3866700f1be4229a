"""How alerts plugs into core (registered by AlertsConfig.ready): rules are evaluated as
points are stored, and rules and incidents are marked on the run pages.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db.models import Count

from dashboard.alerts.evaluate import WATCHED_AS, end_with_run, evaluate_points
from dashboard.alerts.models import AlertRule, Incident
from dashboard.core import hooks
from dashboard.core.models import Run


def watches_sql() -> str:
    """Does an enabled rule of the run's project watch a key of the batch, under its own name
    or a name it stands for (a framework's key for its canonical metric; weight_version for
    the stale-cache ratio): exactly when evaluate_points would do something, so every other
    batch skips it without a query."""
    pairs = []
    for key, name in WATCHED_AS:
        # Constants of our own table, inlined: the hook's SQL takes no parameters.
        if "'" in key + name or "%" in key + name:
            raise ValueError(f"unexpected character in {key!r} -> {name!r}")
        pairs.append(f"('{key}', '{name}')")
    names = (
        f"SELECT m.name FROM (VALUES {', '.join(pairs)}) AS m(key, name)"
        " WHERE m.key = ANY(batch.keys)"
    )
    return (
        f"EXISTS (SELECT 1 FROM {AlertRule._meta.db_table} a"
        " WHERE a.project_id = r.project_id AND a.enabled"
        f" AND (a.metric_key = ANY(batch.keys) OR a.metric_key IN ({names})))"
    )


def open_incidents(run_ids: Sequence[int]) -> dict[int, int]:
    if not run_ids:
        return {}
    rows = (
        Incident.objects.filter(run_id__in=run_ids, state=Incident.State.FIRING)
        .values("run_id")
        .annotate(n=Count("id"))
    )
    return {row["run_id"]: row["n"] for row in rows}


def chart_marks(run: Run) -> tuple[dict[str, list[hooks.Line]], list[hooks.Span]]:
    """A line at each enabled rule's threshold that applies to the run; its incidents."""
    lines: dict[str, list[hooks.Line]] = {}
    rules = AlertRule.objects.filter(project=run.project, enabled=True).exclude(
        condition=AlertRule.Condition.RISE  # a rise is relative: no fixed line
    )
    for rule in rules:
        if rule.matches_run(run):
            lines.setdefault(rule.metric_key, []).append(
                {"value": rule.threshold, "label": f"alert “{rule.name}”", "level": "rule"}
            )
    spans = [
        {
            "id": inc.pk,
            "step": inc.started_step,
            "end": inc.resolved_step,
            "key": inc.metric_key,
            "label": f"{inc.severity}: {inc.metric_key} ({inc.state})",
        }
        for inc in Incident.objects.filter(run=run).order_by("started_step")[:500]
    ]
    return lines, spans


def incident_spans(run_ids: Sequence[int]) -> dict[int, list[hooks.Span]]:
    """Where each run's incidents fired and resolved (None: still firing or ended unresolved)."""
    spans: dict[int, list[hooks.Span]] = {}
    rows = Incident.objects.filter(run_id__in=run_ids).order_by("fired_step")
    for inc in rows.values("run_id", "fired_step", "resolved_step", "metric_key", "severity"):
        spans.setdefault(inc["run_id"], []).append(
            {
                "step": inc["fired_step"],
                "end": inc["resolved_step"],
                "key": inc["metric_key"],
                "label": f"{inc['severity']}: {inc['metric_key']}",
            }
        )
    return spans


def register() -> None:
    """Plug alerts into core; called once the models are loaded (table names)."""
    hooks.register_after_store(hooks.AfterStore(call=evaluate_points, when_sql=watches_sql()))
    hooks.register_run_pages(
        hooks.RunPages(
            open_incidents=open_incidents, chart_marks=chart_marks, incident_spans=incident_spans
        )
    )
    hooks.register_run_ended(end_with_run)
