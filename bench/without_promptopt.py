"""What the plugin costs an ordinary `pytest` run (no --promptopt): installed, against disabled.

    python bench/without_promptopt.py [--tests 20] [--repeat 15] [--source DIR]

Two projects, each run by a fresh `pytest -q -p no:cacheprovider` process, alternating with
`-p no:promptopt` (the reference: the same environment without the plugin) in the same folder:

* `plain`: N ordinary tests,
* `with suites`: the same tests and 3 suite files (collected and skipped by the plugin; not
  collected at all without it).

Prints each median, the difference and the ratio against the reference. `--source DIR` runs the
plugin of another checkout (put first on PYTHONPATH), to compare code.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness_overhead import user_environment  # noqa: E402


def write_project(folder: Path, tests: int, suites: bool) -> None:
    folder.mkdir()
    body = "\n\n".join(f"def test_{i}():\n    assert {i} + 1 == {i + 1}" for i in range(tests))
    (folder / "test_ordinary.py").write_text(body + "\n")
    if suites:
        for name in ("capitals", "greetings", "json"):
            (folder / f"{name}.promptopt.yaml").write_text(
                "providers: [echo]\nprompts: ['{{q}}']\ntests:\n  - vars: {q: hello}\n    assert: [{type: contains, value: hello}]\n"
            )


def run(folder: Path, disabled: bool, source: str | None) -> float:
    env = user_environment(source)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if disabled:
        command += ["-p", "no:promptopt"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{folder.name}: exit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--source", help="the checkout whose plugin runs")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="promptopt-bench-plain-") as tmp:
        projects = {"plain": Path(tmp) / "plain", "with suites": Path(tmp) / "suites"}
        write_project(projects["plain"], args.tests, suites=False)
        write_project(projects["with suites"], args.tests, suites=True)
        times: dict[tuple[str, bool], list[float]] = {(name, off): [] for name in projects for off in (True, False)}
        for folder in projects.values():
            run(folder, True, args.source)  # bytecode written once, as on a user's machine
            run(folder, False, args.source)
        for _ in range(args.repeat):
            for name, folder in projects.items():
                for disabled in (True, False):  # alternating, so load from other jobs hits both alike
                    times[(name, disabled)].append(run(folder, disabled, args.source))
    print(
        f"{args.tests} ordinary tests, {args.repeat} runs each; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after{'; plugin from ' + args.source if args.source else ''}"
    )
    for name in projects:
        reference = statistics.median(times[(name, True)])
        installed = statistics.median(times[(name, False)])
        print(
            f"{name:>12}: -p no:promptopt {reference:.3f} s, plugin installed {installed:.3f} s: "
            f"+{(installed - reference) * 1000:.0f} ms (x{installed / reference:.3f})"
        )


if __name__ == "__main__":
    main()
