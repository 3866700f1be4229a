"""Which pages may open a websocket: the site's own origin (scheme, host and port), or one
listed in CSRF_TRUSTED_ORIGINS (a TLS-terminating proxy in front of daphne)."""

from __future__ import annotations

from typing import Any

from channels.security.websocket import WebsocketDenier
from django.conf import settings

# The page that opens ws:// is served over http://, wss:// over https://.
_PAGE_SCHEME = {"ws": "http", "wss": "https"}


def allowed_origin(scope: dict[str, Any]) -> bool:
    headers = dict(scope.get("headers", []))
    origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/")
    host = headers.get(b"host", b"").decode("latin-1")
    own = f"{_PAGE_SCHEME.get(scope.get('scheme', 'ws'), 'http')}://{host}"
    return bool(origin) and (origin == own or origin in settings.CSRF_TRUSTED_ORIGINS)


class SameOriginValidator:
    """ASGI middleware: a websocket from any other origin is refused before it is accepted
    (channels' AllowedHostsOriginValidator compares host names only, not scheme and port)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not allowed_origin(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
