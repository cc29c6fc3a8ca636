"""Benchmark hosted-model concurrency against a fake OpenAI server with a fixed answer delay.

    python bench/concurrency.py [--cases 1000] [--delay 0.2] [--concurrency 32] [--workers 2]
                                [--repeat 3] [--sanity-cases 50]

Starts `tests/fake_openai.py --delay D` as its own process on loopback (and a second one with no
delay, to measure what the harness and litellm cost without waiting), writes a suite of N cases on
`openai/bench-model` with `config: {api_base: <its URL>}` and one `contains` check each, and runs

    OPENAI_API_KEY=sk-bench pytest --promptopt --promptopt-no-mlflow --promptopt-cache off \\
        --promptopt-concurrency C -q -p no:cacheprovider [-n W]

in a fresh process in a temporary folder. The ideal time is N x D / C (every call overlapped, no
other cost); efficiency = ideal / measured. Each run reports its wall time, the time of pytest's
test loop (after start-up and collection, as a generated conftest.py measures it on the
controller), how long the first case took to finish (litellm's import, client set-up, the first
call) and the time from then to the last case, and the CPU seconds the run used (pytest and its
xdist workers). The CPU ceiling is the best efficiency the test loop could have on this machine's
cores with the CPU it used from the loop's start on (that CPU spread perfectly, nothing waiting):
where it is below a target, no scheduling reaches the target, only less CPU per case. A sanity run at concurrency 1 on a few cases should take about D per case, and a
probe times litellm alone (import, then sequential calls to the instant server) for comparison.
The servers run with TCP_NODELAY (see `Server.start`; `--nagle` runs them as the file is). Runs of one repetition are interleaved; figures are medians.

Under xdist the plugin's scheduler (`pytest_promptopt/runners/scheduling.py`) keeps each worker
fed with enough cases to work ahead. If the installed plugin does not register it yet, the
script loads it with `-p pytest_promptopt.runners.scheduling`; `--xdist-scheduler` picks xdist's
own load scheduler instead, for comparison (only possible while the plugin does not register it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAKE_SERVER = ROOT / "tests" / "fake_openai.py"
PYTHON = sys.executable
# PYTHONDONTWRITEBYTECODE (set on the project's machines) is dropped: a user's Python keeps compiled
# modules, and without them every worker compiled the plugin again at its start (harness_overhead.py).
DROP_ENV = (
    "MLFLOW_TRACKING_URI",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "OPENAI_BASE_URL",
    "OPENAI_API_BASE",
    "PYTHONDONTWRITEBYTECODE",
)

# Timestamps taken inside the run, on the controller only (xdist workers load it too).
CONFTEST = """
import json, time
import pytest

_seen = {"first_start": None, "first_done": None, "last_done": None, "done": 0}


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    started = time.time()
    cpu_before = time.process_time()  # the controller's own CPU until its test loop starts
    try:
        return (yield)
    finally:
        if not hasattr(session.config, "workerinput"):
            ended = time.time()
            with open("bench-timing.json", "w") as f:
                json.dump({"loop_start": started, "loop_end": ended, "cpu_before_loop": cpu_before, **_seen}, f)


def pytest_runtest_logreport(report):
    # report.start/stop are wall-clock stamps taken where the case ran (also on xdist workers)
    if report.when == "setup" and (_seen["first_start"] is None or report.start < _seen["first_start"]):
        _seen["first_start"] = report.start
    if report.when == "teardown":
        _seen["done"] += 1
        if _seen["first_done"] is None or report.stop < _seen["first_done"]:
            _seen["first_done"] = report.stop
        if _seen["last_done"] is None or report.stop > _seen["last_done"]:
            _seen["last_done"] = report.stop
"""


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str

    @classmethod
    def start(cls, delay: float, nodelay: bool = True) -> Server:
        command = [PYTHON, str(FAKE_SERVER), "--delay", str(delay)]
        if nodelay:
            # http.server answers in two writes (headers, then body) with Nagle's algorithm on, so on
            # a kept-alive connection the body waits for the client's delayed ACK: ~40 ms a request
            # on Linux. The server file itself runs unchanged; only TCP_NODELAY is switched on first.
            command = [
                PYTHON,
                "-c",
                "import runpy, socketserver, sys; socketserver.StreamRequestHandler.disable_nagle_algorithm = True; "
                "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')",
                *command[1:],
            ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            process.kill()
            raise RuntimeError(f"{FAKE_SERVER} printed {url!r} instead of its base URL")
        return cls(process, url)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@dataclass
class Run:
    wall_s: float  # the pytest process, start to exit
    loop_s: float  # pytest's test loop on the controller (after start-up and collection)
    first_s: float  # test loop start to the first case done (litellm import, client set-up, first call)
    steady_s: float  # first case done to last case done
    cpu_s: float  # user + system CPU of pytest and its xdist workers
    loop_cpu_s: float  # cpu_s less what the controller spent before its test loop (start-up, collection)


@dataclass(frozen=True)
class Config:
    label: str
    cases: int
    concurrency: int
    workers: int
    delayed: bool  # against the delayed server, else the instant one


def scheduler_registered() -> bool:
    """Whether the plugin module registers the look-ahead xdist scheduler itself."""
    out = subprocess.run(
        [PYTHON, "-c", "import pytest_promptopt.plugin as p; print(hasattr(p, 'pytest_xdist_make_scheduler'))"],
        capture_output=True,
        text=True,
    ).stdout
    return out.strip() == "True"


def option_available() -> bool:
    # Read from the plugin's option table, not `pytest --help` (which one bad help string breaks).
    code = "from pytest_promptopt.settings import OPTIONS; print(any(o.flag == '--promptopt-concurrency' for o in OPTIONS))"
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir()).stdout
    return out.strip() == "True"


def write_suite(folder: Path, cases: int, url: str) -> None:
    lines = [
        "description: concurrency",
        'prompts: ["Echo: {{text}}"]',
        f"providers:\n  - id: openai/bench-model\n    config: {{api_base: {json.dumps(url)}}}",
        "tests:",
    ]
    for i in range(cases):
        lines.append(
            f'  - vars: {{text: "item-{i} says hello"}}\n    assert: [{{type: contains, value: "item-{i} says"}}]'
        )
    (folder / "bench.promptopt.yaml").write_text("\n".join(lines) + "\n")
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "pytest.ini").write_text("[pytest]\n")


def bench_env() -> dict[str, str]:
    """A run's environment: this one, less what would send it elsewhere, with the fake server's key."""
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
    env.update(
        OPENAI_API_KEY="sk-bench",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        MLFLOW_DISABLE_TELEMETRY="true",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    return env


def run_once(config: Config, url: str, timeout: float, extra: list[str]) -> Run:
    with tempfile.TemporaryDirectory(prefix="promptopt-bench-concurrency-") as tmp:
        folder = Path(tmp)
        write_suite(folder, config.cases, url)
        command = [
            PYTHON,
            "-m",
            "pytest",
            "--promptopt",
            "--promptopt-no-mlflow",
            "--promptopt-cache",
            "off",
            "--promptopt-concurrency",
            str(config.concurrency),
            "-q",
            "-p",
            "no:cacheprovider",
        ]
        if config.workers > 1:
            command += ["-n", str(config.workers), *extra]
        env = bench_env()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        last = lines[-1] if lines else ""
        if proc.returncode != 0 or not re.fullmatch(rf"=*\s*{config.cases} passed in [\d.]+s.*", last):
            log = Path(tempfile.gettempdir()) / f"promptopt-bench-concurrency-failed-{time.strftime('%H%M%S')}.log"
            log.write_text(proc.stdout + proc.stderr)
            raise RuntimeError(
                f"{config.label}: exit {proc.returncode}, expected {config.cases} passed, got {last!r}; "
                f"whole output in {log}"
            )
        t = json.loads((folder / "bench-timing.json").read_text())
    if t["done"] != config.cases:
        raise RuntimeError(f"{config.label}: the timing conftest saw {t['done']} cases, not {config.cases}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(
        wall,
        t["loop_end"] - t["loop_start"],
        t["first_done"] - t["loop_start"],
        t["last_done"] - t["first_done"],
        cpu,
        cpu - t["cpu_before_loop"],
    )


# litellm alone, sequentially, against the instant server: its own cost per call.
LITELLM_PROBE = """
import os, sys, time
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
started = time.perf_counter()
import litellm
imported = time.perf_counter() - started
litellm.telemetry = False
url, calls = sys.argv[1], int(sys.argv[2])
def call(i):
    reply = litellm.completion(model="openai/bench-model", messages=[{"role": "user", "content": f"item-{i}"}],
                               api_base=url, timeout=60, num_retries=0, max_retries=0)
    assert reply.choices[0].message.content == f"Echo: item-{i}"
call(-1)
first = time.perf_counter() - started - imported
cpu, wall = time.process_time(), time.perf_counter()
for i in range(calls):
    call(i)
print(imported, first, (time.process_time() - cpu) / calls, (time.perf_counter() - wall) / calls)
"""


def litellm_probe(url: str, calls: int) -> tuple[float, float, float, float]:
    """(import s, first call s, CPU s per call, wall s per call) of litellm alone in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
    env.update(OPENAI_API_KEY="sk-bench", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    out = subprocess.run(
        [PYTHON, "-c", LITELLM_PROBE, url, str(calls)], capture_output=True, text=True, env=env, check=True
    )
    imported, first, cpu, wall = (float(x) for x in out.stdout.split()[-4:])
    return imported, first, cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds the fake server waits before each answer")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="xdist workers for the -n run (0: skip it)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sanity-cases", type=int, default=50, help="cases of the concurrency-1 run (0: skip it)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed for one run")
    parser.add_argument(
        "--nagle",
        action="store_true",
        help="run the fake server as the file is, with Nagle's algorithm (adds ~40 ms to each kept-alive request)",
    )
    parser.add_argument(
        "--probe-calls", type=int, default=200, help="sequential calls of the litellm-alone probe (0: skip it)"
    )
    parser.add_argument(
        "--xdist-scheduler",
        action="store_true",
        help="under -n, xdist's own load scheduler instead of the "
        "plugin's look-ahead scheduler (only while the plugin does not register it itself)",
    )
    args = parser.parse_args()

    if not option_available():
        print("--promptopt-concurrency is not an option of this pytest-promptopt yet; nothing measured")
        sys.exit(2)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    registered = scheduler_registered()
    extra: list[str] = []
    if args.xdist_scheduler:
        if registered:
            print("--xdist-scheduler: the plugin registers its scheduler itself; cannot compare")
            sys.exit(2)
        print("under -n: xdist's own load scheduler")
    else:
        extra = [] if registered else ["-p", "pytest_promptopt.runners.scheduling"]
        print(
            f"under -n: the plugin's look-ahead scheduler{'' if registered else ' (loaded with -p pytest_promptopt.runners.scheduling)'}"
        )

    configs = [Config("in-process", args.cases, args.concurrency, 1, True)]
    if args.workers > 1:
        configs.append(Config(f"-n {args.workers}", args.cases, args.concurrency, args.workers, True))
    configs.append(Config("in-process, instant server", args.cases, args.concurrency, 1, False))
    if args.workers > 1:
        configs.append(Config(f"-n {args.workers}, instant server", args.cases, args.concurrency, args.workers, False))
    if args.sanity_cases:
        configs.append(Config("sanity", args.sanity_cases, 1, 1, True))

    delayed, instant = Server.start(args.delay, not args.nagle), Server.start(0.0, not args.nagle)
    print(
        f"fake OpenAI servers: {delayed.url} (delay {args.delay} s), {instant.url} (no delay); "
        f"TCP_NODELAY {'off (as the file is)' if args.nagle else 'on'}"
    )
    runs: dict[Config, list[Run]] = {}
    probes: list[tuple[float, float, float, float]] = []
    failures: list[str] = []
    try:
        for rep in range(args.repeat):
            if args.probe_calls:
                probes.append(litellm_probe(instant.url, args.probe_calls))
                imported, first, cpu, wall = probes[-1]
                print(
                    f"  run {rep + 1}/{args.repeat} litellm alone: import {imported:.2f} s, first call {first:.2f} s, "
                    f"then {wall * 1000:.2f} ms per call ({cpu * 1000:.2f} ms CPU), sequential, instant server",
                    flush=True,
                )
            for config in configs:
                try:
                    run = run_once(config, delayed.url if config.delayed else instant.url, args.timeout, extra)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    failures.append(f"run {rep + 1} {config.label}: {exc}")
                    print(f"  run {rep + 1}/{args.repeat} {config.label:<28} FAILED: {exc}", flush=True)
                    continue
                runs.setdefault(config, []).append(run)
                print(
                    f"  run {rep + 1}/{args.repeat} {config.label:<28} wall {run.wall_s:6.2f} s, test loop {run.loop_s:6.2f} s "
                    f"(first case done {run.first_s:5.2f} s, then {run.steady_s:6.2f} s), cpu {run.cpu_s:6.2f} s ({run.loop_cpu_s:6.2f} s of it from the test loop on)",
                    flush=True,
                )
    finally:
        delayed.stop()
        instant.stop()

    print(f"\nload average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"\nmedians of the runs that passed ({args.repeat} tried each). ideal = cases x {args.delay} s / concurrency; steady ideal = (cases - 1) x {args.delay} s "
        "/ concurrency, against the time from the first case done to the last; efficiency = ideal / time"
    )
    cores = os.cpu_count() or 1
    print(
        f"CPU ceiling = ideal / (CPU spent from the test loop on / {cores} cores): the efficiency the test loop could reach "
        "if that work were spread perfectly over every core and nothing ever waited; above it only less CPU helps"
    )
    print(
        "| run | cases | concurrency | wall (s) | test loop (s) | to first case (s) | first to last case (s) | CPU (s) | ideal (s) "
        "| efficiency, test loop | efficiency, after the first case | efficiency, wall | CPU ceiling, test loop |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    med = {
        c: Run(*(statistics.median(getattr(r, f) for r in rs) for f in (field.name for field in fields(Run))))
        for c, rs in runs.items()
    }
    for config, m in med.items():
        ideal = config.cases * args.delay / config.concurrency if config.delayed else 0.0
        steady = (config.cases - 1) * args.delay / config.concurrency if config.delayed else 0.0
        pct = (lambda x, y: f"{x / y:.0%}") if config.delayed else (lambda x, y: "-")
        print(
            f"| {config.label} | {config.cases} | {config.concurrency} | {m.wall_s:.2f} | {m.loop_s:.2f} | {m.first_s:.2f} | "
            f"{m.steady_s:.2f} | {m.cpu_s:.2f} | {ideal:.2f} | {pct(ideal, m.loop_s)} | {pct(steady, m.steady_s)} | {pct(ideal, m.wall_s)} "
            f"| {pct(ideal, max(m.loop_cpu_s / cores, 1e-9))} |"
        )
    for label in ("in-process", f"-n {args.workers}"):
        waiting = next((m for c, m in med.items() if c.label == label), None)
        free = next((m for c, m in med.items() if c.label == f"{label}, instant server"), None)
        if waiting and free:
            print(
                f"{label}: after the first case, {waiting.steady_s / (args.cases - 1) * 1000:.2f} ms per case with the delay, "
                f"{free.steady_s / (args.cases - 1) * 1000:.2f} ms without (ideal with the delay {args.delay / args.concurrency * 1000:.2f} ms); "
                f"CPU {free.cpu_s / args.cases * 1000:.1f} ms per case without the delay, start-up included"
            )
    if probes:
        imported, first, cpu, wall = (statistics.median(p[i] for p in probes) for i in range(4))
        print(
            f"litellm alone (fresh process, sequential calls to the instant server): import {imported:.2f} s, first call "
            f"{first:.2f} s, then {wall * 1000:.2f} ms per call, {cpu * 1000:.2f} ms of it CPU; one process can therefore "
            f"issue at most ~{1 / cpu:.0f} calls/s, against the {args.concurrency / args.delay:.0f} calls/s the ideal needs"
        )
    if failures:
        print(f"{len(failures)} failed run(s), left out of the medians:")
        for failure in failures:
            print(f"  {failure}")
    sanity = next((m for c, m in med.items() if c.label == "sanity"), None)
    if sanity:
        print(
            f"sanity: concurrency 1, {args.sanity_cases} cases: {sanity.steady_s / (args.sanity_cases - 1):.3f} s per case after the first "
            f"(delay {args.delay} s); the first took {sanity.first_s:.2f} s"
        )


if __name__ == "__main__":
    main()
