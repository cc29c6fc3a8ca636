"""JSON references (`$ref`) resolved as promptfoo resolves them before reading a config
(`@apidevtools/json-schema-ref-parser`'s `dereference`): `#/assertionTemplates/x` points into
the document, `tmpl.yaml#/shared` into another file, and keys written beside `$ref` override the
target's ("extended" references). A provider's config is left alone (its `tools` schemas use
`$ref` for themselves). The copies references make count against the same limit as YAML
aliases (`SuiteLimits.max_alias_nodes`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .document import ALIAS_OPTION, Context, DocumentError, load_yaml
from .files import read_text

__all__ = ["dereference"]


class _Refs:
    def __init__(self, ctx: Context, where: tuple[Any, ...]) -> None:
        self.ctx = ctx
        self.where = where
        self.documents: dict[Path, Any] = {}
        self.copied = 0

    def document(self, file: Path) -> Any:
        if file not in self.documents:
            text = read_text(file, self.ctx, self.where, "$ref file")
            try:
                self.documents[file] = load_yaml(text, self.ctx.limits)
            except DocumentError as exc:
                raise self.ctx.error(self.where, f"$ref file {file.name}: {exc}") from None
        return self.documents[file]

    def target(self, ref: str, file: Path, path: tuple[Any, ...]) -> tuple[Any, Path]:
        location, _, pointer = ref.partition("#")
        if location:
            candidate = Path(unquote(location))
            candidate = candidate if candidate.is_absolute() else file.parent / candidate
            target_file = self.ctx.resolve_file(str(candidate), path, "$ref file")
        else:
            target_file = file
        node = self.document(target_file)
        for part in pointer.split("/")[1:] if pointer else []:
            key = unquote(part).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise self.ctx.error(path, f"$ref '{ref}' points to nothing (no '{key}' there)")
        return node, target_file

    def resolve(self, node: Any, file: Path, path: tuple[Any, ...], active: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [self.resolve(item, file, path + (i,), active) for i, item in enumerate(node)]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            key = f"{file}#{ref.partition('#')[2]}" if not ref.partition("#")[0] else ref
            if key in active:
                raise self.ctx.error(path, f"$ref '{ref}' refers back to itself")
            target, target_file = self.target(ref, file, path)
            resolved = self.resolve(target, target_file, path, active + (key,))
            self.copied += _size(resolved)
            if self.copied > self.ctx.limits.max_alias_nodes:
                raise self.ctx.error(
                    path,
                    f"$ref copies expand the document to more than {self.ctx.limits.max_alias_nodes:,} extra nodes; "
                    f"raise the limit with {ALIAS_OPTION}",
                )
            siblings = {k: self.resolve(v, file, path + (k,), active) for k, v in node.items() if k != "$ref"}
            if isinstance(resolved, dict):
                return {**resolved, **siblings}
            return resolved
        out = {}
        for key, value in node.items():
            if key in ("providers", "targets") and not path:
                out[key] = value  # provider configs keep their own `$ref`s (tool schemas)
            else:
                out[key] = self.resolve(value, file, path + (key,), active)
        return out


def _size(node: Any) -> int:
    if isinstance(node, dict):
        return 1 + sum(_size(v) for v in node.values())
    if isinstance(node, list):
        return 1 + sum(_size(v) for v in node)
    return 1


def _has_ref(node: Any) -> bool:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "$ref" in item:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def dereference(data: Any, file: Path, ctx: Context, where: tuple[Any, ...] = ()) -> Any:
    """`data` (read from `file`) with every `$ref` replaced by what it points to."""
    if not _has_ref(data):
        return data
    refs = _Refs(ctx, where)
    refs.documents[file] = data
    return refs.resolve(data, file, where, ())
