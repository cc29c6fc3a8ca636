"""A SQLite tracking store, checked and created before MLflow opens it.

- `check_store`: a store MLflow cannot write (a read-only folder, a directory at the database's
  path) fails here in milliseconds, with a message naming the path. MLflow itself retries
  opening such a database ten times with growing sleeps, about 100 s
  (`mlflow.store.db.utils.create_sqlalchemy_engine_with_retry`).
- `create_store`: a missing store is copied from an empty template that MLflow's own schema
  migrations built once per MLflow version (under `PROMPTOPT_HOME`, `~/.cache/pytest-promptopt`
  by default), instead of running the ~60 migrations again: about 8 s, mostly waiting for the
  disk, become a file copy. The template has every table at the latest revision and no
  experiment; MLflow adds its Default experiment when it first opens the copy, as it does for a
  store it migrated itself.

Called under `mlflow_calls()` (client.py). Anything unexpected here (a future MLflow without
these internals, a full disk) only costs speed: the store is then left to MLflow.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from ..models.prepared_files import default_home  # the template lives beside the models' copies
from .client import MlflowReportError

__all__ = ["check_store", "create_store", "default_home", "sqlite_file", "template_store"]

_HINT = "give a writable store (--promptopt-mlflow-uri, MLFLOW_TRACKING_URI or upload's --tracking-uri)"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI (relative to the working directory, or
    absolute with four slashes); None for any other URI, an in-memory one or one with options."""
    if not uri.startswith("sqlite:///") or "?" in uri:
        return None
    rest = uri[len("sqlite:///") :]
    return Path(rest) if rest and rest != ":memory:" else None


def check_store(path: Path) -> None:
    """Raise `MlflowReportError` when MLflow could not write the SQLite store at `path`: a
    directory there, a database file it may not write, or a folder where SQLite cannot create
    the database or its journal. MLflow creates missing parent folders, so for a new store the
    nearest existing folder must be writable."""
    if path.is_dir():
        raise MlflowReportError(f"the MLflow store {path} is a directory, not a SQLite database; {_HINT}")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise MlflowReportError(f"the MLflow store {path} is read-only; {_HINT}")
        folder = path.parent
    else:
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise MlflowReportError(f"the MLflow store {path} cannot be created: {folder} is not a folder; {_HINT}")
    # SQLite writes a journal beside the database (os.access also reports a read-only mount).
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MlflowReportError(f"the folder {folder} of the MLflow store {path} is read-only; {_HINT}")


def create_store(path: Path, home: Path) -> bool:
    """Create the missing store `path` as a copy of the template (`template_store`); False when
    it exists already or no template could be made (MLflow then migrates it itself). The copy
    appears under its name in one step, and never replaces a store another session created
    meanwhile."""
    if path.exists():
        return False
    template = template_store(home)
    if template is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    partial = Path(name)
    try:
        with os.fdopen(fd, "wb") as out, template.open("rb") as source:
            shutil.copyfileobj(source, out)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(partial, path)  # fails if the store exists by now: that one is kept
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            if path.exists():
                return False
            os.replace(partial, path)
        return True
    finally:
        partial.unlink(missing_ok=True)


def template_store(home: Path) -> Path | None:
    """An empty store at MLflow's latest schema revision, built once per MLflow version in
    `home` by MLflow's own migrations (None if it cannot be built there)."""
    try:
        from mlflow.store.db import utils as db_utils
        from mlflow.version import VERSION

        head = db_utils._get_latest_schema_revision()
    except Exception:  # noqa: BLE001  (an MLflow without these internals: let it migrate)
        return None
    path = home / f"mlflow-{VERSION}-{head}.db"
    if _revision(path) == head:
        return path
    try:
        home.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=home, prefix=".mlflow-store-", suffix=".tmp")
    except OSError:
        return None
    os.close(fd)
    building = Path(name)
    try:
        _migrate(building, db_utils)
        if _revision(building) != head:
            return None
        with building.open("rb+") as done:
            os.fsync(done.fileno())
        os.replace(building, path)  # another session may do the same: both copies are equal
        return path
    except Exception:  # noqa: BLE001  (a full disk, a migration that fails: MLflow will say so itself)
        return None
    finally:
        building.unlink(missing_ok=True)


def _migrate(path: Path, db_utils: object) -> None:
    """MLflow's schema migrations on an empty file, without waiting for the disk after each
    step: the file is a temporary one, renamed into place only once complete and synced."""
    from sqlalchemy import event

    engine = db_utils.create_sqlalchemy_engine(f"sqlite:///{path}")  # type: ignore[attr-defined]

    @event.listens_for(engine, "connect")
    def _unsynced(connection: sqlite3.Connection, _record: object) -> None:
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA journal_mode=MEMORY")

    try:
        db_utils._initialize_tables(engine)  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def _revision(path: Path) -> str | None:
    """The schema revision of the store at `path` (None if it is missing or not a store)."""
    if not path.is_file():
        return None
    with contextlib.suppress(sqlite3.Error):
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            connection.close()
        return row[0] if row else None
    return None
