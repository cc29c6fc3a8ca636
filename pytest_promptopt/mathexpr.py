"""promptfoo's `derivedMetrics`: arithmetic over named metrics, read without `eval`.

promptfoo evaluates each expression with mathjs (`math.evaluate(value, {...namedScores,
__count})`), over each prompt's **sums** of its named metrics and `__count`, the number of its
rows (errors included). This module parses the subset such expressions use: numbers, names,
`+ - * / % ^` (mathjs precedence: `^` binds tighter than a leading minus and groups to the
right), parentheses and a few functions (`abs`, `sqrt`, `min`, `max`, `round`, `floor`, `ceil`,
`exp`, `log`, `log10`, `pow`, `mod`, `mean`, `sum`). Anything else is a `ExpressionError` when
the suite loads. Division by zero gives Infinity or NaN, as in mathjs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DerivedMetric", "Expression", "ExpressionError", "derived_values", "parse"]


class ExpressionError(ValueError):
    """An expression outside the supported subset, or a name it uses that has no value."""


def _div(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1, b)
    return a / b


def _mod(a: float, b: float) -> float:
    return math.nan if b == 0 else a - b * math.floor(a / b)  # mathjs: the sign of the divisor


_FUNCTIONS: dict[str, Callable[..., float]] = {
    "abs": abs,
    "sqrt": lambda x: math.sqrt(x) if x >= 0 else math.nan,
    "min": min,
    "max": max,
    "round": lambda x, n=0: float(math.floor(x * 10**n + 0.5) / 10**n),
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "log": lambda x, base=math.e: math.log(x) / math.log(base) if x > 0 else (-math.inf if x == 0 else math.nan),
    "log10": lambda x: math.log10(x) if x > 0 else (-math.inf if x == 0 else math.nan),
    "pow": lambda a, b: float(a) ** float(b),
    "mod": _mod,
    "mean": lambda *xs: math.fsum(xs) / len(xs),
    "sum": lambda *xs: math.fsum(xs),
}
_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|([A-Za-z_][A-Za-z_0-9]*)|(.))")


@dataclass(frozen=True)
class Expression:
    """A parsed expression: `evaluate(values)` and the `names` it reads."""

    text: str
    tree: Any
    names: frozenset[str]

    def evaluate(self, values: Mapping[str, float]) -> float:
        return float(_evaluate(self.tree, values))


def parse(text: str) -> Expression:
    tokens = []
    for match in _TOKEN.finditer(text.strip()):
        number, name, other = match.groups()
        if number is not None:
            tokens.append(("num", float(number)))
        elif name is not None:
            tokens.append(("name", name))
        elif other is not None and not other.isspace():
            tokens.append(("op", other))
    parser = _Parser(tokens, text)
    tree = parser.expression(0)
    if parser.position < len(tokens):
        raise ExpressionError(f"unexpected {tokens[parser.position][1]!r} in {text!r}")
    return Expression(text, tree, frozenset(_names(tree)))


# binding powers: + - (10), * / % (20), unary - (30), ^ (40, right to left)
_BINARY = {"+": 10, "-": 10, "*": 20, "/": 20, "%": 20, "^": 40}


class _Parser:
    def __init__(self, tokens: list[tuple[str, Any]], text: str) -> None:
        self.tokens, self.text, self.position = tokens, text, 0

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> tuple[str, Any]:
        token = self.peek()
        if token is None:
            raise ExpressionError(f"{self.text!r} ends too early")
        self.position += 1
        return token

    def expression(self, power: int) -> Any:
        left = self.operand()
        while True:
            token = self.peek()
            if token is None or token[0] != "op" or token[1] not in _BINARY or _BINARY[token[1]] <= power:
                return left
            op = self.take()[1]
            right = self.expression(_BINARY[op] - 1 if op == "^" else _BINARY[op])  # `^` groups to the right
            left = ("bin", op, left, right)

    def operand(self) -> Any:
        kind, value = self.take()
        if kind == "num":
            return ("num", value)
        if kind == "op" and value in "+-":
            return ("neg" if value == "-" else "pos", self.expression(30))
        if kind == "op" and value == "(":
            inner = self.expression(0)
            if self.take() != ("op", ")"):
                raise ExpressionError(f"missing ')' in {self.text!r}")
            return inner
        if kind == "name":
            if self.peek() == ("op", "("):
                if value not in _FUNCTIONS:
                    raise ExpressionError(
                        f"unknown function {value}() in {self.text!r}; known: {', '.join(_FUNCTIONS)}"
                    )
                self.take()
                args = []
                if self.peek() != ("op", ")"):
                    args.append(self.expression(0))
                    while self.peek() == ("op", ","):
                        self.take()
                        args.append(self.expression(0))
                if self.take() != ("op", ")"):
                    raise ExpressionError(f"missing ')' after the arguments of {value}() in {self.text!r}")
                return ("call", value, tuple(args))
            return ("name", value)
        raise ExpressionError(f"unexpected {value!r} in {self.text!r}")


def _names(tree: Any) -> list[str]:
    kind = tree[0]
    if kind == "name":
        return [tree[1]]
    if kind in ("neg", "pos"):
        return _names(tree[1])
    if kind == "bin":
        return _names(tree[2]) + _names(tree[3])
    if kind == "call":
        return [n for arg in tree[2] for n in _names(arg)]
    return []


def _evaluate(tree: Any, values: Mapping[str, float]) -> float:
    kind = tree[0]
    if kind == "num":
        return tree[1]
    if kind == "name":
        if tree[1] not in values:
            raise ExpressionError(f"undefined symbol {tree[1]}")
        return float(values[tree[1]])
    if kind == "neg":
        return -_evaluate(tree[1], values)
    if kind == "pos":
        return _evaluate(tree[1], values)
    if kind == "call":
        args = [_evaluate(arg, values) for arg in tree[2]]
        try:
            return float(_FUNCTIONS[tree[1]](*args))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ExpressionError(f"{tree[1]}(): {exc}") from None
    a, b = _evaluate(tree[2], values), _evaluate(tree[3], values)
    op = tree[1]
    try:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return _div(a, b)
        if op == "%":
            return _mod(a, b)
        return float(a) ** float(b) if not (a < 0 and b != int(b)) else math.nan
    except OverflowError:
        return math.inf


@dataclass(frozen=True)
class DerivedMetric:
    name: str
    expression: str


def derived_values(metrics: Sequence[DerivedMetric], sums: Mapping[str, float], count: int) -> dict[str, float]:
    """promptfoo's `updateDerivedMetrics` over final totals: each expression in order, seeing the
    named metrics' sums, `__count` and the derived metrics before it. One that cannot be
    evaluated (a name without a value) stays 0, as in promptfoo."""
    scope: dict[str, float] = {**sums, "__count": float(count)}
    out: dict[str, float] = {}
    for metric in metrics:
        try:
            value = parse(metric.expression).evaluate(scope)
        except ExpressionError:
            value = out.get(metric.name, 0.0)
        out[metric.name] = scope[metric.name] = value
    return out
