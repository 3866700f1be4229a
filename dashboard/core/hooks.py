"""Where apps built on core plug into it, so that core never imports them.

An app registers its hooks in its `AppConfig.ready()`; core calls every registered one and
works the same with none. Alerts registers every kind: it evaluates its rules as points are
stored, marks its thresholds and incidents on the run pages, and ends a run's incidents
when the run ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dashboard.core.models import Run
    from dashboard.core.points import Point

# A threshold line on a key's chart: {"value": float, "label": str, "level": str}.
Line = dict[str, Any]
# A span of steps on a key's chart: {"step": int, "end": int | None, "key": str, "label": str}.
Span = dict[str, Any]


@dataclass(frozen=True)
class AfterStore:
    """Called by the point writer with (run, the batch's points) inside the batch's
    transaction, so that whatever it writes commits with the points or not at all.

    `when_sql` is an SQL condition that rides the batch's one statement, over `r` (the run:
    `id`, `project_id`) and `batch.keys` (the batch's distinct keys, text[]); the hook is
    called only for batches where it holds, and costs no query otherwise. None: every batch.
    It takes no parameters (and so holds no `%`): table names come from the app's models.
    """

    call: Callable[[Run, Sequence[Point]], None]
    when_sql: str | None = None


@dataclass(frozen=True)
class RunPages:
    """What an app shows on the run pages."""

    # The number of open incidents of each of the runs (the runs list's badge).
    open_incidents: Callable[[Sequence[int]], dict[int, int]]
    # A run's threshold lines by key and its incidents as spans, for its charts.
    chart_marks: Callable[[Run], tuple[dict[str, list[Line]], list[Span]]]
    # The incidents of each of the runs as spans (the runs list's sparklines), one query.
    incident_spans: Callable[[Sequence[int]], dict[int, list[Span]]] | None = None


_after_store: list[AfterStore] = []
_run_pages: list[RunPages] = []
# Called with a run that just reached a final status, in the transaction that set it.
_run_ended: list[Callable[[Run], None]] = []


def register_after_store(hook: AfterStore) -> None:
    if hook not in _after_store:  # ready() may run more than once (tests)
        _after_store.append(hook)


def register_run_pages(hook: RunPages) -> None:
    if hook not in _run_pages:
        _run_pages.append(hook)


def register_run_ended(hook: Callable[[Run], None]) -> None:
    if hook not in _run_ended:
        _run_ended.append(hook)


def run_ended() -> tuple[Callable[[Run], None], ...]:
    return tuple(_run_ended)


def after_store() -> tuple[AfterStore, ...]:
    return tuple(_after_store)


def run_pages() -> tuple[RunPages, ...]:
    return tuple(_run_pages)
