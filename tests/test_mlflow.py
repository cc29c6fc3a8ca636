"""MLflow reporting, offline, against real MLflow: a SQLite store and a `mlflow server` on loopback.

Every pytester run here passes `mlflow=True` (conftest's `run_pytest` turns MLflow off elsewhere).
A fresh MLflow store spends ~6 s migrating its schema, so each test copies one migrated template.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ECHO_SUITE, load_report

pytestmark = pytest.mark.timeout(240)

QA = ECHO_SUITE + "gates:\n  pass_rate: 0.9\n"

TWO_PROMPTS = """
description: greetings
providers: [echo]
prompts: ["Hello {{name}}", "Goodbye {{name}}"]
tests:
  - vars: {name: Ada}
    assert: [{type: icontains, value: ada}]
gates:
  pass_rate: 0.5
"""

PYTHON_TESTS = """
import pytest
from pytest_promptopt import FakeModel, contains

MODEL = FakeModel({"Capital of France?": "Paris", "Capital of Spain?": "Barcelona"}, name="scripted")

@pytest.mark.promptopt(suite="py-capitals", gates={"pass_rate": 0.5}, model=MODEL)
@pytest.mark.parametrize("country,capital", [("France", "Paris"), ("Spain", "Madrid")])
def test_capital(prompt_model, prompt_check, country, capital):
    prompt_check(prompt_model(f"Capital of {country}?"), contains(capital))
"""

CASES = {"capitals": 3, "greetings": 2, "py-capitals": 2}


@pytest.fixture(scope="module", autouse=True)
def offline_mlflow(migrated_store: Path) -> Iterator[None]:
    # MLflow (and SQLAlchemy, pandas, the stores) must be imported before a test's `pytester`
    # snapshots sys.modules: pytester removes what a test imported when it ends, and C-extension
    # packages such as SQLAlchemy break when imported a second time.
    import mlflow.store.artifact.mlflow_artifacts_repo  # noqa: F401
    import mlflow.store.tracking.rest_store  # noqa: F401
    from mlflow import MlflowClient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MlflowClient(tracking_uri=sqlite_uri(migrated_store)).search_runs(["0"])

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage events to the network
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with its schema migrated, made once for all xdist workers
    (each test copies it)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this run
    db = root / "mlflow-template.db"
    with (root / "mlflow-template.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not db.exists():
            from mlflow import MlflowClient

            building = root / f"mlflow-template-{os.getpid()}.db"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # SQLAlchemy deprecations inside MLflow
                MlflowClient(tracking_uri=sqlite_uri(building)).search_experiments()
            os.replace(building, db)
    return db


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.as_posix()}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_label(run: Any) -> str:
    """A child run's suite name, or `repair <suite> prompt <i>` for a repair's run (run names
    also carry the branch, commit and time)."""
    tags = run.data.tags
    if tags.get("promptopt.kind") == "repair":
        return f"repair {tags['promptopt.repair.suite']} prompt {run.data.params['prompt_index']}"
    return tags["promptopt.suite"]


def run_tree(uri: str, experiment: str) -> tuple[Any, Any, dict[str, Any]]:
    """The client, the one session (parent) run, and its child runs by suite name (`child_label`)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {uri}"
    runs = client.search_runs([found.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("promptopt.session") == "true"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    children = {child_label(r): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(children) == len(runs) - 1  # nothing but the session and its suites
    assert parent.info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children.values())
    return client, parent, children


def case_table(client: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """The logged case table, by case name. (Not `client.load_table`: MLflow 3.17 searches the
    runs through the global tracking URI there, not the client's.)"""
    with tempfile.TemporaryDirectory() as tmp:
        table = json.loads(Path(client.download_artifacts(run_id, "cases.json", tmp)).read_text())
    assert {"case_id", "name", "vars", "prompt", "output", "passed", "error", "score", "scores", "latency_ms"} <= set(
        table["columns"]
    )
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    return {row["name"]: row for row in rows}


def assert_tables(client: Any, children: dict[str, Any], expected: dict[str, int]) -> None:
    assert sorted(children) == sorted(expected)
    for name, child in children.items():
        assert len(case_table(client, child.info.run_id)) == expected[name], name


def write_project(pytester: pytest.Pytester) -> None:
    pytester.makefile(".promptopt.yaml", qa=QA, two=TWO_PROMPTS)
    pytester.makepyfile(test_py=PYTHON_TESTS)


def git_commit(path: Path) -> str | None:
    if shutil.which("git") is None:
        return None
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=path, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "init"], cwd=path, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, check=True, capture_output=True, text=True
    ).stdout.strip()


# --------------------------------------------------------------------------- a SQLite store


@pytest.mark.parametrize("mode", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_run_tree_metrics_params_tags_and_tables_in_the_project_store(pytester, run_pytest, migrated_store, mode):
    write_project(pytester)
    commit = git_commit(pytester.path)
    shutil.copy(migrated_store, pytester.path / "mlflow.db")  # the default store: <rootdir>/mlflow.db
    result = run_pytest("--promptopt", *mode, mlflow=True)
    assert result.ret == 1  # the capitals gate (pass_rate 0.9) fails; reporting does not change that
    client, parent, children = run_tree(sqlite_uri(pytester.path / "mlflow.db"), pytester.path.name)
    result.stdout.fnmatch_lines(
        [f"MLflow: sqlite:///*mlflow.db, experiment '{pytester.path.name}', run {parent.info.run_id}"]
    )
    assert "warning" not in result.stdout.str().lower()

    tags = parent.data.tags
    assert tags["promptopt.gates_passed"] == "false" and tags["promptopt.exit_status"] == "1"
    assert "--promptopt" in tags["promptopt.pytest_args"].split() and tags["promptopt.plugin_version"]
    assert tags["promptopt.models"] == "echo, scripted" and tags["promptopt.ci"] in ("true", "false")
    # Source and Version columns: the project at its commit; run names tell sessions apart.
    label = f"main@{commit[:7]} " if commit else ""
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.name"] == pytester.path.name + (f"@{commit[:7]}" if commit else "")
    if commit:
        assert tags["mlflow.source.git.commit"] == commit and tags["mlflow.source.git.branch"] == "main"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(parent.info.start_time / 1000))
    assert parent.info.run_name == f"pytest {label}{started}"
    assert parent.data.metrics == {  # rounded for display; the JSON report keeps 5/7
        "suites": 3,
        "cases": 7,
        "passed": 5,
        "failed": 2,
        "errors": 0,
        "pass_rate": 0.7143,
        "gates_failed": 1,
    }
    # A short description; the per-suite table is an artifact.
    note = tags["mlflow.note.content"].splitlines()
    assert note[0] == "**GATES FAILED**: 3 suites, 7 cases, pass rate 71.4% (5 passed, 2 failed, 0 errors)"
    assert "- capitals: pass_rate = 0.667 < 0.9" in note and max(len(line) for line in note) < 100
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["promptopt-report.json", "summary.md"]
    summary = Path(client.download_artifacts(parent.info.run_id, "summary.md", str(pytester.path / "dl"))).read_text()
    assert "| capitals | echo | 3 | 2 | 1 | 0 | 66.7% | pass_rate = 0.667 < 0.9: **FAILED** |" in summary

    # Each suite run: an evaluation run with its own start and end inside the session's, its
    # cases as the dataset input, named after the suite, the commit and its start.
    for name, child in children.items():
        assert (
            child.data.tags["mlflow.runType"] == "genai_evaluate" and child.data.tags["mlflow.source.type"] == "LOCAL"
        )
        assert parent.info.start_time <= child.info.start_time <= child.info.end_time <= parent.info.end_time
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(child.info.start_time / 1000))
        assert child.info.run_name == f"{name} {label}{started}"
        [dataset] = child.inputs.dataset_inputs
        assert (dataset.dataset.name, json.loads(dataset.dataset.profile)) == (name, {"num_rows": CASES[name]})
        assert [(t.key, t.value) for t in dataset.tags] == [("mlflow.data.context", "eval")]
    assert children["capitals"].inputs.dataset_inputs[0].dataset.source == '{"uri": "qa.promptopt.yaml"}'
    assert children["capitals"].data.tags["mlflow.note.content"] == (
        "pass rate 66.7% (2 passed, 1 failed, 0 errors); pass_rate = 0.667 < 0.9: FAILED"
    )

    qa = children["capitals"]
    assert qa.data.metrics == pytest.approx(
        {
            "pass_rate": 0.6667,
            "mean_score": qa.data.metrics["mean_score"],
            "cases": 3,
            "passed": 2,
            "failed": 1,
            "errors": 0,
            "gates_failed": 1,  # each suite run's verdict, a column of the runs tables
            "metric.mentions": 0.5,
            "gate.pass_rate": 0.6667,
            "calls": 3,
            "cache_hits": 0,
            "latency_p50_ms": 0,
            "latency_p95_ms": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost": 0,
            "duration_s": qa.data.metrics["duration_s"],
        }
    )
    template = "The capital of {{country}} is {{capital}}."
    assert qa.data.params == {
        "suite_name": "capitals",
        "suite_file": "qa.promptopt.yaml",
        "suite_kind": "file",
        "model": "echo",
        "prompt.0.template": template,
        "prompt.0.sha256": hashlib.sha256(template.encode()).hexdigest(),
        "model_params.echo": "{}",
        "gate.pass_rate.threshold": "0.9",
    }
    assert qa.data.tags["promptopt.gate.pass_rate"] == "failed" and qa.data.tags["promptopt.gates_passed"] == "false"
    # what the gate compared, as a tag: MLflow 3.18's run page shows tags, not the metrics
    assert qa.data.tags["promptopt.gates"] == "pass_rate = 0.667 < 0.9: FAILED", qa.data.tags
    # who ran it: the run pages' "Created by" (MLflow's own runs record it the same way)
    assert qa.data.tags["mlflow.user"] == parent.data.tags["mlflow.user"] == getpass.getuser()
    assert qa.info.user_id == getpass.getuser()
    artifacts = {a.path for a in client.list_artifacts(qa.info.run_id)} | {
        a.path for a in client.list_artifacts(qa.info.run_id, "prompts")
    }
    assert {"cases.json", "suite", "prompts/template-0.txt", "prompts/rendered.md"} <= artifacts
    rendered = Path(client.download_artifacts(qa.info.run_id, "prompts/rendered.md", str(pytester.path))).read_text()
    assert "The capital of Italy is Milan." in rendered
    assert children["greetings"].data.params["prompt.1.template"] == "Goodbye {{name}}"
    assert children["greetings"].data.tags["promptopt.gate.pass_rate"] == "passed"
    assert (
        children["py-capitals"].data.metrics["pass_rate"] == 0.5
        and children["py-capitals"].data.params["suite_kind"] == "python"
    )
    assert_tables(client, children, CASES)
    # The test module's copy is text: under the project's mlruns/, a .py copy broke collection
    # without the plugin (pytest -p no:promptopt: "import file mismatch").
    py_run = children["py-capitals"].info.run_id
    assert [a.path for a in client.list_artifacts(py_run, "suite")] == ["suite/test_py.py.txt"]
    assert (
        "def test_"
        in Path(client.download_artifacts(py_run, "suite/test_py.py.txt", str(pytester.path / "dl"))).read_text()
    )
    assert any((pytester.path / "mlruns").rglob("test_py.py.txt"))
    without = run_pytest("-p", "no:promptopt", "--collect-only", "-q")
    assert without.ret == 0, without.stdout.str()
    assert all(line.startswith("test_py.py::") for line in without.stdout.lines if "::" in line)
    table = case_table(client, qa.info.run_id)
    assert table["wrong[t2]"]["output"] == "The capital of Italy is Milan." and table["wrong[t2]"]["passed"] is False
    assert table["france[t0]"]["vars"] == '{"capital": "Paris", "country": "France"}'


# --------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path) -> Iterator[str]:
    """`mlflow server` on a free loopback port, stopped (its whole process group) at the end."""
    root = tmp_path_factory.mktemp("mlflow-server")
    shutil.copy(migrated_store, root / "server.db")
    port = free_port()
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            sqlite_uri(root / "server.db"),
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=root,
        # Without this the server also starts a job runner and about eight huey consumers.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
        log.close()


def test_a_remote_tracking_server_from_the_environment_under_xdist(pytester, run_pytest, mlflow_server, monkeypatch):
    write_project(pytester)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    result = run_pytest("--promptopt", "-n", "2", "--promptopt-experiment", "ci-server", mlflow=True)
    assert result.ret == 1
    client, parent, children = run_tree(mlflow_server, "ci-server")
    result.stdout.fnmatch_lines(
        [
            f"MLflow: {mlflow_server}, experiment 'ci-server', run {parent.info.run_id} ({mlflow_server}/#/experiments/*/runs/{parent.info.run_id})"
        ]
    )
    assert children["capitals"].data.metrics["pass_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert children["capitals"].data.params["suite_file"] == "qa.promptopt.yaml"
    assert_tables(client, children, CASES)
    assert not (pytester.path / "mlflow.db").exists() and not (pytester.path / ".promptopt" / "pending").exists()


# --------------------------------------------------------------------------- faults


def test_server_down_keeps_the_run_and_upload_sends_it_later(pytester, run_pytest, migrated_store, monkeypatch):
    write_project(pytester)
    baseline = run_pytest("--promptopt", "--promptopt-experiment", "later")  # MLflow off
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:pw-{'x' * 12}@127.0.0.1:{free_port()}")  # nothing listens
    started = time.monotonic()
    result = run_pytest("--promptopt", "--promptopt-experiment", "later", mlflow=True)
    assert time.monotonic() - started < 60  # short HTTP timeouts, no two-minute retry loop
    assert result.ret == baseline.ret == 1
    assert result.parseoutcomes() == baseline.parseoutcomes() | {"warnings": 1}
    # The MLflow lines end the promptopt summary; the warning follows in pytest's final warnings
    # summary (MLflow logging goes on while the other plugins print their summaries).
    result.stdout.fnmatch_lines(
        [
            "MLflow reporting failed (http://***@127.0.0.1:*",
            "results kept in *.json; send them later with: python -m pytest_promptopt upload *",
            "*PytestWarning: MLflow reporting failed (http://***@127.0.0.1:*)*results kept in*",
        ]
    )
    assert "pw-xxxx" not in result.stdout.str()
    pending = list((pytester.path / ".promptopt" / "pending").glob("*.json"))
    assert len(pending) == 1
    saved = load_report(pending[0])  # the JSON report (it validates) plus where it was going
    assert saved["mlflow"]["experiment"] == "later" and "pw-xxxx" not in pending[0].read_text()
    assert {s["name"]: s["cases"] for s in saved["suites"]} == CASES

    store = pytester.path / "live.db"
    shutil.copy(migrated_store, store)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    sent = subprocess.run(
        [sys.executable, "-m", "pytest_promptopt", "upload", str(pending[0]), "--tracking-uri", sqlite_uri(store)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=pytester.path,
    )
    assert sent.returncode == 0, sent.stderr
    assert "sent; MLflow: sqlite:///" in sent.stdout and not pending[0].exists()
    client, parent, children = run_tree(sqlite_uri(store), "later")
    assert parent.data.tags["promptopt.gates_passed"] == "false" and parent.data.tags["promptopt.exit_status"] == "1"
    assert (
        children["capitals"].data.params["prompt.0.sha256"]
        == hashlib.sha256(b"The capital of {{country}} is {{capital}}.").hexdigest()
    )
    assert_tables(client, children, CASES)


SECRET_SUITE = """
description: secrets
providers:
  - id: acme/scripted
    config: {client_secret: hunter2-client-secret, temperature: 0}
    transform: output.trim()
prompts: ["Forward this: {{note}}"]
tests:
  - vars: {note: "the token is tok-9f8e7d6c5b4a3921"}
    assert: [{type: contains, value: token}]
"""


def test_secrets_never_reach_params_tags_or_artifacts(pytester, run_pytest, migrated_store, monkeypatch):
    monkeypatch.setenv("ACME_SERVICE_TOKEN", "tok-9f8e7d6c5b4a3921")
    pytester.makeconftest(
        """
        from pytest_promptopt import FakeModel

        def pytest_promptopt_make_model(spec):
            if spec.id == "acme/scripted":
                return FakeModel(lambda request: request.prompt, name="acme/scripted")
        """
    )
    pytester.makefile(".promptopt.yaml", secret=SECRET_SUITE)
    shutil.copy(migrated_store, pytester.path / "mlflow.db")
    result = run_pytest("--promptopt", "--promptopt-experiment", "secrets", mlflow=True)
    assert result.ret == 0
    client, parent, children = run_tree(sqlite_uri(pytester.path / "mlflow.db"), "secrets")
    child = children["secrets"]
    assert child.data.params["model_params.acme_scripted"] == '{"client_secret": "***", "temperature": 0}'
    assert child.data.params["provider_transform.acme_scripted"] == "output.trim()"
    [row] = case_table(client, child.info.run_id).values()
    assert row["output"] == "Forward this: the token is ***"
    # Nothing anywhere in the store (database and artifact files) holds either secret.
    stored = [pytester.path / "mlflow.db", *(p for p in (pytester.path / "mlruns").rglob("*") if p.is_file())]
    assert any(p.name == "secret.promptopt.yaml" for p in stored)
    for path in stored:
        data = path.read_bytes()
        assert b"hunter2" not in data and b"9f8e7d6c5b4a3921" not in data, path


# --------------------------------------------------------------------------- off, and settings


def test_a_suite_runs_params_name_each_provider_transform_of_a_model():
    """Two providers on one model name (ids alike, no labels) may transform differently, or one
    not at all: the param lists each once (null: none) instead of showing the first alone."""
    from pytest_promptopt.mlflow.layout import suite_params
    from pytest_promptopt.records import CaseResult
    from pytest_promptopt.suite_info import SuiteInfo
    from pytest_promptopt.summary import SuiteSummary

    def results(*transforms):
        return [
            CaseResult(case_id=str(i), name=str(i), model="echo", provider_transform=t)
            for i, t in enumerate(transforms)
        ]

    def params(*transforms):
        summary = SuiteSummary(SuiteInfo("s", "s", "s.yaml"), results(*transforms), [], ["echo"])
        return {k: v for k, v in suite_params(summary, {}).items() if k.startswith("provider_transform")}

    assert params(None, None) == {}
    assert params("output.trim()", "output.trim()") == {"provider_transform.echo": "output.trim()"}
    assert params("output.trim()", None, "output + '!'") == {
        "provider_transform.echo": '["output.trim()", null, "output + \'!\'"]'
    }


def test_no_mlflow_writes_nothing_and_imports_nothing(pytester, run_pytest):
    write_project(pytester)
    pytester.makeconftest(
        "import sys\n"
        "def pytest_unconfigure(config):\n"
        "    open('mlflow-loaded.txt', 'w').write(str('mlflow' in sys.modules))\n"
    )
    result = run_pytest("--promptopt", "--promptopt-no-mlflow", mlflow=True, subprocess=True)  # a fresh interpreter
    assert result.ret == 1 and "MLflow" not in result.stdout.str()
    assert (pytester.path / "mlflow-loaded.txt").read_text() == "False"
    assert not {"mlflow.db", "mlruns"} & {p.name for p in pytester.path.iterdir()}
    assert not (pytester.path / ".promptopt" / "pending").exists()


def test_settings_precedence_and_bad_values_name_the_option(pytester, monkeypatch):
    from pytest_promptopt.session import session_key

    def mlflow_settings(*args: str) -> Any:
        return pytester.parseconfigure("--promptopt", *args).stash[session_key].settings.mlflow

    default = mlflow_settings()
    assert default.tracking_uri == f"sqlite:///{pytester.path.as_posix()}/mlflow.db" and default.local_store
    assert default.experiment == pytester.path.name
    pytester.makeini("[pytest]\npromptopt_mlflow_uri = sqlite:///from-ini.db\npromptopt_experiment = from-ini\n")
    assert (mlflow_settings().tracking_uri, mlflow_settings().experiment) == ("sqlite:///from-ini.db", "from-ini")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_settings().tracking_uri == "http://127.0.0.1:5000"  # the environment beats the ini
    assert mlflow_settings("--promptopt-mlflow-uri", "databricks").tracking_uri == "databricks"  # the option beats both
    assert mlflow_settings("--promptopt-no-mlflow") is None
    assert mlflow_settings("-o", "promptopt_no_mlflow=true") is None

    for args, message in [
        (
            ["--promptopt-mlflow-uri", "just/a/path"],
            "--promptopt-mlflow-uri (ini: promptopt_mlflow_uri): 'just/a/path' is not a tracking URI",
        ),
        (
            ["--promptopt-experiment", " "],
            "--promptopt-experiment (ini: promptopt_experiment): the experiment name must not be empty",
        ),
        (
            ["-o", "promptopt_no_mlflow=maybe"],
            "--promptopt-no-mlflow (ini: promptopt_no_mlflow): expected true or false",
        ),
    ]:
        with pytest.raises(pytest.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
            mlflow_settings(*args)


def test_redact_text_masks_secret_keys_in_yaml_and_json():
    from pytest_promptopt.redact import redact_text

    text = 'config: {client_secret: abc, max_tokens: 5}\npassword: "p w" # note\n"auth_token": "x1"\nvalue: Paris\n'
    assert (
        redact_text(text)
        == 'config: {client_secret: ***, max_tokens: 5}\npassword: *** # note\n"auth_token": ***\nvalue: Paris\n'
    )


def test_url_credentials_are_masked_up_to_the_last_at_before_the_host():
    from pytest_promptopt.mlflow.client import safe_text, safe_uri
    from pytest_promptopt.redact import mask_credentials

    # MLflow (requests) accepts a password with an unencoded `@` and logs in with all of it
    assert safe_uri("http://carol:Carol@Pw-55667788@127.0.0.1:5601") == "http://***@127.0.0.1:5601"
    line = "MLflow: http://carol:Carol@Pw-55667788@127.0.0.1:5601, experiment 'x' (http://c:C@P@h:1/#/runs/1)"
    assert safe_text(line) == "MLflow: http://***@127.0.0.1:5601, experiment 'x' (http://***@h:1/#/runs/1)"
    # an `@` after the host (a path, an alias, a mail address) or without `://` is not a credential
    for text in ("https://h:1/a@b", "sqlite:///data/a@b.db", "prompts:/greet@prod", "ask ops@example.com"):
        assert mask_credentials(text) == text
    assert mask_credentials("postgresql://u:p@db:5432/mlflow") == "postgresql://***@db:5432/mlflow"


def test_authorization_values_are_masked_and_the_scheme_kept():
    from pytest_promptopt.mlflow.client import safe_text
    from pytest_promptopt.redact import mask_credentials

    # a server that echoes the header it got (base64 of admin:AdminPw-Zq81xK77vv)
    body = "401 != 200. Response body: 'missing or wrong bearer token (got Authorization: Basic YWRtaW46QWRtaW5Qdy1acTgxeEs3N3Z2)'"
    assert (
        safe_text(body) == "401 != 200. Response body: 'missing or wrong bearer token (got Authorization: Basic ***)'"
    )
    for text, masked in [
        (
            "{'Authorization': 'Bearer sk-live-0123456789', 'Accept': '*/*'}",
            "{'Authorization': 'Bearer ***', 'Accept': '*/*'}",
        ),
        ('"authorization": "tok_9f8e7d6c5b4a"', '"authorization": "***"'),
        ("Proxy-Authorization: Digest username=x", "Proxy-Authorization: Digest ***"),
        ("sent bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", "sent bearer ***"),
        ("Basic dXNlcjpwYXNzd29yZA== is not accepted", "Basic *** is not accepted"),
    ]:
        assert mask_credentials(text) == masked
    # prose stays: no token after the scheme, a short value after the header's name
    for text in (
        "Basic questions about Bearer tokens",
        "authorization: the user lacks it",
        "Authorization header absent",
    ):
        assert mask_credentials(text) == text


def test_the_session_runs_description_is_short_and_its_table_an_artifact():
    from pytest_promptopt.gates import Gate
    from pytest_promptopt.mlflow.layout import NOTE_LINES, SessionMeta, parent_note, suite_metrics, suite_summary_table
    from pytest_promptopt.records import CaseResult
    from pytest_promptopt.suite_info import SuiteInfo
    from pytest_promptopt.summary import summarize

    gated = SuiteInfo(id="qa.yaml", name="qa", file="qa.yaml", gates=(Gate("pass_rate", 0.9),))
    plain = SuiteInfo(id="py", name="py|suite", file="test_py.py", kind="python")
    run = summarize(
        [
            (gated, CaseResult("a", "a", passed=True)),
            (gated, CaseResult("b", "b", passed=False)),
            (gated, CaseResult("c", "c", error="model error")),
            (plain, CaseResult("d", "d", passed=True)),
        ]
    )
    assert parent_note(run).splitlines() == [
        "**GATES FAILED**: 2 suites, 4 cases, pass rate 66.7% (2 passed, 1 failed, 1 error)",
        "",
        "- qa: pass_rate = 0.500 < 0.9",
        "",
        "Per-suite table: `summary.md`; every case: `promptopt-report.json` (artifacts)",
    ]
    assert suite_summary_table(run).splitlines()[2:] == [
        "| suite | model | cases | passed | failed | errors | pass rate | gates |",
        "|---|---|---|---|---|---|---|---|",
        "| py\\|suite |  | 1 | 1 | 0 | 0 | 100.0% | none |",
        "| qa |  | 3 | 1 | 1 | 1 | 50.0% | pass_rate = 0.500 < 0.9: **FAILED** |",
    ]
    # A session pytest did not finish (Ctrl-C, an internal error) says so, whatever its gates.
    crashed, interrupted = SessionMeta(0, 0, exit_status=3), SessionMeta(0, 0, exit_status=2)
    assert (
        parent_note(run, crashed.incomplete)
        .splitlines()[0]
        .startswith("**INCOMPLETE (pytest exit status 3: internal error; only the cases that ran)**: 2 suites")
    )
    assert suite_summary_table(run, interrupted.incomplete).startswith(
        "# promptopt session: INCOMPLETE (pytest exit status 2: interrupted"
    )
    assert SessionMeta(0, 0, exit_status=1, stopped_early=True).incomplete == "pytest stopped at -x / --maxfail"
    assert SessionMeta(0, 0, exit_status=1).incomplete is None and SessionMeta(0, 0).incomplete is None
    # A strict gate shows the bound it read, not an inequality the estimate does not satisfy.
    strict = SuiteInfo(id="s", name="s", file="s.yaml", gates=(Gate("pass_rate", 0.5, "strict"),))
    both = summarize([(strict, CaseResult("a", "a", passed=True)), (strict, CaseResult("b", "b", passed=True))])
    assert "pass_rate = 1.000, 95% lower bound 0.342 < 0.5 (strict): **FAILED**" in suite_summary_table(both)
    assert "- s: pass_rate = 1.000, 95% lower bound 0.342 < 0.5 (strict)" in parent_note(both).splitlines()
    assert suite_metrics(both.suites[0])["gate.pass_rate"] == 0.3424  # what the rule compared, not the estimate
    # Many failed gates: the description lists a few; the table has every suite.
    many = summarize(
        [
            (SuiteInfo(id=f"s{i}", name=f"s{i}", file="f", gates=(Gate("pass_rate", 1.0),)), CaseResult("a", "a"))
            for i in range(25)
        ]
    )
    lines = parent_note(many).splitlines()
    assert lines[0].startswith("**GATES FAILED**: 25 suites") and len(lines) == 4 + NOTE_LINES + 1
    assert (
        lines[-3] == f"- ... {25 - NOTE_LINES} more"
        and len(re.findall(r"\n\| s\d+ \|", suite_summary_table(many))) == 25
    )


def test_a_session_stopped_at_maxfail_is_incomplete_and_writes_no_baseline(pytester, run_pytest, migrated_store):
    # -x stops pytest after the first failure with exit status 1, as a full failing run ends:
    # the session must still say it holds only some cases.
    pytester.makefile(
        ".promptopt.yaml",
        s="prompts: ['{{q}}']\nproviders: [echo]\n"
        "tests: [{vars: {q: a}, assert: [{type: equals, value: b}]}, {vars: {q: c}}, {vars: {q: d}}]\n",
    )
    shutil.copy(migrated_store, pytester.path / "mlflow.db")
    result = run_pytest(
        "--promptopt", "-x", "--promptopt-update-baseline", "--promptopt-baseline", "base.json", mlflow=True
    )
    result.assert_outcomes(failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*baseline not written to */base.json: pytest did not run the whole session*"])
    assert not (pytester.path / "base.json").exists()
    _, parent, children = run_tree(sqlite_uri(pytester.path / "mlflow.db"), pytester.path.name)
    tags = parent.data.tags
    assert tags["promptopt.complete"] == "false" and tags["promptopt.exit_status"] == "1"
    assert tags["mlflow.note.content"].startswith("**INCOMPLETE (pytest stopped at -x / --maxfail;")
    # its suite run too: the run lists show suite runs on their own
    [child] = children.values()
    assert child.data.tags["promptopt.complete"] == "false"
    assert child.data.tags["mlflow.note.content"].startswith("INCOMPLETE (pytest stopped at -x / --maxfail): pass rate")


def test_the_html_report_is_an_artifact_of_the_session_run(pytester, run_pytest, migrated_store):
    pytest.importorskip("plotly", reason="the html extra (plotly) is not installed")
    write_project(pytester)
    shutil.copy(migrated_store, pytester.path / "mlflow.db")
    result = run_pytest("--promptopt", "--promptopt-html", "out/promptopt.html", mlflow=True)
    assert result.ret == 1
    client, parent, _ = run_tree(sqlite_uri(pytester.path / "mlflow.db"), pytester.path.name)
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id)) == [
        "promptopt-report.json",
        "promptopt.html",
        "summary.md",
    ]
    logged = Path(client.download_artifacts(parent.info.run_id, "promptopt.html", str(pytester.path / "downloaded")))
    assert logged.read_bytes() == (pytester.path / "out" / "promptopt.html").read_bytes()


def test_a_second_run_does_not_collect_the_suite_copies_mlflow_stored(pytester, run_pytest):
    pytester.makefile(".promptopt.yaml", qa=QA)
    run_pytest("--promptopt", mlflow=True)
    assert list((pytester.path / "mlruns").rglob("qa.promptopt.yaml")), "the suite file is logged as an artifact"
    second = run_pytest("--promptopt", "--collect-only", "-q", mlflow=True)
    collected = [line for line in second.stdout.lines if "::" in line]
    assert len(collected) == 3 and all(line.startswith("qa.promptopt.yaml::") for line in collected)
