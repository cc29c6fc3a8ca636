"""Python checks referenced from the example suites (`type: python, value: file://checks.py:<fn>`).

A check receives the model output and a context dict (`vars`, `prompt`, `config`, `response`) and
returns a bool, a score in [0, 1], or {"pass": bool, "score": float, "reason": str}.
"""

from __future__ import annotations

import json
from typing import Any


def _first_json_object(output: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    start = output.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(output, start)
        except ValueError:
            start = output.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = output.find("{", start + 1)
    return None


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, int) and not isinstance(expected, bool):
        return actual == expected and not isinstance(actual, bool)
    return str(actual).strip().casefold() == str(expected).strip().casefold()


def person_fields_match(output: str, context: dict[str, Any]) -> dict[str, Any]:
    """The extracted fields equal the case's `expected` var (case-insensitive for strings).

    `config.fields` chooses which fields to compare (default: all of `expected`). The score is
    the fraction of fields that match, so a metric over it reads as field-level accuracy.
    """
    expected: dict[str, Any] = context["vars"]["expected"]
    fields = context.get("config", {}).get("fields") or list(expected)
    data = _first_json_object(output)
    if data is None:
        return {"pass": False, "score": 0.0, "reason": "no JSON object in the output"}
    wrong = [
        f"{f}: expected {expected[f]!r}, got {data.get(f)!r}" for f in fields if not _same(expected[f], data.get(f))
    ]
    score = 1 - len(wrong) / len(fields)
    if wrong:
        return {"pass": False, "score": score, "reason": "; ".join(wrong)}
    return {"pass": True, "score": 1.0, "reason": f"all {len(fields)} fields match"}
