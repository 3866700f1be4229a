"""ParityCallback in a real transformers Trainer on the tiny model, against a live daphne."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pytest

from dashboard.core.models import MetricPoint, Run
from tests.conftest import Server, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

TRL_KEY = "sampling/sampling_logp_difference/mean"


def grpo_like_trainer(model_dir: Path, out: Path, callback: Any, steps: int) -> Any:
    """A Trainer that, like TRL's GRPOTrainer, gathers its own metrics during the loss and
    merges them into `log` (TRL's mechanism, with TRL's key for mean |lt - lr|)."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    class MiniGRPO(Trainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._metrics: list[float] = []

        def compute_loss(self, model: Any, inputs: Any, **kwargs: Any) -> Any:
            out = model(**inputs)
            with torch.no_grad():
                lt = torch.log_softmax(out.logits[:, :-1].float(), -1)
                lt = lt.gather(-1, inputs["input_ids"][:, 1:, None]).squeeze(-1)
                lr = lt + 0.01 * torch.randn_like(lt)  # a rollout engine a little off
                self._metrics.append((lt - lr).abs().mean().item())
            return out.loss

        def log(self, logs: dict[str, float], *args: Any) -> None:
            if self._metrics:
                logs = {**logs, TRL_KEY: sum(self._metrics) / len(self._metrics)}
                self._metrics.clear()
            super().log(logs, *args)

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    rows = [{"input_ids": [1 + (i * 7 + j) % 500 for j in range(16)]} for i in range(8)]

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        ids = torch.tensor([b["input_ids"] for b in batch])
        return {"input_ids": ids, "labels": ids.clone()}

    args = TrainingArguments(
        output_dir=str(out),
        run_name="trl-tiny",
        max_steps=steps,
        per_device_train_batch_size=2,
        logging_steps=1,
        learning_rate=1e-3,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    return MiniGRPO(
        model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[callback]
    )


def test_a_trainers_logs_arrive_in_parity_with_config_and_status(
    live_server_proc: Server, alice_token: str, project_a: Any, tmp_path: Path
) -> None:
    from parity.integrations.trl import ParityCallback
    from workers.tiny_model import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "models")
    callback = ParityCallback(
        live_server_proc.url,
        alice_token,
        project="proj-a",
        tags=["trl"],
        spill_dir=tmp_path / "spill",
        flush_interval=0.05,
    )
    trainer = grpo_like_trainer(model_dir, tmp_path / "out", callback, steps=4)
    trainer.train()
    assert callback.monitor is None  # finished at on_train_end

    run = Run.objects.get(project=project_a, name="trl-tiny")
    assert run.status == "finished" and run.tags == ["trl"]
    assert run.fingerprint["training_args"]["max_steps"] == 4
    assert run.fingerprint["model"]["hidden_size"] == 128
    points = {(k, s): v for k, s, v in MetricPoint.objects.filter(run=run).values_list(
        "key", "step", "value")}  # fmt: skip
    for step in range(1, 5):
        assert ("loss", step) in points and ("learning_rate", step) in points
        assert 0 < points[(TRL_KEY, step)] < 0.05
    # The end-of-training summary is logged too (train_runtime, train_loss).
    assert ("train_loss", 4) in points


def test_the_run_page_reads_trls_key_as_abs_diff_mean(
    live_server_proc: Server, alice_token: str, project_a: Any, tmp_path: Path, client: Any,
    alice: Any,
) -> None:  # fmt: skip
    from parity.integrations.trl import ParityCallback
    from workers.tiny_model import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "models")
    callback = ParityCallback(
        live_server_proc.url, alice_token, project="proj-a", run="trl-page",
        spill_dir=tmp_path / "spill", flush_interval=0.05,
    )  # fmt: skip
    grpo_like_trainer(model_dir, tmp_path / "out", callback, steps=2).train()
    run = wait_for(lambda: Run.objects.filter(name="trl-page", status="finished").first())
    client.force_login(alice)
    page = html.unescape(client.get(f"/runs/{run.pk}/").content.decode())
    assert "TRL sampling/sampling_logp_difference/mean" in page
