"""HTTP and websockets in one process (daphne)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
# Read by the settings as they load here: this process keeps connections between requests
# (dashboard.core.db). Removed again so that no process started from this one inherits it.
os.environ["PARITY_WEB_PROCESS"] = "1"
django_asgi_app = get_asgi_application()
del os.environ["PARITY_WEB_PROCESS"]

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from dashboard.core.body_limit import BodyLimit  # noqa: E402
from dashboard.core.origin import SameOriginValidator  # noqa: E402
from dashboard.core.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": BodyLimit(django_asgi_app),
        "websocket": SameOriginValidator(
            AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
        ),
    }
)

import gc  # noqa: E402

# Everything loaded so far lives as long as the process: keep it out of the collector's
# full passes, which otherwise stall every socket of the process now and then (#15: with
# 50 viewers of a run, the slowest 1% of updates waited ~100 ms more, in POST and fan-out).
gc.freeze()
