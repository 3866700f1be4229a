"""A GRPO-shaped loop with synthetic tensors, posting its mismatch to a Parity server.

No GPU, model or torch needed: each step makes a padded batch of rollout logprobs (lr), the
trainer's logprobs of the same tokens (lt = lr + noise) and a response mask, exactly the
three tensors a real loop has, and hands them to parity.Monitor. Around --drift-at the
trainer starts to disagree (as after an engine upgrade that switched the lm_head to bf16),
so the dashboard's clip-rate and KL charts and any alert rule have something to show.

    make demo                                    # the server, with user/project "demo"
    # create a token on http://127.0.0.1:8000/p/demo/tokens/, then:
    PARITY_URL=http://127.0.0.1:8000 PARITY_TOKEN=pty_... python examples/synthetic_grpo.py
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import parity


def rollout_batch(
    rng: np.random.Generator, step: int, batch: int, max_len: int, drift_at: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(lt, lr, mask, reward) of one step, padded to [batch, max_len]."""
    lengths = rng.integers(max_len // 8, max_len + 1, batch)
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    # Sampled tokens are mostly likely ones, with a tail of unlikely picks.
    lr = -rng.gamma(0.35, 1.2, (batch, max_len)).astype(np.float32)
    noise = 0.01
    if step >= drift_at:
        # Low-probability tokens drift most: the pattern a bf16 head produces.
        noise = 0.01 + 0.04 * min(1.0, (step - drift_at) / 20)
    lt = lr + rng.normal(0.0, 1.0, lr.shape).astype(np.float32) * noise * (1 + np.abs(lr))
    lt = np.minimum(lt, 0.0)
    reward = float(np.tanh(step / 60) + rng.normal(0, 0.05))
    return lt, lr, mask, reward


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="The server and token come from --url/--token, else from the environment "
        "variables PARITY_URL and PARITY_TOKEN. Create a token on the project's Tokens page "
        "(e.g. http://127.0.0.1:8000/p/demo/tokens/).",
    )
    ap.add_argument(
        "--url",
        default=os.environ.get("PARITY_URL", "http://127.0.0.1:8000"),
        help="the Parity server (default: $PARITY_URL, else %(default)s)",
    )
    ap.add_argument(
        "--token",
        default=os.environ.get("PARITY_TOKEN"),
        help="an API token of the project (default: $PARITY_TOKEN)",
    )
    ap.add_argument("--project", default="demo")
    ap.add_argument("--run", default=f"synthetic-grpo-{int(time.time())}")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64, help="sequences per step")
    ap.add_argument("--max-len", type=int, default=512, help="response tokens per sequence")
    ap.add_argument("--drift-at", type=int, default=120, help="step where the mismatch starts")
    ap.add_argument("--sleep", type=float, default=0.2, help="seconds per step (the 'training')")
    ap.add_argument("--upload-raw", action="store_true", help="send arrays; the server computes")
    args = ap.parse_args()
    if not args.token:
        ap.error("no API token: pass --token or set PARITY_TOKEN (see --help)")

    rng = np.random.default_rng(0)
    mon = parity.Monitor(
        args.url,
        args.token,
        project=args.project,
        run=args.run,
        config={
            "algo": "grpo",
            "model": "synthetic",
            "batch": args.batch,
            "max_len": args.max_len,
            "vllm": "synthetic",
        },
        tags=["example", "synthetic"],
    )
    for step in range(args.steps):
        lt, lr, mask, reward = rollout_batch(rng, step, args.batch, args.max_len, args.drift_at)
        values = mon.log_step(
            step, trainer_logprobs=lt, rollout_logprobs=lr, mask=mask, upload_raw=args.upload_raw
        )
        mon.log(step, {"reward": reward})
        if step % 20 == 0:
            print(
                f"step {step:4d}  abs_diff_mean {values['abs_diff_mean']:.4f}  "
                f"kl_k3 {values['kl_k3']:.2e}  clip_rate {values['clip_rate']:.4f}"
            )
        time.sleep(args.sleep)
    ok = mon.finish()
    print(
        f"done: {mon.sent} points sent, run {mon.run_id}"
        + ("" if ok else " (some left in the spill file)")
    )


if __name__ == "__main__":
    main()
