"""Test-only vLLM worker extensions that plant the faults a replay must catch.

They run inside the engine (vLLM imports them by qualified name: the repository root is on
the engine's import path, as the tests run from it). Never used outside tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from parity.reports.replay import RetiedKernel
from workers.weight_sync import WeightSyncExtension

# The parameter the partial update leaves behind (a lost lm_head is the classic tied/untied
# embedding mapping bug). Not a shard of a fused parameter on purpose: with vLLM's layerwise
# reload a fused layer that receives only some of its shards is re-materialised, and the
# missing shard holds uninitialised memory, so the size of the spike would vary from run to
# run. A whole layer that receives nothing keeps its previous weights, deterministically.
SKIPPED_PARAM = "lm_head.weight"


class PartialUpdateExtension(WeightSyncExtension):
    """Every update loads all weights but SKIPPED_PARAM (a name-mapping bug, planted)."""

    def _parity_filter_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        return ((name, t) for name, t in weights if name != SKIPPED_PARAM)


# A parameter every family's checkpoint has (a tied model has no lm_head.weight to lose), not
# a shard of a fused parameter either (see SKIPPED_PARAM).
SKIPPED_MLP_PARAM = "model.layers.1.mlp.down_proj.weight"


class PartialMlpUpdateExtension(WeightSyncExtension):
    """Every update loads all weights but SKIPPED_MLP_PARAM (planted, on any family)."""

    def _parity_filter_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        return ((name, t) for name, t in weights if name != SKIPPED_MLP_PARAM)


class StaleUpdateExtension(WeightSyncExtension):
    """Every update loads the weights of the update before it: the engine keeps W_{k-1}
    (the first update loads nothing), like a sync that races one step behind."""

    def _parity_filter_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        received = [(name, t.clone()) for name, t in weights]
        previous = getattr(self, "_parity_previous_weights", [])
        self._parity_previous_weights = received
        return iter(previous)


class StaleTiedHeadExtension(WeightSyncExtension):
    """Parity's update path without its re-tie: what vLLM's layerwise reload alone does to a
    model with tied embeddings. The embedding takes W_k, the output head's kernel keeps the
    weights it was built from (on vLLM's CPU backend, where the head's kernel holds a packed
    copy; the engine tests run there)."""

    def _parity_retie_kernels(self, model: torch.nn.Module, loaded: set[str]) -> list[RetiedKernel]:
        return []


# The parameter CorruptedNormExtension corrupts, and by how much: a norm, so the corruption
# is read back exactly (norm weights are served as they are, no kernel) and is small.
CORRUPTED_PARAM = "model.layers.0.input_layernorm.weight"
CORRUPTION_SCALE = 1.02


class CorruptedNormExtension(WeightSyncExtension):
    """Every update loads W_k except CORRUPTED_PARAM, which arrives scaled by
    CORRUPTION_SCALE (a conversion bug on the way in): a partial update, nothing stale."""

    def _parity_filter_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        for name, t in weights:
            yield name, (t * CORRUPTION_SCALE).to(t.dtype) if name == CORRUPTED_PARAM else t


class ServerFaultsExtension(WeightSyncExtension):
    """Parity's extension in a vLLM server, plus a fault a test can plant in the running
    server through /collective_rpc: vLLM's own reload_weights (the server's update path,
    which an extension may not override) loading the directory of the reload before it."""

    def parity_test_plant_stale_reload(self, plant: str) -> None:
        runner = self.model_runner  # type: ignore[attr-defined]
        if plant != "yes":
            runner.__dict__.pop("reload_weights", None)
            return
        original = type(runner).reload_weights.__get__(runner)
        previous: list[str | None] = [None]  # the first update reloads the weights it has

        def stale_reload(*args: object, weights_path: str | None = None, **kw: object) -> None:
            behind, previous[0] = previous[0], weights_path
            if behind is None:
                return
            original(*args, weights_path=behind, **kw)

        runner.reload_weights = stale_reload
