"""The project's test suite as the README runs it, against issue 17's target of 8 minutes on 2 cores.

    python bench/test_suite.py [--ref main] [--ref OTHER ...] [--repeat 1] [-n 2] [--by-process]

Each ref is checked out into a temporary git worktree (a clean tree: no bytecode, no cache) and
its tests run with the README's test command (`python -m pytest tests -n 2`, plus `-q -p
no:cacheprovider`), with the worktree first on PYTHONPATH so that its own package is tested, in
the environment the other benchmarks give their tools (`harness_overhead.user_environment`).
Several refs alternate within each repeat, so load from other jobs hits them alike. Prints, per
run, the outcome line, the wall time, the CPU the whole machine spent meanwhile (from /proc/stat:
the suite's processes include servers, JVMs and browsers that no rusage counts) and the load
average; then each ref's median wall time and its ratio to the 480 s target.

The suite is CPU-bound (both cores ~97% busy), so compare runs by the machine's CPU as well as by
wall time: on a shared machine the same work can take a third longer (docs/performance.md).

`--by-process` also samples /proc every 0.3 s during each run and prints where the CPU went, by
kind of process (the suite's xdist workers, the tests' pytest runs and their workers, Spark's JVMs,
MLflow's writers and servers, Chromium...): each process's CPU when last seen, so processes living
less than 0.3 s are missed and the total is a little below the machine's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness_overhead import user_environment  # noqa: E402

TARGET_S = 480.0  # issue 17: at most 8 minutes on 2 cores


def machine_cpu_s() -> float:
    """Seconds of CPU the machine has spent (all cores, all processes) since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class ProcessSampler(threading.Thread):
    """Every process on the machine, sampled from /proc until `stop()`: its command line and its
    CPU (user + system) when last seen, keyed by pid and start time (a pid can be reused)."""

    def __init__(self, interval_s: float = 0.3) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.seen: dict[tuple[str, str], tuple[str, float]] = {}
        self.baseline: dict[tuple[str, str], float] = {}
        self.by_kind: dict[str, tuple[int, float]] = {}  # (processes, CPU seconds), once stopped
        self._stop_event = threading.Event()
        self._ticks = os.sysconf("SC_CLK_TCK")

    def start(self) -> None:
        self._scan()
        self.baseline = {key: cpu for key, (_, cpu) in self.seen.items()}  # what ran before: only its share counts
        super().start()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self._scan()

    def _scan(self) -> None:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                self._sample(entry.name)

    def _sample(self, pid: str) -> None:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rfind(")") + 2 :].split()  # after the command name, which may hold spaces
            cpu = (int(fields[11]) + int(fields[12])) / self._ticks
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):  # it ended meanwhile
            return
        key = (pid, fields[19])
        if not command and key in self.seen:  # an ended process not yet reaped has no command line left
            command = self.seen[key][0]
        self.seen[key] = (command, cpu)  # the latest command line: exec (spark-class -> java) changes it

    def stop(self) -> None:
        """Stop sampling and sum what was seen by kind of process (`by_kind`)."""
        self._stop_event.set()
        self.join()
        kinds: dict[str, tuple[int, float]] = defaultdict(lambda: (0, 0.0))
        for key, (command, cpu) in self.seen.items():
            cpu -= self.baseline.get(key, 0.0)
            if cpu > 0:
                kind = process_kind(command)
                count, total = kinds[kind]
                kinds[kind] = (count + 1, total + cpu)
        self.by_kind = dict(kinds)


def process_kind(command: str) -> str:
    if "bench/test_suite.py" in command:
        return "this benchmark (the sampler itself)"
    if "-u -c" in command and "python" in command.split(" ", 1)[0]:
        return "xdist workers (the suite's two and those of the tests' -n 2 runs)"
    if "java" in command or "spark-class" in command or "spark-submit" in command:
        return "Spark JVMs"
    if "pyspark.daemon" in command:
        return "Spark's Python workers"
    if "chrom" in command:
        return "Chromium"
    if "writer.main" in command:
        return "MLflow writers"
    if " -m pytest" in command:
        return "pytest processes (the suite's own, the tests' runs)"
    if "mlflow" in command and ("server" in command or "uvicorn" in command or "gunicorn" in command):
        return "MLflow servers"
    if "python" in command.split(" ", 1)[0]:
        return "other Python processes (model preparations, fake servers, scripts)"
    return "other processes"


def run(
    ref: str, workers: int, python: str, sampler: ProcessSampler | None = None
) -> tuple[str, float, float, float, float]:
    folder = Path(tempfile.mkdtemp(prefix="promptopt-bench-suite-"))
    tree = folder / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref], check=True, capture_output=True
    )
    try:
        env = user_environment(tree)
        command = [python, "-m", "pytest", "tests", "-n", str(workers), "-q", "-p", "no:cacheprovider"]
        load = os.getloadavg()[0]
        cpu = machine_cpu_s()
        started = time.perf_counter()
        if sampler is not None:
            sampler.start()
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if sampler is not None:
            sampler.stop()  # the suite's run only, not the worktree's removal
        cpu = machine_cpu_s() - cpu
        lines = done.stdout.strip().splitlines()
        outcome = lines[-1].strip("= ") if lines else f"exit {done.returncode}"
        if done.returncode != 0:
            log = folder / "output.log"
            log.write_text(done.stdout + done.stderr)
            outcome += f" (exit {done.returncode}; output kept in {log})"
        return outcome, wall, cpu, load, os.getloadavg()[0]
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
        if not any(folder.glob("*.log")):
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", action="append", help="a commit or branch to test (repeatable; default HEAD)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("-n", dest="workers", type=int, default=2, help="xdist workers (the README: 2)")
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument(
        "--by-process", action="store_true", help="sample /proc during each run and print its CPU by kind of process"
    )
    args = parser.parse_args()
    refs = args.ref or ["HEAD"]
    print(
        f"cores: {os.cpu_count()}; target: {TARGET_S:.0f} s; command: python bench/test_suite.py {' '.join(sys.argv[1:])}"
    )
    walls: dict[str, list[float]] = {ref: [] for ref in refs}
    for n in range(args.repeat):
        for ref in refs:  # alternating within a repeat
            sampler = ProcessSampler() if args.by_process else None
            outcome, wall, cpu, load_before, load_after = run(ref, args.workers, args.python, sampler)
            walls[ref].append(wall)
            print(
                f"run {n + 1} {ref}: {outcome}; wall {wall:.0f} s ({int(wall // 60)}:{int(wall % 60):02d}); machine CPU {cpu:.0f} s "
                f"({cpu / (wall * (os.cpu_count() or 1)):.0%} of the cores); load average {load_before:.1f} -> {load_after:.1f}",
                flush=True,
            )
            if sampler is not None:
                kinds = sampler.by_kind
                seen = sum(total for _, total in kinds.values())
                print(f"| processes of run {n + 1} {ref} | count | CPU | share |\n| --- | ---: | ---: | ---: |")
                for kind, (count, total) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
                    print(f"| {kind} | {count} | {total:.0f} s | {total / seen:.0%} |")
                print(f"| all processes seen | {sum(c for c, _ in kinds.values())} | {seen:.0f} s | |", flush=True)
    for ref, values in walls.items():
        median = statistics.median(values)
        print(f"{ref}: median {median:.0f} s, x{median / TARGET_S:.2f} the target ({TARGET_S:.0f} s)")
    if len(refs) > 1:
        first = statistics.median(walls[refs[0]])
        for ref in refs[1:]:
            print(f"{ref} against {refs[0]}: x{statistics.median(walls[ref]) / first:.2f}")


if __name__ == "__main__":
    main()
