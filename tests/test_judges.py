"""Model-graded assertions (llm-rubric, g-eval, factuality, answer-relevance, closed-qa) with
scripted judges: verdicts that pass, fail (the judge's reason in the failure message and the
report) or are garbage (an error, not a failure); judge calls through the cache; one run on
the bundled SmolLM2 as the judge."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import load_report

from pytest_promptopt import (
    FakeModel,
    ModelError,
    Request,
    Response,
    answer_relevance,
    closed_qa,
    factuality,
    g_eval,
    llm_rubric,
    not_,
)
from pytest_promptopt.assertions.base import AssertionConfigError
from pytest_promptopt.assertions.judge_prompts import first_json_object, verdict_fields
from pytest_promptopt.assertions.scoring import render_assertion
from pytest_promptopt.cache import CacheMode, CallStats, ResponseCache
from pytest_promptopt.execute import execute_case
from pytest_promptopt.judging import Judges
from pytest_promptopt.models.specs import ModelSpec
from pytest_promptopt.prompt import Prompt
from pytest_promptopt.suite.loader import load_suite
from pytest_promptopt.suite.model import Case
from pytest_promptopt.suite_info import SuiteInfo


class ScriptedJudge:
    """A cacheable judge: answers by the first rule whose key is in the judge prompt."""

    def __init__(self, rules: Mapping[str, str], name: str = "scripted-judge") -> None:
        self.rules = dict(rules)
        self.name = name
        self.calls: list[Request] = []

    @property
    def cache_identity(self) -> Mapping[str, Any]:
        return {"model": self.name, "rules": sorted(self.rules.items())}

    def generate(self, request: Request) -> Response:
        self.calls.append(request)
        text = request.messages[-1]["content"]
        for key, answer in self.rules.items():
            if key in text:
                return Response(text=answer, model=self.name)
        raise ModelError(f"{self.name}: no rule for {text[:80]!r}")


PASS = '{"reason": "It names Paris.", "pass": true, "score": 1.0}'
FAIL = '{"reason": "It names Lyon, not Paris.", "pass": false, "score": 0.1}'
GARBAGE = "I think this is a lovely answer, well done!"


def run(
    output: str,
    *assertions: Any,
    judge: Any,
    cache: ResponseCache,
    vars: Mapping[str, Any] | None = None,
    prompt: str = "What is the capital of France?",
) -> Any:
    """A case whose model answers `output`, graded with `judge` as the run's judge."""
    variables = dict(vars or {})
    case = Case(
        suite=SuiteInfo(id="s", name="s", file="s.yaml"),
        case_id="c",
        name="c",
        prompt=Prompt(prompt),
        rendered_prompt=prompt,
        prompt_index=0,
        test_index=0,
        vars=variables,
        assertions=tuple(render_assertion(a, variables) for a in assertions),
        model=ModelSpec("fake"),
    )
    judges = Judges(lambda spec: judge, lambda: cache, ModelSpec("judge/default"))
    return execute_case(case, FakeModel({prompt: output}, name="answers"), cache, judges=judges)


@pytest.fixture
def cache(tmp_path: Path) -> ResponseCache:
    return ResponseCache(tmp_path / "cache.sqlite", CacheMode.READWRITE)


# ----------------------------------------------------------------------------- reading verdicts


def test_the_first_json_object_is_found_in_prose_fences_and_python_dicts():
    assert first_json_object('Sure!\n```json\n{"pass": true, "score": 0.8}\n```\n{"pass": false}') == {
        "pass": True,
        "score": 0.8,
    }
    assert first_json_object("{'pass': False, 'reason': 'no'}") == {"pass": False, "reason": "no"}
    assert first_json_object('[1, 2] then {not json} then {"a": {"b": 1}}') == {"a": {"b": 1}}
    assert first_json_object(GARBAGE) is None and first_json_object("{broken") is None
    # a small model's broken JSON (an unescaped quote) still gives its fields
    assert verdict_fields('{"reason": "it\'s Paris\' capital\', "pass": true, "score": 0.9}') == {
        "pass": True,
        "score": 0.9,
        "reason": "it's Paris' capital",
    }
    assert verdict_fields("pass: true, no braces at all") is None


# ----------------------------------------------------------------------------- llm-rubric


def test_llm_rubric_pass_fail_and_garbage(cache):
    rubric = llm_rubric("Names Paris as the capital")
    passed = run("Paris.", rubric, judge=ScriptedJudge({"Paris.": PASS}), cache=cache)
    assert passed.passed is True and passed.error is None
    assert passed.assertions[0]["reason"] == "It names Paris." and passed.assertions[0]["score"] == 1.0

    failed = run("Lyon.", rubric, judge=ScriptedJudge({"Lyon.": FAIL}), cache=cache)
    assert failed.passed is False and failed.error is None
    assert failed.reason == "It names Lyon, not Paris." and failed.score == pytest.approx(0.1)

    garbage = run("Nice.", rubric, judge=ScriptedJudge({"Nice.": GARBAGE}), cache=cache)
    assert garbage.passed is False and garbage.assertions == []  # an error: no verdict, counted apart
    assert garbage.error.startswith(
        "assertion error: llm-rubric: could not read a verdict from judge scripted-judge's answer"
    )
    # under not-, an unreadable verdict is still an error: nothing was learnt about the output
    inverted = run("Nice.", not_(rubric), judge=ScriptedJudge({"Nice.": GARBAGE}), cache=cache)
    assert inverted.error is not None and inverted.assertions == []
    # not- inverts a readable verdict
    assert run("Lyon.", not_(rubric), judge=ScriptedJudge({"Lyon.": FAIL}), cache=cache).passed is True


def test_llm_rubric_threshold_and_partial_verdicts(cache):
    judge = ScriptedJudge(
        {
            "A.": '{"pass": true, "score": 0.6, "reason": "so so"}',
            "B.": '{"score": 0.4}',
            "C.": '{"pass": "yes"}',
            "D.": '{"reason": "no verdict"}',
        }
    )
    assert (
        run("A.", llm_rubric("r", threshold=0.7), judge=judge, cache=cache).passed is False
    )  # pass, but score < threshold
    assert run("A.", llm_rubric("r", threshold=0.5), judge=judge, cache=cache).passed is True
    only_score = run("B.", llm_rubric("r"), judge=judge, cache=cache)  # no pass: score >= 0.5
    assert only_score.passed is False and only_score.assertions[0]["score"] == 0.4
    assert run("C.", llm_rubric("r"), judge=judge, cache=cache).score == 1.0  # "yes" reads as pass, score from it
    assert "could not read a verdict" in run("D.", llm_rubric("r"), judge=judge, cache=cache).error


def test_a_judge_fault_is_an_error_with_the_judge_named(cache):
    def down(request: Request) -> str:
        raise ModelError("judge/x: upstream timed out after 60s")

    result = run("Paris.", llm_rubric("Names Paris"), judge=FakeModel(down, name="judge/x"), cache=cache)
    assert result.error == "assertion error: llm-rubric: the judge failed: judge/x: upstream timed out after 60s"
    empty = run("Paris.", llm_rubric("Names Paris"), judge=FakeModel(lambda r: "  ", name="quiet"), cache=cache)
    assert empty.error == "assertion error: llm-rubric: judge quiet returned an empty answer"


def test_the_judge_prompt_holds_rubric_output_and_rendered_vars(cache):
    judge = ScriptedJudge({"Paris.": PASS})
    run("Paris.", llm_rubric("Names {{city}} as the capital"), judge=judge, cache=cache, vars={"city": "Paris"})
    messages = judge.calls[0].messages
    assert messages[0]["role"] == "system" and "JSON" in messages[0]["content"]
    assert messages[-1] == {
        "role": "user",
        "content": "<Output>\nParis.\n</Output>\n<Rubric>\nNames Paris as the capital\n</Rubric>",
    }
    assert [m["role"] for m in messages[1:-1]] == ["user", "assistant", "user", "assistant"]  # worked examples


def test_a_custom_rubric_prompt(cache):
    judge = ScriptedJudge({"GRADE": PASS})
    template = '[{"role": "user", "content": "GRADE {{ output }} by {{ rubric }} for {{ country }}"}]'
    result = run(
        "Paris.",
        llm_rubric("Is right", config={"rubric_prompt": template}),
        judge=judge,
        cache=cache,
        vars={"country": "France"},
    )
    assert result.passed is True
    assert judge.calls[0].messages == ({"role": "user", "content": "GRADE Paris. by Is right for France"},)


# ----------------------------------------------------------------------------- the cache


def test_judge_calls_are_cached_keyed_by_judge_model_and_rubric(cache):
    judge = ScriptedJudge({"Paris.": PASS})
    cold = run("Paris.", llm_rubric("Names Paris"), judge=judge, cache=cache)
    assert (cold.calls, cold.cache_hits) == (2, 0)  # the model and the judge
    warm = run("Paris.", llm_rubric("Names Paris"), judge=judge, cache=cache)
    assert (warm.calls, warm.cache_hits) == (0, 2) and warm.passed is True and len(judge.calls) == 1
    other_rubric = run("Paris.", llm_rubric("Names the capital"), judge=judge, cache=cache)
    assert (other_rubric.calls, other_rubric.cache_hits) == (1, 1)  # the model's answer is a hit, the judge's a miss
    other_judge = run(
        "Paris.", llm_rubric("Names Paris"), judge=ScriptedJudge({"Paris.": PASS}, name="other-judge"), cache=cache
    )
    assert (other_judge.calls, other_judge.cache_hits) == (1, 1)


def test_replay_mode_without_a_recorded_verdict_is_an_error(tmp_path):
    replay = ResponseCache(tmp_path / "cache.sqlite", CacheMode.REPLAY)
    writer = ResponseCache(tmp_path / "cache.sqlite", CacheMode.READWRITE)
    writer.fetch(
        FakeModel({"What is the capital of France?": "Paris."}, name="answers"),
        Request.from_prompt("What is the capital of France?"),
        CallStats(),
    )
    result = run("Paris.", llm_rubric("Names Paris"), judge=ScriptedJudge({"Paris.": PASS}), cache=replay)
    assert result.error is not None and "replay mode: no recorded response for model scripted-judge" in result.error


# ----------------------------------------------------------------------------- the other types


def test_factuality_categories_scores_and_legacy_answers(cache):
    judge = ScriptedJudge(
        {
            "[Submission]: Sacramento.": '{"category": "C", "reason": "same facts"}',
            "[Submission]: Los Angeles.": '{"category": "D", "reason": "names another city"}',
            "[Submission]: Sacramento, since 1854.": "(B) The submission adds a date.",
            "[Submission]: Hmm.": '{"category": "F"}',
        }
    )
    reference = factuality("Sacramento is the capital of California")
    same = run("Sacramento.", reference, judge=judge, cache=cache)
    assert same.passed is True and same.score == 1.0 and same.assertions[0]["reason"] == "same facts"
    wrong = run("Los Angeles.", reference, judge=judge, cache=cache)
    assert wrong.passed is False and wrong.reason == "names another city"
    legacy = run("Sacramento, since 1854.", reference, judge=judge, cache=cache)
    assert legacy.passed is True and legacy.assertions[0]["reason"] == "The submission adds a date."
    scored = run(
        "Sacramento, since 1854.", factuality("Sacramento", scores={"superset": 0.0}), judge=judge, cache=cache
    )
    assert scored.passed is False and scored.score == 0.0
    assert "could not read a category (A-E)" in run("Hmm.", reference, judge=judge, cache=cache).error
    prompt = judge.calls[0].messages[-1]["content"]
    assert "[Expert]: Sacramento is the capital of California" in prompt and "(E)" in prompt
    assert "[Question]: What is the capital of France?" in prompt


def test_closed_qa_reads_the_final_letter(cache):
    judge = ScriptedJudge(
        {
            "[Submission]: Paris.": "The submission names Paris.\nY\nY",
            "[Submission]: Lyon.": "Lyon is not the capital.\nN\nN",
            "[Submission]: Eh.": "I cannot decide.",
        }
    )
    assert run("Paris.", closed_qa("names the capital"), judge=judge, cache=cache).passed is True
    failed = run("Lyon.", closed_qa("names the capital"), judge=judge, cache=cache)
    assert failed.passed is False and "Lyon is not the capital." in failed.reason
    assert "could not read a final Y or N" in run("Eh.", closed_qa("names the capital"), judge=judge, cache=cache).error
    # promptfoo's name for it
    from pytest_promptopt import assertion

    assert (
        run("Paris.", assertion("model-graded-closedqa", "names the capital"), judge=judge, cache=cache).passed is True
    )


def test_g_eval_writes_steps_then_scores_each_criterion(cache):
    judge = ScriptedJudge(
        {
            "write 3 to 4 short evaluation steps": '{"steps": ["Read it", "Check the tone"]}',
            "Evaluation criteria:\nIs polite": '{"score": 9, "reason": "polite"}',
            "Evaluation criteria:\nIs short": '{"score": 4, "reason": "too long"}',
        }
    )
    polite = run("Thank you kindly.", g_eval("Is polite"), judge=judge, cache=cache)
    assert polite.passed is True and polite.score == pytest.approx(0.9) and polite.assertions[0]["reason"] == "polite"
    assert polite.calls == 3  # model, steps, evaluation
    assert "- Read it\n- Check the tone" in judge.calls[1].messages[-1]["content"]
    both = run("Thank you kindly.", g_eval(["Is polite", "Is short"]), judge=judge, cache=cache)
    assert both.passed is False and both.score == pytest.approx(0.65)  # (0.9 + 0.4) / 2 < 0.7
    assert both.reason == "Score 0.65 below threshold 0.7: polite | too long"
    given = run(
        "Thank you kindly!", g_eval("Is polite", steps=["Look for thanks"], threshold=0.95), judge=judge, cache=cache
    )
    assert given.calls == 2 and given.passed is False  # no steps call; 0.9 < 0.95
    garbage = run("Eh.", g_eval("Is polite", steps=["x"]), judge=ScriptedJudge({"Reply:": GARBAGE}), cache=cache)
    assert "g-eval: could not read a score" in garbage.error


def test_answer_relevance_judges_the_query(cache):
    judge = ScriptedJudge(
        {
            "<Question>\nWhere is Paris?": '{"reason": "on topic", "pass": true, "score": 0.9}',
            "<Question>\nWhat is the capital of France?": '{"reason": "off topic", "pass": false, "score": 0.1}',
        }
    )
    by_query = run(
        "In France.", answer_relevance(threshold=0.8), judge=judge, cache=cache, vars={"query": "Where is Paris?"}
    )
    assert by_query.passed is True
    by_prompt = run("Bananas are yellow.", answer_relevance(), judge=judge, cache=cache)
    assert by_prompt.passed is False and by_prompt.reason == "off topic"


def test_a_hosted_judge_through_litellm_on_a_loopback_server(cache, monkeypatch):
    from fake_openai import FakeOpenAI

    from pytest_promptopt.models.specs import create_model

    monkeypatch.setenv("JUDGE_KEY", "sk-judge-0123456789")
    with FakeOpenAI(lambda body: (200, FAIL)) as server:
        provider = {
            "id": "openai/judge-mini",
            "config": {"api_base": server.base_url, "api_key_env": "JUDGE_KEY", "temperature": 0},
        }
        rubric = render_assertion(llm_rubric("Names Paris", provider=provider), {})
        case = Case(
            suite=SuiteInfo(id="s", name="s", file="s.yaml"),
            case_id="c",
            name="c",
            prompt=Prompt("q"),
            rendered_prompt="q",
            prompt_index=0,
            test_index=0,
            vars={},
            assertions=(rubric,),
            model=ModelSpec("fake"),
        )
        judges = Judges(lambda spec: create_model(spec), lambda: cache, ModelSpec("smollm2"))
        result = execute_case(case, FakeModel({"q": "Lyon."}), cache, judges=judges)
        again = execute_case(case, FakeModel({"q": "Lyon."}), cache, judges=judges)
    assert result.passed is False and result.reason == "It names Lyon, not Paris."
    assert server.requests[0]["model"] == "judge-mini" and server.requests[0]["temperature"] == 0
    assert server.requests[0]["messages"][-1]["content"].startswith("<Output>\nLyon.\n</Output>")
    assert len(server.requests) == 1 and again.cache_hits == 2  # the verdict was recorded
    assert "sk-judge" not in json.dumps(result.to_dict()) + json.dumps(rubric.to_dict())


def test_the_registry_says_which_types_call_a_judge_and_how_often():
    from pytest_promptopt import contains, similar
    from pytest_promptopt.assertions.base import is_model_graded, judge_calls_for
    from pytest_promptopt.judging import judge_calls

    assert [judge_calls_for(t) for t in ("llm-rubric", "g-eval", "factuality", "mlflow:Guidelines", "contains")] == [
        1,
        2,
        1,
        1,
        0,
    ]
    assert judge_calls_for("no-such-type") == 0 and not is_model_graded("no-such-type")
    assert is_model_graded("closed-qa") and is_model_graded("model-graded-closedqa")
    assert not is_model_graded("mlflow:Guidelines") and not is_model_graded("similar")  # they call their own models
    assert judge_calls([llm_rubric("r"), g_eval("c"), not_(factuality("f")), similar("s"), contains("x")]) == 4


def test_a_model_graded_assertion_without_a_judge_in_its_context_is_an_error():
    from pytest_promptopt.assertions.base import AssertionContext, AssertionEvaluationError
    from pytest_promptopt.assertions.scoring import grade_assertion

    judge = ScriptedJudge({"Paris.": PASS}, name="object-judge")
    for rubric in (llm_rubric("Names Paris"), llm_rubric("Names Paris", provider=judge)):
        with pytest.raises(AssertionEvaluationError, match="llm-rubric: no judge model in this context"):
            grade_assertion("Paris.", render_assertion(rubric, {}), AssertionContext())
    assert judge.calls == []  # a model object as provider is not called behind the context's back


def test_a_model_object_as_provider_and_a_bad_provider():
    judge = ScriptedJudge({"Paris.": PASS}, name="object-judge")
    rubric = render_assertion(llm_rubric("Names Paris", provider=judge), {})
    assert rubric.to_dict()["provider"] == {"object": "object-judge"}
    with pytest.raises(AssertionConfigError, match="provider"):
        render_assertion(llm_rubric("Names Paris", provider="nonsense"), {})
    with pytest.raises(AssertionConfigError, match="g-eval criteria"):
        render_assertion(g_eval([]), {})
    with pytest.raises(AssertionConfigError, match="config.factuality"):
        render_assertion(factuality("x", scores={"wrong": 1}), {})


# ----------------------------------------------------------------------------- suite files

JUDGE_CONFTEST = """
from pytest_promptopt import ModelError, Response

VERDICTS = {
    "Paris": '{"reason": "It names Paris.", "pass": true, "score": 1.0}',
    "Lyon": '{"reason": "The judge says Lyon is not the capital of France.", "pass": false, "score": 0.0}',
    "Gibberish": "lovely, just lovely",
}


class ScriptedJudge:
    name = "judge/scripted"
    cache_identity = {"model": "judge/scripted", "version": 1}

    def generate(self, request):
        text = request.messages[-1]["content"]
        for key, answer in VERDICTS.items():
            if "<Output>\\n" + key in text:
                return Response(text=answer, model=self.name)
        raise ModelError("no verdict scripted")


def pytest_promptopt_make_model(spec):
    if spec.id == "judge/scripted":
        return ScriptedJudge()
"""

JUDGED_SUITE = """
description: judged
providers: [echo]
prompts: ["{{city}}"]
tests:
  - description: right
    vars: {city: Paris}
    assert: [{type: llm-rubric, value: "Names the capital of France", metric: judged}]
  - description: wrong
    vars: {city: Lyon}
    assert: [{type: llm-rubric, value: "Names the capital of France", metric: judged}]
  - description: garbage
    vars: {city: Gibberish}
    assert: [{type: llm-rubric, value: "Names the capital of France"}]
"""


def test_a_suite_judged_by_the_judge_model_option(pytester, run_pytest, mode):
    pytester.makeconftest(JUDGE_CONFTEST)
    pytester.makefile(".promptopt.yaml", qa=JUDGED_SUITE)
    result = run_pytest(
        "--promptopt", "--promptopt-judge-model", "judge/scripted", "--promptopt-report", "r.json", *mode
    )
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*FAILED wrong*The judge says Lyon is not the capital of France.*",
        ]
    )
    out = result.stdout.str()
    assert "could not read a verdict from judge judge/scripted's answer: 'lovely, just lovely'" in out
    suite = load_report(pytester.path / "r.json")["suites"][0]
    by_name = {r["name"].split("[")[0]: r for r in suite["results"]}
    assert by_name["wrong"]["assertions"][0]["reason"] == "The judge says Lyon is not the capital of France."
    assert by_name["right"]["named_scores"] == {"judged": 1.0}
    assert by_name["garbage"]["error"].startswith("assertion error: llm-rubric: could not read a verdict")
    assert (by_name["right"]["calls"], by_name["right"]["cache_hits"]) == (2, 0)  # echo (never cached) and the judge
    # a warm rerun: every verdict comes from the cache (the garbage one too: it was an answer)
    result = run_pytest(
        "--promptopt", "--promptopt-judge-model", "judge/scripted", "--promptopt-report", "r2.json", *mode
    )
    result.assert_outcomes(passed=1, failed=1, errors=1)
    warm = load_report(pytester.path / "r2.json")["suites"][0]["results"]
    assert [(r["calls"], r["cache_hits"]) for r in warm] == [(1, 1)] * 3


def test_the_judge_from_the_ini_file_options_provider_and_the_assertion(pytester, run_pytest):
    pytester.makeconftest(JUDGE_CONFTEST)
    pytester.makeini("[pytest]\npromptopt_judge_model = judge/scripted\n")
    pytester.makefile(
        ".promptopt.yaml",
        qa="""
providers: [echo]
prompts: ["{{city}}"]
tests:
  - vars: {city: Paris}
    assert: [{type: llm-rubric, value: "Names the capital"}]
  - vars: {city: Paris}
    options: {provider: judge/scripted}
    assert: [{type: llm-rubric, value: "Names the capital"}]
  - vars: {city: Lyon}
    options: {provider: nobody/else}
    assert: [{type: llm-rubric, value: "Names the capital", provider: judge/scripted}, {type: contains, value: Lyon}]
""",
    )
    result = run_pytest("--promptopt")
    result.assert_outcomes(passed=2, failed=1)
    loaded = load_suite(pytester.path / "qa.promptopt.yaml", "qa.promptopt.yaml", ModelSpec("echo"))
    ini_judged, options_judged, own = loaded.cases
    assert ini_judged.assertions[0].provider is None  # the run's judge: promptopt_judge_model
    assert options_judged.assertions[0].provider == "judge/scripted"
    assert (
        own.assertions[0].provider == "judge/scripted" and own.assertions[1].provider is None
    )  # contains has no judge


def test_suite_problems_with_judges_are_errors_of_their_cases_found_at_load(tmp_path):
    suite = tmp_path / "bad.promptopt.yaml"
    suite.write_text(
        "prompts: ['x']\ntests:\n  - assert: [{type: llm-rubric, value: ok, provider: 'python:judge.py'}]\n"
    )
    (case,) = load_suite(suite, "bad.promptopt.yaml", ModelSpec("echo")).cases
    assert case.error.startswith("bad.promptopt.yaml:3: tests[0].assert[0]: ") and (
        "provider 'python:judge.py' is not supported" in case.error
    )
    suite.write_text("prompts: ['x']\ntests:\n  - assert: [{type: g-eval}]\n")
    (case,) = load_suite(suite, "bad.promptopt.yaml", ModelSpec("echo")).cases
    assert case.error == "bad.promptopt.yaml:3: tests[0].assert[0]: 'g-eval' needs a 'value'"
    # promptfoo's CSV shorthand names model-graded types too
    from pytest_promptopt.suite.sources import assertion_from_string

    # promptfoo keeps the text after `llm-rubric:` as it is (its leading space too)
    assert assertion_from_string("llm-rubric: is polite") == {"type": "llm-rubric", "value": " is polite"}
    assert assertion_from_string("not-factuality: Paris")["type"] == "not-factuality"


def test_default_test_options_provider_judges_every_model_graded_assertion(tmp_path):
    suite = tmp_path / "s.promptopt.yaml"
    suite.write_text(
        "prompts: ['x']\ndefaultTest:\n  options: {provider: 'openai:gpt-4o-mini'}\n"
        "  assert: [{type: factuality, value: Paris}]\n"
        "tests:\n  - assert: [{type: g-eval, value: polite, provider: {id: anthropic/claude-x, config: {temperature: 0}}},"
        " {type: contains, value: x}]\n"
    )
    [case] = load_suite(suite, "s.promptopt.yaml", ModelSpec("echo")).cases
    assert [a.provider for a in case.assertions] == [
        "openai:gpt-4o-mini",
        {"id": "anthropic/claude-x", "config": {"temperature": 0}},
        None,
    ]


def test_python_tests_with_judges(pytester, run_pytest):
    pytester.makeconftest(JUDGE_CONFTEST)
    pytester.makepyfile(
        test_judged="""
        import pytest
        from pytest_promptopt import FakeModel, llm_rubric, not_

        def verdict(request):
            text = request.messages[-1]["content"]
            ok = "Paris" in text.split("<Rubric>")[0]
            return '{"reason": "%s", "pass": %s}' % ("names Paris" if ok else "no Paris here", "true" if ok else "false")

        local_judge = FakeModel(verdict, name="local-judge")

        @pytest.mark.promptopt(model=FakeModel({"Capital of France?": "Paris"}))
        def test_object_judge(prompt_model, prompt_check):
            answer = prompt_model("Capital of France?")
            prompt_check(answer, llm_rubric("Names the capital", provider=local_judge))
            prompt_check(answer, not_(llm_rubric("Names the capital", provider=local_judge)))

        @pytest.mark.promptopt(model=FakeModel({"Capital of France?": "Paris"}))
        def test_run_judge(prompt_model, prompt_check):
            prompt_check(prompt_model("Capital of France?"), llm_rubric("Names the capital"))
    """
    )
    result = run_pytest("--promptopt", "--promptopt-judge-model", "judge/scripted", "--promptopt-report", "r.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_object_judge*", "*Expected output not to satisfy llm-rubric*"])
    results = {r["name"]: r for r in load_report(pytester.path / "r.json")["suites"][0]["results"]}
    assert results["test_run_judge"]["passed"] is True
    assert results["test_run_judge"]["calls"] + results["test_run_judge"]["cache_hits"] == 2  # model + judge


# ----------------------------------------------------------------------------- the bundled model as judge


@pytest.mark.slow_model
def test_the_bundled_model_as_judge_end_to_end(pytester, run_pytest):
    """SmolLM2-135M judging two answers: the plumbing works (a JSON verdict read, the judge call
    counted, a warm rerun from the cache); its verdicts themselves are not to be trusted."""
    pytester.makefile(
        ".promptopt.yaml",
        qa="""
providers: [echo]
prompts: ["{{answer}}"]
defaultTest:
  assert:
    - type: llm-rubric
      value: Names Paris as the capital of France
      provider: {id: smollm2, config: {max_tokens: 40}}
tests:
  - vars: {answer: "The capital of France is Paris."}
  - vars: {answer: "I like turtles."}
""",
    )
    result = run_pytest("--promptopt", "--promptopt-report", "r.json")
    suite = load_report(pytester.path / "r.json")["suites"][0]
    first = suite["results"][0]
    assert first["error"] is None and first["passed"] is True, first  # read from its few-shot JSON verdict
    assert first["assertions"][0]["reason"]
    for record in suite["results"]:  # echo and the judge
        assert (record["calls"], record["cache_hits"]) == (2, 0) and (
            record["error"] is None or "llm-rubric" in record["error"]
        )
    rerun = run_pytest("--promptopt", "--promptopt-report", "r2.json")
    warm = load_report(pytester.path / "r2.json")["suites"][0]["results"]
    assert [r["cache_hits"] for r in warm] == [1, 1] and [r["passed"] for r in warm] == [
        r["passed"] for r in suite["results"]
    ]
    assert result.ret == rerun.ret


BATCHED_JUDGE_CONFTEST = """
import threading
from pytest_promptopt import ModelError, Response

class Batcher:  # a batching model, as the bundled one is
    name = "acme/batch"
    cache_identity = {"model": "acme/batch"}

    def generate(self, request):
        return self.generate_batch([request])[0]

    def generate_batch(self, requests):
        return [Response(text=r.prompt, model=self.name) for r in requests]

# The judge answers only when two of its calls are in flight together: a batch whose cases
# were graded one after another would break the barrier.
MEETING = threading.Barrier(2, timeout=15)

class MeetingJudge:
    name = "judge/meeting"
    cache_identity = {"model": "judge/meeting"}

    def generate(self, request):
        try:
            MEETING.wait()
        except threading.BrokenBarrierError:
            raise ModelError("the judge was called for one case at a time") from None
        return Response(text='{"reason": "fine", "pass": true, "score": 1.0}', model=self.name)

def pytest_promptopt_make_model(spec):
    return {"acme/batch": Batcher(), "judge/meeting": MeetingJudge()}.get(spec.id)
"""


@pytest.mark.parametrize("mode", [[], ["-p", "no:xdist"]], ids=["plain", "no-xdist"])
def test_the_cases_of_a_batch_are_judged_concurrently(pytester, run_pytest, mode):
    # (Under -n 2 each worker's batches hold the cases the scheduler sent it, which may be one.)
    pytester.makeconftest(BATCHED_JUDGE_CONFTEST)
    tests = "\n".join(f"  - vars: {{n: '{i}'}}\n    assert: [{{type: llm-rubric, value: a number}}]" for i in range(4))
    pytester.makefile(
        ".promptopt.yaml", batched=f"providers: [acme/batch]\nprompts: ['case {{{{n}}}}']\ntests:\n{tests}\n"
    )
    result = run_pytest(
        "--promptopt",
        "--promptopt-cache",
        "off",
        "--promptopt-batch-size",
        "4",
        "--promptopt-judge-model",
        "judge/meeting",
        "--promptopt-report",
        "r.json",
        *mode,
    )
    result.assert_outcomes(passed=4)
    results = load_report(pytester.path / "r.json")["suites"][0]["results"]
    assert [(r["output"], r["calls"]) for r in results] == [
        (f"case {i}", 2) for i in range(4)
    ]  # the answer and the verdict
