"""Load a suite file into validated `Case`s, with errors that name the file, line and path.

The format is a compatible subset of promptfoo's config (see docs/suite-format.md), validated
against the JSON Schema shipped in `pytest_promptopt/schemas/suite.schema.json`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..gates import parse_gates
from ..models.specs import ModelSpec, parse_model_spec
from ..prompt import Prompt
from ..sandbox import DEFAULT_SCRIPT_TIMEOUT_S, Sandbox, sandbox_for
from ..sandbox.scripts import make_filter
from .blocks import dataset_spec, fuzz_cases
from .cases import CaseError, Missing, build_case
from .dataset import DatasetSpec
from .document import Context, DocumentError, format_path, read_document
from .expansion import build_assertion, load_vars, merge_test, var_combinations
from .model import Case, Repeats, SuiteError, SuiteInfo
from .prompts import load_prompts
from .schema import validate_suite
from .sources import TestEntry, default_test, read_tests

__all__ = ["LoadedSuite", "load_suite"]


@dataclass(frozen=True)
class LoadedSuite:
    info: SuiteInfo
    cases: tuple[Case, ...]
    dataset: DatasetSpec | None = None  # a `dataset:` suite: its rows are read when it runs, `cases` is empty
    repair: Mapping[str, Any] | None = None  # the `repair:` block, checked by the schema (repair/config.py reads it)


def load_suite(
    file: Path,
    display: str,
    default_model: ModelSpec,
    resolve_prompt: Callable[[str], Any] | None = None,
    backend: str | None = None,
    repeats: Repeats = Repeats(),
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S,
    sandbox: Sandbox | None = None,
) -> LoadedSuite:
    """Parse, validate and expand a suite file into cases. Raises `SuiteError`.

    `resolve_prompt` turns a `prompts:/...` reference into a `mlflow.prompts.Resolved` (the
    session's resolver; without one, a registry reference is a `SuiteError`). `backend` (`local`/`spark`) is the
    run's: a dataset `table` needs `spark`; None (e.g. `validate`) does not check. `repeats` is
    the run's samples per case, which the suite's `repeat:` may override (`Repeats.for_suite`).
    User code the cases need while they are built (var loaders, prompt functions, Nunjucks
    filters) runs in `sandbox` (a fresh one for the load without it), each call within
    `script_timeout_s`, which the cases keep for their transforms and checks."""
    with sandbox_for(sandbox) as box:
        return _load(file, display, default_model, resolve_prompt, backend, repeats, script_timeout_s, box)


def _load(
    file: Path,
    display: str,
    default_model: ModelSpec,
    resolve_prompt: Callable[[str], Any] | None,
    backend: str | None,
    repeats: Repeats,
    script_timeout_s: float,
    sandbox: Sandbox,
) -> LoadedSuite:
    try:
        data, lines = read_document(file)
    except DocumentError as exc:
        raise SuiteError(display, str(exc), line=exc.line) from None
    ctx = Context(file, display, lines, resolve_prompt)
    if not isinstance(data, dict):
        raise ctx.error((), "a suite is a mapping with 'prompts' and 'tests' (see docs/suite-format.md)")
    validate_suite(data, ctx)
    try:
        gates = parse_gates(data.get("gates"))
    except ValueError as exc:
        raise ctx.error(("gates",), str(exc).split(": ", 1)[-1]) from None
    name = data.get("name") or data.get("description") or file.name
    info = SuiteInfo(id=display, name=str(name), file=display, gates=gates)
    for filter_name, filter_path in (data.get("nunjucksFilters") or {}).items():
        where = f"{display}:{ctx.lines.line(('nunjucksFilters', filter_name))}: nunjucksFilters.{filter_name}"
        ctx.filters[str(filter_name)] = make_filter(sandbox, ctx.base_dir / filter_path, script_timeout_s, where)
    prompts = load_prompts(data.get("prompts"), ctx)
    providers = _providers(data.get("providers", data.get("targets")), ctx) or [default_model]
    defaults = default_test(data.get("defaultTest"), ctx)
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
        return LoadedSuite(info, (), dataset_spec(data["dataset"], info, prompts, providers, defaults, ctx, backend))
    # A fuzz suite without `tests` has only generated cases (not promptfoo's one case without vars).
    tests = read_tests(data.get("tests"), ctx) if "tests" in data or "fuzz" not in data else []
    cases = list(_cases(info, prompts, providers, defaults, tests, ctx, sandbox, script_timeout_s))
    if "fuzz" in data:
        cases.extend(fuzz_cases(data["fuzz"], info, prompts, providers, defaults, tests, cases, ctx))
    repeat = repeats.for_suite(data.get("repeat"))
    if repeat != 1:
        cases = [dataclasses.replace(case, repeats=repeat) for case in cases]
    return LoadedSuite(info, tuple(cases), repair=data.get("repair"))


# ----------------------------------------------------------------------------- validation


# ----------------------------------------------------------------------------- prompts


# ----------------------------------------------------------------------------- providers


def _providers(raw: Any, ctx: Context) -> list[ModelSpec]:
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


# ----------------------------------------------------------------------------- expansion


def _cases(
    info: SuiteInfo,
    prompts: list[Prompt],
    providers: list[ModelSpec],
    default: dict[str, Any],
    tests: list[TestEntry],
    ctx: Context,
    sandbox: Sandbox | None = None,
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S,
) -> Iterator[Case]:
    seen: dict[str, int] = {}
    position = 0
    for test in tests:
        merged = merge_test(default, test.data, test.path, ctx)
        path = test.path
        base_vars = load_vars(merged["vars"], path, ctx)
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
            place = f"{ctx.display}:{ctx.lines.line(a_path)}" if ctx.lines.line(a_path) else ctx.display
            assertion = build_assertion(raw, format_path(a_path), merged["options"].get("provider"), place)
            placed.append((assertion, a_path))
        transform = merged["options"].get("transform") or merged["options"].get("postprocess")
        missing = Missing(path + ("vars",), "add it to this test's vars or to defaultTest.vars")
        combos = var_combinations(base_vars)
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
                            transform=transform,
                            script_timeout_s=script_timeout_s,
                            sandbox=sandbox,
                            filters=ctx.filters,
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


# ----------------------------------------------------------------------------- dataset suites


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
