"""A server replay's reading of the server's own weight checker (vLLM's /weight_checker,
SGLang's /weights_checker):

- a failed read is named in the report, never judged as digests that match no parameter and
  never a flag (a replay once called every digest not comparable when one read was dropped:
  CI, stop 20);
- the weights the replay starts on are read once: the start-up probe's digests also serve
  `prepare` and the W0 baseline (each read hashes every weight on the server), and every
  update is read afresh.

The servers here are stand-ins for the adapters' calls (the HTTP under them is tested against
a real HTTP server in test_server_http.py, the replays against real servers in
tests/engine/test_replay_server.py and test_replay_sglang.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from workers.engines.sglang import SGLangError
from workers.replay.digests import served_digests
from workers.replay.server import ServerReplay
from workers.replay.sglang import SGLangReplay
from workers.reporting import UserError
from workers.specs import EngineSettings

pytestmark = pytest.mark.unit

W0 = {"model.embed_tokens.weight": torch.arange(6.0).reshape(2, 3)}
DROPPED = "the server at http://h:1 closed the connection without answering the checker"


class _Checker:
    """Counts reads of the weight checker; answers W0's digests until read `fail_from`."""

    url = "http://h:1"
    settings = EngineSettings(dtype="float32")
    max_model_len = 64

    def __init__(self, fail_from: int, hex_digits: int) -> None:
        self.reads = 0
        self.fail_from = fail_from
        self.hex_digits = hex_digits

    def read(self) -> dict[str, str]:
        self.reads += 1
        if self.reads >= self.fail_from:
            raise self.error(DROPPED)
        return served_digests(W0, W0, "float32", hex_digits=self.hex_digits)

    error: type[Exception] = UserError

    def update_weights_from_disk(self, path: str, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class _VllmServer(_Checker):
    dev_mode = True

    def __init__(self, fail_from: int) -> None:
        super().__init__(fail_from, hex_digits=64)

    def dev_post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        assert path == "/weight_checker"
        return {"checksums": {f"dp0:pp0:pcp0:tp0:{k}": v for k, v in self.read().items()}}

    def collective_rpc(self, method: str, kwargs: Any = None) -> list[Any]:
        raise UserError("no parity_extension_info: started without the extension")


class _SGLangServer(_Checker):
    error = SGLangError
    info = SimpleNamespace(deterministic=True)
    logprobs_kind = "temperature"
    model_root = "/nowhere"

    def __init__(self, fail_from: int) -> None:
        super().__init__(fail_from, hex_digits=16)
        self.client = SimpleNamespace(
            raw_server_info=dict, weight_version=lambda: "0", weights_checker=self.read
        )


REPLAYS = {"vllm": (ServerReplay, _VllmServer), "sglang": (SGLangReplay, _SGLangServer)}


def _replay(engine: str, fail_from: int) -> tuple[Any, _Checker]:
    replay_cls, server_cls = REPLAYS[engine]
    server = server_cls(fail_from)
    return replay_cls(server), server


def _digests(checksums: Any) -> dict[str, str]:
    """Each parameter's digest, as long as SGLang's short ones where they are."""
    return {
        name: (cs if isinstance(cs, str) else cs["sha256"])[:16] for name, cs in checksums.items()
    }


@pytest.mark.parametrize("engine", REPLAYS)
def test_a_failed_read_at_the_start_is_named_not_called_not_comparable(engine: str) -> None:
    replay, _ = _replay(engine, fail_from=1)
    replay.prepare(W0)
    assert replay.checksum_method == "not_available"
    why = replay.checksums_unavailable or ""
    assert DROPPED in why and "equals W0" not in why


@pytest.mark.parametrize("engine", REPLAYS)
def test_the_starting_weights_are_read_once_and_every_update_afresh(engine: str) -> None:
    replay, server = _replay(engine, fail_from=10**6)
    replay.prepare(W0)
    assert _digests(replay.checksums()) == _digests(served_digests(W0, W0, "float32"))
    assert not replay.not_comparable
    assert server.reads == 1
    replay.push(W0, None)
    assert _digests(replay.checksums()) == _digests(served_digests(W0, W0, "float32"))
    assert server.reads == 2
    replay.close("/nowhere")


@pytest.mark.parametrize("engine", REPLAYS)
def test_a_failed_read_after_an_update_reports_no_checksums_and_the_next_read_counts(
    engine: str,
) -> None:
    replay, server = _replay(engine, fail_from=2)
    replay.prepare(W0)
    assert replay.checksum_method != "not_available" and not replay.not_comparable
    assert set(replay.checksums() or {}) == {"model.embed_tokens.weight"}
    replay.push(W0, None)
    assert replay.checksums() is None  # read 2 fails: no digests, so nothing to flag
    assert DROPPED in (replay.checksums_unavailable or "")
    server.fail_from = 10**6
    assert set(replay.checksums() or {}) == {"model.embed_tokens.weight"}
    assert replay.checksums_unavailable is None
    replay.close("/nowhere")
