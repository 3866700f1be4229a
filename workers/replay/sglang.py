"""A replay into an SGLang server the user runs: each update through SGLang's own update path,
and what it serves read by SGLang's own reporting.

An update is SGLang's `update_weights_from_disk` with W_k's directory, labelled
weight_version "k" and bracketed by /begin_weight_update and /end_weight_update
(`SGLangClient.update_weights_from_disk`). SGLang flushes its radix cache after every such
load (its default, flush_cache=true, which RL frameworks built on it keep), so the replay's
"without reset" batch already runs on an empty cache: the prefix-cache measurement shows that
(cached_tokens from each /generate result) rather than assuming it. Sampling goes through the
adapter (`/generate`), scoring stays on the worker, on SGLang's kind of logprobs
(`workers.engines.logprobs_kind`: log_softmax(logits / T)).

What the server serves, as SGLang itself reports it (0.5.23):

1. /weights_checker (action "checksum"): a digest of every parameter and persistent buffer,
   under SGLang's names (q/k/v and gate/up fused). On CPU it is the first 8 bytes of the
   sha256 of the parameter's bytes (`sglang.srt.managers.mm_utils.tensor_hash`), which Parity
   computes from W_k the same way; on GPU SGLang hashes with its own kernel, which Parity
   cannot reproduce: `prepare` finds the digests that equal W0's while the server serves W0
   and lists the others with the reason, as for vLLM's /weight_checker.
2. The weight version: /model_info's `weight_version` after each update, and the one each
   /generate result reports, must be "k". A label the update call sets, not a reading of the
   weights: an update that loads the wrong directory still reports "k" (the checksums and
   the tokens catch that).

SGLang's /get_weights_by_name returns only the first rows of one parameter (as floats, for
its unit tests), so the digests above are used instead.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from parity.reports.replay import Capabilities, UpdateInfo, WeightVersion
from workers import engines
from workers.engines.sglang import SGLangError
from workers.replay.checker import CheckerReplay

if TYPE_CHECKING:
    from workers.engines.sglang_server import SGLangServer
    from workers.replay.batch import Batch
    from workers.replay.weights import Handle
    from workers.trainer import Kind


class SGLangReplay(CheckerReplay):
    """The replay's engine when it is the user's SGLang server (see the module docstring)."""

    adapter = "sglang"
    checker = "/weights_checker"
    checker_method = "sglang_weights_checker"
    flags_go_by = "the tokens and the weight versions alone"
    read_failure = SGLangError
    server_words = "the SGLang server"
    # How the server loads W_k, and the worker extension it runs (none: SGLang has no such).
    load_mode = "update_weights_from_disk"
    extension_name = "none"

    def __init__(self, server: SGLangServer) -> None:
        client = server.client
        self.raw_info = client.raw_server_info()
        # What the server served before the replay, restored by `close`.
        self.start_version = client.weight_version()
        super().__init__(server)
        self.server: SGLangServer = server
        self.logprobs_kind: Kind = engines.logprobs_kind(server)
        # Why two runs of the same requests sample different tokens here, None if they do not.
        self.unseeded: str | None = (
            None
            if server.info.deterministic
            else "the server ignores per-request seeds without "
            "--enable-deterministic-inference, so two runs of the same requests sample "
            "different tokens"
        )
        self._updates = 0
        self._reported = ""

    def capabilities(self) -> Capabilities:
        raw = self.raw_info
        return Capabilities(
            vllm_version=self.server.version,
            llm_collective_rpc=False,
            llm_reset_prefix_cache=True,  # /flush_cache
            pause_modes=["abort", "keep"],  # /pause_generation abort | in_place
            async_llm_pause_generation=True,
            async_llm_resume_generation=True,  # /continue_generation
            engine_core_multiprocessing=True,  # SGLang's scheduler is its own process
            async_scheduling=not raw.get("disable_overlap_schedule", False),
            kv_block_size=int(raw.get("page_size") or 1),
            builtin_weight_transfer_config=False,
            extension=None,
            adapter=self.adapter,
            url=self.server.url,
            weight_checker=self.checker_served,
        )

    # --- the replay's steps -----------------------------------------------------------------

    def push(self, state: Mapping[str, Any], handle: Handle | None) -> UpdateInfo:
        """W_k into the server from the directory `begin_update` gives, labelled "k"."""
        self._updates += 1
        version = str(self._updates)
        path = self.begin_update(state, handle)
        t0 = time.perf_counter()
        self.server.update_weights_from_disk(self.update_path(path), weight_version=version)
        seconds = time.perf_counter() - t0
        self._reported = self.server.client.weight_version()
        return UpdateInfo(
            rpc_seconds=seconds,
            load_seconds=None,
            received=len(state),
            sent=len(state),
            withheld_by_extension=[],
            loaded_vllm_params=None,
            running_requests_at_update={},
            server_calls=[
                "POST /begin_weight_update",
                f"POST /update_weights_from_disk (weight_version {version!r}; SGLang flushes "
                "its radix cache)",
                "POST /end_weight_update",
            ],
            weights_path=path,
        )

    def update_path(self, path: str) -> str:
        """The directory the update call hands SGLang (a test can point it elsewhere)."""
        return path

    def weight_version(self, batch: Batch) -> WeightVersion:
        """What SGLang says it serves after the last update, against the label it was given:
        /model_info's version and the versions `batch`'s results report."""
        expected = str(self._updates)
        sampled: list[str | None] = []
        for v in (batch.rollout.extra or {}).get("weight_versions") or [None]:
            if v not in sampled:
                sampled.append(v)
        return WeightVersion(
            expected=expected,
            reported=self._reported,
            sampled=sampled,
            matches=self._reported == expected and sampled == [expected],
        )

    def reset_prefix_cache(self) -> bool | None:
        self.server.reset_prefix_cache()  # /flush_cache: an error raises, with SGLang's words
        return True

    def _restore_w0(self, w0_path: str) -> None:
        """W0 under the weight version the server had before the replay (nothing to restore
        when no update was pushed)."""
        if self._updates:
            self.server.update_weights_from_disk(w0_path, weight_version=self.start_version)

    # --- the checker ------------------------------------------------------------------------

    def _read_digests(self) -> dict[str, str]:
        return self.server.client.weights_checker()

    def _not_available(self, why: str) -> str:
        if not self.checker_served:
            why += f" (older SGLang has no {self.checker})"
        return (
            f"not available on this SGLang server ({self.server.url}: {why}); the flags go by "
            f"{self.flags_go_by}"
        )

    def _differs_because(self, digest: str) -> str:
        return (
            "its digest differs from W0's while the server serves W0: SGLang hashes on a GPU "
            "with its own kernel (not sha256), or the parameter is padded, quantised or "
            "repacked on load"
        )
