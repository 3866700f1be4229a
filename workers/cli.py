"""Command lines generated from the job specs: one flag per spec field, so a CLI never restates
a default, a choice or a description that the spec already holds.

    parser = spec_parser(ComparisonSpec, prog="python -m workers.compare", description=...)
    spec = spec_from_args(ComparisonSpec, parser.parse_args(argv))

Scalar fields become `--field-name`; fields of a nested settings model (engine, trainer,
sampling, ...) become `--section-field-name`, and the sampling ones also have their short form
(`--temperature`). Fields no flag can spell (lists, mappings, unions of models) are left to the
caller, which adds its own flags and fills them in through `extra`. The shared flags every
prompt-based kind has (`--prompts FILE.jsonl`, `--threshold KEY=VALUE`) are here too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from workers import prompts as prompt_sets
from workers.reporting import UserError
from workers.specs import parse_spec

S = TypeVar("S", bound=BaseModel)

# Sections whose fields also get a flag without the section prefix (`--temperature`).
SHORT_SECTIONS = ("sampling",)
# `--dtype`: the engine's and the trainer's dtype at once (each section's own flag wins).
_BOTH_DTYPES = "dtype_of_engine_and_trainer"


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _flag_type(annotation: Any) -> tuple[Callable[[str], Any], list[str] | None] | None:
    """(converter, choices) for a field a flag can spell; None for one it cannot."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    nullable = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    if nullable and len(args) != 1:
        return None
    base = args[0] if nullable else annotation
    if typing.get_origin(base) is typing.Literal:
        return str, [str(a) for a in typing.get_args(base)]
    if base not in (int, float, str):
        return None

    def parse(text: str) -> Any:
        if nullable and text.lower() in ("none", "default", ""):
            return None
        return base(text)

    parse.__name__ = base.__name__  # argparse names the type in its error messages
    return parse, None


def _default(info: Any) -> Any:
    return info.get_default(call_default_factory=True)


def _add_field(group: Any, flags: list[str], dest: str, info: Any, default: Any) -> bool:
    help_text = f"{info.description or ''} (default: {default})"
    if info.annotation is bool:
        group.add_argument(*flags, dest=dest, help=help_text, action=argparse.BooleanOptionalAction)
        return True
    kind = _flag_type(info.annotation)
    if kind is None:
        return False
    conv, choices = kind
    group.add_argument(
        *flags,
        dest=dest,
        type=conv,
        choices=choices,
        help=help_text,
        metavar=None if choices else "VALUE",
    )
    return True


def spec_parser(
    model: type[BaseModel], *, prog: str, description: str, skip: tuple[str, ...] = ()
) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of `model` (see the module docstring).

    Flags not given are absent from the namespace (argparse.SUPPRESS), so the spec's own
    defaults apply. `skip` names top-level fields the caller spells itself.
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description, argument_default=argparse.SUPPRESS
    )
    sections: list[tuple[str, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        nested = _nested_model(info.annotation)
        if nested is not None:
            sections.append((name, nested))
            continue
        if name == "prompts":
            parser.add_argument(
                "--prompts",
                dest="prompts_file",
                metavar="FILE.jsonl",
                help='JSONL prompt set: {"prompt": ...} or {"messages": [...]} per line',
            )
        elif name == "thresholds":
            parser.add_argument(
                "--threshold",
                action="append",
                metavar="KEY=VALUE",
                help="verdict threshold override, e.g. warn_abs_diff_mean=0.05",
            )
        else:
            _add_field(parser, [f"--{name.replace('_', '-')}"], name, info, _default(info))
    taken = {a.dest for a in parser._actions}
    nested_of = dict(sections)
    if "engine" in nested_of and "trainer" in nested_of:
        dtypes = typing.get_args(nested_of["engine"].model_fields["dtype"].annotation)
        parser.add_argument(
            "--dtype",
            dest=_BOTH_DTYPES,
            choices=dtypes,
            help="engine and trainer dtype together (--engine-dtype / --trainer-dtype win)",
        )
    for section, nested in sections:
        group = parser.add_argument_group(f"{section} settings", nested.__doc__)
        # The spec's own default of the section (e.g. a replay samples at T=1 by default).
        section_default = _default(model.model_fields[section])
        for name, info in nested.model_fields.items():
            flags = [f"--{section}-{name.replace('_', '-')}"]
            if section in SHORT_SECTIONS and name not in taken:
                flags.insert(0, f"--{name.replace('_', '-')}")
            _add_field(group, flags, f"{section}.{name}", info, getattr(section_default, name))
    return parser


def spec_data(args: argparse.Namespace) -> dict[str, Any]:
    """The spec fields the parsed flags set (nested sections as dicts); prompt files read,
    thresholds parsed. UserError for an unreadable file or a malformed KEY=VALUE."""
    data: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key == _BOTH_DTYPES:
            continue
        if "." in key:
            section, name = key.split(".", 1)
            data.setdefault(section, {})[name] = value
        elif key == "prompts_file":
            path = Path(value)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise UserError(f"cannot read prompt file {path}: {exc.strerror}") from None
            try:
                data["prompts"] = prompt_sets.parse_jsonl(text)
            except UserError as exc:
                raise UserError(f"{path}: {exc}") from None
            data["prompt_set"] = path.name
        elif key == "threshold":
            thresholds = {}
            for item in value:
                name, sep, number = item.partition("=")
                if not sep:
                    raise UserError(f"--threshold {item!r}: expected KEY=VALUE")
                thresholds[name.strip()] = number.strip()
            data["thresholds"] = thresholds
        else:
            data[key] = value
    if _BOTH_DTYPES in args:
        for section in ("engine", "trainer"):
            data.setdefault(section, {}).setdefault("dtype", getattr(args, _BOTH_DTYPES))
    return data


def spec_from_args(
    model: type[S],
    args: argparse.Namespace,
    *,
    output_flags: tuple[str, ...] = (),
    extra: Mapping[str, Any] | None = None,
) -> S:
    """The spec the flags describe: `spec_data` minus the CLI's own `output_flags` (--json,
    ...), merged with `extra` (section dicts are merged, not replaced). A flag changes one
    field of a section and keeps the spec's own default for the others. UserError on
    invalid values, worded as everywhere else (`workers.specs.validation_message`)."""
    data = {k: v for k, v in spec_data(args).items() if k not in output_flags}
    if "prompt_set" not in model.model_fields:  # a kind whose prompts have no set name
        data.pop("prompt_set", None)
    for key, value in data.items():
        section_default = _default(model.model_fields[key]) if key in model.model_fields else None
        if isinstance(value, dict) and isinstance(section_default, BaseModel):
            data[key] = {**section_default.model_dump(exclude_unset=True), **value}
    for key, value in (extra or {}).items():
        if isinstance(value, Mapping) and isinstance(data.get(key), Mapping):
            data[key] = {**value, **data[key]}
        else:
            data.setdefault(key, value)
    return parse_spec(model, data)


@contextlib.contextmanager
def report_only_on_stdout() -> Iterator[None]:
    """Keep stdout for the report alone (so `--json | jq .` parses): vLLM logs to stdout by
    default, through a handler that binds the stream when vllm is first imported, which
    happens inside the run. Everything printed meanwhile goes to stderr."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    with contextlib.redirect_stdout(sys.stderr):
        yield


# The output flags of the CLIs that end in a verdict (compare, determinism); never spec fields.
VERDICT_OUTPUT_FLAGS = ("json", "fail_on")
_SEVERITY = {"pass": 0, "warn": 1, "fail": 2}


def add_verdict_output_flags(parser: argparse.ArgumentParser) -> None:
    """`--json` and `--fail-on` (VERDICT_OUTPUT_FLAGS)."""
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument(
        "--fail-on",
        choices=["never", "fail", "warn"],
        help="exit 1 when the verdict is this bad or worse (default never)",
    )


def verdict_exit_code(args: argparse.Namespace, verdict: str) -> int:
    """1 when `--fail-on` names `verdict`'s level or a milder one (a verdict this CLI does
    not know counts as fail), else 0."""
    fail_on = getattr(args, "fail_on", None) or "never"
    if fail_on != "never" and _SEVERITY.get(verdict, 2) >= _SEVERITY[fail_on]:
        return 1
    return 0


def fail(exc: UserError) -> int:
    """Print a user error the way every Parity CLI does; the exit status for it."""
    print(f"error: {exc}", file=sys.stderr)
    return 2
