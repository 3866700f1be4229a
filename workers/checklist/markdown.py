"""The checklist as Markdown, to paste into a pull request: the rows with status and measured
before/after numbers, then the settings to use in code blocks.

The page's shape lives in templates/ (`string.Template`): `report.md` the page,
`recommendation.md` one row's settings, `code.md` one code block. Here only the pieces that
repeat or depend on the result are written.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from workers.checklist.measured import num

STATUS_MD = {
    "pass": "✅ pass",
    "needs-fix": "⚠️ needs fix",
    "not-applicable": "➖ n/a",
    "could-not-run": "❌ could not run",
    # Not a failure: the fix is a start option of the user's server (the reason names it).
    "needs-restart": "🔁 needs server restart",
}
# Escaped pipes: these names live in a Markdown table.
_CELL_NAMES = {"abs_diff_mean": "mean \\|d\\|", "kl_k3": "kl_k3", "abs_diff_max": "max \\|d\\|"}
_CODE_BLOCKS = (
    ("vllm_llm", "vLLM (offline `LLM`)", "python"),
    ("vllm_serve", "vLLM server", "bash"),
    ("sglang_serve", "SGLang server", "bash"),
    ("trainer", "Trainer", "python"),
)


@cache
def _template(name: str) -> Template:
    text = resources.files(__package__).joinpath("templates", name).read_text("utf-8")
    return Template(text)


def md_cell(cell: Mapping[str, Any] | None) -> str:
    """A before/after cell's numbers for a table cell ("—" when not measured)."""
    if not cell:
        return "—"
    parts = [f"{name} {num(cell.get(k))}" for k, name in _CELL_NAMES.items() if k in cell]
    if cell.get("truncation_boundary"):
        # Sampled tokens outside the trainer's own top-p/top-k/min-p support (lt = -inf):
        # METRICS.md counts them apart and judges their share by its own rule.
        parts.append(f"outside the trainer's nucleus {cell['truncation_boundary']}")
    if cell.get("nonfinite_trainer"):
        parts.append(f"non-finite lt {cell['nonfinite_trainer']} (a trainer fault)")
    return "<br>".join(parts) or "not measured"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _recommendation(row: Mapping[str, Any]) -> str:
    rec = row.get("recommendation") or {}
    blocks = [
        _template("code.md").substitute(title=title, lang=lang, code=rec[key])
        for key, title, lang in _CODE_BLOCKS
        if rec.get(key)
    ]
    return _template("recommendation.md").substitute(title=row["title"], blocks="\n".join(blocks))


def _status(row: Mapping[str, Any]) -> str:
    # A check passes when its fix makes no difference here: "pass" beside a failing gap
    # would read as a contradiction (the all-fixes row's pass is the verdict itself).
    if row["status"] == "pass" and row["check"] != "all_fixes":
        return "✅ no fix needed"
    return STATUS_MD.get(row["status"], row["status"])


def answered_by(result: Mapping[str, Any]) -> str:
    """Which engine answered, in words: "vLLM server 0.32.0 at http://..." (results stored
    before servers: the in-process vLLM of `vllm_version`)."""
    engine = result.get("engine") or {}
    if not engine:
        return f"vLLM {result.get('vllm_version')}"
    words = f"{engine.get('label')} {engine.get('version')}"
    if engine.get("url"):
        words += f" at {engine['url']}"
    return words


def render_markdown(result: Mapping[str, Any]) -> str:
    """A Markdown report of a checklist result (a `ChecklistReport`, or an older or partial
    one): the rows with status and measured before/after numbers, then each row's
    recommendation in code blocks. Numbers that were not measured are shown as "—", never
    filled in."""
    req = result.get("sampling_requested") or {}
    meta = [f"model `{result.get('model')}`", answered_by(result)]
    if req:
        shown = ("temperature", "top_p", "top_k", "min_p")
        meta.append("sampling " + ", ".join(f"{k}={req[k]}" for k in shown if k in req))
    rows = result.get("rows", [])
    table = [
        f"| {row['title']} | {_status(row)} | "
        f"{md_cell(row.get('before'))} | {md_cell(row.get('after'))} | "
        f"{_escape(row.get('reason', ''))} |"
        for row in rows
    ]
    others = [
        f"- {row['title']}, {c.get('label')}: " + md_cell(c).replace("<br>", ", ")
        for row in rows
        for c in row.get("others", [])
    ]
    recommendations = [
        _recommendation(row)
        for row in rows
        if (row["status"] in ("needs-fix", "needs-restart") or row["check"] == "all_fixes")
        and row.get("recommendation")
    ]
    footer = ""
    if result.get("seconds") is not None:
        footer = f"_{result.get('engine_builds')} engine builds, {num(result.get('seconds'))} s._"
    text = _template("report.md").substitute(
        verdict=result.get("verdict", "?"),
        before="as configured" if (result.get("engine") or {}).get("url") else "V1 default",
        meta=" · ".join(meta),
        rows="\n".join(table),
        others="\nOther measured variants:\n\n" + "\n".join(others) + "\n" if others else "",
        notes="".join(f"\n> Note: {_escape(n)}\n" for n in result.get("notes", [])),
        recommendations="".join(recommendations),
        footer=footer,
    )
    return text.rstrip() + "\n"
