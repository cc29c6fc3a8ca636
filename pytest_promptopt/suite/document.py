"""Read a YAML/JSON suite document, keeping the line of every node for error messages."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import SuiteError

Path_ = tuple[str | int, ...]

SUITE_SUFFIXES = (".promptopt.yaml", ".promptopt.yml", ".promptopt.json")
PROMPTFOO_NAMES = ("promptfooconfig.yaml", "promptfooconfig.yml", "promptfooconfig.json")


def is_suite_file(path: Path) -> bool:
    """Whether pytest collects `path` as a suite file (by its name only: nothing is read)."""
    return path.name.endswith(SUITE_SUFFIXES) or path.name in PROMPTFOO_NAMES


class DocumentError(ValueError):
    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


@dataclass
class LineMap:
    """Line (1-based) of each node, by its path in the document; unknown paths fall back to the parent."""

    lines: dict[Path_, int] = field(default_factory=dict)

    def line(self, path: Sequence[str | int]) -> int | None:
        path = tuple(path)
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]


def format_path(path: Sequence[str | int]) -> str:
    """`("tests", 3, "assert", 0, "type")` -> `tests[3].assert[0].type`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def read_document(path: Path) -> tuple[Any, LineMap]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DocumentError(f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise DocumentError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = LineMap()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DocumentError(f"invalid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
        try:
            node = _compose(text)
        except yaml.YAMLError:
            node = None  # JSON that YAML cannot read (tabs): errors then carry paths without lines
        if node is not None:
            _walk(node, (), lines.lines)
        return data, lines
    # Parsed once: the node tree gives the lines, then becomes the data (what yaml.load does).
    loader = _loader()(text)
    try:
        node = loader.get_single_node()
        data = None
        if node is not None:
            _walk(node, (), lines.lines)  # before construction, which flattens `<<` merge keys in place
            data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise DocumentError(f"invalid YAML: {problem}", mark.line + 1 if mark else None) from None
    finally:
        loader.dispose()
    return data, lines


def load_yaml(text: str) -> Any:
    """Parse YAML (or JSON) text with the same loader as suite files, everywhere."""
    import yaml

    return yaml.load(text, Loader=_loader())


def _compose(text: str) -> Any:
    import yaml

    return yaml.compose(text, Loader=_loader())


def _loader() -> Any:
    """libyaml's loader when it can be trusted, else the pure-Python one.

    PyYAML's C extension (`yaml._yaml`) cannot be imported twice in a process: if `yaml` is
    removed from `sys.modules` and imported again (pytester does so after a test that imported
    it first), the new `yaml` package gets the old extension, whose nodes are of the old
    `yaml.nodes` classes. The new resolver then finds no tag for them and every document fails
    with "could not determine a constructor for the tag None"."""
    import yaml

    c_loader = getattr(yaml, "CSafeLoader", None)
    if (
        c_loader is not None
        and getattr(yaml, "_yaml", None) is not None
        and yaml._yaml.ScalarNode is yaml.nodes.ScalarNode
    ):
        return c_loader
    return yaml.SafeLoader


def _walk(node: Any, path: Path_, lines: dict[Path_, int]) -> None:
    import yaml

    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = path + (str(key.value),)
            _walk(value, child, lines)
            lines[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, path + (index,), lines)


class Context:
    """Where we are in the document, to turn any problem into a `SuiteError`."""

    def __init__(
        self, file: Path, display: str, lines: LineMap, resolve_prompt: Callable[[str], Any] | None = None
    ) -> None:
        self.file = file
        self.display = display
        self.lines = lines
        self.base_dir = file.parent
        self.resolve_prompt = resolve_prompt
        self.filters: dict[str, Any] = {}  # the suite's nunjucksFilters, as Jinja filters (loader.py)

    def error(self, path: Sequence[str | int], message: str) -> SuiteError:
        return SuiteError(self.display, message, format_path(path), self.lines.line(path))
