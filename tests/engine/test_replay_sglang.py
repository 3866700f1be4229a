"""Weight-update replays into a real SGLang server process (issue 14 §2): W_k through
SGLang's update_weights_from_disk labelled "k", what it serves read by its own /weights_checker
digests and weight versions.

One server for the module (~25-45 s to start here); every replay puts it back on W0 under
its starting weight version, so the replays that follow start from W0.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from parity.reports.replay import ReplayReport, UpdateInfo
from tests.engine.sglang_support import sglang_python, start_server
from tests.engine.test_replay import SAMPLING, check_shape
from workers.replay import run as replay_run
from workers.replay import run_replay
from workers.replay.sglang import SGLangReplay
from workers.replay.weights import Handle
from workers.reporting import json_safe
from workers.specs import ReplaySpec

pytestmark = pytest.mark.engine

# The server runs in float32 (sglang_support): so does the trainer, as in test_sglang.
TRAINER = {"dtype": "float32", "attn_implementation": "eager"}
NO_FLAGS = {"stale_weights": [], "partial_update": [], "mismatch_spike": []}


@pytest.fixture(scope="module")
def sglang_url(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    sglang_python()
    log = tmp_path_factory.mktemp("sglang-replay") / "server.log"
    with start_server(tiny_model, log) as url:
        yield url


def _spec(model: Path, url: str, **kw: Any) -> ReplaySpec:
    return ReplaySpec.model_validate(
        {
            "model": str(model),
            "sampling": SAMPLING,
            "trainer": TRAINER,
            "server": {"url": url, "engine": "sglang"},
            **kw,
        }
    )


class StaleUpdateReplay(SGLangReplay):
    """Planted in the update call: every update hands SGLang the previous weights' directory
    (W0's model directory first) under the new weight version, a sync one step behind."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.previous = self.server.model_root

    def update_path(self, path: str) -> str:
        stale, self.previous = self.previous, path
        return stale


class RelabelledReplay(SGLangReplay):
    """Planted between the update and the sampling: another client relabels what the server
    serves through SGLang's /update_weight_version (the weights stay W_k)."""

    def push(self, state: Mapping[str, Any], handle: Handle | None) -> UpdateInfo:
        info = super().push(state, handle)
        self.server.client._call("POST", "/update_weight_version", {"new_version": "other-trainer"})
        return info


def test_a_replay_against_sglang_passes_with_its_own_checksums_and_weight_versions(
    sglang_url: str, tiny_model: Path
) -> None:
    started = time.perf_counter()
    result = run_replay(_spec(tiny_model, sglang_url, num_updates=2))
    print(f"\nreplay of 2 updates via SGLang: {time.perf_counter() - started:.1f} s")
    stored = json_safe(result.to_dict())
    check_shape(stored, ReplayReport)

    assert result.flags_summary == NO_FLAGS and result.verdict == "pass"
    # SGLang's logprobs are log_softmax(logits / T): the trainer scores that (in float32
    # against the float32 server: measured 1.5e-6 here), not vLLM's raw kind.
    assert result.baseline["metrics"]["abs_diff_mean"] < 1e-4
    base = result.baseline["checksums"]
    # Every parameter of the tiny Llama, q/k/v and gate/up fused as SGLang serves them.
    assert base["method"] == "sglang_weights_checker" and "not_comparable" not in base
    assert (base["status"], base["n_params"], base["matched"]) == ("full", 15, 15)
    for k, u in enumerate(result.updates, start=1):
        assert u.checksums["status"] == "full" and u.checksums["matched"] == 15
        assert u.update["weight_version"] == {
            "expected": str(k), "reported": str(k), "sampled": [str(k)], "matches": True,
        }  # fmt: skip
        assert u.metrics_vs_previous["abs_diff_mean"] > 100 * u.metrics["abs_diff_mean"]
        assert "POST /update_weights_from_disk" in u.update["server_calls"][1]
        # SGLang flushed its radix cache in the update itself: the batch without a reset
        # hits nothing, where the rerun at W0 hit the shared prefix.
        assert u.prefix_cache["without_reset"]["num_cached_tokens"] == [0, 0, 0, 0]
    assert all(n and n > 0 for n in result.baseline["prefix_cache_control"]["num_cached_tokens"])
    summary = result.prefix_cache_summary["summary"]
    assert summary.startswith("the engine dropped its prefix cache itself at every update")
    assert "--enable-deterministic-inference" in summary
    engine = stored["fingerprint"]["engine"]
    assert (engine["adapter"], engine["vllm_version"]) == ("sglang", "0.5.23")
    assert stored["fingerprint"]["load_mode"] == "update_weights_from_disk"
    assert stored["capabilities"]["adapter"] == "sglang"


def test_a_stale_update_into_sglang_is_flagged_though_its_weight_version_says_k(
    sglang_url: str, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(replay_run.SERVER_REPLAYS, "sglang", StaleUpdateReplay)

    result = run_replay(_spec(tiny_model, sglang_url, num_updates=2, measure_prefix_cache=False))

    assert result.flags_summary["stale_weights"] == [1, 2]
    assert result.flags_summary["partial_update"] == []
    assert result.verdict == "fail"
    for u in result.updates:
        assert u.checksums["status"] == "none"
        # The label is the update call's: it cannot tell which weights were loaded.
        assert u.update["weight_version"]["matches"]
    # From update 2 on the server holds exactly the previous update's weights.
    assert result.updates[1].flags["stale_weights"].evidence["params_equal_to_previous_weights"]


def test_another_weight_version_served_after_an_update_fails_the_replay_with_a_note(
    sglang_url: str, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(replay_run.SERVER_REPLAYS, "sglang", RelabelledReplay)

    result = run_replay(_spec(tiny_model, sglang_url, num_updates=1, measure_prefix_cache=False))

    version = result.updates[0].update["weight_version"]
    assert version["sampled"] == ["other-trainer"] and not version["matches"]
    assert result.flags_summary == NO_FLAGS  # the weights are W_1: only the label is wrong
    assert result.verdict == "fail"
    assert any("'other-trainer'" in n and "not the '1'" in n for n in result.notes)


def test_an_in_flight_replay_against_sglang_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="in_flight' is not supported against a server"):
        ReplaySpec.model_validate(
            {
                "server": {"url": "http://127.0.0.1:1", "engine": "sglang"},
                "update_mode": "in_flight",
            }
        )
