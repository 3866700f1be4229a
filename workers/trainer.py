"""The trainer side: the model in HF transformers scoring exactly the tokens the engine sampled.

`process_logprobs` applies the sampling processing the engine applied, in vLLM V1's order,
so that `lt` and `lr` are log-probabilities of the same distribution; `score` runs the model
over padded batches and evaluates that processing on every response position at once.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from workers.reporting import UserError
from workers.specs import EngineSettings, TrainerSettings

# vLLM treats temperatures below this as greedy (vllm/v1/sample/sampler.py, _SAMPLING_EPS).
SAMPLING_EPS = 1e-5

Kind = Literal["raw", "processed", "temperature"]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Processing:
    """Which distribution the trainer scores, and the sampling parameters that shape it."""

    kind: Kind = "raw"
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @classmethod
    def for_comparison(
        cls,
        trainer: TrainerSettings,
        engine: EngineSettings,
        sampling: dict[str, Any],
        engine_kind: Kind | None = None,
    ) -> Processing:
        """The trainer's processing in a comparison: `trainer.processing`, where "match_engine"
        means the kind the engine's logprobs describe (`engine_kind`, else its logprobs_mode),
        over the sampling parameters the trainer was given (`sampling`: the requested ones)."""
        kind: Kind
        if trainer.processing == "match_engine":
            kind = engine_kind or _kind_of(engine)
        else:
            kind = trainer.processing
        return cls(kind=kind, **_params(sampling))

    @classmethod
    def for_engine(
        cls, engine: EngineSettings, effective: dict[str, Any], engine_kind: Kind | None = None
    ) -> Processing:
        """The distribution the engine's logprobs describe (`engine_kind`, else its
        logprobs_mode) over the sampling parameters it actually ran."""
        return cls(kind=engine_kind or _kind_of(engine), **_params(effective))

    @property
    def truncates(self) -> bool:
        """Whether top-k, top-p or min-p cut the support (not in greedy mode)."""
        return not self.greedy and (self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0)

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


def _kind_of(engine: EngineSettings) -> Kind:
    return "processed" if engine.logprobs_mode == "processed" else "raw"


def _params(sampling: dict[str, Any]) -> dict[str, Any]:
    return {
        "temperature": float(sampling["temperature"]),
        "top_p": float(sampling["top_p"]),
        "top_k": max(int(sampling["top_k"]), 0),
        "min_p": float(sampling["min_p"]),
        "repetition_penalty": float(sampling["repetition_penalty"]),
        "presence_penalty": float(sampling["presence_penalty"]),
        "frequency_penalty": float(sampling["frequency_penalty"]),
    }


def process_logprobs(
    logits: Any, processing: Processing, *, prompt_mask: Any = None, output_counts: Any = None
) -> Any:
    """Log-probabilities (float32, one row per position) of the distribution `processing`
    describes, computed from raw `logits` (rows x vocab).

    kind "raw": log_softmax of the float32 logits (vLLM `raw_logprobs`).
    kind "temperature": log_softmax(logits / T) on the full vocabulary.
    kind "processed" mirrors `Sampler.forward` in vllm/v1/sample/sampler.py (vLLM 0.32),
    step by step, for a batch where every request has the same sampling parameters:

    1. (raw logprobs are taken here in raw mode; nothing to do in processed mode)
    2. Convert the logits to float32.
    3-5. Allowed-token whitelist, bad words, logit bias, min-tokens: not used by comparisons.
    6. Penalties (vllm/model_executor/layers/utils.py, apply_penalties), in this order:
       a) repetition: where a token occurs in the prompt or the output so far
          (`prompt_mask` | `output_counts` > 0), divide positive logits by the penalty and
          multiply negative ones by it;
       b) frequency: subtract penalty x count of the token in the output so far;
       c) presence: subtract penalty x (token occurs in the output so far).
    7. Sample (`Sampler.sample`):
       a) greedy (T < 1e-5): the processed logprobs are the log_softmax of the penalised
          logits; nothing below applies;
       b) temperature: divide by T;
       c) min-p (vllm/v1/sample/logits_processor/builtin.py, MinPLogitsProcessor): drop
          tokens whose probability is below min_p x the top probability;
       d) top-k then top-p (vllm/v1/sample/ops/topk_topp_sampler.py,
          apply_top_k_top_p_pytorch / apply_top_k_only): keep logits >= the k-th largest
          (ties kept); then sort ascending, and drop the tokens whose ascending cumulative
          probability is <= 1 - p, always keeping the most likely token;
       e) the processed logprobs are log_softmax(dim=-1, dtype=float32) of what survived,
          i.e. renormalised over the surviving support (`TopKTopPSampler.forward_cpu` /
          `forward_native`).
    8. The caller gathers the logprob of the sampled token.

    `prompt_mask` (bool, rows x vocab) and `output_counts` (int, rows x vocab) are needed only
    when penalties are set.
    """
    import torch

    logits = logits.to(torch.float32)
    if processing.kind == "raw":
        return logits.log_softmax(dim=-1, dtype=torch.float32)
    if processing.kind == "temperature":
        if not processing.greedy:
            logits = logits / processing.temperature
        return logits.log_softmax(dim=-1, dtype=torch.float32)

    if processing.has_penalties:
        logits = logits.clone()  # the penalties below work in place
        if prompt_mask is None or output_counts is None:
            raise ValueError("penalties need prompt_mask and output_counts")
        output_mask = output_counts > 0
        if processing.repetition_penalty != 1.0:
            penalties = torch.where(prompt_mask | output_mask, processing.repetition_penalty, 1.0)
            logits *= torch.where(logits > 0, 1.0 / penalties, penalties)
        if processing.frequency_penalty != 0.0:
            logits -= processing.frequency_penalty * output_counts
        if processing.presence_penalty != 0.0:
            logits -= processing.presence_penalty * output_mask
    if processing.greedy:
        return logits.log_softmax(dim=-1, dtype=torch.float32)

    logits = logits / processing.temperature
    if processing.min_p:
        probs = logits.softmax(dim=-1)
        threshold = probs.amax(dim=-1, keepdim=True) * processing.min_p
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    vocab = logits.shape[-1]
    if 0 < processing.top_k < vocab:
        kth = logits.topk(processing.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if processing.top_p < 1.0:
        logits = _top_p(logits, processing.top_p)
    return logits.log_softmax(dim=-1, dtype=torch.float32)


def _top_p_drops(logits_sort: Any, top_p: float) -> Any:
    """Step 7d's top-p cut on ascending rows: which sorted positions it drops."""
    cumulative = logits_sort.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= 1 - top_p
    drop[:, -1] = False
    return drop


def _top_p_sorted(logits: Any, top_p: float) -> Any:
    """Top-p exactly as vLLM's apply_top_k_top_p_pytorch: torch.sort, cut, scatter back."""
    import torch

    logits_sort, logits_idx = logits.sort(dim=-1, descending=False)
    logits_sort = logits_sort.masked_fill(_top_p_drops(logits_sort, top_p), float("-inf"))
    return torch.empty_like(logits).scatter_(-1, logits_idx, logits_sort)


_NUMPY_SORT_MAX_THREADS = 8


def _top_p(logits: Any, top_p: float) -> Any:
    """`_top_p_sorted`'s result, without torch.sort where the result does not depend on it.

    torch.sort of whole rows was ~90% of scoring on CPU. The cut depends only on the sorted
    values (the softmax and cumsum run over the same value sequence, whatever the order of
    equal values), and it always drops a prefix: the m smallest. So numpy's sort (values only,
    SIMD, ~8x faster) gives m, and a row drops exactly the tokens below its (m+1)-th smallest
    value, unless that value equals the m-th: tied values straddle the cut, which of them
    goes is up to torch.sort's order of equal values, and those rows take the torch.sort path.
    """
    import torch

    # numpy sorts on one thread, torch.sort on all of torch's: ~8x faster per thread.
    on_cpu = logits.device.type == "cpu" and torch.get_num_threads() < _NUMPY_SORT_MAX_THREADS
    if not on_cpu or logits.dtype != torch.float32 or logits.ndim != 2:
        return _top_p_sorted(logits, top_p)
    if logits.shape[0] == 0 or bool(torch.isnan(logits).any()):
        return _top_p_sorted(logits, top_p)
    logits_sort = torch.from_numpy(np.sort(logits.detach().numpy(), axis=-1))
    m = _top_p_drops(logits_sort, top_p).sum(dim=-1, keepdim=True)  # a prefix: cumsum grows
    first_kept = logits_sort.gather(-1, m)
    last_dropped = logits_sort.gather(-1, (m - 1).clamp(min=0))
    out = logits.masked_fill(logits < first_kept, float("-inf"))
    straddle = torch.nonzero(((m > 0) & (last_dropped == first_kept))[:, 0])[:, 0]
    if straddle.numel():
        out[straddle] = _top_p_sorted(logits[straddle], top_p)
    return out


def entropy_of(logprobs: Any) -> Any:
    """Entropy (nats) of each row's distribution; tokens with probability 0 contribute 0."""
    import torch

    # Truncated tokens (-inf) contribute 0; they go in as 0 (exp(0) * 0 == 0), because
    # torch's vectorised exp takes a slow path on -inf and on underflow (3-10x finite input).
    finite = torch.where(logprobs > float("-inf"), logprobs, 0.0)
    return -finite.exp().mul_(finite).sum(dim=-1)


@dataclass
class TrainerModel:
    """A loaded transformers causal LM and what it was loaded from."""

    model_path: str
    settings: TrainerSettings
    model: Any
    tokenizer: Any
    device: Any
    head_weight: Any
    head_bias: Any
    softcap: float | None
    load_seconds: float
    key: tuple[str, str, str]

    @property
    def pad_id(self) -> int:
        """The id padded positions hold: the tokenizer's pad (else eos) id when the model's
        embedding has it, else 0. Padded positions are masked and never scored, so the id
        only has to exist; a pad token added to the tokenizer without resizing the
        embedding (`add_special_tokens({"pad_token": ...})`) lies past its last row."""
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        n_embeddings = self.model.get_input_embeddings().weight.shape[0]
        return int(pad) if pad is not None and 0 <= int(pad) < n_embeddings else 0


_lock = threading.Lock()
_current: TrainerModel | None = None


def _torch_dtype(name: str) -> Any:
    import torch

    return {
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "float32": torch.float32,
        "auto": "auto",
    }[name]


def get_trainer(model_path: str, settings: TrainerSettings) -> tuple[TrainerModel, bool]:
    """(trainer model, reused): the loaded model when the path, its files and the settings
    that affect loading are unchanged; else the previous one is dropped and this one loaded.
    `model_path` must already be resolved (`workers.rollout.resolve_model`)."""
    from workers.rollout import model_files_key

    global _current
    load_settings = settings.model_dump_json(exclude={"batch_size", "processing"})
    key = (model_path, model_files_key(model_path), load_settings)
    with _lock:
        if _current is not None and _current.key == key:
            # Same weights and load settings; how it scores (batch size, processing) is this
            # job's.
            _current.settings = settings
            return _current, True
        _current = None
        gc.collect()
        _current = _load(model_path, settings, key)
        return _current, False


def _load(model_path: str, settings: TrainerSettings, key: tuple[str, str, str]) -> TrainerModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    if settings.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if settings.device == "cuda" and not torch.cuda.is_available():
            raise UserError("trainer device 'cuda' was requested but this worker has no GPU")
        device = torch.device(settings.device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=_torch_dtype(settings.dtype),
            attn_implementation=settings.attn_implementation,
        )
    except (OSError, ValueError) as exc:
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:500]
        raise UserError(f"transformers could not load {model_path!r}: {text}") from exc
    model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to() oddly
    head = model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    if settings.head_dtype == "float32":
        # Cast once, not per batch; mirrors vLLM's fp32 head (logits_processor.py, _apply_head:
        # F.linear of the fp32-cast hidden states and weight).
        weight = weight.detach().to(torch.float32)
        bias = None if bias is None else bias.detach().to(torch.float32)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    return TrainerModel(
        model_path,
        settings,
        model,
        tokenizer,
        device,
        weight,
        bias,
        float(softcap) if softcap else None,
        time.perf_counter() - started,
        key,
    )


def drop_trainer() -> None:
    """Free the loaded trainer model."""
    global _current
    with _lock:
        _current = None
        gc.collect()


@dataclass
class Scores:
    """Per response token, flattened in sequence order: the trainer's view of the rollout."""

    lt: np.ndarray  # log-prob of the engine's token under the processed distribution
    entropy: np.ndarray  # entropy of that distribution
    argmax: np.ndarray  # its most likely token
    rank: np.ndarray  # 1 + number of tokens strictly more likely than the engine's
    token_ids: np.ndarray  # the token ids the trainer actually scored
    topk: np.ndarray | None  # (n_tokens, k) most likely tokens, when asked
    lt_reference: np.ndarray | None = None  # lt under the `reference` processing, when asked
    seconds: float = 0.0
    forward_seconds: float = 0.0


def score(
    trainer: TrainerModel,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    processing: Processing,
    *,
    topk: int = 0,
    reference: Processing | None = None,
    progress: Progress | None = None,
) -> Scores:
    """Score response i (token ids) as the continuation of prompts[i] with `processing`.

    With `reference`, also return the log-prob of the same tokens under that processing
    (`lt_reference`), from the same logits: what the trainer would see if it processed the
    logits differently, at the cost of the processing alone.

    Sequences run in batches of `trainer.settings.batch_size`, longest first, right-padded;
    each batch is one forward pass, and the lm_head and the processing run only on the
    response positions of the whole batch at once. Results come back in input order.
    `progress(done, total)` counts scored sequences.
    """
    import torch

    started = time.perf_counter()
    n_seq = len(responses)
    if len(prompts) != n_seq:
        raise ValueError("prompts and responses must have the same length")
    lens = np.array([len(r) for r in responses], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    total = int(offsets[-1])
    lt = np.empty(total, dtype=np.float64)
    ent = np.empty(total, dtype=np.float64)
    amax = np.empty(total, dtype=np.int64)
    rank = np.empty(total, dtype=np.int64)
    scored_ids = np.empty(total, dtype=np.int64)
    top = np.empty((total, topk), dtype=np.int64) if topk else None
    lt_ref = np.empty(total, dtype=np.float64) if reference is not None else None

    order = sorted(range(n_seq), key=lambda i: -(len(prompts[i]) + len(responses[i])))
    bs = trainer.settings.batch_size
    forward_s = 0.0
    done = 0
    with torch.inference_mode():
        for start in range(0, n_seq, bs):
            batch = [i for i in order[start : start + bs] if lens[i] > 0]
            if batch:
                out, fs = _score_batch(
                    trainer,
                    [prompts[i] for i in batch],
                    [responses[i] for i in batch],
                    processing,
                    topk,
                    reference,
                )
                forward_s += fs
                # Rows come back grouped by sequence, in batch order: scatter them home.
                dest = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in batch])
                lt[dest], ent[dest], amax[dest], rank[dest], scored_ids[dest] = (
                    out["lt"],
                    out["entropy"],
                    out["argmax"],
                    out["rank"],
                    out["token_ids"],
                )
                if top is not None:
                    top[dest] = out["topk"]
                if lt_ref is not None:
                    lt_ref[dest] = out["lt_reference"]
            done = min(n_seq, start + bs)
            if progress is not None:
                progress(done, n_seq)
    return Scores(
        lt, ent, amax, rank, scored_ids, top, lt_ref, time.perf_counter() - started, forward_s
    )


def _score_batch(
    trainer: TrainerModel,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    processing: Processing,
    topk: int,
    reference: Processing | None,
) -> tuple[dict[str, np.ndarray], float]:
    import torch
    import torch.nn.functional as F

    dev = trainer.device
    b = len(prompts)
    p_len = torch.tensor([len(p) for p in prompts])
    r_len = torch.tensor([len(r) for r in responses])
    seq_len = p_len + r_len
    width = int(seq_len.max())
    input_ids = torch.full((b, width), trainer.pad_id, dtype=torch.long)
    flat = torch.tensor(
        [t for p, r in zip(prompts, responses, strict=True) for t in (*p, *r)], dtype=torch.long
    )
    cols = torch.arange(width).expand(b, width)
    valid = cols < seq_len[:, None]
    input_ids[valid] = flat
    # Position j predicts token j + 1: the response tokens are predicted by positions
    # p_len - 1 .. seq_len - 2.
    predicts = (cols >= (p_len - 1)[:, None]) & (cols < (seq_len - 1)[:, None])
    targets = input_ids[:, 1:][predicts[:, :-1]]

    forward_started = time.perf_counter()
    base = trainer.model.base_model
    hidden = base(
        input_ids=input_ids.to(dev),
        attention_mask=valid.to(dev, dtype=torch.long),
        use_cache=False,
    ).last_hidden_state
    hidden = hidden[predicts.to(dev)]
    if trainer.head_weight.dtype != hidden.dtype:
        hidden = hidden.to(trainer.head_weight.dtype)
    logits = F.linear(hidden, trainer.head_weight, trainer.head_bias)
    if trainer.softcap:
        logits = torch.tanh(logits / trainer.softcap) * trainer.softcap
    forward_s = time.perf_counter() - forward_started

    prompt_mask = output_counts = None
    if any(
        p is not None and p.kind == "processed" and p.has_penalties for p in (processing, reference)
    ):
        prompt_mask, output_counts = _penalty_context(
            input_ids, p_len, r_len, logits.shape[-1], dev
        )
    logprobs = process_logprobs(
        logits, processing, prompt_mask=prompt_mask, output_counts=output_counts
    )
    targets_dev = targets.to(dev)
    lt = logprobs.gather(-1, targets_dev[:, None])[:, 0]
    out = {
        "lt": lt,
        "entropy": entropy_of(logprobs),
        "argmax": logprobs.argmax(dim=-1),
        "rank": (logprobs > lt[:, None]).sum(dim=-1) + 1,
        "token_ids": targets_dev,
    }
    if topk:
        out["topk"] = logprobs.topk(topk, dim=-1).indices
    if reference is not None:
        ref = process_logprobs(
            logits, reference, prompt_mask=prompt_mask, output_counts=output_counts
        )
        out["lt_reference"] = ref.gather(-1, targets_dev[:, None])[:, 0]
    return {k: v.detach().cpu().numpy() for k, v in out.items()}, forward_s


def _penalty_context(
    input_ids: Any, p_len: Any, r_len: Any, vocab: int, device: Any
) -> tuple[Any, Any]:
    """(prompt_mask, output_counts), one row per response position: which tokens the prompt
    holds, and how often each token occurs in the response before that position."""
    import torch

    b, width = input_ids.shape
    rows_per_seq = r_len
    row_seq = torch.repeat_interleave(torch.arange(b), rows_per_seq)
    n_rows = int(rows_per_seq.sum())

    in_prompt = torch.arange(width)[None, :] < p_len[:, None]
    seq_prompt_mask = torch.zeros(b, vocab + 1, dtype=torch.bool)
    seq_prompt_mask.scatter_(1, torch.where(in_prompt, input_ids, vocab), True)
    prompt_mask = seq_prompt_mask[:, :vocab][row_seq]

    # Response token i counts for response position j when i < j: all such (i, j) pairs of
    # the longest response, kept where j is inside the sequence's response.
    r_max = int(r_len.max())
    j_idx, i_idx = torch.tril_indices(r_max, r_max, offset=-1)
    seq_b = torch.arange(b).repeat_interleave(j_idx.numel())
    j_all, i_all = j_idx.repeat(b), i_idx.repeat(b)
    keep = j_all < r_len[seq_b]
    seq_b, j_all, i_all = seq_b[keep], j_all[keep], i_all[keep]
    row_start = torch.cumsum(rows_per_seq, 0) - rows_per_seq
    rows = row_start[seq_b] + j_all
    tokens = input_ids[seq_b, p_len[seq_b] + i_all]
    output_counts = torch.zeros(n_rows, vocab, dtype=torch.int32)
    output_counts.index_put_(
        (rows, tokens), torch.ones_like(rows, dtype=torch.int32), accumulate=True
    )
    return prompt_mask.to(device), output_counts.to(device)
