"""docker-compose.yml is checked by docker-compose itself (no Docker engine runs here)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def _config(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed: run scripts/test-tools.sh")
    env = dict(os.environ, SECRET_KEY="compose-check")
    return subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), "config", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def test_compose_file_is_accepted() -> None:
    result = _config("-q")
    assert result.returncode == 0, result.stderr


def test_compose_has_every_process_of_the_architecture() -> None:
    result = _config("--services")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {
        "postgres",
        "redis",
        "web",
        "worker-default",
        "worker-gpu",
    }


def test_gpu_worker_runs_solo_on_the_gpu_queue_with_nvidia() -> None:
    result = _config()
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "runtime: nvidia" in text
    assert "-Q gpu --pool solo --concurrency 1" in text
