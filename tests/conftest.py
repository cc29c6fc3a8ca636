from __future__ import annotations

import gc
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import _pytest.pytester as pytester_module
import importlib_metadata  # noqa: F401  (see below)
import pytest

from pytest_promptopt.models import local_weights

# importlib_metadata (imported by litellm) installs its finder on `sys.meta_path` and disables the
# standard library's. Imported first inside an in-process pytester run, its finder would leave
# with pytester's restored `sys.meta_path` and the disabled one would stay disabled: no entry point
# found, so the next run has no plugins ("unrecognized arguments: --promptopt"). Imported here,
# its finder belongs to every snapshot.

pytest_plugins = ["pytester"]

# The three ways users run the plugin; pytester tests that exercise the pytest integration run
# in each of them (DEVELOPERS.md: plain, -n 2, -p no:xdist).
MODES = {
    "plain": [],
    "xdist": ["-n", "2"],
    "no-xdist": ["-p", "no:xdist"],
}


# A suite on the echo model (output = rendered prompt): two passing cases and one failing.
ECHO_SUITE = """
description: capitals
providers: [echo]
prompts: ["The capital of {{country}} is {{capital}}."]
tests:
  - description: france
    vars: {country: France, capital: Paris}
    assert: [{type: contains, value: Paris}, {type: icontains, value: "{{country}}", metric: mentions}]
  - description: spain
    vars: {country: Spain, capital: Madrid}
    assert: [{type: contains, value: Madrid}]
  - description: wrong
    vars: {country: Italy, capital: Milan}
    assert: [{type: contains, value: Rome, metric: mentions}]
"""


class KeepingLibraries(pytester_module.SysModulesSnapshot):
    """pytester's snapshot of `sys.modules`, keeping the libraries a pytester run imported.

    pytester removes from `sys.modules`, after each in-process run and when a test ends, every
    module imported meanwhile. For a library imported first by such a run (mlflow, torch,
    numpy, PyYAML), the next import then loads it again next to the copies other modules hold,
    and C extensions cannot be loaded twice: torch fails with "bad call flags", numpy refuses,
    and PyYAML's libyaml loader, paired with a new `yaml` package, fails every document. Only the
    modules of the runs' own folders (test files, conftests, checks.py) are dropped, as pytester
    intends: they live in the temporary directory, and the next test's files of the same name
    must load afresh.
    """

    def __init__(self, preserve: Any = None) -> None:
        def keep(name: str) -> bool:
            module = sys.modules.get(name)
            file = str(getattr(module, "__file__", None) or "")
            dropped = file.startswith(TEMPORARY) and not any(Path(file).is_relative_to(p) for p in INSTALLED)
            return bool(preserve and preserve(name)) or not dropped

        super().__init__(preserve=keep)


TEMPORARY = str(Path(tempfile.gettempdir()).resolve())
# A checkout in the temporary directory (a CI clone in /tmp) holds the plugin and its virtualenv
# there too: those are libraries, kept like any other.
INSTALLED = tuple(str(Path(p).resolve()) for p in (Path(__file__).parents[1], sys.prefix))


def pytest_configure(config: pytest.Config) -> None:
    # pytester builds its snapshots through this module-level name
    pytester_module.SysModulesSnapshot = KeepingLibraries  # type: ignore[misc]
    share_the_machine_cache()
    let_children_cache_bytecode()
    start_spark_for_short_runs()
    collect_garbage_less_often()
    let_children_take_ctrl_c()


def let_children_take_ctrl_c() -> None:
    """Give the processes the tests start Ctrl-C as a terminal gives it, even when the suite itself
    was started in the background of a non-interactive shell (`pytest tests -n 2 &` in a script).

    Such a shell starts its background jobs with SIGINT ignored, and every process below inherits
    that: the tests that send SIGINT to a `pytest --promptopt` run or to `serve` (a user's Ctrl-C)
    then saw it ignored and failed. A handler of our own, unlike an ignored signal, is not
    inherited: the processes the tests start get SIGINT's default again, and Python installs
    its KeyboardInterrupt handler in them as it does in a terminal.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def collect_garbage_less_often() -> None:
    """Run Python's cyclic garbage collector less often in the suite's own processes.

    They import mlflow, SQLAlchemy, litellm, torch and pyspark (millions of objects that live as
    long as the process), and pytester's in-process runs parse and rewrite test files in bursts of
    short-lived objects. With the default thresholds (700, 10, 10) those bursts set off full
    collections that walk the whole heap: the two workers of the README's test command spent 75
    of their 282 s of CPU collecting, 34 s of it after `ast.parse` (measured with `gc.callbacks`,
    docs/performance.md). Fewer young collections and a full one only every 100 of the middle
    generation's keep the same garbage collected, later; the processes stay near 330 MB.
    """
    gc.set_threshold(10_000, 20, 100)


def share_the_machine_cache() -> None:
    """Give pytester runs this machine's PROMPTOPT_HOME, as a user's runs have it.

    pytester points HOME at each test's temporary folder, so without this every pytester run
    would be a first run on a fresh machine: the bundled model's weights dequantised and
    converted again (~25 s), MLflow's store template migrated again (~8 s). The folder is fixed
    here, before any test changes HOME, and reaches subprocesses (pytester's, Spark's executors)
    through the environment. Tests of that preparation give their own folder (cache_dir, home).
    """
    if not os.environ.get("PROMPTOPT_HOME"):
        os.environ["PROMPTOPT_HOME"] = str(local_weights.default_home())


def let_children_cache_bytecode() -> None:
    """Let the interpreters the tests start (xdist's workers, pytester's subprocesses and theirs,
    MLflow's writer) keep their bytecode, as a user's machine does by default.

    With PYTHONDONTWRITEBYTECODE set (as on these machines), each of the suite's few hundred
    interpreters compiled the plugin's modules again and rewrote the asserts of every pytest
    plugin module again (pytest caches those rewrites only where bytecode may be written): a
    `pytest --promptopt` start took 1.5 s of CPU instead of 0.75 s. The caches go where Python
    puts them (`__pycache__`, git-ignored).
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


# The JIT's first tier only, one garbage collector thread: for JVMs that live seconds.
SHORT_RUN_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def start_spark_for_short_runs() -> None:
    """Start the suite's Spark JVMs (local sessions, the Connect server, in this process and in
    pytester's subprocesses) with JVM options for runs of seconds, unless SPARK_SUBMIT_OPTS is set.

    Each of them runs a few dozen cases and stops: the optimising JIT compiler and the parallel
    collector's threads cost more CPU than they save. A pytest-on-local-Spark run of three cases:
    24.6 -> 14.5 s of CPU, 14.7 -> 11.9 s wall (docs/performance.md, "The project's test suite");
    the code the JVM runs, and so every result, is the same. docs/spark.md gives users the same option.
    """
    os.environ.setdefault("SPARK_SUBMIT_OPTS", SHORT_RUN_JVM)


# Third-party pytest plugins this environment has: anyio's (a dependency of httpx; it imports
# trio, which selenium brings, ~90 ms) and hypothesis' (at the terminal summary it imports all of
# hypothesis, ~190 ms, and its `register_random` runs a full collection). Each of the ~320 pytest
# processes the tests start (pytester's subprocess runs, their xdist workers) paid for them: one
# test in a fresh pytest took 0.69 s of CPU with them, 0.30 s without (docs/performance.md,
# "Garbage collection and unrelated plugins"). The plugin under test never meets anyio's; it
# meets hypothesis' only in fuzz suites and `@given` prompt tests (the `fuzz` extra: its
# health check is the plugin's to turn off), so modules marked `hypothesis_plugin` keep it.
# Runs in this process still have both (imported here already, they cost nothing there).
PYTEST_WITH_HYPOTHESIS = (sys.executable, "-m", "pytest", "-p", "no:anyio")
PYTEST = (*PYTEST_WITH_HYPOTHESIS, "-p", "no:hypothesispytest")  # a child pytest


@pytest.fixture
def pytester(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> pytest.Pytester:
    """pytester, with its subprocess runs started as `PYTEST` (`PYTEST_WITH_HYPOTHESIS` in tests
    marked `hypothesis_plugin`), and the configs it parses (`parseconfigure`, `getitem`)
    unconfigured without `gc.collect()`.

    pytest's unraisable-exception plugin runs `gc.collect()` twice when a config is unconfigured;
    pytester turns that off for its in-process runs ("slows down inline pytester runs too much")
    but not for the configs it parses. In this process, with mlflow, SQLAlchemy and litellm
    imported, each collection walks millions of objects (~0.45 s): a test of settings that parses
    eight configs spent 7.5 of its 14.6 s of CPU in them.
    """
    from _pytest.unraisableexception import gc_collect_iterations_key

    parse = pytester.parseconfig

    def parseconfig(*args: str | os.PathLike[str]) -> pytest.Config:
        config = parse(*args)
        config.stash[gc_collect_iterations_key] = 0
        return config

    monkeypatch.setattr(pytester, "parseconfig", parseconfig)
    command = PYTEST_WITH_HYPOTHESIS if request.node.get_closest_marker("hypothesis_plugin") else PYTEST
    monkeypatch.setattr(pytester, "_getpytestargs", lambda: command)
    return pytester


@pytest.fixture(params=list(MODES), ids=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return list(MODES[request.param])


@pytest.fixture
def run_pytest(pytester: pytest.Pytester) -> Any:
    """Run pytest in pytester's temporary directory: in this process when that is what a user's
    single `pytest` process does (no `-n`), in a subprocess under xdist (its workers are processes
    anyway) or when a test asks for one (`subprocess=True`: signals, crashes, a fresh interpreter).

    In-process runs share this process's imports (litellm, mlflow, the bundled model's runtime), so
    they cost a fraction of a subprocess; the plugin keeps no module-level state a run sets
    (docs/architecture.md), which is what makes them equivalent.

    MLflow logging is on by default with --promptopt; it costs seconds per run (import, a fresh
    SQLite store), so only tests that pass `mlflow=True` keep it on.
    """

    def run(*args: str, mlflow: bool = False, subprocess: bool = False) -> pytest.RunResult:
        if "--promptopt" in args and not mlflow:
            args = (*args, "--promptopt-no-mlflow")
        # Spark keeps one JVM and its Python workers per process, started with the first run's
        # folder on their path: each Spark run gets a process of its own, as a user's would.
        xdist = "-n" in args or any(a.startswith("--numprocesses") for a in args)
        if subprocess or xdist or "spark" in args:
            return pytester.runpytest_subprocess(*args)
        return pytester.runpytest_inprocess(*args)

    return run


# --------------------------------------------------------------------------------------------
# Scheduling under xdist (README's `-n 2`): the longest work starts first, so that no minute-long
# test ends the run alone, and a module whose module-scoped fixture starts a server, a Spark
# session or a shared run stays on one worker (its fixture is built once, not once per worker).

# Modules run whole on one worker: their module-scoped fixtures are expensive to build twice.
WHOLE_MODULES = {
    "test_examples.py",  # main_job: the README's main job on the bundled model
    "test_spark.py",  # a local Spark session, then a Spark Connect server
    "test_gateway.py",  # an MLflow AI Gateway server and two model servers
    "test_mlflow_ui.py",  # an MLflow server and its UI in Chromium
    "test_mlflow_auth.py",  # an MLflow server behind a proxy that asks for credentials
    "test_serve.py",  # a model server
    "test_promptfoo_code.py",  # our results in the three modes, compared test by test
    "test_promptfoo_compat.py",
    "test_promptfoo_format.py",
}

# Rough seconds of the longest work (measured under -n 2, see the report of issue 17): the order
# in which xdist starts it. Everything else keeps its file order after these.
LONGEST_FIRST = {
    "test_spark.py": 129,
    "test_examples.py": 65,
    "test_gateway.py": 55,
    "test_mlflow_ui.py": 50,
    "test_mlflow_auth.py": 25,
    "test_bundled_model.py::test_preparing_reads_the_gguf_once_and_gets_the_same_weights_and_tokenizer": 15,
    "test_faults.py::test_spark_executors_rebuild_a_corrupt_cache_and_store_no_secret": 16,
    "test_bundled_model.py::test_a_first_run_prepares_the_weights_in_a_child_while_collecting_and_the_first_case_waits_for_it": 25,
    "test_scale.py::test_a_warm_rerun_makes_no_call_under_xdist": 22,
    "test_bundled_model.py::test_two_processes_preparing_the_ctranslate2_copy_at_once_build_it_once": 22,
    "test_scale.py::test_hosted_calls_overlap_up_to_the_concurrency_and_results_match_every_mode": 20,
    "test_mlflow_faults.py::test_a_server_killed_after_the_session_run_exists_is_marked_failed_by_upload": 20,
    "test_dataset.py::test_spark_backend_gives_the_local_results_and_takes_a_hook_made_judge_along": 20,
    "test_faults.py::test_spark_executors_run_a_read_only_project_without_a_cache": 15,
    "test_strategies.py::test_a_fuzz_suite_on_the_bundled_model_runs_twice_with_identical_results": 8,
    "test_bundled_model.py::test_ctranslate2_replicas_generate_two_batches_at_once_with_the_same_answers": 7,
}


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


def _weight(nodeid: str) -> float:
    module = _module(nodeid)
    if module in WHOLE_MODULES:
        return LONGEST_FIRST.get(module, 0)
    test = module + "::" + nodeid.split("::", 1)[-1].split("[", 1)[0]
    return LONGEST_FIRST.get(test, 0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On xdist workers, the longest work first (a stable sort: whole modules stay together, in
    their order). A plain run keeps the file order."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: -_weight(item.nodeid))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's `load` scheduling, one test at a time in the workers' order, except WHOLE_MODULES,
    each sent to one worker whole. An explicit `--dist` is left to xdist."""
    chosen = [*config.invocation_params.args, *os.environ.get("PYTEST_ADDOPTS", "").split()]
    if config.getoption("dist") != "load" or any(str(a).startswith(("--dist", "-d")) for a in chosen):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LongestFirst(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid.split("::", 1)[0] if _module(nodeid) in WHOLE_MODULES else nodeid

    config.option.loadscopereorder = False  # the workers' order (longest first), not by unit size
    return LongestFirst(config, log)


def load_report(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    schema = json.loads(
        (Path(__file__).parent.parent / "pytest_promptopt" / "schemas" / "report.schema.json").read_text()
    )
    import jsonschema

    jsonschema.validate(data, schema)
    return data


def comparable(report: dict[str, Any]) -> list[Any]:
    """A report without timings, for comparing runs across modes."""
    suites = []
    for s in report["suites"]:
        suites.append(
            {
                "name": s["name"],
                "counts": (s["cases"], s["passed"], s["failed"], s["errors"], s["pass_rate"]),
                "gates": s["gates"],
                "results": sorted(
                    (r["case_id"], r["output"], r["passed"], r["error"], json.dumps(r["scores"], sort_keys=True))
                    for r in s["results"]
                ),
            }
        )
    return suites


collect_ignore = ["data"]  # fixtures for tests (a promptfooconfig.yaml), not tests themselves
