"""Who may see what: sessions for pages, bearer tokens for the API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from ninja.security import HttpBearer
from ninja.security import session as ninja_session

from dashboard.core.models import ApiToken, Project, Run

# Paths anyone may reach; everything else needs a session (pages) or a token (API).
PUBLIC_PREFIXES = ("/accounts/login/", "/healthz", "/static/")


class LoginRequiredMiddleware:
    """Send anonymous visitors of any page to the login page.

    The API (`/api/`) is left to its own authentication so that it answers 401 with JSON
    instead of redirecting; websockets are guarded by the consumer.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        if (
            request.user.is_authenticated
            or path.startswith(PUBLIC_PREFIXES)
            or path.startswith("/api/")
        ):
            return self.get_response(request)
        if path.startswith("/admin/"):
            return self.get_response(request)  # the admin has its own staff login
        return redirect(f"{PUBLIC_PREFIXES[0]}?{urlencode({'next': request.get_full_path()})}")


# Why a request was not authenticated, for the 401's detail (the API's error handler).
NOT_AUTHENTICATED_BECAUSE = "parity_not_authenticated_because"


class TokenAuth(HttpBearer):
    """`Authorization: Bearer pty_…`: the token's user, scoped to the token's project."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        api_token = ApiToken.authenticate(token)
        if api_token is None:
            setattr(
                request,
                NOT_AUTHENTICATED_BECAUSE,
                "The bearer token is not valid: unknown, revoked, or its user is inactive.",
            )
            return None
        request.user = api_token.user
        request.api_token = api_token  # type: ignore[attr-defined]
        return api_token


class SessionAuth(ninja_session.SessionAuth):
    """Logged-in browser sessions may use the API too (the pages' own fetches), with
    Django's CSRF check. Only a request that has a session is checked: without one, a
    missing or bad token is a 401 with its reason, not a CSRF 403."""

    def __call__(self, request: HttpRequest) -> Any:
        if not request.user.is_authenticated:
            return None
        return super().__call__(request)


def visible_projects(request: HttpRequest) -> QuerySet[Project]:
    """The projects a request may touch: the token's own, or every membership of the user.

    Anything outside this set is answered 404, never 403, so ids of other projects'
    objects reveal nothing.
    """
    projects = Project.objects.filter(membership__user=request.user)
    token = getattr(request, "api_token", None)
    if token is not None:
        projects = projects.filter(pk=token.project_id)
    return projects


def visible_runs(request: HttpRequest) -> QuerySet[Run]:
    return Run.objects.filter(project__in=visible_projects(request))
