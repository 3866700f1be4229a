"""Test-only vLLM worker extensions that plant the faults a replay must catch.

They run inside the engine (vLLM imports them by qualified name: the repository root is on
the engine's import path, as the tests run from it). Never used outside tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from workers.weight_sync import WeightSyncExtension

# The parameter the partial update leaves behind: a shard of vLLM's fused qkv_proj, so the
# checksums must split the fused parameter back to HF names to name it.
SKIPPED_PARAM = "model.layers.0.self_attn.v_proj.weight"


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
