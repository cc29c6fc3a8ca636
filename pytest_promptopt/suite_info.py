"""A suite's identity and gates: what the gates, the summary and the reports need of it. A leaf,
so that aggregating and reporting read it without importing the suite loader (`suite/`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .gates import Gate
from .mathexpr import DerivedMetric


@dataclass(frozen=True)
class SuiteInfo:
    """A suite's identity and gates; travels with every case record to the controller."""

    id: str
    name: str
    file: str
    gates: tuple[Gate, ...] = ()
    kind: str = "file"  # "file" for suite files, "python" for Python tests
    # promptfoo's `derivedMetrics`: named metrics computed from the others' sums (mathexpr.py)
    derived_metrics: tuple[DerivedMetric, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = {
            "id": self.id,
            "name": self.name,
            "file": self.file,
            "kind": self.kind,
            "gates": [g.to_dict() for g in self.gates],
        }
        if self.derived_metrics:
            data["derived_metrics"] = [{"name": m.name, "value": m.expression} for m in self.derived_metrics]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteInfo:
        return cls(
            id=data["id"],
            name=data["name"],
            file=data["file"],
            gates=tuple(Gate.from_dict(g) for g in data.get("gates", ())),
            kind=data.get("kind", "file"),
            derived_metrics=tuple(DerivedMetric(m["name"], m["value"]) for m in data.get("derived_metrics", ())),
        )
