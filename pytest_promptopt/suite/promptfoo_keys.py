"""A promptfoo config's keys before validation: `$ref`s resolved, keys that only make sense inside
promptfoo's app (sharing, output files, red teaming, ...) taken out with one warning line each,
`commandLineOptions.envPath` files loaded, `env:` kept for templates, and `derivedMetrics` parsed.

promptfoo drops keys it does not know without a word; here a key promptfoo ignores is named in a
warning, a key this plugin does not run is a warning or an error saying so, and anything else
unknown is an error (the schema's), so a typo never passes silently.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any

from ..mathexpr import DerivedMetric, ExpressionError, parse
from ..nunjucks import js_string
from .document import Context
from .files import read_env_file
from .refs import dereference
from .schema import suite_schema

__all__ = ["check_env", "derived_metrics", "env_references", "map_form", "preprocess", "provider_entries"]

# Top-level keys promptfoo reads for its own app, or ignores: why each is left out here.
IGNORED = {
    "sharing": "promptfoo's web sharing; ignored",
    "outputPath": "promptfoo's output files; ignored (write reports with --promptopt-report or --promptopt-html)",
    "writeLatestResults": "promptfoo's results database; ignored",
    "tracing": "promptfoo's OpenTelemetry tracing; ignored",
    "tags": "labels for promptfoo's web viewer; ignored",
    "metadata": "metadata for promptfoo's web viewer; ignored",
    "evaluateOptions": "promptfoo's run options; ignored (use --promptopt-concurrency, --promptopt-repeat, ...)",
    "extensions": "promptfoo's extension hooks (beforeAll, afterEach, ...); they are not run here",
    "redteam": "promptfoo's red-team generation is not run here (a red-team run also renders its inject var "
    "differently); the prompts and tests run as a plain evaluation",
    "outputs": "not a promptfoo key (promptfoo ignores it); ignored",
    # A real config (autopipe) writes `output: {format: markdown, table: [...]}` as a report layout;
    # promptfoo 0.121.20 has no such key and ran it with no word. A block, not a misspelt outputPath.
    # A real config (LLM_Project) lists model-graded criteria under a top-level `metrics:`; promptfoo
    # 0.121.20 has no such key and ran the config with no word (its named metrics come from checks).
    "metrics": "not a promptfoo key (promptfoo ignores it; a named metric is an assertion's metric:, a computed "
    "one goes in derivedMetrics); ignored",
    "output": "not a promptfoo key (promptfoo ignores it; its results file is outputPath); ignored "
    "(write reports with --promptopt-report or --promptopt-html)",
    "filters": "not a promptfoo key: promptfoo ignores it (custom filters go in nunjucksFilters), so a template "
    "using these filters fails in promptfoo, and here",
    "assert": "promptfoo ignores a top-level assert, and so does this plugin; put the checks under "
    "defaultTest.assert to run them",
    "passRateThreshold": "not a promptfoo key (promptfoo reads PROMPTFOO_PASS_RATE_THRESHOLD from the environment); "
    "ignored: use gates: {pass_rate: ...}",
    # A real config (people-ops) writes `threshold: {passRate: 1.0}` as a CI gate; promptfoo's
    # config schema has no top-level threshold and drops it (0.121.20 ran it with no word).
    "threshold": "not a promptfoo key at the top level (promptfoo ignores it; a test's pass threshold goes in "
    "the test or in defaultTest.threshold); ignored: use gates: {pass_rate: ...} for a pass-rate gate",
    # A real config (spear) writes `thresholds: {leak_rate: 0.001, ...}` as CI gates; promptfoo 0.121.20
    # has no such key and ran the config with no word.
    "thresholds": "not a promptfoo key (promptfoo ignores it; a test's pass threshold goes in the test or in "
    "defaultTest.threshold); ignored: use gates: {pass_rate: ..., metrics: ...} for CI gates",
    "envPath": "promptfoo reads envPath under commandLineOptions only; ignored here too",
    "$schema": "a JSON Schema reference for editors; ignored",
    "version": "not a promptfoo key (promptfoo ignores it); ignored",
    "apiBaseUrl": "promptfoo's sharing server; ignored",
    "appBaseUrl": "promptfoo's sharing server; ignored",
    "vars": "not a promptfoo key at the top level (promptfoo ignores it); ignored: put vars every test shares "
    "under defaultTest.vars",
    "maxConcurrency": "not a promptfoo key at the top level (promptfoo ignores it; it reads "
    "evaluateOptions.maxConcurrency); ignored (use --promptopt-concurrency)",
}
# Keys of a prompt object promptfoo does not read (its PromptSchema drops them): why each is left out.
_PROMPT_IGNORED = {
    "provider": "not a key of a prompt in promptfoo (it ignores it; providers[].prompts picks prompts per "
    "provider); ignored",
    "display": "promptfoo's old name for label, read only by its results database; ignored (write label)",
    # A real config (Masques) writes `file: file://prompt.txt` beside id and label; promptfoo 0.121.20
    # drops the key and, as the prompt has no raw, sends its id as the prompt text.
    "file": "not a key of a prompt in promptfoo: it ignores it and, with no raw, sends the id as the prompt "
    "text; ignored here too (write raw: file://... to send the file)",
}
_TEST_IGNORED = {
    "storeOutputAs": "promptfoo reads storeOutputAs under options only (options.storeOutputAs); ignored here too",
}


def preprocess(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """`data` with references resolved and promptfoo's app keys taken out (warned)."""
    data = dereference(data, ctx.file, ctx)
    data.pop("assertionTemplates", None)  # only a target of `$ref`s
    for key in [k for k in data if str(k).startswith("x-")]:
        # Docker Compose's convention, common in real configs: a holder of YAML anchors (`&shared`)
        # that the rest of the file aliases. promptfoo ignores it silently, and so does this plugin.
        data.pop(key)
    for key in [k for k in data if str(k).startswith("_")]:
        # The other convention for anchor holders (`_http_base: &http`, a real config): no promptfoo
        # key starts with `_`, and promptfoo ignores unknown top-level keys; named, since it is not x-.
        data.pop(key)
        ctx.warn((key,), "not a promptfoo key (promptfoo ignores it); ignored, as a holder of YAML anchors")
    _provider_keys(data, ctx)
    if "defaultTest" in data and data["defaultTest"] is None:
        data.pop("defaultTest")
        ctx.warn(("defaultTest",), "left empty (null): promptfoo warns that the config is invalid and runs without it")
    for key, why in IGNORED.items():
        if key in data:
            data.pop(key)
            ctx.warn((key,), why)
    options = data.pop("commandLineOptions", None)
    if isinstance(options, dict):
        for key in options:
            if key != "envPath":
                ctx.warn(
                    ("commandLineOptions", key), "promptfoo's command-line defaults; ignored (use pytest's options)"
                )
        if options.get("envPath"):
            _load_env_files(options["envPath"], ctx)
    env = data.pop("env", None)
    if isinstance(env, dict):
        ctx.env = {str(k): v for k, v in env.items()}
        ctx.warn(
            ("env",),
            "the templates' `env` here; providers read the process environment, which a suite does not change "
            "(export API keys before running pytest, or load a file with commandLineOptions.envPath)",
        )
    elif env is not None:
        raise ctx.error(("env",), "env is a mapping of names to values")
    for path, test in _tests(data):
        prune_test(test, path, ctx)
    prompts = data.get("prompts")
    for index, prompt in enumerate(prompts if isinstance(prompts, list) else []):
        if isinstance(prompt, dict):
            if "file" in prompt and "raw" not in prompt and "id" not in prompt:
                # What is left once `file:` is dropped holds no text; the schema would show it
                # without the key the user wrote.
                raise ctx.error(
                    ("prompts", index),
                    "a prompt object needs raw or id; promptfoo does not read file: (write raw: file://...)",
                )
            for key in [k for k in _PROMPT_IGNORED if k in prompt]:
                prompt.pop(key)
                ctx.warn(("prompts", index, key), _PROMPT_IGNORED[key])
    return data


def provider_entries(data: Mapping[str, Any]) -> list[tuple[Any, tuple[Any, ...]]]:
    """The suite's providers as written (`providers:` or `targets:`, a list or one entry), each
    with its path."""
    key = "providers" if "providers" in data else "targets"
    raw = data.get(key)
    if raw is None:
        return []
    return [(entry, (key, index)) for index, entry in enumerate(raw)] if isinstance(raw, list) else [(raw, (key,))]


def map_form(entry: Any) -> tuple[str, Any] | None:
    """promptfoo's map form of a provider, `{openai:gpt-4o: {config: ...}}`: its key (the model)
    and the options object as written; None for any other form."""
    if isinstance(entry, Mapping) and "id" not in entry and len(entry) == 1:
        model, inner = next(iter(entry.items()))
        if isinstance(inner, Mapping):
            return str(model), inner
    return None


def _provider_keys(data: dict[str, Any], ctx: Context) -> None:
    """A provider's `config:` left empty (null: a block holding only comments, in a real config)
    is read as absent, as promptfoo's loadApiProvider reads it (it spreads the config, and null
    adds nothing); named in a warning, as the other keys left empty are. So is a `config:` written
    as a list (`config: [{model: ...}]`, in a real config): the spread makes its items keys `0`,
    `1`, ... that no provider reads, so promptfoo runs the provider as without a config."""
    for entry, where in provider_entries(data):
        mapped = map_form(entry)
        path, holder = (where + (mapped[0],), mapped[1]) if mapped is not None else (where, entry)
        if not isinstance(holder, dict):
            continue
        if "config" in holder and holder["config"] is None:
            holder.pop("config")
            ctx.warn(
                path + ("config",),
                "left empty (null): promptfoo runs the provider without a config; so does this plugin",
            )
        elif isinstance(holder.get("config"), list):
            holder.pop("config")
            ctx.warn(
                path + ("config",),
                "a list, not a mapping: promptfoo spreads it into keys 0, 1, ... that no provider reads "
                "and runs the provider without a config; so does this plugin (write the mapping itself: "
                "config: {model: ...})",
            )


def _tests(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    found: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    if isinstance(data.get("defaultTest"), dict):
        found.append((("defaultTest",), data["defaultTest"]))
    tests = data.get("tests")
    if isinstance(tests, list):
        found += [(("tests", i), t) for i, t in enumerate(tests) if isinstance(t, dict) and "path" not in t]
    for s_index, scenario in enumerate(data.get("scenarios") or []):
        if not isinstance(scenario, dict):
            continue
        for key in ("config", "tests"):
            entries = scenario.get(key)
            if isinstance(entries, list):
                here = ("scenarios", s_index, key)
                found += [(here + (i,), t) for i, t in enumerate(entries) if isinstance(t, dict)]
    return found


def prune_test(
    test: dict[str, Any], path: tuple[Any, ...], ctx: Context, origin: str = "", require_content: bool = True
) -> None:
    """Keys promptfoo does not read in a test are dropped with a warning (promptfoo drops them
    silently): a misplaced `storeOutputAs`, a `dataset:`, a misspelt key; and so are keys left
    empty (null), which promptfoo warns about and runs as absent. A test left with
    nothing promptfoo reads is refused as promptfoo refuses it (`require_content`: where its
    `readTest` checks; defaultTest and a scenario's `config` entries are merged into tests first)."""
    allowed = set(suite_schema()["$defs"]["test"]["properties"])
    where = f" ({origin})" if origin else ""
    written = [str(k) for k in test]
    for key in [k for k in test if k in allowed and test[k] is None]:
        # `assert:` with nothing under it: promptfoo's schema check only warns, and its merge
        # (`??`, `||`) reads null as absent, so a defaultTest's value still applies.
        test.pop(key)
        ctx.warn(
            path + (str(key),),
            f"left empty (null): promptfoo warns that the config is invalid and runs the test without it; "
            f"so does this plugin{where}",
        )
    for key in [k for k in test if k not in allowed]:
        test.pop(key)
        why = _TEST_IGNORED.get(str(key))
        if why is None:
            hint = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.75)
            why = (f"did you mean '{hint[0]}'? " if hint else "") + (
                f"not a key of a test (allowed: {', '.join(sorted(allowed))}); promptfoo ignores it, and so does this plugin"
            )
        ctx.warn(path + (str(key),), f"{why}{where}")
    _prune_assertions(test.get("assert"), path + ("assert",), ctx, where)
    _check_options(test.get("options"), path, ctx, where)
    merged_later = path[:1] == ("defaultTest",) or (path[:1] == ("scenarios",) and path[2:3] == ("config",))
    if require_content and not merged_later and not _has_content(test):
        # promptfoo's readTest refuses the whole config then ("Test case must contain ...").
        raise ctx.error(
            path,
            f"a test needs one of {', '.join(_TEST_CONTENT)} (promptfoo refuses the config otherwise){where}; "
            f"this one has {', '.join(written) or 'nothing'}",
        )


def _prune_assertions(checks: Any, path: tuple[Any, ...], ctx: Context, where: str) -> None:
    """Keys of an assertion promptfoo does not read are dropped with a warning: its AssertionSchema
    is a plain zod object, which strips unknown keys without a word (a real config, lead-ia, labels
    each check with `label:`; promptfoo 0.121.20 ran it). An assert-set's checks are pruned the
    same way; `assert` on any other check is such a key (promptfoo reads it on a set only)."""
    if not isinstance(checks, list):
        return
    allowed = set(suite_schema()["$defs"]["assertion"]["properties"])
    for index, check in enumerate(checks):
        if not isinstance(check, dict):
            continue
        if check.get("type") == "assert-set":
            _prune_assertions(check.get("assert"), path + (index, "assert"), ctx, where)
        elif "assert" in check:
            check.pop("assert")
            ctx.warn(
                path + (index, "assert"),
                f"only an assert-set reads 'assert' (the checks it groups); promptfoo ignores it on a "
                f"'{check.get('type')}' check, and so does this plugin{where}",
            )
        for key in [k for k in check if k not in allowed]:
            check.pop(key)
            hint = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.75)
            ctx.warn(
                path + (index, str(key)),
                (f"did you mean '{hint[0]}'? " if hint else "")
                + f"not a key of an assertion (allowed: {', '.join(sorted(allowed))}); promptfoo ignores it, "
                f"and so does this plugin{where}",
            )


def _check_options(options: Any, path: tuple[Any, ...], ctx: Context, where: str) -> None:
    """Any key of a test's `options` is valid (promptfoo hands the ones it does not read to the
    provider as model parameters: `expansion.model_options`); one that looks like a misspelt
    option is named in a warning, since it changes nothing but the model's call."""
    if not isinstance(options, dict):
        return
    known = sorted(suite_schema()["$defs"]["test"]["properties"]["options"]["properties"])
    for key in options:
        hint = [] if key in known else difflib.get_close_matches(str(key), known, n=1, cutoff=0.8)
        if hint:
            ctx.warn(
                path + ("options", str(key)),
                f"did you mean '{hint[0]}'? not an option promptfoo reads: it passes it to the model as a "
                f"parameter, and so does this plugin{where}",
            )
        elif key == "timeout":
            value = options["timeout"]
            read = test_option_timeout(value)
            as_ms = isinstance(value, (int, float)) and read != value
            ctx.warn(
                path + ("options", "timeout"),
                (f"{value} is read as milliseconds (as promptfoo's providers read it): a timeout of {read:g} s"
                 if as_ms else "the model's timeout in seconds here, as in a provider's config (promptfoo's "
                 "providers that read a timeout take milliseconds)")
                + f"; remove it to keep --promptopt-timeout{where}",
            )  # fmt: skip


# A test option `timeout` this large is promptfoo's milliseconds: real configs write 120000 there
# (its providers read milliseconds); a model here reads seconds, and would wait 33 hours.
MILLISECONDS_FROM = 1000


def test_option_timeout(value: Any) -> Any:
    """A test option `timeout` in seconds, as the model reads it (`MILLISECONDS_FROM`)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= MILLISECONDS_FROM:
        return value / 1000
    return value


_TEST_CONTENT = ("assert", "vars", "options", "metadata", "provider", "providerOutput", "threshold")


def _has_content(test: dict[str, Any]) -> bool:
    """What promptfoo's `readTest` asks of a test: one of `_TEST_CONTENT` that JavaScript holds
    true (an empty list or mapping counts), or a numeric threshold."""

    def truthy(value: Any) -> bool:
        return (
            value is not None
            and value is not False
            and value != ""
            and not (isinstance(value, (int, float)) and value == 0)
        )

    threshold = test.get("threshold")
    numeric = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
    return numeric or any(truthy(test.get(key)) for key in _TEST_CONTENT[:-1])


def _load_env_files(raw: Any, ctx: Context) -> None:
    """promptfoo's `commandLineOptions.envPath`: dotenv files loaded over the environment
    (`override: true`), resolved from the config's folder; a missing file is an error."""
    paths = [raw] if isinstance(raw, str) else raw
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ctx.error(("commandLineOptions", "envPath"), "envPath is a path or a list of paths")
    for index, name in enumerate(paths):
        where = ("commandLineOptions", "envPath") + ((index,) if isinstance(raw, list) else ())
        file = ctx.resolve_file(name, where, "env file")
        for key, value in read_env_file(file, ctx, where).items():
            os.environ[key] = value


def derived_metrics(raw: Any, known: set[str] | None, ctx: Context) -> tuple[DerivedMetric, ...]:
    """promptfoo's `derivedMetrics: [{name, value}]`, each expression parsed now. A name it reads
    that no assertion of the suite reports (nor an earlier derived metric) is warned about:
    promptfoo evaluates such an expression to 0, and so does this plugin. `known` is None when
    the suite's code checks may report any name (their namedScores): nothing is warned then."""
    if raw is None:
        return ()
    out = []
    seen = set(known or ()) | {"__count"}
    for index, entry in enumerate(raw):
        path = ("derivedMetrics", index)
        if not isinstance(entry.get("value"), str):
            raise ctx.error(
                path + ("value",), "a derived metric here is a mathjs expression string (functions are not supported)"
            )
        try:
            expression = parse(entry["value"])
        except ExpressionError as exc:
            raise ctx.error(
                path + ("value",),
                f"{exc}; supported: numbers, metric names, + - * / % ^, (), "
                "abs sqrt min max round floor ceil exp log log10 pow mod mean sum",
            ) from None
        unknown = sorted(expression.names - seen)
        if unknown and known is not None:
            ctx.warn(
                path + ("value",),
                f"{', '.join(unknown)}: no assertion of this suite reports such a metric; promptfoo then "
                f"evaluates '{entry['name']}' to 0, and so does this plugin",
            )
        name = js_string(entry["name"])
        seen.add(name)
        out.append(DerivedMetric(name, entry["value"]))
    return tuple(out)


def check_env(templates: list[str], ctx: Context) -> None:
    """A warning for each `env.X` the templates read that the suite's `env:` does not give."""
    for name in sorted(env_references(templates) - set(ctx.env)):
        ctx.warn(
            ("prompts",),
            f"a prompt reads env.{name}: templates see only the suite's env: values, not the process environment "
            f"(it would put secrets into prompts and reports); env.{name} renders empty: add it to env:",
        )


def env_references(templates: list[str]) -> set[str]:
    """The `env.X` / `env['X']` names templates read."""
    names: set[str] = set()
    for template in templates:
        for match in re.finditer(r"\benv\.(\w+)|\benv\[['\"]([^'\"]+)['\"]\]", template):
            names.add(match.group(1) or match.group(2))
    return names
