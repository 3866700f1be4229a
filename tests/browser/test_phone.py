"""#16 §16: every page fits a phone (390x844): nothing wider than the screen (tables scroll
inside themselves), and the navigation stays inside its bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import login, shot
from tests.browser.test_dashboard import _seed_project

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTH = 390

# The page's own width, and each nav item that ends up outside the nav bar.
MEASURE = """() => {
  const bar = document.querySelector("header nav, nav");
  const box = bar ? bar.getBoundingClientRect() : null;
  const outside = bar ? [...bar.querySelectorAll("a, button")].filter((el) => {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) return false;  // collapsed away: fine
    return r.right > window.innerWidth + 1 || r.bottom > box.bottom + 1 || r.top < box.top - 1;
  }).map((el) => el.textContent.trim()) : [];
  const wide = [...document.querySelectorAll("main *")]
    .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1)
    .slice(0, 4).map((el) => `${el.tagName}.${el.className}#${el.id}`);
  return {width: document.documentElement.scrollWidth, outside, wide};
}"""


def test_every_page_fits_a_phone(
    live_server_proc: Any, project_a: Any, page: Any, artifacts_dir: Path
) -> None:
    from dashboard.alerts.models import WebhookEndpoint

    url = live_server_proc.url
    seeded = _seed_project(project_a)
    endpoint = WebhookEndpoint.objects.create(project=project_a, name="ops", url="https://e.com/")
    page.set_viewport_size({"width": WIDTH, "height": 844})
    login(page, url)
    pages = {
        "runs-list": "/p/proj-a/",
        "run": f"/runs/{seeded['train'].pk}/",
        "comparison-result": f"/jobs/{seeded['job'].pk}/",
        "job-running": f"/jobs/{seeded['running'].pk}/",
        "compare": f"/p/proj-a/compare/?run={seeded['train'].pk}&run={seeded['other'].pk}",
        "new-comparison": "/p/proj-a/new/comparison/",
        "new-replay": "/p/proj-a/new/replay/",
        "new-checklist": "/p/proj-a/new/checklist/",
        "alert-rules": "/p/proj-a/alerts/",
        "incidents": "/p/proj-a/alerts/incidents/",
        "endpoints": "/p/proj-a/alerts/endpoints/",
        "endpoint": f"/p/proj-a/alerts/endpoints/{endpoint.pk}/",
        "tokens": "/p/proj-a/tokens/",
    }
    problems = {}
    for name, path in pages.items():
        page.goto(url + path)
        page.wait_for_load_state("networkidle")
        measured = page.evaluate(MEASURE)
        shot(page, artifacts_dir, f"phone-{name}")
        if measured["width"] > WIDTH or measured["outside"]:
            problems[name] = measured
    assert problems == {}
    assert not page.js_errors, page.js_errors
