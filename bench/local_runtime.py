"""The bundled model's runtimes side by side, and the README's main job end to end.

    python bench/local_runtime.py [--repeat R] [--first-runs F] [--runtimes ctranslate2,transformers]
                                  [--threads T] [--skip-main-job] [--skip-runtimes]

1. The main job (`pytest --promptopt example_suites`, a fresh copy of the suites each time, so
   no response is cached): wall time warm (weights already prepared, R runs) and on a first run
   (a fresh PROMPTOPT_HOME, F runs: the GGUF is dequantised and converted again).
2. Each runtime in its own process, R rounds, the runtimes alternating within a round (same
   prompts, same conditions): load seconds, peak RSS, completion tokens/s on
   * `suites b8`: the main job's 52 prompts as the plugin's runner batches them (batches of 8, as
     many at once as the runtime generates at once: one per core on CTranslate2, one on transformers),
   * `suites single`: 12 of them one at a time,
   * `decode b8` / `decode single`: 8 (resp. 2) prompts that ask for long answers, max_tokens 128,
   with ratios against transformers float32, and whether every greedy text is the same.

Prints medians, the load average before and after, and the command. The prompts of step 2 come
from the report of a main job run (step 1, or `--report` of an earlier one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON_STYLE_MAX_TOKENS = 24  # example_suites/test_python_style.py passes it in code
LONG = [
    "Write a long story about a dragon who learns to bake bread.",
    "Explain in detail how a bicycle works, part by part.",
    "Describe a day in the life of a lighthouse keeper.",
    "Write a long letter to a friend about your summer holiday.",
    "Explain the water cycle to a child, step by step.",
    "Describe the history of the printing press.",
    "Write a recipe for vegetable soup with every step explained.",
    "Describe the planets of the solar system one by one.",
]

WORKER = r"""
import json, resource, sys, time
from concurrent.futures import ThreadPoolExecutor
started = time.perf_counter()
from pytest_promptopt import LocalModel, Request
job = json.loads(sys.stdin.read())
model = LocalModel(runtime=job["runtime"], batch_size=8)
model.load()
load_s = time.perf_counter() - started
def requests(cases):
    return [Request.from_prompt(prompt, params) for prompt, params in cases]
out = {"load_s": load_s, "modes": {}, "texts": {}}
for mode, cases, batch in job["modes"]:
    reqs = requests(cases)
    t, cpu = time.perf_counter(), time.process_time()
    if batch == 1:
        rows = [model.generate(r) for r in reqs]
    else:  # as the plugin's runner does: batches of 8, as many at once as the model generates at once
        chunks = [reqs[i : i + batch] for i in range(0, len(reqs), batch)]
        with ThreadPoolExecutor(model.parallel_batches) as pool:
            rows = [row for answered in pool.map(model.generate_batch, chunks) for row in answered]
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    tokens = sum(r.completion_tokens for r in rows)
    out["modes"][mode] = {"seconds": seconds, "tokens": tokens, "tok_s": tokens / seconds, "tok_cpu_s": tokens / cpu}
    out["texts"][mode] = [r.text for r in rows]
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def env(**extra: str) -> dict[str, str]:
    # without PYTHONDONTWRITEBYTECODE, as a user's Python runs (bench/harness_overhead.py DROP_ENV)
    return {
        **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **extra,
    }


AST_RACE = "AST constructor recursion depth mismatch"  # CPython 3.11's AST state is shared between threads
RACES: list[float] = []


def main_job(home: str | None, report: Path | None = None) -> float:
    """Wall seconds of one main job; a run that ends in CPython 3.11's AST race (an INTERNALERROR
    while reporting a failed case, see docs/performance.md) is counted and run again."""
    for _ in range(3):
        try:
            return _main_job(home, report)
        except _AstRace as race:
            RACES.append(race.seconds)
    raise SystemExit("main job: three runs in a row ended in the AST race")


class _AstRace(Exception):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


def _main_job(home: str | None, report: Path | None) -> float:
    with tempfile.TemporaryDirectory(prefix="promptopt-main-job-") as tmp:
        shutil.copytree(ROOT / "example_suites", Path(tmp) / "example_suites")
        args = [sys.executable, "-m", "pytest", "--promptopt", "-q", "-p", "no:cacheprovider", "example_suites"]
        if report is not None:
            args += ["--promptopt-report", str(report)]
        started = time.perf_counter()
        proc = subprocess.run(
            args, cwd=tmp, env=env(**({"PROMPTOPT_HOME": home} if home else {})), capture_output=True, text=True
        )
        seconds = time.perf_counter() - started
    if proc.returncode != 0 and AST_RACE in proc.stdout + proc.stderr:
        raise _AstRace(seconds)
    if proc.returncode != 0:
        raise SystemExit(f"main job failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return seconds


def suite_cases(report: Path) -> list[tuple[str, dict[str, Any]]]:
    data = json.loads(report.read_text())
    return [
        (r["prompt"], dict(r["model_params"]) or {"max_tokens": PYTHON_STYLE_MAX_TOKENS})
        for s in data["suites"]
        for r in s["results"]
    ]


def run_runtime(runtime: str, modes: list[Any], threads: str | None) -> dict[str, Any]:
    extra = {"PROMPTOPT_LOCAL_THREADS": threads} if threads else {}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", WORKER],
        input=json.dumps({"runtime": runtime, "modes": modes}),
        env=env(**extra),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{runtime} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--first-runs", type=int, default=3)
    parser.add_argument("--runtimes", default="ctranslate2,transformers")
    parser.add_argument("--threads", default=None, help="PROMPTOPT_LOCAL_THREADS for step 2 (default: all cores)")
    parser.add_argument("--report", type=Path, default=None, help="a main job's JSON report (prompts of step 2)")
    parser.add_argument("--skip-main-job", action="store_true")
    parser.add_argument("--skip-runtimes", action="store_true")
    parser.add_argument("--modes", default="suites b8,suites single,decode b8,decode single", help="which of step 2")
    args = parser.parse_args()
    print(f"command: python bench/local_runtime.py {' '.join(sys.argv[1:])}")
    print(f"cores: {os.cpu_count()}, load average before: {loadavg()}")
    workdir = Path(tempfile.mkdtemp(prefix="promptopt-bench-"))
    report = args.report or workdir / "report.json"

    if not args.skip_main_job:
        warm = [main_job(None, report if i == 0 else None) for i in range(args.repeat)]
        print(f"main job, weights prepared: {' '.join(f'{s:.1f}' for s in warm)} s; median {median(warm):.1f} s")
        first = []
        for _ in range(args.first_runs):
            home = tempfile.mkdtemp(prefix="promptopt-home-")
            try:
                first.append(main_job(home))
            finally:
                shutil.rmtree(home, ignore_errors=True)
        if first:
            print(
                f"main job, first run (fresh PROMPTOPT_HOME): {' '.join(f'{s:.1f}' for s in first)} s; "
                f"median {median(first):.1f} s"
            )
        print(f"load average: {loadavg()}; runs ended by the AST race (and run again): {len(RACES)}")
    if args.skip_runtimes:
        return
    if not report.is_file():
        main_job(None, report)
    cases = suite_cases(report)
    long_cases = [(p, {"max_tokens": 128}) for p in LONG]
    modes = [
        ["suites b8", cases, 8],
        ["suites single", cases[::4][:12], 1],
        ["decode b8", long_cases, 8],
        ["decode single", long_cases[:2], 1],
    ]
    modes = [m for m in modes if m[0] in args.modes.split(",")]
    runtimes = args.runtimes.split(",")
    results: dict[str, list[dict[str, Any]]] = {r: [] for r in runtimes}
    for round_ in range(args.repeat):
        for runtime in runtimes if round_ % 2 == 0 else reversed(runtimes):
            results[runtime].append(run_runtime(runtime, modes, args.threads))
        print(f"round {round_ + 1}/{args.repeat} done, load average {loadavg()}", flush=True)

    reference = "transformers" if "transformers" in runtimes else runtimes[0]
    names = [m[0] for m in modes]
    print(
        f"\nmedians of {args.repeat} rounds, threads {args.threads or 'all cores'}; "
        f"completion tokens/s (ratio vs {reference} float32; tokens per CPU-second)"
    )
    header = ["runtime", "load s", "peak RSS MB", *names]
    print(" | ".join(header))
    ref = {n: median([r["modes"][n]["tok_s"] for r in results[reference]]) for n in names}
    for runtime in runtimes:
        rows = results[runtime]
        cells = [
            runtime,
            f"{median([r['load_s'] for r in rows]):.1f}",
            f"{median([r['peak_rss_mb'] for r in rows]):.0f}",
        ]
        for n in names:
            rate = median([r["modes"][n]["tok_s"] for r in rows])
            per_cpu = median([r["modes"][n]["tok_cpu_s"] for r in rows])
            cells.append(f"{rate:.1f} (x{rate / ref[n]:.2f}; {per_cpu:.1f}/CPU-s)")
        print(" | ".join(cells))
    for runtime in runtimes:
        same = all(r["texts"] == results[reference][0]["texts"] for r in results[runtime])
        print(f"{runtime}: greedy texts equal {reference}'s in every round and mode: {same}")
    print(f"load average after: {loadavg()}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
