"""The session's MLflow logging, beside the test loop: a writer process started with the session
imports mlflow and opens the store while the cases run; after the last case the session renders
the report and case tables (runs.render_run), hands it the run and, at the end of its terminal
summary, waits for the outcome.

A process rather than a thread: importing mlflow and its SQL stores (about 1.7 s of CPU, without
the libraries held back below) and opening a store are Python code that holds the GIL, so a
thread would take that time from the test loop; a process runs it on another core
(docs/performance.md#mlflow-reporting has the figures).

Nothing is lost when a process ends early:
- the session writes the pending-upload file (upload.py) before handing the run over; the writer
  records the session run's id in it as soon as MLflow created it, and removes it only once the
  run is logged;
- the writer runs in its own process session, so the Ctrl-C that interrupts pytest does not stop
  it: it still logs the interrupted session's results. A Ctrl-C while the session waits for it
  stops it (SIGTERM): the run it was writing is marked FAILED where the store can be reached, and
  the file is kept for `python -m pytest_promptopt upload`, which marks a run cut short FAILED;
- a writer whose session is gone (its stdin closed) finishes the run it was given, or exits.

The two sides speak over the writer's stdin (length-prefixed pickles: the settings at start, the
run at the end, so no credential shows in a process list) and a private copy of its stdout (one
JSON line: the `Outcome`). Everything here is plain data; the writer's own stderr goes to a file
read only to explain a crash.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ..gc_pause import gc_paused
from ..run_json import report_dict
from ..summary import RunSummary
from .client import MlflowSettings, mlflow_calls, safe_text, safe_uri
from .layout import SessionMeta
from .runs import RenderedRun, render_run
from .store import check_store, default_home, sqlite_file, template_store
from .upload import Outcome, report_run, write_pending

__all__ = ["MlflowWriter", "main"]

_FALLBACK = "the writer could not read the run"  # then the session logs it itself
_STOP_WAIT_S = 5.0  # how long a stopped writer may take to mark its run FAILED before it is killed
_LENGTH = struct.Struct(">Q")


class MlflowWriter:
    """The session's side. `spawn()` starts the writer process, which begins importing mlflow at
    once (the plugin spawns it as soon as pytest has read its command line); `begin(target)`
    tells it where the run goes; `submit(...)` hands it the run; `outcome()` waits for it;
    `close()` ends it (waiting for a submitted run, stopping a writer that never got one).
    Without a process (none could be started), `submit` logs in this process, as `report_run`
    always did."""

    def __init__(self, target: MlflowSettings | None = None) -> None:
        self.target = target
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._pending: Path | None = None
        self._submitted = False
        self._job: tuple[RunSummary, SessionMeta, tuple[Path, ...], RenderedRun | None] | None = None
        self._outcome: Outcome | None = None

    @classmethod
    def spawn(cls) -> MlflowWriter:
        writer = cls()
        package_root = str(Path(__file__).resolve().parent.parent.parent)
        code = (
            f"import sys; sys.path.insert(0, {package_root!r}); from pytest_promptopt.mlflow import writer; "
            "del sys.path[0]; writer.main()"
        )
        writer._stderr = tempfile.TemporaryFile()
        try:
            writer._process = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=writer._stderr,
                start_new_session=True,
            )
        except (OSError, ValueError):  # no interpreter to start: the session logs in its own process
            writer._discard()
        return writer

    def begin(self, target: MlflowSettings) -> None:
        """Where the run will go: the writer checks and opens that store while the cases run."""
        self.target = target
        if self._process is not None:
            try:
                _send(self._process, target)
            except (OSError, ValueError):  # it died already: log in this process
                self._stop()

    def submit(self, run: RunSummary, meta: SessionMeta, artifacts: Sequence[Path] = ()) -> None:
        """Keep `run` in a pending file, then hand it to the writer (or log it here without one)."""
        assert self.target is not None, "begin(target) first"
        self._submitted = True
        # The report and case tables are made here, in the session, which has nothing else to
        # do by now, while the writer may still be importing mlflow (docs/performance.md).
        report = report_dict(run, exit_status=meta.exit_status)
        with contextlib.suppress(OSError):  # a read-only project: report_run says so if logging fails too
            self._pending = write_pending(self.target.pending_dir, run, meta, self.target, report=report)
        rendered: RenderedRun | None = None
        with contextlib.suppress(Exception):  # rendered again by log_run, under report_run's guard
            rendered = render_run(run, report)
        self._job = (run, meta, tuple(artifacts), rendered)
        if self._process is not None:
            job = {
                "run": run,
                "meta": meta,
                "rendered": rendered,
                "artifacts": [str(p) for p in artifacts],
                "pending": str(self._pending) if self._pending else None,
                "environ": dict(os.environ),  # what logging here would have seen (credentials set meanwhile)
                "cwd": os.getcwd(),
            }
            try:
                _send(self._process, job)
                return
            except (OSError, ValueError, pickle.PicklingError, TypeError, AttributeError):  # log here instead
                self._stop()
        self._log_here()

    def _log_here(self) -> None:
        assert self._job is not None and self.target is not None
        run, meta, artifacts, rendered = self._job
        self._outcome = report_run(
            run, meta, self.target, artifacts=artifacts, pending=self._pending, rendered=rendered
        )

    def outcome(self) -> Outcome | None:
        """Wait for the submitted run's outcome (None if nothing was submitted). A Ctrl-C while
        waiting stops the writer; the outcome then says where the run was kept."""
        if self._outcome is not None or not self._submitted:
            return self._outcome
        process = self._process
        assert process is not None and process.stdout is not None
        try:
            line = process.stdout.readline()
            process.wait()  # it ends right after its answer (os._exit)
        except KeyboardInterrupt:
            process.terminate()  # it marks the run it was writing FAILED; the pending file stays
            try:
                process.wait(_STOP_WAIT_S)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # too slow, or a second Ctrl-C
                process.kill()
                process.wait()
            line = process.stdout.read().decode("utf-8", "replace").strip().rpartition("\n")[2]
            self._outcome = _decode(line)
            if self._outcome is None or self._outcome.logged is None:
                self._outcome = Outcome(
                    error=f"MLflow reporting interrupted ({self._uri()})",
                    pending=self._kept(),
                    interrupted=True,
                )
            self._discard()
            return self._outcome
        self._outcome = _decode(line)
        if self._outcome is None:
            self._outcome = Outcome(error=self._crash(process.returncode), pending=self._kept())
        self._discard()
        if self._outcome.error == _FALLBACK:  # the writer could not read the run: log it here
            self._outcome = None
            self._log_here()
        return self._outcome

    def close(self) -> None:
        if self._submitted:
            self.outcome()
        else:
            self._stop()

    def _kept(self) -> Path | None:
        return self._pending if self._pending is not None and self._pending.exists() else None

    def _crash(self, status: int | None) -> str:
        last = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
            last = f": {safe_text(lines[-1][:300])}" if lines else ""  # what MLflow printed may hold the URI
        return f"MLflow reporting failed ({self._uri()}): the writer process ended ({status}){last}"

    def _uri(self) -> str:
        return safe_uri(self.target.tracking_uri) if self.target is not None else "MLflow"

    def _stop(self) -> None:
        """Stop the writer: SIGTERM (it marks the run it was writing FAILED), then SIGKILL."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError):
                process.terminate()
            try:
                process.wait(_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._discard()

    def _discard(self) -> None:
        if self._process is not None:
            for pipe in (self._process.stdin, self._process.stdout):
                with contextlib.suppress(OSError):
                    if pipe is not None:
                        pipe.close()
        if self._stderr is not None:
            self._stderr.close()
        self._process = self._stderr = None


def _decode(line: bytes | str) -> Outcome | None:
    try:
        return Outcome.from_dict(json.loads(line))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _send(process: subprocess.Popen[bytes], value: Any) -> None:
    assert process.stdin is not None
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    process.stdin.write(_LENGTH.pack(len(data)) + data)
    process.stdin.flush()


# --------------------------------------------------------------------------- the writer process


class _Stopped(BaseException):
    """SIGTERM from the session (a Ctrl-C while it waited): stop, as a Ctrl-C would."""


def _stop_signal(signum: int, frame: Any) -> None:
    raise _Stopped()


def main() -> None:
    """The writer process: import mlflow, prepare the store it is told of, then log the run the
    session sends, if any. It ends with `os._exit`: once the run is logged or kept and the answer
    is sent, nothing is left to do, and tearing down mlflow's thousands of modules (and its exit
    handlers) would only keep the session waiting."""
    status = 0
    try:
        with _holding_back(_NO_SPARK_HERE):
            _serve()
    except BaseException:  # noqa: BLE001  (a bug: its traceback is what the session quotes)
        traceback.print_exc()
        status = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(status)


def _serve() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_signal)
    reply = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever MLflow prints goes to stderr, not into the reply
    frames: list[bytes | None] = []
    arrived = threading.Condition()
    threading.Thread(target=_read_frames, args=(sys.stdin.buffer, frames, arrived), daemon=True).start()
    try:
        with gc_paused():  # importing and opening the store (see gc_pause.py), then:
            with contextlib.suppress(Exception), _holding_back(_OPTIONAL_AT_IMPORT), mlflow_calls():
                pass  # the import itself, before anything is known
            target = _next(frames, arrived)
            if target is None:  # the session does not log to MLflow after all
                return
            settings: MlflowSettings = pickle.loads(target)
            with contextlib.suppress(Exception):  # log_run meets (and reports) any fault again
                _prepare(settings)
            # what is imported and open stays for this short process's life: the collector
            # need not walk it again while the run is logged
            gc.freeze()
        data = _next(frames, arrived)
        if data is None:  # the session ended without a run to log
            return
        try:
            job = pickle.loads(data)
        except Exception:  # noqa: BLE001  (a value this process cannot rebuild: the session logs it)
            reply.write(json.dumps(Outcome(error=_FALLBACK).to_dict()) + "\n")
            reply.flush()
            return
        os.environ.clear()
        os.environ.update(job["environ"])
        os.chdir(job["cwd"])
        pending = Path(job["pending"]) if job["pending"] else None
        try:
            outcome = report_run(
                job["run"],
                job["meta"],
                settings,
                artifacts=[Path(p) for p in job["artifacts"]],
                pending=pending,
                rendered=job["rendered"],
            )
        except _Stopped:
            outcome = Outcome(
                error=f"MLflow reporting interrupted ({safe_uri(settings.tracking_uri)})",
                pending=pending if pending is not None and pending.exists() else None,
                interrupted=True,
            )
        with contextlib.suppress(OSError):  # the session may be gone: the run is logged or kept either way
            reply.write(json.dumps(outcome.to_dict()) + "\n")
            reply.flush()
    except _Stopped:
        pass


def _read_frames(stream: IO[bytes], frames: list[bytes | None], arrived: threading.Condition) -> None:
    """Read the session's frames as they come (so its writes never wait for this process to be
    ready); None marks the end of its stdin."""
    while True:
        head = stream.read(_LENGTH.size)
        frame = stream.read(_LENGTH.unpack(head)[0]) if len(head) == _LENGTH.size else None
        with arrived:
            frames.append(frame)
            arrived.notify()
        if frame is None:
            return


def _next(frames: list[bytes | None], arrived: threading.Condition) -> bytes | None:
    with arrived:
        arrived.wait_for(lambda: bool(frames))
        frame = frames.pop(0)
        if frame is None:
            frames.append(None)  # the end stays the end
        return frame


# Libraries mlflow imports for optional integrations only (pandas and numpy datasets), each
# behind a guard for installs without them (mlflow-skinny). With pyspark (below) they are about a
# third of importing mlflow and its SQL stores here (2.4 -> 1.7 s), on the session's critical
# path after its last case; logging a session needs none of them (a case table is written
# without pandas: table_file.py). Held back only while mlflow is imported: whatever asks for one
# later still gets it, and an mlflow that needs one at import fails that import, which the
# writer's next `mlflow_calls()` repeats without holding anything back.
_OPTIONAL_AT_IMPORT = ("pandas", "numpy")
# Held back for the writer's whole life: MLflow imports pyspark (0.13 s) at import and whenever a
# client is made, to read the registry URI of this process's active Spark session, and this
# process never has one; without pyspark MLflow concludes the same, at once.
_NO_SPARK_HERE = ("pyspark",)


@contextlib.contextmanager
def _holding_back(names: Sequence[str]) -> Iterator[None]:
    """Make `import name` fail (ImportError) for the names not imported yet, until the block ends.
    A module imported meanwhile keeps what it decided without them, for the process's life; if
    the block fails, the mlflow modules it imported are dropped, so the next import starts over."""
    held = [name for name in names if name not in sys.modules]
    before = set(sys.modules)
    for name in held:
        sys.modules[name] = None  # type: ignore[assignment]  (the import system's "not importable")
    try:
        yield
    except BaseException:
        for name in set(sys.modules) - before:
            if name == "mlflow" or name.startswith("mlflow."):
                del sys.modules[name]
        raise
    finally:
        for name in held:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def _prepare(target: MlflowSettings) -> None:
    """What logging will need, done while the cases run: the store's classes, and for a SQLite
    store a check, then opening it and finding the experiment, or, for a new one, the migrated
    template. Nothing is written to the store, and a server is not called."""
    with mlflow_calls():
        from mlflow import MlflowClient

        database = sqlite_file(target.tracking_uri)
        if database is None:
            MlflowClient(tracking_uri=target.tracking_uri)
            return
        with _holding_back(_OPTIONAL_AT_IMPORT):
            import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

        check_store(database)
        if not database.exists():
            template_store(default_home())
            return
        client = MlflowClient(tracking_uri=target.tracking_uri)
        client.get_experiment_by_name(target.experiment)
