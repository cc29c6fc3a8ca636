"""Strict input: hostile or mistaken suite files give one clear error naming the file, the line
or row and the field, never a traceback, a hang, a file read silently or a suite that vanishes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import load_report

from pytest_promptopt.models.specs import ModelSpec
from pytest_promptopt.suite.loader import load_suite
from pytest_promptopt.suite.model import SuiteError, SuiteLimits


def load(tmp_path: Path, text: str, name: str = "s.promptopt.yaml", **limits):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return load_suite(path, name, ModelSpec("echo"), limits=SuiteLimits(root=tmp_path, **limits))


def error(tmp_path: Path, text: str, name: str = "s.promptopt.yaml", **limits) -> str:
    with pytest.raises(SuiteError) as info:
        load(tmp_path, text, name, **limits)
    return str(info.value)


CSV_SUITE = "prompts: ['{{q}}']\ntests: file://t.csv\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (
            b"q,a\nx,1\ny\n",
            "t.csv row 2 (line 3): the header has 2 columns, this row has 1 cells; every row needs one cell per column",
        ),
        (b"q,a\nx,1,extra\n", "t.csv row 1 (line 2): the header has 2 columns, this row has 3 cells"),
        (b"q,a\nx,1\n\ny,2\n", "t.csv row 2 (line 3): the header has 2 columns, this row is an empty line"),
        (b"q,a\nx,caf\xe9\n", "t.csv line 2: byte 0xe9 is not UTF-8 (row 1); save the file as UTF-8"),
        (b"", "t.csv is empty: give a header line and at least one row"),
        (b"q,a\n", "t.csv has a header but no rows: add at least one row"),
        (b"q,,,a\nx,1,2,3\n", "t.csv: two columns of the header have no name (columns 2 and 3)"),
        (
            b"q,__expected,__config:__expected:threshold\nx,contains: x,\n",
            "t.csv row 1 (line 2), column __config:__expected:threshold: '' is not a number",
        ),
        (b"q,__threshold\nx,high\n", "t.csv row 1 (line 2): __threshold 'high' is not a number"),
    ],
)
def test_bad_csv_files_are_errors_naming_the_row(tmp_path, content, message):
    (tmp_path / "t.csv").write_bytes(content)
    assert message in error(tmp_path, CSV_SUITE)


def test_csv_as_promptfoo_parses_it(tmp_path):
    # BOM and CRLF, quotes, an empty __threshold (none), values not trimmed, a one-column file's empty line
    (tmp_path / "t.csv").write_bytes(b'\xef\xbb\xbfq,__threshold\r\n" a, b ",\r\n"say ""hi""",0.5\r\n')
    first, second = load(tmp_path, CSV_SUITE).cases
    assert (first.rendered_prompt, first.threshold, second.rendered_prompt, second.threshold) == (
        " a, b ",
        None,
        'say "hi"',
        0.5,
    )
    (tmp_path / "t.csv").write_text("q\nA\n\nB\n")
    assert [c.rendered_prompt for c in load(tmp_path, CSV_SUITE).cases] == ["A", "", "B"]


def test_a_suite_without_cases_is_an_error(tmp_path):
    assert error(tmp_path, "prompts: ['x']\ntests: []\n") == (
        "s.promptopt.yaml:2: tests: the suite has no cases: give it tests (an empty file or list runs nothing)"
    )


def test_duplicate_keys_are_an_error_naming_both_lines(tmp_path):
    assert error(tmp_path, "prompts: ['a']\ntests: [{vars: {}}]\nprompts: ['b']\n") == (
        "s.promptopt.yaml:3: prompts: duplicate key 'prompts' (first at line 1, again at line 3); "
        "a key may appear once in a mapping: remove or rename one"
    )


BOMB = """
prompts: ['{{x}}']
a: &a [z, z, z, z, z, z, z, z, z, z]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
tests: [{vars: {x: *f}}]
"""


def test_yaml_alias_expansion_is_capped_with_a_clear_error_and_an_option(tmp_path):
    message = error(tmp_path, BOMB)
    assert message.startswith(
        "s.promptopt.yaml:6: e[7]: YAML aliases expand the document to more than 100,000 extra nodes "
        "(the alias here alone adds 11,111); write the values out"
    )
    assert "raise the limit with --promptopt-max-alias-nodes (ini promptopt_max_alias_nodes)" in message
    small = "prompts: ['{{x}}']\ntests: [{vars: {x: &a [z, z]}}, {vars: {x: *a}}]\n"
    assert "the alias here alone adds 3" in error(tmp_path, small, max_alias_nodes=2)
    assert len(load(tmp_path, small, max_alias_nodes=3).cases) == 4  # two tests x two list values


def test_deep_nesting_is_an_error_not_a_recursion_error(tmp_path):
    deep = 100_000
    (tmp_path / "d.promptopt.json").write_text('{"prompts": ["x"], "tests": ' + "[" * deep + "]" * deep + "}")
    with pytest.raises(SuiteError, match=r"invalid JSON: nested more than 100 levels deep"):
        load_suite(tmp_path / "d.promptopt.json", "d.promptopt.json", ModelSpec("echo"))
    (tmp_path / "d.promptopt.json").write_text('{"prompts": ["x"], "tests": [{"vars": ' + "[" * 150 + "]" * 150 + "}]}")
    with pytest.raises(SuiteError, match=r"d.promptopt.json:1: tests\[0\]\.vars(\[0\])+: nested more than 100"):
        load_suite(tmp_path / "d.promptopt.json", "d.promptopt.json", ModelSpec("echo"))
    with pytest.raises(SuiteError, match="invalid YAML: exceeded maximum nesting depth"):
        load(tmp_path, "prompts: ['x']\ntests: " + "[" * deep + "]" * deep)


def test_var_products_are_capped_naming_the_field_and_the_count(tmp_path):
    many = "prompts: ['{{a}}{{b}}{{c}}']\ntests:\n  - vars: {a: [1, 2, 3], b: [x, y, z], c: [p, q, r]}\n"
    many = many.replace("[1, 2, 3]", "['1', '2', '3']")
    assert error(tmp_path, many, max_cases=20) == (
        "s.promptopt.yaml:3: tests[0].vars: the list vars a (3 values), b (3 values), c (3 values) make 27 "
        "combinations, more than the 20 cases this suite may still have; split the test, or raise the limit with "
        "--promptopt-max-cases (ini promptopt_max_cases)"
    )
    assert len(load(tmp_path, many, max_cases=27).cases) == 27


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "prompts: ['x']\nrepeat: 1000000000\n",
            "s.promptopt.yaml:2: repeat: 1000000000 is greater than the maximum of 1000",
        ),
        (
            "prompts: ['x']\ntests: [{threshold: .nan, vars: {}}]\n",
            "s.promptopt.yaml:2: tests[0].threshold: nan is not a finite number; give a number such as 0.8",
        ),
        (
            "prompts: ['x']\ngates: {pass_rate: {min: .nan}}\n",
            "s.promptopt.yaml:2: gates.pass_rate.min: nan is not a finite number; give a number such as 0.8",
        ),
    ],
)
def test_unbounded_or_non_finite_numbers_are_refused(tmp_path, text, message):
    assert error(tmp_path, text) == message


def test_a_huge_range_in_a_template_errors_its_case_only(tmp_path):
    bad, good = load(
        tmp_path, "prompts: ['{% for i in range(999999999) %}x{% endfor %}', 'ok {{q}}']\ntests: [{vars: {q: 1}}]\n"
    ).cases
    assert bad.error == (
        "s.promptopt.yaml:1: prompts[0]: template too large to render: range() of 999,999,999 items: a template may "
        "make at most 100,000 per call in prompts[0] ({% for i in range(999999999) %}x{% endfor %})"
    )
    assert (good.error, good.rendered_prompt) == (None, "ok 1")


def test_null_renders_empty_not_none(tmp_path):
    (case,) = load(tmp_path, "prompts: ['[{{name}}] {{name is none}}']\ntests: [{vars: {name: null}}]\n").cases
    assert case.rendered_prompt == "[] true"


def test_a_folder_given_as_a_file_is_reported_as_a_folder(tmp_path):
    (tmp_path / "docs").mkdir()
    (case,) = load(tmp_path, "prompts: ['{{d}}']\ntests: [{vars: {d: file://docs}}]\n").cases
    assert case.error == (
        f"s.promptopt.yaml:2: tests[0].vars.d: var file {tmp_path / 'docs'} is a directory; name a file "
        "(or a glob such as docs/*)"
    )
    assert "prompt file " + str(tmp_path / "docs") + " is a directory" in error(tmp_path, "prompts: [file://docs]\n")


def test_files_outside_the_project_are_refused_unless_allowed(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "secret.txt").write_text("outside")
    for reference in ("file://../secret.txt", f"file://{tmp_path / 'secret.txt'}"):
        text = f"prompts: ['{{{{d}}}}']\ntests: [{{vars: {{d: '{reference}'}}}}]\n"
        (case,) = load(project, text).cases
        assert case.error.endswith(
            f"is outside the project ({project}); suites read only files inside it. Move the file into the "
            "project, or allow it with --promptopt-allow-outside-files (ini promptopt_allow_outside_files = true)"
        )
        (case,) = load(project, text, allow_outside_files=True).cases
        assert case.rendered_prompt == "outside"
    assert "is outside the project" in error(project, "prompts: [file://../secret.txt]\n")


def test_code_files_outside_the_project_are_refused(tmp_path):
    # Checks, transforms and var loaders are read when they run: where they are is checked at load.
    project = tmp_path / "project"
    project.mkdir()
    for code in ("check.py", "check.js", "t.js", "p.py"):
        (tmp_path / code).write_text("")
    (tmp_path / "v.py").write_text("def get_var(var_name, prompt, other_vars):\n    return {'output': 'ran'}\n")
    tests = {
        "tests[0].assert[0].value": "{assert: [{type: python, value: 'file://../check.py:get_assert'}]}",
        "tests[0].assert[0].transform": "{assert: [{type: contains, value: x, transform: 'file://../t.js'}]}",
        "tests[0].options.transform": "{options: {transform: 'file://../t.js'}, assert: [{type: contains, value: x}]}",
        "tests[0].vars.v": "{vars: {v: 'file://../v.py'}}",
    }
    for field, test in tests.items():
        (case,) = load(project, f"prompts: ['{{{{v}}}}']\ntests: [{test}]\n").cases
        assert case.error is not None and f"{field}: code file {project}/../" in case.error, (field, case.error)
        assert "is outside the project" in case.error
    assert "is outside the project" in error(project, "prompts: ['file://../p.py:make']\n")
    text = "prompts: ['{{v}}']\ntests: [{vars: {v: 'file://../v.py'}}]\n"
    (case,) = load(project, text, allow_outside_files=True).cases
    assert case.error is None and case.rendered_prompt == "ran"


# ----------------------------------------------------------------------------- through pytest


def test_a_suite_without_cases_fails_the_run(pytester, run_pytest, mode):
    pytester.makefile(".promptopt.yaml", empty="prompts: ['x']\nproviders: [echo]\ntests: []\n")
    result = run_pytest("--promptopt", *mode)
    assert result.ret in (1, 2)  # a collection error (xdist reports it as 1), never a run that passes without it
    result.stdout.fnmatch_lines(["*empty.promptopt.yaml:3: tests: the suite has no cases*"])


def test_non_finite_numbers_are_written_as_null_in_the_json_report(pytester, run_pytest, mode):
    pytester.makefile(
        ".promptopt.yaml", inf="prompts: ['{{n}} {{m}}']\nproviders: [echo]\ntests: [{vars: {n: .inf, m: .nan}}]\n"
    )
    run_pytest("--promptopt", "--promptopt-report", "r.json", *mode).assert_outcomes(passed=1)
    strict = json.loads((pytester.path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    (suite,) = load_report(pytester.path / "r.json")["suites"]
    assert strict["suites"][0]["results"][0]["vars"] == {"n": None, "m": None}  # JSON.stringify's null
    assert suite["results"][0]["output"] == "Infinity NaN"  # what the prompt showed (JavaScript's way)


def test_outside_files_option_and_limits_from_the_command_line(pytester, run_pytest):
    (pytester.path / "sub").mkdir()
    (pytester.path / "sub" / "s.promptopt.yaml").write_text(
        "prompts: ['{{d}}']\nproviders: [echo]\ntests: [{vars: {d: file://../../outside.txt}}]\n"
    )
    (pytester.path.parent / "outside.txt").write_text("read")
    refused = run_pytest("--promptopt", "--promptopt-report", "r.json", "sub")
    refused.assert_outcomes(errors=1)
    assert "is outside the project" in load_report(pytester.path / "r.json")["suites"][0]["results"][0]["error"]
    allowed = run_pytest("--promptopt", "--promptopt-allow-outside-files", "sub")
    allowed.assert_outcomes(passed=1)
    capped = run_pytest("--promptopt", "--promptopt-repeat", "5000", "sub")
    assert capped.ret == 4 and "at most 1000 samples per case" in capped.stderr.str()
