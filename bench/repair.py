"""Benchmark `--promptopt-repair` on the antonyms example suite with each demonstration optimiser.

    python bench/repair.py [--optimizers labeled,bootstrap,random-search] [--seeds 0] [--budget 300]
                           [--suite example_suites/repair/antonyms.promptopt.yaml]

Each (optimiser, seed) is one fresh `pytest --promptopt --promptopt-repair` process, as a user
runs it, in a fresh temporary folder, so its response cache starts empty and every call count is
a cold one. The run itself answers the 30 cases zero-shot first (its own 30 calls, not the
repair's); the repair then scores the original prompt from those cached answers (cache hits),
runs the optimiser and scores the proposal on every case. Figures come from the JSON report's
`repairs[]` entry:

- held-out / in-sample: pass rate of the original prompt -> the proposal, on the cases kept from
  the optimiser (they judge the proposal) and on the cases it learnt from;
- calls: the repair's model calls (cache misses, counted against --promptopt-repair-budget) and
  its cache hits; projected: the worst case the repair announced before it started;
- repair time: the repair alone (model already loaded, zero-shot run done); process time: the
  whole pytest process, model load and zero-shot run included.

The targets (issue 6): +25 points on held-out cases within 300 task-model calls, and under
10 minutes of repair for a 30-case suite on 2 cores. The script prints them as met or not; it
asserts nothing, since the machine is shared and times are noisy.
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
SUITE = ROOT / "example_suites" / "repair" / "antonyms.promptopt.yaml"
OPTIMIZERS = ("labeled", "bootstrap", "random-search")
TARGET_POINTS = 25.0
TARGET_CALLS = 300
TARGET_SECONDS = 600.0


def run_repair(suite: Path, optimizer: str, seed: int, budget: int | None) -> dict[str, Any]:
    """One cold `pytest --promptopt --promptopt-repair` process; its repair entry plus timings."""
    with tempfile.TemporaryDirectory(prefix="promptopt-repair-") as tmp:
        folder = Path(tmp)
        (folder / "repair").mkdir()
        shutil.copy(suite, folder / "repair" / suite.name)
        report = folder / "report.json"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "--promptopt",
            "--promptopt-no-mlflow",
            "-q",
            "-p",
            "no:cacheprovider",
            "--promptopt-progress",
            "off",
            "--rootdir",
            str(folder),
            "--promptopt-report",
            str(report),
            "--promptopt-repair",
            "--promptopt-repair-optimizer",
            optimizer,
            "--promptopt-repair-seed",
            str(seed),
        ]
        if budget is not None:
            command += ["--promptopt-repair-budget", str(budget)]
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        proc = subprocess.run(command + [f"repair/{suite.name}"], cwd=folder, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if not report.exists():
            raise SystemExit(
                f"{optimizer} seed {seed}: no report (exit {proc.returncode})\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        data = json.loads(report.read_text())
        if not data.get("repairs"):
            raise SystemExit(
                f"{optimizer} seed {seed}: the report has no repairs entry (exit {proc.returncode})\n{proc.stdout[-3000:]}"
            )
        suite_summary = data["suites"][0]
        repair = data["repairs"][0]
        return {
            "optimizer": optimizer,
            "seed": seed,
            "exit": proc.returncode,
            "process_s": elapsed,
            "load": (load_before, os.getloadavg()[0]),
            "run_calls": suite_summary.get("calls"),
            "run_pass_rate": suite_summary.get("pass_rate"),
            "repair": repair,
            "proposal": (folder / repair["file"]).read_text() if repair.get("file") else None,
        }


def _rate(score: dict[str, Any] | None) -> str:
    if not score or score.get("pass_rate") is None:
        return "n/a"
    return f"{score['pass_rate']:.0%} ({score['passed']}/{score['cases']})"


def _metrics(score: dict[str, Any] | None) -> str:
    if not score or not score.get("metrics"):
        return "n/a"
    return ", ".join(f"{name} {value:.2f}" for name, value in sorted(score["metrics"].items()) if value is not None)


def _overall(*parts: dict[str, Any] | None) -> str:
    """The pass rate over every case (what the suite's pass_rate gate would see with the proposal)."""
    if any(not part for part in parts):
        return "n/a"
    passed, cases = sum(p["passed"] for p in parts), sum(p["cases"] for p in parts)
    return f"{passed / cases:.0%} ({passed}/{cases})"


def _points(repair: dict[str, Any], part: str) -> float | None:
    before, after = repair.get(f"{part}_before"), repair.get(f"{part}_after")
    if before is None or after is None:
        return None
    return 100.0 * (after - before)


def row(result: dict[str, Any]) -> list[str]:
    repair = result["repair"]
    scores = repair.get("scores") or {}
    calls, projected = repair["calls"], repair["projected_calls"]
    held = _points(repair, "heldout")
    return [
        result["optimizer"],
        str(result["seed"]),
        repair["status"],
        f"{_rate(scores.get('heldout_before'))} -> {_rate(scores.get('heldout_after'))}",
        "n/a" if held is None else f"{held:+.0f}",
        _metrics(scores.get("heldout_after")),
        f"{_rate(scores.get('insample_before'))} -> {_rate(scores.get('insample_after'))}",
        _overall(scores.get("heldout_after"), scores.get("insample_after")),
        f"{calls['task_calls']} ({calls['cache_hits']})",
        str(projected["total"]),
        str(len(repair.get("demos") or [])),
        f"{repair['duration_s']:.0f} s",
        f"{result['process_s']:.0f} s",
        f"{result['load'][0]:.1f}/{result['load'][1]:.1f}",
    ]


HEADER = [
    "optimizer",
    "seed",
    "status",
    "held-out before -> after",
    "points",
    "held-out metrics after",
    "in-sample before -> after",
    "all cases after",
    "task calls (hits)",
    "projected",
    "demos",
    "repair time",
    "process",
    "load avg",
]


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def verdict(results: list[dict[str, Any]]) -> list[str]:
    """Per optimiser: medians over seeds, and the issue's targets met or not."""
    lines = []
    for optimizer in dict.fromkeys(r["optimizer"] for r in results):
        mine = [r for r in results if r["optimizer"] == optimizer]
        points = [p for r in mine if (p := _points(r["repair"], "heldout")) is not None]
        calls = [r["repair"]["calls"]["total"] for r in mine]
        seconds = [r["repair"]["duration_s"] for r in mine]
        process = [r["process_s"] for r in mine]
        if not points:
            lines.append(f"{optimizer}: no proposal scored ({', '.join(r['repair']['reason'] for r in mine)})")
            continue
        met = min(points) >= TARGET_POINTS and max(calls) <= TARGET_CALLS and max(seconds) < TARGET_SECONDS
        lines.append(
            f"{optimizer}: held-out {statistics.median(points):+.0f} points (median of {len(points)}; min {min(points):+.0f}), "
            f"{statistics.median(calls):.0f} calls (max {max(calls)}), repair {statistics.median(seconds):.0f} s "
            f"(max {max(seconds):.0f} s), process {statistics.median(process):.0f} s: target +{TARGET_POINTS:.0f} points / <= {TARGET_CALLS} calls / "
            f"< {TARGET_SECONDS / 60:.0f} min {'met' if met else 'NOT met'}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=SUITE)
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma-separated --promptopt-repair-seed values: each picks another held-out split "
        "(the demonstration optimisers themselves are deterministic)",
    )
    parser.add_argument(
        "--budget", type=int, default=None, help="--promptopt-repair-budget (default: the plugin's, 300)"
    )
    parser.add_argument("--show-proposals", action="store_true", help="print each proposed template")
    args = parser.parse_args()
    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    results = []
    for seed in seeds:
        for optimizer in optimizers:  # interleaved, so load from other jobs spreads over all of them
            result = run_repair(args.suite.resolve(), optimizer, seed, args.budget)
            results.append(result)
            repair = result["repair"]
            print(
                f"[{optimizer} seed {seed}] {repair['status']} in {repair['duration_s']:.0f} s "
                f"(process {result['process_s']:.0f} s, exit {result['exit']}){': ' + repair['reason'] if repair['reason'] else ''}",
                flush=True,
            )
            if args.show_proposals and result["proposal"]:
                print(result["proposal"])

    first = results[0]
    print()
    suite = args.suite.resolve()
    print(
        f"suite {suite.relative_to(ROOT) if suite.is_relative_to(ROOT) else suite}: "
        f"zero-shot pass rate {first['run_pass_rate']:.0%}, {first['run_calls']} calls in the run itself (cold cache); "
        f"{len(first['repair']['heldout_cases'])} held-out / {len(first['repair']['insample_cases'])} optimiser cases; "
        f"budget {first['repair']['budget']}; {os.cpu_count()} CPUs"
    )
    print(table([row(r) for r in results]))
    print()
    print(
        "points: held-out pass rate after minus before, in percentage points; metrics: the suite's named metrics' means"
    )
    print("calls: the repair's model calls (cache misses, charged to the budget), with its cache hits in brackets;")
    print("repair time: the repair alone; process: the whole pytest process (model load and zero-shot run included);")
    print("load avg: 1-minute load average before/after the run (the machine is shared)")
    for line in verdict(results):
        print(line)


if __name__ == "__main__":
    main()
