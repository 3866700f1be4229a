"""The determinism certificate: what `workers.determinism` stores in `Job.result`.

The engine samples the same prompts with the same seeds several ways (`runs`); the first run,
batch size 1, is the reference and every other run is compared with it (`pairs`). Logprobs are
compared only over the tokens both runs sampled identically (each sequence's prefix before its
first diverging position): after a divergence the contexts differ and nothing is comparable.

Read by the job page (determinism_result.html via dashboard.core.presenters), the CLI's text
report, the checklist's determinism row, the API and tests.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from parity.reports import Verdict

# batch_1: one prompt per generate call (the reference); full_batch: every prompt in one call;
# shuffled: one call in a fixed random order, un-shuffled before comparing; max_num_seqs: the
# full batch on an engine built with another max_num_seqs.
RunName = Literal["batch_1", "full_batch", "shuffled", "max_num_seqs"]
RunStatus = Literal["measured", "not-applicable", "could-not-run"]


class GroupReport(TypedDict):
    """Whether the n samples of each prompt are still distinct (n > 1 only)."""

    n: int
    n_groups: int
    duplicate_group_frac: float  # groups with at least two identical completions
    identical_group_frac: float  # groups whose completions are all identical


class RunReport(TypedDict):
    name: RunName
    label: str
    status: RunStatus
    reason: str  # why it did not run (empty when measured)
    # The engine's max_num_seqs for this run ("unknown" where a server does not say).
    max_num_seqs: int | str | None
    requests_per_call: int | None  # prompts per generate call
    n_sequences: int
    n_tokens: int
    seconds: float
    groups: GroupReport | None


class PairReport(TypedDict):
    """One run against the reference (batch size 1)."""

    run: RunName
    label: str
    n_sequences: int
    tokens_compared: int  # tokens both runs sampled identically
    bit_equal_frac: float | None  # None: no token to compare
    abs_diff_max: float | None  # |Δ logprob| over the compared tokens
    abs_diff_mean: float | None
    diverged_seqs: int  # sequences whose sampled tokens differ anywhere (or in length)
    diverged_seq_frac: float | None
    # Per sequence, the first position whose sampled token differs; None: identical.
    first_divergence: list[int | None]
    earliest_divergence: int | None
    verdict: Verdict


class TrainerReport(TypedDict):
    """The reference run scored by the trainer (workers.measure): trainer vs engine."""

    status: Literal["measured", "skipped", "could-not-run"]
    reason: str
    n_tokens: int
    bit_equal_frac: float | None
    abs_diff_mean: float | None
    abs_diff_max: float | None
    engine_claims: bool | None  # None: the engine does not say (a server without dev mode)
    trainer_claims: bool
    # Both sides claim determinism: only then is anything below 1 a defect.
    meaningful: bool
    claims: str  # the claims in words


class DeterminismReport(TypedDict):
    version: int
    kind: Literal["determinism"]
    verdict: Verdict
    reasons: list[str]
    model: str
    reference: RunName
    runs: list[RunReport]
    pairs: list[PairReport]
    trainer: TrainerReport
    # adapter, version, url, batch_invariant, max_num_seqs, unknown: who answered.
    engine: dict[str, Any]
    sampling: dict[str, Any]  # the effective sampling parameters of the reference
    fingerprint: dict[str, Any]
    timings: dict[str, float]
    wall_s: float
    notes: list[str]
