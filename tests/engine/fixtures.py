"""Session fixtures every tier that needs an engine shares (registered in tests/conftest.py):
the tiny models, and a real vLLM server process on the tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from workers.engines.launch import LocalServer

SERVER_API_KEY = "parity-test-key"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny model variant (workers.tiny_model.VARIANTS: the Llama "base" and "genconfig",
    and one per further family, "qwen2", "qwen3"), built once into a session folder."""
    pytest.importorskip("vllm")
    from workers.tiny_model import VARIANTS, build_tiny_model

    out = tmp_path_factory.mktemp("models")
    return {variant: build_tiny_model(out, variant=variant) for variant in VARIANTS}


@pytest.fixture(scope="session")
def tiny_model(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["base"]


@pytest.fixture(scope="session")
def vllm_server(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer]:
    """A real vLLM server on the tiny model for the session (workers.engines.launch: a free
    port, dev mode, AMX permission in every server process), with an API key, started with
    the default engine settings except the RAM it reserves: half the in-process engine's, as
    it runs beside it on a machine other test runs share (vLLM refuses to start when the
    fraction is not free). Stopped with its whole process group at the end."""
    from workers.engines.launch import start_server
    from workers.specs import EngineSettings

    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    settings = EngineSettings(gpu_memory_utilization=0.1)
    server = start_server(str(tiny_model), settings, log_path, api_key=SERVER_API_KEY)
    try:
        yield server
    finally:
        server.stop()
