"""The judges' side of the model-graded assertions: the judge prompts, and reading verdicts from
the judges' answers.

The prompts are worded after promptfoo's grading prompts (and, for factuality and closed QA, the
OpenAI evals prompts promptfoo uses), asking for the same answers. The graders that send them
are in `model_graded.py`.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from .base import AssertionEvaluationError, Grade

__all__ = [
    "CLOSED_QA_PROMPT",
    "FACTUALITY_CATEGORIES",
    "FACTUALITY_KEYS",
    "FACTUALITY_PROMPT",
    "G_EVAL_MAX_SCORE",
    "G_EVAL_PROMPT",
    "G_EVAL_STEPS_PROMPT",
    "RELEVANCE_EXAMPLES",
    "RELEVANCE_SYSTEM",
    "RUBRIC_EXAMPLES",
    "RUBRIC_SYSTEM",
    "as_number",
    "factuality_answer",
    "first_json_object",
    "json_verdict",
    "relevance_turn",
    "rubric_turn",
    "unreadable",
    "verdict_fields",
]

G_EVAL_MAX_SCORE = 10
FACTUALITY_KEYS = {"A": "subset", "B": "superset", "C": "agree", "D": "disagree", "E": "differButFactual"}
FACTUALITY_CATEGORIES = {
    "A": "The submission is a subset of the expert answer and fully consistent with it.",
    "B": "The submission is a superset of the expert answer and fully consistent with it.",
    "C": "The submission contains all the same details as the expert answer.",
    "D": "The submission and the expert answer disagree.",
    "E": "The answers differ, but the differences do not matter for factuality.",
}

# ----------------------------------------------------------------------------- judge prompts

RUBRIC_SYSTEM = """You grade an output against a rubric written by the user. The output passes when the statement in the rubric is true of it. Answer with one JSON object and nothing else: {"reason": "<why>", "pass": true or false, "score": <a number from 0.0 to 1.0>}."""


def rubric_turn(output: str, rubric: str) -> dict[str, str]:
    return {"role": "user", "content": f"<Output>\n{output}\n</Output>\n<Rubric>\n{rubric}\n</Rubric>"}


# Two worked examples as chat turns (promptfoo writes them into the system message): even a small
# model then answers with a bare JSON verdict.
RUBRIC_EXAMPLES = [
    rubric_turn("Good morning! How can I help you today?", "Greets the user"),
    {
        "role": "assistant",
        "content": '{"reason": "the output opens with \'Good morning\'", "pass": true, "score": 1.0}',
    },
    rubric_turn("Arr matey, hoist the sails!", "Does not speak like a pirate"),
    {"role": "assistant", "content": '{"reason": "\'Arr matey\' is pirate speech", "pass": false, "score": 0.0}'},
]

RELEVANCE_SYSTEM = """You judge whether an answer responds to the question it was given. Do not judge whether it is correct: only whether it stays on the question and addresses what was asked. Answer with one JSON object and nothing else: {"reason": "<why>", "pass": true or false, "score": <from 0.0 (unrelated to the question) to 1.0 (answers exactly what was asked)>}."""


def relevance_turn(question: str, answer: str) -> dict[str, str]:
    return {"role": "user", "content": f"<Question>\n{question}\n</Question>\n<Answer>\n{answer}\n</Answer>"}


RELEVANCE_EXAMPLES = [
    relevance_turn("How many legs does a spider have?", "Spiders have eight legs."),
    {"role": "assistant", "content": '{"reason": "it gives the number of legs asked for", "pass": true, "score": 1.0}'},
    relevance_turn("How many legs does a spider have?", "Spiders are often found in gardens."),
    {
        "role": "assistant",
        "content": '{"reason": "it talks about spiders but not their legs", "pass": false, "score": 0.1}',
    },
]

FACTUALITY_PROMPT = """You compare a submitted answer with an expert answer to a question. Here is the data:
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

CLOSED_QA_PROMPT = """You assess a submitted answer to a task against a criterion. Here is the data:
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

G_EVAL_STEPS_PROMPT = """From the evaluation criteria below, which say how a text should be judged, write 3 to 4 short evaluation steps for judging any text by them.

Evaluation criteria:
{criteria}

Answer with minified JSON only, with a "steps" key holding a list of strings, and nothing else:
{{"steps": ["<step>", "<step>"]}}"""

G_EVAL_PROMPT = """You will be given a reply to a prompt. Rate the reply on one metric. Read these instructions carefully and keep them in mind while you judge.

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


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def unreadable(kind: str, judge: str, text: str, what: str = "a verdict") -> AssertionEvaluationError:
    shown = text.strip().replace("\n", " ")
    shown = shown if len(shown) <= 300 else shown[:300] + "..."
    return AssertionEvaluationError(f"{kind}: could not read {what} from judge {judge}'s answer: {shown!r}")


def json_verdict(data: Mapping[str, Any], threshold: float | None, kind: str, judge: str, text: str) -> Grade:
    """promptfoo's reading of a `{"reason", "pass", "score"}` verdict: a missing score is 1/0
    from `pass`; a missing `pass` is `score >= threshold` (0.5 without one); with a threshold,
    the verdict also needs `score >= threshold`."""
    passed = _as_bool(data.get("pass", data.get("passed")))
    score = as_number(data.get("score"))
    if passed is None and score is None:
        raise unreadable(kind, judge, text)
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


def factuality_answer(text: str) -> tuple[str | None, str]:
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
