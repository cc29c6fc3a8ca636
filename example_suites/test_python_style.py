"""Python-style prompt tests: the same assertions and gates as the YAML suites, in plain pytest.

`prompt_model(prompt, **params)` calls the configured model (the bundled SmolLM2 unless
`--promptopt-model` or the marker says otherwise) through the response cache and returns a
`Response`; `prompt_check(output, *assertions)` grades it with scored assertions. Tests that share
`@pytest.mark.promptopt(suite=...)` form one gated suite: a failing check is reported as an
expected failure ("tolerated by gate ...") and the suite's gates decide the run.

Without `--promptopt` these tests are skipped, like the suite files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_promptopt import (
    Prompt,
    contains,
    icontains,
    icontains_any,
    is_json,
    not_,
    regex,
    starts_with,
    word_count,
)

HERE = Path(__file__).parent
ANTONYM = Prompt.from_file(HERE / "prompts" / "antonym.txt")  # uses {{word}}

LIST_SCHEMA = {
    "type": "array",
    "items": {"type": "string", "minLength": 1},
    "minItems": 3,
    "maxItems": 3,
}

# One gated suite for every test in this module (markers on the module apply to each test).
pytestmark = pytest.mark.promptopt(suite="python-style", gates={"pass_rate": 0.75, "antonym_accuracy": 0.7})


@pytest.mark.parametrize(
    ("word", "expected"),
    [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad")],
)
def test_antonym(prompt_model, prompt_check, word, expected):
    answer = prompt_model(ANTONYM.render(word=word), max_tokens=24)
    prompt_check(
        answer,
        # `{{word}}` in an assertion value is rendered with the test's parameters.
        starts_with('The opposite of "{{word}}"'),
        icontains(expected, metric="antonym_accuracy"),
        word_count(max=20),
    )


@pytest.mark.parametrize("category", ["fruits", "colors"])
def test_list_as_json(prompt_model, prompt_check, category):
    messages = [
        {"role": "system", "content": "You reply only with a JSON array of strings."},
        {"role": "user", "content": "List three vegetables."},
        {"role": "assistant", "content": '["carrot", "potato", "onion"]'},
        {"role": "user", "content": f"List three {category}."},
    ]
    answer = prompt_model(messages, max_tokens=24)
    prompt_check(
        answer,
        is_json(LIST_SCHEMA),
        regex(r'^\["'),
        # the model must not just repeat the example
        not_(icontains_any(["carrot", "potato", "onion"])),
    )
    assert answer.completion_tokens is not None and answer.completion_tokens <= 24


def test_capital_json_roundtrip(prompt_model, prompt_check):
    """A plain pytest assertion after prompt_check works as usual."""
    messages = [
        {"role": "system", "content": "You reply only with JSON."},
        {"role": "user", "content": "Give the city and country of Rome as JSON."},
        {"role": "assistant", "content": '{"city": "Rome", "country": "Italy"}'},
        {"role": "user", "content": "Give the city and country of Paris as JSON."},
    ]
    answer = prompt_model(messages, max_tokens=24)
    prompt_check(answer, is_json({"type": "object", "required": ["city", "country"]}), contains('"France"'))
    import json

    assert json.loads(answer.text)["city"] == "Paris"
