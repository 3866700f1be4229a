"""Who may see what: pages, API, tokens."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard.core.models import ApiToken, Run

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def test_anonymous_page_redirects_to_login(client: Any) -> None:
    response = client.get("/p/proj-a/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_login_page_healthz_and_static_are_public(client: Any) -> None:
    assert client.get("/accounts/login/").status_code == 200
    assert client.get("/healthz").status_code == 200


def test_anonymous_api_gets_401_json(client: Any) -> None:
    response = client.get("/api/projects")
    assert response.status_code == 401
    assert "Bearer" in response.json()["detail"]


def test_member_sees_own_project_dashboard(alice_client: Any) -> None:
    response = alice_client.get("/", follow=True)
    assert response.status_code == 200
    assert b"proj-a" in response.content


def test_other_projects_run_is_404_on_page_and_api(
    make_member: Any, client: Any, alice: Any
) -> None:
    make_member("bob", "proj-b")
    from django.contrib.auth.models import User

    from dashboard.core.models import Project

    bobs_run = Run.objects.create(project=Project.objects.get(slug="proj-b"), name="secret")
    client.force_login(alice)
    assert client.get(f"/runs/{bobs_run.pk}/").status_code == 404
    assert client.get(f"/api/runs/{bobs_run.pk}").status_code == 404
    client.force_login(User.objects.get(username="bob"))
    assert client.get(f"/runs/{bobs_run.pk}/").status_code == 200


def test_token_authenticates_api_and_records_last_use(client: Any, alice_token: str) -> None:
    response = client.get("/api/projects", HTTP_AUTHORIZATION=f"Bearer {alice_token}")
    assert response.status_code == 200
    assert [p["slug"] for p in response.json()] == ["proj-a"]
    assert ApiToken.objects.get().last_used_at is not None


def test_token_is_scoped_to_its_project(
    make_member: Any, client: Any, alice: Any, alice_token: str
) -> None:
    # alice is a member of proj-c too, but her token was issued for proj-a only.
    make_member("alice", "proj-c")
    response = client.get("/api/projects", HTTP_AUTHORIZATION=f"Bearer {alice_token}")
    assert [p["slug"] for p in response.json()] == ["proj-a"]


def test_revoked_token_is_refused(client: Any, alice_token: str) -> None:
    ApiToken.objects.get().revoke()
    response = client.get("/api/projects", HTTP_AUTHORIZATION=f"Bearer {alice_token}")
    assert response.status_code == 401


def test_wrong_token_is_refused(client: Any, alice_token: str) -> None:
    response = client.get("/api/projects", HTTP_AUTHORIZATION="Bearer pty_not-a-real-token")
    assert response.status_code == 401


def test_tokens_are_not_stored_in_clear(alice_token: str) -> None:
    token = ApiToken.objects.get()
    stored = " ".join(str(getattr(token, f.attname)) for f in ApiToken._meta.fields)
    assert alice_token not in stored
    assert token.prefix == alice_token[:12]
    assert len(token.hashed) == 64


def test_token_page_shows_a_new_token_once(alice_client: Any) -> None:
    response = alice_client.post("/p/proj-a/tokens/", {"name": "cluster"})
    clear = response.context["created_clear"]
    assert clear.startswith("pty_") and clear.encode() in response.content
    again = alice_client.get("/p/proj-a/tokens/")
    assert clear.encode() not in again.content
    assert clear[:12].encode() in again.content


def test_revoke_from_the_page(alice_client: Any, alice_token: str) -> None:
    token = ApiToken.objects.get()
    alice_client.post(f"/p/proj-a/tokens/{token.pk}/revoke")
    token.refresh_from_db()
    assert token.revoked_at is not None


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "Authentication required"),
        ("Bearer pty_not-a-token", "token is not valid"),
        ("Basic YWxpY2U6eA==", "Authentication required"),
    ],
)
def test_a_write_without_a_valid_token_is_401_with_the_reason_not_a_csrf_403(
    header: str | None, reason: str
) -> None:
    # Issue 15 §9: a missing, invalid or revoked token on POST/PATCH answered 403 "CSRF check
    # Failed" (the session authenticator's CSRF check), hiding the real reason.
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    for method, path in (("post", "/api/runs"), ("patch", "/api/runs/1")):
        response = getattr(client, method)(
            path, data={"project": "proj-a", "name": "r"}, content_type="application/json", **extra
        )
        assert response.status_code == 401, (method, response.content[:300])
        assert reason in response.json()["detail"]


def test_a_revoked_token_is_401_saying_so(alice_token: str) -> None:
    from django.test import Client

    from dashboard.core.models import ApiToken

    for token in ApiToken.objects.all():
        token.revoke()
    client = Client(enforce_csrf_checks=True)
    response = client.post(
        "/api/runs",
        data={"project": "proj-a", "name": "r"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {alice_token}",
    )
    assert response.status_code == 401
    assert "not valid" in response.json()["detail"]


def test_the_login_page_locks_out_a_password_guesser(alice: Any) -> None:
    # Issue 15 §10: 20 wrong passwords in 10 s, then the right one worked.
    from django.test import Client

    client = Client()
    for _ in range(20):
        client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    response = client.post("/accounts/login/", {"username": "alice", "password": "pw-alice"})
    assert response.status_code == 429
    assert b"locked" in response.content.lower()
    assert "_auth_user_id" not in client.session
