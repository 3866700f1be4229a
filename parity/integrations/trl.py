"""TRL (and any transformers `Trainer`): forward what the trainer logs to Parity.

    from parity.integrations.trl import ParityCallback

    trainer = GRPOTrainer(..., callbacks=[ParityCallback(project="grpo", run="qwen-lr1e-6")])

At `on_train_begin` the run is created with the training arguments (and the model's config)
as its fingerprint; every `on_log` sends the logged scalars at the trainer's global step
(TRL's `sampling/sampling_logp_difference/mean`, `sampling/importance_sampling_ratio/*`,
`kl`, `reward`, ... under their own names; Parity reads the mismatch ones as its canonical
metrics, parity.frameworks); `on_train_end` sets the run's status. Sending goes through
`parity.Monitor`'s background sender: the loop never waits for the network, and an outage
spills to disk. Only the main process (`state.is_world_process_zero`) sends.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

from parity.client import Monitor

__all__ = ["ParityCallback"]


class ParityCallback(TrainerCallback):  # type: ignore[misc]
    """Send a Trainer's logs to a Parity run.

    `url`/`token` default to $PARITY_URL / $PARITY_TOKEN; `project` to $PARITY_PROJECT;
    `run` to the TrainingArguments' `run_name` (else the output directory's name). Any other
    keyword goes to `parity.Monitor` (spill_dir, batch_size, ...).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        project: str | None = None,
        run: str | None = None,
        tags: list[str] | None = None,
        **monitor_options: Any,
    ) -> None:
        self.url = url
        self.token = token
        self.project = project or os.environ.get("PARITY_PROJECT") or ""
        if not self.project:
            raise ValueError("ParityCallback needs a project (project= or $PARITY_PROJECT)")
        self.run = run
        self.tags = tags
        self.monitor_options = monitor_options
        self.monitor: Monitor | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or self.monitor is not None:
            return
        config: dict[str, Any] = {"training_args": args.to_dict()}
        model = kwargs.get("model")
        model_config = getattr(model, "config", None)
        if model_config is not None and hasattr(model_config, "to_dict"):
            config["model"] = model_config.to_dict()
        name = self.run or _run_name(args)
        self.monitor = Monitor(
            self.url,
            self.token,
            project=self.project,
            run=name,
            config=config,
            tags=self.tags,
            **self.monitor_options,
        )

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.monitor is None or not state.is_world_process_zero or not logs:
            return
        self.monitor.log(state.global_step, scalars(logs))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None and state.is_world_process_zero:
            self.monitor.finish("finished")
            self.monitor = None


def scalars(logs: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a Trainer's logs (one-element tensors included). Strings and tables
    (TRL's completions) are not metrics and are left out quietly; a NaN loss is left to
    Monitor.log, which skips it with a warning."""
    out: dict[str, float] = {}
    for key, value in logs.items():
        if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[key] = float(value)
    return out


def _run_name(args: Any) -> str:
    name = getattr(args, "run_name", None)
    output_dir = getattr(args, "output_dir", None) or "trainer"
    # transformers sets run_name to output_dir when it is not given.
    return str(name or os.path.basename(os.path.normpath(output_dir)) or "trainer")
