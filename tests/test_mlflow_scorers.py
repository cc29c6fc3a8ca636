"""MLflow GenAI scorers as assertions: built-in LLM judges (Guidelines, Correctness) answered by
a loopback OpenAI-compatible server, and custom `@scorer` functions, in suite files and Python
tests; their Feedback value and rationale become the assertion's score and reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import load_report
from fake_openai import FakeOpenAI

from pytest_promptopt import FakeModel, mlflow_scorer
from pytest_promptopt.assertions.base import Assertion, AssertionConfigError, AssertionEvaluationError
from pytest_promptopt.assertions.mlflow_scorers import grade_feedback, is_scorer
from pytest_promptopt.assertions.scoring import render_assertion
from pytest_promptopt.cache import CacheMode, ResponseCache
from pytest_promptopt.execute import execute_case
from pytest_promptopt.judging import Judges
from pytest_promptopt.models.specs import ModelSpec
from pytest_promptopt.prompt import Prompt
from pytest_promptopt.suite.model import Case
from pytest_promptopt.suite_info import SuiteInfo

mlflow_entities = pytest.importorskip("mlflow.entities")
Feedback = mlflow_entities.Feedback


def judge_answer(body: dict[str, Any]) -> tuple[int, str]:
    """MLflow's judges ask for {"result": "yes|no", "rationale": ...}: yes when the response
    names Paris."""
    prompt = body["messages"][-1]["content"]
    response = prompt.split("<response>")[-1] if "<response>" in prompt else prompt.split("<claim>")[-1]
    if "Paris" in response.split("</")[0]:
        return 200, json.dumps({"rationale": "The response names Paris.", "result": "yes"})
    return 200, json.dumps({"rationale": "Let's think step by step. The response does not name Paris.", "result": "no"})


@pytest.fixture
def openai_server(monkeypatch: pytest.MonkeyPatch) -> Any:
    with FakeOpenAI(judge_answer) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback-0123456789")
        monkeypatch.setenv("OPENAI_API_BASE", server.base_url)
        monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        monkeypatch.setenv("MLFLOW_MODEL_CATALOG_URI", "")  # offline: MLflow's vendored model catalog only
        yield server


def run(
    output: str,
    *assertions: Assertion,
    cache: ResponseCache,
    prompt: str = "What is the capital of France?",
    vars: dict[str, Any] | None = None,
    judge: ModelSpec = ModelSpec("smollm2"),
) -> Any:
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
    model = FakeModel({prompt: output}, name="answers")
    judges = Judges(lambda spec: pytest.fail(f"no plugin judge model expected, got {spec}"), lambda: cache, judge)
    return execute_case(case, model, cache, judges=judges)


@pytest.fixture
def cache(tmp_path: Path) -> ResponseCache:
    return ResponseCache(tmp_path / "cache.sqlite", CacheMode.READWRITE)


# ----------------------------------------------------------------------------- Feedback -> grade


def test_feedback_values_become_scores_and_rationales_reasons():
    yes = grade_feedback(Feedback(value="yes", rationale="fine"), None, "s")
    assert (yes.passed, yes.score, yes.reason) == (True, 1.0, "fine")
    no = grade_feedback(Feedback(value="no", rationale="not fine"), None, "s")
    assert (no.passed, no.score, no.reason) == (False, 0.0, "not fine")
    assert grade_feedback(True, None, "s").passed is True and grade_feedback(False, None, "s").score == 0.0
    assert grade_feedback(Feedback(value=0.8), 0.9, "s").passed is False  # a number against the threshold
    assert grade_feedback(Feedback(value=0.8), None, "s").passed is True  # > 0 without one, as `python`
    both = grade_feedback([Feedback(value="yes", rationale="a"), Feedback(value="no", rationale="b")], None, "s")
    assert (both.passed, both.score, both.reason) == (False, 0.5, "b")
    with pytest.raises(AssertionEvaluationError, match="s: boom"):
        grade_feedback(Feedback(error=ValueError("boom")), None, "s")
    with pytest.raises(AssertionEvaluationError, match="'maybe', which is not a verdict"):
        grade_feedback(Feedback(value="maybe"), None, "s")
    with pytest.raises(AssertionEvaluationError, match="no feedback"):
        grade_feedback(None, None, "s")


# ----------------------------------------------------------------------------- built-in judges


def test_a_builtin_guidelines_judge_on_a_loopback_server(openai_server, cache):
    from mlflow.genai.scorers import Guidelines

    english = Guidelines(name="names_paris", guidelines="The response must name Paris", model="openai:/gpt-4o-mini")
    assert is_scorer(english)
    passed = run("The capital is Paris.", mlflow_scorer(english, metric="paris"), cache=cache)
    assert passed.error is None and passed.passed is True
    assert passed.assertions[0]["reason"] == "The response names Paris."
    assert passed.named_scores == {"paris": 1.0}
    assert passed.assertions[0]["type"] == "mlflow:names_paris"
    failed = run("The capital is Lyon.", mlflow_scorer(english), cache=cache)
    assert failed.passed is False and failed.reason == "The response does not name Paris."
    # MLflow's judge saw the rendered prompt as the request, and the output as the response
    sent = openai_server.requests[0]["messages"][-1]["content"]
    assert (
        "<request>What is the capital of France?</request>" in sent
        and "<response>The capital is Paris.</response>" in sent
    )
    assert openai_server.requests[0]["model"] == "gpt-4o-mini"
    # The judge's verdict is cached like a model answer: a rerun asks the server nothing.
    asked = len(openai_server.requests)
    again = run("The capital is Paris.", mlflow_scorer(english), cache=cache)
    assert again.passed is True and len(openai_server.requests) == asked and again.cache_hits == 2


def test_a_builtin_correctness_judge_with_expectations_and_the_run_judge_model(openai_server, cache):
    from mlflow.genai.scorers import Correctness

    # No model given: the run's judge model (a litellm id) becomes the MLflow judge's model.
    assertion = Assertion("mlflow:Correctness", "Paris is the capital of France", where="mlflow:Correctness")
    result = run("Paris.", assertion, cache=cache, judge=ModelSpec("openai/gpt-4o-judge"))
    assert result.error is None and result.passed is True
    assert openai_server.requests[-1]["model"] == "gpt-4o-judge"
    assert "Paris is the capital of France" in openai_server.requests[-1]["messages"][-1]["content"]
    assert isinstance(Correctness(), Correctness)


def test_scorer_problems_are_errors(cache, tmp_path):
    unknown = run("x", Assertion("mlflow:Guidlines", where="mlflow:Guidlines"), cache=cache)
    assert "has no scorer 'Guidlines'; did you mean 'mlflow:Guidelines'?" in unknown.error
    bad_arguments = run("x", Assertion("mlflow:Guidelines", config={"guidelines": 3}, where="a"), cache=cache)
    assert bad_arguments.error.startswith("assertion error: a: Guidelines(guidelines):")
    from mlflow.genai.scorers import scorer

    @scorer
    def broken(outputs):
        raise RuntimeError("cannot score")

    @scorer
    def failing_feedback(outputs):
        return Feedback(error=ValueError("judge unreachable"))

    assert "raised RuntimeError: cannot score" in run("x", mlflow_scorer(broken), cache=cache).error
    assert (
        run("x", mlflow_scorer(failing_feedback), cache=cache).error
        == "assertion error: MLflow scorer failing_feedback: judge unreachable"
    )
    with pytest.raises(AssertionConfigError, match="takes an mlflow.genai Scorer"):
        mlflow_scorer(lambda outputs: True)


# ----------------------------------------------------------------------------- custom scorers


def test_a_custom_scorer_sees_vars_messages_outputs_and_expectations(cache):
    from mlflow.genai.scorers import scorer

    seen: dict[str, Any] = {}

    @scorer
    def concise(inputs, outputs, expectations):
        seen.update(inputs=inputs, outputs=outputs, expectations=expectations)
        return Feedback(
            value=len(outputs.split()) <= expectations["max_words"], rationale=f"{len(outputs.split())} words"
        )

    result = run(
        "Paris it is.",
        mlflow_scorer(concise, {"max_words": 5}),
        cache=cache,
        vars={"country": "France"},
        prompt="Capital of {{country}}?".replace("{{country}}", "France"),
    )
    assert result.passed is True and result.assertions[0]["reason"] == "3 words"
    assert seen["inputs"] == {"messages": [{"role": "user", "content": "Capital of France?"}], "country": "France"}
    assert seen["outputs"] == "Paris it is." and seen["expectations"] == {"max_words": 5}
    assert (result.calls, result.cache_hits) == (1, 0)  # a @scorer function runs every time, uncounted


SCORERS_PY = """
from mlflow.entities import Feedback
from mlflow.genai.scorers import scorer


@scorer
def is_short(outputs):
    words = len(outputs.split())
    return Feedback(value=words <= 6, rationale=f"{words} words")


def mentions(outputs, expectations):  # a plain function: wrapped with @scorer
    return expectations["expected_response"] in outputs
"""

SUITE = """
description: mlflow scorers
providers: [echo]
prompts: ["{{answer}}"]
tests:
  - description: right
    vars: {answer: "The capital of France is Paris."}
    assert:
      - type: mlflow:Guidelines
        config: {name: names_paris, guidelines: "The response must name Paris", model: "openai:/gpt-4o-mini"}
        metric: guidelines
      - {type: "mlflow:file://scorers.py:is_short"}
      - {type: "mlflow:scorers:mentions", value: Paris}
  - description: wrong
    vars: {answer: "The capital of France is Lyon, which is a city known for food."}
    assert:
      - type: mlflow:Guidelines
        config: {name: names_paris, guidelines: "The response must name Paris", model: "openai:/gpt-4o-mini"}
      - {type: "not-mlflow:file://scorers.py:is_short"}
  - description: correct
    vars: {answer: "Paris."}
    assert:
      - {type: mlflow:Correctness, value: {expected_response: "Paris"}, config: {model: "openai:/gpt-4o-mini"}}
"""


def test_builtin_and_custom_scorers_in_a_suite_file(pytester, run_pytest, openai_server):
    pytester.makepyfile(scorers=SCORERS_PY)
    pytester.makeini("[pytest]\npythonpath = .\n")
    pytester.makefile(".promptopt.yaml", qa=SUITE)
    result = run_pytest("--promptopt", "--promptopt-report", "r.json")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*FAILED wrong*The response does not name Paris.*"])
    results = {r["name"].split("[")[0]: r for r in load_report(pytester.path / "r.json")["suites"][0]["results"]}
    right = results["right"]["assertions"]
    assert [a["type"] for a in right] == [
        "mlflow:Guidelines",
        "mlflow:file://scorers.py:is_short",
        "mlflow:scorers:mentions",
    ]
    assert right[0]["reason"] == "The response names Paris." and right[1]["reason"] == "6 words"
    assert results["right"]["named_scores"] == {"guidelines": 1.0}
    wrong = results["wrong"]["assertions"]
    assert [a["passed"] for a in wrong] == [False, True]  # not- inverts the custom scorer
    assert results["correct"]["passed"] is True
    # the two built-in judges' verdicts were cached: a rerun asks the server nothing
    asked = len(openai_server.requests)
    assert asked == 3
    result = run_pytest("--promptopt")
    result.assert_outcomes(passed=2, failed=1)
    assert len(openai_server.requests) == asked


def test_scorer_objects_in_a_python_test(pytester, run_pytest, openai_server):
    pytester.makepyfile(
        test_scored="""
        import pytest
        from mlflow.entities import Feedback
        from mlflow.genai.scorers import Guidelines, scorer
        from pytest_promptopt import FakeModel, mlflow_scorer

        @scorer
        def is_short(outputs):
            return Feedback(value=len(outputs.split()) <= 6, rationale=f"{len(outputs.split())} words")

        NAMES_PARIS = Guidelines(name="names_paris", guidelines="The response must name Paris", model="openai:/gpt-4o-mini")

        @pytest.mark.promptopt(model=FakeModel({"Capital of France?": "Paris.", "Capital of Italy?": "Rome, of course, the eternal city."}))
        @pytest.mark.parametrize("country", ["France", "Italy"])
        def test_capital(prompt_model, prompt_check, country):
            answer = prompt_model(f"Capital of {country}?")
            prompt_check(answer, NAMES_PARIS, mlflow_scorer(is_short, metric="short"))
    """
    )
    result = run_pytest("--promptopt", "--promptopt-report", "r.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FAIL  mlflow:names_paris*", "*The response does not name Paris.*"])
    results = {r["name"]: r for r in load_report(pytester.path / "r.json")["suites"][0]["results"]}
    france = results["test_capital[France]"]
    assert france["passed"] is True and france["named_scores"] == {"short": 1.0}
    assert france["calls"] == 2  # the model and the MLflow judge, through the cache
