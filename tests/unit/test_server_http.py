"""The server adapters' HTTP call against a real local HTTP server that misbehaves the way a
vLLM server does: uvicorn closes a connection after an endpoint raised (a 500 for an unknown
/collective_rpc method), so the next request the client sends on that pooled connection is
dropped unanswered. A replay once read that as "no digest can be compared"."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from workers.engines.vllm_server import _call
from workers.reporting import UserError

pytestmark = pytest.mark.unit


class _Dropping(BaseHTTPRequestHandler):
    """Drops the first `drops` requests unanswered (reads them, then closes the connection,
    with a reset when `reset`), answers the rest with {"n": how many requests it has seen}."""

    protocol_version = "HTTP/1.1"
    drops = 1
    reset = False
    seen = 0

    def do_POST(self) -> None:
        cls = type(self)
        cls.seen += 1
        if cls.seen <= cls.drops:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if cls.reset:
                # A reset, no FIN first (as uvicorn closing a connection the next request
                # already arrived on): the client reads ECONNRESET, not an EOF.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
            self.close_connection = True
            return
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"n": cls.seen}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(drops: int, reset: bool = False) -> Iterator[str]:
    handler = type("Handler", (_Dropping,), {"drops": drops, "reset": reset, "seen": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=["closed", "reset"])
def drops_once(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _serve(drops=1, reset=request.param == "reset")


@pytest.fixture(params=["closed", "reset"])
def drops_always(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _serve(drops=10**6, reset=request.param == "reset")


def test_a_request_the_server_dropped_unanswered_is_sent_once_more(drops_once: str) -> None:
    with httpx.Client(base_url=drops_once) as client:
        assert _call(client, "POST", drops_once, "/weight_checker", {"action": "checksum"}) == {
            "n": 2
        }


def test_a_server_that_keeps_dropping_requests_is_named_not_retried_forever(
    drops_always: str,
) -> None:
    with (
        httpx.Client(base_url=drops_always) as client,
        pytest.raises(UserError, match="closed the connection without answering /weight_checker"),
    ):
        _call(client, "POST", drops_always, "/weight_checker", {"action": "checksum"})
