"""A tracking server that asks for credentials: a real `mlflow server` behind a loopback proxy
that wants `Authorization: Basic ...` (as MLflow's basic-auth app, or a gateway in front of a
server, does), quotes a wrong header back in its 401 answer (a badly behaved server) and can
refuse requests with 403 (tests/test_mlflow_faults.py's `Proxy`).

No credential reaches the terminal, a warning or a pending file, and a server refusing the
credentials or the permission says what to fix.
"""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ECHO_SUITE
from test_mlflow import migrated_store, offline_mlflow  # noqa: F401  (fixtures)
from test_mlflow_faults import Proxy, mlflow_server, pending_files, upload

pytestmark = pytest.mark.timeout(300)

# An unencoded `@` in the password: MLflow (requests) logs in with all of it.
USER, PASSWORD = "carol", "Carol@Pw-55667788"
CREDENTIALS = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path) -> Iterator[str]:  # noqa: F811
    """One `mlflow server` for the module (each test logs to an experiment of its own)."""
    root = tmp_path_factory.mktemp("auth-server")
    store = root / "server.db"
    shutil.copy(migrated_store, store)
    with mlflow_server(root, store) as (url, _):
        yield url


@pytest.fixture
def proxy(server: str) -> Iterator[Proxy]:
    """The server behind a proxy that wants `CREDENTIALS`."""
    with Proxy(server, credentials=CREDENTIALS) as gate:
        yield gate


def with_password(url: str) -> str:
    return url.replace("://", f"://{USER}:{PASSWORD}@", 1)


def test_an_authorization_header_a_server_quotes_back_is_masked_in_the_terminal_warning_and_pending_file(
    pytester: pytest.Pytester,
    run_pytest: Callable[..., pytest.RunResult],
    proxy: Proxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-" + PASSWORD)  # an env secret: scrubbed; its base64 is not
    sent = base64.b64encode(f"{USER}:wrong-{PASSWORD}".encode()).decode()
    pytester.makefile(".promptopt.yaml", qa=ECHO_SUITE)
    result = run_pytest(
        "--promptopt", "--promptopt-mlflow-uri", proxy.url, "--promptopt-experiment", "quoted", mlflow=True
    )
    assert result.ret == 1  # the failing case's verdict, as without MLflow
    result.stdout.fnmatch_lines(
        ["MLflow reporting failed (http://127.0.0.1:*): *(got Authorization: Basic ***)*", "*PytestWarning: MLflow*"]
    )
    [pending] = pending_files(pytester.path)
    for text in (result.stdout.str() + result.stderr.str(), pending.read_text()):
        assert "got Authorization: Basic ***" in text and sent not in text


def test_upload_prints_no_run_link_of_mlflows_own(tmp_path: Path, proxy: Proxy) -> None:
    """MLflow prints "View run ... at: <tracking URI>" when a run ends, credentials included."""
    from pytest_promptopt.mlflow.client import MlflowSettings
    from pytest_promptopt.mlflow.layout import SessionMeta
    from pytest_promptopt.mlflow.upload import write_pending
    from pytest_promptopt.records import CaseResult
    from pytest_promptopt.suite.model import SuiteInfo
    from pytest_promptopt.summary import summarize

    target = MlflowSettings(proxy.url, "uploaded", tmp_path / "pending")
    info = SuiteInfo(id="s.yaml", name="s", file="s.yaml")
    run = summarize([(info, CaseResult("a", "a", passed=True))])
    meta = SessionMeta(started_ms=int(time.time() * 1000), ended_ms=int(time.time() * 1000), exit_status=0)
    pending = write_pending(target.pending_dir, run, meta, target)
    sent = upload(pending, with_password(proxy.url))
    assert sent.returncode == 0, sent.stderr
    assert "View run" not in sent.stdout and PASSWORD not in sent.stdout + sent.stderr
    assert sent.stdout.startswith(f"{pending}: sent; MLflow: http://***@127.0.0.1:{proxy.server_address[1]}, ")
