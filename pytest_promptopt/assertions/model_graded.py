"""Model-graded assertions: a judge model reads the output (`llm-rubric`, `g-eval`,
`factuality`, `answer-relevance`, `closed-qa`), with promptfoo's semantics.

The judge is `ctx.judge` (a `judging.Judge`, handed in by the runner): the assertion's
`provider`, else the test's `options.provider`, else the run's judge model, called through the
response cache. A context without a judge cannot grade these types. A judge that fails, or
answers with no verdict that can be read, makes the case an *error* (nothing was learnt about
the output), never a failure, also under `not-`. The judge prompts and the reading of verdicts
are in `judge_prompts.py`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..models.base import ModelError, Request
from ..models.specs import model_name, provider_spec
from ..prompt import TemplateError, render_prompt
from ..redact import scrub
from .base import Assertion, AssertionConfigError, AssertionContext, AssertionEvaluationError, Grade, register
from .judge_prompts import (
    CLOSED_QA_PROMPT,
    FACTUALITY_CATEGORIES,
    FACTUALITY_KEYS,
    FACTUALITY_PROMPT,
    G_EVAL_MAX_SCORE,
    G_EVAL_PROMPT,
    G_EVAL_STEPS_PROMPT,
    RELEVANCE_EXAMPLES,
    RELEVANCE_SYSTEM,
    RUBRIC_EXAMPLES,
    RUBRIC_SYSTEM,
    as_number,
    factuality_answer,
    first_json_object,
    json_verdict,
    relevance_turn,
    rubric_turn,
    unreadable,
    verdict_fields,
)

__all__ = ["FACTUALITY_SCORES", "G_EVAL_THRESHOLD", "ask_judge"]

G_EVAL_THRESHOLD = 0.7  # promptfoo's default
FACTUALITY_SCORES = {"subset": 1.0, "superset": 1.0, "agree": 1.0, "disagree": 0.0, "differButFactual": 1.0}


# ----------------------------------------------------------------------------- calling the judge


def ask_judge(
    ctx: AssertionContext, assertion: Assertion, prompt: str | Sequence[Mapping[str, str]], kind: str
) -> tuple[str, str]:
    """The judge's answer text and name. No judge in `ctx`, a judge fault or an empty answer is an error."""
    judge = ctx.judge
    if judge is None:
        raise AssertionEvaluationError(
            f"{kind}: no judge model in this context (model-graded assertions are graded under "
            "`pytest --promptopt`, whose judge is --promptopt-judge-model; elsewhere, give the "
            "AssertionContext a judge)"
        )
    request = Request.from_prompt(prompt)
    try:
        model = judge.model(assertion.provider)
        name = model_name(model)
        response = judge.fetch(model, request)
    except ModelError as exc:
        raise AssertionEvaluationError(f"{kind}: the judge failed: {scrub(str(exc))}") from None
    text = response.text or ""
    if not text.strip():
        raise AssertionEvaluationError(f"{kind}: judge {name} returned an empty answer")
    return text, name


def _custom_prompt(assertion: Assertion, key: str | None = None) -> Any:
    config = assertion.config or {}
    prompt = config.get("rubric_prompt", config.get("rubricPrompt"))
    if key is not None:
        return prompt.get(key) if isinstance(prompt, Mapping) else None
    return prompt if not isinstance(prompt, Mapping) else None


def _render(template: Any, variables: Mapping[str, Any], default: str | list[dict[str, str]], where: str) -> Any:
    """The judge prompt: `config.rubric_prompt` rendered with the grading variables (a JSON chat
    prompt or text, as a suite's prompts), else the built-in one."""
    if template is None:
        return default
    text = template if isinstance(template, str) else json.dumps(template, ensure_ascii=False)
    try:
        return render_prompt(text, variables)
    except TemplateError as exc:
        raise AssertionEvaluationError(f"{where}: rubric_prompt {exc}") from None


def _question(ctx: AssertionContext) -> str:
    """The case's input: `vars.query` when set (promptfoo), else the last user message of the prompt."""
    query = ctx.vars.get("query") if isinstance(ctx.vars, Mapping) else None
    if query is not None:
        return str(query)
    users = [m["content"] for m in Request.from_prompt(ctx.prompt).messages if m.get("role") == "user"]
    return users[-1] if users else ctx.prompt


def _variables(output: str, ctx: AssertionContext, **extra: Any) -> dict[str, Any]:
    variables: dict[str, Any] = dict(ctx.vars) if isinstance(ctx.vars, Mapping) else {}
    variables.update(output=output, prompt=ctx.prompt, input=_question(ctx), vars=dict(variables), **extra)
    return variables


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# ----------------------------------------------------------------------------- load-time checks


def _check(assertion: Assertion) -> None:
    where = assertion.where or assertion.type
    try:
        provider_spec(assertion.provider, f"{where}: provider")
    except ValueError as exc:
        message = str(exc)
        raise AssertionConfigError(message if message.startswith(where) else f"{where}: {message}") from None
    if assertion.config is not None and not isinstance(assertion.config, Mapping):
        raise AssertionConfigError(f"{where}: config must be a mapping")
    prompt = (assertion.config or {}).get("rubric_prompt", (assertion.config or {}).get("rubricPrompt"))
    if prompt is not None and not isinstance(prompt, (str, list, Mapping)):
        raise AssertionConfigError(
            f"{where}: config.rubric_prompt must be a template string or a list of chat messages"
        )


def _check_text(assertion: Assertion) -> None:
    _check(assertion)
    value = assertion.value
    if isinstance(value, str) and not value.strip():
        raise AssertionConfigError(f"{assertion.where or assertion.type}: '{assertion.type}' needs a non-empty 'value'")


def _check_g_eval(assertion: Assertion) -> None:
    _check_text(assertion)
    where = assertion.where or assertion.type
    value = assertion.value
    if isinstance(value, list) and (not value or not all(isinstance(v, str) and v.strip() for v in value)):
        raise AssertionConfigError(f"{where}: g-eval criteria must be a string or a non-empty list of strings")
    if not isinstance(value, (str, list)):
        raise AssertionConfigError(f"{where}: g-eval criteria must be a string or a list of strings")
    steps = (assertion.config or {}).get("steps")
    if steps is not None and (
        not isinstance(steps, list) or not steps or not all(isinstance(s, str) and s.strip() for s in steps)
    ):
        raise AssertionConfigError(f"{where}: config.steps must be a non-empty list of strings")


def _check_factuality(assertion: Assertion) -> None:
    _check_text(assertion)
    scores = (assertion.config or {}).get("factuality")
    if scores is None:
        return
    where = assertion.where or assertion.type
    if not isinstance(scores, Mapping) or set(scores) - set(FACTUALITY_SCORES):
        raise AssertionConfigError(f"{where}: config.factuality maps {', '.join(FACTUALITY_SCORES)} to scores")
    for key, score in scores.items():
        if as_number(score) is None or not 0 <= float(score) <= 1:
            raise AssertionConfigError(f"{where}: config.factuality.{key} must be a number from 0 to 1")


# ----------------------------------------------------------------------------- graders


@register("llm-rubric", check=_check_text, judge_calls=1, model_graded=True)
def llm_rubric(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    rubric = _text(assertion.value)
    default = [{"role": "system", "content": RUBRIC_SYSTEM}, *RUBRIC_EXAMPLES, rubric_turn(output, rubric)]
    prompt = _render(
        _custom_prompt(assertion), _variables(output, ctx, rubric=rubric), default, assertion.where or "llm-rubric"
    )
    text, judge = ask_judge(ctx, assertion, prompt, "llm-rubric")
    data = verdict_fields(text)
    if data is None:
        raise unreadable("llm-rubric", judge, text)
    return json_verdict(data, assertion.threshold, "llm-rubric", judge, text)


@register("answer-relevance", needs_value=False, check=_check, judge_calls=1, model_graded=True)
def answer_relevance(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    # promptfoo embeds questions the judge derives from the output; this judge scores the
    # answer's relevance to the question directly (no embedding model needed).
    query = _question(ctx)
    default = [{"role": "system", "content": RELEVANCE_SYSTEM}, *RELEVANCE_EXAMPLES, relevance_turn(query, output)]
    prompt = _render(
        _custom_prompt(assertion), _variables(output, ctx, query=query), default, assertion.where or "answer-relevance"
    )
    text, judge = ask_judge(ctx, assertion, prompt, "answer-relevance")
    data = verdict_fields(text)
    if data is None:
        raise unreadable("answer-relevance", judge, text)
    return json_verdict(data, assertion.threshold, "answer-relevance", judge, text)


def _factuality(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    kind = assertion.type
    reference = _text(assertion.value)
    options = "\n".join(f"({letter}) {text}" for letter, text in FACTUALITY_CATEGORIES.items())
    default = [
        {
            "role": "user",
            "content": FACTUALITY_PROMPT.format(
                input=_question(ctx), ideal=reference, completion=output, options=options
            ),
        }
    ]
    variables = _variables(output, ctx, ideal=reference, reference=reference, completion=output)
    prompt = _render(_custom_prompt(assertion), variables, default, assertion.where or kind)
    text, judge = ask_judge(ctx, assertion, prompt, kind)
    category, reason = factuality_answer(text)
    if category is None:
        raise unreadable(kind, judge, text, "a category (A-E)")
    scores = {
        **FACTUALITY_SCORES,
        **{k: float(v) for k, v in ((assertion.config or {}).get("factuality") or {}).items()},
    }
    score = scores[FACTUALITY_KEYS[category]]
    passed = score > 0 if assertion.threshold is None else score >= assertion.threshold
    reason = reason or f"Category {category}: {FACTUALITY_CATEGORIES[category]}"
    return Grade(passed, score, reason)


register("factuality", check=_check_factuality, judge_calls=1, model_graded=True)(_factuality)
register("model-graded-factuality", check=_check_factuality, judge_calls=1, model_graded=True)(_factuality)


def _closed_qa(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    kind = assertion.type
    criterion = _text(assertion.value)
    default = [
        {
            "role": "user",
            "content": CLOSED_QA_PROMPT.format(input=_question(ctx), completion=output, criteria=criterion),
        }
    ]
    variables = _variables(output, ctx, criteria=criterion, rubric=criterion, completion=output)
    prompt = _render(_custom_prompt(assertion), variables, default, assertion.where or kind)
    text, judge = ask_judge(ctx, assertion, prompt, kind)
    # promptfoo: the answer ends with Y (meets the criterion) or N.
    ending = re.sub(r"[\s\"'.*`]+$", "", text)
    if ending.endswith("Y"):
        return Grade(True, 1.0, f"The submission meets the criterion:\n{text.strip()}")
    if ending.endswith("N"):
        return Grade(False, 0.0, f"The submission does not meet the criterion:\n{text.strip()}")
    raise unreadable(kind, judge, text, "a final Y or N")


register("closed-qa", check=_check_text, judge_calls=1, model_graded=True)(_closed_qa)
register("model-graded-closedqa", check=_check_text, judge_calls=1, model_graded=True)(_closed_qa)


@register("g-eval", check=_check_g_eval, judge_calls=2, model_graded=True)  # its steps, then the score
def g_eval(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    """G-Eval (promptfoo): the judge writes evaluation steps for each criterion (unless
    `config.steps` gives them), then scores the output from 0 to 10 by them; the score is the
    mean over the criteria / 10, and passes at `threshold` (default 0.7)."""
    criteria = assertion.value if isinstance(assertion.value, list) else [_text(assertion.value)]
    threshold = assertion.threshold if assertion.threshold is not None else G_EVAL_THRESHOLD
    given_steps = (assertion.config or {}).get("steps")
    scores, reasons = [], []
    for criterion in criteria:
        steps = list(given_steps) if given_steps else _g_eval_steps(criterion, output, assertion, ctx)
        variables = _variables(
            output,
            ctx,
            criteria=criterion,
            steps="\n- ".join(steps),
            max_score=G_EVAL_MAX_SCORE,
            maxScore=G_EVAL_MAX_SCORE,
        )
        default = [
            {
                "role": "user",
                "content": G_EVAL_PROMPT.format(
                    criteria=criterion,
                    steps=variables["steps"],
                    max_score=G_EVAL_MAX_SCORE,
                    input=_question(ctx),
                    output=output,
                ),
            }
        ]
        prompt = _render(_custom_prompt(assertion, "evaluate"), variables, default, assertion.where or "g-eval")
        text, judge = ask_judge(ctx, assertion, prompt, "g-eval")
        data = verdict_fields(text)
        score = as_number(data.get("score")) if data is not None else None
        if score is None:
            raise unreadable("g-eval", judge, text, "a score")
        scores.append(min(1.0, max(0.0, score / G_EVAL_MAX_SCORE)))
        reasons.append(str((data or {}).get("reason") or "").strip())
    score = sum(scores) / len(scores)
    passed = score >= threshold
    said = " | ".join(r for r in reasons if r)
    if passed:
        return Grade(True, score, said or "Grading passed")
    return Grade(False, score, f"Score {score:.2f} below threshold {threshold:g}" + (f": {said}" if said else ""))


def _g_eval_steps(criterion: str, output: str, assertion: Assertion, ctx: AssertionContext) -> list[str]:
    default = [{"role": "user", "content": G_EVAL_STEPS_PROMPT.format(criteria=criterion)}]
    prompt = _render(
        _custom_prompt(assertion, "steps"),
        _variables(output, ctx, criteria=criterion),
        default,
        assertion.where or "g-eval",
    )
    text, judge = ask_judge(ctx, assertion, prompt, "g-eval")
    data = first_json_object(text)
    steps = data.get("steps") if data is not None else None
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) and s.strip() for s in steps):
        raise unreadable("g-eval", judge, text, "evaluation steps")
    return [s.strip() for s in steps]
