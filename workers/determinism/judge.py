"""The certificate's judgement: from the sampled runs to per-pair numbers and a verdict.

Pure (numpy and the specs): no engine, no torch. A run is its sequences in one canonical order
(prompt by prompt, sample by sample), so that sequence s of every run continues the same
prompt with the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from parity.reports import Verdict
from parity.reports.determinism import GroupReport, PairReport, RunName, TrainerReport
from parity.reports.numbers import number
from workers.specs import DeterminismSpec

_SEVERITY = {"pass": 0, "warn": 1, "fail": 2}


@dataclass
class Sequences:
    """One run's sampled token ids and the engine's logprob of each, in canonical order."""

    token_ids: list[list[int]]
    lr: list[list[float]]


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first position where two token sequences differ (a length difference counts at
    the shorter one's end); None when they are identical."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    if diff.size:
        return int(diff[0])
    return None if len(a) == len(b) else n


def compare_runs(run: RunName, label: str, ref: Sequences, other: Sequences) -> PairReport:
    """`other` against the reference: logprobs over the tokens both sampled identically
    (bitwise equality, max and mean |Δ|), and where their sampled tokens diverge."""
    if len(ref.token_ids) != len(other.token_ids):
        raise ValueError(
            f"run {run} has {len(other.token_ids)} sequences, the reference "
            f"{len(ref.token_ids)}: the runs did not sample the same prompts"
        )
    firsts: list[int | None] = []
    a_parts, b_parts = [], []
    for ta, tb, la, lb in zip(ref.token_ids, other.token_ids, ref.lr, other.lr, strict=True):
        first = first_divergence(ta, tb)
        firsts.append(first)
        keep = len(ta) if first is None else first
        a_parts.append(np.asarray(la[:keep], dtype=np.float64))
        b_parts.append(np.asarray(lb[:keep], dtype=np.float64))
    a = np.concatenate(a_parts) if a_parts else np.zeros(0)
    b = np.concatenate(b_parts) if b_parts else np.zeros(0)
    # Bitwise: -0.0 and 0.0 are not the same bits, and two equal NaNs are.
    bit_equal = a.view(np.uint64) == b.view(np.uint64)
    finite = np.isfinite(a) & np.isfinite(b)
    d = np.abs(a[finite] - b[finite])
    diverged = [f for f in firsts if f is not None]
    n_seq = len(firsts)
    pair: PairReport = {
        "run": run,
        "label": label,
        "n_sequences": n_seq,
        "tokens_compared": int(a.size),
        "bit_equal_frac": float(bit_equal.mean()) if a.size else None,
        "abs_diff_max": float(d.max()) if d.size else None,
        "abs_diff_mean": float(d.mean()) if d.size else None,
        "diverged_seqs": len(diverged),
        "diverged_seq_frac": len(diverged) / n_seq if n_seq else None,
        "first_divergence": firsts,
        "earliest_divergence": min(diverged) if diverged else None,
        "verdict": "pass",
    }
    return pair


def groups(token_ids: Sequence[Sequence[int]], n: int) -> GroupReport | None:
    """Whether the n samples of each prompt (consecutive sequences) are distinct; None for
    n = 1."""
    if n <= 1:
        return None
    n_groups = len(token_ids) // n
    dup = same = 0
    for g in range(n_groups):
        members = {tuple(t) for t in token_ids[g * n : (g + 1) * n]}
        dup += len(members) < n
        same += len(members) == 1
    return {
        "n": n,
        "n_groups": n_groups,
        "duplicate_group_frac": dup / n_groups if n_groups else 0.0,
        "identical_group_frac": same / n_groups if n_groups else 0.0,
    }


def judge_pair(
    pair: PairReport, spec: DeterminismSpec, engine_claims: bool | None
) -> tuple[Verdict, list[str]]:
    """A pair's verdict and the rules it tripped: pass when bit-equal with identical tokens;
    warn for any difference; fail past the spec's limits, or for any difference when the
    engine claims batch invariance."""
    label, reasons = pair["label"], list[str]()
    verdict: Verdict = "pass"
    bit, dmax = pair["bit_equal_frac"], pair["abs_diff_max"]
    frac = pair["diverged_seq_frac"] or 0.0
    exact = (bit is None or bit == 1.0) and pair["diverged_seqs"] == 0
    if exact:
        return verdict, reasons
    verdict = "warn"
    words = f"{label}: bit_equal_frac {number(bit)} (max |Δ| {number(dmax)})"
    if pair["diverged_seqs"]:
        words += (
            f", {pair['diverged_seqs']}/{pair['n_sequences']} sequences sample other tokens "
            f"(first at position {pair['earliest_divergence']})"
        )
    if engine_claims:
        return "fail", [f"{words} (fail): the engine claims batch invariance but is not bit-exact"]
    if dmax is not None and dmax > spec.fail_abs_diff_max:
        verdict = "fail"
        reasons.append(
            f"{label}: max |Δ logprob| {number(dmax)} > {number(spec.fail_abs_diff_max)} (fail)"
        )
    if frac > spec.fail_diverged_seq_frac:
        verdict = "fail"
        reasons.append(
            f"{label}: diverged_seq_frac {number(frac)} > "
            f"{number(spec.fail_diverged_seq_frac)} (fail): sampled tokens depend on the batch"
        )
    if verdict == "warn":
        reasons.append(f"{words} (warn): not bit-exact against batch size 1")
    return verdict, reasons


def verdict(
    pairs: list[PairReport],
    run_groups: dict[RunName, GroupReport | None],
    trainer: TrainerReport,
    spec: DeterminismSpec,
    engine_claims: bool | None,
) -> tuple[Verdict, list[str]]:
    """The certificate's verdict and its reasons (each pair's verdict is set in place).

    pass: every run bit-equal to batch size 1 with the same tokens; warn: differences within
    the spec's limits, or groups whose samples are all identical; fail: past the limits, any
    difference while the engine claims batch invariance, or trainer and engine not bit-equal
    while both claim determinism.
    """
    worst: Verdict = "pass"
    reasons: list[str] = []

    def add(v: Verdict, why: list[str]) -> None:
        nonlocal worst
        if _SEVERITY[v] > _SEVERITY[worst]:
            worst = v
        reasons.extend(why)

    for pair in pairs:
        v, why = judge_pair(pair, spec, engine_claims)
        pair["verdict"] = v
        add(v, why)
    t = spec.sampling.temperature
    limit = spec.warn_identical_group_frac
    for name, g in run_groups.items():
        if g is not None and (t is None or t > 0.0) and g["identical_group_frac"] > limit:
            add(
                "warn",
                [
                    f"{name}: identical_group_frac {number(g['identical_group_frac'])} > "
                    f"{number(spec.warn_identical_group_frac)} (warn): the {g['n']} samples of "
                    "a prompt are the same completion (a seed reused across the group?)"
                ],
            )
    if trainer["meaningful"] and trainer["bit_equal_frac"] not in (None, 1.0):
        add(
            "fail",
            [
                f"trainer vs engine: bit_equal_frac {number(trainer['bit_equal_frac'])} < 1 "
                "(fail): both claim determinism, yet the trainer's logprobs are not the engine's"
            ],
        )
    if worst == "pass":
        tokens = sum(p["tokens_compared"] for p in pairs)
        reasons.insert(
            0,
            f"bit-exact: {len(pairs)} runs sampled the same tokens as batch size 1 with "
            f"bitwise-equal logprobs ({tokens} tokens compared)",
        )
    return worst, reasons
