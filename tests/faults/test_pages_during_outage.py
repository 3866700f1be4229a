"""#17: a page whose request meets a Redis outage says so (503, the service named), and a
form that could not queue its job saves nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from dashboard.core.models import Job, Run

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def test_new_job_form_during_a_broker_outage_is_a_503_naming_redis(
    broker_on_private_redis: Any, alice_client: Any, project_a: Any
) -> None:
    from dashboard.core import forms

    form = forms.SpecForm(forms.spec_model("comparison"))
    data = {f.name: f.html_value for f in form.fields if f.kind != "bool"}
    data.update({f.name: "on" for f in form.fields if f.kind == "bool" and f.checked})
    broker_on_private_redis.stop()
    response = alice_client.post(reverse("new_job", args=["proj-a", "comparison"]), data)
    assert response.status_code == 503
    page = response.content.decode()
    assert "Redis is unavailable" in page and "nothing was saved" in page
    assert response["Retry-After"] == "5"
    assert not Job.objects.exists() and not Run.objects.exists()
