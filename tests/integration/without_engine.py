"""Run by test_specs_without_engine in a fresh Python where torch, vLLM and transformers cannot
be imported, as on a web server without the engine: for every job kind with a spec, look the
spec up, validate it the way the API does, send a bad one through the API, and render the
kind's new-job page. Prints what it saw as JSON; the test judges it.

Environment: DJANGO_SETTINGS_MODULE and DATABASE_URL of the test database, PARITY_TOKEN (an
API token of PARITY_USER, a member of the project PARITY_PROJECT).
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys
from typing import Any

BLOCKED = ("torch", "vllm", "transformers")


class NoEngine(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (this test has no engine)")
        return None


def main() -> dict[str, Any]:
    sys.meta_path.insert(0, NoEngine())

    import django
    from django.test.utils import setup_test_environment

    django.setup()
    setup_test_environment()

    from django.contrib.auth.models import User
    from django.test import Client

    from dashboard.core.api import ApiError
    from dashboard.core.api.jobs import validate_spec
    from dashboard.core.forms import SpecForm
    from workers.specs import SPEC_KINDS, spec_model

    client = Client()
    client.force_login(User.objects.get(username=os.environ["PARITY_USER"]))
    project = os.environ["PARITY_PROJECT"]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {os.environ['PARITY_TOKEN']}"}
    kinds: dict[str, Any] = {}
    for kind in SPEC_KINDS:
        model = spec_model(kind)
        seen: dict[str, Any] = {"model": model.__name__}
        seen["default"] = validate_spec(kind, {}) == model().model_dump(mode="json")
        try:
            validate_spec(kind, {"sampling": {"temperature": -1}})
        except ApiError as exc:
            seen["bad"] = {"status": exc.status, "field": exc.field, "message": exc.message}
        response = client.post(
            "/api/jobs",
            data=json.dumps(
                {"project": project, "kind": kind, "spec": {"sampling": {"temperature": -1}}}
            ),
            content_type="application/json",
            **auth,
        )
        seen["api_bad"] = {"status": response.status_code, "body": response.json()}
        page = client.get(f"/p/{project}/new/{kind}/")
        html = page.content.decode()
        names = [f.name for f in SpecForm(model).fields]
        seen["page"] = {
            "status": page.status_code,
            "fields": len(names),
            "missing": [name for name in names if f'name="{name}"' not in html],
        }
        kinds[kind] = seen
    try:
        import torch  # noqa: F401
    except ImportError:
        blocked = True
    else:
        blocked = False
    return {
        "kinds": kinds,
        "torch_blocked": blocked,
        "engine_modules": sorted({m.partition(".")[0] for m in sys.modules} & set(BLOCKED)),
    }


if __name__ == "__main__":
    print(json.dumps(main()))
