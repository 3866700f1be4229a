"""A real SGLang server process for the SGLang engine tests, started from the SGLang venv
(scripts/install-sglang.sh) with scripts/sglang-cpu-server.sh; tests skip, saying why, when
that venv is absent."""

from __future__ import annotations

import os
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


@contextmanager
def start_server(model: Path, log_path: Path) -> Iterator[str]:
    """Run an SGLang server on `model` (float32, seed 0) for the `with` block; yields its base
    URL once /health answers. A server that dies early fails with its log's tail."""
    from workers.engines.launch import start_sglang_server

    sglang_python()
    try:
        server = start_sglang_server(
            str(model), log_path, dtype="float32", timeout_s=START_TIMEOUT_S
        )
    except RuntimeError as exc:
        pytest.fail(f"SGLang server ({log_path}): {exc}")
    try:
        yield server.url
    finally:
        server.stop()
