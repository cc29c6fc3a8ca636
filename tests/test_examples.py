"""The README's main job: the example suites pass their gates on the real bundled model, and the
fast runtime (CTranslate2) answers them exactly as transformers float32 does."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import recorded_reference
from conftest import load_report

from pytest_promptopt import LocalModel, Request
from pytest_promptopt.models.local_runtimes import chosen_runtime

pytestmark = pytest.mark.slow_model

EXAMPLES = Path(__file__).parent.parent / "example_suites"
PYTHON_STYLE_MAX_TOKENS = 24  # example_suites/test_python_style.py passes it in code, not in the report


@pytest.fixture(scope="module")
def main_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`pytest --promptopt example_suites` run once per session (default runtime: CTranslate2 when
    installed); under xdist the workers share it through the session's temporary folder."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this session's folder, above each worker's own
    with open(shared / "main-job.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        tmp_path = shared / "main-job"
        if not (tmp_path / "report.json").is_file():
            _run_main_job(tmp_path)
        return load_report(tmp_path / "report.json")


def _run_main_job(tmp_path: Path) -> None:
    work = tmp_path / "example_suites"
    shutil.copytree(EXAMPLES, work)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--promptopt",
            "-p",
            "no:cacheprovider",
            "-q",
            "--promptopt-report",
            str(tmp_path / "report.json"),
            "example_suites",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_example_suites_pass_their_gates_on_the_bundled_model(main_job: dict[str, Any]):
    suites = {s["name"]: s for s in main_job["suites"]}
    assert set(suites) == {
        "qa-facts",
        "topic-classification",
        "json-extraction",
        "summarization",
        "python-style",
        "fuzz-json",
    }
    for suite in suites.values():
        assert suite["gates"] and suite["gates_passed"], suite["name"]
        assert suite["errors"] == 0
        assert all(r["output"] for r in suite["results"])
        assert suite["model"] == "smollm2-135m-instruct"
    assert sum(s["cases"] for s in suites.values()) >= 30
    # the meaning-aware metrics ran on every summary (the offline embeddings and ROUGE)
    summaries = suites["summarization"]["results"]
    assert all({"faithfulness", "grounded"} <= set(r["named_scores"]) for r in summaries)
    assert len({round(r["named_scores"]["faithfulness"], 3) for r in summaries}) > 1


def _requests(report: dict[str, Any]) -> list[tuple[Request, tuple[str, int, int]]]:
    """Each case of the main job as the model saw it (messages, max_tokens) with the answer it got
    (text, completion tokens, prompt tokens)."""
    cases = []
    for suite in report["suites"]:
        for r in suite["results"]:
            params = dict(r["model_params"]) or {"max_tokens": PYTHON_STYLE_MAX_TOKENS}
            request = Request.from_prompt(r["prompt"], params)  # a JSON list of messages is read as such
            cases.append((request, (r["output"], r["completion_tokens"], r["prompt_tokens"])))
    return cases


def _key(request: Request) -> str:
    return json.dumps([list(request.messages), request.params], sort_keys=True, ensure_ascii=False)


def test_ctranslate2_answers_exactly_as_transformers_float32_on_the_example_suites(main_job: dict[str, Any]):
    """The main job ran on CTranslate2 (chosen when installed), in the suites' own batches with
    their shared prompt prefixes; transformers float32, the reference, gives every case the same
    full completion and the same token counts. (That CTranslate2's answers do not depend on how
    prompts are batched is tested in test_bundled_model.py.)

    transformers' answers are recorded (tests/recorded_reference.py): every case is compared with
    the recording, and the first case of each suite, plus any case not recorded, is answered by
    transformers live and compared with both. A stale recording makes all of them live."""
    if importlib.util.find_spec("ctranslate2") is None:
        pytest.skip("the CTranslate2 runtime is not installed (scripts/setup.sh installs it)")
    assert chosen_runtime() in ("auto", "ctranslate2"), "the main job must run on CTranslate2 here"
    cases = _requests(main_job)
    assert len(cases) >= 50
    recording = recorded_reference.recorded("main_job_answers")
    reference: dict[str, tuple[str, int, int]] = {}
    if recording is not None:
        reference = {_key(Request.from_prompt(e["messages"], e["params"])): tuple(e["answer"]) for e in recording}
    first_of_each_suite = [_requests({"suites": [suite]})[0][0] for suite in main_job["suites"]]
    unrecorded = [request for request, _ in cases if _key(request) not in reference]
    if recording is not None and unrecorded:  # an example suite changed: those cases are answered live
        recorded_reference.stale(f"{len(unrecorded)} of the main job's requests are not in the recording")
    live = first_of_each_suite + unrecorded
    live = list({_key(request): request for request in live}.values())
    answered = LocalModel(runtime="transformers").generate_batch(live)
    now = {_key(request): (r.text, r.completion_tokens, r.prompt_tokens) for request, r in zip(live, answered)}
    assert {key: reference[key] for key in now if key in reference} == {
        key: answer for key, answer in now.items() if key in reference
    }, "transformers no longer answers as recorded"
    reference.update(now)
    assert [answer for _, answer in cases] == [reference[_key(request)] for request, _ in cases]
    if recording is None:
        distinct = {_key(request): request for request, _ in cases}  # the fuzz suite repeats some
        recorded_reference.record_if_asked(
            "main_job_answers",
            [
                {"messages": list(request.messages), "params": dict(request.params), "answer": list(reference[key])}
                for key, request in distinct.items()
            ],
        )
