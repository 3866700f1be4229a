"""Parity's dependency-light core: metrics (numpy) and the client training loops import."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy, so `import parity.metrics` (workers, the server) does not pull in httpx.
    if name == "Monitor":
        from parity.client import Monitor

        return Monitor
    raise AttributeError(f"module 'parity' has no attribute {name!r}")
