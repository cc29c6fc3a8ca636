"""Prompt templates: sandboxed Jinja2 rendering with promptfoo's `{{var}}` syntax.

promptfoo renders with Nunjucks; Jinja2 reads the same `{{ }}`, filters and loops. The
environment is sandboxed. A Python test's `Prompt.render` passes variables as data (a var's value
is never itself parsed as a template) and prints them as Python does; a suite file's prompts are
rendered as promptfoo renders them (`render_suite_prompt`, nunjucks.py), in the same sandbox.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import nunjucks

__all__ = [
    "MissingVariable",
    "Prompt",
    "RenderedPrompt",
    "Rendering",
    "TemplateError",
    "render_prompt",
    "render_suite_prompt",
    "render_template",
    "template_variables",
]


class TemplateError(ValueError):
    """A template does not parse, or renders without a variable it needs."""


class MissingVariable(TemplateError):
    """A template uses a variable the case does not define."""


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    # Nunjucks filters promptfoo users write that Jinja2 lacks or names differently.
    env.filters["dump"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
    env.globals["range"] = nunjucks.budgeted_range
    return env


@functools.lru_cache(maxsize=4096)
def _compile(template: str, promptfoo: bool = False) -> tuple[Any, frozenset[str]]:
    return _compile_in(nunjucks.environment() if promptfoo else _environment(), template, optional_guarded=promptfoo)


def _compile_with(template: str, filters: Mapping[str, Any]) -> tuple[Any, frozenset[str]]:
    """`_compile` (promptfoo's manners) in an overlay of the sandboxed environment that also has
    `filters` (a suite's `nunjucksFilters`); not memoised, since the filters belong to one suite."""
    env = nunjucks.environment().overlay()
    env.filters = {**env.filters, **filters}  # an overlay shares its base's dict: never add to that
    return _compile_in(env, template, optional_guarded=True)


def _compile_in(env: Any, template: str, optional_guarded: bool = False) -> tuple[Any, frozenset[str]]:
    """`template` compiled in `env`, with the variables it needs; a syntax error names its line.
    `optional_guarded` (a suite file's manners): a variable every use of which is guarded, as
    promptfoo users write an optional one, is not needed (`_guarded_only`)."""
    from jinja2 import TemplateSyntaxError, meta

    try:
        ast = env.parse(template)
        compiled = env.from_string(template)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from None
    names = frozenset(meta.find_undeclared_variables(ast))
    return compiled, names - _guarded_only(ast, names) if optional_guarded else names


_DEFAULT_FILTERS = frozenset({"default", "d"})
_DEFINED_TESTS = frozenset({"defined", "undefined"})


def _guarded_only(ast: Any, names: frozenset[str]) -> frozenset[str]:
    """Of `names`, those used only where a missing variable renders as promptfoo renders it (an
    undefined that is false and prints nothing): tested by `{% if x %}` / `x is defined` (also
    inside `and`, `or`, `not`, and an inline `if`), given a `default`, read inside the branch
    of an `if` that tested it, or read after a `{% set x = ... %}` (the x set, not the var). A bare
    `{{ x }}` anywhere else keeps it needed: there promptfoo
    would print nothing where the author expected a value, and the case is an error instead."""
    from jinja2 import nodes

    unguarded: set[str] = set()

    def truthy(test: Any) -> frozenset[str]:  # names `test` being true proves defined
        if isinstance(test, nodes.Name):
            return frozenset({test.name})
        if isinstance(test, nodes.Test) and test.name == "defined" and isinstance(test.node, nodes.Name):
            return frozenset({test.node.name})
        if isinstance(test, nodes.And):
            return truthy(test.left) | truthy(test.right)
        if isinstance(test, nodes.Or):
            return truthy(test.left) & truthy(test.right)
        return frozenset()

    def if_false(test: Any) -> frozenset[str]:  # names `test` being false proves defined
        if isinstance(test, nodes.Not):
            return truthy(test.node)
        if isinstance(test, nodes.Test) and test.name == "undefined" and isinstance(test.node, nodes.Name):
            return frozenset({test.node.name})
        if isinstance(test, nodes.Or):
            return if_false(test.left) | if_false(test.right)
        return frozenset()

    def condition(test: Any, known: frozenset[str]) -> None:  # a bare name there is a truth test
        if isinstance(test, nodes.Name):
            return
        if isinstance(test, nodes.Not):
            condition(test.node, known)
        elif isinstance(test, nodes.And):  # the right side runs only when the left is true
            condition(test.left, known)
            condition(test.right, known | truthy(test.left))
        elif isinstance(test, nodes.Or):  # ... only when the left is false
            condition(test.left, known)
            condition(test.right, known | if_false(test.left))
        else:
            walk(test, known)

    def rooted(node: Any) -> Any:  # `x`, `x.y`, `x['y']`: the name it starts from, else None
        while isinstance(node, (nodes.Getattr, nodes.Getitem)):
            node = node.node
        return node if isinstance(node, nodes.Name) else None

    def walk(node: Any, known: frozenset[str]) -> None:
        if isinstance(node, nodes.Name):
            if node.ctx == "load" and node.name in names and node.name not in known:
                unguarded.add(node.name)
            return
        if isinstance(node, (nodes.Filter, nodes.Test)) and rooted(node.node) is not None:
            if node.name in (_DEFAULT_FILTERS if isinstance(node, nodes.Filter) else _DEFINED_TESTS):
                # An undefined's attributes are undefined (JsUndefined chains, as Nunjucks does).
                inner = node.node
                while isinstance(inner, nodes.Getitem):
                    walk(inner.arg, known)
                    inner = inner.node
                for child in node.iter_child_nodes(exclude=("node",)):
                    walk(child, known)
                return
        if isinstance(node, (nodes.If, nodes.CondExpr)):
            condition(node.test, known)
            proven = known | truthy(node.test)
            refuted = known | if_false(node.test)
            if isinstance(node, nodes.If):
                in_order(node.body, proven)
                for branch in node.elif_:  # each an If of its own, tested after this one failed
                    walk(branch, refuted)
                in_order(node.else_, refuted)
            else:
                walk(node.expr1, proven)
                if node.expr2 is not None:
                    walk(node.expr2, refuted)
            return
        in_order(node.iter_child_nodes(), known)

    def in_order(children: Any, known: frozenset[str]) -> None:
        # `{% set x = ... %}` defines x for what follows it (`{% set x = x | default(..) %}`
        # then `{{ x }}`: the later x is the one set, never missing).
        for child in children:
            walk(child, known)
            if isinstance(child, (nodes.Assign, nodes.AssignBlock)):
                targets = [child.target, *child.target.find_all(nodes.Name)]  # `x`, or `a, b`
                known = known | {n.name for n in targets if isinstance(n, nodes.Name)}

    walk(ast, frozenset())
    return names - frozenset(unguarded)


def template_variables(
    template: str, promptfoo: bool = False, filters: Mapping[str, Any] | None = None
) -> frozenset[str]:
    """The variables a template needs (free names only, not loop variables; in a suite file's
    manners, `promptfoo`, not one every use of which is guarded: `_guarded_only`); `filters`
    are extra filters a suite's template may use (its `nunjucksFilters`)."""
    return (_compile_with(template, filters) if filters else _compile(template, promptfoo))[1]


def render_template(
    template: str, variables: Mapping[str, Any], *, promptfoo: bool = False, filters: Mapping[str, Any] | None = None
) -> str:
    """Render `template` with `variables`; a missing variable raises `TemplateError` naming it.
    `promptfoo`: the manners of a suite file's templates (nunjucks.py), else Python's; `filters`
    (a suite's `nunjucksFilters`) imply them."""
    from jinja2 import TemplateError as JinjaError
    from jinja2.exceptions import SecurityError

    promptfoo = promptfoo or bool(filters)
    compiled, needed = _compile_with(template, filters) if filters else _compile(template, promptfoo)
    missing = sorted(needed - set(variables) - (_GLOBALS if promptfoo else set()))
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise MissingVariable(f"missing variable {names} (the template uses {{{{ {missing[0]} }}}})")
    try:
        return nunjucks.render(compiled, variables)
    except SecurityError as exc:
        raise TemplateError(f"template tried an unsafe operation: {exc}") from None
    except JinjaError as exc:
        raise TemplateError(f"template failed to render: {exc}") from None
    except OverflowError as exc:
        raise TemplateError(f"template too large to render: {exc}") from None
    except RecursionError:
        raise TemplateError("template failed to render: it recurses too deeply") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        raise TemplateError(f"template failed to render: {type(exc).__name__}: {exc}") from None


_GLOBALS = {"env", "range", "cycler", "joiner", "namespace", "dict", "lipsum"}


def render_prompt(template: str, variables: Mapping[str, Any]) -> str:
    """Render a prompt for a Python test (`Prompt.render`): a JSON prompt (chat messages) has each
    of its strings rendered and is re-serialised with 2-space indents; any other text is rendered
    as a template. Var values are data, never templates."""
    structure = _json_structure(template)
    if structure is None:
        return render_template(template, variables)
    return json.dumps(_render_strings(structure, variables), indent=2, ensure_ascii=False)


def render_suite_prompt(
    template: str,
    variables: Mapping[str, Any],
    env: Mapping[str, Any] | None = None,
    filters: Mapping[str, Any] | None = None,
) -> str:
    """Render a suite file's prompt as promptfoo's `renderPrompt` does (see nunjucks.py): var
    references resolved, a JSON prompt's strings rendered and the JSON re-indented, otherwise
    string vars rendered as templates themselves (in the same sandbox) before the prompt.
    `env`: the suite's `env:` (the `env` global of its templates); `filters`: its `nunjucksFilters`."""
    values = nunjucks.resolve_variables(dict(variables))
    scope = {"env": dict(env or {}), **values}
    try:
        parsed = nunjucks.json_parse(template)
    except ValueError:
        parsed = _NOT_JSON
    if parsed is not _NOT_JSON:
        try:
            # promptfoo renders a JSON prompt's strings with an engine without the suite's
            # `nunjucksFilters` (`renderVarsInObject`): a string using one fails there...
            return nunjucks.js_json(_render_strings(parsed, scope, True), 2)
        except TemplateError:
            pass  # ... and then the text is rendered as a whole, as when any string of it fails
    rendered = {
        key: value
        if not isinstance(value, str)
        or not ("{{" in value or "{%" in value)
        or nunjucks.references_undefined(value, values)
        else render_template(nunjucks.wrap_partial(value), scope, promptfoo=True, filters=filters)
        for key, value in values.items()
    }
    return render_template(
        nunjucks.wrap_partial(template), {"env": scope["env"], **rendered}, promptfoo=True, filters=filters
    )


_NOT_JSON = object()


@dataclass(frozen=True, eq=False)
class Rendering:
    """How a prompt renders: a suite file's way, promptfoo's (`promptfoo`: `render_suite_prompt`
    with the suite's `env:` and `nunjucksFilters`), or a Python test's (`render_prompt`: strict,
    vars as data). Whatever renders a prompt again after its run (repair) renders it this way, so
    a case that ran is never refused for an optional variable it lacks."""

    promptfoo: bool = False
    env: Mapping[str, Any] | None = None
    filters: Mapping[str, Any] | None = None

    def prompt(self, template: str, variables: Mapping[str, Any]) -> str:
        """The whole prompt for `variables` (a chat prompt: its JSON message list, as a string)."""
        if not self.promptfoo:
            return render_prompt(template, variables)
        return render_suite_prompt(template, variables, self.env, self.filters)

    def text(self, template: str, variables: Mapping[str, Any]) -> str:
        """One string of a prompt (a chat message's content, a label) for `variables`, as the
        strings of a chat prompt render."""
        if not self.promptfoo:
            return render_template(template, variables)
        scope = {"env": dict(self.env or {}), **nunjucks.resolve_variables(dict(variables))}
        return render_template(template, scope, promptfoo=True, filters=self.filters)

    def needed(self, template: str) -> frozenset[str]:
        """The variables a render of `template` needs, in these manners (with the suite's filters,
        which a template of it may use)."""
        return Prompt(template).needed_variables(self.promptfoo, self.filters)


def _json_structure(template: str) -> Any:
    stripped = template.strip()
    if not stripped.startswith(("[", "{")):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    return value if isinstance(value, (list, dict)) else None


def _collect_variables(value: Any, names: set[str], promptfoo: bool, filters: Mapping[str, Any] | None = None) -> None:
    if isinstance(value, str):
        names |= template_variables(value, promptfoo, filters)
    elif isinstance(value, list):
        for item in value:
            _collect_variables(item, names, promptfoo, filters)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_variables(item, names, promptfoo, filters)


def _render_strings(
    value: Any, variables: Mapping[str, Any], promptfoo: bool = False, filters: Mapping[str, Any] | None = None
) -> Any:
    if isinstance(value, str):
        return render_template(value, variables, promptfoo=promptfoo, filters=filters)
    if isinstance(value, list):
        return [_render_strings(v, variables, promptfoo, filters) for v in value]
    if isinstance(value, dict):
        return {k: _render_strings(v, variables, promptfoo, filters) for k, v in value.items()}
    return value


class RenderedPrompt(str):
    """A rendered prompt: a plain `str`, plus the MLflow Prompt Registry version it came from
    (`registry_uri`, None for an ordinary prompt), so `prompt_model` can link the version to the
    test's suite run. Anything made from it (`+`, `.strip()`, ...) is a plain `str` again.
    """

    registry_uri: str | None

    def __new__(cls, text: str, registry_uri: str | None = None) -> RenderedPrompt:
        rendered = super().__new__(cls, text)
        rendered.registry_uri = registry_uri
        return rendered


@dataclass(frozen=True)
class Prompt:
    """A prompt template with `{{var}}` placeholders.

    >>> Prompt("What is the capital of {{ country }}?").render(country="France")
    'What is the capital of France?'
    """

    template: str
    label: str = ""
    source: str | None = None
    registry_uri: str | None = None  # `prompts:/name/<version>` when the template came from the MLflow Prompt Registry
    # promptfoo's `prompts[].config`: model parameters a suite's cases of this prompt send
    config: Mapping[str, Any] | None = field(default=None, compare=False)
    # A prompt function (`file:///abs/prompt.py:fn`, `file:///abs/prompt.js`): called for each case
    # with its vars, it returns the template (promptfoo's prompt functions); `template` is then the reference.
    function: str | None = None
    # A suite prompt's label in promptfoo when it differs from `label` (promptfoo labels a file
    # `path: text` and an inline prompt by its whole text): what promptfoo's prompt filters
    # (`providers[].prompts`, `tests[].prompts`) match. None: `label`.
    promptfoo_label: str | None = field(default=None, compare=False)
    # An inline suite prompt's `id` (`{id: greet, raw: "Hi {{q}}"}`): promptfoo's filters match it
    # as well as the label (its `processString` keeps it; a prompt file's entry drops it).
    promptfoo_id: str | None = field(default=None, compare=False)
    # Why the prompt cannot be had (a Prompt Registry that is down or refuses the credentials):
    # each case of it is an error saying so, as a model that is down makes its cases errors.
    unavailable: str | None = field(default=None, compare=False)

    @classmethod
    def from_registry(cls, uri: str, label: str | None = None) -> Prompt:
        """A registered prompt: `prompts:/name/3` or `prompts:/name@alias` (MLflow Prompt Registry).

        Resolved once per pytest session, to a fixed version (an alias becomes its version
        number), through the session's tracking URI (the session publishes its resolutions in
        $PYTEST_PROMPTOPT_REGISTRY); outside pytest through $MLFLOW_TRACKING_URI.
        Raises `TemplateError` when the prompt, version or alias is unknown or MLflow is unreachable.
        """
        from .mlflow.prompts import PromptResolver, RegistryError

        try:
            found = PromptResolver.from_environment().resolve(uri)
        except RegistryError as exc:
            raise TemplateError(f"registered prompt {uri}: {exc}") from None
        return cls(found.template, label=label or uri, source=uri, registry_uri=found.uri)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], label: str | None = None) -> Prompt:
        """Load a template from a text file (its label defaults to the file name)."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise TemplateError(f"cannot read prompt file {file}: {exc.strerror}") from None
        return cls(text, label=label or file.name, source=str(file))

    @property
    def variables(self) -> frozenset[str]:
        return self.needed_variables()

    def needed_variables(self, promptfoo: bool = False, filters: Mapping[str, Any] | None = None) -> frozenset[str]:
        """The variables a render needs: all it reads, except, in a suite file's manners
        (`promptfoo`, implied by `filters`, a suite's `nunjucksFilters` its templates may use),
        one used only where a missing one is allowed (`{% if x %}`, `x is defined`,
        `x | default(...)`)."""
        structure = _json_structure(self.template)
        if structure is None:
            return template_variables(self.template, promptfoo, filters)
        names: set[str] = set()
        _collect_variables(structure, names, promptfoo, filters)
        return frozenset(names)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.template.encode("utf-8")).hexdigest()

    def render(self, variables: Mapping[str, Any] | None = None, /, **kwargs: Any) -> RenderedPrompt:
        """The prompt for these variables (a chat prompt: its JSON message list, as a string)."""
        return RenderedPrompt(render_prompt(self.template, {**(variables or {}), **kwargs}), self.registry_uri)

    def __str__(self) -> str:
        return self.template
