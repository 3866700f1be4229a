"""The contract between long-running engine work and whoever runs it (Celery task or CLI).

Engine code (comparison, replay, checklist) never touches the ORM: it reports progress and
per-step values through a `Reporter`, raises `UserError` for problems the user caused, and
returns a `JobOutcome` that the job task (`dashboard.core.tasks`) stores.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class UserError(Exception):
    """A problem the user can fix (bad model path, invalid sampling value, ...).

    The message is shown as-is on the failed job's page and by the CLI, so write it for
    that user: what was wrong and what to do instead.
    """


class Reporter(Protocol):
    def stage(self, message: str, progress: float | None = None) -> None:
        """Say what the job is doing now; `progress` in [0, 1] when known."""

    def step_values(self, step: int, values: Mapping[str, float]) -> None:
        """Store one step's values now (and stream them live), e.g. one replay update."""


@dataclass
class JobOutcome:
    result: dict[str, Any]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""
    # Stored as metric points of the job's run when the job succeeds.
    step_values: dict[int, dict[str, float]] = field(default_factory=dict)


class PrintReporter:
    """Reporter for command-line use: stage lines on stderr, values kept in memory."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.values: dict[int, dict[str, float]] = {}

    def stage(self, message: str, progress: float | None = None) -> None:
        if self.quiet:
            return
        pct = f"{progress * 100:5.1f}% " if progress is not None else ""
        print(f"[parity] {pct}{message}", file=sys.stderr, flush=True)

    def step_values(self, step: int, values: Mapping[str, float]) -> None:
        self.values.setdefault(step, {}).update(values)


class NullReporter(PrintReporter):
    def __init__(self) -> None:
        super().__init__(quiet=True)


# Postgres jsonb refuses U+0000 in any string; a sampled NUL token is shown as the visible
# symbol for NUL instead (token text is for people; ids stay exact).
NUL, NUL_SYMBOL = "\x00", "\u2400"


def json_safe(x: Any) -> Any:
    """`x` as Postgres jsonb can store it: NaN/inf replaced by None, numpy scalars by Python
    ones, and NUL characters in strings and keys by the symbol for NUL (U+2400)."""
    if isinstance(x, str):
        return x.replace(NUL, NUL_SYMBOL)
    if isinstance(x, Mapping):
        return {str(k).replace(NUL, NUL_SYMBOL): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "shape", None) == ():
        x = x.item()  # numpy scalar (numpy is not imported here)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
