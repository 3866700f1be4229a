"""Weight sync into a running vLLM V1 engine, the way RL frameworks do it, and its checksums.

`WeightSyncExtension` is a vLLM *worker extension*: build the engine with
`LLM(..., worker_extension_cls="workers.weight_sync.WeightSyncExtension")` and vLLM mixes
the class into every worker, so its methods run inside the engine process through
`llm.collective_rpc("<method>", kwargs=...)`. That is the path verl / OpenRLHF / TRL use to
push each optimiser step's weights into the rollout engine.

Why the method names carry a `parity_` prefix: vLLM refuses an extension whose attribute
names collide with the worker's own (`worker_base.py` asserts on it), and this vLLM's
worker already has `update_weights` and `compute_weight_checksums` (its NCCL/IPC
weight-transfer API).

How weights travel (`WeightHandle`): `collective_rpc` serialises its arguments with msgpack
over ZMQ to the engine-core process, and without VLLM_ALLOW_INSECURE_SERIALIZATION only
plain data survives (a torch tensor arrives as a (dtype, shape, bytes) triple, not as a
tensor). So the trainer side writes the new weights to a safetensors file (in /dev/shm
where it exists: no disk I/O) and sends its *path*; the worker reads it on its own device.
That works the same on CPU and on a single GPU node. For checkpoint replays the handle is
the checkpoint directory itself.

How weights are loaded: on vLLM's CPU backend every linear layer's weight is repacked into
a kernel-specific layout after loading (`dispatch_cpu_unquantized_gemm`: oneDNN / sgl
kernels; the linear layers' `weight` parameters are then emptied, lm_head keeps a stale
plain copy). A bare `model.load_weights(...)` as older RL frameworks call it on GPU
therefore cannot update a CPU engine: the kernels keep the old packed weights. The default
`mode="layerwise"` does what vLLM's own checkpoint-format weight-transfer engines do
(`model_loader/reload`): restore the layers to checkpoint format, `model.load_weights(...)`,
then re-run each layer's `process_weights_after_loading` so the kernels are rebuilt from
the new values. `mode="direct"` is the bare `load_weights` call, kept so that a replay can
show what it does on a given platform.

Why the layerwise mode then re-ties the output head (`_parity_retie_kernels`): with tied word
embeddings (Qwen2, Gemma, small Llamas) `lm_head.weight` *is* the embedding's Parameter
(`ParallelLMHead.tie_weights`), and the model's `load_weights` skips `lm_head.*`. vLLM's
reload copies the new embedding into that shared storage, but the ParallelLMHead layer itself
receives no weight, so `finalize_layerwise_reload` only puts its old tensors back (it logs
"ParallelLMHead: Failed to load weights") and never re-runs its
`process_weights_after_loading`. On the CPU backend that is where the head's oneDNN kernel
is built, from a packed *copy* of the weight: after the reload the engine embeds tokens with
W_k and projects logits with W0's embedding (measured with vLLM 0.32.0 on a tied Qwen2: the
head kernel keeps W0's values exactly, while the shared parameter holds W_k). On GPU, by
vLLM's code, an unquantized head multiplies with `lm_head.weight` itself, so the shared
parameter is what serves it there. So after the reload every matmul layer whose
weight is another module's Parameter and was not loaded itself gets its kernel rebuilt from
that Parameter, as the initial load does, and the update's report says what the kernel held
before and after (`RetiedKernel`).

How checksums are taken (`parity_param_checksums`): per *HF* parameter name, so that they
compare 1:1 with the trainer's state dict. Fused vLLM parameters are split back on their
shard sizes (`qkv_proj` -> q/k/v_proj, `gate_up_proj` -> gate/up_proj, from the model's
`packed_modules_mapping` and the layer's `output_partition_sizes`). For linear layers
(and lm_head) the weight is read *through the serving kernel*: the layer's
`quant_method.apply` on an identity matrix returns exactly W^T (one non-zero product per
output element, so no rounding), i.e. the weights the engine actually multiplies with,
not a parameter tensor that may no longer be what the kernel uses. A tied output head is read
the same way and reported as its own entry, `lm_head.weight` with `tied_to` naming the
embedding, because the parameter the two share says nothing about the head's kernel. Where
vLLM does not project through the kernel (a `head_dtype` other than the model's: the logits
processor calls `F.linear` on `lm_head.weight`), the head is read from that parameter.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import torch

from parity.reports.replay import RetiedKernel
from workers.specs.replay import EXTENSION_QUALNAME  # noqa: F401 - spelled once, in the spec

# Identity-probe chunk: rows of the identity pushed through a linear kernel at once; bounds
# the probe's extra memory to CHUNK x N per layer.
_PROBE_CHUNK = 4096


class WeightHandle(TypedDict, total=False):
    """Where the worker reads the new weights from (plain data: it crosses a msgpack RPC).

    kind "safetensors": `path` is one .safetensors file; kind "dir": every *.safetensors
    file of checkpoint directory `path`.
    """

    kind: str
    path: str


class ParamChecksum(TypedDict):
    """One parameter's fingerprint: sha256 of its bytes in `dtype`, plus float64 sums that
    show how far apart two tensors are when the hashes differ."""

    sha256: str
    dtype: str
    shape: list[int]
    sum: float
    abs_sum: float
    source: str  # "kernel": read through the serving kernel; "param": the parameter tensor
    # A tied layer's entry: the name of the parameter it shares (the trainer's W_k is read
    # from that name when W_k has none of its own).
    tied_to: NotRequired[str]


def tensor_checksum(t: torch.Tensor, source: str = "param") -> ParamChecksum:
    """The checksum of `t` as stored (its dtype's bytes); the trainer side uses the same."""
    t = t.detach().to("cpu").contiguous()
    flat = t.reshape(-1)
    digest = hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()
    f64 = flat.to(torch.float64)
    return ParamChecksum(
        sha256=digest,
        dtype=str(t.dtype).removeprefix("torch."),
        shape=list(t.shape),
        sum=float(f64.sum()),
        abs_sum=float(f64.abs().sum()),
        source=source,
    )


def write_weight_file(
    state: Mapping[str, torch.Tensor], directory: str | Path | None = None, name: str = "weights"
) -> Path:
    """Write `state` as one safetensors file the engine process can read; return its path.

    Goes to /dev/shm when it exists (shared memory: the engine's read costs no disk I/O).
    The caller deletes the file when the update is done.
    """
    from safetensors.torch import save_file

    if directory is None:
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    fd, path = tempfile.mkstemp(prefix=f"parity-{name}-", suffix=".safetensors", dir=directory)
    os.close(fd)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, path)
    return Path(path)


def iter_handle(handle: WeightHandle) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) pairs of a weight handle, read lazily file by file."""
    from safetensors import safe_open

    kind, path = handle.get("kind"), Path(handle.get("path", ""))
    if kind == "safetensors":
        files = [path]
    elif kind == "dir":
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in checkpoint directory {path}")
    else:
        raise ValueError(f"unknown weight handle kind {kind!r}; expected 'safetensors' or 'dir'")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


class WeightSyncExtension:
    """Mixed into vLLM's worker; every method runs in the engine process via collective_rpc.

    Returns only plain data (dicts, lists, str, float): the RPC result crosses msgpack.
    """

    # --- hooks the test-only extensions override ----------------------------------------

    def _parity_filter_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterable[tuple[str, torch.Tensor]]:
        """The weights that actually go into load_weights (all of them, here)."""
        return weights

    def _parity_retie_kernels(self, model: torch.nn.Module, loaded: set[str]) -> list[RetiedKernel]:
        """Rebuild the kernels of tied layers the reload did not process (module docstring)."""
        return retie_kernels(model, loaded)

    # --- RPC methods ----------------------------------------------------------------------

    def parity_extension_info(self) -> dict[str, Any]:
        """What is installed: the extension class, the platform, the load modes on offer."""
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        return {
            "worker_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "extension_classes": [
                f"{c.__module__}.{c.__qualname__}"
                for c in type(self).__mro__
                if issubclass(c, WeightSyncExtension)
            ],
            "device": str(next(model.parameters()).device),
            "model_class": type(model).__name__,
            "modes": ["layerwise", "direct"],
        }

    def parity_update_weights(
        self, handle: WeightHandle, mode: str = "layerwise"
    ) -> dict[str, Any]:
        """Load the weights behind `handle` into the running model; report what was loaded.

        `mode="layerwise"` (default) goes through vLLM's in-place reload, so kernels that
        repack weights after loading are rebuilt; `mode="direct"` is a bare
        `model.load_weights(...)`. Returns {"received": HF names read, "sent": HF names
        passed to load_weights, "loaded": vLLM names load_weights reports, "seconds",
        "running_requests": {request id: output tokens so far} for requests the model runner
        holds when the weights change (non-empty only for an in-flight update), "retied":
        the tied layers whose kernels were rebuilt after a layerwise reload (`RetiedKernel`)}.
        """
        from vllm.config import set_current_vllm_config

        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        vllm_config = self.vllm_config  # type: ignore[attr-defined]
        received: list[str] = []
        sent: list[str] = []
        retied: list[RetiedKernel] = []

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            def tap() -> Iterator[tuple[str, torch.Tensor]]:
                for name, tensor in iter_handle(handle):
                    received.append(name)
                    yield name, tensor

            for name, tensor in self._parity_filter_weights(tap()):
                sent.append(name)
                yield name, tensor

        running = self._parity_running_requests()
        t0 = time.perf_counter()
        with set_current_vllm_config(vllm_config), torch.no_grad():
            if mode == "layerwise":
                from vllm.model_executor.model_loader.reload import (
                    finalize_layerwise_reload,
                    initialize_layerwise_reload,
                )

                initialize_layerwise_reload(model)
                loaded = model.load_weights(stream())
                finalize_layerwise_reload(model, vllm_config.model_config)
                retied = self._parity_retie_kernels(model, set(loaded or []))
            elif mode == "direct":
                loaded = model.load_weights(stream())
            else:
                raise ValueError(f"unknown load mode {mode!r}; expected 'layerwise' or 'direct'")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return {
            "received": received,
            "sent": sent,
            "loaded": sorted(loaded or []),
            "seconds": time.perf_counter() - t0,
            "running_requests": running,
            "retied": retied,
        }

    def _parity_running_requests(self) -> dict[str, int]:
        """Requests the model runner holds right now -> output tokens generated so far."""
        requests = getattr(self.model_runner, "requests", None) or {}  # type: ignore[attr-defined]
        return {
            str(req_id): len(getattr(state, "output_token_ids", []) or [])
            for req_id, state in requests.items()
        }

    def parity_param_checksums(self) -> dict[str, ParamChecksum]:
        """Per-parameter checksums of the weights the engine serves, under HF names.

        Fused parameters are split back into their HF parts; linear layers are read through
        their serving kernel (see the module docstring). Only tensor-parallel rank 0's shard
        is complete for TP=1, which is what the replay runs; with TP>1 each rank returns its
        own shards under the same names.
        """
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        packed = _packed_mapping(model)
        modules = dict(model.named_modules())
        canonical = _canonical_names(model, modules)
        out: dict[str, ParamChecksum] = {}
        with torch.no_grad():
            for name, param in model.named_parameters(remove_duplicate=False):
                module_name, _, pname = name.rpartition(".")
                module = modules.get(module_name)
                matmul = pname == "weight" and _is_matmul_layer(module)
                tied_to = canonical[id(param)]
                if tied_to != name and not matmul:
                    continue  # another name of a tensor already read
                tensor, source = param.data, "param"
                if matmul and module is not None and not _head_reads_parameter(model, module):
                    tensor, source = _effective_weight(module, param), "kernel"
                if pname == "weight" and _is_vocab_embedding(module):
                    # vLLM pads the vocabulary rows; the HF tensor has only the real ones.
                    tensor = tensor[: int(module.org_vocab_size)]  # type: ignore[union-attr]
                for hf_name, part in _split_packed(name, tensor, module, packed):
                    out[hf_name] = tensor_checksum(part, source)
                    if tied_to != name:
                        out[hf_name]["tied_to"] = tied_to
        return out


def retie_kernels(model: torch.nn.Module, loaded: set[str]) -> list[RetiedKernel]:
    """Rebuild the kernel of every matmul layer whose weight is another module's Parameter and
    which `load_weights` did not load (`loaded`: the vLLM names it reports), from that shared
    Parameter; report each one with the kernel's distance to it before and after.

    Only layers whose quant method keeps its weight tensor are rebuilt (the unquantized
    embedding method of a ParallelLMHead: re-running it only re-creates the kernel); for any
    other the kernel is probed and reported, not touched, so the checksums catch it.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    modules = dict(model.named_modules())
    canonical = _canonical_names(model, modules)
    out: list[RetiedKernel] = []
    for name, param in model.named_parameters(remove_duplicate=False):
        module_name, _, pname = name.rpartition(".")
        module = modules.get(module_name)
        tied_to = canonical[id(param)]
        if tied_to == name or name in loaded or pname != "weight" or module is None:
            continue
        if not _is_matmul_layer(module):
            continue  # a plain alias: nothing serves it but the shared parameter itself
        cols, before = _kernel_distance(module, param)
        report = RetiedKernel(
            module=module_name,
            tied_to=tied_to,
            probe_columns=cols,
            max_abs_diff_before=before,
            stale_before=before > 0,
            rebuilt=False,
            max_abs_diff_after=before,
        )
        if isinstance(module.quant_method, UnquantizedEmbeddingMethod):
            module.quant_method.process_weights_after_loading(module)
            report["rebuilt"] = True
            report["max_abs_diff_after"] = _kernel_distance(module, param)[1]
        else:
            report["note"] = (
                f"not rebuilt: quant method {type(module.quant_method).__name__} may repack "
                "the shared weight itself"
            )
        out.append(report)
    return out


def _packed_mapping(model: torch.nn.Module) -> dict[str, list[str]]:
    mapping = getattr(model, "packed_modules_mapping", None) or {}
    return {k: list(v) for k, v in mapping.items()}


def _is_matmul_layer(module: torch.nn.Module | None) -> bool:
    """Linear layers and lm_head: their weight is what a kernel multiplies with."""
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    return isinstance(module, LinearBase | ParallelLMHead) and hasattr(module, "quant_method")


def _canonical_names(
    model: torch.nn.Module, modules: Mapping[str, torch.nn.Module]
) -> dict[int, str]:
    """id(Parameter) -> the name it is reported under: of all the names a shared (tied)
    Parameter has, the first that is not a matmul layer's weight (the embedding, not the
    head that borrows it), else its first name."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    out: dict[int, str] = {}
    for key, group in names.items():
        plain = [
            n
            for n in group
            if not (n.endswith(".weight") and _is_matmul_layer(modules.get(n[: -len(".weight")])))
        ]
        out[key] = (plain or group)[0]
    return out


def _head_reads_parameter(model: torch.nn.Module, module: torch.nn.Module) -> bool:
    """True when the logits are projected with the head's parameter, not its kernel: vLLM's
    LogitsProcessor calls F.linear on `lm_head.weight` cast to a `head_dtype` that differs
    from the model's (logits_processor.py, `_apply_head`)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    if not isinstance(module, ParallelLMHead):
        return False
    head_dtype = getattr(getattr(model, "logits_processor", None), "head_dtype", None)
    return head_dtype is not None and head_dtype != module.weight.dtype


def _kernel_distance(module: Any, param: torch.Tensor, columns: int = 8) -> tuple[int, float]:
    """(columns probed, max |W - param|) over the first `columns` input columns of the
    layer's weight as its kernel serves it (apply on unit vectors, as `_effective_weight`)."""
    in_features = int(param.shape[1])
    cols = min(columns, in_features)
    eye = torch.zeros(cols, in_features, dtype=param.dtype, device=param.device)
    eye[:, :cols] = torch.eye(cols, dtype=param.dtype, device=param.device)
    with torch.no_grad():
        out = module.quant_method.apply(module, eye, None)
    served = (out if isinstance(out, torch.Tensor) else out[0]).t()  # (out rows, cols)
    want = param.data[: served.shape[0], :cols]
    return cols, float((served.float() - want.float()).abs().max())


def _is_vocab_embedding(module: torch.nn.Module | None) -> bool:
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    return isinstance(module, VocabParallelEmbedding) and hasattr(module, "org_vocab_size")


def _effective_weight(module: Any, param: torch.Tensor) -> torch.Tensor:
    """W (out x in) as the layer's serving kernel sees it, from apply(identity) = W^T.

    Each output element of I @ W^T has exactly one non-zero product, so the result is W's
    values bit for bit in the layer dtype, whatever kernel (plain, oneDNN, packed) serves it.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    if isinstance(module, ParallelLMHead):
        in_features = int(module.embedding_dim)
        rows = int(module.org_vocab_size)
    else:
        in_features = int(module.input_size_per_partition)
        rows = None
    dtype = getattr(module, "params_dtype", None) or param.dtype
    device = param.device
    parts = []
    for start in range(0, in_features, _PROBE_CHUNK):
        stop = min(start + _PROBE_CHUNK, in_features)
        eye = torch.zeros(stop - start, in_features, dtype=dtype, device=device)
        eye[:, start:stop] = torch.eye(stop - start, dtype=dtype, device=device)
        out = module.quant_method.apply(module, eye, None)
        parts.append(out if isinstance(out, torch.Tensor) else out[0])
    w = torch.cat(parts, dim=0).t()
    return w[:rows] if rows is not None else w


def _split_packed(
    name: str,
    tensor: torch.Tensor,
    module: torch.nn.Module | None,
    packed: Mapping[str, list[str]],
) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for a vLLM parameter; fused ones are split on their shard sizes."""
    for fused, parts in packed.items():
        token = f".{fused}."
        if token not in f".{name}":
            continue
        sizes = list(getattr(module, "output_partition_sizes", []) or [])
        if len(sizes) != len(parts) or sum(sizes) != tensor.shape[0]:
            raise RuntimeError(
                f"cannot split fused parameter {name}: shard sizes {sizes} do not match "
                f"{len(parts)} parts of a {tuple(tensor.shape)} tensor"
            )
        offset = 0
        for part, size in zip(parts, sizes, strict=True):
            yield name.replace(f".{fused}.", f".{part}."), tensor[offset : offset + size]
            offset += size
        return
    yield name, tensor
