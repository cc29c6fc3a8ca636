"""Benchmark the bundled local model: load time, unbatched vs batched greedy generation.

    python bench/local_model.py [--cases N] [--batch B] [--max-tokens T] [--repeat R] [--dtype D] [--cold]

Prints the load time of this run (and whether the safetensors cache already existed), tokens/s,
cases/s unbatched and batched (medians over R repeats), their ratio, and whether batched greedy
texts equal the unbatched ones. `--cold` loads from the GGUF into a fresh temporary cache dir
(about 20 s extra) and then times a cached load in a new process.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_promptopt.models.base import Request  # noqa: E402
from pytest_promptopt.models.local import LocalModel  # noqa: E402

COUNTRIES = [
    "France",
    "Germany",
    "Italy",
    "Spain",
    "Japan",
    "Canada",
    "Egypt",
    "Brazil",
    "Kenya",
    "Norway",
    "Peru",
    "India",
    "Australia",
    "Mexico",
    "Greece",
    "Poland",
    "Portugal",
    "Sweden",
    "Chile",
    "Turkey",
    "Ireland",
    "Vietnam",
    "Argentina",
    "Finland",
]


def prompts(n: int) -> list[str]:
    return [f"What is the capital of {COUNTRIES[i % len(COUNTRIES)]}? Answer with one word." for i in range(n)]


def time_cached_load_in_subprocess(cache_root: str) -> float:
    code = (
        "import sys,time; sys.path.insert(0, %r)\n"
        "from pytest_promptopt.models.local import LocalModel\n"
        "m = LocalModel(cache_dir=%r); m.load(); print(m.load_info['source'], m.load_info['load_seconds'])\n"
    ) % (str(Path(__file__).resolve().parent.parent), cache_root)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "cache", out
    return float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--dtype", default=None, help="float32 (default), float16 or bfloat16")
    parser.add_argument("--cold", action="store_true", help="also time a load from the GGUF (fresh cache dir)")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="promptopt-bench-") if args.cold else None
    model = LocalModel(
        {"max_tokens": args.max_tokens}, cache_dir=tmp.name if tmp else None, batch_size=args.batch, dtype=args.dtype
    )
    existed = model.model_cache_dir.is_dir()
    model.load()
    info = model.load_info or {}
    print(
        f"load: {info.get('load_seconds', float('nan')):.2f}s from {info.get('source')} "
        f"(cache dir existed before: {existed}; {info.get('cache_dir')}); torch threads {info.get('torch_threads')}, dtype {info.get('dtype')}"
    )
    if tmp is not None:
        print(f"cached load (new process): {time_cached_load_in_subprocess(tmp.name):.2f}s")

    requests = [Request.from_prompt(p) for p in prompts(args.cases)]
    model.generate(requests[0])  # warm-up: first call pays one-time allocator/kernels setup

    unbatched_times, batched_times = [], []
    unbatched = batched = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        unbatched = [model.generate(r) for r in requests]
        unbatched_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        batched = model.generate_batch(requests)
        batched_times.append(time.perf_counter() - started)

    t_u, t_b = statistics.median(unbatched_times), statistics.median(batched_times)
    tokens = sum(r.completion_tokens or 0 for r in unbatched)
    print(f"unbatched: {args.cases / t_u:.2f} cases/s, {tokens / t_u:.1f} completion tokens/s ({t_u:.2f}s)")
    print(f"batched (batch {args.batch}): {args.cases / t_b:.2f} cases/s ({t_b:.2f}s)")
    print(f"speed-up batched/unbatched: {t_u / t_b:.2f}x" + (f" (median of {args.repeat})" if args.repeat > 1 else ""))
    same = [u.text == b.text for u, b in zip(unbatched, batched)]
    print(f"batched texts equal unbatched: {all(same)} ({sum(same)}/{len(same)})")
    for u, b, ok in zip(unbatched, batched, same):
        if not ok:
            print(f"  differs: {u.text!r} vs {b.text!r}")
    for r, req in list(zip(unbatched, requests))[:3]:
        print(f"  {req.prompt!r} -> {r.text!r}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
