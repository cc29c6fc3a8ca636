"""Benchmark batched generation through the plugin: a suite on the bundled model, run by pytest
at several --promptopt-batch-size values (1: one case per forward pass).

    python bench/local_batching.py [--cases N] [--max-tokens T] [--batch-sizes 1,8,16] [--repeat R]

The defaults are issue 17's setup for its target of 150 completion tokens/s batched on 2 cores:
32 cases, `max_tokens` 48, cache off. Each run is a fresh `pytest --promptopt --promptopt-cache
off` process in the same folder; a generated conftest.py stamps the test loop (after start-up,
collection and the model's load), and the completion tokens come from the run's JSON report.
Prints, per batch size, medians of the completion tokens per second over the test loop and over
the whole run, the ratio against the first batch size of the list (measured in the same run,
runs interleaved so load from other jobs hits every size alike), and whether every size gave the
same outputs and verdicts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from concurrency import CONFTEST  # noqa: E402  # stamps the test loop (bench-timing.json)
from harness_overhead import user_environment  # noqa: E402
from local_model import COUNTRIES  # noqa: E402

TARGET_TOKENS_PER_S = 150.0


def write_suite(folder: Path, cases: int, max_tokens: int) -> None:
    # Open questions, so answers run to max_tokens: the figure is about decoding, not prompts.
    tests = "\n".join(
        f"  - vars: {{country: {COUNTRIES[i % len(COUNTRIES)]}}}\n    assert: [{{type: word-count, value: {{max: 200}}}}]"
        for i in range(cases)
    )
    (folder / "countries.promptopt.yaml").write_text(
        f"providers: [{{id: smollm2, config: {{max_tokens: {max_tokens}}}}}]\n"
        f"prompts: ['Describe {{{{country}}}} to a visitor: its capital, food and landscapes.']\n"
        f"tests:\n{tests}\n"
    )
    (folder / "conftest.py").write_text(CONFTEST)


def run(folder: Path, batch: int, tag: str) -> tuple[float, float, int, list[tuple[str, str, bool]]]:
    report = folder / f"{tag}.json"
    env = user_environment()
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
        env=env,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    timing = json.loads((folder / "bench-timing.json").read_text())
    loop = timing["loop_end"] - timing["loop_start"]
    suite = json.loads(report.read_text())["suites"][0]
    tokens = sum(r.get("completion_tokens") or 0 for r in suite["results"])
    return wall, loop, tokens, sorted((r["case_id"], r["output"], r["passed"]) for r in suite["results"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch-sizes", default="1,8,16", help="comma-separated; ratios are against the first")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    load_before = os.getloadavg()[0]
    walls: dict[int, list[float]] = {b: [] for b in sizes}
    loops: dict[int, list[float]] = {b: [] for b in sizes}
    tokens: dict[int, list[int]] = {b: [] for b in sizes}
    outputs: dict[int, list[tuple[str, str, bool]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_suite(folder, args.cases, args.max_tokens)
        for n in range(args.repeat):
            for batch in sizes:  # interleaved, so load from other jobs hits every size alike
                wall, loop, count, outputs[batch] = run(folder, batch, f"b{batch}-{n}")
                walls[batch].append(wall)
                loops[batch].append(loop)
                tokens[batch].append(count)
    print(
        f"{args.cases} cases, max_tokens {args.max_tokens}, {args.repeat} runs each; "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    reference = None
    for batch in sizes:
        rate = statistics.median(t / s for t, s in zip(tokens[batch], loops[batch]))
        whole = statistics.median(t / s for t, s in zip(tokens[batch], walls[batch]))
        reference = reference or rate
        print(
            f"batch size {batch:>3}: {rate:6.1f} completion tokens/s over the test loop (x{rate / reference:.2f}, "
            f"{rate / TARGET_TOKENS_PER_S:.0%} of the target {TARGET_TOKENS_PER_S:.0f}), {whole:6.1f} over the whole run; "
            f"tokens {statistics.median(tokens[batch]):.0f}; loops {[round(v, 1) for v in loops[batch]]} s; "
            f"runs {[round(v, 1) for v in walls[batch]]} s"
        )
    first = outputs[sizes[0]]
    print(f"same outputs and verdicts at every batch size: {all(outputs[b] == first for b in sizes)}")


if __name__ == "__main__":
    main()
