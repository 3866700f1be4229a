"""A client for a real SGLang server (its native HTTP API), for comparisons against SGLang.

It talks HTTP only (httpx) and never imports sglang, so Parity's venv needs none of SGLang's
pins. Endpoints used, as SGLang 0.5.23 serves them: `/generate` (token-id prompts,
`return_logprob`, `logprob_start_len`), `/begin_weight_update` + `/update_weights_from_disk` +
`/end_weight_update`, `/weights_checker`, `/flush_cache`, `/pause_generation`,
`/continue_generation`, `/server_info`, `/model_info`, `/health`.

What the server cannot tell a client (so `ServerInfo.unknown` says it rather than guessing):
- which distribution its logprobs are of: by default log_softmax(logits / T) over the full
  vocabulary (SGLang's sampler: temperature applies, top-p/top-k/min-p do not; measured on
  0.5.23), but the server process's SGLANG_RETURN_ORIGINAL_LOGPROB=1 makes them raw, and no
  endpoint reports that variable;
- the dtype it resolved when launched with `--dtype auto` (it reports "auto");
- whether a per-request seed is honoured: `sampling_seed` is used only with
  `--enable-deterministic-inference` (reported as `deterministic`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from workers.engines import http
from workers.reporting import UserError
from workers.specs import SamplingSettings

PauseMode = Literal["abort", "in_place", "retract"]


class SGLangError(UserError):
    """The SGLang server refused a request or could not be reached; the message names the
    endpoint and quotes the server."""


@dataclass(frozen=True)
class Sample:
    """One sampled sequence: its tokens and the engine's log-prob of each (lr)."""

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str | None
    # One per prompt token when asked; the first is None (nothing precedes it).
    prompt_logprobs: list[float | None] | None = None
    # The top-k token ids and their logprobs at each sampled position, when asked.
    top_ids: list[list[int]] | None = None
    top_logprobs: list[list[float]] | None = None
    # Prompt tokens served from the radix cache, and the weight version that served the
    # request (meta_info's cached_tokens, weight_version); None when the server omits them.
    cached_tokens: int | None = None
    weight_version: str | None = None


@dataclass(frozen=True)
class ServerInfo:
    """What the server reports about itself (its launch settings) and what it cannot."""

    engine: str
    version: str
    model_path: str
    weight_version: str
    dtype: str
    kv_cache_dtype: str
    device: str
    attention_backend: str | None
    sampling_backend: str | None
    prefix_caching: bool
    deterministic: bool
    fp32_lm_head: bool
    sampling_defaults: str | None
    random_seed: int | None
    launch_command: str | None
    unknown: dict[str, str] = field(default_factory=dict)


def sampling_params(sampling: SamplingSettings, *, ignore_eos: bool = True) -> dict[str, Any]:
    """SGLang's sampling_params for Parity's sampling settings; empty fields are left out so
    that the server's own defaults (`--sampling-defaults`) apply, as with vLLM. `n` is not
    sent: the client repeats each prompt instead, so every sample is its own request."""
    params: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "ignore_eos": ignore_eos}
    for name in (
        "temperature",
        "top_p",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
    ):
        value = getattr(sampling, name)
        if value is not None:
            params[name] = value
    if sampling.top_k is not None:
        params["top_k"] = -1 if sampling.top_k <= 0 else sampling.top_k  # SGLang's "all"
    if sampling.seed is not None:
        params["sampling_seed"] = sampling.seed
    return params


class SGLangClient:
    """A running SGLang server at `base_url` (e.g. http://127.0.0.1:30000)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 600.0):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SGLangClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        try:
            response = http.request(self._http, method, path, body)
        except httpx.HTTPError as exc:
            raise SGLangError(
                f"SGLang server at {self.base_url} unreachable ({path}): {exc}"
            ) from exc
        if response.status_code >= 400:
            raise SGLangError(
                f"SGLang {path} answered {response.status_code}: {response.text.strip()[:500]}"
            )
        if "json" in response.headers.get("content-type", ""):
            return response.json()
        return response.text

    def healthy(self) -> bool:
        try:
            return self._http.get("/health", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
        """Block until /health answers 200; SGLangError after `timeout` seconds, or as soon
        as `alive()` (e.g. "the server process still runs") turns false."""
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if not alive():
                raise SGLangError(f"SGLang server for {self.base_url} exited before it was ready")
            if time.monotonic() > deadline:
                raise SGLangError(f"SGLang server at {self.base_url} not ready in {timeout:.0f} s")
            time.sleep(0.5)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingSettings,
        *,
        prompt_logprobs: bool = False,
        ignore_eos: bool = True,
        top_logprobs: int = 0,
    ) -> list[Sample]:
        """Sample `sampling.n` sequences per token-id prompt (prompt-major order), each with
        the engine's log-prob of every sampled token, of every prompt token when
        `prompt_logprobs`, and its `top_logprobs` most likely tokens at each position. One
        batched /generate request."""
        if not prompts:
            return []
        batch = [list(map(int, p)) for p in prompts for _ in range(sampling.n)]
        body = {
            "input_ids": batch,
            "sampling_params": sampling_params(sampling, ignore_eos=ignore_eos),
            "return_logprob": True,
            # logprob_start_len is where prompt logprobs start; past the prompt, none.
            "logprob_start_len": 0 if prompt_logprobs else -1,
        }
        if top_logprobs:
            body["top_logprobs_num"] = top_logprobs
        out = self._call("POST", "/generate", body)
        if not isinstance(out, list) or len(out) != len(batch):
            raise SGLangError(f"SGLang /generate returned {type(out).__name__}, not {len(batch)}")
        return [
            _sequence(i // sampling.n, item, prompt_logprobs, top_logprobs > 0)
            for i, item in enumerate(out)
        ]

    def update_weights_from_disk(
        self, model_path: str, *, weight_version: str | None = None
    ) -> str:
        """Load new weights from a checkpoint directory into the running server, labelled
        `weight_version` (what /model_info and each /generate result report from then on); the
        server flushes its radix cache after the load (SGLang's default, flush_cache=true).

        Bracketed by /begin_weight_update and /end_weight_update, as SGLang 0.5.23 requires
        for in-place-quantized weights (plain bf16 weights load without it; the bracket is
        harmless there). The session is closed even when the load fails."""
        self._call("POST", "/begin_weight_update", {})
        try:
            body: dict[str, Any] = {"model_path": model_path}
            if weight_version is not None:
                body["weight_version"] = weight_version
            result = self._call("POST", "/update_weights_from_disk", body)
        finally:
            self._call("POST", "/end_weight_update", {})
        if not result.get("success"):
            raise SGLangError(f"SGLang could not load {model_path!r}: {result.get('message')}")
        return str(result.get("message", ""))

    def weights_checker(self) -> dict[str, str]:
        """SGLang's own digest of every parameter it serves (/weights_checker, action
        "checksum"; SGLang 0.5.23): name -> hex digest (on CPU the first 8 bytes of the sha256
        of its bytes; on GPU SGLang's own kernel hash). SGLangError when it cannot be read
        (older SGLang has no such endpoint)."""
        res = self._call("POST", "/weights_checker", {"action": "checksum"})
        ranks = res.get("ranks") if isinstance(res, dict) else None
        if not ranks:
            raise SGLangError(f"SGLang /weights_checker answered without checksums: {res!r:.200}")
        return {str(k): str(v) for k, v in ranks[0].get("checksums", {}).items()}

    def weight_version(self) -> str:
        """The weight version the server serves (/model_info)."""
        return str(self._call("GET", "/model_info").get("weight_version", ""))

    def flush_cache(self) -> None:
        """Drop the radix (prefix) cache; SGLang refuses while requests are in flight."""
        self._call("POST", "/flush_cache")

    def pause(self, mode: PauseMode = "abort") -> None:
        """Stop scheduling generation: "abort" ends requests in flight, "retract" requeues
        them, "in_place" keeps them (and their KV cache) where they are."""
        self._call("POST", "/pause_generation", {"mode": mode})

    def resume(self) -> None:
        self._call("POST", "/continue_generation", {})

    def raw_server_info(self) -> dict[str, Any]:
        """/server_info as the server sends it (its launch arguments and internal state)."""
        info = self._call("GET", "/server_info")
        if not isinstance(info, dict):
            raise SGLangError(f"SGLang /server_info returned {type(info).__name__}, not JSON")
        return info

    def server_info(self, raw: dict[str, Any] | None = None) -> ServerInfo:
        """What the server reports about itself (from `raw`, a /server_info already read)."""
        info = raw if raw is not None else self.raw_server_info()
        model = self._call("GET", "/model_info")
        unknown = {
            "logprobs_mode": "log_softmax(logits / T) over the full vocabulary unless the "
            "server runs with SGLANG_RETURN_ORIGINAL_LOGPROB=1 (raw), which no endpoint reports",
        }
        if info.get("dtype") == "auto":
            unknown["dtype"] = "launched with --dtype auto; the dtype it resolved is not reported"
        if not info.get("enable_deterministic_inference"):
            unknown["seed"] = (
                "per-request seeds are ignored without --enable-deterministic-inference"
            )
        return ServerInfo(
            engine="sglang",
            version=str(info.get("version", "unknown")),
            model_path=str(model.get("model_path", info.get("model_path", ""))),
            weight_version=str(model.get("weight_version", info.get("weight_version", ""))),
            dtype=str(info.get("dtype")),
            kv_cache_dtype=str(info.get("kv_cache_dtype")),
            device=str(info.get("device")),
            attention_backend=info.get("attention_backend"),
            sampling_backend=info.get("sampling_backend"),
            prefix_caching=not info.get("disable_radix_cache", False),
            deterministic=bool(info.get("enable_deterministic_inference", False)),
            fp32_lm_head=bool(info.get("enable_fp32_lm_head", False)),
            sampling_defaults=info.get("sampling_defaults"),
            random_seed=info.get("random_seed"),
            launch_command=info.get("launch_command"),
            unknown=unknown,
        )


def _sequence(
    prompt_index: int, item: Mapping[str, Any], with_prompt: bool, with_top: bool = False
) -> Sample:
    """One /generate result: meta_info's (logprob, token id, text) triples -> our lists."""
    meta = item["meta_info"]
    pairs = meta.get("output_token_logprobs") or []
    finish = meta.get("finish_reason")
    tops = [row or [] for row in meta.get("output_top_logprobs") or []] if with_top else None
    prompt = None
    if with_prompt:
        prompt = [None if lp is None else float(lp) for lp, _, _ in meta["input_token_logprobs"]]
    return Sample(
        prompt_index=prompt_index,
        token_ids=[int(t) for _, t, _ in pairs],
        logprobs=[float(lp) for lp, _, _ in pairs],
        finish_reason=finish.get("type") if isinstance(finish, dict) else finish,
        prompt_logprobs=prompt,
        top_ids=None if tops is None else [[int(t) for _, t, _ in row] for row in tops],
        top_logprobs=None if tops is None else [[float(lp) for lp, _, _ in row] for row in tops],
        cached_tokens=None if meta.get("cached_tokens") is None else int(meta["cached_tokens"]),
        weight_version=None if meta.get("weight_version") is None else str(meta["weight_version"]),
    )
