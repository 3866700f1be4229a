"""What the vLLM and SGLang server replays share: sampling through the adapter, W_k written
where the server reads it, and the server's own weight checker (vLLM's /weight_checker,
SGLang's /weights_checker) read and judged the same way.

Each read of a weight checker hashes every weight on the server, so the weights a replay starts
on are read once: the start-up probe's digests also serve `prepare` and the W0 baseline, and
every update is read afresh. A failed read is never judged as digests: the report names it,
and the next read counts again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from parity.reports.replay import ChecksumMethod
from workers.replay.batch import Batch
from workers.replay.digests import WeightDirs, digest_only, served_digests
from workers.reporting import UserError
from workers.specs import SamplingSettings

if TYPE_CHECKING:
    from workers.weight_sync import ParamChecksum


class CheckerReplay:
    """The replay's engine when it is a server the user runs (`ServerReplay`, `SGLangReplay`).

    A subclass names its checker (`checker`, `checker_method`, what the flags go by without
    it) and says how to read it (`_read_digests`), why a digest that differs from W0's while
    the server serves W0 cannot be judged (`_differs_because`), how its report words
    checksums that cannot be had at all (`_not_available`), and how W0 is loaded back at the
    end (`_restore_w0`).
    """

    adapter: ClassVar[str]
    checker: ClassVar[str]  # the endpoint, as the report names it
    checker_method: ClassVar[ChecksumMethod]
    # What decides the flags when the checksums cannot.
    flags_go_by: ClassVar[str] = "the tokens alone"
    # The exception a failed read of the checker raises.
    read_failure: ClassVar[type[Exception]]
    # The server, as the report's notes name it.
    server_words: ClassVar[str] = "the server"

    def __init__(self, server: Any) -> None:
        self.server = server
        # Why the last read of the checker failed (None when it answered).
        self.read_error: str | None = None
        # The digests of the weights the server serves until the replay's first update.
        self._starting_digests = self._digests()
        self.checker_served = self._starting_digests is not None
        self.checksum_method: ChecksumMethod = (
            self.checker_method if self.checker_served else "not_available"
        )
        # Served name -> why its digest cannot be judged (set by `prepare`).
        self.not_comparable: dict[str, str] = {}
        self._dirs = WeightDirs()

    @property
    def max_model_len(self) -> int:
        return int(self.server.max_model_len)

    def effective_settings(self) -> dict[str, Any]:
        # "vllm_version" holds the engine's own version, as in every report of a server.
        return {
            **self.server.effective_settings(),
            "adapter": self.adapter,
            "vllm_version": self.server.version,
        }

    @property
    def checksums_unavailable(self) -> str | None:
        """Why the report has no checksums (the failed read, or what the start-up read
        found); None when it has them."""
        if self.read_error is not None and self.checker_served:
            return (
                f"not read: {self.checker} failed ({self.read_error}); the flags go by "
                f"{self.flags_go_by}"
            )
        if self.checksum_method != "not_available":
            return None
        if self.checker_served:
            return self._not_available(
                f"none of its {self.checker} digests equals W0's while it serves W0"
            )
        return self._not_available(f"its {self.checker} could not be read: {self.read_error}")

    # --- the replay's steps -----------------------------------------------------------------

    def sample(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingSettings) -> Batch:
        ro = self.server.generate(prompt_ids, sampling)
        cached = (ro.extra or {}).get("num_cached_tokens") or [None] * len(ro.token_ids)
        return Batch(ro, list(cached))

    def begin_update(self, state: Mapping[str, Any], handle: Mapping[str, Any] | None) -> str:
        """The directory the server loads W_k from (a checkpoint directory as it is, else W_k
        written to a new directory, in /dev/shm where it exists); from here on the server's
        digests are read afresh."""
        self._starting_digests = None
        if handle is not None and handle.get("kind") == "dir":
            return str(handle["path"])
        return str(self._dirs.write(state))

    def prepare(self, w0: Mapping[str, Any]) -> None:
        """Find the checker's digests that can be judged: the ones that equal W0's, hashed as
        the server hashes, while the server serves W0 (a replay starts there)."""
        if self.checksum_method != self.checker_method:
            return
        digests = self._current_digests()
        if digests is None:
            self.checksum_method = "not_available"
            return
        expected = self._expected_digests(w0, digests)
        for name, digest in digests.items():
            if name not in expected:
                self.not_comparable[name] = "no parameter of the checkpoint maps to it"
            elif digest != expected[name]:
                self.not_comparable[name] = self._differs_because(digest)
        if len(self.not_comparable) == len(digests):
            self.checksum_method = "not_available"

    def checksums(self) -> dict[str, ParamChecksum] | None:
        """The checker's digests of the parameters `prepare` found comparable; None when the
        checker is not the method or the read failed (why: `checksums_unavailable`)."""
        if self.checksum_method != self.checker_method:
            return None
        digests = self._current_digests()
        if digests is None:
            return None
        return {
            name: digest_only(digest, self.checker_method)
            for name, digest in digests.items()
            if name not in self.not_comparable
        }

    def expected_checksums(
        self, state: Mapping[str, Any], engine: Mapping[str, ParamChecksum]
    ) -> dict[str, ParamChecksum]:
        digests = self._expected_digests(state, {name: cs["sha256"] for name, cs in engine.items()})
        return {name: digest_only(d, "checkpoint") for name, d in digests.items()}

    def close(self, w0_path: str) -> str | None:
        """Put the server back on W0 (from `w0_path`, the model directory) and delete the
        directories written for it; a note when W0 could not be restored."""
        note = None
        try:
            self._restore_w0(w0_path)
        except UserError as exc:
            note = (
                f"{self.server_words} at {self.server.url} could not be put back on W0 ({exc}); "
                "it still serves the replay's last update"
            )
        finally:
            self._dirs.remove()
            self.server.close()
        return note

    # --- helpers ---------------------------------------------------------------------------

    def _read_digests(self) -> dict[str, str]:
        """The checker's digests under the served parameter names; `read_failure` when it
        cannot be read."""
        raise NotImplementedError

    def _restore_w0(self, w0_path: str) -> None:
        """Load W0 from `w0_path` into the server again; UserError when it cannot."""
        raise NotImplementedError

    def _differs_because(self, digest: str) -> str:
        raise NotImplementedError

    def _not_available(self, why: str) -> str:
        """The report's words when no checksum can be had, `why` being the checker's part."""
        raise NotImplementedError

    def _digests(self) -> dict[str, str] | None:
        """One read of the checker; None when it failed, with why in `read_error` (a failed
        read is no evidence about the weights: it must not be judged as digests)."""
        try:
            digests = self._read_digests()
        except self.read_failure as exc:
            self.read_error = str(exc)
            return None
        self.read_error = None
        return digests

    def _current_digests(self) -> dict[str, str] | None:
        if self._starting_digests is not None:
            return self._starting_digests
        return self._digests()

    def _expected_digests(
        self, state: Mapping[str, Any], like: Mapping[str, str]
    ) -> dict[str, str]:
        """W's digests under the names of `like` (the server's), as long as the server's, in
        the dtype the server serves."""
        digits = max((len(d) for d in like.values()), default=64)
        return served_digests(state, like, str(self.server.settings.dtype), hex_digits=digits)
