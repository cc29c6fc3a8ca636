"""Tests from a CSV file, read as promptfoo reads them (`src/csv.ts`, `src/util/testCaseReader.ts`),
but strict where promptfoo is silent or crashes.

Parsing follows promptfoo's csv-parse options (`columns`, `bom`, no trimming of values, header
names trimmed), strict first and with csv-parse's `relax_quotes` when that fails, as promptfoo does:
then a quoted cell followed by more text before its comma keeps its quotes (`"..." ,` is the var
`"..." `). A row with more or fewer cells than the header is an error naming
the row (csv-parse's "Invalid Record Length": this includes a blank line in a file of several
columns), as are bytes that are not UTF-8, a file without rows, a header cell left empty and a
`__config` cell that is not a number.

Columns: `__expected*` (promptfoo's `type: value` shorthand, `assertion_from_string`),
`__description`, `__metric`, `__threshold`, `__prefix`, `__suffix`, `__metadata:key` and
`__metadata:key[]`, `__config:__expected<N>:threshold`; every other column is a string var.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from ..assertions.base import assertion_types
from ..env_flags import promptfoo_env_bool
from .document import Context

__all__ = ["PROMPTFOO_TYPES", "assertion_from_string", "tests_from_csv"]

# promptfoo 0.121.20's assertion types (`BaseAssertionTypesSchema`): the CSV shorthand knows them
# all, and a type this plugin does not run makes its case an error (not an `equals` check).
PROMPTFOO_TYPES = (
    "answer-relevance bleu classifier contains contains-all contains-any contains-html contains-json "
    "contains-sql contains-xml context-faithfulness context-recall context-relevance conversation-relevance "
    "cost equals factuality finish-reason g-eval gleu guardrails icontains icontains-all icontains-any "
    "is-html is-json is-refusal is-sql is-valid-function-call is-valid-openai-function-call "
    "is-valid-openai-tools-call is-xml javascript latency levenshtein llm-rubric max-score meteor "
    "model-graded-closedqa model-graded-factuality moderation perplexity perplexity-score pi python "
    "regex rouge-n ruby search-rubric select-best similar starts-with tool-call-f1 trace-error-spans "
    "trace-span-count trace-span-duration webhook word-count"
).split()
_THRESHOLDED = {
    "answer-relevance", "classifier", "context-faithfulness", "context-recall", "context-relevance", "cost",
    "latency", "levenshtein", "perplexity-score", "perplexity", "rouge-n", "similar", "starts-with",
}  # fmt: skip
_CODE_SUFFIXES = (".js", ".cjs", ".mjs", ".ts", ".cts", ".mts")
_CELL_END = re.compile(r"[,\r\n]")
_FINITE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")


def _finite(value: str | None) -> float | None:
    """promptfoo's `parseFiniteNumber`: a complete numeric literal, else None."""
    text = (value or "").strip()
    if not _FINITE.match(text):
        return None
    number = float(text)
    return number if number not in (float("inf"), float("-inf")) else None


def _expected_pattern() -> re.Pattern[str]:
    names = sorted(set(PROMPTFOO_TYPES) | {t for t in assertion_types() if not t.endswith(":")}, key=len, reverse=True)
    return re.compile(rf"^(not-)?({'|'.join(map(re.escape, names))})(?:\((\d+(?:\.\d+)?)\))?(?::([\s\S]*))?$")


def _comma_values(value: str) -> list[str]:
    """promptfoo's `parseCommaSeparatedAssertionValues`: `a, "b, c"` -> `['a', 'b, c']`."""
    results, i = [], 0
    while i < len(value):
        while i < len(value) and (value[i].isspace() or value[i] == ","):
            i += 1
        if i >= len(value):
            break
        if value[i] == '"':
            field, i = "", i + 1
            while i < len(value):
                if value[i] == "\\" and i + 1 < len(value) and value[i + 1] in '"\\':
                    field, i = field + value[i + 1], i + 2
                elif value[i] == '"' and i + 1 < len(value) and value[i + 1] == '"':
                    field, i = field + '"', i + 2
                elif value[i] == '"':
                    i += 1
                    break
                else:
                    field, i = field + value[i], i + 1
            else:
                raise ValueError(f"unterminated quoted value in {value[:60]!r}")
            results.append(field)
        else:
            end = value.find(",", i)
            end = len(value) if end == -1 else end
            results.append(value[i:end].strip())
            i = end
    return results


def assertion_from_string(text: str) -> dict[str, Any]:
    """promptfoo's CSV shorthand: `type: value`, `not-type(threshold): value`, else `equals`."""
    text = text.strip()
    if text.startswith(("javascript:", "fn:", "eval:")) or (
        text.startswith("file://") and text[7:].endswith(_CODE_SUFFIXES)
    ):
        prefix = next((p for p in ("javascript:", "fn:", "eval:") if text.startswith(p)), "")
        return {"type": "javascript", "value": text[len(prefix) :].strip()}
    if text.startswith(("grade:", "llm-rubric:")):
        return {"type": "llm-rubric", "value": text.split(":", 1)[1]}
    if text.startswith("python:") or (text.startswith("file://") and (text.endswith(".py") or ".py:" in text)):
        # promptfoo cuts 7 characters from both forms: `file://a.py` becomes the inline code `a.py`
        return {"type": "python", "value": text[7:].strip()}
    match = _expected_pattern().match(text)
    if not match:
        return {"type": "equals", "value": text}
    inverse, kind, threshold, value = match.groups()
    result: dict[str, Any] = {"type": (inverse or "") + kind}
    if kind in {"contains-any", "contains-all", "icontains-any", "icontains-all"}:
        result["value"] = _comma_values(value) if value else value
    elif kind in {"is-json", "contains-json"}:
        result["value"] = value
    elif kind in _THRESHOLDED:
        result["value"] = value.strip() if value is not None else None
        result["threshold"] = _finite(threshold) if threshold is not None else (0.8 if kind == "similar" else 0.75)
    else:
        result["value"] = value.strip() if value is not None else None
        if threshold is not None:  # our extensions (rouge-1, bleu, ...) take `type(N)` too
            result["threshold"] = _finite(threshold)
    return {k: v for k, v in result.items() if v is not None}


def _rows(file: Path, ctx: Context, path: tuple[Any, ...]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    data = file.read_bytes() if file.is_file() else b""
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ctx.error(
            path,
            f"{file.name} line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 (row {max(1, line - 1)}); "
            "save the file as UTF-8",
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        records = []
        line = reader.line_num
        for cells in reader:
            records.append((line + 1, cells))
            line = reader.line_num
    except csv.Error as exc:
        # promptfoo's parseCsvRows parses strictly, and on any error parses the whole file again
        # with csv-parse's relax_quotes (unless PROMPTFOO_CSV_STRICT is set); a file that fails
        # that too is refused.
        if promptfoo_env_bool("PROMPTFOO_CSV_STRICT"):
            raise ctx.error(
                path, f"{file.name} line {reader.line_num}: {exc} (PROMPTFOO_CSV_STRICT is set: quotes are strict)"
            ) from None
        records = _relaxed_records(text, file, ctx, path)
    if not records or not records[0][1] or records[0][1] == [""]:
        raise ctx.error(path, f"{file.name} is empty: give a header line and at least one row")
    (_, header), rows = records[0], records[1:]
    return [h.strip() for h in header], rows


def _relaxed_records(text: str, file: Path, ctx: Context, path: tuple[Any, ...]) -> list[tuple[int, list[str]]]:
    """The records csv-parse reads with `relax_quotes` (promptfoo's second try), each with its first
    line: a cell opened by a quote ends at the closing quote (`""` is one quote) when a comma or the
    line's end follows; when other text follows (`"a" b`), the cell keeps its quotes and runs on to
    the next comma (`"a" b`). A quote inside a cell that does not start with one is text."""
    records: list[tuple[int, list[str]]] = []
    i, n, line = 0, len(text), 1
    while i < n:
        first, cells = line, []
        while True:
            if text.startswith('"', i):
                j, buf = i + 1, []
                while True:
                    if j >= n:
                        raise ctx.error(
                            path, f"{file.name} line {first}: a quoted cell is not closed (no closing quote)"
                        )
                    if text[j] == '"':
                        if text.startswith('"', j + 1):
                            buf.append('"')
                            j += 2
                            continue
                        j += 1
                        break
                    line += text[j] == "\n"
                    buf.append(text[j])
                    j += 1
                cell, i = "".join(buf), j
                if i < n and text[i] not in ",\r\n":
                    end = _cell_end(text, i)
                    cell, i = f'"{cell}"{text[i:end]}', end
            else:
                end = _cell_end(text, i)
                cell, i = text[i:end], end
            cells.append(cell)
            if not text.startswith(",", i):
                break
            i += 1
        i += text.startswith("\r", i)
        i += text.startswith("\n", i)
        line += 1
        records.append((first, [] if cells == [""] else cells))
    return records


def _cell_end(text: str, start: int) -> int:
    """Where an unquoted cell starting at `start` ends: the next comma or line break."""
    found = _CELL_END.search(text, start)
    return found.start() if found else len(text)


def tests_from_csv(file: Path, ctx: Context, path: tuple[Any, ...]) -> list[dict[str, Any]]:
    header, rows = _rows(file, ctx, path)
    if not rows:
        raise ctx.error(path, f"{file.name} has a header but no rows: add at least one row")
    for index, name in enumerate(header, 1):
        if not name and header.index(name) == index - 1:
            # pandas' to_csv writes its index under an empty name (a real config's tests file has
            # one); promptfoo 0.121.20 keeps that column as a var named '' and so does this plugin.
            ctx.warn(
                path,
                f"{file.name}: column {index} of the header has no name (e.g. pandas' index column); "
                "kept as a var named '' as promptfoo keeps it, which no template can use",
            )
        if header.index(name) != index - 1:
            twice = f"column '{name}' appears twice" if name else "two columns of the header have no name"
            raise ctx.error(path, f"{file.name}: {twice} (columns {header.index(name) + 1} and {index})")
        if not name.startswith("__") and re.match(
            r"_(expected|prefix|suffix|description|providerOutput|metric|threshold|metadata|config)", name
        ):
            ctx.warn(path, f"{file.name}: column '{name}' has one underscore; did you mean '_{name}'? (it is a var)")
        if name == "__metadata":
            ctx.warn(path, f"{file.name}: a '__metadata' column needs a key (__metadata:category); ignored")
        if name == "__providerOutput":
            raise ctx.error(
                path,
                f"{file.name}: column '__providerOutput' (a canned answer instead of the provider) is not supported",
            )
        if name.startswith("__") and not _known_column(name):
            raise ctx.error(
                path,
                f"{file.name}: column '{name}' is not supported (use __expected, __description, __metric, __threshold, "
                "__prefix, __suffix, __metadata:<key>, __config:__expected<N>:threshold)",
            )
    tests = []
    for number, (line, cells) in enumerate(rows, 1):
        where = f"{file.name} row {number} (line {line})"
        if not cells and len(header) == 1:
            cells = [""]  # promptfoo: in a one-column file, an empty line is a row with an empty value
        if len(cells) != len(header):
            got = "is an empty line" if len(cells) <= 1 and not "".join(cells).strip() else f"has {len(cells)} cells"
            raise ctx.error(
                path,
                f"{where}: the header has {len(header)} columns, this row {got}; every row needs one cell per column",
            )
        tests.append(_test_from_row(dict(zip(header, cells)), where, number, file, ctx, path))
    return tests


def _known_column(name: str) -> bool:
    return name.startswith(("__expected", "__metadata:", "__config:")) or name in {
        "__description",
        "__metric",
        "__threshold",
        "__prefix",
        "__suffix",
        "__metadata",
    }


def _test_from_row(
    row: dict[str, str], where: str, number: int, file: Path, ctx: Context, path: tuple[Any, ...]
) -> dict[str, Any]:
    """promptfoo's `testCaseFromCsvRow`, with errors that name the row and column."""
    test: dict[str, Any] = {"vars": {}, "assert": [], "options": {}}
    metadata: dict[str, Any] = {}
    configs: dict[int, float] = {}
    metric = None
    for column, cell in row.items():
        if column.startswith("__expected"):
            if cell.strip():
                try:
                    assertion = assertion_from_string(cell.strip())
                except ValueError as exc:
                    raise ctx.error(path, f"{where}, column {column}: {exc}") from None
                if cell.strip().startswith("file://") and assertion["type"] == "python":
                    ctx.warn(
                        path,
                        f"{where}, column {column}: promptfoo reads {cell.strip()!r} as the inline Python code "
                        f"{assertion['value']!r} (it fails there, and here); write python:{cell.strip()}",
                    )
                test["assert"].append(assertion)
        elif column in ("__prefix", "__suffix"):
            test["options"][column[2:]] = cell
        elif column == "__description":
            test["description"] = cell
        elif column == "__metric":
            metric = cell
        elif column == "__threshold":
            if cell.strip():
                value = _finite(cell)
                if value is None:
                    raise ctx.error(
                        path, f"{where}: __threshold {cell!r} is not a number (leave the cell empty for none)"
                    )
                test["threshold"] = value
        elif column.startswith("__metadata:"):
            key = column[len("__metadata:") :]
            if key.endswith("[]") and cell.strip():
                metadata[key[:-2]] = [v.strip().replace("\\,", ",") for v in re.split(r"(?<!\\),", cell)]
            elif cell.strip():
                metadata[key] = cell
        elif column.startswith("__config:"):
            configs.update(_config_cell(column, cell, where, ctx, path))
        elif column != "__metadata":
            test["vars"][column] = cell
    for index, assertion in enumerate(test["assert"]):
        if metric:  # promptfoo sets an empty `__metric` too, and an empty name reports nothing
            assertion["metric"] = metric
        if index in configs:  # promptfoo counts N among the non-empty __expected cells
            assertion["threshold"] = metadata["threshold"] = configs[index]
    if metadata:
        test["metadata"] = metadata
    if not test["options"]:
        del test["options"]
    test.setdefault("description", f"Row #{number}")
    return test


def _config_cell(column: str, cell: str, where: str, ctx: Context, path: tuple[Any, ...]) -> dict[int, float]:
    parts = column[len("__config:") :].split(":")
    if len(parts) != 2:
        ctx.warn(path, f"column '{column}': expected __config:__expected<N>:threshold; ignored (as promptfoo does)")
        return {}
    expected, key = parts
    match = re.fullmatch(r"__expected(\d*)", expected)
    if not match or (match.group(1) and int(match.group(1)) < 1):
        raise ctx.error(path, f"column '{column}': '{expected}' must be __expected or __expected<N> with N >= 1")
    if key != "threshold":
        raise ctx.error(path, f"column '{column}': only 'threshold' can be set this way, not '{key}'")
    value = _finite(cell)
    if value is None:
        raise ctx.error(path, f"{where}, column {column}: {cell!r} is not a number (promptfoo refuses the file too)")
    return {int(match.group(1) or 1) - 1: value}
