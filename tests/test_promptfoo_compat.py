"""A promptfoo config runs unchanged and gives the verdicts the real promptfoo gave.

`tests/data/promptfoo/expected.json` was produced by promptfoo 0.121.20 on the same config
(see that folder's README for the command); here the plugin runs the config as a pytest suite.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import PYTEST, load_report

DATA = Path(__file__).parent / "data" / "promptfoo"
EXPECTED = json.loads((DATA / "expected.json").read_text())
# promptfoo numbers each expansion of a list-valued var as its own test (tests[27] has three
# values: testIdx 27-29); this plugin reports the position in `tests`, as the report documents.
LIST_VAR_TEST, LIST_VAR_VALUES = 27, 3


def position_in_tests(test_idx: int) -> int:
    if test_idx < LIST_VAR_TEST + LIST_VAR_VALUES:
        return min(test_idx, LIST_VAR_TEST) if test_idx >= LIST_VAR_TEST else test_idx
    return test_idx - (LIST_VAR_VALUES - 1)


@pytest.fixture(scope="module")
def our_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    import subprocess

    work = tmp_path_factory.mktemp("promptfoo")
    for item in DATA.iterdir():
        if item.is_file():
            shutil.copy(item, work / item.name)
    proc = subprocess.run(
        [
            *PYTEST,
            "--promptopt",
            "--promptopt-no-mlflow",
            "-p",
            "no:cacheprovider",
            "--promptopt-report",
            "report.json",
            "-q",
            "promptfooconfig.yaml",
        ],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stdout[-3000:]  # the config has failing tests and no gates
    report = load_report(work / "report.json")
    (suite,) = report["suites"]
    assert suite["cases"] == len(EXPECTED["results"]) == 70
    return suite["results"]


@pytest.mark.parametrize("expected", EXPECTED["results"], ids=lambda e: f"t{e['testIdx']}-p{e['promptIdx']}")
def test_same_verdict_score_and_components_as_promptfoo(our_results, expected):
    candidates = [
        r
        for r in our_results
        if r["prompt_index"] == expected["promptIdx"] and r["test_index"] == position_in_tests(expected["testIdx"])
    ]
    if len(candidates) > 1:  # the list-var expansions: one per value
        candidates = [r for r in candidates if r["vars"]["payload"] == expected["vars"]["payload"]]
    (ours,) = candidates
    assert ours["error"] is None
    assert ours["output"] == expected["output"]
    assert ours["passed"] == expected["success"], ours["reason"]
    assert ours["score"] == pytest.approx(expected["score"])
    assert ours["named_scores"] == pytest.approx(expected["namedScores"])
    ours_components = [(a["type"], a["passed"], a["score"]) for a in ours["assertions"]]
    theirs = [(c["type"], c["pass"], pytest.approx(c["score"])) for c in expected["components"]]
    assert ours_components == theirs
