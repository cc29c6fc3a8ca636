"""What a warm rerun of a hosted suite costs: every answer already in the response cache.

    python bench/warm_rerun.py [--cases 200] [--repeat 5] [-n 2] [--source DIR]

Starts `tests/fake_openai.py` on loopback (no delay), writes a suite of N cases on
`openai/bench-model` (bench/concurrency.py's suite) and, in a fresh folder, runs

    OPENAI_API_KEY=sk-bench pytest --promptopt --promptopt-no-mlflow -q -p no:cacheprovider

once to record every answer, then R times again: the reruns make no model call. Each run's wall
time and CPU (pytest and its xdist workers) is printed, and whether any of its processes imported
litellm (a conftest writes `'litellm' in sys.modules` in each when it ends); the medians of the reruns are
compared with the recording run of the same folder. `--source DIR` runs the plugin of another
checkout (put first on PYTHONPATH), for a before/after comparison.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from concurrency import PYTHON, Server, bench_env, write_suite  # noqa: E402  (a sibling script)
from harness_overhead import first_on_pythonpath  # noqa: E402

CONFTEST = """
import os, sys

def pytest_unconfigure(config):
    with open(f"litellm-imported-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.txt", "w") as out:
        out.write(str("litellm" in sys.modules))
"""


def run(folder: Path, cases: int, workers: int, source: str | None) -> tuple[float, float, bool]:
    command = [PYTHON, "-m", "pytest", "--promptopt", "--promptopt-no-mlflow", "-q", "-p", "no:cacheprovider"]
    if workers > 1:
        command += ["-n", str(workers)]
    env = first_on_pythonpath(bench_env(), source)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    if proc.returncode != 0 or not re.fullmatch(rf"=*\s*{cases} passed in [\d.]+s.*", last[0]):
        raise RuntimeError(
            f"exit {proc.returncode}, expected {cases} passed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    said = [path.read_text() for path in folder.glob("litellm-imported-*.txt")]
    for path in folder.glob("litellm-imported-*.txt"):
        path.unlink()
    return wall, cpu, "True" in said  # by any process: the controller or an xdist worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("-n", dest="workers", type=int, default=1, help="pytest-xdist workers (default: none)")
    parser.add_argument("--source", help="the checkout whose plugin runs")
    args = parser.parse_args()
    server = Server.start(0.0)
    try:
        with tempfile.TemporaryDirectory(prefix="promptopt-bench-rerun-") as tmp:
            folder = Path(tmp)
            write_suite(folder, args.cases, server.url)
            (folder / "conftest.py").write_text(CONFTEST)
            first = run(folder, args.cases, args.workers, args.source)
            print(f"  recording run  {first[0]:6.2f} s, CPU {first[1]:6.2f} s, litellm imported: {first[2]}")
            reruns = []
            for i in range(args.repeat):
                reruns.append(run(folder, args.cases, args.workers, args.source))
                wall, cpu, imported = reruns[-1]
                print(
                    f"  rerun {i + 1}/{args.repeat}      {wall:6.2f} s, CPU {cpu:6.2f} s, litellm imported: {imported}"
                )
    finally:
        server.stop()
    wall = statistics.median(r[0] for r in reruns)
    cpu = statistics.median(r[1] for r in reruns)
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(
        f"{args.cases} cases, {'-n ' + str(args.workers) if args.workers > 1 else 'one process'}, medians of {args.repeat} reruns"
    )
    print("| run | wall (s) | CPU (s) | litellm imported |\n| --- | ---: | ---: | --- |")
    print(f"| recording | {first[0]:.2f} | {first[1]:.2f} | {first[2]} |")
    imported = sorted({r[2] for r in reruns})
    print(f"| warm rerun | {wall:.2f} ({wall / first[0]:.2f}x) | {cpu:.2f} ({cpu / first[1]:.2f}x) | {imported} |")


if __name__ == "__main__":
    main()
