"""Weight-update replays into a real vLLM server process (issue 14 §2).

Servers are the cost (~30 s each to start here), so there are few: the session's server
(tests/engine/fixtures.py: dev mode, no Parity extension), one started with Parity's worker
extension (a test subclass that can plant a stale reload), and one without dev mode. Every
replay puts its server back on W0, so the session's server stays what other tests expect.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parity.reports.replay import ReplayReport
from tests.engine.test_replay import SAMPLING, check_shape
from workers.engines.launch import LocalServer
from workers.replay import run_replay
from workers.reporting import UserError, json_safe
from workers.specs import ReplaySpec

pytestmark = pytest.mark.engine

SERVER_FAULTS = "tests.engine.extensions.ServerFaultsExtension"


def _spec(model: Path, server: LocalServer, **kw: Any) -> ReplaySpec:
    return ReplaySpec.model_validate(
        {
            "model": str(model),
            "sampling": SAMPLING,
            "server": {"url": server.url, "api_key": server.api_key},
            **kw,
        }
    )


@pytest.fixture(scope="module")
def extension_server(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer]:
    """A server on the tiny model with Parity's worker extension (its test subclass)."""
    from workers.engines.launch import start_server
    from workers.specs import EngineSettings

    log = tmp_path_factory.mktemp("vllm-ext-server") / "server.log"
    server = start_server(
        str(tiny_model),
        EngineSettings(gpu_memory_utilization=0.1),
        log,
        worker_extension=SERVER_FAULTS,
    )
    try:
        yield server
    finally:
        server.stop()


def test_a_replay_against_a_server_with_the_extension_passes_with_checksums(
    extension_server: LocalServer, tiny_model: Path
) -> None:
    started = time.perf_counter()
    result = run_replay(_spec(tiny_model, extension_server, num_updates=2))
    served_s = time.perf_counter() - started
    stored = json_safe(result.to_dict())
    check_shape(stored, ReplayReport)

    assert result.flags_summary == {"stale_weights": [], "partial_update": [], "mismatch_spike": []}
    assert result.verdict in ("pass", "warn")
    assert result.baseline["checksums"]["status"] == "full"
    for u in result.updates:
        assert u.checksums["method"] == "parity_extension"
        assert u.checksums["status"] == "full" and u.checksums["n_params"] == 21
        assert u.metrics_vs_previous["abs_diff_mean"] > 4 * u.metrics["abs_diff_mean"]
        assert u.update["server_calls"][1] == "POST /collective_rpc reload_weights"
        # The launcher's server reports its prefix-cache hits, so they are measured.
        assert u.prefix_cache["measured"]
        assert all(isinstance(n, int) for n in u.prefix_cache["without_reset"]["num_cached_tokens"])
    engine = stored["fingerprint"]["engine"]
    assert engine["adapter"] == "vllm-server" and engine["url"] == extension_server.url
    assert stored["capabilities"]["adapter"] == "vllm-server"
    assert stored["fingerprint"]["load_mode"] == "reload_weights"
    print(f"\nreplay of 2 updates via the server: {served_s:.1f} s")


def test_a_stale_reload_on_the_server_is_flagged(
    extension_server: LocalServer, tiny_model: Path
) -> None:
    """Planted in the real server (through its /collective_rpc): every reload_weights loads
    the directory of the reload before it, a sync one step behind."""
    from workers.engines.vllm_server import connect
    from workers.specs import EngineSettings, ServerSettings

    control = connect(ServerSettings(url=extension_server.url), str(tiny_model), EngineSettings())
    control.collective_rpc("parity_test_plant_stale_reload", {"plant": "yes"})
    try:
        result = run_replay(
            _spec(tiny_model, extension_server, num_updates=2, measure_prefix_cache=False)
        )
    finally:
        control.collective_rpc("parity_test_plant_stale_reload", {"plant": "no"})
        control.update_weights_from_disk(str(tiny_model))
        control.close()

    assert result.flags_summary["stale_weights"] == [1, 2]
    assert result.flags_summary["partial_update"] == []
    assert result.verdict == "fail"
    for u in result.updates:
        assert u.checksums["status"] == "none"
    # From update 2 on the server holds exactly the previous update's weights.
    assert result.updates[1].flags["stale_weights"].evidence["params_equal_to_previous_weights"]


def test_without_the_extension_vllms_weight_checker_reads_what_it_can(
    vllm_server: LocalServer, tiny_model: Path
) -> None:
    from workers.engines.vllm_server import connect
    from workers.specs import EngineSettings, ServerSettings

    # A replay starts on W0, and /weight_checker's digests are judged against W0's: the
    # session's server is shared with other tests that load other weights into it, so it is
    # put back on the model's own weights first. (CI twice found every digest "not
    # comparable": the read after the extension probe's 500 had been dropped by the server,
    # and the failed read was judged as digests; tests/unit/test_server_http.py.)
    control = connect(
        ServerSettings(url=vllm_server.url, api_key=vllm_server.api_key),
        str(tiny_model),
        EngineSettings(),
    )
    control.update_weights_from_disk(str(tiny_model))
    control.close()
    result = run_replay(_spec(tiny_model, vllm_server, num_updates=2, measure_prefix_cache=False))
    check_shape(json_safe(result.to_dict()), ReplayReport)

    assert result.flags_summary == {"stale_weights": [], "partial_update": [], "mismatch_spike": []}
    base = result.baseline["checksums"]
    assert base["method"] == "vllm_weight_checker", base.get("unavailable")
    not_comparable = base.get("not_comparable", {})
    # On the CPU backend the linear layers are served from repacked kernels: vLLM hashes an
    # empty parameter, and says so; embeddings and norms are compared.
    assert "model.layers.0.self_attn.qkv_proj.weight" in not_comparable
    assert "empty tensor" in not_comparable["model.layers.0.self_attn.qkv_proj.weight"]
    assert base["n_params"] >= 6 and base["status"] == "full"
    for u in result.updates:
        assert u.checksums["status"] == "full"
        assert u.checksums["matched"] == u.checksums["n_params"] == base["n_params"]


def test_a_server_without_dev_mode_fails_fast_naming_the_setting(
    tiny_model: Path, tmp_path: Path
) -> None:
    from workers.engines.launch import start_server
    from workers.specs import EngineSettings

    server = start_server(
        str(tiny_model),
        EngineSettings(gpu_memory_utilization=0.1),
        tmp_path / "server.log",
        dev_mode=False,
    )
    try:
        with pytest.raises(UserError, match="start it with VLLM_SERVER_DEV_MODE=1"):
            run_replay(_spec(tiny_model, server, num_updates=1))
    finally:
        server.stop()


def test_an_in_flight_replay_against_a_server_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="in_flight' is not supported against a server"):
        ReplaySpec.model_validate(
            {"server": {"url": "http://127.0.0.1:1"}, "update_mode": "in_flight"}
        )
