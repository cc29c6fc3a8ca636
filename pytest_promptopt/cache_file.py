"""The SQLite file behind the response cache: it degrades, it never stops a run.

Each thread of each process opens its own connection (SQLite in WAL mode with a busy timeout
lets xdist workers, runner threads and Spark executors share one file). What can go wrong with
the file is met here, once, with a notice that names the file:

- corrupt (`file is not a database`, `database disk image is malformed`) or a directory in its
  place: it is moved aside (`cache.sqlite.corrupt-<time>`, its `-wal`/`-shm` beside it) and a new
  one is started; the answers it held are asked again (in replay mode they are missing);
- not writable (a read-only folder or file system, a full disk): answers are read from it when
  it can be opened read-only, and new answers are not recorded; when it cannot be read either,
  the run goes on without a cache.

A fault found while the run goes on (corruption in pages no earlier query read, a disk that
fills up) is met the same way then. Another process may already have moved the file aside: a
file is only moved while it is still the one this connection opened (same inode), so a healthy
file another process just started is never moved.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CacheFile", "CacheWarning"]


class CacheWarning(UserWarning):
    """The response cache could not be used as asked (corrupt, read-only); the run went on."""


# SQLite result codes (`sqlite_errorname`, Python >= 3.11) and, for older Pythons, message words.
_CORRUPT_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
_CORRUPT_WORDS = ("not a database", "malformed", "file is encrypted")
_BUSY_CODES = ("SQLITE_BUSY", "SQLITE_LOCKED")


def _kind(exc: BaseException) -> str:
    """'corrupt', 'busy' or 'unusable' (read-only, cannot open, I/O error, full disk)."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    text = str(exc).lower()
    if isinstance(exc, sqlite3.DatabaseError) and (
        name.startswith(_CORRUPT_CODES) or any(word in text for word in _CORRUPT_WORDS)
    ):
        return "corrupt"
    if name.startswith(_BUSY_CODES) or "database is locked" in text:
        return "busy"
    return "unusable"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class CacheFile:
    """One SQLite file, opened lazily per thread, with `schema` created when it is writable.

    `read`/`write` never raise for a fault of the file: a read gives None, a write False, and
    `report(message)` is called once per new degradation (default: a `CacheWarning`). `state`
    is 'closed' (not opened yet), 'readwrite', 'readonly' or 'off'.
    """

    def __init__(self, path: Path, schema: Sequence[str], report: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.schema = tuple(schema)
        self.report = report or _warn
        self.state = "closed"
        self.notices: list[str] = []  # every degradation, in order, for the run's output
        self._lock = threading.RLock()
        self._local = threading.local()
        self._generation = 0  # bumped when the file is replaced: threads reopen
        self._readonly_uri = ""  # how a read-only file was opened

    # ------------------------------------------------------------------ use

    def read(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """The first row of `sql`, or None (no row, or the file cannot be read)."""
        return self._run(sql, args, write=False)

    def write(self, sql: str, args: Sequence[Any] = ()) -> bool:
        """Run `sql`; False when the file takes no writes (read-only, off, a fault)."""
        return bool(self._run(sql, args, write=True))

    def check(self) -> None:
        """At start-up, before xdist workers exist: an existing file is opened now (a corrupt one
        moved aside, a read-only one noticed here, once, rather than by every worker); a missing
        one is not created (a run may never use the cache), but a folder it could not be created
        in turns the cache off now, with the notice every worker would give."""
        if self.path.exists():
            self._connection()
            return
        why = _unwritable_folder(self.path)
        if why is not None:
            self._degrade("off", _cannot_create(self.path, why))

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------ faults

    def _run(self, sql: str, args: Sequence[Any], write: bool) -> Any:
        for attempt in range(2):
            conn = self._connection()
            if conn is None or (write and self.state != "readwrite"):
                return None
            try:
                cursor = conn.execute(sql, tuple(args))
                return True if write else cursor.fetchone()
            except sqlite3.Error as exc:
                kind = _kind(exc)
                if kind == "corrupt" and attempt == 0:
                    self._replace(exc)
                    continue
                if kind == "busy":
                    # Another process held the file longer than the busy timeout: this one
                    # answer is neither read nor recorded; the cache stays on.
                    self._notice(f"response cache {self.path} stayed locked ({_reason(exc)}): an answer was not cached")
                elif write:
                    self._degrade("readonly", f"response cache {self.path} takes no writes ({_reason(exc)})")
                else:
                    self._degrade("off", f"response cache {self.path} cannot be read ({_reason(exc)})")
                return None
        return None

    def _connection(self) -> sqlite3.Connection | None:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.generation == self._generation and self.state != "off":
            return conn
        if conn is not None:
            conn.close()
            local.conn = None
        with self._lock:
            if self.state == "off":
                return None
            generation = self._generation
            conn = self._open()
        if conn is not None:
            local.conn, local.generation = conn, generation
            local.inode = _inode(self.path)
        return conn

    def _open(self) -> sqlite3.Connection | None:
        """A connection in the file's state, deciding it on first use (under the lock)."""
        if self.state == "readonly":
            return self._open_readonly()
        for attempt in range(2):
            # Taken before opening: a file another process moves aside and replaces meanwhile
            # has another inode, and is then not moved again.
            inode = _inode(self.path)
            try:
                conn = self._open_readwrite()
            except (sqlite3.Error, OSError) as exc:
                if (_kind(exc) == "corrupt" or self.path.is_dir()) and attempt == 0:
                    self._move_aside(exc, inode)
                    continue
                why, folder = _reason(exc), _unwritable_folder(self.path)
                conn = self._open_readonly() if self.path.is_file() else None
                if conn is not None:
                    self._degrade(
                        "readonly",
                        # the folder says more than SQLite's "unable to open database file"
                        f"response cache {self.path} is read-only ({folder or why}): answers are read from it, "
                        "new answers are not recorded",
                    )
                elif folder is not None and not self.path.exists():
                    self._degrade("off", _cannot_create(self.path, folder))
                else:
                    self._degrade(
                        "off", f"response cache {self.path} cannot be opened ({why}): the run goes on without a cache"
                    )
                return conn
            if self.state == "closed":
                self.state = "readwrite"
                folder = _unwritable_folder(self.path)
                if folder is not None or not os.access(self.path, os.W_OK):
                    # SQLite opened it, but a write would fail (a read-only mount): say so now
                    self._degrade(
                        "readonly",
                        f"response cache {self.path} is read-only ({folder or 'the file is not writable'}): "
                        "answers are read from it, new answers are not recorded",
                    )
            return conn
        return None

    def _open_readwrite(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            raise sqlite3.DatabaseError(f"{self.path} is a directory, not a SQLite file")
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 60000")
            _wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            for statement in self.schema:
                conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_readonly(self) -> sqlite3.Connection | None:
        """Read-only: `mode=ro` first; a WAL file in a read-only folder (no `-shm` can be made)
        opens only as `immutable` (what a `-wal` left unmerged holds is then not seen)."""
        uris = [self._readonly_uri] if self._readonly_uri else [f"{self.path.absolute().as_uri()}?{q}" for q in _RO]
        for uri in uris:
            try:
                conn = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None, check_same_thread=False)
            except sqlite3.Error:
                continue
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error:
                conn.close()
                continue
            self._readonly_uri = uri
            return conn
        return None

    def _replace(self, exc: BaseException) -> None:
        """The file this thread reads is corrupt: move it aside, unless another thread or
        process already did (then this thread's connection is stale and reopens)."""
        local = self._local
        with self._lock:
            stale = local.generation != self._generation or _inode(self.path) != getattr(local, "inode", None)
            if not stale:
                self._move_aside(exc, local.inode)
            self._generation += 1
            if self.state == "readonly":
                self._degrade("off", f"response cache {self.path} is corrupt ({_reason(exc)}) and read-only")

    def _move_aside(self, exc: BaseException, inode: int | None) -> None:
        if inode is None or _inode(self.path) != inode:
            return  # another process moved it and started a new one meanwhile
        stamp, n = time.strftime("%Y%m%dT%H%M%S"), 1
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            for suffix in ("-wal", "-shm", ""):  # the main file last: its name is what others look for
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    os.replace(source, f"{aside}{suffix}")
        except OSError as move:
            self._degrade(
                "off", f"response cache {self.path} is corrupt ({_reason(exc)}) and cannot be moved ({_reason(move)})"
            )
            return
        self._notice(
            f"response cache {self.path} was corrupt ({_reason(exc)}): moved aside to {aside.name} and started "
            "afresh; its answers are asked again (replay mode finds none)"
        )

    def _degrade(self, state: str, message: str) -> None:
        with self._lock:
            order = ("closed", "readwrite", "readonly", "off")
            if order.index(state) <= order.index(self.state):
                return  # already as bad or worse: said once
            self.state = state
            self._notice(message)

    def _notice(self, message: str) -> None:
        with self._lock:
            if message in self.notices:
                return
            self.notices.append(message)
        self.report(message)


_RO = ("mode=ro", "mode=ro&immutable=1")


def _unwritable_folder(path: Path) -> str | None:
    """Why no file can be made beside `path` (its folder, or the nearest folder that exists, is
    read-only), or None. Checked without creating anything."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if os.access(folder, os.W_OK):
        return None
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows)
        read_only = False
    return f"{folder} is on a read-only file system" if read_only else f"{folder} is not writable"


def _cannot_create(path: Path, why: str) -> str:
    return f"response cache {path} cannot be created ({why}): the run goes on without a cache"


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _warn(message: str) -> None:
    import warnings

    warnings.warn(CacheWarning(message), stacklevel=3)


def _wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. The switch needs a moment of exclusive access, and SQLite reports "database
    is locked" at once (no busy wait) while another process (an xdist worker opening the same new
    cache) holds it, so retry for a few seconds."""
    deadline = time.monotonic() + 10
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
