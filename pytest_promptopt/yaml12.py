"""YAML read as promptfoo reads it: the YAML 1.2 core schema of js-yaml (promptfoo's `loadYaml`).

PyYAML implements YAML 1.1, where `Yes`, `no`, `on` and `off` are booleans and `012` is octal.
promptfoo's js-yaml keeps those as the strings `Yes`, `no`, `on`, `off` and reads `012` as 12,
so a var `answer: Yes` renders `Yes` in both tools. The loader here is PyYAML's (libyaml when it
can be trusted) with the core schema's implicit types: booleans `true/True/TRUE/false/...`, nulls
`~/null/Null/NULL/` (empty), decimal, `0o` and `0x` integers without `_`, floats with `.inf` and
`.nan`, `<<` merge keys and timestamps.

A document is composed first (a node graph with aliases shared, no expansion), checked (see
`suite/document.py`: duplicate keys, alias expansion, nesting depth), and only then constructed.
`contains-json` reads candidates in model output with the same loader (assertions/structured.py).
"""

from __future__ import annotations

import functools
import re
from typing import Any

__all__ = ["compose", "construct", "expanded_sizes", "loader_class"]

_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


def loader_class() -> type:
    """The core-schema loader of the `yaml` package imported now (built once per package: see
    `_trusted_c_parser` for why a second import matters)."""
    import yaml

    return _loader_for(yaml)


@functools.cache
def _loader_for(yaml: Any) -> type:
    SafeConstructor = yaml.constructor.SafeConstructor
    BaseResolver = yaml.resolver.BaseResolver

    class CoreResolver(BaseResolver):
        pass

    # BaseResolver keeps its tables as class attributes: this class gets its own copies.
    CoreResolver.yaml_implicit_resolvers = {}
    CoreResolver.yaml_path_resolvers = {}
    for tag, regexp, first in (
        ("tag:yaml.org,2002:bool", _BOOL, "tTfF"),
        ("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""]),
        ("tag:yaml.org,2002:int", _INT, "-+0123456789"),
        ("tag:yaml.org,2002:float", _FLOAT, "-+.0123456789"),
        ("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), "<"),
        (
            "tag:yaml.org,2002:timestamp",
            re.compile(
                r"""^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]
                |[0-9][0-9][0-9][0-9] -[0-9][0-9]? -[0-9][0-9]?
                (?:[Tt]|[ \t]+)[0-9][0-9]?
                :[0-9][0-9] :[0-9][0-9] (?:\.[0-9]*)?
                (?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$""",
                re.X,
            ),
            "0123456789",
        ),
    ):
        CoreResolver.add_implicit_resolver(tag, regexp, list(first))

    class CoreConstructor(SafeConstructor):
        def construct_yaml_int(self, node: Any) -> int:
            text = str(self.construct_scalar(node))
            if text.startswith("0o"):
                return int(text[2:], 8)
            if text.startswith("0x"):
                return int(text[2:], 16)
            return int(text, 10)  # `012` is 12, not octal

        def construct_yaml_bool(self, node: Any) -> bool:
            return str(self.construct_scalar(node)).lower() == "true"

        def construct_timestamp_text(self, node: Any) -> str:
            # js-yaml makes a Date, which promptfoo's config walk turns into `{}` ("[object
            # Object]" in a prompt); the text is kept here, and the loader warns (document.py).
            return str(self.construct_scalar(node))

    # SafeConstructor's table is a class attribute too; copied before changing it.
    CoreConstructor.yaml_constructors = dict(SafeConstructor.yaml_constructors)
    CoreConstructor.add_constructor("tag:yaml.org,2002:int", CoreConstructor.construct_yaml_int)
    CoreConstructor.add_constructor("tag:yaml.org,2002:bool", CoreConstructor.construct_yaml_bool)
    CoreConstructor.add_constructor("tag:yaml.org,2002:timestamp", CoreConstructor.construct_timestamp_text)

    c_parser = _trusted_c_parser(yaml)
    if c_parser is not None:

        class CLoader(c_parser, CoreConstructor, CoreResolver):  # type: ignore[misc, valid-type]
            def __init__(self, stream: Any) -> None:
                c_parser.__init__(self, stream)
                CoreConstructor.__init__(self)
                CoreResolver.__init__(self)

        return CLoader

    Composer, Parser, Reader, Scanner = (
        yaml.composer.Composer,
        yaml.parser.Parser,
        yaml.reader.Reader,
        yaml.scanner.Scanner,
    )

    class PyLoader(Reader, Scanner, Parser, Composer, CoreConstructor, CoreResolver):
        def __init__(self, stream: Any) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            Composer.__init__(self)
            CoreConstructor.__init__(self)
            CoreResolver.__init__(self)

    return PyLoader


def _trusted_c_parser(yaml: Any) -> Any:
    """libyaml's parser when it can be trusted, else None (the pure-Python one).

    PyYAML's C extension (`yaml._yaml`) cannot be imported twice in a process: if `yaml` is
    removed from `sys.modules` and imported again (pytester does so after a test that imported
    it first), the new `yaml` package gets the old extension, whose nodes are of the old
    `yaml.nodes` classes. The new resolver then finds no tag for them and every document fails
    with "could not determine a constructor for the tag None"."""
    c_module = getattr(yaml, "_yaml", None)
    if c_module is None or getattr(yaml, "CSafeLoader", None) is None:
        return None
    if c_module.ScalarNode is not yaml.nodes.ScalarNode:
        return None
    return c_module.CParser


def compose(text: str) -> tuple[Any, Any]:
    """The node graph of a one-document YAML text and the loader that will construct it
    (`construct`); (None, loader) for an empty document. Raises `yaml.YAMLError`."""
    loader = loader_class()(text)
    try:
        return loader.get_single_node(), loader
    except BaseException:
        loader.dispose()
        raise


def construct(node: Any, loader: Any) -> Any:
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


class RecursiveAlias(RecursionError):
    """A YAML alias refers to a node that contains it."""

    def __init__(self, line: int) -> None:
        super().__init__("a YAML alias refers to a node that contains it")
        self.line = line


def expanded_sizes(root: Any) -> dict[int, int]:
    """Each node's size (by `id`) once every alias under it is expanded, computed without
    expanding anything and without recursion. A node that contains itself raises `RecursiveAlias`."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise RecursiveAlias(node.start_mark.line + 1)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes


def _children(node: Any) -> list[Any]:
    if node.id == "mapping":
        return [value for _, value in node.value]
    if node.id == "sequence":
        return list(node.value)
    return []
