"""The response cache: hits, replay, secrets kept out of keys and answers, many processes at once, and
the faults it survives (a corrupt file, one replaced by another process, a write that fails)."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from pytest_promptopt import FakeModel, Request
from pytest_promptopt.cache import CacheMiss, CacheMode, CallStats, ResponseCache, cache_key
from pytest_promptopt.models.base import Response
from pytest_promptopt.models.hosted import LiteLLMModel


class Counting(FakeModel):
    cacheable = True


def test_readwrite_records_then_hits(tmp_path: Path):
    model = Counting({"q": "a"})
    cache = ResponseCache(tmp_path / "c.sqlite", CacheMode.READWRITE)
    stats = CallStats()
    first = cache.fetch(model, Request.from_prompt("q"), stats)
    second = cache.fetch(model, Request.from_prompt("q"), stats)
    assert (first.text, first.cached, second.text, second.cached) == ("a", False, "a", True)
    assert (stats.calls, stats.cache_hits, len(model.calls)) == (1, 1, 1)


def test_replay_miss_is_an_error_and_off_never_stores(tmp_path: Path):
    model = Counting({"q": "a"})
    with pytest.raises(CacheMiss, match="replay mode"):
        ResponseCache(tmp_path / "c.sqlite", CacheMode.REPLAY).fetch(model, Request.from_prompt("q"), CallStats())
    off = ResponseCache(tmp_path / "c.sqlite", CacheMode.OFF)
    off.fetch(model, Request.from_prompt("q"), CallStats())
    off.fetch(model, Request.from_prompt("q"), CallStats())
    assert len(model.calls) == 2


def test_key_depends_on_model_params_messages_and_repeat_but_not_secrets():
    base = LiteLLMModel("openai/gpt-4o-mini", {"temperature": 0})
    request = Request.from_prompt("hi")
    key = cache_key(base, request)
    assert key != cache_key(LiteLLMModel("openai/gpt-4o-mini", {"temperature": 1}), request)
    assert key != cache_key(base, Request.from_prompt("hello"))
    assert key != cache_key(base, request, repeat=1)
    assert key == cache_key(base, Request.from_prompt("hi", {"authorization": "Bearer sk-secret"}))


def test_keys_and_rows_hold_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ACME_API_KEY", "sk-very-secret-value")
    model = Counting({"q": "a"})
    cache = ResponseCache(tmp_path / "c.sqlite", CacheMode.READWRITE)
    cache.fetch(model, Request.from_prompt("q", {"api_key": "sk-very-secret-value"}), CallStats())
    dump = "\n".join(sqlite3.connect(tmp_path / "c.sqlite").iterdump())
    assert "sk-very-secret-value" not in dump


def _writer(path: str, worker: int, n: int) -> None:
    model = Counting(lambda r: r.prompt.upper())
    cache = ResponseCache(Path(path), CacheMode.READWRITE)
    for i in range(n):
        cache.fetch(model, Request.from_prompt(f"w{worker}-{i}"), CallStats())
        cache.fetch(model, Request.from_prompt(f"shared-{i}"), CallStats())


def test_many_processes_share_one_fresh_cache_without_lost_writes(tmp_path: Path):
    path = tmp_path / "fresh" / "cache.sqlite"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = sqlite3.connect(path).execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    assert rows == 4 * 50 + 50
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# --------------------------------------------------------------------------- faults (docs/faults.md)

SECRET = "sk-cache-test-0123456789abcdef"


def cache_rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT response FROM responses")]


def corrupt(path: Path, how: str) -> bytes | None:
    """Make the cache at `path` unusable as `how` says; returns the bytes that were there."""
    if how == "directory":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()
        (path / "inside.txt").write_text("not a cache")
        return None
    cache = ResponseCache(path)
    model = Counting(lambda r: "x" * 3000)  # rows over several pages
    for i in range(40):
        cache.fetch(model, Request.from_prompt(f"q{i}"), CallStats())
    cache.close()
    data = path.read_bytes()
    if how == "not a database":  # the header overwritten
        path.write_bytes(b"this is not sqlite" * 10 + data[180:])
    else:  # "malformed": the header and schema are intact, every later page is garbage
        path.write_bytes(data[:4096] + bytes(range(256)) * ((len(data) - 4096) // 256))
    return path.read_bytes()


@pytest.mark.parametrize("how", ["not a database", "malformed", "directory"])
def test_a_corrupt_cache_is_moved_aside_and_rebuilt(tmp_path: Path, how: str) -> None:
    path = tmp_path / ".promptopt" / "cache.sqlite"
    before = corrupt(path, how)
    notices: list[str] = []
    cache = ResponseCache(path, CacheMode.READWRITE, notices.append)
    model = Counting({"q": "a"})
    stats = CallStats()
    assert cache.fetch(model, Request.from_prompt("q"), stats).text == "a"
    assert cache.fetch(model, Request.from_prompt("q"), stats).cached
    assert (stats.calls, stats.cache_hits) == (1, 1)
    [aside] = [p for p in path.parent.glob("cache.sqlite.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    if before is not None:
        assert aside.read_bytes() == before  # moved, never deleted
    else:
        assert (aside / "inside.txt").read_text() == "not a cache"
    [notice] = notices
    assert str(path) in notice and "moved aside to cache.sqlite.corrupt-" in notice
    assert ("directory" if how == "directory" else how) in notice
    assert cache.notices == notices
    cache.close()
    assert len(cache_rows(path)) == 1


def test_a_file_another_process_already_replaced_is_not_moved_again(tmp_path: Path) -> None:
    # Two processes had the same corrupt file open; one replaces it; the other, whose connection
    # still reads the old file, must use the new one rather than move it aside too.
    path = tmp_path / "cache.sqlite"
    corrupt(path, "malformed")
    late = ResponseCache(path)
    late.check()  # its connection opened the corrupt file (the schema page is intact)
    said: list[str] = []
    first = ResponseCache(path, CacheMode.READWRITE, said.append)
    model = Counting({"q": "a"})
    first.fetch(model, Request.from_prompt("q"), CallStats())
    assert len(said) == 1 and "database disk image is malformed" in said[0]
    stats = CallStats()
    assert late.fetch(model, Request.from_prompt("q"), stats).cached  # read from the new file
    assert (stats.calls, stats.cache_hits) == (0, 1)
    assert len([p for p in tmp_path.iterdir() if ".corrupt-" in p.name and not p.name.endswith(("-wal", "-shm"))]) == 1
    assert late.notices == []  # nothing for it to move or say


def test_replay_from_a_corrupt_cache_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    corrupt(path, "not a database")
    cache = ResponseCache(path, CacheMode.REPLAY, lambda message: None)
    with pytest.raises(CacheMiss) as raised:
        cache.fetch(Counting({"q": "a"}), Request.from_prompt("q"), CallStats())
    message = str(raised.value)
    assert "replay mode: no recorded response" in message and str(path) in message
    assert "was corrupt (file is not a database)" in message


def test_answers_are_scrubbed_before_they_are_stored_and_replay_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_API_KEY", SECRET)
    reflected = f"you sent Authorization: Bearer {SECRET}"
    path = tmp_path / "cache.sqlite"
    model = Counting({"q": reflected})
    first = ResponseCache(path).fetch(model, Request.from_prompt("q"), CallStats())
    replayed = ResponseCache(path, CacheMode.REPLAY).fetch(model, Request.from_prompt("q"), CallStats())
    assert first.text == replayed.text == "you sent Authorization: Bearer ***"

    class Batching(Counting):
        def generate_batch(self, requests: list[Request]) -> list[Response]:
            return [self.generate(r) for r in requests]

    batch = ResponseCache(path).fetch_batch(Batching({"b": reflected}), [Request.from_prompt("b")], [CallStats()])
    assert batch[0].text.endswith("Bearer ***")
    dump = "\n".join(sqlite3.connect(path).iterdump())
    assert SECRET not in dump and dump.count("Bearer ***") == 2


def test_a_write_that_fails_later_leaves_the_cache_read_only(tmp_path: Path) -> None:
    # SQLite's own "database or disk is full", made by capping the file's pages: the answer is
    # still returned, later writes are skipped with one notice, and reads go on.
    notices: list[str] = []
    cache = ResponseCache(tmp_path / "cache.sqlite", CacheMode.READWRITE, notices.append)
    model = Counting(lambda r: r.prompt * 2000)
    cache.fetch(model, Request.from_prompt("kept"), CallStats())
    conn = cache.file._local.conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    for prompt in ("big1", "big2"):
        assert cache.fetch(model, Request.from_prompt(prompt), CallStats()).text == prompt * 2000
    assert notices == [f"response cache {tmp_path / 'cache.sqlite'} takes no writes (database or disk is full)"]
    assert cache.file.state == "readonly"
    stats = CallStats()
    assert cache.fetch(model, Request.from_prompt("kept"), stats).cached and stats.cache_hits == 1
