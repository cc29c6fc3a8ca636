"""MLflow's AI Gateway and Playground, offline: a real `mlflow server` (SQLite, loopback, the
environment docs/mlflow.md gives it), models served by `python -m pytest_promptopt serve`,
endpoints registered by `python -m pytest_promptopt gateway register`, suites calling
`mlflow-gateway:<endpoint>` with a prompt saved the way the Playground saves one, and the
Playground itself in headless Chromium.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import load_report
from model_servers import Served, mlflow_gateway_server, served, stop
from test_mlflow import free_port, migrated_store  # noqa: F401  (a fixture)

from pytest_promptopt.mlflow.gateway import GatewayError, chat, gateway_base, register_endpoint
from pytest_promptopt.models.base import ModelError, Request
from pytest_promptopt.models.providers import MlflowGatewayModel, with_gateway
from pytest_promptopt.models.specs import create_model, parse_model_spec

pytestmark = pytest.mark.timeout(300)

ANTONYMS = {"responses": {"Antonym of hot?": "cold", "Antonym of up?": "down"}, "default": "I only know antonyms."}


@pytest.fixture(scope="module", autouse=True)
def quiet_mlflow() -> Iterator[None]:
    # Imported before any pytester test snapshots sys.modules (see tests/test_mlflow.py).
    import mlflow.genai  # noqa: F401

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_GATEWAY_URL", "MLFLOW_GATEWAY_API_KEY"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path) -> Iterator[str]:  # noqa: F811
    with mlflow_gateway_server(tmp_path_factory.mktemp("gateway"), migrated_store, free_port()) as url:
        yield url


@pytest.fixture(scope="module")
def echo_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served(["serve", "--model", "echo", "--port", "0"], tmp_path_factory.mktemp("echo") / "serve.log") as up:
        yield up


@pytest.fixture(scope="module")
def antonyms_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    args = ["serve", "--model", "fake", "--config", json.dumps(ANTONYMS), "--name", "antonyms", "--port", "0"]
    with served(args, tmp_path_factory.mktemp("antonyms") / "serve.log") as up:
        yield up


def register(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest_promptopt", "gateway", "register", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def rest(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def answer(reply: dict[str, Any]) -> str:
    return reply["choices"][0]["message"]["content"]


# --------------------------------------------------------------------------- gateway register


def test_register_creates_then_updates_one_endpoint_that_answers_through_the_gateway(gateway, echo_upstream):
    done = register("--tracking-uri", gateway, "--endpoint", "echo-1", "--api-base", echo_upstream.base_url)
    assert done.returncode == 0, done.stderr
    # No --model: the upstream's /v1/models names the only model it serves.
    assert f"gateway endpoint 'echo-1' created on {gateway}: model 'echo' at {echo_upstream.base_url}" in done.stdout
    assert f"{gateway}/#/experiments/0/playground" in done.stdout

    ask = [{"role": "user", "content": "Antonym of hot?"}]
    assert answer(chat(gateway, "echo-1", ask, max_tokens=8, temperature=0)) == "Antonym of hot?"
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=gateway_base(gateway), api_key="unused", max_retries=0)
    reply = api.chat.completions.create(model="echo-1", messages=ask)
    assert reply.choices[0].message.content == "Antonym of hot?"

    # Again, with --model and a check call: the same endpoint, secret and model definition, updated.
    done = register(
        "--tracking-uri",
        gateway,
        "--endpoint",
        "echo-1",
        "--api-base",
        echo_upstream.base_url,
        "--model",
        "echo",
        "--check",
    )
    assert done.returncode == 0, done.stderr
    assert (
        "gateway endpoint 'echo-1' updated" in done.stdout
        and 'check: the endpoint answered "Say hello."' in done.stdout
    )
    api_root = f"{gateway}/api/3.0/mlflow/gateway"
    endpoints = [e for e in rest(f"{api_root}/endpoints/list")["endpoints"] if e["name"] == "echo-1"]
    assert len(endpoints) == 1 and len(endpoints[0]["model_mappings"]) == 1 and endpoints[0]["usage_tracking"] is False
    secrets = [s for s in rest(f"{api_root}/secrets/list")["secrets"] if s["secret_name"] == "promptopt-echo-1"]
    definitions = rest(f"{api_root}/model-definitions/list")["model_definitions"]
    assert len(secrets) == 1 and len([d for d in definitions if d["name"] == "promptopt-echo-1"]) == 1
    # Usage tracking off: the gateway made no `gateway/echo-1` experiment.
    experiments = rest(f"{gateway}/api/2.0/mlflow/experiments/search", {"max_results": 100}).get("experiments", [])
    assert not [e for e in experiments if e["name"] == "gateway/echo-1"]


def test_register_serve_starts_the_model_registers_it_and_serves_until_stopped(gateway, tmp_path, monkeypatch):
    key = "sk-upstream-0123456789abcdef"  # the served model requires it; the gateway's secret holds it
    monkeypatch.setenv("PROMPTOPT_UPSTREAM_KEY", key)
    args = ["gateway", "register", "--tracking-uri", gateway, "--endpoint", "antonyms-served", "--serve"]
    args += ["--model", "fake", "--config", json.dumps(ANTONYMS), "--name", "antonyms", "--port", "0", "--check"]
    args += ["--api-key-env", "PROMPTOPT_UPSTREAM_KEY"]
    with served(args, tmp_path / "register.log") as up:
        assert up.base_url.startswith("http://127.0.0.1:") and up.base_url.endswith("/v1")
        lines = [up.stdout.get(timeout=60) for _ in range(4)]
        assert lines[0].startswith("gateway endpoint 'antonyms-served' created") and "model 'antonyms'" in lines[0]
        assert lines[3] == 'check: the endpoint answered "I only know antonyms."'
        ask = [{"role": "user", "content": "Antonym of up?"}]
        assert answer(chat(gateway, "antonyms-served", ask)) == "down"
        request = urllib.request.Request(f"{up.base_url}/models")
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(request, timeout=10)  # without the key the upstream refuses
        assert stop(up.process) == 0 and "stopped" in up.stderr()
        assert key not in "\n".join(lines) + up.stderr()


def test_a_refused_loopback_upstream_gets_the_server_environment_hint(monkeypatch, tmp_path):
    """MLflow's own validator, without the two variables, and what the command prints for its
    refusal (a stand-in tracking server answers with that message)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_gateway_secret_auth_config

    from pytest_promptopt.mlflow.gateway import _hint

    monkeypatch.delenv("MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS", raising=False)
    messages = []
    for schemes in (None, "http,https"):
        if schemes:
            monkeypatch.setenv("MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES", schemes)
        else:
            monkeypatch.delenv("MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES", raising=False)
        with pytest.raises(MlflowException) as refused:
            _validate_gateway_secret_auth_config({"api_base": "http://127.0.0.1:8000/v1"})
        messages.append(refused.value.message)
        assert "MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS=true" in (_hint(refused.value.message, 400) or "")
    assert "scheme" in messages[0] and "non-public IP" in messages[1]

    class Refusing(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._send(200, {"secrets": []})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self._send(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": messages[1]})

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    stand_in = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=stand_in.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{stand_in.server_address[1]}"
        done = register("--tracking-uri", url, "--endpoint", "e", "--api-base", "http://127.0.0.1:9/v1", "--model", "m")
    finally:
        stand_in.shutdown()
        stand_in.server_close()
    assert done.returncode == 1 and "non-public IP" in done.stderr and "Traceback" not in done.stderr
    assert "hint: " in done.stderr and "MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES=http,https" in done.stderr

    # Not a tracking server at all, and no server where one is named.
    with pytest.raises(GatewayError, match="is not a tracking server") as raised:
        register_endpoint("sqlite:///mlflow.db", "e", "http://127.0.0.1:9/v1", "m")
    assert "mlflow server --backend-store-uri sqlite:///mlflow.db" in str(raised.value)
    with pytest.raises(GatewayError, match="cannot reach the server"):
        register_endpoint(f"http://127.0.0.1:{free_port()}", "e", "http://127.0.0.1:9/v1", "m", timeout=5)
    done = register("--endpoint", "e", "--api-base", "http://127.0.0.1:9/v1", "--serve", "--model", "echo")
    assert done.returncode == 2 and "either --api-base" in done.stderr


# --------------------------------------------------------------------------- mlflow-gateway:<endpoint>


def test_the_gateway_provider_resolves_its_server_and_never_sends_an_openai_key(monkeypatch):
    from fake_openai import FakeOpenAI

    assert parse_model_spec("mlflow-gateway:my-endpoint").id == "mlflow-gateway/my-endpoint"
    # Where the server comes from: the provider's config, else $MLFLOW_GATEWAY_URL, else the session's tracking URI.
    assert with_gateway("mlflow-gateway/e", {}, "http://tracking:5000") == {"gateway_url": "http://tracking:5000"}
    assert with_gateway("mlflow-gateway/e", {}, "sqlite:///mlflow.db") == {}
    assert with_gateway("mlflow-gateway/e", {"gatewayUrl": "http://a:1"}, "http://tracking:5000") == {
        "gatewayUrl": "http://a:1"
    }
    monkeypatch.setenv("MLFLOW_GATEWAY_URL", "http://gw:5000")
    assert with_gateway("mlflow-gateway/e", {}, "http://tracking:5000") == {}
    assert MlflowGatewayModel("e").params["api_base"] == "http://gw:5000/gateway/mlflow/v1"
    monkeypatch.delenv("MLFLOW_GATEWAY_URL")
    with pytest.raises(ModelError, match="no MLflow server to call; set the provider's config.api_base"):
        MlflowGatewayModel("e").generate(Request.from_prompt("x"))

    monkeypatch.setenv("OPENAI_API_KEY", "sk-cloud-key-must-stay-home")
    with FakeOpenAI(lambda body: (200, f"from {body['model']}")) as fake:
        root = fake.base_url[: -len("/v1")]
        model = create_model(parse_model_spec({"id": "mlflow-gateway:ep", "config": {"api_base": root}}))
        assert model.generate(Request.from_prompt("hello")).text == "from ep"
        monkeypatch.setenv("MLFLOW_GATEWAY_API_KEY", "gw-token-0123456789")
        assert model.generate(Request.from_prompt("again")).text == "from ep"
    sent = [{k.lower(): v for k, v in h.items()}["authorization"] for h in fake.headers]
    assert sent == ["Bearer unused", "Bearer gw-token-0123456789"]
    assert model.cache_identity == {"model": "mlflow-gateway/ep", "params": {"api_base": f"{root}/gateway/mlflow/v1"}}


PLAYGROUND_TEMPLATE = [
    {"role": "system", "content": "Answer with one word."},
    {"role": "user", "content": "Antonym of {{word}}?"},
]

SUITE = """
description: playground antonyms
prompts: ["prompts:/{name}@production", "prompts:/{name}@latest"]
providers: ["mlflow-gateway:{endpoint}"]
tests:
  - vars: {{word: hot}}
    assert: [{{type: equals, value: cold}}]
  - vars: {{word: up}}
    assert: [{{type: equals, value: down}}]
gates:
  pass_rate: 1.0
"""


def save_like_the_playground(gateway: str, name: str, messages: list[dict[str, str]], config: dict[str, Any]) -> str:
    """The REST calls MLflow 3.17's Playground makes on "Save prompt" -> "Save version" for a new
    prompt (server/js chunk 7650: createRegisteredPrompt, createRegisteredPromptVersion with the
    chat messages without the assistant turns, `_mlflow_prompt_type` chat and the model settings),
    then the alias a user sets on the prompt's page (registered-models/alias)."""
    api = f"{gateway}/ajax-api/2.0/mlflow"
    is_prompt = {"key": "mlflow.prompt.is_prompt", "value": "true"}
    rest(f"{api}/registered-models/create", {"name": name, "tags": [is_prompt]})
    tags = [
        is_prompt,
        {"key": "mlflow.prompt.text", "value": json.dumps(messages)},
        {"key": "_mlflow_prompt_type", "value": "chat"},
        {"key": "_mlflow_prompt_model_config", "value": json.dumps(config)},
    ]
    body = {"name": name, "description": "from the Playground", "source": "dummy-source", "tags": tags}
    version = rest(f"{api}/model-versions/create", body)["model_version"]["version"]
    rest(f"{api}/registered-models/alias", {"name": name, "alias": "production", "version": version})
    return version


@pytest.mark.parametrize("how", ["plain-mlflow-uri", "xdist-env"])
def test_a_suite_calls_a_gateway_endpoint_with_a_prompt_saved_as_the_playground_saves_it(
    pytester, run_pytest, gateway, antonyms_upstream, monkeypatch, how
):
    endpoint = f"antonyms-{how}"
    assert (
        register("--tracking-uri", gateway, "--endpoint", endpoint, "--api-base", antonyms_upstream.base_url).returncode
        == 0
    )
    name = f"antonym-chat-{how}"
    assert save_like_the_playground(gateway, name, PLAYGROUND_TEMPLATE, {"temperature": 0, "max_tokens": 8}) == "1"

    # MLflow reads it back as a chat prompt.
    import mlflow

    loaded = mlflow.MlflowClient(tracking_uri=gateway).get_prompt_version_by_alias(name, "production")
    assert loaded.template == PLAYGROUND_TEMPLATE and loaded.model_config == {"temperature": 0, "max_tokens": 8}

    pytester.makefile(".promptopt.yaml", antonyms=SUITE.format(name=name, endpoint=endpoint))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-cloud-key-must-stay-home")
    if how == "plain-mlflow-uri":  # the registry, the gateway and the run log: all the one server
        result = run_pytest(
            "--promptopt", "--promptopt-mlflow-uri", gateway, "--promptopt-report", "r.json", mlflow=True
        )
    else:  # the registry and the gateway from MLflow's own variable; no run logged
        monkeypatch.setenv("MLFLOW_TRACKING_URI", gateway)
        result = run_pytest("--promptopt", "-n", "2", "--promptopt-report", "r.json")
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.assert_outcomes(passed=4)
    suite = load_report(pytester.path / "r.json")["suites"][0]
    outputs = sorted((r["vars"]["word"], r["output"]) for r in suite["results"])
    assert outputs == [("hot", "cold"), ("hot", "cold"), ("up", "down"), ("up", "down")]
    assert {r["model"] for r in suite["results"]} == {f"mlflow-gateway/{endpoint}"}
    assert "sk-cloud-key-must-stay-home" not in (pytester.path / "r.json").read_text()


def test_a_gateway_endpoint_that_does_not_exist_is_a_model_error_naming_it(gateway):
    model = create_model(
        parse_model_spec({"id": "mlflow-gateway:nope", "config": {"api_base": gateway, "num_retries": 0}})
    )
    with pytest.raises(ModelError, match="no endpoint 'nope' on http://127.0.0.1:"):
        model.generate(Request.from_prompt("x"))


# --------------------------------------------------------------------------- the Playground in a browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            f"chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}): apt-get install -y chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
        # Offline: anything but loopback (which Chromium never proxies) goes to a closed port.
        "--proxy-server=http://127.0.0.1:9",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def ask_the_playground(browser: Any, gateway: str, endpoint: str, message: str, wait_s: float = 60) -> str:
    """What a user does: open the Playground, pick the endpoint, type, Submit; the answer shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def find(css: str) -> Any:
        return WebDriverWait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, css))

    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException

    def the_option(d: Any) -> Any:
        return next(
            (o for o in d.find_elements(By.CSS_SELECTOR, "[role=option]") if o.text.split("\n")[0] == endpoint), None
        )

    browser.get(f"{gateway}/#/experiments/0/playground")
    # A menu opened before the endpoints have loaded can stay without them (a clean-clone run on
    # MLflow 3.18 waited 30 s on it once): a user opens it again, and so does this, 3 times at
    # most. The menu re-renders while its options are read: a stale one only means "not yet".
    for attempt in range(3):
        find('[data-component-id="mlflow.endpoint-selector.select"] [role=combobox]').click()
        try:
            option = WebDriverWait(browser, 15, ignored_exceptions=(StaleElementReferenceException,)).until(the_option)
            break
        except TimeoutException:
            shown = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "[role=option]")]
            if attempt == 2:
                raise AssertionError(f"no option {endpoint!r} in the endpoint menu, which showed {shown}") from None
            browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    option.click()
    find('textarea[data-component-id="mlflow.playground.prompt_input.content"]').send_keys(message)
    find('[data-component-id="mlflow.playground.submit"]').click()
    card = WebDriverWait(browser, wait_s).until(
        lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="mlflow.playground.assistant.text_card"]')
    )
    return card.text


def test_the_playground_answers_through_the_gateway_and_saves_a_prompt_a_suite_runs(
    pytester, run_pytest, browser, gateway, antonyms_upstream, monkeypatch
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    endpoint = "antonyms-ui"
    assert (
        register("--tracking-uri", gateway, "--endpoint", endpoint, "--api-base", antonyms_upstream.base_url).returncode
        == 0
    )
    assert ask_the_playground(browser, gateway, endpoint, "Antonym of hot?") == "cold"
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Tokens — input: 3, output: 1, total: 4" in body  # the fake model's usage, through the gateway

    # Save prompt -> name -> Save version, as a user would; then a suite runs that version.
    browser.find_element(By.CSS_SELECTOR, '[data-component-id="mlflow.playground.save_to_registry"]').click()
    name_box = WebDriverWait(browser, 30).until(
        lambda d: d.find_element(
            By.CSS_SELECTOR, 'input[data-component-id="mlflow.playground.save_prompt_version.name"]'
        )
    )
    name_box.send_keys("antonym-from-ui")
    browser.find_element(
        By.CSS_SELECTOR, '[data-component-id="mlflow.playground.save_prompt_version.footer.ok"]'
    ).click()
    WebDriverWait(browser, 30).until(
        lambda d: "Saved antonym-from-ui v1 to the registry" in d.find_element(By.TAG_NAME, "body").text
    )
    version = rest(f"{gateway}/api/2.0/mlflow/model-versions/get?name=antonym-from-ui&version=1")["model_version"]
    tags = {t["key"]: t["value"] for t in version["tags"]}
    assert tags["_mlflow_prompt_type"] == "chat" and json.loads(tags["mlflow.prompt.text"]) == [
        {"role": "user", "content": "Antonym of hot?"}  # the answer is not saved, only the prompt's turns
    ]

    pytester.makefile(
        ".promptopt.yaml",
        antonyms=f"""
prompts: ["prompts:/antonym-from-ui@latest"]
providers: ["mlflow-gateway:{endpoint}"]
tests: [{{assert: [{{type: equals, value: cold}}]}}]
""",
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", gateway)
    result = run_pytest("--promptopt")
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.assert_outcomes(passed=1)


@pytest.mark.slow_model
def test_the_playground_answers_with_the_bundled_model(browser, gateway, tmp_path):
    args = ["gateway", "register", "--tracking-uri", gateway, "--endpoint", "smollm2", "--serve", "--model", "smollm2"]
    with served([*args, "--port", "0"], tmp_path / "register.log", timeout=300) as up:
        assert up.stdout.get(timeout=60).startswith("gateway endpoint 'smollm2' ")
        shown = ask_the_playground(
            browser, gateway, "smollm2", "What is the capital of France? Answer in one short sentence.", 180
        )
        assert "Paris" in shown
        assert stop(up.process) == 0
