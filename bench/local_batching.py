"""Benchmark batched generation through the plugin: a suite on the bundled model, run by pytest
with --promptopt-batch-size 1 (one case per forward pass) and 8.

    python bench/local_batching.py [--cases N] [--max-tokens T] [--repeat R]

Each run is a fresh `pytest --promptopt --promptopt-cache off` process (so the model load, ~2.5 s
from its safetensors copy, is inside every figure, as a user sees it). Prints the median wall
time and cases per second of each batch size, their ratio, and whether both gave the same
outputs and verdicts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_model import COUNTRIES  # noqa: E402


def write_suite(folder: Path, cases: int, max_tokens: int) -> None:
    tests = "\n".join(
        f"  - vars: {{country: {COUNTRIES[i % len(COUNTRIES)]}}}\n    assert: [{{type: word-count, value: {{max: 40}}}}]"
        for i in range(cases)
    )
    (folder / "capitals.promptopt.yaml").write_text(
        f"providers: [{{id: smollm2, config: {{max_tokens: {max_tokens}}}}}]\n"
        f"prompts: ['What is the capital of {{{{country}}}}? Answer with one word.']\n"
        f"tests:\n{tests}\n"
    )


def run(folder: Path, batch: int, tag: str) -> tuple[float, list[tuple[str, str, bool]]]:
    report = folder / f"{tag}.json"
    started = time.perf_counter()
    subprocess.run(
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
            "--promptopt-progress",
            "off",
            "--promptopt-batch-size",
            str(batch),
            "--promptopt-report",
            str(report),
        ],
        cwd=folder,
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - started
    results = json.loads(report.read_text())["suites"][0]["results"]
    return elapsed, sorted((r["case_id"], r["output"], r["passed"]) for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_suite(folder, args.cases, args.max_tokens)
        times: dict[int, list[float]] = {1: [], 8: []}
        outputs: dict[int, list[tuple[str, str, bool]]] = {}
        for n in range(args.repeat):
            for batch in (1, 8):  # interleaved, so load from other jobs hits both alike
                elapsed, outputs[batch] = run(folder, batch, f"b{batch}-{n}")
                times[batch].append(elapsed)
    print(f"{args.cases} cases, max_tokens {args.max_tokens}, {args.repeat} runs each (wall time incl. model load)")
    for batch, values in times.items():
        median = statistics.median(values)
        print(
            f"batch size {batch}: median {median:.1f} s ({args.cases / median:.2f} cases/s); runs {[round(v, 1) for v in values]}"
        )
    ratio = statistics.median(times[1]) / statistics.median(times[8])
    print(f"batched / unbatched cases per second: {ratio:.2f}x")
    print(f"same outputs and verdicts: {outputs[1] == outputs[8]}")


if __name__ == "__main__":
    main()
