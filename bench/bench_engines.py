"""The vLLM server adapter against the in-process engine on the same prompts, same run.

    python bench/bench_engines.py [--num-prompts 36] [--max-tokens 64] [--repeats 5]

Baseline: the in-process engine's `generate` (warm). Measured: the server adapter's
`generate` on a local vLLM server started with the same engine settings (HTTP, one request
per prompt, sent concurrently). Both are warmed up first; runs alternate and the medians are
compared. Also prints the one-off costs (in-process engine build, server start). No
assertions: this prints numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
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

    from transformers import AutoTokenizer

    from workers import prompts, rollout
    from workers.engines.launch import start_server
    from workers.engines.vllm_server import connect
    from workers.specs import EngineSettings, SamplingSettings, ServerSettings
    from workers.tiny_model import build_tiny_model

    model = str(build_tiny_model(args.models))
    # The server reserves its own share of RAM beside the in-process engine's.
    settings = EngineSettings(gpu_memory_utilization=0.1)
    sampling = SamplingSettings(max_tokens=args.max_tokens)
    items = prompts.load(prompts.BUILTIN, None, args.num_prompts)
    prompt_ids = prompts.render(items, AutoTokenizer.from_pretrained(model))

    log = Path(tempfile.mkdtemp(prefix="bench-engines-")) / "server.log"
    server_proc = start_server(model, settings, log)
    try:
        started = time.perf_counter()
        engine, _ = rollout.get_engine(model, settings)
        build_s = time.perf_counter() - started
        server = connect(ServerSettings(url=server_proc.url), model, settings)
        for eng in (engine, server):
            eng.generate(prompt_ids, sampling)  # warm-up
        times: dict[str, list[float]] = {"in-process": [], "server": []}
        tokens = 0
        for _ in range(args.repeats):
            for name, eng in (("in-process", engine), ("server", server)):
                t = time.perf_counter()
                ro = eng.generate(prompt_ids, sampling)
                times[name].append(time.perf_counter() - t)
                tokens = sum(len(ids) for ids in ro.token_ids)
        server.close()
    finally:
        server_proc.stop()
        rollout.shutdown_engine()
    base, served = statistics.median(times["in-process"]), statistics.median(times["server"])
    print(f"{len(prompt_ids)} prompts x {args.max_tokens} tokens ({tokens} sampled), warm:")
    print(f"  in-process generate: median {base:.3f} s  (engine build {build_s:.1f} s)")
    start_s = server_proc.start_seconds
    print(f"  server generate:     median {served:.3f} s  (server start {start_s:.1f} s)")
    print(f"  ratio server / in-process: {served / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
