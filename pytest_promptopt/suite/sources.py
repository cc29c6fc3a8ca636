"""Where a suite's tests come from: inline entries, or files of tests (CSV with promptfoo's
`__expected` shorthand, JSONL, YAML/JSON), and `defaultTest` given inline or as a file.
"""

from __future__ import annotations

import csv
import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..assertions.base import assertion_types
from ..sandbox.javascript import is_javascript_file
from .document import Context, load_yaml
from .schema import validate_fragment


@dataclass
class TestEntry:
    data: dict[str, Any]
    path: tuple[Any, ...]
    index: int


def default_test(raw: Any, ctx: Context) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        loaded = load_structured(raw, ("defaultTest",), ctx)
        if not isinstance(loaded, dict):
            raise ctx.error(("defaultTest",), f"{raw} must hold a test object")
        validate_fragment(loaded, "test", ("defaultTest",), ctx)
        return loaded
    return raw


def read_tests(raw: Any, ctx: Context) -> list[TestEntry]:
    if raw is None:
        return [TestEntry({}, ("tests",), 0)]  # promptfoo runs each prompt once with no vars
    if isinstance(raw, str):
        raw_entries: list[tuple[Any, tuple[Any, ...]]] = [(raw, ("tests",))]
    else:
        raw_entries = [(entry, ("tests", i)) for i, entry in enumerate(raw)]
    tests: list[TestEntry] = []
    for entry, path in raw_entries:
        if isinstance(entry, str):
            for data in _tests_from_file(entry, path, ctx):
                tests.append(TestEntry(data, path, len(tests)))
        else:
            tests.append(TestEntry(entry, path, len(tests)))
    return tests


def _tests_from_file(reference: str, path: tuple[Any, ...], ctx: Context) -> list[dict[str, Any]]:
    pattern = reference[len("file://") :]
    files = (
        sorted(glob.glob(str(ctx.base_dir / pattern)))
        if any(c in pattern for c in "*?[")
        else [str(ctx.base_dir / pattern)]
    )
    if not files or not Path(files[0]).is_file():
        raise ctx.error(path, f"tests file not found: {ctx.base_dir / pattern}")
    tests: list[dict[str, Any]] = []
    for name in files:
        file = Path(name)
        where = f"{reference} ({file.name}"
        if file.suffix == ".csv":
            tests.extend(_tests_from_csv(file, path, ctx))
            continue
        if file.suffix == ".jsonl":
            for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise ctx.error(path, f"{where} line {number}): invalid JSON: {exc}") from None
                if not isinstance(row, dict):
                    raise ctx.error(path, f"{where} line {number}): each line must be a JSON object")
                test = row if {"vars", "assert"} & set(row) else {"vars": row}
                validate_fragment(test, "test", path, ctx, f"{where} line {number})")
                tests.append(test)
            continue
        loaded = load_structured("file://" + str(file), path, ctx)
        rows = loaded if isinstance(loaded, list) else [loaded]
        for number, test in enumerate(rows):
            validate_fragment(test, "test", path, ctx, f"{where} item {number})")
            tests.append(test)
    return tests


# promptfoo's assertionFromString: `type: value`, `not-type(threshold): value`, else equals.
_EXPECTED = re.compile(r"^(not-)?([a-z][a-z0-9-]*)(?:\((\d+(?:\.\d+)?)\))?(?::([\s\S]*))?$")


# promptfoo types this plugin does not run (yet): a CSV cell naming one must not silently become `equals`.
_PROMPTFOO_ONLY = {
    "grade",
    "context-faithfulness",
    "context-recall",
    "context-relevance",
    "classifier",
    "moderation",
    "perplexity",
    "perplexity-score",
    "meteor",
    "webhook",
    "is-sql",
    "contains-sql",
    "is-xml",
    "contains-xml",
    "is-html",
    "contains-html",
    "is-refusal",
    "select-best",
    "is-valid-openai-tools-call",
    "is-valid-openai-function-call",
    "guardrails",
    "finish-reason",
}


def assertion_from_string(text: str) -> dict[str, Any]:
    """promptfoo's CSV shorthand: `type: value`, `not-type(threshold): value`, else `equals`."""
    text = text.strip()
    # promptfoo: `javascript:`, `fn:`, `eval:` and a JavaScript file are javascript checks
    for prefix in ("javascript:", "fn:", "eval:"):
        if text.startswith(prefix):
            return {"type": "javascript", "value": text[len(prefix) :].strip()}
    if text.startswith("file://") and is_javascript_file(text[len("file://") :]):
        return {"type": "javascript", "value": text}
    if text.startswith("python:"):
        return {"type": "python", "value": text[len("python:") :].strip()}
    if text.startswith("file://") and ".py" in text:
        return {"type": "python", "value": text}
    match = _EXPECTED.match(text)
    if match and match.group(2) in assertion_types():
        inverse, kind, threshold, value = match.groups()
        result: dict[str, Any] = {"type": (inverse or "") + kind}
        if kind in {"contains-any", "contains-all", "icontains-any", "icontains-all"}:
            result["value"] = [v.strip() for v in (value or "").split(",") if v.strip()]
        elif kind in {"is-json", "contains-json"}:
            if value:
                result["value"] = value
        elif value is not None:
            result["value"] = value.strip()
        if threshold is not None:
            result["threshold"] = float(threshold)
        elif kind in {"latency", "cost", "levenshtein", "rouge-n"}:
            result["threshold"] = 0.75  # promptfoo's CSV default for thresholded types
        elif kind == "similar":
            result["threshold"] = 0.8  # promptfoo's CSV default for similar (0.75 elsewhere)
        return result
    if match and match.group(2) in _PROMPTFOO_ONLY:
        raise ValueError(f"assertion type '{match.group(2)}' in {text[:60]!r} is not supported here")
    return {"type": "equals", "value": text}


def _tests_from_csv(file: Path, path: tuple[Any, ...], ctx: Context) -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = []
    with file.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        for number, row in enumerate(reader, 2):
            test: dict[str, Any] = {"vars": {}, "assert": []}
            metric = None
            for column, cell in row.items():
                column = (column or "").strip()
                cell = cell if cell is not None else ""
                if column.startswith("__expected"):
                    if cell.strip():
                        try:
                            test["assert"].append(assertion_from_string(cell))
                        except ValueError as exc:
                            raise ctx.error(path, f"{file.name} row {number}, column {column}: {exc}") from None
                elif column == "__description":
                    test["description"] = cell
                elif column == "__metric":
                    metric = cell.strip() or None
                elif column == "__threshold":
                    if not cell.strip():
                        continue
                    try:
                        if float(cell):
                            test["threshold"] = float(cell)
                    except ValueError:
                        raise ctx.error(
                            path, f"{file.name} row {number}: __threshold {cell!r} is not a number"
                        ) from None
                elif column.startswith("__"):
                    raise ctx.error(
                        path,
                        f"{file.name}: column {column!r} is not supported (use __expected, __description, __metric, __threshold)",
                    )
                else:
                    test["vars"][column] = cell
            if metric:
                for assertion in test["assert"]:
                    assertion["metric"] = metric
            test.setdefault("description", f"Row #{number - 1}")
            validate_fragment(test, "test", path, ctx, f"{file.name} row {number}")
            tests.append(test)
    return tests


def load_structured(reference: str, path: tuple[Any, ...], ctx: Context) -> Any:
    import yaml

    file = Path(reference[len("file://") :])
    file = file if file.is_absolute() else ctx.base_dir / file
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ctx.error(path, f"cannot read {file}: {exc.strerror}") from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise ctx.error(path, f"{file.name} does not parse: {exc}") from None
