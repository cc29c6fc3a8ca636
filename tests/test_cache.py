"""The response cache: hits, replay, secrets kept out of keys, and many processes at once."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from pytest_promptopt import FakeModel, Request
from pytest_promptopt.cache import CacheMiss, CacheMode, CallStats, ResponseCache, cache_key
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
