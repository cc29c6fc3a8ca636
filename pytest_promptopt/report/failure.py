"""Plain-text rendering of one case: the failure message pytest shows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ..records import CaseResult

_MAX = 600


def _clip(text: str, limit: int = _MAX) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


def _value(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return _clip(text, 80)


def assertion_lines(outcomes: Iterable[Mapping[str, Any]]) -> list[str]:
    lines = []
    for o in outcomes:
        verdict = "PASS" if o["passed"] else "FAIL"
        extras = []
        if o.get("threshold") is not None:
            extras.append(f"threshold {o['threshold']:g}")
        if o.get("weight", 1.0) != 1.0:
            extras.append(f"weight {o['weight']:g}")
        if o.get("metric"):
            extras.append(f"metric {o['metric']}")
        line = f"  {verdict}  {o['type']} {_value(o.get('value'))}".rstrip()
        line += f"  score {o['score']:.2f}" + (f" ({', '.join(extras)})" if extras else "")
        if not o["passed"]:
            line += f"\n        {o['reason']}"
        lines.append(line)
    return lines


def repeat_lines(result: CaseResult) -> list[str]:
    """A repeated case's samples, one line each; the output and assertions shown below them are
    the first failing sample's."""
    flaky = " (flaky)" if result.flaky else ""
    lines = [f"repeats: {result.samples_passed} of {result.repeats} passed{flaky}"]
    for n, sample in enumerate(result.samples, 1):
        output = " ".join(str(sample.get("output") or "").split())
        lines.append(f"  repeat {n}: {'PASS' if sample.get('passed') else 'FAIL'}  {_clip(output, 80)!r}")
    if result.error and len(result.samples) < result.repeats:
        lines.append(f"  repeat {len(result.samples) + 1}: ERROR (the repeats after it did not run)")
    return lines


def describe_case(result: CaseResult, prompt: str = "") -> str:
    """What a reviewer needs to see: verdict, prompt, output, each assertion's score and reason."""
    if result.error:
        head = f"ERROR {result.name}: {result.error}"
    else:
        head = f"FAILED {result.name}: {result.reason}"
    lines = [head]
    if result.repeats > 1:
        lines.extend(repeat_lines(result))
    if prompt or result.prompt:
        lines.append("prompt:\n  " + _clip(prompt or result.prompt).replace("\n", "\n  "))
    if result.output is not None:
        lines.append("output:\n  " + _clip(result.output).replace("\n", "\n  "))
    if result.assertions:
        lines.append("assertions:")
        lines.extend(assertion_lines(result.assertions))
    if result.score is not None:
        lines.append(f"case score {result.score:.2f}")
    return "\n".join(lines)
