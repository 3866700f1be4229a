"""Pages through the Django test client: who sees what, empty projects, results people read."""

from __future__ import annotations

import html
from typing import Any

import pytest
from django.urls import reverse

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def _run(project: Any, name: str = "r1", **kw: Any) -> Any:
    from dashboard.core.models import Run

    return Run.objects.create(project=project, name=name, **kw)


def _points(run: Any, values: dict[str, list[float]]) -> None:
    from dashboard.core.points import Point, store_points

    store_points(
        run, [Point(key, step, v) for key, vs in values.items() for step, v in enumerate(vs)]
    )


RESULT = {
    "metrics": {
        "values": {
            "abs_diff_mean": 0.05,
            "kl_k3": 2e-4,
            "kl_k1": -0.002,
            "clip_rate": 0.0,
            "ess": 0.99,
            "n_tokens": 512,
            "token_mismatch": 0,
        },
        "verdict": "warn",
        "reasons": ["abs_diff_mean 0.05 > 0.03"],
        "histogram": {"edges": [1e-4, 1e-3, 1e-2, 1e-1, 1], "counts": [10, 40, 30, 5], "zeros": 3},
        "scatter": {"lr": [-0.1, -2.0, -5.0], "lt": [-0.11, -2.2, -4.5]},
        "strata": {
            "by_lr": [
                {
                    "bucket": "[-inf,-10)",
                    "lo": None,
                    "hi": -10,
                    "n_tokens": 3,
                    "abs_diff_mean": 0.3,
                    "kl_k3": 0.01,
                },
                {
                    "bucket": "[-0.5,0]",
                    "lo": -0.5,
                    "hi": 0,
                    "n_tokens": 400,
                    "abs_diff_mean": 0.01,
                    "kl_k3": 1e-5,
                },
            ],
            "by_position": [
                {
                    "bucket": "0-15",
                    "lo": 0,
                    "hi": 15,
                    "n_tokens": 100,
                    "abs_diff_mean": 0.02,
                    "kl_k3": 1e-4,
                }
            ],
        },
    },
    "worst_sequences": [
        {
            "seq_log_ratio": 1.5,
            "prompt": "Say hi",
            "tokens": [
                {"text": "Hel", "lt": -0.1, "lr": -0.5, "d": 0.4, "rank": 1},
                {"text": "lo", "lt": -3.0, "lr": -1.0, "d": -2.0, "rank": 3},
            ],
        },
        {
            "seq_log_ratio": 0.5,
            "prompt": "Say bye",
            "tokens": [
                {"text": "a", "lt": -1.0, "lr": -1.0, "d": 0.0, "rank": 1},
                {"text": "b", "lt": -2.0, "lr": -2.5, "d": 0.5, "rank": 2},
            ],
        },
    ],
    "diagnoses": [
        {
            "name": "raw_logprobs_with_temperature",
            "severity": "error",
            "message": "engine returns raw logprobs at T=0.7",
            "fix": "logprobs_mode='processed_logprobs'",
        }
    ],
    "timings": {"engine_load_s": 3.0, "generate_s": 1.5, "score_s": 0.7, "metrics_s": 0.01},
    "sampling": {
        "requested": {"temperature": 1.0, "top_p": 1.0},
        "effective": {"temperature": 0.7, "top_p": 1.0},
        "model_defaults": {"temperature": 0.7},
        "changed_by_defaults": {"temperature": {"requested": 1.0, "effective": 0.7}},
    },
    "reference": {
        "what": "the same tokens scored with matched processing",
        "values": {"abs_diff_mean": 0.01, "kl_k3": 1e-5},
        "verdict": "pass",
    },
    "counts": {"prompts": 4, "sequences": 4, "tokens": 512},
    "fingerprint": {
        "engine": {"vllm_version": "0.32.0", "dtype": "bfloat16"},
        "sampling": {"temperature": 1.0},
    },
}


@pytest.fixture
def bob(make_member: Any) -> Any:
    return make_member("bob", "proj-b")


@pytest.fixture
def bobs_run(bob: Any) -> Any:
    from dashboard.core.models import Project

    return _run(Project.objects.get(slug="proj-b"), "secret-run", fingerprint={"model": "x"})


def test_other_projects_pages_are_404(alice_client: Any, project_a: Any, bobs_run: Any) -> None:
    from dashboard.core.models import Job

    job = Job.objects.create(
        project=bobs_run.project, run=bobs_run, kind="comparison", result=RESULT
    )
    mine = _run(project_a, "mine")
    for url in (
        reverse("run", args=[bobs_run.pk]),
        reverse("job", args=[job.pk]),
        reverse("project", args=["proj-b"]),
        reverse("compare", args=["proj-b"]),
        reverse("new_job", args=["proj-b", "comparison"]),
        reverse("tokens", args=["proj-b"]),
        # Another project's run smuggled into my project's compare page.
        reverse("compare", args=["proj-a"]) + f"?run={mine.pk}&run={bobs_run.pk}",
    ):
        response = alice_client.get(url)
        assert response.status_code == 404, url
        assert b"secret-run" not in response.content


def test_empty_project_pages_render(alice_client: Any, project_a: Any) -> None:
    response = alice_client.get(reverse("project", args=["proj-a"]))
    assert response.status_code == 200
    assert b"No runs yet" in response.content
    assert alice_client.get(reverse("compare", args=["proj-a"])).status_code == 200
    assert alice_client.get(reverse("new_job", args=["proj-a", "comparison"])).status_code == 200
    assert alice_client.get(reverse("project", args=["proj-a"]) + "?partial=1").status_code == 200


def test_empty_run_and_queued_job_render(alice_client: Any, project_a: Any) -> None:
    from dashboard.core.models import Job

    run = _run(project_a)
    response = alice_client.get(reverse("run", args=[run.pk]))
    assert response.status_code == 200
    assert b"No metric points yet" in response.content
    assert b'id="chart-config"' in response.content  # charts are there to receive live points
    job = Job.objects.create(project=project_a, run=run, kind="comparison", spec={"model": "m"})
    response = alice_client.get(reverse("job", args=[job.pk]))
    assert response.status_code == 200
    assert b'role="progressbar"' in response.content


def test_runs_list_filters_and_shows_latest_values(alice_client: Any, project_a: Any) -> None:
    a = _run(project_a, "grpo-bf16", tags=["bf16"], status="running")
    _run(project_a, "ppo-fp32", tags=["fp32"], kind="comparison", verdict="fail")
    _points(a, {"kl_k3": [0.001, 0.002, 0.0031], "clip_rate": [0.1, 0.2, 0.25]})
    url = reverse("project", args=["proj-a"])
    body = alice_client.get(url).content.decode()
    assert "grpo-bf16" in body and "ppo-fp32" in body
    assert "0.0031" in body and "0.25" in body
    assert "<polyline" in body  # the kl_k3 sparkline
    body = alice_client.get(url, {"tag": "fp32"}).content.decode()
    assert "ppo-fp32" in body and "grpo-bf16" not in body
    body = alice_client.get(
        url, {"q": "grpo", "status": "running", "sort": "name"}
    ).content.decode()
    assert "grpo-bf16" in body and "ppo-fp32" not in body
    body = alice_client.get(url, {"kind": "replay"}).content.decode()
    assert "No run matches" in body


def test_runs_list_paginates(alice_client: Any, project_a: Any) -> None:
    from dashboard.core.models import Run

    Run.objects.bulk_create(Run(project=project_a, name=f"run-{i:03d}") for i in range(30))
    url = reverse("project", args=["proj-a"])
    first = alice_client.get(url, {"sort": "name"}).content.decode()
    assert "run-000" in first and "run-029" not in first and "Page 1 of 2" in first
    second = alice_client.get(url, {"sort": "name", "page": 2}).content.decode()
    assert "run-029" in second


def test_run_page_lists_keys_and_fingerprint(alice_client: Any, project_a: Any) -> None:
    run = _run(project_a, fingerprint={"engine": {"logprobs_mode": "processed_logprobs"}})
    _points(run, {"kl_k3": [0.1, 0.2], "entropy": [1.0, 1.1]})
    body = alice_client.get(reverse("run", args=[run.pk])).content.decode()
    assert '<option value="entropy">' in body
    assert "engine.logprobs_mode" in body and "processed_logprobs" in body


def test_comparison_result_is_readable(alice_client: Any, project_a: Any) -> None:
    from dashboard.core.models import Job

    run = _run(project_a, kind="comparison", verdict="warn", status="finished")
    job = Job.objects.create(
        project=project_a, run=run, kind="comparison", status="succeeded", result=RESULT
    )
    body = alice_client.get(reverse("job", args=[job.pk])).content.decode()
    assert "Verdict" in body and "raw_logprobs_with_temperature" in body
    assert "logprobs_mode=&#x27;processed_logprobs&#x27;" in body
    assert 'id="metrics"' in body
    # abs_diff_mean 0.05 is past the default warn (0.03) and marked so, not by colour alone.
    assert "▲ 0.05" in body and "warn &gt; 0.03" in body
    # Worst sequences: tokens coloured by their d bucket, with a tooltip.
    assert 'class="tok d7"' in body and "lt -0.1 · lr -0.5 · d 0.4 · rank 1" in body
    assert 'class="tok d0"' in body
    assert "engine load" in body and "engine.vllm_version" in body
    assert 'id="strata-by_lr"' in body
    sampling = body.split('id="sampling"')[1].split("</table>")[0]
    temperature_row = next(r for r in sampling.split("<tr") if "<code>temperature</code>" in r)
    assert 'class="differs"' in temperature_row and "0.7" in temperature_row
    assert "if matched" in body and "512 tokens" in body


def test_a_comparison_page_explains_a_verdict_with_no_diagnosis_and_shows_notes(
    alice_client: Any, project_a: Any
) -> None:
    # Issue 11: "fail ... next to 'No misconfiguration diagnosed'", unexplained; and what the
    # run had to work around (plain-text chats, skipped prompts) is said on the page.
    from dashboard.core.models import Job

    note = "the model's tokenizer has no chat template: 2 chat prompts were rendered as text"
    result = {**RESULT, "diagnoses": [], "notes": [note]}
    run = _run(project_a, kind="comparison", verdict="warn", status="finished")
    job = Job.objects.create(
        project=project_a, run=run, kind="comparison", status="succeeded", result=result
    )
    body = alice_client.get(reverse("job", args=[job.pk])).content.decode()
    no_diagnosis = body[body.index('id="no-diagnosis"') :]
    assert "the warn comes from the measured numbers" in no_diagnosis[: no_diagnosis.index("</p>")]
    notes = body[body.index('id="notes"') :]
    assert html.escape(note) in notes[: notes.index("</ul>")]


def test_compare_highlights_differences(alice_client: Any, project_a: Any) -> None:
    a = _run(project_a, "a", fingerprint={"dtype": "bfloat16", "seed": 0})
    b = _run(project_a, "b", fingerprint={"dtype": "float32", "seed": 0})
    _points(a, {"kl_k3": [0.01, 0.02], "clip_rate": [0.1, 0.1]})
    _points(b, {"kl_k3": [0.01, 0.001], "clip_rate": [0.1, 0.1]})
    response = alice_client.get(reverse("compare", args=["proj-a"]), {"run": [a.pk, b.pk]})
    body = response.content.decode()
    assert response.status_code == 200
    rows = {
        line.split("<code>")[1].split("</code>")[0]: line
        for line in body.splitlines()
        if "<code>" in line and "<tr" in line
    }
    assert 'class="differs"' in rows["kl_k3"]
    assert 'class="differs"' not in rows["clip_rate"]
    fp_row = next(line for line in body.splitlines() if ">dtype" in line)
    assert 'class="differs"' in fp_row


def test_new_comparison_form_validates_with_the_spec(
    alice_client: Any, project_a: Any, monkeypatch: Any
) -> None:
    from dashboard.core import forms

    if forms.spec_model("comparison") is None:
        pytest.skip("workers.specs is not installed")
    url = reverse("new_job", args=["proj-a", "comparison"])
    page = alice_client.get(url).content.decode()
    assert "tiny-llama" in page
    monkeypatch.setattr("dashboard.core.models.Job.enqueue", lambda self: None)
    form = forms.SpecForm(forms.spec_model("comparison"))
    data = {f.name: f.html_value for f in form.fields if f.kind != "bool"}
    data.update({f.name: "on" for f in form.fields if f.kind == "bool" and f.checked})
    temperature = next(f.name for f in form.fields if f.path[-1] == "temperature")
    bad = dict(data, **{temperature: "-1"})
    response = alice_client.post(url, bad)
    assert response.status_code == 400
    assert 'aria-invalid="true"' in response.content.decode()
    response = alice_client.post(url, dict(data, run_name="from-form"))
    assert response.status_code == 302, response.content.decode()[:2000]
    from dashboard.core.models import Job

    job = Job.objects.get(run__name="from-form")
    assert response["Location"] == reverse("job", args=[job.pk])
    assert job.created_by.username == "alice"


def _incident(run: Any, key: str = "kl_k3", threshold: float = 0.005, **kw: Any) -> Any:
    from django.utils import timezone

    from dashboard.alerts.models import AlertRule, Incident

    rule = AlertRule.objects.create(
        project=run.project, name="kl drift", metric_key=key, threshold=threshold
    )
    now = timezone.now()
    fields = dict(
        rule=rule,
        run=run,
        severity="warning",
        metric_key=key,
        threshold=threshold,
        recovery_threshold=threshold,
        started_step=3,
        started_at=now,
        fired_step=4,
        fired_value=0.01,
        fired_at=now,
        peak_value=0.02,
    )
    fields.update(kw)
    return Incident.objects.create(**fields)


def test_alert_rules_and_incidents_reach_the_pages(alice_client: Any, project_a: Any) -> None:
    import json

    pytest.importorskip("dashboard.alerts.models")
    run = _run(project_a, "drifty", status="running")
    _points(run, {"kl_k3": [0.001, 0.002, 0.003, 0.01, 0.02, 0.001]})
    _incident(run)
    body = alice_client.get(reverse("project", args=["proj-a"])).content.decode()
    assert "⚑ 1 open" in body
    body = alice_client.get(reverse("run", args=[run.pk])).content.decode()
    config = json.loads(
        body.split('id="chart-config" type="application/json">')[1].split("</script>")[0]
    )
    lines = config["thresholds"]["kl_k3"]
    assert {"value": 0.005, "label": "alert “kl drift”", "level": "rule"} in lines
    assert {"value": 1e-3, "label": "default warn", "level": "warn"} in lines
    assert config["incidents"][0]["step"] == 3 and config["incidents"][0]["end"] is None
    assert 'id="incidents"' in body


def test_a_comparison_runs_page_is_its_result(alice_client: Any, project_a: Any) -> None:
    from dashboard.core.models import Job

    run = _run(project_a, kind="comparison")
    job = Job.objects.create(project=project_a, run=run, kind="comparison", result=RESULT)
    response = alice_client.get(reverse("run", args=[run.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("job", args=[job.pk])
    assert alice_client.get(reverse("run", args=[run.pk]) + "?charts=1").status_code == 200


def test_a_failed_job_says_why(alice_client: Any, project_a: Any) -> None:
    from dashboard.core.models import Job

    job = Job.objects.create(
        project=project_a,
        kind="comparison",
        status="failed",
        stage="loading engine",
        error="Model path /nope does not exist: build it with python -m workers.tiny_model.",
    )
    body = alice_client.get(reverse("job", args=[job.pk])).content.decode()
    assert "The job failed" in body and "/nope does not exist" in body
    assert "hidden" not in body.split('id="job-error"')[1].split(">")[0]  # shown, not hidden


def test_runs_list_sorts_by_column_headers(alice_client: Any, project_a: Any) -> None:
    for name in ("beta", "alpha", "gamma"):
        _run(project_a, name)
    url = reverse("project", args=["proj-a"])
    body = alice_client.get(url, {"sort": "name"}).content.decode()
    assert body.index("alpha") < body.index("beta") < body.index("gamma")
    assert 'aria-sort="ascending"' in body and "sort=-name" in body  # click again: Z to A
    body = alice_client.get(url, {"sort": "-name"}).content.decode()
    assert body.index("gamma") < body.index("beta") < body.index("alpha")


@pytest.mark.parametrize("kind", ["replay", "checklist"])
def test_replay_and_checklist_forms_submit_their_defaults(
    alice_client: Any, project_a: Any, monkeypatch: Any, kind: str
) -> None:
    # Their specs default nested models (the replay's weight source, the checklist's
    # sampling): the form must render them and queue the job from them unchanged.
    from dashboard.core import forms
    from dashboard.core.models import Job

    url = reverse("new_job", args=["proj-a", kind])
    assert alice_client.get(url).status_code == 200
    monkeypatch.setattr("dashboard.core.models.Job.enqueue", lambda self: None)
    model = forms.spec_model(kind)
    form = forms.SpecForm(model)
    data: dict[str, Any] = {f.name: f.html_value for f in form.fields if f.kind != "bool"}
    data.update({f.name: "on" for f in form.fields if f.kind == "bool" and f.checked})
    # The checklist's checks: every ticked box (#16 §11).
    data.update(
        {
            f.name: [o["value"] for o in f.options if o["checked"]]
            for f in form.fields
            if f.kind == "multi"
        }
    )
    response = alice_client.post(url, dict(data, run_name=f"{kind}-from-form"))
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get(kind=kind)
    assert job.spec == model().model_dump(mode="json")


def test_comparison_form_names_vllms_defaults_and_offers_the_rl_settings(
    alice_client: Any, project_a: Any, monkeypatch: Any
) -> None:
    # Issue 11: the form says which defaults are vLLM's own (what changing nothing gives)
    # and offers the recommended RL settings in one click.
    import re

    from dashboard.core import forms
    from dashboard.core.models import Job
    from workers.specs.comparison import RECOMMENDED_RL

    url = reverse("new_job", args=["proj-a", "comparison"])
    page = alice_client.get(url).content.decode()
    field = page[page.index('for="id_engine__logprobs_mode"') :]
    assert "vLLM&#x27;s default" in field[: field.index("</label>")]
    field = page[page.index('for="id_engine__gpu_memory_utilization"') :]
    assert "vLLM: 0.9" in field[: field.index("</label>")]
    link = re.search(r'<a [^>]*id="preset-rl"[^>]*href="([^"]+)"', page)
    assert link is not None

    rl = alice_client.get(url + link.group(1).split(url)[-1]).content.decode()
    assert re.search(r'<option value="processed"\s+selected>', rl)
    generation_config = r'id="id_engine__generation_config".*?<option value="vllm"\s+selected>'
    assert re.search(generation_config, rl, re.S)
    monkeypatch.setattr("dashboard.core.models.Job.enqueue", lambda self: None)
    form = forms.SpecForm(forms.spec_model("comparison"), initial=RECOMMENDED_RL)
    data = {f.name: f.html_value for f in form.fields if f.kind != "bool"}
    data.update({f.name: "on" for f in form.fields if f.kind == "bool" and f.checked})
    response = alice_client.post(url, dict(data, run_name="rl-settings"))
    assert response.status_code == 302, response.content.decode()[:2000]
    spec = Job.objects.get(run__name="rl-settings").spec
    assert spec["engine"]["logprobs_mode"] == "processed"
    assert spec["engine"]["generation_config"] == "vllm"
    assert spec["engine"]["head_dtype"] == spec["trainer"]["head_dtype"] == "float32"
    assert spec["sampling"]["temperature"] == 1.0 and spec["sampling"]["top_p"] == 1.0


@pytest.mark.parametrize("raw", ["%C2%B2", "%D9%A3", "9" * 30, "1" * 5000])
def test_compare_ignores_run_ids_that_are_not_plain_numbers(
    alice_client: Any, project_a: Any, raw: str
) -> None:
    # Issue 15 §4: str.isdigit accepts "²" and Arabic-Indic digits, which int() refuses (500);
    # ids past bigint or Python's digit limit must not reach int() or Postgres either.
    url = reverse("compare", args=["proj-a"])
    plain = alice_client.get(url + "?run=abc")
    response = alice_client.get(f"{url}?run={raw}")
    assert response.status_code == plain.status_code < 500


def test_new_job_form_refuses_a_tag_or_run_name_the_api_would_refuse(
    alice_client: Any, project_a: Any, monkeypatch: Any
) -> None:
    # A 65-character tag was cut to 64 by the form, where the API refuses it.
    from dashboard.core import forms
    from dashboard.core.models import Job

    if forms.spec_model("comparison") is None:
        pytest.skip("workers.specs is not installed")
    monkeypatch.setattr("dashboard.core.models.Job.enqueue", lambda self: None)
    url = reverse("new_job", args=["proj-a", "comparison"])
    form = forms.SpecForm(forms.spec_model("comparison"))
    data = {f.name: f.html_value for f in form.fields if f.kind != "bool"}
    data.update({f.name: "on" for f in form.fields if f.kind == "bool" and f.checked})
    response = alice_client.post(url, dict(data, tags="ok, " + "t" * 65))
    assert response.status_code == 400
    page = response.content.decode()
    assert "at most 64 characters" in page
    assert "t" * 65 in page  # what the user typed is kept
    response = alice_client.post(url, dict(data, run_name="r" * 201))
    assert response.status_code == 400
    assert "at most 200 characters" in response.content.decode()
    assert not Job.objects.exists()
