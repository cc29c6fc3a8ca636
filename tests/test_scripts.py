"""User code that gives no answer (a loop, sys.exit(), a BaseException, a dead process) ends as an
error of its own case, within --promptopt-script-timeout, in every run mode; the other cases run."""

from __future__ import annotations

import pytest
from conftest import load_report

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


def test_the_time_limit_must_be_positive(run_pytest, pytester: pytest.Pytester):
    pytester.makefile(".promptopt.yaml", s="providers: [echo]\nprompts: ['x']\n")
    result = run_pytest("--promptopt", "--promptopt-script-timeout", "0")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--promptopt-script-timeout (ini: promptopt_script_timeout): must be a positive*"])
