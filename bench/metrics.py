"""Benchmark the meaning-aware metrics: what one assertion costs per case, in this process.

    python bench/metrics.py [--cases N] [--repeat R]

For N (output, reference) pairs of one-sentence summaries, grades every pair with each metric
through `grade_case`, as a run does, R times, and prints the median milliseconds per case:

- `similar` with the offline all-MiniLM-L6-v2: cold (no embedding cache: two texts embedded
  per case, one forward pass each) and warm (the vectors come from the response cache's SQLite
  table, as on a rerun). The model's one-off load (and the import of torch and transformers) is
  printed apart, since a run pays it once.
- `rouge-1`, `rouge-l`, `bleu`, `chrf`, `gleu`: their libraries' first import apart too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_promptopt import bleu, chrf, gleu, rouge_1, rouge_l, similar  # noqa: E402
from pytest_promptopt.assertions.base import AssertionContext  # noqa: E402
from pytest_promptopt.assertions.scoring import grade_case  # noqa: E402
from pytest_promptopt.cache import CacheMode, ResponseCache  # noqa: E402

SUBJECTS = [
    "The city council",
    "A local bakery",
    "The football club",
    "Scientists",
    "The high school",
    "Police",
    "A small company",
    "The museum",
    "Farmers",
    "The hospital",
]
ACTIONS = [
    "approved a new library",
    "won a national prize",
    "signed a young goalkeeper",
    "found a rare frog",
    "moved classes an hour later",
    "closed the main road",
    "hired fifty workers",
    "opened a new wing",
    "expect a record harvest",
    "bought two new scanners",
]
TAILS = [
    "after a long debate.",
    "on Monday.",
    "for a record fee.",
    "in the rainforest.",
    "next year.",
    "because of heavy snow.",
    "this spring.",
    "for its dinosaur bones.",
    "despite the dry summer.",
    "last week.",
]


def pairs(count: int) -> list[tuple[str, str]]:
    """Distinct (output, reference) pairs: the output rewords the reference."""
    out = []
    for i in range(count):
        s, a, t = SUBJECTS[i % 10], ACTIONS[(i // 10) % 10], TAILS[(i // 100 + i) % 10]
        reference = f"{s} {a} {t}"
        output = f"{s} has {a.split(' ', 1)[1]} {t} (case {i})"
        out.append((output, reference))
    return out


def per_case_ms(data: list[tuple[str, str]], make: Callable[[str], Any], cache: ResponseCache | None = None) -> float:
    """`cache`: where `similar` keeps its vectors (None: not kept)."""
    ctx = AssertionContext(embeddings=cache)
    started = time.perf_counter()
    for output, reference in data:
        grade_case(output, [make(reference)], ctx)
    return (time.perf_counter() - started) * 1000 / len(data)


def first_call_ms(make: Callable[[str], Any]) -> float:
    started = time.perf_counter()
    grade_case("warm up", [make("warm up")], AssertionContext())
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    data = pairs(args.cases)

    metrics: dict[str, Callable[[str], Any]] = {
        "rouge-1": lambda ref: rouge_1(ref, threshold=0.5),
        "rouge-l": lambda ref: rouge_l(ref, threshold=0.5),
        "bleu": lambda ref: bleu(ref, threshold=0.3),
        "chrf": lambda ref: chrf(ref, threshold=0.3),
        "gleu": lambda ref: gleu(ref, threshold=0.3),
    }
    rows: list[tuple[str, float, list[float]]] = []
    load = first_call_ms(lambda ref: similar(ref))
    with tempfile.TemporaryDirectory() as tmp:
        cold = [per_case_ms(data, lambda ref: similar(ref)) for _ in range(args.repeat)]
        rows.append(("similar (cold: no cache)", load, cold))
        cache = ResponseCache(Path(tmp) / "cache.sqlite", CacheMode.READWRITE)
        per_case_ms(data, lambda ref: similar(ref), cache)  # record every vector
        warm = [per_case_ms(data, lambda ref: similar(ref), cache) for _ in range(args.repeat)]
        rows.append(("similar (warm: cached vectors)", 0.0, warm))
        cache.close()
    for name, make in metrics.items():
        first = first_call_ms(make)
        rows.append((name, first, [per_case_ms(data, make) for _ in range(args.repeat)]))

    print(f"{args.cases} cases, {args.repeat} repeats; median (min-max) ms per case")
    print(f"{'metric':32} {'first call ms':>14} {'ms/case':>9} {'range':>15}")
    for name, first, times in rows:
        print(f"{name:32} {first:14.0f} {statistics.median(times):9.3f} {min(times):7.3f}-{max(times):.3f}")
    print(f"cold/warm similar: {statistics.median(cold) / statistics.median(warm):.1f}x")


if __name__ == "__main__":
    main()
