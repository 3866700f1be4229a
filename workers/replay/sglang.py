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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from parity.reports.replay import Capabilities, ChecksumMethod, UpdateInfo, WeightVersion
from workers import engines
from workers.engines.sglang import SGLangError
from workers.replay.batch import Batch
from workers.replay.digests import WeightDirs, digest_only, served_digests
from workers.reporting import UserError
from workers.specs import SamplingSettings

if TYPE_CHECKING:
    from workers.engines.sglang_server import SGLangServer
    from workers.replay.weights import Handle
    from workers.trainer import Kind
    from workers.weight_sync import ParamChecksum


class SGLangReplay:
    """The replay's engine when it is the user's SGLang server (see the module docstring)."""

    adapter = "sglang"
    # How the server loads W_k, and the worker extension it runs (none: SGLang has no such).
    load_mode = "update_weights_from_disk"
    extension_name = "none"

    def __init__(self, server: SGLangServer) -> None:
        self.server = server
        client = server.client
        self.raw_info = client.raw_server_info()
        # What the server served before the replay, restored by `close`.
        self.start_version = client.weight_version()
        # Why the last read of /weights_checker failed (None when it answered).
        self.read_error: str | None = None
        self.weights_checker = self._digests() is not None
        self.checksum_method: ChecksumMethod = (
            "sglang_weights_checker" if self.weights_checker else "not_available"
        )
        # SGLang name -> why its digest cannot be judged (set by `prepare`).
        self.not_comparable: dict[str, str] = {}
        self.logprobs_kind: Kind = engines.logprobs_kind(server)
        # Why two runs of the same requests sample different tokens here, None if they do not.
        self.unseeded: str | None = (
            None
            if server.info.deterministic
            else "the server ignores per-request seeds without "
            "--enable-deterministic-inference, so two runs of the same requests sample "
            "different tokens"
        )
        self._dirs = WeightDirs()
        self._updates = 0
        self._reported = ""

    @property
    def max_model_len(self) -> int:
        return self.server.max_model_len

    @property
    def checksums_unavailable(self) -> str | None:
        if self.read_error is not None and self.weights_checker:
            return (
                f"not read: /weights_checker failed ({self.read_error}); the flags go by the "
                "tokens and the weight versions alone"
            )
        if self.checksum_method != "not_available":
            return None
        why = (
            "none of its /weights_checker digests equals W0's while it serves W0"
            if self.weights_checker
            else f"its /weights_checker cannot be read (older SGLang has none): {self.read_error}"
        )
        return (
            f"not available on this SGLang server ({self.server.url}: {why}); the flags go "
            "by the tokens and the weight versions alone"
        )

    def effective_settings(self) -> dict[str, Any]:
        # "vllm_version" holds the engine's own version, as in every report of a server.
        return {
            **self.server.effective_settings(),
            "adapter": self.adapter,
            "vllm_version": self.server.version,
        }

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
            weight_checker=self.weights_checker,
        )

    # --- the replay's steps -----------------------------------------------------------------

    def sample(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingSettings) -> Batch:
        ro = self.server.generate(prompt_ids, sampling)
        cached = (ro.extra or {}).get("num_cached_tokens") or [None] * len(ro.token_ids)
        return Batch(ro, list(cached))

    def push(self, state: Mapping[str, Any], handle: Handle | None) -> UpdateInfo:
        """W_k into the server, labelled "k": a checkpoint directory as it is, else W_k
        written to a new directory (in /dev/shm where it exists) that the server reads."""
        self._updates += 1
        version = str(self._updates)
        if handle is not None and handle.get("kind") == "dir":
            path = handle["path"]
        else:
            path = str(self._dirs.write(state))
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

    def prepare(self, w0: Mapping[str, Any]) -> None:
        """Find the /weights_checker digests that can be judged: the ones that equal W0's,
        hashed as SGLang hashes on CPU, while the server serves W0 (a replay starts there)."""
        if self.checksum_method != "sglang_weights_checker":
            return
        digests = self._digests()
        if digests is None:
            self.checksum_method = "not_available"
            return
        expected = self._served_digests(w0, digests)
        for name, digest in digests.items():
            if name not in expected:
                why = "no parameter of the checkpoint maps to it"
            elif digest != expected[name]:
                why = (
                    "its digest differs from W0's while the server serves W0: SGLang hashes "
                    "on a GPU with its own kernel (not sha256), or the parameter is padded, "
                    "quantised or repacked on load"
                )
            else:
                continue
            self.not_comparable[name] = why
        if len(self.not_comparable) == len(digests):
            self.checksum_method = "not_available"

    def checksums(self) -> dict[str, ParamChecksum] | None:
        if self.checksum_method != "sglang_weights_checker":
            return None
        digests = self._digests()
        if digests is None:
            return None
        return {
            name: digest_only(digest, "sglang_weights_checker")
            for name, digest in digests.items()
            if name not in self.not_comparable
        }

    def expected_checksums(
        self, state: Mapping[str, Any], engine: Mapping[str, ParamChecksum]
    ) -> dict[str, ParamChecksum]:
        digests = self._served_digests(state, {name: cs["sha256"] for name, cs in engine.items()})
        return {name: digest_only(d, "checkpoint") for name, d in digests.items()}

    def close(self, w0_path: str) -> str | None:
        """Put the server back on W0 (from `w0_path`, the model directory) under the weight
        version it had before, and delete the directories written for it; a note when W0
        could not be restored."""
        note = None
        try:
            if self._updates:
                self.server.update_weights_from_disk(w0_path, weight_version=self.start_version)
        except UserError as exc:
            note = (
                f"the SGLang server at {self.server.url} could not be put back on W0 ({exc}); "
                "it still serves the replay's last update"
            )
        finally:
            self._dirs.remove()
            self.server.close()
        return note

    def _digests(self) -> dict[str, str] | None:
        """/weights_checker's digests; None when this read failed, with why in `read_error`
        (a failed read is no evidence about the weights: it must not be judged as digests)."""
        try:
            digests = self.server.client.weights_checker()
        except SGLangError as exc:
            self.read_error = str(exc)
            return None
        self.read_error = None
        return digests

    def _served_digests(self, state: Mapping[str, Any], like: Mapping[str, str]) -> dict[str, str]:
        """W's digests under the names of `like` (SGLang's), as long as SGLang's, in the
        dtype the server serves."""
        digits = max((len(d) for d in like.values()), default=16)
        return served_digests(state, like, str(self.server.settings.dtype), hex_digits=digits)
