"""Gate calibration: how often each gate fails a model that is exactly good enough (false alarms),
and how often it fails one that is not (detection), over many simulated CI runs.

    python bench/calibration.py [--runs 2000] [--sizes 20 50 200] [--seed 0] [--quick]
                                [--only threshold regression baseline metric]

Every decision goes through the plugin's own code: `gates.decide` with the `stats.wilson`
interval for the threshold gates, `baseline.compare_suite` and `baseline.regression` (McNemar's
exact test on the flips, the paired bootstrap on named metrics) for the regression gate. Only the
model is simulated: a suite is N cases, each with its own true chance of passing, and a CI run
draws each case's outcome from it. Two kinds of suite:

- `same`: every case passes with the same chance (a coin per case). The pass count is binomial,
  which is also what a suite whose cases are a fresh sample from a large population gives.
- `mixed`: the chances are drawn from Beta(1.6, 0.4) (mean 0.8; about 38% of cases pass at
  least 95% of the time), then shifted on the logit scale so the suite's mean is exactly the
  rate wanted. Cases that nearly always pass or fail make runs agree with each other, so a
  run's pass count varies less than a binomial one (about two thirds of its variance).

A "drop of d" shifts every case's chance on the logit scale so the suite's mean falls by exactly
d. Prints Markdown tables: percentages of simulated runs; a false-alarm figure also gives the 95%
upper bound of its Monte Carlo estimate. Needs numpy (installed with the mlflow or spark extras).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_promptopt.baseline import CaseOutcome, Regression, compare_suite, regression  # noqa: E402
from pytest_promptopt.gates import GATE_RULES, PASS_RATE, Gate, decide  # noqa: E402
from pytest_promptopt.stats import cluster_bootstrap, wilson  # noqa: E402

THRESHOLD = 0.8  # the pass-rate gate's threshold, and the baseline's pass rate
KAPPA = 2.0  # Beta concentration of the `mixed` suites: small means cases that nearly always pass or fail
RATES = (0.6, 0.7, 0.75, 0.8, 0.85, 0.9)  # true pass rates for the threshold gates
DROPS = (0.0, 0.05, 0.1, 0.2)  # true drops for the regression gate
METRIC_MEAN = 0.7  # baseline mean of the graded metric
METRIC_NOISE = 8.0  # a graded score is Beta(mu * s, (1 - mu) * s) around its case's mean mu: sd ~0.15
KINDS = ("same", "mixed")
SECTIONS = ("threshold", "regression", "baseline", "metric", "repeats")
REPEAT_RATES = (0.7, 0.75, 0.8)  # true pass rates (over samples) for the repeats section


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _shift(logits: np.ndarray, mean: float) -> np.ndarray:
    """Per-case chances `expit(logits + c)`, with c chosen per row (bisection) so each row's mean is `mean`."""
    low = np.full((logits.shape[0], 1), -40.0)
    high = np.full((logits.shape[0], 1), 40.0)
    for _ in range(60):
        mid = (low + high) / 2
        above = _expit(logits + mid).mean(axis=1, keepdims=True) > mean
        high = np.where(above, mid, high)
        low = np.where(above, low, mid)
    return _expit(logits + (low + high) / 2)


def _base_logits(
    rng: np.random.Generator, kind: str, runs: int, n: int, mean: float, kappa: float = KAPPA
) -> np.ndarray:
    if kind == "same":
        return np.zeros((runs, n))
    chances = np.clip(rng.beta(mean * kappa, (1 - mean) * kappa, size=(runs, n)), 1e-9, 1 - 1e-9)
    return np.log(chances / (1 - chances))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _with_bound(hits: int, runs: int) -> str:
    """A false-alarm rate with the upper end of its 95% Monte Carlo interval."""
    return f"{_pct(hits / runs)} (<= {_pct(wilson(hits, runs)[1])})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cases(passed: np.ndarray, scores: np.ndarray | None = None) -> list[CaseOutcome]:
    if scores is None:
        return [CaseOutcome(f"c{i}", f"case {i}", "passed" if p else "failed") for i, p in enumerate(passed.tolist())]
    return [
        CaseOutcome(f"c{i}", f"case {i}", "passed" if p else "failed", None, {"quality": s})
        for i, (p, s) in enumerate(zip(passed.tolist(), scores.tolist()))
    ]


def threshold_gates(runs: int, sizes: list[int], seed: int) -> None:
    print(f"## Threshold gate `pass_rate >= {THRESHOLD:g}`: share of runs each rule fails\n")
    print(
        f"{runs} runs per cell; the {THRESHOLD:g} column is the false-alarm rate, the columns left of it the detection rate.\n"
    )
    gates = {rule: Gate(PASS_RATE, THRESHOLD, rule) for rule in GATE_RULES}
    for kind_index, kind in enumerate(KINDS):
        rows = []
        for n in sizes:
            rng = np.random.default_rng([seed, 1, kind_index, n])
            logits, draws = _base_logits(rng, kind, runs, n, THRESHOLD), rng.random((runs, n))  # shared by every rate
            fails = {rule: [] for rule in GATE_RULES}
            for rate in RATES:
                counts = (draws < _shift(logits, rate)).sum(axis=1).tolist()
                failed = dict.fromkeys(GATE_RULES, 0)
                for k in counts:
                    intervals = {PASS_RATE: wilson(k, n)}
                    for rule, gate in gates.items():
                        failed[rule] += not decide(gate, k / n, {}, intervals).passed
                for rule in GATE_RULES:
                    fails[rule].append(failed[rule] / runs)
            rows += [[f"{n}", rule] + [_pct(f) for f in fails[rule]] for rule in GATE_RULES]
        header = ["N", "rule"] + [f"**{r:g}** (threshold)" if r == THRESHOLD else f"{r:g}" for r in RATES]
        print(f"### `{kind}` suites\n\n{_table(header, rows)}\n")
    # For `same` suites the pass count is binomial, so the share is also exact: a check on the simulation.
    rows = []
    for n in sizes:
        for rule, gate in gates.items():
            failing = [k for k in range(n + 1) if not decide(gate, k / n, {}, {PASS_RATE: wilson(k, n)}).passed]
            rows.append(
                [f"{n}", rule]
                + [_pct(sum(math.comb(n, k) * r**k * (1 - r) ** (n - k) for k in failing)) for r in RATES]
            )
    print(f"### `same` suites, exact (binomial sums over the same decisions)\n\n{_table(header, rows)}\n")


def regression_gate(runs: int, sizes: list[int], seed: int) -> None:
    print("## Regression gate on the pass rate (McNemar): share of runs flagged `regressed`\n")
    print(
        f"Baseline and current run over the same cases, baseline pass rate {THRESHOLD:g}; {runs} runs per cell. "
        "Drop 0 is the false-alarm rate, the others the detection rate.\n"
    )
    settings = {0.05: Regression(alpha=0.05, min_effect=0.05), 0.0: Regression(alpha=0.05, min_effect=0.0)}
    for kind_index, kind in enumerate(KINDS):
        rows = []
        for n in sizes:
            rng = np.random.default_rng([seed, 2, kind_index, n])
            logits = _base_logits(rng, kind, runs, n, THRESHOLD)
            before = rng.random((runs, n)) < _shift(logits, THRESHOLD)
            after_draws = rng.random((runs, n))
            flagged = {m: [] for m in settings}
            for drop in DROPS:
                after = after_draws < _shift(logits, THRESHOLD - drop)
                hits = dict.fromkeys(settings, 0)
                for b, a in zip(before, after):
                    base, current = _cases(b), _cases(a)
                    comparison = compare_suite("s", "suite", base, current)
                    for min_effect, gate in settings.items():
                        hits[min_effect] += regression(comparison, base, current, gate).regressed
                for min_effect in settings:
                    flagged[min_effect].append(hits[min_effect])
            for min_effect, counts in flagged.items():
                rows.append(
                    [f"{n}", f"{min_effect:g}", _with_bound(counts[0], runs)] + [_pct(c / runs) for c in counts[1:]]
                )
        header = ["N", "min_effect", "no change (false alarm)"] + [f"drop {d:g}" for d in DROPS[1:]]
        print(f"### `{kind}` suites\n\n{_table(header, rows)}\n")


def per_baseline(baselines: int, runs: int, sizes: list[int], seed: int) -> None:
    print("## Regression gate against one fixed baseline, no true change\n")
    print(
        f"A baseline file is written once and every later CI run is compared with it. {baselines} baselines, each "
        f"compared with {runs} fresh runs of the same model (min_effect 0.05): the false-alarm rate per baseline. "
        "The last column averages the tenth of the baselines whose pass rate came out furthest above their "
        "suite's true rate.\n"
    )
    gate = Regression(alpha=0.05, min_effect=0.05)
    rows = []
    for kind_index, kind in enumerate(KINDS):
        for n in sizes:
            rng = np.random.default_rng([seed, 3, kind_index, n])
            chances = _shift(_base_logits(rng, kind, baselines, n, THRESHOLD), THRESHOLD)
            rates, lucky = [], []
            for p in chances:
                b = rng.random(n) < p
                base = _cases(b)
                hits = 0
                for a in rng.random((runs, n)) < p:
                    current = _cases(a)
                    hits += regression(compare_suite("s", "suite", base, current), base, current, gate).regressed
                rates.append(hits / runs)
                lucky.append(b.mean() - p.mean())
            rates_, lucky_ = np.array(rates), np.array(lucky)
            luckiest = rates_[
                lucky_ >= np.quantile(lucky_, 0.9)
            ]  # baselines that came out furthest above their true rate
            spread = 1.96 * rates_.std(ddof=1) / math.sqrt(len(rates_))  # of the mean over baselines
            rows.append(
                [
                    kind,
                    f"{n}",
                    f"{_pct(rates_.mean())} ± {100 * spread:.1f}",
                    _pct(np.median(rates_)),
                    _pct(np.quantile(rates_, 0.9)),
                    _pct(rates_.max()),
                    _pct((rates_ > 0.10).mean()),
                    _pct(luckiest.mean()),
                ]
            )
    header = [
        "suite",
        "N",
        "mean (95% interval)",
        "median",
        "90th percentile",
        "worst",
        "baselines above 10%",
        "luckiest 10% of baselines",
    ]
    print(_table(header, rows) + "\n")


def metric_gate(runs: int, sizes: list[int], seed: int, scores: tuple[str, ...] = ("graded", "0/1")) -> None:
    print("## Regression gate on a named metric's mean (paired bootstrap): share of runs flagged\n")
    print(
        f"`graded`: each case has a true mean score (`mixed` around {METRIC_MEAN:g}) and a run draws its score "
        f"around it (sd about 0.15). `0/1`: the score is the case's pass/fail in a `mixed` suite at {THRESHOLD:g}, "
        "and the last column is McNemar on the same outcomes. Every case's status is `passed`, so only the metric "
        f"can regress. {runs} runs for no change, {runs // 2} for each drop; min_effect 0.05 unless stated.\n"
    )
    settings = {0.05: Regression(alpha=0.05, min_effect=0.05), 0.0: Regression(alpha=0.05, min_effect=0.0)}
    rows = []
    for kind_index, kind in enumerate(("graded", "0/1")):
        if kind not in scores:
            continue
        mean = METRIC_MEAN if kind == "graded" else THRESHOLD
        for n in sizes:
            rng = np.random.default_rng([seed, 4, kind_index, n])
            logits = _base_logits(rng, "mixed", runs, n, mean)
            row = [kind, f"{n}"]
            for drop in (0.0, 0.05, 0.1):
                count = runs if drop == 0 else runs // 2
                before_mu, after_mu = _shift(logits[:count], mean), _shift(logits[:count], mean - drop)
                if kind == "graded":
                    b = rng.beta(before_mu * METRIC_NOISE, (1 - before_mu) * METRIC_NOISE)
                    a = rng.beta(after_mu * METRIC_NOISE, (1 - after_mu) * METRIC_NOISE)
                else:
                    b = (rng.random(before_mu.shape) < before_mu).astype(float)
                    a = (rng.random(after_mu.shape) < after_mu).astype(float)
                hits, mcnemar = dict.fromkeys(settings, 0), 0
                every = np.ones(n, dtype=bool)
                for bs, as_ in zip(b, a):
                    base, current = _cases(every, bs), _cases(every, as_)
                    comparison = compare_suite("s", "suite", base, current)
                    for min_effect, gate in settings.items():
                        hits[min_effect] += regression(comparison, base, current, gate).regressed
                    if kind == "0/1" and drop == 0:
                        flips_before, flips_after = _cases(bs > 0.5), _cases(as_ > 0.5)
                        mcnemar += regression(
                            compare_suite("s", "suite", flips_before, flips_after),
                            flips_before,
                            flips_after,
                            settings[0.05],
                        ).regressed
                if drop == 0:
                    row += [_with_bound(hits[0.05], count), _with_bound(hits[0.0], count)]
                    tail = _with_bound(mcnemar, count) if kind == "0/1" else "-"
                else:
                    row.append(_pct(hits[0.05] / count))
            rows.append(row + [tail])
    header = ["score", "N", "no change", "no change, min_effect 0", "drop 0.05", "drop 0.1", "McNemar, no change"]
    print(_table(header, rows) + "\n")


def _shift_population(logits: np.ndarray, mean: float) -> np.ndarray:
    """Per-case chances `expit(logits + c)` with one c for every row, so the mean over all rows is
    `mean` while each row's (a suite's) mean varies around it."""
    flat = logits.reshape(1, -1)
    return _shift(flat, mean).reshape(logits.shape)


def repeats_gate(runs: int, sizes: list[int], seed: int, repeats: tuple[int, ...] = (3, 5)) -> None:
    print(
        f"## Threshold gate `pass_rate >= {THRESHOLD:g}` with repeats: the cluster bootstrap against a naive interval\n"
    )
    print(
        f"`mixed` cases, each sampled k times; the pass rate is over the N x k samples, and the gate's rule is "
        f"`tolerant`. `cluster` is the plugin's interval (results.py: `stats.cluster_bootstrap` over cases, "
        f"seeded); `naive` is a Wilson interval that takes the N x k samples as independent. Two designs: in "
        f"`fixed`, every suite's own mean is exactly the rate (the suite is the whole task: only the model's "
        f"sampling varies); in `sampled`, the suite's cases are a fresh draw from a pool whose mean is the rate "
        f"(the suite is a sample of the task). {runs} runs per cell; the {THRESHOLD:g} column is the false-alarm "
        "rate (a tolerant gate should stay at or below 2.5%), the others the detection rate.\n"
    )
    gate = Gate(PASS_RATE, THRESHOLD, "tolerant")
    rows = []
    for design, shift in (("fixed", _shift), ("sampled", _shift_population)):
        for n in sizes:
            for k in repeats:
                rng = np.random.default_rng([seed, 5, n, k])
                logits, draws = _base_logits(rng, "mixed", runs, n, THRESHOLD), rng.random((runs, n, k))
                failed = {name: [] for name in ("cluster", "naive")}
                for rate in REPEAT_RATES:
                    passes = draws < shift(logits, rate)[:, :, None]  # runs x cases x repeats
                    hits = dict.fromkeys(failed, 0)
                    for run in passes:
                        clusters = [[float(x) for x in case] for case in run.tolist()]
                        total = int(run.sum())
                        value = total / (n * k)
                        hits["cluster"] += not decide(gate, value, {}, {PASS_RATE: cluster_bootstrap(clusters)}).passed
                        hits["naive"] += not decide(gate, value, {}, {PASS_RATE: wilson(total, n * k)}).passed
                    for name in failed:
                        failed[name].append(hits[name])
                for name in failed:
                    cells = [
                        _with_bound(h, runs) if r == THRESHOLD else _pct(h / runs)
                        for h, r in zip(failed[name], REPEAT_RATES)
                    ]
                    rows.append([design, f"{n}", f"{k}", name] + cells)
    header = ["design", "N", "k", "interval"] + [
        f"**{r:g}** (threshold)" if r == THRESHOLD else f"{r:g}" for r in REPEAT_RATES
    ]
    print(_table(header, rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="simulated CI runs per cell (default 2000)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 50, 200], help="cases per suite")
    parser.add_argument(
        "--metric-sizes",
        type=int,
        nargs="+",
        default=[20, 50],
        help="cases per suite for the paired bootstrap (about 4 ms a run at 20 cases, 26 ms at 200)",
    )
    parser.add_argument("--metric-scores", nargs="+", choices=["graded", "0/1"], default=["graded", "0/1"])
    parser.add_argument("--baselines", type=int, default=400, help="fixed baselines in the per-baseline section")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run only these sections")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a tenth of the runs, for a smoke test")
    args = parser.parse_args()
    runs, baselines = (
        (max(args.runs // 10, 50), max(args.baselines // 4, 20)) if args.quick else (args.runs, args.baselines)
    )
    started, cpu = time.perf_counter(), time.process_time()
    if "threshold" in args.only:
        threshold_gates(runs, args.sizes, args.seed)
    if "regression" in args.only:
        regression_gate(runs, args.sizes, args.seed)
    if "baseline" in args.only:
        per_baseline(baselines, max(runs // 40, 20), args.sizes, args.seed)
    if "metric" in args.only:
        metric_gate(runs // 2, args.metric_sizes, args.seed, tuple(args.metric_scores))
    if "repeats" in args.only:
        repeats_gate(max(runs // 5, 20), args.metric_sizes, args.seed)
    print(
        f"_{runs} runs per cell, seed {args.seed}: {time.perf_counter() - started:.0f} s wall, "
        f"{time.process_time() - cpu:.0f} s CPU._"
    )


if __name__ == "__main__":
    main()
