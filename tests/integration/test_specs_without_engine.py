"""The web side works where the engine is not installed: every job kind's spec validates
through the API and every new-job form renders, in a Python where importing torch, vLLM or
transformers fails (the defect: specs lived in engine modules that import torch).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from dashboard.core.models import ApiToken, Job
from tests.conftest import ROOT, process_env
from workers.specs import SPEC_KINDS

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_every_spec_validates_and_every_form_renders_without_the_engine(
    alice: Any, project_a: Any
) -> None:
    _, token = ApiToken.issue(alice, project_a, "no-engine")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "integration" / "without_engine.py")],
        cwd=ROOT,
        env=process_env(PARITY_USER="alice", PARITY_PROJECT="proj-a", PARITY_TOKEN=token),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["torch_blocked"] and seen["engine_modules"] == []
    assert sorted(seen["kinds"]) == sorted(SPEC_KINDS)
    for kind, got in seen["kinds"].items():
        assert got["default"], f"{kind}: the default spec must validate to the model's defaults"
        assert got["bad"]["status"] == 422, kind
        assert got["bad"]["field"] == "spec.sampling.temperature", kind
        assert got["bad"]["message"].startswith("sampling.temperature: "), kind
        assert got["api_bad"]["status"] == 422, kind
        assert got["api_bad"]["body"]["field"] == "spec.sampling.temperature", kind
        assert got["page"]["status"] == 200, kind
        assert got["page"]["fields"] > 0 and got["page"]["missing"] == [], kind
    assert not Job.objects.exists()
