"""Files the offline models prepare once per machine under the plugin's home (converted
weights): written whole or not at all, built by one process while the others wait.

A folder is built in a temporary sibling and renamed into place; a JSON marker written last
says it is complete; a POSIX lock beside it makes concurrent processes build it once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "MARKER",
    "default_home",
    "discard",
    "locked",
    "locked_if_free",
    "read_json_marker",
    "rename_into_place",
    "replacing",
    "write_json",
]

MARKER = "promptopt-complete"


def default_home() -> Path:
    """The plugin's home for what it prepares once per machine (the offline models' converted
    weights, MLflow's store template): `PROMPTOPT_HOME`, else `~/.cache/pytest-promptopt`."""
    home = os.environ.get("PROMPTOPT_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "pytest-promptopt"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON atomically (a temporary file renamed over `path`)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(data, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json_marker(folder: Path, plain_text: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The folder's marker as a dict, or None if it is missing or not a JSON object. A marker
    whose whole text is a key of `plain_text` (what an older version wrote) reads as its value."""
    try:
        text = (folder / MARKER).read_text(encoding="utf-8")
    except OSError:
        return None
    if plain_text and text.strip() in plain_text:
        return dict(plain_text[text.strip()])
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def rename_into_place(tmp: Path, target: Path) -> None:
    """Move a finished folder into place; losing the race to a process that finished first is fine."""
    try:
        os.rename(tmp, target)
    except OSError:
        if not (target / MARKER).is_file():
            raise  # not a lost race with a process that did not take the lock: a real failure


@contextlib.contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A temporary sibling folder to build `target` in: when the block ends without an error, it
    replaces `target` (whatever was there is discarded first); it is removed in any case. Made
    readable by all (mkdtemp makes it private; the home may be shared: CI, PROMPTOPT_HOME)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)
        yield tmp
        if target.exists():
            discard(target)
        rename_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def discard(folder: Path) -> None:
    """Move a folder aside (atomic) and delete it; another process may be doing the same."""
    aside = folder.with_name(f".{folder.name}.old-{os.getpid()}-{threading.get_ident()}")
    try:
        os.rename(folder, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def locked(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (POSIX `flock`), so one process builds and the others
    wait for it (calling `on_wait` first, when they do have to wait); where `fcntl` is missing
    (Windows), temp folder + rename still keep it whole."""
    fcntl = _fcntl()
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a+b") as handle:
        if not _lock_now(fcntl, handle):
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def locked_if_free(path: Path) -> Iterator[BinaryIO | None]:
    """`path` opened with its lock taken, or None when another process holds it (or without
    `fcntl`). The file is closed at the end of the block but not unlocked: the lock stays with
    any process given this open file (a child started with it), and goes when the last one ends."""
    fcntl = _fcntl()
    if fcntl is None:  # pragma: no cover - not POSIX
        yield None
        return
    with open(path, "a+b") as handle:
        yield handle if _lock_now(fcntl, handle) else None


def _fcntl() -> Any:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    return fcntl


def _lock_now(fcntl: Any, handle: BinaryIO) -> bool:
    """Take `handle`'s lock if no other process holds it."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
