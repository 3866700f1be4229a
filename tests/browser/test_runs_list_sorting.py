"""#16 §9, §15: the runs list's sparklines show the whole run with its incidents and its
metric columns sort from the keyboard; the result page groups its fingerprint. Screenshots
at desktop and phone width."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import login, shot
from tests.browser.test_dashboard import _seed_project

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}


def names(page: Any) -> list[str]:
    return page.locator("#runs tbody tr td:nth-child(2) > a").all_text_contents()


def test_sparkline_and_metric_sorting(
    live_server_proc: Any, project_a: Any, page: Any, artifacts_dir: Path
) -> None:
    seeded = _seed_project(project_a)
    url = live_server_proc.url
    login(page, url)
    page.goto(f"{url}/p/proj-a/")
    train = page.locator(f'#runs tr[data-run="{seeded["train"].pk}"]')
    # The drift at steps 300-380 of 600 is on the line and shaded as an incident.
    assert train.locator("svg.spark rect.incident").count() == 1
    assert "steps 0 to 599" in train.locator("svg.spark").get_attribute("aria-label")
    assert train.locator("svg.spark line.threshold").count() == 1
    shot(page, artifacts_dir, "numbers-runs-list")

    header = page.locator("#runs thead th", has_text="kl_k3").first
    header.locator("a.sort").focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**sort=-kl_k3**")
    header = page.locator("#runs thead th", has_text="kl_k3").first
    assert header.get_attribute("aria-sort") == "descending"
    assert "▼" in page.evaluate(
        "el => getComputedStyle(el, '::after').content", header.locator("a.sort").element_handle()
    )
    # The fp32-head run halves every value; the comparison run has no kl_k3 series: last.
    assert names(page) == ["grpo-qwen-bf16", "grpo-qwen-fp32-head", "preflight-tiny"]
    header.locator("a.sort").focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**sort=kl_k3**")
    assert (
        page.locator("#runs thead th", has_text="kl_k3").first.get_attribute("aria-sort")
        == "ascending"
    )
    assert names(page) == ["grpo-qwen-fp32-head", "grpo-qwen-bf16", "preflight-tiny"]

    page.goto(f"{url}/jobs/{seeded['job'].pk}/")
    groups = page.locator("#fingerprint-table tr.group th").all_text_contents()
    assert groups and groups[0] in ("Model and prompts", "Engine")
    shot(page, artifacts_dir, "numbers-job")
    page.goto(f"{url}/runs/{seeded['train'].pk}/")
    page.wait_for_selector(".chart-panel .uplot", timeout=15000)
    page.wait_for_function("!document.body.innerText.includes('Loading points')", timeout=15000)
    shot(page, artifacts_dir, "numbers-run")

    page.set_viewport_size(PHONE)
    for name, path in (
        ("runs-list", "/p/proj-a/"),
        ("job", f"/jobs/{seeded['job'].pk}/"),
        ("run", f"/runs/{seeded['train'].pk}/"),
    ):
        page.goto(url + path)
        page.wait_for_load_state("networkidle")
        shot(page, artifacts_dir, f"numbers-{name}-phone")
    assert page.js_errors == []
    out = Path("/tmp/numbers-shots")
    out.mkdir(exist_ok=True)
    for png in (artifacts_dir / "screenshots").glob("numbers-*.png"):
        shutil.copy(png, out / png.name)
