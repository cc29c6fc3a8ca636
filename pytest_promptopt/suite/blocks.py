"""Blocks that generate cases rather than list them: `fuzz:` (seeded Hypothesis var sets) and
`dataset:` (the rows of a table, read when the suite runs), both merged with `defaultTest`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..assertions.base import Assertion
from ..models.specs import ModelSpec, case_id_tags, distinct_displays, parse_model_spec
from ..prompt import Prompt
from ..sandbox import DEFAULT_SCRIPT_TIMEOUT_S
from ..suite_info import SuiteInfo
from .cases import CaseError, failed_case
from .dataset import FORMATS, CaseFactory, DatasetSlice, DatasetSource, DatasetSpec, columns, read_rows
from .document import Context
from .expansion import (
    build_assertion,
    load_vars,
    merge_test,
    model_options,
    output_transform,
    places_of_test_provider,
    var_combinations,
    vars_mapping,
)
from .model import Case
from .sources import TestEntry


def fuzz_cases(
    raw: dict[str, Any],
    info: SuiteInfo,
    prompts: list[Prompt],
    providers: list[ModelSpec],
    default: dict[str, Any],
    tests: list[TestEntry],
    cases: list[Case],
    ctx: Context,
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S,
) -> list[Case]:
    """A `fuzz:` block: `count` var sets generated with Hypothesis (`fuzz.generate`, seeded), each
    run on every prompt x provider with the block's invariants: `defaultTest.assert` (unless
    `options.disableDefaultAsserts`) then `fuzz.assert`. Vars come from `fuzz.vars` (a JSON Schema
    each), the others from the tests' own vars, mixed and perturbed."""
    here: tuple[Any, ...] = ("fuzz",)
    try:
        from ..adversarial import VARIANTS
        from ..var_strategies import SchemaNotSupported, from_schema
        from .fuzz import FuzzBlock, FuzzOrigin, generate
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
    drawn = {str(k) for test in tests for k in vars_mapping(test.data.get("vars"), test.path, ctx)} - set(schemas)
    examples: list[dict[str, Any]] = []
    for test in tests:
        merged_vars = merge_test(default, test.data, test.path, ctx)["vars"]
        for combo in var_combinations(merged_vars, test.path, ctx, ctx.limits.max_cases):
            examples.append({k: v for k, v in load_vars(combo, test.path, ctx).items() if k in drawn})
    # `env` is the suite's `env:`, always in a render's scope (suite/cases.py build_case)
    available = set(schemas) | set(block.defaults) | {name for example in examples for name in example} | {"env"}
    for index, prompt in enumerate(prompts):
        missing = sorted(prompt.needed_variables(promptfoo=True, filters=ctx.filters or None) - available)
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
    factories = list(_factories(info, prompts, block, ctx, script_timeout_s=script_timeout_s))
    taken = {case.case_id for case in cases}
    out: list[Case] = []
    for index, values in enumerate(generated):
        for slice_ident, factory in factories:
            try:
                case = factory(values, index)
            except CaseError as exc:
                if factory.prompt.unavailable is not None:  # the registry is down: an error, not the suite's
                    case = failed_case(
                        factory.suite, factory.prompt, factory.prompt_index, values, factory.model, exc.message,
                        name="", test_index=index, position=index, several_prompts=factory.several_prompts,
                        provider_tag=factory.provider_tag,
                    )  # fmt: skip
                else:
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
    raw: Mapping[str, Any], default: dict[str, Any], providers: list[ModelSpec], here: tuple[Any, ...], ctx: Context
) -> _Block:
    merged = merge_test(default, {k: raw[k] for k in ("assert", "threshold", "options") if k in raw}, here, ctx)
    if merged["provider"] is not None:
        try:
            spec = parse_model_spec(merged["provider"], "defaultTest.provider")
        except ValueError as exc:
            raise ctx.error(("defaultTest", "provider"), str(exc).split(": ", 1)[-1]) from None
        providers = places_of_test_provider(spec, providers, ("defaultTest", "provider"), ctx)
    n_default = len(merged["assert"]) - len(raw.get("assert", []))
    assertions = []
    for index, entry in enumerate(merged["assert"]):
        path = ("defaultTest", "assert", index) if index < n_default else here + ("assert", index - n_default)
        assertions.append((build_assertion(entry, ctx.where(path), merged["options"].get("provider")), path))
    return _Block(merged, load_vars(merged["vars"], ("defaultTest",), ctx), providers, tuple(assertions))


def _factories(
    info: SuiteInfo,
    prompts: list[Prompt],
    block: _Block,
    ctx: Context,
    renames: tuple[tuple[str, str], ...] = (),
    *,
    script_timeout_s: float,
) -> Iterator[tuple[str, CaseFactory]]:
    """A case factory per prompt x provider of a block, with its ident: named like a case's
    (`p<N>`, the provider), brackets kept out of it for node ids. The block's cases get
    `defaultTest.options.transform`, as a test's cases do."""
    providers = block.providers
    shown = distinct_displays(providers)
    id_tags = case_id_tags(providers)
    options = block.merged["options"]
    transform = output_transform(options)
    for prompt_index, prompt in enumerate(prompts):
        for spec, tag, id_tag in zip(providers, shown, id_tags):
            ident = "-".join(([f"p{prompt_index}"] if len(prompts) > 1 else []) + ([tag] if len(providers) > 1 else []))
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
                    provider_tag=id_tag,
                    options=tuple(model_options(options).items()),
                    metadata=tuple(block.merged["metadata"].items()),
                    transform=transform,
                    script_timeout_s=script_timeout_s,
                    env=tuple((ctx.env or {}).items()),
                    filters=ctx.filters or None,
                ),
            )


def dataset_spec(
    raw: dict[str, Any],
    info: SuiteInfo,
    prompts: list[Prompt],
    providers: list[ModelSpec],
    default: dict[str, Any],
    ctx: Context,
    backend: str | None,
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S,
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
    if backend == "spark" and ctx.filters:
        raise ctx.error(
            ("nunjucksFilters",),
            "a dataset suite on the Spark backend renders its rows on Spark's workers, which cannot run this "
            "suite's nunjucksFilters (JavaScript or Python run by this process): run it without "
            "--promptopt-backend spark, or write the filter's work into the data",
        )
    block = _block(raw, default, providers, here, ctx)
    slices = [
        DatasetSlice(f"dataset[{ident}]" if ident else "dataset", ident, factory)
        for ident, factory in _factories(info, prompts, block, ctx, source.renames, script_timeout_s=script_timeout_s)
    ]
    if source.path is not None:
        _check_dataset(source, slices, set(block.defaults), ctx)
    return DatasetSpec(source, tuple(slices))


def _dataset_source(raw: dict[str, Any], ctx: Context, backend: str | None) -> DatasetSource:
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
    ctx.check_inside(path, ("dataset", "path"), "data file")
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


def _check_dataset(source: DatasetSource, slices: list[DatasetSlice], defaults: set[str], ctx: Context) -> None:
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
    available = (set(found) - renamed) | {var for var, _ in source.renames} | defaults | {"env"}  # env: the suite's
    for item in slices:
        factory = item.make_case
        missing = sorted(factory.prompt.needed_variables(promptfoo=True, filters=ctx.filters or None) - available)
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
        if item.make_case.prompt.unavailable is not None:
            continue  # a registry that is down: each row of this prompt is an error when it runs
        try:
            case = item.make_case(row, index)
        except CaseError as exc:
            raise ctx.error(exc.path or ("dataset",), f"{exc.message} (first row of {source.written})") from None
        _check_patterns(case, item.make_case, source, ctx)


def _check_patterns(case: Case, factory: CaseFactory, source: DatasetSource, ctx: Context) -> None:
    """A regex that does not compile fails its check when it runs, as in promptfoo; in a dataset
    it would fail every row, after every row's model call: it is refused here instead. Only a
    pattern written out: one rendered from a row's values may compile on other rows."""
    if len(case.assertions) != len(factory.assertions):
        return
    for assertion, (written, path) in zip(case.assertions, factory.assertions):
        if assertion.type != "regex" or not isinstance(assertion.value, (str, int, float)):
            continue
        if "{{" in str(written.value) or "{%" in str(written.value):
            continue
        try:
            re.compile(str(assertion.value))
        except re.error as exc:
            raise ctx.error(
                path,
                f"invalid regular expression {str(assertion.value)!r}: {exc} (first row of {source.written})",
            ) from None
