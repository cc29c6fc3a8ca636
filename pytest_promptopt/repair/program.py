"""The DSPy side of a repair: the user's template as a DSPy program, run through the plugin's models.

- `template_program`: one `dspy.Predict` whose signature's instructions are the user's template
  (instruction optimisers rewrite that text) and whose demos are the optimisers' demonstrations.
- `TemplateAdapter`: renders a call as the plugin does (`template.compose` + the sandboxed
  renderer), never DSPy's field markup; the whole completion is the output. It is scoped to the
  program's own calls, so proposer modules (MIPROv2, GEPA) keep DSPy's adapters.
- `ModelEngine`: a DSPy 3.4 engine answering through a plugin `Model` and the response cache,
  counting calls against the repair's budget. DSPy's own cache stays off: its key ignores the
  engine, and ours already knows the model.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..assertions.base import AssertionConfigError, AssertionEvaluationError
from ..assertions.scoring import CaseGrade, grade_case
from ..cache import CallStats, ResponseCache
from ..execute import grading_context, output_text, transformed
from ..judging import Judge, Judges
from ..models.base import Model, ModelError, Request, Response
from ..prompt import Rendering
from ..repair_result import Calls
from ..sandbox import Sandbox, ScriptFault, sandbox_for
from ..suite.model import Case
from .template import Demo, render_composed

__all__ = [
    "Budget",
    "BudgetExhausted",
    "ModelEngine",
    "budgeted_judge",
    "build_lm",
    "case_metric",
    "feedback_metric",
    "grade_output",
    "output_field",
    "template_program",
]


class BudgetExhausted(ModelError):
    """The repair spent its model-call budget; the optimiser stops, its result so far is kept."""


class Budget:
    """Model calls (cache misses) a repair may still make, shared by the task and proposer engines."""

    def __init__(self, limit: int, spent: Calls | None = None) -> None:
        self.limit = limit
        self.spent = spent or Calls()
        self.exhausted = False
        self._lock = threading.Lock()

    def reserve(self, role: str) -> None:
        with self._lock:
            if self.spent.total >= self.limit:
                self.exhausted = True
                raise BudgetExhausted(f"repair budget of {self.limit} model calls spent (--promptopt-repair-budget)")
            setattr(self.spent, f"{role}_calls", getattr(self.spent, f"{role}_calls") + 1)

    def tokens(self, role: str, response: Response) -> None:
        used = (response.prompt_tokens or 0) + (response.completion_tokens or 0)
        with self._lock:
            setattr(self.spent, f"{role}_tokens", getattr(self.spent, f"{role}_tokens") + used)

    def hit(self) -> None:
        with self._lock:
            self.spent.cache_hits += 1


class _Budgeted:
    """A model that asks the budget before each real call (the cache calls it only on a miss)."""

    def __init__(self, model: Model, budget: Budget, role: Literal["task", "proposer", "judge"]) -> None:
        self.model, self.budget, self.role = model, budget, role
        self.name = model.name

    @property
    def cache_identity(self) -> Mapping[str, Any]:
        return self.model.cache_identity  # same keys as the run: the original prompt's answers are reused

    @property
    def cacheable(self) -> bool:
        return getattr(self.model, "cacheable", True)

    def generate(self, request: Request) -> Response:
        self.budget.reserve(self.role)
        response = self.model.generate(request)
        self.budget.tokens(self.role, response)
        return response


class _BudgetedJudge(Judge):
    """The session's judges, with each real call (a cache miss) asked of the repair's budget."""

    def __init__(self, judges: Judges, budget: Budget) -> None:
        super().__init__(judges, CallStats())
        self.budget = budget

    def fetch(self, model: Any, request: Request) -> Response:
        stats = CallStats()
        response = self.judges.cache().fetch(_Budgeted(model, self.budget, "judge"), request, stats)
        if stats.cache_hits:
            self.budget.hit()
        return response


def budgeted_judge(judges: Judges, budget: Budget) -> Judge:
    """The judge of the optimiser's metric: the session's `judges`, on the budget."""
    return _BudgetedJudge(judges, budget)


class ModelEngine:
    """`dspy.LM(..., engine=ModelEngine(...))`: one DSPy request -> one plugin `Request`."""

    def __init__(self, model: Model, cache: ResponseCache, budget: Budget, role: str) -> None:
        self.model = _Budgeted(model, budget, role)
        self.cache = cache
        self.budget = budget

    def __deepcopy__(self, memo: dict[int, Any]) -> ModelEngine:
        return self  # optimisers deep-copy programs; a model (and its weights) is shared, never copied

    def complete(self, request: Any) -> Any:
        from dspy.lm15 import Message, TextPart, Usage
        from dspy.lm15 import Response as DspyResponse

        messages: list[dict[str, str]] = []
        if request.system is not None:
            system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
            messages.append({"role": "system", "content": system})
        messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
        prompt = (
            messages[0]["content"]
            if len(messages) == 1 and messages[0]["role"] == "user"
            else json.dumps(messages, indent=2, ensure_ascii=False)
        )
        stats = CallStats()
        response = self.cache.fetch(self.model, Request(prompt=prompt, messages=tuple(messages)), stats)
        if stats.cache_hits:
            self.budget.hit()
        usage = Usage(
            input_tokens=response.prompt_tokens or 0,
            output_tokens=response.completion_tokens or 0,
            total_tokens=(response.prompt_tokens or 0) + (response.completion_tokens or 0),
        )
        return DspyResponse(
            id=None,
            model=response.model or self.model.name,
            message=Message.assistant([TextPart(response.text)]),
            finish_reason="stop",
            usage=usage,
        )

    def stream(self, request: Any) -> Any:
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass


def build_lm(name: str, model: Model, cache: ResponseCache, budget: Budget, role: str) -> Any:
    import dspy

    # cache=False: DSPy's cache key ignores the engine; the plugin's cache sits under the engine.
    return dspy.LM(f"local/{name}", engine=ModelEngine(model, cache, budget, role), cache=False, num_retries=0)


@dataclass
class _Runtime:
    """What the program's calls run with; shared by every copy an optimiser makes."""

    lm: Any
    adapter: Any

    def __deepcopy__(self, memo: dict[int, Any]) -> _Runtime:
        return self


@functools.cache
def _adapter_class() -> type:
    import dspy

    class TemplateAdapter(dspy.Adapter):
        """Formats a call as the plugin would render the composed template; parses nothing."""

        def __init__(self, variables: Sequence[str], output: str, rendering: Rendering) -> None:
            super().__init__()
            self.variables = tuple(variables)
            self.output = output
            self.rendering = rendering

        def format(self, signature: Any, demos: list[dict[str, Any]], inputs: dict[str, Any]) -> list[dict[str, Any]]:
            shown = [
                Demo({k: demo[k] for k in self.variables if k in demo}, str(demo[self.output]))
                for demo in demos
                if demo.get(self.output) is not None
            ]
            rendered = render_composed(
                signature.instructions, shown, {k: inputs[k] for k in self.variables if k in inputs}, self.rendering
            )
            return [dict(m) for m in Request.from_prompt(rendered).messages]

        def parse(self, signature: Any, completion: str) -> dict[str, Any]:
            return {self.output: completion}

    return TemplateAdapter


def output_field(variables: Sequence[str]) -> str:
    name = "output"
    while name in variables:
        name += "_"
    return name


@functools.cache
def _module_class() -> type:
    import dspy

    class TemplateProgram(dspy.Module):
        """The user's template (the signature's instructions) and its demonstrations, as one predictor."""

        def __init__(self, template: str, variables: Sequence[str], runtime: _Runtime) -> None:
            super().__init__()
            self.variables = tuple(variables)
            self.output = output_field(variables)
            fields = {v: dspy.InputField() for v in self.variables}
            fields[self.output] = dspy.OutputField()
            self.predict = dspy.Predict(dspy.Signature(fields, template))
            self.runtime = runtime

        def forward(self, **inputs: Any) -> Any:
            with dspy.context(lm=self.runtime.lm, adapter=self.runtime.adapter):
                return self.predict(**inputs)

        @property
        def template(self) -> str:
            return self.predict.signature.instructions

        @property
        def demos(self) -> list[Demo]:
            return [
                Demo({k: d[k] for k in self.variables if k in d}, str(d[self.output]), str(d.get("case_name", "")))
                for d in self.predict.demos
                if d.get(self.output) is not None
            ]

    return TemplateProgram


def template_program(template: str, variables: Sequence[str], lm: Any, rendering: Rendering) -> Any:
    """A DSPy program for `template` whose calls go to `lm` through the template adapter, which
    renders as the run rendered the prompt (`rendering`)."""
    output = output_field(variables)
    return _module_class()(template, variables, _Runtime(lm, _adapter_class()(variables, output, rendering)))


def grade_output(
    case: Case,
    text: str,
    judge: Judge | None = None,
    embeddings: ResponseCache | None = None,
    sandbox: Sandbox | None = None,
) -> CaseGrade | None:
    """`text` (a candidate prompt's answer) graded as the run grades `case`: through the
    provider's and the test's transforms, then the case's own assertions (model-graded ones ask
    `judge`, `similar` keeps its embeddings in `embeddings`, code checks run in `sandbox`); None
    when a transform or an assertion cannot be evaluated."""
    response = Response(text=text)
    with sandbox_for(sandbox) as box:
        try:
            value = transformed(case, response, box)
            ctx = grading_context(case, response, value, judge, embeddings, box)
            return grade_case(output_text(value), case.assertions, ctx, case.threshold)
        except (ScriptFault, AssertionEvaluationError, AssertionConfigError):
            return None


def case_metric(
    cases: Sequence[Case],
    output: str,
    judge: Judge | None = None,
    embeddings: ResponseCache | None = None,
    sandbox: Sandbox | None = None,
) -> Callable[..., Any]:
    """The suite's assertions as a DSPy metric: 1.0 when the case passes, else 0.0 (a bool while
    bootstrapping, as DSPy expects). `judge`, `embeddings` and `sandbox` as in `grade_output`."""

    def metric(example: Any, prediction: Any, trace: Any = None) -> Any:
        text = str(getattr(prediction, output, "") or "")
        grade = grade_output(cases[example.case_index], text, judge, embeddings, sandbox)
        passed = bool(grade is not None and grade.passed)
        return passed if trace is not None else float(passed)

    return metric


def feedback_metric(
    cases: Sequence[Case],
    output: str,
    variables: Sequence[str],
    judge: Judge | None = None,
    embeddings: ResponseCache | None = None,
    sandbox: Sandbox | None = None,
) -> Callable[..., Any]:
    """GEPA's metric: the score plus textual feedback (each failed assertion's reason)."""
    import dspy

    placeholders = ", ".join("{{ " + v + " }}" for v in variables)

    def metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
        text = str(getattr(pred, output, "") or "")
        grade = grade_output(cases[gold.case_index], text, judge, embeddings, sandbox)
        if grade is None:
            return dspy.Prediction(score=0.0, feedback="an assertion could not be evaluated on this output")
        failed = [o.reason for o in grade.outcomes if not o.passed and o.reason]
        feedback = "All checks passed." if grade.passed else "Failed checks: " + "; ".join(failed)
        feedback += (
            f" (The instruction is a Jinja template: keep its placeholders {placeholders} exactly, "
            "they are filled with each input.)"
        )
        return dspy.Prediction(score=float(grade.passed), feedback=feedback)

    return metric
