"""The real bundled model (SmolLM2-135M-Instruct on CPU): a suite end to end, and batching."""

from __future__ import annotations

import time

import pytest
from conftest import comparable, load_report

from pytest_promptopt import LocalModel, Request

pytestmark = pytest.mark.slow_model

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
    # Each answer's latency is its own: the time until its last token in the batch, so a shorter
    # answer is done no later than a longer one and none exceeds the batch's wall time; each
    # says how many requests shared the call (an answer alone: 1).
    assert [r.batch_size for r in batched] == [5] * 5 and {r.batch_size for r in alone} == {1}
    assert all(0 < r.latency_ms <= wall_ms for r in batched)
    by_length = sorted(batched, key=lambda r: r.completion_tokens)
    for shorter, longer in zip(by_length, by_length[1:]):
        assert shorter.latency_ms <= longer.latency_ms, [(r.completion_tokens, r.latency_ms) for r in batched]


def test_unknown_parameter_is_a_clear_model_error():
    from pytest_promptopt import ModelError

    with pytest.raises(ModelError, match="max_tokens"):
        LocalModel({"max_token": 5}).generate(Request.from_prompt("hi"))
