"""Scale (issue 5): concurrent hosted calls, rate limits, retries with Retry-After, batched
generation, crashed xdist workers. Hosted models are a real OpenAI-compatible server on loopback
(tests/fake_openai.py) reached through litellm; pytest runs in subprocesses, in every mode."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from conftest import ECHO_SUITE, MODES, comparable, load_report
from fake_openai import FakeOpenAI, echo_last_user_message

from pytest_promptopt.models.base import ModelError, Request, Response
from pytest_promptopt.runners import scheduling
from pytest_promptopt.runners.execution import ExecutionSettings
from pytest_promptopt.runners.limits import (
    RateLimit,
    RateLimiter,
    RetryableModelError,
    RetryPolicy,
    Throttled,
    parse_rate_limits,
)
from pytest_promptopt.runners.pool import CaseRunner

# The look-ahead xdist scheduler (runners/scheduling.py) is the plugin's own hook: nothing to load.
SCHEDULER: list[str] = []


def hosted_suite(url: str, cases: int, extra: str = "") -> str:
    tests = "\n".join(
        f"  - vars: {{n: '{i}'}}\n    assert: [{{type: contains, value: 'Echo: case {i}'}}]" for i in range(cases)
    )
    return f"""
description: hosted
providers: [{{id: openai/test-model, config: {{api_base: "{url}"{extra}}}}}]
prompts: ["case {{{{n}}}}"]
tests:
{tests}
"""


@pytest.fixture
def openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-0000")


# --------------------------------------------------------------------------- concurrency


def test_hosted_calls_overlap_up_to_the_concurrency_and_results_match_every_mode(run_pytest, pytester, openai_env):
    reports = {}
    with FakeOpenAI(echo_last_user_message, delay_s=0.25) as server:
        pytester.makefile(".promptopt.yaml", hosted=hosted_suite(server.base_url, 24))
        for name, args in MODES.items():
            server.max_in_flight = 0
            before = len(server.requests)
            result = run_pytest(
                "--promptopt",
                "--promptopt-cache",
                "off",
                "--promptopt-concurrency",
                "6",
                "-p",
                "no:cacheprovider",
                "--promptopt-report",
                f"{name}.json",
                *args,
            )
            result.assert_outcomes(passed=24)
            assert len(server.requests) - before == 24  # one call per case, none repeated
            # calls overlapped, and never beyond the budget: under -n 2 each worker takes 3 of 6
            assert 2 <= server.max_in_flight <= 6, (name, server.max_in_flight)
            reports[name] = comparable(load_report(pytester.path / f"{name}.json"))
    assert reports["plain"] == reports["xdist"] == reports["no-xdist"]


def test_concurrency_one_calls_one_at_a_time(run_pytest, pytester, openai_env):
    with FakeOpenAI(echo_last_user_message, delay_s=0.05) as server:
        pytester.makefile(".promptopt.yaml", hosted=hosted_suite(server.base_url, 6))
        run_pytest("--promptopt", "--promptopt-cache", "off", "--promptopt-concurrency", "1").assert_outcomes(passed=6)
        assert server.max_in_flight == 1


def test_a_warm_rerun_makes_no_call_under_xdist(run_pytest, pytester, openai_env):
    with FakeOpenAI(echo_last_user_message) as server:
        pytester.makefile(".promptopt.yaml", hosted=hosted_suite(server.base_url, 10))
        first = run_pytest("--promptopt", "-n", "2")
        first.assert_outcomes(passed=10)
        assert len(server.requests) == 10, (
            sorted(r["messages"][0]["content"] for r in server.requests),
            first.stdout.str(),
        )
        run_pytest("--promptopt", "-n", "2", "--promptopt-report", "warm.json").assert_outcomes(passed=10)
        assert len(server.requests) == 10
    results = load_report(pytester.path / "warm.json")["suites"][0]["results"]
    assert {(r["calls"], r["cache_hits"]) for r in results} == {(0, 1)}


# --------------------------------------------------------------------------- retries


def test_429_with_retry_after_costs_no_case(run_pytest, pytester, openai_env):
    seen: dict[str, list[float]] = {}
    lock = threading.Lock()

    def answer(body: dict[str, Any]) -> Any:
        prompt = body["messages"][-1]["content"]
        with lock:
            times = seen.setdefault(prompt, [])
            times.append(time.monotonic())
            first = len(times) == 1
        if first:
            return 429, "slow down", {"Retry-After": "1"}
        return echo_last_user_message(body)

    with FakeOpenAI(answer) as server:
        pytester.makefile(".promptopt.yaml", hosted=hosted_suite(server.base_url, 4))
        result = run_pytest("--promptopt", "--promptopt-cache", "off", "--promptopt-report", "r.json")
        result.assert_outcomes(passed=4)
        assert len(server.requests) == 8
    for times in seen.values():
        assert len(times) == 2
        assert times[1] - times[0] >= 0.95  # waited as long as Retry-After asked
    assert all(r["error"] is None for r in load_report(pytester.path / "r.json")["suites"][0]["results"])


@pytest.mark.parametrize("args", [MODES["plain"], MODES["xdist"]], ids=["plain", "xdist"])
def test_a_provider_that_keeps_failing_gives_errors_and_the_run_ends(run_pytest, pytester, openai_env, args):
    with FakeOpenAI(lambda body: (503, "overloaded")) as server:
        pytester.makefile(".promptopt.yaml", hosted=hosted_suite(server.base_url, 3))
        result = run_pytest(
            "--promptopt", "--promptopt-cache", "off", "--promptopt-retries", "2", "--promptopt-report", "r.json", *args
        )
        result.assert_outcomes(errors=3)
        assert result.ret == 1
        assert len(server.requests) == 9  # each case: the call and two retries
    report = load_report(pytester.path / "r.json")["suites"][0]
    assert (report["errors"], report["failed"]) == (3, 0)
    assert all(
        "gave up after 3 attempts" in r["error"] and "ServiceUnavailable" in r["error"] for r in report["results"]
    )


def test_a_client_error_is_not_retried(run_pytest, pytester, openai_env):
    with FakeOpenAI(lambda body: (400, "bad request")) as server:
        pytester.makefile(".promptopt.yaml", hosted=hosted_suite(server.base_url, 2))
        run_pytest("--promptopt", "--promptopt-cache", "off").assert_outcomes(errors=2)
        assert len(server.requests) == 2


class Flaky:
    """Fails `failures` times with a retryable error, then answers."""

    name = "flaky"
    cache_identity = {"model": "flaky"}

    def __init__(self, failures: int, retry_after: float | None = None) -> None:
        self.failures = failures
        self.retry_after = retry_after
        self.calls = 0

    def generate(self, request: Request) -> Response:
        self.calls += 1
        if self.calls <= self.failures:
            raise RetryableModelError("flaky: 429", self.retry_after)
        return Response(text="ok", prompt_tokens=10, completion_tokens=5)


def test_retry_delays_back_off_exponentially_and_honour_retry_after():
    policy = RetryPolicy(retries=5, base_s=0.5, cap_s=4.0)
    assert [policy.delay(n, None, rand=lambda: 1.0) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.delay(0, None, rand=lambda: 0.5) == 0.25  # full jitter
    assert policy.delay(0, 7.0, rand=lambda: 1.0) == 7.0  # Retry-After is a floor
    slept: list[float] = []
    model = Throttled(Flaky(2, retry_after=3.0), policy, sleep=slept.append)
    assert model.generate(Request.from_prompt("x")).text == "ok"
    assert slept == [3.0, 3.0] and model.retried == 2
    with pytest.raises(ModelError, match="gave up after 3 attempts"):
        Throttled(Flaky(10), RetryPolicy(retries=2), sleep=slept.append).generate(Request.from_prompt("x"))
    with pytest.raises(ModelError, match="gave up after 1 attempt"):  # a quota, not a hiccup
        Throttled(Flaky(1, retry_after=3600), RetryPolicy(retries=5), sleep=slept.append).generate(
            Request.from_prompt("x")
        )


# --------------------------------------------------------------------------- rate limits


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_requests_per_minute_are_a_sliding_window():
    clock = FakeClock()
    limiter = RateLimiter(RateLimit("openai", rpm=3), clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(7):
        limiter.acquire(1)
        starts.append(round(clock.now, 2))
        clock.now += 1.0  # each call takes a second
    assert starts == [0.0, 1.0, 2.0, 60.0, 61.0, 62.0, 120.0]


def test_tokens_per_minute_use_the_providers_counts():
    clock = FakeClock()
    limiter = RateLimiter(RateLimit("openai", tpm=1000), clock=clock, sleep=clock.sleep)
    first = limiter.acquire(600)
    limiter.settle(first, 100)  # the estimate was high: the answer used 100 tokens
    limiter.acquire(600)  # 100 + 600 fit
    assert clock.now == 0.0
    limiter.acquire(600)  # 700 + 600 do not: wait for the first call to leave the window
    assert clock.now == pytest.approx(60.0, abs=0.01)


def test_rate_limits_parse_and_split_between_workers():
    limits = parse_rate_limits("openai:rpm=500,tpm=30000; anthropic:rpm=50\n*:rpm=10")
    assert [limit.describe() for limit in limits] == ["openai:rpm=500,tpm=30000", "anthropic:rpm=50", "*:rpm=10"]
    assert limits[0].share(2) == RateLimit("openai", 250, 15000)
    for bad, message in [
        ("openai", "provider:rpm=N"),
        ("openai:rps=3", "unknown limit"),
        ("openai:rpm=x", "must be a number"),
        ("openai:rpm=0", "positive"),
        ("a:rpm=1;a:rpm=2", "given twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_rate_limits(bad)


def test_bad_scale_options_are_usage_errors(run_pytest, pytester):
    pytester.makefile(
        ".promptopt.yaml", s="providers: [echo]\nprompts: ['x']\ntests: [{assert: [{type: contains, value: x}]}]\n"
    )
    for args, message in [
        (
            ["--promptopt-concurrency", "0"],
            "--promptopt-concurrency (ini: promptopt_concurrency): must be a positive whole number",
        ),
        (
            ["--promptopt-rate-limit", "openai:rps=3"],
            "--promptopt-rate-limit (ini: promptopt_rate_limit): 'openai:rps=3': unknown limit",
        ),
        (["--promptopt-retries", "-1"], "must be 0 or more"),
        (["--promptopt-spark-remote", "sc://h:1"], "need --promptopt-backend spark"),
        (["--promptopt-backend", "spark", "--promptopt-spark-remote", "http://h:1"], "is not a Spark Connect URL"),
        (["--promptopt-backend", "spark", "-n", "2"], "drop -n"),
    ]:
        result = run_pytest("--promptopt", *args)
        assert result.ret == 4, args
        result.stderr.fnmatch_lines([f"*{message}*"])


def test_the_rate_limit_holds_across_threads_of_a_run(run_pytest, pytester, openai_env):
    # 12 cases at rpm=600 (one call per 0.1 s on average, but a minute's budget up front) must
    # all run; with rpm=10 only 10 start within the first minute, so use a generous budget and
    # check the limiter let every call through without errors.
    with FakeOpenAI(echo_last_user_message) as server:
        pytester.makefile(".promptopt.yaml", hosted=hosted_suite(server.base_url, 12))
        run_pytest(
            "--promptopt", "--promptopt-cache", "off", "--promptopt-rate-limit", "openai:rpm=600,tpm=100000", "-n", "2"
        ).assert_outcomes(passed=12)
        assert len(server.requests) == 12


# --------------------------------------------------------------------------- batching

BATCH_CONFTEST = """
import json, os
from pytest_promptopt.models.base import Response

class Batcher:
    name = "batcher"
    cache_identity = {"model": "batcher"}

    def generate(self, request):
        return self.generate_batch([request])[0]

    def generate_batch(self, requests):
        with open(os.environ["BATCH_LOG"], "a") as log:
            log.write(json.dumps(len(requests)) + "\\n")
        return [Response(text=r.prompt.upper(), model=self.name) for r in requests]

def pytest_promptopt_make_model(spec):
    if spec.id == "echo":
        return Batcher()
"""


@pytest.mark.parametrize("mode_name", list(MODES))
def test_batching_models_get_batches_with_the_same_results(run_pytest, pytester, monkeypatch, mode_name):
    pytester.makeconftest(BATCH_CONFTEST)
    tests = "\n".join(f"  - vars: {{n: '{i}'}}\n    assert: [{{type: equals, value: 'CASE {i}'}}]" for i in range(20))
    pytester.makefile(".promptopt.yaml", batch=f"providers: [echo]\nprompts: ['case {{{{n}}}}']\ntests:\n{tests}\n")
    sizes = {}
    for batch in ("1", "8"):
        log = pytester.path / f"batches-{batch}.log"
        monkeypatch.setenv("BATCH_LOG", str(log))
        run_pytest(
            "--promptopt",
            "--promptopt-cache",
            "off",
            "--promptopt-batch-size",
            batch,
            "--promptopt-report",
            f"b{batch}.json",
            *MODES[mode_name],
        ).assert_outcomes(passed=20)
        sizes[batch] = [json.loads(line) for line in log.read_text().split()]
    assert sizes["1"] == [1] * 20
    assert sum(sizes["8"]) == 20
    if mode_name != "xdist":  # one process sees every case: full batches but the last
        assert sizes["8"] == [8, 8, 4]
    else:  # xdist hands a worker 2 of 20 items at a time: smaller batches, but batches
        assert 2 <= max(sizes["8"]) <= 8
    assert comparable(load_report(pytester.path / "b1.json")) == comparable(load_report(pytester.path / "b8.json"))


# --------------------------------------------------------------------------- crashed workers

# The xdist worker itself dies while running the "boom" case (a python check would die in its own
# sandbox process, which is an ordinary error; this is the worker going away under pytest).
CRASH_CONFTEST = """
import os, signal

def pytest_runtest_call(item):
    if "boom" in item.name:
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_crashed_worker_loses_only_its_case(run_pytest, pytester):
    pytester.makeconftest(CRASH_CONFTEST)
    tests = "\n".join(f"  - vars: {{word: {w}}}\n    description: {w}" for w in ["a", "b", "boom", "c", "d", "e"])
    pytester.makefile(
        ".promptopt.yaml",
        crashy=f"""
providers: [echo]
prompts: ["say {{{{word}}}}"]
defaultTest:
  assert: [{{type: contains, value: say}}]
gates: {{pass_rate: 1.0}}
tests:
{tests}
""",
    )
    result = run_pytest("--promptopt", "-n", "2", *SCHEDULER, "--promptopt-report", "r.json", mlflow=True)
    result.assert_outcomes(passed=5, errors=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*worker*crashed while running*boom*"])
    suite = load_report(pytester.path / "r.json")["suites"][0]
    assert (suite["cases"], suite["passed"], suite["errors"]) == (6, 5, 1)
    crashed = [r for r in suite["results"] if r["error"]]
    assert [r["name"] for r in crashed] == ["boom[t2]"] and "worker crashed" in crashed[0]["error"]
    assert crashed[0]["prompt"] == "say boom"  # the case record is rebuilt from the suite file
    # ... and MLflow has every case too
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{pytester.path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(pytester.path.name).experiment_id])
    parent = next(r for r in runs if r.data.tags.get("promptopt.session") == "true")
    assert parent.data.metrics["cases"] == 6 and parent.data.metrics["errors"] == 1


# --------------------------------------------------------------------------- xdist scheduling


class MockConfig:
    """What xdist's load scheduler reads of the config: the workers (`--tx`) and `--maxschedchunk`."""

    def __init__(self, workers: int) -> None:
        self.options = {"tx": [f"{workers}*popen"], "maxschedchunk": None}

    def getvalue(self, name: str) -> Any:
        return self.options[name]

    getoption = getvalue


class MockNode:
    """What xdist's schedulers use of a worker: the tests sent to it, and shutdown."""

    def __init__(self, name: str) -> None:
        self.sent: list[int] = []
        self.shutting_down = False
        self.gateway = type("Gateway", (), {"id": name})()

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def test_the_scheduler_keeps_a_window_of_cases_queued_on_each_worker():
    sched = scheduling._scheduler_class()(MockConfig(2), None, concurrency=8, batch_size=1)
    assert sched.window == 8  # each of 2 workers makes 4 calls at once, and sees 8 cases ahead
    nodes = [MockNode("gw0"), MockNode("gw1")]
    collection = [f"s.promptopt.yaml::case[t{i}]" for i in range(24)] + [f"test_x.py::test_{i}" for i in range(16)]
    for node in nodes:
        sched.add_node(node)
    for node in nodes:
        sched.add_node_collection(node, collection)
    sched.schedule()
    assert [len(sched.node2pending[n]) for n in nodes] == [8, 8]  # xdist alone sends 5 each

    # a worker whose cases wait for their calls (xdist leaves it alone while it holds two) is topped up
    node = nodes[0]
    for _ in range(6):
        sched.mark_test_complete(node, sched.node2pending[node][0], duration=0.5)
    assert len(sched.node2pending[node]) == 8
    assert len(node.sent) == 14 and node.sent == sorted(node.sent)  # in collection order

    # ordinary tests next: xdist's own rule (no refill while a slow test's worker holds two)
    while sched.pending[0] < 24:
        sched.mark_test_complete(node, sched.node2pending[node][0], duration=0.5)
    held = len(sched.node2pending[node])
    sched.mark_test_complete(node, sched.node2pending[node][0], duration=0.5)
    assert len(sched.node2pending[node]) == held - 1


def test_the_top_up_stops_at_a_fair_share_of_what_is_left():
    sched = scheduling._scheduler_class()(MockConfig(2), None, concurrency=16, batch_size=8)
    nodes = [MockNode("gw0"), MockNode("gw1")]
    for node in nodes:
        sched.add_node(node)
    for node in nodes:
        sched.add_node_collection(node, [f"s.promptopt.yaml::case[t{i}]" for i in range(10)])
    sched.schedule()
    assert sorted(len(sched.node2pending[n]) for n in nodes) == [5, 5]  # not 10 and 0: window 16 > half of 10


class DeadNode(MockNode):
    """A worker that took its first chunk and crashed on it: execnet's send then raises."""

    def send_runtest_some(self, indices: list[int]) -> None:
        if self.sent:
            raise OSError("cannot send (already closed?)")
        super().send_runtest_some(indices)


def test_a_top_up_for_a_worker_that_already_crashed_goes_back_to_the_others():
    sched = scheduling._scheduler_class()(MockConfig(2), None, concurrency=8, batch_size=1)
    dead, alive = DeadNode("gw0"), MockNode("gw1")
    collection = [f"s.promptopt.yaml::case[t{i}]" for i in range(24)]
    for node in (dead, alive):
        sched.add_node(node)
    for node in (dead, alive):
        sched.add_node_collection(node, collection)
    sched.schedule()  # raised OSError from inside xdist's worker_collectionfinish before
    assert len(dead.sent) == 3 and len(sched.node2pending[dead]) == 8  # booked, not delivered

    crashed = sched.remove_node(dead)  # what xdist does when it reads the worker's crash
    assert crashed == collection[dead.sent[0]]
    every = set(alive.sent) | set(sched.pending) | {dead.sent[0]}
    assert every == set(range(24))  # nothing lost: the undelivered top-up is the others' to run


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--promptopt"], "LookaheadScheduling"),
        (["--promptopt", "--dist", "loadscope"], "LoadScopeScheduling"),
        ([], "LoadScheduling"),
    ],
    ids=["promptopt", "loadscope", "without-promptopt"],
)
def test_the_scheduler_is_used_for_dist_load_with_promptopt_only(run_pytest, pytester, args, expected):
    pytester.makefile(".promptopt.yaml", capitals=ECHO_SUITE)
    result = run_pytest(*args, "-n", "2", *SCHEDULER, "-v", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([f"scheduling tests via {expected}"])
    assert result.ret == (1 if args else 0)  # the echo suite's third case fails; skipped without --promptopt


def test_workers_that_generate_different_tests_are_told_which_suite_and_why(run_pytest, pytester):
    """A tests generator that is not deterministic gives each xdist worker other cases; xdist
    stops with "Different tests were collected" and the plugin names the suite and the cause."""
    pytester.makefile(".promptopt.yaml", s="prompts: ['City: {{city}}']\nproviders: [echo]\ntests: file://gen.py\n")
    pytester.makepyfile(
        gen="import random\ndef generate_tests():\n    return [{'vars': {'city': str(random.random())}}]\n"
    )
    result = run_pytest("--promptopt", "-n", "2", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        [
            "Different tests were collected between gw0 and gw1*",
            "s.promptopt.yaml: the suite's cases differ between xdist workers. Each worker loads the suite itself, "
            "so tests generated by code (tests: file://gen.py) must come out the same every time*",
        ]
    )
    assert result.ret != 0
    # other collections that differ (plain tests) keep xdist's message alone
    other = "Different tests were collected between gw0 and gw1. The difference is:\n--- gw0\n+++ gw1\n-test_a.py::x"
    assert scheduling.collection_difference_hint(other) is None
    assert scheduling.collection_difference_hint("ERROR collecting s.promptopt.yaml") is None


LOOKAHEAD_CONFTEST = """
import json, os
from pytest_promptopt.items import upcoming_items

def pytest_runtest_setup(item):
    if hasattr(item, "case"):
        with open(os.environ["AHEAD_LOG"], "a") as log:
            log.write(json.dumps([os.environ.get("PYTEST_XDIST_WORKER"), sum(1 for _ in upcoming_items(item))]) + "\\n")
"""


def test_xdist_workers_see_a_window_of_cases_ahead(run_pytest, pytester, openai_env, monkeypatch):
    """Each worker holds its window of cases (2 x its 4 calls) while cases are left, so its calls
    keep overlapping; xdist's own scheduler left a worker two or three cases late in a run."""
    log = pytester.path / "ahead.log"
    monkeypatch.setenv("AHEAD_LOG", str(log))
    pytester.makeconftest(LOOKAHEAD_CONFTEST)
    with FakeOpenAI(echo_last_user_message, delay_s=0.2) as server:
        pytester.makefile(".promptopt.yaml", hosted=hosted_suite(server.base_url, 48))
        run_pytest(
            "--promptopt",
            "--promptopt-cache",
            "off",
            "--promptopt-concurrency",
            "8",
            "--promptopt-batch-size",
            "1",
            "-n",
            "2",
            *SCHEDULER,
            "-p",
            "no:cacheprovider",
        ).assert_outcomes(passed=48)
        assert server.max_in_flight == 8
    seen: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        worker, ahead = json.loads(line)
        seen.setdefault(worker, []).append(ahead)
    assert len(seen) == 2 and sum(map(len, seen.values())) == 48
    for worker, counts in seen.items():
        # up to 7: the window less the case running. A worker starts its next case before the
        # controller's refill for the last one arrives (one or two fewer, more on a busy
        # machine), and the last cases of the run have no more to wait for.
        body = sorted(counts[:-8])
        assert body[len(body) // 2] >= 5 and body[len(body) // 4] >= 4, (worker, counts)


# --------------------------------------------------------------------------- warm-up and per-call costs


WARM_CONFTEST = """
import os
from pytest_promptopt.models.base import Response

class Warm:
    name = "warm"
    cache_identity = {"model": "warm"}

    def warm_up(self):
        with open(os.environ["WARM_LOG"], "a") as log:
            log.write("warm-up\\n")

    def generate(self, request):
        with open(os.environ["WARM_LOG"], "a") as log:
            log.write("call\\n")
        return Response(text=request.prompt)

def pytest_promptopt_make_model(spec):
    return Warm()
"""


@pytest.fixture
def warm_log(pytester, monkeypatch):
    """The log of WARM_CONFTEST's model (its warm-ups and calls), which every model spec gets."""
    log = pytester.path / "warm.log"
    monkeypatch.setenv("WARM_LOG", str(log))
    pytester.makeconftest(WARM_CONFTEST)
    return log


def test_collection_warms_up_each_model_once(run_pytest, pytester, warm_log):
    log = warm_log
    pytester.makefile(
        ".promptopt.yaml",
        a="providers: [echo]\nprompts: ['a {{n}}']\ntests: [{vars: {n: 1}}, {vars: {n: 2}}]\n",
        b="providers: [echo]\nprompts: ['b']\ntests: [{vars: {}}]\n",
    )
    run_pytest("--promptopt", "--promptopt-cache", "off", "-p", "no:randomly").assert_outcomes(passed=3)
    assert log.read_text().split() == [
        "warm-up",
        "call",
        "call",
        "call",
    ]  # one adapter for both files, warmed before any case
    log.unlink()
    run_pytest("--promptopt", "--collect-only")
    assert not log.exists()  # nothing is loaded just to list the cases


@pytest.mark.parametrize("mode", list(MODES))
def test_a_model_the_cache_answers_for_every_case_is_not_loaded(run_pytest, pytester, warm_log, mode):
    """A warm rerun needs no model: loading one (litellm's import, the bundled model) would be
    seconds of CPU for nothing. One case the cache does not hold is enough to load it."""
    log = warm_log
    suite = "providers: [echo]\nprompts: ['a {{n}}']\ntests: [{vars: {n: 1}}, {vars: {n: 2}}, {vars: {n: 2}}]\n"
    pytester.makefile(".promptopt.yaml", a=suite, b="providers: [echo]\nprompts: ['b']\ntests: [{vars: {}}]\n")
    run_pytest("--promptopt", "--promptopt-concurrency", "1").assert_outcomes(passed=4)
    assert log.read_text().split() == ["warm-up", "call", "call", "call"]  # a's two cases alike: one call
    log.unlink()
    run_pytest("--promptopt", *MODES[mode]).assert_outcomes(passed=4)
    assert not log.exists()  # every answer from the cache: no warm-up, no call, in any worker
    pytester.makefile(".promptopt.yaml", b="providers: [echo]\nprompts: ['b', 'c']\ntests: [{vars: {}}]\n")
    run_pytest("--promptopt", *MODES[mode]).assert_outcomes(passed=5)
    calls = log.read_text().split()
    assert calls.count("call") == 1 and calls[0] == "warm-up" and calls.count("warm-up") == len(calls) - 1, calls


def test_a_file_with_model_graded_checks_still_warms_its_model(run_pytest, pytester, warm_log):
    """Its judges' answers are not known at collection: a hosted judge would import litellm in the
    middle of a test (its warning filters then end with that test). Replay mode never calls."""
    log = warm_log
    pytester.makefile(
        ".promptopt.yaml",
        a="providers: [echo]\nprompts: ['a']\ntests: [{vars: {}, assert: [{type: llm-rubric, value: fine}]}]\n",
    )
    run_pytest("--promptopt")
    log.unlink()
    run_pytest("--promptopt")
    assert log.read_text().split() == ["warm-up"]  # every answer cached, the model warmed all the same
    log.unlink()
    run_pytest("--promptopt", "--promptopt-cache", "replay")
    assert not log.exists()


FILTERS_CONFTEST = """
def pytest_sessionfinish(session):
    with open("filters.txt", "w") as out:
        out.write("\\n".join(session.config.getini("filterwarnings")))
"""


def test_litellm_warm_up_keeps_litellms_warning_filters_for_the_cases(run_pytest, pytester, openai_env):
    """litellm installs warning filters when imported (pydantic's notices about its types); an
    import during collection would lose them when pytest's warning capture around collection
    ends, so they become pytest filters, applied around every case."""
    pytester.makeconftest(FILTERS_CONFTEST)
    with FakeOpenAI(echo_last_user_message) as server:
        pytester.makefile(".promptopt.yaml", hosted=hosted_suite(server.base_url, 3))
        result = run_pytest("--promptopt", "--promptopt-cache", "off", subprocess=True)  # litellm not yet imported
        result.assert_outcomes(passed=3)
    result.stdout.no_fnmatch_line("*ReadOnly*")  # pydantic: "... are using the `ReadOnly` qualifier"
    filters = (pytester.path / "filters.txt").read_text().splitlines()
    assert "ignore:.*`ReadOnly` qualifier.*:builtins.Warning::" in filters, filters


def test_cost_is_not_priced_twice():
    """litellm prices each reply; when it knows no price (None), asking again costs ~1 ms of CPU."""
    from pytest_promptopt.models.hosted import LiteLLMModel

    class Reply:
        _hidden_params = {"response_cost": None}

    class Litellm:
        @staticmethod
        def completion_cost(completion_response: Any) -> float:
            raise AssertionError("priced twice")

    assert LiteLLMModel._cost(Litellm, Reply()) is None
    Reply._hidden_params = {"response_cost": 0.25}
    assert LiteLLMModel._cost(Litellm, Reply()) == 0.25


def test_call_threads_each_have_an_event_loop_closed_with_the_runner(tmp_path):
    """litellm reports each sync call through an async hook, with `asyncio.run` (a new event
    loop per call) in a thread that has no loop; the runner's call threads each keep one."""
    import asyncio

    from pytest_promptopt.cache import CacheMode, ResponseCache
    from pytest_promptopt.models.specs import ModelSpec
    from pytest_promptopt.suite.loader import load_suite

    class Concurrent:
        name = "concurrent"
        cache_identity = {"model": "concurrent"}
        concurrent = True

        def __init__(self) -> None:
            self.loops: set[int] = set()

        def generate(self, request: Request) -> Response:
            self.loops.add(id(asyncio.get_event_loop()))  # raises in a thread without a loop
            return Response(text=request.prompt)

    (tmp_path / "s.promptopt.yaml").write_text(ECHO_SUITE)
    cases = [
        (case, f"s::{case.name}") for case in load_suite(tmp_path / "s.promptopt.yaml", "s", ModelSpec("echo")).cases
    ]
    model = Concurrent()
    cache = ResponseCache(tmp_path / "c.sqlite", CacheMode.OFF)
    runner = CaseRunner(lambda spec: model, lambda: cache, ExecutionSettings(cache.path, concurrency=2, batch_size=1))
    results = list(runner.map(cases * 4))
    assert [r.error for r in results] == [None] * 12 and 1 <= len(model.loops) <= 2
    loops = list(runner._loops)
    runner.close()
    assert loops and all(loop.is_closed() for loop in loops)


def test_a_model_generating_batches_in_parallel_gets_them_at_once_and_a_window_to_match(tmp_path):
    """The bundled model on CTranslate2 generates one batch per core at once: the runner sends it
    that many batches together (not one after the other), and keeps as many queued behind them,
    so idle replicas answer later cases while a long test holds pytest's main thread."""

    class TwoAtOnce:
        name = "two-at-once"
        cache_identity = {"model": "two-at-once"}
        parallel_batches = 2

        def __init__(self) -> None:
            self.together = threading.Barrier(2, timeout=30)  # breaks if the second batch never comes
            self.sizes: list[int] = []

        def generate(self, request: Request) -> Response:
            return self.generate_batch([request])[0]

        def generate_batch(self, requests: list[Request]) -> list[Response]:
            self.sizes.append(len(requests))
            if len(self.sizes) <= 2:
                self.together.wait()  # the first two batches must be in flight together
            return [Response(text=r.prompt) for r in requests]

    model = TwoAtOnce()
    cases, runner = _batching_runner(tmp_path, model, cases=48, batch_size=8)
    first = runner.result(*cases[0], upcoming=cases[1:])
    assert first.error is None and runner.window == 2 * 8 * 2
    assert len(runner._pending) == 31  # the first case and 31 ahead: four batches of 8
    results = [first] + [runner.result(c, n, cases[i + 1 :]) for i, (c, n) in enumerate(cases[1:], 1)]
    runner.close()
    assert [r.error for r in results] == [None] * 48 and model.sizes == [8] * 6


def test_the_look_ahead_marks_its_batches_and_a_waited_on_batch_is_not_marked(tmp_path):
    """The runner's look-ahead batches are marked as answering ahead (a model may let calls
    tests wait on go first: models/replica_turns.py); the batch holding the case pytest asks
    for now is not, nor is a direct call from a test."""
    from pytest_promptopt.models.base import is_answering_ahead

    class Marks:
        name = "marks"
        cache_identity = {"model": "marks"}
        parallel_batches = 2

        def __init__(self) -> None:
            self.calls: list[tuple[tuple[str, ...], bool]] = []
            self._lock = threading.Lock()

        def generate(self, request: Request) -> Response:
            return self.generate_batch([request])[0]

        def generate_batch(self, requests: list[Request]) -> list[Response]:
            with self._lock:
                self.calls.append((tuple(r.prompt for r in requests), is_answering_ahead()))
            return [Response(text=r.prompt) for r in requests]

    model = Marks()
    cases, runner = _batching_runner(tmp_path, model, cases=12, batch_size=4)
    results = [runner.result(c, n, cases[i + 1 :]) for i, (c, n) in enumerate(cases)]
    assert [r.error for r in results] == [None] * 12
    model.generate(Request.from_prompt("a test's own call"))
    runner.close()
    marks = [ahead for _, ahead in model.calls]
    assert len(marks) == 4  # three batches of 4, then the direct call
    assert marks[0] is False  # holds s::0, which pytest asked for
    assert marks[1:3] == [True, True]  # started ahead of pytest
    assert marks[3] is False and model.calls[3][0] == ("a test's own call",)


def _batching_runner(tmp_path: Any, model: Any, cases: int, batch_size: int) -> tuple[list[Any], CaseRunner]:
    """`cases` echo cases (the three of ECHO_SUITE over and over, each its own node id) and a
    runner that sends them to `model` in batches, with the cache off."""
    from pytest_promptopt.cache import CacheMode, ResponseCache
    from pytest_promptopt.models.specs import ModelSpec
    from pytest_promptopt.suite.loader import load_suite

    (tmp_path / "s.promptopt.yaml").write_text(ECHO_SUITE)
    suite = load_suite(tmp_path / "s.promptopt.yaml", "s", ModelSpec("echo")).cases
    cache = ResponseCache(tmp_path / "c.sqlite", CacheMode.OFF)
    settings = ExecutionSettings(cache.path, concurrency=1, batch_size=batch_size)
    return [(suite[i % 3], f"s::{i}") for i in range(cases)], CaseRunner(lambda spec: model, lambda: cache, settings)
