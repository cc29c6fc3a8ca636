"""The run-wide object kept in `config.stash`: models, cache, collected results, gates, reports.

Over the house's ~450 lines (about 470) on purpose: each method is one hand-off the plugin's hooks
call (load, run, record, finish, MLflow writer, close), and the work sits in the modules they
call; splitting the object would pass its state between two."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from .ast_lock import serialize_ast_parse
from .baseline_source import compare_with_reference
from .cache import ResponseCache
from .case_stats import DatasetPart
from .interrupts import interrupt_on_sigterm
from .judging import Judges, judge_specs
from .mlflow.prompts import PromptResolver
from .models.base import Model, ModelError
from .models.hosted import LiteLLMModel
from .models.preparing_ahead import PreparationAhead
from .models.specs import Answers, ModelSpec, create_model, with_local_runtime, with_timeout, with_tracking_server
from .records import CaseResult
from .repeats import fold_repeated_tests, split_repeat
from .runners.execution import ExecutionSettings
from .runners.limits import RateLimiter, Throttled, limit_for, throttle
from .runners.pool import CaseRunner
from .sandbox import Sandbox
from .selection import LeftOut
from .settings import Settings
from .suite.chains import SEQUENCE, ChainRuns
from .suite.model import Case, Repeats
from .suite.names import is_suite_file
from .suite_info import SuiteInfo
from .summary import RunSummary, SuiteSummary, incomplete_reason, suite_outcomes, summarize, summarize_suites
from .wording import counted

__all__ = ["NOTICES_ATTR", "RECORD_ATTR", "PromptoptSession", "record_key", "session_key"]

RECORD_ATTR = "promptopt_record"  # the teardown report attribute that carries a case record
NOTICES_ATTR = "promptopt_notices"  # ... and what degraded in that process meanwhile (the response cache)
# An xdist worker's setup report of a Python prompt test carries its suite, so that the controller
# can count the case in it should the worker die during the test (`add_crash_record`)
SUITE_ATTR = "promptopt_suite"
session_key = pytest.StashKey["PromptoptSession"]()
record_key = pytest.StashKey[str]()  # an item's encoded record, until its teardown report


class PromptoptSession:
    """One per pytest process. Workers execute cases; the controller also collects and decides.

    `make_model` is the `pytest_promptopt_make_model` hook (a conftest may supply adapters).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        is_controller: bool,
        make_model: Callable[[ModelSpec], Any] | None = None,
        run_token: str | None = None,
        workers: int = 1,
    ) -> None:
        self.settings = settings
        self.is_controller = is_controller
        serialize_ast_parse()  # the run's threads and pytest's main thread parse Python (ast_lock.py)
        # xdist workers split the run's budgets (concurrency, rate limits), so W workers
        # together never exceed what one process would be allowed.
        self.workers = max(1, workers)
        # The controller's token (xdist workers get it) names the session's files: its Prompt
        # Registry resolutions and its dataset suites' per-case folders.
        self.run_token = run_token or uuid.uuid4().hex
        # Prompt Registry references resolve once per session, through one resolutions file
        # (mlflow/prompts.py). The registry is the tracking URI's; with MLflow reporting off,
        # $MLFLOW_TRACKING_URI, else the project's store.
        uri = (
            settings.mlflow.tracking_uri
            if settings.mlflow
            else (os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(settings.rootdir / 'mlflow.db').as_posix()}")
        )
        self.registry = PromptResolver(uri, settings.cache_path.parent / "registry" / f"{self.run_token}.json")
        if is_controller:
            self.registry.publish()  # for Prompt.from_registry in test modules, here and in xdist workers
        self._make_model = make_model
        # How cases run, for the runner and Spark: this process's share of the run's budgets.
        self.execution = _execution_settings(settings).share(self.workers)
        # Judge models of model-graded assertions: the same adapters and cache (judging.py),
        # handed to the runner, `prompt_check` and the repair.
        self.judges = Judges(self.model_for, lambda: self.cache, settings.judge)
        # User code (javascript/python checks, transforms, prompt functions): this process's
        # Python and node workers and JavaScript contexts, kept for the run and closed at its end.
        self.sandbox = Sandbox()
        self._models: dict[str, Model] = {}
        self._preparations: list[PreparationAhead] = []
        self._models_lock = threading.Lock()
        self._hook_made: set[str] = set()
        self._cache: ResponseCache | None = None
        self._runner: CaseRunner | None = None
        self._limiters: dict[str, RateLimiter] = {}
        self._spark: Any = None
        # Every record as it came; a repeated Python test's samples are one each (`summary` folds them).
        self.records: list[tuple[SuiteInfo, CaseResult]] = []
        # pytest node id -> its place in `records`: an item that runs again (pytest-rerunfailures,
        # `--dist each`) replaces its record, so a case is counted once, as its last attempt.
        self._record_at: dict[str, int] = {}
        self._python_suites: dict[str, SuiteInfo] = {}  # node id -> suite, from xdist setup reports
        self._crashed_samples: list[CaseResult] = []  # they join their case in `summary`, which knows its suite
        self._summary: RunSummary | None = None
        # Failing fuzz blocks' minimal inputs (shrinking.shrink_failure's memo), shrunk once per process.
        self.shrunk: dict[tuple[int, int, Answers], Any] = {}  # a shrinking.ShrinkMemo
        # Outputs chained cases hand on (storeOutputAs, _conversation), per suite (suite/chains.py).
        self.chains = ChainRuns()
        # The prompt cases pytest's selection left out (-k, node ids, ...): such a session is no
        # branch baseline, and a baseline file it updates keeps what it did not run.
        self.left_out = LeftOut()
        self.started = time.time()
        self.mlflow: Any = None  # the MLflow reporting outcome (mlflow/upload.Outcome), once known
        self._writer: Any = None  # the MLflow writer beside the test loop (mlflow/writer.MlflowWriter)
        # What degraded (a corrupt or read-only response cache): this process's, until a teardown
        # report carries them to the controller, which keeps the run's in `notices`.
        self._pending_notices: list[str] = []
        self._notices_lock = threading.Lock()
        self.notices: list[str] = []
        self.written: dict[str, Path] = {}  # report kind -> where it was written (a fallback, maybe)
        self._release_sigterm: Callable[[], None] = lambda: None

    def start(self) -> None:
        """On the controller, before any case runs (and before xdist starts workers): every
        report path must be writable (else one usage error naming it), and a response cache
        that is corrupt or read-only is dealt with once, here (cache_file.py)."""
        from .report.paths import unwritable

        settings = self.settings
        outputs = [
            ("--promptopt-report", settings.report_path),
            ("--promptopt-html", settings.html_path),
            ("--promptopt-update-baseline", settings.update_baseline),
        ]
        for flag, path in outputs:
            why = unwritable(path) if path is not None else None
            if why is not None:
                raise pytest.UsageError(f"{flag} {path}: cannot write there ({why}); give a writable path")
        self.cache.check()
        self.cache.close()
        # SIGTERM (`timeout`, `docker stop`, a CI job cancelled) stops the run as Ctrl-C does, so
        # the cases that finished are reported and the run cleans up (interrupts.py).
        self._release_sigterm = interrupt_on_sigterm()

    # ------------------------------------------------------------------ execution (any process)

    @property
    def cache(self) -> ResponseCache:
        if self._cache is None:
            self._cache = ResponseCache(self.settings.cache_path, self.settings.cache_mode, self.notice)
        return self._cache

    def notice(self, message: str) -> None:
        """Something degraded in this process (a corrupt or read-only cache, a report folder
        that cannot be written): the run goes on, and its summary says so."""
        with self._notices_lock:
            self._pending_notices.append(message)

    def take_notices(self) -> list[str]:
        """This process's notices not yet sent to the controller (plugin: on a teardown report)."""
        with self._notices_lock:
            taken, self._pending_notices = self._pending_notices, []
        return taken

    def add_notices(self, notices: Iterable[str]) -> None:
        """Notices from a teardown report (this process's or a worker's), each shown once."""
        for notice in notices:
            if notice not in self.notices:
                self.notices.append(notice)

    def model_for(self, spec: ModelSpec) -> Model:
        """One adapter per spec per process, so the bundled model loads once per worker."""
        with self._models_lock:
            model = self._models.get(spec.key)
            if model is None:
                model = self._make_model(spec) if self._make_model else None
                if model is not None:
                    self._hook_made.add(spec.key)
                else:
                    effective = with_local_runtime(spec, self.settings.local_runtime)
                    effective = with_tracking_server(effective, self.registry.tracking_uri)
                    model = create_model(with_timeout(effective, self.execution.timeout_s))
                if isinstance(model, LiteLLMModel):
                    model = self._throttled(model)
                self._models[spec.key] = model
            return model

    def _throttled(self, model: LiteLLMModel) -> Throttled:
        """A hosted model behind its provider's rate limit (one limiter per provider per process,
        holding this worker's share) and the retry policy."""
        limit = limit_for(self.execution.rate_limits, model.model)  # this worker's share
        limiter = None
        if limit is not None:
            limiter = self._limiters.get(limit.provider)
            if limiter is None:
                limiter = self._limiters[limit.provider] = RateLimiter(limit)
        return throttle(model, self.execution.retries, limiter)

    @property
    def runner(self) -> CaseRunner:
        """Maps cases to results in this process (runners/pool.py): `runner.map(pairs)`."""
        if self._runner is None:
            self._runner = CaseRunner(self.model_for, lambda: self.cache, self.execution, self.judges, self.sandbox)
        return self._runner

    def spark(self) -> Any:
        """The SparkSession of `--promptopt-backend spark`, started on first use."""
        if self._spark is None:
            from .runners.spark import spark_session

            assert self.settings.spark is not None, "the Spark backend is not selected"
            self._spark = spark_session(self.settings.spark)
        return self._spark

    def adopt_model(self, model: Model) -> ModelSpec:
        """Use a model object given directly (e.g. `@pytest.mark.promptopt(model=FakeModel(...))`)."""
        spec = ModelSpec(
            f"object:{getattr(model, 'name', type(model).__name__)}",
            {"instance": id(model)},
            getattr(model, "name", ""),
        )
        with self._models_lock:
            self._models[spec.key] = model
        return spec

    def load_suite(
        self, file: Path, display: str, *, backend: str | None = None, repeats: Repeats | None = None
    ) -> Any:
        """`suite.loader.load_suite` with the run's model, registry, limits and sandbox: for
        collection, a crashed case's record and a repair's reload (`LoadedSuite`)."""
        from .suite.loader import load_suite

        return load_suite(
            file,
            display,
            self.settings.model,
            self.registry.resolve,
            backend=backend,
            repeats=self.settings.repeats if repeats is None else repeats,
            limits=self.settings.suite_limits,
            script_timeout_s=self.settings.script_timeout_s,
            sandbox=self.sandbox,
        )

    def prepare_case(self, case: Case, sequence: Sequence[tuple[Case, str]] = ()) -> Case:
        """`case` ready to run: a chained case rendered with the outputs of the cases before it in
        its `sequence` ((case, node id) in collection order). Those it reads that have not run in
        this process (another order, another worker) run first, unreported (suite/chains.py)."""
        ids = {c.case_id: nodeid for c, nodeid in sequence}
        for earlier in self.chains.before([c for c, _ in sequence], case):
            prepared = self.chains.prepare(earlier)
            self.chains.record(prepared, self.runner.result(prepared, ids[earlier.case_id]), ahead=True)
        ahead = self.chains.ahead(case)
        return ahead[0] if ahead is not None else self.chains.prepare(case)

    def run_case(self, case: Case, nodeid: str, upcoming: Iterable[tuple[Case, str]] = ()) -> CaseResult:
        """`case`'s result (a chained case: prepared first; run ahead of its item, it is taken
        once); `upcoming` are the cases this process runs next, started ahead."""
        ahead = self.chains.take_ahead(case)
        if ahead is not None:
            return ahead[1]
        result = self.runner.result(case, nodeid, upcoming)
        self.chains.record(case, result)
        return result

    def run_on_spark(self, cases: list[tuple[Case, str]]) -> None:
        """Evaluate `cases` as one Spark job; each item then finds its result in the runner."""
        from .execute import error_result
        from .runners.spark import SparkBackendError, evaluate_cases

        execution = self.spark_execution(
            [case.model for case, _ in cases], (a for case, _ in cases for a in case.assertions)
        )
        pairs = [(nodeid, case) for case, nodeid in cases]
        done: set[str] = set()
        try:
            for nodeid, result in evaluate_cases(self.spark(), pairs, execution):
                self.runner.preset(nodeid, result)
                done.add(nodeid)
        except SparkBackendError as exc:
            # Spark unreachable or the job failed: like a model fault, every case without a
            # result is an error (reported per item), never a crash of the pytest session.
            for case, nodeid in cases:
                if nodeid not in done:
                    self.runner.preset(nodeid, error_result(case, nodeid, f"Spark backend: {exc}"))

    def spark_execution(self, models: Iterable[ModelSpec], assertions: Iterable[Any]) -> ExecutionSettings:
        """The execution settings of a Spark job, with what it takes along, by spec key: the
        models (`models`, and the judges of `assertions`) given as objects or made by a conftest
        hook, which workers cannot build. A model that cannot be built stays behind: the case or
        assertion reports it on the worker."""
        objects = {spec.key: model for spec, model in self._object_models(models)}
        for spec in judge_specs(assertions, self.settings.judge):
            try:
                objects.update((s.key, m) for s, m in self._object_models([spec]))
            except ModelError:
                pass
        return self.execution.with_models(objects)

    def _object_models(self, specs: Iterable[ModelSpec]) -> Iterator[tuple[ModelSpec, Model]]:
        """Models given as objects or made by a conftest's `pytest_promptopt_make_model`: Spark
        ships them to its workers, which cannot call this process's hooks."""
        for spec in {spec.key: spec for spec in specs}.values():
            model = self.model_for(spec)
            if spec.id.startswith("object:") or spec.key in self._hook_made:
                yield spec, model

    # ------------------------------------------------------------------ results (controller)

    def add_crash_record(self, nodeid: str, message: str) -> bool:
        """An error record for a case whose xdist worker died while running it. False when the
        node id is not a prompt case (an ordinary test, a dataset item, or a Python test of an
        unknown suite). A repeated test's sample always is: its record joins the case's other
        samples, whichever reach the controller, when the summary folds them."""
        from .execute import error_result

        path, _, name = nodeid.partition("::")
        name = name.removeprefix(f"{SEQUENCE}::")  # a chained suite's cases sit in its sequence node
        file = self.settings.rootdir / path
        if is_suite_file(file):
            try:
                loaded = self.load_suite(file, path)
            except Exception:  # the suite is gone or broken: its collection error says so
                return False
            case = next((c for c in loaded.cases if c.name == name), None)
            if case is None:
                return False
            info, result = loaded.info, error_result(case, nodeid, message)
        else:
            result = CaseResult(case_id=nodeid, name=name, nodeid=nodeid, error=message)
            if split_repeat(nodeid) is not None:
                self._crashed_samples.append(result)
                self._summary = None
                return True
            found = self._python_suites.get(nodeid)
            if found is None:
                return False
            info = found
        self._keep(nodeid, (info, result))
        return True

    def note_suite(self, nodeid: str, payload: str) -> None:
        """The suite of a Python prompt test an xdist worker has started (`SUITE_ATTR`)."""
        self._python_suites[nodeid] = SuiteInfo.from_dict(json.loads(payload))

    def _keep(self, nodeid: str | None, record: tuple[SuiteInfo, Any]) -> None:
        at = self._record_at.get(nodeid) if nodeid else None
        if at is None:
            if nodeid:
                self._record_at[nodeid] = len(self.records)
            self.records.append(record)
        else:
            self.records[at] = record
        self._summary = None

    @staticmethod
    def encode(info: SuiteInfo, result: CaseResult | DatasetPart) -> str:
        """A record as a JSON string: the only form that crosses xdist safely (see STYLE.md).
        A dataset item's record is its `DatasetPart` (stats and the per-case table's path), not its rows."""
        key = "dataset" if isinstance(result, DatasetPart) else "case"
        return json.dumps({"suite": info.to_dict(), key: result.to_dict()}, ensure_ascii=False, default=str)

    def add_record(self, payload: str, nodeid: str | None = None) -> None:
        """A case's record from its item's teardown report; `nodeid`: the item's (the last record
        of a node id stands: a rerun replaces it)."""
        data = json.loads(payload)
        record = DatasetPart.from_dict(data["dataset"]) if "dataset" in data else CaseResult.from_dict(data["case"])
        self._keep(nodeid, (SuiteInfo.from_dict(data["suite"]), record))

    def finish(self, exit_status: int, pytest_args: list[str], stopped_early: bool = False) -> tuple[int, list[str]]:
        """After every case ran (on the controller): aggregate, compare with a baseline, decide the
        gates, repair, and build the run's `RunSummary` once; then write the JSON and HTML reports
        and log to MLflow, which only read it. Returns the session's exit status (a failing gate
        turns 0 into 1) and warnings to show. `stopped_early`: pytest stopped at -x/--maxfail."""
        self.add_notices(self.take_notices())  # shown by the terminal summary (plugin.py)
        messages: list[str] = []
        settings = self.settings
        suites = summarize_suites(fold_repeated_tests(self.records, self._crashed_samples), settings.gate_rule)
        baseline = None
        if settings.baseline is not None:
            # --promptopt-baseline (or the default baseline file): shown by every reporter; the
            # regression gate fails the run on a significant drop, unless the run replaces it.
            baseline = dataclasses.replace(
                compare_with_reference(suites, settings, self.left_out.case_ids, self.left_out.narrowed),
                gating=settings.update_baseline is None,
            )
            if baseline.error:
                messages.append(baseline.error)
        if settings.update_baseline is not None and incomplete_reason(exit_status, stopped_early) is not None:
            messages.append(
                f"baseline not written to {settings.update_baseline}: pytest did not run the whole session "
                "(interrupted, or stopped at -x/--maxfail), so it would hold only the cases that ran"
            )
        elif settings.update_baseline is not None:
            from .baseline_files import write_baseline_file

            outcomes, files, kept = self._baseline_update(suites, messages)
            where = self._write(
                "baseline", settings.update_baseline, lambda p: write_baseline_file(p, outcomes, files), messages
            )
            if where is not None:
                messages.append(
                    f"baseline written: {where} ({counted(len(outcomes), 'suite')}{kept}); review and commit it"
                )
        gated = RunSummary(suites, baseline)
        if not gated.gates_passed and exit_status == 0:
            exit_status = 1
        repairs: tuple[Any, ...] = ()
        if settings.repair is not None:
            # --promptopt-repair: a proposal for each failing suite; the gates' verdict stands.
            from .repair.run import repair_run

            repairs = tuple(repair_run(self, gated, settings.repair))
        run = self._summary = RunSummary(suites, baseline, repairs, exit_status)
        if settings.report_path is not None:
            from .report.json_report import write_report

            self._write(
                "JSON report", settings.report_path, lambda p: write_report(p, run, exit_status=exit_status), messages
            )
        html_path = settings.html_path
        if html_path is not None:  # also logged to MLflow as an artifact
            from .report.html_report import write_html

            html_path = self._write(
                "HTML report", html_path, lambda p: write_html(p, run, exit_status=exit_status), messages
            )
        mlflow = settings.mlflow
        if mlflow is not None:
            from .mlflow.layout import SessionMeta
            from .mlflow.writer import MlflowWriter

            meta = SessionMeta.collect(
                run,
                rootdir=settings.rootdir,
                pytest_args=pytest_args,
                started=self.started,
                exit_status=exit_status,
                stopped_early=stopped_early,
                left_out=self.left_out.counts,
                partial=self.left_out.describe(),
                narrowed=sorted(self.left_out.narrowed),
            )
            # Handed to the writer started with the session (without one, logged here and now);
            # `mlflow_outcome()` waits for it.
            if self._writer is None:
                self._writer = MlflowWriter(mlflow)
            self._writer.submit(run, meta, artifacts=[html_path] if html_path else [])
            # From here SIGTERM ends this process at once again: the writer, in a session of its
            # own, finishes the run it was handed (docs/mlflow.md, "Nothing is lost").
            self._release_sigterm()
        return exit_status, messages

    def _baseline_update(
        self, suites: Iterable[SuiteSummary], messages: list[str]
    ) -> tuple[dict[str, tuple[str, list[Any]]], dict[str, str], str]:
        """What --promptopt-update-baseline writes: this run's outcomes, merged into the old file
        when there is one (`baseline_files.merge_baseline`: what this run did not select or run
        keeps its entry), and the words for what was kept."""
        from .baseline_files import BaselineFileError, merge_baseline, read_baseline_file

        suites = list(suites)
        outcomes = suite_outcomes(suites)
        files = {s.info.id: s.info.file for s in suites if s.dataset is None}
        path = self.settings.update_baseline
        if path is None or not path.is_file():
            return outcomes, files, ""
        try:
            old = read_baseline_file(path)
        except BaselineFileError as exc:
            messages.append(f"{exc}: the new baseline holds only this run's suites")
            return outcomes, files, ""
        rootdir, left_out = self.settings.rootdir, self.left_out
        merged, old_files, kept_suites, kept_cases = merge_baseline(
            old, outcomes, left_out.case_ids, left_out.narrowed, left_out.files, lambda file: (rootdir / file).is_file()
        )
        kept = []
        if kept_suites:
            kept.append(f"{len(kept_suites)} kept from the old file: this run did not run them")
        if kept_cases:
            kept.append(f"{counted(kept_cases, 'case')} kept from the old file: not selected in this run")
        return merged, {**old_files, **files}, "".join(f"; {k}" for k in kept)

    def start_mlflow(self, spawned: Any = None) -> None:
        """Start the MLflow writer (mlflow/writer.py) so that importing mlflow and opening the
        store happen beside the test loop: on the controller, with MLflow reporting on. `spawned`
        is a writer the plugin started as soon as the command line asked for MLflow."""
        if self._writer is not None:
            return
        if not (self.is_controller and self.settings.mlflow is not None):
            if spawned is not None:
                spawned.close()
            return
        from .mlflow.writer import MlflowWriter

        self._writer = spawned if spawned is not None else MlflowWriter.spawn()
        self._writer.begin(self.settings.mlflow)

    def mlflow_outcome(self) -> Any:
        """The MLflow reporting outcome (mlflow/upload.Outcome), waiting for the writer if it
        is still logging; None when nothing was reported."""
        if self.mlflow is None and self._writer is not None:
            self.mlflow = self._writer.outcome()
        return self.mlflow

    def _write(self, kind: str, path: Path, write: Callable[[Path], None], messages: list[str]) -> Path | None:
        """Write one of the run's files; when its path fails now (checked writable at start-up),
        to a fallback named in `messages`; when that fails too, say so. Nothing here stops the
        run's other outputs: the other reports and MLflow still go out."""
        from .report.paths import write_with_fallback

        try:
            written, moved = write_with_fallback(path, self.run_token, write)
        except OSError as exc:
            messages.append(f"{kind} not written: {path} and its fallback failed ({exc})")
            return None
        if moved:
            messages.append(f"{kind}: {moved}")
        self.written[kind] = written
        return written

    def summary(self) -> RunSummary:
        """The run as reported: after `finish`, the one `RunSummary` every reporter read; before
        (a progress line, a crash record), the records so far."""
        if self._summary is None:
            self._summary = summarize(fold_repeated_tests(self.records, self._crashed_samples), self.settings.gate_rule)
        return self._summary

    def keep_preparation(self, preparation: PreparationAhead | None) -> None:
        """A model's preparation running in a child process (`LocalModel.prepare_ahead`), to stop
        when the session closes if it is still running."""
        if preparation is not None:
            self._preparations.append(preparation)

    def close(self) -> None:
        self._release_sigterm()
        if self._writer is not None:  # waits for a run being logged; stops a writer that got none
            self._writer.close()
            self.mlflow_outcome()
        # Before the runner, which waits for its call threads: one may be waiting on a check's
        # worker in an endless loop, which Ctrl-C does not reach (a process group of its own).
        self.sandbox.close()
        if self._runner is not None:
            self._runner.close()
        # After the runner: a case waiting for the preparation gets the child's copy rather than
        # building it again once the child is stopped (an interrupted first run).
        for preparation in self._preparations:
            preparation.stop()
        if self._cache is not None:
            self._cache.close()
        if self.is_controller:
            self.registry.discard()


def _execution_settings(settings: Settings) -> ExecutionSettings:
    """How the run's cases run (runners/execution.py), read from its settings once."""
    scale = settings.scale
    return ExecutionSettings(
        cache_path=settings.cache_path,
        cache_mode=settings.cache_mode,
        timeout_s=settings.timeout_s,
        retries=scale.retries,
        rate_limits=scale.rate_limits,
        concurrency=scale.concurrency,
        batch_size=scale.batch_size,
        judge=settings.judge,
    )
