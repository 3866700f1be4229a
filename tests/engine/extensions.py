"""Test-only vLLM worker extensions that plant the faults a replay must catch.

They run inside the engine (vLLM imports them by qualified name: the repository root is on
the engine's import path, as the tests run from it). Never used outside tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

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
