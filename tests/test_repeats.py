"""Repeats (issue 7): each case sampled N times, its pass rate over the repeats, flaky cases,
`pass^k`, intervals over repeated samples, and every gate rule with repeats.

Unit tests build the samples by hand, where the answer is known; pytester tests run the plugin
in every mode on the `fake` provider, whose list answers differ per repeat."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import load_report

from pytest_promptopt.baseline import CaseOutcome, Regression, compare_suite, outcome_from_result
from pytest_promptopt.baseline_files import read_baseline_file, write_baseline_file
from pytest_promptopt.cache import CacheMode, ResponseCache, cache_key
from pytest_promptopt.case_stats import CaseStats
from pytest_promptopt.execute import execute_batch, execute_case
from pytest_promptopt.gates import PASS_K, Gate, decide
from pytest_promptopt.models.base import ModelError, Request, Response
from pytest_promptopt.models.fakes import FakeModel
from pytest_promptopt.models.specs import ModelSpec
from pytest_promptopt.records import CaseResult
from pytest_promptopt.repeats import fold_repeated_tests, merge_samples, repeat_id, split_repeat
from pytest_promptopt.stats import cluster_bootstrap, mean_interval, wilson
from pytest_promptopt.suite.cases import python_case_id
from pytest_promptopt.suite.loader import load_suite
from pytest_promptopt.suite.model import Repeats, SuiteError
from pytest_promptopt.suite_info import SuiteInfo
from pytest_promptopt.summary import summarize

# --------------------------------------------------------------------------- one case's repeats


def sample(passed: bool, output: str, score: float, **named: float) -> CaseResult:
    return CaseResult(
        "c",
        "case",
        output=output,
        passed=passed,
        score=score,
        reason="ok" if passed else f"no: {output}",
        scores={"contains": score},
        named_scores=dict(named),
        latency_ms=10.0 * (score + 1),
        prompt_tokens=2,
        completion_tokens=1,
        cost=0.5,
    )


def test_a_flaky_case_passes_some_repeats_and_shows_the_first_failing_one() -> None:
    result = CaseResult("c", "case")
    merge_samples(
        result,
        [
            sample(True, "Rome", 1.0, correct=1.0),
            sample(False, "Milan", 0.0, correct=0.0),
            sample(True, "Rome", 1.0, correct=1.0),
        ],
        3,
    )
    assert (result.repeats, result.repeat_passed, result.passed, result.flaky) == (3, 2, False, True)
    assert result.pass_rate == pytest.approx(2 / 3) and result.status == "failed"
    assert result.output == "Milan" and result.reason == "flaky: 2 of 3 repeats passed; repeat 2: no: Milan"
    assert result.score == pytest.approx(2 / 3) and result.named_scores == {"correct": pytest.approx(2 / 3)}
    assert result.scores == {"contains": pytest.approx(2 / 3)}
    assert result.latency_ms == pytest.approx(50 / 3) and (
        result.prompt_tokens,
        result.completion_tokens,
        result.cost,
    ) == (6, 3, 1.5)
    assert [(s["passed"], s["output"]) for s in result.samples] == [(True, "Rome"), (False, "Milan"), (True, "Rome")]
    # The record crosses xdist as JSON, derived values included for the report.
    data = json.loads(json.dumps(result.to_dict()))
    assert (data["repeat_passed"], data["pass_rate"], data["flaky"]) == (2, pytest.approx(2 / 3), True)
    back = CaseResult.from_dict(data)
    assert (back.samples_passed, back.flaky, back.samples) == (2, True, result.samples)


def test_a_case_that_always_passes_or_always_fails_is_not_flaky() -> None:
    always = CaseResult("c", "case")
    merge_samples(always, [sample(True, "Rome", 1.0)] * 3, 3)
    never = CaseResult("c", "case")
    merge_samples(never, [sample(False, "Milan", 0.0)] * 3, 3)
    assert (always.passed, always.flaky, always.reason, always.pass_rate) == (True, False, "all 3 repeats passed", 1.0)
    assert (never.passed, never.flaky, never.pass_rate) == (False, False, 0.0)
    assert never.reason == "0 of 3 repeats passed; repeat 1: no: Milan"
    # Without repeats a record is its own one sample, as before.
    single = sample(True, "Rome", 1.0)
    assert (single.repeats, single.samples_passed, single.pass_rate, single.flaky, single.samples) == (
        1,
        1,
        1.0,
        False,
        [],
    )


def test_an_errored_repeat_makes_the_case_an_error_naming_the_repeat() -> None:
    result = CaseResult("c", "case")
    merge_samples(result, [sample(True, "Rome", 1.0), CaseResult("c", "case", error="model error (x): timeout")], 3)
    assert result.status == "error" and result.error == "repeat 2 of 3: model error (x): timeout"
    assert result.pass_rate is None and not result.flaky and len(result.samples) == 1


# --------------------------------------------------------------------------- a suite's aggregates


def repeated(name: str, outcomes: list[bool], metric: list[float] | None = None) -> CaseResult:
    result = CaseResult(name, name, nodeid=name)
    merge_samples(
        result,
        [
            sample(ok, "yes" if ok else "no", float(ok), m=value)
            for ok, value in zip(outcomes, metric or [float(ok) for ok in outcomes])
        ],
        len(outcomes),
    )
    return result


def test_with_repeats_the_pass_rate_is_over_samples_and_pass_k_over_cases() -> None:
    info = SuiteInfo("s", "s", "s.yaml", (Gate("pass_rate", 0.6), Gate(PASS_K, 0.6), Gate("m", 0.5, "strict")))
    cases = [
        repeated("a", [True] * 3),
        repeated("b", [True, False, True]),
        repeated("c", [False] * 3),
        repeated("d", [True] * 3),
        CaseResult("e", "e", error="model error"),
    ]
    [suite] = summarize([(info, r) for r in cases]).suites
    assert (suite.cases, suite.passed, suite.failed, suite.errors) == (5, 2, 2, 1)  # cases, for pytest's counts
    assert suite.pass_rate == pytest.approx(8 / 12) and suite.pass_k == pytest.approx(2 / 4)
    assert (suite.repeats, [r.name for r in suite.flaky], suite.stats.flaky) == (3, ["b"], 1)
    assert suite.metric_means() == {"m": pytest.approx(8 / 12)}  # over every sample
    clusters = [[1.0] * 3, [1.0, 0.0, 1.0], [0.0] * 3, [1.0] * 3]
    intervals = suite.intervals()
    assert intervals["pass_rate"] == cluster_bootstrap(clusters) and intervals[PASS_K] == wilson(2, 4)
    assert intervals["m"] == cluster_bootstrap(clusters)
    # A cluster bootstrap is wider than Wilson's interval over 12 samples taken as independent.
    low, high = intervals["pass_rate"]
    wilson_low, wilson_high = wilson(8, 12)
    assert high - low > wilson_high - wilson_low
    gates = {g.name: g for g in suite.gates}
    assert gates["pass_rate"].passed and gates["pass_rate"].value == pytest.approx(8 / 12)
    assert not gates[PASS_K].passed and gates[PASS_K].value == pytest.approx(0.5)
    assert (
        not gates["m"].passed and (gates["m"].low, gates["m"].high) == intervals["m"]
    )  # strict reads the cluster interval


def test_without_repeats_intervals_stay_wilson_and_pass_k_is_the_pass_rate() -> None:
    info = SuiteInfo("s", "s", "s.yaml")
    cases = [sample(ok, "x", float(ok), m=float(ok)) for ok in (True, True, False)]
    [suite] = summarize(
        [(info, dataclasses.replace(r, case_id=str(n), nodeid=str(n))) for n, r in enumerate(cases)]
    ).suites
    assert suite.pass_rate == suite.pass_k == pytest.approx(2 / 3) and suite.repeats == 1 and suite.flaky == []
    assert suite.intervals() == {
        "pass_rate": wilson(2, 3),
        "m": mean_interval([1.0, 1.0, 0.0]),
    }  # no pass^k without repeats
    gated = summarize([(SuiteInfo("s", "s", "s.yaml", (Gate(PASS_K, 0.5, "strict"),)), r) for r in cases]).suites[0]
    assert gated.intervals()[PASS_K] == wilson(2, 3)  # a gate on it has its interval
    assert not gated.gates[0].passed and "95% lower bound" in gated.gates[0].reason


def test_one_repeated_case_has_no_interval_and_a_rule_says_so() -> None:
    [suite] = summarize(
        [(SuiteInfo("s", "s", "s.yaml", (Gate("pass_rate", 0.5, "strict"),)), repeated("a", [True, False, True]))]
    ).suites
    assert suite.intervals()["pass_rate"] is None  # nothing says how much cases differ
    assert suite.gates[0].passed and "without an interval" in suite.gates[0].reason


@pytest.mark.parametrize(
    ("rule", "value", "interval", "passed"),
    [
        ("point", 0.5, (0.2, 0.8), False),
        ("strict", 0.7, (0.55, 0.85), False),
        ("strict", 0.7, (0.61, 0.85), True),
        ("tolerant", 0.5, (0.2, 0.8), True),
        ("tolerant", 0.3, (0.1, 0.55), False),
    ],
)
def test_pass_k_gate_under_each_rule(rule: str, value: float, interval: tuple[float, float], passed: bool) -> None:
    result = decide(Gate(PASS_K, 0.6, rule), 0.9, {}, {PASS_K: interval, "pass_rate": (0.8, 1.0)}, pass_k=value)
    assert (result.passed, result.value, result.rule) == (passed, value, rule)
    assert result.reason.startswith("pass^k = ")
    missing = decide(Gate(PASS_K, 0.6), None, {}, pass_k=None)
    assert not missing.passed and "no case was scored" in missing.reason


def test_stats_merge_with_stats_written_before_repeats() -> None:
    old = CaseStats(passed=3, failed=1)  # as read from an old report: no sample counts
    new = CaseStats.of([repeated("a", [True, False]), repeated("b", [True, True])])
    assert (new.samples, new.samples_passed, new.pass_rate, new.pass_k) == (4, 3, 0.75, 0.5)
    merged = old.merge(new)
    assert (merged.samples, merged.samples_passed, merged.pass_rate) == (8, 6, 0.75)
    assert (merged.passed, merged.failed, merged.flaky, merged.max_repeats) == (4, 2, 1, 2)
    assert CaseStats.from_dict(json.loads(json.dumps(new.to_dict()))) == new


# --------------------------------------------------------------------------- cache, models, execution


def test_repeat_zero_keeps_the_key_of_a_run_without_repeats() -> None:
    model = FakeModel({"Capital of Italy?": "Rome"})
    request = Request.from_prompt("Capital of Italy?", {"temperature": 0.7})
    # The key this request had before repeats existed (computed with the previous cache.py).
    assert cache_key(model, request) == "bd3ef60964bd643eeb1ba5c3d06643797e84d7fcef77123d25a612cbb2f300ca"
    assert (
        cache_key(model, dataclasses.replace(request, repeat=0))
        == cache_key(model, request, 0)
        == cache_key(model, request)
    )
    keys = {cache_key(model, dataclasses.replace(request, repeat=r)) for r in range(3)}
    assert len(keys) == 3 and cache_key(model, request, 2) == cache_key(model, dataclasses.replace(request, repeat=2))


def test_a_fake_answers_each_repeat_from_its_list() -> None:
    model = FakeModel({"q": ["a", "b", "c"], "plain": "p"})
    assert [model.generate(Request("q", ({"role": "user", "content": "q"},), repeat=r)).text for r in range(5)] == [
        "a",
        "b",
        "c",
        "a",
        "b",
    ]
    assert model.generate(Request("plain", (), repeat=4)).text == "p"
    with pytest.raises(ModelError, match="list of answers for prompt 'q' is empty"):
        FakeModel({"q": []})


CASES = """
description: capitals
providers:
  - id: fake
    config:
      responses:
        "Capital of France?": Paris
        "Capital of Italy?": [Rome, Milan, Rome]
        "Capital of Spain?": Barcelona
prompts: ["Capital of {{country}}?"]
%s
tests:
  - description: france
    vars: {country: France, capital: Paris}
    assert: [{type: contains, value: "{{capital}}", metric: correct}]
  - description: italy
    vars: {country: Italy, capital: Rome}
    assert: [{type: contains, value: "{{capital}}", metric: correct}]
  - description: spain
    vars: {country: Spain, capital: Madrid}
    assert: [{type: contains, value: "{{capital}}", metric: correct}]
"""


def capitals(tmp_path: Path, head: str = "repeat: 3", repeats: Repeats = Repeats()) -> list[Any]:
    path = tmp_path / "capitals.promptopt.yaml"
    path.write_text(CASES % head)
    return list(load_suite(path, path.name, ModelSpec("echo"), repeats=repeats).cases)


class Counting(FakeModel):
    """A fake that records the repeat index of every call, and answers batches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def generate_batch(self, requests: list[Request]) -> list[Response]:
        self.batches.append(len(requests))
        return [self.generate(r) for r in requests]


SCRIPT = {
    "Capital of France?": "Paris",
    "Capital of Italy?": ["Rome", "Milan", "Rome"],
    "Capital of Spain?": "Barcelona",
}


def test_execute_case_samples_each_repeat_once_and_a_warm_rerun_replays_them(tmp_path: Path) -> None:
    cases = capitals(tmp_path)
    model = Counting(SCRIPT)
    cache = ResponseCache(tmp_path / "cache.sqlite", CacheMode.READWRITE)
    cold = [execute_case(case, model, cache) for case in cases]
    assert [c.repeats for c in cases] == [3, 3, 3]
    assert [r.repeat for r in model.calls] == [0, 1, 2] * 3
    assert [(r.calls, r.cache_hits, r.repeat_passed, r.flaky) for r in cold] == [
        (3, 0, 3, False),
        (3, 0, 2, True),
        (3, 0, 0, False),
    ]
    assert [s["output"] for s in cold[1].samples] == ["Rome", "Milan", "Rome"]
    warm = [execute_case(case, model, ResponseCache(tmp_path / "cache.sqlite", CacheMode.REPLAY)) for case in cases]
    assert len(model.calls) == 9  # no new call
    assert [(r.calls, r.cache_hits) for r in warm] == [(0, 3)] * 3
    assert [r.samples for r in warm] == [r.samples for r in cold]
    # Repeat 0 is the sample a run without repeats takes: its cache entry serves it.
    single = [
        execute_case(case, model, ResponseCache(tmp_path / "cache.sqlite", CacheMode.REPLAY))
        for case in capitals(tmp_path, "")
    ]
    assert [(r.calls, r.cache_hits, r.output, r.repeats) for r in single] == [
        (0, 1, "Paris", 1),
        (0, 1, "Rome", 1),
        (0, 1, "Barcelona", 1),
    ]


def test_execute_batch_asks_for_every_repeat_in_one_batch_and_grades_as_execute_case(tmp_path: Path) -> None:
    cases = capitals(tmp_path)
    model = Counting(SCRIPT)
    batched = execute_batch(
        [(case, case.name) for case in cases], model, ResponseCache(tmp_path / "b.sqlite", CacheMode.READWRITE)
    )
    assert model.batches == [9]
    one = [
        execute_case(case, FakeModel(SCRIPT), ResponseCache(tmp_path / "o.sqlite", CacheMode.READWRITE), case.name)
        for case in cases
    ]
    fields = ("passed", "repeat_passed", "samples", "output", "reason", "score", "named_scores", "calls", "cache_hits")
    assert [[getattr(r, f) for f in fields] for r in batched] == [[getattr(r, f) for f in fields] for r in one]


def test_a_model_fault_in_a_repeat_stops_the_case(tmp_path: Path) -> None:
    [case] = [c for c in capitals(tmp_path) if c.vars["country"] == "Italy"]

    def answer(request: Request) -> str:
        if request.repeat == 1:
            raise ModelError("overloaded")
        return "Rome"

    model = FakeModel(answer)
    result = execute_case(case, model, ResponseCache(tmp_path / "c.sqlite", CacheMode.READWRITE))
    assert (
        result.status == "error"
        and result.error.startswith("repeat 2 of 3: model error")
        and "overloaded" in result.error
    )
    assert [r.repeat for r in model.calls] == [0, 1] and result.calls == 2


def test_the_bundled_model_samples_each_repeat_with_its_own_seed() -> None:
    from pytest_promptopt.models.local import LocalModel
    from pytest_promptopt.models.local_runtimes import Generated

    seeds: list[Any] = []

    class NoWeights:  # a runtime without weights: only the seeds are looked at
        def render(self, messages: Any) -> str:
            return "q"

        def order_key(self, prompt: str) -> int:
            return len(prompt)

        def run(self, prompts: list[str], p: Any) -> tuple[list[Generated], float]:
            seeds.append(p["seed"])
            return [Generated("x", 1, 1) for _ in prompts], 0.0

    model = LocalModel({"temperature": 0.8, "seed": 7})
    model._loaded = lambda runtime: NoWeights()  # type: ignore[method-assign]
    model.generate_batch([Request("q", (), repeat=r) for r in range(3)])
    assert seeds == [7, 8, 9]
    seeds.clear()
    greedy = LocalModel()
    greedy._loaded = model._loaded  # type: ignore[method-assign]
    greedy.generate_batch([Request("q", (), repeat=r) for r in range(3)])
    assert seeds == [0]  # greedy decoding is one batch, its seed unused and unchanged


# --------------------------------------------------------------------------- where the count comes from


@pytest.mark.parametrize(
    ("head", "repeats", "expected"),
    [
        ("", Repeats(), 1),
        ("", Repeats(4), 4),  # the ini value
        ("repeat: 3", Repeats(4), 3),  # the suite beats the ini value
        ("repeat: 3", Repeats(2, from_cli=True), 2),  # the command line beats the suite
    ],
)
def test_the_suite_overrides_the_ini_value_and_the_command_line_overrides_both(
    tmp_path: Path, head: str, repeats: Repeats, expected: int
) -> None:
    assert {case.repeats for case in capitals(tmp_path, head, repeats)} == {expected}


def test_a_bad_repeat_in_a_suite_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"capitals.promptopt.yaml:11: repeat: 0 is less than the minimum of 1"):
        capitals(tmp_path, "repeat: 0")
    data = tmp_path / "rows.csv"
    data.write_text("country\nFrance\n")
    (tmp_path / "d.promptopt.yaml").write_text(
        "providers: [echo]\nprompts: ['{{country}}']\nrepeat: 2\ndataset: {path: rows.csv}\n"
    )
    with pytest.raises(SuiteError, match=r"d.promptopt.yaml:3: repeat: a dataset suite samples each row once"):
        load_suite(tmp_path / "d.promptopt.yaml", "d.promptopt.yaml", ModelSpec("echo"))


def test_the_option_and_its_ini_twin_refuse_bad_values(pytester: pytest.Pytester, run_pytest: Any) -> None:
    pytester.makefile(".promptopt.yaml", capitals=CASES % "")
    result = run_pytest("--promptopt", "--promptopt-repeat", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--promptopt-repeat (ini: promptopt_repeat): must be a positive whole number, got '0'*"]
    )
    pytester.makeini("[pytest]\npromptopt_repeat = many\n")
    result = run_pytest("--promptopt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--promptopt-repeat (ini: promptopt_repeat): *'many'*"])
    pytester.makeini("[pytest]\npromptopt_repeat = 2\n")
    result = run_pytest("--promptopt", "--promptopt-report", "r.json")
    assert [r["repeats"] for r in load_report(pytester.path / "r.json")["suites"][0]["results"]] == [2, 2, 2]
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", "--promptopt-repeat", "1")
    assert [r["repeats"] for r in load_report(pytester.path / "r.json")["suites"][0]["results"]] == [1, 1, 1]


# --------------------------------------------------------------------------- baselines with repeats


def test_a_baseline_compares_sample_pass_rates_and_mcnemar_reads_all_repeats_passed(tmp_path: Path) -> None:
    before = [outcome_from_result(repeated(f"c{n}", [True, True, True])) for n in range(12)]
    # Every case now fails one repeat of three: a drop of one third of the samples, and every
    # case flips from "all repeats passed" to not.
    after = [outcome_from_result(repeated(f"c{n}", [True, False, True])) for n in range(12)]
    compared = compare_suite("s", "s", before, after, gate=Regression())
    assert compared.baseline_pass_rate == 1.0 and compared.pass_rate == pytest.approx(2 / 3)
    assert len(compared.newly_failing) == 12 and compared.p_value == pytest.approx(0.5**12)
    assert compared.regressed and compared.regression_reason.startswith("pass^k fell by 100.0% on 12 paired cases")
    path = tmp_path / "baseline.json"
    write_baseline_file(path, {"s": ("s", after)})
    entry = json.loads(path.read_text())["suites"]["s"]["cases"]["c0"]
    assert (entry["status"], entry["repeats"], entry["repeat_passed"]) == ("failed", 3, 2)
    assert read_baseline_file(path).suites["s"].cases == sorted(after, key=lambda c: c.case_id)
    write_baseline_file(path, {"s": ("s", [CaseOutcome("c", "c", "passed")])})
    assert "repeat" not in path.read_text()  # a baseline without repeats keeps its bytes


def test_an_mlflow_baseline_reads_the_repeats_of_its_case_table() -> None:
    from pytest_promptopt.mlflow.baseline import _cases
    from pytest_promptopt.mlflow.layout import case_table

    results = [repeated("a", [True, False, True]), sample(True, "Rome", 1.0)]
    table = case_table(results)
    columns = list(table)
    outcomes = _cases({"columns": columns, "data": [list(row) for row in zip(*table.values())]})
    assert [(o.status, o.repeats, o.samples_passed) for o in outcomes] == [("failed", 3, 2), ("passed", 1, 1)]
    assert outcomes == [outcome_from_result(r) for r in results]


# --------------------------------------------------------------------------- the plugin, in every mode


def results_by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"].split("[")[0]: r for r in report["suites"][0]["results"]}


def test_each_case_takes_n_samples_flaky_cases_are_marked_and_a_warm_rerun_calls_nothing(
    pytester, run_pytest, mode
) -> None:
    pytester.makefile(".promptopt.yaml", capitals=CASES % "repeat: 3")
    result = run_pytest("--promptopt", "-rA", "--promptopt-report", "r.json", *mode)
    result.assert_outcomes(passed=1, failed=2)  # no gates: a case passes when every repeat does
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*capitals*3*1*2*0*55.6%*",
            "capitals: 3 repeats per case, pass^k 33.3% (95% CI 6-79%), 1 flaky: italy[[]t1[]]",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "FAILED italy[[]t1[]]: flaky: 2 of 3 repeats passed; repeat 2: *",
            "repeats: 2 of 3 passed (flaky)",
            "  repeat 1: PASS  'Rome'",
            "  repeat 2: FAIL  'Milan'",
            "  repeat 3: PASS  'Rome'",
        ]
    )
    report = load_report(pytester.path / "r.json")
    [suite] = report["suites"]
    assert (suite["repeats"], suite["flaky"], suite["pass_rate"], suite["pass_k"]) == (
        3,
        1,
        pytest.approx(5 / 9),
        pytest.approx(1 / 3),
    )
    assert suite["intervals"]["pass_rate"] == pytest.approx(
        list(cluster_bootstrap([[1.0] * 3, [1.0, 0.0, 1.0], [0.0] * 3]))
    )
    assert suite["intervals"]["pass^k"] == pytest.approx(list(wilson(1, 3)))
    cases = results_by_name(report)
    assert {
        n: (r["repeats"], r["repeat_passed"], r["flaky"], r["passed"], r["calls"], r["cache_hits"])
        for n, r in cases.items()
    } == {"france": (3, 3, False, True, 3, 0), "italy": (3, 2, True, False, 3, 0), "spain": (3, 0, False, False, 3, 0)}
    assert cases["italy"]["pass_rate"] == pytest.approx(2 / 3) and cases["italy"]["output"] == "Milan"
    assert [s["output"] for s in cases["italy"]["samples"]] == ["Rome", "Milan", "Rome"]

    warm = run_pytest("--promptopt", "--promptopt-cache", "replay", "--promptopt-report", "warm.json", *mode)
    warm.assert_outcomes(passed=1, failed=2)
    again = results_by_name(load_report(pytester.path / "warm.json"))
    assert {n: (r["calls"], r["cache_hits"]) for n, r in again.items()} == {n: (0, 3) for n in cases}
    assert {n: r["samples"] for n, r in again.items()} == {n: r["samples"] for n, r in cases.items()}


@pytest.mark.parametrize(
    ("gates", "status", "line"),
    [
        ("pass_rate: 0.5\n  pass^k: 0.3", 0, None),
        (
            "pass_rate: 0.5\n  pass^k: 0.5",
            1,
            "GATE FAILED  capitals (capitals.promptopt.yaml): pass^k = 0.333, threshold 0.5",
        ),
    ],
)
def test_a_pass_k_gate_decides_the_exit_status(
    pytester, run_pytest, mode, gates: str, status: int, line: str | None
) -> None:
    pytester.makefile(".promptopt.yaml", capitals=CASES % "repeat: 3" + f"gates:\n  {gates}\n")
    result = run_pytest("--promptopt", "-rx", "--promptopt-report", "r.json", *mode)
    result.assert_outcomes(passed=1, xfailed=2)
    assert result.ret == status
    result.stdout.fnmatch_lines(["*tolerated by gate pass_rate >= 0.5, pass^k >= *: flaky: 2 of 3 repeats passed*"])
    if line:
        result.stdout.fnmatch_lines([line])
    gate = {g["name"]: g for g in load_report(pytester.path / "r.json")["suites"][0]["gates"]}["pass^k"]
    assert gate["value"] == pytest.approx(1 / 3) and gate["passed"] is (status == 0)


def test_strict_and_tolerant_read_the_intervals_of_repeated_samples(pytester, run_pytest, mode) -> None:
    # Point estimates: pass rate 5/9 = 0.556 over samples, pass^k 1/3 over cases.
    gates = (
        "gates:\n  pass_rate: {min: 0.5, rule: strict}\n  correct: {min: 0.9, rule: tolerant}\n"
        "  pass^k: {min: 0.7, rule: tolerant}\n"
    )
    pytester.makefile(".promptopt.yaml", capitals=CASES % "repeat: 3" + gates)
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", *mode)
    assert result.ret == 1
    gate = {g["name"]: g for g in load_report(pytester.path / "r.json")["suites"][0]["gates"]}
    clusters = cluster_bootstrap([[1.0] * 3, [1.0, 0.0, 1.0], [0.0] * 3])
    assert clusters is not None
    # strict fails a point estimate above 0.5: the cluster interval's lower bound is below it
    assert (gate["pass_rate"]["passed"], gate["pass_rate"]["interval"]) == (False, pytest.approx(list(clusters)))
    assert clusters[0] < 0.5 < 5 / 9
    # tolerant passes estimates below their thresholds while the interval reaches them
    assert gate["correct"]["passed"] and gate["correct"]["value"] == pytest.approx(5 / 9) and clusters[1] >= 0.9
    assert gate["pass^k"]["passed"] and gate["pass^k"]["interval"] == pytest.approx(list(wilson(1, 3)))
    result.stdout.fnmatch_lines(
        ["GATE FAILED*pass_rate = 0.556, threshold 0.5 (pass_rate = 0.556, 95% lower bound * < 0.5 (strict))"]
    )


PYTHON_TEST = """
import pytest
from pytest_promptopt import FakeModel, icontains

MODEL = FakeModel({"Capital of Italy?": ["Rome", "Milan"]}, name="flaky")

@pytest.mark.promptopt(suite="py", model=MODEL, gates={"pass_rate": 0.5})
@pytest.mark.parametrize("repeat", range(4))
def test_capital(prompt_model, prompt_check, repeat):
    prompt_check(prompt_model("Capital of Italy?", repeat=repeat), icontains("Rome"))
"""


def test_a_python_test_parametrized_over_repeat_takes_independent_samples(pytester, run_pytest, mode) -> None:
    pytester.makepyfile(test_py=PYTHON_TEST)
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", *mode)
    result.assert_outcomes(passed=2, xfailed=2)
    assert result.ret == 0
    cold = sorted(
        (r["name"], r["output"], r["calls"]) for r in load_report(pytester.path / "r.json")["suites"][0]["results"]
    )
    assert cold == [(f"test_capital[{n}]", ["Rome", "Milan"][n % 2], 1) for n in range(4)]
    run_pytest("--promptopt", "--promptopt-cache", "replay", "--promptopt-report", "r.json", *mode)
    warm = load_report(pytester.path / "r.json")["suites"][0]["results"]
    assert (
        sorted((r["output"], r["calls"], r["cache_hits"]) for r in warm) == [("Milan", 0, 1)] * 2 + [("Rome", 0, 1)] * 2
    )


REPEATED_TEST = """
import pytest
from pytest_promptopt import FakeModel, icontains

MODEL = FakeModel({"Capital of Italy?": ["Rome", "Milan"], "Capital of France?": "Paris"}, name="flaky")

@pytest.mark.promptopt(suite="py", model=MODEL, gates={"pass_rate": 0.5}, repeat=4)
@pytest.mark.parametrize("country, capital", [("Italy", "Rome"), ("France", "Paris")])
def test_capital(prompt_model, prompt_check, country, capital):
    prompt_check(prompt_model(f"Capital of {country}?"), icontains(capital))
"""


def test_a_repeated_python_test_is_one_case_of_n_samples(pytester, run_pytest, mode) -> None:
    pytester.makepyfile(test_py=REPEATED_TEST)
    result = run_pytest("--promptopt", "-rx", "--promptopt-report", "r.json", *mode)
    result.assert_outcomes(passed=6, xfailed=2)  # an item per sample, each with fresh fixtures
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "py: 4 repeats per case, pass^k 50.0% *, 1 flaky: test_capital[[]Italy-Rome[]]",
            "XFAIL test_py.py::test_capital[[]Italy-Rome-repeat2of4[]] - tolerated by gate*",
        ]
    )
    [suite] = load_report(pytester.path / "r.json")["suites"]
    assert (suite["cases"], suite["repeats"], suite["flaky"], suite["pass_rate"], suite["pass_k"]) == (
        2,
        4,
        1,
        0.75,
        0.5,
    )
    # the interval resamples whole cases, as for a suite file's repeats
    assert suite["intervals"]["pass_rate"] == pytest.approx(list(cluster_bootstrap([[1.0, 0.0] * 2, [1.0] * 4])))
    cases = {r["name"]: r for r in suite["results"]}
    italy, france = cases["test_capital[Italy-Rome]"], cases["test_capital[France-Paris]"]
    assert italy["nodeid"] == "test_py.py::test_capital[Italy-Rome]" and italy["vars"] == {
        "country": "Italy",
        "capital": "Rome",
    }
    assert (italy["repeats"], italy["repeat_passed"], italy["flaky"], italy["passed"], italy["calls"]) == (
        4,
        2,
        True,
        False,
        4,
    )
    assert [s["output"] for s in italy["samples"]] == [
        "Rome",
        "Milan",
        "Rome",
        "Milan",
    ]  # in repeat order, from any worker
    assert italy["reason"].startswith("flaky: 2 of 4 repeats passed; repeat 2: ")
    assert (france["repeats"], france["repeat_passed"], france["passed"]) == (4, 4, True)
    # a case's id is that of the test without repeats, so baselines match across the change
    assert italy["case_id"] == python_case_id("test_py.py::test_capital[Italy-Rome]")

    run_pytest("--promptopt", "--promptopt-cache", "replay", "--promptopt-report", "warm.json", *mode).assert_outcomes(
        passed=6, xfailed=2
    )
    warm = {r["name"]: r for r in load_report(pytester.path / "warm.json")["suites"][0]["results"]}
    assert {n: (r["calls"], r["cache_hits"], r["samples"]) for n, r in warm.items()} == {
        n: (0, 4, r["samples"]) for n, r in cases.items()
    }


OPTION_TEST = """
import pytest
from pytest_promptopt import FakeModel, icontains

MODEL = FakeModel({"Capital of Italy?": ["Rome", "Milan", "Rome"]}, name="flaky")

@pytest.mark.promptopt(model=MODEL, repeat=2)
def test_marked(prompt_model, prompt_check, promptopt_repeat):
    answer = prompt_model("Capital of Italy?")
    assert answer.text == ["Rome", "Milan", "Rome"][promptopt_repeat]

@pytest.mark.promptopt(model=MODEL)
def test_unmarked(prompt_model, promptopt_repeat):
    assert prompt_model("Capital of Italy?").text == ["Rome", "Milan", "Rome"][promptopt_repeat]
    assert prompt_model("Capital of Italy?", repeat=0).text == "Rome"  # an explicit sample wins

def test_ordinary():
    pass
"""


@pytest.mark.parametrize(
    ("args", "ini", "expected"),
    [
        ([], "", {"test_marked": 2, "test_unmarked": 1}),
        (
            [],
            "[pytest]\npromptopt_repeat = 3\n",
            {"test_marked": 2, "test_unmarked": 3},
        ),  # the marker beats the ini value
        (["--promptopt-repeat", "3"], "", {"test_marked": 3, "test_unmarked": 3}),  # the command line beats both
    ],
    ids=["marker", "ini", "command-line"],
)
def test_the_marker_repeat_follows_the_order_of_a_suites_repeat(pytester, run_pytest, args, ini, expected) -> None:
    pytester.makepyfile(test_py=OPTION_TEST)
    if ini:
        pytester.makeini(ini)
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", "-v", *args)
    result.assert_outcomes(passed=sum(expected.values()) + 1)  # an ordinary test is never repeated
    for name, n in expected.items():
        if n > 1:
            result.stdout.fnmatch_lines(
                [f"*::{name}[[]repeat{i + 1}of{n}[]] PASSED*" for i in range(n)], consecutive=False
            )
    results = {r["name"]: r for r in load_report(pytester.path / "r.json")["suites"][0]["results"]}
    assert {name: r["repeats"] for name, r in results.items()} == expected


@pytest.mark.parametrize("value", ["0", "'3'", "True"])
def test_a_bad_marker_repeat_names_the_test(pytester, run_pytest, value) -> None:
    pytester.makepyfile(
        test_py=f"""
import pytest

@pytest.mark.promptopt(repeat={value})
def test_x(prompt_model):
    pass
"""
    )
    result = run_pytest("--promptopt")
    assert result.ret != 0
    result.stdout.fnmatch_lines(
        [
            f"*@pytest.mark.promptopt(repeat=...) on test_py.py::test_x: give a whole number of samples, 1 or more, got {value}*"
        ]
    )


CRASHING_SAMPLE = """
import os, signal
import pytest
from pytest_promptopt import FakeModel, icontains

@pytest.mark.promptopt(suite="py", model=FakeModel({"Capital of Italy?": "Rome"}), repeat=3)
def test_capital(prompt_model, prompt_check, promptopt_repeat):
    if promptopt_repeat == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    prompt_check(prompt_model("Capital of Italy?"), icontains("Rome"))
"""


def test_a_sample_lost_with_its_worker_makes_the_repeated_case_an_error(pytester, run_pytest) -> None:
    pytester.makepyfile(test_py=CRASHING_SAMPLE)
    result = run_pytest("--promptopt", "-n", "2", "--promptopt-report", "r.json")
    result.assert_outcomes(passed=2, errors=1)
    [case] = load_report(pytester.path / "r.json")["suites"][0]["results"]
    assert (case["name"], case["repeats"], case["repeat_passed"]) == ("test_capital", 3, 2)
    assert case["error"].startswith("repeat 2 of 3: worker crashed while running this case")


@pytest.mark.parametrize(
    ("nodeid", "expected"),
    [
        ("t.py::test_x[repeat2of5]", ("t.py::test_x", 1, 5)),
        ("t.py::C::test_x[a-b-repeat1of2]", ("t.py::C::test_x[a-b]", 0, 2)),
        ("t.py::test_x[repeat3of3-a]", ("t.py::test_x[a]", 2, 3)),  # a later @parametrize, if any, comes after it
        ("test_x[a-repeat1of2]", ("test_x[a]", 0, 2)),  # an item's name
        ("t.py::test_x[a]", None),
        ("t.py::test_x[repeat3of2]", None),
        ("t.py::test_x", None),
    ],
)
def test_a_samples_node_id_names_its_test(nodeid: str, expected: tuple[str, int, int] | None) -> None:
    assert split_repeat(nodeid) == expected
    if expected is not None:
        assert repeat_id(expected[1], expected[2]) in nodeid


def test_the_samples_of_a_repeated_test_fold_into_one_case_where_the_first_arrived() -> None:
    py = SuiteInfo(id="py", name="py", file="t.py", kind="python")

    def item(n: int, passed: bool, output: str) -> CaseResult:
        return CaseResult(
            case_id="x",
            name=f"test_x[a-repeat{n}of3]",
            nodeid=f"t.py::test_x[a-repeat{n}of3]",
            passed=passed,
            output=output,
            score=float(passed),
            calls=1,
        )

    other = CaseResult(case_id="o", name="test_o", nodeid="t.py::test_o", passed=True)
    crashed = CaseResult(
        case_id="t.py::test_x[a-repeat2of3]",
        name="test_x[a-repeat2of3]",
        nodeid="t.py::test_x[a-repeat2of3]",
        error="worker crashed while running this case",
    )
    records = [
        (py, item(3, False, "Milan")),
        (py, other),
        (py, item(1, True, "Rome")),
    ]  # from two workers, out of order
    [(_, case), (_, rest)] = fold_repeated_tests(records, [crashed])
    assert rest is other
    assert (case.name, case.nodeid, case.case_id) == ("test_x[a]", "t.py::test_x[a]", python_case_id("t.py::test_x[a]"))
    assert (case.repeats, case.repeat_passed, case.calls) == (3, 1, 2)
    assert [s["output"] for s in case.samples] == ["Rome", "Milan"]  # repeat order; the crashed one has no answer
    assert case.error == "repeat 2 of 3: worker crashed while running this case"
    # a crashed sample whose case sent nothing has no known suite: it is left out, not misfiled
    assert fold_repeated_tests([(py, other)], [crashed]) == [(py, other)]
