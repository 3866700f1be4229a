"""Stand-in for SGLang's CPU kernel package (sgl-kernel built with pyproject_cpu.toml), for
running a real SGLang server on CPU where no CPU build of that package can be installed.

It provides exactly one op, the only one SGLang's CPU engine needs for the tiny dense models
(Llama, Qwen2, Qwen3) with attention_backend="torch_native" and sampling_backend="pytorch":
`assign_req_to_token_pool_cpu`, registered as `torch.ops.sgl_kernel.assign_req_to_token_pool_cpu`
(the name and schema of sgl-kernel/csrc/cpu) and exported from this module, where
`sglang.srt.mem_cache.allocation` imports it. Nothing else: SGLang probes for the AMX ops
(`torch.ops.sgl_kernel.convert_weight_packed`), finds none, and runs its pure-torch paths.

This directory goes on PYTHONPATH of the SGLang server process only (scripts/sglang-server.sh),
never into Parity's own venv.
"""

from __future__ import annotations

from typing import Any

import torch

__version__ = "0.0.0+parity-cpu-standin"

_LIB = torch.library.Library("sgl_kernel", "DEF")
_LIB.define(
    "assign_req_to_token_pool_cpu(Tensor req_pool_indices, Tensor(a!) req_to_token, "
    "Tensor start_offset, Tensor end_offset, Tensor out_cache_loc, int pool_len) -> ()"
)


def _assign_req_to_token_pool(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """req_to_token[req_pool_indices[i], start_offset[i]:end_offset[i]] = the i-th run of
    out_cache_loc (runs laid end to end in batch order), cast to req_to_token's int32.

    Same contract as sgl-kernel/csrc/cpu's kernel: req_to_token is [max_reqs, pool_len] int32
    and written in place; out_cache_loc is int64 with at least sum(end - start) entries;
    indices and offsets may be int32 or int64.
    """
    if req_to_token.dtype != torch.int32 or out_cache_loc.dtype != torch.int64:
        raise TypeError("assign_req_to_token_pool_cpu: req_to_token int32, out_cache_loc int64")
    if start_offset.dtype != end_offset.dtype:
        raise TypeError("assign_req_to_token_pool_cpu: start/end offsets differ in dtype")
    starts = start_offset.to(torch.int64)
    lengths = end_offset.to(torch.int64) - starts
    total = int(lengths.sum()) if lengths.numel() else 0
    if total > out_cache_loc.numel():
        raise ValueError(
            f"assign_req_to_token_pool_cpu: out_cache_loc has {out_cache_loc.numel()} entries "
            f"but offsets require {total}"
        )
    if total == 0:
        return
    # One scatter for the whole batch: the flat position in req_to_token of every new slot.
    rows = torch.repeat_interleave(req_pool_indices.to(torch.int64), lengths)
    run_start = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    cols = torch.repeat_interleave(starts, lengths) + torch.arange(total) - run_start
    req_to_token.view(-1)[rows * pool_len + cols] = out_cache_loc[:total].to(torch.int32)


_LIB.impl("assign_req_to_token_pool_cpu", _assign_req_to_token_pool, "CPU")


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """sgl_kernel's Python wrapper: calls the registered op."""
    torch.ops.sgl_kernel.assign_req_to_token_pool_cpu(
        req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len
    )


def _missing(name: str) -> Any:
    def op(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"sgl_kernel.{name} is not in Parity's CPU stand-in (scripts/sglang_cpu): SGLang "
            "called a CPU kernel that only the real sgl-kernel CPU build provides"
        )

    op.__name__ = name
    return op


# Names SGLang's CPU modules import at load time but that the tiny dense models never call
# (KV-cache offload copies, ...). Each is a function that fails loudly if ever called, so a
# path that needs the real kernel cannot silently run on something else.
NOT_PROVIDED = ("copy_all_layer_kv_cache_cpu", "build_tree_kernel_efficient_cpu", "verify_tree_greedy_cpu", "assign_draft_cache_locs_contiguous_cpu", "assign_extend_cache_locs_cpu", "fill_accept_out_cache_loc_cpu", "fill_bonus_tokens_cpu",)
for _name in NOT_PROVIDED:
    globals()[_name] = _missing(_name)
