"""The checklist's judgement, recommendations and Markdown import without torch, vLLM or
transformers: a fresh interpreter in which importing any of them fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys

    BLOCKED = ("torch", "vllm", "transformers")

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())

    import workers.checklist
    import workers.checklist.markdown
    import workers.checklist.recommendations
    import workers.checklist.rows
    from workers.checklist import build_rows, render_markdown
    from workers.specs import ChecklistSpec

    rows = build_rows(ChecklistSpec(include_replay=False), {}, {})
    assert render_markdown({"verdict": "fail", "rows": rows}).startswith("## vLLM V1")
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("ok")
    """
)


def test_rows_markdown_and_recommendations_import_without_the_engine() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
