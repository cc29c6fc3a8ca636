"""Gates: per-suite thresholds on the pass rate and named metrics' means, decided after the run.

A gate compares a value with its threshold under one of three rules, because a pass rate over a
few dozen noisy cases is an estimate, not a fact:
- `point` (default): the estimate itself must reach the threshold;
- `strict`: the lower bound of its 95% interval must (a pass means "surely good enough");
- `tolerant`: it fails only when the upper bound is below the threshold ("surely too low").
The result says which rule decided, with the interval it read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["GATE_RULES", "Gate", "GateResult", "PASS_K", "PASS_RATE", "decide", "parse_gates"]

PASS_RATE = "pass_rate"  # with repeats, over every sample of every case
PASS_K = "pass^k"  # the share of cases whose every repeat (all k of them) passed; pass_rate without repeats
GATE_RULES = ("point", "strict", "tolerant")

Interval = tuple[float, float]


@dataclass(frozen=True)
class Gate:
    """`metric >= threshold`, where metric is `pass_rate`, `pass^k` or a named metric's mean over cases."""

    name: str
    threshold: float
    rule: str | None = None  # None: the run's rule (--promptopt-gate-rule, default point)

    def describe(self) -> str:
        text = f"{self.name} >= {self.threshold:g}"
        return text if self.rule in (None, "point") else f"{text} ({self.rule})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold, "rule": self.rule}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Gate:
        return cls(str(data["name"]), float(data["threshold"]), data.get("rule"))


@dataclass(frozen=True)
class GateResult:
    name: str
    threshold: float
    value: float | None
    passed: bool
    reason: str = ""
    rule: str = "point"
    low: float | None = None  # the 95% interval of `value`, when known
    high: float | None = None

    @property
    def compared(self) -> float | None:
        """What the rule compared with the threshold: the interval's lower bound (strict), its
        upper bound (tolerant), else the estimate."""
        if self.rule == "strict" and self.low is not None:
            return self.low
        if self.rule == "tolerant" and self.high is not None:
            return self.high
        return self.value

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "threshold": self.threshold,
            "value": self.value,
            "passed": self.passed,
            "reason": self.reason,
            "rule": self.rule,
            "interval": None if self.low is None or self.high is None else [self.low, self.high],
        }


def parse_gates(raw: Any, where: str = "gates") -> tuple[Gate, ...]:
    """Read a `gates:` block: `{pass_rate: 0.9, accuracy: {min: 0.8, rule: strict}}`. Raises ValueError with the path."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a mapping of metric name to minimum, e.g. {{pass_rate: 0.9}}")
    gates = []
    for name, spec in raw.items():
        path = f"{where}.{name}"
        rule = None
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"min", "rule"}
            if unknown or "min" not in spec:
                raise ValueError(
                    f"{path}: write a number or {{min: <number>, rule: point|strict|tolerant}} (unknown keys: {sorted(unknown)})"
                )
            rule = spec.get("rule")
            if rule is not None and rule not in GATE_RULES:
                raise ValueError(f"{path}.rule: {rule!r} is not one of {', '.join(GATE_RULES)}")
            spec = spec["min"]
        if isinstance(spec, bool) or not isinstance(spec, (int, float)) or not math.isfinite(spec):
            raise ValueError(f"{path}: the threshold must be a number, got {spec!r}")
        # A share of cases lies in [0, 1]; a named or derived metric's mean is whatever its checks
        # score (a code check may give 482, as in promptfoo), so its threshold is any number.
        if name in (PASS_RATE, PASS_K) and not 0 <= spec <= 1:
            raise ValueError(f"{path}: the threshold must be between 0 and 1, got {spec}")
        gates.append(Gate(str(name), float(spec), rule))
    return tuple(gates)


def decide(
    gate: Gate,
    pass_rate: float | None,
    metric_means: Mapping[str, float],
    intervals: Mapping[str, Interval | None] | None = None,
    default_rule: str = "point",
    *,
    pass_k: float | None = None,
) -> GateResult:
    """The gate's verdict. `intervals` holds the 95% interval of `pass_rate`, `pass^k` and of each
    metric mean (by name); a strict or tolerant gate without one falls back to the point estimate.
    `default_rule` is the rule of a gate that names none (the run's --promptopt-gate-rule)."""
    rule = gate.rule or default_rule
    counts = gate.name in (PASS_RATE, PASS_K)
    value = pass_rate if gate.name == PASS_RATE else pass_k if gate.name == PASS_K else metric_means.get(gate.name)
    if value is None:
        what = "no case was scored" if counts else f"no assertion reported metric '{gate.name}'"
        return GateResult(gate.name, gate.threshold, None, False, f"{what}: the gate cannot pass", rule)
    interval = (intervals or {}).get(gate.name)
    low, high = interval if interval is not None else (None, None)
    if rule == "strict" and low is not None:
        passed = low >= gate.threshold
        reason = f"{gate.name} = {value:.3f}, 95% lower bound {low:.3f} {'>=' if passed else '<'} {gate.threshold:g} (strict)"
    elif rule == "tolerant" and high is not None:
        passed = high >= gate.threshold
        reason = f"{gate.name} = {value:.3f}, 95% upper bound {high:.3f} {'>=' if passed else '<'} {gate.threshold:g} (tolerant)"
    else:
        passed = value >= gate.threshold
        reason = f"{gate.name} = {value:.3f} {'>=' if passed else '<'} {gate.threshold:g}"
        if rule != "point":
            reason += f" ({rule} rule without an interval: decided on the estimate)"
    return GateResult(gate.name, gate.threshold, value, passed, reason, rule, low, high)
