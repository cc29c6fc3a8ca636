"""`python -m pytest_promptopt serve`: any model the plugin knows as an OpenAI-compatible API.

The command runs as a real process on a free port (it prints its base URL first); the OpenAI
Python client (installed with litellm) and plain HTTP talk to it. Behaviour that needs a model
with a controlled speed or fault is tested on an in-process server (`make_server`).
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from model_servers import Served, served, stop

from pytest_promptopt.models.base import ModelError, Request, Response
from pytest_promptopt.models.fakes import FakeModel
from pytest_promptopt.models.serve import ModelServer, make_server
from pytest_promptopt.runners.limits import RetryableModelError

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with served(["serve", "--model", "echo", "--port", "0"], log) as server:
        yield server


def client(base_url: str, **kwargs: Any) -> Any:
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=base_url, api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


def post(
    base_url: str, path: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        base_url + path, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def in_process() -> Iterator[Any]:
    """Start `make_server(model, name)` on a free port in this process; stopped at the end."""
    started: list[ModelServer] = []

    def start(model: Any, name: str = "m", **kwargs: Any) -> ModelServer:
        server = make_server(model, name, log=None, **kwargs)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- the command, on echo


def test_the_command_prints_its_base_url_and_the_openai_client_gets_echo_answers(echo):
    assert echo.base_url.startswith("http://127.0.0.1:") and echo.base_url.endswith("/v1")
    api = client(echo.base_url)
    assert [m.id for m in api.models.list().data] == ["echo"]

    reply = api.chat.completions.create(model="echo", messages=[{"role": "user", "content": "Antonym of hot?"}])
    assert reply.choices[0].message.content == "Antonym of hot?"  # one user turn: its text is the prompt
    assert reply.choices[0].finish_reason == "stop" and reply.model == "echo" and reply.object == "chat.completion"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    reply = api.chat.completions.create(model="echo", messages=turns, max_tokens=8, temperature=0)
    assert json.loads(reply.choices[0].message.content) == turns  # several turns: echo answers their JSON

    text = api.completions.create(model="echo", prompt="Once upon a time")
    assert text.choices[0].text == "Once upon a time" and text.object == "text_completion"


def test_streaming_sends_chunks_usage_and_done(echo):
    api = client(echo.base_url)
    stream = api.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "stream me"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    text = "".join(c.choices[0].text for c in api.completions.create(model="echo", prompt="abc", stream=True))
    assert text == "abc"

    # On the wire: server-sent events ending with [DONE].
    connection = http.client.HTTPConnection(echo.base_url.split("//")[1].split("/")[0], timeout=10)
    connection.request(
        "POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}], "stream": True})
    )
    response = connection.getresponse()
    assert response.getheader("Content-Type") == "text/event-stream"
    events = [line for line in response.read().decode().split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    connection.close()


@pytest.mark.parametrize(
    "path, body, status, param, words",
    [
        ("/chat/completions", b"{not json", 400, None, "not valid JSON"),
        ("/chat/completions", b"[1, 2]", 400, None, "JSON object"),
        ("/chat/completions", {"model": "echo"}, 400, "messages", "'messages' is required"),
        ("/chat/completions", {"messages": []}, 400, "messages", "non-empty list"),
        ("/chat/completions", {"messages": "hi"}, 400, "messages", "non-empty list"),
        ("/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages", "content is required"),
        ("/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages", "role must be"),
        ("/chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400, "messages", "string or a list"),
        ("/chat/completions", {"model": 3, "messages": [{"role": "user", "content": "x"}]}, 400, "model", "string"),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            400,
            "max_tokens",
            ">= 1",
        ),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2.5},
            400,
            "max_tokens",
            "integer",
        ),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            400,
            "temperature",
            "number",
        ),
        ("/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_p": 0}, 400, "top_p", "(0.0, 1.0]"),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "stream": "yes"},
            400,
            "stream",
            "boolean",
        ),
        ("/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stop": [""]}, 400, "stop", "non-empty"),
        ("/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n", "n=1"),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
            400,
            "tools",
            "not supported",
        ),
        (
            "/chat/completions",
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
            404,
            "model",
            "does not exist",
        ),
        ("/completions", {"model": "echo"}, 400, "prompt", "'prompt' is required"),
        ("/completions", {"prompt": ["a", "b"]}, 400, "prompt", "list of one string"),
        ("/embeddings", {"input": "x"}, 404, None, "no route"),
    ],
)
def test_bad_requests_get_openai_errors(echo, path, body, status, param, words):
    got, payload = post(echo.base_url, path, body)
    assert got == status
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and words in error["message"]


def test_an_unknown_model_is_openais_not_found_and_the_connection_stays_usable(echo):
    openai = pytest.importorskip("openai")
    api = client(echo.base_url)
    with pytest.raises(openai.NotFoundError) as raised:
        api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert raised.value.body["code"] == "model_not_found"
    # The same kept-alive connection answers after an error and after an unread body was refused.
    connection = http.client.HTTPConnection(echo.base_url.split("//")[1].split("/")[0], timeout=10)
    for body in (b"{broken", json.dumps({"messages": [{"role": "user", "content": "ok"}]}).encode()):
        connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
    assert response.status == 200
    connection.close()


def test_sigterm_and_ctrl_c_stop_it_cleanly(tmp_path):
    for sig in (signal.SIGTERM, signal.SIGINT):
        with served(["serve", "--model", "echo", "--port", "0"], tmp_path / f"{sig}.log") as server:
            assert (
                post(server.base_url, "/chat/completions", {"messages": [{"role": "user", "content": "x"}]})[0] == 200
            )
            assert stop(server.process, sig) == 0
            assert "stopped" in server.stderr()


def test_an_api_key_is_required_when_named_and_never_logged(tmp_path, monkeypatch):
    key = "sk-serve-test-0123456789abcdef"
    monkeypatch.setenv("PROMPTOPT_SERVE_KEY", key)
    args = ["serve", "--model", "echo", "--port", "0", "--api-key-env", "PROMPTOPT_SERVE_KEY"]
    with served(args, tmp_path / "serve.log") as server:
        body = {"messages": [{"role": "user", "content": "x"}]}
        status, payload = post(server.base_url, "/chat/completions", body)
        assert status == 401 and payload["error"]["code"] == "invalid_api_key"
        assert post(server.base_url, "/chat/completions", body, {"Authorization": "Bearer wrong"})[0] == 401
        reply = client(server.base_url, api_key=key).chat.completions.create(model="echo", messages=body["messages"])
        assert reply.choices[0].message.content == "x"
        stop(server.process)
        assert "POST /v1/chat/completions" in server.stderr() and key not in server.stderr()


def test_command_line_mistakes_are_one_line_errors(tmp_path):
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pytest_promptopt", "serve", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    for args, words in [
        (["--model", "gpt-nothing"], "unknown model 'gpt-nothing'"),
        (["--model", "echo", "--config", "{bad"], "--config is not JSON"),
        (["--model", "fake"], "needs config.responses"),
        (["--model", "echo", "--port", "70000"], "--port must be in 0..65535"),
        (["--model", "echo", "--api-key-env", "PROMPTOPT_NOT_SET_ANYWHERE"], "is not set"),
    ]:
        done = run(*args, "--port", "0") if "--port" not in args else run(*args)
        assert done.returncode in (1, 2) and words in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == ""


# --------------------------------------------------------------------------- in process


def test_generation_params_reach_the_adapter_and_usage_comes_from_its_response(in_process):
    seen: list[Request] = []

    def answer(request: Request) -> Response:
        seen.append(request)
        return Response("one two three", prompt_tokens=11, completion_tokens=3, model="scripted")

    server = in_process(FakeModel(answer), "scripted")
    status, reply = post(
        server.base_url,
        "/chat/completions",
        {
            "model": "scripted",
            "messages": [
                {"role": "developer", "content": "Be terse."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            ],
            "max_completion_tokens": 3,
            "temperature": 0.7,
            "top_p": 0.9,
            "seed": 5,
            "stop": "\n",
            "frequency_penalty": 0.5,  # OpenAI's other fields are accepted and ignored
            "top_k": 40,
        },
    )
    assert status == 200
    assert seen[0].params == {"max_tokens": 3, "temperature": 0.7, "top_p": 0.9, "seed": 5, "stop": ["\n"]}
    assert seen[0].messages == ({"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"})
    assert reply["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    assert reply["choices"][0]["finish_reason"] == "length"  # it used all 3 tokens it was allowed
    status, reply = post(server.base_url, "/completions", {"prompt": "Hi", "max_tokens": 16})
    assert (
        status == 200
        and seen[-1].messages == ({"role": "user", "content": "Hi"},)
        and seen[-1].params == {"max_tokens": 16}
    )
    assert reply["choices"][0]["finish_reason"] == "stop"


def test_requests_are_served_concurrently(in_process):
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def slow(request: Request) -> str:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.4)
        with lock:
            state["now"] -= 1
        return "done"

    server = in_process(FakeModel(slow), "slow")
    body = {"messages": [{"role": "user", "content": "x"}]}
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        statuses = [s for s, _ in pool.map(lambda _: post(server.base_url, "/chat/completions", body), range(4))]
    assert statuses == [200] * 4 and state["max"] == 4
    assert time.perf_counter() - started < 1.2  # not 4 x 0.4 s one after another


def test_model_faults_are_server_errors_without_secrets(in_process, monkeypatch):
    monkeypatch.setenv("PROMPTOPT_TEST_API_KEY", "sk-very-secret-value-42")

    def fail(request: Request) -> str:
        if request.prompt == "busy":
            raise RetryableModelError("upstream 429: slow down")
        raise ModelError("upstream refused key sk-very-secret-value-42")

    server = in_process(FakeModel(fail), "failing")
    status, payload = post(server.base_url, "/chat/completions", {"messages": [{"role": "user", "content": "x"}]})
    assert status == 500 and payload["error"]["type"] == "server_error" and payload["error"]["code"] == "model_error"
    assert "sk-very-secret-value-42" not in payload["error"]["message"] and "***" in payload["error"]["message"]
    status, payload = post(server.base_url, "/chat/completions", {"messages": [{"role": "user", "content": "busy"}]})
    assert status == 503 and "slow down" in payload["error"]["message"]


# --------------------------------------------------------------------------- the bundled model


@pytest.mark.slow_model
def test_the_bundled_model_answers_concurrent_clients_one_generation_at_a_time(tmp_path):
    with served(["serve", "--model", "smollm2", "--port", "0"], tmp_path / "serve.log", timeout=300) as server:
        api = client(server.base_url, timeout=120)
        ask = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]

        def chat(_: int) -> Any:
            return api.chat.completions.create(model="smollm2", messages=ask, max_tokens=16, temperature=0)

        with ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(chat, range(3)))
        texts = {r.choices[0].message.content for r in replies}
        assert len(texts) == 1 and "Paris" in texts.pop()  # greedy, and the lock kept the runs apart
        usage = replies[0].usage
        assert usage.prompt_tokens > 5 and 0 < usage.completion_tokens <= 16
        assert [m.id for m in api.models.list().data] == ["smollm2"]


def test_paths_without_the_v1_prefix_are_accepted(in_process):
    server = in_process(FakeModel({"x": "y"}), "m")
    root = server.base_url[: -len("/v1")]
    assert (
        post(root, "/chat/completions", {"messages": [{"role": "user", "content": "x"}]})[1]["choices"][0]["message"][
            "content"
        ]
        == "y"
    )
    with urllib.request.urlopen(root + "/models", timeout=5) as response:
        assert json.loads(response.read())["data"][0]["id"] == "m"
