"""Repairs (issue 6) in every report: the JSON report's `repairs`, the terminal's repair section,
the HTML report's Repairs section, and MLflow (a child run per repair, the proposal registered as
a new prompt version with the alias `candidate`), including a run kept pending while the
tracking server is down.

The scripted task model answers an antonym question with the bare word (what the suite's
`equals` assertions want) only when it is shown demonstrations, so the `labeled` optimiser
repairs the suite: 0/4 held-out cases before, 4/4 after. The stubborn model never improves.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from conftest import load_report
from test_mlflow import free_port, migrated_store, offline_mlflow, run_tree, sqlite_uri  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(240)

ANTONYMS = {
    "hot": "cold",
    "big": "small",
    "up": "down",
    "happy": "sad",
    "fast": "slow",
    "light": "dark",
    "open": "closed",
    "rich": "poor",
    "early": "late",
    "full": "empty",
}
XSS = "<script>alert(1)</script>"

CONFTEST = """
from pytest_promptopt import FakeModel

ANTONYMS = %r

def task(request):
    word = request.messages[-1]["content"].split('"')[1]
    if len(request.messages) >= 3:  # shown demonstrations: the bare word
        return ANTONYMS[word]
    return "The opposite of %%s is %%s." %% (word, ANTONYMS[word])

def stubborn(request):
    word = request.messages[-1]["content"].split('"')[1]
    return "The opposite of %%s is %%s." %% (word, ANTONYMS[word])

MODELS = {"acme/task": FakeModel(task, name="acme/task"), "acme/stubborn": FakeModel(stubborn, name="acme/stubborn")}

def pytest_promptopt_make_model(spec):
    return MODELS.get(spec.id)
""" % (ANTONYMS,)


def suite(provider: str = "acme/task") -> str:
    tests = "\n".join(
        f"  - description: {w}\n    vars: {{word: {w}}}\n    assert: [{{type: equals, value: {a}}}]"
        for w, a in ANTONYMS.items()
    )
    return (
        f"description: antonyms\nproviders: [{provider}]\nprompts: ['Opposite of \"{{{{word}}}}\"? {XSS}']\n"
        f"repair:\n  optimizer: labeled\ntests:\n{tests}\ngates:\n  pass_rate: 0.8\n"
    )


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    return pytester


def repair_args(*args: str) -> tuple[str, ...]:
    return ("--promptopt", "--promptopt-repair", "-p", "no:cacheprovider", *args)


def client_for(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


# --------------------------------------------------------------------------- JSON, terminal, HTML


def test_json_terminal_and_html_show_the_repair(project, run_pytest, mode) -> None:
    pytest.importorskip("plotly", reason="the html extra (plotly) is not installed")
    project.makefile(".promptopt.yaml", antonyms=suite())
    result = run_pytest(*repair_args("--promptopt-report", "report.json", "--promptopt-html", "report.html", *mode))
    assert result.ret == 1  # the gate failed; a proposal does not turn the run green

    [repair] = load_report(project.path / "report.json")["repairs"]  # validated against the schema
    assert (repair["suite"], repair["suite_name"], repair["status"], repair["optimizer"]) == (
        "antonyms.promptopt.yaml",
        "antonyms",
        "repaired",
        "labeled",
    )
    assert (repair["model"], repair["prompt_index"], repair["reason"]) == ("acme/task", 0, "")
    assert (repair["heldout_before"], repair["heldout_after"], repair["insample_before"], repair["insample_after"]) == (
        0.0,
        1.0,
        0.0,
        1.0,
    )
    held = repair["scores"]["heldout_after"]
    assert (held["passed"], held["cases"], held["interval"][1]) == (4, 4, 1.0) and 0.5 < held["interval"][0] < 0.52
    assert len(repair["heldout_cases"]) == 4 and len(repair["insample_cases"]) == 6
    assert not set(repair["heldout_cases"]) & set(repair["insample_cases"]) and repair["weak_estimate"] is True
    # The run's 10 answers are not cached (a scripted FakeModel), so: 10 before, 10 after, none to learn.
    assert repair["calls"] == {
        "task_calls": 20,
        "proposer_calls": 0,
        "task_tokens": repair["calls"]["task_tokens"],
        "proposer_tokens": 0,
        "cache_hits": 0,
        "judge_calls": 0,
        "judge_tokens": 0,
        "total": 20,
    }
    assert (repair["budget"], repair["seed"], repair["applied"]) == (300, 0, False)
    assert (repair["file"], repair["diff_file"]) == ("antonyms.repaired.json", "antonyms.repaired.diff")
    assert json.loads((project.path / repair["file"]).read_text()) == json.loads(repair["prompt"])
    assert (project.path / repair["diff_file"]).read_text() == repair["diff"]

    result.stdout.fnmatch_lines(
        [
            "*= promptopt summary =*",
            "GATE FAILED  antonyms*",
            "*= promptopt repair =*",
            "antonyms prompt 0 on acme/task: repaired by labeled: held-out 0% (0/4) [[]95% CI 0%-49%[]] -> 100% (4/4) [[]95% CI 51%-100%[]]; "
            "in-sample 0% (0/6) [[]95% CI 0%-39%[]] -> 100% (6/6) [[]95% CI 61%-100%[]]; 20 model calls (projected 20, budget 300)",
            "    proposal: antonyms.repaired.json  diff: antonyms.repaired.diff",
            "    held-out estimate is weak: only 4 case(s); read the interval, not the point",
        ]
    )

    page = (project.path / "report.html").read_text()
    section = page[page.index("<h2>Repairs</h2>") : page.index("<h2>Plots</h2>")]
    assert "<b>repaired</b>" in section and "labeled" in section and "acme/task" in section
    assert "0% (0/4) [95% CI 0%-49%] → 100% (4/4) [95% CI 51%-100%]" in section
    assert (
        "20 (task 20, proposer 0; projected 20, budget 300)" in section
        and "<code>antonyms.repaired.json</code>" in section
    )
    assert (
        "<span class=del>-Opposite of &quot;{{word}}&quot;? &lt;script&gt;alert(1)&lt;/script&gt;</span>" in section
    )  # the diff
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section.split("<h4>Proposed prompt</h4>")[1]
    assert XSS not in page  # escaped everywhere: a prompt is shown as text


def test_no_repair_found_is_reported_without_files(project, run_pytest) -> None:
    project.makefile(".promptopt.yaml", antonyms=suite(provider="acme/stubborn"))
    result = run_pytest(*repair_args("--promptopt-report", "report.json"))
    [repair] = load_report(project.path / "report.json")["repairs"]
    assert repair["status"] == "no repair found" and "does not beat the original" in repair["reason"]
    assert (
        repair["heldout_before"] == repair["heldout_after"] == 0.0
        and repair["file"] is None
        and repair["diff_file"] is None
    )
    assert not list(project.path.glob("*.repaired.*"))
    result.stdout.fnmatch_lines(
        [
            "*= promptopt repair =*",
            "antonyms prompt 0 on acme/stubborn: no repair found (labeled): the proposal does not beat the original on the 4 held-out case(s)*",
            "    held-out 0% (0/4) [[]95% CI 0%-49%[]] -> 0% (0/4) [[]95% CI 0%-49%[]]; 20 model calls (projected 20, budget 300)",
        ]
    )
    assert "proposal:" not in result.stdout.str()


def test_without_repair_the_report_has_an_empty_list_and_no_section(project, run_pytest) -> None:
    project.makefile(".promptopt.yaml", antonyms=suite())
    result = run_pytest("--promptopt", "--promptopt-report", "report.json")
    assert load_report(project.path / "report.json")["repairs"] == []
    assert "promptopt repair" not in result.stdout.str()


def test_terminal_lines_for_every_status() -> None:
    from pytest_promptopt.repair_result import RepairResult, Score
    from pytest_promptopt.report.terminal import repair_lines

    refused = RepairResult("a.yaml", "a", "refused", optimizer="gepa", model="m", reason="needs a proposer")
    skipped = RepairResult("py", "py", "skipped", reason="a Python prompt test has no template file to repair")
    unwritten = RepairResult(
        "b.yaml",
        "b",
        "repaired",
        optimizer="labeled",
        model="m",
        prompt="x",
        reason="could not write the proposal: denied",
        heldout_before=Score(0.0, 0, 10),
        heldout_after=Score(0.5, 5, 10),
        budget=300,
    )
    applied = RepairResult(
        "c.yaml",
        "c",
        "repaired",
        optimizer="labeled",
        prompt="x",
        file="c.txt",
        diff_file="c.repaired.diff",
        applied=True,
    )
    assert repair_lines([refused, skipped, unwritten, applied], {3: "prompts:/c/4"}) == [
        "a prompt 0 on m: refused (gepa): needs a proposer",
        "py prompt 0: skipped: a Python prompt test has no template file to repair",
        "b prompt 0 on m: repaired by labeled: held-out 0% (0/10) -> 50% (5/10); in-sample n/a -> n/a; 0 model calls (projected 0, budget 300)",
        "    proposal not written: could not write the proposal: denied",
        "c prompt 0: repaired by labeled: held-out n/a -> n/a; in-sample n/a -> n/a; 0 model calls (projected 0, budget 0)",
        "    applied to c.txt  diff: c.repaired.diff",
        "    registered: prompts:/c/4 (alias candidate)",
    ]
    assert repair_lines([]) == ["nothing to repair: no suite failed its gates or matched --promptopt-repair-suite"]


def test_a_report_entry_rebuilds_the_same_repair() -> None:
    from pytest_promptopt.repair_result import Calls, RepairResult, Score

    repair = RepairResult(
        "a.yaml",
        "a",
        "repaired",
        optimizer="labeled",
        model="m",
        prompt_index=1,
        heldout_before=Score(0.0, 0, 4, 0.0, 0.49),
        heldout_after=Score(1.0, 4, 4, 0.51, 1.0, metrics={"m": 1.0}),
        heldout_cases=["x"],
        insample_cases=["y"],
        calls=Calls(task_calls=3, proposer_calls=2, task_tokens=9),
        projected=Calls(task_calls=5),
        budget=50,
        seed=2,
        original="o",
        prompt="p",
        demos=[{"vars": {"w": 1}}],
        file="f",
        diff_file="d",
        diff="-o\n+p",
        weak_estimate=True,
        tried=[{"optimizer": "labeled"}],
    )
    assert RepairResult.from_dict(json.loads(json.dumps(repair.to_dict()))).to_dict() == repair.to_dict()


# --------------------------------------------------------------------------- MLflow


def test_mlflow_child_run_and_candidate_prompt_version(project, run_pytest, migrated_store) -> None:  # noqa: F811
    project.makefile(".promptopt.yaml", antonyms=suite())
    shutil.copy(migrated_store, project.path / "mlflow.db")
    uri = sqlite_uri(project.path / "mlflow.db")
    result = run_pytest(*repair_args(), mlflow=True)
    assert result.ret == 1 and "warning" not in result.stdout.str().lower()
    result.stdout.fnmatch_lines(
        [
            "antonyms prompt 0 on acme/task: repaired by labeled: *",
            "    registered: prompts:/antonyms/2 (alias candidate)",
        ]
    )

    client, parent, children = run_tree(uri, project.path.name)
    assert parent.data.metrics["repairs"] == 1 and parent.data.metrics["repaired"] == 1
    assert sorted(children) == ["antonyms", "repair antonyms prompt 0"]
    child = children["repair antonyms prompt 0"]
    tags = child.data.tags
    assert tags["promptopt.kind"] == "repair" and tags["mlflow.parentRunId"] == parent.info.run_id
    assert (
        tags["promptopt.repair.registry_uri"] == "prompts:/antonyms/2" and tags["promptopt.repair.status"] == "repaired"
    )
    assert json.loads(tags["mlflow.linkedPrompts"]) == [{"name": "antonyms", "version": "2"}]
    assert "promptopt.suite" not in tags  # a baseline comparison reads the runs with that tag as suites
    assert child.data.params == {
        "suite": "antonyms",
        "suite_id": "antonyms.promptopt.yaml",
        "prompt_index": "0",
        "model": "acme/task",
        "optimizer": "labeled",
        "seed": "0",
        "budget": "300",
        "status": "repaired",
        "weak_estimate": "true",
        "applied": "false",
        "heldout_cases": "4",
        "insample_cases": "6",
    }
    metrics = child.data.metrics
    assert {
        k: metrics[k]
        for k in (
            "heldout_before",
            "heldout_after",
            "insample_before",
            "insample_after",
            "calls_task",
            "calls_proposer",
            "calls_judge",
        )
    } == {
        "heldout_before": 0.0,
        "heldout_after": 1.0,
        "insample_before": 0.0,
        "insample_after": 1.0,
        "calls_task": 20,
        "calls_proposer": 0,
        "calls_judge": 0,
    }
    folder = project.path / "downloaded"
    proposal = Path(client.download_artifacts(child.info.run_id, "repair/proposal.json", str(folder))).read_text()
    assert proposal == (project.path / "antonyms.repaired.json").read_text().rstrip("\n")
    # The diff as a `.txt` artifact: MLflow's artifact view previews it (it does not know `.diff`).
    diff = Path(client.download_artifacts(child.info.run_id, "repair/proposal.diff.txt", str(folder))).read_text()
    assert diff == (project.path / "antonyms.repaired.diff").read_text()
    assert child.data.tags["mlflow.runType"] == "genai_evaluate"
    assert parent.info.start_time <= child.info.start_time <= child.info.end_time <= parent.info.end_time

    # The proposal scored case by case: one trace per case, under the suite's trace inputs (so
    # "compare to" pairs it with the suite's run), the part it belongs to, both verdicts.
    experiment = parent.info.experiment_id
    traces = client.search_traces(locations=[experiment], run_id=child.info.run_id, max_results=50)
    suite_traces = client.search_traces(locations=[experiment], run_id=children["antonyms"].info.run_id)
    assert len(traces) == 10 and {t.info.request_preview for t in traces} == {
        t.info.request_preview for t in suite_traces
    }
    report = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "promptopt-report.json", str(folder))).read_text()
    )
    [repair] = report["repairs"]
    by_case = {c["case_id"]: c for c in repair["cases"]}
    assert sorted(c["name"] for c in repair["cases"] if c["split"] == "held-out") == sorted(repair["heldout_cases"])
    for trace in traces:
        case = by_case[trace.info.tags["promptopt.case_id"]]
        values = {a.name: a.value for a in trace.info.assessments}
        assert values == {
            "antonyms/repair/proposal": True,  # the scripted model answers with the bare word when shown demos
            "antonyms/repair/original": False,
            "split": case["split"],
        }
        assert (
            trace.info.tags["promptopt.split"] == case["split"]
            and trace.data.spans[0].outputs == ANTONYMS[case["vars"]["word"]]
        )
        assert json.loads(trace.info.tags["mlflow.linkedPrompts"]) == [{"name": "antonyms", "version": "2"}]
        original = next(a for a in trace.info.assessments if a.name == "antonyms/repair/original")
        assert original.rationale.startswith(f"original answer: The opposite of {case['vars']['word']} is")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        candidate = client.get_prompt_version_by_alias("antonyms", "candidate")
        assert (candidate.version, candidate.template) == (2, json.loads(proposal))  # a chat prompt (demos as turns)
        assert (
            candidate.tags.get("promptopt.repair") == "proposal"
            and "on acme/task by labeled" in candidate.commit_message
        )
        assert candidate.model_config == {"model_name": "acme/task"}
        # the tag is on the version it describes, not on the prompt
        assert client.get_prompt("antonyms").tags == {"_mlflow_experiment_ids": f",{experiment},"}
        assert (
            client.get_prompt_version("antonyms", 1).template == f'Opposite of "{{{{word}}}}"? {XSS}'
        )  # the suite's own prompt

    # Again: the unchanged suite keeps version 1 (a proposal in between does not count as a
    # change), and the same proposal is the same version 2.
    result = run_pytest(*repair_args(), mlflow=True)
    result.stdout.fnmatch_lines(["    registered: prompts:/antonyms/2 (alias candidate)"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [v.version for v in client.search_prompt_versions("antonyms")] == [2, 1]
    latest = max(
        client.search_runs([parent.info.experiment_id], filter_string="tags.`promptopt.suite` = 'antonyms'"),
        key=lambda r: r.info.start_time,
    )
    assert json.loads(latest.data.tags["mlflow.linkedPrompts"]) == [{"name": "antonyms", "version": "1"}]


def test_no_repair_found_logs_a_child_run_and_registers_nothing(project, run_pytest, migrated_store) -> None:  # noqa: F811
    project.makefile(".promptopt.yaml", antonyms=suite(provider="acme/stubborn"))
    shutil.copy(migrated_store, project.path / "mlflow.db")
    uri = sqlite_uri(project.path / "mlflow.db")
    result = run_pytest(*repair_args(), mlflow=True)
    assert "registered:" not in result.stdout.str() and "warning" not in result.stdout.str().lower()
    client, parent, children = run_tree(uri, project.path.name)
    child = children["repair antonyms prompt 0"]
    assert (
        child.data.tags["promptopt.repair.status"] == "no repair found"
        and "promptopt.repair.registry_uri" not in child.data.tags
    )
    assert "does not beat the original" in child.data.params["reason"] and child.data.metrics["heldout_after"] == 0.0
    assert parent.data.metrics["repairs"] == 1 and parent.data.metrics["repaired"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [v.version for v in client.search_prompt_versions("antonyms")] == [1]  # only the suite's own prompt
        with pytest.raises(Exception, match="candidate"):
            client.get_prompt_version_by_alias("antonyms", "candidate")


def test_a_registry_failure_is_a_warning_and_the_repair_is_still_logged(project, run_pytest, migrated_store) -> None:  # noqa: F811
    project.makefile(".promptopt.yaml", antonyms=suite())
    shutil.copy(migrated_store, project.path / "mlflow.db")
    uri = sqlite_uri(project.path / "mlflow.db")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client_for(uri).create_registered_model("antonyms")  # the name is taken by a model, not a prompt
    result = run_pytest(*repair_args(), mlflow=True)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*PytestWarning: MLflow: *repair of 'antonyms' prompts[[]0[]]: the proposal was not registered as 'antonyms': *"
        ]
    )
    assert "registered: prompts:/" not in result.stdout.str()
    _, _, children = run_tree(uri, project.path.name)
    child = children["repair antonyms prompt 0"]
    assert (
        child.data.tags["promptopt.repair.status"] == "repaired"
        and "promptopt.repair.registry_uri" not in child.data.tags
    )
    assert (project.path / "antonyms.repaired.json").exists()


def test_a_pending_run_keeps_its_repairs_and_upload_registers_the_candidate(
    project, run_pytest, migrated_store, monkeypatch
) -> None:  # noqa: F811
    project.makefile(".promptopt.yaml", antonyms=suite())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens
    result = run_pytest(*repair_args("--promptopt-experiment", "later"), mlflow=True)
    result.stdout.fnmatch_lines(["MLflow reporting failed (http://127.0.0.1:*", "results kept in *.json; *"])
    [pending] = (project.path / ".promptopt" / "pending").glob("*.json")
    [repair] = load_report(pending)["repairs"]
    assert repair["status"] == "repaired" and repair["heldout_after"] == 1.0 and repair["prompt"]

    store = project.path / "live.db"
    shutil.copy(migrated_store, store)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    # an experiment id left in this worker's environment by an earlier MLflow test would make the
    # registry look for that experiment in the new store
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    sent = subprocess.run(
        [sys.executable, "-m", "pytest_promptopt", "upload", str(pending), "--tracking-uri", sqlite_uri(store)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=project.path,
    )
    assert sent.returncode == 0, sent.stderr
    client, parent, children = run_tree(sqlite_uri(store), "later")
    child = children["repair antonyms prompt 0"]
    assert child.data.metrics["heldout_after"] == 1.0
    # a registration problem is only a warning on stderr: show it when the tag is missing (seen once under load)
    assert child.data.tags.get("promptopt.repair.registry_uri") == "prompts:/antonyms/2", sent.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert client.get_prompt_version_by_alias("antonyms", "candidate").template == json.loads(repair["prompt"])
