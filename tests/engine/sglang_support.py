"""A real SGLang server process for the SGLang engine tests, started from the SGLang venv
(scripts/install-sglang.sh) with scripts/sglang-cpu-server.sh; tests skip, saying why, when
that venv is absent."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SGLANG_VENV = Path(os.environ.get("SGLANG_VENV", ROOT / "var" / "sglang-venv"))
START_TIMEOUT_S = 300.0


def sglang_python() -> Path:
    """The SGLang venv's python, or skip the test naming the missing path and the fix."""
    python = SGLANG_VENV / "bin" / "python"
    if not (SGLANG_VENV / ".installed").exists() or not python.exists():
        pytest.skip(
            f"SGLang venv absent at {SGLANG_VENV} (no .installed stamp): "
            "run `bash scripts/install-sglang.sh` (or set SGLANG_VENV)"
        )
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def start_server(model: Path, log_path: Path) -> Iterator[str]:
    """Run an SGLang server on `model` (float32, seed 0) for the `with` block; yields its base
    URL once /health answers. A server that dies early fails with its log's tail."""
    from workers.engines.sglang import SGLangClient, SGLangError

    sglang_python()
    port = free_port()
    cmd = [
        "bash", str(ROOT / "scripts" / "sglang-cpu-server.sh"), str(model),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--random-seed", "0", "--max-total-tokens", "8192", "--mem-fraction-static", "0.05",
        "--skip-server-warmup", "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "SGLANG_VENV": str(SGLANG_VENV)}
    with open(log_path, "wb") as log:
        # Own session: SGLang forks a scheduler and a detokenizer; the group goes down together.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        with SGLangClient(url) as client:
            try:
                client.wait_ready(START_TIMEOUT_S, alive=lambda: proc.poll() is None)
            except SGLangError as exc:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"{exc}\n--- SGLang server log ({log_path}) ---\n{tail}")
        yield url
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
