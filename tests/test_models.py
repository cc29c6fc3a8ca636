"""Model adapters: echo, the scripted fake, spec parsing, and litellm against a loopback server."""

from __future__ import annotations

import pytest
from fake_openai import FakeOpenAI

from pytest_promptopt import EchoModel, FakeModel, LiteLLMModel, ModelError, Request, Response
from pytest_promptopt.models.specs import BUNDLED, ModelSpec, create_model, parse_model_spec


def test_request_reads_chat_json_prompts_as_messages():
    request = Request.from_prompt('[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]')
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert Request.from_prompt("[not json").messages == ({"role": "user", "content": "[not json"},)


def test_echo_returns_the_rendered_prompt():
    assert EchoModel().generate(Request.from_prompt("exactly this\n")).text == "exactly this\n"


def test_fake_answers_from_mapping_or_function_and_unknown_prompt_is_a_model_error():
    fake = FakeModel({"q1": "a1"}, default=None)
    assert fake.generate(Request.from_prompt("q1")).text == "a1"
    with pytest.raises(ModelError, match="no scripted answer"):
        fake.generate(Request.from_prompt("q2"))
    scripted = FakeModel(lambda r: Response(r.prompt[::-1], latency_ms=5))
    assert scripted.generate(Request.from_prompt("abc")).text == "cba"


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("smollm2", BUNDLED),
        ("bundled", BUNDLED),
        ("echo", "echo"),
        ("openai:gpt-4o-mini", "openai/gpt-4o-mini"),
        ("vertex:gemini-2.0-flash", "vertex_ai/gemini-2.0-flash"),
        ("litellm:groq/llama3-8b", "groq/llama3-8b"),
        ("hosted_vllm/meta-llama/Llama-3-8B", "hosted_vllm/meta-llama/Llama-3-8B"),
    ],
)
def test_model_ids(entry, expected):
    assert parse_model_spec(entry).id == expected


@pytest.mark.parametrize("entry", ["gpt4", "exec:./run.sh", "", {"config": {}}])
def test_bad_model_ids(entry):
    with pytest.raises(ValueError):
        parse_model_spec(entry)


def test_litellm_against_an_openai_compatible_server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ACME_KEY", "sk-test-0123456789")
    with FakeOpenAI(lambda body: (200, "Paris")) as server:
        model = create_model(
            ModelSpec(
                "openai/acme-chat",
                {"api_base": server.base_url, "api_key_env": "ACME_KEY", "temperature": 0, "max_tokens": 8},
            )
        )
        assert isinstance(model, LiteLLMModel)
        response = model.generate(
            Request.from_prompt(
                '[{"role": "system", "content": "Terse."}, {"role": "user", "content": "Capital of France?"}]'
            )
        )
    assert response.text == "Paris"
    assert (response.prompt_tokens, response.completion_tokens) == (7, 1)
    assert response.latency_ms > 0
    sent = server.requests[0]
    assert sent["messages"] == [
        {"role": "system", "content": "Terse."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert sent["temperature"] == 0 and sent["max_tokens"] == 8
    headers = {k.lower(): v for k, v in server.headers[0].items()}
    assert headers["authorization"] == "Bearer sk-test-0123456789"  # key from the environment
    assert "sk-test" not in str(model.cache_identity)


def test_litellm_failure_is_a_model_error_without_the_key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ACME_KEY", "sk-test-0123456789")
    with FakeOpenAI(lambda body: (401, "bad key sk-test-0123456789")) as server:
        model = LiteLLMModel(
            "openai/acme-chat", {"api_base": server.base_url, "api_key_env": "ACME_KEY", "num_retries": 0}
        )
        with pytest.raises(ModelError) as info:
            model.generate(Request.from_prompt("hi"))
    assert "openai/acme-chat" in str(info.value) and "sk-test-0123456789" not in str(info.value)


def test_a_provider_quoting_a_url_with_credentials_or_an_authorization_value_is_masked(monkeypatch: pytest.MonkeyPatch):
    """A server (an mlflow-gateway behind basic auth, a proxy) may quote the URL it was called
    on, or the Authorization header it got, in its error: the model error masks both."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-dummy")
    quoted = (
        "upstream http://alice:Pw@with-at-9911@127.0.0.1:5000/gateway refused; got Authorization: Basic YWxpY2U6UHc="
    )
    with FakeOpenAI(lambda body: (502, quoted)) as server:
        model = LiteLLMModel("openai/acme-chat", {"api_base": server.base_url, "num_retries": 0})
        with pytest.raises(ModelError) as info:
            model.generate(Request.from_prompt("hi"))
    text = str(info.value)
    assert "refused" in text and "127.0.0.1:5000" in text, text  # the message itself stays
    assert "Pw@with-at-9911" not in text and "with-at-9911" not in text and "YWxpY2U6UHc=" not in text


def test_unreachable_server_is_a_model_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-dummy")
    model = LiteLLMModel("openai/acme-chat", {"api_base": "http://127.0.0.1:9/v1", "num_retries": 0, "timeout": 5})
    with pytest.raises(ModelError):
        model.generate(Request.from_prompt("hi"))


def test_collections_in_a_frozen_block_skip_the_objects_made_before_it():
    """gc_pause.existing_objects_frozen: a cycle made before the block and dropped inside it
    survives the block's own collections, and is collected after it; a process's own freeze is
    left as it was."""
    import gc
    import weakref

    from pytest_promptopt.gc_pause import existing_objects_frozen

    class Node:
        me: object = None

    def cycle() -> weakref.ref[Node]:
        node = Node()
        node.me = node
        return weakref.ref(node)

    gc.disable()  # no automatic collection between the steps, only the test's own
    try:
        gc.collect()
        made_before = cycle()
        with existing_objects_frozen():
            assert gc.get_freeze_count() > 0
            made_inside = cycle()
            gc.collect()
            assert made_before() is not None  # skipped: it existed before the block
            assert made_inside() is None  # collected: made in the block
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert made_before() is None  # back with the collector
        gc.freeze()  # a process that froze objects itself: the block freezes nothing more
        made_after_own_freeze = cycle()
        with existing_objects_frozen():
            gc.collect()
            assert made_after_own_freeze() is None
        assert gc.get_freeze_count() > 0  # and unfreezes nothing of its own
    finally:
        gc.unfreeze()
        gc.enable()


def test_key_written_into_params_is_refused():
    with pytest.raises(ModelError, match="must not be written"):
        LiteLLMModel("openai/gpt-4o-mini", {"api_key": "sk-123"})


def test_heavy_imports_pause_the_collector_and_give_it_back_as_it_was():
    """litellm and mlflow are imported with the cyclic collector paused (gc_pause.py): it must
    come back as it was, also after an error and inside another pause."""
    import gc

    from pytest_promptopt.gc_pause import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause decides
    assert gc.isenabled()
    with pytest.raises(ImportError), gc_paused():
        raise ImportError("no such library")
    assert gc.isenabled()
    gc.disable()  # a user's own choice stays
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
