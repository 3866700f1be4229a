"""examples/synthetic_grpo.py as a new user runs it (#16 §13): its --help says where the
server and the token come from, and --url/--token work without the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from dashboard.core.models import MetricPoint, Run
from tests.conftest import ROOT, Server

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SCRIPT = str(ROOT / "examples" / "synthetic_grpo.py")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARITY_")}
    return env | {"PYTHONPATH": str(ROOT)}


def test_help_names_the_url_and_token_options_and_variables() -> None:
    out = subprocess.run(
        [sys.executable, SCRIPT, "--help"], env=_env(), capture_output=True, text=True, check=True
    ).stdout
    for needle in ("--url", "--token", "PARITY_URL", "PARITY_TOKEN"):
        assert needle in out


def test_url_and_token_options_send_the_run(
    live_server_proc: Server, alice_token: str, project_a: Any
) -> None:
    done = subprocess.run(
        [sys.executable, SCRIPT, "--url", live_server_proc.url, "--token", alice_token,
         "--project", "proj-a", "--run", "example", "--steps", "3", "--sleep", "0",
         "--batch", "4", "--max-len", "16"],
        env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run = Run.objects.get(project=project_a, name="example")
    assert MetricPoint.objects.filter(run=run, key="kl_k3").count() == 3


def test_without_a_token_it_says_how_to_give_one() -> None:
    done = subprocess.run(
        [sys.executable, SCRIPT, "--url", "http://127.0.0.1:9", "--steps", "1"],
        env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--token" in done.stderr and "PARITY_TOKEN" in done.stderr
