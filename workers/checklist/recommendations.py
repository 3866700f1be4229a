"""The exact settings to use, per checklist row, as code to copy: the offline `LLM(...)`, the
`vllm serve` flags and what the trainer must do, filled in with the user's model and sampling.

Pure: the spec in, strings out.
"""

from __future__ import annotations

import json
from typing import Any

from parity.reports.checklist import Recommendation, RowCheck
from workers.checklist.plan import explicit
from workers.specs import NEUTRAL_SAMPLING, ChecklistSpec

_FP32_HEAD = '{"head_dtype": "float32"}'


def _py(v: Any) -> str:
    return repr(float(v)) if isinstance(v, float) else repr(v)


def sampling_params_code(spec: ChecklistSpec) -> str:
    """`SamplingParams(...)` with every field the engine could fill set explicitly."""
    req = explicit(spec.sampling).requested()
    args = ", ".join(f"{k}={_py(req[k])}" for k in NEUTRAL_SAMPLING)
    return f"SamplingParams({args}, logprobs=0)"


def trainer_processing_code(spec: ChecklistSpec) -> str:
    """The trainer's logits processing for the user's sampling, in vLLM's order, as torch
    code: only the steps this sampling needs."""
    req = explicit(spec.sampling).requested()
    t, top_p, top_k, min_p = (
        float(req["temperature"]),
        float(req["top_p"]),
        int(req["top_k"]),
        float(req["min_p"]),
    )
    lines = [
        "# vLLM's order (v1/sample/sampler.py): penalties, temperature, min-p, top-k, top-p, "
        "renormalise",
        "logits = logits.float()",
    ]
    penalised = (
        req["repetition_penalty"] != 1.0
        or req["presence_penalty"] != 0.0
        or req["frequency_penalty"] != 0.0
    )
    if penalised:
        lines.append(
            "logits = apply_penalties(logits, ...)  # repetition, frequency, presence as vLLM"
        )
    if t < 1e-5:
        lines.append("logprobs = logits.log_softmax(-1)  # greedy: nothing else applies")
        return "\n".join(lines)
    if t != 1.0:
        lines.append(f"logits = logits / {_py(t)}")
    if min_p > 0:
        lines += [
            "probs = logits.softmax(-1)",
            f"logits = logits.masked_fill(probs < {_py(min_p)} * probs.amax(-1, "
            "keepdim=True), float('-inf'))",
        ]
    if top_k > 0:
        lines += [
            f"kth = logits.topk({top_k}, dim=-1).values[..., -1:]",
            "logits = logits.masked_fill(logits < kth, float('-inf'))",
        ]
    if top_p < 1.0:
        lines += [
            "srt, idx = logits.sort(dim=-1)  # ascending",
            f"drop = srt.softmax(-1).cumsum(-1) <= 1 - {_py(top_p)}",
            "drop[..., -1] = False  # always keep the most likely token",
            "logits = logits.scatter(-1, idx, srt.masked_fill(drop, float('-inf')))",
        ]
    lines.append("logprobs = logits.log_softmax(-1)  # renormalised over the survivors")
    return "\n".join(lines)


def recommendation(check: RowCheck, spec: ChecklistSpec) -> Recommendation:
    """Copy-pasteable settings for one row: `vllm_llm` (offline LLM(...)), `vllm_serve`
    (the server's flags) and `trainer` (what the trainer side must do), as code."""
    model, m = spec.model, json.dumps(spec.model)
    if check == "processed_logprobs":
        return {
            "vllm_llm": f'llm = LLM(model={m}, logprobs_mode="processed_logprobs")',
            "vllm_serve": f"vllm serve {model} --logprobs-mode processed_logprobs",
            "trainer": trainer_processing_code(spec),
        }
    if check == "runtime_defaults":
        explicit_fields = {k: explicit(spec.sampling).requested()[k] for k in NEUTRAL_SAMPLING}
        return {
            "vllm_llm": (
                f'llm = LLM(model={m}, generation_config="vllm")\n'
                "# or leave nothing to the model's generation_config.json:\n"
                f"params = {sampling_params_code(spec)}"
            ),
            "vllm_serve": f"vllm serve {model} --generation-config vllm",
            "trainer": (
                "# the trainer applies exactly the parameters the engine samples with:\n"
                "sampling = " + json.dumps(explicit_fields)
            ),
        }
    if check == "weight_updates":
        return {
            "vllm_llm": (
                "# after every weight update, before the next rollout:\n"
                "llm.collective_rpc(...)  # your weight sync -> model.load_weights()\n"
                "llm.reset_prefix_cache()\n"
                "# updating in flight: pause, update, recompute the paused requests\n"
                "# (not measured by this checklist):\n"
                'llm.sleep(level=0, mode="keep")\n'
                "llm.reset_prefix_cache(reset_running_requests=True)\n"
                'llm.wake_up(tags=["scheduling"])'
            ),
            "vllm_serve": (
                f"VLLM_SERVER_DEV_MODE=1 vllm serve {model}\n"
                "# after every weight update:\n"
                "curl -X POST http://localhost:8000/reset_prefix_cache"
            ),
            "trainer": (
                "# start the next rollout only after the engine acknowledged the update\n"
                "# and its prefix cache was reset"
            ),
        }
    if check == "fp32_head":
        return {
            "vllm_llm": f"llm = LLM(model={m}, hf_overrides={_FP32_HEAD})",
            "vllm_serve": f"vllm serve {model} --hf-overrides '{_FP32_HEAD}'",
            "trainer": (
                "# fp32 on BOTH sides: one side alone makes the gap no smaller\n"
                "hidden = model.model(input_ids, attention_mask=mask).last_hidden_state\n"
                "logits = torch.nn.functional.linear(hidden.float(), "
                "model.lm_head.weight.float())"
            ),
        }
    return {
        "vllm_llm": (
            f'llm = LLM(\n    model={m},\n    logprobs_mode="processed_logprobs",\n'
            f'    generation_config="vllm",\n    hf_overrides={_FP32_HEAD},\n)\n'
            f"params = {sampling_params_code(spec)}\n"
            "# after every weight update: llm.reset_prefix_cache()"
        ),
        "vllm_serve": (
            f"vllm serve {model} --logprobs-mode processed_logprobs "
            f"--generation-config vllm \\\n    --hf-overrides '{_FP32_HEAD}'"
        ),
        "trainer": (
            "# fp32 lm_head, then the engine's sampling processing:\n"
            + trainer_processing_code(spec)
        ),
    }
