"""A server replay's checksum reading when /weight_checker fails: the report names the
failure, never "cannot be compared" and never a flag. A replay once called every digest
not comparable when one read was dropped by the server (CI, stop 20).

The server here is a stand-in for `VllmServer`'s two dev calls (the HTTP under them is
tested against a real HTTP server in test_server_http.py, the replay against a real vLLM
server in tests/engine/test_replay_server.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from workers.replay.digests import served_digests
from workers.replay.server import ServerReplay
from workers.reporting import UserError
from workers.specs import EngineSettings

pytestmark = pytest.mark.unit

W0 = {"model.embed_tokens.weight": torch.arange(6.0).reshape(2, 3)}
DROPPED = "the server at http://h:1 closed the connection without answering /weight_checker"


class _Server:
    """Answers /weight_checker with W0's digests until `fail_from` reads, then fails."""

    dev_mode = True
    url = "http://h:1"
    settings = EngineSettings(dtype="float32")

    def __init__(self, fail_from: int) -> None:
        self.reads = 0
        self.fail_from = fail_from

    def dev_post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        assert path == "/weight_checker"
        self.reads += 1
        if self.reads >= self.fail_from:
            raise UserError(DROPPED)
        digest = served_digests(W0, W0, "float32")["model.embed_tokens.weight"]
        return {"checksums": {"dp0:pp0:pcp0:tp0:model.embed_tokens.weight": digest}}

    def collective_rpc(self, method: str, kwargs: Any = None) -> list[Any]:
        raise UserError("no parity_extension_info: started without the extension")


def test_a_failed_read_while_preparing_is_named_not_called_not_comparable() -> None:
    replay = ServerReplay(_Server(fail_from=2))  # type: ignore[arg-type]
    replay.prepare(W0)
    assert replay.checksum_method == "not_available"
    why = replay.checksums_unavailable or ""
    assert DROPPED in why and "cannot be compared" not in why


def test_a_failed_read_after_an_update_reports_no_checksums_and_the_next_read_counts() -> None:
    server = _Server(fail_from=3)
    replay = ServerReplay(server)  # type: ignore[arg-type]
    replay.prepare(W0)
    assert replay.checksum_method == "vllm_weight_checker" and not replay.not_comparable
    assert replay.checksums() is None  # read 3 fails: no digests, so nothing to flag
    assert DROPPED in (replay.checksums_unavailable or "")
    server.fail_from = 10**6
    assert set(replay.checksums() or {}) == {"model.embed_tokens.weight"}
    assert replay.checksums_unavailable is None
