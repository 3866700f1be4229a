"""`python -m workers.replay`: the replay's command line, generated from `ReplaySpec`
(workers.cli, which also gives every CLI `--dtype` for the engine and trainer together) plus
the flags the spec cannot spell by itself:

    --updates N                  num_updates (also --num-updates)
    --checkpoints DIR [DIR ...]  the checkpoint source, W_1 first
    --seed, --step-size          the synthetic source (the sampling seed is --sampling-seed)
    --prompt TEXT                a prompt instead of the built-in ones (repeatable)
    --json                       print the stored result as JSON; stdout has nothing else
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pydantic import BaseModel

from workers import cli as spec_cli
from workers.replay.report import text_report
from workers.replay.run import run_replay
from workers.reporting import PrintReporter, UserError, json_safe
from workers.specs.replay import CheckpointSource, ReplaySpec, SyntheticSource

# Flags of this CLI that are not spec fields: read here, then dropped from the spec data.
_OWN_FLAGS = ("json", "checkpoints", "source_seed", "step_size")


def _help(model: type[BaseModel], name: str) -> str:
    info = model.model_fields[name]
    if info.is_required():
        return info.description or ""
    return f"{info.description or ''} (default: {info.get_default(call_default_factory=True)})"


def build_parser() -> argparse.ArgumentParser:
    """One flag per ReplaySpec field (workers.cli), then this CLI's own (module docstring)."""
    parser = spec_cli.spec_parser(
        ReplaySpec,
        prog="python -m workers.replay",
        description="Replay weight updates into a running vLLM V1 engine and check each one.",
        skip=("num_updates",),
    )
    parser.add_argument(
        "--updates",
        "--num-updates",
        dest="num_updates",
        type=int,
        metavar="N",
        help=_help(ReplaySpec, "num_updates"),
    )
    parser.add_argument(
        "--prompt",
        dest="prompts",
        action="append",
        metavar="TEXT",
        help="a prompt instead of the built-in ones (repeatable; or --prompts FILE.jsonl)",
    )
    source = parser.add_argument_group(
        "weight source", "W_1..W_N: a seeded synthetic trajectory (default) or checkpoints."
    )
    source.add_argument(
        "--checkpoints", nargs="+", metavar="DIR", help=_help(CheckpointSource, "dirs")
    )
    # The replay's --seed has always been the trajectory's; the sampling seed generated as
    # --seed too keeps its long form, --sampling-seed.
    parser.conflict_handler = source.conflict_handler = "resolve"
    source.add_argument(
        "--seed", dest="source_seed", type=int, metavar="N", help=_help(SyntheticSource, "seed")
    )
    source.add_argument(
        "--step-size", type=float, metavar="X", help=_help(SyntheticSource, "step_size")
    )
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    return parser


def spec_from_args(args: argparse.Namespace) -> ReplaySpec:
    """The ReplaySpec the parsed flags describe (UserError on invalid values)."""
    given = vars(args)
    if "prompts" in given and "prompts_file" in given:
        raise UserError("give prompts with --prompt TEXT or --prompts FILE.jsonl, not both")
    extra: dict[str, Any] = {}
    synthetic = {
        key: given[flag]
        for flag, key in (("source_seed", "seed"), ("step_size", "step_size"))
        if flag in given
    }
    if "checkpoints" in given:
        if synthetic:
            raise UserError(
                "--seed and --step-size shape the synthetic source; "
                "they do not go with --checkpoints"
            )
        extra["source"] = {"kind": "checkpoints", "dirs": given["checkpoints"]}
        extra["num_updates"] = None  # one update per directory unless --updates says
    elif synthetic:
        extra["source"] = {"kind": "synthetic", **synthetic}
    return spec_cli.spec_from_args(ReplaySpec, args, output_flags=_OWN_FLAGS, extra=extra)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = spec_from_args(args)
        with spec_cli.report_only_on_stdout():
            result = run_replay(spec, PrintReporter())
    except UserError as exc:
        return spec_cli.fail(exc)
    if getattr(args, "json", False):
        print(json.dumps(json_safe(result.to_dict()), indent=2))
    else:
        print(text_report(result))
    return 0
