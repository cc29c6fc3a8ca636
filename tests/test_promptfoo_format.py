"""promptfoo's config format as promptfoo reads it, case by case against promptfoo's own results.

Each folder of `tests/data/promptfoo-format/` is a small config pinning one area (YAML scalars,
CSV columns, prompt files, globs, `$ref` and scenarios, Nunjucks, malformed checks, JSON checks,
storeOutputAs and `_conversation`, ignored keys); its `expected.json` is what promptfoo 0.121.20
did with it (`regenerate.sh`). Here the plugin runs the same folder with pytest, and each case's
verdict (pass, fail or error), rendered prompt (echo's output) and check results must be
promptfoo's. The differences that remain are listed, with the reason, in `KNOWN`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PYTEST, load_report

DATA = Path(__file__).parent / "data" / "promptfoo-format"
FOLDERS = sorted(p.name for p in DATA.iterdir() if (p / "expected.json").exists())
# Cases whose outcome differs from promptfoo's on purpose: (folder, testIdx, promptIdx) -> why.
KNOWN: dict[tuple[str, int, int], str] = {}


def _verdict(row: dict) -> str:
    if "failureReason" in row:
        return "error" if row["failureReason"] == 2 else ("pass" if row["success"] else "fail")
    return "error" if row["error"] else ("pass" if row["passed"] else "fail")


def run_folder(folder: str, tmp: Path, *args: str) -> tuple[dict, subprocess.CompletedProcess]:
    work = tmp / folder
    shutil.copytree(DATA / folder, work)
    (work / "expected.json").unlink()
    proc = subprocess.run(
        [*PYTEST, "--promptopt", "-p", "no:cacheprovider", "-p", "no:randomly"]
        + ["--promptopt-no-mlflow", "--promptopt-cache", "off", "--promptopt-report", "report.json", "-q"]
        + list(args)
        + ["promptfooconfig.yaml"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert (work / "report.json").exists(), proc.stdout[-3000:] + proc.stderr[-2000:]
    return load_report(work / "report.json"), proc


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, subprocess.CompletedProcess]]:
    tmp = tmp_path_factory.mktemp("format")
    return {folder: run_folder(folder, tmp) for folder in FOLDERS}


def pairs(report: dict, expected: dict) -> list[tuple[dict, dict]]:
    (suite,) = report["suites"]
    ours = sorted(suite["results"], key=lambda r: r["position"])
    theirs = expected["results"]
    assert len(ours) == len(theirs), [r["name"] for r in ours]
    return list(zip(theirs, ours))


def check_same(folder: str, report: dict) -> None:
    expected = json.loads((DATA / folder / "expected.json").read_text())
    for theirs, ours in pairs(report, expected):
        key = (folder, theirs["testIdx"], theirs["promptIdx"])
        if key in KNOWN:
            continue
        where = f"{folder} t{theirs['testIdx']} p{theirs['promptIdx']} ({ours['name']})"
        assert (_verdict(ours), ours["prompt_index"]) == (_verdict(theirs), theirs["promptIdx"]), (
            where,
            ours["error"] or ours["reason"],
            theirs["error"],
        )
        if _verdict(theirs) == "error":
            if (theirs["error"] or "").startswith("Error: Transform"):
                # the model answered and a transform failed: promptfoo's reason, and the answer kept
                assert "transform error: " in ours["error"] and theirs["error"][7:] in ours["error"], where
            elif (ours["error"] or "").startswith("assertion error: "):
                # a check that throws once the model answered (a schema Ajv's strict mode refuses):
                # promptfoo's reason; the plugin keeps the answer, promptfoo's report drops it
                assert theirs["error"][7:] in ours["error"], where
            else:
                assert ours["output"] is None, where  # no model call for a case that cannot run
            continue
        if isinstance(theirs["output"], str):
            assert ours["output"] == theirs["output"], where
        else:  # a transform's object: promptfoo keeps it, the report holds its JSON
            assert json.loads(ours["output"]) == theirs["output"], where
        assert ours["score"] == pytest.approx(theirs["score"]), where
        assert [(a["type"], a["passed"], a["score"]) for a in ours["assertions"]] == [
            (c["type"], c["pass"], pytest.approx(c["score"])) for c in theirs["components"]
        ], where


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_case_as_promptfoo_runs_it(plain_runs, folder):
    report, _ = plain_runs[folder]
    check_same(folder, report)


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist", "no-xdist"])
@pytest.mark.parametrize(
    "folder", ["sequences", "malformed", "provider_transform_code", "tests_generators", "tests_file_folders"]
)
def test_sequences_and_case_errors_in_every_mode(tmp_path, folder, mode):
    """storeOutputAs and _conversation need each case after the ones before it, in one process
    (the xdist scheduler sends the suite's `sequence` node to one worker whole); a malformed
    check's case is an error whichever process runs it; a provider's transform runs (and fails)
    in whichever process answers its case; tests generators give each worker the same tests."""
    report, _ = run_folder(folder, tmp_path, *mode)
    check_same(folder, report)
    nodeids = [r["nodeid"] for r in report["suites"][0]["results"]]
    assert all(("::sequence::" in n) == (folder == "sequences") for n in nodeids), nodeids


def test_the_report_names_each_cases_provider_transform(plain_runs):
    for folder, transform in (("provider_transform_code", "file://transform.js"), ("json_checks", None)):
        report, _ = plain_runs[folder]
        assert {r["provider_transform"] for r in report["suites"][0]["results"]} == {transform}, folder


def test_derived_metrics_are_computed_from_sums_as_promptfoo_does(plain_runs):
    report, _ = plain_runs["refs_scenarios"]
    expected = json.loads((DATA / "refs_scenarios" / "expected.json").read_text())
    theirs = expected["promptMetrics"][0]["namedScores"]
    (suite,) = report["suites"]
    assert {k: suite["metrics"][k] for k in ("combo", "avg")} == pytest.approx({k: theirs[k] for k in ("combo", "avg")})
    assert suite["derived_metrics"] == [
        {"name": "combo", "value": "pm + ext"},
        {"name": "avg", "value": "pm / __count"},
    ]


def test_derived_metrics_weigh_each_score_as_promptfoo_sums_it(plain_runs):
    """promptfoo sums a case's named score times its weight total (a `__metric` on two CSV
    checks, a weighted check, an assert-set of weight 2): the derived metrics see those sums."""
    report, _ = plain_runs["derived_weights"]
    expected = json.loads((DATA / "derived_weights" / "expected.json").read_text())
    theirs = expected["promptMetrics"][0]["namedScores"]
    (suite,) = report["suites"]
    assert {k: suite["metrics"][k] for k in ("geo_double", "mix")} == pytest.approx(
        {k: theirs[k] for k in ("geo_double", "mix")}
    )


def test_keys_promptfoo_ignores_are_named_in_one_warning_line_each(plain_runs):
    """One warning each in pytest's summary, at the file and line of the key (not at line 0)."""
    _, proc = plain_runs["ignored_keys"]
    out = proc.stdout
    for line in (
        "promptfooconfig.yaml:4: SuiteWarning: sharing: promptfoo's web sharing; ignored",
        "promptfooconfig.yaml:5: SuiteWarning: outputPath: promptfoo's output files; ignored",
        "promptfooconfig.yaml:6: SuiteWarning: assert: promptfoo ignores a top-level assert",
        "promptfooconfig.yaml:11: SuiteWarning: tests[0].storeOutputAs: promptfoo reads storeOutputAs under options only",
        "promptfooconfig.yaml:13: SuiteWarning: tests[1].dataset: not a key of a test",
        "promptfooconfig.yaml:17: SuiteWarning: threshold: not a promptfoo key at the top level",
        "promptfooconfig.yaml:19: SuiteWarning: output: not a promptfoo key (promptfoo ignores it",
        "promptfooconfig.yaml:22: SuiteWarning: metrics: not a promptfoo key (promptfoo ignores it",
    ):
        assert out.count(line) == 1, (line, out[-3000:])
    assert "promptfooconfig.yaml:0" not in out
    # the summary groups them under the lines they point at, with the line itself quoted
    assert "\npromptfooconfig.yaml:4\n" in out and "    sharing: " in out


def test_a_prompts_file_key_is_ignored_and_its_id_sent_as_promptfoo_does(plain_runs):
    """promptfoo drops a prompt's `file:` key and sends the id as the text (recorded in
    prompt_file_key: the echo output is "codesmith", the file is never read); a warning says so."""
    _, proc = plain_runs["prompt_file_key"]
    line = "promptfooconfig.yaml:9: SuiteWarning: prompts[1].file: not a key of a prompt in promptfoo"
    assert proc.stdout.count(line) == 1, proc.stdout[-3000:]


def test_anchor_holders_and_an_empty_provider_config_are_named_in_warnings(plain_runs):
    """promptfoo runs both silently (recorded in anchor_holders): the `_` key is dropped and the
    null config read as absent, each named at its line."""
    _, proc = plain_runs["anchor_holders"]
    out = proc.stdout
    for line in (
        "promptfooconfig.yaml:3: SuiteWarning: _checks: not a promptfoo key (promptfoo ignores it); ignored",
        "promptfooconfig.yaml:6: SuiteWarning: _base: not a promptfoo key (promptfoo ignores it); ignored",
        "promptfooconfig.yaml:13: SuiteWarning: providers[0].config: left empty (null): promptfoo runs the provider",
    ):
        assert out.count(line) == 1, (line, out[-3000:])


def test_a_provider_config_written_as_a_list_is_named_in_a_warning(plain_runs):
    """promptfoo spreads a list `config:` into keys no provider reads and runs the provider without
    a config (recorded in provider_config_list); the plugin does the same and says so at its line."""
    _, proc = plain_runs["provider_config_list"]
    line = "promptfooconfig.yaml:8: SuiteWarning: targets[0].config: a list, not a mapping: promptfoo spreads it"
    assert proc.stdout.count(line) == 1, proc.stdout[-3000:]
