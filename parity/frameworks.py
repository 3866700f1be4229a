"""The RL frameworks' own mismatch keys and the canonical metric each one is (METRICS.md,
"The same numbers under the frameworks' names").

The one place this mapping lives: the run pages, the runs list and the alert rules all read
it. Keys are stored as the framework sent them; a canonical name is resolved to the first
key a run has, Parity's own computation first, then the frameworks' keys in table order.
Each key was checked against the framework's source (2026-11); formulas move, so the caveat
travels with the number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FrameworkKey:
    """One framework's key for a number Parity also defines."""

    framework: str
    key: str
    canonical: str
    note: str = ""

    @property
    def label(self) -> str:
        """Where a number came from, for people: "verl rollout_corr/k3_kl"."""
        return f"{self.framework} {self.key}"


_VERL_ESS = "verl clamps the IS weights to [1/C, C] before the ESS"
_VERL_PROBS = "probability space, not log space"
_TRL_IS = "TRL logs the IS ratio after truncation or masking"
_TRL_RANKS = "averaged (mean) or maxed (max) over ranks"

FRAMEWORK_KEYS: tuple[FrameworkKey, ...] = (
    # verl: verl/trainer/ppo/rollout_corr_helper.py (rollout_corr/*) and
    # verl/utils/debug/metrics.py (training/rollout_*).
    FrameworkKey("verl", "rollout_corr/kl", "kl_k1"),
    FrameworkKey("verl", "rollout_corr/k3_kl", "kl_k3"),
    FrameworkKey("verl", "rollout_corr/chi2_token", "chi2_token", "δ clamped to ±20 as here"),
    FrameworkKey("verl", "rollout_corr/chi2_seq", "chi2_seq", "δ clamped to ±20 as here"),
    FrameworkKey("verl", "rollout_corr/log_ppl_diff", "log_ppl_diff"),
    FrameworkKey("verl", "rollout_corr/ppl_ratio", "ppl_ratio"),
    FrameworkKey("verl", "rollout_corr/rollout_is_eff_sample_size", "ess", _VERL_ESS),
    FrameworkKey("verl", "rollout_corr/rollout_is_mean", "is_mean"),
    FrameworkKey("verl", "rollout_corr/rollout_is_min", "is_min"),
    FrameworkKey("verl", "rollout_corr/rollout_is_max", "is_max"),
    FrameworkKey("verl", "rollout_corr/rollout_is_std", "is_std"),
    FrameworkKey("verl", "training/rollout_probs_diff_mean", "prob_diff_mean", _VERL_PROBS),
    FrameworkKey("verl", "training/rollout_probs_diff_max", "prob_diff_max", _VERL_PROBS),
    FrameworkKey("verl", "training/rollout_probs_diff_std", "prob_diff_std", _VERL_PROBS),
    FrameworkKey("verl", "training/rollout_actor_probs_pearson_corr", "prob_pearson"),
    # TRL: trl/trainer/grpo_trainer.py (_compute_loss, vLLM importance sampling on).
    FrameworkKey("TRL", "sampling/sampling_logp_difference/mean", "abs_diff_mean", _TRL_RANKS),
    FrameworkKey("TRL", "sampling/sampling_logp_difference/max", "abs_diff_max", _TRL_RANKS),
    FrameworkKey("TRL", "sampling/importance_sampling_ratio/min", "is_min", _TRL_IS),
    FrameworkKey("TRL", "sampling/importance_sampling_ratio/mean", "is_mean", _TRL_IS),
    FrameworkKey("TRL", "sampling/importance_sampling_ratio/max", "is_max", _TRL_IS),
    # prime-rl: the trainer's loss stats; older releases logged mismatch_kl/mean.
    FrameworkKey("prime-rl", "mismatch_kl/all/mean", "kl_k3"),
    FrameworkKey("prime-rl", "mismatch_kl/mean", "kl_k3", "older prime-rl releases"),
    # slime: slime/backends/megatron_utils/loss.py, logged under train/.
    FrameworkKey(
        "slime",
        "train/train_rollout_logprob_abs_diff",
        "abs_diff_mean",
        "per-sample token mean, then averaged (sequence-weighted)",
    ),
    # SkyRL: skyrl_train/trainer.py (policy/rollout_train_logprobs_abs_diff_*).
    FrameworkKey("SkyRL", "policy/rollout_train_logprobs_abs_diff_mean", "abs_diff_mean"),
    FrameworkKey("SkyRL", "policy/rollout_train_logprobs_abs_diff_max", "abs_diff_max"),
    # OpenRLHF: openrlhf/trainer/ppo_utils (experience.info["vllm_kl"]).
    FrameworkKey("OpenRLHF", "vllm_kl", "kl_k1", "against the old policy's logprobs"),
    # NeMo-RL: nemo_rl/algorithms/loss_functions.py. Not one of ours: it keeps its own name.
    FrameworkKey(
        "NeMo-RL",
        "train/token_mult_prob_error",
        "token_mult_prob_error",
        "mean exp(|d|); NeMo-RL treats > 1.05 as a framework problem",
    ),
)

FRAMEWORKS: tuple[str, ...] = tuple(dict.fromkeys(k.framework for k in FRAMEWORK_KEYS))
# The canonical names the frameworks' keys stand for, in table order.
CANONICAL_NAMES: tuple[str, ...] = tuple(dict.fromkeys(k.canonical for k in FRAMEWORK_KEYS))
BY_KEY: dict[str, FrameworkKey] = {k.key: k for k in FRAMEWORK_KEYS}


def sources_of(canonical: str) -> tuple[FrameworkKey, ...]:
    """The frameworks' keys for one canonical name, in table order."""
    return tuple(k for k in FRAMEWORK_KEYS if k.canonical == canonical)


def watched_keys(canonical: str) -> tuple[str, ...]:
    """Every stored key that stands for `canonical`: itself first, then the frameworks'."""
    return (canonical, *(k.key for k in sources_of(canonical)))


@dataclass(frozen=True)
class Resolved:
    """A canonical name and the stored key that gives its number on one run."""

    canonical: str
    key: str
    source: FrameworkKey | None  # None: the run sent the canonical key itself

    @property
    def label(self) -> str:
        return self.source.label if self.source else "Parity"

    @property
    def note(self) -> str:
        return self.source.note if self.source else ""


def resolve(canonical: str, keys: Iterable[str]) -> Resolved | None:
    """Which of a run's `keys` gives `canonical`; None when none does."""
    present = set(keys)
    if canonical in present:
        return Resolved(canonical, canonical, None)
    for source in sources_of(canonical):
        if source.key in present:
            return Resolved(canonical, source.key, source)
    return None


def resolve_all(canonicals: Iterable[str], keys: Iterable[str]) -> dict[str, Resolved]:
    """`resolve` for several canonical names at once; the ones no key gives are left out."""
    present = set(keys)
    out = {}
    for canonical in canonicals:
        found = resolve(canonical, present)
        if found is not None:
            out[canonical] = found
    return out
