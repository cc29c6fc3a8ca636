"""Benchmark the Spark backend: a dataset suite of 10,000 and 100,000 rows through `evaluate_frame`.

    python bench/spark.py [--master local[2]] [--sizes 10000 100000] [--warmup 1000]

Each size is a Parquet file of one var per row (`text`), the prompt `Echo: {{text}}`, a `contains`
assertion and the `echo` model, evaluated on a local Spark session and written as Parquet. Prints
the wall time of each size, the ratio of the last to the first, the controller process's peak RSS
(`ru_maxrss`: the Python driver only, not the JVM it starts) and the peaks of the driver JVM and of
the Spark Python workers, sampled every 0.1 s with psutil. A warm-up run first starts the JVM's
Python workers, so the sizes compare steady-state throughput.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_promptopt.cache import CacheMode  # noqa: E402
from pytest_promptopt.models.specs import ModelSpec  # noqa: E402
from pytest_promptopt.runners.execution import ExecutionSettings  # noqa: E402
from pytest_promptopt.runners.spark import evaluate_frame, read_source, spark_session  # noqa: E402
from pytest_promptopt.runners.spark_session import SparkSettings  # noqa: E402
from pytest_promptopt.suite.loader import load_suite  # noqa: E402

SUITE = """\
prompts: ["Echo: {{text}}"]
providers: [echo]
dataset:
  path: rows-%d.parquet
  assert: [{type: contains, value: "row"}]
"""


class PeakMemory:
    """Peak RSS of this process's JVM child and of the Spark Python workers (its children)."""

    def __init__(self, interval_s: float = 0.1) -> None:
        try:
            import psutil
        except ImportError:  # the peaks stay 0 and say so
            psutil = None
        self._psutil = psutil
        self.interval_s = interval_s
        self.jvm = 0
        self.workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        if self._psutil is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        me = self._psutil.Process()
        while not self._stop.wait(self.interval_s):
            jvm, workers = 0, 0
            for child in me.children(recursive=True):
                try:
                    if child.name() == "java":
                        jvm += child.memory_info().rss
                    elif "python" in child.name():
                        workers += child.memory_info().rss
                except self._psutil.Error:  # a worker that just exited
                    continue
            self.jvm, self.workers = max(self.jvm, jvm), max(self.workers, workers)


def write_rows(folder: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [f"row {i}" for i in range(rows)]}), folder / f"rows-{rows}.parquet")


def run(spark: object, folder: Path, rows: int) -> float:
    suite = folder / f"bench-{rows}.promptopt.yaml"
    suite.write_text(SUITE % rows)
    loaded = load_suite(suite, suite.name, ModelSpec("echo"))
    assert loaded.dataset is not None
    started = time.perf_counter()
    frame = read_source(spark, loaded.dataset.source)
    written = evaluate_frame(
        spark,
        frame,
        loaded.dataset.slices[0].make_case,
        ExecutionSettings(folder / "cache.sqlite", CacheMode.READWRITE),
        nodeid_prefix=f"{suite.name}::dataset::",
        output_path=folder / f"out-{rows}",
    )
    elapsed = time.perf_counter() - started
    assert written == rows, (written, rows)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--warmup", type=int, default=1000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="promptopt-spark-bench-") as tmp, PeakMemory() as peak:
        folder = Path(tmp)
        for rows in [args.warmup, *args.sizes]:
            write_rows(folder, rows)
        started = time.perf_counter()
        spark = spark_session(SparkSettings(master=args.master))
        print(f"session start: {time.perf_counter() - started:.1f} s ({args.master})")
        print(f"warm-up {args.warmup:>7,} rows: {run(spark, folder, args.warmup):6.1f} s")
        times = {}
        for rows in args.sizes:
            times[rows] = run(spark, folder, rows)
            print(f"evaluate_frame {rows:>7,} rows: {times[rows]:6.1f} s  ({rows / times[rows]:,.0f} rows/s)")
        spark.stop()  # type: ignore[attr-defined]
    first, last = args.sizes[0], args.sizes[-1]
    print(f"time ratio {last:,} / {first:,}: {times[last] / times[first]:.2f} (target <= {12 * last / first / 10:g})")
    driver_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"controller (Python driver) peak RSS: {driver_mib:.0f} MiB (excludes the JVM)")
    if peak._psutil is None:
        print("driver JVM and Python worker peaks: not measured (pip install psutil)")
    else:
        print(
            f"driver JVM peak RSS: {peak.jvm / 2**20:.0f} MiB; Spark Python workers peak RSS (all): {peak.workers / 2**20:.0f} MiB"
        )


if __name__ == "__main__":
    main()
