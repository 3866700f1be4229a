"""Issue 15 §3: text Postgres cannot store (NUL) is refused with a clear 400 wherever it
comes from — path, query string or form field — never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


@pytest.mark.parametrize(
    "url",
    [
        "/api/projects/%00/webhook-endpoints",
        "/api/projects/%00/alert-rules",
        "/api/projects/%00/incidents",
        "/api/projects/proj-a/incidents?state=%00",
        "/api/projects/proj-a/runs?tag=%00",
    ],
)
def test_nul_in_the_path_or_query_is_a_400_that_says_so(
    client: Any, alice_token: str, url: str
) -> None:
    response = client.get(url, HTTP_AUTHORIZATION=f"Bearer {alice_token}")
    assert response.status_code == 400, response.content[:500]
    assert "NUL" in response.json()["detail"]


def test_nul_in_a_page_form_is_a_400_and_nothing_is_saved(
    alice_client: Any, project_a: Any
) -> None:
    from dashboard.core.models import ApiToken, Job

    response = alice_client.post(reverse("tokens", args=["proj-a"]), {"name": "ci\x00"})
    assert response.status_code == 400
    assert b"NUL" in response.content
    assert not ApiToken.objects.filter(project=project_a).exists()
    url = reverse("new_job", args=["proj-a", "comparison"])
    for field in ("run_name", "tags"):
        response = alice_client.post(url, {field: "x\x00"})
        assert response.status_code == 400
    assert not Job.objects.exists()
