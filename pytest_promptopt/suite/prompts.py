"""A suite's `prompts:`: inline templates, prompt files (`---` splitting, JSON chat prompts, globs)
and MLflow Prompt Registry references.
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path
from typing import Any

from ..prompt import Prompt, TemplateError, template_variables
from ..sandbox.scripts import is_code_reference
from .document import Context, load_yaml

_FILE_LIKE = re.compile(r"^[^\n]*\.(txt|md|j2|json|ya?ml|prompt)$")


def load_prompts(raw: Any, ctx: Context) -> list[Prompt]:
    if raw is None:
        return [Prompt("{{prompt}}", label="{{prompt}}")]
    entries = raw if isinstance(raw, list) else [raw]
    prompts: list[Prompt] = []
    for index, entry in enumerate(entries):
        path = ("prompts", index) if isinstance(raw, list) else ("prompts",)
        label = None
        if isinstance(entry, dict):
            label = entry.get("label")
            text = entry.get("raw") or entry.get("id")
        else:
            text = entry
        if text.startswith("prompts:/"):
            prompts.append(_registry_prompt(text, label, path, ctx))
        elif is_code_reference(text if text.startswith("file://") else "file://" + text):
            prompts.append(_function_prompt(text, label, path, ctx))
        elif text.startswith("file://") or (_FILE_LIKE.match(text) and "{{" not in text and " " not in text):
            prompts.extend(_prompt_files(text, label, path, ctx))
        else:
            prompts.append(Prompt(text, label=label or text[:60]))
    for index, prompt in enumerate(prompts):
        try:
            # parses the template: a syntax error is reported here
            _ = template_variables(prompt.template, ctx.filters) if ctx.filters else prompt.variables
        except TemplateError as exc:
            raise ctx.error(("prompts", index) if isinstance(raw, list) else ("prompts",), f"prompt {exc}") from None
    return prompts


def _function_prompt(reference: str, label: str | None, path: tuple[Any, ...], ctx: Context) -> Prompt:
    """A prompt function (`file://prompt.js[:fn]`, `.ts`, `file://prompt.py:fn`): called for each
    case with its vars, it returns the template (sandbox/scripts.py runs it)."""
    body = reference[len("file://") :] if reference.startswith("file://") else reference
    file_part, sep, function = body.rpartition(":")
    if not sep or not file_part or not function.isidentifier():
        file_part, function = body, ""
    file = (ctx.base_dir / file_part).resolve()
    if not file.is_file():
        raise ctx.error(path, f"prompt file not found: {file}")
    target = f"file://{file.as_posix()}" + (f":{function}" if function else "")
    return Prompt(reference, label=label or body, source=str(file), function=target)


def _registry_prompt(uri: str, label: str | None, path: tuple[Any, ...], ctx: Context) -> Prompt:
    """A prompt from the MLflow Prompt Registry, resolved once per session to a fixed version by
    the resolver the loader was given (the session's; `validate` builds one from the environment)."""
    if ctx.resolve_prompt is None:
        raise ctx.error(path, f"registered prompt {uri}: no Prompt Registry to resolve it from here")
    try:
        found = ctx.resolve_prompt(uri)
    except ValueError as exc:  # mlflow.prompts.RegistryError: unknown, malformed, or unreachable
        raise ctx.error(path, f"registered prompt {uri}: {exc}") from None
    return Prompt(found.template, label=label or uri, source=uri, registry_uri=found.uri)


def _prompt_files(reference: str, label: str | None, path: tuple[Any, ...], ctx: Context) -> list[Prompt]:
    pattern = reference[len("file://") :] if reference.startswith("file://") else reference
    matches = (
        sorted(glob.glob(str(ctx.base_dir / pattern)))
        if any(c in pattern for c in "*?[")
        else [str(ctx.base_dir / pattern)]
    )
    if not matches or not Path(matches[0]).is_file():
        raise ctx.error(path, f"prompt file not found: {ctx.base_dir / pattern}")
    prompts: list[Prompt] = []
    for match in matches:
        file = Path(match)
        text = file.read_text(encoding="utf-8")
        if file.suffix in (".yaml", ".yml"):
            prompts.append(Prompt(json.dumps(load_yaml(text)), label=label or file.name, source=str(file)))
            continue
        if file.suffix == ".json":
            prompts.append(Prompt(text, label=label or file.name, source=str(file)))
            continue
        # promptfoo splits text prompt files on lines holding only '---'.
        parts = [p.strip() for p in re.split(r"^---$", text, flags=re.M)]
        for n, part in enumerate(p for p in parts if p):
            prompts.append(
                Prompt(part, label=label or (file.name if len(parts) == 1 else f"{file.name}#{n}"), source=str(file))
            )
    return prompts
