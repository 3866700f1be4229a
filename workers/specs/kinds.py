"""The one table of job kinds: what each kind's spec is, what runs it and what it is called.

The Celery task, the API, the forms, the views and the model choices all read this table, so a
new kind is one row here (and a runner). Importable without torch, vLLM or Django: the web
process validates every spec, including those whose runners need an engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from workers.specs.checklist import ChecklistSpec
from workers.specs.comparison import ComparisonSpec
from workers.specs.determinism import DeterminismSpec
from workers.specs.replay import ReplaySpec


@dataclass(frozen=True)
class JobKind:
    name: str
    label: str
    # "module:function" taking (spec mapping, reporter) and returning a JobOutcome; imported
    # only on the worker (the engine modules pull in torch and vLLM).
    runner: str
    # None: a kind with a free-form spec that users do not create from a form (ping).
    spec: type[BaseModel] | None
    description: str = ""


JOB_KINDS: dict[str, JobKind] = {
    k.name: k
    for k in (
        JobKind(
            "comparison",
            "Comparison",
            "workers.compare:run_comparison_job",
            ComparisonSpec,
            "Sample with vLLM V1, score the same tokens with the trainer, and compare.",
        ),
        JobKind(
            "replay",
            "Replay",
            "workers.replay:run_replay_job",
            ReplaySpec,
            "Push weight updates into a running engine and check each one.",
        ),
        JobKind(
            "checklist",
            "Checklist",
            "workers.checklist:run_checklist_job",
            ChecklistSpec,
            "Measure the four vLLM V1 fixes on your model.",
        ),
        JobKind(
            "determinism",
            "Determinism certificate",
            "workers.determinism:run_determinism_job",
            DeterminismSpec,
            "Sample the same prompts and seeds at batch size 1, full batch and shuffled; "
            "say whether the engine is bit-exact.",
        ),
        JobKind(
            "ping", "Ping", "workers.ping:ping", None, "Round trip browser -> worker -> Postgres."
        ),
    )
}
# The kinds a user creates from a form or the API with a validated spec.
SPEC_KINDS: tuple[str, ...] = tuple(k.name for k in JOB_KINDS.values() if k.spec is not None)


def spec_model(kind: str) -> type[BaseModel]:
    """The spec model of a job kind; KeyError for a kind without one."""
    spec = JOB_KINDS[kind].spec
    if spec is None:
        raise KeyError(kind)
    return spec
