"""DSPy-style metrics as `python` checks: `metric(example, prediction, trace=None)`.

A DSPy program is optimised against such a function, so accepting it here lets one metric judge
prompt tests and drive a repair: `--promptopt-repair` scores candidates with the suite's own
assertions, this one included. The example holds the case's vars and the prediction the output,
both with attribute and item access as DSPy's `Example` and `Prediction` have; dspy itself is
not imported. `trace` is None, DSPy's value when a metric evaluates rather than bootstraps.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["MetricExample", "MetricPrediction", "call_metric", "is_dspy_metric"]

# The names DSPy's docs and optimisers use for a metric's parameters.
_EXAMPLE_NAMES = {"example", "gold", "ex"}
_PREDICTION_NAMES = {"prediction", "pred"}
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _positional(fn: Callable[..., Any]) -> list[inspect.Parameter] | None:
    try:
        return [p for p in inspect.signature(fn).parameters.values() if p.kind in _POSITIONAL]
    except (TypeError, ValueError):
        return None


def is_dspy_metric(fn: Callable[..., Any]) -> bool:
    """A function whose parameters read like a DSPy metric's: `(example|gold, prediction|pred, trace)`.

    Names, not the count, decide: promptfoo's `get_assert(output, context)` also takes two."""
    params = _positional(fn)
    if not params or len(params) < 2:
        return False
    names = [p.name for p in params]
    return names[0] in _EXAMPLE_NAMES or names[1] in _PREDICTION_NAMES or names[2:3] == ["trace"]


class _Record(Mapping[str, Any]):
    """Fields readable as attributes and as items."""

    _kind = "record"

    def __init__(self, data: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_data", dict(data))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(
                f"the {self._kind} has no field {name!r}; its fields: {', '.join(self._data) or 'none'}"
            ) from None

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def toDict(self) -> dict[str, Any]:  # noqa: N802  (DSPy's name)
        return dict(self._data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"


class MetricExample(_Record):
    """The case as a DSPy metric's `example`: its vars (`example.question`, `example["expected"]`)."""

    _kind = "example (the case's vars)"


class MetricPrediction(_Record):
    """The output as a DSPy metric's `prediction`: `prediction.output` (the repair's field name) and
    `prediction.answer` (DSPy's usual one) are the output text; `str(prediction)` is too."""

    _kind = "prediction"

    def __init__(self, text: str) -> None:
        super().__init__({"output": text, "answer": text})

    def __str__(self) -> str:
        return str(self._data["output"])


def call_metric(fn: Callable[..., Any], output: str, variables: Mapping[str, Any]) -> Any:
    """Call a DSPy-style metric on one case: `fn(example, prediction)` plus `trace=None` if it takes one."""
    params = _positional(fn) or []
    args: list[Any] = [MetricExample(variables), MetricPrediction(output)]
    # Fill the remaining positional parameters that have no default (`trace`, GEPA's `pred_name`, ...) with None.
    args.extend(None for p in params[2:] if p.default is inspect.Parameter.empty)
    return fn(*args)
