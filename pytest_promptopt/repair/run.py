"""Repair after a run: which suites, which cases teach and which judge, and whether a proposal wins.

For each repaired prompt (a suite's prompt on one model):
1. its cases are split, seeded, into the optimiser's part and a held-out part;
2. the original prompt is scored on every case through the plugin's runner (the run just cached
   these answers, so this is nearly free);
3. the optimiser (repair/optimizers.py) works on the optimiser's part only, through the same
   models and cache, within the call budget;
4. the proposal is exported as a template (repair/template.py) and scored on every case again
   through the plugin's own renderer, model and assertions;
5. it is proposed only when its held-out pass rate beats the original's; then it is written
   beside the suite with a diff (repair/files.py).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ..case_stats import CaseStats
from ..judging import judge_calls
from ..models.base import ModelError
from ..models.specs import BUNDLED, Answers, ModelSpec, distinct_displays
from ..prompt import Prompt, Rendering, TemplateError
from ..records import CaseResult
from ..repair_result import Calls, RepairResult, Score
from ..stats import wilson
from ..suite.loader import LoadedSuite
from ..suite.model import Case, Repeats
from ..summary import RunSummary, SuiteSummary
from .config import INSTRUCTION_OPTIMIZERS, RepairConfig, RepairSettings

__all__ = ["repair_groups", "repair_names", "repair_run", "split_cases", "WEAK_HELDOUT"]

WEAK_HELDOUT = 10  # fewer held-out cases than this: the before/after estimate is weak (report the interval)


def repair_run(session: Any, run: RunSummary, settings: RepairSettings) -> list[RepairResult]:
    """Repair every suite `settings` asks for; one result per repaired prompt (or per skipped suite)."""
    from ..suite.model import SuiteError

    results: list[RepairResult] = []
    for suite in run.suites:
        if not settings.wants(suite.info.id, suite.info.name, suite.gates_passed):
            continue
        base = RepairResult(suite=suite.info.id, suite_name=suite.info.name, status="skipped")
        if suite.info.kind != "file":
            results.append(
                dataclasses.replace(
                    base,
                    reason="a Python prompt test has no template file to repair; "
                    "move its prompt and checks to a suite file",
                )
            )
            continue
        if suite.dataset is not None:
            results.append(
                dataclasses.replace(
                    base,
                    reason="dataset suites are not repaired; repair a suite of representative cases from the table",
                )
            )
            continue
        try:
            # One sample per case (repeat 0, the run's own cached first sample): the optimiser's
            # metric and the held-out verdict read one answer per case.
            loaded = session.load_suite(
                session.settings.rootdir / suite.info.file, suite.info.file, repeats=Repeats(1, from_cli=True)
            )
        except SuiteError as exc:
            results.append(dataclasses.replace(base, status="error", reason=str(exc)))
            continue
        if loaded.sequence:
            # A chained case is built when it runs, from the answers before it: the optimiser
            # could neither score a case alone nor show one as a demonstration.
            results.append(
                dataclasses.replace(
                    base,
                    reason="its cases chain answers (storeOutputAs, _conversation), and a repair scores each case "
                    "alone; repair the prompt in a suite of independent cases",
                )
            )
            continue
        config = RepairConfig.resolve(settings, loaded.repair)
        groups = repair_groups(loaded.cases)
        names = repair_names(groups, loaded.providers)
        for cases in groups:
            if cases[0].prompt.unavailable is not None:  # its text could not be had (the registry is down)
                results.append(
                    dataclasses.replace(base, prompt_index=cases[0].prompt_index, reason=cases[0].prompt.unavailable)
                )
                continue
            model_name = names.get(cases[0].model.answers)
            results.append(repair_prompt(session, suite, cases, config, settings, loaded, model_name=model_name))
    return results


def split_cases(count: int, heldout: float, seed: int) -> tuple[list[int], list[int]]:
    """(optimiser part, held-out part) as case positions: a seeded shuffle, at least one of each."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    held = min(count - 1, max(1, round(count * heldout)))
    return sorted(order[held:]), sorted(order[:held])


def case_label(case: Case, config: RepairConfig, rendering: Rendering) -> str | None:
    """The answer a demonstration shows for `case`: `repair.label` rendered with its vars (as
    the suite renders), else the value of its `equals` assertion."""
    if config.label is not None:
        try:
            return rendering.text(config.label, case.vars)
        except TemplateError:
            return None
    for assertion in case.assertions:
        if assertion.type == "equals" and not assertion.inverse and isinstance(assertion.value, (str, int, float)):
            try:
                return rendering.text(str(assertion.value), case.vars)
            except TemplateError:
                return str(assertion.value)
    return None


def score(results: Sequence[CaseResult]) -> Score:
    passed = sum(1 for r in results if r.passed and not r.error)
    interval = wilson(passed, len(results))
    return Score(
        pass_rate=passed / len(results) if results else None,
        passed=passed,
        cases=len(results),
        low=interval[0] if interval else None,
        high=interval[1] if interval else None,
        errors=sum(1 for r in results if r.error),
        metrics=CaseStats.of(results).metric_means(),
    )


def repair_groups(cases: Iterable[Case]) -> list[list[Case]]:
    """The cases repaired together: those of one prompt on one provider's answers (its model
    and its transform: two providers differing only in their transform are graded on different
    text, so each gets its own repair)."""
    groups: dict[tuple[int, Answers], list[Case]] = {}
    for case in cases:
        groups.setdefault((case.prompt_index, case.model.answers), []).append(case)
    return list(groups.values())


def repair_names(groups: Sequence[Sequence[Case]], providers: Sequence[ModelSpec]) -> dict[Answers, str]:
    """With several providers' answers among `groups`, each one's name in its repairs' results
    and proposal files: the name its items carry (`distinct_displays` over the suite's
    `providers`: `#N`, its place, when two share a name, e.g. one model under two transforms),
    a test's own provider its display (with `#N` in order of appearance when it runs in places
    of different transforms); empty with one provider's answers."""
    answers = {cases[0].model.answers: cases[0].model for cases in groups}
    if len(answers) < 2:
        return {}
    named: dict[Answers, str] = {}
    for spec, name in zip(providers, distinct_displays(providers)):
        named.setdefault(spec.answers, name)
    others = [(key, spec) for key, spec in answers.items() if key not in named]
    named.update(zip((key for key, _ in others), distinct_displays([spec for _, spec in others])))
    return {key: named[key] for key in answers}


def _evaluate(session: Any, cases: Sequence[Case], tag: str, calls: Calls) -> list[CaseResult]:
    """Every case through the plugin's runner (batched or concurrent as in the run); its model
    calls are charged to `calls`."""
    results = list(session.runner.map((case, f"repair::{tag}::{i}") for i, case in enumerate(cases)))
    for result in results:
        calls.task_calls += result.calls
        calls.cache_hits += result.cache_hits
        calls.task_tokens += (result.prompt_tokens or 0) + (result.completion_tokens or 0) if result.calls else 0
    return results


def _scored(result: CaseResult) -> dict[str, Any]:
    """A case's answer and verdict, as a repair reports it per case."""
    return {
        "output": result.output,
        "passed": bool(result.passed and not result.error),
        "error": result.error,
        "score": result.score,
        "reason": result.reason,
        "latency_ms": result.latency_ms,
    }


def _with_prompt(case: Case, prompt: Prompt, rendering: Rendering) -> Case:
    return dataclasses.replace(case, prompt=prompt, rendered_prompt=rendering.prompt(prompt.template, case.vars))


def _proposer(settings: RepairSettings, task: ModelSpec) -> ModelSpec:
    return settings.model if settings.model is not None else task


def _is_bundled(spec: ModelSpec) -> bool:
    return spec.id == BUNDLED


def repair_prompt(
    session: Any,
    suite: SuiteSummary,
    cases: Sequence[Case],
    config: RepairConfig,
    settings: RepairSettings,
    loaded: LoadedSuite,
    *,
    model_name: str | None = None,
) -> RepairResult:
    """Repair one prompt of `suite` on one model from its `cases`; `loaded` is the suite as read
    for the repair: how it renders its prompts (the proposal is scored rendered the same way) and
    where each came from (what apply may rewrite). `model_name`: the provider's name when the
    suite has several (`repair_names`), which also names the proposal file."""
    started = time.perf_counter()
    first = cases[0]
    result = RepairResult(
        suite=suite.info.id,
        suite_name=suite.info.name,
        status="no repair found",
        model=model_name or first.model.display,
        prompt_index=first.prompt_index,
        prompt_label=first.prompt.label,
        original=first.prompt.template,
        budget=config.budget,
        seed=config.seed,
        started_at=time.time(),
    )
    try:
        _repair(session, cases, config, settings, loaded, result, model_name)
    except TemplateError as exc:
        result.status, result.reason = "error", f"template: {exc}"
    finally:
        result.duration_s = time.perf_counter() - started
    return result


def _repair(
    session: Any,
    cases: Sequence[Case],
    config: RepairConfig,
    settings: RepairSettings,
    loaded: LoadedSuite,
    result: RepairResult,
    model_name: str | None,
) -> None:
    from .program import Budget, budgeted_judge, build_lm, case_metric, feedback_metric, output_field, template_program
    from .template import compose

    first = cases[0]
    if len(cases) < 2:
        result.status, result.reason = (
            "skipped",
            "a repair needs at least 2 cases: some to learn from, some to judge on",
        )
        return
    train_at, held_at = split_cases(len(cases), config.heldout, config.seed)
    result.heldout_cases = [cases[i].name for i in held_at]
    result.insample_cases = [cases[i].name for i in train_at]
    result.weak_estimate = len(held_at) < WEAK_HELDOUT
    rendering = loaded.rendering
    labels = [case_label(case, config, rendering) for case in cases]
    proposer_spec = _proposer(settings, first.model)
    name = _choose(config, len(train_at), sum(1 for i in train_at if labels[i] is not None), settings)
    result.optimizer = name
    if name in INSTRUCTION_OPTIMIZERS and _is_bundled(proposer_spec):
        result.status = "refused"
        result.reason = (
            f"{name} writes new instructions and needs a capable proposer model; the bundled 135M model would "
            "only add noise. Pass --promptopt-repair-model (e.g. openai/gpt-4o-mini), or use a demonstration "
            "optimiser: --promptopt-repair-optimizer bootstrap"
        )
        return
    if name == "labeled" and not any(labels[i] is not None for i in train_at):
        result.status = "refused"
        result.reason = (
            "labeled shows the cases' answers, and no case has one: set repair.label in the suite "
            "(e.g. label: '{{expected}}') or give the cases an equals assertion"
        )
        return

    spent = Calls()
    before = _evaluate(session, cases, f"{result.suite}::{result.prompt_index}::before", spent)
    if all(r.error for r in before):
        result.status, result.reason = "error", f"the model answered no case: {before[0].error}"
        result.calls = spent
        return
    budget = Budget(config.budget, spent)
    # Each answer the optimiser scores may cost `judged` judge calls on top of its own.
    judged = max((judge_calls(case.assertions) for case in cases), default=0)
    # What the optimiser may spend: the budget less what scoring the proposal may cost.
    available = config.budget - spent.total - len(cases) * (1 + judged)
    from .optimizers import optimise, projected_calls

    # Sized in answers: the optimiser's own calls, each with its judge calls.
    projected = projected_calls(name, config, len(train_at), max(0, available) // (1 + judged))
    result.projected = Calls(
        task_calls=projected.task_calls + spent.task_calls + len(cases) * (1 + judged),
        proposer_calls=projected.proposer_calls,
        judge_calls=projected.task_calls * judged,
    )
    if available <= 0 and name != "labeled":
        result.reason = f"the budget ({config.budget} calls) is spent on scoring the original prompt; raise --promptopt-repair-budget"
        result.calls = spent
        return

    task_model = session.model_for(first.model)
    task_lm = build_lm(first.model.display, task_model, session.cache, budget, "task")
    proposer_lm = None
    if name in INSTRUCTION_OPTIMIZERS:
        proposer_lm = build_lm(
            proposer_spec.display, session.model_for(proposer_spec), session.cache, budget, "proposer"
        )
    budget.limit = spent.total + max(0, available)  # the optimiser's share; scoring the proposal is reserved
    variables = sorted({k for case in cases for k in case.vars})
    program = template_program(first.prompt.template, variables, task_lm, rendering)
    output = output_field(variables)
    trainset = [_example(cases[i], i, variables, output, labels[i]) for i in train_at]
    threads = 1 if hasattr(task_model, "generate_batch") else max(1, min(8, session.settings.scale.concurrency))
    try:
        judge = budgeted_judge(session.judges, budget)  # model-graded assertions spend the budget too
        compiled = optimise(
            name,
            program,
            trainset,
            config=config,
            metric=case_metric(cases, output, judge, session.cache, session.sandbox),
            feedback=feedback_metric(cases, output, variables, judge, session.cache, session.sandbox),
            task_lm=task_lm,
            proposer_lm=proposer_lm,
            calls=max(0, available) // (1 + judged),
            threads=threads,
        )
    except Exception as exc:  # DSPy wraps what a call raised; the budget knows whether it ran out
        budget.limit = config.budget
        result.calls = budget.spent
        if budget.exhausted:
            result.reason = (
                f"{name} spent the budget ({config.budget} calls) before finishing; raise "
                "--promptopt-repair-budget or choose a cheaper optimiser"
            )
        elif isinstance(exc, (ModelError, TemplateError)):
            result.status, result.reason = "error", f"{name}: {exc}"
        else:
            result.status, result.reason = "error", f"{name} failed: {type(exc).__name__}: {exc}"
        return
    stopped = budget.exhausted  # DSPy went on without the calls it was refused; judge what it found
    budget.limit = config.budget
    demos = compiled.demos
    proposal = compose(compiled.template, demos, rendering)
    result.demos = [d.to_dict() for d in demos]
    result.tried = [
        {"optimizer": name, "demos": len(demos), "instructions_changed": compiled.template != first.prompt.template}
    ]
    if proposal == first.prompt.template:
        result.reason = (
            f"{name} kept the original prompt: no demonstration or instruction scored better on the optimiser's cases"
        )
        result.calls = budget.spent
        return
    missing = sorted(rendering.needed(first.prompt.template) - rendering.needed(proposal))
    if missing:
        result.reason = f"{name} proposed a prompt without the variable(s) {', '.join(missing)}; it is not proposed"
        result.calls = budget.spent
        return
    repaired = Prompt(proposal, label=f"{first.prompt.label} (repaired)")
    after = _evaluate(
        session,
        [_with_prompt(c, repaired, rendering) for c in cases],
        f"{result.suite}::{result.prompt_index}::after",
        budget.spent,
    )
    result.calls = budget.spent
    result.prompt = proposal
    result.heldout_before, result.heldout_after = (
        score([before[i] for i in held_at]),
        score([after[i] for i in held_at]),
    )
    result.insample_before, result.insample_after = (
        score([before[i] for i in train_at]),
        score([after[i] for i in train_at]),
    )
    held = set(held_at)
    result.cases = [
        {
            "case_id": case.case_id,
            "name": case.name,
            "vars": dict(before[i].vars),
            "split": "held-out" if i in held else "in-sample",
            "original": _scored(before[i]),
            "proposal": {**_scored(after[i]), "prompt": after[i].prompt},
        }
        for i, case in enumerate(cases)
    ]
    result.tried[0]["insample_after"] = result.insample_after.pass_rate
    if stopped:
        result.reason = (
            f"{name} stopped at the budget ({config.budget} calls); raise --promptopt-repair-budget for a fuller search"
        )
    if (result.heldout_after.pass_rate or 0) > (result.heldout_before.pass_rate or 0):
        result.status = "repaired"
        from .files import write_proposal

        write_proposal(result, first, session.settings.rootdir, loaded, apply=settings.apply, model_name=model_name)
    else:
        verdict = (
            f"the proposal does not beat the original on the {len(held_at)} held-out case(s) "
            f"({result.heldout_after.describe()} vs {result.heldout_before.describe()})"
        )
        result.reason = f"{result.reason}; {verdict}" if result.reason else verdict


def _choose(config: RepairConfig, train_cases: int, labelled: int, settings: RepairSettings) -> str:
    from .optimizers import choose

    return choose(
        config, train_cases, labelled, proposer=settings.model is not None and not _is_bundled(settings.model)
    )


def _example(case: Case, index: int, variables: Iterable[str], output: str, label: str | None) -> Any:
    import dspy

    data: dict[str, Any] = {k: case.vars[k] for k in variables if k in case.vars}
    if label is not None:
        data[output] = label
    return dspy.Example(**data, case_index=index, case_name=case.name).with_inputs(
        *[k for k in variables if k in case.vars]
    )
