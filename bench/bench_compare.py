"""A comparison's wall time against the bare work it cannot avoid, measured in the same run.

    python bench/bench_compare.py [--num-prompts 36] [--max-tokens 64] [--repeats 5]

Baseline: `llm.generate` with the same SamplingParams on the same prompt token ids, plus a
bare transformers forward (`model(input_ids).logits`) over the same prompt+response tokens
in the same batches. Both use the warm engine and the loaded trainer model that the
comparison uses, so engine and model loading are excluded on both sides. Runs alternate
(comparison, baseline, comparison, ...) and the medians are compared. Target: <= 1.15x.
No assertions: this prints numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=str(ROOT / "var" / "models"))
    parser.add_argument("--num-prompts", type=int, default=36)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from workers import prompts, rollout, trainer
    from workers.compare import run_comparison
    from workers.reporting import NullReporter
    from workers.specs import ComparisonSpec
    from workers.tiny_model import build_tiny_model

    model = build_tiny_model(args.models)
    spec = ComparisonSpec.model_validate(
        {
            "model": str(model),
            "num_prompts": args.num_prompts,
            "engine": {"logprobs_mode": "processed", "generation_config": "vllm"},
            "sampling": {"temperature": 0.7, "top_p": 0.9, "max_tokens": args.max_tokens},
        }
    )
    print(f"warming up: {model}, {args.num_prompts} prompts x {args.max_tokens} tokens", flush=True)
    started = time.perf_counter()
    run_comparison(spec, NullReporter())
    print(f"  first comparison (engine + trainer load): {time.perf_counter() - started:.1f} s")

    engine, _ = rollout.get_engine(str(model), spec.engine)
    tm, _ = trainer.get_trainer(str(model), spec.trainer)
    items = prompts.load(spec.prompt_set, spec.prompts, spec.num_prompts)
    prompt_ids = prompts.render(items, tm.tokenizer)
    params = rollout.effective_sampling(spec.sampling, engine.llm)
    from vllm.inputs import TokensPrompt

    requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]

    def bare() -> tuple[float, float]:
        t0 = time.perf_counter()
        outputs = engine.llm.generate(requests, params, use_tqdm=False)
        t1 = time.perf_counter()
        seqs = [
            p + list(c.token_ids)
            for p, o in zip(prompt_ids, outputs, strict=True)
            for c in o.outputs
        ]
        seqs.sort(key=len, reverse=True)
        bs = tm.settings.batch_size
        with torch.inference_mode():
            for start in range(0, len(seqs), bs):
                batch = seqs[start : start + bs]
                width = len(batch[0])
                ids = torch.full((len(batch), width), tm.pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for i, s in enumerate(batch):
                    ids[i, : len(s)] = torch.tensor(s)
                    mask[i, : len(s)] = 1
                logits = tm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                del logits
        return t1 - t0, time.perf_counter() - t1

    cmp_s: list[float] = []
    gen_s: list[float] = []
    fwd_s: list[float] = []
    breakdown: list[dict[str, float]] = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        outcome = run_comparison(spec, NullReporter())
        cmp_s.append(time.perf_counter() - t0)
        breakdown.append(outcome.result["timings"])
        g, f = bare()
        gen_s.append(g)
        fwd_s.append(f)
    base = [g + f for g, f in zip(gen_s, fwd_s, strict=True)]
    med_cmp, med_base = statistics.median(cmp_s), statistics.median(base)
    print(
        f"tokens per run: {outcome.result['counts']['tokens']} "
        f"({outcome.result['counts']['sequences']} sequences)"
    )
    print(
        f"comparison          median {med_cmp:.3f} s  (runs: "
        + ", ".join(f"{x:.2f}" for x in cmp_s)
        + ")"
    )
    print(f"bare generate       median {statistics.median(gen_s):.3f} s")
    print(f"bare trainer fwd    median {statistics.median(fwd_s):.3f} s")
    print(
        f"baseline            median {med_base:.3f} s  (runs: "
        + ", ".join(f"{x:.2f}" for x in base)
        + ")"
    )
    keys = breakdown[0].keys()
    print(
        "comparison breakdown (median s): "
        + ", ".join(f"{k} {statistics.median(b[k] for b in breakdown):.3f}" for k in keys)
    )
    print(f"ratio comparison / (generate + forward): {med_cmp / med_base:.3f}x (target <= 1.15x)")

    # Where the trainer's share goes: its scoring of one rollout against the forward inside it.
    outputs = engine.llm.generate(requests, params, use_tqdm=False)
    responses = [list(c.token_ids) for o in outputs for c in o.outputs]
    scored_prompts = [p for p, o in zip(prompt_ids, outputs, strict=True) for _ in o.outputs]
    processing = trainer.Processing.for_comparison(
        spec.trainer, spec.engine, spec.sampling.requested()
    )
    scores = [
        trainer.score(tm, scored_prompts, responses, processing, topk=spec.sampling.logprobs_topk)
        for _ in range(args.repeats)
    ]
    score_s = statistics.median(s.seconds for s in scores)
    forward_s = statistics.median(s.forward_seconds for s in scores)
    print(
        f"trainer scoring     median {score_s:.3f} s, of which forward + lm_head "
        f"{forward_s:.3f} s ({score_s / forward_s:.2f}x the forward)"
    )
    rollout.shutdown_engine()
    return 0


if __name__ == "__main__":
    sys.exit(main())
