"""The same `mlflow` client logging the same points to a real MLflow tracking server and to
Parity, in one run: points/s of each and their ratio.

Both sides get `MlflowClient().log_batch` with 1,000 metrics per call (MLflow's own limit per
request), one key, consecutive steps, from one thread, so the client's own cost is the same on
both sides; the sides take turns, a tenth of the points at a time, so that a change of load on
the machine falls on both. (a) `mlflow server` from the venv `make bench` builds
(requirements/mlflow-server.txt), on the shared Postgres with a database of its own, one
worker; (b) daphne serving Parity on a scratch database. A warm-up batch goes to each first.
Each side's stored points are counted afterwards through the client (get_metric_history).

    python bench/bench_mlflow.py [--points 50000] [--rounds 10] [--mlflow-venv var/mlflow-server]

Prints figures and the ratio; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench_ingest import BATCH, ROOT, MLflow, Parity, stop

PARITY_DB = "parity_bench_mlflow"
MLFLOW_DB = "mlflow_bench_client"
KEY = "kl_k3"


def batches(n_points: int) -> list[list[Any]]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        [Metric(KEY, (step % 977) * 1e-4, now, step) for step in range(start, start + BATCH)]
        for start in range(0, n_points, BATCH)
    ]


def client_seconds(chunk: list[list[Any]]) -> float:
    """What MlflowClient.log_batch spends before sending: protos, then protobuf's JSON."""
    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.utils.proto_json_utils import message_to_json

    started = time.perf_counter()
    for metrics in chunk:
        json.loads(message_to_json(LogBatch(metrics=[m.to_proto() for m in metrics], run_id="1")))
    return time.perf_counter() - started


class Side:
    """One server as the mlflow client sees it: a run to log into, and the time spent."""

    def __init__(self, name: str, url: str) -> None:
        from mlflow.tracking import MlflowClient

        self.name = name
        self.client = MlflowClient(tracking_uri=url)
        experiment = self.client.create_experiment(f"bench-{int(time.time())}")
        warm = self.client.create_run(experiment, run_name="warm-up").info.run_id
        self.client.log_batch(warm, metrics=batches(BATCH)[0], synchronous=True)
        self.run_id = self.client.create_run(experiment, run_name="bench").info.run_id
        self.points = 0
        self.seconds = 0.0

    def send(self, chunk: list[list[Any]]) -> None:
        started = time.perf_counter()
        for metrics in chunk:
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
        self.seconds += time.perf_counter() - started
        self.points += sum(len(m) for m in chunk)

    def report(self) -> float:
        rate = self.points / self.seconds
        stored = len(self.client.get_metric_history(self.run_id, KEY))
        print(f"  {self.name:<7} {rate:>10,.0f} points/s  ({stored:,} of {self.points:,} stored)")
        return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=50_000, help="points per server")
    ap.add_argument("--rounds", type=int, default=10, help="alternations between the servers")
    ap.add_argument("--mlflow-venv", type=Path, default=ROOT / "var" / "mlflow-server")
    args = ap.parse_args()
    if not (args.mlflow_venv / "bin" / "mlflow").exists():
        sys.exit(f"No MLflow server in {args.mlflow_venv}: `make bench` installs it.")
    log_dir = ROOT / "test-artifacts"
    log_dir.mkdir(exist_ok=True)
    # One failed request must not turn into minutes of client backoff.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"

    mlflow = parity = None
    try:
        mlflow = MLflow(args.mlflow_venv, log_dir, db=MLFLOW_DB)
        parity = Parity(log_dir, db=PARITY_DB)
        # The one-variable setup of docs/mlflow.md (MLflow's server ignores the header).
        os.environ["MLFLOW_TRACKING_TOKEN"] = parity.token
        sides = [Side("mlflow", mlflow.url), Side("parity", parity.url)]
        work = batches(args.points)
        per_round = max(1, len(work) // args.rounds)
        print(
            f"MlflowClient.log_batch, {BATCH} metrics per call, one thread, "
            f"{args.points:,} points per server in rounds that alternate between them"
        )
        # Alternating rounds: a load change on the machine hits both sides alike.
        for start in range(0, len(work), per_round):
            for side in sides:
                side.send(work[start : start + per_round])
        mlflow_rate, parity_rate = (side.report() for side in sides)
        print(f"  ratio   {parity_rate / mlflow_rate:,.1f}x MLflow's tracking server")
        # Both sides pay the client's own work (protos to JSON) per call; without it, the
        # servers (and the HTTP between) compare as follows.
        sample = work[: max(1, len(work) // 5)]
        per_call = client_seconds(sample) / len(sample)
        mlflow_s, parity_s = (side.seconds - per_call * len(work) for side in sides)
        print(
            f"  the client's own work: {per_call * 1000:.1f} ms of each call; "
            f"without it {mlflow_s / parity_s:,.1f}x"
        )
        results = {
            "mlflow_points_per_s": mlflow_rate,
            "parity_points_per_s": parity_rate,
            "client_ms_per_call": per_call * 1000,
            "ratio_without_client": mlflow_s / parity_s,
        }
        print(json.dumps(results, indent=1))
    finally:
        stop(parity.proc if parity else None)
        stop(mlflow.proc if mlflow else None)


if __name__ == "__main__":
    main()
