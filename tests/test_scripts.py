"""User code that gives no answer (a loop, sys.exit(), a BaseException, a dead process) ends as an
error of its own case, within --promptopt-script-timeout, in every run mode; the other cases run."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from conftest import PYTEST, load_report
from fake_openai import FakeOpenAI, echo_last_user_message

from pytest_promptopt.sandbox import Sandbox, ScriptFault, ScriptRaised, ScriptTimeout
from pytest_promptopt.sandbox.javascript import build_function_body, call_file, call_inline
from pytest_promptopt.sandbox.python_code import build_python_script, call_python_code

CHECKS = """
import os


def exits(output, context):
    raise SystemExit(0)


def interrupts(output, context):
    raise KeyboardInterrupt


def dies(output, context):
    os._exit(3)
"""

SUITE = """
providers: [echo]
prompts: ["say {{word}}"]
tests:
  - description: fine
    vars: {word: a}
    assert:
      - {type: python, value: "'a' in output"}
      - {type: javascript, value: "output.includes('a')"}
  - description: python loops
    vars: {word: b}
    assert:
      - type: python
        value: |
          while True:
              pass
  - description: python exits
    vars: {word: c}
    assert: [{type: python, value: "file://checks.py:exits"}]
  - description: python interrupts
    vars: {word: d}
    assert: [{type: python, value: "file://checks.py:interrupts"}]
  - description: python dies
    vars: {word: e}
    assert: [{type: python, value: "file://checks.py:dies"}]
  - description: javascript loops
    vars: {word: f}
    assert: [{type: javascript, value: "(() => { while (true) {} })()"}]
  - description: transform loops
    vars: {word: g}
    options: {transform: "(() => { while (true) {} })()"}
  - description: fine again
    vars: {word: h}
    assert: [{type: python, value: "'h' in output"}]
"""


def test_code_without_an_answer_errors_its_case_only(run_pytest, pytester: pytest.Pytester, mode: list[str]):
    pytester.makepyfile(checks=CHECKS)
    pytester.makefile(".promptopt.yaml", scripts=SUITE)
    result = run_pytest("--promptopt", "--promptopt-script-timeout", "1", "--promptopt-report", "r.json", *mode)
    result.assert_outcomes(passed=2, errors=6)
    suite = load_report(pytester.path / "r.json")["suites"][0]
    assert (suite["cases"], suite["passed"], suite["failed"], suite["errors"]) == (8, 2, 0, 6)
    errors = {r["name"].split("[")[0]: r["error"] for r in suite["results"] if r["error"]}
    assert (
        "python check at scripts.promptopt.yaml:12: tests[1].assert[0] did not return within 1 s"
        in errors["python loops"]
    )
    assert "called sys.exit(0) instead of returning" in errors["python exits"]
    assert "raised KeyboardInterrupt" in errors["python interrupts"]
    assert "ended its process (exit status 3)" in errors["python dies"]
    assert "javascript check at scripts.promptopt.yaml:" in errors["javascript loops"]
    assert "within 1 s" in errors["javascript loops"]
    assert errors["transform loops"].startswith("transform error:") and "within 1 s" in errors["transform loops"]


READS_PROC = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes' states from /proc")


def one_python_check(body: str) -> str:
    """A suite of one echo case whose check is the Python `body`."""
    indented = textwrap.indent(textwrap.dedent(body).strip(), " " * 10)
    return f"""
providers: [echo]
prompts: ["say {{{{word}}}}"]
tests:
  - vars: {{word: a}}
    assert:
      - type: python
        value: |
{indented}
"""


def spawning(name: str, then: str) -> str:
    """Python check code that starts `sleep 300`, writes its pid to `name`, then runs `then`."""
    return f"""
    import os, pathlib, subprocess
    child = subprocess.Popen(["sleep", "300"])
    pathlib.Path({name!r}).write_text(str(child.pid))
    {then}
    """


SPAWNING = (
    one_python_check(spawning("spawned.pid", "return True"))
    + one_python_check(spawning("dying.pid", "os._exit(3)")).split("tests:", 1)[1]
)


@READS_PROC
def test_processes_a_check_starts_end_with_the_run(run_pytest, pytester: pytest.Pytester, mode: list[str]) -> None:
    """The sandbox's workers each lead a process group: closing them at the end of the run ends
    what the user's code started too (a `sleep 300` outlived the run before), and so does a
    worker that dies in the middle of a call."""
    pytester.makefile(".promptopt.yaml", spawning=SPAWNING)
    result = run_pytest("--promptopt", "--promptopt-no-mlflow", *mode)
    result.assert_outcomes(passed=1, errors=1)
    for name in ("spawned.pid", "dying.pid"):
        assert _ends_within(int((pytester.path / name).read_text()), 10), name


LOOPING_PYTHON = one_python_check(
    spawning(
        "spawned.pid",
        """pathlib.Path("worker.pid").write_text(str(os.getpid()))
    while True:
        pass""",
    )
)

LOOPING_NODE = """
providers: [echo]
prompts: ["say {{word}}"]
tests:
  - vars: {word: a}
    assert: [{type: javascript, value: "file://loops.mjs"}]
"""

LOOPING_MODULE = """
import fs from 'node:fs';
import { spawn } from 'node:child_process';
export default function () {
  fs.writeFileSync('spawned.pid', String(spawn('sleep', ['300']).pid));
  fs.writeFileSync('worker.pid', String(process.pid));
  while (true) {}
}
"""


@READS_PROC
def test_ctrl_c_ends_the_run_while_a_check_on_a_call_thread_loops(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hosted model's cases are graded on call threads. The workers have process groups of
    their own, so a terminal's Ctrl-C does not reach a looping one; the run's end kills it rather
    than wait for its time limit (120 s here: the run took that long before)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    with FakeOpenAI(echo_last_user_message, delay_s=0.3) as server:
        later = "\n".join(f"  - vars: {{word: w{i}}}" for i in range(6))
        looping = LOOPING_PYTHON.split("tests:", 1)[1].strip("\n")
        pytester.makefile(
            ".promptopt.yaml",
            hosted=f"""
providers: [{{id: openai/test-model, config: {{api_base: "{server.base_url}"}}}}]
prompts: ["say {{{{word}}}}"]
tests:
  - vars: {{word: first}}
    assert: [{{type: python, value: "import time; time.sleep(3); return True"}}]
{looping}
{later}
""",
        )
        run, worker = start_until_looping(pytester.path, "120")
        try:
            os.killpg(run.pid, signal.SIGINT)  # a terminal's Ctrl-C: the foreground process group
            out, _ = run.communicate(timeout=60)
            assert run.returncode == 2, out  # interrupted, long before the check's time limit
            assert _ends_within(worker, 10)
            assert _ends_within(int((pytester.path / "spawned.pid").read_text()), 10)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait(timeout=60)
            _kill_recorded(pytester.path)


def start_until_looping(folder: Path, script_timeout: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    """`pytest --promptopt` in `folder`, in a session of its own (a signal sent to its group reaches
    only this run), once a check has written the pid of its worker to `worker.pid`."""
    run = subprocess.Popen(
        [*PYTEST, "-p", "no:cacheprovider", "--promptopt", "--promptopt-no-mlflow"]
        + ["--promptopt-script-timeout", script_timeout, *args],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    pid_file = folder / "worker.pid"
    deadline = time.monotonic() + 120
    while not pid_file.exists() or not pid_file.read_text():
        if run.poll() is not None or time.monotonic() > deadline:
            run.kill()
            out, _ = run.communicate(timeout=60)
            pytest.fail(f"the check never started:\n{out}")
        time.sleep(0.1)
    return run, int(pid_file.read_text())


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _kill_recorded(folder: Path) -> None:
    """The processes a test's checks recorded, if still running (after a failed assertion: the
    workers are in process groups of their own, out of reach of the run's group)."""
    for name in ("worker.pid", "spawned.pid"):
        file = folder / name
        if file.exists() and file.read_text() and _running(int(file.read_text())):
            os.kill(int(file.read_text()), signal.SIGKILL)


def _ends_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _running(pid)


@READS_PROC
@pytest.mark.parametrize("language", ["python", "node"])
def test_a_looping_check_ends_when_the_process_that_started_it_is_killed(
    pytester: pytest.Pytester, mode: list[str], language: str
) -> None:
    """The time limit is enforced by the process that started the worker; killed outright
    (SIGKILL), it leaves the worker to end itself and what it started: within about a second,
    instead of keeping a core busy forever (plain runs: pytest; `-n 2`: its worker)."""
    if language == "node":
        if not Sandbox().node_available():
            pytest.skip("node is not on the PATH")
        pytester.makefile(".mjs", loops=LOOPING_MODULE)
    pytester.makefile(".promptopt.yaml", loops=LOOPING_NODE if language == "node" else LOOPING_PYTHON)
    run, worker = start_until_looping(pytester.path, "600", *mode)
    try:
        started_by = _parent_of(worker)
        assert started_by == run.pid or _parent_of(started_by) == run.pid  # pytest, or its xdist worker
        time.sleep(1.5)
        assert _running(worker)  # looping: only its parent's time limit would end it
        os.kill(started_by, signal.SIGKILL)
        assert _ends_within(worker, 15), f"the {language} worker {worker} still runs after its parent was killed"
        assert _ends_within(int((pytester.path / "spawned.pid").read_text()), 10)  # what it started, too
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        run.wait(timeout=60)
        _kill_recorded(pytester.path)


def test_the_time_limit_must_be_positive(run_pytest, pytester: pytest.Pytester):
    pytester.makefile(".promptopt.yaml", s="providers: [echo]\nprompts: ['x']\n")
    result = run_pytest("--promptopt", "--promptopt-script-timeout", "0")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--promptopt-script-timeout (ini: promptopt_script_timeout): must be a positive*"])


# --------------------------------------------------------------------------- the sandbox itself


@pytest.fixture
def sandbox():
    box = Sandbox()
    yield box
    box.close()


@pytest.mark.parametrize(
    ("code", "body"),
    [  # promptfoo 0.121.20's buildFunctionBody examples (src/assertions/javascript.ts)
        ("output === 'test'", "return output === 'test'"),
        ("const s = JSON.parse(output).score; s > 0.5", "const s = JSON.parse(output).score; return s > 0.5"),
        ("const s = output; s === 'a;b'", "const s = output; return s === 'a;b'"),
        ("output.length > 3;;", "return output.length > 3"),
        ("let x = 1", "let x = 1"),
    ],
)
def test_one_line_javascript_gets_promptfoos_return(code: str, body: str):
    assert build_function_body(code) == body


def test_inline_python_is_promptfoos_main():
    assert (
        build_python_script("'a' in output") == "import json\n\ndef main(output, context):\n    return 'a' in output\n"
    )
    two = build_python_script("x = 1\nreturn x")
    assert two.endswith("def main(output, context):\n    x = 1\n    return x\n")
    tabbed = build_python_script("if True:\n\treturn 1")
    assert tabbed.endswith("\tif True:\n\t\treturn 1\n")  # the first indented line's indentation


def test_python_gets_no_network_and_a_time_limit(sandbox: Sandbox):
    with pytest.raises(ScriptRaised, match="network access is disabled"):
        call_python_code(
            sandbox, "import socket\nreturn socket.create_connection(('127.0.0.1', 9))", ["x", {}], 30, "net"
        )
    with pytest.raises(ScriptTimeout, match="did not return within 0.5 s"):
        call_python_code(sandbox, "while True:\n    pass", ["x", {}], 0.5, "loop")
    assert call_python_code(sandbox, "output * 2", ["ab", {}], 30, "after") == "abab"  # a fresh worker


def test_javascript_in_node_gets_no_network(sandbox: Sandbox, tmp_path: Path):
    if not sandbox.node_available():
        pytest.skip("node is not on the PATH")
    (tmp_path / "net.js").write_text(
        "const http = require('http');\nmodule.exports = () => { http.get('http://127.0.0.1:9'); return true; };\n"
    )
    with pytest.raises(ScriptRaised, match="network access is disabled"):
        call_file(sandbox, tmp_path / "net.js", None, "check", ["x", {}], 30, "net")


def test_without_node_es_modules_run_in_mini_racer_and_require_says_what_to_install(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(sandbox, "node_available", lambda: False)
    (tmp_path / "esm.mjs").write_text("export default function (output) { return output === 'hi'; }\n")
    assert call_file(sandbox, tmp_path / "esm.mjs", None, "check", ["hi", {}], 30, "esm")["value"] is True
    (tmp_path / "req.js").write_text("const fs = require('fs');\nmodule.exports = () => true;\n")
    with pytest.raises(ScriptFault, match=r"req\.js loads other modules \(require/import\), which needs node"):
        call_file(sandbox, tmp_path / "req.js", None, "check", ["hi", {}], 30, "req")


def test_without_any_engine_javascript_says_what_to_install(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sandbox, "node_available", lambda: False)
    monkeypatch.setattr(sandbox, "racer_available", lambda: False)
    with pytest.raises(ScriptFault, match=r"pip install 'pytest-promptopt\[js\]'.*node"):
        call_inline(sandbox, ["output", "context"], "return true", ["x", {}], "check", 30, "check at s.yaml:3")
