"""Job specs: pydantic only, importable without torch, vLLM or Django.

`common` holds the settings every kind shares (engine, trainer, sampling) and the one wording
of a spec error; one module per job kind; `kinds` is the table of job kinds.
"""

from workers.specs.checklist import CHECK_LABELS, CHECKS, ChecklistSpec
from workers.specs.common import (
    MAX_LOGPROBS,
    MIN_TEMPERATURE,
    NEUTRAL_SAMPLING,
    RL_ENGINE,
    RL_TRAINER,
    SECRET_FIELDS,
    SERVER_ENGINES,
    EngineSettings,
    InlinePrompts,
    ModelRef,
    SamplingSettings,
    ServerSettings,
    Settings,
    ThresholdOverrides,
    TrainerSettings,
    parse_spec,
    redact,
    validation_message,
)
from workers.specs.comparison import ComparisonSpec
from workers.specs.determinism import DeterminismSpec
from workers.specs.kinds import JOB_KINDS, SPEC_KINDS, JobKind, spec_model
from workers.specs.replay import (
    EXTENSION_QUALNAME,
    CheckpointSource,
    FlagSettings,
    ReplaySpec,
    SyntheticSource,
)

__all__ = [
    "CHECKS",
    "CHECK_LABELS",
    "EXTENSION_QUALNAME",
    "JOB_KINDS",
    "MAX_LOGPROBS",
    "MIN_TEMPERATURE",
    "NEUTRAL_SAMPLING",
    "RL_ENGINE",
    "RL_TRAINER",
    "SECRET_FIELDS",
    "SERVER_ENGINES",
    "SPEC_KINDS",
    "CheckpointSource",
    "ChecklistSpec",
    "ComparisonSpec",
    "DeterminismSpec",
    "EngineSettings",
    "FlagSettings",
    "InlinePrompts",
    "JobKind",
    "ModelRef",
    "ReplaySpec",
    "SamplingSettings",
    "ServerSettings",
    "Settings",
    "SyntheticSource",
    "ThresholdOverrides",
    "TrainerSettings",
    "parse_spec",
    "redact",
    "spec_model",
    "validation_message",
]
