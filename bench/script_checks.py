"""What a code check costs per case: a suite of N echo cases graded by `contains` (the reference,
measured in the same run), by inline `python`, by a `python` file function and by inline
`javascript`; each a fresh `pytest --promptopt` process, the median of --repeat runs.

    .venv/bin/python bench/script_checks.py --cases 200 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKS = {
    "contains": '{type: contains, value: "case"}',
    "python inline": "{type: python, value: \"'case' in output\"}",
    "python file": '{type: python, value: "file://checks.py:has_case"}',
    "javascript inline": "{type: javascript, value: \"output.includes('case')\"}",
}


def run(folder: Path, check: str, cases: int) -> float:
    tests = "\n".join(f"  - vars: {{n: {i}}}" for i in range(cases))
    suite = folder / "s.promptopt.yaml"
    suite.write_text(
        f"providers: [echo]\nprompts: ['case {{{{n}}}}']\ndefaultTest:\n  assert: [{CHECKS[check]}]\ntests:\n{tests}\n"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--promptopt", "--promptopt-no-mlflow", "--promptopt-cache", "off"]
        + ["-p", "no:cacheprovider", "-q", "-p", "no:xdist", str(suite)],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{check}: pytest failed\n{done.stdout[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "checks.py").write_text("def has_case(output, context):\n    return 'case' in output\n")
        times: dict[str, list[float]] = {check: [] for check in CHECKS}
        for _ in range(args.repeat):
            for check in CHECKS:  # interleaved, so the machine's load hits every check alike
                times[check].append(run(folder, check, args.cases))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    base = statistics.median(times["contains"])
    print(f"{args.cases} cases, {args.repeat} runs each, load average {load:.1f}")
    print(f"{'check':<20} {'runs (s)':<28} {'median s':>9} {'vs contains':>12} {'extra ms/case':>14}")
    for check, runs in times.items():
        median = statistics.median(runs)
        extra = (median - base) / args.cases * 1000
        shown = " ".join(f"{r:.1f}" for r in runs)
        print(f"{check:<20} {shown:<28} {median:>9.1f} {median / base:>11.2f}x {extra:>14.1f}")


if __name__ == "__main__":
    main()
