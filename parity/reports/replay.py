"""The replay report: what `workers.replay` stores in `Job.result` for a weight-update replay
(`ReplayResult.to_dict()`).

Read by the job page (replay_result.html), the migration checklist's summary of a replay, the
CLI's `--json`, the API and tests. Results stored before `version` existed have every other
key below and read as version 1 (`parity.reports.version_of`).

Numbers are stored through `workers.reporting.json_safe`: a value that was NaN or infinite in
memory (a metric that could not be computed, a ratio over a zero baseline) reads as None.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from parity.reports import Verdict

# A metric value as stored: None where it could not be computed or was not finite.
Value = float | int | None
# Every METRICS.md metric of a set of tokens (`parity.metrics.MetricsResult.values`).
MetricValues = dict[str, Value]
# "full": every parameter holds W_k; "partial": some do; "none": none does.
UpdateStatus = Literal["full", "partial", "none"]
# Who read the engine's weights: Parity's worker extension (in-process, or a server started
# with it, through /collective_rpc), vLLM's own /weight_checker digests, SGLang's own
# /weights_checker digests, or nobody.
ChecksumMethod = Literal[
    "parity_extension", "vllm_weight_checker", "sglang_weights_checker", "not_available"
]
FlagName = Literal["stale_weights", "partial_update", "mismatch_spike"]


# --- checksums -----------------------------------------------------------------------------


class NotUpdatedDetail(TypedDict):
    """The numbers of one parameter whose engine checksum is not the trainer's W_k's."""

    engine_sum: float | None
    expected_sum: float | None
    sum_diff: float | None
    engine_abs_sum: float | None
    expected_abs_sum: float | None
    source: str | None  # "kernel": read through the serving kernel; "param": the tensor
    # Present from the first update on: whether the engine still holds W_k-1's values.
    equals_previous_weights: NotRequired[bool]
    # A tied layer (an output head sharing the input embedding): the parameter it shares,
    # whose W_k it was compared with. The engine's kernel for it is what differs.
    tied_to: NotRequired[str]


class ChecksumReport(TypedDict):
    """Per-parameter comparison of the engine's weights with the trainer's W_k (HF names)."""

    n_params: int  # parameters both sides have
    matched: int
    status: UpdateStatus | None  # None: the engine's weights could not be read (`unavailable`)
    not_updated: list[str]
    not_updated_detail: dict[str, NotUpdatedDetail]
    missing_in_engine: list[str]
    unchanged_in_engine: list[str]  # engine checksum equal to the previous update's
    unchanged_in_trainer: list[str]  # ... of those, the ones W_k did not change either
    # Absent in results stored before engine adapters: then "parity_extension".
    method: NotRequired[ChecksumMethod]
    # method "not_available": why, in words ("not available on this server (...)").
    unavailable: NotRequired[str]
    # A server's weight checker: parameters whose digest cannot be compared with the trainer's,
    # and why (e.g. a layer served from a repacked kernel copy: its parameter is empty).
    not_comparable: NotRequired[dict[str, str]]


# --- flags ---------------------------------------------------------------------------------


class FlagReport(TypedDict):
    """One per-update flag: whether it fired, why in words, and the numbers it was decided on
    (`StaleEvidence`, `PartialEvidence` or `SpikeEvidence` by flag)."""

    fired: bool
    reason: str
    evidence: dict[str, Any]


class KlAndAbs(TypedDict):
    kl_k3: float | None
    abs_diff_mean: float | None


class StaleEvidence(TypedDict):
    vs_current: KlAndAbs  # the engine's tokens against W_k
    vs_previous: KlAndAbs  # ... and against W_k-1
    margin: float
    update_separation_abs_diff_mean: float | None
    baseline_abs_diff_mean: float | None
    resolution_needed: float | None
    resolvable: bool
    params_equal_to_previous_weights: int
    # The checksum status the flag was decided with (None: no checksums) and whether the
    # tokens alone fit W_k-1 clearly better (resolvable and past the margin on both).
    checksum_status: NotRequired[UpdateStatus | None]
    tokens_fit_previous: NotRequired[bool]


class PartialEvidence(TypedDict):
    not_updated: list[str]
    matched: int | None
    n_params: int | None
    missing_in_engine: list[str]
    detail: dict[str, NotUpdatedDetail]


class SpikeCheck(TypedDict):
    value: float | None
    baseline: float | None
    ratio: float | None
    factor: float
    floor: float
    fired: bool


class SpikeEvidence(TypedDict):
    kl_k3: SpikeCheck
    abs_diff_mean: SpikeCheck


class UpdateFlags(TypedDict):
    stale_weights: FlagReport
    partial_update: FlagReport
    mismatch_spike: FlagReport


class FlagsSummary(TypedDict):
    """Flag name -> the updates (k) where it fired."""

    stale_weights: list[int]
    partial_update: list[int]
    mismatch_spike: list[int]


# --- prefix cache --------------------------------------------------------------------------


class MetricSummary(TypedDict):
    """The few metrics a prefix-cache or in-flight measurement is reported with."""

    n_tokens: Value
    abs_diff_mean: Value
    abs_diff_max: Value
    kl_k3: Value
    kl_k1: Value
    bit_equal_frac: Value
    clip_rate: Value
    token_mismatch: Value


class BatchDiff(TypedDict):
    """How two runs of the same requests differ (tokens, and lr on their common prefix)."""

    sequences: int
    sequences_with_different_tokens: int
    first_different_token: list[int | None]  # None: the sequence is identical
    lr_abs_diff_mean_on_common_tokens: float | None
    lr_abs_diff_max_on_common_tokens: float | None
    identical: bool


class CacheControl(BatchDiff):
    """The same requests twice at W0, the second served from the prefix cache."""

    num_cached_tokens: list[int | None]


class CacheSide(TypedDict):
    metrics: MetricSummary  # against W_k
    num_cached_tokens: list[int | None]


class PrefixCacheReport(TypedDict):
    """One update's batch with and without `reset_prefix_cache()`.

    Not measured: only `measured` (and, in flight, the next batch instead: `note`,
    `next_batch_vs_current`, `next_batch_num_cached_tokens`). Measured: the rest.
    """

    measured: bool
    note: NotRequired[str]
    next_batch_vs_current: NotRequired[MetricSummary]
    next_batch_num_cached_tokens: NotRequired[list[int | None]]
    without_reset: NotRequired[CacheSide]
    with_reset: NotRequired[CacheSide]
    outputs: NotRequired[BatchDiff]


class PrefixCacheSummary(TypedDict):
    """What reset_prefix_cache() measurably did over the whole replay; when no update was
    measured, only `measured` and `control_at_w0`."""

    measured: bool
    control_at_w0: CacheControl
    updates_measured: NotRequired[int]
    updates_where_outputs_differ: NotRequired[int]
    abs_diff_mean_vs_w_k_without_reset: NotRequired[float | None]
    abs_diff_mean_vs_w_k_with_reset: NotRequired[float | None]
    kl_k3_vs_w_k_without_reset: NotRequired[float | None]
    kl_k3_vs_w_k_with_reset: NotRequired[float | None]
    cached_prompt_tokens_without_reset: NotRequired[list[int]]
    summary: NotRequired[str]  # in words


# --- one update ----------------------------------------------------------------------------


class RetiedKernel(TypedDict):
    """A tied layer (an output head sharing the input embedding) that vLLM's layerwise reload
    did not process, and what re-tying it did (`workers.weight_sync.retie_kernels`).

    `max_abs_diff_*`: max |kernel - shared parameter| over the first `probe_columns` input
    columns, read through the kernel; above 0 before means the kernel served stale values.
    """

    module: str
    tied_to: str
    probe_columns: int
    max_abs_diff_before: float
    stale_before: bool
    rebuilt: bool
    max_abs_diff_after: float
    note: NotRequired[str]


class WeightVersion(TypedDict):
    """What an engine that labels its weights (SGLang) says it serves after update k, which
    the replay labelled "k": /model_info's weight_version, and the versions the /generate
    results the update is judged on report. A label only: checksums say what the weights are."""

    expected: str
    reported: str
    sampled: list[str | None]  # distinct, in order; None: a result without a version
    matches: bool  # reported and every sampled one equal `expected`


class UpdateInfo(TypedDict):
    """What pushing W_k into the engine did (the worker extension's report)."""

    rpc_seconds: float
    load_seconds: float | None
    received: int  # tensors the worker read
    sent: int  # ... and passed to load_weights
    withheld_by_extension: list[str]
    loaded_vllm_params: int | None  # None: the engine does not say (a server's reload)
    running_requests_at_update: dict[str, int]  # request id -> output tokens so far
    # Layerwise load only: tied layers whose kernels Parity rebuilt after vLLM's reload.
    retied_kernels: NotRequired[list[RetiedKernel]]
    # Between batches only: what llm.reset_prefix_cache() returned (None: not called).
    reset_prefix_cache_returned: NotRequired[bool | None]
    # A server: the endpoints the update went through, in order, and the directory of W_k.
    server_calls: NotRequired[list[str]]
    weights_path: NotRequired[str]
    # An engine that labels its weights (SGLang): what it says it serves after the update.
    weight_version: NotRequired[WeightVersion]


class VllmCall(TypedDict):
    """One vLLM call around an in-flight update; an unsupported one is recorded, not faked."""

    call: str
    ok: bool
    returned: NotRequired[bool | int | None]
    error: NotRequired[str]


class InFlightReport(TypedDict):
    """What happened at the in-flight update's boundary."""

    pause_mode: str
    calls: list[VllmCall]
    boundary: list[int]  # per sequence: tokens sampled before the update
    paused: NotRequired[bool]
    reset_prefix_cache_returned: NotRequired[bool | None]
    resubmitted: NotRequired[int]  # pause_mode "abort": requests resubmitted
    note: NotRequired[str]  # every request finished before the update point
    before_update_vs_previous_weights: NotRequired[MetricSummary]
    tokens_after_update: NotRequired[int]


class UpdateReport(TypedDict):
    """Update k: the engine's tokens scored at W_k and at W_k-1, checksums, flags."""

    step: int
    metrics: MetricValues  # against W_k
    metrics_vs_previous: MetricValues  # the same tokens against W_k-1
    verdict: Verdict
    reasons: list[str]
    flags: UpdateFlags
    checksums: ChecksumReport
    prefix_cache: PrefixCacheReport
    update: UpdateInfo
    in_flight: InFlightReport | None


# --- the replay ----------------------------------------------------------------------------


class Baseline(TypedDict):
    """Step 0: the engine at W0, before any update."""

    metrics: MetricValues
    verdict: Verdict
    reasons: list[str]
    checksums: ChecksumReport
    prompt_tokens: list[int]
    num_cached_tokens_first_run: list[int | None]
    prefix_cache_control: CacheControl
    effective_sampling: dict[str, Any]


class Capabilities(TypedDict):
    """What the installed vLLM offers for weight updates."""

    vllm_version: str
    llm_collective_rpc: bool
    llm_reset_prefix_cache: bool
    reset_prefix_cache_params: NotRequired[list[str]]
    llm_sleep_params: NotRequired[list[str]]
    pause_modes: list[str]
    async_llm_pause_generation: bool
    async_llm_resume_generation: bool
    engine_core_multiprocessing: bool
    async_scheduling: bool
    kv_block_size: int
    builtin_weight_transfer_config: bool
    extension: dict[str, Any] | None  # the worker extension's parity_extension_info()
    # Which engine adapter answered (workers.engines.ADAPTER_LABELS); absent: in-process.
    adapter: NotRequired[str]
    url: NotRequired[str]
    # A server: whether it serves its own weight checker (vLLM's /weight_checker, SGLang's
    # /weights_checker: digests of its parameters).
    weight_checker: NotRequired[bool]


class ReplayFingerprint(TypedDict):
    kind: Literal["replay"]
    vllm_version: str | None
    engine: dict[str, Any]  # the engine's effective settings
    sampling: dict[str, Any]  # effective sampling parameters
    update_mode: str
    pause_mode: str | None  # in_flight only
    reset_prefix_cache: bool
    load_mode: str
    extension: str
    source: dict[str, Any]  # the spec's weight source


class ReplaySummary(TypedDict):
    """The few numbers a caller (e.g. the migration checklist) puts in a table row."""

    updates: int
    verdict: Verdict
    flags: FlagsSummary
    any_flag: bool
    baseline_abs_diff_mean: Value
    baseline_kl_k3: Value
    post_update_abs_diff_mean: float | None  # mean over the updates
    post_update_kl_k3: float | None
    params_not_updated: list[str]
    reset_prefix_cache: bool | None
    update_mode: str | None
    prefix_cache: str | None  # PrefixCacheSummary.summary


class ReplayReport(TypedDict):
    version: int
    spec: dict[str, Any]  # workers.specs.ReplaySpec, as JSON
    model: str
    engine: dict[str, Any]
    fingerprint: ReplayFingerprint
    capabilities: Capabilities
    baseline: Baseline
    updates: list[UpdateReport]
    prefix_cache_summary: PrefixCacheSummary
    verdict: Verdict
    seconds: float
    timings: dict[str, float]
    flags_summary: FlagsSummary
    summary: ReplaySummary
    # What the replay found vLLM itself doing, in words with the numbers (absent in results
    # stored before it existed).
    engine_findings: NotRequired[list[str]]
    # What the run worked around (chats as plain text, prompts too long skipped); absent
    # in results stored before it existed.
    notes: NotRequired[list[str]]
