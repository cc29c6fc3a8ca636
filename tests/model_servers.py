"""Real processes for the serving tests: `python -m pytest_promptopt serve ...` and an `mlflow server`
with its AI Gateway open to a loopback upstream, both stopped (their process groups) at the end."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_promptopt.mlflow.gateway import SERVER_ENV


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    base_url: str  # the first line the command printed
    stdout: queue.Queue[str]  # the lines after it
    log: Path  # its stderr

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def _lines(stream: object, into: queue.Queue[str]) -> None:
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        into.put(raw.decode(errors="replace").rstrip("\n"))


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Stop a process started in its own session; its exit status."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        return process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait(timeout=15)


@contextlib.contextmanager
def served(
    args: Sequence[str], log: Path, *, timeout: float = 120.0, env: dict[str, str] | None = None
) -> Iterator[Served]:
    """`python -m pytest_promptopt <args>` until its first stdout line (the base URL) arrives."""
    err = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest_promptopt", *args],
        stdout=subprocess.PIPE,
        stderr=err,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
    try:
        try:
            first = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no base URL within {timeout} s:\n{log.read_text()[-3000:]}") from None
        yield Served(process, first, lines, log)
    finally:
        if process.poll() is None:
            stop(process)
        err.close()


def _wait_up(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"mlflow server did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)


@contextlib.contextmanager
def mlflow_gateway_server(root: Path, store: Path, port: int) -> Iterator[str]:
    """`mlflow server` on `port` over a copy of the migrated SQLite `store`, with the environment
    docs/mlflow.md tells users to give it (mlflow.gateway.SERVER_ENV); its URL."""
    shutil.copy(store, root / "server.db")
    log_path = root / "server.log"
    log = log_path.open("wb")
    env = {
        **os.environ,
        **SERVER_ENV,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # else a job runner and ~8 huey consumers
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--backend-store-uri", f"sqlite:///{(root / 'server.db').as_posix()}"),
            *("--artifacts-destination", str(root / "artifacts")),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=root,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, process, log_path, 120)
        yield url
    finally:
        stop(process)
        log.close()
