"""`--promptopt-mlflow-traces`: every case as an MLflow trace, against a real SQLite store.

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


@pytest.mark.parametrize("mode", ["plain", "xdist-ini"])
def test_every_case_is_a_trace_of_its_suite_run_with_feedback_and_tags(
    pytester, run_pytest, migrated_store, monkeypatch, mode
):
    monkeypatch.setenv("PROMPTOPT_TEST_TOKEN", SECRET)
    if mode == "plain":
        write_project(pytester, migrated_store)
        args = ["--promptopt-mlflow-traces"]
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

    every = []
    for name, child in children.items():
        traces = traces_by_run(client, experiment_id, child.info.run_id)
        assert len(traces) == CASES[name], name
        assert {t.info.tags["mlflow.test.name"] for t in traces} == set(report[name])
        every += traces
        for trace in traces:
            case = report[name][trace.info.tags["mlflow.test.name"]]
            assert trace.info.trace_metadata["mlflow.sourceRun"] == child.info.run_id
            assert (
                trace.info.tags["promptopt.suite"] == name and trace.info.tags["promptopt.case_id"] == case["case_id"]
            )
            assert trace.info.tags["mlflow.traceName"] == case["name"]
            span = trace.data.spans[0]
            assert span.inputs == {"prompt": case["prompt"], "vars": case["vars"]}
            assert span.attributes["promptopt.model"] == case["model"]
            assert span.attributes["promptopt.latency_ms"] == case["latency_ms"]
            assert (
                span.attributes["promptopt.cache_hit"] is False and span.attributes["promptopt.calls"] == case["calls"]
            )
            feedback = {a.name: a for a in trace.info.assessments}
            if case["error"]:
                assert trace.info.state.value == "ERROR" and span.status.status_code.value == "ERROR"
                assert span.outputs == {"error": case["error"]} and "connection refused" in case["error"]
                assert (
                    feedback["passed"].value is None and "connection refused" in feedback["passed"].error.error_message
                )
                continue
            assert trace.info.state.value == "OK" and span.outputs == {"output": case["output"]}
            assert feedback["passed"].value is case["passed"] and feedback["passed"].rationale == (
                case["reason"] or None
            )
            assert len(feedback) == 1 + len(case["assertions"])
            for check in case["assertions"]:
                got = feedback[check["metric"] or check["type"]]
                assert got.value == check["score"] and got.rationale == check["reason"]
                assert (
                    got.source.source_id == "pytest-promptopt"
                    and got.metadata["mlflow.assessment.sourceRunId"] == child.info.run_id
                )
                assert got.metadata["promptopt.passed"] == str(check["passed"]).lower()

    assert len(every) == sum(CASES.values())
    wrong = next(
        t
        for t in every
        if t.info.tags["promptopt.case_id"].startswith("wrong") or t.info.tags["mlflow.traceName"].startswith("wrong")
    )
    assert {a.name: a.value for a in wrong.info.assessments} == {"passed": False, "mentions": 0.0}
    py = {t.info.tags["mlflow.test.case_id"]: t for t in every if t.info.tags["promptopt.suite"] == "py-capitals"}
    assert sorted(py) == ["down", "up"] and py["down"].info.state.value == "ERROR"
    assert py["up"].info.tags["mlflow.test.name"] == "test_py.py::test_capital[up]"
    # Secrets: the token in the prompt and the output is masked in the trace, everywhere.
    stored = json.dumps([t.to_dict() for t in every], default=str)
    assert SECRET not in stored and "key ***" in stored
    assert SECRET not in (pytester.path / "mlflow.db").read_bytes().decode("latin-1")


def test_no_traces_without_the_option(pytester, run_pytest, migrated_store, monkeypatch):
    monkeypatch.setenv("PROMPTOPT_TEST_TOKEN", SECRET)
    write_project(pytester, migrated_store)
    result = run_pytest("--promptopt", mlflow=True)
    assert result.ret == 1
    client, parent, children = run_tree(sqlite_uri(pytester.path / "mlflow.db"), pytester.path.name)
    assert len(children) == 2
    assert len(client.search_traces(locations=[parent.info.experiment_id], max_results=10)) == 0


def test_a_trace_that_cannot_be_written_is_a_warning_and_the_count_check_sees_it(tmp_path, migrated_store, monkeypatch):
    from mlflow import MlflowClient

    from pytest_promptopt.mlflow.traces import write_and_verify
    from pytest_promptopt.records import CaseResult
    from pytest_promptopt.suite.model import SuiteInfo
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
    problems = write_and_verify(client, experiment_id, run, {info.id: run_id}, started_ms=1_700_000_000_000)
    assert problems == [
        "suite 'qa': 1 of 3 case traces could not be written: RuntimeError: database is locked",
        "suite 'qa': 2 traces found for 3 cases",
    ]
