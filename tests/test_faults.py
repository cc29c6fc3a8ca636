"""Fault injection (issue 14): every case ends as passed, failed or error, whatever raised, and
nothing leaks.

A fake OpenAI-compatible provider with programmed faults (tests/fake_openai.py `Reply`: no
choices, malformed JSON, a dropped connection, a 5xx, a hang, reflected headers), corrupt and
read-only response caches, checks that call `sys.exit()` or raise BaseException, pytest-timeout
ending a hung check, report paths that cannot be written. Each test asserts the exact outcome:
pytest's counts, the summary table, the gates and the JSON report (JUnit, HTML and MLflow where
cheap), in the modes where it matters (plain and `-n 2`; Spark for the cache).

A read-only project is a real read-only mount: the pytest subprocess runs in a private mount
namespace (`unshare -m`) in which the project folder is bind-mounted read-only. Root ignores
file modes, so `chmod` would prove nothing; the mount refuses root too, and vanishes with the
process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import PYTEST, load_report
from fake_openai import FakeOpenAI, Reply

from pytest_promptopt import FakeModel, Request
from pytest_promptopt.cache import CallStats, ResponseCache
from pytest_promptopt.execute import execute_case
from pytest_promptopt.interrupts import interrupt_on_sigterm
from pytest_promptopt.models.base import Response
from pytest_promptopt.models.specs import ModelSpec
from pytest_promptopt.suite.loader import load_suite

SECRET = "sk-fault-test-0123456789abcdef"
MODES = {"plain": [], "xdist": ["-n", "2"]}


def _can_mount() -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_mount = pytest.mark.skipif(
    not _can_mount(), reason="a read-only project needs root and `unshare -m` (a private read-only bind mount)"
)


def read_only_pytest(
    project: Path, basetemp: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`pytest --promptopt ARGS` in `project`, with `project` mounted read-only for that process only."""
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && cd "$1" && shift && exec "$@"'
    command = [*PYTEST, f"--basetemp={basetemp}", "-p", "no:cacheprovider", "--promptopt"]
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(project), *command, "--promptopt-no-mlflow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def outcome(result: subprocess.CompletedProcess[str]) -> str:
    """pytest's closing line without its `=` rule and timing: `2 passed`, `1 passed, 1 error`."""
    lines = [line.strip("= ") for line in result.stdout.splitlines() if line.strip()]
    return re.sub(r" in [0-9.]+s( \(.*\))?$", "", lines[-1]) if lines else result.stderr


def fake_suite(answers: dict[str, str], cases: int = 2) -> str:
    """A suite on the scripted `fake` provider (cacheable: it goes through the response cache)."""
    tests = "\n".join(f"  - vars: {{n: '{i}'}}\n    assert: [{{type: equals, value: 'A{i}'}}]" for i in range(cases))
    return f"""
description: cached
providers: [{{id: fake, config: {{responses: {json.dumps(answers)}}}}}]
prompts: ["Q{{{{n}}}}"]
tests:
{tests}
"""


FAKE_ANSWERS = {"Q0": "A0", "Q1": "A1"}


def cache_rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT response FROM responses")]


def test_an_adapter_that_raises_anything_is_a_model_error_of_its_case(tmp_path: Path) -> None:
    loaded = load_suite(
        _write(tmp_path / "s.promptopt.yaml", "providers: [echo]\nprompts: ['hi']\ntests: [{vars: {}}]\n"),
        "s.promptopt.yaml",
        ModelSpec("echo"),
    )
    [case] = loaded.cases

    class Raising:
        name = "raising"
        cache_identity = {"model": "raising"}
        cacheable = False

        def __init__(self, exc: BaseException) -> None:
            self.exc = exc

        def generate(self, request: Request) -> Response:
            raise self.exc

    cache = ResponseCache(tmp_path / "c.sqlite")
    for exc, expected in [
        (IndexError("list index out of range"), "model error (echo): IndexError: list index out of range"),
        (SystemExit(2), "model error (echo): user code called sys.exit(2) instead of returning"),
    ]:
        result = execute_case(case, Raising(exc), cache, "s::hi")
        assert (result.status, result.error) == ("error", expected)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C (or in-process user code raising it) stops the run
        execute_case(case, Raising(KeyboardInterrupt()), cache, "s::hi")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- user code that ends the process


EXIT_CHECKS = """
import sys

def exits(output, context):
    sys.exit(0)

def raises_base(output, context):
    raise BaseException("not an Exception")
"""

EXIT_SUITE = """
description: exits
providers: [echo]
prompts: ["say {{word}}"]
gates: {pass_rate: 1.0}
tests:
  - description: exit
    vars: {word: exit}
    assert: [{type: python, value: "file://checks.py:exits"}]
  - description: base
    vars: {word: base}
    assert: [{type: python, value: "file://checks.py:raises_base"}]
  - description: fine
    vars: {word: fine}
    assert: [{type: contains, value: fine}]
"""

EXIT_TESTS = """
import sys
import pytest
from pytest_promptopt import contains, python

pytestmark = pytest.mark.promptopt(suite="py-exits", model="echo")

def test_check_exits(prompt_model, prompt_check):
    prompt_check(prompt_model("hi"), python(lambda output: sys.exit(3)))

def test_fine(prompt_model, prompt_check):
    prompt_check(prompt_model("hi"), contains("hi"))
"""


@pytest.mark.parametrize("mode", [*MODES, "no-xdist"])
def test_a_check_that_exits_or_raises_base_exception_is_an_error_of_its_case(
    run_pytest: Any, pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makepyfile(checks=EXIT_CHECKS, test_py=EXIT_TESTS)
    pytester.makefile(".promptopt.yaml", exits=EXIT_SUITE)
    mlflow = mode == "plain"  # once is enough: MLflow reads the same summary
    args = ["--promptopt-report", "r.json", "--promptopt-html", "r.html", "--junitxml", "junit.xml"]
    result = run_pytest("--promptopt", *args, *MODES.get(mode, ["-p", "no:xdist"]), mlflow=mlflow)
    result.assert_outcomes(passed=2, errors=3)
    assert result.ret == 1
    text = result.stdout.str()
    assert len(text.splitlines()) < 120, text  # one short message per case, no traceback pages
    result.stdout.fnmatch_lines(
        [
            "ERROR exit[t0]: assertion error: python check at exits.promptopt.yaml:8: tests[0].assert[0] called "
            "sys.exit(0) instead of returning",
            "ERROR base[t1]: assertion error: python check at exits.promptopt.yaml:11: tests[1].assert[0] raised "
            "BaseException: not an Exception",
            "exits  *echo  *3 *1 *0 *2 *100.0%*pass_rate>=1:ok*",
            "py-exits  *echo  *2 *1 *0 *1 *",
        ]
    )
    report = load_report(pytester.path / "r.json")
    suites = {s["name"]: s for s in report["suites"]}
    assert [(s["cases"], s["passed"], s["failed"], s["errors"]) for s in suites.values()] == [
        (3, 1, 0, 2),
        (2, 1, 0, 1),
    ]
    assert report["gates_passed"] is True  # errors are counted apart from the pass rate, and shown
    errors = {r["name"]: r["error"] for s in suites.values() for r in s["results"] if r["error"]}
    assert errors == {
        # a suite's python check runs in the sandbox's worker process (sandbox/), which names it
        "exit[t0]": "assertion error: python check at exits.promptopt.yaml:8: tests[0].assert[0] called sys.exit(0) "
        "instead of returning",
        "base[t1]": "assertion error: python check at exits.promptopt.yaml:11: tests[1].assert[0] raised "
        "BaseException: not an Exception",
        # a Python test's check is a function of the test, called in its process (execute.raised)
        "test_check_exits": "assertion error: user code called sys.exit(3) instead of returning",
    }
    junit = (pytester.path / "junit.xml").read_text()
    # A Python test's error is an <error> in JUnit too, though pytest's writer judges by the phase
    assert 'errors="3"' in junit and 'failures="0"' in junit and 'tests="5"' in junit
    case = re.search(r'<testcase [^>]*name="test_check_exits".*?</testcase>', junit, re.S)
    assert case and '<error message="' in case.group(0) and "<failure" not in case.group(0), junit
    assert "5 cases in 2 suites" in (pytester.path / "r.html").read_text()
    if mlflow:
        metrics = session_metrics(pytester.path / "mlflow.db", pytester.path.name)
        assert (metrics["cases"], metrics["errors"]) == (5, 3)


def session_metrics(db: Path, experiment: str) -> dict[str, float]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("promptopt.session") == "true"]
    return dict(parent.data.metrics)


def test_keyboard_interrupt_from_a_suite_check_is_an_error_of_its_case(
    run_pytest: Any, pytester: pytest.Pytester
) -> None:
    # A suite's python check runs in a sandbox worker process: its KeyboardInterrupt is not a Ctrl-C.
    pytester.makepyfile(checks="def stop(output, context):\n    raise KeyboardInterrupt('from the check')\n")
    pytester.makefile(
        ".promptopt.yaml",
        stops="""
providers: [echo]
prompts: ["say {{word}}"]
tests:
  - vars: {word: one}
  - vars: {word: stop}
    assert: [{type: python, value: "file://checks.py:stop"}]
  - vars: {word: after}
""",
    )
    result = run_pytest("--promptopt", "--promptopt-report", "r.json")
    result.assert_outcomes(passed=2, errors=1)
    [suite] = load_report(pytester.path / "r.json")["suites"]
    assert (suite["cases"], suite["passed"], suite["errors"]) == (3, 2, 1)
    [error] = [r["error"] for r in suite["results"] if r["error"]]
    assert error == (
        "assertion error: python check at stops.promptopt.yaml:6: tests[1].assert[0] raised KeyboardInterrupt: "
        "from the check"
    )


INTERRUPT_TESTS = """
import pytest
from pytest_promptopt import contains, python

pytestmark = pytest.mark.promptopt(suite="py-stops", model="echo")

def stop(output):
    raise KeyboardInterrupt

def test_a_one(prompt_model, prompt_check):
    prompt_check(prompt_model("one"), contains("one"))

def test_b_stop(prompt_model, prompt_check):
    prompt_check(prompt_model("stop"), python(stop))

def test_c_never(prompt_model, prompt_check):
    prompt_check(prompt_model("never"), contains("never"))
"""


def test_keyboard_interrupt_from_a_python_tests_check_stops_the_run_and_keeps_the_report(
    run_pytest: Any, pytester: pytest.Pytester
) -> None:
    # A Python test's check runs in pytest's process: its KeyboardInterrupt is pytest's Ctrl-C.
    pytester.makepyfile(test_py=INTERRUPT_TESTS)
    # a subprocess: in this process pytester would raise the interrupt into the calling test
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", subprocess=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])
    [suite] = load_report(pytester.path / "r.json")["suites"]
    assert (suite["cases"], suite["passed"]) == (1, 1)  # what ran before the interrupt
    assert [r["name"] for r in suite["results"]] == ["test_a_one"]


SETUP_HOOK_BREAKS = """
def pytest_runtest_setup(item):
    if "boom" in item.name:
        raise RuntimeError("a conftest hook broke")
"""


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_a_case_whose_setup_fails_before_it_runs_still_gets_its_record(
    run_pytest: Any, pytester: pytest.Pytester, mode: str
) -> None:
    # A conftest's setup hook raises before the case's own setup: the case never ran, and its
    # teardown report carries an error record built then (CaseItem.lost_record).
    pytester.makeconftest(SETUP_HOOK_BREAKS)
    pytester.makefile(
        ".promptopt.yaml",
        hooked="""
providers: [echo]
prompts: ["say {{word}}"]
gates: {pass_rate: 1.0}
tests:
  - {description: one, vars: {word: one}}
  - {description: boom, vars: {word: boom}}
""",
    )
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", *MODES[mode])
    result.assert_outcomes(passed=1, errors=1)
    [suite] = load_report(pytester.path / "r.json")["suites"]
    assert (suite["cases"], suite["passed"], suite["errors"]) == (2, 1, 1)
    [broken] = [r for r in suite["results"] if r["error"]]
    assert (broken["name"], broken["error"]) == (
        "boom[t1]",
        "the case did not finish: RuntimeError: a conftest hook broke",
    )
    assert broken["prompt"] == "say boom"  # the case's own record, not a stub


HANG_CHECKS = """
import time

def hang(output, context):
    time.sleep(120)
    return True
"""

HANG_TESTS = """
import time
import pytest
from pytest_promptopt import python

pytestmark = pytest.mark.promptopt(suite="py-hangs", model="echo")

def test_check_hangs(prompt_model, prompt_check):
    prompt_check(prompt_model("hi"), python(lambda output: time.sleep(120)))
"""


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_pytest_timeout_ending_a_hung_check_makes_its_case_an_error(
    run_pytest: Any, pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makepyfile(checks=HANG_CHECKS, test_py=HANG_TESTS)
    pytester.makefile(
        ".promptopt.yaml",
        hangs="""
description: hangs
providers: [echo]
prompts: ["say {{word}}"]
gates: {pass_rate: 0.5}
tests:
  - vars: {word: hang}
    assert: [{type: python, value: "file://checks.py:hang"}]
  - vars: {word: fine}
    assert: [{type: contains, value: fine}]
""",
    )
    result = run_pytest("--promptopt", "--timeout", "3", "--promptopt-report", "r.json", *MODES[mode])
    result.assert_outcomes(passed=1, errors=2)
    report = load_report(pytester.path / "r.json")
    suites = {s["name"]: s for s in report["suites"]}
    assert (suites["hangs"]["cases"], suites["hangs"]["errors"], suites["py-hangs"]["errors"]) == (2, 1, 1)
    errors = [r["error"] for s in suites.values() for r in s["results"] if r["error"]]
    assert errors == ["assertion error: Timeout (>3.0s) from pytest-timeout."] * 2


class Interrupted(BaseException):
    """What pytest-timeout's signal method raises in the main thread (pytest's `Failed` is one)."""


def test_a_sandbox_call_interrupted_by_a_signal_kills_its_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    # pytest-timeout (or Ctrl-C) interrupts a call to user code that never returns: the worker
    # still runs that code, so it is killed, not handed to the next call or left running.
    import signal

    from pytest_promptopt.sandbox import workers

    started: list[workers.Worker] = []

    class Recorded(workers.Worker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted("Timeout (>0.5s) from pytest-timeout.")

    monkeypatch.setattr(workers, "Worker", Recorded)
    never_replies = "import sys, time\nprint('up', flush=True)\nfor line in sys.stdin:\n    time.sleep(120)\n"
    pool = workers.WorkerPool([sys.executable, "-u", "-c", never_replies])
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(Interrupted):
            pool.call({"fn": "hang"}, 60, "python check")
        [worker] = started
        assert worker.proc.poll() is not None  # killed then, not left sleeping (nor at close)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        pool.close()


# --------------------------------------------------------------------------- provider faults


def faulty(body: dict[str, Any]) -> Reply:
    """The fault a case's prompt names (`case <fault>`)."""
    fault = body["messages"][-1]["content"].split()[-1]
    return {
        "empty": Reply(choices=[]),
        "badjson": Reply(body=b'{"choices": [{"message": '),
        "dropped": Reply(drop=True),
        "overloaded": Reply(503, "overloaded"),
        "hang": Reply(text="late", hang_s=4),
        "fine": Reply(text="fine"),
    }[fault]


FAULTS = ["empty", "badjson", "dropped", "overloaded", "hang", "fine"]


def hosted_suite(url: str, faults: list[str], extra: str = "") -> str:
    tests = "\n".join(f"  - vars: {{fault: {f}}}\n    description: {f}" for f in faults)
    return f"""
description: hosted
providers: [{{id: openai/test-model, config: {{api_base: "{url}"{extra}}}}}]
prompts: ["case {{{{fault}}}}"]
defaultTest:
  assert: [{{type: contains, value: fine}}]
gates: {{pass_rate: 1.0}}
tests:
{tests}
"""


@pytest.fixture
def openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_provider_faults_are_errors_of_their_cases(
    run_pytest: Any, pytester: pytest.Pytester, openai_env: None, mode: str
) -> None:
    with FakeOpenAI(faulty) as server:
        pytester.makefile(".promptopt.yaml", hosted=hosted_suite(server.base_url, FAULTS))
        result = run_pytest(
            "--promptopt",
            "--promptopt-timeout",
            "1",
            "--promptopt-retries",
            "0",
            "--promptopt-report",
            "r.json",
            *MODES[mode],
        )
    result.assert_outcomes(passed=1, errors=5)
    assert result.ret == 1
    assert len(result.stdout.lines) < 150, result.stdout.str()  # no page of traceback per case
    result.stdout.fnmatch_lines(["hosted  *openai/test-model  *6 *1 *0 *5 *100.0%*"])
    [suite] = load_report(pytester.path / "r.json")["suites"]
    errors = {r["name"].split("[")[0]: r["error"] for r in suite["results"]}
    assert errors["fine"] is None
    assert errors["empty"] == (
        "model error (openai/test-model): model openai/test-model: the provider answered without any choice "
        "(empty 'choices')"
    )
    for fault in ("badjson", "dropped", "overloaded", "hang"):
        assert errors[fault].startswith("model error (openai/test-model): "), errors[fault]
    assert "503" in errors["overloaded"] or "ServiceUnavailable" in errors["overloaded"]
    assert "imeout" in errors["hang"]
    assert SECRET not in result.stdout.str() + json.dumps(suite)


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_a_provider_reflecting_the_key_leaks_it_nowhere(
    run_pytest: Any, pytester: pytest.Pytester, openai_env: None, mode: str
) -> None:
    with FakeOpenAI(lambda body: Reply(text="fine; you sent", reflect_headers=True)) as server:
        pytester.makefile(".promptopt.yaml", hosted=hosted_suite(server.base_url, ["fine", "fine2"]))
        args = ["--promptopt-report", "r.json", "--junitxml", "junit.xml", "-rA", *MODES[mode]]
        result = run_pytest("--promptopt", *args)
        sent = [v for h in server.headers for k, v in h.items() if k.lower() == "authorization"]
        assert sent == [f"Bearer {SECRET}"] * 2  # the key was sent, and reflected in the answers
        result.assert_outcomes(passed=2)
        run_pytest("--promptopt", "--promptopt-cache", "replay", "--promptopt-report", "replay.json").assert_outcomes(
            passed=2
        )
        assert len(server.requests) == 2  # the replay asked nothing
    cache = pytester.path / ".promptopt" / "cache.sqlite"
    rows = cache_rows(cache)
    assert len(rows) == 2 and all("Bearer ***" in row for row in rows)
    places = {
        "cache": "\n".join(sqlite3.connect(cache).iterdump()),
        "report": (pytester.path / "r.json").read_text(),
        "junit": (pytester.path / "junit.xml").read_text(),
        "terminal": result.stdout.str(),
    }
    assert {name: SECRET in text for name, text in places.items()} == dict.fromkeys(places, False)
    outputs = [r["output"] for r in load_report(pytester.path / "replay.json")["suites"][0]["results"]]
    first = [r["output"] for r in load_report(pytester.path / "r.json")["suites"][0]["results"]]
    assert outputs == first and all("Bearer ***" in o for o in outputs)


# --------------------------------------------------------------------------- the cache under pytest


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_a_corrupt_cache_is_replaced_and_the_run_goes_on(run_pytest: Any, pytester: pytest.Pytester, mode: str) -> None:
    pytester.makefile(".promptopt.yaml", cached=fake_suite(FAKE_ANSWERS))
    cache = pytester.path / ".promptopt" / "cache.sqlite"
    cache.parent.mkdir()
    cache.write_bytes(b"not a database at all" * 100)
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", *MODES[mode])
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [f"response cache {cache} was corrupt (file is not a database): moved aside to cache.sqlite.corrupt-*"]
    )
    assert result.stdout.str().count("was corrupt") == 1  # said once, by the controller, before the workers
    assert len(list(cache.parent.glob("cache.sqlite.corrupt-*"))) == 1
    [suite] = load_report(pytester.path / "r.json")["suites"]
    assert [(r["calls"], r["cache_hits"]) for r in suite["results"]] == [(1, 0), (1, 0)]
    # the new cache works: a warm rerun asks the model nothing
    run_pytest("--promptopt", "--promptopt-report", "warm.json", *MODES[mode]).assert_outcomes(passed=2)
    [warm] = load_report(pytester.path / "warm.json")["suites"]
    assert [(r["calls"], r["cache_hits"]) for r in warm["results"]] == [(0, 1), (0, 1)]


def test_replay_from_a_corrupt_cache_errors_every_case_and_names_the_file(
    run_pytest: Any, pytester: pytest.Pytester
) -> None:
    pytester.makefile(".promptopt.yaml", cached=fake_suite(FAKE_ANSWERS))
    cache = pytester.path / ".promptopt" / "cache.sqlite"
    cache.parent.mkdir()
    cache.write_bytes(b"garbage" * 1000)
    result = run_pytest("--promptopt", "--promptopt-cache", "replay", "--promptopt-report", "r.json")
    result.assert_outcomes(errors=2)
    [suite] = load_report(pytester.path / "r.json")["suites"]
    assert (suite["cases"], suite["errors"]) == (2, 2)
    for case in suite["results"]:
        assert str(cache) in case["error"] and "was corrupt (file is not a database)" in case["error"]


@needs_mount
@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_a_read_only_project_runs_with_the_cache_read_only_or_off(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, mode: str
) -> None:
    pytester.makefile(".promptopt.yaml", cached=fake_suite(FAKE_ANSWERS))
    base = tmp_path_factory.mktemp("basetemp")
    cache = pytester.path / ".promptopt" / "cache.sqlite"
    # no cache yet, and none can be made: the model answers every case
    result = read_only_pytest(pytester.path, base, *MODES[mode])
    assert result.returncode == 0, result.stdout + result.stderr
    assert outcome(result) == "2 passed", result.stdout
    assert (
        f"response cache {cache} cannot be created ({pytester.path} is on a read-only file system): the run goes on without a cache"
        in result.stdout
    )
    assert "PermissionError" not in result.stdout and "OSError" not in result.stdout
    assert not cache.exists()
    # a cache recorded before the folder became read-only: replay reads it
    recorder = ResponseCache(cache)
    for prompt in FAKE_ANSWERS:
        recorder.fetch(FakeModel(FAKE_ANSWERS), Request.from_prompt(prompt), CallStats())
    recorder.close()  # its -wal merged and gone, as in a committed cache
    assert sorted(p.name for p in cache.parent.iterdir()) == ["cache.sqlite"]
    result = read_only_pytest(pytester.path, base, "--promptopt-cache", "replay", *MODES[mode])
    assert result.returncode == 0, result.stdout + result.stderr
    assert outcome(result) == "2 passed", result.stdout
    assert (
        f"response cache {cache} is read-only ({cache.parent} is on a read-only file system): answers are read "
        "from it, new answers are not recorded"
    ) in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("cached "))
    # cases passed failed errors ... calls cache-hits: every answer came from the read-only cache
    assert re.match(r"cached\s+fake\s+2\s+2\s+0\s+0\s.*\s0\s+2\s+\S+s$", row), row


@needs_mount
def test_a_dataset_suite_in_a_read_only_project_writes_its_table_to_the_temporary_folder(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pytest.importorskip("pyarrow")
    (pytester.path / "data").mkdir()
    (pytester.path / "data" / "q.jsonl").write_text("".join(json.dumps({"n": n}) + "\n" for n in ("0", "1")))
    pytester.makefile(
        ".promptopt.yaml",
        rows=fake_suite(FAKE_ANSWERS, cases=0).replace(
            "tests:\n", "dataset: {path: data/q.jsonl, assert: [{type: starts-with, value: A}]}\n"
        ),
    )
    result = read_only_pytest(pytester.path, tmp_path_factory.mktemp("basetemp"), "-q")
    assert outcome(result) == "1 passed", result.stdout
    line = next(line for line in result.stdout.splitlines() if line.startswith("per-case table of suite cached: "))
    fallback = Path(line.rsplit("written to ", 1)[1].removesuffix(" instead"))
    assert "Read-only file system" in line and "pytest-promptopt" in fallback.parts
    assert (fallback / "all.parquet").exists()
    shutil.rmtree(fallback.parent)


# --------------------------------------------------------------------------- report paths


def test_an_unwritable_report_path_stops_the_run_before_any_model_call(
    run_pytest: Any, pytester: pytest.Pytester, openai_env: None
) -> None:
    (pytester.path / "out").write_text("a file, where the report's folder should be")
    with FakeOpenAI(lambda body: Reply(text="fine")) as server:
        pytester.makefile(".promptopt.yaml", hosted=hosted_suite(server.base_url, ["fine"]))
        for flag in ("--promptopt-report", "--promptopt-html"):
            result = run_pytest("--promptopt", flag, "out/report")
            assert result.ret == pytest.ExitCode.USAGE_ERROR
            result.stderr.fnmatch_lines([f"ERROR: {flag} {pytester.path}/out/report: cannot write there (*)*"])
            assert len(result.stderr.lines) <= 3, result.stderr.str()
        assert server.requests == []


@needs_mount
def test_a_report_path_in_a_read_only_folder_is_a_usage_error(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pytester.makefile(".promptopt.yaml", cached=fake_suite(FAKE_ANSWERS))
    result = read_only_pytest(pytester.path, tmp_path_factory.mktemp("basetemp"), "--promptopt-report", "r.json")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.strip() == (
        f"ERROR: --promptopt-report {pytester.path}/r.json: cannot write there (Read-only file system: "
        f"{pytester.path}); give a writable path"
    )


BREAK_REPORT_FOLDER = """
import shutil
from pathlib import Path

import pytest


@pytest.hookimpl(wrapper=True)  # before every sessionfinish that writes (the plugin's is tryfirst)
def pytest_sessionfinish(session):
    # the report folder was writable at start-up, and is a file by the time reports are written
    out = Path(session.config.rootpath) / "out"
    shutil.rmtree(out)
    out.write_text("no longer a folder")
    return (yield)
"""


def test_a_report_path_that_breaks_during_the_run_falls_back_and_mlflow_still_gets_the_run(
    run_pytest: Any, pytester: pytest.Pytester
) -> None:
    pytester.makeconftest(BREAK_REPORT_FOLDER)
    pytester.makefile(".promptopt.yaml", cached=fake_suite(FAKE_ANSWERS))
    result = run_pytest("--promptopt", "--promptopt-report", "out/r.json", mlflow=True)
    result.assert_outcomes(passed=2)
    line = next(line for line in result.stdout.lines if line.startswith("JSON report: "))
    written = Path(line.removeprefix("JSON report: "))
    assert written.name == "r.json" and "pytest-promptopt" in written.parts and written.exists()
    result.stdout.fnmatch_lines(
        [f"*JSON report: could not write {pytester.path}/out/r.json (*); written to {written} instead*"]
    )
    [suite] = load_report(written)["suites"]
    assert (suite["cases"], suite["passed"]) == (2, 2)
    metrics = session_metrics(pytester.path / "mlflow.db", pytester.path.name)
    assert (metrics["cases"], metrics["passed"]) == (2, 2)
    shutil.rmtree(written.parent)


# --------------------------------------------------------------------------- Spark executors' cache

JAVA = shutil.which("java") or (
    os.environ.get("JAVA_HOME") and shutil.which("java", path=os.path.join(os.environ["JAVA_HOME"], "bin"))
)
needs_spark = pytest.mark.skipif(not JAVA, reason="Spark needs a Java runtime: no `java` on PATH or in $JAVA_HOME/bin")


@needs_spark
def test_spark_executors_rebuild_a_corrupt_cache_and_store_no_secret(
    run_pytest: Any, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE"):  # start as a user's pytest would
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACME_API_KEY", SECRET)  # the executors inherit it, and scrub with it
    answers = {"Q0": f"A0 (you sent Bearer {SECRET})", "Q1": f"A1 (you sent Bearer {SECRET})"}
    pytester.makefile(".promptopt.yaml", cached=fake_suite(answers).replace("equals", "starts-with"))
    cache = pytester.path / ".promptopt" / "cache.sqlite"
    cache.parent.mkdir()
    cache.write_bytes(b"not a database at all" * 100)
    args = ("--promptopt", "--promptopt-backend", "spark", "--promptopt-spark-master", "local[2]")
    result = run_pytest(*args, "--promptopt-report", "cold.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"response cache {cache} was corrupt (file is not a database): moved aside*"])
    assert len(list(cache.parent.glob("cache.sqlite.corrupt-*"))) == 1
    rows = cache_rows(cache)  # written by the executors into the rebuilt file
    assert len(rows) == 2 and all("Bearer ***" in row for row in rows)
    assert SECRET not in "\n".join(sqlite3.connect(cache).iterdump())
    # The rebuilt file answers the next run; in this process, as Spark's executors reading the
    # cache are tested by test_spark.py's warm rerun (a second local JVM here cost ~12 s).
    run_pytest("--promptopt", "--promptopt-report", "warm.json").assert_outcomes(passed=2)
    cold = load_report(pytester.path / "cold.json")["suites"][0]["results"]
    warm = load_report(pytester.path / "warm.json")["suites"][0]["results"]
    assert [(r["calls"], r["cache_hits"]) for r in cold] == [(1, 0), (1, 0)]
    assert [(r["calls"], r["cache_hits"]) for r in warm] == [(0, 1), (0, 1)]
    assert (
        [r["output"] for r in warm]
        == [r["output"] for r in cold]
        == ["A0 (you sent Bearer ***)", "A1 (you sent Bearer ***)"]
    )


@needs_spark
@needs_mount
def test_spark_executors_run_a_read_only_project_without_a_cache(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE"):
        monkeypatch.delenv(name, raising=False)
    pytester.makefile(".promptopt.yaml", cached=fake_suite(FAKE_ANSWERS))
    cache = pytester.path / ".promptopt" / "cache.sqlite"
    result = read_only_pytest(
        pytester.path,
        tmp_path_factory.mktemp("basetemp"),
        "--promptopt-backend",
        "spark",
        "--promptopt-spark-master",
        "local[2]",
        timeout=600,
    )
    assert outcome(result) == "2 passed", result.stdout + result.stderr[-3000:]
    assert (
        f"response cache {cache} cannot be created ({pytester.path} is on a read-only file system): the run goes on without a cache"
        in result.stdout
    )
    assert not cache.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM ends a Windows process, handler or not")
def test_sigterm_becomes_a_keyboard_interrupt_only_where_it_had_its_default_action() -> None:
    """A run (and `serve`) takes SIGTERM as Ctrl-C (tests/test_mlflow_faults.py sends it to a run);
    a handler installed by someone else, or a SIGTERM the process was started ignoring, is kept."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        restore = interrupt_on_sigterm()
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait(5)  # the handler runs here, in the main thread
        restore()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

        def theirs(signum: int, frame: Any) -> None:
            pass

        for kept in (theirs, signal.SIG_IGN):
            signal.signal(signal.SIGTERM, kept)
            interrupt_on_sigterm()()
            assert signal.getsignal(signal.SIGTERM) is kept
        off_main: list[Any] = []
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        worker = threading.Thread(target=lambda: off_main.append(interrupt_on_sigterm()))
        worker.start()
        worker.join()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # only the main thread installs
    finally:
        signal.signal(signal.SIGTERM, previous)


# Two threads building syntax trees at once, with finalizers that let the other thread in midway
# (as a run's call threads and pytest's failure formatting do): on CPython 3.11 `ast.parse` then
# raises SystemError (issue 106905), which ended the main job in INTERNALERROR.
AST_RACE = """
import ast, sys, threading, time
if sys.argv[1] == "guarded":
    from pytest_promptopt.ast_lock import serialize_ast_parse
    serialize_ast_parse()
source = open(ast.__file__).read()
errors, stop = [], threading.Event()

class Cycle:
    def __del__(self):
        sum(range(200))

def garbage():
    a, b = Cycle(), Cycle()
    a.other, b.other = b, a

def worker():
    while not stop.is_set():
        try:
            ast.literal_eval("{'pass': True, 'score': 0.5, 'nested': {'a': [1, {'b': [3, [4, [5]]]}]}}")
        except SystemError as exc:
            errors.append(str(exc))
        garbage()

sys.setswitchinterval(1e-6)
thread = threading.Thread(target=worker)
thread.start()
until = time.monotonic() + float(sys.argv[2])
while time.monotonic() < until and not errors:
    try:
        ast.parse(source)
    except SystemError as exc:
        errors.append(str(exc))
    garbage()
stop.set()
thread.join()
print(len(errors), errors[:1])
"""


def test_threads_parsing_python_at_once_never_break_ast_parse_in_a_run():
    def race(mode: str, seconds: float) -> str:
        done = subprocess.run(
            [sys.executable, "-c", AST_RACE, mode, str(seconds)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    bare = race("bare", 8)
    if bare.startswith("0 "):
        pytest.skip(f"this Python ({sys.version.split()[0]}) keeps ast.parse's depth per call: nothing to guard")
    assert "AST constructor recursion depth mismatch" in bare
    assert race("guarded", 3).startswith("0 ")  # the lock a session installs (ast_lock.py)


def test_a_session_that_runs_cases_serializes_ast_parse(pytester, run_pytest):
    import ast

    pytester.makefile(".promptopt.yaml", s="prompts: ['{{q}}']\nproviders: [echo]\ntests: [{vars: {q: x}}]\n")
    run_pytest("--promptopt").assert_outcomes(passed=1)  # in this process, as a user's single run
    assert getattr(ast.parse, "_promptopt_serialized", False)
