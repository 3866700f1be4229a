"""The comparison report: what `workers.compare` stores in `Job.result` for a comparison.

Read by the job page (dashboard.core.presenters), the CLI's text report, the API and tests.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from parity.reports import Verdict

Value = float | int | None


class Stratum(TypedDict):
    """One bucket of the gap by rollout log-prob or by response position."""

    bucket: str
    lo: float | int | None
    hi: float | int | None
    n_tokens: int
    abs_diff_mean: float | None
    kl_k3: float | None


class MetricsReport(TypedDict):
    """`parity.metrics.MetricsResult.to_dict()`: every METRICS.md metric and its evidence."""

    values: dict[str, Value]
    strata: dict[str, list[Stratum]]  # "by_lr", "by_position"
    histogram: dict[str, Any]
    scatter: dict[str, list[float]]
    per_sequence: dict[str, list[Any]]
    verdict: Verdict
    reasons: list[str]


class Diagnosis(TypedDict):
    """A METRICS.md "known offset" this comparison shows, with the fix."""

    name: str
    # "error": it explains a measured gap; "warning": wrong, but not measured here.
    severity: Literal["error", "warning"]
    message: str
    fix: str


class WorstToken(TypedDict):
    text: str
    id: int
    lt: float | None  # None: not finite
    lr: float | None
    d: float | None
    rank: int


class WorstSequence(TypedDict):
    sequence: int
    prompt_index: int
    prompt: str
    seq_log_ratio: float | None
    max_abs_d: float | None
    n_tokens: int
    finish_reason: str | None
    # Tokens outside the trainer's own support (lt = -inf); absent in older results.
    truncation_boundary: NotRequired[int]
    tokens: list[WorstToken]


class RequestedEffective(TypedDict):
    requested: Any
    effective: Any


class SamplingReport(TypedDict):
    """The sampling parameters as asked for and as the engine ran them."""

    requested: dict[str, Any]
    effective: dict[str, Any]
    model_defaults: dict[str, Any]
    changed_by_defaults: dict[str, RequestedEffective]


class ReferenceReport(TypedDict):
    """The same tokens scored with the processing that matches the engine."""

    what: str
    processing: dict[str, Any]
    values: dict[str, Value]
    verdict: Verdict


class Counts(TypedDict):
    prompts: int  # prompts sampled (those too long for the engine are skipped; see notes)
    sequences: int
    tokens: int
    finish_reasons: dict[str, int]


class ComparisonReport(TypedDict):
    version: int
    metrics: MetricsReport
    diagnoses: list[Diagnosis]
    worst_sequences: list[WorstSequence]
    sampling: SamplingReport
    trainer_processing: dict[str, Any]
    engine_processing: dict[str, Any]
    reference: ReferenceReport | None
    counts: Counts
    fingerprint: dict[str, Any]
    timings: dict[str, float]
    reused: dict[str, bool]
    wall_s: float
    # What the run had to work around, in words: chats rendered as plain text (the model has
    # no chat template), prompts skipped as too long for the engine's max_model_len. Absent
    # from results stored before it existed; read it with .get("notes", []).
    notes: NotRequired[list[str]]
