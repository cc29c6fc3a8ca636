"""The MLflow Prompt Registry, against a real SQLite store: `prompts:/name/3` and
`prompts:/name@alias` in suites and Python tests, registration of a suite's own prompts, and the
`mlflow.linkedPrompts` tag on each suite's child run.

The store is a copy of test_mlflow.py's migrated template (a fresh store spends seconds migrating).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from conftest import PYTEST, load_report
from test_mlflow import free_port, migrated_store, offline_mlflow, run_tree, sqlite_uri  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(480)  # several pytest sessions per test, each logging to MLflow with traces

FROM_REGISTRY = """
description: greeter
providers: [echo]
prompts: ["prompts:/greet@prod"]
tests:
  - vars: {name: Ada}
    assert: [{type: equals, value: "Hello Ada"}]
  - vars: {name: Bob}
    assert: [{type: equals, value: "Hello Bob"}]
  - vars: {name: Cy}
    assert: [{type: equals, value: "Hello Cy"}]
  - vars: {name: Di}
    assert: [{type: equals, value: "Hello Di"}]
"""

PYTHON_TEST = """
import pytest
from pytest_promptopt import Prompt, equals

PROMPT = Prompt.from_registry("prompts:/greet/2")

@pytest.mark.promptopt(suite="py-greet", model="echo")
def test_pinned_version(prompt_model, prompt_check):
    prompt_check(prompt_model(PROMPT.render(name="Eve")), equals("Hi Eve!"))
"""


def client_for(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def registered_store(pytester: pytest.Pytester, store: Path) -> Any:
    """The project's store (`<rootdir>/mlflow.db`) with `greet` v1 and v2, alias prod -> v1."""
    shutil.copy(store, pytester.path / "mlflow.db")
    client = client_for(sqlite_uri(pytester.path / "mlflow.db"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.register_prompt("greet", "Hello {{name}}")
        client.register_prompt("greet", "Hi {{name}}!")
        client.set_prompt_alias("greet", "prod", 1)
    return client


def linked(run: Any) -> list[dict[str, str]]:
    return json.loads(run.data.tags.get("mlflow.linkedPrompts", "[]"))


@pytest.mark.parametrize("mode", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_alias_and_version_resolve_once_and_child_runs_link_them(pytester, run_pytest, migrated_store, mode):  # noqa: F811
    client = registered_store(pytester, migrated_store)
    pytester.makefile(".promptopt.yaml", greet=FROM_REGISTRY)
    pytester.makepyfile(test_py=PYTHON_TEST)
    result = run_pytest("--promptopt", "--promptopt-report", "report.json", "-p", "no:randomly", *mode, mlflow=True)
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=5)
    # echo answers with the rendered prompt: every case used v1's text (the alias), the Python test v2's.
    report = load_report(pytester.path / "report.json")
    by_suite = {s["name"]: s for s in report["suites"]}
    assert {r["output"] for r in by_suite["greeter"]["results"]} == {"Hello Ada", "Hello Bob", "Hello Cy", "Hello Di"}
    assert all(r["registry_prompts"] == ["prompts:/greet/1"] for r in by_suite["greeter"]["results"])
    assert by_suite["py-greet"]["results"][0]["registry_prompts"] == ["prompts:/greet/2"]

    _, _, children = run_tree(sqlite_uri(pytester.path / "mlflow.db"), pytester.path.name)
    assert linked(children["greeter"]) == [{"name": "greet", "version": "1"}]
    assert linked(children["py-greet"]) == [{"name": "greet", "version": "2"}]
    assert [p.name for p in client.search_prompts()] == ["greet"]  # a registry prompt is not registered again
    assert not list((pytester.path / ".promptopt" / "registry").glob("*.json"))  # the session's file is gone


def test_unknown_references_are_collection_errors_and_an_unreachable_registry_errors_its_cases(
    pytester, run_pytest, migrated_store, monkeypatch
):  # noqa: F811
    registered_store(pytester, migrated_store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(pytester.path / "mlflow.db"))  # MLflow reporting is off here
    pytester.makefile(
        ".promptopt.yaml",
        alias="providers: [echo]\nprompts: ['prompts:/greet@nope']\n",
        version="providers: [echo]\nprompts: ['Hi {{name}}', 'prompts:/greet/7']\ntests: [{vars: {name: A}}]\n",
        name="providers: [echo]\nprompts: {id: 'prompts:/missing/1', label: m}\n",
        malformed="providers: [echo]\nprompts: ['prompts:/greet']\n",
    )
    result = run_pytest("--promptopt", "-n", "2")
    result.assert_outcomes(errors=4)  # collection errors, reported by the workers
    result.stdout.fnmatch_lines_random(
        [
            "*alias.promptopt.yaml:2: prompts[[]0[]]: registered prompt prompts:/greet@nope: not found in the registry at sqlite:///*mlflow.db: Prompt alias nope not found.",
            "*version.promptopt.yaml:2: prompts[[]1[]]: registered prompt prompts:/greet/7: not found in the registry at *: Prompt (name=greet, version=7) not found",
            "*name.promptopt.yaml:2: prompts: registered prompt prompts:/missing/1: not found in the registry at *missing*",
            "*malformed.promptopt.yaml:2: prompts[[]0[]]: registered prompt prompts:/greet: *is not a prompt reference; use prompts:/<name>/<version> or prompts:/<name>@<alias>",
        ]
    )

    # A registry that cannot be read is the server's fault, not the suite's: that prompt's cases
    # are errors (a test with vars, and the prompt beside it runs), and the other suites run.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens
    for name in ("name", "malformed", "alias"):
        (pytester.path / f"{name}.promptopt.yaml").unlink()
    pytester.makefile(
        ".promptopt.yaml",
        other="providers: [echo]\nprompts: ['Plain {{name}}']\ntests: [{vars: {name: B}}]\n",
        # a dataset's and a fuzz block's cases of that prompt are errors too, not the suite file
        rows="providers: [echo]\nprompts: ['prompts:/greet/1', 'Plain {{name}}']\ndataset: {path: rows.csv}\n",
        fz="providers: [echo]\nprompts: ['prompts:/greet/1', 'P {{name}}']\ntests: [{vars: {name: hello}}]\n"
        "defaultTest: {assert: [{type: contains, value: P}]}\nfuzz: {count: 1, shrink: 0}\n",
    )
    (pytester.path / "rows.csv").write_text("name\nA\nB\n")
    result = run_pytest("--promptopt", "--promptopt-report", "r.json")
    result.assert_outcomes(passed=5, errors=4)  # version, rows and fz's two cases of the registry prompt
    result.stdout.fnmatch_lines(
        [
            "*version.promptopt.yaml:2: prompts[[]1[]]: registered prompt prompts:/greet/7: cannot read the registry at http://127.0.0.1:*"
        ]
    )
    errored = [r for s in load_report(pytester.path / "r.json")["suites"] for r in s["results"] if r["error"]]
    assert {(r["prompt_index"], r["calls"], r["template"]) for r in errored} == {(0, 0, None), (1, 0, None)}


def test_a_suites_own_prompt_gets_a_new_version_only_when_its_text_changes(pytester, run_pytest, migrated_store):  # noqa: F811
    shutil.copy(migrated_store, pytester.path / "mlflow.db")
    uri = sqlite_uri(pytester.path / "mlflow.db")
    suite = "description: Capital Cities!\nproviders: [echo]\nprompts: [{prompt}, 'prompts:/greet@prod']\ntests: [{{vars: {{name: Ada}}}}]\n"
    client = client_for(uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.register_prompt("greet", "Hello {{name}}")
        client.set_prompt_alias("greet", "prod", 1)

    def run_and_link(prompt: str) -> list[dict[str, str]]:
        pytester.makefile(".promptopt.yaml", cities=suite.format(prompt=json.dumps(prompt)))
        # (The suite by name: <rootdir>/mlruns holds copies of it, logged as artifacts.)
        result = run_pytest("--promptopt", "cities.promptopt.yaml", mlflow=True)
        assert result.ret == 0, result.stdout.str()
        runs = client.search_runs(
            [client.get_experiment_by_name(pytester.path.name).experiment_id], order_by=["attributes.start_time DESC"]
        )
        return linked(next(r for r in runs if r.data.tags.get("promptopt.suite") == "Capital Cities!"))

    # The name is the suite name as a slug, plus -p<index> when a suite has several prompts.
    assert run_and_link("Capital of {{name}}?") == [
        {"name": "greet", "version": "1"},
        {"name": "capital-cities-p0", "version": "1"},
    ]
    assert run_and_link("Capital of {{name}}?") == [
        {"name": "greet", "version": "1"},
        {"name": "capital-cities-p0", "version": "1"},
    ]
    assert client.get_prompt_version_by_alias("capital-cities-p0", "latest").version == 1  # unchanged: no new version
    assert run_and_link("The capital of {{name}}?") == [
        {"name": "greet", "version": "1"},
        {"name": "capital-cities-p0", "version": "2"},
    ]
    latest = client.get_prompt_version_by_alias("capital-cities-p0", "latest")
    assert (latest.version, latest.template) == (2, "The capital of {{name}}?")
    assert latest.commit_message == "pytest-promptopt: cities.promptopt.yaml prompts[0]"


CHAT_SUITE = """
description: antonyms
providers:
  - id: echo
    config: {max_tokens: 16, temperature: 0, stop: ["\\n"]}
prompts:
  - '[{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Antonym of {{word}}?"}]'
tests: [{vars: {word: hot}}]
"""


@pytest.mark.parametrize("mode", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_suite_prompts_are_chat_prompts_with_their_model_config_linked_to_the_runs_experiment(
    pytester, run_pytest, migrated_store, mode
):  # noqa: F811
    shutil.copy(migrated_store, pytester.path / "mlflow.db")
    uri = sqlite_uri(pytester.path / "mlflow.db")
    pytester.makefile(".promptopt.yaml", antonyms=CHAT_SUITE)
    for experiment in ("first", "second"):
        result = run_pytest("--promptopt", "--promptopt-experiment", experiment, *mode, mlflow=True)
        assert result.ret == 0 and "warning" not in result.stdout.str().lower(), result.stdout.str()
    client = client_for(uri)
    first, second = (client.get_experiment_by_name(n).experiment_id for n in ("first", "second"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Each experiment's Prompts page lists it (MLflow's own query); "Default" lists nothing.
        for experiment_id in (first, second):
            found = client.search_prompts(filter_string=f'experiment_id = "{experiment_id}"')
            assert [p.name for p in found] == ["antonyms"]
        assert list(client.search_prompts(filter_string='experiment_id = "0"')) == []
        assert client.get_prompt("antonyms").tags == {"_mlflow_experiment_ids": f",{first},{second},"}
        # A chat prompt: format() gives messages; the version carries the model config it ran with.
        version = client.get_prompt_version("antonyms", 1)
        assert version.format(word="hot") == [
            {"role": "system", "content": "Answer with one word."},
            {"role": "user", "content": "Antonym of hot?"},
        ]
        assert version.model_config == {
            "model_name": "echo",
            "max_tokens": 16,
            "temperature": 0.0,
            "stop_sequences": ["\n"],
        }
        assert version.tags == {} and [v.version for v in client.search_prompt_versions("antonyms")] == [1]


def test_prompt_prefix_names_the_registered_prompts(pytester, run_pytest, migrated_store):  # noqa: F811
    # A Unity Catalog registry needs `catalog.schema.` names; the prefix is how a project says so.
    shutil.copy(migrated_store, pytester.path / "mlflow.db")
    client = client_for(sqlite_uri(pytester.path / "mlflow.db"))
    pytester.makefile(
        ".promptopt.yaml",
        own="description: Own\nproviders: [echo]\nprompts: ['Hi {{name}}']\ntests: [{vars: {name: A}}]\n",
    )
    pytester.makeini("[pytest]\npromptopt_prompt_prefix = team-\n")
    assert run_pytest("--promptopt", "own.promptopt.yaml", mlflow=True).ret == 0
    assert [p.name for p in client.search_prompts()] == ["team-own"]
    result = run_pytest("--promptopt", "--promptopt-prompt-prefix", "main prompts", "own.promptopt.yaml", mlflow=True)
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        ["*--promptopt-prompt-prefix (ini: promptopt_prompt_prefix): 'main prompts' may hold only*"]
    )


def test_no_mlflow_registers_nothing(pytester, run_pytest, migrated_store):  # noqa: F811
    shutil.copy(migrated_store, pytester.path / "mlflow.db")
    pytester.makefile(
        ".promptopt.yaml", own="providers: [echo]\nprompts: ['Hi {{name}}']\ntests: [{vars: {name: A}}]\n"
    )
    assert run_pytest("--promptopt").ret == 0  # conftest adds --promptopt-no-mlflow
    assert list(client_for(sqlite_uri(pytester.path / "mlflow.db")).search_prompts()) == []


def test_names_and_references():
    from pytest_promptopt.mlflow.prompts import RegistryError, parse_uri
    from pytest_promptopt.mlflow.registry import registry_name

    assert parse_uri("prompts:/qa.v2/3") == ("qa.v2", 3, None)
    assert parse_uri("prompts:/qa@champion") == ("qa", None, "champion")
    for bad in ("prompts:/qa", "prompts:/qa/x", "prompts:/a b/1", "prompts:/qa@"):
        with pytest.raises(RegistryError, match="not a prompt reference"):
            parse_uri(bad)
    assert registry_name("Capital Cities!", 0, several=False) == "capital-cities"
    assert registry_name("qa/greetings v2", 1, several=True) == "qa-greetings-v2-p1"
    assert registry_name("***", 0, several=False) == "promptopt-suite"
    assert registry_name("Capital Cities!", 0, several=False, prefix="main.prompts.") == "main.prompts.capital-cities"


def test_the_session_names_its_resolutions_file_in_the_environment_while_configured(pytester, monkeypatch):
    from pytest_promptopt.mlflow.prompts import REGISTRY_ENV, PromptResolver
    from pytest_promptopt.session import session_key

    monkeypatch.setenv(REGISTRY_ENV, str(pytester.path / "outer.json"))  # e.g. a session around this one
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    config = pytester.parseconfigure("--promptopt", "--promptopt-mlflow-uri", "sqlite:///pinned.db")
    path = Path(os.environ[REGISTRY_ENV])
    assert path == config.stash[session_key].registry.shared and path.is_file()
    found = PromptResolver.from_environment()  # what Prompt.from_registry uses in a test module
    assert (found.tracking_uri, found.shared) == ("sqlite:///pinned.db", path)

    config._ensure_unconfigure()
    assert os.environ[REGISTRY_ENV] == str(pytester.path / "outer.json") and not path.exists()
    assert not (pytester.path / ".promptopt").exists()  # the folders made for the file are gone too
    found = PromptResolver.from_environment()  # the outer file does not exist: this process only
    assert (found.tracking_uri, found.shared) == ("sqlite:///elsewhere.db", None)
    monkeypatch.delenv(REGISTRY_ENV)
    assert PromptResolver.from_environment().tracking_uri == "sqlite:///elsewhere.db"


def test_the_resolutions_file_holds_the_uri_without_credentials_which_the_environment_hands_on(pytester, monkeypatch):
    from pytest_promptopt.mlflow.prompts import CREDENTIALS_ENV, REGISTRY_ENV, PromptResolver

    monkeypatch.setenv(CREDENTIALS_ENV, "outer:Outer-Pw-1234")  # a session around this one
    uri = "http://carol:Carol@Pw-55667788@127.0.0.1:9"  # an unencoded `@`: MLflow logs in with all of it
    config = pytester.parseconfigure("--promptopt", "--promptopt-mlflow-uri", uri)
    path = Path(os.environ[REGISTRY_ENV])
    assert json.loads(path.read_text())["tracking_uri"] == "http://127.0.0.1:9"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.environ[CREDENTIALS_ENV] == "carol:Carol@Pw-55667788"
    assert PromptResolver.from_environment().tracking_uri == uri  # what Prompt.from_registry uses
    config._ensure_unconfigure()
    assert os.environ[CREDENTIALS_ENV] == "outer:Outer-Pw-1234"

    config = pytester.parseconfigure("--promptopt", "--promptopt-mlflow-uri", "http://127.0.0.1:9")
    assert CREDENTIALS_ENV not in os.environ  # not the outer session's either
    assert PromptResolver.from_environment().tracking_uri == "http://127.0.0.1:9"
    config._ensure_unconfigure()


def test_a_killed_sessions_resolutions_file_holds_no_credentials_and_the_next_session_deletes_it(
    pytester, run_pytest, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://carol:Carol@Pw-55667788@127.0.0.1:9")  # never reached
    pytester.makepyfile(
        test_wait="import pathlib, time\ndef test_wait():\n    pathlib.Path('started').touch()\n    time.sleep(120)\n"
    )
    killed = subprocess.Popen(
        [*PYTEST, "-p", "no:cacheprovider", "--promptopt", "--promptopt-no-mlflow"],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (pytester.path / "started").exists():
        assert killed.poll() is None and time.monotonic() < deadline, "the session did not start its test"
        time.sleep(0.1)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    [stale] = (pytester.path / ".promptopt" / "registry").glob("*.json")
    assert "Carol@Pw-55667788" not in stale.read_text() and stale.with_suffix(".lock").exists()

    pytester.makepyfile(test_wait="def test_fine():\n    pass\n")
    assert run_pytest("--promptopt").ret == 0
    assert not stale.exists() and not stale.with_suffix(".lock").exists()


def test_a_rendered_registry_prompt_is_a_str_that_names_its_version():
    from pytest_promptopt import Prompt
    from pytest_promptopt.prompt import RenderedPrompt

    rendered = Prompt("Hi {{name}}!", registry_uri="prompts:/greet/2").render(name="Eve")
    assert (
        isinstance(rendered, RenderedPrompt) and rendered == "Hi Eve!" and rendered.registry_uri == "prompts:/greet/2"
    )
    assert Prompt("Hi {{name}}!").render(name="Eve").registry_uri is None
    chat = Prompt('[{"role": "user", "content": "Hi {{name}}"}]', registry_uri="prompts:/chat/1").render(name="Eve")
    assert json.loads(chat) == [{"role": "user", "content": "Hi Eve"}] and chat.registry_uri == "prompts:/chat/1"
    assert type(rendered + "?") is str and type(str(rendered)) is str
