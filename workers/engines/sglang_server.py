"""An SGLang server the user already runs: the `RolloutEngine` (and `ManagedEngine`) over
SGLang's native HTTP API, through `workers.engines.sglang.SGLangClient`.

    server = ServerSettings(url="http://10.0.0.5:30000", engine="sglang")
    engine = connect(server, model_path, spec.engine)
    ro = engine.generate(prompt_ids, sampling)   # workers.rollout.Rollout, as in-process

What differs from vLLM, and how it is handled (measured against SGLang 0.5.23 here):
- **Which logprobs.** SGLang returns log_softmax(logits / T) over the full vocabulary: the
  temperature applies, top-p/top-k/min-p do not (a comparison at T=0.7, top-p 0.5 matched the
  trainer's "temperature" processing to 7e-6, "processed" only to 0.69). So `logprobs_kind` is
  "temperature", and a trainer told to match the engine scores that distribution. A server
  started with SGLANG_RETURN_ORIGINAL_LOGPROB=1 returns raw logprobs instead, and no endpoint
  reports it: the fingerprint says so.
- **Defaults for unset sampling fields.** The native /generate merges only the server's
  `--preferred-sampling-params` (reported by /server_info), never the model's
  generation_config.json (`--sampling-defaults model` applies to the OpenAI chat route only).
- **Seeds.** A per-request seed is honoured only with `--enable-deterministic-inference`.
- **Weight updates** go through SGLang's own path (`update_weights_from_disk`, bracketed by
  begin/end_weight_update), which also flushes the radix cache.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.engines.base import UNKNOWN, PauseMode, Progress, Unsupported
from workers.engines.sglang import ServerInfo, SGLangClient, SGLangError
from workers.reporting import UserError
from workers.rollout import SAMPLING_FIELDS, Rollout, server_sampling
from workers.specs import EngineSettings, SamplingSettings, ServerSettings

# Prompts per /generate request: the server batches within one; several give a progress bar.
CHUNK = 16
# SGLang's pause modes for the adapters' common ones ("wait" has no SGLang counterpart).
_PAUSE_MODES = {"abort": "abort", "keep": "in_place"}


@dataclass
class SGLangServer:
    """A connected SGLang server."""

    url: str
    client: SGLangClient
    info: ServerInfo
    model_root: str
    max_model_len: int
    preferred: dict[str, Any]
    settings: EngineSettings
    assumed: list[str]
    load_seconds: float
    adapter: str = "sglang"
    # The distribution SGLang's logprobs describe (module docstring): what the trainer's
    # "match_engine" processing follows.
    logprobs_kind: str = "temperature"
    notes: list[str] = field(default_factory=list)

    @property
    def version(self) -> str:
        return self.info.version

    def effective_settings(self) -> dict[str, Any]:
        info = self.info
        out: dict[str, Any] = {
            "url": self.url,
            "model_root": self.model_root,
            "max_model_len": self.max_model_len,
            "dtype": UNKNOWN if info.dtype == "auto" else info.dtype,
            "kv_cache_dtype": info.kv_cache_dtype,
            "device": info.device,
            "attention_backend": info.attention_backend,
            "sampling_backend": info.sampling_backend,
            "enable_prefix_caching": info.prefix_caching,
            "deterministic_inference": info.deterministic,
            # SGLang's deterministic inference is its batch-invariant mode (the certificate's
            # "claims batch invariance"; vLLM's is VLLM_BATCH_INVARIANT).
            "batch_invariant": info.deterministic,
            "fp32_lm_head": info.fp32_lm_head,
            "random_seed": info.random_seed,
            "weight_version": info.weight_version,
            "preferred_sampling_params": self.preferred,
            "logprobs": "log_softmax(logits / T), full vocabulary (measured on 0.5.23)",
        }
        out["unknown"] = sorted(info.unknown)
        out["unknown_why"] = dict(info.unknown)
        out["assumed_from_spec"] = self.assumed
        return out

    # --- sampling -------------------------------------------------------------------------

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        sampling: SamplingSettings,
        *,
        progress: Progress | None = None,
    ) -> Rollout:
        """Sample on the server; the same contract as `workers.rollout.generate`."""
        total = len(prompt_token_ids)
        started = time.perf_counter()
        samples = []
        for lo in range(0, total, CHUNK):
            chunk = prompt_token_ids[lo : lo + CHUNK]
            for s in self.client.generate(chunk, sampling, top_logprobs=sampling.logprobs_topk):
                samples.append((lo + s.prompt_index, s))
            if progress is not None:
                progress(min(lo + CHUNK, total), total)
        k = sampling.logprobs_topk
        return Rollout(
            prompt_token_ids=[list(p) for p in prompt_token_ids],
            prompt_index=[i for i, _ in samples],
            token_ids=[s.token_ids for _, s in samples],
            lr=[s.logprobs for _, s in samples],
            finish_reasons=[s.finish_reason for _, s in samples],
            requested=sampling.requested(),
            effective=self.effective_sampling(sampling),
            model_defaults=self.preferred,
            vllm_version=self.version,
            topk_ids=[s.top_ids or [] for _, s in samples] if k else None,
            topk_logprobs=[s.top_logprobs or [] for _, s in samples] if k else None,
            seconds=time.perf_counter() - started,
            extra={
                "engine": self.adapter,
                "url": self.url,
                # Per sample, as SGLang reports them: prompt tokens from the radix cache and
                # the weight version that served it.
                "num_cached_tokens": [s.cached_tokens for _, s in samples],
                "weight_versions": [s.weight_version for _, s in samples],
            },
        )

    def effective_sampling(self, sampling: SamplingSettings) -> dict[str, Any]:
        """What the server runs: each field as asked, else the server's preferred sampling
        params, else SGLang's own defaults (the same neutral values as vLLM's); greedy
        (T=0) ignores top-p, top-k and min-p."""
        out = server_sampling(sampling, self.preferred)
        if out["top_k"] is not None and out["top_k"] < 0:  # SGLang's "all" is -1
            out["top_k"] = 0
        return out

    def close(self) -> None:
        self.client.close()

    # --- managing it (weight updates) -----------------------------------------------------

    def prompt_logprobs(self, prompt_token_ids: Sequence[int]) -> list[float | None]:
        greedy = SamplingSettings(temperature=0.0, max_tokens=1)
        sample = self.client.generate([prompt_token_ids], greedy, prompt_logprobs=True)[0]
        return list(sample.prompt_logprobs or [])

    def update_weights_from_disk(self, path: str, *, weight_version: str | None = None) -> None:
        """SGLang's own update path, labelled `weight_version`; it flushes the radix cache
        itself."""
        self.client.update_weights_from_disk(path, weight_version=weight_version)

    def reset_prefix_cache(self) -> None:
        self.client.flush_cache()

    def pause(self, mode: PauseMode = "wait") -> None:
        if mode not in _PAUSE_MODES:
            raise Unsupported(
                f"SGLang has no pause mode that lets requests in flight finish ({mode!r}); it "
                "offers abort, in_place (keep them) and retract (requeue them)"
            )
        self.client.pause(_PAUSE_MODES[mode])  # type: ignore[arg-type]

    def resume(self) -> None:
        self.client.resume()


def connect(server: ServerSettings, model_path: str, assumed: EngineSettings) -> SGLangServer:
    """A connected SGLang server, checked before any sampling: reachable, an SGLang server,
    serving the model the trainer reads (UserError otherwise). `assumed` stands in for the
    settings the server cannot report."""
    assert server.url is not None
    started = time.perf_counter()
    client = SGLangClient(server.url, api_key=server.api_key, timeout=server.timeout_s)
    try:
        try:
            raw = client.raw_server_info()
            info = client.server_info(raw)
        except SGLangError as exc:
            raise UserError(
                f"{exc}. Is {server.url} an SGLang server (it must serve /server_info and "
                "/model_info)? For a vLLM server choose engine 'vllm'."
            ) from None
        root = _check_model(server, info, model_path)
    except BaseException:
        client.close()
        raise
    preferred = {
        k: v
        for k, v in (raw.get("preferred_sampling_params") or {}).items()
        if k in SAMPLING_FIELDS
    }
    # A prompt fits when the server accepts it as input (max_req_input_len); the adapters
    # skip prompts of max_model_len tokens or more.
    max_input = raw.get("max_req_input_len")
    max_len = int(max_input) + 1 if max_input else _model_context(model_path)
    settings, assumed_fields = _settings(info, max_len, assumed)
    notes = [
        f"SGLang {info.version} at {server.url}: its logprobs are log_softmax(logits / T) over "
        "the full vocabulary (temperature applies, top-p/top-k/min-p do not), unless the "
        "server runs with SGLANG_RETURN_ORIGINAL_LOGPROB=1 (raw), which no endpoint reports"
    ]
    if not info.deterministic:
        notes.append(
            "the server runs without --enable-deterministic-inference: the per-request seed is "
            "ignored, so a rerun samples other tokens"
        )
    return SGLangServer(
        url=server.url,
        client=client,
        info=info,
        model_root=root,
        max_model_len=max_len,
        preferred=preferred,
        settings=settings,
        assumed=assumed_fields,
        load_seconds=time.perf_counter() - started,
        notes=notes,
    )


def _check_model(server: ServerSettings, info: ServerInfo, model_path: str) -> str:
    """The served model's path; the same rule as for a vLLM server: the directory's name must
    match the trainer's model unless the user named the served model."""
    root = info.model_path
    if server.served_model is not None:
        if server.served_model not in (root, Path(root).name):
            raise UserError(
                f"the SGLang server at {server.url} serves {root!r}, not {server.served_model!r}"
            )
        return root
    if Path(root).name != Path(model_path).name:
        raise UserError(
            f"the SGLang server at {server.url} serves {root!r}, not the model {model_path!r} "
            "the trainer reads: start the server on the same weights, or name the served "
            "model in server.served_model if it is the same model under another name"
        )
    return root


def _model_context(model_path: str) -> int:
    import json

    config = json.loads((Path(model_path) / "config.json").read_text())
    return int(config.get("max_position_embeddings") or 0)


def _settings(
    info: ServerInfo, max_len: int, assumed: EngineSettings
) -> tuple[EngineSettings, list[str]]:
    """The engine settings the server reports, the rest from `assumed` (and which those are).
    logprobs_mode stays assumed: SGLang's kind has no vLLM name (`logprobs_kind`)."""
    known: dict[str, Any] = {
        "max_model_len": max_len,
        "enable_prefix_caching": info.prefix_caching,
        "head_dtype": "float32" if info.fp32_lm_head else "model",
    }
    if info.dtype in ("bfloat16", "float16", "float32"):
        known["dtype"] = info.dtype
    if info.random_seed is not None:
        known["seed"] = int(info.random_seed)
    settings = EngineSettings.model_validate({**assumed.model_dump(), **known})
    return settings, sorted(set(EngineSettings.model_fields) - set(known))
