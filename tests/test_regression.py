"""Regression you can trust (issue 7): gate rules on intervals, baseline files keyed by stable case
ids, and the paired regression gate, on constructed data where the answer is known."""

from __future__ import annotations

import json
import re

import pytest
from conftest import MODES, load_report

from pytest_promptopt.baseline import BaselineRun, BaselineSuite, CaseOutcome, Regression, compare_run
from pytest_promptopt.baseline_files import read_baseline_file, write_baseline_file
from pytest_promptopt.gates import Gate, decide, parse_gates

# --------------------------------------------------------------------------- gate rules


@pytest.mark.parametrize(
    ("rule", "interval", "passed"),
    [
        ("point", (0.6, 0.95), True),  # 0.82 >= 0.8
        ("strict", (0.6, 0.95), False),  # lower bound 0.6 < 0.8
        ("strict", (0.81, 0.9), True),
        ("tolerant", (0.6, 0.95), True),  # upper bound 0.95 >= 0.8
    ],
)
def test_each_rule_reads_its_side_of_the_interval(rule: str, interval: tuple[float, float], passed: bool) -> None:
    result = decide(Gate("pass_rate", 0.8, rule), 0.82, {}, {"pass_rate": interval})
    assert result.passed is passed and result.rule == rule and (result.low, result.high) == interval
    assert rule in result.reason or rule == "point"


def test_tolerant_fails_only_when_surely_too_low_and_the_run_default_applies() -> None:
    assert decide(Gate("pass_rate", 0.8), 0.5, {}, {"pass_rate": (0.3, 0.7)}, default_rule="tolerant").passed is False
    assert decide(Gate("pass_rate", 0.8), 0.7, {}, {"pass_rate": (0.5, 0.85)}, default_rule="tolerant").passed is True
    # a rule without an interval decides on the estimate, and says so
    result = decide(Gate("acc", 0.5, "strict"), {}.get("x"), {"acc": 0.6})
    assert result.passed and "without an interval" in result.reason


def test_gate_rules_parse_from_a_suite_and_bad_rules_name_the_path() -> None:
    assert parse_gates({"pass_rate": {"min": 0.9, "rule": "strict"}, "acc": 0.5}) == (
        Gate("pass_rate", 0.9, "strict"),
        Gate("acc", 0.5),
    )
    with pytest.raises(ValueError, match=r"gates.pass_rate.rule: 'lenient'"):
        parse_gates({"pass_rate": {"min": 0.9, "rule": "lenient"}})


def test_a_named_metrics_gate_takes_any_number_and_a_share_of_cases_stays_in_0_1() -> None:
    """A named metric's mean is what its checks score (a code check may give 482, as promptfoo
    sums it), so its threshold is any finite number; pass_rate and pass^k are shares of cases."""
    assert parse_gates({"length": 300, "drift": {"min": -2.5, "rule": "point"}}) == (
        Gate("length", 300.0),
        Gate("drift", -2.5, "point"),
    )
    assert decide(Gate("length", 300.0), 0.5, {"length": 482.0}).passed
    for name in ("pass_rate", "pass^k"):
        with pytest.raises(
            ValueError, match=rf"gates.{re.escape(name)}: the threshold must be between 0 and 1, got 1.5"
        ):
            parse_gates({name: 1.5})
    with pytest.raises(ValueError, match=r"gates.length: the threshold must be a number, got inf"):
        parse_gates({"length": float("inf")})


# The echo model answers with the rendered prompt, so a prompt change decides which cases pass;
# a case's id comes from its vars and assertions, not from the prompt, so it stays the same.
SUITE = """
providers: [echo]
prompts: [%s]
tests:
%s
gates:
  pass_rate: %s
"""
CAPITALS = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Japan", "Tokyo"), ("Peru", "Lima")]
PROMPT = "'The capital of {{country}} is {{capital}}.'"


def broken_for(*countries: str) -> str:
    """A prompt that answers wrongly for `countries`: a regression only a prompt change makes."""
    listed = ", ".join(f'"{c}"' for c in countries)
    return f"'{{% if country in [{listed}] %}}I do not know.{{% else %}}The capital of {{{{country}}}} is {{{{capital}}}}.{{% endif %}}'"


def suite(rows: list[tuple[str, str]], gate: str = "0.5", prompt: str = PROMPT) -> str:
    tests = "\n".join(
        f"  - vars: {{country: {c}, capital: {cap}}}\n    assert: [{{type: contains, value: {cap}}}]" for c, cap in rows
    )
    return SUITE % (prompt, tests, gate)


def test_a_strict_gate_fails_a_small_perfect_suite_and_the_report_shows_intervals(pytester, run_pytest) -> None:
    pytester.makefile(".promptopt.yaml", capitals=suite(CAPITALS[:3], "{min: 0.5, rule: strict}"))
    result = run_pytest("--promptopt", "--promptopt-report", "r.json")
    assert result.ret == 1  # 3/3 passed, but the Wilson lower bound is 0.44
    result.stdout.fnmatch_lines(
        ["*100.0%*44-100%*pass_rate>=0.5(strict):FAIL*", "GATE FAILED*95% lower bound 0.439 < 0.5 (strict)*"]
    )
    report = load_report(pytester.path / "r.json")
    [s] = report["suites"]
    assert s["intervals"]["pass_rate"] == pytest.approx([0.4385, 1.0], abs=1e-3)
    assert s["gates"][0]["rule"] == "strict" and s["gates"][0]["interval"] == pytest.approx([0.4385, 1.0], abs=1e-3)
    assert run_pytest("--promptopt", "--promptopt-gate-rule", "tolerant").ret == 1  # the suite's own rule wins


# --------------------------------------------------------------------------- baseline files


def test_baseline_file_round_trip_is_sorted_and_stable(tmp_path) -> None:
    outcomes = {
        "s": (
            "suite s",
            [CaseOutcome("b", "B", "failed", "x", {"m": 0.0}), CaseOutcome("a", "A", "passed", "y", {"m": 1.0})],
        )
    }
    path = tmp_path / "baseline.json"
    write_baseline_file(path, outcomes)
    first = path.read_text()
    assert list(json.loads(first)["suites"]["s"]["cases"]) == ["a", "b"]
    write_baseline_file(path, {"s": ("suite s", list(reversed(outcomes["s"][1])))})
    assert path.read_text() == first  # reordering the cases rewrites the same bytes
    loaded = read_baseline_file(path)
    assert [(c.case_id, c.status, c.named_scores) for c in loaded.suites["s"].cases] == [
        ("a", "passed", {"m": 1.0}),
        ("b", "failed", {"m": 0.0}),
    ]


def test_a_bad_baseline_file_is_a_warning_that_names_it(pytester, run_pytest) -> None:
    pytester.makefile(".promptopt.yaml", capitals=suite(CAPITALS))
    (pytester.path / "bad.json").write_text('{"version": 1, "suites": {"x": {"cases": {"c1": {"status": "maybe"}}}}}')
    result = run_pytest("--promptopt", "--promptopt-baseline", "bad.json")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["*baseline not loaded: *bad.json: suites.x.cases.c1.status: 'maybe' is not one of passed, failed, error*"]
    )


def test_update_then_compare_with_reordered_added_and_removed_cases(pytester, run_pytest) -> None:
    pytester.makefile(".promptopt.yaml", capitals=suite(CAPITALS))
    written = run_pytest("--promptopt", "--promptopt-update-baseline")
    assert written.ret == 0 and (pytester.path / ".promptopt" / "baseline.json").is_file()
    # Reordered, one removed (Peru), one added (Chile), and a prompt that now fails Italy.
    rows = [CAPITALS[3], CAPITALS[0], CAPITALS[2], CAPITALS[1], ("Chile", "Santiago")]
    pytester.makefile(".promptopt.yaml", capitals=suite(rows, prompt=broken_for("Italy")))
    result = run_pytest("--promptopt", "--promptopt-report", "r.json")  # the default file is read when it exists
    assert result.ret == 0  # one flip out of four paired cases is not significant
    [s] = load_report(pytester.path / "r.json")["suites"]
    ids = {r["name"].split(",")[0]: r["case_id"] for r in s["results"]}
    b = s["baseline"]
    assert b["newly_failing"] == [ids["country=Italy"]] and b["newly_passing"] == []
    assert b["added"] == [ids["country=Chile"]] and len(b["removed"]) == 1 and b["compared"] == 4
    assert b["p_value"] == pytest.approx(0.5) and b["regressed"] is False
    result.stdout.fnmatch_lines(
        [
            "baseline *baseline.json: baseline file (regression gate on)",
            "*4 paired cases, McNemar p = 0.5: no significant regression",
            f"*added since the baseline: {ids['country=Chile']}",
            "*newly failing*country=Italy*",
            "*baseline: 'The capital of Italy is Rome.'",
            "*now: *'I do not know.'",
        ]
    )


@pytest.mark.parametrize("mode", MODES)
def test_a_session_narrowed_by_k_or_node_ids_updates_only_what_it_ran(pytester, run_pytest, mode: str) -> None:
    """-k, a node id or other files: the cases left out are neither "removed" from the baseline
    nor dropped from the file an update writes; a suite whose file is gone is dropped."""
    pytester.makefile(".promptopt.yaml", capitals=suite(CAPITALS), other=suite(CAPITALS[:2]))
    assert run_pytest("--promptopt", "--promptopt-update-baseline", *MODES[mode]).ret == 0
    path = pytester.path / ".promptopt" / "baseline.json"
    full = json.loads(path.read_text())
    assert {k: (v["file"], len(v["cases"])) for k, v in full["suites"].items()} == {
        "capitals.promptopt.yaml": ("capitals.promptopt.yaml", 5),
        "other.promptopt.yaml": ("other.promptopt.yaml", 2),
    }
    # Italy breaks; only France and Italy are selected (-k), and only the capitals file is run.
    pytester.makefile(".promptopt.yaml", capitals=suite(CAPITALS, prompt=broken_for("Italy")))
    narrowed = ("capitals.promptopt.yaml", "-k", "France or Italy", "--promptopt-report", "r.json", *MODES[mode])
    result = run_pytest("--promptopt", *narrowed)
    assert result.ret == 0
    [s] = load_report(pytester.path / "r.json")["suites"]
    b = s["baseline"]
    assert (b["compared"], len(b["newly_failing"]), b["removed"], b["not_selected"]) == (2, 1, [], 3)
    result.stdout.fnmatch_lines(
        [
            "capitals.promptopt.yaml: *1 newly failing, 0 newly passing, 0 added, 0 removed, 3 not selected",
            "partial session: 3 prompt cases of 1 suite not selected (-k, -m, --deselect, --lf, --sw or node ids)*",
        ]
    )
    updated = run_pytest("--promptopt", "--promptopt-update-baseline", *narrowed)
    updated.stdout.fnmatch_lines(
        [
            "*baseline written: *baseline.json (2 suites; 1 kept from the old file: this run did not run them; "
            "3 cases kept from the old file: not selected in this run); review and commit it*"
        ]
    )
    after = json.loads(path.read_text())
    assert after["suites"]["other.promptopt.yaml"] == full["suites"]["other.promptopt.yaml"]
    cases, old_cases = (
        after["suites"]["capitals.promptopt.yaml"]["cases"],
        full["suites"]["capitals.promptopt.yaml"]["cases"],
    )
    assert cases.keys() == old_cases.keys()
    changed = {v["name"].split(",")[0] for k, v in cases.items() if v != old_cases[k]}
    assert changed == {"country=Italy"} and sum(v["status"] == "failed" for v in cases.values()) == 1
    # A node id narrows the same way.
    [italy] = [k for k, v in cases.items() if v["name"].startswith("country=Italy")]
    one = run_pytest(
        "--promptopt", f"capitals.promptopt.yaml::{cases[italy]['name']}", "--promptopt-report", "r.json", *MODES[mode]
    )
    assert load_report(pytester.path / "r.json")["suites"][0]["baseline"]["not_selected"] == 4, one.stdout.str()
    # A case removed from the suite while -k leaves others out: the removed one leaves the file,
    # the ones not selected stay.
    pytester.makefile(".promptopt.yaml", capitals=suite(CAPITALS[:4], prompt=broken_for("Italy")))  # Peru removed
    run_pytest("--promptopt", "--promptopt-update-baseline", "-k", "France", *MODES[mode])
    names = {
        v["name"].split(",")[0]
        for v in json.loads(path.read_text())["suites"]["capitals.promptopt.yaml"]["cases"].values()
    }
    assert names == {"country=France", "country=Spain", "country=Italy", "country=Japan"}
    # The whole project again, with the other file gone: its suite leaves the baseline.
    (pytester.path / "other.promptopt.yaml").unlink()
    final = run_pytest("--promptopt", "--promptopt-update-baseline", *MODES[mode])
    final.stdout.no_fnmatch_line("*partial session*")
    assert list(json.loads(path.read_text())["suites"]) == ["capitals.promptopt.yaml"]


PY_SUITE = """
import pytest
from pytest_promptopt import contains

pytestmark = pytest.mark.promptopt(suite="%s", model="echo")

def test_a(prompt_model, prompt_check):
    prompt_check(prompt_model("hi a"), contains("a"))

def test_b(prompt_model, prompt_check):
    prompt_check(prompt_model("hi b"), contains("b"))
"""


@pytest.mark.parametrize("mode", MODES)
def test_python_suites_node_ids_and_lf_in_a_baseline_update(pytester, run_pytest, mode: str) -> None:
    """A node id naming one Python test leaves the module's other tests uncollected: the session
    is partial and their entries stay; a Python suite renamed in a full run leaves the file; --lf
    that skips whole files makes a partial session."""
    pytester.makepyfile(test_s=PY_SUITE % "old-name")
    pytester.makefile(".promptopt.yaml", capitals=suite(CAPITALS[:2]))
    update = ("--promptopt", "--promptopt-update-baseline", "--promptopt-baseline", "b.json", *MODES[mode])
    assert run_pytest(*update).ret == 0
    path = pytester.path / "b.json"
    assert len(json.loads(path.read_text())["suites"]["old-name"]["cases"]) == 2
    one = run_pytest(*update, "test_s.py::test_a")
    one.stdout.fnmatch_lines(["partial session: the other tests of 1 Python suite(s) named by node ids not selected*"])
    # compared with the file: test_b is not known to be left out or removed, so it is not "removed"
    one.stdout.fnmatch_lines(["old-name: *0 added, 0 removed, 1 not selected"])
    assert len(json.loads(path.read_text())["suites"]["old-name"]["cases"]) == 2  # test_b kept
    pytester.makepyfile(test_s=PY_SUITE % "new-name")
    renamed = run_pytest(*update)
    renamed.stdout.no_fnmatch_line("*partial session*")
    assert sorted(json.loads(path.read_text())["suites"]) == ["capitals.promptopt.yaml", "new-name"]
    # --lf: the suite file has no failure, so --lf does not collect it
    pytester.makepyfile(test_s=PY_SUITE.replace('contains("b")', 'contains("zzz")') % "new-name")
    run_pytest("--promptopt", *MODES[mode])  # test_b fails: the last failure --lf reruns
    lf = run_pytest("--promptopt", "--lf", *MODES[mode])
    lf.stdout.fnmatch_lines(["partial session: *1 file(s) --lf did not collect*"])


def test_the_regression_gate_fails_a_significant_drop_and_passes_noise(pytester, run_pytest) -> None:
    many = [(f"Country{i}", f"City{i}") for i in range(20)]
    pytester.makefile(".promptopt.yaml", capitals=suite(many, "0.0"))
    assert run_pytest("--promptopt", "--promptopt-update-baseline", "--promptopt-baseline", "base.json").ret == 0
    pytester.makefile(
        ".promptopt.yaml", capitals=suite(many, "0.0", prompt=broken_for(*[f"Country{i}" for i in range(8)]))
    )
    result = run_pytest("--promptopt", "--promptopt-baseline", "base.json", "--promptopt-report", "r.json")
    assert result.ret == 1  # the threshold gate passes (0.0); the regression gate does not (8 of 20 flipped)
    result.stdout.fnmatch_lines(
        [
            "GATE FAILED  capitals.promptopt.yaml*regression against the baseline: pass rate fell by 40.0%*McNemar p = 0.0039*"
        ]
    )
    report = load_report(pytester.path / "r.json")
    assert report["gates_passed"] is False and report["suites"][0]["baseline"]["regressed"] is True
    # A smaller alpha than the evidence, or a larger minimum effect, lets it through.
    assert (
        run_pytest("--promptopt", "--promptopt-baseline", "base.json", "--promptopt-regression-alpha", "0.001").ret == 0
    )
    assert (
        run_pytest("--promptopt", "--promptopt-baseline", "base.json", "--promptopt-regression-min-effect", "0.5").ret
        == 0
    )
    # Updating the baseline accepts the run: compared and shown, not gated.
    updated = run_pytest("--promptopt", "--promptopt-baseline", "base.json", "--promptopt-update-baseline")
    assert updated.ret == 0
    updated.stdout.fnmatch_lines(["*compared, not gated: --promptopt-update-baseline replaces it*"])


def test_regression_on_constructed_metric_scores() -> None:
    before = [CaseOutcome(f"c{i}", "", "passed", None, {"quality": 0.9}) for i in range(30)]
    after = [CaseOutcome(f"c{i}", "", "passed", None, {"quality": 0.6}) for i in range(30)]
    baseline = BaselineRun("b", None, {"s": BaselineSuite("s", "s", before)})
    [c] = compare_run({"s": ("s", after)}, baseline, Regression()).suites.values()
    assert (
        c.p_value == 1.0
        and c.metric_p_values["quality"] < 0.01
        and c.regressed
        and "quality fell by 0.300" in c.regression_reason
    )
    [same] = compare_run({"s": ("s", before)}, baseline, Regression()).suites.values()
    assert not same.regressed


def test_a_metric_beyond_0_1_has_the_smallest_effect_as_a_share_of_its_magnitude() -> None:
    """A code check's score is summed as given (a word count of ~480): a significant drop of 3
    words is no regression at min_effect 0.05 (24 words here), a drop of 48 is."""
    before = [CaseOutcome(f"c{i}", "", "passed", None, {"words": 480.0 + i % 3}) for i in range(30)]
    slightly = [CaseOutcome(f"c{i}", "", "passed", None, {"words": 477.0 + i % 3}) for i in range(30)]
    much = [CaseOutcome(f"c{i}", "", "passed", None, {"words": 432.0 + i % 3}) for i in range(30)]
    baseline = BaselineRun("b", None, {"s": BaselineSuite("s", "s", before)})
    [small] = compare_run({"s": ("s", slightly)}, baseline, Regression()).suites.values()
    assert small.metric_p_values["words"] < 0.01 and not small.regressed
    [large] = compare_run({"s": ("s", much)}, baseline, Regression()).suites.values()
    assert large.regressed and "words fell by 48.000" in large.regression_reason
    assert "more than 0.05 x its largest value 482" in large.regression_reason
    # min_effect 0 gates on significance alone, whatever the scale
    [strict] = compare_run({"s": ("s", slightly)}, baseline, Regression(min_effect=0.0)).suites.values()
    assert strict.regressed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--promptopt-update-baseline", "--promptopt-baseline", "mlflow:abc"],
            "*--promptopt-update-baseline writes a baseline file*",
        ),
        (
            ["--promptopt-regression-alpha", "2"],
            "*--promptopt-regression-alpha (ini: promptopt_regression_alpha): must be a number from 0 to 1*",
        ),
        (["--promptopt-gate-rule", "lenient"], "*invalid choice: 'lenient'*"),
    ],
)
def test_bad_regression_options_are_usage_errors(pytester, run_pytest, args, message) -> None:
    pytester.makefile(".promptopt.yaml", capitals=suite(CAPITALS))
    result = pytester.runpytest_subprocess("--promptopt", *args)
    assert result.ret == 4
    result.stderr.fnmatch_lines([message])
