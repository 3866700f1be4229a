"""#15 §12: /api/docs renders from our own static files, with no request to another host."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser.conftest import login, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_api_docs_render_offline(
    live_server_proc: Any, alice: Any, page: Any, artifacts_dir: Path
) -> None:
    own = urlsplit(live_server_proc.url).netloc
    outside: list[str] = []

    def only_our_host(route: Any) -> None:
        if urlsplit(route.request.url).netloc == own:
            route.continue_()
        else:  # as on a machine with no internet: the page must not need it
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_our_host)
    login(page, live_server_proc.url)
    page.goto(f"{live_server_proc.url}/api/docs")
    page.wait_for_selector(".opblock", timeout=15000)  # operations listed from the schema
    shot(page, artifacts_dir, "api-docs", full_page=False)
    assert outside == []
    assert page.js_errors == []
