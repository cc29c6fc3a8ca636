"""pytest nodes for suite files: one `CaseItem` per case, so -k, --lf, JUnit and xdist work per case."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from .assertions.base import Assertion
from .assertions.similarity import warm_up_embedders
from .execute import case_requests, error_result, raised
from .judging import judge_calls
from .models.specs import ModelSpec
from .records import CaseResult
from .report.failure import describe_case
from .report.paths import usable_folder
from .selection import WORKEROUTPUT_KEY, LeftOut
from .session import PromptoptSession, record_key, session_key
from .suite.chains import SEQUENCE
from .suite.model import Case, SuiteError
from .tolerance import tolerate
from .wording import counted


def _case_nodeid(parent: pytest.Collector, name: str) -> Any:
    """pytest >= 9.2 compares structured node ids: `file::name[params]` read back from the
    --lf cache parses as name + params, so a non-Function item must be built the same way or
    --lf/--ff never match it. Older pytest compares strings and needs nothing."""
    parent_id = getattr(parent, "id", None)
    base, bracket, params = name.partition("[")
    if parent_id is None or not hasattr(parent_id, "with_params") or not bracket:
        return None
    return parent_id.child(base).with_params(params.removesuffix("]"))


_order_key = pytest.StashKey[dict[int, int]]()
_worker_key = pytest.StashKey[Any]()
_warmed_key = pytest.StashKey[set[str]]()  # model spec keys whose adapters were warmed up


def upcoming_items(item: pytest.Item) -> Iterator[pytest.Item]:
    """The items this process will run after `item`, as far as it knows them, so the runner
    can start their model calls now."""
    items = item.session.items
    if hasattr(item.config, "workerinput"):
        # An xdist worker is sent its tests a chunk at a time; those it holds wait in its queue.
        # `torun`/`nextitem_index` are xdist internals (3.x): without them, no look-ahead.
        worker = _xdist_worker(item.config)
        queue = getattr(worker, "torun", None)
        if queue is None or not hasattr(queue, "lock"):
            return iter(())
        with queue.lock() as waiting:
            indices = [worker.nextitem_index, *waiting]
        return (items[i] for i in indices if type(i) is int and 0 <= i < len(items))
    order = item.session.stash.get(_order_key, None)
    if order is None or len(order) != len(items):
        order = item.session.stash[_order_key] = {id(it): n for n, it in enumerate(items)}
    index = order.get(id(item))
    return iter(()) if index is None else (items[i] for i in range(index + 1, len(items)))


def _xdist_worker(config: pytest.Config) -> Any:
    worker = config.stash.get(_worker_key, None)
    if worker is None:
        # xdist registers its worker plugin without a name
        found = [p for p in config.pluginmanager.get_plugins() if type(p).__name__ == "WorkerInteractor"]
        worker = config.stash[_worker_key] = found[0] if found else False
    return worker or None


def _keeping_warning_filters(config: pytest.Config, load: Callable[[], None]) -> None:
    """Run `load`, keeping the warning filters it installs for the rest of the run.

    Libraries install process-wide filters when imported (litellm silences pydantic's notices
    about its types), but pytest restores the filters when its warning capture around collection
    ends, so they would be gone when the cases run. They are added to pytest's configured
    filters, which pytest applies around every test."""
    before = list(warnings.filters)
    load()
    added = [f for f in warnings.filters if f not in before]
    for action, message, category, module, lineno in reversed(added):  # the newest filter last: it wins
        parts = [
            action,
            message.pattern if message else "",
            f"{category.__module__}.{category.__qualname__}",
            module.pattern if module else "",
            str(lineno or ""),
        ]
        if not any(":" in part for part in parts):  # pytest's filter syntax splits on ':'
            config.addinivalue_line("filterwarnings", ":".join(parts))


class CaseFailed(AssertionError):
    """The model answered and the case's assertions failed."""


class SuiteWarning(pytest.PytestWarning):
    """A suite file loads, but a key is ignored or something runs differently from promptfoo."""


def note_selection(session: pytest.Session, left_out: LeftOut, is_python_test: Callable[[pytest.Item], bool]) -> None:
    """Collection is done: tell `left_out` (selection.py) what pytest kept of the suites' cases,
    which files the items come from, the Python suites of modules a node id named (pytest never
    collected their other tests; `is_python_test` tells a Python prompt test, looked for only
    then) and the files --lf skipped; an xdist worker sends it on."""
    from .python_tests import python_case_key

    config = session.config
    named = {
        (config.invocation_params.dir / str(arg).split("::", 1)[0]).resolve() for arg in config.args if "::" in str(arg)
    }
    lf = config.pluginmanager.get_plugin("lfplugin")
    left_out.collected(
        (item.selection_key for item in session.items if isinstance(item, (CaseItem, DatasetItem))),
        {item.nodeid.split("::", 1)[0] for item in session.items},
        {
            python_case_key(item)[0]
            for item in (session.items if named else ())
            if isinstance(item, pytest.Function) and is_python_test(item) and item.path.resolve() in named
        },
        int(getattr(lf, "_skipped_files", 0) or 0),  # pytest's count of the files --lf did not collect
    )
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # xdist: the controller collects nothing; it hears it from here
        workeroutput[WORKEROUTPUT_KEY] = left_out.found()


def setup_only(config: pytest.Config) -> bool:
    """--setup-only / --setup-plan: pytest sets up and tears down, runs no test; no model call,
    no record."""
    return bool(config.getoption("setuponly", False) or config.getoption("setupplan", False))


class SuiteFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        # Only with --promptopt: without it, plugin.py collects a skipped.SkippedSuiteFile instead.
        session: PromptoptSession = self.config.stash[session_key]
        display = (
            self.path.relative_to(self.config.rootpath).as_posix()
            if self.path.is_relative_to(self.config.rootpath)
            else str(self.path)
        )
        loaded = session.load_suite(self.path, display, backend=session.settings.backend)
        if getattr(self.config, "workerinput", {}).get("workerid", "gw0") == "gw0":
            # Every xdist worker loads the suite; one of them says what it found (one line each).
            for notice in loaded.warnings:
                # at the suite's line in pytest's warning summary (Node.warn would give line 0)
                warnings.warn_explicit(
                    SuiteWarning(notice.detail), category=None, filename=str(self.path), lineno=notice.line or 1
                )
        # What pytest then keeps of them tells whether the session left cases out (selection.py)
        offered = [part.name for part in loaded.dataset.slices] if loaded.dataset else [c.case_id for c in loaded.cases]
        session.left_out.offered(loaded.info.id, offered)
        if loaded.dataset is not None:  # one item per prompt x provider, all rows (see DatasetItem)
            self._warm_up(session, [part.make_case.model for part in loaded.dataset.slices])
            for part in loaded.dataset.slices:
                yield DatasetItem.from_parent(
                    self, name=part.name, nodeid=_case_nodeid(self, part.name), spec=loaded.dataset, part=part
                )
            return
        assertions = [a for c in loaded.cases for a in c.assertions]
        # The cache decides only where it knows every request: not for a chain (its prompts take
        # earlier answers), nor with model-graded checks (a judge would import litellm mid-test)
        known = not loaded.sequence and judge_calls(assertions) == 0
        self._warm_up(session, [case.model for case in loaded.cases], assertions, loaded.cases if known else None)
        if loaded.sequence:  # storeOutputAs / _conversation: one node, run in order in one process
            yield CaseSequence.from_parent(self, name=SEQUENCE, cases=loaded.cases)
            return
        for case in loaded.cases:
            yield CaseItem.from_parent(self, name=case.name, nodeid=_case_nodeid(self, case.name), case=case)

    def _warm_up(
        self,
        session: PromptoptSession,
        specs: Iterable[ModelSpec],
        assertions: Iterable[Assertion] = (),
        cases: Sequence[Case] | None = None,
    ) -> None:
        """Build each model's adapter now and let it load what its first call needs (`warm_up()`,
        optional: a hosted model imports litellm), and the offline embedder of `similar` checks,
        so that is done during collection, on the main thread, rather than by the first case on a
        grading thread. Before those, a model may start slower work in a process of its own
        (`prepare_ahead()`: the bundled model's first-run preparation), which the session stops
        when it closes. Not for --collect-only, nor for the Spark backend (cases run on Spark).
        A model the response cache answers for all of `cases` (when known; in replay mode, always)
        is not loaded: a warm rerun would load it for nothing (litellm's import alone is seconds of
        CPU); a later file that needs it warms it then, and a case that misses after all loads it
        when it runs."""
        if self.config.option.collectonly or session.settings.backend == "spark":
            return
        warmed = self.config.stash.setdefault(_warmed_key, set())
        models = []
        for spec in {spec.key: spec for spec in specs}.values():
            if spec.key in warmed:
                continue
            try:
                model = session.model_for(spec)
            except Exception:  # reported by the cases that use it, when they run
                warmed.add(spec.key)
                continue
            if _answered_by_cache(
                session, model, None if cases is None else [c for c in cases if c.model.key == spec.key]
            ):
                continue
            warmed.add(spec.key)
            models.append(model)
        for model in models:  # first: a first run's preparation goes on beside what follows
            prepare_ahead = getattr(model, "prepare_ahead", None)
            if callable(prepare_ahead):
                try:
                    session.keep_preparation(prepare_ahead())
                except Exception:  # the first case prepares the model, and reports what fails
                    continue
        _keeping_warning_filters(self.config, lambda: warm_up_embedders(assertions))
        for model in models:
            warm_up = getattr(model, "warm_up", None)
            if callable(warm_up):
                _keeping_warning_filters(self.config, warm_up)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:  # type: ignore[override]
        if isinstance(excinfo.value, SuiteError):
            return f"invalid prompt suite: {excinfo.value}"
        return super().repr_failure(excinfo)


def _answered_by_cache(session: PromptoptSession, model: Any, cases: Sequence[Case] | None) -> bool:
    """Whether the cache answers every call of `cases` to `model` (None: calls not known)."""
    try:
        requests = None
        if cases is not None:
            requests = [request for case in cases if case.error is None for request in case_requests(case)]
        return session.cache.answers_all(model, requests)
    except Exception:  # a case whose request cannot be built says so when it runs: load the model
        return False


class CaseSequence(pytest.Collector):
    """The cases of a suite whose cases use the outputs of the ones before them: collected
    under this node so that xdist's scheduler keeps them together (runners/scheduling.py)."""

    def __init__(self, *, cases: tuple[Case, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cases = cases

    def collect(self) -> Iterator[pytest.Item]:
        for case in self.cases:
            yield CaseItem.from_parent(self, name=case.name, nodeid=_case_nodeid(self, case.name), case=case)

    def items_in_order(self) -> list[tuple[Case, str]]:
        """Its cases and their node ids, in the suite's order (whatever order pytest runs them in)."""
        return [(case, str(_case_nodeid(self, case.name))) for case in self.cases]


class CaseItem(pytest.Item):
    promptopt_item = True  # its teardown report carries its record (plugin.pytest_runtest_makereport)

    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_marker("promptopt")  # `-m promptopt` / `-m "not promptopt"` select prompt tests
        self.case = case
        self.result: CaseResult | None = None
        self.shrunk: Any = None  # a failing generated case's `fuzz.Shrunk`: the minimal failing input

    @property
    def selection_key(self) -> tuple[str, str]:
        """(suite id, case id): what selection.LeftOut counts."""
        return self.case.suite.id, self.case.case_id

    def setup(self) -> None:
        # The model call happens in setup, so a model fault is a pytest *error*, not a failure.
        if setup_only(self.config):
            return  # --setup-only / --setup-plan: pytest runs no test, so no model is called
        session = self.config.stash[session_key]
        sequence = self.parent.items_in_order() if isinstance(self.parent, CaseSequence) else ()
        self.case = session.prepare_case(self.case, sequence)
        upcoming = ((item.case, item.nodeid) for item in upcoming_items(self) if isinstance(item, CaseItem))
        try:
            self.result = session.run_case(self.case, self.nodeid, upcoming)
        except (KeyboardInterrupt, pytest.exit.Exception):
            raise
        except BaseException as exc:  # the runner let it through (a timeout while waiting, ...)
            self.result = error_result(self.case, self.nodeid, f"the case did not finish: {raised(exc)}")
        self.stash[record_key] = session.encode(self.case.suite, self.result)
        if self.result.error:
            # pytest renders setup errors without repr_failure; pytrace=False shows just the text.
            pytest.fail(describe_case(self.result, self.case.rendered_prompt), pytrace=False)

    def lost_record(self, cause: str | None) -> str:
        """The record of a case whose setup or call raised before it had one: an error, so the
        case is counted whatever happened (plugin.pytest_runtest_makereport, at teardown)."""
        session = self.config.stash[session_key]
        self.result = error_result(self.case, self.nodeid, f"the case did not finish: {cause or 'no result'}")
        return session.encode(self.case.suite, self.result)

    def runtest(self) -> None:
        result = self.result
        assert result is not None
        if result.passed:
            return
        shrink_error = ""
        if self.case.fuzz is not None:  # a generated case: Hypothesis shrinks the failure (docs/fuzzing.md)
            from .shrinking import shrink_failure

            session = self.config.stash[session_key]
            try:
                self.shrunk = shrink_failure(
                    self.case, session.model_for, session.cache, session.shrunk, session.judges, session.sandbox
                )
            except (KeyboardInterrupt, pytest.exit.Exception):
                raise
            except BaseException as exc:  # the case failed; only its shrinking stopped
                shrink_error = f" (shrinking stopped: {raised(exc)})"
        gates = self.case.suite.gates
        if gates:
            shrunk = f"; {self.shrunk.summary()}" if self.shrunk is not None else ""
            tolerate(", ".join(g.describe() for g in gates), f"{result.reason}{shrunk}{shrink_error}")
        raise CaseFailed(result.reason + shrink_error)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, CaseFailed) and self.result is not None:
            text = describe_case(self.result, self.case.rendered_prompt)
            return text if self.shrunk is None else f"{text}\n{self.shrunk.describe()}"
        if isinstance(excinfo.value, pytest.xfail.Exception):
            # A case its gates tolerate: the reason is the report (pytest shows it as XFAIL); the
            # plugin's own traceback would only cost a parse of its source files.
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        # pytest shows the domain with dots as '::', so it must not contain the file name.
        return self.path, None, self.name


class DatasetFailed(AssertionError):
    """A dataset item's rows missed its gates (or, without gates, some row failed)."""


class DatasetItem(pytest.Item):
    """All rows of a dataset suite for one prompt x provider, as one item.

    setup: read the rows in chunks, run them through the session's runner (or Spark), write each
    result to the suite's per-case Parquet table and keep only `CaseStats`. The record sent to
    the controller is that `DatasetPart`, never the rows. The verdict (docs/suite-format.md):
    - no row could be scored (every row errored, the source is unreadable): an *error*;
    - with gates: the gates on this item's rows decide; errored rows are left out of them, as
      everywhere, and shown as a warning;
    - without gates: every row must pass; a failed or errored row fails the item;
    - no rows at all, without gates: skipped.
    """

    promptopt_item = True

    def __init__(self, *, spec: Any, part: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_marker("promptopt")
        self.spec = spec  # suite.dataset.DatasetSpec
        self.part = part  # suite.dataset.DatasetSlice
        self.evaluation: Any = None  # dataset.Evaluation
        self.cases_file: Path | None = None

    @property
    def suite(self) -> Any:
        return self.part.make_case.suite

    @property
    def selection_key(self) -> tuple[str, str]:
        """(suite id, slice name): what selection.LeftOut counts."""
        return self.suite.id, self.part.name

    def setup(self) -> None:
        from . import case_table
        from .case_stats import DatasetPart
        from .runners import dataset

        if setup_only(self.config):
            return
        session = self.config.stash[session_key]
        # The run token is the controller's (xdist workers get it), so all items of a suite in
        # one session write their parts into one folder.
        folder = case_table.cases_folder(session.settings.cache_path.parent, self.suite.id, session.run_token)
        folder, moved = usable_folder(folder, session.run_token)  # a read-only project: the temporary folder
        if moved:
            session.notice(f"per-case table of suite {self.suite.name}: {moved}")
        self.cases_file = folder / f"{self.part.ident or 'all'}.parquet"
        if session.settings.backend == "spark":
            self.evaluation = self._on_spark(session, folder)
        else:
            from .suite.dataset import read_rows

            with case_table.CasesWriter(self.cases_file) as writer:
                self.evaluation = dataset.evaluate(
                    read_rows(self.spec.source), self.part.make_case, session.runner.map, writer, f"{self.nodeid}::"
                )
        factory = self.part.make_case
        record = DatasetPart(
            self.evaluation.stats,
            str(folder),
            self.spec.source.describe(),
            {factory.prompt_index: factory.prompt.template},
        )
        self.stash[record_key] = session.encode(self.suite, record)
        stats = self.evaluation.stats
        if self.evaluation.read_error:
            pytest.fail(
                f"{self.spec.source.describe()}: reading stopped after {stats.cases} rows: {self.evaluation.read_error}\n"
                + self._details(),
                pytrace=False,
            )
        if stats.cases and stats.errors == stats.cases:
            pytest.fail(f"all {stats.cases} rows errored\n" + self._details(), pytrace=False)

    def _on_spark(self, session: Any, folder: Path) -> Any:
        """The rows are read and evaluated on Spark (runners/spark.py), which writes this item's
        part of the per-case table; its stats are then streamed back from it, a batch at a time."""
        from . import case_table
        from .runners import dataset, spark

        factory = self.part.make_case
        output = folder / (self.part.ident or "all")
        try:
            frame = spark.read_source(session.spark(), self.spec.source)
            missing = [
                f"{column} (dataset.vars.{var})"
                for var, column in self.spec.source.renames
                if column not in frame.columns
            ]
            if missing:
                pytest.fail(
                    f"{self.spec.source.describe()} has no column {', '.join(missing)}; its columns: "
                    f"{', '.join(c for c in frame.columns if not c.startswith('__promptopt'))}",
                    pytrace=False,
                )
            # Models and judges a Spark worker cannot build itself (objects, a conftest's
            # make_model hook) travel with the job.
            execution = session.spark_execution([factory.model], (assertion for assertion, _ in factory.assertions))
            spark.evaluate_frame(
                session.spark(), frame, factory, execution, nodeid_prefix=f"{self.nodeid}::", output_path=output
            )
        except spark.SparkBackendError as exc:  # an unreadable source, a failed job: one line, no traceback
            pytest.fail(f"{self.spec.source.describe()}: {exc}", pytrace=False)
        self.cases_file = output
        evaluation = dataset.Evaluation()
        for result in case_table.iter_results(output):
            evaluation.add(result)
        return evaluation

    def runtest(self) -> None:
        import warnings

        from .gates import decide

        stats = self.evaluation.stats
        gates = self.suite.gates
        if not gates:
            if not stats.cases:
                pytest.skip(f"{self.spec.source.describe()} has no rows")
            if stats.failed or stats.errors:
                raise DatasetFailed("no gates, so every row must pass")
            return
        verdicts = [decide(g, stats.pass_rate, stats.metric_means(), pass_k=stats.pass_k) for g in gates]
        failing = [v for v in verdicts if not v.passed]
        if failing:
            raise DatasetFailed(
                f"gate{'s' if len(failing) > 1 else ''} failed: " + "; ".join(g.reason for g in failing)
            )
        if stats.errors:
            warnings.warn(
                pytest.PytestWarning(
                    f"{self.nodeid}: {stats.errors} of {stats.cases} rows errored (left out of the gates); see {self.cases_file}"
                ),
                stacklevel=1,
            )

    def _details(self) -> str:
        from .report.failure import _clip

        stats = self.evaluation.stats
        rate = "-" if stats.pass_rate is None else f"{stats.pass_rate * 100:.1f}%"
        lines = [
            f"{counted(stats.cases, 'row')}: {stats.passed} passed, {stats.failed} failed, {counted(stats.errors, 'error')} "
            f"(pass rate {rate})"
        ]
        means = stats.metric_means()
        if means:
            lines.append("metrics: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(means.items())))
        if self.evaluation.failures:
            lines.append(f"first {len(self.evaluation.failures)} failed or errored rows:")
            for result in self.evaluation.failures:
                if result.error:
                    lines.append(f"  {result.name}: ERROR {result.error}")
                else:
                    lines.append(f"  {result.name}: {result.reason}")
                    lines.append("    output: " + _clip(" ".join((result.output or "").split()), 200))
        lines.append(f"per-case results: {self.cases_file}")
        return "\n".join(lines)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, DatasetFailed) and self.evaluation is not None:
            return f"{self.spec.source.describe()}: {excinfo.value}\n{self._details()}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name
