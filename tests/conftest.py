from __future__ import annotations

import json
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]

# The three ways users run the plugin; pytester tests that exercise the pytest integration run
# in each of them (DEVELOPERS.md: plain, -n 2, -p no:xdist).
MODES = {
    "plain": [],
    "xdist": ["-n", "2"],
    "no-xdist": ["-p", "no:xdist"],
}


# A suite on the echo model (output = rendered prompt): two passing cases and one failing.
ECHO_SUITE = """
description: capitals
providers: [echo]
prompts: ["The capital of {{country}} is {{capital}}."]
tests:
  - description: france
    vars: {country: France, capital: Paris}
    assert: [{type: contains, value: Paris}, {type: icontains, value: "{{country}}", metric: mentions}]
  - description: spain
    vars: {country: Spain, capital: Madrid}
    assert: [{type: contains, value: Madrid}]
  - description: wrong
    vars: {country: Italy, capital: Milan}
    assert: [{type: contains, value: Rome, metric: mentions}]
"""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """Keep the libraries a pytester test imported in this process.

    pytester removes from `sys.modules`, when a test ends, every module imported while it ran.
    For a library that test imported first (mlflow, and with it numpy and PyYAML), the next
    import then loads it again next to the copies other modules hold, and C extensions cannot
    be loaded twice: numpy refuses, and PyYAML's libyaml loader, paired with a new `yaml`
    package, fails every document with "could not determine a constructor for the tag None".
    Whether that happens depended on which tests an xdist worker ran first. Only the modules
    of the test's own folder (its test files and conftests) are dropped, as pytester intends.
    """
    pytester = getattr(item, "funcargs", {}).get("pytester")
    if pytester is None:
        return (yield)
    before = dict(sys.modules)
    try:
        return (yield)
    finally:
        own = str(pytester.path)
        for name, module in before.items():
            if name not in sys.modules and not str(getattr(module, "__file__", None) or "").startswith(own):
                sys.modules[name] = module


@pytest.fixture(params=list(MODES), ids=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return list(MODES[request.param])


@pytest.fixture
def run_pytest(pytester: pytest.Pytester) -> Any:
    """Run pytest in pytester's temporary directory: in this process when that is what a user's
    single `pytest` process does (no `-n`), in a subprocess under xdist (its workers are processes
    anyway) or when a test asks for one (`subprocess=True`: signals, crashes, a fresh interpreter).

    In-process runs share this process's imports (litellm, mlflow, the bundled model's runtime), so
    they cost a fraction of a subprocess; the plugin keeps no module-level state a run sets
    (docs/architecture.md), which is what makes them equivalent.

    MLflow logging is on by default with --promptopt; it costs seconds per run (import, a fresh
    SQLite store), so only tests that pass `mlflow=True` keep it on.
    """

    def run(*args: str, mlflow: bool = False, subprocess: bool = False) -> pytest.RunResult:
        if "--promptopt" in args and not mlflow:
            args = (*args, "--promptopt-no-mlflow")
        if subprocess or "-n" in args or any(a.startswith("--numprocesses") for a in args):
            return pytester.runpytest_subprocess(*args)
        return pytester.runpytest_inprocess(*args)

    return run


def load_report(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    schema = json.loads(
        (Path(__file__).parent.parent / "pytest_promptopt" / "schemas" / "report.schema.json").read_text()
    )
    import jsonschema

    jsonschema.validate(data, schema)
    return data


def comparable(report: dict[str, Any]) -> list[Any]:
    """A report without timings, for comparing runs across modes."""
    suites = []
    for s in report["suites"]:
        suites.append(
            {
                "name": s["name"],
                "counts": (s["cases"], s["passed"], s["failed"], s["errors"], s["pass_rate"]),
                "gates": s["gates"],
                "results": sorted(
                    (r["case_id"], r["output"], r["passed"], r["error"], json.dumps(r["scores"], sort_keys=True))
                    for r in s["results"]
                ),
            }
        )
    return suites


collect_ignore = ["data"]  # fixtures for tests (a promptfooconfig.yaml), not tests themselves
