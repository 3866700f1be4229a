"""Prompt sets: the built-in one shipped with Parity, user uploads as JSONL, and rendering
them to token ids with the model's tokenizer.

One item is either `{"prompt": "text"}` or `{"messages": [{"role": ..., "content": ...}, ...]}`
(a chat, rendered with the tokenizer's chat template and a generation prompt; as plain text
when the tokenizer has none). Other keys
(ids, answers, sources) are allowed and ignored, so existing datasets load as they are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from workers.reporting import UserError

BUILTIN = "builtin"
BUILTIN_PATH = Path(__file__).with_name("data") / "prompts.jsonl"
ROLES = ("system", "user", "assistant", "tool")
MAX_ITEMS = 100_000
MAX_CHARS = 200_000

_EXPECTED = (
    'expected an object with "prompt" (a string) or "messages" (a list of '
    '{"role", "content"} objects)'
)


class PromptError(ValueError):
    """An invalid prompt item; the message names where it is (line or index) and why."""


def check_item(item: Any, where: str) -> dict[str, Any]:
    """The item reduced to its `prompt` or `messages`, or PromptError naming `where`."""
    if not isinstance(item, dict):
        raise PromptError(f"{where}: {_EXPECTED}, got {type(item).__name__}")
    has_prompt, has_messages = "prompt" in item, "messages" in item
    if has_prompt == has_messages:
        keys = ", ".join(sorted(map(str, item))) or "none"
        both = "both" if has_prompt else "neither"
        raise PromptError(f"{where}: {_EXPECTED}; it has {both} (keys: {keys})")
    if has_prompt:
        prompt = item["prompt"]
        if not isinstance(prompt, str) or not prompt:
            raise PromptError(f'{where}: "prompt" must be a non-empty string')
        if len(prompt) > MAX_CHARS:
            raise PromptError(f'{where}: "prompt" is longer than {MAX_CHARS} characters')
        return {"prompt": prompt}
    messages = item["messages"]
    if not isinstance(messages, list) or not messages:
        raise PromptError(f'{where}: "messages" must be a non-empty list')
    out = []
    for j, msg in enumerate(messages, 1):
        if not isinstance(msg, dict) or not {"role", "content"} <= msg.keys():
            raise PromptError(f'{where}: message {j} must be an object with "role" and "content"')
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise PromptError(
                f"{where}: message {j} has role {role!r}; expected one of {', '.join(ROLES)}"
            )
        if not isinstance(content, str):
            raise PromptError(f'{where}: message {j} "content" must be a string')
        out.append({"role": role, "content": content})
    if sum(len(m["content"]) for m in out) > MAX_CHARS:
        raise PromptError(f"{where}: the messages are longer than {MAX_CHARS} characters")
    return {"messages": out}


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    """Validated items of a JSONL prompt set; UserError with the 1-based line number of the
    first problem ("line 3: ..."). Blank lines are skipped."""
    items: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        try:
            items.append(check_item(obj, f"line {lineno}"))
        except PromptError as exc:
            raise UserError(str(exc)) from None
        if len(items) > MAX_ITEMS:
            raise UserError(f"line {lineno}: more than {MAX_ITEMS} prompts")
    if not items:
        raise UserError("the prompt file has no prompts (one JSON object per line)")
    return items


@cache
def _builtin() -> tuple[dict[str, Any], ...]:
    return tuple(parse_jsonl(BUILTIN_PATH.read_text(encoding="utf-8")))


def builtin() -> list[dict[str, Any]]:
    """The built-in prompt set (plain and chat items, several sharing long prefixes)."""
    return [dict(item) for item in _builtin()]


def load(
    prompt_set: str, inline: Sequence[dict[str, Any]] | None, limit: int | None = None
) -> list[dict[str, Any]]:
    """The items of a comparison: `inline` when given, else the named built-in set; at most
    `limit` of them."""
    if inline is not None:
        items = [check_item(item, f"prompt {i + 1}") for i, item in enumerate(inline)]
    elif prompt_set == BUILTIN:
        items = builtin()
    else:
        raise UserError(
            f"unknown prompt set {prompt_set!r}: pass its prompts inline or use {BUILTIN!r}"
        )
    return items[:limit] if limit else items


@dataclass
class Rendered:
    """A prompt set as token ids, and what rendering it had to work around."""

    ids: list[list[int]]
    # Chat items written as plain text because the tokenizer has no chat template (0-based).
    plain_chats: list[int] = field(default_factory=list)

    def notes(self) -> list[str]:
        """What a report should say about how these prompts were rendered."""
        if not self.plain_chats:
            return []
        n = len(self.plain_chats)
        return [
            f"the model's tokenizer has no chat template: {n} chat "
            f"{'prompt' if n == 1 else 'prompts'} ({which(self.plain_chats)}) "
            f"{'was' if n == 1 else 'were'} rendered as plain text "
            "(one 'role: content' line per message, then 'assistant:')"
        ]


def render_set(items: Sequence[dict[str, Any]], tokenizer: Any) -> Rendered:
    """Token ids of each item: plain prompts with the tokenizer's special tokens (BOS), chats
    through its chat template with the generation prompt appended. A tokenizer with no chat
    template (a base model) gets chats as plain text (`chat_as_text`), as a base model would
    be prompted, and `Rendered.notes()` says so."""
    out = Rendered([])
    template = bool(getattr(tokenizer, "chat_template", None))
    for i, item in enumerate(items):
        if "prompt" in item:
            ids = tokenizer(item["prompt"], add_special_tokens=True)["input_ids"]
        elif template:
            ids = tokenizer.apply_chat_template(
                item["messages"], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        else:
            ids = tokenizer(chat_as_text(item["messages"]), add_special_tokens=True)["input_ids"]
            out.plain_chats.append(i)
        if not ids:
            raise UserError(f"prompt {i + 1} renders to no tokens")
        out.ids.append([int(t) for t in ids])
    return out


def render(items: Sequence[dict[str, Any]], tokenizer: Any) -> list[list[int]]:
    """`render_set(items, tokenizer).ids`: the token ids alone."""
    return render_set(items, tokenizer).ids


def chat_as_text(messages: Sequence[dict[str, str]]) -> str:
    """A chat as a base model reads one: "role: content" lines, then "assistant:"."""
    return "\n".join([*(f"{m['role']}: {m['content']}" for m in messages), "assistant:"])


def too_long(ids: Sequence[Sequence[int]], max_model_len: int) -> list[int]:
    """Indices of the prompts an engine with this context length cannot sample from: vLLM
    refuses a prompt of max_model_len tokens or more (no room for one new token)."""
    return [i for i, p in enumerate(ids) if len(p) >= max_model_len]


def fitting(ids: Sequence[Sequence[int]], max_model_len: int) -> tuple[list[int], list[str]]:
    """(indices of the prompts an engine with this context can sample from, the note on the
    others); UserError when none fits. Every job kind skips prompts this one way."""
    skipped = too_long(ids, max_model_len)
    if not skipped:
        return list(range(len(ids))), []
    if len(skipped) == len(ids):
        shortest = min(len(p) for p in ids)
        raise UserError(
            f"none of the {len(ids)} prompts fits the engine's max_model_len={max_model_len} "
            f"(the shortest has {shortest} tokens); shorten them or raise max_model_len"
        )
    out = set(skipped)
    return [i for i in range(len(ids)) if i not in out], [skipped_note(ids, skipped, max_model_len)]


def skipped_note(ids: Sequence[Sequence[int]], skipped: Sequence[int], max_model_len: int) -> str:
    """What a report says about the prompts `too_long` left out."""
    shortest = min(len(ids[i]) for i in skipped)
    return (
        f"skipped {len(skipped)} of {len(ids)} prompts ({which(skipped)}): "
        f"{shortest} tokens or more, no room to sample within the engine's "
        f"max_model_len={max_model_len}; shorten them or raise max_model_len to measure them"
    )


def which(indices: Sequence[int], most: int = 10) -> str:
    """1-based prompt numbers for a message: "prompt 3", "prompts 1, 2 and 5", at most
    `most` of them ("... and 15 more")."""
    nums = [str(i + 1) for i in indices]
    if len(nums) == 1:
        return f"prompt {nums[0]}"
    if len(nums) > most:
        return f"prompts {', '.join(nums[:most])} and {len(nums) - most} more"
    return f"prompts {', '.join(nums[:-1])} and {nums[-1]}"


def describe(item: dict[str, Any], max_chars: int = 400) -> str:
    """A short human-readable form of an item, for reports."""
    if "prompt" in item:
        text = item["prompt"]
    else:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in item["messages"])
    return text if len(text) <= max_chars else "…" + text[-(max_chars - 1) :]
