"""Read a YAML/JSON suite document, keeping the line of every node for error messages.

YAML is read as promptfoo reads it (the YAML 1.2 core schema, `yaml12.py`). Before a document
becomes data its node graph is checked, so hostile or mistaken input is an error naming the
place, never a hang: a key written twice in one mapping, aliases that expand beyond
`SuiteLimits.max_alias_nodes`, nesting deeper than `MAX_DEPTH`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import yaml12
from .model import SuiteError, SuiteLimits

Path_ = tuple[str | int, ...]

MAX_DEPTH = 100  # mappings and lists inside each other; JSON's reader gives up near 1000
ALIAS_OPTION = "--promptopt-max-alias-nodes (ini promptopt_max_alias_nodes)"


@dataclass(frozen=True)
class SuiteNotice:
    """A warning about a suite file (a key ignored, a difference from promptfoo): where it points
    and what it says. As text, `file:line: place: message`; pytest's warning summary gets the
    file and line apart, so that it points at the line (items.py)."""

    display: str
    line: int | None
    place: str
    message: str

    @property
    def detail(self) -> str:
        return f"{self.place}: {self.message}"

    def __str__(self) -> str:
        return f"{place_text(self.display, self.line, self.place)}: {self.message}"


def place_text(display: str, line: int | None, place: str) -> str:
    """`file:line: place` (`file: place` without a line), as messages that are not a
    `SuiteError` name a place (warnings, case errors)."""
    return f"{display}:{line}: {place}" if line else f"{display}: {place}"


class DocumentError(ValueError):
    def __init__(self, message: str, line: int | None = None, path: Sequence[str | int] = ()) -> None:
        super().__init__(message)
        self.line = line
        self.path = tuple(path)


@dataclass
class LineMap:
    """Line (1-based) of each node, by its path in the document; unknown paths fall back to the parent.
    `dates`: where YAML timestamps were read (kept as their text; promptfoo makes them `{}`)."""

    lines: dict[Path_, int] = field(default_factory=dict)
    dates: list[Path_] = field(default_factory=list)

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


def read_document(path: Path, limits: SuiteLimits = SuiteLimits()) -> tuple[Any, LineMap]:
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise DocumentError("is a directory, not a suite file") from None
    except OSError as exc:
        raise DocumentError(f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise DocumentError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if path.suffix == ".json":
        return _read_json(text, limits)
    return parse_yaml(text, limits)


def parse_yaml(text: str, limits: SuiteLimits = SuiteLimits()) -> tuple[Any, LineMap]:
    """YAML (or JSON) text as data and its line map, checked. Raises `DocumentError`."""
    import yaml

    lines = LineMap()
    try:
        node, loader = yaml12.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise DocumentError(f"invalid YAML: {problem}", mark.line + 1 if mark else None) from None
    except RecursionError:
        raise DocumentError(f"invalid YAML: nested more than {MAX_DEPTH} levels deep") from None
    if node is None:
        loader.dispose()
        return None, lines
    try:
        _check(node, lines, limits)  # before construction, which flattens `<<` merge keys in place
    except DocumentError:
        loader.dispose()
        raise
    try:
        return yaml12.construct(node, loader), lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise DocumentError(f"invalid YAML: {problem}", mark.line + 1 if mark else None) from None


def _read_json(text: str, limits: SuiteLimits) -> tuple[Any, LineMap]:
    import yaml

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"invalid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
    except RecursionError:
        raise DocumentError(f"invalid JSON: nested more than {MAX_DEPTH} levels deep") from None
    lines = LineMap()
    try:
        node, loader = yaml12.compose(text)
    except (yaml.YAMLError, RecursionError):
        node, loader = None, None  # JSON that YAML cannot read (tabs): errors then carry paths without lines
    if node is not None:
        try:
            _check(node, lines, limits)  # duplicate keys and depth, with lines
        finally:
            loader.dispose()
    else:
        if loader is not None:
            loader.dispose()
        _check_depth(data)
    return data, lines


def load_yaml(text: str, limits: SuiteLimits = SuiteLimits()) -> Any:
    """Parse YAML (or JSON) text with the same loader and checks as suite files, everywhere.
    Raises `DocumentError`."""
    return parse_yaml(text, limits)[0]


def _check(root: Any, lines: LineMap, limits: SuiteLimits) -> None:
    """Walk the node graph once, without expanding aliases: record lines and dates, refuse
    duplicate keys, nesting beyond MAX_DEPTH and alias expansion beyond the limit."""
    try:
        sizes = yaml12.expanded_sizes(root)
    except RecursionError as exc:  # a node that contains itself
        raise DocumentError(str(exc), getattr(exc, "line", None)) from None
    seen: set[int] = set()
    added = 0  # nodes the aliases add when the document is expanded
    stack: list[tuple[Any, Path_, int]] = [(root, (), 1)]
    while stack:
        node, path, depth = stack.pop()
        if id(node) in seen:  # an alias: its anchor's lines stand for it
            added += sizes[id(node)]
            if added > limits.max_alias_nodes:
                raise DocumentError(
                    f"YAML aliases expand the document to more than {limits.max_alias_nodes:,} extra nodes "
                    f"(the alias here alone adds {sizes[id(node)]:,}); write the values out, or raise the limit "
                    f"with {ALIAS_OPTION}",
                    lines.line(path),  # an alias has no line of its own: its place's
                    path,
                )
            continue
        seen.add(id(node))
        lines.lines.setdefault(path, node.start_mark.line + 1)
        if depth > MAX_DEPTH:
            raise DocumentError(f"nested more than {MAX_DEPTH} levels deep", node.start_mark.line + 1, path)
        if node.id == "scalar":
            if node.tag == "tag:yaml.org,2002:timestamp":
                lines.dates.append(path)
            continue
        children: list[tuple[Any, Path_]] = []
        if node.id == "mapping":
            first: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value) if key.id == "scalar" else f"<{key.id}>"
                line = key.start_mark.line + 1
                if name in first and name != "<<" and key.id == "scalar":
                    raise DocumentError(
                        f"duplicate key '{name}' (first at line {first[name]}, again at line {line}); "
                        "a key may appear once in a mapping: remove or rename one",
                        line,
                        path + (name,),
                    )
                first.setdefault(name, line)
                lines.lines[path + (name,)] = line
                children.append((value, path + (name,)))
        else:  # sequence
            children = [(item, path + (index,)) for index, item in enumerate(node.value)]
        stack.extend((child, child_path, depth + 1) for child, child_path in reversed(children))


def _check_depth(data: Any) -> None:
    stack: list[tuple[Any, Path_, int]] = [(data, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise DocumentError(f"nested more than {MAX_DEPTH} levels deep", None, path)
        if isinstance(value, dict):
            stack.extend((v, path + (str(k),), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, path + (i,), depth + 1) for i, v in enumerate(value))


class Context:
    """Where we are in the document, to turn any problem into a `SuiteError`; what the suite may
    read (`limits`), and the warnings collected while loading it (one line each)."""

    def __init__(
        self,
        file: Path,
        display: str,
        lines: LineMap,
        resolve_prompt: Callable[[str], Any] | None = None,
        limits: SuiteLimits = SuiteLimits(),
    ) -> None:
        self.file = file
        self.display = display
        self.lines = lines
        self.base_dir = file.parent
        self.resolve_prompt = resolve_prompt
        self.limits = limits
        self.warnings: list[SuiteNotice] = []
        self.env: dict[str, str] = {}  # the config's `env:` (promptfoo's `env` template global)
        self.filters: dict[str, Any] = {}  # the suite's nunjucksFilters, as Jinja filters (loader.py)

    def error(self, path: Sequence[str | int], message: str) -> SuiteError:
        return SuiteError(self.display, message, format_path(path), self.lines.line(path))

    def where(self, path: Sequence[str | int]) -> str:
        """`file:line: path` of a place, for messages that are not a `SuiteError` (warnings, case errors)."""
        return place_text(self.display, self.lines.line(path), format_path(path))

    def warn(self, path: Sequence[str | int], message: str) -> None:
        notice = SuiteNotice(self.display, self.lines.line(path), format_path(path), message)
        if notice not in self.warnings:
            self.warnings.append(notice)

    def resolve_file(self, reference: str, path: Sequence[str | int], what: str = "file") -> Path:
        """The file a `file://` reference (or a bare relative path) names, from the suite's
        folder. Refused: a path outside the project unless allowed, a folder, a missing file."""
        name = reference[len("file://") :] if reference.startswith("file://") else reference
        file = Path(name).expanduser()
        file = file if file.is_absolute() else self.base_dir / file
        self.check_inside(file, path, what)
        if file.is_dir():
            raise self.error(path, f"{what} {file} is a directory; name a file (or a glob such as {name}/*)")
        if not file.exists():
            raise self.error(path, f"{what} not found: {file}")
        return file

    def check_code(self, reference: Any, path: Sequence[str | int], what: str = "code file") -> None:
        """A `file://x.py[:fn]` / `file://x.js[:fn]` reference (a check, transform or var loader,
        read when it runs) must stay inside the project; any other value is not a file."""
        if isinstance(reference, str) and reference.startswith("file://"):
            name = re.sub(r":[A-Za-z_$][\w.$]*$", "", reference[len("file://") :])
            self.check_inside(self.base_dir / Path(name).expanduser(), path, what)

    def check_inside(self, file: Path, path: Sequence[str | int], what: str = "file") -> None:
        root = self.limits.root or self.base_dir
        if self.limits.allow_outside_files or file.resolve().is_relative_to(root.resolve()):
            return
        raise self.error(
            path,
            f"{what} {file} is outside the project ({root}); suites read only files inside it. "
            "Move the file into the project, or allow it with --promptopt-allow-outside-files "
            "(ini promptopt_allow_outside_files = true)",
        )
