"""The records a suite file becomes: `Case`, with its suite's `SuiteInfo` (suite_info.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..assertions.base import Assertion
from ..models.specs import ModelSpec
from ..prompt import Prompt
from ..sandbox import DEFAULT_SCRIPT_TIMEOUT_S
from ..suite_info import SuiteInfo


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
    # A case that cannot run, and why (`file:line: path: problem`): a malformed check, a prompt
    # that does not render, a missing var file. It is reported as an error without a model call.
    error: str | None = None
    # A case of a suite with promptfoo's `storeOutputAs` or `_conversation`: rendered only when
    # it runs, after the cases before it (suite/chains.py); None for every other case.
    chain: ChainStep | None = None
    # promptfoo's options.transform (or postprocess): code run on the answer before the assertions
    transform: str | None = None
    # The test's metadata (defaultTest's merged in), which code checks read as context.test.metadata
    metadata: Mapping[str, Any] = field(default_factory=dict)
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S  # one call of the case's user code (--promptopt-script-timeout)


@dataclass(frozen=True)
class ChainStep:
    """Where a case stands in its suite's sequence of outputs: the register it stores its output
    in (`store_as`), the conversation it belongs to (`conversation`, when its prompt reads
    `_conversation`), and how to build it once the outputs before it are known (`build`: the
    case for the vars the earlier outputs add)."""

    group: str
    store_as: str | None
    conversation: str | None
    build: Callable[[Mapping[str, Any]], Case] = field(compare=False, repr=False)


MAX_REPEAT = 1000  # samples per case: `repeat:` and --promptopt-repeat above it are refused


@dataclass(frozen=True)
class SuiteLimits:
    """What reading a suite may cost, and which files it may read (hostile or mistaken input
    fails with an error naming the field, never a hang or a file read silently).

    `max_alias_nodes`: the nodes YAML aliases may add when expanded (an alias bomb of 20 lines
    reaches billions); `max_cases`: cases a suite file may expand to (list vars multiply);
    `root`: the project folder (pytest's rootdir), which `file://` paths must not leave unless
    `allow_outside_files` (None: the suite's own folder)."""

    max_alias_nodes: int = 100_000
    max_cases: int = 100_000
    root: Path | None = None
    allow_outside_files: bool = False


@dataclass(frozen=True)
class Repeats:
    """The run's samples per case (--promptopt-repeat, ini promptopt_repeat, default 1), and
    whether the command line gave the count: a suite's `repeat:` beats the ini file and the
    default, the command line beats the suite (pytest's usual order)."""

    count: int = 1
    from_cli: bool = False

    def for_suite(self, suite_value: int | None) -> int:
        return self.count if suite_value is None or self.from_cli else suite_value
