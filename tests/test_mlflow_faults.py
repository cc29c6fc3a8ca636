"""MLflow reporting under faults and interruptions, and the pieces that make it fast: the writer
process beside the test loop, batched calls, the store template.

Faults come from real MLflow: a real `mlflow server` behind a loopback pass-through proxy that
kills it, or holds a request, as soon as the session run exists; a store in a folder mounted
read-only; a directory where the database should be.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ECHO_SUITE, MODES, PYTEST
from test_mlflow import free_port, migrated_store, offline_mlflow, sqlite_uri  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(300)

QA = ECHO_SUITE + "gates:\n  pass_rate: 0.9\n"  # 3 cases; the gate fails, so pytest exits 1
CREATE_RUN = "/api/2.0/mlflow/runs/create"


# --------------------------------------------------------------------------- a real server, a proxy


@contextlib.contextmanager
def mlflow_server(root: Path, store: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`mlflow server` over the SQLite `store` (kept: a second server can reopen it), artifacts
    under `root/artifacts`; its URL and process (its own process group)."""
    port = free_port()
    log = (root / f"server-{port}.log").open("wb")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server", "--backend-store-uri", sqlite_uri(store)),
            *("--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1"),
            *("--port", str(port), "--workers", "1"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=root,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{log.name}")
            time.sleep(0.25)
        yield url, process
    finally:
        kill(process)
        log.close()


def kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


class Proxy(http.server.ThreadingHTTPServer):
    """A pass-through HTTP proxy to `upstream` that calls `after_create()` once the first run
    exists (the session run: its `runs/create` answer is already on its way back), then either
    goes dead (`dead=True`: the connection is dropped, as a killed server's) or holds the next
    request until `release` is set (`held` says one is waiting).

    With `hold=False` it holds nothing. With `credentials` (an Authorization header's value), it
    is a server that asks for them, as MLflow's basic-auth app or a token gateway in front of a
    server: any other request gets 401, its answer quoting the header it got (a badly behaved
    server); requests whose path starts with one of `refused` get 403, as the basic-auth app
    answers a user without permission."""

    daemon_threads = True

    def __init__(
        self,
        upstream: str,
        after_create: Callable[[], None] = lambda: None,
        *,
        hold: bool = True,
        credentials: str | None = None,
        refused: tuple[str, ...] = (),
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream.removeprefix("http://")
        self.after_create = after_create
        self.credentials = credentials
        self.refused = refused
        self.created = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.dead = False
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> Proxy:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a dropped connection (dead=True) is the point, not news


class _Forward(http.server.BaseHTTPRequestHandler):
    server: Proxy

    def log_message(self, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        proxy = self.server
        proxy.requests.append(f"{self.command} {self.path}")
        if proxy.created.is_set():
            if proxy.dead:
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if not proxy.held.is_set():
                proxy.held.set()
                proxy.release.wait(120)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        given = self.headers.get("Authorization")
        if proxy.credentials is not None and given != proxy.credentials:
            return self._answer(401, f"missing or wrong credentials (got Authorization: {given})")
        if self.path.startswith(proxy.refused):
            return self._answer(403, "Permission denied")
        upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        upstream.request(self.command, self.path, body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        upstream.close()
        if self.path.startswith(CREATE_RUN) and not proxy.created.is_set():
            proxy.created.set()
            proxy.after_create()

    def _answer(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


def pytest_command(path: Path, *args: str) -> list[str]:
    return [*PYTEST, "-p", "no:cacheprovider", "--promptopt", *args]


def start_pytest(path: Path, *args: str) -> subprocess.Popen[str]:
    """`pytest --promptopt` in `path`, in a process group of its own (a signal sent to it reaches
    only this run), its output merged into stdout."""
    return subprocess.Popen(
        pytest_command(path, *args),
        cwd=path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def upload(path: Path, uri: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_promptopt", "upload", str(path), "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=180,
    )


def session_runs(uri: str, experiment: str) -> dict[str, Any]:
    """The session (parent) runs of `experiment`, by run id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], filter_string="tags.`promptopt.session` = 'true'")
    return {r.info.run_id: r for r in runs}


def pending_files(root: Path) -> list[Path]:
    return sorted((root / ".promptopt" / "pending").glob("*.json"))


# --------------------------------------------------------------------------- a server killed mid-run


def test_a_server_killed_after_the_session_run_exists_is_marked_failed_by_upload(
    pytester: pytest.Pytester, migrated_store: Path, tmp_path: Path
) -> None:
    pytester.makefile(".promptopt.yaml", qa=QA)
    root = tmp_path / "server"
    root.mkdir()
    store = root / "server.db"
    shutil.copy(migrated_store, store)
    with mlflow_server(root, store) as (url, server):
        with Proxy(url, after_create=lambda: kill(server)) as proxy:
            proxy.dead = True
            started = time.monotonic()
            result = pytester.runpytest_subprocess(
                "--promptopt", "--promptopt-mlflow-uri", proxy.url, "--promptopt-experiment", "cut"
            )
            took = time.monotonic() - started
    assert result.ret == 1  # the gate's verdict, as without MLflow
    assert took < 120, took  # short HTTP limits, not MLflow's two minutes of retries per call
    result.stdout.fnmatch_lines(
        ["MLflow reporting failed (http://127.0.0.1:*): *", "results kept in *.json; send them later with: *"]
    )
    [pending] = pending_files(pytester.path)
    cut = json.loads(pending.read_text())["mlflow"]["session_run_id"]
    [(run_id, run)] = session_runs(sqlite_uri(store), "cut").items()
    assert run_id == cut and run.info.status == "RUNNING"  # the server died before anything else arrived

    with mlflow_server(root, store) as (url, _):  # the server is back, on the same store
        sent = upload(pending, url)
        assert sent.returncode == 0, sent.stderr
        assert not pending.exists()
        runs = session_runs(url, "cut")
    assert len(runs) == 2 and runs[cut].info.status == "FAILED"
    [new] = [r for r in runs.values() if r.info.run_id != cut]
    assert new.info.status == "FINISHED" and runs[cut].data.tags["promptopt.uploaded_as"] == new.info.run_id
    assert new.data.metrics["cases"] == 3


def test_upload_does_not_log_twice_a_run_that_finished(
    tmp_path: Path, migrated_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process ended after the run was logged, before it removed the pending file."""
    from pytest_promptopt.mlflow.client import MlflowSettings
    from pytest_promptopt.mlflow.layout import SessionMeta
    from pytest_promptopt.mlflow.runs import log_run
    from pytest_promptopt.mlflow.upload import record_run_id, upload_pending, write_pending
    from pytest_promptopt.records import CaseResult
    from pytest_promptopt.suite_info import SuiteInfo
    from pytest_promptopt.summary import summarize

    store = tmp_path / "mlflow.db"
    shutil.copy(migrated_store, store)
    target = MlflowSettings(sqlite_uri(store), "twice", tmp_path / "pending")
    info = SuiteInfo(id="s.yaml", name="s", file="s.yaml")
    run = summarize([(info, CaseResult("a", "a", passed=True)), (info, CaseResult("b", "b", passed=False))])
    meta = SessionMeta(started_ms=int(time.time() * 1000), ended_ms=int(time.time() * 1000), exit_status=1)
    pending = write_pending(target.pending_dir, run, meta, target)
    logged = log_run(run, meta, target.tracking_uri, target.experiment, on_parent=lambda r: record_run_id(pending, r))
    assert json.loads(pending.read_text())["mlflow"]["session_run_id"] == logged.parent_run_id

    again = upload_pending(pending)
    assert (again.parent_run_id, again.child_run_ids) == (logged.parent_run_id, logged.child_run_ids)
    assert list(session_runs(target.tracking_uri, "twice")) == [logged.parent_run_id]


# --------------------------------------------------------------------------- interrupted while logging


@pytest.fixture(scope="module")
def signal_server(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path) -> Iterator[str]:
    """One `mlflow server` for both signals (each test logs to an experiment of its own)."""
    root = tmp_path_factory.mktemp("server")
    store = root / "server.db"
    shutil.copy(migrated_store, store)
    with mlflow_server(root, store) as (url, _):
        yield url


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_mlflow_logs_leaves_a_finished_run_or_a_pending_file_upload_sends(
    pytester: pytest.Pytester, signal_server: str, sig: int
) -> None:
    """SIGINT (Ctrl-C): pytest stops the writer, which marks its run FAILED; the pending file is
    kept and `upload` sends it. SIGTERM kills pytest at once; the writer, in its own process
    session, finishes the run and removes the file. Either way exactly one session run is
    FINISHED in the end."""
    pytester.makefile(".promptopt.yaml", qa=QA)
    url, experiment = signal_server, f"sig-{signal.Signals(sig).name}"
    with Proxy(url) as proxy:
        process = start_pytest(pytester.path, "--promptopt-mlflow-uri", proxy.url, "--promptopt-experiment", experiment)
        try:
            assert proxy.held.wait(180), proxy.requests  # the session run exists; the writer waits
            os.kill(process.pid, sig)
            out, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        proxy.release.set()
        if sig == signal.SIGTERM:  # pytest is gone; the writer finishes the run and removes the file
            assert process.returncode == -signal.SIGTERM
            deadline = time.monotonic() + 120
            while pending_files(pytester.path) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not pending_files(pytester.path)
        else:
            assert process.returncode == 2, out  # interrupted
            assert "MLflow reporting interrupted (http://127.0.0.1:" in out and "results kept in" in out, out
            [pending] = pending_files(pytester.path)
            cut = json.loads(pending.read_text())["mlflow"]["session_run_id"]
            assert session_runs(url, experiment)[cut].info.status == "FAILED"  # the writer marked it when stopped
            sent = upload(pending, url)
            assert sent.returncode == 0, sent.stderr
        runs = session_runs(url, experiment)
    finished = [r for r in runs.values() if r.info.status == "FINISHED"]
    assert len(finished) == 1 and finished[0].data.metrics["cases"] == 3
    assert all(r.info.status == "FAILED" for r in runs.values() if r not in finished)


BLOCKING_TEST = """
import pathlib, time
import pytest
from pytest_promptopt import FakeModel, contains

@pytest.mark.promptopt(suite="blocking", model=FakeModel({"q": "a"}, name="scripted"))
def test_blocks(prompt_model, prompt_check):
    pathlib.Path("started").write_text("yes")
    time.sleep(120)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_during_the_tests_still_logs_the_cases_that_ran(
    pytester: pytest.Pytester, migrated_store: Path, sig: int
) -> None:
    """SIGTERM (`timeout`, `docker stop`, a cancelled CI job) stops the run as Ctrl-C does: the
    cases that finished are reported and logged (before, the process ended at once: nothing)."""
    pytester.makefile(".promptopt.yaml", qa=QA)  # collected first: its 3 cases run, then the blocking test
    pytester.makepyfile(test_block=BLOCKING_TEST)
    shutil.copy(migrated_store, pytester.path / "mlflow.db")
    process = start_pytest(pytester.path)
    try:
        deadline = time.monotonic() + 180
        while not (pytester.path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(process.pid, sig)
        out, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2, out  # interrupted
    assert "MLflow: sqlite:///" in out, out
    if sig == signal.SIGTERM:
        assert "KeyboardInterrupt: SIGTERM" in out, out
    [run] = session_runs(sqlite_uri(pytester.path / "mlflow.db"), pytester.path.name).values()
    assert run.info.status == "FINISHED" and run.data.metrics["cases"] == 3
    assert not pending_files(pytester.path)


# --------------------------------------------------------------------------- stores MLflow cannot write


def _can_mount_read_only(folder: Path) -> bool:
    if sys.platform != "linux" or shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind -o ro '{folder}' '{folder}' && ! touch '{folder}/probe'"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.parametrize("existing", [True, False], ids=["existing-store", "new-store"])
def test_a_store_in_a_read_only_folder_fails_in_seconds_and_the_run_is_kept(
    pytester: pytest.Pytester, migrated_store: Path, existing: bool
) -> None:
    """The folder is mounted read-only in a private mount namespace (`unshare -m`, as root:
    file permissions do not stop root, a read-only mount does). MLflow alone spends ~100 s
    retrying a new database there."""
    pytester.makefile(".promptopt.yaml", qa=QA)
    folder = pytester.path / "store"
    folder.mkdir()
    if not _can_mount_read_only(folder):
        pytest.skip("needs root and `unshare -m` to mount a folder read-only")
    if existing:
        shutil.copy(migrated_store, folder / "mlflow.db")
    command = " ".join(
        [f"mount --bind -o ro '{folder}' '{folder}' &&", "exec", *pytest_command(pytester.path)]
        + ["--promptopt-mlflow-uri", f"'sqlite:///{folder}/mlflow.db'"]
    )
    started = time.monotonic()
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", command], cwd=pytester.path, capture_output=True, text=True, timeout=240
    )
    took = time.monotonic() - started
    assert done.returncode == 1, done.stdout[-3000:]  # the gate's verdict
    assert took < 60, took
    message = "the MLflow store *mlflow.db is read-only; *" if existing else "the folder *store of the MLflow store *"
    pytest.LineMatcher(done.stdout.splitlines()).fnmatch_lines(
        [f"MLflow reporting failed (sqlite:///*): {message}", "results kept in *.json; *"]
    )
    [pending] = pending_files(pytester.path)
    writable = pytester.path / "writable.db"
    sent = upload(pending, sqlite_uri(writable))
    assert sent.returncode == 0, sent.stderr
    assert [r.data.metrics["cases"] for r in session_runs(sqlite_uri(writable), pytester.path.name).values()] == [3]


def test_a_directory_where_the_store_should_be_fails_at_once(pytester: pytest.Pytester) -> None:
    pytester.makefile(".promptopt.yaml", qa=QA)
    (pytester.path / "mlflow.db").mkdir()  # the default store's path
    started = time.monotonic()
    result = pytester.runpytest_subprocess("--promptopt")
    assert result.ret == 1 and time.monotonic() - started < 60
    result.stdout.fnmatch_lines(
        [
            "MLflow reporting failed (sqlite:///*mlflow.db): the MLflow store *mlflow.db is a directory, not a SQLite "
            "database; give a writable store *",
            "results kept in *",
        ]
    )
    assert len(pending_files(pytester.path)) == 1


# --------------------------------------------------------------------------- the writer process


@pytest.mark.parametrize("mode", list(MODES.values()), ids=list(MODES))
def test_the_session_logs_through_the_writer_and_never_imports_mlflow(
    pytester: pytest.Pytester, migrated_store: Path, mode: list[str]
) -> None:
    pytester.makefile(".promptopt.yaml", qa=QA)
    pytester.makeconftest(
        "import sys\n"
        "def pytest_unconfigure(config):\n"
        "    open('mlflow-loaded.txt', 'w').write(str('mlflow' in sys.modules))\n"
    )
    shutil.copy(migrated_store, pytester.path / "mlflow.db")
    result = pytester.runpytest_subprocess("--promptopt", *mode)
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"MLflow: sqlite:///*mlflow.db, experiment '{pytester.path.name}', run *"])
    assert (pytester.path / "mlflow-loaded.txt").read_text() == "False"  # the writer imported it, not pytest
    [run] = session_runs(sqlite_uri(pytester.path / "mlflow.db"), pytester.path.name).values()
    assert run.info.status == "FINISHED" and run.data.metrics["cases"] == 3
    assert not (pytester.path / ".promptopt" / "pending").exists()


SHADOW = (  # stands for a library the writer must not import: says so, then is not there
    "import os, sys\n"
    "with open(os.environ['SHADOW_MARKER'], 'a') as f:\n"
    "    f.write(__name__ + ': ' + ' '.join(sys.argv)[:200] + '\\n')\n"
    "raise ImportError('shadowed by the test')\n"
)


@pytest.mark.parametrize("store", ["warm", "fresh"])
def test_the_writer_logs_runs_traces_and_tables_without_pandas_numpy_or_pyspark(
    pytester: pytest.Pytester, migrated_store: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    """Importing them was a third of the writer's start (mlflow/writer.py): the whole logging
    path (runs, case table, prompt versions, traces) must work without them, in the session and
    its writer process alike."""
    shadows = pytester.mkdir("shadows")
    for name in ("pandas", "numpy", "pyspark"):
        (shadows / name).mkdir()
        (shadows / name / "__init__.py").write_text(SHADOW)
    marker = pytester.path / "imported.txt"
    monkeypatch.setenv("PYTHONPATH", str(shadows))
    monkeypatch.setenv("SHADOW_MARKER", str(marker))
    pytester.makefile(".promptopt.yaml", qa=QA)
    if store == "warm":
        shutil.copy(migrated_store, pytester.path / "mlflow.db")
    result = pytester.runpytest_subprocess("--promptopt")
    assert result.ret == 1, result.stdout.str()
    assert not marker.exists(), marker.read_text()
    monkeypatch.delenv("PYTHONPATH")
    from mlflow import MlflowClient

    [run] = session_runs(sqlite_uri(pytester.path / "mlflow.db"), pytester.path.name).values()
    assert run.info.status == "FINISHED" and run.data.metrics["cases"] == 3
    client = MlflowClient(tracking_uri=sqlite_uri(pytester.path / "mlflow.db"))
    [child] = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )
    table = json.loads(Path(client.download_artifacts(child.info.run_id, "cases.json", str(pytester.path))).read_text())
    assert len(table["data"]) == 3 and "case_id" in table["columns"]
    assert len(client.search_traces(locations=[run.info.experiment_id], run_id=child.info.run_id)) == 3
    assert not (pytester.path / ".promptopt" / "pending").exists()


def test_an_mlflow_that_cannot_be_imported_is_not_called_missing(tmp_path: Path) -> None:
    (tmp_path / "pydantic").mkdir()  # one of mlflow's own dependencies, broken
    (tmp_path / "pydantic" / "__init__.py").write_text(SHADOW)
    script = (
        "from pytest_promptopt.mlflow.client import MlflowReportError, mlflow_calls\n"
        "try:\n"
        "    with mlflow_calls():\n"
        "        pass\n"
        "except MlflowReportError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "SHADOW_MARKER": str(tmp_path / "imported.txt")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == (
        "mlflow cannot be imported: ImportError: shadowed by the test (or pass --promptopt-no-mlflow)"
    ), done.stderr


def test_an_import_that_fails_while_libraries_are_held_back_starts_over_after() -> None:
    """The writer imports mlflow with pandas and numpy held back; should that import fail (an
    mlflow that needs one of them), its half-imported modules, which decided "no numpy", must not
    be what the writer's next import finds."""
    script = (
        "import sys\n"
        "from pytest_promptopt.mlflow.writer import _holding_back\n"
        "try:\n"
        "    with _holding_back(('pandas', 'numpy', 'pydantic')):\n"  # pydantic: mlflow needs it
        "        import mlflow\n"
        "except ImportError:\n"
        "    pass\n"
        "left = [n for n in sys.modules if n.split('.')[0] == 'mlflow']\n"
        "held = [n for n in ('pandas', 'numpy', 'pydantic') if n in sys.modules and sys.modules[n] is None]\n"
        "import mlflow.types\n"
        "print(left, held, mlflow.types._HAS_NUMPY, hasattr(mlflow.types, 'Schema'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[] [] True True", done.stderr


def test_a_session_without_prompt_tests_writes_no_store(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    assert True\n")
    result = pytester.runpytest_subprocess("--promptopt")
    assert result.ret == 0 and "MLflow" not in result.stdout.str()
    assert not (pytester.path / "mlflow.db").exists() and not (pytester.path / ".promptopt" / "pending").exists()


def test_without_a_writer_process_the_session_logs_itself(
    tmp_path: Path, migrated_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_promptopt.mlflow.client import MlflowSettings
    from pytest_promptopt.mlflow.layout import SessionMeta
    from pytest_promptopt.mlflow.writer import MlflowWriter
    from pytest_promptopt.records import CaseResult
    from pytest_promptopt.suite_info import SuiteInfo
    from pytest_promptopt.summary import summarize

    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here"))
    store = tmp_path / "mlflow.db"
    shutil.copy(migrated_store, store)
    writer = MlflowWriter.spawn()
    writer.begin(MlflowSettings(sqlite_uri(store), "here", tmp_path / "pending"))
    run = summarize([(SuiteInfo(id="s", name="s", file="s.yaml"), CaseResult("a", "a", passed=True))])
    writer.submit(run, SessionMeta(started_ms=0, ended_ms=1, exit_status=0))
    outcome = writer.outcome()
    assert outcome is not None and outcome.logged is not None and outcome.error is None
    assert list(session_runs(sqlite_uri(store), "here")) == [outcome.logged.parent_run_id]
    assert not list((tmp_path / "pending").glob("*.json"))


# --------------------------------------------------------------------------- batched calls, the template


def test_batched_table_is_what_mlflow_log_table_writes(tmp_path: Path, migrated_store: Path) -> None:
    from mlflow import MlflowClient

    from pytest_promptopt.mlflow.client import LOGGED_ARTIFACTS_TAG, BatchedClient

    store = tmp_path / "mlflow.db"
    shutil.copy(migrated_store, store)
    client = MlflowClient(tracking_uri=sqlite_uri(store))
    table = {
        "name": ["a", "b é", None],
        "passed": [True, False, None],
        "score": [1.0, 0.123456789012345, float("nan")],
        "calls": [1, 2, 3],
        "vars": ['{"x": 1}', "{}", "[]"],
    }
    reference = client.create_run("0").info.run_id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's own select_dtypes call warns under pandas 3
        client.log_table(reference, table, "cases.json")
    with BatchedClient(client) as batched:
        ours = batched.create_run("0").info.run_id
        batched.log_table(ours, table, "cases.json")
        batched.log_text(ours, "hello", "sub/hello.txt")
        assert client.list_artifacts(ours) == []  # nothing sent before the run finishes
        batched.set_terminated(ours, "FINISHED")
        assert batched.rows[ours] == {"cases.json": 3}

    def artifact(run_id: str, path: str) -> bytes:
        return Path(client.download_artifacts(run_id, path, str(tmp_path / run_id))).read_bytes()

    assert artifact(ours, "cases.json") == artifact(reference, "cases.json")
    assert artifact(ours, "sub/hello.txt") == b"hello"
    tags = [client.get_run(r).data.tags[LOGGED_ARTIFACTS_TAG] for r in (ours, reference)]
    assert tags[0] == tags[1] == '[{"path": "cases.json", "type": "table"}]'


def test_the_table_file_is_byte_for_byte_what_pandas_writes() -> None:
    """table_file.py writes MLflow's table file without pandas; generated tables of the cell
    kinds a case table holds (and mixes of them) must give pandas' own bytes, or None where it
    leaves the table to pandas."""
    import pandas as pd
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from pytest_promptopt.mlflow.table_file import split_table_json

    text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
    ints = st.one_of(st.integers(-(2**53), 2**53), st.integers(-(2**70), 2**70))
    edges = [0.5, 1e16, 1e16 - 2, 1e-15, 0.9999999999949, 0.15, 2.5e-11, -0.0, 1e15 + 0.3, 123456789012.345678]
    floats = st.one_of(st.floats(), st.sampled_from(edges), st.floats(-1e6, 1e6), ints)
    kinds = {
        "bool": st.one_of(st.none(), st.booleans()),
        "int": st.one_of(st.none(), ints),
        "float": st.one_of(st.none(), floats),
        "str": st.one_of(st.none(), text),
        "mixed": st.one_of(st.none(), st.booleans(), ints, floats, text),
    }

    def column(rows: int) -> Any:
        return st.sampled_from(sorted(kinds)).flatmap(lambda k: st.lists(kinds[k], min_size=rows, max_size=rows))

    compared = []

    @settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.integers(0, 4).flatmap(lambda rows: st.dictionaries(text, column(rows), max_size=4)))
    def same_bytes(table: dict[str, list[Any]]) -> None:
        ours = split_table_json(table)
        compared.append(ours is not None)
        if ours is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frame = pd.DataFrame(dict(table))
            assert ours == frame.to_json(orient="split", index=False, date_format="iso")

    same_bytes()
    assert sum(compared) > 0.8 * len(compared)  # the comparison ran, not the fallback
    assert split_table_json({"text": ["a lone \ud800 surrogate"]}) is None  # pandas raises on it: its call


def test_a_failed_run_drops_what_was_batched(tmp_path: Path, migrated_store: Path) -> None:
    from mlflow import MlflowClient

    from pytest_promptopt.mlflow.client import BatchedClient, log_batch

    store = tmp_path / "mlflow.db"
    shutil.copy(migrated_store, store)
    client = MlflowClient(tracking_uri=sqlite_uri(store))
    with BatchedClient(client) as batched:
        run_id = batched.create_run("0").info.run_id
        log_batch(batched, run_id, metrics={"m": 1.0}, params={"p": "v"})
        batched.log_text(run_id, "x", "x.txt")
        batched.set_terminated(run_id, "FAILED")
    found = client.get_run(run_id)
    assert found.info.status == "FAILED" and found.data.metrics == {} and client.list_artifacts(run_id) == []


def test_many_metrics_and_params_go_in_few_log_batch_calls(tmp_path: Path, migrated_store: Path) -> None:
    from mlflow import MlflowClient

    from pytest_promptopt.mlflow.client import BatchedClient, log_batch

    store = tmp_path / "mlflow.db"
    shutil.copy(migrated_store, store)
    client = MlflowClient(tracking_uri=sqlite_uri(store))
    calls: list[tuple[int, int, int]] = []
    original = client.log_batch

    def counted(run_id: str, metrics: Any = (), params: Any = (), tags: Any = (), **kw: Any) -> Any:
        calls.append((len(metrics), len(params), len(tags)))
        return original(run_id, metrics=metrics, params=params, tags=tags, **kw)

    client.log_batch = counted  # type: ignore[method-assign]
    with BatchedClient(client) as batched:
        run_id = batched.create_run("0").info.run_id
        log_batch(
            batched,
            run_id,
            metrics={f"m{i}": float(i) for i in range(1500)},
            params={f"p{i}": "v" * 10 for i in range(150)},
        )
        batched.set_tag(run_id, "t", "x")
        batched.set_terminated(run_id, "FINISHED")
    # MLflow's limits: 1000 metrics, 100 params, 100 tags and 1000 entities per call
    assert all(m <= 1000 and p <= 100 and t <= 100 and m + p + t <= 1000 for m, p, t in calls)
    assert len(calls) == 3 and sum(c[0] for c in calls) == 1500 and sum(c[1] for c in calls) == 150
    found = client.get_run(run_id).data
    assert len(found.metrics) == 1500 and len(found.params) == 150 and found.tags["t"] == "x"


def test_a_new_store_from_the_template_is_the_store_mlflow_migrates(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from pytest_promptopt.mlflow.store import create_store

    migrated, copied = tmp_path / "migrated.db", tmp_path / "project" / "mlflow.db"
    MlflowClient(tracking_uri=sqlite_uri(migrated)).search_experiments()  # MLflow's own migrations
    assert create_store(copied, tmp_path / "home") is True
    assert create_store(copied, tmp_path / "home") is False  # never replaces a store
    assert [p.name for p in copied.parent.iterdir()] == ["mlflow.db"]  # no partial copy left behind
    client = MlflowClient(tracking_uri=sqlite_uri(copied))
    assert [e.name for e in client.search_experiments()] == ["Default"]  # added when MLflow first opened it

    def clauses(sql: str | None) -> list[str]:
        # The clauses of a CREATE statement in any order: MLflow's migrations recreate some tables
        # (alembic's batch mode) and list their CHECK constraints in an order that differs from one
        # run of the same migrations to the next (seen on `runs`).
        return sorted(line.strip().rstrip(",").strip() for line in (sql or "").split("\n"))

    def schema(path: Path) -> tuple[list[Any], list[Any]]:
        connection = sqlite3.connect(path)
        try:
            rows = connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")
            tables = sorted((kind, name, table, clauses(sql)) for kind, name, table, sql in rows)
            return tables, list(connection.execute("SELECT version_num FROM alembic_version"))
        finally:
            connection.close()

    assert schema(copied) == schema(migrated)
    run = client.create_run(client.create_experiment("x")).info.run_id
    client.log_metric(run, "m", 1.0)
    assert client.get_run(run).data.metrics == {"m": 1.0}
