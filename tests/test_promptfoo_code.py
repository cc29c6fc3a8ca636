"""Code in promptfoo configs (javascript/python checks, transforms, prompt functions, var loaders,
Nunjucks filters) runs with the verdicts the real promptfoo gave.

`tests/data/promptfoo_code/<area>/expected.json` was recorded with promptfoo 0.121.20 on the
config beside it (`regenerate.sh`); here the plugin runs the same folders in each run mode.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import MODES, PYTEST, load_report
from fake_openai import FakeOpenAI, echo_last_user_message

DATA = Path(__file__).parent / "data" / "promptfoo_code"
AREAS = sorted(d.name for d in DATA.iterdir() if (d / "expected.json").is_file())
EXPECTED = [(area, row) for area in AREAS for row in json.loads((DATA / area / "expected.json").read_text())["results"]]


@pytest.fixture(scope="module", params=list(MODES), ids=list(MODES))
def ours(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """The plugin's results for every area's config, by area, in one run of the given mode."""
    work = tmp_path_factory.mktemp(f"code-{request.param}")
    for area in AREAS:
        shutil.copytree(DATA / area, work / area)
    proc = subprocess.run(
        [*PYTEST, "--promptopt", "--promptopt-no-mlflow", "--promptopt-cache", "off"]
        + ["-p", "no:cacheprovider", "--promptopt-report", "report.json", "-q", *MODES[request.param], *AREAS],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stdout[-3000:]  # every area but filters and prompts has failing cases
    report = load_report(work / "report.json")
    return {Path(s["file"]).parent.name: s["results"] for s in report["suites"]}


def _output(text: str | None) -> object:
    """Outputs compare as JSON when they are JSON (promptfoo keeps a transform's object an object)."""
    try:
        return json.loads(text) if text and text.lstrip()[:1] in "[{" else text
    except ValueError:
        return text


@pytest.mark.parametrize(
    ("area", "expected"), EXPECTED, ids=[f"{a}-t{r['testIdx']}-p{r['promptIdx']}" for a, r in EXPECTED]
)
def test_same_outcome_as_promptfoo(ours: dict[str, list[dict]], area: str, expected: dict) -> None:
    (mine,) = [
        r for r in ours[area] if r["test_index"] == expected["testIdx"] and r["prompt_index"] == expected["promptIdx"]
    ]
    status = "error" if mine["error"] else ("passed" if mine["passed"] else "failed")
    assert status == expected["status"], mine["error"] or mine["reason"]
    if status == "error":
        return
    assert _output(mine["output"]) == _output(expected["output"])
    assert mine["score"] == pytest.approx(expected["score"])
    assert mine["named_scores"] == pytest.approx(expected["namedScores"])
    components = [(a["type"], a["passed"], pytest.approx(a["score"])) for a in mine["assertions"]]
    assert components == [(c["type"], c["pass"], c["score"]) for c in expected["components"]]


def test_errors_name_the_code_that_failed(ours: dict[str, list[dict]]) -> None:
    js = {r["test_index"]: r for r in ours["js"]}
    assert "javascript check at js/promptfooconfig.yaml:64: tests[5].assert[0]: Error: boom" in js[5]["error"]
    assert "missing.js" in js[8]["error"] and "ENOENT" in js[8]["error"]
    transforms = {r["test_index"]: r for r in ours["transforms"]}
    assert "Transform function did not return a value" in transforms[2]["error"]
    assert "Transform failed ([inline transform]: JSON.parse(output).x)" in transforms[14]["error"]


def test_a_prompt_functions_config_reaches_the_providers_request(run_pytest, pytester, mode, monkeypatch):
    """`{prompt, config}` from a prompt function: the config is laid over the provider's for that
    prompt's calls (tests/test_suite_loader.py has the merge order), so the request carries it."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-0000")
    pytester.path.joinpath("p.js").write_text(
        "module.exports.cfg = ({ vars }) => ({ prompt: 'Say {{word}}', config: { temperature: 0.25, max_tokens: 5 } });\n"
    )
    with FakeOpenAI(echo_last_user_message) as server:
        pytester.makefile(
            ".promptopt.yaml",
            hosted=f"""
prompts: [file://p.js:cfg]
providers: [{{id: openai:chat:acme, config: {{api_base: "{server.base_url}", temperature: 0.9, max_tokens: 50}}}}]
tests:
  - vars: {{word: yes}}
    assert: [{{type: contains, value: Say yes}}]
""",
        )
        run_pytest("--promptopt", "--promptopt-cache", "off", *mode).assert_outcomes(passed=1)
        (sent,) = server.requests
    assert sent["messages"] == [{"role": "user", "content": "Say yes"}]
    assert (sent["temperature"], sent["max_tokens"]) == (0.25, 5)


def test_a_suites_nunjucks_filters_are_its_own(run_pytest, pytester):
    """Filters are per suite (promptfoo: per config): another suite of the same run that uses a
    filter only the first declares gets promptfoo's error, and Python tests never see them."""
    (pytester.path / "allcaps.js").write_text((DATA / "filters" / "allcaps.js").read_text())
    pytester.makefile(
        ".promptopt.yaml",
        a_declares="nunjucksFilters: {allcaps: ./allcaps.js}\nprompts: ['{{ q | allcaps }}']\n"
        "providers: [echo]\ntests: [{vars: {q: hi}, assert: [{type: equals, value: HI}]}]\n",
        b_borrows="prompts: ['{{ q | allcaps }}']\nproviders: [echo]\ntests: [{vars: {q: hi}}]\n",
    )
    pytester.makepyfile(
        test_later="""
import pytest
from pytest_promptopt import Prompt, TemplateError

def test_python_prompts_have_no_suite_filters():
    with pytest.raises(TemplateError, match="allcaps"):
        Prompt("{{ q | allcaps }}").render(q="hi")
"""
    )
    result = run_pytest("--promptopt", "-v", "a_declares.promptopt.yaml", "b_borrows.promptopt.yaml", "test_later.py")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*b_borrows.promptopt.yaml:1: prompts[[]0[]]: *No filter named 'allcaps'*"])
