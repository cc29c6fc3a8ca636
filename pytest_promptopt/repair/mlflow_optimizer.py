"""The demonstration repair as an MLflow prompt optimiser, for `mlflow.genai.optimize_prompts`.

It does what `--promptopt-repair` does with demonstrations, but it goes through MLflow's `eval_fn`
(the user's `predict_fn` and scorers) instead of the plugin's models and assertions:
1. the records are split, seeded, into the optimiser's part and a held-out part (`run.split_cases`);
2. the original prompt is scored on every record;
3. random search: demo sets drawn (seeded) from the optimiser's records, each composed into the
   template (`template.compose`) and scored on the optimiser's records;
4. the best set is scored on the held-out records. It is returned only if it beats the original
   there; otherwise the original is returned.

How the demonstrations are written. `optimize_prompts` registers the result under the prompt's
own type, and the user's `predict_fn` formats it with `PromptVersion.format`. So a chat prompt
gets them as chat turns, as the plugin proposes them. A text prompt stays text (its
`predict_fn` sends one string): the same turns are written out as examples before the task.
MLflow's `{{var}}` substitution has no escape, so in such a template a record whose text would
read as template code (`{{`, `{%`, `{#`) is not shown. A Jinja template (one with `{% %}`, which
MLflow renders with Jinja) shows such a record escaped (`template.escape_literal`).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

try:
    from mlflow.entities.model_registry import PromptVersion
    from mlflow.exceptions import MlflowException
    from mlflow.genai.optimize.optimizers import BasePromptOptimizer
    from mlflow.genai.optimize.types import EvaluationResultRecord, PromptOptimizerOutput
    from mlflow.prompt.constants import PROMPT_TEMPLATE_VARIABLE_PATTERN
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("DemoRepairOptimizer needs MLflow: pip install 'pytest-promptopt[mlflow]'") from exc

from ..prompt import TemplateError, render_template
from .run import split_cases
from .template import Demo, asked_index, compose, has_template_code, is_chat

__all__ = ["DemoRepairOptimizer", "DemoRepairReport"]

_logger = logging.getLogger(__name__)

_EvalFn = Callable[[dict[str, str], list[dict[str, Any]]], list[EvaluationResultRecord]]

# How a text prompt shows its demonstrations (a chat prompt shows them as turns, with no words added).
EXAMPLES_HEADER = "Examples:"
ANSWER_LABEL = "Answer: "
TASK_HEADER = "Task:"


@dataclass
class DemoRepairReport:
    """What the last `optimize` call did, for review (also logged as `promptopt_demo_repair.json`).

    Record positions index `train_data`; scores are mean `eval_fn` scores (None without scorers).
    """

    prompt: str
    status: str = "kept"  # "repaired": the demonstrations are returned; "kept": the original is
    reason: str = ""
    optimizer_records: list[int] = field(default_factory=list)
    heldout_records: list[int] = field(default_factory=list)
    demos: list[dict[str, Any]] = field(default_factory=list)  # the best set (returned only when "repaired")
    tried: list[dict[str, Any]] = field(default_factory=list)  # each demo set: record positions, in-sample score
    skipped: dict[int, str] = field(default_factory=dict)  # optimiser records not usable as demos, and why
    insample_before: float | None = None
    insample_after: float | None = None
    heldout_before: float | None = None
    heldout_after: float | None = None
    eval_records: int = 0  # records passed to eval_fn (each one predict_fn call)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = {str(k): v for k, v in self.skipped.items()}
        return data


class DemoRepairOptimizer(BasePromptOptimizer):
    """pytest-promptopt's demonstration repair for `mlflow.genai.optimize_prompts`.

    Random search over demonstration sets drawn from `train_data` (each record's `outputs`, else
    its `expectations["expected_response"]`, is the answer a demonstration shows). The best set by
    in-sample score is returned only if it also beats the original prompt on the held-out records.

    Args:
        max_demos: most demonstrations in one set.
        candidates: demo sets tried (the first is the first `max_demos` records of a seeded shuffle).
        heldout: share of the records kept out of the search, to judge the winner on.
        seed: seeds the split and the demo sets.
        budget: most records passed to `eval_fn` (each one `predict_fn` call), original included.

    Example::

        result = mlflow.genai.optimize_prompts(
            predict_fn=predict_fn, train_data=records, prompt_uris=[prompt.uri],
            optimizer=DemoRepairOptimizer(seed=0), scorers=[exact_match])
        print(result.optimized_prompts[0].template)
    """

    def __init__(
        self, max_demos: int = 4, candidates: int = 6, heldout: float = 0.4, seed: int = 0, budget: int = 300
    ) -> None:
        if max_demos < 1:
            raise ValueError(f"max_demos must be at least 1, got {max_demos}")
        if candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {candidates}")
        if not 0 < heldout < 1:
            raise ValueError(f"heldout must be between 0 and 1 (a share of the records), got {heldout}")
        if budget < 1:
            raise ValueError(f"budget must be at least 1 record, got {budget}")
        self.max_demos, self.candidates, self.heldout, self.seed, self.budget = (
            max_demos,
            candidates,
            heldout,
            seed,
            budget,
        )
        self.last_report: DemoRepairReport | None = None

    def optimize(
        self,
        eval_fn: _EvalFn | None,
        train_data: list[dict[str, Any]],
        target_prompts: dict[str, str],
        enable_tracking: bool = True,
    ) -> PromptOptimizerOutput:
        if len(target_prompts) != 1:
            raise MlflowException.invalid_parameter_value(
                f"DemoRepairOptimizer repairs one prompt at a time, got {len(target_prompts)}: a record's output is "
                "the answer of the prompt whose demonstration it becomes. Pass a single prompt URI."
            )
        name, template = next(iter(target_prompts.items()))
        report = DemoRepairReport(prompt=name)
        self.last_report = report
        output = self._optimize(eval_fn, list(train_data), name, template, report)
        _logger.info("%s: %s (%s)", name, report.status, report.reason)
        if enable_tracking:
            _log(report)
        return output

    def _optimize(
        self, eval_fn: _EvalFn | None, records: list[dict[str, Any]], name: str, template: str, report: DemoRepairReport
    ) -> PromptOptimizerOutput:
        original = PromptOptimizerOutput(optimized_prompts={name: template})
        if eval_fn is None or len(records) < 2:
            report.reason = "a repair needs at least 2 training records: some to learn from, some to judge on"
            return original
        train_at, held_at = split_cases(len(records), self.heldout, self.seed)
        report.optimizer_records, report.heldout_records = train_at, held_at
        if len(records) + len(train_at) + len(held_at) > self.budget:
            report.reason = (
                f"the budget ({self.budget} records) does not cover scoring the original and one demo "
                f"set ({2 * len(records)} records); raise budget"
            )
            return original

        def evaluate(candidate: str, positions: Sequence[int]) -> list[EvaluationResultRecord]:
            report.eval_records += len(positions)
            return eval_fn({name: candidate}, [records[i] for i in positions])

        before = evaluate(template, range(len(records)))
        original = _output(name, template, before, before)
        report.insample_before = _mean([before[i] for i in train_at])
        report.heldout_before = _mean([before[i] for i in held_at])
        if report.insample_before is None or report.heldout_before is None:
            report.reason = "eval_fn returned no scores (optimize_prompts was given no scorers): nothing to compare"
            return original

        # optimize_prompts hands a chat prompt over as its JSON list of messages. (A text prompt whose
        # text is such a list is taken for one too: it gets turns, still valid in its own format.)
        chat = is_chat(template)
        pool: list[int] = []
        demos: dict[int, Demo] = {}
        for i in train_at:
            demo = _demo(records[i], i, template, chat)
            if isinstance(demo, str):
                report.skipped[i] = demo
            else:
                pool.append(i)
                demos[i] = demo
        if not pool:
            report.reason = "no optimiser record can be shown as a demonstration: " + (
                "; ".join(f"record {i}: {why}" for i, why in report.skipped.items()) or "none has an answer"
            )
            return original

        best: tuple[float, tuple[int, ...], str, list[EvaluationResultRecord]] | None = None
        for chosen in _demo_sets(pool, self.max_demos, self.candidates, random.Random(self.seed)):
            if report.eval_records + len(train_at) + len(held_at) > self.budget:
                break
            candidate = _candidate(template, [demos[i] for i in chosen], chat)
            if candidate is None:
                continue
            results = evaluate(candidate, train_at)
            score = _mean(results)
            report.tried.append({"records": list(chosen), "insample_score": score})
            if score is not None and (best is None or score > best[0]):
                best = (score, chosen, candidate, results)
        if best is None:
            report.reason = f"no demo set fit the budget ({self.budget} records) and composed into a valid prompt"
            return original
        score, chosen, candidate, insample = best
        report.insample_after = score
        report.demos = [demos[i].to_dict() for i in chosen]
        if score <= report.insample_before:
            report.reason = (
                f"no demo set beat the original on the {len(train_at)} optimiser record(s) "
                f"({score:.3f} vs {report.insample_before:.3f})"
            )
            return original
        held = evaluate(candidate, held_at)
        report.heldout_after = _mean(held)
        if report.heldout_after is None or report.heldout_after <= report.heldout_before:
            report.reason = (
                f"the best demo set does not beat the original on the {len(held_at)} held-out record(s) "
                f"({_describe(report.heldout_after)} vs {report.heldout_before:.3f})"
            )
            return original
        report.status = "repaired"
        report.reason = (
            f"{len(chosen)} demonstration(s): held-out score {report.heldout_after:.3f} vs "
            f"{report.heldout_before:.3f} over {len(held_at)} record(s)"
        )
        after: list[Any] = [None] * len(records)
        for i, result in zip(train_at, insample):
            after[i] = result
        for i, result in zip(held_at, held):
            after[i] = result
        return _output(name, candidate, before, after)


def _answer(record: Mapping[str, Any]) -> str | None:
    """The answer a record's demonstration shows: its `outputs`, else `expectations["expected_response"]`."""
    value = record.get("outputs")
    if _missing(value):
        expectations = record.get("expectations")
        value = expectations.get("expected_response") if isinstance(expectations, Mapping) else expectations
    if _missing(value):
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _missing(value: Any) -> bool:
    # train_data comes from a DataFrame: a column some records lack holds NaN for them.
    return value is None or (isinstance(value, float) and math.isnan(value))


def _jinja(template: str | list[dict[str, Any]]) -> bool:
    """Whether MLflow formats `template` with Jinja, as `_is_jinja2_template` decides in MLflow 3.17
    (otherwise it substitutes `{{var}}` only, with no escape)."""
    if isinstance(template, str):
        return "{%" in template and "%}" in template
    return any("{%" in str(m.get("content", "")) and "%}" in str(m.get("content", "")) for m in template)


def _demo(record: Mapping[str, Any], index: int, template: str, chat: bool) -> Demo | str:
    """Record `index` as a demonstration, or why it cannot be one.

    Its user turn must be exactly what `predict_fn` sends for it: the plugin's rendering (in
    `compose`) is checked against `PromptVersion.format`, MLflow's own.
    """
    inputs = record.get("inputs")
    if not isinstance(inputs, Mapping):
        return "its inputs are not a dict"
    answer = _answer(record)
    if answer is None:
        return "it has no outputs or expectations['expected_response']"
    structure: str | list[dict[str, Any]] = json.loads(template) if chat else template
    try:
        formatted = PromptVersion(name="demo", version=1, template=structure).format(**inputs)
    except Exception as exc:  # MlflowException (missing variables) or a Jinja error
        return f"the prompt does not format with its inputs: {exc}"
    asked = structure[asked_index(structure)]["content"] if chat else structure
    shown = formatted[asked_index(structure)]["content"] if chat else formatted
    try:
        rendered = render_template(str(asked), inputs)
    except TemplateError as exc:
        return f"the prompt does not render with its inputs: {exc}"
    if rendered != shown:
        return "MLflow formats this prompt differently from a Jinja rendering (filters or expressions)"
    if not _jinja(structure):
        for text in (rendered, answer):
            if has_template_code(text) or "%}" in text:
                return "its text reads as template code, and a {{var}} template cannot escape it"
    return Demo(dict(inputs), answer, f"record {index}")


def _candidate(template: str, demos: Sequence[Demo], chat: bool) -> str | None:
    """`template` with `demos` composed in, in the prompt's own type; None if it would change the
    prompt's variables or how MLflow formats it (a safety net: `_demo` already excludes both)."""
    if chat:
        candidate = compose(template, demos)
    else:
        # A text prompt is one user message; its demonstrations are written out before it.
        messages = json.loads(compose(json.dumps([{"role": "user", "content": template}]), demos))
        *turns, task = messages
        examples = [
            f"{user['content']}\n{ANSWER_LABEL}{answer['content']}" for user, answer in zip(turns[::2], turns[1::2])
        ]
        candidate = f"{EXAMPLES_HEADER}\n\n" + "\n\n".join(examples) + f"\n\n{TASK_HEADER}\n\n{task['content']}"
    original: str | list[dict[str, Any]] = json.loads(template) if chat else template
    proposed: str | list[dict[str, Any]] = json.loads(candidate) if chat else candidate
    if _jinja(original) != _jinja(proposed):
        return None
    if not _jinja(original) and set(PROMPT_TEMPLATE_VARIABLE_PATTERN.findall(candidate)) != set(
        PROMPT_TEMPLATE_VARIABLE_PATTERN.findall(template)
    ):
        return None
    return candidate


def _demo_sets(pool: Sequence[int], max_demos: int, count: int, rng: random.Random) -> list[tuple[int, ...]]:
    """`count` distinct demo sets from `pool` (record positions): the first `max_demos` of a seeded
    shuffle, then random subsets of random size, as DSPy's random search draws them."""
    size = min(max_demos, len(pool))
    shuffled = list(pool)
    rng.shuffle(shuffled)
    sets = [tuple(shuffled[:size])]
    seen = {frozenset(sets[0])}
    for _ in range(20 * count):  # a small pool has fewer distinct subsets than asked for
        if len(sets) >= count:
            break
        chosen = tuple(rng.sample(list(pool), rng.randint(1, size)))
        if frozenset(chosen) not in seen:
            seen.add(frozenset(chosen))
            sets.append(chosen)
    return sets


def _mean(results: Sequence[EvaluationResultRecord]) -> float | None:
    scores = [r.score for r in results]
    if not scores or any(s is None for s in scores):
        return None
    return float(sum(scores) / len(scores))


def _per_scorer(results: Sequence[EvaluationResultRecord]) -> dict[str, float]:
    names = set().union(*(r.individual_scores for r in results)) if results else set()
    means: dict[str, float] = {}
    for name in sorted(names):
        scores = [r.individual_scores[name] for r in results if name in r.individual_scores]
        means[name] = float(sum(scores) / len(scores))
    return means


def _output(
    name: str, template: str, before: Sequence[EvaluationResultRecord], after: Sequence[EvaluationResultRecord]
) -> PromptOptimizerOutput:
    """Initial and final scores over every training record (the final one: the returned prompt's)."""
    return PromptOptimizerOutput(
        optimized_prompts={name: template},
        initial_eval_score=_mean(before),
        final_eval_score=_mean(after),
        initial_eval_score_per_scorer=_per_scorer(before),
        final_eval_score_per_scorer=_per_scorer(after),
    )


def _describe(score: float | None) -> str:
    return "no score" if score is None else f"{score:.3f}"


def _log(report: DemoRepairReport) -> None:
    """The held-out scores and the report, in the run `optimize_prompts` opened."""
    import mlflow

    if mlflow.active_run() is None:
        return
    metrics = {
        "promptopt.heldout_initial_score": report.heldout_before,
        "promptopt.heldout_final_score": report.heldout_after if report.status == "repaired" else report.heldout_before,
        "promptopt.eval_records": float(report.eval_records),
    }
    mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
    mlflow.log_dict(report.to_dict(), "promptopt_demo_repair.json")
