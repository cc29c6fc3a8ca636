"""Gates: per-suite thresholds on the pass rate and named metrics' means, decided after the run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["Gate", "GateResult", "PASS_RATE", "parse_gates"]

PASS_RATE = "pass_rate"


@dataclass(frozen=True)
class Gate:
    """`metric >= threshold`, where metric is `pass_rate` or a named metric's mean over cases."""

    name: str
    threshold: float

    def describe(self) -> str:
        return f"{self.name} >= {self.threshold:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Gate":
        return cls(str(data["name"]), float(data["threshold"]))


@dataclass(frozen=True)
class GateResult:
    name: str
    threshold: float
    value: float | None
    passed: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold, "value": self.value, "passed": self.passed, "reason": self.reason}


def parse_gates(raw: Any, where: str = "gates") -> tuple[Gate, ...]:
    """Read a `gates:` block: `{pass_rate: 0.9, accuracy: {min: 0.8}}`. Raises ValueError with the path."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a mapping of metric name to minimum, e.g. {{pass_rate: 0.9}}")
    gates = []
    for name, spec in raw.items():
        path = f"{where}.{name}"
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"min"}
            if unknown or "min" not in spec:
                raise ValueError(f"{path}: write a number or {{min: <number>}} (unknown keys: {sorted(unknown)})")
            spec = spec["min"]
        if isinstance(spec, bool) or not isinstance(spec, (int, float)):
            raise ValueError(f"{path}: the threshold must be a number between 0 and 1, got {spec!r}")
        if not 0 <= spec <= 1:
            raise ValueError(f"{path}: the threshold must be between 0 and 1, got {spec}")
        gates.append(Gate(str(name), float(spec)))
    return tuple(gates)


def decide(gate: Gate, pass_rate: float | None, metric_means: Mapping[str, float]) -> GateResult:
    if gate.name == PASS_RATE:
        value = pass_rate
    else:
        value = metric_means.get(gate.name)
    if value is None:
        what = "no case was scored" if gate.name == PASS_RATE else f"no assertion reported metric '{gate.name}'"
        return GateResult(gate.name, gate.threshold, None, False, f"{what}: the gate cannot pass")
    passed = value >= gate.threshold
    reason = f"{gate.name} = {value:.3f} {'>=' if passed else '<'} {gate.threshold:g}"
    return GateResult(gate.name, gate.threshold, value, passed, reason)
