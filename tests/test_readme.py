"""README's commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1).strip()
    main_command = re.search(r"<!-- main-command -->\s*```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1).strip()
    setup, _, run_tests = test_command.partition(" && ")
    assert setup == "bash scripts/setup.sh" and "bash scripts/setup.sh" in ci
    assert run_tests in ci.splitlines()
    assert main_command.startswith("bash scripts/setup.sh && ") and "--promptopt example_suites" in main_command
