"""A comparison: sample with vLLM V1, score exactly those tokens with the trainer, measure the
gap with `parity.metrics`, and say in words what causes it.

    python -m workers.compare --model var/models/tiny-llama --temperature 0.7 --top-p 0.9 \\
        --engine-logprobs-mode processed

Three ways in share this module: the CLI (`main`), the Celery task (`run_comparison_job`,
called by dashboard.core.tasks) and tests/bench (`run_comparison`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from parity.reports import REPORT_VERSION
from parity.reports.comparison import (
    ComparisonReport,
    ReferenceReport,
    WorstSequence,
    WorstToken,
)
from parity.reports.numbers import number
from workers import cli, engines, measure
from workers import prompts as prompt_sets
from workers.cli import spec_parser
from workers.diagnoses import diagnose
from workers.reporting import JobOutcome, PrintReporter, Reporter, UserError, json_safe
from workers.specs import ComparisonSpec, parse_spec

WORST_K = 20
# Stage progress bands: engine load is the long pole on a cold worker, then generation.
_BANDS = {
    "engine": (0.0, 0.1),
    "generate": (0.1, 0.55),
    "trainer": (0.55, 0.6),
    "score": (0.6, 0.95),
    "metrics": (0.95, 1.0),
}


def run_comparison_job(spec: Mapping[str, Any], reporter: Reporter) -> JobOutcome:
    """The Celery entry point: validate a job's spec (UserError on bad values), then run it."""
    return run_comparison(parse_spec(ComparisonSpec, spec), reporter)


class _Stages:
    """Stage messages with progress, throttled so that a big job does not write its job row
    once per finished request; a report that moves the bar by `min_move` or more is always
    written, so the bar never leaps over steps the worker knew about."""

    def __init__(
        self, reporter: Reporter, min_interval_s: float = 0.5, min_move: float = 0.05
    ) -> None:
        self.reporter, self.min_interval_s, self.min_move = reporter, min_interval_s, min_move
        self.last = 0.0
        self.written = 0.0

    def say(self, band: str, message: str, frac: float = 0.0, force: bool = True) -> None:
        lo, hi = _BANDS[band]
        progress = lo + (hi - lo) * min(max(frac, 0.0), 1.0)
        now = time.monotonic()
        moved = progress - self.written >= self.min_move
        if not force and not moved and now - self.last < self.min_interval_s:
            return
        self.last, self.written = now, progress
        self.reporter.stage(message, progress)

    def counter(self, band: str, verb: str) -> Callable[[int, int], None]:
        started = False

        def progress(done: int, total: int) -> None:
            nonlocal started
            if not started:
                # The previous stage (engine or trainer load) ends where this one begins.
                started = True
                self.say(band, f"{verb} 0/{total}")
            self.say(band, f"{verb} {done}/{total}", done / max(total, 1), force=done >= total)

        return progress


def run_comparison(spec: ComparisonSpec, reporter: Reporter) -> JobOutcome:
    """Run one comparison end to end and return its outcome.

    Raises UserError (before any engine work where it can be known) for a missing model, an
    unusable prompt set, prompts none of which fit the engine's max_model_len, or settings
    the engine refuses. Chats on a model without a chat template are rendered as plain text,
    and prompts too long for the engine are skipped; the report's `notes` say so. The trainer
    scores exactly the token ids the engine returned; any disagreement is counted in
    `token_mismatch`, never hidden.
    """
    from parity.metrics import Thresholds, scalar_values
    from workers import rollout

    wall_started = time.perf_counter()
    stages = _Stages(reporter)
    timings: dict[str, float] = {}
    try:
        thresholds = Thresholds.from_dict(spec.thresholds)
    except ValueError as exc:
        raise UserError(f"thresholds: {exc}") from None
    model_path = rollout.resolve_model(spec.model)
    items = prompt_sets.load(spec.prompt_set, spec.prompts, spec.num_prompts)
    tokenizer = _tokenizer(model_path)
    # Rendered before any engine work: a prompt problem is known in a second, not after the
    # engine has loaded.
    rendered = prompt_sets.render_set(items, tokenizer)
    prompt_ids = rendered.ids

    stages.say("engine", "loading engine")
    sampled = measure.sample(
        model_path,
        spec.engine,
        prompt_ids,
        spec.sampling,
        server=spec.server,
        progress=stages.counter("generate", "generating"),
    )
    engine, ro = sampled.engine, sampled.rollout
    engines.release(engine)
    timings["engine_load_s"] = 0.0 if sampled.engine_reused else engine.load_seconds
    timings["generate_s"] = ro.seconds
    # A server's own settings (what it reports, the rest as the spec assumes) decide the
    # trainer's processing and the diagnoses; in-process they are the spec's.
    spec = spec.model_copy(update={"engine": engine.settings})

    stages.say("trainer", "loading trainer")
    m = measure.measure(
        model_path,
        spec.trainer,
        spec.engine,
        ro,
        thresholds,
        topk=spec.sampling.logprobs_topk,
        with_reference=True,
        engine_kind=engines.logprobs_kind(engine),
        progress=stages.counter("score", "scoring"),
    )
    tm, processing, matched = m.trainer, m.processing, m.engine_processing
    metrics, reference, scored = m.metrics, m.reference, m.scored
    timings["trainer_load_s"] = 0.0 if m.trainer_reused else tm.load_seconds
    timings["score_s"] = scored.seconds
    timings["metrics_s"] = m.metrics_seconds

    stages.say("metrics", "writing the report", 0.5)
    started = time.perf_counter()
    diagnoses = diagnose(
        spec,
        ro,
        processing,
        metrics.values,
        None if reference is None else reference.values,
        engines.logprobs_kind(engine),
    )
    worst = _worst_sequences(metrics, ro, scored, items, tokenizer)
    fingerprint = _fingerprint(spec, model_path, engine, tm, ro, processing)
    timings["report_s"] = time.perf_counter() - started
    result: ComparisonReport = {
        "version": REPORT_VERSION,
        "metrics": metrics.to_dict(),  # type: ignore[typeddict-item]
        "diagnoses": diagnoses,
        "worst_sequences": worst,
        "sampling": {
            "requested": ro.requested,
            "effective": ro.effective,
            "model_defaults": ro.model_defaults,
            "changed_by_defaults": {
                k: {"requested": a, "effective": b} for k, (a, b) in ro.changed_by_defaults.items()
            },
        },
        "trainer_processing": _processing_dict(processing),
        "engine_processing": _processing_dict(matched),
        "reference": None
        if reference is None
        else ReferenceReport(
            what="the same tokens scored with the processing that matches the engine",
            processing=_processing_dict(matched),
            values=reference.values,
            verdict=reference.verdict,  # type: ignore[typeddict-item]
        ),
        "counts": {
            "prompts": len(prompt_ids) - len(sampled.skipped),
            "sequences": len(ro.token_ids),
            "tokens": int(scored.lr.size),
            "finish_reasons": _count(ro.finish_reasons),
        },
        "fingerprint": fingerprint,
        "timings": timings,
        "reused": {"engine": sampled.engine_reused, "trainer": m.trainer_reused},
        "wall_s": time.perf_counter() - wall_started,
        "notes": rendered.notes() + sampled.notes,
    }
    stages.say("metrics", "done", 1.0)
    return JobOutcome(
        result=json_safe(result),
        fingerprint=json_safe(fingerprint),
        verdict=metrics.verdict,
        step_values={0: scalar_values(metrics.values)},
    )


_tokenizers: dict[str, Any] = {}


def _tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    if model_path not in _tokenizers:
        _tokenizers.clear()
        _tokenizers[model_path] = AutoTokenizer.from_pretrained(model_path)
    return _tokenizers[model_path]


def _count(xs: Sequence[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[str(x)] = out.get(str(x), 0) + 1
    return out


def _processing_dict(p: Any) -> dict[str, Any]:
    return asdict(p)


# --- report pieces ------------------------------------------------------------------------


def _worst_sequences(
    metrics: Any, ro: Any, scored: measure.Scored, items: Sequence[dict[str, Any]], tokenizer: Any
) -> list[WorstSequence]:
    from parity.metrics import worst_sequences

    lt, lr, rank = scored.lt, scored.lr, scored.rank
    assert rank is not None
    offsets = np.concatenate([[0], np.cumsum(scored.seq_lens)])
    per_seq = metrics.per_sequence
    # METRICS.md: truncation-boundary tokens (finite lr, lt = -inf) are listed in the worst
    # sequences even though they are left out of |d|: their sequences follow the worst ones.
    at_boundary = np.isneginf(lt) & np.isfinite(lr)
    seq_of = np.repeat(np.arange(len(scored.seq_lens)), scored.seq_lens)
    boundary_seqs = np.flatnonzero(np.bincount(seq_of[at_boundary]))
    worst = worst_sequences(metrics, WORST_K)
    worst += [int(s) for s in boundary_seqs if s not in worst][:WORST_K]
    out: list[WorstSequence] = []
    for s in worst:
        lo, hi = int(offsets[s]), int(offsets[s + 1])
        ids = ro.token_ids[s]
        texts = [tokenizer.decode([t]) for t in ids]
        tokens: list[WorstToken] = [
            {
                "text": texts[j],
                "id": int(ids[j]),
                "lt": _finite(lt[lo + j]),
                "lr": _finite(lr[lo + j]),
                "d": _finite(lt[lo + j] - lr[lo + j]),
                "rank": int(rank[lo + j]),
            }
            for j in range(hi - lo)
        ]
        out.append(
            {
                "sequence": int(s),
                "prompt_index": int(ro.prompt_index[s]),
                "prompt": prompt_sets.describe(items[ro.prompt_index[s]]),
                "seq_log_ratio": per_seq["seq_log_ratio"][s],
                "max_abs_d": per_seq["max_abs_diff"][s],
                "n_tokens": int(hi - lo),
                "finish_reason": ro.finish_reasons[s],
                "truncation_boundary": int(at_boundary[lo:hi].sum()),
                "tokens": tokens,
            }
        )
    return out


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _fingerprint(
    spec: ComparisonSpec, model_path: str, engine: Any, tm: Any, ro: Any, processing: Any
) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "model": spec.model,
        "model_path": model_path,
        "engine": {
            "adapter": engine.adapter,
            "vllm_version": ro.vllm_version,
            **engine.effective_settings(),
            "settings": spec.engine.model_dump(),
        },
        "trainer": {
            "transformers_version": transformers.__version__,
            **spec.trainer.model_dump(),
            "processing_applied": processing.kind,
            "device_resolved": str(tm.device),
        },
        "sampling": ro.effective,
        "sampling_requested": ro.requested,
        "sampling_model_defaults": ro.model_defaults,
        "prompt_set": spec.prompt_set,
        "num_prompts": spec.num_prompts,
        "versions": {
            "vllm": ro.vllm_version,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "device": _device_name(tm.device),
    }


def _device_name(device: Any) -> str:
    import torch

    if getattr(device, "type", "") == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu ({cpu}, {torch.get_num_threads()} threads)"


# --- the command line ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags: one per field of the spec (workers.cli), plus the output options."""
    parser = spec_parser(
        ComparisonSpec,
        prog="python -m workers.compare",
        description="Compare vLLM V1 and the trainer (transformers) on the same sampled tokens.",
    )
    cli.add_verdict_output_flags(parser)
    return parser


def spec_from_args(args: argparse.Namespace) -> ComparisonSpec:
    """The ComparisonSpec the parsed flags describe (UserError on invalid values)."""
    return cli.spec_from_args(ComparisonSpec, args, output_flags=cli.VERDICT_OUTPUT_FLAGS)


_KEY_METRICS = (
    "n_sequences",
    "n_tokens",
    "abs_diff_mean",
    "abs_diff_p99",
    "abs_diff_max",
    "bias",
    "kl_k1",
    "kl_k3",
    "chi2_token",
    "ess",
    "clip_rate",
    "catastrophic_seq_frac",
    "token_mismatch",
    "nonfinite_trainer",
    "truncation_boundary",
    "argmax_agree",
    "topk_containment",
    "bit_equal_frac",
    "trainer_ppl",
    "distinct_2",
)


def _fmt(x: Any) -> str:
    return number(x, missing="n/a")


def format_report(outcome: JobOutcome, worst: int = 3) -> str:
    """The human-readable report the CLI prints."""
    r = outcome.result
    m = r["metrics"]
    lines = [f"verdict: {outcome.verdict.upper()}"]
    lines += [f"  - {reason}" for reason in m.get("reasons", [])]
    fp = r["fingerprint"]
    eng = fp["engine"]
    adapter = eng.get("adapter", "vllm")
    where = f" at {eng['url']}" if eng.get("url") else ""
    lines.append(
        f"model {fp['model']} · {engines.ADAPTER_LABELS.get(adapter, adapter)}"
        f"{where} {eng['vllm_version']} · {fp['device']} · engine "
        f"{eng['dtype']}/{eng['logprobs_mode']}/generation_config={eng['generation_config']} · "
        f"trainer {fp['trainer']['dtype']}/{fp['trainer']['processing_applied']}"
    )
    if r["diagnoses"]:
        lines.append("\ndiagnoses:")
        for d in r["diagnoses"]:
            lines.append(f"  [{d['severity']}] {d['name']}: {d['message']}")
            lines.append(f"      fix: {d['fix']}")
    notes = r.get("notes", [])
    if notes:
        lines.append("\nnotes:")
        lines += [f"  - {note}" for note in notes]
    samp = r["sampling"]
    lines.append("\nsampling (requested -> effective):")
    for k, v in samp["effective"].items():
        req = samp["requested"].get(k)
        flag = "   *changed*" if req != v else ""
        lines.append(f"  {k:20s} {_fmt(req):>10s} -> {_fmt(v)}{flag}")
    lines.append("\nmetrics:")
    values = m["values"]
    for k in _KEY_METRICS:
        if k in values:
            lines.append(f"  {k:24s} {_fmt(values[k])}")
    t = r["timings"]
    lines.append(
        "\ntimings: "
        + ", ".join(f"{k} {v:.2f}" for k, v in t.items())
        + f", wall {r['wall_s']:.2f} s"
    )
    for seq in r["worst_sequences"][:worst]:
        lines.append(
            f"\nworst sequence {seq['sequence']} (max |d| {_fmt(seq['max_abs_d'])}, "
            f"S {_fmt(seq['seq_log_ratio'])}) prompt: {seq['prompt'][-120:]!r}"
        )
        parts = []
        for tok in seq["tokens"]:
            d = tok["d"]
            if d is None or abs(d) >= 0.1:
                parts.append(f"[{tok['text']}|d={'-inf' if d is None else f'{d:+.2f}'}]")
            else:
                parts.append(tok["text"])
        lines.append("  " + "".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        spec = spec_from_args(args)
        with cli.report_only_on_stdout():
            outcome = run_comparison(spec, PrintReporter(quiet=getattr(args, "json", False)))
    except UserError as exc:
        return cli.fail(exc)
    if getattr(args, "json", False):
        print(json.dumps({"verdict": outcome.verdict, "result": outcome.result}, indent=1))
    else:
        print(format_report(outcome))
    return cli.verdict_exit_code(args, outcome.verdict)


if __name__ == "__main__":
    sys.exit(main())
