"""The Spark backend on a real local Spark session and a real Spark Connect server.

Every Spark test runs twice, through the module-scoped `spark` fixture: on `local[2]`, then over
Spark Connect to a server started from the pyspark distribution on a free loopback port. One
process cannot hold a classic and a Connect session at once, so the fixture stops each before
the next starts (pytest groups the tests by the fixture's parameter).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ECHO_SUITE

from pytest_promptopt import case_table
from pytest_promptopt.cache import CacheMode, ResponseCache
from pytest_promptopt.execute import execute_case
from pytest_promptopt.models.base import Request, Response
from pytest_promptopt.models.specs import ModelSpec, create_model
from pytest_promptopt.runners import dataset, spark_worker
from pytest_promptopt.runners import spark as spark_runner
from pytest_promptopt.runners.execution import ExecutionSettings
from pytest_promptopt.runners.limits import DEFAULT_RETRIES
from pytest_promptopt.runners.spark import (
    INSTALL_HINT,
    MissingPySpark,
    SparkBackendError,
    evaluate_cases,
    evaluate_frame,
    read_source,
    row_nodeid,
    spark_session,
)
from pytest_promptopt.runners.spark_session import SparkSettings
from pytest_promptopt.suite.dataset import read_rows
from pytest_promptopt.suite.loader import load_suite
from pytest_promptopt.suite.model import Case

EXAMPLES = Path(__file__).resolve().parent.parent / "example_suites"
PROMPTFOO_FORMAT = Path(__file__).resolve().parent / "data" / "promptfoo-format"
JAVA = shutil.which("java") or (
    os.environ.get("JAVA_HOME") and shutil.which("java", path=os.path.join(os.environ["JAVA_HOME"], "bin"))
)
needs_java = pytest.mark.skipif(not JAVA, reason="Spark needs a Java runtime: no `java` on PATH or in $JAVA_HOME/bin")
SERVER_START_LIMIT_S = 180  # a guard against a hung server start, not an assertion on speed
TIMINGS = ("duration_s", "started_at")  # the only fields that differ between two runs of one case


# ----------------------------------------------------------------------------- fixtures


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_LIMIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the Spark Connect server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.25)
    pytest.fail(
        f"the Spark Connect server did not listen on {port} within {SERVER_START_LIMIT_S} s:\n{log.read_text()[-3000:]}"
    )


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Spark Connect server (`local[2]`) on a free loopback port; yields its `sc://` URL.

    Started with the pyspark distribution's `sbin/start-connect-server.sh --wait` in a process
    group of its own, and stopped at teardown by signalling that group (the script and its JVM).
    """
    import pyspark

    home = Path(pyspark.__file__).resolve().parent
    port = _free_port()
    folder = tmp_path_factory.mktemp("spark-connect")
    log = folder / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED")}
    env.update(
        SPARK_HOME=str(home),
        SPARK_LOG_DIR=str(folder),
        SPARK_PID_DIR=str(folder),
        SPARK_IDENT_STRING=f"promptopt-{port}",
        PYSPARK_PYTHON=sys.executable,
        SPARK_LOCAL_IP="127.0.0.1",
    )
    command = [
        "bash",
        str(home / "sbin" / "start-connect-server.sh"),
        "--wait",
        "--master",
        "local[2]",
        "--conf",
        f"spark.connect.grpc.binding.port={port}",
        "--conf",
        "spark.connect.grpc.binding.address=127.0.0.1",
        "--conf",
        "spark.ui.enabled=false",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True
        )
    try:
        _wait_for_port(proc, port, log)
        yield f"sc://127.0.0.1:{port}"
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    # start_new_session made the script the leader of its own group: the group id is its pid.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=60)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module", params=["local", "connect"])
def spark(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A real SparkSession: `local[2]` in this process, or Spark Connect to `connect_server`."""
    if request.param == "local":
        session = spark_session(SparkSettings(master="local[2]"))
        yield session
        session.stop()
        return
    url = request.getfixturevalue("connect_server")
    had_mode = "SPARK_CONNECT_MODE_ENABLED" in os.environ
    session = spark_session(SparkSettings(remote=url))
    yield session
    session.stop()
    if not had_mode:  # pyspark sets it for good on the first remote session; later classic sessions would fail
        os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)


@pytest.fixture
def by_value() -> Iterator[None]:
    """Ship this module's classes to the Spark workers by value: the workers cannot import a
    test module (the way a conftest's model class reaches the workers, see docs/spark.md)."""
    from pyspark import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


# ----------------------------------------------------------------------------- helpers


def without_timings(result: Any) -> dict[str, Any]:
    data = result.to_dict()
    for key in TIMINGS:
        data.pop(key, None)
    return data


def in_process(
    cases: list[tuple[str, Case]], cache_path: Path, models: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """What the pytest process computes for `cases`: execute_case, one adapter per spec."""
    cache = ResponseCache(cache_path, CacheMode.READWRITE)
    adapters: dict[str, Any] = dict(models or {})
    out = {}
    for nodeid, case in cases:
        model = adapters.get(case.model.key) or adapters.setdefault(case.model.key, create_model(case.model))
        out[nodeid] = without_timings(execute_case(case, model, cache, nodeid))
    cache.close()
    return out


def suite_cases(path: Path, spec: ModelSpec, display: str | None = None) -> list[tuple[str, Case]]:
    display = display or path.name
    loaded = load_suite(path, display, spec)
    return [(f"{display}::{case.name}", dataclasses.replace(case, model=spec)) for case in loaded.cases]


PERSON = json.dumps({"name": "Maria Lopez", "age": 34, "job": "engineer", "city": "Madrid"})
PYTHON_CHECK_SUITE = """
prompts: ["The capital of {{country}} is"]
providers: [echo]
tests:
  - vars: {country: France}
    assert: [{type: python, value: "file://capital_check.py:mentions_country", metric: mentions}]
  - vars: {country: Spain}
    assert: [{type: python, value: "file://capital_check.py:mentions_country", metric: mentions}]
"""
CAPITAL_CHECK = """
def mentions_country(output, context):
    return {"pass": context["vars"]["country"] in output, "score": 1.0, "reason": "checked on " + __name__}
"""


class CountingModel:
    """Answers like `echo`; logs `load <pid> <id>` each time an instance is unpickled (a Spark
    worker making its copy) and `call <pid> <id>` for each answer, to the file `log`."""

    cacheable = False

    def __init__(self, log: str) -> None:
        self.name = "counting"
        self.log = log

    @property
    def cache_identity(self) -> dict[str, Any]:
        return {"model": "counting"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._write("load")

    def _write(self, event: str) -> None:
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(f"{event} {os.getpid()} {id(self)}\n")

    def generate(self, request: Request) -> Response:
        self._write("call")
        return Response(text=request.prompt, latency_ms=0.0, model=self.name)


class CrashingModel:
    """Answers like `echo`, but its Python worker dies (as on a segfault) on a prompt with "CRASH"."""

    name = "crashing"
    cacheable = False
    cache_identity = {"model": "crashing"}

    def generate(self, request: Request) -> Response:
        if "CRASH" in request.prompt:
            os._exit(3)
        return Response(text=request.prompt, latency_ms=0.0, model=self.name)


def object_spec(model: Any) -> ModelSpec:
    """The spec PromptoptSession.adopt_model gives a model object."""
    return ModelSpec(f"object:{model.name}", {"instance": id(model)}, model.name)


# ----------------------------------------------------------------------------- suite cases


@needs_java
def test_results_equal_the_in_process_path(spark: Any, tmp_path: Path) -> None:
    """Every example suite (python-ref checks loading example_suites/checks.py included) and
    conftest's ECHO_SUITE: Spark's results equal execute_case's, field by field."""
    (tmp_path / "capitals.promptopt.yaml").write_text(ECHO_SUITE)
    (tmp_path / "python_check.promptopt.yaml").write_text(PYTHON_CHECK_SUITE)
    (tmp_path / "capital_check.py").write_text(CAPITAL_CHECK)
    cases = suite_cases(tmp_path / "capitals.promptopt.yaml", ModelSpec("echo"))
    cases += suite_cases(tmp_path / "python_check.promptopt.yaml", ModelSpec("echo"))
    for path in sorted(EXAMPLES.glob("*.promptopt.yaml")):
        # the examples name the bundled model; the fake answers with one person's JSON, so
        # checks.py:person_fields_match scores every field of the first case and some of the others
        spec = ModelSpec("fake", {"default": PERSON}) if path.name.startswith("json_extraction") else ModelSpec("echo")
        cases += suite_cases(path, spec)
    # A provider's transform from a JavaScript file (promptfoo's verdicts: tests/data/promptfoo-format)
    shutil.copytree(PROMPTFOO_FORMAT / "provider_transform_code", tmp_path / "transformed")
    cases += suite_cases(
        tmp_path / "transformed" / "promptfooconfig.yaml", ModelSpec("echo", transform="file://transform.js")
    )

    results = list(evaluate_cases(spark, cases, ExecutionSettings(tmp_path / "spark.sqlite", CacheMode.READWRITE)))

    got = {nodeid: without_timings(result) for nodeid, result in results}
    assert len(results) == len(got) == len(cases)
    assert got == in_process(cases, tmp_path / "local.sqlite")
    python_checked = [got[nodeid] for nodeid, _ in cases if "python_check" in nodeid]
    assert [r["passed"] for r in python_checked] == [True, True]
    assert all(r["assertions"][0]["reason"].startswith("checked on ") for r in python_checked)  # capital_check.py ran
    person = got[next(nodeid for nodeid, _ in cases if "json_extraction" in nodeid)]
    assert person["passed"] and person["named_scores"] == {"valid_json": 1.0, "field_accuracy": 1.0}
    transformed = [got[nodeid] for nodeid, _ in cases if nodeid.startswith("promptfooconfig.yaml::")]
    assert [(r["output"], r["passed"], bool(r["error"])) for r in transformed] == [
        ("<Say six|six>", True, False),
        ('{"text":"Say obj","n":7}', True, False),
        ("Say obj=7", True, False),
        ("Say boom", False, True),
        ("Say none", False, True),
    ]


@needs_java
def test_a_warm_rerun_makes_no_model_calls(spark: Any, tmp_path: Path) -> None:
    (tmp_path / "capitals.promptopt.yaml").write_text(ECHO_SUITE)
    cases = suite_cases(tmp_path / "capitals.promptopt.yaml", ModelSpec("fake", {"default": "Paris and Madrid"}))
    cache = tmp_path / "cache.sqlite"

    cold = dict(evaluate_cases(spark, cases, ExecutionSettings(cache, CacheMode.READWRITE)))
    warm = dict(evaluate_cases(spark, cases, ExecutionSettings(cache, CacheMode.REPLAY)))

    assert [(r.calls, r.cache_hits) for r in cold.values()] == [(1, 0)] * len(cases)
    assert [(r.calls, r.cache_hits) for r in warm.values()] == [(0, 1)] * len(cases)
    assert {n: r.output for n, r in warm.items()} == {n: "Paris and Madrid" for n, _ in cases}
    assert {n: (r.passed, r.scores) for n, r in warm.items()} == {n: (r.passed, r.scores) for n, r in cold.items()}


@needs_java
def test_repeated_cases_take_their_samples_on_spark_as_in_process(spark: Any, tmp_path: Path) -> None:
    (tmp_path / "capitals.promptopt.yaml").write_text(ECHO_SUITE + "repeat: 3\n")
    spec = ModelSpec(
        "fake", {"responses": {"The capital of Italy is Milan.": ["Rome", "Milan"]}, "default": "Paris and Madrid"}
    )
    cases = suite_cases(tmp_path / "capitals.promptopt.yaml", spec)
    cache = tmp_path / "cache.sqlite"

    cold = dict(evaluate_cases(spark, cases, ExecutionSettings(cache, CacheMode.READWRITE)))
    warm = dict(evaluate_cases(spark, cases, ExecutionSettings(cache, CacheMode.REPLAY)))

    assert [(r.repeats, r.calls, r.cache_hits) for r in cold.values()] == [(3, 3, 0)] * len(cases)
    assert [(r.calls, r.cache_hits) for r in warm.values()] == [(0, 3)] * len(cases)
    assert {n: without_timings(r) for n, r in cold.items()} == in_process(cases, tmp_path / "local.sqlite")
    [italy] = [r for r in cold.values() if r.vars["country"] == "Italy"]
    assert italy.flaky and [s["output"] for s in italy.samples] == ["Rome", "Milan", "Rome"]


@needs_java
def test_the_model_is_created_once_per_python_worker(spark: Any, tmp_path: Path, by_value: None) -> None:
    """24 cases in 6 partitions on 2 cores, twice: each Python worker loads the model object
    once and answers all its cases with that one instance."""
    log = tmp_path / "model.log"
    model = CountingModel(str(log))
    spec = object_spec(model)
    (tmp_path / "capitals.promptopt.yaml").write_text(ECHO_SUITE)
    base = suite_cases(tmp_path / "capitals.promptopt.yaml", spec)
    cases = [(f"{nodeid}-{i}", case) for i in range(8) for nodeid, case in base]

    for _ in range(2):
        results = dict(
            evaluate_cases(
                spark,
                cases,
                ExecutionSettings(tmp_path / "cache.sqlite", CacheMode.OFF, models={spec.key: model}),
                partitions=6,
            )
        )
        assert len(results) == len(cases) and not any(r.error for r in results.values())

    events = [line.split() for line in log.read_text().splitlines()]
    loads = Counter(pid for event, pid, _ in events if event == "load")
    instance = {pid: obj for event, pid, obj in events if event == "load"}
    calls = [(pid, obj) for event, pid, obj in events if event == "call"]
    assert len(calls) == 2 * len(cases)
    assert set(loads.values()) == {1}, loads  # one load per worker process, over 12 tasks and 2 runs
    assert len(loads) < 12  # so workers ran several tasks each, without loading again
    assert all(instance[pid] == obj for pid, obj in calls)


@needs_java
def test_a_crashed_python_worker_errors_the_cases_it_lost(spark: Any, tmp_path: Path, by_value: None) -> None:
    model = CrashingModel()
    spec = object_spec(model)
    (tmp_path / "capitals.promptopt.yaml").write_text(ECHO_SUITE)
    base = suite_cases(tmp_path / "capitals.promptopt.yaml", spec)
    cases = [(f"{nodeid}-{i}", case) for i in range(4) for nodeid, case in base]
    doomed = cases[5][0]
    cases[5] = (doomed, dataclasses.replace(cases[5][1], rendered_prompt="CRASH"))

    results = list(
        evaluate_cases(
            spark,
            cases,
            ExecutionSettings(tmp_path / "cache.sqlite", CacheMode.OFF, models={spec.key: model}),
            partitions=4,
        )
    )

    got = dict(results)
    assert len(results) == len(got) == len(cases)  # every case once: none lost, none twice
    error = got[doomed].error
    assert error is not None and error.startswith("the Spark job failed before this case's result came back: ")
    assert "crashed" in error or "exited" in error, error
    for nodeid, case in cases:
        result = got[nodeid]
        assert result.error == error or (result.error is None and result.output == case.rendered_prompt)


@needs_java
def test_a_case_that_does_not_pickle_is_an_error_not_a_failed_job(spark: Any, tmp_path: Path) -> None:
    (tmp_path / "capitals.promptopt.yaml").write_text(ECHO_SUITE)
    cases = suite_cases(tmp_path / "capitals.promptopt.yaml", ModelSpec("echo"))
    nodeid, case = cases[0]
    cases[0] = (nodeid, dataclasses.replace(case, vars={**case.vars, "lock": threading.Lock()}))

    got = dict(evaluate_cases(spark, cases, ExecutionSettings(tmp_path / "cache.sqlite", CacheMode.READWRITE)))

    assert got[nodeid].error is not None and got[nodeid].error.startswith(
        "cannot send this case to Spark: it does not pickle (TypeError"
    )
    assert [got[n].error for n, _ in cases[1:]] == [None, None]


@needs_java
def test_model_objects_are_shipped_without_their_rate_limiter_or_refused_per_case(spark: Any, tmp_path: Path) -> None:
    """A conftest's hosted adapter arrives wrapped in `Throttled` with this process's rate
    limiter (a lock): the workers get it with its retry policy and without the limiter. A model
    that does not pickle at all errors its own cases only."""
    from pytest_promptopt.models.fakes import FakeModel
    from pytest_promptopt.runners.limits import RateLimit, RateLimiter, RetryPolicy, Throttled

    throttled = Throttled(
        FakeModel({}, default="Paris", name="hosted"), RetryPolicy(2), RateLimiter(RateLimit("openai", rpm=60))
    )
    stuck = FakeModel({}, default="Madrid", name="stuck")
    stuck.lock = threading.Lock()  # type: ignore[attr-defined]
    (tmp_path / "capitals.promptopt.yaml").write_text(ECHO_SUITE)
    fine = suite_cases(tmp_path / "capitals.promptopt.yaml", object_spec(throttled))
    refused = suite_cases(tmp_path / "capitals.promptopt.yaml", object_spec(stuck), "again.promptopt.yaml")

    got = dict(
        evaluate_cases(
            spark,
            fine + refused,
            ExecutionSettings(
                tmp_path / "cache.sqlite",
                CacheMode.READWRITE,
                models={object_spec(throttled).key: throttled, object_spec(stuck).key: stuck},
            ),
        )
    )

    assert [(got[n].output, got[n].error) for n, _ in fine] == [("Paris", None)] * 3
    assert {got[n].error for n, _ in refused} == {
        "model error (stuck): model 'stuck' cannot be sent to Spark workers: it does not pickle "
        "(TypeError: cannot pickle '_thread.lock' object)"
    }


def test_execution_settings_pickle_and_split_into_shares(tmp_path: Path) -> None:
    """The one settings object a job takes to its workers: it pickles (models included, when
    they do), and a share splits the concurrency and every rate limit."""
    import pickle

    from pytest_promptopt.models.fakes import FakeModel
    from pytest_promptopt.runners.limits import RateLimit

    model = FakeModel({}, default="Paris", name="shipped")
    execution = ExecutionSettings(
        tmp_path / "c.sqlite",
        CacheMode.REPLAY,
        12.0,
        retries=2,
        rate_limits=(RateLimit("openai", rpm=600, tpm=9000),),
        concurrency=8,
        batch_size=4,
        judge=ModelSpec("openai/judge", {"temperature": 0}),
        models={"key": model},
    )
    again = pickle.loads(pickle.dumps(execution))
    assert dataclasses.replace(again, models={}) == dataclasses.replace(execution, models={})
    assert again.models["key"].name == "shipped" and again.judge.key == execution.judge.key
    share = execution.share(3)
    assert (share.concurrency, share.rate_limits) == (2, (RateLimit("openai", 200, 3000),))
    assert execution.share(1) is execution and execution.share(16).concurrency == 1
    assert dataclasses.replace(share, concurrency=8, rate_limits=execution.rate_limits) == execution


def test_workers_take_the_runs_retries_and_a_share_of_its_rate_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a Python worker builds from the job's config: a hosted model retries as often as
    --promptopt-retries says (its provider's num_retries wins) and keeps to its task's share of
    the provider's limit, with one limiter per provider in the worker."""
    from pytest_promptopt.models.fakes import FakeModel
    from pytest_promptopt.runners.limits import RateLimit, RetryPolicy, Throttled

    monkeypatch.setattr(spark_worker, "_models", {})  # the worker's caches, fresh
    monkeypatch.setattr(spark_worker, "_limiters", {})
    shipped = Throttled(FakeModel({}, default="Paris", name="openai/shipped"), RetryPolicy(2))
    shipped_spec = object_spec(shipped.model)
    limits = (RateLimit("hosted_vllm", rpm=600, tpm=9000), RateLimit("*", rpm=60))
    execution = ExecutionSettings(
        tmp_path / "c.sqlite", CacheMode.OFF, 30.0, retries=1, rate_limits=limits, models={shipped_spec.key: shipped}
    )
    config = spark_worker.worker_config(execution, tasks=3)
    assert config.execution.retries == 1
    assert config.execution.rate_limits == (RateLimit("hosted_vllm", 200, 3000), RateLimit("*", 20))

    url = {"api_base": "http://127.0.0.1:9/v1"}
    model = spark_worker.worker_model(ModelSpec("hosted_vllm/a", url), config)
    assert isinstance(model, Throttled) and model.policy.retries == 1
    assert model.limiter is not None and model.limiter.limit == RateLimit("hosted_vllm", 200, 3000)
    assert (
        spark_worker.worker_model(ModelSpec("hosted_vllm/b", url), config).limiter is model.limiter
    )  # one budget per provider
    own = spark_worker.worker_model(ModelSpec("openai/c", {**url, "num_retries": 3}), config)
    assert own.policy.retries == 3 and own.limiter.limit == RateLimit("*", 20)
    arrived = spark_worker.worker_model(shipped_spec, config)  # shipped without the driver's limiter: gets the worker's
    assert arrived.policy.retries == 2 and arrived.limiter is own.limiter

    default = spark_worker.worker_config(ExecutionSettings(tmp_path / "c.sqlite", CacheMode.OFF, 30.0))
    plain = spark_worker.worker_model(ModelSpec("hosted_vllm/a", url), default)
    assert plain.policy.retries == DEFAULT_RETRIES and plain.limiter is None


@needs_java
def test_judges_on_spark_workers(spark: Any, tmp_path: Path) -> None:
    """Spark workers build the run's judge model from its spec and call it through their cache."""
    rubric = "Names the capital of France"
    turn = "<Output>\n{}\n</Output>\n<Rubric>\n" + rubric + "\n</Rubric>"
    verdicts = {
        turn.format("Paris"): '{"reason": "It names Paris.", "pass": true, "score": 1.0}',
        turn.format("Lyon"): '{"reason": "It names Lyon, not Paris.", "pass": false, "score": 0.1}',
    }
    judge = ModelSpec("fake", {"responses": verdicts}, "spark-judge")
    suite = tmp_path / "judged.promptopt.yaml"
    suite.write_text(
        'providers: [echo]\nprompts: ["{{city}}"]\ntests:\n'
        f'  - vars: {{city: Paris}}\n    assert: [{{type: llm-rubric, value: "{rubric}"}}]\n'
        f'  - vars: {{city: Lyon}}\n    assert: [{{type: llm-rubric, value: "{rubric}"}}]\n'
    )
    cases = [(f"judged::{c.name}", c) for c in load_suite(suite, "judged.promptopt.yaml", ModelSpec("echo")).cases]
    execution = ExecutionSettings(tmp_path / "c.sqlite", CacheMode.READWRITE, judge=judge)
    cold = dict(evaluate_cases(spark, cases, execution))
    warm = dict(evaluate_cases(spark, cases, execution))
    cold_results, warm_results = [cold[n] for n, _ in cases], [warm[n] for n, _ in cases]  # results come in any order
    assert [(r.passed, r.error) for r in cold_results] == [(True, None), (False, None)]
    assert cold_results[1].reason == "It names Lyon, not Paris."
    assert [(r.calls, r.cache_hits) for r in cold_results] == [(2, 0)] * 2  # echo and the judge
    assert [(r.calls, r.cache_hits) for r in warm_results] == [(1, 1)] * 2


@needs_java
def test_a_hosted_model_on_spark_retries_as_often_as_the_run_says(spark: Any, tmp_path: Path) -> None:
    """A real hosted call (litellm to a loopback OpenAI-compatible server) from the Spark workers:
    with retries=1 each case is tried twice, then errors naming its attempts; a rate limit
    generous enough not to wait lets every case through."""
    from fake_openai import FakeOpenAI, echo_last_user_message

    from pytest_promptopt.runners.limits import RateLimit

    (tmp_path / "capitals.promptopt.yaml").write_text(ECHO_SUITE)
    with FakeOpenAI(lambda body: (503, "overloaded")) as server:
        # hosted_vllm needs no API key, which the Spark workers (started earlier) could not see
        cases = suite_cases(
            tmp_path / "capitals.promptopt.yaml", ModelSpec("hosted_vllm/test-model", {"api_base": server.base_url})
        )
        failed = dict(evaluate_cases(spark, cases, ExecutionSettings(tmp_path / "c.sqlite", CacheMode.OFF, retries=1)))
        assert len(server.requests) == 2 * len(cases)
    assert {r.error is not None and "gave up after 2 attempts" in r.error for r in failed.values()} == {True}

    with FakeOpenAI(echo_last_user_message) as server:
        cases = suite_cases(
            tmp_path / "capitals.promptopt.yaml", ModelSpec("hosted_vllm/test-model", {"api_base": server.base_url})
        )
        passed = dict(
            evaluate_cases(
                spark,
                cases,
                ExecutionSettings(
                    tmp_path / "c.sqlite", CacheMode.OFF, retries=0, rate_limits=(RateLimit("hosted_vllm", rpm=600),)
                ),
            )
        )
    assert [passed[n].output for n, _ in cases] == [f"Echo: {case.rendered_prompt}" for _, case in cases]


# ----------------------------------------------------------------------------- dataset suites


DATASET_SUITE = """
prompts: ["Echo: {{text}}"]
providers: [echo]
dataset:
  path: %s
  assert: [{type: contains, value: "t1"}]
"""


def write_sources(folder: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # three files whose sizes are not in path order: Spark reads the largest first
    (folder / "parts").mkdir()
    for name, lo, hi in (("b.parquet", 0, 5), ("a.parquet", 5, 8), ("c d.parquet", 8, 30)):
        pq.write_table(
            pa.table({"text": [f"t{i}" for i in range(lo, hi)], "n": list(range(lo, hi))}), folder / "parts" / name
        )
    (folder / "rows.csv").write_text('text, other\n"multi\nline",1\n"",\nt1 plain,"q""uote"\n', encoding="utf-8-sig")
    (folder / "rows.jsonl").write_text(
        '{"text": "t1", "n": 1}\nnot json\n\n{"text": "b", "n": 2.5, "nested": {"k": [1, 2]}}\n[1]\n'
    )


SOURCES = {
    "parquet folder": ("parts", None),
    "parquet folder, limit 7": ("parts", 7),
    "csv": ("rows.csv", None),
    "jsonl": ("rows.jsonl", None),
}


@needs_java
@pytest.mark.parametrize("source", list(SOURCES))
def test_evaluate_frame_writes_the_rows_the_in_process_runner_writes(spark: Any, tmp_path: Path, source: str) -> None:
    write_sources(tmp_path)
    path, limit = SOURCES[source]
    suite = tmp_path / "rows.promptopt.yaml"
    suite.write_text(DATASET_SUITE % path + (f"  limit: {limit}\n" if limit else ""))
    spec = load_suite(suite, "rows", ModelSpec("echo")).dataset
    assert spec is not None
    make_case = spec.slices[0].make_case
    prefix = "rows.promptopt.yaml::dataset::"

    written = evaluate_frame(
        spark,
        read_source(spark, spec.source),
        make_case,
        ExecutionSettings(tmp_path / "cache.sqlite", CacheMode.READWRITE),
        nodeid_prefix=prefix,
        output_path=tmp_path / "out",
    )

    import pyarrow.dataset as ds

    table = ds.dataset(str(tmp_path / "out"), format="parquet").to_table()
    assert table.schema.names == [name for name, _ in case_table.CASE_COLUMNS]
    rows = table.to_pylist()
    assert written == len(rows)
    by_nodeid = {row["nodeid"]: row for row in rows}
    assert sorted(by_nodeid) == sorted(row_nodeid(prefix, i) for i in range(written))
    for row in rows:  # the flat columns are the record's
        record = json.loads(row["record"])
        assert row["status"] == ("error" if record["error"] else "passed" if record["passed"] else "failed")
        assert {k: row[k] for k in ("case_id", "name", "error", "output", "calls")} == {
            k: record[k] for k in ("case_id", "name", "error", "output", "calls")
        }

    # the in-process dataset runner on the same source: same rows, same indexes, same results
    local_cache = ResponseCache(tmp_path / "local.sqlite")
    echo = create_model(ModelSpec("echo"))
    with case_table.CasesWriter(tmp_path / "local.parquet") as writer:
        dataset.evaluate(
            read_rows(spec.source),
            make_case,
            lambda pairs: (execute_case(c, echo, local_cache, n) for c, n in pairs),
            writer,
            prefix,
        )
    expected = {r.nodeid: without_timings(r) for r in case_table.iter_results(tmp_path / "local.parquet")}
    got = {r.nodeid: without_timings(r) for r in case_table.iter_results(tmp_path / "out")}
    if source == "jsonl":  # the in-process reader also names the file's line, which Spark does not know
        assert got[row_nodeid(prefix, 1)]["error"] == "row 1: invalid JSON: Expecting value: line 1 column 1 (char 0)"
        assert got[row_nodeid(prefix, 3)]["error"] == "row 3: each line must be a JSON object"
        for result in expected.values():
            result["error"] = re.sub(r"^(row \d+: )line \d+: ", r"\1", result["error"] or "") or None
    assert got == expected
    assert written == (limit or len(expected))


@needs_java
def test_read_source_takes_a_path_string_and_evaluate_frame_a_plain_frame(spark: Any, tmp_path: Path) -> None:
    """A frame not read from files (no `_metadata`) is indexed by Spark partition."""
    write_sources(tmp_path)
    assert sorted(r["text"] for r in read_source(spark, str(tmp_path / "rows.csv")).collect()) == [
        "",
        "multi\nline",
        "t1 plain",
    ]
    frame = spark.createDataFrame([(f"t{i}",) for i in range(10)], "text string").repartition(3)
    frame = frame.localCheckpoint()  # what docs/spark.md advises for a frame out of a shuffle
    (tmp_path / "rows.promptopt.yaml").write_text(DATASET_SUITE % "parts")
    spec = load_suite(tmp_path / "rows.promptopt.yaml", "rows", ModelSpec("echo")).dataset
    assert spec is not None

    written = evaluate_frame(
        spark,
        frame,
        spec.slices[0].make_case,
        ExecutionSettings(str(tmp_path / "cache.sqlite"), CacheMode.READWRITE),
        nodeid_prefix="p::",
        output_path=str(tmp_path / "out"),
    )

    results = list(case_table.iter_results(tmp_path / "out"))
    assert written == 10
    assert sorted(r.nodeid for r in results) == sorted(row_nodeid("p::", i) for i in range(10))
    assert sorted(r.output for r in results) == sorted(f"Echo: t{i}" for i in range(10))
    assert all(r.name == f"row {r.position}" and r.nodeid == row_nodeid("p::", r.position) for r in results)


# ----------------------------------------------------------------------------- errors


def test_an_unreachable_connect_server_is_named_and_its_token_masked() -> None:
    port = _free_port()  # nothing listens there now
    secret = "dapi-0123456789abcdef"
    with pytest.raises(SparkBackendError) as excinfo:
        spark_session(SparkSettings(remote=f"sc://127.0.0.1:{port}/;token={secret};x-databricks-cluster-id=0123-abc"))
    message = str(excinfo.value)
    assert message.startswith(
        f"cannot connect to Spark at sc://127.0.0.1:{port}/;token=***;x-databricks-cluster-id=0123-abc: "
    )
    assert secret not in message


def test_an_unreachable_master_is_named() -> None:
    port = _free_port()
    with pytest.raises(
        SparkBackendError, match=rf"^cannot connect to Spark at spark://127\.0\.0\.1:{port}: 127\.0\.0\.1:{port}: "
    ):
        spark_session(SparkSettings(master=f"spark://127.0.0.1:{port}"))


def test_without_pyspark_one_line_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # as if not installed: `import pyspark.sql` raises ImportError (other loaded pyspark modules stay,
    # for the sessions other tests may hold open)
    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    with pytest.raises(MissingPySpark) as excinfo:
        spark_session(SparkSettings())
    assert (
        str(excinfo.value) == INSTALL_HINT == "the Spark backend needs pyspark: pip install 'pytest-promptopt[spark]'"
    )
    with pytest.raises(MissingPySpark):
        list(evaluate_cases(object(), [("n", object())], ExecutionSettings(tmp_path / "c", CacheMode.OFF)))  # type: ignore[list-item]


def test_public_names() -> None:
    assert sorted(spark_runner.__all__) == sorted(
        [
            "CASES_PER_PARTITION",
            "INSTALL_HINT",
            "MissingPySpark",
            "SparkBackendError",
            "evaluate_cases",
            "evaluate_frame",
            "read_source",
            "row_nodeid",
            "spark_session",
        ]
    )


# ----------------------------------------------------------------------------- through pytest


def clean_spark_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A Connect session in this process (the `spark` fixture) leaves pyspark's mode variable set;
    # the pytest subprocesses must start as a user's would.
    for name in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE"):
        monkeypatch.delenv(name, raising=False)


@needs_java
def test_an_unreachable_spark_makes_every_case_an_error(
    run_pytest: Any, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_spark_env(monkeypatch)
    pytester.makefile(".promptopt.yaml", capitals=ECHO_SUITE)
    result = run_pytest(
        "--promptopt", "--promptopt-backend", "spark", "--promptopt-spark-remote", f"sc://127.0.0.1:{_free_port()}"
    )
    result.assert_outcomes(errors=3)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*Spark backend: cannot connect to Spark at sc://127.0.0.1:*"])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


PLUGIN_CHECKS = """
def mentions_country(output, context):
    return context["vars"]["country"] in output
"""


@needs_java
def test_pytest_on_spark_reports_what_the_local_run_reports(
    run_pytest: Any, pytester: pytest.Pytester, connect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same suites through `pytest --promptopt`: in this process, on a local Spark session
    # and over Spark Connect; per-case results, gates, outcomes and exit status must agree.
    from conftest import comparable, load_report

    clean_spark_env(monkeypatch)
    pytester.makefile(".promptopt.yaml", capitals=ECHO_SUITE + "gates: {pass_rate: 0.9}\n")
    pytester.makepyfile(checks=PLUGIN_CHECKS)
    pytester.makefile(
        ".promptopt.yaml",
        checked="""
providers: [echo]
prompts: ["{{country}} is a country."]
defaultTest:
  assert: [{type: python, value: "file://checks.py:mentions_country"}]
tests:
  - vars: {country: Peru}
  - vars: {country: Chile}
""",
    )
    runs = {
        "local": [],
        "spark": ["--promptopt-backend", "spark", "--promptopt-spark-master", "local[2]"],
        "connect": ["--promptopt-backend", "spark", "--promptopt-spark-remote", connect_server],
    }
    reports = {}
    for name, args in runs.items():
        result = run_pytest("--promptopt", "--promptopt-cache", "off", "--promptopt-report", f"{name}.json", *args)
        result.assert_outcomes(passed=4, xfailed=1)
        assert result.ret == 1  # the capitals gate (0.9) fails: 2 of 3
        result.stdout.fnmatch_lines(["*GATE FAILED*capitals*pass_rate = 0.667*"])
        report = load_report(pytester.path / f"{name}.json")
        assert sum(r["calls"] for s in report["suites"] for r in s["results"]) == 5
        reports[name] = comparable(report)
    assert reports["local"] == reports["spark"] == reports["connect"]


@needs_java
def test_a_warm_rerun_on_spark_makes_no_model_call(
    run_pytest: Any, pytester: pytest.Pytester, connect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over Spark Connect: the server's executors write the project's cache, then read it. (On a
    # local session, test_faults.py's executor-cache test makes the cold run, its executors
    # rebuilding a corrupt cache; executors read a cache file the same way in both.)
    from conftest import load_report

    clean_spark_env(monkeypatch)
    # echo is never cached (it is instant); a scripted fake model is
    pytester.makefile(
        ".promptopt.yaml",
        capitals=ECHO_SUITE.replace(
            "providers: [echo]", "providers: [{id: fake, config: {default: Paris and Madrid}}]"
        ),
    )
    args = ("--promptopt", "--promptopt-backend", "spark", "--promptopt-spark-remote", connect_server)
    run_pytest(*args, "--promptopt-report", "cold.json").assert_outcomes(passed=1, failed=2)
    run_pytest(*args, "--promptopt-report", "warm.json").assert_outcomes(passed=1, failed=2)
    cold = load_report(pytester.path / "cold.json")["suites"][0]["results"]
    warm = load_report(pytester.path / "warm.json")["suites"][0]["results"]
    assert [r["calls"] for r in cold] == [1, 1, 1]
    assert [(r["calls"], r["cache_hits"]) for r in warm] == [(0, 1)] * 3
