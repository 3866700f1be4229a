"""The ping job: a no-op that proves the round trip browser -> Postgres -> Redis -> worker ->
Postgres (health checks, tests). Engine-free, like every runner's signature: (spec, reporter).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from workers.reporting import JobOutcome, Reporter


def ping(spec: Mapping[str, Any], reporter: Reporter) -> JobOutcome:
    """Echo the spec back with the worker's host name."""
    reporter.stage("pong", 1.0)
    return JobOutcome(result={"pong": socket.gethostname(), "echo": dict(spec)})
