"""Where the run's files go: checked at start-up, and a named fallback when writing fails anyway.

A report path that cannot be written (a read-only folder, a directory in its place, a parent
that is a file) is found before any model is called (`unwritable`), so the run stops at once
with one line naming the option and the path. A path that breaks later (the disk fills, the
folder is removed) is written to a fallback in the temporary folder instead (`write_with_fallback`),
named in the run's output, and the run's other outputs (the other reports, MLflow) still go out.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["fallback_path", "unwritable", "usable_folder", "write_with_fallback"]


def unwritable(path: Path) -> str | None:
    """Why `path` cannot be written, or None when it can. Its folder is created if missing (the
    writer would create it too) and a scratch file is made and removed in it: the same calls
    the atomic writers make, so a folder root may write but a read-only mount refuses is caught."""
    if path.is_dir():
        return "it is a directory"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename or path.parent}"
    try:
        fd, scratch = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check", dir=path.parent)
        os.close(fd)
        os.unlink(scratch)
    except OSError as exc:
        return f"{exc.strerror or type(exc).__name__}: {path.parent}"
    return None


def fallback_path(path: Path, token: str) -> Path:
    """Where a report that could not be written at `path` goes: the temporary folder, named by
    the session's token so two runs never overwrite each other."""
    return Path(tempfile.gettempdir()) / "pytest-promptopt" / token / path.name


def write_with_fallback(path: Path, token: str, write: Callable[[Path], None]) -> tuple[Path, str | None]:
    """`write(path)`, or, when that raises OSError, `write(fallback_path(...))`. Returns the path
    written and a message saying what happened (None when `path` was written). The OSError of
    the fallback itself propagates: nowhere is left to write."""
    try:
        write(path)
        return path, None
    except OSError as exc:
        why = exc.strerror or str(exc)
        other = fallback_path(path, token)
        write(other)
        return other, f"could not write {path} ({why}); written to {other} instead"


def usable_folder(folder: Path, token: str) -> tuple[Path, str | None]:
    """`folder` when files can be written in it (it is created), else its fallback in the
    temporary folder (a dataset suite's per-case table in a read-only project), with a message
    naming both. The fallback depends on `token` and the folder's name only, so every xdist
    worker of a session on this machine picks the same one."""
    why = unwritable(folder / ".probe")
    if why is None:
        return folder, None
    other = fallback_path(folder, token)
    other.mkdir(parents=True, exist_ok=True)
    return other, f"{folder} cannot be written ({why}); written to {other} instead"
