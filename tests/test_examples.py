"""The README's main job: the example suites pass their gates on the real bundled model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_report

pytestmark = pytest.mark.slow_model

EXAMPLES = Path(__file__).parent.parent / "example_suites"


def test_example_suites_pass_their_gates_on_the_bundled_model(tmp_path: Path):
    work = tmp_path / "example_suites"
    shutil.copytree(EXAMPLES, work)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--promptopt",
            "-p",
            "no:cacheprovider",
            "-q",
            "--promptopt-report",
            str(tmp_path / "report.json"),
            "example_suites",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = load_report(tmp_path / "report.json")
    suites = {s["name"]: s for s in report["suites"]}
    assert set(suites) == {
        "qa-facts",
        "topic-classification",
        "json-extraction",
        "summarization",
        "python-style",
        "fuzz-json",
    }
    for suite in suites.values():
        assert suite["gates"] and suite["gates_passed"], suite["name"]
        assert suite["errors"] == 0
        assert all(r["output"] for r in suite["results"])
        assert suite["model"] == "smollm2-135m-instruct"
    assert sum(s["cases"] for s in suites.values()) >= 30
    # the meaning-aware metrics ran on every summary (the offline embeddings and ROUGE)
    summaries = suites["summarization"]["results"]
    assert all({"faithfulness", "grounded"} <= set(r["named_scores"]) for r in summaries)
    assert len({round(r["named_scores"]["faithfulness"], 3) for r in summaries}) > 1
