"""Benchmark grading a batching model's cases with a slow judge: one at a time or together.

    python bench/judged_batches.py [--cases N] [--judge-ms MS] [--batch B] [--repeat R]

Runs `pytest --promptopt` on a suite of N cases answered by a batching model (instant, like the
bundled model with every answer cached) and graded by an `llm-rubric` whose judge takes MS
milliseconds per call (a hosted judge's latency, simulated with a sleep). With
`--promptopt-concurrency 1` the cases of a batch are graded one after another in the batch
thread; with 8 (the default), on the call threads together. Prints the median wall time of
each and their ratio; the ideal is min(8, B) for the grading part.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFTEST = """
import time
from pytest_promptopt import Response

class Batcher:
    name = "bench/batch"
    cache_identity = {"model": "bench/batch"}

    def generate(self, request):
        return self.generate_batch([request])[0]

    def generate_batch(self, requests):
        return [Response(text=r.prompt, model=self.name) for r in requests]

class SlowJudge:
    name = "bench/judge"
    cache_identity = {"model": "bench/judge"}

    def generate(self, request):
        time.sleep(%f)
        return Response(text='{"reason": "fine", "pass": true, "score": 1.0}', model=self.name)

def pytest_promptopt_make_model(spec):
    return {"bench/batch": Batcher(), "bench/judge": SlowJudge()}.get(spec.id)
"""


def run(folder: Path, concurrency: int, batch: int) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--promptopt",
            "--promptopt-no-mlflow",
            "--promptopt-cache",
            "off",
            "-q",
            "-p",
            "no:cacheprovider",
            "--promptopt-judge-model",
            "bench/judge",
            "--promptopt-batch-size",
            str(batch),
            "--promptopt-concurrency",
            str(concurrency),
        ],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-2000:])
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--judge-ms", type=float, default=200.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "conftest.py").write_text(CONFTEST % (args.judge_ms / 1000))
        tests = "\n".join(
            f"  - vars: {{n: '{i}'}}\n    assert: [{{type: llm-rubric, value: a number}}]" for i in range(args.cases)
        )
        (folder / "judged.promptopt.yaml").write_text(
            f"providers: [bench/batch]\nprompts: ['case {{{{n}}}}']\ntests:\n{tests}\n"
        )
        times: dict[int, list[float]] = {1: [], 8: []}
        for _ in range(args.repeat):  # interleaved, so a load change hits both
            for concurrency in times:
                times[concurrency].append(run(folder, concurrency, args.batch))
    serial, together = statistics.median(times[1]), statistics.median(times[8])
    judging = args.cases * args.judge_ms / 1000
    print(
        f"{args.cases} cases, batch {args.batch}, judge {args.judge_ms:.0f} ms a call ({judging:.1f} s of judging in all); "
        f"median of {args.repeat} pytest runs"
    )
    print(f"one at a time (--promptopt-concurrency 1): {serial:6.2f} s  {[round(t, 2) for t in times[1]]}")
    print(f"together      (--promptopt-concurrency 8): {together:6.2f} s  {[round(t, 2) for t in times[8]]}")
    print(f"speed-up: {serial / together:.1f}x")


if __name__ == "__main__":
    main()
