"""Every case as an MLflow trace (on by default up to 500 cases), shaped for MLflow's evaluation
views, against a real SQLite store: vars as inputs, the plain answer as output, the checks'
expected values and verdicts as assessments named per suite, rationales escaped for the UI's
Markdown, the linked prompt version, and request previews that pair a case across runs.

Uses tests/test_mlflow.py's migrated store template and offline setup (its fixtures are imported).
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import ECHO_SUITE, load_report
from test_mlflow import migrated_store, offline_mlflow, run_tree, sqlite_uri  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(240)

SECRET = "tok-4f1c9a7e52d8b3"  # the value of PROMPTOPT_TEST_TOKEN: must never reach the store

PYTHON_TESTS = """
import os
import pytest
from pytest_promptopt import FakeModel, ModelError, contains

def answer(request):
    if "(down)" in request.prompt:
        raise ModelError("connection refused")
    return "Paris, key " + os.environ["PROMPTOPT_TEST_TOKEN"]

@pytest.mark.promptopt(suite="py-capitals", model=FakeModel(answer, name="scripted"))
@pytest.mark.parametrize("where", ["up", "down"])
def test_capital(prompt_model, prompt_check, where):
    prompt_check(prompt_model(f"Capital of France? ({where}) key " + os.environ["PROMPTOPT_TEST_TOKEN"]), contains("Paris"))
"""

CASES = {"capitals": 3, "py-capitals": 2}


def write_project(pytester: pytest.Pytester, migrated: object, ini: str = "") -> None:
    pytester.makefile(".promptopt.yaml", qa=ECHO_SUITE)
    pytester.makepyfile(test_py=PYTHON_TESTS)
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    shutil.copy(migrated, pytester.path / "mlflow.db")  # the default store: <rootdir>/mlflow.db


def traces_by_run(client, experiment_id: str, run_id: str) -> list:
    return list(client.search_traces(locations=[experiment_id], run_id=run_id, max_results=100))


REGEX_SUITE = r"""
description: light/dark
providers: [echo]
prompts: ["Antonym of {{word}}?", '[{"role": "system", "content": "One word."}, {"role": "user", "content": "Antonym of {{word}}?"}]']
tests:
  - vars: {word: dark}
    assert: [{type: regex, value: '(?i)^\W*light\W*$'}]
"""


@pytest.mark.parametrize("mode", ["plain", "xdist-ini"])
def test_every_case_is_a_trace_of_its_suite_run_shaped_for_the_evaluation_views(
    pytester, run_pytest, migrated_store, monkeypatch, mode
):
    monkeypatch.setenv("PROMPTOPT_TEST_TOKEN", SECRET)
    if mode == "plain":  # traces are the default (a run of up to 500 cases)
        write_project(pytester, migrated_store)
        args = []
    else:  # the ini twin, under xdist: the records travel to the controller, which writes the traces
        write_project(pytester, migrated_store, ini="promptopt_mlflow_traces = true")
        args = ["-n", "2"]
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", *args, mlflow=True)
    assert result.ret == 1  # the wrong capital fails, the model error errors
    assert "warning" not in result.stdout.str().lower(), result.stdout.str()
    client, parent, children = run_tree(sqlite_uri(pytester.path / "mlflow.db"), pytester.path.name)
    assert sorted(children) == sorted(CASES)
    experiment_id = parent.info.experiment_id
    report = {
        s["name"]: {r["nodeid"]: r for r in s["results"]} for s in load_report(pytester.path / "r.json")["suites"]
    }
    capitals_prompt = {"name": "capitals", "version": "1"}  # the suite's own prompt, registered
    assert json.loads(children["capitals"].data.tags["mlflow.linkedPrompts"]) == [capitals_prompt]

    every = []
    for name, child in children.items():
        traces = traces_by_run(client, experiment_id, child.info.run_id)
        assert len(traces) == CASES[name], name
        assert {t.info.tags["mlflow.test.name"] for t in traces} == set(report[name])
        every += traces
        for trace in traces:
            case = report[name][trace.info.tags["mlflow.test.name"]]
            info, span = trace.info, trace.data.spans[0]
            assert info.trace_metadata["mlflow.sourceRun"] == child.info.run_id
            assert info.tags["promptopt.suite"] == name and info.tags["promptopt.case_id"] == case["case_id"]
            assert info.tags["mlflow.traceName"] == case["name"]
            # inputs: the case's vars (the pairing key of "compare to"); the prompt as an attribute
            assert span.inputs == case["vars"] and info.request_preview == json.dumps(case["vars"])
            assert span.attributes["promptopt.prompt"] == case["prompt"].replace(SECRET, "***")
            assert span.attributes["promptopt.model"] == case["model"]
            assert span.attributes["promptopt.latency_ms"] == case["latency_ms"]
            assert info.request_time == int(case["started_at"] * 1000)
            assert (
                span.attributes["promptopt.cache_hit"] is False and span.attributes["promptopt.calls"] == case["calls"]
            )
            feedback = {a.name: a for a in info.assessments if a.feedback is not None}
            expected = [a for a in info.assessments if a.expectation is not None]
            verdict = feedback[f"{name}/case/passed"]
            assert verdict.metadata["mlflow.assessment.sourceRunId"] == child.info.run_id
            assert verdict.span_id == span.span_id and verdict.source.source_type == "CODE"
            if name == "capitals":
                assert json.loads(info.tags["mlflow.linkedPrompts"]) == [capitals_prompt]
            else:
                assert "mlflow.linkedPrompts" not in info.tags  # a Python test without registry prompts
            if case["error"]:
                assert info.state.value == "ERROR" and span.status.status_code.value == "ERROR"
                assert span.outputs is None and "connection refused" in case["error"]
                # the message says where the error arose; the type names no cause it may not have
                assert [e.attributes["exception.type"] for e in span.events] == ["CaseError"]
                assert verdict.value is None and "connection refused" in verdict.error.error_message
                continue
            # output: the plain answer
            assert info.state.value == "OK" and span.outputs == case["output"].replace(SECRET, "***")
            assert info.response_preview == json.dumps(case["output"].replace(SECRET, "***"))
            assert verdict.value is case["passed"] and verdict.rationale == (case["reason"] or None)
            assert len(feedback) == 1 + len(case["assertions"])
            for check in case["assertions"]:
                got = feedback[f"{name}/check/{check['metric'] or check['type']}"]
                assert got.value == check["score"] and got.rationale == check["reason"]
                assert got.source.source_id == "pytest-promptopt"
                assert got.metadata["promptopt.passed"] == str(check["passed"]).lower()
            # the checks' expected values: one Expectation (one column in MLflow's tables)
            [expectation] = expected
            assert expectation.name == "expected" and expectation.source.source_type == "HUMAN"
            assert expectation.value == {c["metric"] or c["type"]: c["value"] for c in case["assertions"]}

    assert len(every) == sum(CASES.values())
    # the session's run links every case too: its row of the Evaluation runs list opens to them
    session = traces_by_run(client, experiment_id, parent.info.run_id)
    assert sorted(t.info.trace_id for t in session) == sorted(t.info.trace_id for t in every)
    # every request preview is unique in a run (a duplicate would never be paired)
    for name in CASES:
        previews = [t.info.request_preview for t in every if t.info.tags["promptopt.suite"] == name]
        assert len(set(previews)) == len(previews)
    wrong = next(t for t in every if t.info.tags["mlflow.traceName"].startswith("wrong"))
    assert {a.name: a.value for a in wrong.info.assessments} == {
        "capitals/case/passed": False,
        "capitals/check/mentions": 0.0,
        "expected": {"mentions": "Rome"},
    }
    py = {t.info.tags["mlflow.test.case_id"]: t for t in every if t.info.tags["promptopt.suite"] == "py-capitals"}
    assert sorted(py) == ["down", "up"] and py["down"].info.state.value == "ERROR"
    assert py["up"].info.tags["mlflow.test.name"] == "test_py.py::test_capital[up]"
    assert py["up"].data.spans[0].inputs == {"where": "up"}
    # Secrets: the token in the prompt and the output is masked in the trace, everywhere.
    stored = json.dumps([t.to_dict() for t in every], default=str)
    assert SECRET not in stored and "key ***" in stored
    assert SECRET not in (pytester.path / "mlflow.db").read_bytes().decode("latin-1")


def test_rationales_are_escaped_for_markdown_and_equal_vars_stay_apart(pytester, run_pytest, migrated_store):
    pytester.makefile(".promptopt.yaml", regex=REGEX_SUITE)
    shutil.copy(migrated_store, pytester.path / "mlflow.db")
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", mlflow=True)
    assert result.ret == 1 and "warning" not in result.stdout.str().lower()
    client, parent, children = run_tree(sqlite_uri(pytester.path / "mlflow.db"), pytester.path.name)
    traces = traces_by_run(client, parent.info.experiment_id, children["light/dark"].info.run_id)
    # Two prompts, the same vars: the prompt's index tells the cases apart (the same in every run).
    assert sorted(t.info.request_preview for t in traces) == [
        '{"_prompt": 0, "word": "dark"}',
        '{"_prompt": 1, "word": "dark"}',
    ]
    by_prompt = {json.loads(t.info.request_preview)["_prompt"]: t for t in traces}
    # The chat prompt's messages are an attribute; each trace links its own prompt's version.
    chat = by_prompt[1].data.spans[0].attributes
    assert chat["promptopt.messages"] == [
        {"role": "system", "content": "One word."},
        {"role": "user", "content": "Antonym of dark?"},
    ]
    assert json.loads(by_prompt[1].info.tags["mlflow.linkedPrompts"]) == [{"name": "light-dark-p1", "version": "1"}]
    assert json.loads(by_prompt[0].info.tags["mlflow.linkedPrompts"]) == [{"name": "light-dark-p0", "version": "1"}]
    # The UI renders rationales as Markdown: escaped, the regex shows as written; the plain text
    # stays in the metadata. A suite name with `/` is `-` in assessment names (MLflow splits on `/`).
    regex = next(a for a in by_prompt[0].info.assessments if a.name == "light-dark/check/regex")
    assert regex.rationale == r'Expected output to match regex "(?i)^\\W\*light\\W\*$"'
    assert regex.metadata["promptopt.reason"] == r'Expected output to match regex "(?i)^\W*light\W*$"'


def test_markdown_text_escapes_what_markdown_would_read():
    from pytest_promptopt.mlflow.trace_entities import markdown_text

    assert markdown_text("plain words, 3.5 and (a) - b") == "plain words, 3.5 and (a) - b"
    assert markdown_text("*a* _b_ `c` [d](e) <i> #f |g| ~h~ &amp; \\") == (
        "\\*a\\* \\_b\\_ \\`c\\` \\[d\\](e) \\<i\\> \\#f \\|g\\| \\~h\\~ \\&amp; \\\\"
    )
    assert markdown_text("- one\n2. two\n  + three\n===") == "\\- one  \n2\\. two  \n  \\+ three  \n\\==="


def test_case_inputs_are_the_vars_made_unique_by_prompt_model_then_case():
    from pytest_promptopt.mlflow.trace_build import case_inputs
    from pytest_promptopt.records import CaseResult

    results = [
        CaseResult("a", "a[0]", vars={"w": 1}, prompt_index=0, model="m1"),
        CaseResult("b", "b[1]", vars={"w": 1}, prompt_index=1, model="m1"),
        CaseResult("c", "c[2]", vars={"w": 2}, prompt_index=0, model="m1"),
        CaseResult("d", "d[3]", vars={"w": 2}, prompt_index=0, model="m2"),
        CaseResult("e", "e[4]", vars={"w": 3}, prompt_index=0, model="m1"),
        CaseResult("f", "f[5]", vars={"w": 3}, prompt_index=0, model="m1"),
        CaseResult("g", "g[6]", vars={"w": 4}, prompt_index=0, model="m1"),
    ]
    assert case_inputs(results) == [
        {"_prompt": 0, "w": 1},
        {"_prompt": 1, "w": 1},
        {"_model": "m1", "w": 2},
        {"_model": "m2", "w": 2},
        {"_case": "e[4]", "w": 3},
        {"_case": "f[5]", "w": 3},
        {"w": 4},
    ]


def test_no_traces_when_turned_off_and_auto_skips_large_runs(
    pytester, run_pytest, migrated_store, monkeypatch, tmp_path
):
    monkeypatch.setenv("PROMPTOPT_TEST_TOKEN", SECRET)
    write_project(pytester, migrated_store)
    result = run_pytest("--promptopt", "--promptopt-no-mlflow-traces", mlflow=True)
    assert result.ret == 1
    client, parent, children = run_tree(sqlite_uri(pytester.path / "mlflow.db"), pytester.path.name)
    assert len(children) == 2
    assert len(client.search_traces(locations=[parent.info.experiment_id], max_results=10)) == 0
    both = run_pytest("--promptopt", "--promptopt-no-mlflow-traces", "--promptopt-mlflow-traces", mlflow=True)
    assert both.ret == 4
    both.stderr.fnmatch_lines(["*--promptopt-mlflow-traces and --promptopt-no-mlflow-traces contradict each other*"])

    # auto: a run over the limit gets runs and no traces, and the line says why.
    from pytest_promptopt.mlflow.layout import SessionMeta
    from pytest_promptopt.mlflow.runs import TRACES_AUTO_LIMIT, log_run
    from pytest_promptopt.records import CaseResult
    from pytest_promptopt.suite_info import SuiteInfo
    from pytest_promptopt.summary import summarize

    shutil.copy(migrated_store, tmp_path / "big.db")
    info = SuiteInfo("big", "big", "big.promptopt.yaml")
    run = summarize([(info, CaseResult(f"t{i}", f"c{i}", vars={"i": i}, output="x", passed=True)) for i in range(501)])
    uri = sqlite_uri(tmp_path / "big.db")
    logged = log_run(run, SessionMeta(0, 1), uri, "big", artifact_location=(tmp_path / "a").as_uri(), traces=None)
    assert TRACES_AUTO_LIMIT == 500 and logged.problems == []
    assert logged.describe().endswith(
        "; no case traces for 501 cases (over 500; --promptopt-mlflow-traces writes them)"
    )
    assert len(client.search_traces(locations=[logged.experiment_id], max_results=10)) == 0


def test_a_trace_that_cannot_be_written_is_a_warning_and_the_count_check_sees_it(tmp_path, migrated_store, monkeypatch):
    from mlflow import MlflowClient

    from pytest_promptopt.mlflow.traces import write_and_verify
    from pytest_promptopt.records import CaseResult
    from pytest_promptopt.suite_info import SuiteInfo
    from pytest_promptopt.summary import summarize

    shutil.copy(migrated_store, tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=sqlite_uri(tmp_path / "mlflow.db"))
    experiment_id = client.create_experiment("traces", artifact_location=(tmp_path / "mlruns").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    info = SuiteInfo("qa", "qa", "qa.promptopt.yaml")
    run = summarize(
        [(info, CaseResult(case_id=f"t{i}", name=f"c{i}", position=i, output="x", passed=True)) for i in range(3)]
    )
    start_trace = client._tracing_client.start_trace
    calls = []

    def flaky(trace_info):
        calls.append(trace_info.trace_id)
        if len(calls) == 2:
            raise RuntimeError("database is locked")
        return start_trace(trace_info)

    monkeypatch.setattr(client._tracing_client, "start_trace", flaky)
    session = client.create_run(experiment_id).info.run_id
    problems = write_and_verify(
        client, experiment_id, run, {info.id: run_id}, started_ms=1_700_000_000_000, session=session
    )
    assert problems == [
        "suite 'qa': 1 of 3 case traces could not be written: RuntimeError: database is locked",
        "suite 'qa': 2 traces found for 3 cases",
        "the session's run: 2 traces found for 3 cases",
    ]
    # a store that cannot link traces to a run: one warning, the suite run's traces written
    calls.clear()
    monkeypatch.setattr(client._tracing_client, "start_trace", start_trace)

    def refuse(trace_ids, run_id):
        raise RuntimeError("405 Method Not Allowed")

    monkeypatch.setattr(client, "link_traces_to_run", refuse)
    other = client.create_run(experiment_id).info.run_id
    problems = write_and_verify(
        client, experiment_id, run, {info.id: other}, started_ms=1_700_000_000_000, session=session
    )
    assert problems == [
        "suite 'qa': its case traces could not be linked to the session's run: RuntimeError: 405 Method Not Allowed",
        "the session's run: 2 traces found for 3 cases",  # the first call's two, none of this one
    ]


def test_cache_hit_means_no_model_was_called():
    from pytest_promptopt.mlflow.trace_build import _details
    from pytest_promptopt.records import CaseResult

    def hit(calls: int, cache_hits: int) -> bool:
        return _details(CaseResult("c", "c", calls=calls, cache_hits=cache_hits))["cache_hit"]

    assert hit(0, 1) and hit(0, 2)  # every answer (the model's, a judge's) from the cache
    assert not hit(1, 0) and not hit(1, 1) and not hit(0, 0)  # a call made, or none at all (an error)
