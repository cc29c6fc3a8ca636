"""A test made ready to become cases: merged with `defaultTest` as promptfoo merges them, its vars
loaded (files) and expanded (list vars, `file://` globs), its assertions built with their judge.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..assertions.base import Assertion, is_model_graded
from ..models.specs import ModelSpec
from ..nunjucks import js_json
from ..sandbox.scripts import is_code_reference
from .document import Context, DocumentError, load_yaml
from .files import expand, has_magic, read_text
from .promptfoo_keys import test_option_timeout
from .schema import suite_schema
from .sources import load_structured

__all__ = [
    "build_assertion",
    "drop_newline",
    "load_vars",
    "merge_test",
    "model_options",
    "output_transform",
    "read_vars",
    "places_of_test_provider",
    "var_combinations",
    "vars_mapping",
]

CASES_OPTION = "--promptopt-max-cases (ini promptopt_max_cases)"
_MEDIA = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".svg", ".tif", ".tiff", ".ico", ".avif", ".heic", ".heif",
          ".mp3", ".wav", ".ogg", ".flac", ".m4a", ".mp4", ".webm", ".mov", ".avi", ".mkv", ".pdf")  # fmt: skip


def merge_test(
    default: Mapping[str, Any], test: Mapping[str, Any], path: tuple[Any, ...], ctx: Context
) -> dict[str, Any]:
    """promptfoo's defaultTest merge (`prepareTestCaseForEval`): vars/options/metadata merged
    key by key (the test wins), default asserts first unless options.disableDefaultAsserts,
    threshold/provider: the test's if set."""
    options = {**(default.get("options") or {}), **(test.get("options") or {})}
    asserts = [] if options.get("disableDefaultAsserts") else list(default.get("assert") or [])
    description = test.get("description")
    return {
        "description": "" if description is None else str(description),
        "vars": {
            **vars_mapping(default.get("vars"), ("defaultTest",), ctx),
            **vars_mapping(test.get("vars"), path, ctx),
        },
        "assert": asserts + list(test.get("assert") or []),
        "threshold": test.get("threshold", default.get("threshold")),
        "provider": test.get("provider", default.get("provider")),
        # promptfoo's filters: which prompts and which of the suite's providers run this test
        "prompts": test.get("prompts", default.get("prompts")),
        "providers": test.get("providers", default.get("providers")),
        "options": options,
        "metadata": {**(default.get("metadata") or {}), **(test.get("metadata") or {})},
    }


def model_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a test's merged `options` that are not options this plugin reads (`temperature`,
    `maxTokens`, ...): model parameters of its cases. promptfoo's `mergeProviderPromptConfig` lays
    every option but `repeat` over the prompt's config for the provider's call; the options it reads
    itself (`prefix`, `transform`, ...) mean nothing to a model, so they are not passed here."""
    own = suite_schema()["$defs"]["test"]["properties"]["options"]["properties"]
    params = {str(key): value for key, value in options.items() if key not in own}
    if "timeout" in params:
        params["timeout"] = test_option_timeout(params["timeout"])
    return params


def output_transform(options: Mapping[str, Any]) -> str | None:
    """A test's merged `options.transform` (promptfoo's older name: `postprocess`), run on each of
    its cases' answers before the checks."""
    return options.get("transform") or options.get("postprocess")


def places_of_test_provider(
    spec: ModelSpec, places: Sequence[ModelSpec], path: tuple[Any, ...], ctx: Context
) -> list[ModelSpec]:
    """A test's own `provider` (at `path`) in the places of the suite providers it runs on.
    promptfoo calls it in each place and then runs that place's provider `transform` on its
    answer (transformRunEvalResponse is given the suite provider), never the test provider's own,
    which a warning names. One spec when the places' transforms agree, else one per place."""
    if spec.transform is not None:
        ctx.warn(
            path + ("transform",),
            "promptfoo runs the suite provider's transform on a test provider's output, not the test "
            "provider's own; so does this run: write it as the test's options.transform",
        )
    transforms = [place.transform for place in places]
    if len(set(transforms)) > 1:
        return [dataclasses.replace(spec, transform=transform) for transform in transforms]
    return [dataclasses.replace(spec, transform=transforms[0] if transforms else None)]


def vars_mapping(raw: Any, path: tuple[Any, ...], ctx: Context) -> dict[str, Any]:
    """A test's `vars`: a mapping, or `file://` YAML/JSON paths (a string, a glob or a list of
    them), whose mappings are merged in order (promptfoo's `readTestFiles`)."""
    if raw is None:
        return {}
    if isinstance(raw, (str, list)):
        merged: dict[str, Any] = {}
        for reference in [raw] if isinstance(raw, str) else raw:
            files = expand(reference, ctx, path + ("vars",)) if has_magic(reference) else [reference]
            for file in files:
                loaded = load_structured(str(file), path + ("vars",), ctx)
                if not isinstance(loaded, dict):
                    raise ctx.error(path + ("vars",), f"{file} must hold a mapping of variables")
                merged.update(loaded)
        return merged
    return dict(raw)


def load_vars(raw: Mapping[str, Any], path: tuple[Any, ...], ctx: Context) -> dict[str, Any]:
    """Vars as a case's templates and checks see them: `read_vars`, then `drop_newline`."""
    return drop_newline(read_vars(raw, path, ctx))


def read_vars(raw: Mapping[str, Any], path: tuple[Any, ...], ctx: Context) -> dict[str, Any]:
    """Vars as promptfoo's `renderPrompt` hands them to code (var loaders, prompt functions):
    `file://` values read, strings as written (a `|` block keeps its trailing newline)."""
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if isinstance(value, str) and value.startswith("file://") and not is_code_reference(value):
            value = _var_from_file(value, path + ("vars", name), ctx)
        elif is_code_reference(value):  # a var loader, run per case and prompt (suite/cases.py)
            ctx.check_code(value, path + ("vars", name))
        values[str(name)] = value
    return values


def drop_newline(values: Mapping[str, Any]) -> dict[str, Any]:
    """One trailing newline dropped from each string, as promptfoo's `renderPrompt` does once its
    var loaders and prompt function have run, before the templates render."""
    return {name: v[:-1] if isinstance(v, str) and v.endswith("\n") else v for name, v in values.items()}


def _var_from_file(reference: str, path: tuple[Any, ...], ctx: Context) -> str:
    file = ctx.resolve_file(reference, path, "var file")
    suffix = file.suffix.lower()
    if suffix in _MEDIA:
        raise ctx.error(path, f"{file.name}: images, audio, video and PDF vars are not supported; give text")
    text = read_text(file, ctx, path, "var file")
    if suffix in (".yaml", ".yml"):
        try:
            return js_json(load_yaml(text, ctx.limits))  # promptfoo: the content as compact JSON
        except DocumentError as exc:
            raise ctx.error(path, f"var file {file.name}: {exc}") from None
    return text.strip()  # any other file (.json included): its text, trimmed


def var_combinations(
    variables: dict[str, Any], path: tuple[Any, ...], ctx: Context, budget: int, expand_vars: bool = True
) -> list[dict[str, Any]]:
    """promptfoo's `generateVarCombinations`: one case per combination of the list vars whose
    first item is a string and of the `file://` glob vars (one value per matched file). More
    combinations than `budget` (the cases the suite has left) is an error naming the vars."""
    if not expand_vars:
        return [variables]
    choices: dict[str, list[Any]] = {}
    for key, value in variables.items():
        if isinstance(value, str) and value.startswith("file://") and has_magic(value[7:]):
            files = expand(value, ctx, path + ("vars", key))
            if not files:
                raise ctx.error(path + ("vars", key), f"no file matches {value[7:]} (in {ctx.base_dir})")
            choices[key] = ["file://" + _relative(f, ctx.base_dir) for f in files]
        elif isinstance(value, list) and value and isinstance(value[0], str):
            choices[key] = list(value)
    if not choices:
        return [variables]
    total = math.prod(len(v) for v in choices.values())
    if total > budget:
        listed = ", ".join(f"{k} ({len(v):,} values)" for k, v in choices.items())
        raise ctx.error(
            path + ("vars",),
            f"the list vars {listed} make {total:,} combinations, more than the {budget:,} cases this suite may "
            f"still have; split the test, or raise the limit with {CASES_OPTION}",
        )
    combos: list[dict[str, Any]] = [{}]
    for key, value in variables.items():
        options = choices.get(key, [value])
        combos = [{**combo, key: option} for combo in combos for option in options]
    return combos


def _relative(file: Path, base: Path) -> str:
    try:
        return file.relative_to(base).as_posix()
    except ValueError:
        return str(file)


def grader_for(provider: Any, kind: str) -> Any:
    """promptfoo's grader shapes: `{text: ..., embedding: ...}` picks by what the assertion needs."""
    if isinstance(provider, Mapping) and "id" not in provider and ({"text", "embedding"} & set(provider)):
        wanted = "embedding" if kind in ("similar",) else "text"
        return provider.get(wanted)
    return provider


def build_assertion(raw: Mapping[str, Any], where: str, grader: Any = None, place: str = "") -> Assertion:
    """`grader`: the test's `options.provider` (promptfoo), the judge of its model-graded
    assertions that name no `provider` of their own."""
    kind = str(raw["type"])
    inverse = kind.startswith("not-")
    base = kind[4:] if inverse else kind
    provider = grader_for(raw.get("provider"), base)
    if provider is None and grader is not None and is_model_graded(base):
        provider = grader_for(grader, base)
    weight = raw.get("weight", 1.0)
    return Assertion(
        type=base,
        value=raw.get("value"),
        threshold=raw.get("threshold"),
        weight=float(weight) if isinstance(weight, (int, float)) else 1.0,
        metric=raw.get("metric"),
        inverse=inverse,
        config=raw.get("config"),
        where=where,
        provider=provider,
        transform=raw.get("transform"),
        context_transform=raw.get("contextTransform"),
        place=place,
    )


def file_value(value: str, path: tuple[Any, ...], ctx: Context) -> Any:
    """An assertion's `value: file://...` (promptfoo's `processFileReference`): .txt trimmed,
    .json/.yaml/.yml parsed; other files are refused."""
    file = ctx.resolve_file(value, path + ("value",), "value file")
    text = read_text(file, ctx, path + ("value",), "value file")
    suffix = file.suffix.lower()
    if suffix == ".txt":
        return text.strip()
    if suffix in (".json", ".yaml", ".yml"):
        try:
            return load_yaml(text, ctx.limits)
        except DocumentError as exc:
            raise ctx.error(path + ("value",), f"{file.name}: {exc}") from None
    raise ctx.error(path + ("value",), f"{file.name}: a value file is .txt, .json, .yaml or .yml (promptfoo's rule)")
