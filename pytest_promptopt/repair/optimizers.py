"""The DSPy optimisers a repair can use, what each is projected to cost, and how each is run.

Demonstration optimisers (any model, the bundled 135M one included):
- `labeled`: `LabeledFewShot`, the cases' own answers (the suite's `repair.label`) as demos; no calls.
- `bootstrap`: `BootstrapFewShot`, demos from the model's own answers that pass the assertions.
- `random-search`: `BootstrapFewShotWithRandomSearch`, several demo sets scored on the optimiser's cases.
Instruction optimisers (need a capable proposer, `--promptopt-repair-model`):
- `gepa`: `dspy.GEPA`, failed assertions' reasons as its textual feedback.
- `miprov2`: `dspy.MIPROv2` (with optuna), instructions and demos searched together.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..repair_result import Calls
from .config import DEMO_OPTIMIZERS, INSTRUCTION_OPTIMIZERS, RANDOM_SEARCH_MIN_CASES, RepairConfig

__all__ = ["choose", "optimise", "projected_calls", "random_search_candidates"]


def choose(config: RepairConfig, train_cases: int, labelled: int, proposer: bool) -> str:
    """The optimiser `auto` stands for: an instruction optimiser needs a proposer; demo sets are
    searched when there are enough cases to score them on; else bootstrap from the model's answers."""
    if config.optimizer != "auto":
        return config.optimizer
    if proposer:
        return "gepa"
    if train_cases >= RANDOM_SEARCH_MIN_CASES:
        return "random-search"
    return "bootstrap" if train_cases else "labeled"


def random_search_candidates(config: RepairConfig, train_cases: int, calls: int) -> int:
    """Candidate demo sets that fit `calls`: each costs a bootstrap pass and an evaluation pass over
    the optimiser's cases, besides the three fixed ones (zero-shot, labeled only, plain bootstrap)."""
    if train_cases == 0:
        return 0
    fits = (calls // train_cases - 4) // 2
    return max(0, min(config.candidates, fits))


def projected_calls(name: str, config: RepairConfig, train_cases: int, calls: int) -> Calls:
    """Worst-case model calls (every request a cache miss) of the optimiser alone, within `calls`."""
    if name == "labeled":
        return Calls()
    if name == "bootstrap":
        return Calls(task_calls=train_cases)
    if name == "random-search":
        return Calls(task_calls=(2 * random_search_candidates(config, train_cases, calls) + 4) * train_cases)
    if name == "gepa":
        metric_calls = max(train_cases, int(calls * 0.8))
        return Calls(task_calls=metric_calls, proposer_calls=calls - metric_calls)
    if name == "miprov2":
        trials = _mipro_trials(config, train_cases, calls)
        return Calls(
            task_calls=_mipro_candidates(config) * train_cases + trials * train_cases,
            proposer_calls=_mipro_candidates(config) + 2,
        )
    raise ValueError(f"unknown optimiser {name!r}")


def _mipro_candidates(config: RepairConfig) -> int:
    return max(2, min(config.candidates, 4))


def _mipro_trials(config: RepairConfig, train_cases: int, calls: int) -> int:
    left = calls - _mipro_candidates(config) * max(1, train_cases) - _mipro_candidates(config) - 2
    return max(1, left // max(1, train_cases))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DSPy optimisers print progress bars and banners; a pytest run shows its own summary."""
    loggers = [logging.getLogger(name) for name in ("dspy", "optuna", "gepa")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def optimise(
    name: str,
    program: Any,
    trainset: Sequence[Any],
    *,
    config: RepairConfig,
    metric: Callable[..., Any],
    feedback: Callable[..., Any],
    task_lm: Any,
    proposer_lm: Any,
    calls: int,
    threads: int,
) -> Any:
    """Run optimiser `name` on `program` with the optimiser's part of the cases; the compiled program."""
    import dspy

    trainset = list(trainset)
    k = config.max_demos
    with _quiet(), dspy.context(lm=task_lm, num_threads=threads, max_errors=len(trainset) + 1):
        if name == "labeled":
            labelled = [e for e in trainset if e.get(program.output) is not None]
            return dspy.LabeledFewShot(k=k).compile(program, trainset=labelled)
        if name == "bootstrap":
            return dspy.BootstrapFewShot(
                metric=metric, max_bootstrapped_demos=k, max_labeled_demos=k, max_rounds=1
            ).compile(program, trainset=trainset)
        if name == "random-search":
            search = dspy.BootstrapFewShotWithRandomSearch(
                metric=metric,
                max_bootstrapped_demos=k,
                max_labeled_demos=k,
                max_rounds=1,
                num_candidate_programs=random_search_candidates(config, len(trainset), calls),
                num_threads=threads,
            )
            return search.compile(program, trainset=trainset)
        if name == "gepa":
            metric_calls = projected_calls("gepa", config, len(trainset), calls).task_calls
            gepa = dspy.GEPA(
                metric=feedback,
                reflection_lm=proposer_lm,
                max_metric_calls=metric_calls,
                seed=config.seed,
                num_threads=threads,
                track_stats=False,
                use_merge=False,
                reflection_minibatch_size=min(3, len(trainset)),
            )
            return gepa.compile(program, trainset=trainset, valset=trainset)
        if name == "miprov2":
            mipro = dspy.MIPROv2(
                metric=metric,
                prompt_model=proposer_lm,
                task_model=task_lm,
                auto=None,
                num_candidates=_mipro_candidates(config),
                max_bootstrapped_demos=k,
                max_labeled_demos=k,
                seed=config.seed,
                num_threads=threads,
                verbose=False,
                track_stats=False,
            )
            return mipro.compile(
                program,
                trainset=trainset,
                valset=trainset,
                num_trials=_mipro_trials(config, len(trainset), calls),
                minibatch=False,
                program_aware_proposer=False,
                data_aware_proposer=False,
                tip_aware_proposer=False,
                fewshot_aware_proposer=False,
            )
    raise ValueError(f"unknown optimiser {name!r}; use one of {', '.join(DEMO_OPTIMIZERS + INSTRUCTION_OPTIMIZERS)}")
