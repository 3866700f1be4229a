"""What a server replay shares between engines: W_k written where the server reads it, and
the digests a server's own weight checker gives (vLLM's /weight_checker, SGLang's
/weights_checker) computed from W_k the same way, so the two can be compared.

Both engines fuse q/k/v and gate/up into one parameter and hash each parameter's bytes in the
dtype they serve (vLLM: the whole sha256; SGLang on CPU: its first 8 bytes, in hex).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from workers.weight_sync import ParamChecksum

# The fused parameters of vLLM and SGLang and the HF parameters they hold, in order (their
# models' packed_modules_mapping / stacked_params_mapping for Llama-, Qwen- and Mistral-style
# layers).
PACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_SHM = Path("/dev/shm")


class WeightDirs:
    """Directories W_k is written to for a server to read (in /dev/shm where it exists: a
    server on this machine reads it from memory); all deleted by `remove`."""

    def __init__(self) -> None:
        self._dirs: list[Path] = []

    def write(self, state: Mapping[str, Any]) -> Path:
        from workers.weight_sync import write_weight_file

        d = Path(tempfile.mkdtemp(prefix="parity-replay-", dir=_SHM if _SHM.is_dir() else None))
        self._dirs.append(d)
        write_weight_file(state, directory=d, name="model")
        return d

    def remove(self) -> None:
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._dirs.clear()


def served_tensor(state: Mapping[str, Any], name: str) -> Any:
    """W's tensor for a served parameter name: itself, or the HF parts of a fused one
    concatenated in the engine's order; None when W has no such tensor."""
    import torch

    if name in state:
        return state[name]
    for fused, parts in PACKED.items():
        if f".{fused}." in f".{name}":
            keys = [name.replace(f".{fused}.", f".{p}.") for p in parts]
            if all(k in state for k in keys):
                return torch.cat([state[k] for k in keys], dim=0)
    return None


def served_digests(
    state: Mapping[str, Any], names: Iterable[str], dtype: str, hex_digits: int = 64
) -> dict[str, str]:
    """sha256 of W's tensor behind each served name, in `dtype` (a torch dtype's name; any
    other value: as W holds it), cut to its first `hex_digits` hex digits."""
    import torch

    torch_dtype = getattr(torch, dtype, None)
    out = {}
    for name in names:
        tensor = served_tensor(state, name)
        if tensor is None:
            continue
        t = tensor.to(torch_dtype) if isinstance(torch_dtype, torch.dtype) else tensor
        flat = t.detach().cpu().contiguous().view(-1).view(torch.uint8)
        out[name] = hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:hex_digits]
    return out


def digest_only(digest: str, source: str) -> ParamChecksum:
    """A checksum entry that has only a digest (a server's weight checker gives no sums)."""
    nan = float("nan")
    return cast(
        "ParamChecksum",
        {"sha256": digest, "dtype": "", "shape": [], "sum": nan, "abs_sum": nan, "source": source},
    )
