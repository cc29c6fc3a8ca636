"""The plugin beside pytest's own ways of running items and other plugins' (found by trying them:
pytest-rerunfailures, pytest-randomly, xdist's other schedulers, `-W error`, `--setup-only`,
`--junitxml`): every prompt case is counted once, as pytest reports its test, whatever order or
process runs it, and the end of a run never becomes a traceback."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from conftest import MODES, load_report

PYTHON_TESTS = """
import pytest
from pytest_promptopt import contains

pytestmark = pytest.mark.promptopt(suite="s", model="echo")

@pytest.fixture
def broken():
    raise RuntimeError("fixture boom")

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown boom")

def test_ok(prompt_model, prompt_check):
    prompt_check(prompt_model("hi"), contains("hi"))

def test_marker_only_fails():  # the marker, no fixture of the plugin: a prompt test all the same
    assert False

def test_marker_only_passes():
    pass

def test_fixture_first(broken, prompt_model):  # its setup raises before prompt_model exists
    pass

def test_fixture_after(prompt_model, broken):  # ... and after
    pass

def test_teardown_raises(prompt_model, prompt_check, broken_teardown):
    prompt_check(prompt_model("hi"), contains("hi"))

def test_skips(prompt_model):
    prompt_model("hi")
    pytest.skip("not applicable")
"""


@pytest.mark.parametrize("mode", MODES)
def test_python_prompt_tests_count_as_pytest_reports_them(pytester, run_pytest, mode: str) -> None:
    """A fixture that raises (before or after the plugin's) or a teardown that raises is an error,
    a test with only the marker is a case, and a skipped test is none: the gates count what
    pytest's summary counts."""
    pytester.makepyfile(test_outcomes=PYTHON_TESTS)
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", *MODES[mode])
    result.assert_outcomes(passed=3, failed=1, skipped=1, errors=3)
    [suite] = load_report(pytester.path / "r.json")["suites"]
    outcomes = {r["name"]: "error" if r["error"] else ("passed" if r["passed"] else "failed") for r in suite["results"]}
    assert outcomes == {
        "test_ok": "passed",
        "test_marker_only_fails": "failed",
        "test_marker_only_passes": "passed",
        "test_fixture_first": "error",
        "test_fixture_after": "error",
        "test_teardown_raises": "error",
    }
    errors = {r["name"]: r["error"] for r in suite["results"] if r["error"]}
    assert "the test's setup failed: RuntimeError: fixture boom" in errors["test_fixture_first"]
    assert "the test's teardown failed: RuntimeError: teardown boom" in errors["test_teardown_raises"]


CHAIN = """
description: chain
prompts: ["{{q}} {{who}}"]
providers: [echo]
tests:
  - vars: {q: first, who: Alice}
    options: {storeOutputAs: who}
  - vars: {q: second}
    assert: [{type: contains, value: Alice}]
  - vars: {q: third}
    assert: [{type: contains, value: Alice}]
"""
GATED = """
description: gated
prompts: ["Say {{w}}"]
providers: [echo]
tests:
  - vars: {w: a}
    assert: [{type: contains, value: a}]
  - vars: {w: b}
    assert: [{type: contains, value: zzz}]
gates:
  pass_rate: 0.9
"""


@pytest.mark.parametrize(
    ("args", "chained"),
    [
        (["-n", "2", "--dist", "worksteal"], 3),
        (["-n", "2", "--dist", "loadgroup"], 3),
        (["-n", "2", "--dist", "each"], 3),  # every worker runs every item: each case still counts once
        (["-p", "no:xdist", "chain.promptopt.yaml::sequence::q=third[t2]"], 1),  # a later case alone
    ],
    ids=["worksteal", "loadgroup", "each", "node-id"],
)
def test_chained_cases_and_gates_hold_whatever_order_or_worker_runs_them(
    pytester, run_pytest, args: list[str], chained: int
) -> None:
    """A chained case whose earlier cases did not run in its process (another worker, another
    order) runs them first, unreported; an item run twice is one case, its last record."""
    pytester.makefile(".promptopt.yaml", chain=CHAIN, gated=GATED)
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", *args)
    report = load_report(pytester.path / "r.json")
    suites = {s["name"]: s for s in report["suites"]}
    assert (suites["chain"]["cases"], suites["chain"]["passed"]) == (chained, chained), result.stdout.str()
    if chained == 3:
        gated = suites["gated"]
        assert (gated["cases"], gated["passed"], gated["failed"]) == (2, 1, 1)
        assert report["gates_passed"] is False and result.ret == 1


def test_end_of_run_notices_stay_notices_under_warnings_as_errors(pytester, run_pytest) -> None:
    """`filterwarnings = error`: the baseline written and an unreachable MLflow server are shown
    in the warnings summary; the run ends with its summary and exit status 0, no traceback."""
    pytester.makeini("[pytest]\nfilterwarnings =\n    error\n")
    pytester.makefile(".promptopt.yaml", chain=CHAIN)
    written = run_pytest("--promptopt", "--promptopt-update-baseline")
    assert written.ret == 0
    written.stdout.fnmatch_lines(["*PytestWarning: baseline written: *baseline.json*", "*3 passed, 1 warning*"])
    down = run_pytest("--promptopt", "--promptopt-mlflow-uri", "http://127.0.0.1:9", mlflow=True)
    assert down.ret == 0, down.stdout.str()
    down.stdout.fnmatch_lines(["*PytestWarning: MLflow reporting failed (http://127.0.0.1:9)*", "*3 passed*"])
    assert "Traceback" not in down.stdout.str()


def test_a_failed_gate_is_in_the_exit_status_other_reporters_see(pytester, run_pytest) -> None:
    """The gates decide before other plugins write the session down: a conftest's own
    sessionfinish reads exit status 1, and JUnit XML carries the verdict as properties."""
    pytester.makeconftest(
        "import json, pathlib\n"
        "def pytest_sessionfinish(session):\n"
        "    pathlib.Path('seen.json').write_text(json.dumps(int(session.exitstatus)))\n"
    )
    pytester.makefile(".promptopt.yaml", gated=GATED)
    result = run_pytest("--promptopt", "--junitxml", "j.xml")
    assert result.ret == 1 and json.loads((pytester.path / "seen.json").read_text()) == 1
    properties = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "j.xml").getroot().iter("property")}
    assert properties == {"promptopt_gates_passed": "false", "promptopt_gate_failed[gated]": "pass_rate = 0.500 < 0.9"}


@pytest.mark.parametrize(("flag", "status"), [("--setup-only", 1), ("--setup-plan", 0)])
def test_setup_only_calls_no_model_and_records_nothing(pytester, run_pytest, flag: str, status: int) -> None:
    """pytest runs no test: no model call, no case, no gate, no report of the plugin."""
    pytester.makefile(
        ".promptopt.yaml",
        s="prompts: ['{{q}}']\nproviders: [echo]\ntests: [{vars: {q: a}, assert: [{type: contains, value: zzz}]}]\n",
    )
    pytester.makepyfile(test_p=PYTHON_TESTS)
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", flag)
    # --setup-only runs the fixtures (two raise: pytest's own errors), --setup-plan none; no gate decides
    assert result.ret == status
    assert "promptopt summary" not in result.stdout.str()
    assert not (pytester.path / "r.json").exists()


def test_a_worker_dying_in_a_python_prompt_test_counts_it_as_an_error_of_its_own_suite(pytester, run_pytest) -> None:
    """The worker's setup report said which suite the test is in (its marker's `suite=`), so its
    error record goes there, not to another suite of the same file, and its gate decides."""
    pytester.makepyfile(
        test_crash="""
import os, pytest
from pytest_promptopt import contains

@pytest.mark.promptopt(suite="b", model="echo")
def test_b_ok(prompt_model, prompt_check):
    prompt_check(prompt_model("hi"), contains("hi"))

@pytest.mark.promptopt(suite="a", model="echo", gates={"pass_rate": 1.0})
def test_a_crash(prompt_model):
    prompt_model("hi")
    os._exit(1)  # the worker dies (a segfault, an OOM kill)
"""
    )
    result = run_pytest("--promptopt", "-n", "2", "--promptopt-report", "r.json")
    result.assert_outcomes(passed=1, errors=1)
    suites = {s["name"]: s for s in load_report(pytester.path / "r.json")["suites"]}
    assert (suites["a"]["cases"], suites["a"]["errors"], suites["b"]["cases"], suites["b"]["passed"]) == (1, 1, 1, 1)
    assert "worker crashed while running this case" in suites["a"]["results"][0]["error"]


@pytest.mark.parametrize("mode", MODES)
def test_runxfail_leaves_cases_the_gates_tolerate_expected_failures(pytester, run_pytest, mode: str) -> None:
    """--runxfail runs the user's xfail marks as ordinary tests; a case its gates tolerate is the
    plugin's, and stays XFAIL (the gates, not a failure, decide the run)."""
    pytester.makefile(".promptopt.yaml", gated=GATED.replace("pass_rate: 0.9", "pass_rate: 0.5"))
    pytester.makepyfile(
        test_own="""
import pytest
from pytest_promptopt import contains

@pytest.mark.promptopt(suite="py", model="echo", gates={"pass_rate": 0.5})
@pytest.mark.parametrize("word", ["hi", "zzz"])
def test_echo(prompt_model, prompt_check, word):
    prompt_check(prompt_model("hi"), contains(word))

@pytest.mark.xfail(reason="the user's own")
def test_users_xfail():
    assert False
"""
    )
    result = run_pytest("--promptopt", "--runxfail", *MODES[mode])
    result.assert_outcomes(passed=2, failed=1, xfailed=2)  # the user's xfail runs and fails
    result.stdout.fnmatch_lines(["*FAILED test_own.py::test_users_xfail*"])


def test_the_promptopt_marker_selects_every_prompt_test_and_only_them(pytester, run_pytest) -> None:
    pytester.makefile(".promptopt.yaml", gated=GATED)
    pytester.makepyfile(
        test_mixed="""
def test_by_fixture(prompt_model):
    assert prompt_model("hi").text == "hi"

def test_ordinary():
    pass
"""
    )
    assert run_pytest("--promptopt", "--promptopt-model", "echo", "-m", "not promptopt").parseoutcomes() == {
        "passed": 1,
        "deselected": 3,
    }
    only = run_pytest("--promptopt", "--promptopt-model", "echo", "-m", "promptopt")
    only.assert_outcomes(passed=2, xfailed=1, deselected=1)


RERUN_CONFTEST = """
import dataclasses, os, pathlib
import pytest
from _pytest.runner import runtestprotocol
from pytest_promptopt.models.fakes import EchoModel

class Counting(EchoModel):
    name = "acme/counting"
    @property
    def cache_identity(self):
        return {"model": "acme/counting"}
    def generate(self, request):
        with open("calls.log", "a") as log:
            log.write(request.prompt + "\\n")
        n = len(pathlib.Path("calls.log").read_text().splitlines())
        return dataclasses.replace(super().generate(request), text=f"call{n} " + request.prompt)

def pytest_promptopt_make_model(spec):
    if spec.id == "acme/counting":
        return Counting()

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):  # pytest-rerunfailures' way: a failed item runs once more
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    if any(r.failed for r in reports):
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
    for r in reports:
        item.ihook.pytest_runtest_logreport(report=r)
    return True
"""


def test_a_rerun_chained_case_calls_the_model_again_and_a_catch_up_runs_only_what_the_case_reads(
    pytester, run_pytest
) -> None:
    pytester.makeconftest(RERUN_CONFTEST)
    pytester.makefile(
        ".promptopt.yaml",
        chain="""
providers: [acme/counting]
prompts: ['Q {{q}} {{prev}}']
tests:
  - vars: {q: one, prev: start}
    options: {storeOutputAs: prev}
  - vars: {q: two}
  - vars: {q: three}
    assert: [{type: contains, value: call4}]
""",
    )
    # In order: one, two, three (call3: fails), then three again (call4: passes): a rerun is a new call.
    first = run_pytest("--promptopt", "--promptopt-cache", "off", "--promptopt-report", "r.json")
    calls = (pytester.path / "calls.log").read_text().splitlines()
    assert len(calls) == 4 and first.ret == 0, first.stdout.str()
    # `three` alone: the catch-up runs `one` (it stores what `three` reads), not `two` (it stores nothing).
    (pytester.path / "calls.log").unlink()
    run_pytest("--promptopt", "--promptopt-cache", "off", "-k", "three")
    assert (pytester.path / "calls.log").read_text().splitlines()[0] == "Q one start"
    assert "Q two" not in (pytester.path / "calls.log").read_text()
