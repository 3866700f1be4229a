"""The New-checklist form's checks: one checkbox per check (#16 §11), submitted as the same
spec the API takes, and a clear message for an empty or unknown selection."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest
from django.urls import reverse

from dashboard.core import forms
from dashboard.core.models import Job
from workers.specs import CHECK_LABELS, CHECKS, ChecklistSpec

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

URL = reverse("new_job", args=["proj-a", "checklist"])


def _defaults(**checks: Any) -> dict[str, Any]:
    """The form's own defaults as a browser would post them, checks as given."""
    form = forms.SpecForm(ChecklistSpec)
    data: dict[str, Any] = {f.name: f.html_value for f in form.fields if f.kind == "text"}
    data |= {f.name: f.html_value for f in form.fields if f.kind not in ("bool", "multi", "text")}
    data |= {f.name: "on" for f in form.fields if f.kind == "bool" and f.checked}
    return data | checks


@pytest.fixture
def queued(monkeypatch: Any) -> None:
    # No worker here: the job is stored and its spec read back.
    monkeypatch.setattr("dashboard.core.models.Job.enqueue", lambda self: None)


def test_checks_are_checkboxes_with_labels_all_ticked(alice_client: Any, project_a: Any) -> None:
    page = alice_client.get(URL).content.decode()
    assert 'name="checks"' in page and '<textarea id="id_checks"' not in page
    box = r'<input type="checkbox" id="id_checks_\w+" name="checks" value="(\w+)" ([^>]*)>'
    boxes = re.findall(box, page)
    assert [value for value, _ in boxes] == list(CHECKS)
    assert all("checked" in attrs for _, attrs in boxes)  # the spec's default: every check
    for title, description in CHECK_LABELS.values():
        assert html.escape(title) in page and html.escape(description) in page


def test_ticked_checks_give_the_spec_the_api_takes(
    alice_client: Any, project_a: Any, queued: None
) -> None:
    ticked = ["fp32_head", "processed_logprobs"]  # in any order, as a browser may send them
    response = alice_client.post(URL, _defaults(checks=ticked, run_name="two-checks"))
    assert response.status_code == 302, response.content.decode()[:2000]
    spec = Job.objects.get(run__name="two-checks").spec
    expected = ChecklistSpec.model_validate({"checks": ticked}).model_dump(mode="json")
    assert spec == expected
    assert spec["checks"] == ["processed_logprobs", "fp32_head"]


def test_all_ticked_is_the_default_spec(alice_client: Any, project_a: Any, queued: None) -> None:
    response = alice_client.post(URL, _defaults(checks=list(CHECKS), run_name="all"))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Job.objects.get(run__name="all").spec == ChecklistSpec().model_dump(mode="json")


def test_no_check_ticked_is_refused_with_a_message(
    alice_client: Any, project_a: Any, queued: None
) -> None:
    response = alice_client.post(URL, _defaults())  # unticked boxes send nothing
    assert response.status_code == 400
    page = response.content.decode()
    error = re.search(r'id="help_checks"><span class="error field-error">([^<]*)<', page)
    assert error is not None
    assert error.group(1) == (
        "choose at least one check (processed_logprobs, runtime_defaults, weight_updates, "
        "fp32_head)"
    )
    assert re.search(r'id="id_checks" [^>]*aria-invalid="true"', page, re.S)
    # What was left unticked stays unticked (the form does not fall back to its defaults).
    assert not re.search(r'name="checks" value="\w+" checked', page)
    assert not Job.objects.exists()


def test_an_unknown_check_is_refused_on_its_field(
    alice_client: Any, project_a: Any, queued: None
) -> None:
    response = alice_client.post(URL, _defaults(checks=["fp32_head", "bogus"]))
    assert response.status_code == 400
    page = response.content.decode()
    error = re.search(r'id="help_checks"><span class="error field-error">([^<]*)<', page)
    assert error is not None and "processed_logprobs" in error.group(1)
    assert "bogus" not in page.split('id="help_checks"')[0].split('id="id_checks"')[1]
    assert re.search(r'name="checks" value="fp32_head" checked', page)  # the valid tick kept
    assert not Job.objects.exists()


def test_the_api_still_takes_and_refuses_the_same_checks(alice_token: str, client: Any) -> None:
    # The spec format is unchanged: the API's JSON list, with the spec's own words on error.
    for checks, status in (([], 422), (["fp32_head"], 201)):
        response = client.post(
            "/api/jobs",
            data=json.dumps({"project": "proj-a", "kind": "checklist", "spec": {"checks": checks}}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {alice_token}",
        )
        assert response.status_code == status, response.content
    assert "choose at least one check" not in response.content.decode()
    assert Job.objects.get().spec["checks"] == ["fp32_head"]
