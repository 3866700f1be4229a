"""The replay's judgement without an engine or torch: the per-update flags, the checksum
comparison over hand-built checksum dicts, and the result's stored values."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from workers.replay.checksums import judge_checksums
from workers.replay.flags import FLAG_NAMES, Flag, flags_for_update
from workers.specs import FlagSettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
BASE = {"kl_k3": 1e-3, "abs_diff_mean": 0.02}
FULL = {"status": "full", "not_updated": [], "n_params": 3, "matched": 3}
FAR = {"kl_k3": 0.05, "abs_diff_mean": 0.3}


def cs(sha: str, total: float = 1.0, dtype: str = "bfloat16") -> dict[str, Any]:
    """A hand-built parameter checksum (the shape workers.weight_sync.tensor_checksum gives)."""
    return {
        "sha256": sha,
        "dtype": dtype,
        "shape": [3],
        "sum": total,
        "abs_sum": abs(total),
        "source": "kernel",
    }


# --- flags ---------------------------------------------------------------------------------


def test_a_correct_update_raises_no_flag() -> None:
    flags = flags_for_update(
        {"kl_k3": 1.1e-3, "abs_diff_mean": 0.021}, FAR, BASE, FULL, 0.3, FlagSettings()
    )
    assert list(flags) == list(FLAG_NAMES)
    assert not any(f.fired for f in flags.values())
    assert flags["partial_update"].reason == "every parameter equals the trainer's W_k"


def test_without_checksums_tokens_that_fit_the_previous_weights_are_stale_and_spike() -> None:
    flags = flags_for_update(
        FAR, {"kl_k3": 1e-3, "abs_diff_mean": 0.02}, BASE, {}, 0.3, FlagSettings()
    )
    stale = flags["stale_weights"]
    assert stale.fired and "fit W_k-1 much better" in stale.reason
    assert stale.evidence["resolvable"] is True
    assert stale.evidence["tokens_fit_previous"] is True
    assert stale.evidence["checksum_status"] is None
    assert stale.evidence["vs_previous"] == {"kl_k3": 1e-3, "abs_diff_mean": 0.02}
    assert stale.evidence["resolution_needed"] == pytest.approx(0.04)
    assert flags["mismatch_spike"].fired


def test_tokens_that_fit_the_previous_weights_are_not_stale_when_every_parameter_holds_w_k() -> (
    None
):
    # The checksums read every weight through the kernel that serves it: W_k is there, so
    # whatever made the tokens fit W_k-1 is not the weights; the spike still says it.
    flags = flags_for_update(
        FAR, {"kl_k3": 1e-3, "abs_diff_mean": 0.02}, BASE, FULL, 0.3, FlagSettings()
    )
    stale = flags["stale_weights"]
    assert not stale.fired
    assert stale.reason.startswith("not stale: every parameter holds W_k")
    assert "which the weights do not explain" in stale.reason
    assert stale.evidence["tokens_fit_previous"] is True
    assert flags["mismatch_spike"].fired


# A norm that arrived scaled by 1.02 (issue 11 §4): one parameter differs from W_k and does
# not equal W_k-1 either; the rest took W_k.
CORRUPTED = {
    "status": "partial",
    "not_updated": ["model.layers.0.input_layernorm.weight"],
    "n_params": 21,
    "matched": 20,
    "not_updated_detail": {
        "model.layers.0.input_layernorm.weight": {"equals_previous_weights": False}
    },
}


def test_a_corrupted_parameter_is_a_partial_update_not_stale_weights() -> None:
    # Even when the tokens happen to fit W_k-1 better at some update.
    flags = flags_for_update(
        FAR, {"kl_k3": 1e-3, "abs_diff_mean": 0.02}, BASE, CORRUPTED, 0.3, FlagSettings()
    )
    assert flags["partial_update"].fired
    stale = flags["stale_weights"]
    assert not stale.fired
    assert "20 of 21 parameters took W_k (a partial update, not stale weights)" in stale.reason
    assert stale.evidence["checksum_status"] == "partial"
    assert stale.evidence["params_equal_to_previous_weights"] == 0


def test_a_parameter_left_at_the_previous_weights_is_partial_not_stale() -> None:
    # The stale tied head: the embedding took W_k, the head kernel still serves W_k-1.
    head = {
        "status": "partial",
        "not_updated": ["lm_head.weight"],
        "n_params": 27,
        "matched": 26,
        "not_updated_detail": {
            "lm_head.weight": {
                "equals_previous_weights": True,
                "tied_to": "model.embed_tokens.weight",
            }
        },
    }
    flags = flags_for_update(
        FAR, {"kl_k3": 1e-3, "abs_diff_mean": 0.02}, BASE, head, 0.3, FlagSettings()
    )
    assert [name for name, f in flags.items() if f.fired] == ["partial_update", "mismatch_spike"]
    assert "lm_head.weight" in flags["partial_update"].reason


def test_an_engine_holding_the_previous_weights_is_stale_by_its_checksums_alone() -> None:
    none = {
        "status": "none",
        "not_updated": ["x", "y"],
        "n_params": 2,
        "matched": 0,
        "not_updated_detail": {
            "x": {"equals_previous_weights": True},
            "y": {"equals_previous_weights": True},
        },
    }
    # The update is below the token resolution, but the checksums are exact.
    flags = flags_for_update(BASE, BASE, BASE, none, 0.01, FlagSettings())
    stale = flags["stale_weights"]
    assert stale.fired and not stale.evidence["resolvable"]
    assert stale.reason == "no parameter took W_k and 2 of 2 hold W_k-1's values (checksums)"
    assert not flags["partial_update"].fired
    # Took nothing, holds something else (not W_k-1), tokens do not point at W_k-1: no flag.
    other = {**none, "not_updated_detail": {"x": {}, "y": {"equals_previous_weights": False}}}
    assert not flags_for_update(BASE, BASE, BASE, other, 0.3, FlagSettings())["stale_weights"].fired


def test_an_update_below_the_noise_cannot_be_called_stale() -> None:
    # No checksums: the tokens are all there is to go by.
    tiny = flags_for_update(
        {"kl_k3": 1.2e-3, "abs_diff_mean": 0.022}, BASE, BASE, {}, 0.01, FlagSettings()
    )
    assert not tiny["stale_weights"].fired
    assert "inconclusive" in tiny["stale_weights"].reason
    unknown = flags_for_update(FAR, BASE, BASE, {}, None, FlagSettings())
    assert not unknown["stale_weights"].fired
    assert unknown["stale_weights"].evidence["resolvable"] is False


def test_staleness_needs_both_metrics_past_the_margin() -> None:
    # kl_k3 fits W_k-1 far better, abs_diff_mean only 1.5x: not clearly stale.
    flags = flags_for_update(
        {"kl_k3": 0.05, "abs_diff_mean": 0.03},
        {"kl_k3": 1e-3, "abs_diff_mean": 0.02},
        BASE,
        {},  # no checksums: the tokens decide
        0.3,
        FlagSettings(),
    )
    assert not flags["stale_weights"].fired
    assert "do not fit W_k-1 clearly better" in flags["stale_weights"].reason


def test_a_spike_needs_the_factor_and_the_floor() -> None:
    low = flags_for_update(
        {"kl_k3": 3.5e-4, "abs_diff_mean": 0.02},
        FAR,
        {"kl_k3": 1e-4, "abs_diff_mean": 0.02},
        FULL,
        0.3,
        FlagSettings(),
    )
    spike = low["mismatch_spike"]
    assert not spike.fired and spike.reason == "no metric above its spike threshold"
    assert math.isclose(spike.evidence["kl_k3"]["ratio"], 3.5)
    assert spike.evidence["kl_k3"]["floor"] == FlagSettings().spike_floor_kl_k3
    high = flags_for_update(
        {"kl_k3": 2e-2, "abs_diff_mean": 0.02}, FAR, BASE, FULL, 0.3, FlagSettings()
    )
    assert high["mismatch_spike"].fired
    assert high["mismatch_spike"].reason.startswith("kl_k3 0.02 is 20.0x the W0 baseline")


def test_a_zero_or_missing_baseline_gives_an_infinite_ratio_not_an_error() -> None:
    flags = flags_for_update(FAR, FAR, {"kl_k3": 0.0}, FULL, 0.3, FlagSettings())
    assert flags["mismatch_spike"].evidence["kl_k3"]["ratio"] == math.inf
    assert math.isnan(flags["mismatch_spike"].evidence["abs_diff_mean"]["baseline"])


def test_partial_update_names_the_parameters_and_none_is_not_partial() -> None:
    some = {
        "status": "partial",
        "not_updated": ["w"],
        "n_params": 3,
        "matched": 2,
        "not_updated_detail": {"w": {"equals_previous_weights": True}},
    }
    flags = flags_for_update(BASE, FAR, BASE, some, 0.3, FlagSettings())
    partial = flags["partial_update"]
    assert partial.fired and partial.reason.endswith("did not take the new weights: w")
    assert partial.evidence["not_updated"] == ["w"]
    assert flags["stale_weights"].evidence["params_equal_to_previous_weights"] == 1
    many = {**some, "not_updated": [f"p{i}" for i in range(12)], "n_params": 20}
    assert flags_for_update(BASE, FAR, BASE, many, 0.3, FlagSettings())[
        "partial_update"
    ].reason.endswith("p9 ...")
    none = {**some, "status": "none", "matched": 0}
    flag = flags_for_update(BASE, FAR, BASE, none, 0.3, FlagSettings())["partial_update"]
    assert not flag.fired and "not a partial update" in flag.reason


def test_flag_settings_move_the_thresholds() -> None:
    strict = FlagSettings(spike_factor=1.05, spike_floor_kl_k3=0.0, spike_floor_abs_diff_mean=0.0)
    flags = flags_for_update(
        {"kl_k3": 1.1e-3, "abs_diff_mean": 0.021}, FAR, BASE, FULL, 0.3, strict
    )
    assert flags["mismatch_spike"].fired


# --- checksums -----------------------------------------------------------------------------


def test_every_parameter_matching_is_a_full_update() -> None:
    engine = {"x": cs("x1"), "y": cs("y1")}
    out = judge_checksums(engine, {"x": cs("x1"), "y": cs("y1")}, None, None)
    assert out["status"] == "full" and out["matched"] == out["n_params"] == 2
    assert out["not_updated"] == [] and out["missing_in_engine"] == []
    assert out["unchanged_in_engine"] == []  # nothing to compare with at W0


def test_checksums_find_partial_and_unchanged_parameters() -> None:
    prev_expected = {"x": cs("x0", 0.0), "y": cs("y0", 3.0), "z": cs("z0", 6.0)}
    expected = {"x": cs("x1", 15.0), "y": cs("y1", 18.0), "z": cs("z0", 6.0)}
    prev_engine = dict(prev_expected)
    engine = {"x": cs("x1", 15.0), "y": cs("y0", 3.0), "z": cs("z0", 6.0)}
    out = judge_checksums(engine, expected, prev_expected, prev_engine)
    assert out["status"] == "partial" and out["not_updated"] == ["y"]
    assert (out["n_params"], out["matched"]) == (3, 2)
    detail = out["not_updated_detail"]["y"]
    assert detail["equals_previous_weights"] is True
    assert detail["sum_diff"] == pytest.approx(3.0 - 18.0)
    assert detail["source"] == "kernel"
    assert out["unchanged_in_engine"] == ["y", "z"]
    assert out["unchanged_in_trainer"] == ["z"]  # z did not change in W_k either


def test_an_engine_that_took_nothing_is_none_and_names_missing_parameters() -> None:
    expected = {"x": cs("x1"), "y": cs("y1"), "lm_head.weight": cs("h1")}
    engine = {"x": cs("x0"), "y": cs("y0")}
    out = judge_checksums(engine, expected, None, None)
    assert out["status"] == "none" and out["matched"] == 0
    assert out["missing_in_engine"] == ["lm_head.weight"]
    assert "equals_previous_weights" not in out["not_updated_detail"]["x"]
    # A parameter the engine lacks keeps an otherwise full update from being full.
    only_missing = judge_checksums({"x": cs("x1")}, {"x": cs("x1"), "y": cs("y1")}, None, None)
    assert only_missing["status"] == "partial" and only_missing["not_updated"] == []


def test_parameters_the_update_did_not_change_cannot_make_a_stale_engine_partial() -> None:
    # z is the same in W_k-1 and W_k (a frozen parameter): a stale engine matches it either
    # way, so it is no evidence that the engine took W_k.
    prev_expected = {"x": cs("x0"), "z": cs("z0")}
    expected = {"x": cs("x1"), "z": cs("z0")}
    stale = judge_checksums(dict(prev_expected), expected, prev_expected, dict(prev_expected))
    assert stale["status"] == "none" and stale["matched"] == 1
    assert stale["not_updated_detail"]["x"]["equals_previous_weights"] is True
    updated = judge_checksums(dict(expected), expected, prev_expected, dict(prev_expected))
    assert updated["status"] == "full"


def test_a_tied_head_is_judged_against_the_parameter_it_shares() -> None:
    from workers.replay.checksums import tied_sources

    head = {**cs("h0"), "tied_to": "model.embed_tokens.weight"}
    engine = {"model.embed_tokens.weight": cs("e1"), "lm_head.weight": head}
    # A tied checkpoint stores only the embedding; the head's W_k is the embedding's.
    w_k = {"model.embed_tokens.weight": object()}
    assert tied_sources(w_k, engine) == {
        "model.embed_tokens.weight": "model.embed_tokens.weight",
        "lm_head.weight": "model.embed_tokens.weight",
    }
    expected = {"model.embed_tokens.weight": cs("e1"), "lm_head.weight": cs("e1")}
    previous = {"model.embed_tokens.weight": cs("h0"), "lm_head.weight": cs("h0")}
    out = judge_checksums(engine, expected, previous, None)
    assert out["status"] == "partial" and out["not_updated"] == ["lm_head.weight"]
    detail = out["not_updated_detail"]["lm_head.weight"]
    assert detail["tied_to"] == "model.embed_tokens.weight"
    assert detail["equals_previous_weights"] is True
    # A checkpoint that stores the head as well is read under the head's own name.
    assert (
        tied_sources({"lm_head.weight": 1, "model.embed_tokens.weight": 2}, engine)[
            "lm_head.weight"
        ]
        == "lm_head.weight"
    )


def test_a_stale_tied_head_is_an_engine_finding_with_its_numbers() -> None:
    from workers.replay.report import engine_findings

    def info(before: float, rebuilt: bool = True) -> Any:
        return {
            "retied_kernels": [
                {
                    "module": "lm_head",
                    "tied_to": "model.embed_tokens.weight",
                    "probe_columns": 8,
                    "max_abs_diff_before": before,
                    "stale_before": before > 0,
                    "rebuilt": rebuilt,
                    "max_abs_diff_after": 0.0 if rebuilt else before,
                }
            ]
        }

    (finding,) = engine_findings({1: info(0.028), 2: info(0.025), 3: info(0.0)}, "0.32.0")
    assert finding.startswith(
        "vLLM 0.32.0's layerwise reload left the tied output head lm_head serving stale "
        "weights after updates [1, 2]"
    )
    assert "by up to 0.028" in finding
    assert "Parity rebuilt the kernel" in finding and "after: 0)" in finding
    (kept,) = engine_findings({1: info(0.03, rebuilt=False)}, None)
    assert "the kernel was not rebuilt at updates [1]" in kept
    assert engine_findings({1: info(0.0)}, "0.32.0") == []
    assert engine_findings({1: {}}, "0.32.0") == []


# --- the stored result ---------------------------------------------------------------------


def _update(step: int, flags: dict[str, Flag], **metrics: Any) -> Any:
    from workers.replay.report import UpdateResult

    return UpdateResult(
        step=step,
        metrics=dict(metrics),
        metrics_vs_previous={"kl_k3": 0.05, "abs_diff_mean": None},
        verdict="pass",
        reasons=[],
        flags=flags,
        checksums={
            "n_params": 2,
            "matched": 2,
            "status": "full",
            "not_updated": [],
            "not_updated_detail": {},
            "missing_in_engine": [],
            "unchanged_in_engine": [],
            "unchanged_in_trainer": [],
        },
        prefix_cache={"measured": False},
        update={
            "rpc_seconds": 0.1,
            "load_seconds": 0.05,
            "received": 2,
            "sent": 2,
            "withheld_by_extension": [],
            "loaded_vllm_params": 2,
            "running_requests_at_update": {},
        },
    )


def test_step_values_keep_finite_numbers_and_the_flags() -> None:
    quiet = {name: Flag(False, "") for name in FLAG_NAMES}
    loud = {**quiet, "partial_update": Flag(True, "1 of 2")}
    first = _update(1, quiet, abs_diff_mean=0.02, kl_k3=math.nan, n_tokens=10, note="text")
    second = _update(2, loud, abs_diff_mean=0.04, kl_k3=1e-3)
    assert first.step_values() == {
        "abs_diff_mean": 0.02,
        "n_tokens": 10.0,
        "kl_k3_prev": 0.05,
        "params_not_updated": 0.0,
        "stale_weights": 0.0,
        "partial_update": 0.0,
        "mismatch_spike": 0.0,
    }
    assert second.step_values()["partial_update"] == 1.0
    stored = second.to_dict()
    assert stored["flags"]["partial_update"] == {"fired": True, "reason": "1 of 2", "evidence": {}}
    assert list(stored) == [
        "step",
        "metrics",
        "metrics_vs_previous",
        "verdict",
        "reasons",
        "flags",
        "checksums",
        "prefix_cache",
        "update",
        "in_flight",
    ]


# --- no engine needed ----------------------------------------------------------------------

_NO_ENGINE = textwrap.dedent("""
    import sys

    class NoEngine:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "vllm", "transformers", "safetensors"):
                raise ImportError(f"{name} is not importable in this test")
            return None

    sys.meta_path.insert(0, NoEngine())
    from workers.replay.checksums import judge_checksums
    from workers.replay.flags import flags_for_update
    from workers.specs import FlagSettings
    import workers.replay, workers.replay.cli

    c = {"sha256": "a", "dtype": "bfloat16", "shape": [1], "sum": 1.0, "abs_sum": 1.0}
    report = judge_checksums({"w": c}, {"w": c}, None, None)
    flags = flags_for_update({"kl_k3": 1e-3}, {"kl_k3": 1e-3}, {"kl_k3": 1e-3}, report, None,
                             FlagSettings())
    loaded = sorted(m for m in ("torch", "vllm", "transformers") if m in sys.modules)
    print(report["status"], sorted(flags), loaded)
""")


def test_the_judgement_imports_and_runs_without_torch_or_vllm() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _NO_ENGINE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[0] == (
        "full ['mismatch_spike', 'partial_update', 'stale_weights'] []"
    )


def test_a_result_sums_up_its_flags_in_the_summary_and_the_text_report() -> None:
    from workers.replay.prefix_cache import prefix_cache_summary
    from workers.replay.report import ReplayResult, text_report

    quiet = {name: Flag(False, "") for name in FLAG_NAMES}
    spiked = {**quiet, "mismatch_spike": Flag(True, "kl_k3 0.02 is 20.0x the W0 baseline")}
    updates = [
        _update(1, quiet, abs_diff_mean=0.02, kl_k3=1e-3),
        _update(2, spiked, abs_diff_mean=0.04, kl_k3=2e-2),
    ]
    control = {
        "sequences": 4,
        "sequences_with_different_tokens": 0,
        "first_different_token": [None] * 4,
        "lr_abs_diff_mean_on_common_tokens": 0.0,
        "lr_abs_diff_max_on_common_tokens": 0.0,
        "identical": True,
        "num_cached_tokens": [256] * 4,
    }
    baseline: Any = {
        "metrics": {"abs_diff_mean": 0.02, "kl_k3": 1e-3},
        "verdict": "pass",
        "reasons": [],
        "checksums": updates[0].checksums,
        "prompt_tokens": [300],
        "num_cached_tokens_first_run": [0],
        "prefix_cache_control": control,
        "effective_sampling": {},
    }
    result = ReplayResult(
        spec={"reset_prefix_cache": True, "update_mode": "between_batches"},
        model="m",
        engine={},
        fingerprint={},
        capabilities={"vllm_version": "0.0"},
        baseline=baseline,
        updates=updates,
        prefix_cache_summary=prefix_cache_summary(baseline, updates),
        verdict="fail",
        seconds=1.5,
        timings={},
    )
    assert result.flags_summary == {
        "stale_weights": [],
        "partial_update": [],
        "mismatch_spike": [2],
    }
    summary = result.summary()
    assert summary["any_flag"] and summary["post_update_abs_diff_mean"] == pytest.approx(0.03)
    assert summary["prefix_cache"] is None  # no update measured it
    stored = result.to_dict()
    assert stored["version"] == 1 and stored["summary"] == summary
    assert stored["prefix_cache_summary"] == {"measured": False, "control_at_w0": control}
    text = text_report(result)
    assert "update 2: vs W_k abs_diff_mean 0.04 kl_k3 0.02" in text
    assert "FLAG mismatch_spike: kl_k3 0.02 is 20.0x" in text
    assert text.endswith("prefix cache: not measured")
    assert stored["engine_findings"] == []
