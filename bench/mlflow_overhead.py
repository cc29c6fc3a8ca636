"""What MLflow reporting (on by default) costs a session: 1,000 echo cases with MLflow off, on with
a warm store, on with a fresh store, and on with a fresh store on a machine that has never built
the store template.

    python bench/mlflow_overhead.py [--cases 1000] [--repeat 3] [-n 2] [--source DIR]

Every run is a fresh `pytest` process in a temporary folder holding the suite of
bench/harness_overhead.py (`Echo: {{text}}` on the echo model, one `contains` per case), with
`--promptopt-cache off -q -p no:cacheprovider`:

- `off`: `--promptopt-no-mlflow`;
- `warm`: MLflow on, logging to the folder's `mlflow.db`, which an untimed run created before;
- `fresh`: MLflow on, no `mlflow.db` yet (the store template already built in `PROMPTOPT_HOME`);
- `first`: as `fresh`, with an empty `PROMPTOPT_HOME` (the very first session on a machine).

The four run in turn within each repetition, so load from other jobs spreads over all of them.
The script prints the median wall time of each, the ratio warm / off (target: at most 1.3) and
the differences fresh - off and first - off (target: fresh at most 2 s more), all from this run,
and the median CPU time (user + system of pytest and its children, the MLflow writer included).
It checks that every on-run logged its session run and left no pending file. `--source DIR`
runs the plugin from another checkout (e.g. an older commit, to compare).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness_overhead import environment, first_on_pythonpath, promptopt  # noqa: E402

KINDS = ("off", "warm", "fresh", "first")


def run_once(kind: str, cases: int, workers: list[str], source: Path, home: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one session; raises RuntimeError if it did not pass every case or,
    with MLflow on, did not log its run."""
    with tempfile.TemporaryDirectory(prefix=f"promptopt-bench-mlflow-{kind}-") as tmp:
        folder = Path(tmp)
        command, check = promptopt(folder, cases, mlflow=kind != "off")
        command += workers
        env = first_on_pythonpath(environment(folder), source)
        env["PROMPTOPT_HOME"] = str(home)
        if kind == "first":
            env["PROMPTOPT_HOME"] = str(folder / "home")
        if kind == "warm":  # an untimed session creates the store first
            subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900, check=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = proc.stdout + proc.stderr
        problem = check(proc.stdout, folder)
        if kind != "off":
            logged = [line for line in out.splitlines() if line.startswith("MLflow: sqlite:")]
            pending = list((folder / ".promptopt" / "pending").glob("*.json"))
            if not logged or pending:
                problem = f"MLflow did not log the run (pending files: {len(pending)})"
        if proc.returncode != 0 or problem:
            tail = "\n    ".join(out.strip().splitlines()[-12:])
            raise RuntimeError(f"{kind}: exit {proc.returncode}, {problem}\n    {tail}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("-n", dest="workers", default=None, help="pytest-xdist workers (default: none)")
    parser.add_argument("--source", type=Path, default=BENCH.parent, help="the checkout whose plugin runs")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, from {', '.join(KINDS)}")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    workers = ["-n", args.workers] if args.workers else []
    source = args.source.resolve()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; plugin from {source}; {args.cases} cases"
        + (f", -n {args.workers}" if args.workers else "")
    )
    home = Path(tempfile.mkdtemp(prefix="promptopt-bench-home-"))
    try:
        if "fresh" in kinds:  # the template, built once, as on any machine after its first session
            run_once("fresh", 10, workers, source, home)
        wall: dict[str, list[float]] = {k: [] for k in kinds}
        cpu: dict[str, list[float]] = {k: [] for k in kinds}
        for rep in range(args.repeat):
            for kind in kinds:
                elapsed, used = run_once(kind, args.cases, workers, source, home)
                wall[kind].append(elapsed)
                cpu[kind].append(used)
                print(f"  run {rep + 1}/{args.repeat} {kind:<6} {elapsed:6.2f} s, CPU {used:6.2f} s", flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    med = {k: statistics.median(v) for k, v in wall.items()}
    print(f"\nmedians of {args.repeat} runs\n| session | wall (s) | CPU (s) | against off |")
    print("| --- | ---: | ---: | --- |")
    for kind in kinds:
        against = ""
        if kind != "off" and "off" in med:
            against = f"{med[kind] / med['off']:.2f}x, +{med[kind] - med['off']:.2f} s"
        print(f"| {kind} | {med[kind]:.2f} | {statistics.median(cpu[kind]):.2f} | {against} |")
    if "off" in med and "warm" in med:
        ratio = med["warm"] / med["off"]
        print(f"\ntarget warm <= 1.3x off: {ratio:.2f}x -> {'met' if ratio <= 1.3 else 'MISSED'}")
    if "off" in med and "fresh" in med:
        extra = med["fresh"] - med["off"]
        print(f"target fresh <= off + 2 s: +{extra:.2f} s -> {'met' if extra <= 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
