"""The comparison's diagnoses, judged from hand-built configurations and values (no engine)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from workers.diagnoses import diagnose
from workers.specs import NEUTRAL_SAMPLING, ComparisonSpec

pytestmark = pytest.mark.unit


def _ro(**effective: Any) -> SimpleNamespace:
    eff = {**NEUTRAL_SAMPLING, **effective}
    changed = {k: (NEUTRAL_SAMPLING[k], v) for k, v in effective.items()}
    return SimpleNamespace(effective=eff, changed_by_defaults=changed)


def _names(diagnoses: list[Any]) -> dict[str, Any]:
    return {d["name"]: d for d in diagnoses}


def test_generation_config_defaults_are_listed_and_measured() -> None:
    spec = ComparisonSpec(engine={"logprobs_mode": "processed"})
    out = diagnose(
        spec,
        _ro(temperature=0.6, top_k=20),
        SimpleNamespace(kind="processed", truncates=True),
        {"abs_diff_mean": 0.4},
        {"abs_diff_mean": 0.02},
    )
    d = _names(out)["generation_config_defaults"]
    assert "temperature 1 -> 0.6, top_k 0 -> 20" in d["message"]
    assert d["severity"] == "error"  # the reference removes most of the gap
    assert "0.4 as configured, 0.02 when" in d["message"]


def test_truncation_boundary_is_a_warning_with_its_share() -> None:
    spec = ComparisonSpec(engine={"logprobs_mode": "processed"})
    out = diagnose(
        spec,
        _ro(),
        SimpleNamespace(kind="processed", truncates=True),
        {"abs_diff_mean": 0.01, "truncation_boundary": 3, "truncation_boundary_frac": 3 / 512},
        None,
    )
    d = _names(out)["truncation_boundary"]
    assert d["severity"] == "warning"
    assert d["message"].startswith("3 sampled token(s) (0.59% of all) fall outside")


def test_a_clean_configuration_has_no_diagnosis() -> None:
    spec = ComparisonSpec(engine={"logprobs_mode": "processed"})
    out = diagnose(
        spec,
        _ro(),
        SimpleNamespace(kind="processed", truncates=False),
        {"abs_diff_mean": 0.01, "token_mismatch": 0},
        None,
    )
    assert out == []


def test_truncation_boundary_sequences_are_listed_among_the_worst() -> None:
    # METRICS.md: boundary tokens are "listed in the worst sequences", though left out of |d|.
    import math

    import numpy as np

    from parity.metrics import compute_metrics
    from workers.compare import _worst_sequences
    from workers.measure import Scored

    # Sequence 1 is a single boundary token: it has no finite |d| at all.
    lens = np.array([2, 1, 2])
    lt = np.array([-1.0, -1.5, -math.inf, -0.2, -0.2])
    lr = np.array([-1.0, -1.0, -3.0, -0.2, -0.2])
    ids = np.arange(5)
    scored = Scored(lt, lr, lens, ids, ids, rank=np.ones(5, dtype=np.int64))
    metrics = compute_metrics(lt, lr, lens)
    ro = SimpleNamespace(
        token_ids=[[0, 1], [2], [3, 4]], prompt_index=[0, 0, 0], finish_reasons=["length"] * 3
    )
    tokenizer = SimpleNamespace(decode=lambda token: "t")
    worst = {
        w["sequence"]: w
        for w in _worst_sequences(metrics, ro, scored, [{"prompt": "p"}], tokenizer)
    }
    assert worst[1]["truncation_boundary"] == 1
    assert worst[1]["tokens"][0]["lt"] is None  # drawn as non-finite on the page
    assert worst[0]["truncation_boundary"] == 0


def _sglang_spec() -> ComparisonSpec:
    # An SGLang server: the spec's engine section is vLLM's default (raw), which the adapter
    # cannot correct because SGLang's kind has no vLLM name; its logprobs_kind says it.
    return ComparisonSpec(server={"url": "http://sglang:30000", "engine": "sglang"})


def _asked(**sampling: Any) -> SimpleNamespace:
    """A rollout that sampled with exactly the parameters asked for."""
    return SimpleNamespace(effective={**NEUTRAL_SAMPLING, **sampling}, changed_by_defaults={})


def test_an_engine_with_temperature_logprobs_matched_by_the_trainer_has_no_diagnosis() -> None:
    out = diagnose(
        _sglang_spec(),
        _asked(temperature=0.7, top_p=0.9),
        SimpleNamespace(kind="temperature", truncates=True),
        {"abs_diff_mean": 1e-5, "token_mismatch": 0},
        None,
        engine_kind="temperature",
    )
    assert out == []  # was: "engine returns raw logprobs" and "renormalises over top-p"


def test_a_trainer_that_truncates_against_temperature_logprobs_is_named() -> None:
    out = diagnose(
        _sglang_spec(),
        _asked(temperature=0.7, top_p=0.9),
        SimpleNamespace(kind="processed", truncates=True),
        {"abs_diff_mean": 0.3},
        {"abs_diff_mean": 1e-5},
        engine_kind="temperature",
    )
    d = _names(out)
    assert list(d) == ["untruncated_engine_logprobs"]
    assert d["untruncated_engine_logprobs"]["severity"] == "error"
    assert "processing='temperature'" in d["untruncated_engine_logprobs"]["fix"]
