"""The ping job: a no-op that proves the round trip browser -> Postgres -> Redis -> worker ->
Postgres (health checks, tests). Engine-free, like every runner's signature: (spec, reporter).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import Any

from workers.reporting import JobOutcome, Reporter


def ping(spec: Mapping[str, Any], reporter: Reporter) -> JobOutcome:
    """Echo the spec back with the worker's host name. With `ticks`, first report progress
    that many times, `tick_s` apart: a job that writes progress for a while (fault tests)."""
    ticks = int(spec.get("ticks", 0))
    for tick in range(ticks):
        reporter.stage(f"tick {tick + 1}/{ticks}", tick / ticks)
        time.sleep(float(spec.get("tick_s", 0.1)))
    reporter.stage("pong", 1.0)
    return JobOutcome(result={"pong": socket.gethostname(), "echo": dict(spec)})
