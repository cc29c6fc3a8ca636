"""Model-graded assertions: a judge model reads the output (`llm-rubric`, `g-eval`,
`factuality`, `answer-relevance`, `closed-qa`), with promptfoo's semantics.

The judge is `ctx.judge` (see `judging.py`): the assertion's `provider`, else the test's
`options.provider`, else the run's judge model, called through the response cache. A judge that
fails, or answers with no verdict that can be read, makes the case an *error* (nothing was
learnt about the output), never a failure, also under `not-`.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..models.base import ModelError, Request
from ..redact import scrub
from .base import Assertion, AssertionConfigError, AssertionContext, AssertionEvaluationError, Grade, register

__all__ = ["JUDGED_TYPES", "first_json_object", "json_verdict", "verdict_fields"]

# Types that call a judge model (a test's `options.provider` applies to them).
JUDGED_TYPES = frozenset(
    {
        "llm-rubric",
        "g-eval",
        "factuality",
        "model-graded-factuality",
        "answer-relevance",
        "closed-qa",
        "model-graded-closedqa",
    }
)

G_EVAL_MAX_SCORE = 10
G_EVAL_THRESHOLD = 0.7  # promptfoo's default
FACTUALITY_KEYS = {"A": "subset", "B": "superset", "C": "agree", "D": "disagree", "E": "differButFactual"}
FACTUALITY_SCORES = {"subset": 1.0, "superset": 1.0, "agree": 1.0, "disagree": 0.0, "differButFactual": 1.0}
FACTUALITY_CATEGORIES = {
    "A": "The submission is a subset of the expert answer and fully consistent with it.",
    "B": "The submission is a superset of the expert answer and fully consistent with it.",
    "C": "The submission contains all the same details as the expert answer.",
    "D": "The submission and the expert answer disagree.",
    "E": "The answers differ, but the differences do not matter for factuality.",
}

# ----------------------------------------------------------------------------- judge prompts
# Worded after promptfoo's grading prompts (and, for factuality and closed QA, the OpenAI evals
# prompts promptfoo uses), asking for the same answers.

_RUBRIC_SYSTEM = """You grade an output against a rubric written by the user. The output passes when the statement in the rubric is true of it. Answer with one JSON object and nothing else: {"reason": "<why>", "pass": true or false, "score": <a number from 0.0 to 1.0>}."""


def _rubric_turn(output: str, rubric: str) -> dict[str, str]:
    return {"role": "user", "content": f"<Output>\n{output}\n</Output>\n<Rubric>\n{rubric}\n</Rubric>"}


# Two worked examples as chat turns (promptfoo writes them into the system message): even a small
# model then answers with a bare JSON verdict.
_RUBRIC_EXAMPLES = [
    _rubric_turn("Good morning! How can I help you today?", "Greets the user"),
    {
        "role": "assistant",
        "content": '{"reason": "the output opens with \'Good morning\'", "pass": true, "score": 1.0}',
    },
    _rubric_turn("Arr matey, hoist the sails!", "Does not speak like a pirate"),
    {"role": "assistant", "content": '{"reason": "\'Arr matey\' is pirate speech", "pass": false, "score": 0.0}'},
]

_RELEVANCE_SYSTEM = """You judge whether an answer responds to the question it was given. Do not judge whether it is correct: only whether it stays on the question and addresses what was asked. Answer with one JSON object and nothing else: {"reason": "<why>", "pass": true or false, "score": <from 0.0 (unrelated to the question) to 1.0 (answers exactly what was asked)>}."""


def _relevance_turn(question: str, answer: str) -> dict[str, str]:
    return {"role": "user", "content": f"<Question>\n{question}\n</Question>\n<Answer>\n{answer}\n</Answer>"}


_RELEVANCE_EXAMPLES = [
    _relevance_turn("How many legs does a spider have?", "Spiders have eight legs."),
    {"role": "assistant", "content": '{"reason": "it gives the number of legs asked for", "pass": true, "score": 1.0}'},
    _relevance_turn("How many legs does a spider have?", "Spiders are often found in gardens."),
    {
        "role": "assistant",
        "content": '{"reason": "it talks about spiders but not their legs", "pass": false, "score": 0.1}',
    },
]

_FACTUALITY = """You compare a submitted answer with an expert answer to a question. Here is the data:
[BEGIN DATA]
************
[Question]: {input}
************
[Expert]: {ideal}
************
[Submission]: {completion}
************
[END DATA]

Compare only the factual content of the submission with the expert answer, ignoring differences of style, grammar or punctuation. The submission may be a subset or a superset of the expert answer, or it may contradict it. Decide which case applies, and choose one option:
{options}

Answer with one JSON object and nothing else: {{"category": "<A, B, C, D or E>", "reason": "<why>"}}"""

_CLOSED_QA = """You assess a submitted answer to a task against a criterion. Here is the data:
[BEGIN DATA]
***
[Task]: {input}
***
[Submission]: {completion}
***
[Criterion]: {criteria}
***
[END DATA]
Does the submission meet the criterion? First reason step by step about the criterion, so that your conclusion is sound, without stating the answer at the start. Then write only the single letter "Y" or "N" (no quotes, no punctuation) on a line of its own, and repeat that letter alone on the last line.

Reasoning:"""

_G_EVAL_STEPS = """From the evaluation criteria below, which say how a text should be judged, write 3 to 4 short evaluation steps for judging any text by them.

Evaluation criteria:
{criteria}

Answer with minified JSON only, with a "steps" key holding a list of strings, and nothing else:
{{"steps": ["<step>", "<step>"]}}"""

_G_EVAL = """You will be given a reply to a prompt. Rate the reply on one metric. Read these instructions carefully and keep them in mind while you judge.

Evaluation criteria:
{criteria}

Evaluation steps:
- {steps}
- From these steps, return a JSON object with two keys: "score", from 0 to {max_score} ({max_score}: the reply fully meets the evaluation criteria as the steps check them; 0: it does not), and "reason", a short reason for the score that does not quote the score and names specific things in the reply.

Prompt:
{input}

Reply:
{output}

Answer with minified JSON only, with the keys "score" and "reason", and nothing else:
{{"score": 0, "reason": "<why>"}}"""


# ----------------------------------------------------------------------------- reading answers


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text` (code fences and surrounding prose are skipped), also
    written as a Python dict (`{'pass': True}`, as small models do); None when there is none."""
    decoder = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"\{", text)][:64]
    for start in starts:
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    for start in starts:
        end = _closing_brace(text, start)
        if end is None:
            continue
        try:
            value = ast.literal_eval(text[start : end + 1])
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def verdict_fields(text: str) -> dict[str, Any] | None:
    """The verdict in a judge's answer: its first JSON object, else, from a brace-opened answer
    whose JSON is broken (a small model's unescaped quote), the `pass`, `score` and `reason`
    fields read one by one; None when there is neither."""
    data = first_json_object(text)
    if data is not None or "{" not in text:
        return data
    found: dict[str, Any] = {}
    match = re.search(r"[\"']?\bpass(?:ed)?[\"']?\s*:\s*[\"']?(true|false|yes|no)\b", text, re.I)
    if match:
        found["pass"] = match.group(1).lower() in ("true", "yes")
    match = re.search(r"[\"']?\bscore[\"']?\s*:\s*[\"']?(-?\d+(?:\.\d+)?)", text, re.I)
    if match:
        found["score"] = float(match.group(1))
    if not found:
        return None
    match = re.search(
        r"[\"']?\breason[\"']?\s*:\s*[\"'](.*?)[\"']?\s*,\s*[\"']?(?:pass|passed|score)\b", text, re.I | re.S
    )
    if match:
        found["reason"] = match.group(1).strip()
    return found


def _closing_brace(text: str, start: int) -> int | None:
    depth, quote, escaped = 0, "", False
    for index in range(start, min(len(text), start + 20000)):
        char = text[index]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
    return None


def _as_bool(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    return bool(re.fullmatch(r"\s*(true|yes|pass|passed|y)\s*", str(value), re.I))


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _unreadable(kind: str, judge: str, text: str, what: str = "a verdict") -> AssertionEvaluationError:
    shown = text.strip().replace("\n", " ")
    shown = shown if len(shown) <= 300 else shown[:300] + "..."
    return AssertionEvaluationError(f"{kind}: could not read {what} from judge {judge}'s answer: {shown!r}")


def json_verdict(data: Mapping[str, Any], threshold: float | None, kind: str, judge: str, text: str) -> Grade:
    """promptfoo's reading of a `{"reason", "pass", "score"}` verdict: a missing score is 1/0
    from `pass`; a missing `pass` is `score >= threshold` (0.5 without one); with a threshold,
    the verdict also needs `score >= threshold`."""
    passed = _as_bool(data.get("pass", data.get("passed")))
    score = _as_number(data.get("score"))
    if passed is None and score is None:
        raise _unreadable(kind, judge, text)
    if score is None:
        score = 1.0 if passed else 0.0
    if passed is None:
        passed = score >= (threshold if threshold is not None else 0.5)
    elif threshold is not None:
        passed = passed and score >= threshold
    reason = str(data.get("reason") or "").strip()
    if not reason:
        reason = (
            "Grading passed"
            if passed
            else (
                f"Score {score:g} below threshold {threshold:g}"
                if threshold is not None
                else f"{kind}: judge {judge} failed the output"
            )
        )
    return Grade(passed, score, reason)


# ----------------------------------------------------------------------------- calling the judge


def ask_judge(
    ctx: AssertionContext, assertion: Assertion, prompt: str | Sequence[Mapping[str, str]], kind: str
) -> tuple[str, str]:
    """The judge's answer text and name. A judge fault or an empty answer is an error."""
    from ..judging import active, describe, is_model

    request = Request.from_prompt(prompt)
    judge = ctx.judge
    if judge is None and active() is not None:
        judge = active().bind()  # type: ignore[union-attr]
    try:
        if judge is not None:
            model = judge.model(assertion.provider)
            name = describe(model)
            response = judge.fetch(model, request)
        elif is_model(assertion.provider):
            model = assertion.provider
            name = describe(model)
            response = model.generate(request)
        else:
            raise AssertionEvaluationError(
                f"{kind} needs a judge model: run it under `pytest --promptopt` (the judge is --promptopt-judge-model), "
                "or give the assertion a model object as provider="
            )
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
    from ..prompt import TemplateError, render_prompt

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
    from ..judging import provider_spec

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
        if _as_number(score) is None or not 0 <= float(score) <= 1:
            raise AssertionConfigError(f"{where}: config.factuality.{key} must be a number from 0 to 1")


# ----------------------------------------------------------------------------- graders


@register("llm-rubric", check=_check_text)
def llm_rubric(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    rubric = _text(assertion.value)
    default = [{"role": "system", "content": _RUBRIC_SYSTEM}, *_RUBRIC_EXAMPLES, _rubric_turn(output, rubric)]
    prompt = _render(
        _custom_prompt(assertion), _variables(output, ctx, rubric=rubric), default, assertion.where or "llm-rubric"
    )
    text, judge = ask_judge(ctx, assertion, prompt, "llm-rubric")
    data = verdict_fields(text)
    if data is None:
        raise _unreadable("llm-rubric", judge, text)
    return json_verdict(data, assertion.threshold, "llm-rubric", judge, text)


@register("answer-relevance", needs_value=False, check=_check)
def answer_relevance(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    # promptfoo embeds questions the judge derives from the output; this judge scores the
    # answer's relevance to the question directly (no embedding model needed).
    query = _question(ctx)
    default = [{"role": "system", "content": _RELEVANCE_SYSTEM}, *_RELEVANCE_EXAMPLES, _relevance_turn(query, output)]
    prompt = _render(
        _custom_prompt(assertion), _variables(output, ctx, query=query), default, assertion.where or "answer-relevance"
    )
    text, judge = ask_judge(ctx, assertion, prompt, "answer-relevance")
    data = verdict_fields(text)
    if data is None:
        raise _unreadable("answer-relevance", judge, text)
    return json_verdict(data, assertion.threshold, "answer-relevance", judge, text)


def _factuality(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    kind = assertion.type
    reference = _text(assertion.value)
    options = "\n".join(f"({letter}) {text}" for letter, text in FACTUALITY_CATEGORIES.items())
    default = [
        {
            "role": "user",
            "content": _FACTUALITY.format(input=_question(ctx), ideal=reference, completion=output, options=options),
        }
    ]
    variables = _variables(output, ctx, ideal=reference, reference=reference, completion=output)
    prompt = _render(_custom_prompt(assertion), variables, default, assertion.where or kind)
    text, judge = ask_judge(ctx, assertion, prompt, kind)
    category, reason = _factuality_answer(text)
    if category is None:
        raise _unreadable(kind, judge, text, "a category (A-E)")
    scores = {
        **FACTUALITY_SCORES,
        **{k: float(v) for k, v in ((assertion.config or {}).get("factuality") or {}).items()},
    }
    score = scores[FACTUALITY_KEYS[category]]
    passed = score > 0 if assertion.threshold is None else score >= assertion.threshold
    reason = reason or f"Category {category}: {FACTUALITY_CATEGORIES[category]}"
    return Grade(passed, score, reason)


def _factuality_answer(text: str) -> tuple[str | None, str]:
    """The chosen category and the judge's reason: `{"category": "A", "reason": ...}`, else
    promptfoo's legacy reading (the first `(A)`..`(E)` in the text)."""
    data = first_json_object(text)
    if data is not None and isinstance(data.get("category"), str):
        letter = data["category"].strip().strip("()").upper()
        if letter in FACTUALITY_CATEGORIES:
            return letter, str(data.get("reason") or "").strip()
    match = re.search(r"\(\s*([A-Ea-e])\s*\)", text)
    if match is None:
        return None, ""
    return match.group(1).upper(), text[match.end() :].strip() or text.strip()


register("factuality", check=_check_factuality)(_factuality)
register("model-graded-factuality", check=_check_factuality)(_factuality)


def _closed_qa(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    kind = assertion.type
    criterion = _text(assertion.value)
    default = [
        {"role": "user", "content": _CLOSED_QA.format(input=_question(ctx), completion=output, criteria=criterion)}
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
    raise _unreadable(kind, judge, text, "a final Y or N")


register("closed-qa", check=_check_text)(_closed_qa)
register("model-graded-closedqa", check=_check_text)(_closed_qa)


@register("g-eval", check=_check_g_eval)
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
                "content": _G_EVAL.format(
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
        score = _as_number(data.get("score")) if data is not None else None
        if score is None:
            raise _unreadable("g-eval", judge, text, "a score")
        scores.append(min(1.0, max(0.0, score / G_EVAL_MAX_SCORE)))
        reasons.append(str((data or {}).get("reason") or "").strip())
    score = sum(scores) / len(scores)
    passed = score >= threshold
    said = " | ".join(r for r in reasons if r)
    if passed:
        return Grade(True, score, said or "Grading passed")
    return Grade(False, score, f"Score {score:.2f} below threshold {threshold:g}" + (f": {said}" if said else ""))


def _g_eval_steps(criterion: str, output: str, assertion: Assertion, ctx: AssertionContext) -> list[str]:
    default = [{"role": "user", "content": _G_EVAL_STEPS.format(criteria=criterion)}]
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
        raise _unreadable("g-eval", judge, text, "evaluation steps")
    return [s.strip() for s in steps]
