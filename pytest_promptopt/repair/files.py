"""Where a proposal goes on disk: a new prompt file and a unified diff beside the suite, and with
`--promptopt-repair-apply` into the suite itself (its prompt file, or its `prompts:` entry)."""

from __future__ import annotations

import re
from pathlib import Path

from ..repair_result import RepairResult
from ..suite.document import format_path
from ..suite.loader import LoadedSuite
from ..suite.model import Case
from .template import is_chat, prompt_diff

__all__ = ["proposal_path", "write_proposal"]

_SUITE_SUFFIX = re.compile(r"(\.promptopt)?\.(ya?ml|json)$")


def proposal_path(suite_file: Path, prompt_index: int, model_slug: str, chat: bool) -> Path:
    """`<suite>.repaired[.p<N>][.<model>].(txt|json)` beside the suite file."""
    stem = _SUITE_SUFFIX.sub("", suite_file.name)
    parts = [stem, "repaired"]
    if prompt_index:
        parts.append(f"p{prompt_index}")
    if model_slug:
        parts.append(model_slug)
    return suite_file.with_name(".".join(parts) + (".json" if chat else ".txt"))


def write_proposal(
    result: RepairResult,
    case: Case,
    rootdir: Path,
    loaded: LoadedSuite,
    *,
    apply: bool = False,
    model_name: str | None = None,
) -> None:
    """Write `result.prompt` and its diff; with `apply`, make the suite (`loaded`, as read for the
    repair) use it. `model_name` (a suite of several providers) joins the file's name. Sets
    `file`, `diff_file`, `diff` and `applied` on `result`; a write that fails is the result's
    reason."""
    assert result.prompt is not None
    suite_file = rootdir / case.suite.file
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", model_name).strip("-") if model_name else ""
    chat = is_chat(result.prompt)
    target = proposal_path(suite_file, case.prompt_index, slug, chat)
    before_name = case.prompt.source or f"{case.suite.file} prompts[{case.prompt_index}]"
    content = result.prompt if result.prompt.endswith("\n") else result.prompt + "\n"
    result.diff = prompt_diff(result.original, content, before_name, _relative(target, rootdir))
    try:
        target.write_text(content, encoding="utf-8")
        diff_file = target.with_suffix(".diff")
        diff_file.write_text(result.diff, encoding="utf-8")
    except OSError as exc:
        result.reason = f"could not write the proposal: {exc}"
        return
    result.file, result.diff_file = _relative(target, rootdir), _relative(diff_file, rootdir)
    if apply:
        _apply(result, case, suite_file, target, chat, loaded)


def _apply(result: RepairResult, case: Case, suite_file: Path, proposal: Path, chat: bool, loaded: LoadedSuite) -> None:
    source = case.prompt.source
    if case.prompt.registry_uri is not None:
        result.reason = "not applied: a registered prompt is not overwritten; its candidate version is in MLflow"
        return
    # A file split into several prompts (`---`) is not rewritten, nor an entry that gives several
    # (a glob, a CSV) replaced: the proposal would replace the others too.
    file = Path(source) if source is not None else None
    in_file = sum(1 for p in loaded.prompts if file is not None and p.source == source)
    if (
        file is not None
        and in_file == 1
        and file.is_file()
        and is_chat(result.original) == chat
        and file.suffix in (".txt", ".json", ".md", "")
    ):
        # Same format: the user's prompt file gets the repaired template (git shows the change).
        file.write_text(result.prompt or "", encoding="utf-8")
        result.applied, result.file = True, str(file)
        return
    # An inline prompt, or a text prompt that became chat messages: the suite's entry now
    # points at the proposal file.
    paths = loaded.prompt_paths
    entry = paths[case.prompt_index] if case.prompt_index < len(paths) else ("prompts",)
    in_entry = sum(1 for path in paths if path == entry)
    if in_file > 1 or in_entry > 1:
        where = file.name if file is not None and in_file > 1 else format_path(entry)
        result.reason = (
            f"not applied: {where} holds {max(in_file, in_entry)} prompts and the proposal would replace them "
            f"all; adopt {proposal.name} by hand"
        )
        return
    index = entry[1] if len(entry) == 2 and isinstance(entry[1], int) else 0 if len(entry) == 1 else None
    if index is not None and _point_entry_at(suite_file, index, f"file://{proposal.name}"):
        result.applied = True
    else:
        result.reason = f"not applied: could not find {format_path(entry)} in {suite_file.name}; edit it by hand"


def _point_entry_at(suite_file: Path, index: int, reference: str) -> bool:
    """Replace the `prompts` entry `index` of a YAML/JSON suite by `reference`, in place, keeping
    every other byte (comments, order) as it was."""
    import yaml

    text = suite_file.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return False
    if not isinstance(root, yaml.MappingNode):
        return False
    prompts = next((value for key, value in root.value if getattr(key, "value", None) == "prompts"), None)
    if isinstance(prompts, yaml.SequenceNode):
        if index >= len(prompts.value):
            return False
        node = prompts.value[index]
    elif isinstance(prompts, yaml.ScalarNode) and index == 0:
        node = prompts
    else:
        return False
    if isinstance(node, yaml.MappingNode):  # {raw: ..., label: ...} or {id: ...}
        node = next((v for k, v in node.value if getattr(k, "value", None) in ("raw", "id")), None)
        if node is None:
            return False
    if not isinstance(node, yaml.ScalarNode):
        return False
    start, end = node.start_mark.index, node.end_mark.index
    suite_file.write_text(text[:start] + '"' + reference + '"' + text[end:], encoding="utf-8")
    return True


def _relative(path: Path, rootdir: Path) -> str:
    try:
        return path.relative_to(rootdir).as_posix()
    except ValueError:
        return str(path)
