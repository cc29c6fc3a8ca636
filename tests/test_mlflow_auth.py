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
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ECHO_SUITE
from test_mlflow import migrated_store, offline_mlflow  # noqa: F401  (fixtures)
from test_mlflow_faults import CREATE_RUN, Proxy, mlflow_server, pending_files

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
    with Proxy(server, credentials=CREDENTIALS, hold=False) as gate:
        yield gate


def with_password(url: str) -> str:
    return url.replace("://", f"://{USER}:{PASSWORD}@", 1)


def one_case_run() -> tuple[Any, Any]:
    """A session of one passing case, and its metadata."""
    from pytest_promptopt.mlflow.layout import SessionMeta
    from pytest_promptopt.records import CaseResult
    from pytest_promptopt.suite_info import SuiteInfo
    from pytest_promptopt.summary import summarize

    info = SuiteInfo(id="s.yaml", name="s", file="s.yaml")
    now = int(time.time() * 1000)
    return summarize([(info, CaseResult("a", "a", passed=True))]), SessionMeta(
        started_ms=now, ended_ms=now, exit_status=0
    )


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


def test_upload_prints_no_credentials_nor_a_run_link_of_mlflows_own(
    tmp_path: Path, proxy: Proxy, capsys: pytest.CaptureFixture[str]
) -> None:
    """MLflow prints "View run ... at: <tracking URI>" when a run ends, credentials included; a
    file not sent says why in one line, as a session does. (`python -m pytest_promptopt upload`,
    in this process: mlflow is imported already.)"""
    from pytest_promptopt.__main__ import main
    from pytest_promptopt.mlflow.client import MlflowSettings
    from pytest_promptopt.mlflow.upload import write_pending

    run, meta = one_case_run()
    target = MlflowSettings(proxy.url, "uploaded", tmp_path / "pending")
    pending = write_pending(target.pending_dir, run, meta, target)
    port = proxy.server_address[1]
    wrong = proxy.url.replace("://", f"://{USER}:wrong-password@")
    assert main(["upload", str(pending), "--tracking-uri", wrong]) == 1 and pending.exists()
    refused = capsys.readouterr()
    assert refused.err == (
        f"{pending}: not sent: http://***@127.0.0.1:{port}: the tracking server refused the credentials (HTTP 401: "
        "'missing or wrong credentials (got Authorization: Basic ***)'): set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN\n"
    )
    assert main(["upload", str(pending), "--tracking-uri", with_password(proxy.url)]) == 0
    sent = capsys.readouterr()
    assert "View run" not in sent.out and PASSWORD not in sent.out + sent.err
    assert sent.out.startswith(f"{pending}: sent; MLflow: http://***@127.0.0.1:{port}, ")


@pytest.mark.parametrize("fault", ["no credentials", "no permission", "hung up"])
def test_a_server_refusing_or_hanging_up_says_what_to_fix(
    tmp_path: Path, server: str, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a session reports (and keeps in its pending file) when the server answers 401, 403
    (here to `runs/create`, as MLflow's basic-auth app answers a user with READ permission), or
    hangs up mid-request."""
    from pytest_promptopt.mlflow.client import MlflowSettings
    from pytest_promptopt.mlflow.upload import report_run

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    run, meta = one_case_run()
    with Proxy(server, credentials=CREDENTIALS, refused=(CREATE_RUN,), hold=False) as proxy:
        port = proxy.server_address[1]
        uri = proxy.url if fault == "no credentials" else with_password(proxy.url)
        if fault == "hung up":
            proxy.created.set()
            proxy.dead = True
        outcome = report_run(run, meta, MlflowSettings(uri, f"refused-{port}", tmp_path / "pending"))
    where = f"MLflow reporting failed (http://{'' if fault == 'no credentials' else '***@'}127.0.0.1:{port}): "
    assert outcome.error is not None and outcome.pending is not None
    error = outcome.error.removeprefix(where)
    if fault == "no credentials":
        assert error == (
            "the tracking server refused the credentials (HTTP 401: 'missing or wrong credentials (got "
            "Authorization: None)'): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
        )
    elif fault == "no permission":
        assert error == (
            f"the tracking server's user lacks permission on experiment 'refused-{port}' (HTTP 403: 'Permission "
            "denied'): ask an admin of the server to grant it"
        )
    else:  # RemoteDisconnected, or a reset when the request's body was left unread
        assert error in (
            "cannot reach the tracking server: Remote end closed connection without response",
            "cannot reach the tracking server: Connection reset by peer",
        )


def test_xdist_workers_resolve_registry_prompts_with_the_uris_credentials_which_stay_out_of_the_file(
    pytester: pytest.Pytester, server: str, proxy: Proxy
) -> None:
    """The session's resolutions file (mlflow/prompts.py) records the URI without credentials;
    the workers, which resolve `Prompt.from_registry` at import, get them from the environment."""
    from mlflow import MlflowClient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MlflowClient(tracking_uri=server).register_prompt("auth-greet", "Hi {{name}}!")
    pytester.makepyfile(
        test_auth=f"""
        import os, stat
        from pathlib import Path
        import pytest
        from pytest_promptopt import Prompt, equals

        PROMPT = Prompt.from_registry("prompts:/auth-greet/1")  # at import, in a worker: through the proxy

        def test_the_resolutions_file_holds_no_credentials():
            path = Path(os.environ["PYTEST_PROMPTOPT_REGISTRY"])
            text = path.read_text()
            assert {PASSWORD!r} not in text and {USER!r} not in text and "http://127.0.0.1:" in text
            assert stat.S_IMODE(path.stat().st_mode) == 0o600

        @pytest.mark.promptopt(suite="py-greet", model="echo")
        def test_pinned(prompt_model, prompt_check):
            prompt_check(prompt_model(PROMPT.render(name="Eve")), equals("Hi Eve!"))
        """
    )
    uri = with_password(proxy.url)
    result = pytester.runpytest_subprocess("--promptopt", "--promptopt-mlflow-uri", uri, "-n", "2", "-p", "no:randomly")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=2)
    assert PASSWORD not in result.stdout.str() + result.stderr.str()
    assert not (pytester.path / ".promptopt" / "registry").exists()  # deleted with the session
