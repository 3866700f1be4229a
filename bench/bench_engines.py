"""The server adapters against the in-process engine on the same prompts, same run.

    python bench/bench_engines.py [--num-prompts 36] [--max-tokens 64] [--repeats 5]

Baseline: the in-process engine's `generate` (warm). Measured: the vLLM server adapter's
`generate` on a local vLLM server started with the same engine settings (HTTP, one request
per prompt, sent concurrently), and the SGLang adapter's on a local SGLang server (CPU engine,
same dtype; skipped when scripts/install-sglang.sh has not built its venv). One engine runs at
a time, each warmed up first, and the medians are compared. Also prints the one-off costs
(engine build, server starts). No assertions: this prints numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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

    from transformers import AutoTokenizer

    from workers import prompts, rollout
    from workers.engines import sglang_server, vllm_server
    from workers.engines.launch import sglang_installed, start_server, start_sglang_server
    from workers.specs import EngineSettings, SamplingSettings, ServerSettings
    from workers.tiny_model import build_tiny_model

    model = str(build_tiny_model(args.models))
    # The server reserves its own share of RAM beside the in-process engine's.
    settings = EngineSettings(gpu_memory_utilization=0.1)
    sampling = SamplingSettings(max_tokens=args.max_tokens)
    items = prompts.load(prompts.BUILTIN, None, args.num_prompts)
    prompt_ids = prompts.render(items, AutoTokenizer.from_pretrained(model))

    logs = Path(tempfile.mkdtemp(prefix="bench-engines-"))

    def timed(engine: Any) -> tuple[float, int]:
        """(median seconds of `generate`, tokens sampled), after one warm-up."""
        engine.generate(prompt_ids, sampling)
        seconds, tokens = [], 0
        for _ in range(args.repeats):
            t = time.perf_counter()
            ro = engine.generate(prompt_ids, sampling)
            seconds.append(time.perf_counter() - t)
            tokens = sum(len(ids) for ids in ro.token_ids)
        return statistics.median(seconds), tokens

    # One engine alive at a time: an idle server's engine still holds threads that slow the
    # others down (measured: in-process 8.9 s beside two idle servers, far less alone).
    started = time.perf_counter()
    engine, _ = rollout.get_engine(model, settings)
    build_s = time.perf_counter() - started
    try:
        base, tokens = timed(engine)
    finally:
        rollout.shutdown_engine()
    print(f"{len(prompt_ids)} prompts x {args.max_tokens} tokens ({tokens} sampled), warm:")
    print(f"  in-process generate:     median {base:.3f} s  (engine build {build_s:.1f} s)")

    servers: list[tuple[str, Any, Any, str]] = [
        (
            "vLLM server",
            lambda: start_server(model, settings, logs / "vllm.log"),
            vllm_server,
            "vllm",
        )
    ]
    if sglang_installed():
        servers.append(
            (
                "SGLang server",
                lambda: start_sglang_server(model, logs / "sglang.log", dtype=settings.dtype),
                sglang_server,
                "sglang",
            )
        )
    else:
        print("SGLang venv absent (bash scripts/install-sglang.sh): SGLang not measured")
    for name, start, adapter, kind in servers:
        proc = start()
        try:
            client = adapter.connect(ServerSettings(url=proc.url, engine=kind), model, settings)
            try:
                t, _ = timed(client)
            finally:
                client.close()
        finally:
            proc.stop()
        print(
            f"  {name} generate: median {t:.3f} s  (server start {proc.start_seconds:.1f} s)"
            f"  ratio / in-process: {t / base:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
