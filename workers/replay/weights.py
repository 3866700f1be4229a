"""The weights of a replay: W0 from the model directory, W_1..W_N from a seeded synthetic
trajectory or from checkpoint directories, put into the trainer and handed to the engine.

Tensors are torch tensors under HF parameter names; torch is imported inside the functions so
that importing the replay package costs no torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from workers.reporting import UserError
from workers.specs.replay import ReplaySpec, SyntheticSource

# Where the engine reads W_k from (workers.weight_sync.WeightHandle): {"kind", "path"}.
Handle = dict[str, str]


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    """HF-named tensors of every *.safetensors file in `directory` (UserError when none)."""
    from safetensors.torch import load_file

    path = Path(directory)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        raise UserError(f"checkpoint directory {str(directory)!r} has no *.safetensors files")
    state: dict[str, Any] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def synthetic_trajectory(
    w0: Mapping[str, Any], source: SyntheticSource, n: int
) -> Iterator[dict[str, Any]]:
    """W_1..W_n: W_k = W_{k-1} + step_size x rms(W0[name]) x N(0, 1), in each tensor's dtype.

    Deterministic in (seed, k, name). The sum is taken in float32 and rounded once to the
    checkpoint dtype, so the trainer and the engine receive bit-identical tensors.
    """
    import torch

    scale = {name: float(t.float().pow(2).mean().sqrt()) or 1.0 for name, t in w0.items()}
    current = dict(w0)
    for k in range(1, n + 1):
        gen = torch.Generator().manual_seed(source.seed * 1_000_003 + k)
        nxt: dict[str, Any] = {}
        for name in sorted(current):
            t = current[name]
            noise = torch.randn(t.shape, generator=gen, dtype=torch.float32)
            nxt[name] = (t.float() + source.step_size * scale[name] * noise).to(t.dtype)
        current = nxt
        yield nxt


def weights_source(
    spec: ReplaySpec, w0: Mapping[str, Any], n: int
) -> Iterator[tuple[dict[str, Any], Handle | None]]:
    """(W_k, handle) for k = 1..n; handle None means "write W_k to a file for the engine"
    (`write_weights`), a checkpoint directory is read by the engine where it is."""
    if isinstance(spec.source, SyntheticSource):
        for wk in synthetic_trajectory(w0, spec.source, n):
            yield wk, None
    else:
        for d in spec.source.dirs[:n]:
            yield read_checkpoint(d), {"kind": "dir", "path": str(Path(d).resolve())}


def write_weights(state: Mapping[str, Any]) -> Path:
    """`state` as one safetensors file the engine process reads (the caller deletes it)."""
    from workers.weight_sync import write_weight_file

    return write_weight_file(state)


def trainer_state_load(trainer: Any, state: Mapping[str, Any]) -> None:
    """Put `state` (HF names) into the loaded trainer model in place, casting to its dtype.

    Raises UserError when a name does not exist in the trainer's model. Refreshes the
    trainer's fp32 head copy.
    """
    import torch

    params = dict(trainer.model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise UserError(
            f"{len(unknown)} weight name(s) are not parameters of the trainer's model "
            f"(first: {unknown[0]!r}): the checkpoints do not fit this model"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device))
    head = trainer.model.get_output_embeddings()
    if trainer.settings.head_dtype == "float32":
        trainer.head_weight = head.weight.detach().to(torch.float32)
        bias = getattr(head, "bias", None)
        trainer.head_bias = None if bias is None else bias.detach().to(torch.float32)
