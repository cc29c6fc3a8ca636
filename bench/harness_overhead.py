"""Benchmark the harness's own cost per case against plain pytest and peer tools, on an instant model.

    python bench/harness_overhead.py [--sizes 200 1000] [--repeat 3] [--tools T,...] [--phases] [--profile OUT]

Every tool runs the same N cases in a fresh process in a fresh temporary folder: the prompt
`Echo: {{text}}` on an echo model (the answer is the prompt) and one `contains` check per case.

- `promptopt`: a suite file with `providers: [echo]`, `pytest --promptopt --promptopt-no-mlflow`;
- `promptopt+mlflow`: the same with MLflow on (the default), logging to a fresh SQLite store;
- `pytest`: N trivial parametrised tests (`@pytest.mark.parametrize("i", range(N))`);
- `mlflow.genai`: `mlflow.genai.evaluate` with an echo `predict_fn` and one `contains` scorer on a
  fresh SQLite store (4 workers, no predict rate limit: with the defaults it deadlocks or drops
  traces on SQLite);
- `deepeval`: `deepeval.evaluate()` with a non-LLM `contains` metric, in its own venv;
- `deepeval-pytest`: the same metric through `assert_test` in N parametrised tests, run by
  `deepeval test run` (its pytest runner);
- `promptfoo`: `promptfoo eval` with its `echo` provider and `contains` assertions, from npm.

The peers are installed by `bash bench/peers/setup.sh` under `bench/.peers/`; a peer that is not
installed or fails is skipped with the reason. All runs are offline (telemetry off).

Each (tool, N) runs `--repeat` times, interleaved so that load from other jobs spreads over all
tools; the table shows median wall times, the per-case cost as the slope between the two sizes
(which cancels start-up and imports; the median of the slopes of each repetition, whose two runs
follow each other), the same slope of CPU time (user + system of the tool's processes, far less
disturbed by other jobs on a shared machine), the start-up that slope implies, and the per-case
ratios to plain pytest. `--phases` also times collection and the test loop inside pytest, per
case, for the plugin and plain pytest; `--profile OUT` writes a cProfile of the plugin at the
largest N and prints its hot spots.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PEERS = BENCH / ".peers"
PYTHON = sys.executable
DEEPEVAL_PYTHON = PEERS / "deepeval" / "bin" / "python"
PROMPTFOO = PEERS / "promptfoo" / "node_modules" / ".bin" / "promptfoo"
PYTEST_FLAGS = ["-q", "-p", "no:cacheprovider"]
PROMPTOPT_FLAGS = ["--promptopt", "--promptopt-cache", "off"]

# Keep every tool offline and quiet; nothing here should reach the network.
OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "DEEPEVAL_TELEMETRY_OPT_OUT": "YES",
    "DEEPEVAL_UPDATE_WARNING_OPT_IN": "NO",
    "DEEPEVAL_GRPC_LOGGING": "NO",
    "DEEPEVAL_DISABLE_DOTENV": "1",
    "CONFIDENT_TRACE_FLUSH": "NO",
    "ERROR_REPORTING": "NO",
    "PROMPTFOO_DISABLE_TELEMETRY": "1",
    "PROMPTFOO_DISABLE_UPDATE": "1",
    "PROMPTFOO_DISABLE_SHARING": "1",
    "PROMPTFOO_DISABLE_REMOTE_GENERATION": "1",
    "PROMPTFOO_DISABLE_ERROR_REPORTING": "1",
    "NO_COLOR": "1",
    "MLFLOW_GENAI_EVAL_MAX_WORKERS": "4",
    "MLFLOW_GENAI_EVAL_PREDICT_RATE_LIMIT": "0",
}
# PYTHONDONTWRITEBYTECODE (set on the project's machines) is dropped so that each tool runs as on a
# user's machine, where Python keeps compiled modules: with it, every process compiled the
# plugin's modules (and pytest re-rewrote every pytest plugin's asserts) at each start.
DROP_ENV = (
    "MLFLOW_TRACKING_URI",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "OPENAI_API_KEY",
    "CONFIDENT_API_KEY",
    "PYTHONDONTWRITEBYTECODE",
)


def case_text(i: int) -> tuple[str, str]:
    """The var `text` of case i and the substring its answer must contain."""
    return f"item-{i} says hello", f"item-{i} says"


# --- the workloads: each writes its files into `folder` and returns (command, check of the output) ---

Workload = tuple[list[str], Callable[[str, Path], str | None]]


def pytest_counts(n: int) -> Callable[[str, Path], str | None]:
    def check(out: str, folder: Path) -> str | None:
        last = out.strip().splitlines()[-1] if out.strip() else ""
        return (
            None if re.fullmatch(rf"=*\s*{n} passed in [\d.]+s.*", last) else f"expected only {n} passed, got {last!r}"
        )

    return check


def promptopt(folder: Path, n: int, mlflow: bool) -> Workload:
    lines = ["description: bench", 'prompts: ["Echo: {{text}}"]', "providers: [echo]", "tests:"]
    for i in range(n):
        text, want = case_text(i)
        lines.append(
            f"  - vars: {{text: {json.dumps(text)}}}\n    assert: [{{type: contains, value: {json.dumps(want)}}}]"
        )
    (folder / "bench.promptopt.yaml").write_text("\n".join(lines) + "\n")
    (folder / "pytest.ini").write_text("[pytest]\n")
    flags = PROMPTOPT_FLAGS + ([] if mlflow else ["--promptopt-no-mlflow"])
    return [PYTHON, "-m", "pytest", *flags, *PYTEST_FLAGS], pytest_counts(n)


def plain_pytest(folder: Path, n: int) -> Workload:
    (folder / "test_bench.py").write_text(
        "import pytest\n\n\n"
        f"@pytest.mark.parametrize('i', range({n}))\n"
        "def test_echo(i):\n"
        "    assert f'item-{i} says' in f'Echo: item-{i} says hello'\n"
    )
    (folder / "pytest.ini").write_text("[pytest]\n")
    return [PYTHON, "-m", "pytest", *PYTEST_FLAGS], pytest_counts(n)


MLFLOW_SCRIPT = """
import sys, warnings, logging
warnings.simplefilter("ignore")
logging.disable(logging.WARNING)
import mlflow
from mlflow.genai.scorers import scorer
n = int(sys.argv[1])
mlflow.set_tracking_uri("sqlite:///mlflow.db")
mlflow.set_experiment("bench")

@scorer
def contains(outputs, expectations) -> bool:
    return expectations["want"] in outputs

def predict_fn(text):
    return "Echo: " + text

data = [{"inputs": {"text": f"item-{i} says hello"}, "expectations": {"want": f"item-{i} says"}} for i in range(n)]
result = mlflow.genai.evaluate(data=data, predict_fn=predict_fn, scorers=[contains])
traces = mlflow.search_traces(run_id=result.run_id, max_results=n + 10)
print("RESULT", len(traces), result.metrics.get("contains/mean"))
"""


def mlflow_genai(folder: Path, n: int) -> Workload:
    (folder / "bench_mlflow.py").write_text(MLFLOW_SCRIPT)

    def check(out: str, folder: Path) -> str | None:
        found = re.search(r"^RESULT (\d+) (\S+)$", out, re.M)
        return None if found and found.groups() == (str(n), "1.0") else f"expected {n} traces with contains/mean 1.0"

    return [PYTHON, "bench_mlflow.py", str(n)], check


DEEPEVAL_SCRIPT = """
import sys
from deepeval import evaluate
from deepeval.evaluate.configs import AsyncConfig, CacheConfig, DisplayConfig, ErrorConfig
from deepeval.metrics import BaseMetric
from deepeval.test_case import LLMTestCase


class Contains(BaseMetric):
    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.async_mode = False
        self.strict_mode = False
        self.include_reason = False
        self.evaluation_model = None

    def measure(self, test_case, *args, **kwargs) -> float:
        self.success = test_case.expected_output in test_case.actual_output
        self.score = float(self.success)
        self.reason = "found" if self.success else "missing"
        return self.score

    async def a_measure(self, test_case, *args, **kwargs) -> float:
        return self.measure(test_case)

    def is_successful(self) -> bool:
        return bool(self.success)

    @property
    def __name__(self):
        return "Contains"


n = int(sys.argv[1])
echo = lambda text: "Echo: " + text
cases = [LLMTestCase(input=t, actual_output=echo(t), expected_output=f"item-{i} says")
         for i, t in ((i, f"item-{i} says hello") for i in range(n))]
result = evaluate(test_cases=cases, metrics=[Contains()],
                  display_config=DisplayConfig(print_results=False, show_indicator=False),
                  cache_config=CacheConfig(write_cache=False, use_cache=False),
                  async_config=AsyncConfig(run_async=False), error_config=ErrorConfig(ignore_errors=False))
print("RESULT", len(result.test_results), sum(r.success for r in result.test_results))
"""


def deepeval(folder: Path, n: int) -> Workload:
    (folder / "bench_deepeval.py").write_text(DEEPEVAL_SCRIPT)

    def check(out: str, folder: Path) -> str | None:
        found = re.search(r"^RESULT (\d+) (\d+)$", out, re.M)
        return None if found and found.groups() == (str(n), str(n)) else f"expected {n} passing test results"

    return [str(DEEPEVAL_PYTHON), "bench_deepeval.py", str(n)], check


def deepeval_pytest(folder: Path, n: int) -> Workload:
    metric = DEEPEVAL_SCRIPT[: DEEPEVAL_SCRIPT.index("n = int(")]
    (folder / "test_bench.py").write_text(
        metric + "\n\nimport pytest\nfrom deepeval import assert_test\n\n\n"
        f"@pytest.mark.parametrize('i', range({n}))\n"
        "def test_echo(i):\n"
        "    text = f'item-{i} says hello'\n"
        "    case = LLMTestCase(input=text, actual_output='Echo: ' + text, expected_output=f'item-{i} says')\n"
        "    assert_test(case, [Contains()], run_async=False)\n"
    )

    def check(out: str, folder: Path) -> str | None:
        ok = re.search(rf"\b{n} passed\b", out) and re.search(rf"Passed: {n} \| Failed: 0", out)
        return None if ok else f"expected {n} passed"

    return [
        str(PEERS / "deepeval" / "bin" / "deepeval"),
        "test",
        "run",
        "test_bench.py",
        "-p",
        "no:cacheprovider",
    ], check


def promptfoo(folder: Path, n: int) -> Workload:
    lines = ["description: bench", 'prompts: ["Echo: {{text}}"]', "providers: [echo]", "tests:"]
    for i in range(n):
        text, want = case_text(i)
        lines.append(
            f"  - vars: {{text: {json.dumps(text)}}}\n    assert: [{{type: contains, value: {json.dumps(want)}}}]"
        )
    (folder / "promptfooconfig.yaml").write_text("\n".join(lines) + "\n")
    (folder / "home").mkdir()

    def check(out: str, folder: Path) -> str | None:
        try:
            stats = json.loads((folder / "out.json").read_text())["results"]["stats"]
        except (OSError, ValueError, KeyError) as exc:
            return f"no results in out.json ({exc})"
        return None if (stats["successes"], stats["failures"]) == (n, 0) else f"expected {n} successes, got {stats}"

    return [
        str(PROMPTFOO),
        "eval",
        "-c",
        "promptfooconfig.yaml",
        "-o",
        "out.json",
        "--no-cache",
        "--no-progress-bar",
        "--no-write",
        "--no-share",
        "--no-table",
    ], check


TOOLS: dict[str, Callable[[Path, int], Workload]] = {
    "promptopt": lambda folder, n: promptopt(folder, n, mlflow=False),
    "promptopt+mlflow": lambda folder, n: promptopt(folder, n, mlflow=True),
    "pytest": plain_pytest,
    "mlflow.genai": mlflow_genai,
    "deepeval": deepeval,
    "deepeval-pytest": deepeval_pytest,
    "promptfoo": promptfoo,
}
COMMANDS = {
    "promptopt": "pytest --promptopt --promptopt-no-mlflow --promptopt-cache off -q -p no:cacheprovider",
    "promptopt+mlflow": "pytest --promptopt --promptopt-cache off -q -p no:cacheprovider",
    "pytest": "pytest -q -p no:cacheprovider",
    "mlflow.genai": "mlflow.genai.evaluate(data, predict_fn, scorers=[contains])",
    "deepeval": "deepeval.evaluate(cases, [Contains()], run_async=False)",
    "deepeval-pytest": "deepeval test run test_bench.py -p no:cacheprovider  (assert_test per parametrised test)",
    "promptfoo": "promptfoo eval -c promptfooconfig.yaml --no-cache --no-write --no-share --no-table",
}


def unavailable(tool: str) -> str | None:
    """Why a peer cannot run here, or None."""
    if tool.startswith("deepeval") and not DEEPEVAL_PYTHON.exists():
        return f"not installed ({DEEPEVAL_PYTHON} missing; run `bash bench/peers/setup.sh deepeval`)"
    if tool == "promptfoo" and not PROMPTFOO.exists():
        return f"not installed ({PROMPTFOO} missing; run `bash bench/peers/setup.sh promptfoo`)"
    if tool == "mlflow.genai":
        try:
            import mlflow.genai  # noqa: F401
        except ImportError as exc:
            return f"mlflow.genai cannot be imported: {exc}"
    return None


def first_on_pythonpath(env: dict[str, str], checkout: str | Path | None) -> dict[str, str]:
    """`env` with `checkout` first on PYTHONPATH, so that its plugin is the one that runs (a
    before/after comparison, `--source`); None leaves `env` as it is."""
    if checkout:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout), env.get("PYTHONPATH")]))
    return env


def user_environment(checkout: str | Path | None = None) -> dict[str, str]:
    """This environment less `DROP_ENV`, as a tool runs on a user's machine; with `checkout`
    first on PYTHONPATH (`first_on_pythonpath`)."""
    return first_on_pythonpath({k: v for k, v in os.environ.items() if k not in DROP_ENV}, checkout)


def environment(folder: Path) -> dict[str, str]:
    env = user_environment()
    env.update(OFFLINE_ENV)
    env["PROMPTFOO_CONFIG_DIR"] = str(folder / "home")
    return env


def run_once(tool: str, n: int, timeout: float) -> tuple[float, float]:
    """Wall time and CPU time (user + system, the process and its children) of one fresh-process
    run; raises RuntimeError if the tool did not pass all N cases."""
    with tempfile.TemporaryDirectory(prefix=f"promptopt-bench-{tool.replace('+', '-')}-") as tmp:
        folder = Path(tmp)
        command, check = TOOLS[tool](folder, n)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run(
            command, cwd=folder, env=environment(folder), capture_output=True, text=True, timeout=timeout
        )
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)  # deepeval forces colour
        problem = check(out, folder)
        if proc.returncode != 0 or problem:
            tail = "\n    ".join(out.strip().splitlines()[-15:])
            raise RuntimeError(
                f"{tool} N={n}: exit {proc.returncode}, {problem or 'unexpected exit status'}\n    {tail}"
            )
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# Where a pytest run's time goes, measured inside it: collection, then the test loop.
PHASES_CONFTEST = """
import json, time
import pytest

_t = {}


def pytest_collection(session):
    _t["collect"] = time.perf_counter()


def pytest_collection_finish(session):
    _t["collected"] = time.perf_counter()


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        with open("bench-phases.json", "w") as f:
            json.dump({"collect_s": _t["collected"] - _t["collect"], "loop_s": time.perf_counter() - started}, f)
"""


def phases(n: int, repeat: int) -> None:
    """Median collection and test-loop time per case of the plugin and of plain pytest at N cases."""
    print(f"\nphases at N={n}, medians of {repeat} runs (per case, measured inside pytest by a conftest.py):")
    for tool, build in (
        ("promptopt", lambda f: promptopt(f, n, mlflow=False)),
        ("pytest", lambda f: plain_pytest(f, n)),
    ):
        collect, loop = [], []
        for _ in range(repeat):
            with tempfile.TemporaryDirectory(prefix="promptopt-bench-phases-") as tmp:
                folder = Path(tmp)
                command, check = build(folder)
                (folder / "conftest.py").write_text(PHASES_CONFTEST)
                proc = subprocess.run(
                    command, cwd=folder, env=environment(folder), capture_output=True, text=True, timeout=600
                )
                if proc.returncode != 0 or check(proc.stdout, folder):
                    raise RuntimeError(f"phases run of {tool} failed: {proc.stdout[-2000:]}")
                data = json.loads((folder / "bench-phases.json").read_text())
            collect.append(data["collect_s"])
            loop.append(data["loop_s"])
        print(
            f"  {tool:<10} collection {statistics.median(collect) / n * 1000:.3f} ms, test loop {statistics.median(loop) / n * 1000:.3f} ms"
        )


def profile_plugin(n: int, out: Path, top: int) -> None:
    with tempfile.TemporaryDirectory(prefix="promptopt-bench-profile-") as tmp:
        folder = Path(tmp)
        command, check = promptopt(folder, n, mlflow=False)
        command = [PYTHON, "-m", "cProfile", "-o", str(out.resolve()), "-m", "pytest", *command[3:]]
        proc = subprocess.run(command, cwd=folder, env=environment(folder), capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or check(proc.stdout, folder):
            raise RuntimeError(f"profiled run failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    stats = pstats.Stats(str(out))
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"\nprofile of the plugin at N={n} (MLflow off), {total:.2f} s under cProfile; written to {out}")
    for key, label in (("tottime", "own time"), ("cumulative", "cumulative time")):
        print(f"top {top} by {label}:")
        stats.sort_stats(key).print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[200, 1000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, from {', '.join(TOOLS)}")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed for one run")
    parser.add_argument(
        "--profile", type=Path, default=None, help="also cProfile the plugin at the large N into this file"
    )
    parser.add_argument("--top", type=int, default=25, help="functions shown per profile ordering")
    parser.add_argument(
        "--phases",
        action="store_true",
        help="also time collection and the test loop inside pytest, "
        "per case, for the plugin and plain pytest at the large N",
    )
    args = parser.parse_args()
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        parser.error(f"unknown tools {unknown}; choose from {list(TOOLS)}")
    small, large = args.sizes

    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    skipped: dict[str, str] = {}
    for tool in tools:
        reason = unavailable(tool)
        if reason:
            skipped[tool] = reason
            print(f"skipping {tool}: {reason}")
    active = [t for t in tools if t not in skipped]
    if shutil.which("node") is None and "promptfoo" in active:
        skipped["promptfoo"] = "node is not on PATH"
        active.remove("promptfoo")

    times: dict[tuple[str, int], list[float]] = {}
    cpus: dict[tuple[str, int], list[float]] = {}
    for rep in range(args.repeat):
        for tool in list(active):
            for n in (small, large):
                try:
                    elapsed, cpu = run_once(tool, n, args.timeout)
                except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                    skipped[tool] = f"failed: {exc}"
                    print(f"skipping {tool}: {exc}")
                    active.remove(tool)
                    break
                times.setdefault((tool, n), []).append(elapsed)
                cpus.setdefault((tool, n), []).append(cpu)
                print(
                    f"  run {rep + 1}/{args.repeat} {tool:<17} N={n:<5} {elapsed:7.2f} s, CPU {cpu:7.2f} s", flush=True
                )

    print(f"\nload average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"\nmedians of {args.repeat} runs; per case = median over repetitions of (t(N={large}) - t(N={small})) / {large - small}, "
        f"the two sizes run back to back; start-up = median t(N={small}) - {small} x per case; CPU = user + system "
        "time of the tool's processes, which other jobs on the machine disturb less than wall time"
    )
    slopes: dict[str, float] = {}
    cpu_slopes: dict[str, float] = {}
    rows = []

    def paired(series: dict[tuple[str, int], list[float]], tool: str) -> list[float]:
        return [(b - a) / (large - small) for a, b in zip(series[tool, small], series[tool, large])]

    for tool in active:
        wall = paired(times, tool)
        slope = slopes[tool] = statistics.median(wall)
        cpu_slopes[tool] = statistics.median(paired(cpus, tool))
        t_small, t_large = statistics.median(times[tool, small]), statistics.median(times[tool, large])
        spread = f"{min(wall) * 1000:.2f} to {max(wall) * 1000:.2f}"
        rows.append((tool, t_small, t_large, spread, slope * 1000, cpu_slopes[tool] * 1000, t_small - small * slope))
    base, cpu_base = slopes.get("pytest"), cpu_slopes.get("pytest")
    header = (
        f"| tool | N={small} (s) | N={large} (s) | per case (ms) | per case, range (ms) | CPU per case (ms) | start-up (s) "
        "| per case / pytest | CPU per case / pytest |"
    )
    print(header)
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for tool, t_small, t_large, spread, per_case_ms, cpu_ms, startup in rows:
        ratio = f"{per_case_ms / 1000 / base:.1f}x" if base and base > 0 else "n/a"
        cpu_ratio = f"{cpu_ms / 1000 / cpu_base:.1f}x" if cpu_base and cpu_base > 0 else "n/a"
        print(
            f"| {tool} | {t_small:.2f} | {t_large:.2f} | {per_case_ms:.2f} | {spread} | {cpu_ms:.2f} | {startup:.2f} | {ratio} | {cpu_ratio} |"
        )
    for tool, reason in skipped.items():
        print(f"| {tool} | skipped: {reason.splitlines()[0]} | | | | | | | |")
    if "promptopt" in slopes and min(slopes.values()) <= 0:
        print("\na slope is not positive: the runs are too noisy or N too small to judge the targets")
    elif "promptopt" in slopes:
        plugin, plugin_cpu = slopes["promptopt"], cpu_slopes["promptopt"]
        if base and cpu_base:
            print(
                f"\ntarget per case <= 2x plain pytest: wall {plugin / base:.2f}x, CPU {plugin_cpu / cpu_base:.2f}x -> "
                f"{'met' if plugin_cpu <= 2 * cpu_base else 'MISSED'} (judged on CPU)"
            )
        if "mlflow.genai" in slopes:
            genai = slopes["mlflow.genai"]
            print(
                f"target >= 10x lower than mlflow.genai.evaluate: {genai / plugin:.1f}x lower (wall) -> "
                f"{'met' if genai >= 10 * plugin else 'MISSED'}"
            )
    print("\ncommands (each in a fresh temporary folder holding only the generated files):")
    for tool in tools:
        print(f"  {tool:<17} {COMMANDS[tool]}")
    if args.phases:
        phases(large, args.repeat)
    if args.profile:
        profile_plugin(large, args.profile, args.top)


if __name__ == "__main__":
    main()
