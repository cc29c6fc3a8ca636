"""A test made ready to become cases: merged with `defaultTest` as promptfoo merges them, its vars
loaded (files) and expanded (list vars), its assertions built with their judge.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

from ..assertions.base import Assertion, is_model_graded
from ..sandbox.scripts import is_code_reference
from .document import Context, load_yaml
from .sources import load_structured


def merge_test(
    default: Mapping[str, Any], test: Mapping[str, Any], path: tuple[Any, ...], ctx: Context
) -> dict[str, Any]:
    """promptfoo's defaultTest merge: vars/options/metadata shallow-merged (test wins), default
    asserts first unless the test sets options.disableDefaultAsserts, threshold/provider: test's if set."""
    options = {**default.get("options", {}), **test.get("options", {})}
    asserts = [] if options.get("disableDefaultAsserts") else list(default.get("assert", []))
    return {
        "description": test.get("description", ""),
        "vars": {
            **vars_mapping(default.get("vars"), ("defaultTest",), ctx),
            **vars_mapping(test.get("vars"), path, ctx),
        },
        "assert": asserts + list(test.get("assert", [])),
        "threshold": test.get("threshold", default.get("threshold")),
        "provider": test.get("provider", default.get("provider")),
        "options": options,
    }


def vars_mapping(raw: Any, path: tuple[Any, ...], ctx: Context) -> dict[str, Any]:
    """A test's `vars`: a mapping, or a file:// path to a YAML/JSON mapping."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        loaded = load_structured(raw, path + ("vars",), ctx)
        if not isinstance(loaded, dict):
            raise ctx.error(path + ("vars",), f"{raw} must hold a mapping of variables")
        return loaded
    return dict(raw)


def load_vars(raw: Mapping[str, Any], path: tuple[Any, ...], ctx: Context) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if isinstance(value, str) and value.startswith("file://") and not is_code_reference(value):
            # file://x.py and file://x.js are var loaders, run per case and prompt (suite/cases.py)
            value = _var_from_file(value, path + ("vars", name), ctx)
        if isinstance(value, str) and value.endswith("\n"):
            value = value[:-1]  # promptfoo drops one trailing newline from string vars
        values[str(name)] = value
    return values


def _var_from_file(reference: str, path: tuple[Any, ...], ctx: Context) -> str:
    file = ctx.base_dir / reference[len("file://") :]
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ctx.error(path, f"cannot read var file {file}: {exc.strerror}") from None
    if file.suffix in (".yaml", ".yml"):
        return json.dumps(load_yaml(text))
    return text.strip()


def var_combinations(variables: dict[str, Any]) -> list[dict[str, Any]]:
    """promptfoo runs a test once per combination of its list-of-strings vars."""
    listed = {k: v for k, v in variables.items() if isinstance(v, list) and v and all(isinstance(x, str) for x in v)}
    if not listed:
        return [variables]
    keys = list(listed)
    return [{**variables, **dict(zip(keys, combo))} for combo in itertools.product(*(listed[k] for k in keys))]


def build_assertion(raw: Mapping[str, Any], where: str, grader: Any = None, place: str = "") -> Assertion:
    """`grader`: the test's `options.provider` (promptfoo), the judge of its model-graded
    assertions that name no `provider` of their own."""
    kind = str(raw["type"])
    inverse = kind.startswith("not-")
    base = kind[4:] if inverse else kind
    provider = raw.get("provider")
    if provider is None and grader is not None and is_model_graded(base):
        provider = grader
    return Assertion(
        type=base,
        value=raw.get("value"),
        threshold=raw.get("threshold"),
        weight=float(raw.get("weight", 1.0)),
        metric=raw.get("metric"),
        inverse=inverse,
        config=raw.get("config"),
        where=where,
        provider=provider,
        transform=raw.get("transform"),
        context_transform=raw.get("contextTransform"),
        place=place,
    )
