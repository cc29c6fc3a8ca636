"""How CTranslate2 should use the cores: one replica on every core, or one replica per core.

    python bench/ct2_threads.py [--repeat R] [--busy N]

Each configuration runs in its own process on the bundled model's CTranslate2 copy (prepared by
any earlier run), greedy, `max_length` 64, 8 chat prompts:

* `1 replica x 2 threads, passive`: what the plugin did before (OMP_WAIT_POLICY=PASSIVE),
* `1 replica x 2 threads, spin 10000`: OpenMP threads spin briefly before sleeping,
* `2 replicas x 1 thread`: what the plugin does now, two callers at once (as the runner submits
  batches),

measuring completion tokens/s one prompt at a time and in batches of 8 (with two replicas, two
callers at once, each with all 8 prompts: the rate of the two together), and tokens per
CPU-second. Ratios are
against the first configuration of the same run. `--busy N` starts N busy-looping processes
first (other work on the same cores, as on a shared CI machine). Prints medians and the load
average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, sys, threading, time
import ctranslate2, tokenizers
from pytest_promptopt.models.local import LocalModel
model = LocalModel()
folder = model.model_cache_dir
model.load()  # prepares the copy if needed
ct2 = next(folder.glob("ctranslate2-*-float32"))
intra, inter = int(sys.argv[1]), int(sys.argv[2])
tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
g = ctranslate2.Generator(str(ct2), device="cpu", compute_type="float32", intra_threads=intra, inter_threads=inter)
questions = ["What is the capital of France?", "Explain photosynthesis briefly.", "Write a haiku about rain.",
             "How many legs does a spider have?", "Name three primary colors.", "What is 12 times 12?",
             "Describe the water cycle.", "Who wrote Hamlet?"]
system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
prompts = [tok.encode(f"{system}<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).tokens
           for q in questions]
end = [tok.token_to_id("<|im_end|>")]
def generate(rows):
    out = g.generate_batch(rows, max_length=64, include_prompt_in_result=False, end_token=end, sampling_topk=1)
    return sum(len(r.sequences_ids[0]) for r in out)
def measure(batch, callers):
    counts = [0] * callers
    def work(i):
        mine = prompts  # every caller the same work: two callers, twice the tokens
        for s in range(0, len(mine), batch):
            counts[i] += generate(mine[s:s + batch])
    t, c = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(callers)]
    [x.start() for x in threads]; [x.join() for x in threads]
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"tok_s": sum(counts) / wall, "tok_cpu_s": sum(counts) / cpu}
generate(prompts)  # warm-up
print(json.dumps({"single": measure(1, inter), "batch8": measure(8, inter)}))
"""

CONFIGS = [
    ("1 replica x 2 threads, passive", ("2", "1"), {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("1 replica x 2 threads, spin 10000", ("2", "1"), {"GOMP_SPINCOUNT": "10000"}),
    ("2 replicas x 1 thread (now)", ("1", "2"), {"OMP_WAIT_POLICY": "PASSIVE"}),
]


def run(args: tuple[str, str], extra: dict[str, str]) -> dict[str, dict[str, float]]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(extra, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", WORKER, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--busy", type=int, default=0, help="busy-looping processes beside the runs")
    options = parser.parse_args()
    print(f"command: python bench/ct2_threads.py {' '.join(sys.argv[1:])}")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(options.busy)]
    try:
        print(f"cores: {os.cpu_count()}, busy processes: {options.busy}, load average before: {os.getloadavg()}")
        results: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name, _, _ in CONFIGS}
        for round_ in range(options.repeat):
            order = CONFIGS if round_ % 2 == 0 else list(reversed(CONFIGS))
            for name, args, extra in order:
                results[name].append(run(args, extra))
        reference = CONFIGS[0][0]

        def med(name: str, mode: str, key: str) -> float:
            return statistics.median(r[mode][key] for r in results[name])

        print(f"\nmedians of {options.repeat}; completion tokens/s (ratio vs '{reference}'; tokens per CPU-second)")
        print("configuration | single stream | batches of 8")
        for name, _, _ in CONFIGS:
            cells = [
                f"{med(name, m, 'tok_s'):.1f} (x{med(name, m, 'tok_s') / med(reference, m, 'tok_s'):.2f}; "
                f"{med(name, m, 'tok_cpu_s'):.1f}/CPU-s)"
                for m in ("single", "batch8")
            ]
            print(f"{name} | {' | '.join(cells)}")
        print(f"load average after: {os.getloadavg()}")
    finally:
        for process in busy:
            process.kill()


if __name__ == "__main__":
    main()
