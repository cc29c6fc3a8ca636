"""Response cache and record/replay, in one SQLite file shared by every process of a run.

Keys hash the model's identity, the parameters and the messages; never a secret, and answers
are scrubbed of secrets before they are stored. SQLite in WAL mode with a busy timeout lets
pytest-xdist workers read and write concurrently without lost writes; each process opens its own
connection. A corrupt or unwritable file degrades the cache, never the run (cache_file.py).
"""

from __future__ import annotations

import array
import dataclasses
import enum
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache_file import CacheFile
from .models.base import Model, ModelError, Request, Response
from .models.embeddings import Embedder, EmbeddingError
from .redact import scrub, without_secrets

__all__ = ["CacheMiss", "CacheMode", "CallStats", "ResponseCache", "embed", "vector_key"]


class CacheMode(enum.Enum):
    OFF = "off"
    READWRITE = "readwrite"
    REPLAY = "replay"


class CacheMiss(ModelError):
    """Replay mode found no recording for a request (an error: CI must not call the model)."""


@dataclass
class CallStats:
    calls: int = 0
    cache_hits: int = 0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
)
"""

# Sentence embeddings (`similar`), keyed by the embedding model's identity and the text: the
# same texts recur across cases and runs (a reference answer, a rerun of the suite).
_VECTORS = """
CREATE TABLE IF NOT EXISTS embeddings (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    vector BLOB NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(model: Model, request: Request, repeat: int | None = None) -> str:
    """The key of one sample of `request`: `repeat` (default: `request.repeat`) tells repeated
    samples apart, so a warm rerun replays the same N samples."""
    if repeat is None:
        repeat = request.repeat
    blob = json.dumps(
        {
            "model": without_secrets(dict(model.cache_identity)),
            "params": without_secrets(dict(request.params)),
            "messages": [dict(m) for m in request.messages],
            "repeat": repeat,
        },
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Look up, call and record model responses according to the cache mode.

    The file is a `CacheFile`: a corrupt, read-only or missing cache degrades (moved aside and
    rebuilt, read-only, off) with a notice (`notices`, passed to `report`), never an exception.
    An answer that goes into the cache is scrubbed of secrets (`redact.scrub`, the reports'
    rule) before it is stored and returned, so a recorded answer and its replay are the same
    text."""

    def __init__(
        self, path: Path, mode: CacheMode = CacheMode.READWRITE, report: Callable[[str], None] | None = None
    ) -> None:
        self.path = path
        self.mode = mode
        self.file = CacheFile(path, (_SCHEMA, _VECTORS), report)

    @property
    def notices(self) -> list[str]:
        """What degraded (corrupt, read-only, off), in order."""
        return self.file.notices

    def check(self) -> None:
        """Open the file now (see `CacheFile.check`); nothing to do with the cache off."""
        if self.mode is not CacheMode.OFF:
            self.file.check()

    def get(self, key: str) -> Response | None:
        row = self.file.read("SELECT response FROM responses WHERE key = ?", (key,))
        if row is None:
            return None
        return Response.from_dict({**json.loads(row[0]), "cached": True})

    def put(self, key: str, response: Response) -> None:
        data = response.to_dict()
        data.pop("cached", None)
        self.file.write(
            "INSERT OR REPLACE INTO responses (key, model, response, created) VALUES (?, ?, ?, ?)",
            (key, response.model, json.dumps(data, ensure_ascii=False), time.time()),
        )

    def get_vector(self, key: str) -> bytes | None:
        """A stored embedding (float32 bytes), or None."""
        row = self.file.read("SELECT vector FROM embeddings WHERE key = ?", (key,))
        return None if row is None else bytes(row[0])

    def put_vector(self, key: str, model: str, vector: bytes) -> None:
        self.file.write(
            "INSERT OR REPLACE INTO embeddings (key, model, vector, created) VALUES (?, ?, ?, ?)",
            (key, model, vector, time.time()),
        )

    def fetch(self, model: Model, request: Request, stats: CallStats, repeat: int | None = None) -> Response:
        """The model's response to `request` (its sample `repeat`, default `request.repeat`), from
        the cache when the mode allows."""
        if self.mode is CacheMode.OFF or not getattr(model, "cacheable", True):
            stats.calls += 1
            return model.generate(request)  # not stored: the reports redact it (a hosted model scrubs its key)
        key = cache_key(model, request, repeat)
        hit = self.get(key)
        if hit is not None:
            stats.cache_hits += 1
            return hit
        if self.mode is CacheMode.REPLAY:
            raise self._miss(model, key)
        stats.calls += 1
        response = _scrubbed(model.generate(request))
        self.put(key, response)
        return response

    def _miss(self, model: Any, key: str) -> CacheMiss:
        why = f" ({self.file.notices[-1]})" if self.file.notices else ""
        return CacheMiss(
            f"replay mode: no recorded response for model {model.name} and this prompt "
            f"(key {key[:12]}) in {self.path}{why}; record it with --promptopt-cache=readwrite"
        )

    def fetch_batch(
        self, model: Any, requests: Sequence[Request], stats: Sequence[CallStats]
    ) -> list[Response | ModelError]:
        """`fetch` for several requests: the misses are answered by one `model.generate_batch`.
        A fault (or a replay miss) is returned in the place of the responses it cost."""
        use_cache = self.mode is not CacheMode.OFF and getattr(model, "cacheable", True)
        keys = [cache_key(model, r) if use_cache else "" for r in requests]
        answers: list[Response | ModelError | None] = [self.get(k) if k else None for k in keys]
        missing: list[int] = []
        for i, answer in enumerate(answers):
            if answer is not None:
                stats[i].cache_hits += 1
            elif use_cache and self.mode is CacheMode.REPLAY:
                answers[i] = self._miss(model, keys[i])
            else:
                missing.append(i)
        if missing:
            for i in missing:
                stats[i].calls += 1
            try:
                fresh = model.generate_batch([requests[i] for i in missing])
            except ModelError as exc:
                for i in missing:
                    answers[i] = exc
            else:
                for i, response in zip(missing, fresh):
                    if keys[i]:
                        response = _scrubbed(response)
                        self.put(keys[i], response)
                    answers[i] = response
        return answers  # type: ignore[return-value]

    def answers_all(self, model: Any, requests: Iterable[Request] | None) -> bool:
        """Whether every request (None: requests not known) would be answered from the cache, so
        `model` would not be called (a key lookup each, without reading the answers). False with
        the cache off, or empty, or a model that is not cached; True in replay mode, where a miss
        is an error, never a call."""
        if self.mode is CacheMode.OFF or not getattr(model, "cacheable", True):
            return False
        if self.mode is CacheMode.REPLAY:
            return True
        if requests is None or not self.path.is_file():
            return False  # (not created here: the first answer does that)
        found = "SELECT 1 FROM responses WHERE key = ?"
        return all(self.file.read(found, (cache_key(model, request),)) is not None for request in requests)

    def close(self) -> None:
        self.file.close()


def _scrubbed(response: Response) -> Response:
    """`response` without the values of secret environment variables (a provider that reflects
    the request's Authorization header, an answer that quotes a key): `***`, as in reports."""
    text, model = scrub(response.text), scrub(response.model)
    if text == response.text and model == response.model:
        return response
    return dataclasses.replace(response, text=text, model=model)


# ----------------------------------------------------------------------------- sentence embeddings (`similar`)


def vector_key(embedder: Embedder, text: str) -> str:
    blob = json.dumps(
        {"embedder": without_secrets(dict(embedder.cache_identity)), "text": text},
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def embed(embedder: Embedder, texts: Sequence[str], cache: ResponseCache | None = None) -> list[list[float]]:
    """Vectors for `texts`, from `cache` where it has them; the rest in one call to the embedder.

    The cache mode is the response cache's: `off` neither reads nor writes, `replay` reads and
    refuses to call a hosted model for a text it has no vector for (the offline model computes
    it, as that costs nothing), `readwrite` records what it computed. Without a cache, as `off`."""
    mode = cache.mode if cache is not None else CacheMode.OFF
    unique = list(dict.fromkeys(texts))
    keys = {text: vector_key(embedder, text) for text in unique} if mode is not CacheMode.OFF else {}
    found: dict[str, list[float]] = {}
    if cache is not None and mode is not CacheMode.OFF:
        for text in unique:
            blob = cache.get_vector(keys[text])
            if blob is not None:
                found[text] = array.array("f", blob).tolist()
    missing = [text for text in unique if text not in found]
    if missing:
        name = str(getattr(embedder, "name", "") or type(embedder).__name__)
        # an embedder object that does not say it is offline is treated as a hosted one
        if mode is CacheMode.REPLAY and getattr(embedder, "hosted", True):
            raise EmbeddingError(
                f"replay mode: no recorded embedding from {name} for {missing[0][:60]!r}; "
                "record it with --promptopt-cache=readwrite"
            )
        for text, vector in zip(missing, embedder.embed(missing)):
            # Stored as float32; rounded so here too, a rerun from the cache scores the same.
            packed = array.array("f", vector)
            found[text] = packed.tolist()
            if cache is not None and mode is CacheMode.READWRITE:
                cache.put_vector(keys[text], name, packed.tobytes())
    return [found[text] for text in texts]
