"""Prompt sets: JSONL parsing with line-numbered errors, the built-in set, chat rendering."""

from __future__ import annotations

import json
from typing import Any

import pytest

from workers import prompts
from workers.reporting import UserError

pytestmark = pytest.mark.unit


def jsonl(*objs: Any) -> str:
    return "\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs)


def test_plain_and_chat_items_parse() -> None:
    text = jsonl(
        {"prompt": "Hello"},
        "",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            "id": 7,
        },
    )
    assert prompts.parse_jsonl(text) == [
        {"prompt": "Hello"},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ]
        },
    ]


def test_extra_keys_are_ignored() -> None:
    assert prompts.parse_jsonl(jsonl({"prompt": "x", "answer": "y"})) == [{"prompt": "x"}]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([{"prompt": "ok"}, "{not json"], "line 2: not valid JSON"),
        (
            [{"prompt": "ok"}, {"prompt": "ok"}, {"promt": "typo"}],
            'line 3: expected an object with "prompt"',
        ),
        ([["a", "list"]], "line 1: expected an object"),
        ([{"prompt": ""}], 'line 1: "prompt" must be a non-empty string'),
        ([{"prompt": 3}], 'line 1: "prompt" must be a non-empty string'),
        ([{"prompt": "a", "messages": []}], "line 1: expected an object"),
        ([{"messages": []}], 'line 1: "messages" must be a non-empty list'),
        ([{"messages": [{"role": "user"}]}], 'line 1: message 1 must be an object with "role"'),
        ([{"messages": [{"role": "robot", "content": "x"}]}], "line 1: message 1 has role 'robot'"),
        ([{"messages": [{"role": "user", "content": 5}]}], 'line 1: message 1 "content"'),
    ],
)
def test_invalid_lines_are_named(lines: list[Any], expected: str) -> None:
    with pytest.raises(UserError) as err:
        prompts.parse_jsonl(jsonl(*lines))
    assert str(err.value).startswith(expected), str(err.value)


def test_line_numbers_count_blank_lines() -> None:
    with pytest.raises(UserError, match=r"^line 3: "):
        prompts.parse_jsonl(jsonl({"prompt": "a"}, "", {"nope": 1}))


def test_an_empty_file_is_an_error() -> None:
    with pytest.raises(UserError, match="no prompts"):
        prompts.parse_jsonl("\n  \n")


def test_builtin_set_is_varied_and_shares_long_prefixes() -> None:
    items = prompts.builtin()
    assert 30 <= len(items) <= 60
    chats = [i for i in items if "messages" in i]
    plain = [i["prompt"] for i in items if "prompt" in i]
    assert chats and plain
    shared = [p for p in plain if len(p) > 200]
    prefixes = {p[:200] for p in shared}
    assert len(shared) >= 6 and len(prefixes) < len(shared)  # long prompts share prefixes
    systems = [c["messages"][0]["content"] for c in chats if c["messages"][0]["role"] == "system"]
    assert len(systems) >= 4 and len(set(systems)) == 1


def test_load_limits_and_prefers_inline_prompts() -> None:
    assert len(prompts.load(prompts.BUILTIN, None, 5)) == 5
    assert prompts.load("mine", [{"prompt": "a", "x": 1}], None) == [{"prompt": "a"}]
    with pytest.raises(UserError, match="unknown prompt set 'mine'"):
        prompts.load("mine", None)


class FakeTokenizer:
    chat_template = "{{ messages }}"

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}

    def apply_chat_template(self, messages: list[dict[str, str]], **kw: Any) -> list[int]:
        assert kw["add_generation_prompt"] and kw["tokenize"]
        return [1] + [ord(m["content"][0]) for m in messages] + [2]


def test_render_plain_and_chat() -> None:
    items = [{"prompt": "ab"}, {"messages": [{"role": "user", "content": "hi"}]}]
    assert prompts.render(items, FakeTokenizer()) == [[1, 97, 98], [1, ord("h"), 2]]


def test_render_without_a_chat_template_writes_chats_as_plain_text() -> None:
    tok = FakeTokenizer()
    tok.chat_template = None  # type: ignore[assignment]
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ]
    }
    rendered = prompts.render_set([{"prompt": "ab"}, chat, chat], tok)
    text = "system: Be brief.\nuser: hi\nassistant:"
    assert rendered.ids == [[1, 97, 98], tok(text)["input_ids"], tok(text)["input_ids"]]
    assert rendered.plain_chats == [1, 2]
    (note,) = rendered.notes()
    assert note.startswith("the model's tokenizer has no chat template: 2 chat prompts")
    assert "(prompts 2 and 3)" in note and "plain text" in note
    # The list form is the same ids.
    assert prompts.render([chat], tok) == [tok(text)["input_ids"]]


def test_render_with_a_chat_template_has_no_notes() -> None:
    items = [{"messages": [{"role": "user", "content": "hi"}]}]
    rendered = prompts.render_set(items, FakeTokenizer())
    assert rendered.plain_chats == [] and rendered.notes() == []


def test_prompts_too_long_for_the_engine() -> None:
    ids = [[1] * 5, [1] * 8, [1] * 7, [1] * 20]
    # vLLM refuses a prompt of max_model_len tokens or more: no room to sample.
    assert prompts.too_long(ids, 8) == [1, 3]
    assert prompts.too_long(ids, 21) == []
    note = prompts.skipped_note(ids, [1, 3], 8)
    assert note.startswith("skipped 2 of 4 prompts (prompts 2 and 4): ")
    assert "max_model_len=8" in note


def test_prompt_lists_in_notes_are_bounded() -> None:
    assert prompts.which(list(range(3))) == "prompts 1, 2 and 3"
    assert prompts.which([4]) == "prompt 5"
    assert prompts.which(list(range(25))) == "prompts 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 15 more"
