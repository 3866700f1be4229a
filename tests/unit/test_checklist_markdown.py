"""The migration checklist's pure parts: the Markdown report of a hand-made result, the rows
built from hand-made measurements, the variant plan. No engine, no torch."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from workers.checklist import (
    Measured,
    build_rows,
    explicit,
    in_flight_offered,
    matters,
    plan_variants,
    render_markdown,
)
from workers.specs import CHECKS, ChecklistSpec

pytestmark = pytest.mark.unit


def _cell(
    role: str, label: str, adm: float, kl: float, mx: float, verdict: str | None = None
) -> dict[str, Any]:
    return {
        "role": role,
        "variant": label,
        "label": label,
        "abs_diff_mean": adm,
        "kl_k3": kl,
        "abs_diff_max": mx,
        "n_tokens": 512,
        "nonfinite_trainer": 0,
        "verdict": verdict,
    }


RESULT: dict[str, Any] = {
    "model": "/models/my-7b",
    "vllm_version": "0.32.0",
    "verdict": "warn",
    "sampling_requested": {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "min_p": 0.0},
    "engine_builds": 5,
    "seconds": 123.4,
    "rows": [
        {
            "check": "processed_logprobs",
            "title": "Processed logprobs",
            "status": "needs-fix",
            "reason": "raw | processed",
            "before": _cell("before", "raw", 0.2794, 0.0587, 0.69),
            "after": _cell("after", "processed", 0.0256, 9.9e-4, 0.21),
            "others": [],
            "details": {},
            "recommendation": {
                "vllm_llm": 'llm = LLM(model="m", logprobs_mode="processed_logprobs")',
                "vllm_serve": "vllm serve m --logprobs-mode processed_logprobs",
                "trainer": "logits = logits / 0.7",
            },
        },
        {
            "check": "runtime_defaults",
            "title": "Runtime defaults (generation_config)",
            "status": "not-applicable",
            "reason": "nothing differs",
            "before": _cell("before", "auto", 0.0256, 9.9e-4, 0.21),
            "after": _cell("after", "explicit", 0.0256, 9.9e-4, 0.21),
            "others": [],
            "details": {},
            "recommendation": {"vllm_serve": "vllm serve m --generation-config vllm"},
        },
        {
            "check": "weight_updates",
            "title": "In-flight weight updates (prefix cache)",
            "status": "could-not-run",
            "reason": "the weight-update replay could not run: boom",
            "before": None,
            "after": None,
            "others": [],
            "details": {},
            "recommendation": {"vllm_llm": "llm.reset_prefix_cache()"},
        },
        {
            "check": "fp32_head",
            "title": "fp32 lm_head",
            "status": "pass",
            "reason": "small",
            "before": _cell("before", "bf16 both", 0.0256, 9.9e-4, 0.21),
            "after": _cell("after", "fp32 both", 0.0198, 5.9e-4, 0.19),
            "others": [_cell("one side only", "fp32 trainer only", 0.0254, 8.4e-4, 0.18)],
            "details": {},
            "recommendation": {"vllm_serve": "vllm serve m --hf-overrides x"},
        },
        {
            "check": "all_fixes",
            "title": "All fixes together",
            "status": "needs-fix",
            "reason": "verdict warn",
            "before": _cell("before", "V1 defaults", 0.2794, 0.0587, 0.69),
            "after": _cell("after", "all fixes", 0.0398, 5.9e-4, 0.19, "warn"),
            "others": [],
            "details": {"verdict": "warn"},
            "recommendation": {
                "vllm_llm": "llm = LLM(...)",
                "vllm_serve": "vllm serve m ...",
                "trainer": "logprobs = logits.log_softmax(-1)",
            },
        },
    ],
}


def test_markdown_has_one_table_row_per_check_with_status_and_numbers() -> None:
    md = render_markdown(RESULT)
    assert md.startswith("## vLLM V1 migration checklist — verdict: **warn**")
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(RESULT["rows"])  # header + one per row
    processed = next(line for line in table if line.startswith("| Processed logprobs"))
    assert "⚠️ needs fix" in processed
    assert "mean \\|d\\| 0.2794" in processed and "mean \\|d\\| 0.0256" in processed
    assert "kl_k3 0.0587" in processed and "kl_k3 9.9e-4" in processed
    assert "raw \\| processed" in processed  # a pipe in a finding does not break the table
    assert "➖ n/a" in md and "✅ no fix needed" in md and "❌ could not run" in md
    # Every row has exactly the header's five cells: no unescaped pipe inside a cell.
    for line in table:
        assert len(re.split(r"(?<!\\)\|", line.strip())) == 5 + 2, line


def test_markdown_never_shows_a_number_that_was_not_measured() -> None:
    md = render_markdown(RESULT)
    row = next(line for line in md.splitlines() if line.startswith("| In-flight"))
    cells = [c.strip() for c in row.split(" | ")]
    assert cells[2] == "—" and cells[3] == "—"
    assert "None" not in md and "nan" not in md.lower()


def test_markdown_recommendations_only_for_rows_that_need_them() -> None:
    md = render_markdown(RESULT)
    assert "### Processed logprobs" in md and "### All fixes together" in md
    assert "### fp32 lm_head" not in md  # passed: nothing to change
    assert "### Runtime defaults" not in md  # not applicable
    assert '```python\nllm = LLM(model="m", logprobs_mode="processed_logprobs")\n```' in md
    assert "```bash\nvllm serve m --logprobs-mode processed_logprobs\n```" in md
    assert md.count("```") % 2 == 0
    assert "fp32 trainer only: mean \\|d\\| 0.0254" in md  # other variants are listed


def test_markdown_of_a_sparse_result_does_not_crash() -> None:
    sparse = copy.deepcopy(RESULT)
    for row in sparse["rows"]:
        row["before"] = {"label": "x"}
        row["recommendation"] = {}
    sparse.pop("sampling_requested")
    md = render_markdown(sparse)
    assert "not measured" in md


# --- rows from hand-made measurements -------------------------------------------------------


def _measured(
    name: str,
    adm: float,
    *,
    ok: bool = True,
    head: str = "bfloat16",
    changed: dict[str, Any] | None = None,
) -> Measured:
    eff = {
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }
    if not ok:
        return Measured(name, name, "could-not-run", error="ValueError: no such option")
    return Measured(
        name,
        name,
        "measured",
        engine={"dtype": "bfloat16", "head_dtype": head},
        sampling={
            "requested": eff,
            "effective": eff,
            "model_defaults": {},
            "changed_by_defaults": changed or {},
        },
        values={
            "abs_diff_mean": adm,
            "kl_k3": adm / 10,
            "abs_diff_max": adm * 5,
            "n_tokens": 100,
            "nonfinite_trainer": 0,
        },
        verdict="pass",
    )


def _rows(measured: dict[str, Measured], **spec: Any) -> dict[str, dict[str, Any]]:
    s = ChecklistSpec(include_replay=False, **spec)
    return {r["check"]: r for r in build_rows(s, measured, {})}


def test_a_variant_that_could_not_run_makes_its_rows_say_so_without_numbers() -> None:
    m = {
        "v1_defaults": _measured("v1_defaults", 0.3),
        "raw_logprobs": _measured("raw", 0.3),
        "genconfig_auto": _measured("genconfig_auto", 0.03),
        "processed": _measured("processed", 0.03),
        "fp32_trainer_only": _measured("fp32_trainer_only", 0.03),
        "all_fixes": _measured("all_fixes", 0.0, ok=False),
    }
    rows = _rows(m)
    for check in ("fp32_head", "all_fixes"):
        assert rows[check]["status"] == "could-not-run"
        assert "ValueError: no such option" in rows[check]["reason"]
        assert rows[check]["before"] is None and rows[check]["after"] is None
    assert rows["processed_logprobs"]["status"] == "needs-fix"
    assert rows["runtime_defaults"]["status"] == "not-applicable"
    assert rows["weight_updates"]["status"] == "not-applicable"  # replay switched off
    assert "include_replay" in rows["weight_updates"]["reason"]


def test_runtime_defaults_lists_every_changed_parameter() -> None:
    changed = {
        "top_k": {"requested": 0, "effective": 20},
        "repetition_penalty": {"requested": 1.0, "effective": 1.1},
    }
    m = {
        "genconfig_auto": _measured("genconfig_auto", 0.3, changed=changed),
        "processed": _measured("processed", 0.03),
    }
    row = _rows(m, checks=["runtime_defaults"])["runtime_defaults"]
    assert row["status"] == "needs-fix"
    assert "top_k 0 → 20" in row["reason"] and "repetition_penalty 1 → 1.1" in row["reason"]
    assert row["details"]["differs"] == changed
    assert "--generation-config vllm" in row["recommendation"]["vllm_serve"]


def test_fp32_head_that_fell_back_is_could_not_run() -> None:
    m = {
        "processed": _measured("processed", 0.03),
        "all_fixes": _measured("all_fixes", 0.01, head="bfloat16"),
    }
    row = _rows(m, checks=["fp32_head"])["fp32_head"]
    assert row["status"] == "could-not-run" and row["after"] is None
    assert "bfloat16" in row["reason"]


def test_matters_needs_a_third_less_and_more_than_noise() -> None:
    assert matters({"abs_diff_mean": 0.3}, {"abs_diff_mean": 0.03})
    assert not matters({"abs_diff_mean": 0.025}, {"abs_diff_mean": 0.02})
    assert not matters({"abs_diff_mean": 0.0015}, {"abs_diff_mean": 0.0001})  # under noise
    assert matters({"abs_diff_mean": 0.02, "kl_k3": 0.01}, {"abs_diff_mean": 0.02, "kl_k3": 0.001})
    assert not matters({}, {"abs_diff_mean": 0.1})


# --- plan and spec --------------------------------------------------------------------------


def test_full_plan_groups_variants_by_engine_settings() -> None:
    plan = plan_variants(ChecklistSpec())
    assert [v.name for v in plan] == [
        "v1_defaults",
        "raw_logprobs",
        "genconfig_auto",
        "processed",
        "fp32_trainer_only",
        "all_fixes",
    ]
    engines = [v.engine for v in plan if v.rescore_of is None]
    # Three distinct engines, each used by consecutive variants only.
    distinct = []
    for e in engines:
        if not distinct or distinct[-1] != e:
            distinct.append(e)
    assert len(distinct) == len(set(e.model_dump_json() for e in engines)) == 3
    assert plan[4].rescore_of == "processed" and plan[4].trainer.head_dtype == "float32"
    assert plan[-1].engine.head_dtype == "float32" and plan[-1].trainer.head_dtype == "float32"


def test_a_single_check_plans_only_what_it_needs() -> None:
    plan = plan_variants(ChecklistSpec(checks=["runtime_defaults"]))
    assert [v.name for v in plan] == ["genconfig_auto", "processed"]
    assert len({v.engine for v in plan}) == 1  # one engine build
    assert plan_variants(ChecklistSpec(checks=["weight_updates"])) == []


def test_explicit_sampling_sets_every_field_the_engine_could_fill() -> None:
    spec = ChecklistSpec()
    e = explicit(spec.sampling)
    assert (e.temperature, e.top_p, e.top_k, e.min_p, e.repetition_penalty) == (
        0.7,
        0.9,
        0,
        0.0,
        1.0,
    )
    assert e.max_tokens == spec.sampling.max_tokens


def test_spec_validation() -> None:
    assert ChecklistSpec().full and list(ChecklistSpec().checks) == list(CHECKS)
    assert ChecklistSpec(checks=["fp32_head", "processed_logprobs", "fp32_head"]).checks == [
        "processed_logprobs",
        "fp32_head",
    ]
    with pytest.raises(ValueError, match="unknown threshold"):
        ChecklistSpec(thresholds={"nope": 1.0})
    with pytest.raises(ValueError):
        ChecklistSpec(checks=["bogus"])
    with pytest.raises(ValueError):
        ChecklistSpec(extra_field=1)


def test_in_flight_offered_reads_the_capabilities() -> None:
    yes = {
        "vllm_version": "0.32.0",
        "llm_sleep_params": ["level", "mode"],
        "pause_modes": ["abort", "wait", "keep"],
    }
    assert in_flight_offered(yes)[0] is True
    no, why = in_flight_offered(
        {"vllm_version": "0.9", "llm_sleep_params": ["level"], "pause_modes": []}
    )
    assert no is False and "0.9" in why and "offers no in-flight update mode" in why
    assert in_flight_offered(None)[0] is None


# --- the result template --------------------------------------------------------------------


def test_result_template_renders_rows_badges_numbers_and_chart_data() -> None:
    import html
    import json

    from django.template.loader import render_to_string

    result = copy.deepcopy(RESULT)
    result["markdown"] = render_markdown(result)
    result["histograms"] = {
        "edges": [1e-6, 1e-3, 1.0],
        "series": [
            {"variant": "raw", "label": "raw", "counts": [1, 2], "zeros": 0, "nonfinite": 0}
        ],
    }
    out = render_to_string("checklist_result.html", {"result": result})
    assert out.count('<tr id="check-') == len(result["rows"])
    # Status: colour class plus words (the CSS adds a symbol), not colour alone.
    assert '<span class="badge verdict-warn">needs fix</span>' in out
    assert "no fix needed</span>" in out  # a check whose fix makes no difference
    assert '<span class="badge verdict-fail">could not run</span>' in out
    assert "– not applicable" in out
    assert "0.2794" in out and "0.0256" in out
    row = out[out.index('id="check-weight_updates"') : out.index('id="check-fp32_head"')]
    assert row.count("not measured") == 2 and "None" not in row
    # Recommendations: copyable code blocks, only where something must change.
    assert 'id="rec-processed_logprobs-llm"' in out and 'data-copy="rec-all_fixes-serve"' in out
    assert 'id="rec-fp32_head' not in out
    assert html.escape('logprobs_mode="processed_logprobs"') in out
    # The Markdown download and the histogram data.
    assert 'download="parity-migration-checklist.md"' in out
    assert "data:text/markdown;charset=utf-8,%23%23%20vLLM%20V1" in out
    data = out[out.index('<script id="checklist-hist-data"') :]
    payload = json.loads(data[data.index(">") + 1 : data.index("</script>")])
    assert payload == result["histograms"]
    assert 'class="checklist-hist plot" data-hist-id="checklist-hist-data"' in out


def test_a_row_that_needs_no_fix_never_reads_pass_over_failing_cells() -> None:
    # Issue 11: "an fp32 row with a pass badge over two fail columns", unexplained. A row's
    # status says whether its fix matters; a cell's verdict judges the gap, and says why.
    import html

    from django.template.loader import render_to_string

    result = copy.deepcopy(RESULT)
    row = next(r for r in result["rows"] if r["check"] == "fp32_head")
    reason = (
        "truncation_boundary_frac 0.0195 > 0.01 (fail): 10 sampled tokens (2%) fell outside "
        "the trainer's own top-p/top-k/min-p support"
    )
    for cell in (row["before"], row["after"]):
        cell.update(verdict="fail", reasons=[reason], truncation_boundary=10)
    result["markdown"] = render_markdown(result)
    out = render_to_string("checklist_result.html", {"result": result})
    html_row = out[out.index('id="check-fp32_head"') : out.index('id="check-all_fixes"')]
    assert ">pass</span>" not in html_row
    assert "no fix needed</span>" in html_row
    assert html_row.count(">gap fail</span>") == 2
    # Each failing cell names its rule in words.
    assert html_row.count(html.escape(reason)) >= 2
    assert "outside the trainer's nucleus 10" in html_row
    assert "non-finite lt" not in html_row  # the boundary is not a trainer fault
    assert "outside the trainer's nucleus 10" in result["markdown"]
    assert "| fp32 lm_head | ✅ no fix needed |" in result["markdown"]


def test_notes_are_in_the_markdown_and_on_the_page() -> None:
    from django.template.loader import render_to_string

    result = copy.deepcopy(RESULT)
    result["notes"] = ["1 prompt (prompt 3) was too long for the engine and was skipped"]
    result["markdown"] = render_markdown(result)
    assert "> Note: 1 prompt (prompt 3) was too long" in result["markdown"]
    out = render_to_string("checklist_result.html", {"result": result})
    assert 'id="checklist-notes"' in out and "prompt 3) was too long" in out


# --- bad input: refused before any engine work ----------------------------------------------


def test_bad_spec_and_missing_model_are_user_errors(tmp_path: Any) -> None:
    from workers.checklist import run_checklist_job
    from workers.reporting import NullReporter, UserError

    with pytest.raises(UserError) as err:
        run_checklist_job({"model": str(tmp_path / "nope")}, NullReporter())
    assert "does not exist on this worker" in str(err.value)
    with pytest.raises(UserError) as err:
        run_checklist_job({"sampling": {"temperature": -1}, "checks": ["bogus"]}, NullReporter())
    assert "sampling.temperature" in str(err.value) and "checks.0" in str(err.value)


def test_in_flight_replay_is_skipped_with_the_reason_where_vllm_lacks_it() -> None:
    from workers.checklist.run import Progress, run_replays
    from workers.reporting import PrintReporter

    reporter = PrintReporter(quiet=True)
    caps = {"vllm_version": "0.9.9", "llm_sleep_params": ["level"], "pause_modes": []}
    replays: dict[str, Any] = {
        "between_batches": {
            "status": "measured",
            "summary": None,
            "verdict": "pass",
            "flags_summary": {"stale_weights": [], "partial_update": [], "mismatch_spike": []},
            "prefix_cache_summary": {"measured": False},
            "baseline": {},
            "updates": [],
            "capabilities": caps,
            "engine": {},
            "update_mode": "between_batches",
            "seconds": 1.0,
        }
    }
    built = run_replays(
        ChecklistSpec(), "/m", [("in_flight", "in flight")], replays, Progress(reporter, 1), 0
    )
    assert built == 0
    assert replays["in_flight"]["status"] == "not-offered"
    assert "vLLM 0.9.9 offers no in-flight update mode" in replays["in_flight"]["reason"]
    row = {
        r["check"]: r for r in build_rows(ChecklistSpec(checks=["weight_updates"]), {}, replays)
    }["weight_updates"]
    assert "in-flight update: vLLM 0.9.9 offers no in-flight update mode" in row["reason"]
    assert row["others"] == [] and row["details"]["in_flight"]["status"] == "not-offered"
