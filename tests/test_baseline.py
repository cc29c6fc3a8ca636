"""Baselines from MLflow (issue 4, item 4): the pure comparison (`baseline.py`) on constructed
data, and `--promptopt-baseline mlflow:...` end to end against a real SQLite MLflow store."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import load_report
from test_mlflow import git_commit, migrated_store, offline_mlflow, sqlite_uri  # noqa: F401  (fixtures)

from pytest_promptopt.baseline import (
    BaselineComparison,
    BaselineRun,
    BaselineSuite,
    CaseOutcome,
    compare_run,
    compare_suite,
)

pytestmark = pytest.mark.timeout(240)


def case(case_id: str, status: str, output: str = "", **scores: float) -> CaseOutcome:
    return CaseOutcome(case_id, f"name-{case_id}", status, output or f"out-{case_id}-{status}", scores)


# --------------------------------------------------------------------------- the pure comparison


def test_flips_added_removed_and_deltas_on_constructed_data():
    before = [
        case("a", "passed", m=1.0),
        case("b", "passed", m=1.0),
        case("c", "failed", m=0.0),
        case("d", "passed", m=1.0),
        case("x", "error"),
    ]
    now = [
        case("c", "passed", m=1.0),
        case("a", "failed", m=0.0),
        case("b", "error"),
        case("e", "passed", m=0.5),
        case("x", "error"),
    ]
    c = compare_suite("s.yaml", "s", before, now, baseline_run_id="child")
    assert c.newly_failing == ["a", "b"] and c.newly_passing == ["c"]  # an error counts as not passing
    assert c.added == ["e"] and c.removed == ["d"] and c.compared == 4
    assert c.baseline_pass_rate == pytest.approx(3 / 4) and c.pass_rate == pytest.approx(2 / 3)  # errors excluded
    assert c.delta == pytest.approx(2 / 3 - 3 / 4)
    assert c.metric_deltas["m"].baseline == pytest.approx(0.75) and c.metric_deltas["m"].current == pytest.approx(0.5)
    flips = {f.case_id: f for f in c.flipped}
    assert (flips["b"].baseline_status, flips["b"].status, flips["b"].baseline_output, flips["b"].output) == (
        "passed",
        "error",
        "out-b-passed",
        "out-b-error",
    )


def test_order_does_not_matter_and_nothing_is_guessed():
    before = [case("a", "passed"), case("b", "failed")]
    c = compare_suite("s", "s", before, list(reversed(before)))
    assert (c.newly_failing, c.newly_passing, c.added, c.removed, c.delta) == ([], [], [], [], 0.0)
    # A renamed case with a new id is one removed and one added, not a match by name or position.
    renamed = compare_suite("s", "s", [case("old", "passed")], [CaseOutcome("new", "name-old", "passed")])
    assert (renamed.added, renamed.removed, renamed.newly_failing) == (["new"], ["old"], [])


def test_new_and_removed_suites_and_a_json_round_trip():
    baseline = BaselineRun(
        "mlflow:branch=main",
        "parent",
        {
            "kept": BaselineSuite("kept", "kept", [case("a", "passed")], "child-1"),
            "gone": BaselineSuite("gone", "gone", [case("z", "passed")], "child-2"),
        },
    )
    comparison = compare_run({"kept": ("kept", [case("a", "failed")]), "new": ("new", [case("n", "passed")])}, baseline)
    assert comparison.removed_suites == ["gone"]
    new = comparison.suites["new"]
    assert new.baseline_run_id is None and new.baseline_pass_rate is None and new.delta is None and new.added == ["n"]
    assert comparison.suites["kept"].newly_failing == ["a"] and comparison.suites["kept"].delta == -1.0
    data = json.loads(json.dumps(comparison.to_dict()))
    assert BaselineComparison.from_dict(data) == comparison
    assert data["suites"]["kept"]["pass_rate_delta"] == -1.0
    assert BaselineComparison.failed("mlflow:abc", "no such run").to_dict()["error"] == "no such run"


@pytest.mark.parametrize(
    "value, message",
    [
        ("mlflow:", "is neither mlflow:<run_id> nor mlflow:branch=<name>"),
        ("mlflow:branch=", "the branch name is empty"),
    ],
)
def test_bad_values_are_usage_errors(pytester, value, message):
    with pytest.raises(
        pytest.UsageError,
        match=r"--promptopt-baseline \(ini: promptopt_baseline\): .*" + message.replace("(", r"\(").replace(")", r"\)"),
    ):
        pytester.parseconfigure("--promptopt", "--promptopt-baseline", value)


def test_the_option_and_its_ini_twin(pytester):
    from pytest_promptopt.session import session_key

    def ref(*args: str) -> Any:
        return pytester.parseconfigure("--promptopt", *args).stash[session_key].settings.baseline

    assert ref() is None
    assert ref("--promptopt-baseline", "mlflow:0123abcd").run_id == "0123abcd"
    pytester.makeini("[pytest]\npromptopt_baseline = mlflow:branch=release/1.2\n")
    assert ref().branch == "release/1.2" and ref().describe() == "mlflow:branch=release/1.2"
    with pytest.raises(pytest.UsageError, match="which --promptopt-no-mlflow turns off"):
        ref("--promptopt-no-mlflow")


# --------------------------------------------------------------------------- end to end, a SQLite store

CONFTEST = """
import json, pathlib
from pytest_promptopt import FakeModel

def pytest_promptopt_make_model(spec):
    if spec.id == "acme/scripted":
        answers = json.loads(pathlib.Path(__file__).with_name("answers.json").read_text())
        return FakeModel(lambda request: answers[request.prompt], name="acme/scripted")
"""


def suite(names: list[str]) -> str:
    tests = "".join(
        f"  - description: {n}\n    vars: {{q: {n}}}\n    assert: [{{type: contains, value: ok, metric: said_ok}}]\n"
        for n in names
    )
    return f"description: flips\nproviders: [acme/scripted]\nprompts: ['Q {{{{q}}}}']\ntests:\n{tests}"


def answers(pytester: pytest.Pytester, **answer: str) -> None:
    (pytester.path / "answers.json").write_text(json.dumps({f"Q {k}": v for k, v in answer.items()}))


def git(path: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=path, check=True, capture_output=True
    )


def test_compare_with_an_mlflow_run_by_id_and_by_branch(pytester, run_pytest, migrated_store):  # noqa: F811
    if git_commit(pytester.path) is None:
        pytest.skip("git is needed for the branch tag")
    shutil.copy(migrated_store, pytester.path / "mlflow.db")
    pytester.makeconftest(CONFTEST)
    pytester.makefile(".promptopt.yaml", flips=suite(["alpha", "beta", "gamma", "delta"]))
    answers(pytester, alpha="ok a", beta="ok b", gamma="bad c", delta="ok d")
    first = run_pytest("--promptopt", "--promptopt-cache", "off", mlflow=True)  # the baseline, on main
    assert first.ret == 1
    from mlflow import MlflowClient

    uri = sqlite_uri(pytester.path / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(pytester.path.name).experiment_id
    [base] = client.search_runs([experiment], filter_string="tags.`promptopt.session` = 'true'")

    # Two cases now fail, one now passes; delta is gone and epsilon is new.
    git(pytester.path, "checkout", "-q", "-b", "feature")
    pytester.makefile(".promptopt.yaml", flips=suite(["alpha", "beta", "gamma", "epsilon"]))
    answers(pytester, alpha="bad a", beta="bad b", gamma="ok c", epsilon="ok e")
    by_branch = run_pytest(
        "--promptopt",
        "--promptopt-cache",
        "off",
        "--promptopt-baseline",
        "mlflow:branch=main",
        "--promptopt-report",
        "report.json",
        mlflow=True,
    )
    assert by_branch.ret == 1
    by_branch.stdout.fnmatch_lines(
        [
            "*promptopt baseline*",
            f"baseline mlflow:branch=main: session run {base.info.run_id} (regression gate on)",
            "flips: pass rate 75.0% -> 50.0% (-25.0 pts); said_ok 0.750 -> 0.500 (-0.250); 2 newly failing, 1 newly passing, 1 added, 1 removed",
            "  newly failing  flips :: alpha?t0? (*): passed -> failed",
            "      baseline: 'ok a'",
            "      now:      'bad a'",
            "  newly failing  flips :: beta?t1? (*): passed -> failed",
            "*",
            "*",
            "  newly passing  flips :: gamma?t2? (*): failed -> passed",
        ]
    )
    report = load_report(pytester.path / "report.json")  # validates against the schema
    assert report["baseline"] == {
        "ref": "mlflow:branch=main",
        "run_id": base.info.run_id,
        "error": None,
        "removed_suites": [],
        "gating": True,
        "baseline_left_out": "0",
    }
    [flips] = report["suites"]
    ids = {r["name"].split("[")[0]: r["case_id"] for r in flips["results"]}
    b = flips["baseline"]
    assert b["newly_failing"] == [ids["alpha"], ids["beta"]] and b["newly_passing"] == [ids["gamma"]]
    assert b["added"] == [ids["epsilon"]] and len(b["removed"]) == 1 and b["removed"][0] not in ids.values()
    assert (b["baseline_pass_rate"], b["pass_rate"], b["delta"]) == (0.75, 0.5, -0.25)
    assert [(f["baseline_output"], f["output"]) for f in b["flipped"]] == [
        ("ok a", "bad a"),
        ("ok b", "bad b"),
        ("bad c", "ok c"),
    ]

    # The comparison is logged to the new session run.
    [second] = [
        r
        for r in client.search_runs([experiment], filter_string="tags.`promptopt.session` = 'true'")
        if r.info.run_id != base.info.run_id
    ]
    assert (
        second.data.tags["promptopt.baseline_run_id"] == base.info.run_id
        and second.data.tags["mlflow.source.git.branch"] == "feature"
    )
    [child] = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{second.info.run_id}'")
    assert child.data.metrics["baseline_pass_rate"] == 0.75 and child.data.metrics["pass_rate_delta"] == -0.25
    logged = json.loads(
        Path(client.download_artifacts(second.info.run_id, "baseline_comparison.json", str(pytester.path))).read_text()
    )
    assert (
        logged["run_id"] == base.info.run_id
        and logged["suites"]["flips.promptopt.yaml"]["newly_failing"] == b["newly_failing"]
    )

    # By run id: the same comparison (the feature run is not on main, so the branch still finds the first run).
    by_id = run_pytest(
        "--promptopt",
        "--promptopt-cache",
        "off",
        "--promptopt-baseline",
        f"mlflow:{base.info.run_id}",
        "-n",
        "2",
        mlflow=True,
    )
    by_id.stdout.fnmatch_lines(
        [
            f"baseline mlflow:{base.info.run_id}: session run {base.info.run_id} (regression gate on)",
            "flips: pass rate 75.0% -> 50.0% (-25.0 pts)*2 newly failing, 1 newly passing, 1 added, 1 removed",
        ]
    )


def test_a_session_pytest_did_not_finish_or_narrowed_is_never_a_branch_baseline(pytester, run_pytest, migrated_store):  # noqa: F811
    if git_commit(pytester.path) is None:
        pytest.skip("git is needed for the branch tag")
    shutil.copy(migrated_store, pytester.path / "mlflow.db")
    pytester.makeconftest(CONFTEST)
    pytester.makefile(".promptopt.yaml", flips=suite(["alpha", "beta"]))
    answers(pytester, alpha="ok a", beta="ok b")
    run_pytest("--promptopt", "--promptopt-cache", "off", mlflow=True)  # complete: the baseline
    answers(pytester, alpha="bad a", beta="ok b")
    run_pytest("--promptopt", "--promptopt-cache", "off", mlflow=True)  # newer, then marked as interrupted
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=sqlite_uri(pytester.path / "mlflow.db"))
    experiment = client.get_experiment_by_name(pytester.path.name).experiment_id
    older, newer = sorted(
        client.search_runs([experiment], filter_string="tags.`promptopt.session` = 'true'"),
        key=lambda r: r.info.start_time,
    )
    client.set_tag(newer.info.run_id, "promptopt.exit_status", "2")  # what a Ctrl-C'd session records
    # The newest session ran only alpha (-k, under xdist: the workers' collection says so).
    run_pytest("--promptopt", "--promptopt-cache", "off", "-k", "alpha", "-n", "2", mlflow=True)
    [narrowed] = client.search_runs(
        [experiment], filter_string="tags.`promptopt.session` = 'true'", order_by=["attributes.start_time DESC"]
    )[:1]
    tags = narrowed.data.tags
    assert tags["promptopt.left_out"] == "1" and tags["promptopt.complete"] == "true"
    assert "Partial: 1 prompt case of 1 suite not selected" in tags["mlflow.note.content"]
    [suite_run] = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{narrowed.info.run_id}'"
    )
    assert suite_run.data.tags["promptopt.left_out"] == "1"
    assert suite_run.data.tags["mlflow.note.content"].startswith("PARTIAL (1 case not selected): ")
    by_branch = run_pytest("--promptopt", "--promptopt-baseline", "mlflow:branch=main", mlflow=True)
    by_branch.stdout.fnmatch_lines([f"baseline mlflow:branch=main: session run {older.info.run_id} (*"])
    by_id = run_pytest("--promptopt", "--promptopt-baseline", f"mlflow:{newer.info.run_id}", mlflow=True)
    by_id.stdout.fnmatch_lines([f"baseline not loaded: *{newer.info.run_id} is a session pytest did not finish*"])
    # Named by id, the narrowed session is the baseline as asked; the comparison says what that means.
    partial = run_pytest("--promptopt", "--promptopt-baseline", f"mlflow:{narrowed.info.run_id}", mlflow=True)
    partial.stdout.fnmatch_lines(
        [
            f"baseline mlflow:{narrowed.info.run_id}: session run {narrowed.info.run_id} (*",
            "    that session ran part of the project (1 case not selected, -k / -m / node ids): cases it did not run "
            "show as added, and its pass rates are over the cases it ran",
            "*1 added*",
            "    added since the baseline: *",
        ]
    )


def test_an_unknown_baseline_is_a_warning_and_a_null_baseline(pytester, run_pytest, migrated_store):  # noqa: F811
    shutil.copy(migrated_store, pytester.path / "mlflow.db")
    pytester.makeconftest(CONFTEST)
    pytester.makefile(".promptopt.yaml", flips=suite(["alpha"]))
    answers(pytester, alpha="ok")
    result = run_pytest("--promptopt", "--promptopt-baseline", "mlflow:0123456789abcdef", mlflow=True)
    result.stdout.fnmatch_lines(
        ["baseline not loaded: baseline mlflow:0123456789abcdef: no such run in sqlite:///*"]
    )  # this run creates the experiment

    result = run_pytest(
        "--promptopt", "--promptopt-baseline", "mlflow:branch=nowhere", "--promptopt-report", "report.json", mlflow=True
    )
    assert result.ret == 0  # the comparison never gates
    message = f"baseline mlflow:branch=nowhere: no finished session run on branch 'nowhere' in experiment '{pytester.path.name}'"
    result.stdout.fnmatch_lines([f"*PytestWarning: {message}*", f"baseline not loaded: {message}*"])
    report = load_report(pytester.path / "report.json")
    assert report["baseline"]["error"].startswith(message) and report["baseline"]["run_id"] is None
    assert report["suites"][0]["baseline"] is None


def test_the_report_html_plot_and_a_pending_round_trip_carry_the_comparison():
    from pytest_promptopt.records import CaseResult
    from pytest_promptopt.report.terminal import baseline_lines
    from pytest_promptopt.run_json import report_dict, run_from_report
    from pytest_promptopt.suite_info import SuiteInfo
    from pytest_promptopt.summary import summarize

    info = SuiteInfo(id="s.yaml", name="s", file="s.yaml")
    run = summarize(
        [
            (info, CaseResult("a", "a[t0]", output="bad", passed=False)),
            (info, CaseResult("b", "b[t1]", output="ok", passed=True)),
        ]
    )
    baseline = BaselineRun(
        "mlflow:abc",
        "abc",
        {"s.yaml": BaselineSuite("s.yaml", "s", [case("a", "passed", "ok"), case("b", "passed", "ok")], "child")},
        left_out="unknown",  # a session narrowed by node ids, named by its run id
    )
    run = dataclasses.replace(run, baseline=compare_run(run.suite_outcomes(), baseline))
    assert run.baseline is not None and run.baseline.baseline_left_out == "unknown"
    data = json.loads(json.dumps(report_dict(run)))
    assert data["suites"][0]["baseline"]["newly_failing"] == ["a"] and data["suites"][0]["baseline"]["delta"] == -0.5
    assert run_from_report(data).baseline == run.baseline  # a pending run keeps its comparison
    assert "  newly failing  s :: a[t0] (a): passed -> failed" in baseline_lines(run.baseline)
    assert "    that session ran part of the project (some cases not selected" in "\n".join(
        baseline_lines(run.baseline)
    )
    pytest.importorskip("plotly", reason="the html extra (plotly) is not installed")
    from pytest_promptopt.report.html_report import render_html

    page = render_html(run)
    assert "id='plot-baseline'" in page and "Pass rate against the baseline" in page


def test_a_branch_baseline_is_found_behind_pages_of_narrowed_sessions(tmp_path, migrated_store, monkeypatch):  # noqa: F811
    """Every -k run on a branch logs a session; the baseline search reads the branch's sessions
    page by page, newest first, past the narrowed and unfinished ones, to the newest whole one."""
    import time

    from mlflow import MlflowClient

    from pytest_promptopt.baseline import BaselineRef
    from pytest_promptopt.mlflow import baseline as mlflow_baseline

    shutil.copy(migrated_store, tmp_path / "mlflow.db")
    uri = sqlite_uri(tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("pages")
    base = {"promptopt.session": "true", "mlflow.source.git.branch": "main", "promptopt.exit_status": "0"}
    made = []
    for tags in [
        {},
        *[{"promptopt.left_out": "3"}] * 4,
        {"promptopt.left_out": "unknown"},
        {"promptopt.exit_status": "2"},
    ]:
        run = client.create_run(experiment, tags={**base, **tags})
        client.set_terminated(run.info.run_id)
        made.append(run.info.run_id)
        time.sleep(0.01)  # distinct start times: newest first is the order read
    monkeypatch.setattr(mlflow_baseline, "_PAGE", 2)  # 7 sessions: the whole one is on the fourth page
    loaded = mlflow_baseline.load_baseline(BaselineRef("mlflow", branch="main"), uri, "pages")
    assert loaded.run_id == made[0]
    monkeypatch.setattr(mlflow_baseline, "_MAX_PAGES", 2)  # a bounded search: past its pages, not found
    with pytest.raises(mlflow_baseline.BaselineError, match=r"\(4 found that did not run every case"):
        mlflow_baseline.load_baseline(BaselineRef("mlflow", branch="main"), uri, "pages")
