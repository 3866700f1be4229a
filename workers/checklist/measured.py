"""One variant's outcome (`Measured`) and the vocabulary rows and reports share: its
before/after cell, the verdict order, and the one way the checklist writes a number.

Pure: no engine, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from parity.reports import Verdict
from parity.reports.checklist import Cell, VariantReport, VariantSampling, VariantTrainer
from parity.reports.numbers import number

# The numbers each before/after cell shows (the three, plus what qualifies them).
CELL_KEYS = (
    "abs_diff_mean",
    "kl_k3",
    "abs_diff_max",
    "n_tokens",
    "nonfinite_trainer",
    "truncation_boundary",
)
_RANK: tuple[Verdict, ...] = ("pass", "warn", "fail")


def as_verdict(v: object) -> Verdict | None:
    """`v` when it is a verdict (pass, warn, fail), else None."""
    return next((r for r in _RANK if r == v), None)


def with_numbers(cell: Cell, values: Mapping[str, Any]) -> Cell:
    """`cell` with those of the CELL_KEYS numbers that `values` has."""
    # A cast because TypedDict keys cannot be set from a loop variable; CELL_KEYS are
    # exactly Cell's number keys.
    return cast(Cell, {**cell, **{k: values[k] for k in CELL_KEYS if k in values}})


@dataclass
class Measured:
    """One variant's outcome: its numbers, or why it could not run."""

    name: str
    label: str
    status: Literal["measured", "could-not-run"]
    error: str | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    trainer: VariantTrainer = field(default_factory=lambda: VariantTrainer())
    sampling: VariantSampling = field(default_factory=lambda: VariantSampling())
    values: dict[str, Any] = field(default_factory=dict)
    verdict: Verdict | None = None
    reasons: list[str] = field(default_factory=list)
    histogram: dict[str, Any] | None = None
    engine_reused: bool | None = None
    # The variant whose sampled tokens this one scored (no new generation), if any.
    rollout_of: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "measured"

    def cell(self, role: str) -> Cell:
        """The before/after cell of a row: this variant's headline numbers."""
        return with_numbers(
            {
                "role": role,
                "variant": self.name,
                "label": self.label,
                "verdict": self.verdict,
                "reasons": self.reasons,
            },
            self.values,
        )

    def report(self) -> VariantReport:
        """This variant in the job's result (its histogram goes to the common chart)."""
        return {
            "name": self.name,
            "label": self.label,
            "status": self.status,
            "error": self.error,
            "engine": self.engine,
            "trainer": self.trainer,
            "sampling": self.sampling,
            "values": self.values,
            "verdict": self.verdict,
            "reasons": self.reasons,
            "engine_reused": self.engine_reused,
            "rollout_of": self.rollout_of,
            "seconds": self.seconds,
        }


def num(x: Any) -> str:
    """A number in the checklist's text (parity.reports.numbers), "n/a" for none."""
    return number(x, missing="n/a")


def gap(cell: Mapping[str, Any] | None) -> str:
    """A cell's gap in words: mean |d|, kl_k3 and max |d|."""
    if not cell:
        return "not measured"
    return (
        f"mean |d| {num(cell.get('abs_diff_mean'))}, kl_k3 {num(cell.get('kl_k3'))}, "
        f"max |d| {num(cell.get('abs_diff_max'))}"
    )


def worst(verdicts: Sequence[object]) -> Verdict | None:
    """The worst of the verdicts that are verdicts; None when there is none."""
    known = [v for v in map(as_verdict, verdicts) if v is not None]
    return max(known, key=_RANK.index) if known else None
