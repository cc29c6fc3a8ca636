"""Load a suite file into validated `Case`s, with errors that name the file, line and path.

The format is promptfoo's config (see docs/suite-format.md for what runs, what is ignored with a
warning and what is refused), validated against the JSON Schema shipped in
`pytest_promptopt/schemas/suite.schema.json`. A problem of the whole file is a `SuiteError`; a
problem of one case (a malformed check, a prompt that does not render, a missing var file) makes
that case an error, and the others run, as in promptfoo.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..assertions.base import Assertion, assertion_types, is_model_graded
from ..gates import parse_gates
from ..models.specs import ModelSpec, case_id_tags, distinct_displays, parse_model_spec
from ..prompt import Prompt, Rendering
from ..sandbox import DEFAULT_SCRIPT_TIMEOUT_S, Sandbox, sandbox_for
from ..sandbox.errors import ScriptFault
from ..sandbox.scripts import make_filter, run_test_generator, run_transform
from ..suite_info import SuiteInfo
from .blocks import dataset_spec, fuzz_cases
from .cases import CaseError, Missing, Placed, build_case, case_id, failed_case
from .csv_tests import PROMPTFOO_TYPES
from .dataset import DatasetSpec
from .document import Context, DocumentError, SuiteNotice, format_path, read_document
from .expansion import (
    build_assertion,
    drop_newline,
    file_value,
    merge_test,
    model_options,
    output_transform,
    places_of_test_provider,
    read_vars,
    var_combinations,
)
from .model import MAX_REPEAT, Case, ChainStep, Repeats, SuiteError, SuiteLimits
from .promptfoo_keys import check_env, derived_metrics, map_form, preprocess, provider_entries
from .prompts import load_prompts
from .references import check_test_references, known_names, ref_matches
from .schema import validate_suite
from .sources import Generate, TestEntry, default_test, read_tests

__all__ = ["LoadedSuite", "load_suite"]


@dataclass(frozen=True)
class LoadedSuite:
    info: SuiteInfo
    cases: tuple[Case, ...]
    dataset: DatasetSpec | None = None  # a `dataset:` suite: its rows are read when it runs, `cases` is empty
    repair: Mapping[str, Any] | None = None  # the `repair:` block, checked by the schema (repair/config.py reads it)
    warnings: tuple[SuiteNotice, ...] = ()  # one each: keys ignored, differences from promptfoo
    sequence: bool = False  # storeOutputAs / _conversation: the cases run in order, in one process
    # How its prompts render (promptfoo's manners, its `env:` and `nunjucksFilters`), for what
    # renders them again after the run (repair)
    rendering: Rendering = Rendering(promptfoo=True)
    # Its prompts, each with the path of the `prompts:` entry it came from, for what rewrites the
    # suite (repair's apply: an entry that gives several prompts is not replaced by one)
    prompts: tuple[Prompt, ...] = ()
    prompt_paths: tuple[tuple[Any, ...], ...] = ()
    providers: tuple[ModelSpec, ...] = ()  # the suite's providers, in order (what item names number)


def load_suite(
    file: Path,
    display: str,
    default_model: ModelSpec,
    resolve_prompt: Callable[[str], Any] | None = None,
    backend: str | None = None,
    repeats: Repeats = Repeats(),
    limits: SuiteLimits = SuiteLimits(),
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S,
    sandbox: Sandbox | None = None,
) -> LoadedSuite:
    """Parse, validate and expand a suite file into cases. Raises `SuiteError`.

    `resolve_prompt` turns a `prompts:/...` reference into a `mlflow.prompts.Resolved` (the
    session's resolver; without one, a registry reference is a `SuiteError`). `backend` (`local`/`spark`) is the
    run's: a dataset `table` needs `spark`; None (e.g. `validate`) does not check. `repeats` is
    the run's samples per case, which the suite's `repeat:` may override (`Repeats.for_suite`).
    `limits` bounds what the file may expand to and which files it may read.
    User code the cases need while they are built (var loaders, prompt functions, Nunjucks
    filters) runs in `sandbox` (a fresh one for the load without it), each call within
    `script_timeout_s`, which the cases keep for their transforms and checks."""
    with sandbox_for(sandbox) as box:
        return _load(
            file, display, default_model, resolve_prompt, backend, repeats, limits, _Code(box, script_timeout_s)
        )


@dataclass(frozen=True)
class _Code:
    """Where the user code of a suite's cases runs while they are built, and its time limit."""

    sandbox: Sandbox
    timeout_s: float


def _load(
    file: Path,
    display: str,
    default_model: ModelSpec,
    resolve_prompt: Callable[[str], Any] | None,
    backend: str | None,
    repeats: Repeats,
    limits: SuiteLimits,
    code: _Code,
) -> LoadedSuite:
    try:
        data, lines = read_document(file, limits)
    except DocumentError as exc:
        raise SuiteError(display, str(exc), format_path(exc.path) if exc.path else "", line=exc.line) from None
    ctx = Context(file, display, lines, resolve_prompt, limits)
    for path in lines.dates:
        ctx.warn(
            path,
            "a YAML date: promptfoo makes it an empty object (it renders as '[object Object]'); "
            "it is kept as its text here: quote it to have the same value in both",
        )
    if not isinstance(data, dict):
        raise ctx.error((), "a suite is a mapping with 'prompts' and 'tests' (see docs/suite-format.md)")
    data = preprocess(data, ctx)
    validate_suite(data, ctx)
    try:
        gates = parse_gates(data.get("gates"))
    except ValueError as exc:
        raise ctx.error(("gates",), str(exc).split(": ", 1)[-1]) from None
    name = data.get("name") or data.get("description") or file.name
    for filter_name, filter_path in (data.get("nunjucksFilters") or {}).items():
        where = ctx.where(("nunjucksFilters", filter_name))
        filter_file = ctx.resolve_file(str(filter_path), ("nunjucksFilters", filter_name), "filter file")
        ctx.filters[str(filter_name)] = make_filter(code.sandbox, filter_file, code.timeout_s, where)
    prompts, prompt_paths = load_prompts(data.get("prompts"), ctx)
    check_env([p.template for p in prompts], ctx)
    written = _provider_entries(data, ctx)
    providers = _providers(written, ctx) or [default_model]
    # promptfoo's filters match its labels (a file's `path: text`), not the shorter ones shown here
    prompt_labels = [(prompt.promptfoo_label or prompt.label, prompt.promptfoo_id or "") for prompt in prompts]
    only = _prompt_filters(written, prompt_labels, ctx)
    defaults = default_test(data.get("defaultTest"), ctx)
    info = SuiteInfo(id=display, name=str(name), file=display, gates=gates)
    if (defaults.get("options") or {}).get("transformVars") is not None and ({"dataset", "fuzz"} & set(data)):
        key = "dataset" if "dataset" in data else "fuzz"
        raise ctx.error(
            ("defaultTest", "options", "transformVars"),
            f"var transforms are run for a suite's tests, not for the rows or generated inputs of a {key} block: "
            "compute the vars in the data, or put the tests in a suite of their own",
        )
    if any(allowed is not None for allowed in only) and ({"dataset", "fuzz"} & set(data)):
        key = "dataset" if "dataset" in data else "fuzz"
        raise ctx.error(
            (key,),
            f"providers[].prompts (which prompts run on a provider) is not supported in a suite with {key}: "
            "run every prompt on every provider there, or put the other provider in a suite of its own",
        )
    if "dataset" in data:
        return _dataset_suite(data, info, prompts, providers, defaults, ctx, backend, code.timeout_s)
    # A fuzz suite without `tests` has only generated cases (not promptfoo's one case without
    # vars); a suite with scenarios and no tests has only the scenarios' (as in promptfoo).
    plain = "tests" in data or not ({"fuzz", "scenarios"} & set(data))
    generate = _generator(code, ctx)
    tests = read_tests(data.get("tests"), ctx, generate, others=bool(data.get("scenarios"))) if plain else []
    tests += _scenario_tests(data.get("scenarios"), ctx, generate, len(tests))
    asserts = [a for t in [defaults, *(t.data for t in tests)] for a in t.get("assert") or [] if isinstance(a, dict)]
    asserts += [
        c for a in asserts if a.get("type") == "assert-set" for c in a.get("assert") or [] if isinstance(c, dict)
    ]
    known = {str(a["metric"]) for a in asserts if a.get("metric")}
    # a javascript/python check may return namedScores under any name: then no name is unknown
    coded = any(str(a.get("type")).removeprefix("not-") in ("javascript", "python") for a in asserts)
    info = dataclasses.replace(
        info, derived_metrics=derived_metrics(data.get("derivedMetrics"), None if coded else known, ctx)
    )
    if "prompts" not in data and not any(
        "prompt" in (t.data.get("vars") or {}) for t in tests if isinstance(t.data.get("vars"), dict)
    ):
        ctx.warn(
            ("prompts",), "no prompts: the prompt is {{prompt}} (as in promptfoo), so each test needs a 'prompt' var"
        )
    sequence = any(_stores(defaults, t.data) for t in tests) or any("_conversation" in p.template for p in prompts)
    if sequence and backend == "spark":
        raise ctx.error(
            (),
            "storeOutputAs and _conversation make each case wait for the ones before it: run this suite "
            "with the local backend, not --promptopt-backend spark",
        )
    provider_names = _provider_names(written, providers)
    check_test_references(defaults, tests, prompt_labels, provider_names, ctx)
    builder = _CaseBuilder(info, prompts, providers, defaults, ctx, sequence, code, only, prompt_labels, provider_names)
    cases = list(builder.cases(tests))
    if "fuzz" in data:
        cases.extend(fuzz_cases(data["fuzz"], info, prompts, providers, defaults, tests, cases, ctx, code.timeout_s))
    if not cases:
        raise ctx.error(("tests",), "the suite has no cases: give it tests (an empty file or list runs nothing)")
    repeat = repeats.for_suite(data.get("repeat"))
    if repeat != 1:
        cases = [dataclasses.replace(case, repeats=repeat) for case in cases]
    return LoadedSuite(
        info,
        tuple(cases),
        repair=data.get("repair"),
        warnings=tuple(ctx.warnings),
        sequence=sequence,
        rendering=Rendering(promptfoo=True, env=ctx.env, filters=ctx.filters or None),
        prompts=tuple(prompts),
        prompt_paths=tuple(prompt_paths),
        providers=tuple(providers),
    )


def _dataset_suite(
    data: dict[str, Any],
    info: SuiteInfo,
    prompts: list[Prompt],
    providers: list[ModelSpec],
    defaults: dict[str, Any],
    ctx: Context,
    backend: str | None,
    script_timeout_s: float,
) -> LoadedSuite:
    for key, problem in (
        ("tests", "a suite takes its cases from 'tests' or from 'dataset', not both; put the tests in a suite file of their own"),
        ("scenarios", "a suite takes its cases from 'scenarios' or from 'dataset', not both"),
        ("fuzz", "a fuzz block adds generated cases to a suite's tests, and a dataset suite has none; put the fuzz "
         "block in a suite file of its own"),
    ):  # fmt: skip
        if key in data:
            raise ctx.error((key,) if key != "tests" else ("dataset",), problem)
    if data.get("repeat", 1) != 1:
        # Its rows keep only counts, and an interval over repeated samples needs each case's samples.
        raise ctx.error(
            ("repeat",),
            "a dataset suite samples each row once; repeat cases in a suite with tests, or add the rows again to the table",
        )
    spec = dataset_spec(data["dataset"], info, prompts, providers, defaults, ctx, backend, script_timeout_s)
    return LoadedSuite(info, (), spec, warnings=tuple(ctx.warnings))


def _stores(default: Mapping[str, Any], test: Mapping[str, Any]) -> bool:
    return bool({**(default.get("options") or {}), **(test.get("options") or {})}.get("storeOutputAs"))


def _generator(code: _Code, ctx: Context) -> Generate:
    """Runs a suite's tests generators in its sandbox, each once, when the suite is loaded (under
    xdist, once per worker: a generator must give the same tests each time, as pytest asks of
    parametrisation). What it raises, or a fault, is an error of the suite file at its place."""

    def generate(file: Path, function: str | None, args: list[Any], path: tuple[Any, ...]) -> Any:
        what = f"tests generator {file.name}" + (f":{function}" if function else "")
        try:
            return run_test_generator(code.sandbox, file, function, args, code.timeout_s, what)
        except ScriptFault as exc:
            raise ctx.error(path, str(exc)) from None

    return generate


def _scenario_tests(raw: Any, ctx: Context, generate: Generate, start: int) -> list[TestEntry]:
    """promptfoo's `scenarios`: for each scenario, each `config` entry merged with each of its
    tests (`{...config, ...test}`, vars and options merged key by key, the config's asserts
    first), after the plain tests; `metadata.conversationId` defaults to `__scenario_<n>__`."""
    out: list[TestEntry] = []
    count = 0
    for s_index, scenario in enumerate(raw or []):
        here: tuple[Any, ...] = ("scenarios", s_index)
        tests = scenario.get("tests")
        entries = read_tests(tests, ctx, generate, here + ("tests",)) if tests is not None else [TestEntry({}, here, 0)]
        for data in scenario["config"]:
            for entry in entries:
                test = entry.data
                merged = {
                    **data,
                    **test,
                    "vars": {**(data.get("vars") or {}), **(test.get("vars") or {})},
                    "options": {**(data.get("options") or {}), **(test.get("options") or {})},
                    "assert": [*(data.get("assert") or []), *(test.get("assert") or [])],
                    "metadata": {
                        "conversationId": f"__scenario_{count}__",
                        **(data.get("metadata") or {}),
                        **(test.get("metadata") or {}),
                    },
                }
                path = entry.path
                out.append(TestEntry(merged, path, start + len(out), entry.origin))
            count += 1
    return out


@dataclass(frozen=True)
class _Written:
    """A suite provider as written, read as promptfoo's `normalizeProviderRef` reads it: a string,
    an options object, or the map form `{openai:gpt-4o: {config: ...}}` (`mapped`) as the options
    object it stands for. `ident` is its id for promptfoo's filters (the map form's own `id`, if
    any, else its key)."""

    options: Any
    path: tuple[Any, ...]
    ident: str
    mapped: bool = False


def _map_form(entry: Any) -> tuple[str, dict[str, Any]] | None:
    """promptfoo's map form of a provider (`promptfoo_keys.map_form`): its key (the model) and the
    options object it stands for (the model as its `id`, its own `id` kept for filters in
    `_Written.ident`); None for any other form."""
    mapped = map_form(entry)
    return None if mapped is None else (mapped[0], {**mapped[1], "id": mapped[0]})


def _provider_entries(data: Mapping[str, Any], ctx: Context) -> list[_Written]:
    """The suite's providers as written (`providers:` or `targets:`, a list or one entry), each
    with its path. As in promptfoo (`combineConfigs`), an entry written exactly as an earlier one
    (the same string, or the same object) is dropped, with a warning."""
    written: list[_Written] = []
    seen: dict[str, tuple[Any, ...]] = {}
    for entry, path in provider_entries(data):
        same = json.dumps(entry, ensure_ascii=False, default=str)
        if same in seen:
            ctx.warn(
                path, f"the same provider as {format_path(seen[same])}: promptfoo runs it once, and so does this run"
            )
            continue
        seen[same] = path
        mapped = _map_form(entry)
        if mapped is not None:
            model, options = mapped
            written.append(_Written(options, path + (model,), str(options.get("id") or model), mapped=True))
            continue
        ident = entry if isinstance(entry, str) else str(entry.get("id", "")) if isinstance(entry, Mapping) else ""
        written.append(_Written(entry, path, ident))
    return written


def _chosen(
    refs: Any, names: list[tuple[str, ...]], path: tuple[Any, ...], what: str, ctx: Context
) -> frozenset[int] | None:
    """The indexes whose names a filter's `refs` match (None: no filter; an empty list: none);
    a reference that matches nothing is named in a warning (its cases would vanish silently)."""
    if refs is None:
        return None
    chosen: set[int] = set()
    for ref in refs:
        found = {i for i, own in enumerate(names) if ref_matches(str(ref), *own)}
        if not found:
            ctx.warn(path, f"{ref!r} matches no {what} (they are {known_names(names)}), so it runs nothing")
        chosen |= found
    return frozenset(chosen)


def _prompt_filters(
    written: list[_Written], labels: list[tuple[str, str]], ctx: Context
) -> list[frozenset[int] | None]:
    """For each provider, the indexes of the prompts it runs (None: all): promptfoo's
    `providers[].prompts` (`readProviderPromptMap`, `isPromptAllowed`), matched on `labels`.
    promptfoo keys the filters by id and label and looks each provider's up by its label, else
    its id: of two providers with one id and no label, the last one's filter applies to both, and
    the map form registers no label, so a labelled one runs every prompt. Both are kept (a suite
    runs the cases it runs in promptfoo) and named in a warning."""
    keyed: dict[str, _Written] = {}
    for entry in written:
        if not isinstance(entry.options, Mapping):
            continue  # promptfoo registers no filter for a provider written as a string
        keyed[entry.ident] = entry
        label = entry.options.get("label")
        if label and not entry.mapped:
            keyed[str(label)] = entry
    filters = []
    for entry in written:
        options = entry.options if isinstance(entry.options, Mapping) else {}
        own = options.get("prompts")
        found = keyed.get(str(options.get("label") or entry.ident))
        used = found.options.get("prompts") if found is not None and isinstance(found.options, Mapping) else None
        if found is not None and found is not entry and used != own:
            ctx.warn(
                entry.path + (("prompts",) if own is not None else ()),
                f"promptfoo runs this provider with the prompts of {format_path(found.path)} (the same id or label, "
                "the last one's filter wins); it does so here too: give each provider a label of its own",
            )
        elif found is None and own is not None:
            ctx.warn(
                entry.path + ("prompts",),
                "promptfoo ignores this filter (it looks it up by the label, which this form of provider does not "
                "register) and runs every prompt; so does this run: write it as {id, label, prompts}",
            )
        where = found.path if found is not None else entry.path
        filters.append(_chosen(used, labels, where + ("prompts",), "prompt", ctx))
    return filters


def _provider_names(written: list[_Written], providers: list[ModelSpec]) -> list[tuple[str, ...]]:
    """Each suite provider's id as written (and as the plugin reads it) and label, for filters."""
    idents = [entry.ident for entry in written] + [""] * (len(providers) - len(written))
    return [(spec.label or ident, ident, spec.id) for spec, ident in zip(providers, idents)]


def _providers(written: list[_Written], ctx: Context) -> list[ModelSpec]:
    specs = []
    for entry in written:
        try:
            specs.append(parse_model_spec(entry.options, format_path(entry.path)))
        except ValueError as exc:
            raise ctx.error(entry.path, str(exc).split(": ", 1)[-1]) from None
        ctx.check_code(specs[-1].transform, entry.path + ("transform",))
    return specs


class _CaseBuilder:
    """The cases of a suite's tests, in promptfoo's order: test, var combination, provider, prompt."""

    def __init__(
        self,
        info: SuiteInfo,
        prompts: list[Prompt],
        providers: list[ModelSpec],
        default: dict[str, Any],
        ctx: Context,
        sequence: bool,
        code: _Code,
        only: list[frozenset[int] | None],
        prompt_labels: list[tuple[str, str]],
        provider_names: list[tuple[str, ...]],
    ) -> None:
        self.info, self.prompts, self.providers, self.default, self.ctx = info, prompts, providers, default, ctx
        self.sequence, self.code = sequence, code
        # What promptfoo's filters match, and per suite provider the prompts it runs (None: all).
        self.only, self.prompt_labels, self.provider_names = only, prompt_labels, provider_names
        self.seen: dict[str, int] = {}
        self.position = 0
        self.provider_tags = distinct_displays(providers)  # each provider's part of its cases' names

    def cases(self, tests: list[TestEntry]) -> Iterator[Case]:
        ctx = self.ctx
        for test in tests:
            merged = merge_test(self.default, test.data, test.path, ctx)
            path = test.path
            options = merged["options"]
            columns = self._columns(merged, path)
            test_providers = [self.providers[i] for i, _ in columns]
            if merged["provider"] is not None:
                # Where it is written: the test's own, else defaultTest's (named once for all tests).
                written = path + ("provider",) if "provider" in test.data else ("defaultTest", "provider")
                if isinstance(merged["provider"], Mapping) and "prompts" in merged["provider"]:
                    ctx.warn(
                        written + ("prompts",),
                        "promptfoo does not read a prompt filter on a test's provider, and neither does this "
                        "plugin: the test runs the prompts its suite's providers run",
                    )
                try:
                    own = _map_form(merged["provider"])  # `provider: {openai:gpt-4o: {...}}` too
                    spec = parse_model_spec(own[1] if own else merged["provider"], format_path(written))
                except ValueError as exc:
                    raise ctx.error(written, str(exc).split(": ", 1)[-1]) from None
                places = [self.providers[index] for index, _ in columns]
                written += (own[0],) if own else ()
                test_providers = places_of_test_provider(spec, places, written, ctx)
                if len(test_providers) == 1:
                    # It takes the suite providers' places, with the prompts any of them runs.
                    runs = [allowed for _, allowed in columns]
                    columns = [(0, None if None in runs else frozenset().union(*runs))]
            prompts = self._with_prefix(options, test)
            problem, placed = self._assertions(merged, test, path)
            if options.get("transformVars") is not None and problem is None:
                try:
                    merged = {**merged, "vars": self._transformed_vars(merged["vars"], options["transformVars"], path)}
                except CaseError as exc:  # the transform failed: this test's cases are errors saying so
                    problem = exc.message
            left = ctx.limits.max_cases - self.position
            combos = var_combinations(merged["vars"], path, ctx, max(0, left // max(1, len(prompts) * len(test_providers))),
                                      not options.get("disableVarExpansion"))  # fmt: skip
            repeats = options.get("repeat")
            for combo_index, raw_vars in enumerate(combos):
                variables: dict[str, Any] = {}
                code_vars: dict[str, Any] | None = None  # as the case's code sees them (newlines kept)
                vars_problem = problem
                try:
                    code_vars = read_vars(raw_vars, path, ctx)
                    variables = drop_newline(code_vars)
                except SuiteError as exc:  # a var file missing or unreadable: this test's cases are errors
                    variables, vars_problem = dict(raw_vars), vars_problem or str(exc)
                id_tags = case_id_tags(test_providers)
                for spec, id_tag, (index, allowed) in zip(test_providers, id_tags, columns):
                    own_only = merged["provider"] is not None and len(test_providers) == 1
                    tag = spec.display if own_only else self.provider_tags[index]
                    for prompt_index, prompt in enumerate(prompts):
                        if allowed is not None and prompt_index not in allowed:
                            continue  # promptfoo's prompt filters: not for this provider or test
                        case = self._case(
                            test, merged, prompt, prompt_index, variables, placed, spec,
                            name=_name(merged["description"] or _vars_label(variables), test.index, combo_index,
                                       len(combos), prompt_index, len(prompts), tag, len(test_providers)),
                            problem=vars_problem, identity=(len(prompts) > 1, id_tag),
                            code_vars=code_vars,
                        )  # fmt: skip
                        if isinstance(repeats, int) and repeats > 1:
                            case = dataclasses.replace(case, repeats=min(repeats, MAX_REPEAT))
                        yield case

    def _columns(self, merged: Mapping[str, Any], path: tuple[Any, ...]) -> list[tuple[int, frozenset[int] | None]]:
        """The suite providers a test runs on (promptfoo's `tests[].providers`), each with the
        prompts it runs (None: all) after `providers[].prompts` and the test's `prompts`."""
        ctx = self.ctx
        providers = _chosen(merged["providers"], self.provider_names, path + ("providers",), "provider", ctx)
        prompts = _chosen(merged["prompts"], self.prompt_labels, path + ("prompts",), "prompt", ctx)
        columns: list[tuple[int, frozenset[int] | None]] = []
        for index in range(len(self.providers)):
            if providers is not None and index not in providers:
                continue
            own = self.only[index] if index < len(self.only) else None
            both = [s for s in (own, prompts) if s is not None]
            columns.append((index, frozenset.intersection(*both) if both else None))
        return columns

    def _with_prefix(self, options: Mapping[str, Any], test: TestEntry) -> list[Prompt]:
        """promptfoo's `options.prefix` / `options.suffix` (the test's, else defaultTest's)."""
        own = test.data.get("options") or {}
        default = self.default.get("options") or {}
        prefix = own.get("prefix") or default.get("prefix") or ""
        suffix = own.get("suffix") or default.get("suffix") or ""
        if not prefix and not suffix:
            return self.prompts
        return [dataclasses.replace(p, template=f"{prefix}{p.template}{suffix}") for p in self.prompts]

    def _transformed_vars(self, variables: Mapping[str, Any], code: str, path: tuple[Any, ...]) -> dict[str, Any]:
        """promptfoo's `options.transformVars` (its `applyInputTransform`): `code` (inline JavaScript
        reading `vars` and `context`, or `file://x.js|py[:fn]`) runs once per test on its vars as
        written (defaultTest's merged in, before list vars expand and before `file://` values are
        read), and what it returns is laid over them. `context.uuid` is one UUID per test, fixed
        by the suite and the test's place (promptfoo draws a random one per run; a fixed one keeps
        the prompt, its cached answer and the case id the same from run to run)."""
        where = self.ctx.where(path + ("options", "transformVars"))
        context = {"prompt": {}, "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.info.id}#{format_path(path)}"))}
        try:
            result = run_transform(
                self.code.sandbox, code, dict(variables), context, self.ctx.base_dir,
                self.code.timeout_s, where, input_type="vars",
            )  # fmt: skip
        except ScriptFault as exc:
            raise CaseError(str(exc)) from None
        if not isinstance(result, Mapping):
            raise CaseError(f"{where}: Transform function did not return a valid object (got {result!r})")
        return {**variables, **{str(k): v for k, v in result.items()}}

    def _assertions(
        self, merged: dict[str, Any], test: TestEntry, path: tuple[Any, ...]
    ) -> tuple[str | None, list[Placed]]:
        """The test's assertions, placed; and a problem that makes its cases errors (an option or
        key this version does not run, a value file that cannot be read), or None."""
        ctx = self.ctx
        problem = None
        for key in ("transform", "postprocess", "transformVars"):
            try:
                ctx.check_code(merged["options"].get(key), path + ("options", key))
            except SuiteError as exc:
                problem = problem or str(exc)
        raw_asserts = merged["assert"]
        n_default = len(raw_asserts) - len(test.data.get("assert") or [])
        rubric = merged["options"].get("rubricPrompt")
        factuality = merged["options"].get("factuality")  # promptfoo's category scores (matchesFactuality)
        problems: list[str] = [] if problem is None else [problem]

        def one(raw: Mapping[str, Any], a_path: tuple[Any, ...]) -> Assertion:
            raw = dict(raw)
            kind = str(raw["type"]).removeprefix("not-")
            where = self._place(test, a_path)
            if kind in PROMPTFOO_TYPES and kind not in assertion_types():
                problems.append(
                    f"{where}: '{kind}' checks (a promptfoo assertion type) are not run by this version of pytest-promptopt"
                )
            if raw.get("rubricPrompt") is not None:
                raw["config"] = {"rubric_prompt": raw.pop("rubricPrompt"), **(raw.get("config") or {})}
            value = raw.get("value")
            try:
                if isinstance(value, str) and value.startswith("file://") and kind not in ("python", "javascript"):
                    raw["value"] = file_value(value, a_path, ctx)
                else:  # code (a check, its transform): checked here, read when it runs
                    ctx.check_code(value, a_path + ("value",))
                ctx.check_code(raw.get("transform"), a_path + ("transform",))
            except SuiteError as exc:
                problems.append(str(exc))
            if rubric is not None and is_model_graded(kind) and not (raw.get("config") or {}).get("rubric_prompt"):
                raw["config"] = {**(raw.get("config") or {}), "rubric_prompt": rubric}
            if factuality is not None and kind in ("factuality", "model-graded-factuality"):
                raw["config"] = {"factuality": factuality, **(raw.get("config") or {})}
            if kind == "assert-set" and not isinstance(raw.get("assert"), list):
                # promptfoo's validateAssertions refuses the config then
                raise ctx.error(a_path, "an assert-set needs an 'assert' list of the checks it groups")
            # an assert-set's checks are read as the test's own are (value files, rubric prompts)
            grouped = raw.pop("assert", None) if kind == "assert-set" else None
            children = tuple(one(child, a_path + ("assert", i)) for i, child in enumerate(grouped or []))
            built = build_assertion(raw, where, merged["options"].get("provider"))
            return dataclasses.replace(built, children=children) if children else built

        placed: list[Placed] = []
        for a_index, raw in enumerate(raw_asserts):
            a_path = (
                ("defaultTest", "assert", a_index) if a_index < n_default else path + ("assert", a_index - n_default)
            )
            placed.append((one(raw, a_path), a_path))
        return (problems[0] if problems else None), placed

    def _place(self, test: TestEntry, path: tuple[Any, ...]) -> str:
        """`file:line: path` of a place in a test; for a test read from a file, the row too."""
        if test.origin and path[: len(test.path)] == test.path:
            return f"{self.ctx.where(test.path)} ({test.origin}) {format_path(path[len(test.path) :])}"
        return self.ctx.where(path)

    def _case(
        self,
        test: TestEntry,
        merged: dict[str, Any],
        prompt: Prompt,
        prompt_index: int,
        variables: dict[str, Any],
        placed: list[Placed],
        spec: ModelSpec,
        *,
        name: str,
        problem: str | None,
        identity: tuple[bool, str | None],  # several prompts?; the provider's part of the id (case_id_tags)
        code_vars: dict[str, Any] | None = None,
    ) -> Case:
        ctx = self.ctx
        common = {
            "name": name,
            "test_index": test.index,
            "position": self.position,
            "description": merged["description"],
            "base_dir": ctx.base_dir,
            "several_prompts": identity[0],
            "provider_tag": identity[1],
            "transform": output_transform(merged["options"]),
            "script_timeout_s": self.code.timeout_s,
        }
        missing = Missing(test.path + ("vars",), "add it to this test's vars or to defaultTest.vars")
        params = model_options(merged["options"])  # the test's options that are model parameters

        def build(extra: Mapping[str, Any]) -> Case:
            if problem is not None:
                return failed_case(self.info, prompt, prompt_index, variables, spec, problem, **common)
            try:
                return build_case(
                    self.info, prompt, prompt_index, {**variables, **extra}, placed, spec, missing=missing,
                    threshold=merged["threshold"], env=ctx.env, sandbox=self.code.sandbox, filters=ctx.filters,
                    options=params, metadata=merged["metadata"],
                    code_vars=None if code_vars is None else {**code_vars, **extra}, **common,
                )  # fmt: skip
            except CaseError as exc:
                message = f"{self._place(test, exc.path)}: {exc.message}" if exc.path else exc.message
                return failed_case(self.info, prompt, prompt_index, variables, spec, message, **common)

        if self.sequence:
            identity = case_id(
                variables, [a.to_dict() for a, _ in placed], merged["threshold"], prompt_index, spec.display
            )
        else:
            case = build({})
            identity = case.case_id
        occurrence = self.seen.get(identity, 0)
        self.seen[identity] = occurrence + 1
        if occurrence:  # the same test written twice: each is its own case
            identity = f"{identity}-{occurrence}"
        self.position += 1
        if not self.sequence:
            return dataclasses.replace(case, case_id=identity) if occurrence else case
        store_as = merged["options"].get("storeOutputAs")
        conversation = None
        if "_conversation" in prompt.template and not merged["options"].get("disableConversationVar"):
            # promptfoo keys a conversation by the provider's label or id (not its transform)
            conversation = repr([spec.display, prompt_index, merged["metadata"].get("conversationId")])
        step = ChainStep(self.info.id, store_as, conversation, lambda extra: _keep(build(extra), identity))
        return Case(
            suite=self.info, case_id=identity, name=name, prompt=prompt, rendered_prompt="", prompt_index=prompt_index,
            test_index=test.index, vars=variables, assertions=(), model=spec, threshold=merged["threshold"],
            description=merged["description"], base_dir=ctx.base_dir, position=common["position"], chain=step,
        )  # fmt: skip


def _keep(case: Case, identity: str) -> Case:
    """A chained case, built when it runs, keeps the id it was collected with."""
    return dataclasses.replace(case, case_id=identity)


def _vars_label(variables: Mapping[str, Any]) -> str:
    """A short `k=v` label so cases without a description are still readable and -k selectable."""
    parts = [f"{k}={v}" for k, v in variables.items() if isinstance(v, (str, int, float))]
    return ", ".join(parts)[:60]


def _name(
    description: str, test: int, combo: int, combos: int, prompt: int, prompts: int, provider: str, providers: int
) -> str:
    # Brackets and '::' would confuse node ids: `name[params]` is how pytest reads them back.
    label = (
        re.sub(r"\s+", " ", description).strip()[:80].replace("::", ":").replace("[", "(").replace("]", ")") or "test"
    )
    ident = f"t{test}" + (f".{combo}" if combos > 1 else "") + (f"-p{prompt}" if prompts > 1 else "")
    if providers > 1:
        ident += f"-{provider}"
    return f"{label}[{ident}]"
