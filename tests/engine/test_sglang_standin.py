"""The pure-torch stand-in for sgl-kernel's assign_req_to_token_pool_cpu (scripts/sglang_cpu)
equals the op's definition: sgl-kernel/csrc/cpu's kernel writes, for each request i,
req_to_token[req_pool_indices[i], start_offset[i]:end_offset[i]] = the i-th run of
out_cache_loc (runs end to end in batch order) as int32, and touches nothing else."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from tests.engine.sglang_support import ROOT

pytestmark = pytest.mark.unit
torch = pytest.importorskip("torch")

MODULE = "parity_sgl_kernel_standin"


def standin() -> ModuleType:
    """Loaded once per process: it registers torch.ops.sgl_kernel, which cannot be redefined."""
    if MODULE not in sys.modules:
        path = ROOT / "scripts" / "sglang_cpu" / "sgl_kernel" / "__init__.py"
        spec = importlib.util.spec_from_file_location(MODULE, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[MODULE] = module
    return sys.modules[MODULE]


def reference(rpi, req_to_token, start, end, out_cache_loc):  # type: ignore[no-untyped-def]
    """The kernel's loop, element by element, as the C++ source writes it."""
    expected = req_to_token.clone()
    offset = 0
    for i in range(len(rpi)):
        for j in range(int(start[i]), int(end[i])):
            expected[int(rpi[i]), j] = int(out_cache_loc[offset + j - int(start[i])])
        offset += int(end[i]) - int(start[i])
    return expected


@pytest.mark.parametrize("index_dtype", ["int32", "int64"])
@pytest.mark.parametrize("offset_dtype", ["int32", "int64"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_standin_equals_the_ops_definition(index_dtype: str, offset_dtype: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    num_reqs, pool_len, bs = 9, 40, 6
    rpi = torch.randperm(num_reqs, generator=gen)[:bs].to(getattr(torch, index_dtype))
    start = torch.randint(0, pool_len // 2, (bs,), generator=gen)
    lengths = torch.randint(0, pool_len // 2, (bs,), generator=gen)
    lengths[seed % bs] = 0  # an empty run (a request with nothing new) must be a no-op
    end = start + lengths
    out_cache_loc = torch.randperm(100_000, generator=gen)[: int(lengths.sum()) + 3]  # spare
    req_to_token = torch.randint(-5, 5, (num_reqs, pool_len), generator=gen, dtype=torch.int32)
    start, end = start.to(getattr(torch, offset_dtype)), end.to(getattr(torch, offset_dtype))
    expected = reference(rpi, req_to_token, start, end, out_cache_loc)

    standin().assign_req_to_token_pool_cpu(rpi, req_to_token, start, end, out_cache_loc, pool_len)

    assert torch.equal(req_to_token, expected)


def test_standin_is_registered_under_sglangs_op_name() -> None:
    standin()
    req_to_token = torch.zeros((2, 4), dtype=torch.int32)
    torch.ops.sgl_kernel.assign_req_to_token_pool_cpu(
        torch.tensor([1]), req_to_token, torch.tensor([1]), torch.tensor([3]),
        torch.tensor([7, 8]), 4,
    )  # fmt: skip
    assert req_to_token.tolist() == [[0, 0, 0, 0], [0, 7, 8, 0]]


def test_standin_refuses_what_the_kernel_refuses() -> None:
    op = standin().assign_req_to_token_pool_cpu
    rtt = torch.zeros((2, 4), dtype=torch.int32)
    with pytest.raises(ValueError, match="out_cache_loc has 1 entries but offsets require 2"):
        op(torch.tensor([0]), rtt, torch.tensor([0]), torch.tensor([2]), torch.tensor([5]), 4)
    with pytest.raises(TypeError, match="req_to_token int32"):
        op(
            torch.tensor([0]),
            rtt.long(),
            torch.tensor([0]),
            torch.tensor([1]),
            torch.tensor([5]),
            4,
        )


def test_names_sglang_only_imports_fail_loudly_when_called() -> None:
    module = standin()
    for name in module.NOT_PROVIDED:
        with pytest.raises(NotImplementedError, match=f"sgl_kernel.{name} is not in"):
            getattr(module, name)()
