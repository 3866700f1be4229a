"""The frameworks' key table: each framework's real key names resolve to METRICS.md's names."""

from __future__ import annotations

import pytest

from parity.frameworks import (
    BY_KEY,
    FRAMEWORK_KEYS,
    FRAMEWORKS,
    resolve,
    resolve_all,
    watched_keys,
)
from parity.metrics import METRIC_KEYS

pytestmark = pytest.mark.unit

# What each framework really logs (checked in its source), and what METRICS.md calls it.
REAL_KEYS = {
    "verl": {
        "rollout_corr/kl": "kl_k1",
        "rollout_corr/k3_kl": "kl_k3",
        "rollout_corr/chi2_token": "chi2_token",
        "rollout_corr/chi2_seq": "chi2_seq",
        "rollout_corr/log_ppl_diff": "log_ppl_diff",
        "rollout_corr/ppl_ratio": "ppl_ratio",
        "rollout_corr/rollout_is_eff_sample_size": "ess",
        "rollout_corr/rollout_is_mean": "is_mean",
        "rollout_corr/rollout_is_min": "is_min",
        "rollout_corr/rollout_is_max": "is_max",
        "rollout_corr/rollout_is_std": "is_std",
        "training/rollout_probs_diff_mean": "prob_diff_mean",
        "training/rollout_probs_diff_max": "prob_diff_max",
        "training/rollout_probs_diff_std": "prob_diff_std",
        "training/rollout_actor_probs_pearson_corr": "prob_pearson",
    },
    "TRL": {
        "sampling/sampling_logp_difference/mean": "abs_diff_mean",
        "sampling/sampling_logp_difference/max": "abs_diff_max",
        "sampling/importance_sampling_ratio/min": "is_min",
        "sampling/importance_sampling_ratio/mean": "is_mean",
        "sampling/importance_sampling_ratio/max": "is_max",
    },
    "prime-rl": {"mismatch_kl/all/mean": "kl_k3", "mismatch_kl/mean": "kl_k3"},
    "slime": {"train/train_rollout_logprob_abs_diff": "abs_diff_mean"},
    "SkyRL": {
        "policy/rollout_train_logprobs_abs_diff_mean": "abs_diff_mean",
        "policy/rollout_train_logprobs_abs_diff_max": "abs_diff_max",
    },
    "OpenRLHF": {"vllm_kl": "kl_k1"},
    "NeMo-RL": {"train/token_mult_prob_error": "token_mult_prob_error"},
}


@pytest.mark.parametrize("framework", sorted(REAL_KEYS))
def test_each_frameworks_real_keys_map_to_the_canonical_metric(framework: str) -> None:
    for key, canonical in REAL_KEYS[framework].items():
        entry = BY_KEY[key]
        assert (entry.framework, entry.canonical) == (framework, canonical)
        assert resolve(canonical, [key, "reward"]).label == f"{framework} {key}"


def test_the_table_holds_nothing_else_and_every_framework_is_there() -> None:
    table = {(k.framework, k.key): k.canonical for k in FRAMEWORK_KEYS}
    expected = {(fw, key): c for fw, keys in REAL_KEYS.items() for key, c in keys.items()}
    assert table == expected
    assert set(FRAMEWORKS) == set(REAL_KEYS)
    assert len(BY_KEY) == len(FRAMEWORK_KEYS)  # one meaning per key


def test_canonical_names_are_parity_metrics_except_nemo_rls_own() -> None:
    names = {k.canonical for k in FRAMEWORK_KEYS} - {"token_mult_prob_error"}
    assert names <= set(METRIC_KEYS)


def test_the_caveats_of_metrics_md_travel_with_the_number() -> None:
    assert "probability space" in BY_KEY["training/rollout_probs_diff_mean"].note
    assert "after truncation" in BY_KEY["sampling/importance_sampling_ratio/mean"].note
    assert "sequence-weighted" in BY_KEY["train/train_rollout_logprob_abs_diff"].note
    assert "[1/C, C]" in BY_KEY["rollout_corr/rollout_is_eff_sample_size"].note
    assert BY_KEY["rollout_corr/k3_kl"].note == ""


def test_parity_s_own_key_wins_over_a_frameworks() -> None:
    found = resolve("kl_k3", ["rollout_corr/k3_kl", "kl_k3"])
    assert found is not None and found.key == "kl_k3" and found.source is None
    assert found.label == "Parity"


def test_resolve_all_leaves_out_what_no_key_gives() -> None:
    got = resolve_all(
        ("clip_rate", "kl_k3", "abs_diff_mean"),
        ["mismatch_kl/all/mean", "train/train_rollout_logprob_abs_diff"],
    )
    assert {c: r.key for c, r in got.items()} == {
        "kl_k3": "mismatch_kl/all/mean",
        "abs_diff_mean": "train/train_rollout_logprob_abs_diff",
    }


def test_watched_keys_start_with_the_canonical_name() -> None:
    assert watched_keys("kl_k1") == ("kl_k1", "rollout_corr/kl", "vllm_kl")
    assert watched_keys("reward") == ("reward",)


@pytest.mark.parametrize("framework", sorted(REAL_KEYS))
def test_each_frameworks_docs_page_lists_its_keys(framework: str) -> None:
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs" / "frameworks"
    page = (docs / f"{framework.lower()}.md").read_text()
    for key, canonical in REAL_KEYS[framework].items():
        assert f"`{key}`" in page and f"`{canonical}`" in page
