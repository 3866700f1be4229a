"""Request checks that hold for every page and API route."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

from dashboard.core.outages import RETRY_AFTER_S, service_down

log = logging.getLogger(__name__)

NUL = "\x00"
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


class RefuseUnstorableText:
    """One rule for text that reaches the database from a URL or a form: NUL, which Postgres
    text and jsonb columns cannot hold, is refused with a 400 that says where it was, before
    any view runs (JSON bodies are checked field by field by the API's types, as a 422)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        where = _nul_in(request)
        if where is None:
            return self.get_response(request)
        message = f"{where} contains a NUL character, which cannot be stored"
        if request.path.startswith("/api/2.0/mlflow/"):  # MLflow's clients read its shape
            return JsonResponse(
                {"error_code": "INVALID_PARAMETER_VALUE", "message": message}, status=400
            )
        if request.path.startswith("/api/"):
            return JsonResponse({"detail": message}, status=400)
        return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")


def _nul_in(request: HttpRequest) -> str | None:
    if NUL in request.path:
        return "The URL path"
    fields = [("query parameter", request.GET)]
    if request.method == "POST" and request.content_type in _FORMS:
        fields.append(("form field", request.POST))
    for kind, data in fields:
        for key, values in data.lists():
            if NUL in key or any(NUL in v for v in values):
                return f"The {kind} {key.replace(NUL, '␀')!r}"
    return None


class OutagePage:
    """A page whose request met a Postgres or Redis outage answers 503 naming the service
    (the API has its own handler, in JSON). Plain text: rendering the site's templates would
    need the database that may be the one down. Writes are one transaction (and a job whose
    message the broker refused is deleted again), so nothing was saved."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        service = service_down(exc)
        if service is None:
            return None
        log.warning("%s %s: %s is unavailable: %s", request.method, request.path, service, exc)
        saved = "; nothing was saved" if request.method == "POST" else ""
        response = HttpResponse(
            f"{service} is unavailable{saved}. Try again in {RETRY_AFTER_S} seconds.",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
        response["Retry-After"] = str(RETRY_AFTER_S)
        return response
