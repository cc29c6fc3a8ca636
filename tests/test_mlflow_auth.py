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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ECHO_SUITE
from test_mlflow import migrated_store, offline_mlflow  # noqa: F401  (fixtures)
from test_mlflow_faults import Proxy, mlflow_server, pending_files

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
