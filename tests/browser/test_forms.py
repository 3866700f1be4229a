"""#16 §11 in Chromium: a checklist started from its checkboxes (queued only, no worker: the
stored spec is what counts) and the alert rule form's picker of the project's metric keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import login, shot
from tests.browser.test_phone import MEASURE, WIDTH

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def fits_a_phone(page: Any, artifacts_dir: Path, name: str) -> None:
    """The page again at phone width: a screenshot, and nothing wider than the screen."""
    page.set_viewport_size({"width": WIDTH, "height": 844})
    measured = page.evaluate(MEASURE)
    shot(page, artifacts_dir, f"phone-{name}")
    page.set_viewport_size({"width": 1280, "height": 800})
    assert measured["width"] <= WIDTH and not measured["outside"], measured


def test_a_checklist_started_from_ticked_checks_stores_their_spec(
    live_server_proc: Any, project_a: Any, page: Any, artifacts_dir: Path
) -> None:
    from dashboard.core.models import Job, Run
    from workers.specs import CHECKS, ChecklistSpec

    url = live_server_proc.url
    login(page, url)
    page.goto(f"{url}/p/proj-a/new/checklist/")
    boxes = page.locator("input[name=checks]")
    assert [boxes.nth(i).get_attribute("value") for i in range(boxes.count())] == list(CHECKS)
    assert all(boxes.nth(i).is_checked() for i in range(boxes.count()))  # the spec's default
    assert "fp32 lm_head" in page.text_content("#id_checks")
    shot(page, artifacts_dir, "new-checklist-checks")
    fits_a_phone(page, artifacts_dir, "new-checklist-checks")

    # Nothing ticked: refused, saying what to do, and nothing is queued.
    for check in CHECKS:
        page.uncheck(f"#id_checks_{check}")
    page.click("#start-job")
    page.wait_for_selector("#help_checks .field-error")
    assert "choose at least one check" in page.text_content("#help_checks")
    assert page.get_attribute("#id_checks", "aria-invalid") == "true"
    shot(page, artifacts_dir, "new-checklist-no-check")
    assert not Job.objects.exists()

    page.check("#id_checks_fp32_head")
    page.check("#id_checks_processed_logprobs")
    page.fill("#id_run_name", "checklist-from-checkboxes")
    page.click("#start-job")
    page.wait_for_url("**/jobs/*/")
    job = Job.objects.get(run__name="checklist-from-checkboxes")
    try:
        expected = ChecklistSpec.model_validate(
            {"model": job.spec["model"], "checks": ["processed_logprobs", "fp32_head"]}
        )
        assert job.spec == expected.model_dump(mode="json")
        assert job.spec["model"].endswith("tiny-llama")  # the form's default model
    finally:
        # No worker is meant to run it: a late one finds no job and skips its message.
        Run.objects.filter(pk=job.run_id).delete()
        Job.objects.filter(pk=job.pk).delete()
    # The refused form is answered 400 on purpose; Chromium logs that status as an error.
    assert [e for e in page.js_errors if "status of 400" not in e] == []


def test_rule_form_offers_the_projects_metric_keys(
    live_server_proc: Any, project_a: Any, make_member: Any, page: Any, artifacts_dir: Path
) -> None:
    from dashboard.alerts.models import AlertRule
    from dashboard.core.models import Project, Run
    from dashboard.core.points import Point, store_points

    for name, keys in (("grpo-1", ["reward", "rollout_corr/k3_kl"]), ("grpo-2", ["reward"])):
        run = Run.objects.create(project=project_a, name=name)
        store_points(run, [Point(key, step, 0.01) for key in keys for step in range(3)])
    make_member("bob", "proj-b")
    other = Run.objects.create(project=Project.objects.get(slug="proj-b"), name="bobs")
    store_points(other, [Point("bobs/private_key", 1, 1.0)])

    url = live_server_proc.url
    login(page, url)
    page.goto(f"{url}/p/proj-a/alerts/rules/new")
    # The input's own suggestions: Chromium lists the datalist the input points to.
    offered = page.evaluate(
        "() => [...document.getElementById('id_metric_key').list.options].map(o => o.value)"
    )
    assert offered[:2] == ["reward", "rollout_corr/k3_kl"]  # sent by two runs, then one
    assert {"kl_k3", "abs_diff_mean", "stale_cache_ratio"} <= set(offered)
    assert "bobs/private_key" not in offered
    page.click("#id_metric_key")
    page.keyboard.type("rollout")  # opens the suggestions (drawn by Chromium, not the page)
    shot(page, artifacts_dir, "rule-form-key-picker")
    fits_a_phone(page, artifacts_dir, "rule-form-key-picker")

    page.fill("input[name=name]", "verl drift")
    page.fill("#id_metric_key", "rollout_corr/k3_kl")
    page.fill("input[name=threshold]", "0.05")
    page.click("#rule-form button[type=submit]")
    page.wait_for_selector("#rules")
    assert AlertRule.objects.get().metric_key == "rollout_corr/k3_kl"

    # Free text still: a key no run has sent.
    page.goto(f"{url}/p/proj-a/alerts/rules/new")
    page.fill("input[name=name]", "later")
    page.fill("#id_metric_key", "my/own_metric")
    page.fill("input[name=threshold]", "1")
    page.click("#rule-form button[type=submit]")
    page.wait_for_selector("#rules")
    assert AlertRule.objects.filter(metric_key="my/own_metric").exists()
    assert not page.js_errors, page.js_errors
