"""The JSON API: django-ninja, OpenAPI schema at /api/schema, interactive docs at /api/docs."""

from __future__ import annotations

import json
import logging
import secrets

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, ValidationError
from ninja.openapi.docs import Swagger

from dashboard.core.api.types import db_text
from dashboard.core.auth import NOT_AUTHENTICATED_BECAUSE, SessionAuth, TokenAuth
from dashboard.core.outages import RETRY_AFTER_S, service_down

log = logging.getLogger(__name__)


class VendoredSwagger(Swagger):
    """Swagger UI from static/vendor (django-ninja's default loads it from a CDN: blank
    offline, and a lookup to an outside host on every visit)."""

    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs: object) -> HttpResponse:
        self.settings["url"] = self.get_openapi_url(api, kwargs)
        context = {"swagger_settings": json.dumps(self.settings), "api": api}
        return render(request, "api_docs.html", context)


api = NinjaAPI(
    title="Parity API",
    version="1",
    description="Runs, metric points, comparisons and replays of the trainer-vs-vLLM mismatch.",
    auth=[TokenAuth(), SessionAuth()],
    openapi_url="/schema",
    docs_url="/docs",
    docs=VendoredSwagger(),
    urls_namespace="api",
)


class ApiError(Exception):
    """An error the caller caused: HTTP `status`, the offending `field` and the reason."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def query_text(field: str, value: str) -> None:
    """A query-string text that Postgres cannot hold is a 422 on that field, not a 500."""
    try:
        db_text(value)
    except ValueError as exc:
        raise ApiError(422, str(exc), field) from exc


def ingest_operation_id(view_name: str) -> str:
    """The operationId of a run or points operation, as published before the run resource
    and its points were split into two modules (clients generated from the schema name
    their methods after these ids)."""
    return f"dashboard_core_api_ingest_{view_name}"


@api.exception_handler(ApiError)
def on_api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    body: dict[str, object] = {"detail": exc.message}
    if exc.field:
        body["field"] = exc.field
    return api.create_response(request, body, status=exc.status)


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    errors = [
        {
            "field": ".".join(
                str(part) for part in err.get("loc", ()) if part not in ("body", "payload")
            ),
            "reason": err.get("msg", "invalid"),
        }
        for err in exc.errors
    ]
    # Malformed JSON is a 400; well-formed JSON with wrong fields is a 422.
    status = 400 if any(err.get("type") == "json_invalid" for err in exc.errors) else 422
    detail = "; ".join(f"{e['field'] or 'body'}: {e['reason']}" for e in errors)
    return api.create_response(request, {"detail": detail, "errors": errors}, status=status)


@api.exception_handler(AuthenticationError)
def on_auth_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    detail = getattr(request, NOT_AUTHENTICATED_BECAUSE, None) or (
        "Authentication required: send 'Authorization: Bearer <token>'."
    )
    return api.create_response(request, {"detail": detail}, status=401)


@api.exception_handler(Http404)
def on_not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc) or "Not found."}, status=404)


@api.exception_handler(Exception)
def on_internal_error(request: HttpRequest, exc: Exception) -> HttpResponse:
    service = service_down(exc)
    if service is not None:
        log.warning("API %s %s: %s is unavailable: %s", request.method, request.path, service, exc)
        detail = f"{service} is unavailable; retry in {RETRY_AFTER_S} s."
        response = api.create_response(request, {"detail": detail}, status=503)
        response["Retry-After"] = str(RETRY_AFTER_S)
        return response
    # Never a traceback to an API client, DEBUG or not (make demo runs with DEBUG): the
    # server's log has it, under a reference the client can quote.
    reference = secrets.token_hex(4)
    log.error("API %s %s failed [%s]", request.method, request.path, reference, exc_info=exc)
    detail = f"Internal server error (reference {reference}); the server log has the details."
    return api.create_response(request, {"detail": detail}, status=500)


from dashboard.core.api import jobs, points, runs  # noqa: E402  (routers register on `api`)

# Points are a sub-resource of runs (/runs/{id}/points): their operations carry both tags.
runs.router.add_router("", points.router)
api.add_router("/", runs.router)
api.add_router("/", jobs.router)
# Apps built on core (alerts) mount their routers on `api` from the URL conf.
