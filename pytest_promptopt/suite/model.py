"""The records a suite file becomes: `SuiteInfo` (what the gates and reports need) and `Case`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..assertions.base import Assertion
from ..gates import Gate
from ..models.specs import ModelSpec
from ..prompt import Prompt
from ..sandbox import DEFAULT_SCRIPT_TIMEOUT_S


class SuiteError(ValueError):
    """A suite file is malformed. Names the file, the line, the path in the document and the fix."""

    def __init__(self, file: str, message: str, path: str = "", line: int | None = None) -> None:
        self.file = file
        self.path = path
        self.line = line
        self.message = message
        location = f"{file}:{line}" if line else file
        super().__init__(f"{location}: {path}: {message}" if path else f"{location}: {message}")


@dataclass(frozen=True)
class SuiteInfo:
    """A suite's identity and gates; travels with every case record to the controller."""

    id: str
    name: str
    file: str
    gates: tuple[Gate, ...] = ()
    kind: str = "file"  # "file" for suite files, "python" for Python tests

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "file": self.file,
            "kind": self.kind,
            "gates": [g.to_dict() for g in self.gates],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteInfo:
        return cls(
            id=data["id"],
            name=data["name"],
            file=data["file"],
            gates=tuple(Gate.from_dict(g) for g in data.get("gates", ())),
            kind=data.get("kind", "file"),
        )


@dataclass(frozen=True)
class Case:
    """One model call and its assertions: a (prompt, provider, test, vars) combination."""

    suite: SuiteInfo
    case_id: str
    name: str
    prompt: Prompt
    rendered_prompt: str
    prompt_index: int
    test_index: int
    vars: Mapping[str, Any]
    assertions: tuple[Assertion, ...]
    model: ModelSpec
    threshold: float | None = None
    description: str = ""
    base_dir: Path = field(default_factory=Path.cwd)
    position: int = 0  # order of the case in its suite (collection order)
    fuzz: Any = None  # a generated case's `fuzz.FuzzOrigin` (its block, index and case factory); None for the others
    repeats: int = 1  # independent samples of the model's answer (--promptopt-repeat, the suite's `repeat:`)
    # promptfoo's options.transform (or postprocess): code run on the answer before the assertions
    transform: str | None = None
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S  # one call of the case's user code (--promptopt-script-timeout)


@dataclass(frozen=True)
class Repeats:
    """The run's samples per case (--promptopt-repeat, ini promptopt_repeat, default 1), and
    whether the command line gave the count: a suite's `repeat:` beats the ini file and the
    default, the command line beats the suite (pytest's usual order)."""

    count: int = 1
    from_cli: bool = False

    def for_suite(self, suite_value: int | None) -> int:
        return self.count if suite_value is None or self.from_cli else suite_value
