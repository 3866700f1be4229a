"""Comparisons against a real vLLM server process (tests/engine/fixtures.py: vllm_server).

The server runs the tiny model with the default engine settings, so a comparison against it
must measure what the in-process engine measures on the same prompts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from workers.engines.launch import LocalServer
from workers.reporting import NullReporter, UserError

pytestmark = pytest.mark.engine


def server_spec(server: LocalServer, **extra: Any) -> dict[str, Any]:
    return {"server": {"url": server.url, "api_key": server.api_key, **extra}}


def values(outcome: Any) -> dict[str, Any]:
    return outcome.result["metrics"]["values"]


def run_against(model: Path, server: dict[str, Any]) -> Any:
    from workers.compare import run_comparison_job

    spec = {"model": str(model), "num_prompts": 4, "sampling": {"max_tokens": 4}}
    return run_comparison_job({**spec, "server": server}, NullReporter())


def test_a_comparison_against_a_vllm_server_measures_what_the_in_process_engine_does(
    vllm_server: LocalServer, comparison: Any
) -> None:
    import vllm

    served = comparison(**server_spec(vllm_server))
    local = comparison()
    sv, lv = values(served), values(local)
    assert sv["token_mismatch"] == 0 and sv["nonfinite_rollout"] == 0
    assert sv["n_tokens"] == lv["n_tokens"] > 0
    assert sv["abs_diff_mean"] < 0.1
    assert abs(sv["abs_diff_mean"] - lv["abs_diff_mean"]) < 0.01
    assert abs(sv["kl_k3"] - lv["kl_k3"]) < 1e-3
    assert abs(sv["argmax_agree"] - lv["argmax_agree"]) < 0.05
    engine = served.result["fingerprint"]["engine"]
    assert engine["adapter"] == "vllm-server" and engine["url"] == vllm_server.url
    assert engine["vllm_version"] == vllm.__version__
    # Read from the server (dev mode), not assumed from the spec.
    assert engine["dtype"] == "bfloat16" and engine["logprobs_mode"] == "raw_logprobs"
    assert engine["generation_config"] == "auto" and engine["enable_prefix_caching"] is True
    assert engine["unknown"] == []
    assert local.result["fingerprint"]["engine"]["adapter"] == "vllm"
    assert vllm_server.api_key not in json.dumps(served.result)
    print(
        f"\nserver start {vllm_server.start_seconds:.1f} s; generate: server "
        f"{served.result['timings']['generate_s']:.2f} s, in-process "
        f"{local.result['timings']['generate_s']:.2f} s; wall: server "
        f"{served.result['test_wall_s']:.2f} s, in-process {local.result['test_wall_s']:.2f} s"
    )


def test_the_cli_compares_against_a_server(
    vllm_server: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from workers.compare import main

    argv = ["--model", str(vllm_server.model), "--server-url", vllm_server.url + "/v1"]
    argv += ["--server-api-key", vllm_server.api_key, "--num-prompts", "3", "--max-tokens", "8"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["result"]["fingerprint"]["engine"]["adapter"] == "vllm-server"
    assert out["result"]["metrics"]["values"]["token_mismatch"] == 0


# --- what a user can get wrong -------------------------------------------------------------


def test_an_unreachable_server_fails_with_a_clear_message(tiny_model: Path) -> None:
    from tests.conftest import free_port

    with pytest.raises(UserError, match="cannot reach the server at http://127.0.0.1:"):
        run_against(tiny_model, {"url": f"http://127.0.0.1:{free_port()}"})


def test_a_wrong_api_key_fails_naming_the_setting(vllm_server: LocalServer) -> None:
    with pytest.raises(UserError, match=r"401 Unauthorized\): set server.api_key"):
        run_against(vllm_server.model, {"url": vllm_server.url, "api_key": "wrong"})
    with pytest.raises(UserError, match="401"):
        run_against(vllm_server.model, {"url": vllm_server.url})


def test_a_server_serving_another_model_is_refused(
    vllm_server: LocalServer, tiny_models: dict[str, Path]
) -> None:
    with pytest.raises(UserError, match="not the model .*tiny-qwen2.* the trainer reads"):
        run_against(tiny_models["qwen2"], server_spec(vllm_server)["server"])
    with pytest.raises(UserError, match="does not serve 'llama'; it serves"):
        run_against(vllm_server.model, server_spec(vllm_server, served_model="llama")["server"])


class _NoLogprobs(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that is not vLLM: completions come back without logprobs
    (what a proxy or another engine does with the request)."""

    model = ""

    def _json(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/v1/models":
            self._json({"data": [{"id": self.model, "root": self.model, "max_model_len": 256}]})
        else:
            self.send_error(404)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        choice = {"index": 0, "text": "hi", "logprobs": None, "finish_reason": "length"}
        self._json({"choices": [choice]})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def no_logprobs_server(tiny_model: Path) -> Iterator[str]:
    _NoLogprobs.model = str(tiny_model)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _NoLogprobs)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_server_that_returns_no_logprobs_fails_clearly(
    tiny_model: Path, no_logprobs_server: str
) -> None:
    with pytest.raises(UserError, match="returned no logprobs for its sampled tokens"):
        run_against(tiny_model, {"url": no_logprobs_server})


# --- through the job queue -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_comparison_job_against_the_server_runs_in_a_real_worker(
    vllm_server: LocalServer, celery_worker_proc: Any, project_a: Any
) -> None:
    from dashboard.core.models import Job, start_job
    from tests.conftest import wait_for
    from workers.specs import ComparisonSpec

    def run(server: dict[str, Any]) -> Job:
        spec = ComparisonSpec.model_validate(
            {"model": str(vllm_server.model), "num_prompts": 3, "server": server}
        ).model_dump(mode="json")
        job = start_job(project_a, Job.Kind.COMPARISON, spec)

        def finished() -> Job | None:
            job.refresh_from_db()
            return job if job.is_final else None

        return wait_for(finished, timeout=300)

    ok = run(server_spec(vllm_server)["server"])
    assert ok.status == Job.Status.SUCCEEDED, ok.error
    assert ok.result["fingerprint"]["engine"]["adapter"] == "vllm-server"
    bad = run({"url": vllm_server.url, "api_key": "wrong"})
    assert bad.status == Job.Status.FAILED
    assert "set server.api_key" in bad.error


# --- managing the server (what replays need) -------------------------------------------------


def test_weights_are_updated_through_the_dev_endpoints_and_prompt_logprobs_follow(
    vllm_server: LocalServer, tiny_model: Path, tmp_path: Path
) -> None:
    from workers.engines import ManagedEngine
    from workers.engines.vllm_server import connect
    from workers.specs import EngineSettings, ServerSettings
    from workers.tiny_model import build_tiny_model

    other = build_tiny_model(tmp_path, seed=1)  # same architecture, other weights
    server = connect(
        ServerSettings(url=vllm_server.url, api_key=vllm_server.api_key),
        str(tiny_model),
        EngineSettings(),
    )
    assert isinstance(server, ManagedEngine)
    prompt = [1, 5, 6, 7, 8, 9]
    try:
        before = server.prompt_logprobs(prompt)
        assert before[0] is None and all(isinstance(x, float) for x in before[1:])
        server.update_weights_from_disk(str(other))
        updated = server.prompt_logprobs(prompt)
        assert updated[1:] != before[1:]
    finally:
        # The session's server goes back to the weights every other test expects.
        server.update_weights_from_disk(str(tiny_model))
    assert server.prompt_logprobs(prompt) == before
    server.close()
