"""Load a suite file into validated `Case`s, with errors that name the file, line and path.

The format is a compatible subset of promptfoo's config (see docs/suite-format.md), validated
against the JSON Schema shipped in `pytest_promptopt/schemas/suite.schema.json`.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import glob
import itertools
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..assertions.base import Assertion, assertion_types, is_model_graded
from ..gates import parse_gates
from ..models.specs import ModelSpec, parse_model_spec
from ..prompt import Prompt, TemplateError
from .cases import CaseError, Missing, build_case
from .dataset import FORMATS, CaseFactory, DatasetSlice, DatasetSource, DatasetSpec, columns, read_rows
from .document import DocumentError, LineMap, format_path, load_yaml, read_document
from .model import Case, Repeats, SuiteError, SuiteInfo

__all__ = ["LoadedSuite", "load_suite", "suite_schema"]

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "suite.schema.json"


@functools.lru_cache(maxsize=1)
def suite_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class LoadedSuite:
    info: SuiteInfo
    cases: tuple[Case, ...]
    dataset: DatasetSpec | None = None  # a `dataset:` suite: its rows are read when it runs, `cases` is empty
    repair: Mapping[str, Any] | None = None  # the `repair:` block, checked by the schema (repair/config.py reads it)


class _Context:
    """Where we are in the document, to turn any problem into a `SuiteError`."""

    def __init__(
        self, file: Path, display: str, lines: LineMap, resolve_prompt: Callable[[str], Any] | None = None
    ) -> None:
        self.file = file
        self.display = display
        self.lines = lines
        self.base_dir = file.parent
        self.resolve_prompt = resolve_prompt

    def error(self, path: Sequence[str | int], message: str) -> SuiteError:
        return SuiteError(self.display, message, format_path(path), self.lines.line(path))


def load_suite(
    file: Path,
    display: str,
    default_model: ModelSpec,
    resolve_prompt: Callable[[str], Any] | None = None,
    backend: str | None = None,
    repeats: Repeats = Repeats(),
) -> LoadedSuite:
    """Parse, validate and expand a suite file into cases. Raises `SuiteError`.

    `resolve_prompt` turns a `prompts:/...` reference into a `registry.Resolved` (default: the
    running session's resolver, see `registry.resolver`). `backend` (`local`/`spark`) is the
    run's: a dataset `table` needs `spark`; None (e.g. `validate`) does not check. `repeats` is
    the run's samples per case, which the suite's `repeat:` may override (`Repeats.for_suite`)."""
    try:
        data, lines = read_document(file)
    except DocumentError as exc:
        raise SuiteError(display, str(exc), line=exc.line) from None
    ctx = _Context(file, display, lines, resolve_prompt)
    if not isinstance(data, dict):
        raise ctx.error((), "a suite is a mapping with 'prompts' and 'tests' (see docs/suite-format.md)")
    _validate(data, ctx)
    try:
        gates = parse_gates(data.get("gates"))
    except ValueError as exc:
        raise ctx.error(("gates",), str(exc).split(": ", 1)[-1]) from None
    name = data.get("name") or data.get("description") or file.name
    info = SuiteInfo(id=display, name=str(name), file=display, gates=gates)
    prompts = _prompts(data.get("prompts"), ctx)
    providers = _providers(data.get("providers", data.get("targets")), ctx) or [default_model]
    default_test = _default_test(data.get("defaultTest"), ctx)
    if "dataset" in data:
        if "tests" in data:
            raise ctx.error(
                ("dataset",),
                "a suite takes its cases from 'tests' or from 'dataset', not both; "
                "put the tests in a suite file of their own",
            )
        if "fuzz" in data:
            raise ctx.error(
                ("fuzz",),
                "a fuzz block adds generated cases to a suite's tests, and a dataset suite has none; "
                "put the fuzz block in a suite file of its own",
            )
        if data.get("repeat", 1) != 1:
            # Its rows keep only counts, and an interval over repeated samples needs each case's samples.
            raise ctx.error(
                ("repeat",),
                "a dataset suite samples each row once; repeat cases in a suite with tests, "
                "or add the rows again to the table",
            )
        return LoadedSuite(info, (), _dataset(data["dataset"], info, prompts, providers, default_test, ctx, backend))
    # A fuzz suite without `tests` has only generated cases (not promptfoo's one case without vars).
    tests = _tests(data.get("tests"), ctx) if "tests" in data or "fuzz" not in data else []
    cases = list(_cases(info, prompts, providers, default_test, tests, ctx))
    if "fuzz" in data:
        cases.extend(_fuzz(data["fuzz"], info, prompts, providers, default_test, tests, cases, ctx))
    repeat = repeats.for_suite(data.get("repeat"))
    if repeat != 1:
        cases = [dataclasses.replace(case, repeats=repeat) for case in cases]
    return LoadedSuite(info, tuple(cases), repair=data.get("repair"))


# ----------------------------------------------------------------------------- validation


@functools.cache
def _validator(definition: str | None = None) -> Any:
    """A validator for the whole suite, or for one of its `$defs` (a test read from a CSV row or
    JSONL line): built once, since a tests file may hold thousands of rows."""
    from jsonschema import Draft202012Validator

    schema = suite_schema()
    if definition is not None:
        schema = {k: v for k, v in schema.items() if k not in ("properties", "additionalProperties", "type")}
        schema["$ref"] = f"#/$defs/{definition}"
    return Draft202012Validator(schema)


def _validate(data: dict[str, Any], ctx: _Context) -> None:
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(data))
    if error is None:
        return
    raise _schema_error(error, ctx)


def _schema_error(error: Any, ctx: _Context) -> SuiteError:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unexpected = sorted(set(error.instance) - set(allowed))
        key = unexpected[0]
        hint = difflib.get_close_matches(key, allowed, n=1)
        fix = f"did you mean '{hint[0]}'? " if hint else ""
        if not path:
            fix += "promptfoo features outside the supported subset (scenarios, redteam, extensions, ...) are not run. "
        return ctx.error(path + [key], f"unknown key '{key}'; {fix}allowed here: {', '.join(allowed)}")
    if path and path[-1] == "type" and "assert" in [p for p in path if isinstance(p, str)]:
        from ..assertions.base import suggest_type

        hint = suggest_type(str(error.instance))
        did_you_mean = f"did you mean '{hint}'? " if hint else ""
        return ctx.error(
            path,
            f"unknown assertion type {error.instance!r}; {did_you_mean}supported: {', '.join(assertion_types())} "
            "(each also with a 'not-' prefix)",
        )
    if error.validator in ("oneOf", "anyOf") and error.context:
        # Prefer the alternative whose own complaint is most specific.
        deepest = max(error.context, key=lambda e: len(e.absolute_path))
        if len(deepest.absolute_path) > len(error.absolute_path):
            return _schema_error(deepest, ctx)
    return ctx.error(path, _describe(error))


def _describe(error: Any) -> str:
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return (
            f"expected {expected}, got {type(error.instance).__name__} {json.dumps(error.instance, default=str)[:80]}"
        )
    if error.validator == "required":
        return error.message.replace("is a required property", "is required here")
    if error.validator == "oneOf":
        hints = {
            "prompts": "a prompt string, a file:// path, or a list of them (or {raw|id, label} objects)",
            "providers": "a model id string, a {id, config, label} object, or a list of them",
            "tests": "a list of test objects, or a file:// path to a CSV/JSONL/YAML/JSON file of tests",
            "defaultTest": "a test object (vars, assert, threshold, ...) or a file:// path",
            "vars": "a mapping of variable names to values, or a file:// path",
        }
        key = next((p for p in reversed(list(error.absolute_path)) if isinstance(p, str)), "")
        if key in hints:
            return f"expected {hints[key]}"
    return error.message


# ----------------------------------------------------------------------------- prompts


_FILE_LIKE = re.compile(r"^[^\n]*\.(txt|md|j2|json|ya?ml|prompt)$")


def _prompts(raw: Any, ctx: _Context) -> list[Prompt]:
    if raw is None:
        return [Prompt("{{prompt}}", label="{{prompt}}")]
    entries = raw if isinstance(raw, list) else [raw]
    prompts: list[Prompt] = []
    for index, entry in enumerate(entries):
        path = ("prompts", index) if isinstance(raw, list) else ("prompts",)
        label = None
        if isinstance(entry, dict):
            label = entry.get("label")
            text = entry.get("raw") or entry.get("id")
        else:
            text = entry
        if text.startswith("prompts:/"):
            prompts.append(_registry_prompt(text, label, path, ctx))
        elif text.startswith("file://") or (_FILE_LIKE.match(text) and "{{" not in text and " " not in text):
            prompts.extend(_prompt_files(text, label, path, ctx))
        else:
            prompts.append(Prompt(text, label=label or text[:60]))
    for index, prompt in enumerate(prompts):
        try:
            _ = prompt.variables  # parses the template: a syntax error is reported here
        except TemplateError as exc:
            raise ctx.error(("prompts", index) if isinstance(raw, list) else ("prompts",), f"prompt {exc}") from None
    return prompts


def _registry_prompt(uri: str, label: str | None, path: tuple[Any, ...], ctx: _Context) -> Prompt:
    """A prompt from the MLflow Prompt Registry, resolved once per session to a fixed version."""
    from ..mlflow.prompts import RegistryError, resolver

    try:
        found = (ctx.resolve_prompt or resolver().resolve)(uri)
    except RegistryError as exc:
        raise ctx.error(path, f"registered prompt {uri}: {exc}") from None
    return Prompt(found.template, label=label or uri, source=uri, registry_uri=found.uri)


def _prompt_files(reference: str, label: str | None, path: tuple[Any, ...], ctx: _Context) -> list[Prompt]:
    pattern = reference[len("file://") :] if reference.startswith("file://") else reference
    matches = (
        sorted(glob.glob(str(ctx.base_dir / pattern)))
        if any(c in pattern for c in "*?[")
        else [str(ctx.base_dir / pattern)]
    )
    if not matches or not Path(matches[0]).is_file():
        raise ctx.error(path, f"prompt file not found: {ctx.base_dir / pattern}")
    prompts: list[Prompt] = []
    for match in matches:
        file = Path(match)
        text = file.read_text(encoding="utf-8")
        if file.suffix in (".yaml", ".yml"):
            prompts.append(Prompt(json.dumps(load_yaml(text)), label=label or file.name, source=str(file)))
            continue
        if file.suffix == ".json":
            prompts.append(Prompt(text, label=label or file.name, source=str(file)))
            continue
        # promptfoo splits text prompt files on lines holding only '---'.
        parts = [p.strip() for p in re.split(r"^---$", text, flags=re.M)]
        for n, part in enumerate(p for p in parts if p):
            prompts.append(
                Prompt(part, label=label or (file.name if len(parts) == 1 else f"{file.name}#{n}"), source=str(file))
            )
    return prompts


# ----------------------------------------------------------------------------- providers


def _providers(raw: Any, ctx: _Context) -> list[ModelSpec]:
    if raw is None:
        return []
    entries = raw if isinstance(raw, list) else [raw]
    specs = []
    for index, entry in enumerate(entries):
        path = ("providers", index) if isinstance(raw, list) else ("providers",)
        try:
            specs.append(parse_model_spec(entry, format_path(path)))
        except ValueError as exc:
            raise ctx.error(path, str(exc).split(": ", 1)[-1]) from None
    return specs


# ----------------------------------------------------------------------------- tests


@dataclass
class _Test:
    data: dict[str, Any]
    path: tuple[Any, ...]
    index: int


def _default_test(raw: Any, ctx: _Context) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        loaded = _load_structured(raw, ("defaultTest",), ctx)
        if not isinstance(loaded, dict):
            raise ctx.error(("defaultTest",), f"{raw} must hold a test object")
        _validate_fragment(loaded, "test", ("defaultTest",), ctx)
        return loaded
    return raw


def _tests(raw: Any, ctx: _Context) -> list[_Test]:
    if raw is None:
        return [_Test({}, ("tests",), 0)]  # promptfoo runs each prompt once with no vars
    if isinstance(raw, str):
        raw_entries: list[tuple[Any, tuple[Any, ...]]] = [(raw, ("tests",))]
    else:
        raw_entries = [(entry, ("tests", i)) for i, entry in enumerate(raw)]
    tests: list[_Test] = []
    for entry, path in raw_entries:
        if isinstance(entry, str):
            for data in _tests_from_file(entry, path, ctx):
                tests.append(_Test(data, path, len(tests)))
        else:
            tests.append(_Test(entry, path, len(tests)))
    return tests


def _tests_from_file(reference: str, path: tuple[Any, ...], ctx: _Context) -> list[dict[str, Any]]:
    pattern = reference[len("file://") :]
    files = (
        sorted(glob.glob(str(ctx.base_dir / pattern)))
        if any(c in pattern for c in "*?[")
        else [str(ctx.base_dir / pattern)]
    )
    if not files or not Path(files[0]).is_file():
        raise ctx.error(path, f"tests file not found: {ctx.base_dir / pattern}")
    tests: list[dict[str, Any]] = []
    for name in files:
        file = Path(name)
        where = f"{reference} ({file.name}"
        if file.suffix == ".csv":
            tests.extend(_tests_from_csv(file, path, ctx))
            continue
        if file.suffix == ".jsonl":
            for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise ctx.error(path, f"{where} line {number}): invalid JSON: {exc}") from None
                if not isinstance(row, dict):
                    raise ctx.error(path, f"{where} line {number}): each line must be a JSON object")
                test = row if {"vars", "assert"} & set(row) else {"vars": row}
                _validate_fragment(test, "test", path, ctx, f"{where} line {number})")
                tests.append(test)
            continue
        loaded = _load_structured("file://" + str(file), path, ctx)
        rows = loaded if isinstance(loaded, list) else [loaded]
        for number, test in enumerate(rows):
            _validate_fragment(test, "test", path, ctx, f"{where} item {number})")
            tests.append(test)
    return tests


# promptfoo's assertionFromString: `type: value`, `not-type(threshold): value`, else equals.
_EXPECTED = re.compile(r"^(not-)?([a-z][a-z0-9-]*)(?:\((\d+(?:\.\d+)?)\))?(?::([\s\S]*))?$")


# promptfoo types this plugin does not run (yet): a CSV cell naming one must not silently become `equals`.
_PROMPTFOO_ONLY = {
    "javascript",
    "fn",
    "eval",
    "grade",
    "context-faithfulness",
    "context-recall",
    "context-relevance",
    "classifier",
    "moderation",
    "perplexity",
    "perplexity-score",
    "meteor",
    "webhook",
    "is-sql",
    "contains-sql",
    "is-xml",
    "contains-xml",
    "is-html",
    "contains-html",
    "is-refusal",
    "select-best",
    "is-valid-openai-tools-call",
    "is-valid-openai-function-call",
    "guardrails",
    "finish-reason",
}


def assertion_from_string(text: str) -> dict[str, Any]:
    """promptfoo's CSV shorthand: `type: value`, `not-type(threshold): value`, else `equals`."""
    text = text.strip()
    if text.startswith("python:"):
        return {"type": "python", "value": text[len("python:") :].strip()}
    if text.startswith("file://") and ".py" in text:
        return {"type": "python", "value": text}
    match = _EXPECTED.match(text)
    if match and match.group(2) in assertion_types():
        inverse, kind, threshold, value = match.groups()
        result: dict[str, Any] = {"type": (inverse or "") + kind}
        if kind in {"contains-any", "contains-all", "icontains-any", "icontains-all"}:
            result["value"] = [v.strip() for v in (value or "").split(",") if v.strip()]
        elif kind in {"is-json", "contains-json"}:
            if value:
                result["value"] = value
        elif value is not None:
            result["value"] = value.strip()
        if threshold is not None:
            result["threshold"] = float(threshold)
        elif kind in {"latency", "cost", "levenshtein", "rouge-n"}:
            result["threshold"] = 0.75  # promptfoo's CSV default for thresholded types
        elif kind == "similar":
            result["threshold"] = 0.8  # promptfoo's CSV default for similar (0.75 elsewhere)
        return result
    if match and match.group(2) in _PROMPTFOO_ONLY:
        raise ValueError(f"assertion type '{match.group(2)}' in {text[:60]!r} is not supported here")
    return {"type": "equals", "value": text}


def _tests_from_csv(file: Path, path: tuple[Any, ...], ctx: _Context) -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = []
    with file.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        for number, row in enumerate(reader, 2):
            test: dict[str, Any] = {"vars": {}, "assert": []}
            metric = None
            for column, cell in row.items():
                column = (column or "").strip()
                cell = cell if cell is not None else ""
                if column.startswith("__expected"):
                    if cell.strip():
                        try:
                            test["assert"].append(assertion_from_string(cell))
                        except ValueError as exc:
                            raise ctx.error(path, f"{file.name} row {number}, column {column}: {exc}") from None
                elif column == "__description":
                    test["description"] = cell
                elif column == "__metric":
                    metric = cell.strip() or None
                elif column == "__threshold":
                    if not cell.strip():
                        continue
                    try:
                        if float(cell):
                            test["threshold"] = float(cell)
                    except ValueError:
                        raise ctx.error(
                            path, f"{file.name} row {number}: __threshold {cell!r} is not a number"
                        ) from None
                elif column.startswith("__"):
                    raise ctx.error(
                        path,
                        f"{file.name}: column {column!r} is not supported (use __expected, __description, __metric, __threshold)",
                    )
                else:
                    test["vars"][column] = cell
            if metric:
                for assertion in test["assert"]:
                    assertion["metric"] = metric
            test.setdefault("description", f"Row #{number - 1}")
            _validate_fragment(test, "test", path, ctx, f"{file.name} row {number}")
            tests.append(test)
    return tests


def _load_structured(reference: str, path: tuple[Any, ...], ctx: _Context) -> Any:
    import yaml

    file = Path(reference[len("file://") :])
    file = file if file.is_absolute() else ctx.base_dir / file
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ctx.error(path, f"cannot read {file}: {exc.strerror}") from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise ctx.error(path, f"{file.name} does not parse: {exc}") from None


def _validate_fragment(data: Any, definition: str, path: tuple[Any, ...], ctx: _Context, origin: str = "") -> None:
    from jsonschema.exceptions import best_match

    error = best_match(_validator(definition).iter_errors(data))
    if error is not None:
        inner = _schema_error(error, _Context(ctx.file, ctx.display, LineMap()))
        raise ctx.error(path, f"{origin + ': ' if origin else ''}{inner.path}: {inner.message}")


# ----------------------------------------------------------------------------- expansion


def _merge(default: Mapping[str, Any], test: Mapping[str, Any], path: tuple[Any, ...], ctx: _Context) -> dict[str, Any]:
    """promptfoo's defaultTest merge: vars/options/metadata shallow-merged (test wins), default
    asserts first unless the test sets options.disableDefaultAsserts, threshold/provider: test's if set."""
    options = {**default.get("options", {}), **test.get("options", {})}
    asserts = [] if options.get("disableDefaultAsserts") else list(default.get("assert", []))
    return {
        "description": test.get("description", ""),
        "vars": {
            **_vars_mapping(default.get("vars"), ("defaultTest",), ctx),
            **_vars_mapping(test.get("vars"), path, ctx),
        },
        "assert": asserts + list(test.get("assert", [])),
        "threshold": test.get("threshold", default.get("threshold")),
        "provider": test.get("provider", default.get("provider")),
        "options": options,
    }


def _vars_mapping(raw: Any, path: tuple[Any, ...], ctx: _Context) -> dict[str, Any]:
    """A test's `vars`: a mapping, or a file:// path to a YAML/JSON mapping."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        loaded = _load_structured(raw, path + ("vars",), ctx)
        if not isinstance(loaded, dict):
            raise ctx.error(path + ("vars",), f"{raw} must hold a mapping of variables")
        return loaded
    return dict(raw)


def _load_vars(raw: Mapping[str, Any], path: tuple[Any, ...], ctx: _Context) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if isinstance(value, str) and value.startswith("file://"):
            value = _var_from_file(value, path + ("vars", name), ctx)
        if isinstance(value, str) and value.endswith("\n"):
            value = value[:-1]  # promptfoo drops one trailing newline from string vars
        values[str(name)] = value
    return values


def _var_from_file(reference: str, path: tuple[Any, ...], ctx: _Context) -> str:
    file = ctx.base_dir / reference[len("file://") :]
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ctx.error(path, f"cannot read var file {file}: {exc.strerror}") from None
    if file.suffix in (".yaml", ".yml"):
        return json.dumps(load_yaml(text))
    return text.strip()


def _var_combinations(variables: dict[str, Any]) -> list[dict[str, Any]]:
    """promptfoo runs a test once per combination of its list-of-strings vars."""
    listed = {k: v for k, v in variables.items() if isinstance(v, list) and v and all(isinstance(x, str) for x in v)}
    if not listed:
        return [variables]
    keys = list(listed)
    return [{**variables, **dict(zip(keys, combo))} for combo in itertools.product(*(listed[k] for k in keys))]


def _assertion(raw: Mapping[str, Any], where: str, grader: Any = None) -> Assertion:
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
    )


def _cases(
    info: SuiteInfo,
    prompts: list[Prompt],
    providers: list[ModelSpec],
    default: dict[str, Any],
    tests: list[_Test],
    ctx: _Context,
) -> Iterator[Case]:
    seen: dict[str, int] = {}
    position = 0
    for test in tests:
        merged = _merge(default, test.data, test.path, ctx)
        path = test.path
        base_vars = _load_vars(merged["vars"], path, ctx)
        test_providers = providers
        if merged["provider"] is not None:
            try:
                test_providers = [parse_model_spec(merged["provider"], format_path(path + ("provider",)))]
            except ValueError as exc:
                raise ctx.error(path + ("provider",), str(exc).split(": ", 1)[-1]) from None
        raw_asserts = merged["assert"]
        n_default = len(raw_asserts) - len(test.data.get("assert", []))
        placed = []
        for a_index, raw in enumerate(raw_asserts):
            a_path = (
                ("defaultTest", "assert", a_index) if a_index < n_default else path + ("assert", a_index - n_default)
            )
            placed.append((_assertion(raw, format_path(a_path), merged["options"].get("provider")), a_path))
        missing = Missing(path + ("vars",), "add it to this test's vars or to defaultTest.vars")
        combos = _var_combinations(base_vars)
        for combo_index, variables in enumerate(combos):
            for prompt_index, prompt in enumerate(prompts):
                for spec in test_providers:
                    label = merged["description"] or _vars_label(variables)
                    try:
                        case = build_case(
                            info,
                            prompt,
                            prompt_index,
                            variables,
                            placed,
                            spec,
                            name=_name(
                                label,
                                test.index,
                                combo_index,
                                len(combos),
                                prompt_index,
                                len(prompts),
                                spec,
                                len(test_providers),
                            ),
                            test_index=test.index,
                            position=position,
                            missing=missing,
                            threshold=merged["threshold"],
                            description=merged["description"],
                            base_dir=ctx.base_dir,
                            several_prompts=len(prompts) > 1,
                            several_providers=len(test_providers) > 1,
                        )
                    except CaseError as exc:
                        raise ctx.error(exc.path, exc.message) from None
                    occurrence = seen.get(case.case_id, 0)
                    seen[case.case_id] = occurrence + 1
                    if occurrence:  # the same test written twice: each is its own case
                        case = dataclasses.replace(case, case_id=f"{case.case_id}-{occurrence}")
                    position += 1
                    yield case


# ----------------------------------------------------------------------------- fuzz blocks


def _fuzz(
    raw: dict[str, Any],
    info: SuiteInfo,
    prompts: list[Prompt],
    providers: list[ModelSpec],
    default: dict[str, Any],
    tests: list[_Test],
    cases: list[Case],
    ctx: _Context,
) -> list[Case]:
    """A `fuzz:` block: `count` var sets generated with Hypothesis (`fuzz.generate`, seeded), each
    run on every prompt x provider with the block's invariants: `defaultTest.assert` (unless
    `options.disableDefaultAsserts`) then `fuzz.assert`. Vars come from `fuzz.vars` (a JSON Schema
    each), the others from the tests' own vars, mixed and perturbed."""
    here: tuple[Any, ...] = ("fuzz",)
    try:
        from ..fuzz import FuzzBlock, FuzzOrigin, generate
        from ..strategies import VARIANTS, SchemaNotSupported, from_schema
    except ImportError as exc:
        raise ctx.error(here, f"a fuzz block needs Hypothesis: {exc}") from None
    from hypothesis.errors import HypothesisException

    schemas = {str(name): schema for name, schema in (raw.get("vars") or {}).items()}
    for name, schema in schemas.items():
        try:
            from_schema(schema)
        except SchemaNotSupported as exc:
            raise ctx.error(here + ("vars", name) + exc.path, exc.message) from None
    block = _block(raw, default, providers, here, ctx)
    if not block.assertions:
        raise ctx.error(
            here,
            "a fuzz block checks invariants on every generated case: give them in fuzz.assert "
            "(or defaultTest.assert), e.g. [{type: is-json}]",
        )
    # The vars tests set are drawn from their values (a test without one brings the default's);
    # a var only defaultTest sets keeps its value, as do all of them in a suite without tests.
    drawn = {str(k) for test in tests for k in _vars_mapping(test.data.get("vars"), test.path, ctx)} - set(schemas)
    examples: list[dict[str, Any]] = []
    for test in tests:
        for combo in _var_combinations(_load_vars(_merge(default, test.data, test.path, ctx)["vars"], test.path, ctx)):
            examples.append({k: v for k, v in combo.items() if k in drawn})
    available = set(schemas) | set(block.defaults) | {name for example in examples for name in example}
    for index, prompt in enumerate(prompts):
        missing = sorted(prompt.variables - available)
        if missing:
            raise ctx.error(
                here + (("vars",) if schemas else ()),
                f"missing variable {missing[0]!r} (the template uses {{{{ {missing[0]} }}}}) in prompts[{index}] "
                f"({prompt.label}); give it a JSON Schema in fuzz.vars, or a value in the tests' vars or defaultTest.vars",
            )
    fuzz = FuzzBlock(
        count=raw.get("count", 10),
        seed=raw.get("seed", 0),
        variants=tuple(raw.get("variants", VARIANTS)),
        schemas=tuple(schemas.items()),
        examples=tuple(examples),
        shrink=raw.get("shrink", 30),
    )
    try:
        generated = generate(fuzz)
    except HypothesisException as exc:  # e.g. minLength > maxLength, a pattern no string of that length matches
        raise ctx.error(
            here + (("vars",) if schemas else ()), f"cannot generate vars: {type(exc).__name__}: {exc}"
        ) from None
    factories = list(_factories(info, prompts, block, ctx))
    taken = {case.case_id for case in cases}
    out: list[Case] = []
    for index, values in enumerate(generated):
        for slice_ident, factory in factories:
            try:
                case = factory(values, index)
            except CaseError as exc:
                where = exc.path if exc.path and exc.path[0] != "dataset" else here
                raise ctx.error(
                    where,
                    f"{exc.message} (generated case fuzz[{index}]: {json.dumps(values, ensure_ascii=False, default=str)[:200]})",
                ) from None
            identity, n = case.case_id, 0
            while identity in taken:  # a generated case identical to a test's, or to another one
                n += 1
                identity = f"{case.case_id}-{n}"
            taken.add(identity)
            name = f"fuzz[{index}-{slice_ident}]" if slice_ident else f"fuzz[{index}]"
            out.append(
                dataclasses.replace(
                    case,
                    case_id=identity,
                    name=name,
                    test_index=len(tests) + index,
                    position=len(cases) + len(out),
                    fuzz=FuzzOrigin(fuzz, index, factory),
                )
            )
    return out


@dataclass
class _Block:
    """A `dataset:` or `fuzz:` block merged with `defaultTest` as a test is."""

    merged: dict[str, Any]
    defaults: dict[str, Any]  # defaultTest.vars, loaded
    providers: list[ModelSpec]  # defaultTest.provider, else the suite's
    assertions: tuple[tuple[Assertion, tuple[Any, ...]], ...]  # defaultTest.assert then the block's, with their places


def _block(
    raw: Mapping[str, Any], default: dict[str, Any], providers: list[ModelSpec], here: tuple[Any, ...], ctx: _Context
) -> _Block:
    merged = _merge(default, {k: raw[k] for k in ("assert", "threshold", "options") if k in raw}, here, ctx)
    if merged["provider"] is not None:
        try:
            providers = [parse_model_spec(merged["provider"], "defaultTest.provider")]
        except ValueError as exc:
            raise ctx.error(("defaultTest", "provider"), str(exc).split(": ", 1)[-1]) from None
    n_default = len(merged["assert"]) - len(raw.get("assert", []))
    assertions = []
    for index, entry in enumerate(merged["assert"]):
        path = ("defaultTest", "assert", index) if index < n_default else here + ("assert", index - n_default)
        assertions.append((_assertion(entry, format_path(path), merged["options"].get("provider")), path))
    return _Block(merged, _load_vars(merged["vars"], ("defaultTest",), ctx), providers, tuple(assertions))


def _factories(
    info: SuiteInfo, prompts: list[Prompt], block: _Block, ctx: _Context, renames: tuple[tuple[str, str], ...] = ()
) -> Iterator[tuple[str, CaseFactory]]:
    """A case factory per prompt x provider of a block, with its ident: named like a case's
    (`p<N>`, the provider), brackets kept out of it for node ids."""
    providers = block.providers
    for prompt_index, prompt in enumerate(prompts):
        for spec in providers:
            ident = "-".join(
                ([f"p{prompt_index}"] if len(prompts) > 1 else []) + ([spec.display] if len(providers) > 1 else [])
            )
            ident = ident.replace("::", ":").replace("[", "(").replace("]", ")")
            yield (
                ident,
                CaseFactory(
                    info,
                    prompt,
                    prompt_index,
                    spec,
                    block.assertions,
                    block.merged["threshold"],
                    tuple(block.defaults.items()),
                    renames,
                    ctx.base_dir,
                    len(prompts) > 1,
                    len(providers) > 1,
                ),
            )


# ----------------------------------------------------------------------------- dataset suites


def _dataset(
    raw: dict[str, Any],
    info: SuiteInfo,
    prompts: list[Prompt],
    providers: list[ModelSpec],
    default: dict[str, Any],
    ctx: _Context,
    backend: str | None,
) -> DatasetSpec:
    """A `dataset:` block: the source, checked against its columns and first row now (a typo
    must not surface after an hour of model calls), and one case factory per prompt x provider.
    `defaultTest` merges into the block as into a test."""
    here: tuple[Any, ...] = ("dataset",)
    if ("path" in raw) == ("table" in raw):
        both = "path" in raw
        raise ctx.error(
            here + (("table",) if both else ()),
            ("give 'path' or 'table', not both" if both else "needs 'path' or 'table'")
            + ": 'path' is a .parquet, .csv or .jsonl file (or a folder of Parquet files) relative to the suite, "
            "'table' a Spark table name (with --promptopt-backend spark)",
        )
    source = _dataset_source(raw, ctx, backend)
    block = _block(raw, default, providers, here, ctx)
    slices = [
        DatasetSlice(f"dataset[{ident}]" if ident else "dataset", ident, factory)
        for ident, factory in _factories(info, prompts, block, ctx, source.renames)
    ]
    if source.path is not None:
        _check_dataset(source, slices, set(block.defaults), ctx)
    return DatasetSpec(source, tuple(slices))


def _dataset_source(raw: dict[str, Any], ctx: _Context, backend: str | None) -> DatasetSource:
    renames = tuple((str(var), str(column)) for var, column in (raw.get("vars") or {}).items())
    limit = raw.get("limit")
    if "table" in raw:
        if backend is not None and backend != "spark":
            raise ctx.error(
                ("dataset", "table"),
                f"a Spark table is read by the Spark backend: run with --promptopt-backend spark "
                f"(this run's backend is '{backend}'), or export the table to Parquet and give dataset.path",
            )
        return DatasetSource(raw["table"], "table", table=raw["table"], renames=renames, limit=limit)
    written = raw["path"]
    relative = written[len("file://") :] if written.startswith("file://") else written
    path = Path(relative).expanduser()
    path = path if path.is_absolute() else ctx.base_dir / path
    if path.is_dir():
        kind = "parquet"
    else:
        kind = FORMATS.get(path.suffix.lower(), "")
        if not kind:
            raise ctx.error(
                ("dataset", "path"),
                f"{written}: unsupported file type {path.suffix or '(none)'!r}; use .parquet, .csv or "
                ".jsonl, or a folder of Parquet files",
            )
        if not path.is_file():
            raise ctx.error(("dataset", "path"), f"data file not found: {path}")
    return DatasetSource(written, kind, path=path, renames=renames, limit=limit)


def _check_dataset(source: DatasetSource, slices: list[DatasetSlice], defaults: set[str], ctx: _Context) -> None:
    """Columns named in `dataset.vars` exist; every template variable has a column or a
    default; the first row makes a case (assertion values render, regexes compile, ...)."""
    try:
        found = columns(source)
    except (CaseError, OSError, UnicodeDecodeError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ctx.error(("dataset", "path"), f"{source.written}: cannot read: {exc}") from None
    listed = ", ".join(found[:30]) + (", ..." if len(found) > 30 else "")
    for var, column in source.renames:
        if column not in found:
            hint = difflib.get_close_matches(column, found, n=1)
            fix = f"did you mean '{hint[0]}'? " if hint else ""
            raise ctx.error(
                ("dataset", "vars", var), f"column {column!r} is not in {source.written}; {fix}its columns: {listed}"
            )
    renamed = {column for _, column in source.renames}
    available = (set(found) - renamed) | {var for var, _ in source.renames} | defaults
    for item in slices:
        factory = item.make_case
        missing = sorted(factory.prompt.variables - available)
        if missing:
            where = ("dataset", "vars") if source.renames else ("dataset",)
            raise ctx.error(
                where,
                f"missing variable {missing[0]!r} (the template uses {{{{ {missing[0]} }}}}) in "
                f"prompts[{factory.prompt_index}] ({factory.prompt.label}); {source.written} has columns {listed}: map "
                f"one with dataset.vars ({missing[0]}: <column>) or set it in defaultTest.vars",
            )
    try:
        first = next(read_rows(source, chunk_rows=1), None)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ctx.error(("dataset", "path"), f"{source.written}: cannot read: {exc}") from None
    if first is None:
        return
    index, row = first
    if isinstance(row, CaseError):
        raise ctx.error(("dataset", "path"), f"{source.written}: {row.message}")
    for item in slices:
        try:
            item.make_case(row, index)
        except CaseError as exc:
            raise ctx.error(exc.path or ("dataset",), f"{exc.message} (first row of {source.written})") from None


def _vars_label(variables: Mapping[str, Any]) -> str:
    """A short `k=v` label so cases without a description are still readable and -k selectable."""
    parts = [f"{k}={v}" for k, v in variables.items() if isinstance(v, (str, int, float))]
    return ", ".join(parts)[:60]


def _name(
    description: str, test: int, combo: int, combos: int, prompt: int, prompts: int, spec: ModelSpec, providers: int
) -> str:
    # Brackets and '::' would confuse node ids: `name[params]` is how pytest reads them back.
    label = (
        re.sub(r"\s+", " ", description).strip()[:80].replace("::", ":").replace("[", "(").replace("]", ")") or "test"
    )
    ident = f"t{test}" + (f".{combo}" if combos > 1 else "") + (f"-p{prompt}" if prompts > 1 else "")
    if providers > 1:
        ident += f"-{spec.display}"
    return f"{label}[{ident}]"
