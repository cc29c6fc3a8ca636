"""Hypothesis strategies for prompt tests: template variables, and adversarial variants of them.

    from hypothesis import given
    from pytest_promptopt import Prompt, is_json
    from pytest_promptopt.strategies import adversarial, prompt_settings, vars_from_schema

    EXTRACT = Prompt("Reply with JSON {\"name\": ...} for: {{ text }}")

    @prompt_settings(max_examples=10)
    @given(adversarial(vars_from_schema({"type": "object", "properties": {"text": {"type": "string"}}})))
    def test_always_json(prompt_model, prompt_check, vars):
        prompt_check(prompt_model(EXTRACT.render(vars)), is_json())

Where template variables come from:
- `vars_from_examples(examples)`: a suite's own example vars, mixed per var and perturbed
  (`suite_examples(path)` reads them from a suite file);
- `vars_from_schema(schema)` / `from_schema(schema)`: a JSON Schema (the subset in `from_schema`);
- any Hypothesis strategy of a dict, written by hand.
`adversarial(...)` then varies the strings: prompt-injection text, unicode, whitespace, very
long inputs, case changes. A suite file's `fuzz:` block uses the same functions (docs/fuzzing.md).

This module imports Hypothesis; the plugin imports it only for suites with a `fuzz:` block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .adversarial import INJECTIONS, VARIANTS, adversarial
from .mlflow.prompts import PromptResolver
from .models.specs import ModelSpec
from .suite.loader import load_suite
from .var_strategies import (
    SchemaNotSupported,
    from_schema,
    prompt_settings,
    vars_from_examples,
    vars_from_schema,
    vars_key,
)

__all__ = [
    "INJECTIONS",
    "SchemaNotSupported",
    "VARIANTS",
    "adversarial",
    "from_schema",
    "prompt_settings",
    "suite_examples",
    "vars_from_examples",
    "vars_from_schema",
]


def suite_examples(path: str | Path) -> list[dict[str, Any]]:
    """The vars of a suite file's tests (after `defaultTest.vars`, `file://` values and list
    expansion), one dict per distinct set: what `vars_from_examples` takes.

    >>> vars_from_examples(suite_examples("example_suites/qa.promptopt.yaml"))
    """
    file = Path(path)
    loaded = load_suite(file, str(file), ModelSpec("echo"), PromptResolver.from_environment().resolve)
    found: dict[str, dict[str, Any]] = {}
    for case in loaded.cases:
        if case.fuzz is None:
            found.setdefault(vars_key(dict(case.vars)), dict(case.vars))
    return list(found.values())
