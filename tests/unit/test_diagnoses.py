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
