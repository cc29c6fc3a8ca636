"""Dataset suites: a table of rows runs as one item per prompt x provider, streamed to a per-case
Parquet table, with only its stats crossing to the controller (issue 5, item 5)."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import load_report
from test_mlflow import migrated_store  # noqa: F401  (a fixture: the migrated MLflow store template)

from pytest_promptopt.case_stats import LATENCY_EXACT, CaseStats, DatasetPart
from pytest_promptopt.case_table import CASE_COLUMNS, CasesWriter, stats_from_cases
from pytest_promptopt.execute import execute_case
from pytest_promptopt.models.fakes import EchoModel
from pytest_promptopt.models.specs import ModelSpec
from pytest_promptopt.records import CaseResult
from pytest_promptopt.runners.dataset import evaluate
from pytest_promptopt.suite.dataset import read_rows
from pytest_promptopt.suite.loader import load_suite
from pytest_promptopt.suite.model import SuiteError
from pytest_promptopt.suite_info import SuiteInfo
from pytest_promptopt.summary import SuiteSummary, summarize

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

# 30 reviews; on `echo` (output = the rendered prompt) a row passes when its review names its
# label: 24 do, the 6 with i % 5 == 4 do not. Pass rate 0.8.
ROWS = 30
LABELS = ["great" if i % 2 else "awful" for i in range(ROWS)]
REVIEWS = {
    # Rows with i % 5 == 4 name the other label: they fail.
    "review": [f"review {i}: {LABELS[i] if i % 5 != 4 else LABELS[i - 1]} stuff" for i in range(ROWS)],
    "label": LABELS,
}

SUITE = """
name: reviews
prompts: ["Classify: {{text}}"]
providers: [echo]
dataset:
  path: data/reviews.parquet
  vars: {text: review}
  assert: [{type: icontains, value: "{{label}}", metric: right}]
"""


def write_parquet(path: Path, columns: dict[str, list[Any]], **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, **kwargs)
    return path


def project(pytester: pytest.Pytester, suite: str = SUITE, name: str = "reviews") -> None:
    write_parquet(pytester.path / "data" / "reviews.parquet", REVIEWS)
    pytester.makefile(".promptopt.yaml", **{name: textwrap.dedent(suite)})


def table(path: str | Path) -> list[dict[str, Any]]:
    """The per-case table's rows (a folder of parts), sorted by node id."""
    import pyarrow.dataset as ds

    return sorted(ds.dataset(str(path), format="parquet").to_table().to_pylist(), key=lambda r: r["nodeid"])


# --------------------------------------------------------------------------- collection and verdicts


def test_one_item_per_dataset_suite_prompt_and_provider(pytester, run_pytest):
    project(pytester)
    project(
        pytester,
        SUITE.replace('prompts: ["Classify: {{text}}"]', 'prompts: ["Classify: {{text}}", "Label: {{text}}"]').replace(
            "providers: [echo]", "providers: [echo, {id: echo, label: again}]"
        ),
        name="wide",
    )
    result = run_pytest("--promptopt", "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "reviews.promptopt.yaml::dataset",
            "wide.promptopt.yaml::dataset[[]p0-echo[]]",
            "wide.promptopt.yaml::dataset[[]p0-again[]]",
            "wide.promptopt.yaml::dataset[[]p1-echo[]]",
            "wide.promptopt.yaml::dataset[[]p1-again[]]",
            "5 tests collected*",
        ]
    )
    # -k selects a dataset item like any other.
    selected = run_pytest("--promptopt", "-k", "wide and p1", "--promptopt-report", "r.json")
    selected.assert_outcomes(failed=2)  # no gates: the 6 rows that miss their label fail each item
    [suite] = load_report(pytester.path / "r.json")["suites"]
    assert (suite["name"], suite["cases"], suite["passed"], suite["failed"]) == ("reviews", 60, 48, 12)


def test_gates_decide_and_only_stats_reach_the_report(pytester, run_pytest, mode):
    project(pytester, SUITE + "gates: {pass_rate: 0.75, right: {min: 0.7}}\n")
    result = run_pytest("--promptopt", "-rA", "--promptopt-report", "r.json", *mode)
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "*reviews*echo*30*24*6*0*80.0%*pass_rate>=0.75:ok right>=0.7:ok*",
            "reviews: per-case results in */.promptopt/datasets/reviews.promptopt.yaml-*",
        ]
    )
    [suite] = load_report(pytester.path / "r.json")["suites"]  # validates against the schema
    assert (suite["cases"], suite["passed"], suite["failed"], suite["errors"], suite["pass_rate"]) == (
        30,
        24,
        6,
        0,
        0.8,
    )
    assert suite["metrics"] == {"right": pytest.approx(0.8)} and suite["gates_passed"] is True
    assert suite["results"] == [] and suite["source"] == "data/reviews.parquet"
    assert suite["calls"] == 30 and suite["latency_ms"] == {"p50": 0.0, "p95": 0.0}
    assert len(table(suite["cases_file"])) == 30

    pytester.makefile(".promptopt.yaml", reviews=textwrap.dedent(SUITE) + "gates: {pass_rate: 0.9}\n")
    failing = run_pytest("--promptopt", "--promptopt-report", "r.json", *mode)
    failing.assert_outcomes(failed=1)
    assert failing.ret == 1
    failing.stdout.fnmatch_lines(
        [
            "*data/reviews.parquet: gate failed: pass_rate = 0.800 < 0.9",
            "30 rows: 24 passed, 6 failed, 0 errors (pass rate 80.0%)",
            "metrics: right=0.800",
            "first 5 failed or errored rows:",
            '  row 4: Expected output to contain "awful"*',
            "    output: Classify: review 4: great stuff",
            "*per-case results: */.promptopt/datasets/reviews.promptopt.yaml-*/all.parquet",
            "*GATE FAILED  reviews (reviews.promptopt.yaml): pass_rate = 0.800, threshold 0.9",
        ]
    )


def test_without_gates_every_row_must_pass(pytester, run_pytest):
    project(pytester)
    result = run_pytest("--promptopt")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*data/reviews.parquet: no gates, so every row must pass", "30 rows: 24 passed, 6 failed*"]
    )
    # Every row passes: the item passes.
    pytester.makefile(".promptopt.yaml", reviews=textwrap.dedent(SUITE).replace('value: "{{label}}"', "value: review"))
    run_pytest("--promptopt").assert_outcomes(passed=1)


def test_identical_results_in_every_mode(pytester, run_pytest):
    # Two prompts: two items, which -n 2 runs on two workers; the controller merges their parts.
    project(
        pytester,
        SUITE.replace('prompts: ["Classify: {{text}}"]', 'prompts: ["Classify: {{text}}", "Say {{text}}"]')
        + "gates: {pass_rate: 0.5}\n",
    )
    seen = {}
    for name, args in {"plain": [], "xdist": ["-n", "2"], "no-xdist": ["-p", "no:xdist"]}.items():
        result = run_pytest("--promptopt", "--promptopt-report", f"{name}.json", *args)
        result.assert_outcomes(passed=2)
        [suite] = load_report(pytester.path / f"{name}.json")["suites"]
        rows = [
            {k: v for k, v in row.items() if k not in ("duration_s", "record")} for row in table(suite["cases_file"])
        ]
        counts = {
            k: suite[k]
            for k in ("cases", "passed", "failed", "errors", "pass_rate", "metrics", "gates", "calls", "cache_hits")
        }
        seen[name] = (counts, rows)
    assert seen["plain"] == seen["xdist"] == seen["no-xdist"]
    counts, rows = seen["plain"]
    assert counts["cases"] == 60 and len(rows) == 60 and len({r["case_id"] for r in rows}) == 60


# --------------------------------------------------------------------------- errors


FAKE_SUITE = """
name: partly
prompts: ["Q: {{text}}"]
providers: [{id: fake, config: {responses: {"Q: one": "yes", "Q: two": "yes", "Q: three": "no"}}}]
dataset:
  path: data/q.jsonl
  assert: [{type: equals, value: "yes"}]
"""


def questions(pytester: pytest.Pytester) -> None:
    # "four" has no scripted answer in FAKE_SUITE: a model error, so that row is an error, not a failure.
    (pytester.path / "data").mkdir()
    (pytester.path / "data" / "q.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in ["one", "two", "three", "four"])
    )


def test_errored_rows_are_left_out_of_gates_with_a_warning(pytester, run_pytest, mode):
    questions(pytester)
    pytester.makefile(".promptopt.yaml", partly=FAKE_SUITE + "gates: {pass_rate: 0.6}\n")
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", *mode)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        ["*partly.promptopt.yaml::dataset: 1 of 4 rows errored (left out of the gates); see *all.parquet*"]
    )
    [suite] = load_report(pytester.path / "r.json")["suites"]
    assert (suite["cases"], suite["passed"], suite["failed"], suite["errors"], suite["pass_rate"]) == (
        4,
        2,
        1,
        1,
        pytest.approx(2 / 3),
    )
    [errored] = [r for r in table(suite["cases_file"]) if r["status"] == "error"]
    assert errored["name"] == "row 3" and "model error" in errored["error"]


def test_an_errored_row_fails_an_ungated_item_and_all_errored_is_an_error(pytester, run_pytest):
    questions(pytester)
    pytester.makefile(".promptopt.yaml", partly=FAKE_SUITE.replace('"Q: three": "no"', '"Q: three": "yes"'))
    failing = run_pytest("--promptopt")
    failing.assert_outcomes(failed=1)
    failing.stdout.fnmatch_lines(["*4 rows: 3 passed, 0 failed, 1 error*", "  row 3: ERROR model error (fake)*"])

    # No row could be scored: the dataset did not run, which is an error, not a failure.
    pytester.makefile(
        ".promptopt.yaml", partly=FAKE_SUITE.replace("Q: {{text}}", "Unknown: {{text}}") + "gates: {pass_rate: 0.6}\n"
    )
    broken = run_pytest("--promptopt", "-n", "2")
    broken.assert_outcomes(errors=1)
    broken.stdout.fnmatch_lines(["*all 4 rows errored", "4 rows: 0 passed, 0 failed, 4 errors*"])
    assert broken.ret == 1


# --------------------------------------------------------------------------- scale and cache


STATS_PROBE = """
import json
from pytest_promptopt.session import session_key

def pytest_sessionfinish(session):
    state = session.config.stash[session_key]
    if state.is_controller:
        payloads = [state.encode(info, record) for info, record in state.records]
        summary = state.summary().suites[0]
        with open("controller.json", "w") as f:
            json.dump({"records": len(payloads), "bytes": [len(p) for p in payloads],
                       "kinds": [type(r).__name__ for _, r in state.records], "results": len(summary.results),
                       "exact_latencies": len(summary.stats.latencies), "cases": summary.cases}, f)
"""


def test_twenty_thousand_rows_run_as_one_item_and_only_stats_reach_the_controller(pytester, run_pytest):
    n = 20_000
    write_parquet(
        pytester.path / "data" / "reviews.parquet",
        {"review": [f"review {i} is " + ("great" if i % 10 else "awful") for i in range(n)], "label": ["great"] * n},
        row_group_size=4096,
    )
    pytester.makefile(".promptopt.yaml", reviews=textwrap.dedent(SUITE) + "gates: {pass_rate: 0.85}\n")
    pytester.makeconftest(STATS_PROBE)
    result = run_pytest("--promptopt", "-n", "2", "--promptopt-report", "r.json")
    result.assert_outcomes(passed=1)
    probe = json.loads((pytester.path / "controller.json").read_text())
    # One record of a few kilobytes for 20,000 rows: counts, sums and a latency histogram.
    assert probe["records"] == 1 and probe["kinds"] == ["DatasetPart"] and probe["bytes"][0] < 10_000
    assert probe["results"] == 0 and probe["exact_latencies"] == 0 and probe["cases"] == n
    [suite] = load_report(pytester.path / "r.json")["suites"]
    assert (suite["cases"], suite["passed"], suite["failed"]) == (n, 18_000, 2_000)
    assert len(json.dumps(suite)) < 10_000
    parts = list(Path(suite["cases_file"]).glob("*.parquet"))
    assert [p.name for p in parts] == ["all.parquet"] and pq.ParquetFile(parts[0]).metadata.num_rows == n


def test_a_warm_rerun_makes_no_model_calls(pytester, run_pytest):
    project(pytester, SUITE.replace("providers: [echo]", "providers: [{id: fake, config: {default: great}}]"))
    first = run_pytest("--promptopt", "--promptopt-report", "first.json")
    second = run_pytest("--promptopt", "--promptopt-report", "second.json")
    assert first.ret == second.ret == 1  # the 15 "awful" rows fail, without gates
    [cold] = load_report(pytester.path / "first.json")["suites"]
    [warm] = load_report(pytester.path / "second.json")["suites"]
    assert (cold["calls"], cold["cache_hits"]) == (ROWS, 0)
    assert (warm["calls"], warm["cache_hits"]) == (0, ROWS)
    assert {r["calls"] for r in table(warm["cases_file"])} == {0} and warm["cases_file"] != cold["cases_file"]
    assert (warm["passed"], warm["failed"]) == (cold["passed"], cold["failed"]) == (15, 15)


# --------------------------------------------------------------------------- reports


def test_per_case_table_html_and_json_report(pytester, run_pytest):
    project(pytester, SUITE + "gates: {pass_rate: 0.5}\n")
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", "--promptopt-html", "r.html")
    assert result.ret == 0
    [suite] = load_report(pytester.path / "r.json")["suites"]
    folder = Path(suite["cases_file"])
    assert folder.parent == pytester.path / ".promptopt" / "datasets"
    assert pq.read_schema(folder / "all.parquet").names == [name for name, _ in CASE_COLUMNS]
    rows = table(folder)
    assert [r["nodeid"] for r in rows[:2]] == [
        "reviews.promptopt.yaml::dataset::row 0",
        "reviews.promptopt.yaml::dataset::row 1",
    ]
    by_name = {r["name"]: r for r in rows}
    assert by_name["row 4"]["status"] == "failed" and by_name["row 4"]["output"] == "Classify: review 4: great stuff"
    record = CaseResult.from_dict(json.loads(by_name["row 3"]["record"]))
    assert (
        record.vars == {"text": REVIEWS["review"][3], "label": "great"}
        and record.passed
        and record.scores == {"right": 1.0}
    )
    assert record.test_index == 3 and record.model == "echo"
    page = (pytester.path / "r.html").read_text()
    assert f"href='{folder.as_uri()}'" in page and "30 cases, not listed here" in page
    assert "review 4: great stuff" not in page  # no per-case rows in the page


def test_mlflow_logs_the_per_case_table_as_artifact_and_table(pytester, run_pytest, mlflow_ready):
    from test_mlflow import case_table, run_tree, sqlite_uri

    project(pytester, SUITE + "gates: {pass_rate: 0.75}\n")
    shutil.copy(mlflow_ready, pytester.path / "mlflow.db")
    result = run_pytest("--promptopt", "-n", "2", mlflow=True)
    assert result.ret == 0 and "warning" not in result.stdout.str().lower()
    client, parent, children = run_tree(sqlite_uri(pytester.path / "mlflow.db"), pytester.path.name)
    child = children["reviews"]
    assert parent.data.metrics["cases"] == 30
    assert child.data.metrics["cases"] == 30 and child.data.metrics["pass_rate"] == pytest.approx(0.8)
    assert child.data.metrics["metric.right"] == pytest.approx(0.8) and child.data.metrics["calls"] == 30
    assert child.data.tags["promptopt.dataset"] == "true"
    assert child.data.params["prompt.0.template"] == "Classify: {{text}}"
    assert [a.path for a in client.list_artifacts(child.info.run_id, "cases")] == ["cases/all.parquet"]
    local = client.download_artifacts(child.info.run_id, "cases/all.parquet", str(pytester.path / "down"))
    assert pq.ParquetFile(local).metadata.num_rows == 30
    rows = case_table(client, child.info.run_id)  # small enough: also the cases.json table
    assert len(rows) == 30 and rows["row 4"]["status"] == "failed"


@pytest.fixture(scope="module")
def mlflow_ready(migrated_store: Path) -> Any:
    """A migrated MLflow store to copy, with MLflow imported before pytester snapshots
    sys.modules (as tests/test_mlflow.py's `offline_mlflow` does, and why)."""
    import warnings

    import mlflow.store.artifact.mlflow_artifacts_repo  # noqa: F401
    import mlflow.store.tracking.rest_store  # noqa: F401
    from mlflow import MlflowClient
    from test_mlflow import sqlite_uri

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MlflowClient(tracking_uri=sqlite_uri(migrated_store)).search_runs(["0"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield migrated_store


# --------------------------------------------------------------------------- the loader


def write_suite(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.promptopt.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def load(tmp_path: Path, text: str, backend: str | None = None) -> Any:
    return load_suite(write_suite(tmp_path, text), "s.promptopt.yaml", ModelSpec("echo"), backend=backend)


def error(tmp_path: Path, text: str, backend: str | None = None) -> str:
    with pytest.raises(SuiteError) as info:
        load(tmp_path, text, backend)
    return str(info.value)


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    return write_parquet(tmp_path / "data" / "reviews.parquet", REVIEWS)


def test_loader_errors_name_the_line_and_the_fix(tmp_path, reviews):
    assert error(tmp_path, SUITE.replace("data/reviews.parquet", "data/missing.parquet")) == (
        f"s.promptopt.yaml:5: dataset.path: data file not found: {tmp_path / 'data' / 'missing.parquet'}"
    )
    assert error(tmp_path, SUITE.replace("{text: review}", "{text: reviw}")) == (
        "s.promptopt.yaml:6: dataset.vars.text: column 'reviw' is not in data/reviews.parquet; did you mean 'review'? "
        "its columns: review, label"
    )
    assert error(tmp_path, SUITE + "tests: [{vars: {text: x}}]\n") == (
        "s.promptopt.yaml:4: dataset: a suite takes its cases from 'tests' or from 'dataset', not both; "
        "put the tests in a suite file of their own"
    )
    table_suite = SUITE.replace("path: data/reviews.parquet", "table: main.default.reviews")
    assert error(tmp_path, table_suite, backend="local") == (
        "s.promptopt.yaml:5: dataset.table: a Spark table is read by the Spark backend: run with --promptopt-backend spark "
        "(this run's backend is 'local'), or export the table to Parquet and give dataset.path"
    )
    assert load(tmp_path, table_suite, backend="spark").dataset.source.table == "main.default.reviews"
    assert "give 'path' or 'table', not both" in error(tmp_path, SUITE.replace("  vars:", "  table: t\n  vars:"))
    assert "dataset: needs 'path' or 'table'" in error(tmp_path, SUITE.replace("  path: data/reviews.parquet\n", ""))
    assert error(tmp_path, SUITE.replace("{text: review}", "{body: review}")) == (
        "s.promptopt.yaml:6: dataset.vars: missing variable 'text' (the template uses {{ text }}) in prompts[0] "
        "(Classify: {{text}}); data/reviews.parquet has columns review, label: map one with dataset.vars (text: <column>) "
        "or set it in defaultTest.vars"
    )
    assert "dataset.path: data/x.xlsx: unsupported file type '.xlsx'" in error(
        tmp_path, SUITE.replace("reviews.parquet", "x.xlsx")
    )
    assert error(tmp_path, SUITE.replace("{type: icontains", "{type: word-count}, {type: icontains")).startswith(
        "s.promptopt.yaml:7: dataset.assert[0]: 'word-count' needs a 'value'"
    )
    # A regex that does not compile would fail every row after its model call (promptfoo fails the
    # check when it runs): refused at load. One rendered from the row's values fails per row.
    assert error(
        tmp_path, SUITE.replace("{type: icontains", '{type: not-regex, value: "([a-z"}, {type: icontains')
    ) == (
        "s.promptopt.yaml:7: dataset.assert[0]: invalid regular expression '([a-z': unterminated character set "
        "at position 1 (first row of data/reviews.parquet)"
    )
    assert load(tmp_path, SUITE.replace("{type: icontains", '{type: regex, value: "{{label}}("}, {type: icontains'))
    assert load(tmp_path, SUITE.replace("{type: icontains", '{type: regex, value: "^[A-Z]"}, {type: icontains'))
    assert "dataset.limit: 0 is less than the minimum of 1" in error(tmp_path, SUITE + "  limit: 0\n")
    assert "dataset.rows: unknown key 'rows'" in error(tmp_path, SUITE + "  rows: 3\n")


def test_table_without_spark_is_a_collection_error(pytester, run_pytest):
    pytester.makefile(".promptopt.yaml", t=SUITE.replace("path: data/reviews.parquet", "table: main.default.reviews"))
    result = run_pytest("--promptopt")
    assert result.ret == 2
    result.stdout.fnmatch_lines(
        ["*invalid prompt suite: t.promptopt.yaml:5: dataset.table: a Spark table is read by the Spark backend*"]
    )


def evaluate_all(loaded: Any, tmp_path: Path) -> tuple[Any, list[dict[str, Any]]]:
    model, cache = EchoModel(), None
    from pytest_promptopt.cache import CacheMode, ResponseCache

    cache = ResponseCache(tmp_path / "cache.sqlite", CacheMode.OFF)
    part = loaded.dataset.slices[0]
    with CasesWriter(tmp_path / "out" / "all.parquet", row_group=2) as writer:
        evaluation = evaluate(
            read_rows(loaded.dataset.source),
            part.make_case,
            lambda pairs: (execute_case(c, model, cache, n) for c, n in pairs),
            writer,
            "s::",
        )
    return evaluation, table(tmp_path / "out")


def test_csv_and_jsonl_with_default_test_limit_and_bad_rows(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "r.csv").write_text("review,label\nnice one,nice\nmeh,good\nso good,good\nextra,x\n")
    loaded = load(
        tmp_path,
        """
        prompts: ["{{greeting}}: {{text}}"]
        providers: [echo]
        defaultTest:
          vars: {greeting: Hello, label: unused}
          assert: [{type: starts-with, value: "{{greeting}}", metric: polite}]
        dataset:
          path: data/r.csv
          vars: {text: review}
          assert: [{type: icontains, value: "{{label}}"}]
          limit: 3
        """,
    )
    evaluation, rows = evaluate_all(loaded, tmp_path)
    assert [r["output"] for r in rows] == [
        "Hello: nice one",
        "Hello: meh",
        "Hello: so good",
    ]  # limit 3; row vars beat defaults
    assert [r["status"] for r in rows] == ["passed", "failed", "passed"]
    assert evaluation.stats.metric_means() == {"polite": 1.0} and evaluation.stats.cases == 3
    assert stats_from_cases(tmp_path / "out") == evaluation.stats

    # A JSONL line that is not an object, or lacks a mapped column, is that row's error.
    (tmp_path / "data" / "r.jsonl").write_text(
        '{"review": "a", "label": "a"}\n[1, 2]\n\n{"label": "b"}\n{"review": "c", "label": "c"}\n'
    )
    loaded = load(
        tmp_path,
        """
        prompts: ["{{text}}"]
        providers: [echo]
        dataset: {path: data/r.jsonl, vars: {text: review}, assert: [{type: contains, value: "{{label}}"}]}
        """,
    )
    evaluation, rows = evaluate_all(loaded, tmp_path)
    assert [(r["name"], r["status"]) for r in sorted(rows, key=lambda r: r["name"])] == [
        ("row 0", "passed"),
        ("row 1", "error"),
        ("row 2", "error"),
        ("row 3", "passed"),
    ]
    errors = {r["name"]: r["error"] for r in rows if r["error"]}
    assert errors == {
        "row 1": "row 1: line 2: each line must be a JSON object",
        "row 2": "row 2: the row has no column 'review' (dataset.vars.text)",
    }
    assert (evaluation.stats.passed, evaluation.stats.errors) == (2, 2) and evaluation.read_error is None


def test_parquet_folder_source_and_cases_are_picklable(tmp_path):
    import pickle

    write_parquet(tmp_path / "data" / "parts" / "part-0.parquet", {"text": ["a", "b"]})
    write_parquet(tmp_path / "data" / "parts" / "part-1.parquet", {"text": ["c"]})
    loaded = load(
        tmp_path,
        'prompts: ["{{text}}"]\nproviders: [echo]\ndefaultTest: {options: {temperature: 0.2}}\n'
        "dataset: {path: data/parts, assert: [{type: is-json}]}\n",
    )
    make_case = pickle.loads(pickle.dumps(loaded.dataset.slices[0].make_case))
    cases = [make_case(row, i) for i, row in read_rows(loaded.dataset.source)]
    assert [c.rendered_prompt for c in cases] == ["a", "b", "c"] and [c.name for c in cases] == [
        "row 0",
        "row 1",
        "row 2",
    ]
    assert len({c.case_id for c in cases}) == 3 and cases[0].suite.id == "s.promptopt.yaml"
    assert cases[0].model.params == {"temperature": 0.2}  # defaultTest's options that are model parameters


# --------------------------------------------------------------------------- CaseStats


def results(n: int, offset: int = 0) -> list[CaseResult]:
    return [
        CaseResult(
            f"c{i}",
            f"c{i}",
            passed=i % 3 != 0,
            error="boom" if i % 7 == 0 else None,
            score=(i % 10) / 10,
            named_scores={"m": (i % 4) / 4},
            latency_ms=float(i % 997),
            calls=1,
            cache_hits=i % 2,
            prompt_tokens=2,
            completion_tokens=3,
            cost=0.001,
            duration_s=0.5,
            model=f"model-{i % 2}",
        )
        for i in range(offset, offset + n)
    ]


def test_case_stats_merge_like_one_pass_and_cross_json():
    whole = results(6000)
    parts = [CaseStats.of(whole[:1000]), CaseStats.of(whole[1000:5000]), CaseStats.of(whole[5000:])]
    merged = CaseStats.from_dict(json.loads(json.dumps(parts[0].to_dict()))).merge(parts[1]).merge(parts[2])
    one = CaseStats.of(whole)
    assert (merged.passed, merged.failed, merged.errors, merged.calls, merged.cache_hits) == (
        one.passed,
        one.failed,
        one.errors,
        6000,
        3000,
    )
    assert merged.mean_score() == one.mean_score() and merged.metric_means() == one.metric_means()
    assert merged.models == ["model-0", "model-1"] and merged.prompt_tokens == 12000
    assert merged.cost == pytest.approx(6.0) and merged.duration_s == pytest.approx(3000.0)
    exact = sorted(r.latency_ms for r in whole)
    for q in (0.5, 0.95):  # past LATENCY_EXACT values: a histogram, within 1%
        assert merged.latency_percentile(q) == pytest.approx(exact[round(q * 5999)], rel=0.01)
    assert merged.latencies == [] and len(json.dumps(merged.to_dict())) < 10_000
    assert CaseStats.from_dict(json.loads(json.dumps(merged.to_dict()))) == merged


def test_suite_summary_aggregates_are_unchanged_for_ordinary_suites():
    import statistics

    rows = results(50)
    info = SuiteInfo("s", "s", "s.yaml")
    [suite] = summarize([(info, r) for r in rows]).suites
    scored = [r for r in rows if not r.error]
    assert suite.cases == 50 and suite.passed == sum(r.passed for r in scored) and suite.errors == 8
    assert suite.mean_score() == statistics.fmean(r.score for r in scored)
    assert suite.metric_means() == {"m": statistics.fmean(r.named_scores["m"] for r in scored)}
    assert (
        suite.latency_percentile(0.5) == sorted(r.latency_ms for r in rows)[round(0.5 * 49)]
        and len(rows) < LATENCY_EXACT
    )
    assert suite.totals()["cost"] == sum(r.cost for r in rows) and suite.models == ["model-0", "model-1"]
    assert suite.cases_file is None and suite.dataset is None


def test_dataset_parts_of_a_suite_merge_into_one_summary():
    info = SuiteInfo("d", "d", "d.yaml")
    a, b = (
        DatasetPart(CaseStats.of(results(10)), "/x/d", "data.parquet", {0: "A"}),
        DatasetPart(CaseStats.of(results(5, 10)), "/x/d", "data.parquet", {1: "B"}),
    )
    [suite] = summarize([(info, a), (info, DatasetPart.from_dict(json.loads(json.dumps(b.to_dict()))))]).suites
    assert isinstance(suite, SuiteSummary) and suite.results == [] and suite.cases == 15 and suite.cases_file == "/x/d"
    one = CaseStats.of(results(15))
    assert suite.dataset.templates == {0: "A", 1: "B"} and suite.stats.latencies == one.latencies
    assert (suite.passed, suite.failed, suite.errors, suite.mean_score(), suite.metric_means()) == (
        one.passed,
        one.failed,
        one.errors,
        one.mean_score(),
        one.metric_means(),
    )


def test_every_row_gets_the_default_tests_transform_and_the_suites_env(pytester, run_pytest):
    """defaultTest.options.transform runs on each row's answer, as on a test's: it was left out
    of dataset rows, which then failed checks written for it. The provider's transform runs
    before it. The prompt reads the suite's `env:` (a collection error said `env` was missing)."""
    project(
        pytester,
        SUITE.replace(
            "providers: [echo]",
            "providers: [{id: echo, transform: \"output + ' ok'\"}]\n"
            "defaultTest:\n  options: {transform: output.toUpperCase()}",
        )
        .replace('prompts: ["Classify: {{text}}"]', 'env: {VERB: Classify}\nprompts: ["{{env.VERB}}: {{text}}"]')
        .replace(
            '{type: icontains, value: "{{label}}", metric: right}', '{type: starts-with, value: "CLASSIFY: REVIEW"}'
        )
        + "  limit: 6\n",
    )
    run_pytest("--promptopt", "--promptopt-report", "r.json").assert_outcomes(passed=1)
    [suite] = load_report(pytester.path / "r.json")["suites"]
    assert (suite["cases"], suite["passed"]) == (6, 6)
    rows = table(suite["cases_file"])
    assert len(rows) == 6 and all(r["output"].startswith("CLASSIFY: REVIEW") for r in rows), rows
    assert all(r["output"].endswith(" OK") for r in rows), rows  # the provider's transform, then the test's


# --------------------------------------------------------------------------- the Spark backend


HOOK_JUDGE = """
import json
from pytest_promptopt import Response

class Judge:  # made by this conftest's hook: a Spark worker cannot make it, it is shipped
    name = "judge/hook"
    cache_identity = {"model": "judge/hook"}

    def generate(self, request):
        output = request.messages[-1]["content"].split("<Output>")[1].split("</Output>")[0]
        good = "great" in output
        return Response(text=json.dumps({"reason": "it says great" if good else "it does not say great",
                                         "pass": good, "score": float(good)}), model=self.name)

def pytest_promptopt_make_model(spec):
    if spec.id == "judge/hook":
        return Judge()
"""


@pytest.mark.timeout(900)
def test_spark_backend_gives_the_local_results_and_takes_a_hook_made_judge_along(pytester, run_pytest):
    """Two dataset suites, run in this process and on a local Spark session (one JVM for both:
    each costs ~12 s of the suite): the same verdicts, metrics, calls and per-case tables; the
    second is judged by a model a conftest hook makes, which Spark's workers cannot make."""
    pytest.importorskip("pyspark")
    pytester.makeconftest(HOOK_JUDGE)
    project(pytester, SUITE + "  limit: 25\ngates: {pass_rate: 0.75}\n")
    project(
        pytester,
        SUITE.replace("name: reviews", "name: judged").replace(
            'assert: [{type: icontains, value: "{{label}}", metric: right}]',
            'assert: [{type: llm-rubric, value: "Says it is great", metric: great}]',
        )
        + "  limit: 10\n",
        name="judged",
    )
    options = ("--promptopt", "--promptopt-judge-model", "judge/hook", "--promptopt-cache", "off")
    local = run_pytest(*options, "--promptopt-report", "local.json")
    on_spark = run_pytest(*options, "--promptopt-backend", "spark", "--promptopt-report", "spark.json")
    local.assert_outcomes(passed=1, failed=1)  # the judged suite has no gate: a failed row fails its item
    on_spark.assert_outcomes(passed=1, failed=1)
    a = {suite["name"]: suite for suite in load_report(pytester.path / "local.json")["suites"]}
    b = {suite["name"]: suite for suite in load_report(pytester.path / "spark.json")["suites"]}
    keys = ("cases", "passed", "failed", "errors", "pass_rate", "metrics", "gates", "calls")
    assert {k: a["reviews"][k] for k in keys} == {k: b["reviews"][k] for k in keys} and a["reviews"]["cases"] == 25
    assert Path(b["reviews"]["cases_file"], "all").is_dir()  # Spark writes the item's part as a folder of part files

    def comparable(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((r["case_id"], r["name"], r["nodeid"], r["status"], r["output"], r["score"]) for r in rows)

    assert comparable(table(a["reviews"]["cases_file"])) == comparable(table(b["reviews"]["cases_file"]))
    # rows 1, 3, 5, 7 say great, and 4 (whose review names the other label): judged, not errored
    judged_a, judged_b = a["judged"], b["judged"]
    assert (
        (judged_b["cases"], judged_b["passed"], judged_b["failed"], judged_b["errors"])
        == (judged_a["cases"], judged_a["passed"], judged_a["failed"], judged_a["errors"])
        == (10, 5, 5, 0)
    )
    assert judged_b["metrics"] == judged_a["metrics"] == {"great": 0.5}
    assert judged_b["calls"] == 20  # echo's answers and the verdicts


# ----------------------------------------------------------------------------- reading suite files


def test_one_yaml_parse_gives_the_data_and_the_line_of_every_node(tmp_path: Path) -> None:
    from pytest_promptopt.suite.document import DocumentError, read_document

    path = tmp_path / "s.promptopt.yaml"
    path.write_text("base: &b {x: 1}\nuse:\n  <<: *b\n  y: [a, b]\n")
    data, lines = read_document(path)
    assert data == {"base": {"x": 1}, "use": {"x": 1, "y": ["a", "b"]}}
    assert (
        lines.line(("use", "y", 1)),
        lines.line(("use", "<<")),
        lines.line(("base", "x")),
        lines.line(("use", "z")),
    ) == (4, 3, 1, 2)
    path.write_text("a: 1\nb: [1, 2\n")
    with pytest.raises(DocumentError) as excinfo:
        read_document(path)
    assert excinfo.value.line == 3 and str(excinfo.value).startswith("invalid YAML: ")


def test_a_stale_libyaml_extension_falls_back_to_the_python_loader(
    tmp_path: Path, reviews: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyYAML imported a second time in one process (pytester drops it from sys.modules after a
    test that imported it first) keeps the first copy of its C extension, whose nodes the new
    resolver does not know: the libyaml loader then fails every document with "could not
    determine a constructor for the tag None". The pure-Python loader is used instead."""
    import yaml

    from pytest_promptopt import yaml12

    assert yaml12._trusted_c_parser(yaml) is getattr(yaml._yaml, "CParser", None)
    monkeypatch.setattr(yaml.nodes, "ScalarNode", type("ScalarNode", (yaml.nodes.Node,), {}))  # as in a second `yaml`
    assert yaml12._trusted_c_parser(yaml) is None
    spec = load(tmp_path, SUITE).dataset
    assert spec is not None and spec.source.describe().endswith("reviews.parquet")


def test_rows_and_generated_cases_render_with_the_suites_nunjucks_filters(tmp_path: Path):
    """A dataset or fuzz suite's prompts may use its nunjucksFilters, as a test's do (loading
    ended in a raw TemplateError: "No filter named"); on the Spark backend, whose workers render
    the rows and cannot run this process's filters, a dataset suite with filters is refused."""
    (tmp_path / "shout.js").write_text("module.exports = (s) => String(s).toUpperCase();\n")
    write_parquet(tmp_path / "rows.parquet", {"text": ["hello", "there"]})
    head = "nunjucksFilters: {shout: file://shout.js}\nprompts: ['{{text | shout}}']\nproviders: [echo]\n"
    dataset_suite = tmp_path / "d.promptopt.yaml"
    dataset_suite.write_text(head + "dataset:\n  path: rows.parquet\n  assert: [{type: contains, value: E}]\n")
    [item] = load_suite(dataset_suite, "d.promptopt.yaml", ModelSpec("echo")).dataset.slices
    assert [item.make_case({"text": t}, i).rendered_prompt for i, t in enumerate(["hello", "there"])] == [
        "HELLO",
        "THERE",
    ]
    fuzz_suite = tmp_path / "f.promptopt.yaml"
    fuzz_suite.write_text(
        head + "defaultTest:\n  assert: [{type: is-json}]\ntests: [{vars: {text: hi}}]\nfuzz: {count: 3, seed: 0}\n"
    )
    cases = load_suite(fuzz_suite, "f.promptopt.yaml", ModelSpec("echo")).cases
    assert len(cases) == 4 and all(c.rendered_prompt == c.rendered_prompt.upper() for c in cases)
    assert cases[0].rendered_prompt == "HI"
    # A generated case still pickles (the Spark backend ships it), its origin's factory without the filters.
    from pyspark import cloudpickle

    shipped = cloudpickle.loads(cloudpickle.dumps(cases[1]))
    assert shipped.rendered_prompt == cases[1].rendered_prompt and shipped.fuzz.factory.filters is None
    assert cases[1].fuzz.factory.filters  # this process's own keeps them, for shrinking
    with pytest.raises(SuiteError, match=r"d.promptopt.yaml:1: nunjucksFilters: a dataset suite on the Spark backend"):
        load_suite(dataset_suite, "d.promptopt.yaml", ModelSpec("echo"), backend="spark")
