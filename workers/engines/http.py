"""The one HTTP rule both server adapters (vLLM, SGLang) send their requests by."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

# How a request the server dropped unanswered fails: an EOF or a reset where the answer
# should be, or a connection already gone when it was written.
DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def request(
    client: httpx.Client, method: str, path: str, body: Mapping[str, Any] | None = None
) -> httpx.Response:
    """One request; one dropped unanswered is sent once more, on a new connection.

    uvicorn closes a connection after an endpoint raised (vLLM's 500 for an unknown
    /collective_rpc method), so the next request sent on it from the pool is lost without
    an answer (`DROPPED`). Every request Parity sends a server is safe to repeat: sampling,
    reads, pause/resume, a reload of the same weights. A second drop raises, for the
    adapter to word."""
    try:
        return client.request(method, path, json=body)
    except DROPPED:
        return client.request(method, path, json=body)
