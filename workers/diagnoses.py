"""A comparison's diagnoses: the METRICS.md "known offsets" it shows, by name, with the fix.

Pure judgement over the configuration and the measured values (no engine, no torch), so each
diagnosis is unit-testable from hand-built numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from parity.reports.comparison import Diagnosis
from parity.reports.numbers import number
from workers.specs import ComparisonSpec

# A diagnosis is "measured" when fixing it would remove at least this much of the gap.
_MEASURED_GAIN = 0.5


def _diagnosis(
    name: str, severity: Literal["error", "warning"], message: str, fix: str
) -> Diagnosis:
    return {"name": name, "severity": severity, "message": message, "fix": fix}


def _gap(values: Mapping[str, Any] | None) -> float | None:
    v = None if values is None else values.get("abs_diff_mean")
    return float(v) if isinstance(v, int | float) else None


def _fmt(x: Any) -> str:
    return number(x, missing="n/a")


def diagnose(
    spec: ComparisonSpec,
    ro: Any,
    processing: Any,
    values: Mapping[str, Any],
    reference: Mapping[str, Any] | None,
    engine_kind: str | None = None,
) -> list[Diagnosis]:
    """The METRICS.md "known offsets" this comparison shows, by name, with the fix.

    Each is decided from the configuration and, where the trainer's processing differs from
    the engine's, backed by the measurement: the same tokens were also scored with the
    processing that matches the engine (`reference`), so the report can say how much of the
    gap the misconfiguration explains.

    `engine_kind` is the distribution the engine's logprobs describe ("raw", "processed", or
    "temperature" for SGLang's full-vocabulary log_softmax(logits / T)); by default the one
    the spec's logprobs_mode names.
    """
    out: list[Diagnosis] = []
    eff = ro.effective
    gap, ref_gap = _gap(values), _gap(reference)
    measured = (
        gap is not None
        and ref_gap is not None
        and gap > 0
        and ref_gap <= (1 - _MEASURED_GAIN) * gap
    )
    gap_note = ""
    if gap is not None and ref_gap is not None:
        gap_note = (
            f" Measured: mean |lt - lr| = {gap:.4g} as configured, {ref_gap:.4g} when "
            "the trainer applies the engine's processing."
        )
    kind = engine_kind or ("processed" if spec.engine.logprobs_mode == "processed" else "raw")
    engine_raw = kind == "raw"
    temp = float(eff["temperature"])
    greedy = temp < 1e-5
    eff_truncates = not greedy and (eff["top_p"] < 1.0 or eff["top_k"] > 0 or eff["min_p"] > 0)
    eff_penalised = (
        eff["repetition_penalty"] != 1.0
        or eff["presence_penalty"] != 0.0
        or eff["frequency_penalty"] != 0.0
    )

    changed = ro.changed_by_defaults
    if changed:
        listed = ", ".join(f"{k} {_fmt(a)} -> {_fmt(b)}" for k, (a, b) in changed.items())
        affects_trainer = processing.kind != "raw" and measured
        out.append(
            _diagnosis(
                "generation_config_defaults",
                "error" if affects_trainer else "warning",
                "generation_config='auto' (vLLM's default) applied the model's "
                f"generation_config.json to the sampling fields left unset: {listed} (requested -> "
                "effective). The engine samples with parameters the trainer does not know about."
                + (gap_note if affects_trainer else ""),
                "Start vLLM with generation_config='vllm' (vllm serve --generation-config vllm), "
                "or set every sampling parameter explicitly and give the trainer the same ones.",
            )
        )

    if engine_raw and (not greedy and temp != 1.0 or eff_truncates or eff_penalised):
        what = []
        if not greedy and temp != 1.0:
            what.append(f"T={_fmt(temp)}")
        if eff_truncates:
            what += [
                f"{k}={_fmt(eff[k])}"
                for k in ("top_p", "top_k", "min_p")
                if (k == "top_p" and eff[k] < 1.0) or (k != "top_p" and eff[k] > 0)
            ]
        if eff_penalised:
            what.append("penalties")
        sampling_desc = "sampling at " + ", ".join(what)
        trainer_processes = processing.kind in ("processed", "temperature")
        out.append(
            _diagnosis(
                "raw_logprobs_with_processing",
                "error" if trainer_processes else "warning",
                f"engine returns raw logprobs while {sampling_desc}: lr is the log-prob under the "
                "unprocessed distribution, not the one the token was sampled from"
                + (
                    ", so it cannot match the trainer's processed lt (d scales with (1/T - 1) x "
                    "logits)." + gap_note
                    if trainer_processes
                    else "; the trainer matches it, but importance ratios against the sampling "
                    "distribution are biased."
                ),
                "use processed logprobs (logprobs_mode='processed_logprobs'; vllm serve "
                "--logprobs-mode processed_logprobs) and apply the same temperature and "
                "truncation in the trainer.",
            )
        )

    if kind == "processed" and eff_truncates and processing.kind in ("raw", "temperature"):
        bias = values.get("bias")
        out.append(
            _diagnosis(
                "truncation_log_s",
                "error",
                "the engine renormalises over the top-p/top-k/min-p support while the trainer "
                "scores the full vocabulary: lr = log p - log S with S the surviving mass, so "
                f"rho = exp(lt - lr) ≈ S < 1 (mean d = {_fmt(bias)}, i.e. mean log S)." + gap_note,
                "apply the same top-p/top-k/min-p with renormalisation in the trainer (processing="
                "'processed'), or sample RL rollouts without truncation.",
            )
        )

    if kind == "temperature" and eff_truncates and processing.kind == "processed":
        out.append(
            _diagnosis(
                "untruncated_engine_logprobs",
                "error",
                "the engine's logprobs are log_softmax(logits / T) over the full vocabulary "
                "(SGLang's: top-p/top-k/min-p shape the sampling, not the returned logprobs), "
                "while the trainer renormalises over the truncated support, so lt - lr = -log S "
                "with S the surviving mass." + gap_note,
                "score the full vocabulary at the sampling temperature in the trainer "
                "(processing='temperature', or 'match_engine'), or sample RL rollouts without "
                "truncation.",
            )
        )

    if not engine_raw and not greedy and temp != 1.0 and processing.kind == "raw":
        out.append(
            _diagnosis(
                "temperature_not_applied",
                "error",
                f"the engine's processed logprobs use T={_fmt(temp)} but the trainer scores at "
                "T=1." + gap_note,
                f"divide the trainer's logits by the sampling temperature ({_fmt(temp)}).",
            )
        )

    boundary = values.get("truncation_boundary") or 0
    if boundary:
        share = values.get("truncation_boundary_frac") or 0.0
        out.append(
            _diagnosis(
                "truncation_boundary",
                "warning",
                f"{boundary} sampled token(s) ({share * 100:.2g}% of all) fall outside the "
                "trainer's own top-p/top-k/min-p support (lt = -inf): near the cut-off, small "
                "logit differences move a token across the boundary. They are counted apart "
                "(truncation_boundary), not averaged in.",
                "score the engine's support on the trainer side (or sample RL rollouts without "
                "truncation); reducing the logit gap (fp32 lm_head on both sides) makes it rarer.",
            )
        )

    if spec.engine.head_dtype != spec.trainer.head_dtype:
        fp32_side = "engine" if spec.engine.head_dtype == "float32" else "trainer"
        out.append(
            _diagnosis(
                "fp32_head_one_side",
                "warning",
                f"only the {fp32_side} computes the lm_head in fp32; the other side's logits keep "
                "the model dtype's rounding, so the two disagree by that rounding.",
                "use an fp32 lm_head on both sides (vLLM hf_overrides={'head_dtype': 'float32'}; "
                "trainer head in fp32).",
            )
        )

    mismatched = values.get("token_mismatch") or 0
    if mismatched:
        out.append(
            _diagnosis(
                "token_mismatch",
                "error",
                f"the trainer scored {mismatched} token(s) other than the ones the engine sampled: "
                "the comparison itself is broken at those positions.",
                "report this as a bug in Parity with the job's fingerprint.",
            )
        )
    return out
