"""The one way a case is built: from a prompt, vars, assertions and a model, wherever they came from.

Suite-file tests (`loader.py`), dataset rows and fuzz blocks (`CaseFactory` in `dataset.py`) all
call `build_case`, so a case renders, checks its assertions and gets its id the same way, and a
problem is a `CaseError` naming where in the suite the fix goes. Python prompt tests are cases
too, identified by their node id (`python_case_id`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..assertions.base import Assertion, AssertionConfigError
from ..assertions.scoring import render_assertion
from ..models.specs import ModelSpec
from ..prompt import MissingVariable, Prompt, TemplateError, render_suite_prompt
from ..sandbox import DEFAULT_SCRIPT_TIMEOUT_S, Sandbox, ScriptFault, sandbox_for
from ..sandbox.scripts import is_code_reference, load_code_var, run_prompt_function
from ..suite_info import SuiteInfo
from .document import format_path
from .model import Case

__all__ = ["CaseError", "Missing", "Place", "Placed", "build_case", "case_id", "failed_case", "python_case_id"]

Place = tuple[str | int, ...]  # a place in the suite document, e.g. ("tests", 2, "assert", 0)
Placed = tuple[Assertion, Place]  # an assertion, unrendered, with its place in the suite


class CaseError(ValueError):
    """A case cannot be built (a template needs a var the case lacks, an assertion value does
    not render, a dataset row lacks a column). `path` is where in the suite the fix goes. A
    suite-file test's error is a `SuiteError` at load; a dataset row's is that row's error."""

    def __init__(self, message: str, path: Place = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def case_id(*parts: Any) -> str:
    """A stable id from what makes a case itself (vars, assertions, threshold, and which prompt
    and provider when a suite has several), so baselines match a case across runs."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:12]


def python_case_id(nodeid: str) -> str:
    """A Python prompt test's case id: its node id (without a repeat's sample id) is what it is."""
    return hashlib.sha1(nodeid.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Missing:
    """Where a missing template variable is fixed, and how (it differs for a test and a row)."""

    path: Place
    hint: str


def build_case(
    suite: SuiteInfo,
    prompt: Prompt,
    prompt_index: int,
    variables: Mapping[str, Any],
    assertions: Sequence[Placed],
    model: ModelSpec,
    *,
    name: str,
    test_index: int,
    position: int,
    missing: Missing,
    threshold: float | None = None,
    description: str = "",
    base_dir: Path = Path("."),
    several_prompts: bool = False,
    provider_tag: str | None = None,
    env: Mapping[str, Any] | None = None,
    transform: str | None = None,
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S,
    sandbox: Sandbox | None = None,
    filters: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    code_vars: Mapping[str, Any] | None = None,
) -> Case:
    """Render `prompt` and `assertions` with `variables` into a `Case`, as promptfoo renders
    them (prompt.render_suite_prompt; `env` is the suite's `env:`). A prompt's `config`, the
    config its prompt function returns, then the test's `options` that are model parameters
    (`expansion.model_options`) join the model's parameters, each over the one before, as
    promptfoo merges them. `metadata` is the test's, for code checks; `provider_tag` is the
    provider's part of the case id (`specs.case_id_tags`: None with one provider). Raises
    `CaseError`.

    User code runs here, as promptfoo runs it when it renders a prompt: `file://x.py|js` vars
    (loaders, in order, each seeing the vars loaded before it), then a prompt function, whose
    result is the template; `filters` are the suite's Nunjucks filters. That code gets `code_vars`
    when given: the vars before their trailing newline is dropped (`expansion.read_vars`), as
    promptfoo gives them to it."""
    if prompt.unavailable is not None:
        raise CaseError(prompt.unavailable)
    where = f"prompts[{prompt_index}] ({prompt.label[:60]})"
    identity_vars = variables
    template = prompt.template
    config = dict(prompt.config or {})
    if prompt.function is not None or any(is_code_reference(v) for v in variables.values()):
        variables, template, added = _run_code(
            prompt, variables, code_vars, model, base_dir, script_timeout_s, sandbox, missing.path, prompt_index
        )
        config.update(added)  # promptfoo: `prompt.config = {...prompt.config, ...result.config}`
    config.update(options or {})  # promptfoo's mergeProviderPromptConfig: the test's options win
    try:
        rendered = render_suite_prompt(template, variables, env, filters)
    except MissingVariable as exc:
        raise CaseError(f"{exc} in {where}; {missing.hint}", missing.path) from None
    except TemplateError as exc:
        raise CaseError(f"{exc} in {where}", ("prompts", prompt_index)) from None
    if config:
        model = replace(model, params={**model.params, **config})
    checks = []
    scope = {"env": dict(env or {}), **variables}
    for assertion, path in assertions:
        try:
            checks.append(render_assertion(assertion, scope, promptfoo=True))
        except AssertionConfigError as exc:
            # The assertion names its place (`where`) in its message; the error carries it as a path.
            message = str(exc)
            for prefix in (assertion.where, format_path(path)):
                if prefix and message.startswith(prefix + ": "):
                    message = message[len(prefix) + 2 :]
                    break
            raise CaseError(message, path) from None
    identity = case_id(
        identity_vars,
        [a.to_dict() for a in checks],
        threshold,
        prompt_index if several_prompts else None,
        provider_tag,
    )
    return Case(
        suite=suite,
        case_id=identity,
        name=name,
        prompt=prompt,
        rendered_prompt=rendered,
        prompt_index=prompt_index,
        test_index=test_index,
        vars=variables,
        assertions=tuple(checks),
        model=model,
        threshold=threshold,
        description=description,
        base_dir=base_dir,
        position=position,
        transform=transform,
        script_timeout_s=script_timeout_s,
        metadata=dict(metadata or {}),
    )


def failed_case(
    suite: SuiteInfo,
    prompt: Prompt,
    prompt_index: int,
    variables: Mapping[str, Any],
    model: ModelSpec,
    message: str,
    *,
    name: str,
    test_index: int,
    position: int,
    description: str = "",
    base_dir: Path = Path("."),
    several_prompts: bool = False,
    provider_tag: str | None = None,
    transform: str | None = None,
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S,
) -> Case:
    """A case that cannot run (`message` says why, with the file, line and field): it is
    reported as an error, without a model call, and the suite's other cases run."""
    identity = case_id(
        variables,
        {"error": message},
        prompt_index if several_prompts else None,
        provider_tag,
    )
    return Case(
        suite=suite,
        case_id=identity,
        name=name,
        prompt=prompt,
        rendered_prompt="",
        prompt_index=prompt_index,
        test_index=test_index,
        vars=variables,
        assertions=(),
        model=model,
        description=description,
        base_dir=base_dir,
        position=position,
        error=message,
    )


def _run_code(
    prompt: Prompt,
    variables: Mapping[str, Any],
    code_vars: Mapping[str, Any] | None,
    model: ModelSpec,
    base_dir: Path,
    timeout: float,
    sandbox: Sandbox | None,
    vars_path: Place,
    prompt_index: int,
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The case's vars with their loaders run, its template (a prompt function's result) and the
    config the function returned with it (`{prompt, config}`; joins the model's parameters).

    The code sees `code_vars` (else `variables`) and each loader's output as it is: promptfoo's
    renderPrompt drops one trailing newline only after its loaders and prompt function ran."""
    provider = {"id": model.id, "label": model.label}
    shown = dict(variables if code_vars is None else code_vars)
    loaded = dict(variables)
    template = prompt.template
    added: dict[str, Any] = {}
    with sandbox_for(sandbox) as box:
        for name, value in variables.items():
            if not is_code_reference(value):
                continue
            try:
                text = load_code_var(
                    box, name, value, prompt.template, shown, provider, base_dir, timeout, f"var {name} ({value})"
                )
            except ScriptFault as exc:
                raise CaseError(str(exc), vars_path) from None
            shown[name] = text
            loaded[name] = text[:-1] if text.endswith("\n") else text  # promptfoo drops one trailing newline
        if prompt.function is not None:
            try:
                template, added = run_prompt_function(
                    box, prompt.function, shown, provider, {}, timeout, f"prompt function {prompt.label}"
                )
            except ScriptFault as exc:
                raise CaseError(str(exc), ("prompts", prompt_index)) from None
    return loaded, template, added
