"""The bundled model's first-run preparation, alone: GGUF -> float32 copy -> CTranslate2 copy.

    python bench/preparation.py [--repeat 3] [--reference DIR] [--no-ctranslate2]

Each run is a fresh process that prepares the model into a new empty folder
(`local_weights.prepare`, what a first `pytest --promptopt` on a machine does in its preparation
child) and reports its wall time, CPU time, peak RSS and the time its cyclic garbage collector
took (`gc.callbacks`). With `--reference DIR` (another checkout, put first on PYTHONPATH) the
runs alternate between that code and this one, and the medians are printed side by side with
their ratio; without it, this checkout's figures alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness_overhead import user_environment  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Runs in the measured process: the collector's time from its own callbacks, the rest from the OS.
PREPARE = """
import gc, json, os, resource, sys, time
from pathlib import Path
collecting = {"s": 0.0, "at": None}
def timed(phase, info):
    if phase == "start":
        collecting["at"] = time.perf_counter()
    elif collecting["at"] is not None:
        collecting["s"] += time.perf_counter() - collecting["at"]
gc.callbacks.append(timed)
started, cpu = time.perf_counter(), os.times()
from pytest_promptopt.models import local_weights
prepared = local_weights.prepare(local_weights.locate_gguf(), Path(sys.argv[1]), ctranslate2=sys.argv[2] == "yes")
done = os.times()
print(json.dumps({
    "wall": time.perf_counter() - started,
    "cpu": done.user + done.system - cpu.user - cpu.system,
    "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "gc": collecting["s"],
    "built": list(prepared.built),
}))
"""


def prepare_once(checkout: Path, ctranslate2: bool) -> dict[str, float]:
    env = user_environment(checkout)
    with tempfile.TemporaryDirectory(prefix="promptopt-bench-preparation-") as home:
        done = subprocess.run(
            [sys.executable, "-c", PREPARE, home, "yes" if ctranslate2 else "no"],
            env=env,
            cwd=home,
            capture_output=True,
            text=True,
            timeout=900,
        )
    if done.returncode != 0:
        raise RuntimeError(f"preparation with {checkout} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    expected = ["float32", "ctranslate2"] if ctranslate2 else ["float32"]
    if figures.pop("built") != expected:
        raise RuntimeError(f"{checkout}: the preparation did not build {expected} from scratch")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reference", type=Path, help="another checkout, measured alternately")
    parser.add_argument("--no-ctranslate2", action="store_true", help="the float32 copy only")
    args = parser.parse_args()
    checkouts = {"this checkout": ROOT}
    if args.reference:
        checkouts = {f"reference ({args.reference})": args.reference.resolve(), **checkouts}
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    for _ in range(args.repeat):
        for name, checkout in checkouts.items():  # alternating: other load hits both alike
            runs[name].append(prepare_once(checkout, not args.no_ctranslate2))
    print(
        f"preparation of the bundled model ({'float32 only' if args.no_ctranslate2 else 'float32 + CTranslate2'}), "
        f"{args.repeat} runs each; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print(f"{'code':<40} {'wall s':>8} {'CPU s':>8} {'collector s':>12} {'peak RSS MB':>12}  runs (wall)")
    medians: dict[str, float] = {}
    for name, figures in runs.items():
        median = {key: statistics.median(f[key] for f in figures) for key in ("wall", "cpu", "gc", "rss_mb")}
        medians[name] = median["wall"]
        walls = ", ".join(f"{f['wall']:.1f}" for f in figures)
        print(
            f"{name:<40} {median['wall']:>8.1f} {median['cpu']:>8.1f} {median['gc']:>12.1f} {median['rss_mb']:>12.0f}  {walls}"
        )
    if len(medians) == 2:
        reference, current = medians.values()
        print(f"this checkout / reference (wall, medians): {current / reference:.2f}x")


if __name__ == "__main__":
    main()
