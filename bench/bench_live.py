"""Live latency: from a POST of one step's points to each viewer's websocket, with 50 viewers,
against the same path with 1 viewer and a bare Redis PUBLISH -> subscriber round trip, all
measured in the same run.

Starts its own daphne on a scratch database (as bench_ingest.py does), opens the sockets
itself with the `websockets` client (logged in by a session cookie), and posts one step at
a time, 20 metrics per step, as a trainer does. Latency of one (step, viewer) = the time
the viewer received the step minus the time the POST was sent. Prints p50/p95/p99 and the
ratios; asserts nothing.

    python bench/bench_live.py [--viewers 50] [--steps 300] [--interval 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import ROOT, Parity, stop  # noqa: E402 - a sibling script, not a package

KEYS = [f"metric_{i:02d}" for i in range(20)]
# Steps posted first to warm every path up, left out of the figures.
WARM_UP_STEP = 10_000_000


def quantiles(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] * 1000

    return {"p50": q(0.50), "p95": q(0.95), "p99": q(0.99), "max": s[-1] * 1000}


def line(label: str, qs: dict[str, float]) -> str:
    return (
        f"  {label:<28} p50 {qs['p50']:6.1f} ms  p95 {qs['p95']:6.1f} ms"
        f"  p99 {qs['p99']:6.1f} ms  max {qs['max']:6.1f} ms"
    )


async def live_latency(
    parity: Parity, cookie: str, viewers: int, steps: int, interval: float
) -> tuple[list[float], list[float]]:
    """Seconds from POST to arrival, one per (step, viewer); and each POST's own seconds
    (to its response), which tells the write's share of the tail from the fan-out's."""
    import websockets

    run_id = parity.create_run(f"live-{viewers}")
    ws_url = parity.url.replace("http://", "ws://") + f"/ws/runs/{run_id}/"
    headers = {"Origin": parity.url, "Cookie": cookie}
    sent: dict[int, float] = {}
    posts: list[float] = []
    latencies: list[float] = []
    sockets = [
        await websockets.connect(ws_url, additional_headers=headers, max_size=None)
        for _ in range(viewers)
    ]

    async def listen(ws: Any) -> None:
        seen = 0
        while seen < steps:
            message = json.loads(await ws.recv())
            arrived = time.perf_counter()
            if message.get("kind") != "points":
                continue
            step = message["data"]["points"][0]["step"]
            if step in sent:  # not a warm-up step
                latencies.append(arrived - sent[step])
                seen += 1

    listeners = [asyncio.create_task(listen(ws)) for ws in sockets]
    warm_up = [WARM_UP_STEP + i for i in range(20)]
    async with httpx.AsyncClient(base_url=parity.url, headers=parity.headers, timeout=60) as c:
        for step in [*warm_up, *range(steps)]:
            body = {"points": [{"key": k, "step": step, "value": 0.5 + step} for k in KEYS]}
            started = time.perf_counter()
            if step < WARM_UP_STEP:
                sent[step] = started
            r = await c.post(f"/api/runs/{run_id}/points", json=body)
            r.raise_for_status()
            if step < WARM_UP_STEP:
                posts.append(time.perf_counter() - started)
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - started)))
    await asyncio.wait_for(asyncio.gather(*listeners), timeout=120)
    for ws in sockets:
        await ws.close()
    return latencies, posts


async def redis_round_trip(url: str, n: int, interval: float) -> list[float]:
    """PUBLISH -> one subscriber, the floor under any Redis-carried broadcast."""
    from redis import asyncio as aioredis

    sub = aioredis.Redis.from_url(url)
    pub = aioredis.Redis.from_url(url)
    pubsub = sub.pubsub()
    await pubsub.subscribe("bench-live-floor")
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    payload = json.dumps({"points": [{"key": k, "step": 1, "value": 0.5} for k in KEYS]})
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await pub.publish("bench-live-floor", payload)
        while (await pubsub.get_message(timeout=5)) is None:
            pass
        out.append(time.perf_counter() - started)
        await asyncio.sleep(interval)
    await pubsub.aclose()
    await sub.aclose()
    await pub.aclose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--viewers", type=int, default=50)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between POSTs")
    args = ap.parse_args()
    log_dir = ROOT / "test-artifacts"
    log_dir.mkdir(exist_ok=True)
    # The session this script signs in with must be signed with the server's key.
    os.environ["SECRET_KEY"] = "bench-only"
    parity = Parity(log_dir, db="parity_bench_live")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        from django.contrib.auth.models import User
        from django.test import Client

        client = Client()
        client.force_login(User.objects.get(username="bench"))
        cookie = f"sessionid={client.cookies['sessionid'].value}"
        print(
            f"Live latency, POST -> websocket, one POST per step ({len(KEYS)} metrics), "
            f"{args.steps} steps every {args.interval * 1000:.0f} ms"
        )
        floor = asyncio.run(redis_round_trip(parity.env["REDIS_URL"], args.steps, args.interval))
        one, posts_one = asyncio.run(live_latency(parity, cookie, 1, args.steps, args.interval))
        many, posts_many = asyncio.run(
            live_latency(parity, cookie, args.viewers, args.steps, args.interval)
        )
        results = {
            "redis_publish_round_trip": quantiles(floor),
            "viewers_1": quantiles(one),
            f"viewers_{args.viewers}": quantiles(many),
            "post_response_1": quantiles(posts_one),
            f"post_response_{args.viewers}": quantiles(posts_many),
        }
        print(line("bare Redis PUBLISH->SUB", results["redis_publish_round_trip"]))
        print(line("POST -> 1 viewer", results["viewers_1"]))
        print(line(f"POST -> {args.viewers} viewers", results[f"viewers_{args.viewers}"]))
        print(line("POST -> response (1 viewer)", results["post_response_1"]))
        print(line(f"POST -> response ({args.viewers})", results[f"post_response_{args.viewers}"]))
        m, o = results[f"viewers_{args.viewers}"], results["viewers_1"]
        print(
            f"  ratio {args.viewers} viewers / 1 viewer: p50 {m['p50'] / o['p50']:.2f}x,"
            f" p99 {m['p99'] / o['p99']:.2f}x  (target: {args.viewers}-viewer p99 < 100 ms)"
        )
        print(f"  received {len(many):,} of {args.steps * args.viewers:,} (step, viewer) updates")
        print("\n" + json.dumps(results, indent=1))
    finally:
        stop(parity.proc)


if __name__ == "__main__":
    main()
