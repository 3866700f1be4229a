"""A replay into a vLLM server the user runs: each update through the server's own path, and
what it serves read by the server's own reporting where it can be.

An update is vLLM's dev-mode reload (`VllmServer.update_weights_from_disk` without its reset:
`/pause?mode=wait&clear_cache=false`, `/collective_rpc` reload_weights with W_k's directory,
`/resume`), then `/reset_prefix_cache` as the spec says, so the prefix-cache measurement
stays the in-process one (a plain /pause would clear the cache itself and hide it).
Sampling goes through the adapter (`/v1/completions`), scoring stays on the worker.

What the server serves, in order of what can be known:

1. Parity's checksums through `/collective_rpc parity_param_checksums`, when the server was
   started with `--worker-extension-cls workers.weight_sync.WeightSyncExtension`: every
   parameter read through its serving kernel, as in-process.
2. vLLM's `/weight_checker` (vLLM 0.32, dev mode): `{"checksums": {"dp0:pp0:pcp0:tp0:<vLLM
   parameter name>": sha256 of its bytes}}` and nothing else (no dtype, shape or sums). Those
   are compared with W_k fused into vLLM's parameters (qkv_proj, gate_up_proj) in the served
   dtype. A parameter whose digest already differs from W0's at the start cannot be judged
   and is listed with the reason: on the CPU backend every linear layer is served from a
   repacked kernel copy and its parameter is emptied, so only embeddings, norms and an
   untied head can be checked there (measured with vLLM 0.32.0).
3. Neither: the checksum report says "not available on this server (why)"; the flags then
   go by the tokens alone.

`/weight_info` only returns the label set through `/update_weight_version` ("default" unless
the trainer sets one), so it says nothing about the weights themselves and is not used.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from parity.reports.replay import Capabilities, UpdateInfo
from workers.replay.checker import CheckerReplay
from workers.replay.checksums import expected_checksums as extension_expected
from workers.reporting import UserError

if TYPE_CHECKING:
    from workers.engines.vllm_server import VllmServer
    from workers.replay.weights import Handle
    from workers.trainer import Kind
    from workers.weight_sync import ParamChecksum

_EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()


def dev_mode_error(url: str) -> UserError:
    return UserError(
        f"the server at {url} does not serve vLLM's dev endpoints (/server_info, /pause, "
        "/collective_rpc, /reset_prefix_cache), which a replay pushes its updates through: "
        "start it with VLLM_SERVER_DEV_MODE=1 in its environment"
    )


class ServerReplay(CheckerReplay):
    """The replay's engine when it is the user's vLLM server (see the module docstring)."""

    adapter = "vllm-server"
    checker = "/weight_checker"
    checker_method = "vllm_weight_checker"
    read_failure = UserError
    # How the server loads W_k; the trainer scores the kind its logprobs_mode says (spec).
    load_mode = "reload_weights"
    logprobs_kind: Kind | None = None
    # Two runs of the same requests with the same seeds sample the same tokens.
    unseeded: str | None = None

    def __init__(self, server: VllmServer) -> None:
        if not server.dev_mode:
            raise dev_mode_error(server.url)
        # /weight_checker first (CheckerReplay): vLLM answers an unknown RPC method (no
        # extension) with an exception that can drop the connection the next request would
        # reuse.
        super().__init__(server)
        self.server: VllmServer = server
        self.extension = _extension_info(server)
        if self.extension is not None:
            self.checksum_method = "parity_extension"

    @property
    def extension_name(self) -> str:
        """The worker extension the server was started with ("none")."""
        return str((self.extension or {}).get("worker_class", "none"))

    def capabilities(self) -> Capabilities:
        cfg = self.server.config or {}
        out = Capabilities(
            vllm_version=self.server.version,
            llm_collective_rpc=True,  # dev mode: /collective_rpc
            llm_reset_prefix_cache=True,
            pause_modes=["abort", "wait", "keep"],  # /pause?mode=
            async_llm_pause_generation=True,
            async_llm_resume_generation=True,
            engine_core_multiprocessing=True,  # a server's engine core is its own process
            async_scheduling=bool(cfg.get("scheduler_config", {}).get("async_scheduling")),
            kv_block_size=int(cfg.get("cache_config", {}).get("block_size") or 0),
            builtin_weight_transfer_config=cfg.get("weight_transfer_config") is not None,
            extension=self.extension,
            adapter=self.adapter,
            url=self.server.url,
            weight_checker=self.checker_served,
        )
        return out

    # --- the replay's steps -----------------------------------------------------------------

    def push(self, state: Mapping[str, Any], handle: Handle | None) -> UpdateInfo:
        """W_k into the server, from the directory `begin_update` gives."""
        path = self.begin_update(state, handle)
        t0 = time.perf_counter()
        self.server.update_weights_from_disk(path, reset_prefix_cache=False)
        return UpdateInfo(
            rpc_seconds=time.perf_counter() - t0,
            load_seconds=None,
            received=len(state),
            sent=len(state),
            withheld_by_extension=[],
            loaded_vllm_params=None,
            running_requests_at_update={},
            server_calls=[
                "POST /pause?mode=wait&clear_cache=false",
                "POST /collective_rpc reload_weights",
                "POST /resume",
            ],
            weights_path=path,
        )

    def reset_prefix_cache(self) -> bool | None:
        return self.server.reset_prefix_cache()

    def checksums(self) -> dict[str, ParamChecksum] | None:
        if self.checksum_method == "parity_extension":
            return cast(
                "dict[str, ParamChecksum]", self.server.collective_rpc("parity_param_checksums")[0]
            )
        return super().checksums()

    def expected_checksums(
        self, state: Mapping[str, Any], engine: Mapping[str, ParamChecksum]
    ) -> dict[str, ParamChecksum]:
        if self.checksum_method == "parity_extension":
            return extension_expected(state, engine)
        return super().expected_checksums(state, engine)

    def _restore_w0(self, w0_path: str) -> None:
        self.server.update_weights_from_disk(w0_path)

    # --- the checker ------------------------------------------------------------------------

    def _read_digests(self) -> dict[str, str]:
        """/weight_checker's digests under vLLM parameter names (the rank prefix dropped: a
        replay runs one rank)."""
        res = self.server.dev_post("/weight_checker", {"action": "checksum"})
        if not isinstance(res, dict) or not isinstance(res.get("checksums"), dict):
            raise UserError("its answer holds no checksums")
        return {key.rsplit(":", 1)[-1]: v for key, v in res["checksums"].items()}

    def _not_available(self, why: str) -> str:
        return (
            f"not available on this server ({self.server.url}: {why}, and it was not started "
            "with Parity's worker extension: --worker-extension-cls "
            f"workers.weight_sync.WeightSyncExtension); the flags go by {self.flags_go_by}"
        )

    def _differs_because(self, digest: str) -> str:
        if digest == _EMPTY_DIGEST:
            return (
                "vLLM's digest is of an empty tensor: the layer is served from a repacked "
                "kernel copy (vLLM's CPU backend), which /weight_checker does not read"
            )
        return (
            "its digest differs from W0's in the served dtype while the server serves W0 "
            "(padded, quantised or repacked on load)"
        )


def _extension_info(server: VllmServer) -> dict[str, Any] | None:
    """Parity's worker extension's info, None when the server was started without it."""
    try:
        results = server.collective_rpc("parity_extension_info")
    except UserError:  # the workers have no such method: a 500 naming it
        return None
    return results[0] if results and isinstance(results[0], dict) else None
