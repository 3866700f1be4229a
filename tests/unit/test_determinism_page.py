"""The determinism certificate's page (presenters.determinism_context + its template) and CLI,
from a stored report, without an engine."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.unit


def certificate_report(server: bool = False) -> dict[str, Any]:
    """A stored certificate as workers.determinism writes it: the full batch off by a few ulps,
    the shuffled batch bit-exact, the other max_num_seqs measured (or, on a server, not)."""
    from workers.determinism.judge import Sequences, compare_runs, groups, verdict
    from workers.specs import DeterminismSpec

    ref = Sequences(
        [[1, 2, 3], [1, 4, 5], [6, 7], [6, 8]], [[-0.5, -1.0, -2.0]] * 2 + [[-1, -2]] * 2
    )
    off = Sequences(ref.token_ids, [[x + 3e-6 for x in s] for s in ref.lr])
    turned = Sequences([[1, 2, 3], [1, 9, 9], [6, 7], [6, 9]], ref.lr)
    pairs = [
        compare_runs("full_batch", "full batch", ref, off),
        compare_runs("shuffled", "shuffled batch", ref, ref),
    ]
    if not server:
        pairs.append(compare_runs("max_num_seqs", "other max_num_seqs", ref, turned))
    trainer: Any = {
        "status": "measured",
        "reason": "",
        "n_tokens": 10,
        "bit_equal_frac": 0.07,
        "abs_diff_mean": 1.6e-6,
        "abs_diff_max": 2e-5,
        "engine_claims": False,
        "trainer_claims": False,
        "meaningful": False,
        "claims": "the engine does not claim batch invariance; the trainer runs torch's "
        "default (not batch-invariant) kernels",
    }
    g = groups(ref.token_ids, 2)
    names = ["batch_1", "full_batch", "shuffled", "max_num_seqs"]
    labels = ["batch size 1", "full batch", "shuffled batch", "other max_num_seqs"]
    runs = [
        {
            "name": n,
            "label": lab,
            "status": "measured",
            "reason": "",
            "max_num_seqs": 1 if n == "max_num_seqs" else 256,
            "requests_per_call": 1 if n == "batch_1" else 2,
            "n_sequences": 4,
            "n_tokens": 10,
            "seconds": 0.5,
            "groups": g,
        }
        for n, lab in zip(names, labels, strict=True)
    ]
    if server:
        runs[3] = {
            **runs[3],
            "status": "not-applicable",
            "reason": "a server's max_num_seqs is fixed when it starts (this one runs with 256)",
            "max_num_seqs": 256,
            "requests_per_call": None,
            "n_sequences": 0,
            "groups": None,
        }
    v, reasons = verdict(
        pairs,
        {r["name"]: r["groups"] for r in runs},
        trainer,
        DeterminismSpec(),
        engine_claims=False,
    )
    return {
        "version": 1,
        "kind": "determinism",
        "verdict": v,
        "reasons": reasons,
        "model": "/models/tiny-llama",
        "reference": "batch_1",
        "runs": runs,
        "pairs": pairs,
        "trainer": trainer,
        "engine": {
            "adapter": "vllm-server" if server else "vllm",
            "label": "vLLM server" if server else "vLLM (in-process)",
            "version": "0.32.0",
            "url": "http://10.0.0.5:8000" if server else None,
            "batch_invariant": False,
            "max_num_seqs": 256,
            "dtype": "float32",
            "unknown": [],
        },
        "sampling": {"temperature": 1.0, "n": 2, "seed": 0, "max_tokens": 3},
        "fingerprint": {"kind": "determinism", "model": "tiny-llama"},
        "timings": {"batch_1_s": 2.0, "full_batch_s": 0.3},
        "wall_s": 4.0,
        "notes": [],
    }


def test_the_page_shows_every_run_against_batch_size_1() -> None:
    from django.template.loader import render_to_string

    from dashboard.core.presenters import determinism_context

    report = certificate_report()
    assert report["verdict"] == "fail"  # max_num_seqs: half the sequences sample other tokens
    context = determinism_context(report)  # type: ignore[arg-type]
    html = render_to_string("determinism_result.html", context)
    assert 'id="run-batch_1"' in html and "reference" in html
    assert 'id="run-full_batch"' in html and "3e-6" in html
    assert 'id="run-max_num_seqs"' in html and "2/4" in html
    assert "for information" in html and "0.07" in html
    rows = {r["name"]: r for r in context["certificate"]["rows"]}
    assert rows["shuffled"]["verdict"] == "pass" and rows["full_batch"]["verdict"] == "warn"
    assert rows["max_num_seqs"]["verdict"] == "fail"


def test_a_server_certificate_says_why_max_num_seqs_was_not_varied() -> None:
    from django.template.loader import render_to_string

    from dashboard.core.presenters import determinism_context

    context = determinism_context(certificate_report(server=True))  # type: ignore[arg-type]
    html = render_to_string("determinism_result.html", context)
    assert "not-applicable" in html and "fixed when it starts" in html
    assert context["engine"] == {
        "label": "vLLM server",
        "version": "vLLM 0.32.0",
        "url": "http://10.0.0.5:8000",
        "unknown": [],
    }


def test_the_cli_is_generated_from_the_spec_and_prints_the_certificate() -> None:
    from workers.determinism.cli import build_parser, format_report, spec_from_args

    parser = build_parser()
    assert "--other-max-num-seqs" in parser.format_help()
    spec = spec_from_args(parser.parse_args(["--server-url", "http://h:8000/v1", "--n", "4"]))
    assert spec.server.url == "http://h:8000" and spec.sampling.n == 4
    text = format_report(certificate_report(server=True))
    assert text.startswith("verdict: WARN")
    assert "vLLM server at http://10.0.0.5:8000 0.32.0" in text
    assert "not-applicable: a server's max_num_seqs is fixed" in text


def test_the_checklist_row_passes_a_bit_exact_certificate_and_asks_for_a_fix_otherwise() -> None:
    from django.template.loader import render_to_string

    from workers.checklist import build_rows, render_markdown
    from workers.checklist.rows import determinism_row
    from workers.specs import ChecklistSpec

    failing = determinism_row(certificate_report())  # type: ignore[arg-type]
    assert failing["status"] == "needs-fix" and failing["title"] == "Batch invariance (determinism)"
    assert failing["reason"].startswith("not batch-invariant: full batch: bit_equal_frac 0")
    assert "VLLM_BATCH_INVARIANT=1" in failing["recommendation"]["vllm_serve"]
    assert [p["run"] for p in failing["details"]["pairs"]] == [
        "full_batch",
        "shuffled",
        "max_num_seqs",
    ]
    exact = certificate_report(server=True)
    exact["pairs"] = exact["pairs"][1:]
    exact["verdict"], exact["reasons"] = "pass", ["bit-exact: 1 runs sampled the same tokens"]
    assert determinism_row(exact)["status"] == "pass"  # type: ignore[arg-type]
    missing = determinism_row("vLLM could not load 'm'")
    assert missing["status"] == "could-not-run" and missing["reason"] == "vLLM could not load 'm'"

    spec = ChecklistSpec(include_replay=False)
    rows = build_rows(spec, {}, {}, certificate_report())  # type: ignore[arg-type]
    assert [r["check"] for r in rows][-2:] == ["all_fixes", "determinism"]
    assert build_rows(spec, {}, {})[-1]["check"] == "all_fixes"
    result = {"verdict": "fail", "rows": rows, "variants": [], "replays": {}, "notes": []}
    html = render_to_string("checklist_result.html", {"result": result})
    assert 'id="check-determinism"' in html and "needs fix" in html
    assert "Batch invariance (determinism)" in render_markdown(
        {
            **result,
            "model": "m",
            "vllm_version": "0.32.0",
            "sampling_requested": {},
            "engine_builds": 1,
            "seconds": 1.0,
            "timings": {},
            "spec": spec.model_dump(mode="json"),
            "histograms": {"edges": [], "series": []},
        }
    )
