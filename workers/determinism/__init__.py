"""The determinism certificate (issue 14 §3): is the engine bit-exact across batch shapes?

The same prompts and seeds are sampled at batch size 1 (the reference), as one full batch, in
a shuffled order and, on an engine Parity builds, at another max_num_seqs; each run is compared
with the reference over the tokens both sampled identically, and the reference is scored by
the trainer (trainer vs engine bit_equal_frac, meaningful when both claim determinism).

One module per concern: `judge` (pure: runs -> numbers -> verdict), `run` (the engine work
and the job entry point), `cli` (`python -m workers.determinism`). Importing the package
imports no torch, vLLM or transformers.
"""

from workers.determinism.judge import Sequences, compare_runs, first_divergence, groups, verdict
from workers.determinism.run import run_determinism, run_determinism_job

__all__ = [
    "Sequences",
    "compare_runs",
    "first_divergence",
    "groups",
    "run_determinism",
    "run_determinism_job",
    "verdict",
]
