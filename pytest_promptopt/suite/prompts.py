"""A suite's `prompts:` read as promptfoo reads them (`src/prompts/`): inline templates, prompt
files by extension, globs in promptfoo's order, the `{file: label}` mapping, `{raw|id, label,
config}` objects, and MLflow Prompt Registry references.

A string is a file path when promptfoo's `maybeFilePath` says so: it starts with `file://`, ends
in a known extension, has a `.` three or four characters from its end, or holds `*`, `/` or `\\`.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..nunjucks import js_json, json_parse
from ..prompt import Prompt
from .document import Context, DocumentError, load_yaml
from .files import expand, has_magic, read_text

__all__ = ["CODE_SUFFIXES", "load_prompts"]

_KNOWN = (".cjs", ".cts", ".j2", ".js", ".json", ".jsonl", ".md", ".mjs", ".mts", ".py", ".ts", ".txt", ".yml", ".yaml")
CODE_SUFFIXES = (".js", ".cjs", ".mjs", ".ts", ".cts", ".mts", ".py")
_EXEC_SUFFIXES = (".sh", ".bash", ".exe", ".bat", ".cmd", ".ps1", ".rb", ".pl")


def load_prompts(raw: Any, ctx: Context) -> tuple[list[Prompt], list[tuple[Any, ...]]]:
    """The suite's prompts, and for each the path of the `prompts:` entry it came from (a split
    file, a glob or a CSV gives several prompts one entry)."""
    if raw is None:
        return [Prompt("{{prompt}}", label="{{prompt}}")], [("prompts",)]
    prompts: list[Prompt] = []
    paths: list[tuple[Any, ...]] = []
    for entry, path in _entries(raw, ctx):
        text = entry.get("raw") or entry.get("id")
        label, config = entry.get("label"), entry.get("config")
        if text.startswith("prompts:/"):
            prompts.append(_registry_prompt(text, label, path, ctx))
        elif _maybe_file_path(text):
            prompts.extend(_prompt_files(text, label, config, path, ctx))
        else:
            ident = entry.get("id")
            prompts.append(
                Prompt(
                    text,
                    label=label or text[:60],
                    config=config,
                    promptfoo_label=label or text,
                    promptfoo_id=str(ident) if ident is not None else None,
                )
            )
        paths += [path] * (len(prompts) - len(paths))
    if not prompts:
        raise ctx.error(("prompts",), "no prompts: give at least one prompt")
    return prompts, paths


def _entries(raw: Any, ctx: Context) -> list[tuple[dict[str, Any], tuple[Any, ...]]]:
    """promptfoo's `normalizeInput`: a string, a list of strings and objects, or a mapping."""
    if isinstance(raw, str):
        return [({"raw": raw}, ("prompts",))]
    if isinstance(raw, Mapping) and not ({"raw", "id"} & set(raw)):
        # `{file://a.txt: label, 'Inline {{x}}': other}`: each key is a prompt, its value the label
        return [({"raw": str(key), "label": str(value)}, ("prompts", str(key))) for key, value in raw.items()]
    if isinstance(raw, Mapping):
        return [({**raw, "raw": raw.get("raw") or raw.get("id")}, ("prompts",))]
    out = []
    for index, entry in enumerate(raw):
        if isinstance(entry, Mapping):
            if not isinstance(entry.get("raw"), str) and not isinstance(entry.get("label"), str):
                # promptfoo refuses the config (combineConfigs); its `id` alone does not do
                raise ctx.error(
                    ("prompts", index),
                    "a prompt object needs `raw` (its text, or file://path) or `label`, as in promptfoo; "
                    "write {raw: ..., id: ...} or {id: ..., label: ...}",
                )
            out.append(({**entry, "raw": entry.get("raw") or entry.get("id")}, ("prompts", index)))
        else:
            out.append(({"raw": entry}, ("prompts", index)))
    return out


def _maybe_file_path(text: str) -> bool:
    if "\n" in text:
        return False
    if text.startswith("file://"):
        return True
    tokens = text.split(":")
    if any(token.endswith(_KNOWN) for token in tokens[-2:]):
        return True
    return text[-3:-2] == "." or text[-4:-3] == "." or any(c in text for c in "*/\\")


def _registry_prompt(uri: str, label: str | None, path: tuple[Any, ...], ctx: Context) -> Prompt:
    """A prompt from the MLflow Prompt Registry, resolved once per session to a fixed version by
    the resolver the loader was given (the session's; `validate` builds one from the environment)."""
    if ctx.resolve_prompt is None:
        raise ctx.error(path, f"registered prompt {uri}: no Prompt Registry to resolve it from here")
    try:
        found = ctx.resolve_prompt(uri)
    except ValueError as exc:  # mlflow.prompts.RegistryError: unknown, malformed, or unreachable
        if getattr(exc, "unreachable", False):
            # The server's fault, not the suite's: its cases are errors (the run's other suites
            # run), where an unknown or malformed reference stops the suite file at collection.
            return Prompt(
                uri, label=label or uri, source=uri, unavailable=f"{ctx.where(path)}: registered prompt {uri}: {exc}"
            )
        raise ctx.error(path, f"registered prompt {uri}: {exc}") from None
    return Prompt(found.template, label=label or uri, source=uri, registry_uri=found.uri)


def _split_function(reference: str) -> tuple[str, str | None]:
    """`file://x.py:fn` -> (`x.py`, `fn`), as promptfoo's `parsePathOrGlob` splits it."""
    name = reference[len("file://") :] if reference.startswith("file://") else reference
    head, colon, tail = name.rpartition(":")
    if colon and len(head) > 1 and head.endswith(CODE_SUFFIXES + (".go", ".rb")):
        return head, tail
    return name, None


def _prompt_files(reference: str, label: str | None, config: Any, path: tuple[Any, ...], ctx: Context) -> list[Prompt]:
    name, function = _split_function(reference)
    if has_magic(name):
        files = expand(name, ctx, path)
        if not files:  # promptfoo: a glob that matches nothing is the text itself
            return [Prompt(reference, label=label or reference[:60], config=config, promptfoo_label=label or reference)]
        if label or config:
            ctx.warn(
                path,
                "promptfoo reads each file of a glob as a prompt of its own, without the entry's label and config; "
                "they are dropped here too: list the files one by one to give them a label or a config",
            )
            label, config = None, None
    else:
        file = Path(name).expanduser()
        file = file if file.is_absolute() else ctx.base_dir / file
        ctx.check_inside(file, path, "prompt file")
        if file.is_dir():
            raise ctx.error(path, f"prompt file {file} is a directory; name a file, or a glob such as {name}/*.txt")
        if not file.exists():
            if not reference.startswith("file://") and (" " in name or "{{" in name):
                ctx.warn(
                    path,
                    f"promptfoo reads {reference[:60]!r} as a file path and refuses it (no such file); it runs as "
                    "an inline prompt here: write it as {raw: ...} to run it in both",
                )
                return [
                    Prompt(reference, label=label or reference[:60], config=config, promptfoo_label=label or reference)
                ]
            raise ctx.error(path, f"prompt file not found: {file}")
        files = [file]
    prompts: list[Prompt] = []
    for file in files:
        prompts.extend(_read_prompt_file(file, function, label, config, path, ctx))
    return prompts


def _read_prompt_file(
    file: Path, function: str | None, label: str | None, config: Any, path: tuple[Any, ...], ctx: Context
) -> list[Prompt]:
    suffix = file.suffix.lower()
    source = str(file)
    # promptfoo's path of the file in its labels: relative to the config's folder (as when
    # `promptfoo eval` runs there).
    where = Path(os.path.relpath(file, ctx.base_dir)).as_posix()
    if suffix in CODE_SUFFIXES:
        # A prompt function: called for each case with its vars, it returns the template
        # (sandbox/scripts.py runs it); a Python file without a function: its output.
        target = f"file://{file.resolve().as_posix()}" + (f":{function}" if function else "")
        shown = file.relative_to(ctx.base_dir).as_posix() if file.is_relative_to(ctx.base_dir) else str(file)
        body = shown + (f":{function}" if function else "")
        named = f"{where}:{function}" if function else where
        if suffix == ".py" and not function:  # promptfoo: `${filePath}: ${fileContent}`
            named = f"{where}: {read_text(file, ctx, path, 'prompt file')}"
        return [
            Prompt(
                target,
                label=label or body,
                source=source,
                config=config,
                function=target,
                promptfoo_label=label or named,
            )
        ]
    if suffix in _EXEC_SUFFIXES:
        raise ctx.error(path, f"{file.name}: executable prompts are not supported; write the prompt as a template")
    text = read_text(file, ctx, path, "prompt file")
    if suffix in (".txt", ".md") and config:
        ctx.warn(path, f"promptfoo drops the config of a {suffix} prompt; it is dropped here too")
        config = None
    if suffix == ".json":
        try:
            text = js_json(json_parse(text))  # promptfoo re-serialises a JSON prompt compactly
        except ValueError:
            pass  # e.g. a chat prompt with {% for %}: its text as it is
        return [
            Prompt(
                text,
                label=label or file.name,
                source=source,
                config=config,
                promptfoo_label=label or f"{where}: {text}",
            )
        ]
    if suffix in (".yaml", ".yml"):
        try:
            text = js_json(load_yaml(text, ctx.limits))
        except DocumentError:
            pass
        named = label or f"{where}: {text[:80]}"
        return [Prompt(text, label=label or file.name, source=source, config=config, promptfoo_label=named)]
    if suffix == ".jsonl":
        lines = [line for line in re.split(r"\r?\n", text) if line]
        several = len(lines) > 1
        return [
            Prompt(
                line,
                label=label or (f"{file.name}#{n}" if several else file.name),
                source=source,
                config=config,
                promptfoo_label=f"{label or where}: {line}" if several else label or where,
            )
            for n, line in enumerate(lines)
        ]
    if suffix in (".j2", ".md"):  # the whole file, whitespace and all
        named = label or f"{where}: {text[:50]}..."
        return [Prompt(text, label=label or file.name, source=source, config=config, promptfoo_label=named)]
    if suffix == ".csv":
        return _csv_prompts(text, file, label, config)
    if suffix != ".txt":
        ctx.warn(
            path,
            f"promptfoo reads no prompt from a {suffix or 'extension-less'} file ({file.name}) and refuses it; "
            "it is read as a text file here (rename it to .txt to run it in both)",
        )
    parts = _split_text(text)
    return [
        Prompt(
            part,
            label=label or (file.name if len(parts) == 1 else f"{file.name}#{n}"),
            source=source,
            promptfoo_label=f"{label}: {where}: {part}" if label else f"{where}: {part}",
        )
        for n, part in enumerate(parts)
    ]


def _split_text(text: str) -> list[str]:
    """promptfoo's `processTxtFile`: chunks between lines that are `---` once trimmed, trimmed."""
    parts, buffer = [], []
    for line in re.split(r"\r?\n", text):
        if line.strip() == "---":
            parts.append("\n".join(buffer).strip())
            buffer = []
        else:
            buffer.append(line)
    parts.append("\n".join(buffer).strip())
    return [p for p in parts if p]


def _csv_prompts(text: str, file: Path, label: str | None, config: Any) -> list[Prompt]:
    """promptfoo's `processCsvPrompts`: one prompt per line without a comma, else the `prompt`
    column (and an optional `label` column), trimmed, empty lines skipped."""
    text = text.removeprefix("\ufeff")
    if "," not in text:
        lines = [line for line in re.split(r"\r?\n", text) if line.strip()]
        start = 1 if lines and lines[0].strip().lower() == "prompt" else 0
        return [
            Prompt(
                line,
                label=label or f"Prompt {n + 1}",
                source=str(file),
                config=config,
                promptfoo_label=label or f"Prompt {n + 1} - {line}",
            )
            for n, line in enumerate(lines[start:])
        ]
    rows = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    prompts = []
    for row in rows:
        cells = {str(k).strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if cells.get("prompt"):
            n = len(prompts) + 1
            named = cells.get("label") or label
            prompts.append(
                Prompt(
                    cells["prompt"],
                    label=named or f"Prompt {n}",
                    source=str(file),
                    config=config,
                    promptfoo_label=named or f"Prompt {n} - {cells['prompt']}",
                )
            )
    return prompts


def configs_differ(prompts: Sequence[Prompt]) -> bool:
    return any(p.config for p in prompts)
