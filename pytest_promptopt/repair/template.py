"""A repaired prompt as a template: the user's template with demonstrations rendered in.

Repair changes two things (repair/program.py): the template text (instruction optimisers rewrite
it) and a list of demonstrations (input vars and the answer to show). `compose` turns both back
into one template with the same `{{vars}}`, which the plugin renders like any other prompt. The
task model sees exactly this rendering while DSPy optimises, so the proposal is what was scored.

Demonstrations become chat turns (user: the template rendered with the demo's vars; assistant:
the answer). Small models copy an answer format from turns, not from examples pasted into one
message; so a text prompt with demonstrations is proposed as a chat prompt (a JSON list of
messages, which suites read as promptfoo does).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..prompt import Rendering

__all__ = [
    "Demo",
    "asked_index",
    "compose",
    "escape_literal",
    "has_template_code",
    "is_chat",
    "prompt_diff",
    "render_composed",
]

_OPENERS = re.compile(r"\{[{%#]")


@dataclass(frozen=True)
class Demo:
    """One demonstration: a case's vars and the answer shown for them."""

    vars: Mapping[str, Any]
    output: str
    source: str = ""  # the case it came from (its name), for the report

    def to_dict(self) -> dict[str, Any]:
        return {"vars": dict(self.vars), "output": self.output, "source": self.source}


def escape_literal(text: str) -> str:
    """`text` as a template that renders to itself: every `{{`, `{%` and `{#` becomes an
    expression printing it, so a demonstration's text is never read as template code."""
    return _OPENERS.sub(lambda m: "{{ '" + m.group() + "' }}", text)


def _messages(template: str) -> list[dict[str, Any]] | None:
    stripped = template.strip()
    if not stripped.startswith("["):
        return None
    try:
        data = json.loads(stripped)
    except ValueError:
        return None
    if isinstance(data, list) and data and all(isinstance(m, dict) and "role" in m and "content" in m for m in data):
        return data
    return None


def has_template_code(text: str) -> bool:
    """Whether `text` would read as template code (`{{`, `{%`, `{#`) if pasted into a template."""
    return bool(_OPENERS.search(text))


def asked_index(messages: Sequence[Mapping[str, Any]]) -> int:
    """The message a demonstration is rendered from: the last user message (else the last one)."""
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    return users[-1] if users else len(messages) - 1


def is_chat(template: str) -> bool:
    return _messages(template) is not None


def compose(template: str, demos: Sequence[Demo], rendering: Rendering = Rendering()) -> str:
    """The template with `demos` as chat turns before its last user message; unchanged without demos.

    A demo's user turn is the template's (last user message's) rendering with the demo's vars, in
    the template's manners (`rendering`: a suite's, or a Python test's); both turns are escaped,
    so the result renders them literally and keeps the template's own `{{vars}}` for the case at hand.
    """
    if not demos:
        return template
    messages = _messages(template) or [{"role": "user", "content": template}]
    last = asked_index(messages)
    asked = str(messages[last]["content"])
    turns: list[dict[str, Any]] = []
    for demo in demos:
        turns.append({"role": "user", "content": escape_literal(rendering.text(asked, demo.vars))})
        turns.append({"role": "assistant", "content": escape_literal(demo.output)})
    return json.dumps(messages[:last] + turns + messages[last:], indent=2, ensure_ascii=False)


def render_composed(template: str, demos: Sequence[Demo], variables: Mapping[str, Any], rendering: Rendering) -> str:
    """What the task model is sent for `variables`: `compose` rendered as the run renders the prompt."""
    return rendering.prompt(compose(template, demos, rendering), variables)


def prompt_diff(before: str, after: str, before_name: str, after_name: str) -> str:
    """A unified diff of two templates, for review."""
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), before_name, after_name
    )
    text = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
    return text
