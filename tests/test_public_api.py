"""The public API is explicit, and the plugin costs nothing without --promptopt."""

from __future__ import annotations

import subprocess
import sys

import pytest_promptopt

HEAVY = [
    "torch",
    "transformers",
    "litellm",
    "mlflow",
    "dspy",
    "pyspark",
    "yaml",
    "jsonschema",
    "jinja2",
    "plotly",
    "hypothesis",
]


def test_all_names_resolve_and_nothing_else_is_public():
    for name in pytest_promptopt.__all__:
        assert getattr(pytest_promptopt, name) is not None
    assert set(dir(pytest_promptopt)) == set(pytest_promptopt.__all__)
    assert {
        "Prompt",
        "FakeModel",
        "EchoModel",
        "LocalModel",
        "LiteLLMModel",
        "contains",
        "not_",
        "Response",
        "DemoRepairOptimizer",
    } <= set(pytest_promptopt.__all__)


def test_importing_the_plugin_imports_nothing_heavy():
    code = "import sys, pytest_promptopt.plugin; print(','.join(m for m in %r if m in sys.modules))" % HEAVY
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_a_run_without_promptopt_loads_nothing_heavy(pytester):
    pytester.makefile(
        ".promptopt.yaml",
        qa="prompts: ['x']\nproviders: [smollm2]\n",
        fuzzed="prompts: ['{{x}}']\nfuzz: {vars: {x: {type: string}}, assert: [{type: is-json}]}\n",
    )
    pytester.makepyfile(test_a="def test_a():\n    pass\n")
    pytester.makepyfile(
        test_prompts="def test_p(prompt_model):\n    pass\n",  # a Python prompt test: skipped too
    )
    pytester.makeconftest(
        "import sys\n"
        f"HEAVY = {HEAVY!r}\n"
        "def pytest_sessionfinish(session):\n"
        "    open('loaded.txt', 'w').write(','.join(m for m in HEAVY if m in sys.modules))\n"
        "    open('own.txt', 'w').write(','.join(sorted(m for m in sys.modules if m.startswith('pytest_promptopt'))))\n"
    )
    result = pytester.runpytest_subprocess("-rs")  # conftest.PYTEST: without hypothesis' plugin
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(["*run it with `pytest --promptopt`*"])
    assert (pytester.path / "loaded.txt").read_text() == ""
    # Nothing parsed, no session: only the modules that name the options, recognise suite files
    # and skip (plus what options.py's defaults come from), not settings, session or items.
    own = set((pytester.path / "own.txt").read_text().split(","))
    assert not own & {
        "pytest_promptopt.settings",
        "pytest_promptopt.session",
        "pytest_promptopt.items",
        "pytest_promptopt.suite.model",
        "pytest_promptopt.suite.document",
        "pytest_promptopt.python_tests",
    }, own
    assert {"pytest_promptopt.plugin", "pytest_promptopt.skipped", "pytest_promptopt.suite.names"} <= own
