"""Ingest throughput and chart reads, each against its baseline measured in the same run.

1. Points/s through the HTTP API with 1,000-point batches (a daphne this script starts, on a
   scratch database), against two baselines measured in the same run:
   - the physical limit: a bare `COPY` of the same rows into the same table, 1,000 rows per
     transaction (committed, as a 200 from the API is), from as many connections;
   - an MLflow tracking server on the same Postgres doing `log-batch` with 1,000-point
     batches (MLflow's own limit per request). The MLflow side is skipped, with a note,
     when no MLflow is installed in --mlflow-venv (`python -m venv /tmp/mlflow-venv &&
     /tmp/mlflow-venv/bin/pip install mlflow psycopg2-binary`).
2. Reading a 1,000,000-point series downsampled to 2,000 points (GET /api/runs/<id>/series),
   first read and repeated reads, against fetching the raw series (SQL into Python, and the
   CSV export over HTTP).

Prints figures and ratios; asserts nothing.

    python bench/bench_ingest.py [--points 1000000] [--concurrency 1,4] [--mlflow-points 50000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PG = "postgres://postgres@127.0.0.1:5432"
BENCH_DB = "parity_bench"
MLFLOW_DB = "mlflow_bench"
BATCH = 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-c", sql],
        check=True,
        capture_output=True,
    )


def recreate_db(name: str) -> None:
    psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    psql(f"CREATE DATABASE {name}")


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited; see {log}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"server did not answer within {timeout} s; see {log}")


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def throughput(n_batches: int, concurrency: int, send: Callable[[int], None]) -> float:
    """Points/s for n_batches sends of BATCH points over `concurrency` threads."""
    next_batch = iter(range(n_batches))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                i = next(next_batch, None)
            if i is None:
                return
            try:
                send(i)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} senders failed: {errors[0]!r}")
    return n_batches * BATCH / elapsed


# --- Parity -------------------------------------------------------------------------------


class Parity:
    def __init__(self, log_dir: Path, db: str = BENCH_DB) -> None:
        recreate_db(db)
        self.env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="dashboard.settings",
            DATABASE_URL=f"{PG}/{db}",
            REDIS_URL="redis://127.0.0.1:6379/13",
            CHANNELS_PREFIX="parity-bench",
            DEBUG="0",
            SECRET_KEY="bench-only",
            SECURE_SSL_REDIRECT="0",
            LOG_LEVEL="WARNING",
        )
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env, check=True
        )
        os.environ.update(
            {
                k: self.env[k]
                for k in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "CHANNELS_PREFIX")
            }
        )
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        # Django's logging config shows every request httpx makes; the figures are the output.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        from django.contrib.auth.models import User

        from dashboard.core.models import ApiToken, Membership, Project, Run

        user = User.objects.create(username="bench")
        project = Project.objects.create(name="bench", slug="bench")
        Membership.objects.create(user=user, project=project)
        _, self.token = ApiToken.issue(user, project, "bench")
        self.run_model = Run
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / "daphne-bench.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "dashboard.asgi:application",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
        )
        wait_http(self.url + "/healthz", self.proc, self.log)
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def copy_sender(self, run_id: int, key: str, n_batches: int) -> Callable[[int], None]:
        """The bare-COPY baseline: the rows the API would write for batch i, one COPY and one
        commit per batch, a connection per sender thread. Each batch's COPY text is built
        before the clock starts, so the baseline is Postgres's own limit, not Python's."""
        import psycopg

        local = threading.local()
        now = datetime.now(UTC).isoformat()
        payloads = [
            "".join(
                f"{run_id}\t{key}\t{step}\t{(step % 977) * 1e-4!r}\t{now}\n"
                for step in range(i * BATCH, (i + 1) * BATCH)
            ).encode()
            for i in range(n_batches)
        ]

        def send(i: int) -> None:
            if not hasattr(local, "conn"):
                local.conn = psycopg.connect(self.env["DATABASE_URL"])
            with local.conn.cursor() as cur:
                with cur.copy(
                    "COPY core_metricpoint (run_id, key, step, value, wall_time) FROM STDIN"
                ) as copy:
                    copy.write(payloads[i])
            local.conn.commit()

        return send

    def create_run(self, name: str) -> int:
        r = httpx.post(
            self.url + "/api/runs",
            timeout=120,
            json={"project": "bench", "name": name},
            headers=self.headers,
        )
        r.raise_for_status()
        return int(r.json()["id"])

    def sender(self, run_id: int, key: str) -> Callable[[int], None]:
        local = threading.local()

        def send(i: int) -> None:
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=self.url, headers=self.headers, timeout=60)
            base = i * BATCH
            points = [
                {"key": key, "step": base + j, "value": ((base + j) % 977) * 1e-4}
                for j in range(BATCH)
            ]
            r = local.client.post(f"/api/runs/{run_id}/points", json={"points": points})
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text[:200]}")

        return send


# --- MLflow -------------------------------------------------------------------------------


class MLflow:
    def __init__(self, venv: Path, log_dir: Path, db: str = MLFLOW_DB) -> None:
        recreate_db(db)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / "mlflow-bench.log"
        artifacts = tempfile.mkdtemp(prefix="mlflow-artifacts-")
        self.proc = subprocess.Popen(
            [
                str(venv / "bin" / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--backend-store-uri",
                f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}",
                "--default-artifact-root",
                artifacts,
                # One process, like the daphne on the Parity side (and uvicorn's multi-worker
                # supervisor kills workers that start slowly on a busy machine).
                "--workers",
                "1",
            ],
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
        )
        wait_http(self.url + "/health", self.proc, self.log, timeout=240)
        r = httpx.post(
            self.url + "/api/2.0/mlflow/experiments/create", json={"name": "bench"}, timeout=120
        )
        r.raise_for_status()
        self.experiment = r.json()["experiment_id"]

    def create_run(self) -> str:
        r = httpx.post(
            self.url + "/api/2.0/mlflow/runs/create",
            json={"experiment_id": self.experiment, "start_time": int(time.time() * 1000)},
            timeout=120,
        )
        r.raise_for_status()
        return str(r.json()["run"]["info"]["run_id"])

    def sender(self, run_id: str, key: str) -> Callable[[int], None]:
        local = threading.local()

        def send(i: int) -> None:
            # The REST call MlflowClient.log_batch makes, minus the Python client's overhead.
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=self.url, timeout=120)
            base = i * BATCH
            now = int(time.time() * 1000)
            metrics = [
                {"key": key, "value": ((base + j) % 977) * 1e-4, "timestamp": now, "step": base + j}
                for j in range(BATCH)
            ]
            r = local.client.post(
                "/api/2.0/mlflow/runs/log-batch", json={"run_id": run_id, "metrics": metrics}
            )
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text[:200]}")

        return send


# --- reads --------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(round(0.95 * len(xs))) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--points", type=int, default=1_000_000, help="Parity ingest and read series size"
    )
    ap.add_argument("--concurrency", default="1,4", help="sender threads, comma-separated")
    ap.add_argument("--mlflow-venv", type=Path, default=Path("/tmp/mlflow-venv"))
    ap.add_argument(
        "--mlflow-points", type=int, default=50_000, help="points per MLflow measurement"
    )
    ap.add_argument("--reads", type=int, default=30, help="repetitions of the downsampled read")
    ap.add_argument("--raw-reads", type=int, default=3, help="repetitions of the raw fetches")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    log_dir = ROOT / "test-artifacts"
    log_dir.mkdir(exist_ok=True)
    results: dict[str, Any] = {}

    parity = Parity(log_dir)
    mlflow: MLflow | None = None
    try:
        # --- ingest: the baseline first, so a broken MLflow install fails fast
        print(f"Ingest, {BATCH}-point batches over HTTP")
        mlflow_rate: dict[int, float] = {}
        if (args.mlflow_venv / "bin" / "mlflow").exists():
            mlflow = MLflow(args.mlflow_venv, log_dir)
            for level in levels:
                rate = throughput(
                    args.mlflow_points // BATCH, level, mlflow.sender(mlflow.create_run(), "kl_k3")
                )
                mlflow_rate[level] = rate
                print(
                    f"  mlflow  concurrency {level}: {rate:>10,.0f} points/s "
                    f"({args.mlflow_points:,} points)"
                )
        else:
            print(f"  mlflow: not installed in {args.mlflow_venv}; baseline skipped")
        copy_rate: dict[int, float] = {}
        for level in levels:
            run_id = parity.create_run(f"copy-c{level}")
            n = min(args.points, 200_000)
            send = parity.copy_sender(run_id, "kl_k3", n // BATCH)
            copy_rate[level] = throughput(n // BATCH, level, send)
            print(f"  COPY    concurrency {level}: {copy_rate[level]:>10,.0f} rows/s ({n:,} rows)")
        big_run = None
        parity_rate: dict[int, float] = {}
        for level in levels:
            run_id = parity.create_run(f"ingest-c{level}")
            # The largest concurrency level writes the full series that the read part uses.
            n = args.points if level == max(levels) else min(args.points, 200_000)
            parity_rate[level] = throughput(n // BATCH, level, parity.sender(run_id, "kl_k3"))
            print(
                f"  parity  concurrency {level}: {parity_rate[level]:>10,.0f} points/s"
                f" ({n:,} points)"
            )
            if level == max(levels):
                big_run = run_id
        for level in levels:
            share = parity_rate[level] / copy_rate[level]
            print(f"  ratio   concurrency {level}: {share:6.1%} of a bare COPY (target >= 50%)")
            if level in mlflow_rate:
                ratio = parity_rate[level] / mlflow_rate[level]
                print(f"  ratio   concurrency {level}: {ratio:,.1f}x MLflow (target >= 30x)")
        results["ingest_points_per_s"] = parity_rate
        results["mlflow_points_per_s"] = mlflow_rate
        results["copy_rows_per_s"] = copy_rate

        # --- reads
        assert big_run is not None
        n_points = args.points
        print(f"\nReading a {n_points:,}-point series")
        client = httpx.Client(base_url=parity.url, headers=parity.headers, timeout=300)

        def downsampled() -> None:
            r = client.get(
                f"/api/runs/{big_run}/series", params={"key": "kl_k3", "max_points": 2000}
            )
            r.raise_for_status()
            assert len(r.json()["steps"]) <= 2000

        first = timed(downsampled, 1)[0]
        warm = timed(downsampled, args.reads)
        print(f"  downsampled to 2,000, first read (Postgres):  {first * 1000:8.0f} ms")
        print(
            f"  downsampled to 2,000, repeated reads: p50 {statistics.median(warm) * 1000:6.1f} ms,"
            f" p95 {p95(warm) * 1000:6.1f} ms (target p95 < 150 ms)"
        )

        from django.db import connection

        def raw_sql() -> None:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT step, value FROM core_metricpoint WHERE run_id = %s AND key = %s "
                    "ORDER BY step",
                    [big_run, "kl_k3"],
                )
                assert len(cursor.fetchall()) == n_points

        def raw_csv() -> None:
            with client.stream("GET", f"/api/runs/{big_run}/export.csv") as r:
                size = sum(len(chunk) for chunk in r.iter_bytes())
            assert size > n_points * 10

        sql_times = timed(raw_sql, args.raw_reads)
        csv_times = timed(raw_csv, args.raw_reads)
        print(
            f"  raw series, SQL rows into Python: p50 {statistics.median(sql_times) * 1000:8.0f} ms"
        )
        print(
            f"  raw series, CSV export over HTTP: p50 {statistics.median(csv_times) * 1000:8.0f} ms"
        )
        print(
            f"  ratio raw SQL / downsampled p95:  {statistics.median(sql_times) / p95(warm):8.1f}x"
        )
        print(
            f"  ratio raw SQL / first downsampled read:"
            f" {statistics.median(sql_times) / first:4.1f}x"
        )
        results["read_ms"] = {
            "downsampled_first": first * 1000,
            "downsampled_p50": statistics.median(warm) * 1000,
            "downsampled_p95": p95(warm) * 1000,
            "raw_sql_p50": statistics.median(sql_times) * 1000,
            "raw_csv_p50": statistics.median(csv_times) * 1000,
        }
        print("\n" + json.dumps(results, indent=1))
    finally:
        stop(parity.proc)
        if mlflow is not None:
            stop(mlflow.proc)


if __name__ == "__main__":
    main()
