"""Files a suite names: globs expanded in promptfoo's order, text read with errors that name the
file, and `.env` files (promptfoo's `commandLineOptions.envPath`).
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .document import Context

__all__ = ["expand", "has_magic", "read_env_file", "read_text"]

_MAGIC = re.compile(r"[*?[\]{}]")


def has_magic(pattern: str) -> bool:
    """Whether `pattern` is a glob (promptfoo's glob: `*`, `?`, `[...]`, `{a,b}`)."""
    return bool(_MAGIC.search(pattern))


def expand(pattern: str, ctx: Context, path: Sequence[str | int]) -> list[Path]:
    """The files a glob matches, in promptfoo's order; [] for none.

    promptfoo never sorts what `glob` (v13) returns, and on Linux that is each folder's entries
    in reverse byte order (`z y x ... b a 2 10 1`), the files of a folder before those of its
    subfolders; recorded with promptfoo 0.121.20 (tests/data/promptfoo-format/). Folders are
    skipped; every match must stay inside the project (`Context.check_inside`)."""
    name = pattern[len("file://") :] if pattern.startswith("file://") else pattern
    base = Path(name).expanduser()
    full = base if base.is_absolute() else ctx.base_dir / base
    matches = [Path(m) for m in glob.glob(_braces(str(full)), recursive=True)]
    files = [m for m in matches if m.is_file()]
    files.sort(key=lambda p: (len(p.parts), str(p.parent)))
    ordered: list[Path] = []
    for parent in dict.fromkeys(str(p.parent) for p in files):  # folders in that order, names reversed
        ordered.extend(
            sorted((p for p in files if str(p.parent) == parent), key=lambda p: p.name.encode(), reverse=True)
        )
    for file in ordered:
        ctx.check_inside(file, path)
    return ordered


def _braces(pattern: str) -> str:
    # Python's glob has no `{a,b}`; one level of braces with a single alternative is common
    # enough (`{x}`) to keep, and several alternatives are refused by the caller's "no match".
    return re.sub(r"\{([^{},]*)\}", r"\1", pattern)


def read_text(file: Path, ctx: Context, path: Sequence[str | int], what: str = "file") -> str:
    """A file's text (UTF-8, a BOM dropped), or a `SuiteError` naming it."""
    try:
        data = file.read_bytes()
    except IsADirectoryError:
        raise ctx.error(path, f"{what} {file} is a directory; name a file") from None
    except OSError as exc:
        raise ctx.error(path, f"cannot read {what} {file}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ctx.error(
            path, f"{what} {file} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def read_env_file(file: Path, ctx: Context, path: Sequence[str | int]) -> dict[str, str]:
    """`KEY=value` lines of a dotenv file (`export`, quotes and `#` comments as dotenv reads them)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(read_text(file, ctx, path, "env file").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key):
            raise ctx.error(path, f"{file.name} line {number}: expected KEY=value, got {raw.strip()[:60]!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = value.replace("\\n", "\n").replace('\\"', '"')
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        values[key] = value
    return values


def string_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]
