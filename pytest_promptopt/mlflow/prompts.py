"""MLflow Prompt Registry references: `prompts:/name/3` and `prompts:/name@alias`.

A reference is resolved once per pytest session, to a fixed version (an alias becomes the version
number it pointed to), and every case of the session uses that version's template. The session
owns a `PromptResolver` whose answers (or errors) live in a small JSON file, the session's
resolutions file (`<cache dir>/registry/<session token>.json`, under a file lock), which also
records the registry's tracking URI. The controller publishes its path in the environment
(`PYTEST_PROMPTOPT_REGISTRY`, see `publish`) while the session is configured: xdist workers,
spawned afterwards, inherit it, and so does `Prompt.from_registry` in a test module, which has
no session to ask (`from_environment`). So every process of a session reuses the first answer,
and an alias moved in the middle of a run changes nothing. The controller deletes the file when
the session ends; the next session deletes the file of one that was killed.

The file never holds credentials: it outlives a killed session, in the project. The URI's
`user:password@` travels beside it in the environment (`PYTEST_PROMPTOPT_REGISTRY_CREDENTIALS`,
a name `redact` takes for a secret's), as `MLFLOW_TRACKING_URI` itself does.

mlflow is imported only when a reference is resolved (DEVELOPERS.md: lazy heavy imports).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..redact import split_credentials, with_credentials
from .client import mlflow_calls, one_line, safe_uri

__all__ = [
    "CREDENTIALS_ENV",
    "REGISTRY_ENV",
    "SCHEME",
    "PromptResolver",
    "RegistryError",
    "Resolved",
    "fetch",
    "is_registry_uri",
    "parse_uri",
]

SCHEME = "prompts:/"
REGISTRY_ENV = "PYTEST_PROMPTOPT_REGISTRY"  # the path of the running session's resolutions file
CREDENTIALS_ENV = "PYTEST_PROMPTOPT_REGISTRY_CREDENTIALS"  # its tracking URI's `user:password`, if any
_LEGACY_STALE_S = 86400  # a file that names no owner (an older version's) is a killed session's after a day
# MLflow's prompt names: alphanumerics, `-`, `_`, `.`; a version number or an alias after it.
_URI = re.compile(r"^prompts:/([A-Za-z0-9_.\-]+)(?:/(\d+)|@([A-Za-z0-9_.\-]+))$")


# MLflow's error codes for an unknown prompt, version or alias (a missing alias is an invalid value).
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


class RegistryError(ValueError):
    """A registry reference is malformed, unknown, or the registry cannot be reached
    (`unreachable`: down, refusing the credentials: a fault of the server, not of the suite)."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True)
class Resolved:
    name: str
    version: int
    template: str

    @property
    def uri(self) -> str:
        """The fixed reference: `prompts:/name/<version>`."""
        return f"{SCHEME}{self.name}/{self.version}"


def is_registry_uri(text: Any) -> bool:
    return isinstance(text, str) and text.startswith(SCHEME)


def parse_uri(uri: str) -> tuple[str, int | None, str | None]:
    """`prompts:/name/3` -> (name, 3, None); `prompts:/name@alias` -> (name, None, alias)."""
    match = _URI.match(uri.strip())
    if match is None:
        raise RegistryError(
            f"{uri!r} is not a prompt reference; use prompts:/<name>/<version> or prompts:/<name>@<alias>"
        )
    name, version, alias = match.groups()
    return name, (int(version) if version else None), alias


def fetch(uri: str, tracking_uri: str | None) -> Resolved:
    """One look-up in the registry of `tracking_uri` (None: MLflow's own default)."""
    name, version, alias = parse_uri(uri)
    where = safe_uri(tracking_uri) if tracking_uri else "MLflow's default tracking URI"
    try:
        with mlflow_calls():
            from mlflow import MlflowClient
            from mlflow.exceptions import MlflowException

            client = MlflowClient(tracking_uri=tracking_uri)
            try:
                found = (
                    client.get_prompt_version(name, version)
                    if version is not None
                    else client.get_prompt_version_by_alias(name, alias)
                )
            except MlflowException as exc:
                if exc.error_code not in _NOT_FOUND:
                    raise  # a server that is down or refuses: "cannot read" below
                raise RegistryError(f"not found in the registry at {where}: {exc.message}") from None
    except RegistryError:
        raise
    except Exception as exc:  # network, database, or mlflow missing
        cause = one_line(exc, on=f"prompt '{name}'")
        raise RegistryError(f"cannot read the registry at {where}: {cause}", unreachable=True) from None
    if found is None:
        raise RegistryError(f"not found in the registry at {where}")
    template = found.template
    if not isinstance(template, str):  # a chat prompt: our JSON chat format
        template = json.dumps(template, ensure_ascii=False)
    return Resolved(found.name, int(found.version), template)


class PromptResolver:
    """Resolves references for one session; `shared` is the session's resolutions file (None:
    this process only).

    The file holds `{"tracking_uri": ..., "owner": {"pid": ..., "host": ...}, "prompts": {reference:
    answer}}`, the URI without credentials, the owner the controller's process."""

    def __init__(self, tracking_uri: str | None, shared: Path | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.shared = shared
        self._known: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._published: tuple[dict[str, str | None], list[Path]] | None = None  # see `publish`

    @classmethod
    def from_environment(cls) -> PromptResolver:
        """The running session's resolver, for code that has no session to ask
        (`Prompt.from_registry` in a test module, `load_suite` given no resolver): the file named
        by $PYTEST_PROMPTOPT_REGISTRY, with the tracking URI it records (and the credentials in
        $PYTEST_PROMPTOPT_REGISTRY_CREDENTIALS). Outside a session (or if that file is gone), this
        process only, on $MLFLOW_TRACKING_URI or MLflow's default."""
        path = os.environ.get(REGISTRY_ENV)
        if path:
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(Path(path).read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    uri = data.get("tracking_uri")
                    credentials = os.environ.get(CREDENTIALS_ENV, "")
                    return cls(with_credentials(uri, credentials) if uri else uri, Path(path))
        return cls(os.environ.get("MLFLOW_TRACKING_URI") or None)

    def resolve(self, uri: str) -> Resolved:
        uri = uri.strip()
        parse_uri(uri)  # a malformed reference fails fast, without MLflow
        with self._lock:
            entry = self._known.get(uri)
            if entry is None:
                entry = self._shared_entry(uri)
                self._known[uri] = entry
        if "error" in entry:
            raise RegistryError(entry["error"], bool(entry.get("unreachable")))
        return Resolved(entry["name"], int(entry["version"]), entry["template"])

    def _shared_entry(self, uri: str) -> dict[str, Any]:
        if self.shared is None:
            return self._lookup(uri)
        self.shared.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.shared.with_suffix(".lock")):
            data = self._read_shared()
            known = data.setdefault("prompts", {})
            if uri not in known:
                known[uri] = self._lookup(uri)
                self._write_shared(data)
            return known[uri]

    def _read_shared(self) -> dict[str, Any]:
        assert self.shared is not None
        if self.shared.exists():
            return json.loads(self.shared.read_text(encoding="utf-8"))
        return {"tracking_uri": self._uri_in_file(), "prompts": {}}

    def _uri_in_file(self) -> str | None:
        return split_credentials(self.tracking_uri)[0] if self.tracking_uri else None

    def _write_shared(self, data: dict[str, Any]) -> None:
        assert self.shared is not None
        tmp = self.shared.with_name(f".{self.shared.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)  # a killed process of the same id left it
        # for this user only: a private registry's templates
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, ensure_ascii=False))
        os.replace(tmp, self.shared)

    def _lookup(self, uri: str) -> dict[str, Any]:
        try:
            found = fetch(uri, self.tracking_uri)
        except RegistryError as exc:
            return {"error": str(exc), "unreachable": exc.unreachable}
        return {"name": found.name, "version": found.version, "template": found.template}

    def publish(self) -> None:
        """Make this the resolver of every process of the session (the controller, at configure):
        write the resolutions file with the tracking URI (without credentials), and name it in
        $PYTEST_PROMPTOPT_REGISTRY, the credentials in $PYTEST_PROMPTOPT_REGISTRY_CREDENTIALS,
        which xdist workers inherit. `discard` puts the previous values back."""
        if self.shared is None or self._published is not None:
            return
        created = [d for d in (self.shared.parent, self.shared.parent.parent) if not d.exists()]
        try:
            self.shared.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale(self.shared.parent)
            with _file_lock(self.shared.with_suffix(".lock")):
                data = self._read_shared()
                data["tracking_uri"] = self._uri_in_file()
                data["owner"] = {"pid": os.getpid(), "host": socket.gethostname()}
                self._write_shared(data)
        except OSError:  # an unwritable cache directory: resolving says so when a reference needs it
            return
        self._published = ({name: os.environ.get(name) for name in (REGISTRY_ENV, CREDENTIALS_ENV)}, created)
        os.environ[REGISTRY_ENV] = str(self.shared)
        credentials = split_credentials(self.tracking_uri or "")[1]
        if credentials:
            os.environ[CREDENTIALS_ENV] = credentials
        else:  # not an outer session's
            os.environ.pop(CREDENTIALS_ENV, None)

    def discard(self) -> None:
        """Delete the session's resolutions file (the controller, at the end of the session), and
        withdraw what `publish` did: the variables' previous values, the folders it created."""
        if self.shared is not None:
            for path in (self.shared, self.shared.with_suffix(".lock")):
                with contextlib.suppress(OSError):
                    path.unlink()
        if self._published is None:
            return
        previous, created = self._published
        self._published = None
        if os.environ.get(REGISTRY_ENV) == str(self.shared):
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        for folder in created:  # innermost first; only if nothing else was written there
            with contextlib.suppress(OSError):
                folder.rmdir()


def _remove_stale(folder: Path) -> None:
    """Delete the resolutions files of this machine's sessions that were killed (SIGKILL, a
    crash) before they could: their owner process is gone. A file that names no owner (written
    by an older version, which kept credentials in it) once it is a day old."""
    host = socket.gethostname()
    for path in folder.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text(encoding="utf-8"))
            owner = data.get("owner") if isinstance(data, dict) else None
            if isinstance(owner, dict):
                if owner.get("host") != host or _alive(owner.get("pid")):
                    continue
            elif time.time() - path.stat().st_mtime < _LEGACY_STALE_S:
                continue
            path.unlink(missing_ok=True)
            path.with_suffix(".lock").unlink(missing_ok=True)


def _alive(pid: Any) -> bool:
    """Whether process `pid` of this machine runs (True when that cannot be told)."""
    if not isinstance(pid, int) or os.name != "posix":  # Windows: os.kill would end it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a+b") as handle:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)  # type: ignore[attr-defined]
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
