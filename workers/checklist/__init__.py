"""The vLLM V1 migration checklist (issue 8), measured on the user's own model.

For each of the four known fix areas (see METRICS.md "known offsets") the checklist runs the
V1 default and the fix as comparisons on the same prompts and seeds, and reports per row a
status, the measured before/after numbers and the setting to use:

    row                  before (V1 default)                after (fix)
    processed_logprobs   engine raw logprobs                processed logprobs
    runtime_defaults     generation_config="auto"           every sampling field explicit
    weight_updates       load_weights, no prefix reset      load_weights + reset_prefix_cache()
    fp32_head            model-dtype lm_head, both sides    fp32 lm_head on both sides
    all_fixes            all V1 defaults together           all fixes, vs the thresholds

In every variant the trainer scores the engine's tokens the way an RL trainer should: under
the sampling distribution it was told about (temperature, top-k, top-p, min-p, penalties,
renormalised; `workers.trainer.process_logprobs`). So "before" numbers are the gap an RL
loop really sees with the V1 default, and "after" the gap that remains with the fix.

    engine raw / auto / model head ........ V1 defaults, raw logprobs
    engine processed / auto / model head .. generation_config defaults, processed logprobs,
                                            (trainer fp32 head) fp32 on one side only
    engine processed / vllm / fp32 head ... fp32 both sides = all fixes
    replay engine(s) (workers.replay) ..... weight updates with / without reset, in flight

Against a server the user runs (`spec.server.url`) only the variants that change the trainer
or the request run there; a fix that is an engine start option is not run, and its row says
"needs-restart" with the exact flag (`plan.plan_server_variants`, `server_rows`).

One module per concern: `plan` (which variants and replays), `run` (measuring them through
`workers.measure`, the job entry point), `rows` (the pure judgement), `recommendations` (the
settings to use), `report` (the result and its JSON, `parity.reports.checklist`), `markdown`
(the pull-request report, from templates/) and `cli` (`python -m workers.checklist`).
Importing the package imports no torch, vLLM or transformers.
"""

from workers.checklist.markdown import render_markdown
from workers.checklist.measured import Measured
from workers.checklist.plan import (
    Served,
    Variant,
    explicit,
    in_flight_offered,
    needs_restart,
    plan_server_variants,
    plan_variants,
    replay_plan,
    replay_spec_for,
)
from workers.checklist.recommendations import recommendation
from workers.checklist.report import ChecklistResult, abs_d_histogram, summarise_replay
from workers.checklist.rows import build_rows, matters, overall_verdict
from workers.checklist.run import run_checklist, run_checklist_job

__all__ = [
    "ChecklistResult",
    "Measured",
    "Served",
    "Variant",
    "abs_d_histogram",
    "build_rows",
    "explicit",
    "in_flight_offered",
    "matters",
    "needs_restart",
    "overall_verdict",
    "plan_server_variants",
    "plan_variants",
    "recommendation",
    "render_markdown",
    "replay_plan",
    "replay_spec_for",
    "run_checklist",
    "run_checklist_job",
    "summarise_replay",
]
