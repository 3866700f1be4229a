"""What the Celery broker holds: the ids of task messages still waiting or reserved.

Postgres is the truth about jobs; a broker message is only the wake-up call, and a broker
restart without persistence loses it. The job sweep compares the two (Job.requeue_lost).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


def message_ids(queues: Iterable[str]) -> set[str] | None:
    """Task ids of every message on `queues` (all priorities) or reserved by a worker (the
    Redis transport's unacked hash); None when that cannot be known (not a Redis broker, or
    the broker is unreachable) — the caller must then do nothing."""
    from dashboard.celery import app

    try:
        with app.connection_for_read() as conn:
            channel = conn.default_channel
            if not hasattr(channel, "_q_for_pri"):  # only kombu's Redis transport lists
                return None
            client = channel.client  # applies the transport's key prefix itself
            pipe = client.pipeline(transaction=True)
            for queue in queues:
                for priority in channel.priority_steps:
                    pipe.lrange(channel._q_for_pri(queue, priority), 0, -1)
            pipe.hvals(channel.unacked_key)
            *waiting, reserved = pipe.execute()
    except Exception:  # noqa: BLE001 - unknown is not "empty": never re-send on a guess
        log.warning("broker: could not list its messages", exc_info=True)
        return None
    messages = [json.loads(raw) for batch in waiting for raw in batch]
    messages += [json.loads(raw)[0] for raw in reserved]
    return {m.get("headers", {}).get("id", "") for m in messages} - {""}
