"""pytest entry point (`-p promptopt`): options, markers, hooks and fixtures; wiring only.

With `--promptopt`, every hook hands off to the `PromptoptSession` kept in `config.stash`. Nothing
heavy is imported here, and without `--promptopt` there is no session: the plugin checks file
names during collection and skips prompt tests (`suite/names.py`, `skipped.py`), and imports
neither the settings nor the session, so an ordinary `pytest` run costs about what plain pytest
costs (docs/performance.md, "Without --promptopt").
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from .options import OPTIONS

PYTHON_FIXTURES = ("prompt_model", "prompt_check")
RUN_TOKEN_INPUT = "promptopt_run_token"  # workerinput key: the controller's session token


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("promptopt", "prompt regression testing (pytest-promptopt)")
    for option in OPTIONS:
        dest = option.flag.lstrip("-").replace("-", "_")
        if option.is_flag:
            group.addoption(option.flag, action="store_true", default=False, dest=dest, help=option.help)
        else:
            group.addoption(option.flag, dest=dest, default=None, choices=option.choices, help=option.help)
        if option.ini:
            parser.addini(option.ini, help=option.help, default=None, **_INI_TYPE)


# pytest >= 9.2 types ini values: in a native `[tool.pytest]` TOML table `promptopt_timeout = 30` or
# `promptopt_no_mlflow = true` are a number and a bool, which a "string" option refuses ("expects a
# string"). A union takes them as TOML gives them and an ini file's text as text; settings.py
# parses both. Older pytest has no union (nor, before 9.0, the native table): text only.
_INI_TYPE: dict[str, Any] = {"type": str | bool | int | float} if pytest.version_tuple >= (9, 2) else {}


_spawned_key = pytest.StashKey[Any]()  # the MLflow writer spawned before the session exists


def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    # Importing mlflow takes seconds: when the command line asks for MLflow reporting, a writer
    # process starts on it now, before the conftests load (mlflow/writer.py); the session hands
    # it the settings when it starts.
    if _wants_mlflow(early_config):
        from .mlflow.writer import MlflowWriter

        early_config.stash[_spawned_key] = MlflowWriter.spawn()


def _wants_mlflow(config: pytest.Config) -> bool:
    known = config.known_args_namespace
    if not getattr(known, "promptopt", False) or getattr(known, "promptopt_no_mlflow", False):
        return False
    if any(getattr(known, name, False) for name in ("collectonly", "help", "version")):
        return False
    if os.environ.get("PYTEST_XDIST_WORKER"):  # workers only execute; the controller logs
        return False
    try:
        off = config.getini("promptopt_no_mlflow")
    except ValueError:
        return False
    return str(off or "").strip().lower() not in ("1", "true", "yes", "on")


_enabled_key = pytest.StashKey[bool]()


def _enabled(config: pytest.Config) -> bool:
    """Whether this run has a session: --promptopt as `pytest_configure` saw it (read once, so a
    later change to `config.option` cannot leave hooks looking for a session never made)."""
    return config.stash.get(_enabled_key, False)


def _session(request: pytest.FixtureRequest) -> Any:
    """The run's session, for a fixture; without --promptopt a prompt test is skipped even when
    it reaches a fixture past the skip marker (`request.getfixturevalue`, a doctest)."""
    if not _enabled(request.config):
        from .skipped import SKIP_REASON

        pytest.skip(SKIP_REASON)
    from .session import session_key

    return request.config.stash[session_key]


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_enabled_key] = bool(config.getoption("promptopt"))
    config.addinivalue_line(
        "markers",
        "promptopt(suite=None, gates=None, model=None, repeat=None): a Python prompt test; `suite` groups tests "
        "into one gated suite, `gates` sets its thresholds (e.g. {'pass_rate': 0.8}), `model` overrides the model, "
        "`repeat` takes N independent samples (one item each, one case in the statistics); every prompt test and "
        "suite case carries it, so `-m promptopt` / `-m 'not promptopt'` select them",
    )
    if not _enabled(config):
        return  # a bad ini value must not break an ordinary pytest run: nothing is parsed
    from .session import PromptoptSession, session_key
    from .settings import Settings

    settings = Settings.from_config(config)
    workerinput = getattr(config, "workerinput", {})
    if settings.backend == "spark" and (workerinput or getattr(config.option, "numprocesses", None)):
        raise pytest.UsageError(
            "--promptopt-backend spark runs the cases on Spark: drop -n/--numprocesses (pytest-xdist)"
        )
    state = PromptoptSession(
        settings,
        is_controller=not workerinput,
        make_model=lambda spec: config.hook.pytest_promptopt_make_model(spec=spec),
        run_token=workerinput.get(RUN_TOKEN_INPUT),
        workers=int(workerinput.get("workercount", 1)),
    )
    config.stash[session_key] = state
    if state.is_controller:
        state.start()  # report paths writable, response cache usable: before any case runs
        config.pluginmanager.register(ControllerHooks(state), "promptopt-controller")
        # Progress line (report/progress.py): controller only, and never under -q.
        if settings.progress_s is not None and config.get_verbosity() >= 0:
            from .report.progress import ProgressLine

            config.pluginmanager.register(ProgressLine(state, config, settings.progress_s), "promptopt-progress")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _enabled(config):
        from .session import session_key

        session = config.stash.get(session_key, None)
        if session is not None:
            session.close()
    spawned = config.stash.get(_spawned_key, None)
    if spawned is not None:  # never handed to a session (no session started): stop it
        del config.stash[_spawned_key]
        spawned.close()


# What the plugin writes into a project: MLflow's local artifacts (copies of suite files among
# them) and the response cache. Collecting those copies would run every suite twice.
_OWN_FOLDERS = ("mlruns", ".promptopt")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.name in _OWN_FOLDERS and collection_path.parent == config.rootpath:
        return True
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist: a scheduler that keeps each worker's look-ahead window of prompt cases full
    (runners/scheduling.py); None (xdist's own) without --promptopt or on Spark."""
    if not _enabled(config):
        return None
    from .runners.scheduling import make_scheduler
    from .session import session_key

    session = config.stash.get(session_key, None)
    if session is None or session.settings.backend == "spark":
        return None
    scale = session.settings.scale
    return make_scheduler(config, log, concurrency=scale.concurrency, batch_size=scale.batch_size)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    from .suite.names import is_suite_file

    if not is_suite_file(file_path):
        return None
    if not _enabled(parent.config):
        from .skipped import SkippedSuiteFile  # not parsed at all

        return SkippedSuiteFile.from_parent(parent, path=file_path)
    from .items import SuiteFile

    return SuiteFile.from_parent(parent, path=file_path)


def _is_python_prompt_test(item: pytest.Item) -> bool:
    return item.get_closest_marker("promptopt") is not None or any(
        name in getattr(item, "fixturenames", ()) for name in PYTHON_FIXTURES
    )


@pytest.hookimpl(trylast=True)  # after @parametrize: the sample's id comes last (`test_x[a-repeat2of3]`)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not _enabled(metafunc.config) or not _is_python_prompt_test(metafunc.definition):
        return
    from .session import session_key

    settings = metafunc.config.stash[session_key].settings
    from .python_tests import REPEAT_FIXTURE, python_repeats
    from .repeats import repeat_id

    marker = metafunc.definition.get_closest_marker("promptopt")
    repeats = python_repeats(marker, settings.repeats, metafunc.definition.nodeid)
    if repeats > 1:
        if REPEAT_FIXTURE not in metafunc.fixturenames:
            metafunc.fixturenames.append(REPEAT_FIXTURE)
        metafunc.parametrize(
            REPEAT_FIXTURE, range(repeats), indirect=True, ids=[repeat_id(i, repeats) for i in range(repeats)]
        )


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: every prompt test is `-m promptopt`
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    enabled, skip = _enabled(config), None
    for item in items:
        if not isinstance(item, pytest.Function) or not _is_python_prompt_test(item):
            continue
        if item.get_closest_marker("promptopt") is None:  # a prompt test by its fixtures alone
            item.add_marker("promptopt")
        if not enabled:
            if skip is None:
                from .skipped import SKIP_REASON

                skip = pytest.mark.skip(reason=SKIP_REASON)
            item.add_marker(skip)
    if enabled:
        from .python_tests import check_python_suites

        check_python_suites(items)


def pytest_deselected(items: list[pytest.Item]) -> None:
    # Python prompt tests pytest leaves out (-k, -m, --lf, ...) make the session partial
    # (selection.py); a suite file's cases are counted against what it offered instead.
    if not items or not _enabled(items[0].config):
        return
    from .python_tests import python_case_key
    from .session import session_key

    tests = [i for i in items if isinstance(i, pytest.Function) and _is_python_prompt_test(i)]
    if tests:
        items[0].config.stash[session_key].left_out.deselected(python_case_key(i) for i in tests)


def pytest_collection_finish(session: pytest.Session) -> None:
    if not _enabled(session.config):
        return
    from .items import note_selection
    from .session import session_key

    note_selection(session, session.config.stash[session_key].left_out, _is_python_prompt_test)


# --------------------------------------------------------------------------- Python prompt tests


def _recorder(request: pytest.FixtureRequest) -> Any:
    from .python_tests import item_recorder

    return item_recorder(request.node)


@pytest.fixture
def prompt_model(request: pytest.FixtureRequest) -> Any:
    """The configured model: `prompt_model("prompt")` or `prompt_model([{"role": ..., "content": ...}])`.

    Returns a `Response` (`.text`, `.latency_ms`, `.prompt_tokens`, `.completion_tokens`, `.cost`),
    through the response cache. `@pytest.mark.promptopt(model="openai/gpt-4o-mini")` overrides it.
    """
    session = _session(request)
    from .python_tests import ModelClient, python_model_spec

    marker = request.node.get_closest_marker("promptopt")
    spec = python_model_spec(marker, session.settings.model, request.node.nodeid, session)
    return ModelClient(session, spec, _recorder(request))


@pytest.fixture
def promptopt_repeat(request: pytest.FixtureRequest) -> int:
    """Which sample of a repeated prompt test this item is: 0, 1, ..., N-1 for
    `@pytest.mark.promptopt(repeat=N)` or `--promptopt-repeat N`; 0 for a test that is not
    repeated. `prompt_model` takes this sample unless given `repeat=`."""
    return int(getattr(request, "param", 0))


@pytest.fixture
def prompt_check(request: pytest.FixtureRequest) -> Any:
    """Scored assertions: `prompt_check(output, contains("Paris"), regex(r"^[A-Z]"), threshold=None)`.

    Fails the test with the output and each assertion's score; in a suite with gates, a failing
    check is reported as an expected failure ("tolerated by gate ...") and the gates decide.
    """
    session = _session(request)
    from .python_tests import PromptCheck

    recorder = _recorder(request)
    gates = ", ".join(g.describe() for g in recorder.suite.gates) or None
    return PromptCheck(
        recorder, gates, session.judges, session.cache, session.sandbox, session.settings.script_timeout_s
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if not _enabled(item.config):
        return report  # no prompt test runs: they were skipped
    from .execute import raised
    from .items import setup_only
    from .python_tests import has_recorder, item_recorder
    from .session import RECORD_ATTR, record_key, session_key
    from .tolerance import keep_tolerated

    if setup_only(item.config):
        return report  # --setup-only / --setup-plan: nothing ran, nothing is recorded
    keep_tolerated(report, call.excinfo, item.config.option.runxfail)
    python_test = has_recorder(item) or (isinstance(item, pytest.Function) and _is_python_prompt_test(item))
    prompt_item = python_test or getattr(item, "promptopt_item", False)  # items.CaseItem, DatasetItem
    why = raised(call.excinfo.value) if call.excinfo is not None else None
    if prompt_item and why is not None and call.when != "teardown" and _raised_key not in item.stash:
        item.stash[_raised_key] = why  # why a suite case may end without a record
    recorder = item_recorder(item) if python_test else None  # made here for a test using no fixture
    if recorder is not None:
        recorder.saw(call.when, "xfailed" if hasattr(report, "wasxfail") else report.outcome, why, _timed_out(call))
        if call.when == "setup" and hasattr(item.config, "workerinput"):
            from .session import SUITE_ATTR

            setattr(report, SUITE_ATTR, json.dumps(recorder.suite.to_dict()))
        if call.when == "call" and recorder.error and report.failed:
            setattr(report, ERROR_ATTR, recorder.error)
    if call.when == "teardown":
        from .session import NOTICES_ATTR

        session = item.config.stash[session_key]
        payload = item.stash.get(record_key, None)
        if payload is None and recorder is not None:
            result = recorder.outcome()  # counted as pytest reported the test (None: skipped)
            payload = None if result is None else session.encode(recorder.suite, result)
        if payload is None and hasattr(item, "lost_record"):  # a suite case whose setup raised first
            payload = item.lost_record(item.stash.get(_raised_key, None))
        if payload is not None:
            # A report attribute, not user_properties: it crosses xdist the same way (reports
            # serialise their __dict__) but stays out of JUnit XML, which would copy every output.
            setattr(report, RECORD_ATTR, payload)
        notices = session.take_notices() if prompt_item else None
        if notices:  # the response cache degraded in this process: the controller says so
            setattr(report, NOTICES_ATTR, notices)
    return report


def _timed_out(call: pytest.CallInfo[None]) -> bool:
    """pytest-timeout ended the test (its signal method raises `Failed` with this text): an
    error of the test, as a model's timeout is, not a failed check."""
    return call.excinfo is not None and "from pytest-timeout" in str(call.excinfo.value)


_raised_key = pytest.StashKey[str]()
ERROR_ATTR = "promptopt_error"


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    # A model fault inside a Python prompt test, or a crashed xdist worker, is an error, not a
    # failed assertion.
    if report.failed and getattr(report, ERROR_ATTR, None):
        return "error", "E", ("ERROR", {"red": True})
    return None


# --------------------------------------------------------------------------- results and gates


class ControllerHooks:
    """Registered only in the controller process (never in an xdist worker): collects every case
    record from the test reports, decides the gates after all workers are done, reports."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.session: pytest.Session | None = None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # MLflow is imported and its store opened in a writer process while the cases run.
        self.session = session
        spawned = session.config.stash.get(_spawned_key, None)
        if spawned is not None:
            del session.config.stash[_spawned_key]
        if not session.config.option.collectonly:
            self.state.start_mlflow(spawned)
        elif spawned is not None:
            spawned.close()

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        # xdist: workers name their session files as the controller does (PromptoptSession.run_token).
        node.workerinput[RUN_TOKEN_INPUT] = self.state.run_token

    @pytest.hookimpl(tryfirst=True)
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        # xdist's "Different tests were collected" names items, not why a suite's differ.
        if report.failed and isinstance(report.longrepr, str):
            from .runners.scheduling import collection_difference_hint

            hint = collection_difference_hint(report.longrepr)
            if hint:
                report.longrepr = f"{report.longrepr}\n{hint}"

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> None:
        # xdist: a worker died (killed, segfault) while running `crashitem`. Its other cases
        # already reached us; this one becomes an error record, and its report an error.
        message = f"worker crashed while running this case ({report.longrepr}); its result is lost"
        if self.state.add_crash_record(crashitem, message):
            setattr(report, ERROR_ATTR, message)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        # xdist: a worker finished; what its collection left out (selection.py). A worker that
        # crashed sends nothing, the others have the same counts.
        from .selection import WORKEROUTPUT_KEY

        found = getattr(node, "workeroutput", {}).get(WORKEROUTPUT_KEY)
        if found:
            self.state.left_out.merge(found)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        # --promptopt-backend spark: every suite case is evaluated as one Spark job before the
        # items run; each item then reports its precomputed result.
        if self.state.settings.backend == "spark" and not session.config.option.collectonly:
            from .items import CaseItem

            cases = [(item.case, item.nodeid) for item in session.items if isinstance(item, CaseItem)]
            if cases:
                self.state.run_on_spark(cases)

    @pytest.hookimpl(wrapper=True)  # around JUnit XML's writer: see the end
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Generator[None, None, None]:
        from .session import NOTICES_ATTR, RECORD_ATTR, SUITE_ATTR

        suite = getattr(report, SUITE_ATTR, None) if report.when == "setup" else None
        if suite is not None:  # an xdist worker started a Python prompt test of this suite
            self.state.note_suite(report.nodeid, suite)
        # The teardown report carries the case's record (see pytest_runtest_makereport).
        payload = getattr(report, RECORD_ATTR, None) if report.when == "teardown" else None
        if payload is not None:
            self.state.add_record(payload, report.nodeid)
        notices = getattr(report, NOTICES_ATTR, None) if report.when == "teardown" else None
        if notices:
            self.state.add_notices(notices)
        yield
        if report.when == "call" and report.failed and getattr(report, ERROR_ATTR, None) and self.session:
            # A model fault in a Python prompt test's call: JUnit XML decides by the phase and
            # wrote a <failure>; it is an error, as the terminal counts it.
            from .report.junit import failure_as_error

            failure_as_error(self.session.config, report)

    # First: the gates set the session's exit status before other plugins' sessionfinish writes
    # it down (pytest-json-report's exitcode, JUnit XML), as pytest's own would have it.
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.state.records:
            return
        status, messages = self.state.finish(
            int(session.exitstatus),
            list(session.config.invocation_params.args),
            stopped_early=bool(session.shouldfail or session.shouldstop),  # -x / --maxfail
        )
        if status != session.exitstatus:
            session.exitstatus = pytest.ExitCode(status)
        from .report.junit import add_gate_properties

        add_gate_properties(session.config, self.state.summary())
        for message in messages:
            _run_notice(message)

    @pytest.hookimpl(trylast=True)  # last: MLflow logging goes on beside the other plugins' summaries
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.state.records:
            return
        from .report.terminal import summary_lines

        terminalreporter.section("promptopt summary")
        for line in summary_lines(self.state.summary()):
            red = line.startswith("GATE FAILED")
            terminalreporter.write_line(line, red=red, bold=red)
        if self.state.summary().baseline is not None:
            from .report.terminal import baseline_lines

            terminalreporter.section("promptopt baseline")
            for line in baseline_lines(self.state.summary().baseline):
                terminalreporter.write_line(line, red=line.startswith(("baseline not loaded", "  newly failing")))
        if self.state.settings.repair is not None:
            from .report.terminal import repair_lines

            logged = getattr(self._mlflow_outcome(), "logged", None)
            terminalreporter.section("promptopt repair")
            for line in repair_lines(self.state.summary().repairs, logged.registered if logged is not None else None):
                terminalreporter.write_line(line, green=": repaired by " in line)
        partial = self.state.left_out.describe()
        if partial:  # -k, node ids, --lf: the gates judged what ran; no branch baseline
            terminalreporter.write_line(f"partial session: {partial}")
        for notice in self.state.notices:  # the response cache degraded (corrupt, read-only)
            terminalreporter.write_line(notice, yellow=True)
        for kind, path in self.state.written.items():  # where each report went (a fallback, maybe)
            if kind != "baseline":
                terminalreporter.write_line(f"{kind}: {path}")
        outcome = self._mlflow_outcome()
        if outcome is not None:
            for line in outcome.lines():
                terminalreporter.write_line(line, red=outcome.error is not None)

    def _mlflow_outcome(self) -> Any:
        """Wait for the MLflow writer (at most once); its warnings join pytest's warnings
        summary, and a Ctrl-C that stopped it makes the session's exit status "interrupted"."""
        if self.state.mlflow is not None:
            return self.state.mlflow
        outcome = self.state.mlflow_outcome()
        if outcome is not None:
            for message in outcome.warnings():
                _run_notice(message)
            if outcome.interrupted and self.session is not None:
                self.session.exitstatus = pytest.ExitCode.INTERRUPTED
        return outcome


def _run_notice(message: str) -> None:
    """A notice about the run as a whole (a report's fallback path, the baseline written, MLflow
    reporting failed), in pytest's warnings summary. Under `-W error` or `filterwarnings = error`
    it stays a notice: raised there, after every case ran, it would end pytest with a traceback
    instead of the summary, and turn a passing run's exit status into 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", pytest.PytestWarning)
        warnings.warn(pytest.PytestWarning(message), stacklevel=2)
