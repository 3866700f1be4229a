"""ASGI middleware: a request body over its URL's limit is refused with 413 before any view,
form or JSON parser reads it (Django would read it whole into memory first).

A declared Content-Length is checked before reading anything; a streamed (chunked) body is
counted as it arrives and cut at the limit.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.conf import settings


class _TooLarge(Exception):
    pass


def limit_for(path: str) -> int:
    for pattern, limit in settings.REQUEST_BODY_LIMITS:
        if re.match(pattern, path):
            return int(limit)
    return int(settings.REQUEST_BODY_MAX_BYTES)


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:g} MiB"


class BodyLimit:
    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "http":
            return await self.application(scope, receive, send)
        limit = limit_for(scope["path"])
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._refuse(scope, send, limit, int(declared))
        received = 0

        async def counted() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        try:
            return await self.application(scope, counted, send)
        except _TooLarge:
            # Raised while Django reads the body, before it has answered anything.
            return await self._refuse(scope, send, limit, None)

    async def _refuse(self, scope: dict[str, Any], send: Any, limit: int, size: int | None) -> None:
        what = f"{_mib(size)}" if size is not None else f"over {_mib(limit)}"
        detail = f"Request body too large ({what}): the limit for {scope['path']} is {_mib(limit)}."
        if scope["path"].startswith("/api/"):
            body, content_type = json.dumps({"detail": detail}).encode(), b"application/json"
        else:
            body, content_type = detail.encode(), b"text/plain; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", content_type), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})
