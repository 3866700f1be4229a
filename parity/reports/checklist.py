"""The checklist report: what `workers.checklist` stores in `Job.result` for a migration
checklist (issue 8).

Read by the job page (checklist_result.html), the Markdown report, the CLI, the API and tests.
Results stored before `version` existed have every other key below and read as version 1
(`parity.reports.version_of`).
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from parity.reports import Verdict

VERSION = 1

# "needs-restart": the check's fix is an engine option of a server the user runs, fixed at
# its start; the row says which flag and shows what could be measured without it.
Status = Literal["pass", "needs-fix", "not-applicable", "could-not-run", "needs-restart"]
# The four checks of the spec (workers.specs.checklist.CHECKS), the summary row, then the
# batch-invariance row (spec.include_determinism; a determinism certificate, not a fix).
RowCheck = Literal[
    "processed_logprobs",
    "runtime_defaults",
    "weight_updates",
    "fp32_head",
    "all_fixes",
    "determinism",
]
ReplayKey = Literal["between_batches", "in_flight"]
# A metric value as stored: None where it could not be computed or was not finite.
Value = float | int | None


class Cell(TypedDict):
    """The numbers of one measured configuration in a row: `before` (the V1 default),
    `after` (the fix) or one of the row's `others`."""

    role: str  # "before", "after", "one side only", "in flight", "after updates"
    variant: str  # a variant name, or replay_without_reset / replay_with_reset / ...
    label: str
    # The variant's verdict against the thresholds; absent for cells averaged over a replay.
    verdict: NotRequired[Verdict | None]
    # The rules that verdict tripped, in words (parity.metrics); absent before they were kept.
    reasons: NotRequired[list[str]]
    abs_diff_mean: NotRequired[float | None]
    kl_k3: NotRequired[float | None]
    abs_diff_max: NotRequired[float | None]
    n_tokens: NotRequired[int | None]
    nonfinite_trainer: NotRequired[int | None]
    # Sampled tokens outside the trainer's own top-p/top-k/min-p support (METRICS.md).
    truncation_boundary: NotRequired[int | None]


class Recommendation(TypedDict, total=False):
    """The settings to use, as code: each key present only where it applies."""

    vllm_llm: str  # offline `LLM(...)`
    vllm_serve: str  # `vllm serve` flags
    sglang_serve: str  # `python -m sglang.launch_server` flags
    trainer: str  # what the trainer side must do


class Row(TypedDict):
    """One check: its status, the measured before/after numbers and why.

    `details` per check: processed_logprobs {sampling, trainer_processing}; runtime_defaults
    {differs, model_defaults, requested, effective}; weight_updates {flags_summary,
    prefix_cache, in_flight, notes}; fp32_head {engine_head_dtype, notes}; all_fixes
    {verdict, reasons}; determinism {verdict, reasons, pairs}. Empty when the row could not
    run or was not measured.
    """

    check: RowCheck
    title: str
    status: Status
    reason: str
    before: Cell | None  # None: not measured (never a number that was not measured)
    after: Cell | None
    others: list[Cell]
    details: dict[str, Any]
    recommendation: Recommendation


class RequestedEffective(TypedDict):
    requested: Any
    effective: Any


class VariantSampling(TypedDict, total=False):
    """The sampling parameters of a variant's rollout, as asked for and as the engine ran
    them: all four keys, or none for a variant that could not run."""

    requested: dict[str, Any]
    effective: dict[str, Any]
    model_defaults: dict[str, Any]
    changed_by_defaults: dict[str, RequestedEffective]


class VariantTrainer(TypedDict, total=False):
    """How the trainer scored: all three keys, or none for a variant that could not run."""

    dtype: str
    head_dtype: str
    processing: dict[str, Any]  # workers.trainer.Processing as a dict


class VariantReport(TypedDict):
    """One measured configuration: how engine and trainer ran, and its numbers."""

    name: str
    label: str
    status: Literal["measured", "could-not-run"]
    error: str | None
    # dtype, head_dtype, logprobs_mode, generation_config, enable_prefix_caching as run.
    engine: dict[str, Any]
    trainer: VariantTrainer
    sampling: VariantSampling
    values: dict[str, Value]  # every METRICS.md metric (parity.metrics)
    verdict: Verdict | None
    reasons: list[str]
    engine_reused: bool | None
    # The variant whose sampled tokens this one scored (no new generation), if any.
    rollout_of: str | None
    seconds: dict[str, float]  # engine_load_s, generate_s, score_s, total_s where they ran


class HistogramSeries(TypedDict):
    """|d| counts of one variant on the common edges."""

    variant: str
    label: str
    counts: list[int]  # len(edges) - 1 bins; below the first edge in the first, above the last
    zeros: int  # d == 0 exactly (a log axis has no 0)
    nonfinite: int


class Histograms(TypedDict):
    edges: list[float]
    series: list[HistogramSeries]


class FlagReport(TypedDict):
    fired: bool
    reason: str


class ReplayUpdate(TypedDict):
    """One weight update of a replay, as the checklist keeps it."""

    step: int
    metrics: dict[str, Value]  # against the new weights W_k
    metrics_vs_previous: dict[str, Value]  # the same tokens against W_{k-1}
    verdict: Verdict
    reasons: list[str]
    flags: dict[str, FlagReport]  # stale_weights, partial_update, mismatch_spike
    checksums: dict[str, Any]  # status, n_params, matched, not_updated
    # {measured: bool, without_reset?: {metrics, num_cached_tokens}, with_reset?: ..., ...}
    prefix_cache: dict[str, Any]
    in_flight: dict[str, Any] | None


class ReplaySummary(TypedDict):
    """What the checklist keeps of a replay that ran (the full replay is its own job kind)."""

    status: Literal["measured"]
    summary: dict[str, Any] | None
    verdict: Verdict
    flags_summary: dict[str, list[int]]  # flag name -> the updates where it fired
    prefix_cache_summary: dict[str, Any]
    baseline: dict[str, Value]
    updates: list[ReplayUpdate]
    capabilities: dict[str, Any]  # what this vLLM offers for weight updates
    engine: dict[str, Any]
    update_mode: str | None
    seconds: float


class ReplayFailed(TypedDict):
    status: Literal["could-not-run"]
    error: str
    seconds: float


class ReplayNotOffered(TypedDict):
    """The in-flight replay, skipped because this vLLM has no in-flight update mode."""

    status: Literal["not-offered"]
    reason: str


ReplayEntry = ReplaySummary | ReplayFailed | ReplayNotOffered


class Replays(TypedDict, total=False):
    """The replays that were planned, by key."""

    between_batches: ReplayEntry
    in_flight: ReplayEntry


class ChecklistReport(TypedDict):
    version: int  # VERSION; absent before versions (read with version_of)
    kind: Literal["checklist"]
    model: str  # the resolved model path
    vllm_version: str | None
    sampling_requested: dict[str, Any]
    verdict: Verdict  # 'all fixes together' against the thresholds when it was measured
    rows: list[Row]  # the selected checks in order, then all_fixes
    variants: list[VariantReport]
    histograms: Histograms
    replays: Replays
    engine_builds: int
    seconds: float
    timings: dict[str, float]  # "<variant>.<stage>_s" and "replay_<key>.total_s"
    spec: dict[str, Any]  # the ChecklistSpec as JSON
    markdown: str  # the report to paste into a pull request
    # What the run had to work around (chats rendered as plain text, prompts too long for
    # the engine skipped); absent from results stored before it existed: .get("notes", []).
    notes: NotRequired[list[str]]
    # Which engine answered (adapter, label, version, url, unknown); absent from results
    # stored before the checklist ran against servers: in-process vLLM.
    engine: NotRequired[dict[str, Any]]
