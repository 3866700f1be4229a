"""A vLLM server the user already runs, reached over its OpenAI-compatible HTTP API.

    server = connect(ServerSettings(url="http://10.0.0.5:8000"), model_path, spec.engine)
    ro = server.generate(prompt_ids, sampling)   # workers.rollout.Rollout, as in-process

Sampling is `POST /v1/completions` with token-id prompts, `logprobs`, and
`return_tokens_as_token_ids` / `return_token_ids`, one request per prompt sent concurrently
(the server batches them as the in-process engine does). What the server runs with is read,
never guessed: `/version`, `/v1/models` (model, max_model_len) and `/metrics` (prefix
caching) always; dtype, logprobs_mode, generation_config, lm_head dtype, batch limits and
seed only from `/server_info`, which vLLM serves with `VLLM_SERVER_DEV_MODE=1`. Without it
those are reported as "unknown", and the trainer follows the engine settings of the spec,
which the fingerprint marks as assumed. The same dev endpoints carry weight updates
(`/pause`, `/collective_rpc` reload_weights, `/reset_prefix_cache`, `/resume`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from workers.engines import http
from workers.engines.base import UNKNOWN, PauseMode, Progress, Unsupported
from workers.reporting import UserError
from workers.rollout import SAMPLING_FIELDS, Rollout, server_sampling
from workers.specs import EngineSettings, SamplingSettings, ServerSettings

# Concurrent requests in flight: enough for the server to batch, few enough for one client.
MAX_IN_FLIGHT = 64
# Settings only /server_info can tell; named in the fingerprint when it is not served.
DEV_ONLY = (
    "dtype",
    "head_dtype",
    "logprobs_mode",
    "generation_config",
    "max_num_seqs",
    "enforce_eager",
    "seed",
    "gpu_memory_utilization",
    "multiprocessing",
    "batch_invariant",
)
_PREFIX_CACHING = re.compile(r'vllm:cache_config_info\{[^}]*enable_prefix_caching="(\w+)"')


def server_args(model: str, settings: EngineSettings) -> list[str]:
    """The flags of `python -m vllm.entrypoints.openai.api_server` (`vllm serve`) that start a
    server with these engine settings: what the in-process engine is built with
    (`workers.rollout.engine_kwargs`), for a server."""
    args = [
        "--model",
        model,
        "--dtype",
        settings.dtype,
        "--logprobs-mode",
        settings.vllm_logprobs_mode,
        "--generation-config",
        settings.generation_config,
        "--enable-prefix-caching"
        if settings.enable_prefix_caching
        else "--no-enable-prefix-caching",
        "--seed",
        str(settings.seed),
        "--gpu-memory-utilization",
        str(settings.gpu_memory_utilization),
    ]
    if settings.enforce_eager:
        args.append("--enforce-eager")
    if settings.max_num_seqs is not None:
        args += ["--max-num-seqs", str(settings.max_num_seqs)]
    if settings.max_model_len is not None:
        args += ["--max-model-len", str(settings.max_model_len)]
    if settings.head_dtype == "float32":
        args += ["--hf-overrides", '{"head_dtype": "float32"}']
    return args


@dataclass
class VllmServer:
    """A connected vLLM server: the `workers.engines.RolloutEngine` over HTTP."""

    url: str
    client: httpx.Client
    served_model: str
    model_root: str
    max_model_len: int
    version: str
    # /server_info's vllm_config (JSON), None when the server does not serve it.
    config: dict[str, Any] | None
    vllm_env: dict[str, Any]
    prefix_caching: bool | None
    settings: EngineSettings
    assumed: list[str]
    model_defaults: dict[str, Any]
    load_seconds: float
    adapter: str = "vllm-server"
    notes: list[str] = field(default_factory=list)

    # --- what it runs with ------------------------------------------------------------------

    def effective_settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "url": self.url,
            "served_model": self.served_model,
            "model_root": self.model_root,
            "max_model_len": self.max_model_len,
            "enable_prefix_caching": UNKNOWN
            if self.prefix_caching is None
            else self.prefix_caching,
        }
        if self.config is None:
            out.update(dict.fromkeys(DEV_ONLY, UNKNOWN))
        else:
            mc = self.config.get("model_config", {})
            sc = self.config.get("scheduler_config", {})
            cc = self.config.get("cache_config", {})
            dtype = str(mc.get("dtype", UNKNOWN)).removeprefix("torch.")
            head = (mc.get("hf_overrides") or {}).get("head_dtype")
            out.update(
                dtype=dtype,
                head_dtype=str(head).removeprefix("torch.") if head else dtype,
                logprobs_mode=mc.get("logprobs_mode", UNKNOWN),
                generation_config=mc.get("generation_config", UNKNOWN),
                override_generation_config=mc.get("override_generation_config") or {},
                max_num_seqs=sc.get("max_num_seqs", UNKNOWN),
                enforce_eager=mc.get("enforce_eager", UNKNOWN),
                seed=mc.get("seed", UNKNOWN),
                gpu_memory_utilization=cc.get("gpu_memory_utilization", UNKNOWN),
                multiprocessing=self.vllm_env.get("VLLM_ENABLE_V1_MULTIPROCESSING", UNKNOWN),
                batch_invariant=self.vllm_env.get("VLLM_BATCH_INVARIANT", UNKNOWN),
            )
        out["unknown"] = [k for k, v in out.items() if v == UNKNOWN]
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
        too_long = [i for i, ids in enumerate(prompt_token_ids) if len(ids) >= self.max_model_len]
        if too_long:
            raise UserError(
                f"{len(too_long)} prompt(s) (first: prompt {too_long[0] + 1}) do not fit the "
                f"server's max_model_len={self.max_model_len}"
            )
        body = self._request_body(sampling)
        total, done = len(prompt_token_ids), 0
        started = time.perf_counter()
        results: list[dict[str, Any]] = [{}] * total
        with ThreadPoolExecutor(max_workers=max(1, min(MAX_IN_FLIGHT, total))) as pool:
            futures = {
                pool.submit(self._post, "/v1/completions", {**body, "prompt": list(ids)}): i
                for i, ids in enumerate(prompt_token_ids)
            }
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                done += 1
                if progress is not None:
                    progress(done, total)
        seconds = time.perf_counter() - started
        ro = self._rollout(prompt_token_ids, results, sampling)
        ro.seconds = seconds
        return ro

    def _request_body(self, sampling: SamplingSettings) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.served_model,
            "max_tokens": sampling.max_tokens,
            "n": sampling.n,
            "logprobs": sampling.logprobs_topk,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        # Unset fields stay unset: the server fills them from its own defaults, as it does
        # for every RL framework's request (the generation_config trap is measured, not fixed).
        for k in SAMPLING_FIELDS:
            if getattr(sampling, k) is not None:
                body[k] = getattr(sampling, k)
        return body

    def effective_sampling(self, sampling: SamplingSettings) -> dict[str, Any]:
        """The sampling parameters the server runs for this request, by vLLM's own merge
        (user -> server default -> neutral, completion/protocol.py to_sampling_params) and
        its greedy normalisation (sampling_params.py: T=0 resets top-p, top-k, min-p)."""
        return server_sampling(sampling, self.model_defaults)

    def _rollout(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        results: list[dict[str, Any]],
        sampling: SamplingSettings,
    ) -> Rollout:
        k = sampling.logprobs_topk
        prompt_index: list[int] = []
        token_ids: list[list[int]] = []
        lr: list[list[float]] = []
        finish: list[str | None] = []
        topk_ids: list[list[list[int]]] = []
        topk_lps: list[list[list[float]]] = []
        cached: list[int | None] = []
        for i, res in enumerate(results):
            choices = sorted(res.get("choices") or [], key=lambda c: c.get("index", 0))
            if len(choices) != sampling.n:
                raise UserError(
                    f"the server at {self.url} returned {len(choices)} completions for a "
                    f"request of n={sampling.n}"
                )
            # Prefix-cache hits: only a server started with --enable-prompt-tokens-details
            # reports them (usage.prompt_tokens_details.cached_tokens); None otherwise.
            details = (res.get("usage") or {}).get("prompt_tokens_details") or {}
            for choice in choices:
                cached.append(details.get("cached_tokens"))
                ids, lps, top = self._choice_tokens(choice)
                prompt_index.append(i)
                token_ids.append(ids)
                lr.append(lps)
                finish.append(choice.get("finish_reason"))
                if k:
                    ranked = [sorted(t.items(), key=lambda kv: -kv[1])[:k] for t in top]
                    topk_ids.append([[_token_id(t) for t, _ in r] for r in ranked])
                    topk_lps.append([[float(lp) for _, lp in r] for r in ranked])
        return Rollout(
            prompt_token_ids=[list(ids) for ids in prompt_token_ids],
            prompt_index=prompt_index,
            token_ids=token_ids,
            lr=lr,
            finish_reasons=finish,
            requested=sampling.requested(),
            effective=self.effective_sampling(sampling),
            model_defaults=self.model_defaults,
            vllm_version=self.version,
            topk_ids=topk_ids if k else None,
            topk_logprobs=topk_lps if k else None,
            extra={"engine": self.adapter, "url": self.url, "num_cached_tokens": cached},
        )

    def _choice_tokens(
        self, choice: dict[str, Any]
    ) -> tuple[list[int], list[float], list[dict[str, float]]]:
        logprobs = choice.get("logprobs") or {}
        lps = logprobs.get("token_logprobs")
        if not lps:
            raise UserError(
                f"the server at {self.url} returned no logprobs for its sampled tokens: Parity "
                "needs a vLLM server (OpenAI-compatible /v1/completions with logprobs)"
            )
        ids = choice.get("token_ids")
        if ids is None:  # an older vLLM: the ids only as "token_id:N" strings
            ids = [_token_id(t) for t in logprobs.get("tokens") or []]
        if len(ids) != len(lps):
            raise UserError(
                f"the server at {self.url} returned {len(lps)} logprobs for {len(ids)} tokens"
            )
        lr = [float("nan") if x is None else float(x) for x in lps]
        return [int(t) for t in ids], lr, list(logprobs.get("top_logprobs") or [])

    def close(self) -> None:
        self.client.close()

    # --- managing it (weight updates) -----------------------------------------------------

    def prompt_logprobs(self, prompt_token_ids: Sequence[int]) -> list[float | None]:
        body = {
            "model": self.served_model,
            "prompt": list(prompt_token_ids),
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 1,
            "return_tokens_as_token_ids": True,
        }
        steps = self._post("/v1/completions", body)["choices"][0].get("prompt_logprobs") or []
        return [
            None if step is None else float(step[str(t)]["logprob"])
            for step, t in zip(steps, prompt_token_ids, strict=True)
        ]

    @property
    def dev_mode(self) -> bool:
        """Whether the server serves vLLM's dev endpoints (VLLM_SERVER_DEV_MODE=1)."""
        return self.config is not None

    def update_weights_from_disk(self, path: str, *, reset_prefix_cache: bool = True) -> None:
        """vLLM's reload path: pause (finish running requests), reload every weight from
        `path` (a directory of *.safetensors, read by the server) in each worker, drop the
        prefix cache (KV of the old weights) unless told not to, resume.

        /pause itself clears the caches unless asked not to (vLLM 0.32: clear_cache=True by
        default), so without the reset it is paused with clear_cache=false: the caller then
        decides when the prefix cache goes (a replay measures what keeping it does)."""
        self.pause("wait", clear_cache=reset_prefix_cache)
        try:
            self.collective_rpc("reload_weights", {"weights_path": path})
            if reset_prefix_cache:
                self.reset_prefix_cache()
        finally:
            self.resume()

    def collective_rpc(self, method: str, kwargs: dict[str, str] | None = None) -> list[Any]:
        """`method` run in every worker of the server (/collective_rpc): their results."""
        body: dict[str, Any] = {"method": method, "kwargs": kwargs or {}}
        return list((self.dev_post("/collective_rpc", body) or {}).get("results") or [])

    def reset_prefix_cache(self) -> bool | None:
        """What the server answered (`success`), None when it does not say."""
        res = self.dev_post("/reset_prefix_cache")
        return res.get("success") if isinstance(res, dict) else None

    def pause(self, mode: PauseMode = "wait", *, clear_cache: bool = True) -> None:
        self.dev_post(f"/pause?mode={mode}&clear_cache={str(clear_cache).lower()}")

    def resume(self) -> None:
        self.dev_post("/resume")

    def dev_post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        if self.config is None:
            raise Unsupported(
                f"the server at {self.url} does not serve vLLM's dev endpoints ({path}): "
                "start it with VLLM_SERVER_DEV_MODE=1"
            )
        return self._post(path, body)

    # --- HTTP -----------------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return _call(self.client, "POST", self.url, path, body)


def _token_id(token: str) -> int:
    """ "token_id:123" (return_tokens_as_token_ids) -> 123."""
    return int(token.rsplit(":", 1)[-1])


def _call(
    client: httpx.Client, method: str, url: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    """One request (`workers.engines.http.request`), with every failure a user can cause
    worded for them (UserError)."""
    try:
        response = http.request(client, method, path, body)
    except http.DROPPED:
        raise UserError(
            f"the server at {url} closed the connection without answering {path}, twice; "
            "check the server's log"
        ) from None
    except httpx.TimeoutException:
        raise UserError(
            f"the server at {url} did not answer {path} within {client.timeout.read} s"
        ) from None
    except httpx.HTTPError as exc:
        raise UserError(
            f"cannot reach the server at {url} ({type(exc).__name__}: {exc}); check the URL and "
            "that the server is running and reachable from the Parity worker"
        ) from None
    if response.status_code == 401:
        raise UserError(
            f"the server at {url} refused the request (401 Unauthorized): set server.api_key to "
            "the key the server was started with (--api-key)"
        )
    if response.status_code >= 400:
        raise UserError(
            f"the server at {url} answered {path} with {response.status_code}: "
            f"{_error_text(response)}"
        )
    try:
        return response.json()
    except ValueError:
        raise UserError(f"the server at {url} answered {path} with something not JSON") from None


def _error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)[:300]
        return str(err)[:300]
    return str(data)[:300]


def connect(server: ServerSettings, model_path: str, assumed: EngineSettings) -> VllmServer:
    """A connected server, checked before any sampling: reachable, accepting the key, serving
    the model the trainer reads (UserError otherwise). `assumed` stands in for the settings
    the server cannot report."""
    assert server.url is not None
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
    client = httpx.Client(
        base_url=server.url,
        headers=headers,
        timeout=httpx.Timeout(server.timeout_s, connect=10.0),
        limits=httpx.Limits(max_connections=MAX_IN_FLIGHT),
    )
    try:
        models = _call(client, "GET", server.url, "/v1/models")
        served, root, max_len = _pick_model(server, models, model_path)
        version = _version(client, server.url)
        info = _optional_json(client, "/server_info?config_format=json")
        config = info.get("vllm_config") if isinstance(info, dict) else None
        prefix = _prefix_caching(client, config)
    except BaseException:
        client.close()
        raise
    settings, assumed_fields = _settings(config, prefix, max_len, assumed)
    notes = []
    if not isinstance(config, dict):
        notes.append(
            f"the server at {server.url} does not serve /server_info (start it with "
            "VLLM_SERVER_DEV_MODE=1 to read them): its dtype, logprobs_mode, generation_config "
            "and default sampling parameters are unknown; the trainer followed the engine "
            f"settings of this job for {', '.join(assumed_fields)}, and sampling fields left "
            "unset are reported at vLLM's neutral defaults"
        )
    return VllmServer(
        url=server.url,
        client=client,
        served_model=served,
        model_root=root,
        max_model_len=max_len,
        version=version,
        config=config if isinstance(config, dict) else None,
        vllm_env=(info or {}).get("vllm_env") or {},
        prefix_caching=prefix,
        settings=settings,
        assumed=assumed_fields,
        model_defaults=_model_defaults(config, model_path),
        load_seconds=time.perf_counter() - started,
        notes=notes,
    )


def _pick_model(server: ServerSettings, models: Any, model_path: str) -> tuple[str, str, int]:
    data = models.get("data") if isinstance(models, dict) else None
    if not data:
        raise UserError(f"the server at {server.url} lists no models at /v1/models")
    names = [m.get("id") for m in data]
    if server.served_model is not None:
        chosen = next((m for m in data if m.get("id") == server.served_model), None)
        if chosen is None:
            raise UserError(
                f"the server at {server.url} does not serve {server.served_model!r}; it serves "
                f"{', '.join(map(repr, names))}"
            )
    elif len(data) == 1:
        chosen = data[0]
    else:
        raise UserError(
            f"the server at {server.url} serves several models ({', '.join(map(repr, names))}): "
            "name one in server.served_model"
        )
    root = str(chosen.get("root") or chosen["id"])
    # The server may run elsewhere, under another path: the directory's name must match,
    # unless the user named the served model (then they vouch that it is these weights).
    if server.served_model is None and Path(root).name != Path(model_path).name:
        raise UserError(
            f"the server at {server.url} serves {root!r}, not the model {model_path!r} the "
            "trainer reads: start the server on the same weights, or name the served model in "
            "server.served_model if it is the same model under another name"
        )
    return str(chosen["id"]), root, int(chosen.get("max_model_len") or 0)


def _version(client: httpx.Client, url: str) -> str:
    data = _optional_json(client, "/version")
    return str(data.get("version")) if isinstance(data, dict) and data.get("version") else UNKNOWN


def _optional_json(client: httpx.Client, path: str) -> Any:
    """GET `path`; None when the server does not serve it (dev endpoints, older versions)."""
    try:
        response = client.get(path)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _prefix_caching(client: httpx.Client, config: Any) -> bool | None:
    if isinstance(config, dict):
        value = config.get("cache_config", {}).get("enable_prefix_caching")
        if isinstance(value, bool):
            return value
    try:
        response = client.get("/metrics")
    except httpx.HTTPError:
        return None
    match = _PREFIX_CACHING.search(response.text) if response.status_code == 200 else None
    return None if match is None else match.group(1) == "True"


def _settings(
    config: Any, prefix: bool | None, max_len: int, assumed: EngineSettings
) -> tuple[EngineSettings, list[str]]:
    """The engine settings the server reports, the rest from `assumed` (and which those are)."""
    known: dict[str, Any] = {"max_model_len": max_len or None}
    if prefix is not None:
        known["enable_prefix_caching"] = prefix
    if isinstance(config, dict):
        mc = config.get("model_config", {})
        modes = {"raw_logprobs": "raw", "processed_logprobs": "processed"}
        head = (mc.get("hf_overrides") or {}).get("head_dtype")
        known.update(
            dtype=str(mc.get("dtype")).removeprefix("torch."),
            logprobs_mode=modes.get(mc.get("logprobs_mode")),
            generation_config=mc.get("generation_config"),
            head_dtype="float32" if str(head).endswith("float32") else "model",
            max_num_seqs=config.get("scheduler_config", {}).get("max_num_seqs"),
            enforce_eager=mc.get("enforce_eager"),
            seed=mc.get("seed"),
            gpu_memory_utilization=config.get("cache_config", {}).get("gpu_memory_utilization"),
        )
    base = assumed.model_dump()
    taken: dict[str, Any] = {}
    for name, value in known.items():
        if value is None:
            continue
        try:  # a value outside what Parity can model (a logits mode, a config path) stays
            EngineSettings.model_validate({**base, name: value})
        except ValidationError:
            continue
        taken[name] = value
    settings = EngineSettings.model_validate({**base, **taken})
    return settings, sorted(set(EngineSettings.model_fields) - set(taken))


def _model_defaults(config: Any, model_path: str) -> dict[str, Any]:
    """The sampling defaults the server applies to unset fields: vLLM's
    `ModelConfig.get_diff_sampling_param`, from the model directory the trainer reads (the
    weights the server was started from). Unknowable without /server_info: then empty."""
    if not isinstance(config, dict):
        return {}
    mc = config.get("model_config", {})
    source = mc.get("generation_config", "auto")
    values: dict[str, Any] = {}
    if source != "vllm":
        from transformers import GenerationConfig

        where = model_path if source == "auto" else source
        try:
            values = GenerationConfig.from_pretrained(where).to_diff_dict()
        except OSError:
            values = {}
    values.update(mc.get("override_generation_config") or {})
    out = {k: values[k] for k in SAMPLING_FIELDS if values.get(k) is not None}
    if values.get("max_new_tokens") is not None:
        out["max_tokens"] = values["max_new_tokens"]
    return out
