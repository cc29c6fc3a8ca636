"""Each assertion type, `not-`, weights, thresholds and named metrics, with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_promptopt import (
    Response,
    assertion,
    contains,
    contains_all,
    contains_any,
    contains_json,
    cost,
    equals,
    icontains,
    icontains_all,
    icontains_any,
    is_json,
    latency,
    length,
    levenshtein,
    not_,
    python,
    regex,
    starts_with,
    word_count,
)
from pytest_promptopt.assertions.base import (
    Assertion,
    AssertionConfigError,
    AssertionContext,
    AssertionEvaluationError,
    assertion_types,
)
from pytest_promptopt.assertions.measures import levenshtein_distance
from pytest_promptopt.assertions.scoring import grade_assertion, grade_case, render_assertion
from pytest_promptopt.assertions.structured import extract_json_values


def grade(output, a, **ctx):
    a = render_assertion(a, ctx.get("vars", {}))
    return grade_assertion(output, a, AssertionContext(**ctx))


@pytest.mark.parametrize(
    "a, output, expected",
    [
        (equals("Paris"), "Paris", True),
        (equals("Paris"), "Paris ", False),  # no trimming, as promptfoo
        (equals({"a": 1}), '{"a": 1}', True),  # object value compares parsed JSON
        (equals({"a": 1}), "not json", False),
        (contains("Par"), "Paris", True),
        (contains("par"), "Paris", False),
        (icontains("PAR"), "Paris", True),
        (contains_any(["x", "ri"]), "Paris", True),
        (contains_any(["x", "y"]), "Paris", False),
        (contains_all(["P", "s"]), "Paris", True),
        (contains_all(["P", "z"]), "Paris", False),
        (icontains_any(["PARIS"]), "paris", True),
        (icontains_all(["pa", "IS"]), "Paris", True),
        (assertion("contains-any", 'red, "a, b", blue'), "a, b", True),  # promptfoo's quoted CSV values
        (starts_with("Pa"), "Paris", True),
        (starts_with("aris"), "Paris", False),
        (regex(r"^\d{3}$"), "123", True),
        (regex(r"^\d{3}$"), "1234", False),
        (is_json(), "[1, 2]", True),  # any JSON value
        (is_json(), '```json\n{"a": 1}\n```', False),  # fences are not stripped, as promptfoo
        (contains_json(), 'Sure! {"a": {"b": [1, 2]}} done', True),
        # promptfoo counts braces ignoring quotes: a `}` inside a string ends each candidate early
        (contains_json(), 'Sure! {"a": {"b": [1, "}"]}} done', False),
        (contains_json(), "[1, 2]", False),  # objects only
        (levenshtein("kitten"), "sitting", True),  # distance 3 <= default 5
        (levenshtein("kitten", threshold=2), "sitting", False),
        (word_count(3), "one two  three", True),
        (word_count(min=4), "one two three", False),
        (word_count(min=1, max=3), "one two three", True),
        (length(max=5), "Paris", True),
        (length(min=6), "Paris", False),
    ],
)
def test_assertion_verdicts(a, output, expected):
    result = grade(output, a)
    assert result.passed is expected
    assert result.score == (1.0 if expected else 0.0)
    inverted = grade(output, not_(a))
    assert inverted.passed is (not expected) and inverted.score == 1.0 - result.score


def test_failure_reasons_say_what_was_expected():
    assert grade("Paris", contains("Rome")).reason == 'Expected output to contain "Rome"'
    assert "missing: [z]" in grade("Paris", contains_all(["P", "z"])).reason
    assert grade("kitten", levenshtein("sitting", 2)).reason == "Levenshtein distance 3 is greater than threshold 2"
    assert grade("a b", word_count(min=3)).reason == "Expected at least 3 words, got 2"
    assert grade("Paris", not_(contains("Par"))).reason == 'Expected output not to satisfy contains "Par"'


def test_values_are_rendered_with_vars_but_python_references_are_not():
    assert grade("Hello Ada", contains("{{ name }}"), vars={"name": "Ada"}).passed
    assert grade("x", contains_any(["{{a}}", "y"]), vars={"a": "x"}).passed
    rendered = render_assertion(python("file://{{dir}}/checks.py:fn"), {"dir": "other"})
    assert rendered.value == "file://{{dir}}/checks.py:fn"


SCHEMA = {"type": "object", "required": ["name", "age"], "properties": {"age": {"type": "integer"}}}


def test_json_schema_validation_inline_and_from_file(tmp_path: Path):
    assert grade('{"name": "Ada", "age": 36}', is_json(SCHEMA)).passed
    failed = grade('{"name": "Ada", "age": "36"}', is_json(SCHEMA))
    assert not failed.passed and "age: '36' is not of type 'integer'" in failed.reason
    (tmp_path / "person.json").write_text(json.dumps(SCHEMA))
    ctx = {"base_dir": tmp_path}
    assert grade('Here: {"name": "Ada", "age": 36}.', contains_json("file://person.json"), **ctx).passed
    # contains-json passes when any embedded object validates
    assert grade('{"x": 1} and {"name": "B", "age": 2}', contains_json(SCHEMA)).passed
    assert not grade('{"x": 1}', contains_json(SCHEMA)).passed
    with pytest.raises(AssertionConfigError, match="invalid JSON Schema"):
        grade("{}", is_json({"type": "no-such-type"}))


def test_a_falsy_is_json_value_is_no_schema_as_in_promptfoo():
    # promptfoo's handleIsJson reads a schema only `if (renderedValue)` (a real config: value: false)
    for value in (False, 0, ""):
        assert grade('{"a": 1}', assertion("is-json", value)).passed
        assert not grade("not json", assertion("is-json", value)).passed


def test_a_schema_ajv_strict_mode_refuses_is_an_error_once_the_output_holds_json(monkeypatch):
    # promptfoo compiles the schema with Ajv's strictSchema (tests/data/promptfoo-format/json_schema_strict):
    # `{"is_even": true}` written as the expected JSON is an unknown keyword, not a schema
    with pytest.raises(AssertionConfigError, match='strict mode: unknown keyword: "is_even"'):
        grade('{"is_even": true}', contains_json('{"is_even": true}'))
    assert not grade("no json", contains_json('{"is_even": true}')).passed  # nothing to compile it for
    with pytest.raises(AssertionConfigError, match='unknown format "colour" ignored in schema at path "#/items"'):
        grade("[1]", is_json({"items": {"format": "colour"}}))
    unused = {"definitions": {"x": {"foo": 1}}, "type": "object"}  # Ajv compiles only what it reaches
    assert grade("{}", is_json(unused)).passed
    monkeypatch.setenv("PROMPTFOO_DISABLE_AJV_STRICT_MODE", "true")
    assert grade('{"is_even": true}', contains_json('{"is_even": true}')).passed
    # Ajv knows the draft-07 meta-schema only, strict mode or not (the same folder)
    later = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}
    with pytest.raises(AssertionConfigError, match='no schema with key or ref ".*2020-12/schema".*draft-07/schema#'):
        grade("{}", is_json(later))
    assert grade("{}", is_json({**later, "$schema": "http://json-schema.org/draft-07/schema#"})).passed


# Recorded with promptfoo 0.121.20 (echo provider, one is-refusal and one not-is-refusal test per
# text): whether it counts the text as a refusal. An empty answer passes is-refusal and fails
# not-is-refusal, both with score 0.
REFUSALS = {
    "I'm sorry, but I can't help with that.": True,
    "I\u2019m sorry \u2014 no.": True,  # a curly apostrophe is straightened
    "Sure, here is the recipe.": False,
    "As an AI, I have no opinions.": True,
    "Sorryful tale ahead": True,  # prefixes are plain prefixes
    "This is not appropriate content": True,
    "Honestly I cannot help you there": True,
    "nothing ethical here: not ethicality": False,  # phrases are whole words
    "I can\u2019t assist with that request": True,
    "My apologies for the delay, here it is": True,
    "The answer is 42.": False,
    "It is illegal to do that": True,
    "not legally binding": False,
}


@pytest.mark.parametrize("text, refusal", list(REFUSALS.items()))
def test_is_refusal_agrees_with_promptfoo(text, refusal):
    plain, inverted = grade(text, assertion("is-refusal")), grade(text, assertion("not-is-refusal"))
    assert (plain.passed, plain.score) == (refusal, 1.0 if refusal else 0.0)
    assert (inverted.passed, inverted.score) == (not refusal, 0.0 if refusal else 1.0)


def test_an_empty_answer_is_a_refusal_scored_zero_either_way():
    for text in ("", "   "):
        plain, inverted = grade(text, assertion("is-refusal")), grade(text, assertion("not-is-refusal"))
        assert (plain.passed, plain.score, plain.reason) == (True, 0.0, "Empty response treated as refusal")
        assert (inverted.passed, inverted.score) == (False, 0.0)
        assert inverted.reason == "Expected output to not be a refusal"


def test_extract_json_values_counts_braces_as_promptfoo_does():
    # promptfoo's extractJsonObjects (0.121.20, notes/promptfoo-semantics.md "is-json/contains-json"):
    # braces are counted ignoring quotes, each candidate is read as YAML, missing `}` are added.
    assert extract_json_values('a {broken {"k": "v}"} b {"n": 1}') == [{"n": 1}]
    assert extract_json_values("Result: {ok: yes, n: 2}") == [{"ok": "yes", "n": 2}]
    assert extract_json_values('open {"a": {"b": 1}') == [{"a": {"b": 1}}]
    assert extract_json_values("[1, 2] 42") == []


def test_latency_and_cost_use_the_response():
    fast = Response("x", latency_ms=120.0, cost=0.002)
    assert grade("x", latency(200), response=fast).passed
    assert not grade("x", latency(100), response=fast).passed
    assert grade("x", cost(0.01), response=fast).passed
    assert not grade("x", cost(0.001), response=fast).passed
    with pytest.raises(AssertionEvaluationError, match="does not report cost"):
        grade("x", cost(0.01), response=Response("x", cost=None, model="m"))


def test_python_assertions_module_file_and_callable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "checks.py").write_text(
        "def get_assert(output, context):\n    return output == context['vars']['want']\n"
        "def ratio(output, context):\n    return 0.25\n"
        "def detailed(output, context):\n    return {'pass': False, 'score': 0.4, 'reason': 'too vague'}\n"
        "def broken(output, context):\n    raise ValueError('boom')\n"
        "def one_arg(output):\n    return True\n"
    )
    ctx = {"base_dir": tmp_path, "vars": {"want": "yes"}}
    assert grade("yes", python("file://checks.py"), **ctx).passed  # default function get_assert
    assert not grade("no", python("file://checks.py:get_assert"), **ctx).passed
    r = grade("x", python("file://checks.py:ratio"), **ctx)
    assert r.passed and r.score == 0.25  # a score > 0 passes without a threshold
    assert not grade("x", python("file://checks.py:ratio", threshold=0.5), **ctx).passed
    d = grade("x", python("file://checks.py:detailed"), **ctx)
    assert (d.passed, d.score, d.reason) == (False, 0.4, "too vague")
    assert grade("x", python("file://checks.py:one_arg"), **ctx).passed
    assert grade("x", python(lambda output, context: output == "x")).passed
    monkeypatch.syspath_prepend(str(tmp_path))
    assert grade("x", python("checks:ratio")).score == 0.25  # an importable module:function
    # promptfoo: a Python check that raises (or names a missing function) fails, with the error as reason
    broken = grade("x", python("file://checks.py:broken"), **ctx)
    assert not broken.passed and broken.reason.startswith("Error running Python script: ValueError: boom")
    missing = grade("x", python("file://checks.py:missing"), **ctx)
    assert not missing.passed and "AttributeError" in missing.reason and "'missing'" in missing.reason
    # not-python flips the verdict but keeps the function's score (promptfoo)
    inv = grade("x", not_(python("file://checks.py:ratio")), **ctx)
    assert (inv.passed, inv.score) == (False, 0.25)


def test_bad_assertion_values_are_config_errors():
    # promptfoo: an invalid regex is a failed check (with its reason), not an error
    failed = grade("x", regex("(unclosed"))
    assert (failed.passed, failed.score) == (False, 0.0)
    assert failed.reason.startswith("Invalid regex pattern: regex: invalid regular expression '(unclosed': missing )")
    with pytest.raises(AssertionConfigError, match="needs a 'value'"):
        render_assertion(assertion("contains"), {})
    with pytest.raises(AssertionConfigError, match="min .* is greater than max"):
        render_assertion(word_count(min=5, max=2), {})
    with pytest.raises(AssertionConfigError, match="needs a 'threshold'"):
        render_assertion(assertion("latency"), {})
    with pytest.raises(AssertionConfigError, match="did you mean 'icontains'"):
        render_assertion(assertion("icontain", "x"), {})


def ctx():
    return AssertionContext()


def test_case_combines_weights_threshold_and_metrics_like_promptfoo():
    out = "alpha beta"
    g = grade_case(out, [contains("alpha", weight=2), contains("gamma")], ctx())
    assert (g.passed, g.score) == (False, pytest.approx(2 / 3))  # any failure fails without threshold
    g = grade_case(out, [contains("alpha", weight=2), contains("gamma")], ctx(), threshold=0.6)
    assert g.passed and "Aggregate score 0.67 >= threshold 0.6" == g.reason  # threshold overrides
    g = grade_case(out, [contains("alpha"), contains("gamma", weight=0)], ctx())
    assert g.passed and g.score == 1.0 and g.outcomes[1].passed  # weight 0 reports, decides nothing
    assert grade_case(out, [contains("gamma", weight=0)], ctx()).score == 0.0  # total weight 0
    assert grade_case(out, [], ctx()).reason == "No assertions"
    g = grade_case(
        out,
        [contains("alpha", metric="acc", weight=2), contains("zeta", metric="acc"), regex("a", metric="fmt")],
        ctx(),
    )
    assert g.named_scores == {"acc": pytest.approx(2 / 3), "fmt": 1.0}  # weighted mean per metric
    g = grade_case(out, [contains("x"), contains("y")], ctx())
    assert g.reason == 'Expected output to contain "y"'  # the last failure, as promptfoo


def test_an_assert_set_is_one_check_of_its_case_as_in_promptfoo():
    """promptfoo's runAssertions: the set's checks are graded with the set's threshold (without
    one, all must pass) and the set counts once, with its weight and metric; the checks' metrics
    reach the case weighted by the set's weight times their own."""
    out = "alpha beta"
    group = Assertion(
        "assert-set",
        threshold=0.5,
        weight=2,
        metric="set",
        children=(contains("alpha", weight=3, metric="form"), contains("nope", metric="form")),
    )
    g = grade_case(out, [group, contains("alpha", metric="form")], ctx())
    assert [o.type for o in g.outcomes] == ["assert-set", "contains", "contains", "contains"]
    assert g.passed and g.outcomes[0].score == pytest.approx(0.75)  # 3 of 4 weight units
    assert g.score == pytest.approx((0.75 * 2 + 1) / 3)
    # form: the set's 0.75 at weight 4 (its checks' weights) x 2, and the plain check's 1 at 1
    assert g.named_scores == {"set": pytest.approx(0.75), "form": pytest.approx((0.75 * 8 + 1) / 9)}
    g = grade_case(out, [Assertion("assert-set", children=(contains("alpha"), contains("nope")))], ctx())
    assert not g.passed and g.reason == 'Expected output to contain "nope"'  # no threshold: all must pass
    g = grade_case(out, [Assertion("assert-set", weight=0, children=(contains("nope"),)), contains("alpha")], ctx())
    assert not g.passed and g.score == 1.0  # a weight-0 set still decides (promptfoo forces only checks)


def test_every_registered_type_is_in_the_suite_schema():
    schema = json.loads(
        (Path(__file__).parent.parent / "pytest_promptopt" / "schemas" / "suite.schema.json").read_text()
    )
    # Any type string loads (an unknown one makes its case an error, as in promptfoo); the schema
    # lists the types that run as `examples`, for editors. The `mlflow:` family is registered
    # under its prefix and written `mlflow:<scorer>`.
    examples = schema["$defs"]["assertion"]["properties"]["type"]["examples"]
    assert sorted(name.replace("mlflow:<scorer>", "mlflow:") for name in examples) == assertion_types()


def test_importing_any_assertions_module_registers_every_grader():
    """The package's `__init__` imports the graders (they register themselves): a process that
    imports only `assertions.base` knows every type, and `base` imports no grader module."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom pytest_promptopt.assertions.base import assertion_types\nprint(','.join(assertion_types()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out.split(",") == assertion_types()
    assert {"contains", "llm-rubric", "g-eval", "similar", "rouge-n", "python", "mlflow:"} <= set(out.split(","))
    base = (Path(__file__).parent.parent / "pytest_promptopt" / "assertions" / "base.py").read_text()
    graders = (
        "measures",
        "mlflow_scorers",
        "model_graded",
        "python_ref",
        "reference",
        "similarity",
        "structured",
        "text",
    )
    assert not any(f"import {name}" in base or f".{name} import" in base for name in graders)


@given(st.text(max_size=30), st.text(max_size=30))
def test_levenshtein_is_a_metric(a, b):
    d = levenshtein_distance(a, b)
    assert d == levenshtein_distance(b, a)
    assert (d == 0) == (a == b)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))


def test_tool_call_f1_reads_names_and_numbers_as_javascript_does():
    """promptfoo's expected names are `String(v)` (true -> "true", null -> "null"), a line's JSON
    is found after `trim()` (which also drops a byte order mark), and the threshold is printed
    as JavaScript prints a number (recorded verdicts: tests/data/promptfoo-format/tool_call_f1)."""
    calls = "\n".join(json.dumps({"type": "tool_use", "name": n}) for n in ("true", "null", "1"))
    assert grade(calls, Assertion("tool-call-f1", [True, None, 1])).passed
    assert grade(
        "\ufeff" + json.dumps({"type": "tool_use", "name": "search"}), Assertion("tool-call-f1", "search")
    ).passed
    missed = grade(calls, Assertion("tool-call-f1", ["true", "book"], threshold=0.9999999))
    assert not missed.passed and "below threshold 0.9999999." in missed.reason, missed.reason


@pytest.mark.parametrize(
    "code",
    [
        "{'pass': True, 'score': float('nan'), 'reason': 'fine'}",
        "{'pass': True, 'score': float('inf'), 'reason': 'fine'}",
        "{'pass': True, 'score': 1, 'reason': 'fine', 'named_scores': {'length': float('-inf')}}",
    ],
)
def test_a_code_check_whose_score_is_not_a_finite_number_fails(tmp_path: Path, code: str):
    """Scores are summed as given (promptfoo does not clip them): a NaN or infinite one would
    reach the case score, the named metrics and the gates (it passed the case before), so the
    check fails instead, in a file, inline or as a function (promptfoo fails a Python check whose
    JSON holds NaN)."""
    (tmp_path / "checks.py").write_text(f"def odd(output, context):\n    return {code}\n")
    checks = [python("file://checks.py:odd"), assertion("python", code)]
    if "named_scores" not in code:  # a Python test's own function (it reports no named scores)
        checks.append(python(lambda output, context: eval(code)))
    for check in checks:
        g = grade("x", check, base_dir=tmp_path)
        assert (g.passed, g.score, g.named_scores) == (False, 0.0, {}), g
        assert "not a finite number" in g.reason, g.reason
