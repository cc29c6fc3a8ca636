"""The `databricks/<endpoint>` provider against a loopback stand-in for Databricks Model Serving.

The stand-in has Databricks serving's shapes: `POST /serving-endpoints/<name>/invocations` (the
REST API) and `POST /serving-endpoints/chat/completions` with `model: <name>` (the
OpenAI-compatible route litellm uses), a chat-completion answer, a Bearer personal access token,
Databricks' error bodies (`{"error_code", "message"}`), and `GET /.well-known/databricks-config`
(the host metadata databricks-sdk asks for) answered 404. What it cannot show (real workspace auth
flows, Unity Catalog, AI Gateway on Databricks) is listed in docs/models.md.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import load_report

from pytest_promptopt.models.base import ModelError, Request
from pytest_promptopt.models.providers import databricks_params
from pytest_promptopt.models.specs import create_model, parse_model_spec

pytestmark = pytest.mark.timeout(240)

TOKEN = "dapi0123456789abcdef0123456789abcdef"  # the shape of a Databricks personal access token
ENDPOINTS = {"antonym-llm"}


class FakeServing:
    """Databricks Model Serving on loopback; `calls` records (method, path, headers, body)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str], Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.calls.append(("GET", self.path, dict(self.headers), None))
                self._send(404, {"error_code": "NOT_FOUND", "message": "no host metadata here"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                outer.calls.append(("POST", self.path, dict(self.headers), body))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._send(401, {"error_code": "UNAUTHENTICATED", "message": "Invalid access token."})
                    return
                path = self.path.split("?")[0]
                if path == "/serving-endpoints/chat/completions":
                    name = body.get("model")
                elif path.startswith("/serving-endpoints/") and path.endswith("/invocations"):
                    name = path.split("/")[2]
                else:
                    self._send(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API found for '{path}'"})
                    return
                if name not in ENDPOINTS:
                    self._send(
                        404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Endpoint {name} does not exist."}
                    )
                    return
                word = body["messages"][-1]["content"].rstrip("?").split()[-1]
                text = {"hot": "cold", "up": "down"}.get(word, "unknown")
                self._send(
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": 0,
                        "model": name,
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
                    },
                )

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeServing:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serving(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServing]:
    for name in ("DATABRICKS_API_BASE", "DATABRICKS_API_KEY", "DATABRICKS_HOST", "DATABRICKS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("DATABRICKS_WORKSPACE_URL", raising=False)
    monkeypatch.delenv("DATABRICKS_CONFIG_PROFILE", raising=False)
    with FakeServing() as fake:
        yield fake


SUITE = """
description: databricks antonyms
providers: [{id: "databricks:antonym-llm", config: {max_tokens: 8, temperature: 0}}]
prompts: ["Antonym of {{word}}?"]
tests:
  - vars: {word: hot}
    assert: [{type: equals, value: cold}]
  - vars: {word: up}
    assert: [{type: equals, value: down}]
gates:
  pass_rate: 1.0
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_a_suite_calls_databricks_serving_with_the_token_from_databricks_variables(
    pytester, run_pytest, serving, monkeypatch, workers
):
    monkeypatch.setenv("DATABRICKS_HOST", serving.host)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    pytester.makefile(".promptopt.yaml", antonyms=SUITE)
    # The plain run also logs to MLflow (a SQLite store in the project) and writes the HTML report,
    # so every place a secret could land is on disk below.
    extra = ["--promptopt-html", "r.html"] if not workers else []
    result = run_pytest(
        "--promptopt",
        *workers,
        "--promptopt-report",
        "r.json",
        "-rA",
        "--junitxml",
        "j.xml",
        *extra,
        mlflow=not workers,
    )
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.assert_outcomes(passed=2)
    suite = load_report(pytester.path / "r.json")["suites"][0]
    assert sorted(r["output"] for r in suite["results"]) == ["cold", "down"]

    posts = [c for c in serving.calls if c[0] == "POST"]
    assert {c[1] for c in posts} == {"/serving-endpoints/chat/completions"}  # the OpenAI-compatible route
    assert all(c[2]["Authorization"] == f"Bearer {TOKEN}" and c[3]["model"] == "antonym-llm" for c in posts)
    assert posts[0][3]["messages"][-1]["role"] == "user" and posts[0][3]["max_tokens"] == 8
    assert not [c for c in serving.calls if c[0] == "GET"]  # no databricks-sdk round trips

    # The token is nowhere: report, HTML, JUnit XML, response cache, MLflow store, terminal output.
    found = [
        str(p.relative_to(pytester.path))
        for p in pytester.path.rglob("*")
        if p.is_file() and TOKEN.encode() in p.read_bytes()
    ]
    assert found == [] and TOKEN not in result.stdout.str() + result.stderr.str()
    assert (pytester.path / ".promptopt").exists()  # the cache was written (and searched)
    if not workers:
        assert (pytester.path / "mlflow.db").exists()


def test_a_wrong_token_or_endpoint_is_a_model_error_without_the_token(pytester, run_pytest, serving, monkeypatch):
    monkeypatch.setenv("DATABRICKS_HOST", serving.host)
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapiWRONGwrongWRONGwrong000000000000")
    pytester.makefile(".promptopt.yaml", antonyms=SUITE.replace("gates:\n  pass_rate: 1.0\n", ""))
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", "--promptopt-retries", "0")
    result.assert_outcomes(errors=2)
    suite = load_report(pytester.path / "r.json")["suites"][0]
    assert all("AuthenticationError" in r["error"] or "401" in r["error"] for r in suite["results"])
    assert "dapiWRONGwrongWRONGwrong000000000000" not in (pytester.path / "r.json").read_text() + result.stdout.str()

    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    model = create_model(parse_model_spec({"id": "databricks:missing-llm", "config": {"num_retries": 0}}))
    with pytest.raises(ModelError, match="databricks/missing-llm: NotFoundError"):
        model.generate(Request.from_prompt("Antonym of hot?"))


def test_litellms_own_variables_and_promptfoos_workspace_url_work_too(serving, monkeypatch):
    # litellm's DATABRICKS_API_BASE / DATABRICKS_API_KEY, read by litellm itself.
    monkeypatch.setenv("DATABRICKS_API_BASE", f"{serving.host}/serving-endpoints")
    monkeypatch.setenv("DATABRICKS_API_KEY", TOKEN)
    assert (
        create_model(parse_model_spec("databricks/antonym-llm")).generate(Request.from_prompt("Antonym of up?")).text
        == "down"
    )
    monkeypatch.delenv("DATABRICKS_API_BASE")
    monkeypatch.delenv("DATABRICKS_API_KEY")
    # promptfoo's `workspaceUrl`, with the token in a variable the suite names.
    monkeypatch.setenv("MY_DATABRICKS_PAT", TOKEN)
    spec = parse_model_spec(
        {"id": "databricks:antonym-llm", "config": {"workspaceUrl": serving.host, "apiKeyEnvar": "MY_DATABRICKS_PAT"}}
    )
    model = create_model(spec)
    assert model.generate(Request.from_prompt("Antonym of hot?")).text == "cold"
    assert TOKEN not in json.dumps(model.cache_identity) and TOKEN not in json.dumps(spec.to_dict())
    assert all(c[1] == "/serving-endpoints/chat/completions" for c in serving.calls if c[0] == "POST")
    # promptfoo's other way to name it, `apiKey: '{{ env.NAME }}'`: the same variable, the token
    # itself never in the spec; a literal key stays refused.
    named = parse_model_spec(
        {
            "id": "databricks:antonym-llm",
            "config": {"workspaceUrl": serving.host, "apiKey": "{{ env.MY_DATABRICKS_PAT }}"},
        }
    )
    assert named.params == spec.params and "apiKey" not in json.dumps(named.to_dict())
    assert create_model(named).generate(Request.from_prompt("Antonym of up?")).text == "down"
    with pytest.raises(ValueError, match="API keys must not be written in a suite"):
        parse_model_spec({"id": "databricks:antonym-llm", "config": {"apiKey": TOKEN}})
    # As promptfoo's getApiKey (`config.apiKey || env[config.apiKeyEnvar]`): the apiKey form wins;
    # a variable that is unset renders empty there, and apiKeyEnvar or the provider's own applies.
    both = {"apiKey": "{{ env.MY_DATABRICKS_PAT }}", "apiKeyEnvar": "OTHER_PAT"}
    assert parse_model_spec({"id": "openai:x", "config": both}).params == {"api_key_env": "MY_DATABRICKS_PAT"}
    monkeypatch.delenv("MY_DATABRICKS_PAT")
    assert parse_model_spec({"id": "openai:x", "config": both}).params == {"api_key_env": "OTHER_PAT"}
    assert parse_model_spec({"id": "openai:x", "config": {"apiKey": "{{ env.MY_DATABRICKS_PAT }}"}}).params == {}


def test_databricks_settings_precedence(monkeypatch):
    for name in (
        "DATABRICKS_API_BASE",
        "DATABRICKS_API_KEY",
        "DATABRICKS_HOST",
        "DATABRICKS_TOKEN",
        "DATABRICKS_WORKSPACE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    assert databricks_params({}) == {}
    monkeypatch.setenv("DATABRICKS_HOST", "adb-123.azuredatabricks.net/")
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    assert databricks_params({"max_tokens": 8}) == {
        "max_tokens": 8,
        "api_base": "https://adb-123.azuredatabricks.net/serving-endpoints",
        "api_key_env": "DATABRICKS_TOKEN",  # the token itself stays in the environment
    }
    assert databricks_params({"workspaceUrl": "https://w.cloud.databricks.com"})["api_base"] == (
        "https://w.cloud.databricks.com/serving-endpoints"
    )
    assert databricks_params({"api_base": "http://x/serving-endpoints"})["api_base"] == "http://x/serving-endpoints"
    monkeypatch.setenv("DATABRICKS_API_BASE", "https://litellm-style/serving-endpoints")
    monkeypatch.setenv("DATABRICKS_API_KEY", "dapi-litellm")
    assert databricks_params({}) == {}  # litellm's own variables win: it reads them itself
