"""Suite files: what they become, and the clear errors bad ones give (file, line, path, fix)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pytest_promptopt import Prompt, TemplateError
from pytest_promptopt.models.specs import ModelSpec
from pytest_promptopt.suite.loader import load_suite
from pytest_promptopt.suite.model import SuiteError
from pytest_promptopt.suite.sources import assertion_from_string

DEFAULT = ModelSpec("echo")


def write(tmp_path: Path, text: str, name: str = "s.promptopt.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def load(tmp_path: Path, text: str, name: str = "s.promptopt.yaml"):
    path = write(tmp_path, text, name)
    return load_suite(path, name, DEFAULT)


def error(tmp_path: Path, text: str, name: str = "s.promptopt.yaml") -> SuiteError:
    with pytest.raises(SuiteError) as info:
        load(tmp_path, text, name)
    return info.value


def test_cases_are_prompts_times_tests_with_default_test_merged(tmp_path):
    (tmp_path / "p.txt").write_text("File prompt for {{x}}\n---\nSecond {{x}}\n")
    suite = load(
        tmp_path,
        """
        description: demo
        prompts: ["Inline {{x}} {{y}}", "file://p.txt"]
        defaultTest:
          vars: {y: default-y}
          threshold: 0.5
          assert: [{type: contains, value: "{{x}}", metric: m}]
        tests:
          - vars: {x: one}
            assert: [{type: icontains, value: ONE}]
          - vars: {x: two, y: own-y}
            threshold: 0.9
            options: {disableDefaultAsserts: true}
        gates: {pass_rate: 0.8, m: {min: 0.5}}
        """,
    )
    assert suite.info.name == "demo" and [g.describe() for g in suite.info.gates] == ["pass_rate >= 0.8", "m >= 0.5"]
    assert len(suite.cases) == 6  # 3 prompts (the file splits on ---) x 2 tests
    first = suite.cases[0]
    assert first.rendered_prompt == "Inline one default-y"
    assert [a.label for a in first.assertions] == ["contains", "icontains"]  # defaults first
    assert first.assertions[0].value == "one"  # rendered with the case vars
    assert first.threshold == 0.5
    assert [c.rendered_prompt for c in suite.cases[:3]] == ["Inline one default-y", "File prompt for one", "Second one"]
    second = suite.cases[3]
    assert second.vars == {"x": "two", "y": "own-y"} and second.threshold == 0.9 and second.assertions == ()
    assert (second.prompt_index, second.test_index) == (0, 1)


def test_list_vars_expand_and_case_ids_survive_reordering(tmp_path):
    text = """
        prompts: ["{{q}} in {{lang}}"]
        tests:
          - vars: {q: hello, lang: [French, German]}
          - vars: {q: bye, lang: Spanish}
        """
    ids = {c.rendered_prompt: c.case_id for c in load(tmp_path, text).cases}
    assert list(ids) == ["hello in French", "hello in German", "bye in Spanish"]
    reordered = """
        prompts: ["{{q}} in {{lang}}"]
        tests:
          - vars: {q: bye, lang: Spanish}
          - vars: {q: hello, lang: [French, German]}
        """
    assert {c.rendered_prompt: c.case_id for c in load(tmp_path, reordered).cases} == ids
    # the id describes the case, not the prompt text: a prompt change keeps the ids
    changed = reordered.replace("{{q}} in {{lang}}", "Say {{q}} in {{lang}}")
    assert sorted(c.case_id for c in load(tmp_path, changed).cases) == sorted(ids.values())


def test_tests_from_csv_with_expected_columns(tmp_path):
    (tmp_path / "cases.csv").write_text(
        "question,__expected,__expected2,__description,__metric\n"
        "Capital of France?,contains: Paris,not-icontains: sorry,france,acc\n"
        "2+2?,4,,math,\n"
    )
    suite = load(tmp_path, "prompts: ['{{question}}']\ntests: file://cases.csv\n")
    france, math = suite.cases
    assert france.vars == {"question": "Capital of France?"} and france.description == "france"
    assert [(a.label, a.value, a.metric) for a in france.assertions] == [
        ("contains", "Paris", "acc"),
        ("not-icontains", "sorry", "acc"),
    ]
    assert [(a.label, a.value) for a in math.assertions] == [("equals", "4")]


def test_tests_from_jsonl_and_var_files(tmp_path):
    (tmp_path / "cases.jsonl").write_text(
        '{"vars": {"q": "a"}, "assert": [{"type": "equals", "value": "a"}]}\n{"q": "b"}\n'
    )
    (tmp_path / "long.txt").write_text("a long document\n")
    suite = load(
        tmp_path, "prompts: ['{{q}}|{{doc}}']\ndefaultTest: {vars: {doc: file://long.txt}}\ntests: file://cases.jsonl\n"
    )
    assert [c.rendered_prompt for c in suite.cases] == ["a|a long document", "b|a long document"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("contains: Paris", {"type": "contains", "value": "Paris"}),
        ("not-icontains:sorry", {"type": "not-icontains", "value": "sorry"}),
        ("contains-any: a, b", {"type": "contains-any", "value": ["a", "b"]}),
        ("levenshtein(3): kitten", {"type": "levenshtein", "value": "kitten", "threshold": 3.0}),
        ("is-json", {"type": "is-json"}),
        ("python: checks:fn", {"type": "python", "value": "checks:fn"}),
        ("Paris", {"type": "equals", "value": "Paris"}),
        ("unknown-type: x", {"type": "equals", "value": "unknown-type: x"}),
    ],
)
def test_csv_expected_strings(text, expected):
    assert assertion_from_string(text) == expected


def test_var_values_are_data_never_templates(tmp_path):
    suite = load(
        tmp_path,
        """
        prompts: ["Summarise: {{ text }}"]
        tests: [{vars: {text: "{{ 7*7 }} {% for x in range(3) %}x{% endfor %} {{ ''.__class__ }}"}}]
        """,
    )
    assert (
        suite.cases[0].rendered_prompt == "Summarise: {{ 7*7 }} {% for x in range(3) %}x{% endfor %} {{ ''.__class__ }}"
    )


def test_templates_are_sandboxed(tmp_path):
    suite = load(
        tmp_path,
        """
        prompts: ["{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ ''.__class__ }}"]
        tests: [{vars: {}}]
        """,
    )
    # the prompt's cases are errors (nothing rendered, no model call); an unsafe attribute never renders empty
    assert [c.error for c in suite.cases] == [
        "s.promptopt.yaml:1: prompts[0]: template tried an unsafe operation: access to attribute '__class__' of "
        "'str' object is unsafe. in prompts[0] ({{ ''.__class__.__mro__[1].__subclasses__() }})",
        "s.promptopt.yaml:1: prompts[1]: template tried an unsafe operation: access to attribute '__class__' of "
        "'str' object is unsafe. in prompts[1] ({{ ''.__class__ }})",
    ]


# ------------------------------------------------------------------------------------ errors


def test_invalid_yaml_names_the_line(tmp_path):
    err = error(tmp_path, "prompts: ['x'\ntests: []\n")
    assert err.line == 2 and "invalid YAML" in str(err) and str(err).startswith("s.promptopt.yaml:2:")


def test_invalid_json_names_the_line(tmp_path):
    err = error(tmp_path, '{\n  "prompts": ["x"],\n  "tests": [}\n', name="s.promptopt.json")
    assert err.line == 3 and "invalid JSON" in str(err)


def test_wrong_type_names_the_path_and_line(tmp_path):
    err = error(
        tmp_path,
        """
        prompts: ["{{q}}"]
        tests:
          - vars: {q: a}
          - vars: {q: b}
            threshold: high
        """,
    )
    assert (err.path, err.line) == ("tests[1].threshold", 5)
    assert "expected number" in err.message


def test_unknown_key_in_a_test_is_ignored_with_a_warning_naming_the_nearest(tmp_path):
    # promptfoo drops a key it does not know in a test without a word; here it is a warning line
    suite = load(
        tmp_path,
        """
        prompts: ["{{q}}"]
        tests:
          - vars: {q: a}
            asert: [{type: equals, value: a}]
        """,
    )
    assert suite.cases[0].assertions == ()
    assert tuple(map(str, suite.warnings)) == (
        "s.promptopt.yaml:4: tests[0].asert: did you mean 'assert'? not a key of a test (allowed: assert, description, "
        "metadata, options, prompts, provider, providers, threshold, vars); promptfoo ignores it, and so does this plugin",
    )


def test_unknown_top_level_key_is_an_error_and_promptfoo_app_keys_are_warned(tmp_path):
    err = error(tmp_path, "prompts: ['x']\nscenaros: []\n")
    assert err.path == "scenaros" and "did you mean 'scenarios'?" in err.message
    suite = load(tmp_path, "prompts: ['x']\nextensions: [file://hooks.py:beforeAll]\nsharing: false\n")
    assert [(w.line, w.place) for w in suite.warnings] == [(3, "sharing"), (2, "extensions")]
    assert tuple(map(str, suite.warnings)) == (
        "s.promptopt.yaml:3: sharing: promptfoo's web sharing; ignored",
        "s.promptopt.yaml:2: extensions: promptfoo's extension hooks (beforeAll, afterEach, ...); they are not run here",
    )


def test_unknown_assertion_type_errors_its_case_and_suggests_the_nearest(tmp_path):
    # promptfoo: "Unknown assertion type" makes that case an error; the other cases run
    suite = load(
        tmp_path,
        """
        prompts: ["{{q}}"]
        tests:
          - vars: {q: a}
            assert:
              - type: not-icontain
                value: x
          - vars: {q: b}
          - vars: {q: c}
            assert: [{type: is-xml}]
        """,
    )
    first, second, third = suite.cases
    assert first.error.startswith(
        "s.promptopt.yaml:5: tests[0].assert[0]: unknown assertion type 'icontain'; did you mean 'icontains'?"
    )
    assert (second.error, second.rendered_prompt) == (None, "b")
    assert third.error == (
        "s.promptopt.yaml:9: tests[2].assert[0]: 'is-xml' checks (a promptfoo assertion type) are not run by this "
        "version of pytest-promptopt"
    )


def test_missing_var_is_named_in_the_error_of_its_case(tmp_path):
    suite = load(
        tmp_path,
        """
        prompts: ["What is the capital of {{ country }}?"]
        tests:
          - vars: {contry: France}
          - vars: {country: Japan}
        """,
    )
    assert suite.cases[0].error == (
        "s.promptopt.yaml:3: tests[0].vars: missing variable 'country' (the template uses {{ country }}) in "
        "prompts[0] (What is the capital of {{ country }}?); add it to this test's vars or to defaultTest.vars"
    )
    assert suite.cases[1].rendered_prompt == "What is the capital of Japan?"


def test_a_variable_written_as_optional_may_be_missing_as_in_promptfoo(tmp_path):
    """Real configs write optional variables the ways promptfoo (Nunjucks) allows; promptfoo renders
    a missing one as false / nothing, and so does a suite here. A bare `{{ x }}`, an `else`
    branch, `not x` and `x or y` do not guard it: those cases are errors, as before."""
    optional = [
        ("A{% if extra %} {{ extra }}{% endif %} {{ q }}", "A hi"),
        ("A{% if extra is defined %} {{ extra.name }}{% endif %} {{ q }}", "A hi"),
        ("A {{ extra | default('none') }} {{ q }}", "A none hi"),
        ("A {{ extra if extra else 'x' }} {{ q }}", "A x hi"),
        ("A{% if extra and more %} {{ extra }}{{ more }}{% endif %} {{ q }}", "A hi"),
        ("A{% if extra is defined and extra.name %} {{ extra.name }}{% endif %} {{ q }}", "A hi"),
        ("A{% if extra is not defined %} none{% else %} {{ extra }}{% endif %} {{ q }}", "A none hi"),
        ("A {{ extra.name | default('n') }} {{ q }}", "A n hi"),
        # promptfoo 0.121.20 renders this `Hello friend` without the var (recorded with echo)
        ("{% set extra = extra | default('friend') %}A {{ extra }} {{ q }}", "A friend hi"),
        (
            "{% if q == 'no' %}N{% else %}{% set extra = extra | default('f') %}A {{ extra }}{% endif %} {{ q }}",
            "A f hi",
        ),
    ]
    required = [
        "A {{ extra }} {{ q }}",
        "A {{ extra }}{% set extra = extra | default('x') %} {{ q }}",  # read before it is set
        "A{% if q %}{% else %}{{ extra }}{% endif %}",
        "A{% if not extra %}{{ extra }}{% endif %} {{ q }}",
        "A{% if extra or q %}{{ extra }}{% endif %}",
    ]
    prompts = [template for template, _ in optional] + required
    suite = load(tmp_path, f"prompts: {json.dumps(prompts)}\ntests: [{{vars: {{q: hi}}}}]\n")
    for case, (_, rendered) in zip(suite.cases, optional):
        assert (case.error, case.rendered_prompt) == (None, rendered)
    for case in suite.cases[len(optional) :]:
        assert "missing variable 'extra'" in (case.error or ""), case.rendered_prompt
    given = load(tmp_path, f"prompts: {json.dumps(prompts[:1])}\ntests: [{{vars: {{q: hi, extra: X}}}}]\n")
    assert given.cases[0].rendered_prompt == "A X hi"
    # A fuzz block and a dataset check their prompts' variables at load the same way.
    assert Prompt(prompts[0]).needed_variables(promptfoo=True) == {"q"}
    assert Prompt(prompts[0]).variables == {"extra", "q"}  # a Python test's Prompt renders strictly
    with pytest.raises(TemplateError, match="missing variable 'extra'"):
        Prompt(prompts[0]).render(q="hi")


def test_a_providers_prompt_filter_runs_only_the_prompts_it_names(tmp_path):
    """promptfoo's `providers[].prompts` (readProviderPromptMap, isPromptAllowed in 0.121.20): a
    label, `group:*`, or `group` for `group:...` labels; an empty list runs none; without it, all."""
    suite = load(
        tmp_path,
        """
        prompts:
          - {raw: "A {{q}}", label: a}
          - {raw: "G1 {{q}}", label: "g:1"}
          - {raw: "G2 {{q}}", label: "g:2"}
        providers:
          - {id: echo, label: only-a, prompts: [a]}
          - {id: echo, label: wildcard, prompts: ["g:*"]}
          - {id: echo, label: group, prompts: [g]}
          - {id: echo, label: none, prompts: []}
          - {id: echo, label: all}
        tests:
          - vars: {q: x}
            provider: {id: echo, prompts: [a]}
          - vars: {q: y}
        """,
    )
    assert [(c.model.label, c.rendered_prompt) for c in suite.cases if c.name.startswith("q=y")] == [
        ("only-a", "A y"),
        ("wildcard", "G1 y"),
        ("wildcard", "G2 y"),
        ("group", "G1 y"),
        ("group", "G2 y"),
        ("all", "A y"),
        ("all", "G1 y"),
        ("all", "G2 y"),
    ]
    # A test's own provider runs the prompts any of the suite's providers runs (all of them here);
    # a filter on it is named in a warning.
    assert [c.rendered_prompt for c in suite.cases if c.name.startswith("q=x")] == ["A x", "G1 x", "G2 x"]
    assert any(
        "tests[0].provider.prompts" in str(w) and "a prompt filter on a test's provider" in str(w)
        for w in suite.warnings
    )
    fuzzed = error(
        tmp_path,
        """
        prompts: ["A {{q}}"]
        providers: [{id: echo, prompts: [x]}]
        tests: [{vars: {q: a}}]
        fuzz: {count: 2}
        """,
    )
    assert "providers[].prompts (which prompts run on a provider) is not supported in a suite with fuzz" in str(fuzzed)


def test_prompt_filters_match_promptfoos_labels_of_prompt_files(tmp_path):
    """An unlabelled prompt file is `path: text` in promptfoo (the path from the config's folder),
    so a filter names it by its path, not by `file://...` or its bare file name. Recorded with
    promptfoo 0.121.20 (`promptfoo eval` on this config, echo provider): by-path runs say.txt,
    by-glob multi.txt's two prompts and mark.md, by-inline and by-json theirs, the others nothing."""
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "say.txt").write_text("Say {{q}}\n")
    (tmp_path / "prompts" / "multi.txt").write_text("One {{q}}\n---\nTwo {{q}}\n")
    (tmp_path / "prompts" / "chat.json").write_text('[{"role":"user","content":"Chat {{q}}"}]')
    (tmp_path / "prompts" / "mark.md").write_text("Mark {{q}}\n")
    suite = load(
        tmp_path,
        """
        prompts:
          - file://prompts/say.txt
          - file://prompts/multi.txt
          - file://prompts/chat.json
          - file://prompts/mark.md
          - "Inline {{q}} prompt"
        providers:
          - {id: echo, label: by-path, prompts: [prompts/say.txt]}
          - {id: echo, label: by-file-url, prompts: ["file://prompts/say.txt"]}
          - {id: echo, label: by-name, prompts: [say.txt]}
          - {id: echo, label: by-glob, prompts: ["prompts/m*"]}
          - {id: echo, label: by-inline, prompts: ["Inline {{q}} prompt"]}
          - {id: echo, label: by-json, prompts: [prompts/chat.json]}
        tests:
          - vars: {q: x}
        """,
    )
    assert sorted((c.model.label, c.prompt_index) for c in suite.cases) == [
        ("by-glob", 1),
        ("by-glob", 2),
        ("by-glob", 4),
        ("by-inline", 5),
        ("by-json", 3),
        ("by-path", 0),
    ]
    warned = [str(w) for w in suite.warnings]
    assert any("'file://prompts/say.txt' matches no prompt" in w for w in warned), warned
    assert any("'say.txt' matches no prompt" in w for w in warned), warned
    # The labels shown here stay short: the file's name.
    assert {c.prompt.label for c in suite.cases if c.prompt_index == 0} == {"say.txt"}


def test_prompt_filters_match_an_inline_prompts_id_as_promptfoo_does(tmp_path):
    """promptfoo keeps an inline prompt's `id` (processString) and its filters match it exactly,
    as `id*` and as `id` for `id:...`; a prompt file's entry loses it. Recorded with promptfoo
    0.121.20 (`promptfoo eval` on this config, echo provider): by-id, by-id-labelled, by-label,
    by-saylabel, by-id-prefix and by-id-star run one prompt each, the two filters naming the file
    run nothing."""
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "say.txt").write_text("Say {{q}}\n")
    suite = load(
        tmp_path,
        """
        prompts:
          - {id: greet, raw: "Hi {{q}}"}
          - {id: farewell, raw: "Bye {{q}}", label: bye-label}
          - {id: file://prompts/say.txt, label: saylabel}
          - {id: "group:one", raw: "G1 {{q}}"}
        providers:
          - {id: echo, label: by-id, prompts: [greet]}
          - {id: echo, label: by-id-labelled, prompts: [farewell]}
          - {id: echo, label: by-label, prompts: [bye-label]}
          - {id: echo, label: by-file-id, prompts: ["file://prompts/say.txt"]}
          - {id: echo, label: by-path, prompts: [prompts/say.txt]}
          - {id: echo, label: by-saylabel, prompts: [saylabel]}
          - {id: echo, label: by-id-prefix, prompts: ["group"]}
          - {id: echo, label: by-id-star, prompts: ["gre*"]}
        tests:
          - vars: {q: x}
        """,
    )
    assert [(c.model.label, c.rendered_prompt) for c in suite.cases] == [
        ("by-id", "Hi x"),
        ("by-id-labelled", "Bye x"),
        ("by-label", "Bye x"),
        ("by-saylabel", "Say x"),
        ("by-id-prefix", "G1 x"),
        ("by-id-star", "Hi x"),
    ]
    # promptfoo refuses a prompt object with neither raw nor label ("Invalid prompt: ... Prompts
    # must be either a string or an object with a 'raw' or 'label' string property").
    refused = error(tmp_path, "prompts: [{id: file://prompts/say.txt}]\nproviders: [echo]\ntests: [{vars: {q: x}}]\n")
    assert "prompts[0]: a prompt object needs `raw`" in str(refused) and "as in promptfoo" in str(refused)


def test_transform_vars_runs_once_per_test_before_list_vars_expand_and_a_failure_is_its_cases_error(tmp_path):
    """promptfoo's applyInputTransform runs on a test's vars before its lists expand (recorded
    with promptfoo 0.121.20: `{question: [a, b]}` with `{ extra: Array.isArray(vars.question) ?
    "list" : "scalar" }` gave `list` on both cases). A transform that throws makes that test's
    cases errors (promptfoo stops the whole eval); the other tests run. Its context.uuid is
    fixed per test, so the prompt and the case id are the same at every load."""
    text = """
        prompts: ["{{question}} {{extra}}"]
        providers: [echo]
        tests:
          - vars: {question: [a, b]}
            options:
              transformVars: '{ extra: Array.isArray(vars.question) ? "list" : "scalar" }'
          - vars: {question: boom}
            options:
              transformVars: 'vars.nothing.here'
          - vars: {question: id}
            options:
              transformVars: '{ extra: context.uuid }'
        """
    suite = load(tmp_path, text)
    assert [c.rendered_prompt for c in suite.cases[:2]] == ["a list", "b list"]
    failed = suite.cases[2]
    assert failed.error and "Transform failed ([inline transform]: vars.nothing.here)" in failed.error
    assert "tests[1].options.transformVars" in failed.error
    again = load(tmp_path, text)
    assert suite.cases[3].rendered_prompt == again.cases[3].rendered_prompt
    assert suite.cases[3].case_id == again.cases[3].case_id
    assert len(suite.cases[3].rendered_prompt) == len("id ") + 36
    for block in ("fuzz: {count: 2}", "dataset: {path: rows.csv}"):
        refused = error(
            tmp_path,
            "prompts: ['{{q}}']\nproviders: [echo]\ndefaultTest: {options: {transformVars: '{}'}}\n"
            + ("tests: [{vars: {q: a}}]\n" if "fuzz" in block else "")
            + block
            + "\n",
        )
        assert "defaultTest.options.transformVars: var transforms are run for a suite's tests" in str(refused)


def test_a_globs_prompts_have_no_label_or_config_as_in_promptfoo(tmp_path):
    """promptfoo reads each file a glob matches as `{raw: path}`: the entry's label and config are
    dropped (recorded with 0.121.20: labels `prompts/g1.txt: G1 {{q}}`, no config)."""
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "g1.txt").write_text("G1 {{q}}\n")
    (tmp_path / "prompts" / "g2.txt").write_text("G2 {{q}}\n")
    suite = load(
        tmp_path,
        """
        prompts: [{raw: "file://prompts/g*.txt", label: G, config: {temperature: 0.3}}]
        providers:
          - {id: echo, label: by-label, prompts: [G]}
          - {id: echo, label: by-path, prompts: [prompts/g1.txt]}
        tests: [{vars: {q: x}}]
        """,
    )
    assert [(c.model.label, c.rendered_prompt, c.model.params) for c in suite.cases] == [("by-path", "G1 x", {})]
    assert {c.prompt.label for c in suite.cases} == {"g1.txt"}
    warned = [str(w) for w in suite.warnings]
    assert any("prompts[0]: promptfoo reads each file of a glob" in w for w in warned), warned
    assert any("'G' matches no prompt" in w for w in warned), warned


DUPLICATE_PROVIDERS = """
prompts:
  - {raw: "A {{q}}", label: a}
  - {raw: "B {{q}}", label: b}
  - {raw: "C {{q}}", label: c}
providers:
  - {id: echo, prompts: [a]}
  - {id: echo, prompts: [b]}
  - {id: echo, label: L1, prompts: [a]}
  - echo
  - echo:
      prompts: [c]
      label: mapped
tests:
  - vars: {q: x}
"""


def test_providers_sharing_an_id_and_the_map_form_run_the_prompts_promptfoo_runs(tmp_path):
    """promptfoo keys provider filters by id and label (`readProviderPromptMap`) and looks each
    provider's up by its label, else its id: the last filter for `echo` (the map form's) applies
    to every unlabelled echo, and the map form registers no label, so `mapped` runs every
    prompt. Recorded with promptfoo 0.121.20 on this config: echo c, echo c, L1 a, echo c,
    mapped a b c. Each difference from the filter as written is a warning."""
    suite = load(tmp_path, DUPLICATE_PROVIDERS)
    assert [(c.model.display, c.rendered_prompt) for c in suite.cases] == [
        ("echo", "C x"),
        ("echo", "C x"),
        ("L1", "A x"),
        ("echo", "C x"),
        ("mapped", "A x"),
        ("mapped", "B x"),
        ("mapped", "C x"),
    ]
    # Providers that show the same name get their index in the items' names, which stay unique.
    names = [c.name for c in suite.cases]
    assert len(set(names)) == len(names) and "q=x[t0-p2-echo#1]" in names, names
    warned = [str(w) for w in suite.warnings]
    assert sum("the last one's filter wins" in w for w in warned) == 3, warned
    assert any("providers[4].echo.prompts: promptfoo ignores this filter" in w for w in warned), warned


def test_a_provider_written_twice_runs_once_as_in_promptfoo(tmp_path):
    """promptfoo drops a provider written exactly as an earlier one (`combineConfigs`), before it
    keys the filters: recorded with 0.121.20 on this config, three echo columns, each running b."""
    suite = load(
        tmp_path,
        """
        prompts: [{raw: "A {{q}}", label: a}, {raw: "B {{q}}", label: b}]
        targets:
          - {id: echo, prompts: [a]}
          - {id: echo, prompts: [b]}
          - {id: echo, prompts: [a]}
          - echo
          - echo
        tests: [{vars: {q: x}}]
        """,
    )
    assert [c.rendered_prompt for c in suite.cases] == ["B x", "B x", "B x"]
    warned = [str(w) for w in suite.warnings]
    assert any("targets[2]: the same provider as targets[0]" in w for w in warned), warned
    assert any("targets[4]: the same provider as targets[3]" in w for w in warned), warned


def test_providers_that_show_one_name_have_distinct_items_in_fuzz_and_dataset_suites(tmp_path):
    twins = "providers: [{id: echo, config: {n: 1}}, {id: echo, config: {n: 2}}]\n"
    fuzz = "fuzz: {count: 2, assert: [{type: contains, value: x}]}\n"
    fuzzed = load(tmp_path, "prompts: ['{{q}}']\n" + twins + "tests: [{vars: {q: x}}]\n" + fuzz)
    names = [c.name for c in fuzzed.cases]
    assert len(set(names)) == len(names) == 6 and any("echo#1" in n for n in names), names
    (tmp_path / "rows.csv").write_text("q\na\nb\n")
    table = load(tmp_path, "prompts: ['{{q}}']\n" + twins + "dataset: {path: rows.csv}\n")
    assert table.dataset is not None
    assert [part.name for part in table.dataset.slices] == ["dataset[echo#0]", "dataset[echo#1]"]


def test_a_provider_object_error_names_its_field(tmp_path):
    def problem(provider: str) -> str:
        return str(
            error(tmp_path, f"prompts: ['{{{{q}}}}']\nproviders:\n  - {provider}\ntests: [{{vars: {{q: x}}}}]\n")
        )

    assert "providers[0].lable: unknown key 'lable'; did you mean 'label'?" in problem("{id: echo, lable: x}")
    assert "providers[0].label: expected string, got int 5" in problem("{id: echo, label: 5}")
    assert "providers[0]: 'id' is required here" in problem("{label: x}")
    assert "providers[0].echo.confg: unknown key 'confg'; did you mean 'config'?" in problem("{echo: {confg: 1}}")
    assert "providers[0].echo: expected object" in problem("{echo: 3}")


def test_a_tests_own_provider_may_be_written_in_the_map_form(tmp_path):
    suite = load(
        tmp_path, "prompts: ['{{q}}']\nproviders: [echo]\ntests: [{vars: {q: x}, provider: {echo: {label: own}}}]\n"
    )
    [case] = suite.cases
    assert (case.model.id, case.model.label, case.error) == ("echo", "own", None)


def test_the_map_form_of_a_provider_is_its_options(tmp_path):
    suite = load(
        tmp_path,
        """
        prompts: ["{{q}}"]
        providers:
          - echo: {config: {temperature: 0.5}, label: warm}
        tests: [{vars: {q: x}}]
        """,
    )
    [case] = suite.cases
    assert (case.model.id, case.model.label, case.model.params) == ("echo", "warm", {"temperature": 0.5})
    wrong = error(tmp_path, "prompts: ['{{q}}']\nproviders:\n  - echo: {confg: {}}\ntests: [{vars: {q: x}}]\n")
    assert "confg" in str(wrong) and ":3:" in str(wrong), str(wrong)


def test_a_tests_prompts_and_providers_filters_run_it_where_promptfoo_does(tmp_path):
    """promptfoo's `tests[].prompts` and `tests[].providers` (isAllowedPrompt, isProviderAllowed:
    labels and ids, `x*`, `x` for `x:...`), also from defaultTest; a test's own provider takes
    the places of the suite's, with the prompts they run."""
    suite = load(
        tmp_path,
        """
        prompts:
          - {raw: "A {{q}}", label: a}
          - {raw: "B {{q}}", label: b}
        providers:
          - {id: echo, label: "one:x"}
          - {id: echo, label: two, prompts: [b]}
        defaultTest: {prompts: [a, b]}
        tests:
          - vars: {q: p}
            prompts: [b]
          - vars: {q: r}
            providers: ["one"]
          - vars: {q: s}
            provider: echo
            providers: [two]
        """,
    )
    got = [(c.name.split("[")[0], c.model.label or c.model.id, c.rendered_prompt) for c in suite.cases]
    assert got == [
        ("q=p", "one:x", "B p"),
        ("q=p", "two", "B p"),
        ("q=r", "one:x", "A r"),
        ("q=r", "one:x", "B r"),
        ("q=s", "echo", "B s"),
    ]


def test_a_filter_naming_no_prompt_or_provider_is_refused_as_promptfoo_refuses_the_config(tmp_path):
    # promptfoo 0.121.20 stops: 'Test #2 references prompt "nope" which does not exist' (and
    # '... references provider "nope" ...'); the test would otherwise run nothing, silently
    head = "prompts: [{raw: 'A {{q}}', label: a}]\nproviders: [{id: echo, label: one}]\n"
    for key, what in (("prompts", "prompt"), ("providers", "provider")):
        refused = error(tmp_path, head + f"tests:\n  - vars: {{q: p}}\n  - vars: {{q: t}}\n    {key}: [nope]\n")
        assert f"s.promptopt.yaml:6: tests[1].{key}: 'nope' names no {what} of this suite" in str(refused)
        refused = error(tmp_path, head + f"defaultTest: {{{key}: [nope]}}\ntests:\n  - vars: {{q: p}}\n")
        assert f"defaultTest.{key}: 'nope' names no {what}" in str(refused), str(refused)


def test_a_test_with_nothing_promptfoo_reads_is_refused_as_promptfoo_refuses_the_config(tmp_path):
    # A real config's `- label: ...` test: promptfoo stops with "Test case must contain one of ...".
    refused = error(tmp_path, "prompts: ['{{q}}']\nproviders: [echo]\ntests:\n  - vars: {q: x}\n  - label: lone\n")
    assert "s.promptopt.yaml:5: tests[1]: a test needs one of assert, vars, options" in str(refused)
    assert "this one has label" in str(refused)
    # An empty vars mapping is something (JavaScript holds {} true), and so is a numeric threshold.
    load(tmp_path, "prompts: ['hi']\nproviders: [echo]\ntests: [{vars: {}}, {threshold: 0}]\n")
    # promptfoo checks a scenario's tests too, not its config entries (merged into each test first).
    scenario = (
        "prompts: ['{{x}}']\nproviders: [echo]\nscenarios: [{config: [{vars: {x: a}}], tests: [{description: d}]}]\n"
    )
    assert "scenarios[0].tests[0]: a test needs one of" in str(error(tmp_path, scenario))
    # A tests file named as {path: ...} is read without that check (readStandaloneTestsFile): its
    # description-only row runs, as in promptfoo 0.121.20 (recorded: both rows pass).
    (tmp_path / "rows.json").write_text('[{"description": "only a description"}, {"vars": {"x": "hi"}}]')
    read = load(tmp_path, "prompts: ['Say hello']\nproviders: [echo]\ntests: [{path: rows.json}]\n")
    assert [c.error for c in read.cases] == [None, None]
    refused = error(tmp_path, "prompts: ['Say hello']\nproviders: [echo]\ntests: file://rows.json\n")
    assert "rows.json item 0" in str(refused)


def test_a_judge_provider_without_an_id_is_an_error_only_where_a_judge_is_needed(tmp_path):
    """A real config's `defaultTest.options.provider: {temperature: 0.1}`: promptfoo loads it and
    errors the model-graded case only ("Invalid provider definition", recorded with 0.121.20)."""
    suite = load(
        tmp_path,
        """
        prompts: ['{{q}}']
        providers: [echo]
        defaultTest: {options: {provider: {temperature: 0.1}}}
        tests:
          - vars: {q: x}
            assert: [{type: contains, value: x}]
          - vars: {q: y}
            assert: [{type: llm-rubric, value: says y}]
        """,
    )
    plain, judged = suite.cases
    assert plain.error is None and "provider object needs an 'id'" in (judged.error or "")
    # An object with an id is still checked key by key.
    typo = "prompts: ['{{q}}']\ndefaultTest: {options: {provider: {id: echo, confg: {}}}}\ntests: [{vars: {q: x}}]\n"
    assert "unknown key 'confg'" in str(error(tmp_path, typo))


def test_keys_promptfoo_ignores_in_real_configs_are_warnings_and_other_unknown_keys_errors(tmp_path):
    """`version: 1` and `prompts[].provider` (real configs) are keys promptfoo ignores: warnings.
    Any other unknown key is an error naming the nearest known one, so a misspelt key that
    matters (`gate:`, `quality_gates:`, `model:`) never passes."""
    suite = load(
        tmp_path,
        """
        version: 1
        prompts: [{label: a, raw: "x {{q}}", provider: a}]
        providers: [echo]
        tests: [{vars: {q: hi}}]
        """,
    )
    assert [c.rendered_prompt for c in suite.cases] == ["x hi"]
    warned = [str(w) for w in suite.warnings]
    assert "s.promptopt.yaml:1: version: not a promptfoo key (promptfoo ignores it); ignored" in warned
    assert any(
        w.startswith("s.promptopt.yaml:2: prompts[0].provider: not a key of a prompt in promptfoo") for w in warned
    )
    # Any other unknown key stays an error: it could be a plugin key misspelt (gates dropped).
    assert "model: unknown key 'model'" in str(error(tmp_path, 'prompts: ["x"]\nmodel: echo\ntests: [{vars: {}}]\n'))
    assert "quality_gates: unknown key" in str(
        error(tmp_path, 'prompts: ["x"]\nquality_gates: {}\ntests: [{vars: {}}]\n')
    )
    # A number as a key (YAML allows it) is named like any other, not a crash sorting it.
    assert "unknown key '2'" in str(error(tmp_path, 'prompts: [{raw: "x", 2: b, zzz: c}]\ntests: [{vars: {}}]\n'))
    typo = error(tmp_path, 'prompts: ["x"]\ngate: {pass_rate: 0.9}\ntests: [{vars: {}}]\n')
    assert "gate: unknown key 'gate'; did you mean 'gates'?" in str(typo)
    assert "prompts[0].lable: unknown key 'lable'; did you mean 'label'?" in str(
        error(tmp_path, 'prompts: [{raw: "x", lable: a}]\ntests: [{vars: {}}]\n')
    )


def test_missing_prompt_file_and_tests_file(tmp_path):
    assert "prompt file not found" in error(tmp_path, "prompts: [file://nope.txt]\n").message
    assert "tests file not found" in error(tmp_path, "prompts: ['x']\ntests: file://nope.csv\n").message


def test_bad_regex_fails_its_check_and_a_missing_value_errors_its_case(tmp_path):
    suite = load(
        tmp_path,
        """
        prompts: ["{{q}}"]
        tests:
          - vars: {q: a}
            assert:
              - type: contains
                value: a
              - type: regex
                value: "([a-z]"
          - vars: {q: b}
            assert: [{type: word-count}]
        """,
    )
    regex_case, no_value = suite.cases
    # promptfoo: an invalid regex is a failed assertion; a check without its value is an error
    assert regex_case.error is None and regex_case.assertions[1].where == "s.promptopt.yaml:7: tests[0].assert[1]"
    assert no_value.error == "s.promptopt.yaml:10: tests[1].assert[0]: 'word-count' needs a 'value'"


def test_an_empty_python_check_is_found_before_running(tmp_path):
    # Any other text is promptfoo's inline Python (an expression, or a body that returns).
    suite = load(
        tmp_path,
        """
        prompts: ["{{q}}"]
        tests: [{vars: {q: a}, assert: [{type: python, value: "  "}]}]
        """,
    )
    error = suite.cases[0].error
    assert "tests[0].assert[0]" in error and "python code" in error


def test_keys_in_a_suite_are_refused(tmp_path):
    err = error(
        tmp_path,
        """
        prompts: ["x"]
        providers: [{id: openai:gpt-4o-mini, config: {apiKey: sk-123}}]
        """,
    )
    assert err.path == "providers[0]" and "environment variable" in err.message


def test_unknown_provider(tmp_path):
    err = error(tmp_path, "prompts: ['x']\nproviders: [python:my_provider.py]\n")
    assert "not supported" in err.message and err.path == "providers[0]"


def test_gate_out_of_range(tmp_path):
    err = error(tmp_path, "prompts: ['x']\ngates: {pass_rate: 90}\n")
    assert err.path.startswith("gates") and "90" in err.message


def test_providers_map_promptfoo_ids_to_litellm(tmp_path):
    suite = load(
        tmp_path,
        """
        prompts: ["x"]
        providers:
          - openai:gpt-4o-mini
          - openai:chat:gpt-4o
          - anthropic:messages:claude-3-5-haiku-latest
          - ollama:chat:llama3
          - {id: databricks/my-endpoint, label: dbx, config: {apiBaseUrl: "http://x", temperature: 0}}
        """,
    )
    assert [c.model.id for c in suite.cases] == [
        "openai/gpt-4o-mini",
        "openai/gpt-4o",
        "anthropic/claude-3-5-haiku-latest",
        "ollama_chat/llama3",
        "databricks/my-endpoint",
    ]
    assert suite.cases[-1].model.params == {"api_base": "http://x", "temperature": 0}
    assert len({c.case_id for c in suite.cases}) == 5


def test_vars_from_a_file_in_a_test_and_in_default_test(tmp_path):
    (tmp_path / "defaults.yaml").write_text("lang: French\nq: default\n")
    (tmp_path / "case.json").write_text('{"q": "hello"}')
    suite = load(
        tmp_path,
        "prompts: ['{{q}} in {{lang}}']\ndefaultTest: {vars: file://defaults.yaml}\ntests: [{vars: file://case.json}, {vars: {}}]\n",
    )
    assert [c.rendered_prompt for c in suite.cases] == ["hello in French", "default in French"]


def test_csv_edge_cases(tmp_path):
    (tmp_path / "a.csv").write_text("q,__expected,__threshold\nx,contains: x,\n")
    assert load(tmp_path, "prompts: ['{{q}}']\ntests: file://a.csv\n").cases[0].threshold is None  # empty cell: none
    (tmp_path / "b.csv").write_text("q,__expected\nx,classifier: is polite\ny,contains: y\n")
    first, second = load(tmp_path, "prompts: ['{{q}}']\ntests: file://b.csv\n").cases
    assert first.error == (
        "s.promptopt.yaml:2: tests (b.csv row 1) assert[0]: 'classifier' checks (a promptfoo assertion type) are not "
        "run by this version of pytest-promptopt"
    )
    assert second.error is None


def test_unsafe_template_points_at_the_prompt(tmp_path):
    ok, bad = load(
        tmp_path,
        """
        prompts: ["ok", "{{ ''.__class__.__mro__ }}"]
        tests: [{vars: {}}]
        """,
    ).cases
    assert ok.error is None and bad.error.startswith(
        "s.promptopt.yaml:1: prompts[1]: template tried an unsafe operation"
    )


def test_a_prompt_functions_config_joins_the_models_parameters_over_the_prompts(tmp_path):
    # promptfoo's renderPrompt: `{prompt, config}` from a prompt function gives
    # `prompt.config = {...prompt.config, ...result.config}`, which its providers lay over their own
    (tmp_path / "p.js").write_text(
        "module.exports.cfg = ({ vars }) => ({ prompt: 'Q {{q}}', config: { temperature: 0.1, seed: vars.q.length } });\n"
        "module.exports.plain = ({ vars }) => 'P {{q}}';\n"
    )
    (tmp_path / "p.py").write_text("def cfg(context):\n    return {'prompt': 'Y {{q}}', 'config': {'top_p': 0.5}}\n")
    suite = load(
        tmp_path,
        """
        prompts:
          - {id: file://p.js:cfg, label: cfg, config: {temperature: 0.9, max_tokens: 7}}
          - file://p.js:plain
          - file://p.py:cfg
        providers: [{id: echo, config: {temperature: 0.3}}]
        tests: [{vars: {q: abc}}]
        """,
    )
    got = [(case.rendered_prompt, dict(case.model.params)) for case in suite.cases]
    assert got == [
        ("Q abc", {"temperature": 0.1, "max_tokens": 7, "seed": 3}),
        ("P abc", {"temperature": 0.3}),
        ("Y abc", {"temperature": 0.3, "top_p": 0.5}),
    ]


def test_a_tests_other_options_are_model_parameters_over_the_prompts_and_functions_config(tmp_path):
    """promptfoo accepts any key in a test's `options` (`.catchall`) and its mergeProviderPromptConfig
    lays every option but `repeat` over the prompt's config, after a prompt function's config.
    Recorded with promptfoo 0.121.20 on this config (each result's `prompt.config`): t0 p0
    {maxTokens 9, max_tokens 7, seed 2, temperature 0.05, timeout 1000, top_k 4}, t0 p1 {maxTokens
    9, seed 2, temperature 0.05, timeout 1000, top_p 0.2}, t1 p0 {max_tokens 7, seed 1, temperature
    0.1, timeout 1000, top_k 4}, t1 p1 {seed 1, temperature 0.9, timeout 1000, top_p 0.2} (and
    promptfoo's own `prefix`, which is not a model parameter here)."""
    (tmp_path / "p.js").write_text(
        "module.exports.cfg = ({ vars }) => ({ prompt: 'Q {{q}}', config: { temperature: 0.1, seed: vars.q.length, top_k: 4 } });\n"
    )
    suite = load(
        tmp_path,
        """
        prompts:
          - {id: file://p.js:cfg, label: cfg, config: {temperature: 0.9, max_tokens: 7}}
          - {raw: "R {{q}}", label: raw, config: {temperature: 0.9, top_p: 0.2}}
        providers: [{id: echo, config: {temperature: 0.3}}]
        defaultTest:
          options: {timeout: 1000, seed: 1, prefix: ''}
        tests:
          - vars: {q: abc}
            options: {temperature: 0.05, seed: 2, repeat: 1, maxTokens: 9}
          - vars: {q: d}
        """,
    )
    got = [(case.rendered_prompt, dict(case.model.params)) for case in suite.cases]
    assert got == [
        ("Q abc", {"temperature": 0.05, "max_tokens": 7, "seed": 2, "top_k": 4, "timeout": 1.0, "maxTokens": 9}),
        ("R abc", {"temperature": 0.05, "top_p": 0.2, "timeout": 1.0, "seed": 2, "maxTokens": 9}),
        ("Q d", {"temperature": 0.1, "max_tokens": 7, "seed": 1, "top_k": 4, "timeout": 1.0}),
        ("R d", {"temperature": 0.9, "top_p": 0.2, "timeout": 1.0, "seed": 1}),
    ]
    # promptfoo's providers that read a timeout take milliseconds, a model here seconds: 1000 and
    # more is read as milliseconds (a real config's 120000 would otherwise wait 33 hours)
    assert [w.place for w in suite.warnings] == ["defaultTest.options.timeout"]
    assert "1000 is read as milliseconds (as promptfoo's providers read it): a timeout of 1 s" in str(suite.warnings[0])


def test_an_option_that_looks_misspelt_is_named_and_factuality_scores_reach_the_checks(tmp_path):
    """An unknown option is a model parameter (as in promptfoo), so a misspelt one changes only the
    model's call: a warning names the option it resembles. promptfoo's `options.factuality` (its
    matchesFactuality's category scores) is the factuality checks' `config.factuality` here."""
    suite = load(
        tmp_path,
        """
        prompts: ["{{q}}"]
        tests:
          - vars: {q: a}
            options: {disableDefaultAssert: true, factuality: {disagree: 0.5}}
            assert:
              - {type: factuality, value: a}
              - {type: factuality, value: a, config: {factuality: {agree: 0.2}}}
        """,
    )
    (case,) = suite.cases
    assert case.model.params == {"disableDefaultAssert": True}
    assert [a.config for a in case.assertions] == [{"factuality": {"disagree": 0.5}}, {"factuality": {"agree": 0.2}}]
    assert tuple(map(str, suite.warnings)) == (
        "s.promptopt.yaml:4: tests[0].options.disableDefaultAssert: did you mean 'disableDefaultAsserts'? not an "
        "option promptfoo reads: it passes it to the model as a parameter, and so does this plugin",
    )


def test_a_key_left_empty_in_a_test_is_absent_with_a_warning_as_in_promptfoo(tmp_path):
    """`assert:` or `options:` with nothing under it (YAML null). Recorded with promptfoo 0.121.20:
    each test key (description, vars, assert, threshold, options, metadata, provider, prompts,
    providers) and each defaultTest key left empty (inline or in its file), and an empty
    `defaultTest:`, is a "TestSuite Schema Validation Error" warning and the test runs as without
    it (`??` and `||` in its merge: an empty threshold takes defaultTest's)."""
    (tmp_path / "default.yaml").write_text("vars: {x: zero}\nassert:\n")
    suite = load(
        tmp_path,
        """
        prompts: ["hello {{x}}"]
        providers: [echo]
        defaultTest:
          vars: {x: zero}
          threshold: 0.5
          metadata:
          options:
        tests:
          - vars: {x: one}
            assert:
          - vars: {x: two}
            description:
            threshold:
            options:
            metadata:
            provider:
            prompts:
            providers:
            assert: [{type: contains, value: two}]
          - vars:
            assert: [{type: contains, value: zero}]
        """,
    )
    got = [(c.rendered_prompt, c.threshold, len(c.assertions), c.model.id) for c in suite.cases]
    assert got == [("hello one", 0.5, 0, "echo"), ("hello two", 0.5, 1, "echo"), ("hello zero", 0.5, 1, "echo")]
    assert [w.place for w in suite.warnings] == [
        "defaultTest.metadata",
        "defaultTest.options",
        "tests[0].assert",
        "tests[1].description",
        "tests[1].threshold",
        "tests[1].options",
        "tests[1].metadata",
        "tests[1].provider",
        "tests[1].prompts",
        "tests[1].providers",
        "tests[2].vars",
    ]
    assert str(suite.warnings[2]) == (
        "s.promptopt.yaml:10: tests[0].assert: left empty (null): promptfoo warns that the config is invalid and runs "
        "the test without it; so does this plugin"
    )
    empty = load(tmp_path, "prompts: ['hi']\ndefaultTest:\ntests: [{vars: {}}]\n", "e.promptopt.yaml")
    assert [c.rendered_prompt for c in empty.cases] == ["hi"] and [w.place for w in empty.warnings] == ["defaultTest"]
    from_file = load(tmp_path, "prompts: ['hi {{x}}']\ndefaultTest: file://default.yaml\n", "f.promptopt.yaml")
    assert [c.rendered_prompt for c in from_file.cases] == ["hi zero"]
    assert [str(w) for w in from_file.warnings] == [
        "f.promptopt.yaml:2: defaultTest.assert: left empty (null): promptfoo warns that the config is invalid and "
        "runs the test without it; so does this plugin (file://default.yaml)"
    ]


def test_x_keys_hold_yaml_anchors_and_top_level_vars_and_max_concurrency_are_ignored(tmp_path):
    """Recorded with promptfoo 0.121.20 on this config: one case, passing, without a word about
    the three keys (it reads neither a top-level `vars` nor `maxConcurrency`). An `x-` key (an
    anchor holder) is ignored silently here too; the two others with a warning line, as the keys
    promptfoo ignores are; any other unknown top-level key stays an error."""
    suite = load(
        tmp_path,
        """
        x-shared-asserts: &shared
          - type: contains
            value: hello
        vars:
          unused: 1
        maxConcurrency: 10
        prompts:
          - "hello {{x}}"
        providers:
          - echo
        tests:
          - vars: {x: one}
            assert: *shared
        """,
    )
    (case,) = suite.cases
    assert (case.rendered_prompt, [a.value for a in case.assertions]) == ("hello one", ["hello"])
    assert tuple(map(str, suite.warnings)) == (
        "s.promptopt.yaml:4: vars: not a promptfoo key at the top level (promptfoo ignores it); ignored: put vars "
        "every test shares under defaultTest.vars",
        "s.promptopt.yaml:6: maxConcurrency: not a promptfoo key at the top level (promptfoo ignores it; it reads "
        "evaluateOptions.maxConcurrency); ignored (use --promptopt-concurrency)",
    )
    assert "unknown key 'y-anchors'" in str(error(tmp_path, "y-anchors: &a [1]\nprompts: ['x']\n"))


def test_a_provider_transform_rides_on_its_cases_and_a_test_provider_runs_the_places_transform(tmp_path):
    """promptfoo runs a provider's `transform` on its output before a test's (a real config strips
    <think> blocks so; verdicts recorded in tests/data/promptfoo-format/provider_transform*). The
    map form holds it one level down. A test's own provider is called in the suite provider's
    place and gets that place's transform, not its own (a warning says so); where the places'
    transforms differ, the test runs in each place."""
    listed = "providers:\n  - id: echo\n    transform: output.trim()\nprompts: ['x']\ntests: [{vars: {}}]\n"
    mapped = "providers:\n  - echo:\n      transform: output.trim()\nprompts: ['x']\ntests: [{vars: {}}]\n"
    for text in (listed, mapped):
        (case,) = load(tmp_path, text).cases
        assert (case.model.id, case.model.transform) == ("echo", "output.trim()")
    suite = load(
        tmp_path,
        """
        prompts: ['x']
        providers:
          - {id: echo, label: a, transform: "output + 'a'"}
          - {id: echo, label: b, transform: "output + 'b'"}
        tests:
          - provider: {id: fake, transform: "output + 'own'"}
          - provider: fake
            providers: [a]
        """,
    )
    assert [(c.model.id, c.model.transform) for c in suite.cases] == [
        ("fake", "output + 'a'"),
        ("fake", "output + 'b'"),
        ("fake", "output + 'a'"),
    ]
    assert len({c.name for c in suite.cases}) == 3, [c.name for c in suite.cases]
    (warning,) = suite.warnings
    assert str(warning).startswith(
        "s.promptopt.yaml:6: tests[0].provider.transform: promptfoo runs the suite provider's transform"
    ), str(warning)
    # defaultTest's provider: one warning, where it is written (the map form one level down)
    suite = load(
        tmp_path,
        """
        prompts: ['x']
        providers: [echo]
        defaultTest:
          provider:
            fake: {transform: "output + 'own'"}
        tests: [{vars: {a: 1}}, {vars: {a: 2}}]
        """,
    )
    assert [(c.model.id, c.model.transform) for c in suite.cases] == [("fake", None), ("fake", None)]
    assert [(w.line, w.place) for w in suite.warnings] == [(5, "defaultTest.provider.fake.transform")]

    # Case ids: editing a transform keeps them (a baseline sees the case change), unless the
    # transform is what tells two providers apart (then no position suffix decides which is which).
    def ids(first: str, second: str) -> list[str]:
        text = f"prompts: ['x']\nproviders: [{first}, {second}]\ntests: [{{vars: {{a: 1}}}}]\n"
        return [c.case_id for c in load(tmp_path, text).cases]

    assert ids("{id: echo, transform: output.trim()}", "{id: echo, label: plain}") == ids(
        "{id: echo, transform: output.toUpperCase()}", "{id: echo, label: plain}"
    )
    apart = ids("{id: echo, transform: output.trim()}", "{id: echo, transform: output.toUpperCase()}")
    assert len(set(apart)) == 2 and not any("-" in i for i in apart), apart
    # a transformed twin leaves the untransformed provider's ids as they were without it
    assert (
        ids("{id: echo}", "{id: echo, transform: output.trim()}")[0]
        == ids("{id: echo}", "{id: echo, config: {a: 1}}")[0]
    )
    message = str(error(tmp_path, "providers: [{id: echo, transform: 3}]\nprompts: ['x']\ntests: [{vars: {}}]\n"))
    assert message == "s.promptopt.yaml:1: providers[0].transform: expected string, got int 3", message
    outside = "providers: [{id: echo, transform: file://../x.js}]\nprompts: ['x']\ntests: [{vars: {}}]\n"
    assert "providers[0].transform: code file" in str(error(tmp_path, outside))


def test_a_prompt_with_only_a_file_key_names_the_fix(tmp_path):
    """promptfoo does not read a prompt's `file:` (it refuses `{label, file}`: "Invalid input at
    prompts"); the error says what to write, not the schema's view of the entry without it."""
    message = str(error(tmp_path, "prompts:\n  - label: L\n    file: file://p.txt\nproviders: [echo]\n"))
    assert message.endswith(
        "s.promptopt.yaml:2: prompts[0]: a prompt object needs raw or id; promptfoo does not read file: "
        "(write raw: file://...)"
    ), message


def test_a_tests_glob_matching_nothing_is_a_warning_unless_nothing_else_gives_tests(tmp_path):
    """promptfoo logs "No test files found for path" and reads the other entries (recorded in
    tests/data/promptfoo-format/glob_no_match); when every entry is such a glob it would run each
    prompt once with no vars, which is far likelier a wrong path: an error here."""
    suite = load(
        tmp_path, "prompts: ['x {{q}}']\nproviders: [echo]\ntests:\n  - file://none/*.yaml\n  - vars: {q: 1}\n"
    )
    assert [c.rendered_prompt for c in suite.cases] == ["x 1"]
    assert [str(w) for w in suite.warnings] == [
        f"s.promptopt.yaml:4: tests[0]: no tests file matches none/*.yaml (in {tmp_path}); promptfoo reads none "
        "from it, and so does this run"
    ]
    message = str(error(tmp_path, "prompts: ['x']\nproviders: [echo]\ntests: [file://none/*.yaml, nope/*.csv]\n"))
    assert "tests: no tests: every file or glob listed here matches nothing; check the paths" in message, message
    # With scenarios, promptfoo runs theirs (and adds no test without vars): no error then.
    scenarios = "scenarios:\n  - config: [{vars: {q: 2}}]\n    tests: [{vars: {}}]\n"
    suite = load(tmp_path, "prompts: ['x {{q}}']\nproviders: [echo]\ntests: [file://none/*.yaml]\n" + scenarios)
    assert [c.rendered_prompt for c in suite.cases] == ["x 2"]
    # `{path: <glob>}` is read by promptfoo's readStandaloneTestsFile, which does not expand globs: refused.
    message = str(error(tmp_path, "prompts: ['x']\nproviders: [echo]\ntests:\n  - path: none/*.yaml\n  - vars: {}\n"))
    assert "tests[0]: no tests file matches none/*.yaml" in message, message


def test_promptfoo_csv_strict_turns_off_the_relaxed_second_reading(tmp_path, monkeypatch):
    """promptfoo reads a CSV that strict parsing refuses again with relax_quotes, unless
    PROMPTFOO_CSV_STRICT is set (recorded without it in tests/data/promptfoo-format/csv_relaxed_quotes)."""
    (tmp_path / "t.csv").write_text('q,level\n"quoted" ,LOW\n')
    text = "prompts: ['x {{q}}']\nproviders: [echo]\ntests: file://t.csv\n"
    assert [c.vars["q"] for c in load(tmp_path, text).cases] == ['"quoted" ']
    monkeypatch.setenv("PROMPTFOO_CSV_STRICT", "true")
    message = str(error(tmp_path, text))
    assert "t.csv line 2:" in message and "PROMPTFOO_CSV_STRICT is set: quotes are strict" in message, message


def test_derived_metrics_on_names_only_code_checks_report_are_not_warned_about(tmp_path):
    """A python or javascript check's namedScores may carry any name (a real config's entity
    scorer reports true_positives, read by its derivedMetrics): such a name is not "reported by no
    assertion". Without code checks, an unknown name is still named in a warning."""
    base = "prompts: ['x']\nproviders: [echo]\nderivedMetrics:\n  - {name: P, value: 'tp / (tp + fp)'}\n"
    coded = load(tmp_path, base + "defaultTest:\n  assert:\n    - {type: python, value: '1'}\ntests: [{vars: {}}]\n")
    assert [str(w) for w in coded.warnings] == []
    plain = load(tmp_path, base + "tests:\n  - assert: [{type: contains, value: x, metric: tp}]\n")
    assert [str(w) for w in plain.warnings] == [
        "s.promptopt.yaml:4: derivedMetrics[0].value: fp: no assertion of this suite reports such a metric; "
        "promptfoo then evaluates 'P' to 0, and so does this plugin"
    ]


def test_a_tests_generator_that_fails_is_an_error_naming_the_suite_file_its_place_and_the_generator(tmp_path):
    """promptfoo stops the run when a tests generator throws or gives no list; here the suite
    file is a collection error at the generator's place (file, line, path), with what it raised.
    (What generators give, against promptfoo's own run: tests/data/promptfoo-format/tests_generators.)"""
    (tmp_path / "gen.py").write_text(
        "def boom(config=None):\n    raise ValueError('no rows today')\n\n"
        "def one(config=None):\n    return {'vars': {'q': 1}}\n\n"
        "def bad_item():\n    return [{'vars': {'q': 1}}, 'not a test']\n"
    )
    (tmp_path / "gen.js").write_text("module.exports = () => { throw new TypeError('js says no'); };\n")
    head = "prompts: ['x {{q}}']\nproviders: [echo]\ntests:\n  - vars: {q: 0}\n"
    message = str(error(tmp_path, head + "  - file://gen.py:boom\n"))
    assert message.startswith(
        "s.promptopt.yaml:5: tests[1]: tests generator gen.py:boom raised ValueError: no rows today"
    )
    message = str(error(tmp_path, head + "  - path: file://gen.py:one\n    config: {a: 1}\n"))
    assert message == "s.promptopt.yaml:5: tests[1]: tests generator gen.py:one must give a list of tests, got dict"
    message = str(error(tmp_path, head + "  - file://gen.js\n"))
    assert message.startswith("s.promptopt.yaml:5: tests[1]: tests generator gen.js raised TypeError: js says no")
    message = str(error(tmp_path, head + "  - file://gen.py:bad_item\n"))
    assert message.startswith("s.promptopt.yaml:5: tests[1]: gen.py:bad_item item 1: "), message
    message = str(error(tmp_path, head + "  - file://missing.py\n"))
    assert message == f"s.promptopt.yaml:5: tests[1]: tests generator not found: {tmp_path / 'missing.py'}"


def test_a_tests_generators_config_reads_files_and_a_glob_of_generators_or_a_missing_export_is_named(tmp_path):
    """promptfoo reads a generator's `config` through maybeLoadConfigFromExternalFile (a
    `file://` YAML/JSON file, the config itself or a value in it, is its data), calls it with
    `null` when `config: null`, and imports a glob as a path; here a glob of generators is
    refused with the fix, as is a named export the module lacks (mini-racer and node alike)."""
    (tmp_path / "gen.py").write_text("def echo(config='absent'):\n    return [{'vars': {'q': repr(config)}}]\n")
    (tmp_path / "cfg.json").write_text('{"n": 2, "words": "file://words.txt"}')
    (tmp_path / "words.txt").write_text("alpha beta")
    (tmp_path / "sync.js").write_text("module.exports = { some: [] };\n")
    (tmp_path / "esm.mjs").write_text("export const some = [];\n")
    head = "prompts: ['x {{q}}']\nproviders: [echo]\ntests:\n"
    # a file's data is taken as it is (promptfoo does not read the references inside it again)
    cases = load(tmp_path, head + "  - path: file://gen.py:echo\n    config: file://cfg.json\n").cases
    assert [c.vars["q"] for c in cases] == [repr({"n": 2, "words": "file://words.txt"})]
    written = "  - path: file://gen.py:echo\n    config: {d: file://cfg.json, w: file://words.txt, vars: {v: file://cfg.json}}\n"
    cases = load(tmp_path, head + written).cases
    expected = {"d": {"n": 2, "words": "file://words.txt"}, "w": "alpha beta", "vars": {"v": "file://cfg.json"}}
    assert [c.vars["q"] for c in cases] == [repr(expected)]
    assert [c.vars["q"] for c in load(tmp_path, head + "  - path: file://gen.py:echo\n    config: null\n").cases] == [
        "None"
    ]
    assert [c.vars["q"] for c in load(tmp_path, head + "  - file://gen.py:echo\n").cases] == ["'absent'"]
    message = str(error(tmp_path, head + "  - file://*.py\n"))
    assert message.startswith("s.promptopt.yaml:4: tests[0]: gen.py: a glob of tests generators"), message
    assert "name each generator (file://gen.py:fn)" in message, message
    for module in ("sync.js", "esm.mjs"):
        message = str(error(tmp_path, head + f"  - file://{module}:nope\n"))
        assert (
            f"tests generator {module}:nope raised Error: " in message
            and f'{module} has no export named "nope"' in message
        ), message


def test_a_generator_named_as_a_file_in_a_tests_list_is_read_as_promptfoo_reads_a_glob(tmp_path):
    """promptfoo reads `- file://gen.py` in a tests list through loadTestsFromGlob: each test it
    gives is checked by readTest (one holding only a description stops the run); `{path: ...}`
    and `gen.py:fn` go through readStandaloneTestsFile, unchecked (checked with promptfoo 0.121.20)."""
    (tmp_path / "gen.py").write_text("def generate_tests(config=None):\n    return [{'description': 'only this'}]\n")
    head = "prompts: ['x']\nproviders: [echo]\ntests:\n"
    message = str(error(tmp_path, head + "  - file://gen.py\n"))
    assert message.startswith("s.promptopt.yaml:4: tests[0]: "), message
    assert "a test needs one of" in message, message
    for written in ("  - path: file://gen.py\n", "  - file://gen.py:generate_tests\n"):
        assert [c.rendered_prompt for c in load(tmp_path, head + written).cases] == ["x"]


def test_an_include_reads_from_the_working_directory_and_a_changed_one_is_not_cached(tmp_path, monkeypatch):
    # promptfoo's nunjucks.configure() loads includes relative to where it runs
    # (tests/data/promptfoo-format/nunjucks_include); the template cache must follow the run
    from pytest_promptopt.prompt import render_suite_prompt

    for name, text in (("one", "first {{ who }}"), ("two", "second {{ who }}")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "part.md").write_text(text)
    monkeypatch.chdir(tmp_path / "one")
    assert render_suite_prompt('{% include "part.md" %}!', {"who": "Ada"}) == "first Ada!"
    monkeypatch.chdir(tmp_path / "two")
    assert render_suite_prompt('{% include "part.md" %}!', {"who": "Ada"}) == "second Ada!"
    with pytest.raises(TemplateError, match="not found"):
        render_suite_prompt('{% include "../one/part.md" %}', {"who": "Ada"})


def test_an_assert_set_loads_its_checks_and_needs_them(tmp_path):
    """promptfoo's assert-set groups checks under `assert:`; they are read as a test's own (keys
    promptfoo does not read dropped with a warning); a set without an `assert` list refuses the
    config, as promptfoo's validateAssertions does; `assert:` on another check is dropped."""
    suite = load(
        tmp_path,
        """
        prompts: ['{{q}}']
        providers: [echo]
        tests:
          - vars: {q: x}
            assert:
              - type: assert-set
                threshold: 0.33
                metric: answer
                assert:
                  - {type: icontains-any, value: [x, y], label: either}
                  - {type: contains, value: z}
              - {type: contains, value: x, assert: [{type: contains, value: y}]}
        """,
    )
    (case,) = suite.cases
    group, plain = case.assertions
    assert (group.type, group.threshold, group.metric) == ("assert-set", 0.33, "answer")
    assert [c.type for c in group.children] == ["icontains-any", "contains"] and not plain.children
    warned = [str(w) for w in suite.warnings]
    assert any("tests[0].assert[0].assert[0].label: not a key of an assertion" in w for w in warned), warned
    assert any("tests[0].assert[1].assert: only an assert-set reads 'assert'" in w for w in warned), warned
    with pytest.raises(SuiteError, match=r"tests\[0\]\.assert\[0\]: an assert-set needs an 'assert' list"):
        load(tmp_path, "prompts: ['{{q}}']\nproviders: [echo]\ntests: [{vars: {q: x}, assert: [{type: assert-set}]}]")


def test_an_assertion_key_promptfoo_does_not_read_is_dropped_with_a_warning(tmp_path):
    """promptfoo's AssertionSchema is a plain zod object: a check's `label:` (a real config,
    lead-ia) or a misspelt `treshold:` is stripped without a word, and the check runs without it.
    Here it is dropped too, named in a warning (with the nearest known key when there is one)."""
    suite = load(
        tmp_path,
        """
        prompts: ['{{q}}']
        providers: [echo]
        defaultTest:
          assert: [{type: contains, value: x, label: has x}]
        tests:
          - vars: {q: x}
            assert: [{type: javascript, value: '0.5', treshold: 0.9}]
        """,
    )
    (case,) = suite.cases
    assert [a.type for a in case.assertions] == ["contains", "javascript"]
    assert all(a.threshold is None for a in case.assertions)
    warned = [str(w) for w in suite.warnings]
    assert any("defaultTest.assert[0].label: not a key of an assertion" in w for w in warned), warned
    assert any("tests[0].assert[0].treshold: did you mean 'threshold'? not a key of an assertion" in w for w in warned)
