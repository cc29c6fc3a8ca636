"""The plugin as users run it: pytester subprocesses in every mode (plain, -n 2, -p no:xdist)."""

from __future__ import annotations

import textwrap

import pytest
from conftest import ECHO_SUITE, comparable, load_report


def test_suite_cases_are_items_and_failing_case_fails_without_gates(pytester, run_pytest, mode):
    pytester.makefile(".promptopt.yaml", qa=ECHO_SUITE)
    result = run_pytest("--promptopt", "-v", "-rA", "--promptopt-report", "report.json", *mode)
    result.assert_outcomes(passed=2, failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*promptopt summary*", "*capitals*echo*3*2*1*0*66.7%*"])
    # The failure shows the output, each assertion, its score and why.
    result.stdout.fnmatch_lines(
        [
            "*output:*",
            "*The capital of Italy is Milan.*",
            "*FAIL  contains Rome  score 0.00*",
            '*Expected output to contain "Rome"*',
        ]
    )
    result.stdout.fnmatch_lines(["FAILED qa.promptopt.yaml::wrong[[]t2[]]*"])
    report = load_report(pytester.path / "report.json")
    suite = report["suites"][0]
    assert (suite["cases"], suite["passed"], suite["failed"], suite["errors"]) == (3, 2, 1, 0)
    assert suite["metrics"] == {"mentions": 0.5}
    by_test = {r["test_index"]: r for r in suite["results"]}
    assert by_test[2]["output"] == "The capital of Italy is Milan." and by_test[2]["passed"] is False
    assert by_test[0]["scores"] == {"contains": 1.0, "mentions": 1.0}
    assert all(r["prompt_index"] == 0 for r in suite["results"])


def test_providers_that_show_one_name_are_items_of_their_own_in_every_mode(pytester, run_pytest, mode):
    # Two unlabelled providers with one id and different configs: promptfoo runs both; their
    # items need distinct ids, or xdist and -k would mistake one for the other.
    pytester.makefile(
        ".promptopt.yaml",
        same="prompts: ['A {{q}}']\nproviders: [{id: echo, config: {n: 1}}, {id: echo, config: {n: 2}}]\n"
        "tests: [{vars: {q: x}}, {vars: {q: y}}]\n",
    )
    result = run_pytest("--promptopt", "-v", "--promptopt-report", "report.json", *mode)
    result.assert_outcomes(passed=4)
    assert "same.promptopt.yaml::q=x[t0-echo#1]" in result.stdout.str()
    report = load_report(pytester.path / "report.json")
    assert len({r["name"] for r in report["suites"][0]["results"]}) == 4


def test_gates_decide_and_failing_cases_are_tolerated(pytester, run_pytest, mode):
    pytester.makefile(".promptopt.yaml", qa=ECHO_SUITE + "gates:\n  pass_rate: 0.6\n")
    result = run_pytest("--promptopt", "-rx", *mode)
    result.assert_outcomes(passed=2, xfailed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*tolerated by gate pass_rate >= 0.6*"])


def test_gate_above_what_the_model_reaches_fails_the_run_with_value_and_threshold(pytester, run_pytest, mode):
    pytester.makefile(".promptopt.yaml", qa=ECHO_SUITE + "gates:\n  pass_rate: 0.9\n  mentions: {min: 0.4}\n")
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", *mode)
    # Every item passed or was tolerated, yet the gate fails the session.
    result.assert_outcomes(passed=2, xfailed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*GATE FAILED*capitals*pass_rate = 0.667, threshold 0.9*"])
    gates = load_report(pytester.path / "r.json")["suites"][0]["gates"]
    assert gates[0] == {
        "name": "pass_rate",
        "threshold": 0.9,
        "value": pytest.approx(2 / 3),
        "passed": False,
        "reason": gates[0]["reason"],
        "rule": "point",
        "interval": None,
    }  # a point gate reads no interval
    assert gates[1]["passed"] is True and gates[1]["value"] == 0.5


def test_reports_are_identical_across_modes(pytester, run_pytest):
    pytester.makefile(".promptopt.yaml", qa=ECHO_SUITE + "gates:\n  pass_rate: 0.5\n")
    pytester.makefile(".promptopt.yaml", other=ECHO_SUITE.replace("capitals", "capitals-2"))
    reports = {}
    for name, args in {"plain": [], "xdist": ["-n", "2"], "no-xdist": ["-p", "no:xdist"]}.items():
        result = run_pytest("--promptopt", "--promptopt-report", f"{name}.json", *args)
        assert result.ret == 1  # `other` has no gates, so its failing case fails
        reports[name] = comparable(load_report(pytester.path / f"{name}.json"))
    assert reports["plain"] == reports["xdist"] == reports["no-xdist"]
    assert len(reports["plain"]) == 2


def test_without_promptopt_prompt_tests_are_skipped_with_how_to_run(pytester, run_pytest, mode):
    pytester.makefile(".promptopt.yaml", qa="this: [is not even valid")
    pytester.makepyfile(
        test_py="""
        import pytest

        def test_plain():
            assert True

        def test_prompt(prompt_model, prompt_check):
            raise AssertionError("must not run")

        @pytest.mark.promptopt(suite="x")
        def test_marked():
            raise AssertionError("must not run")

        def test_fetched(request):  # past the skip marker: the fixture skips it
            request.getfixturevalue("prompt_model")
            raise AssertionError("must not run")
        """
    )
    # A plugin turning the option on after the session was decided: still no session, and no
    # hook looks for one.
    pytester.makeconftest(
        """
        import pytest

        @pytest.hookimpl(trylast=True)
        def pytest_configure(config):
            config.option.promptopt = True
        """
    )
    result = run_pytest("-rs", *mode)
    result.assert_outcomes(passed=1, skipped=4)
    result.stdout.fnmatch_lines(["*prompt test: run it with `pytest --promptopt`*"])
    # The suite file is the skip's place, not the plugin's source.
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] qa.promptopt.yaml*: prompt test: run it with `pytest --promptopt`"])
    assert "pytest_promptopt" not in result.stdout.str()
    assert "promptopt summary" not in result.stdout.str()


def test_plugin_can_be_disabled(pytester, run_pytest):
    pytester.makefile(".promptopt.yaml", qa=ECHO_SUITE)
    result = run_pytest("-p", "no:promptopt", "--collect-only", "-q")
    assert result.ret == 5  # nothing collected: the suite file is just a YAML file
    assert "--promptopt" not in run_pytest("-p", "no:promptopt", "--help").stdout.str()


def test_help_lists_every_option(run_pytest):
    from pytest_promptopt.options import OPTIONS

    result = run_pytest("--help")  # argparse formats each help text: a stray % would crash it
    assert result.ret == 0
    assert all(option.flag in result.stdout.str() for option in OPTIONS)


def test_model_fault_is_an_error_not_a_failure(pytester, run_pytest, mode):
    pytester.makeconftest(
        """
        from pytest_promptopt import FakeModel, ModelError

        def answer(request):
            if "Spain" in request.prompt:
                raise ModelError("upstream timed out after 60s")
            return request.prompt

        def pytest_promptopt_make_model(spec):
            if spec.id == "acme/flaky":
                return FakeModel(answer, name="acme/flaky")
        """
    )
    pytester.makefile(".promptopt.yaml", qa=ECHO_SUITE.replace("[echo]", "[acme/flaky]") + "gates:\n  pass_rate: 0.5\n")
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", *mode)
    result.assert_outcomes(passed=1, xfailed=1, errors=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*ERROR spain*model error (acme/flaky): upstream timed out after 60s*"])
    assert "Traceback" not in result.stdout.str() and "pytest_promptopt" not in result.stdout.str()
    suite = load_report(pytester.path / "r.json")["suites"][0]
    assert (suite["passed"], suite["failed"], suite["errors"]) == (1, 1, 1)
    assert suite["pass_rate"] == 0.5  # the error is counted apart, not as a failure
    errored = [r for r in suite["results"] if r["error"]]
    assert errored[0]["output"] is None and "upstream timed out" in errored[0]["error"]


def test_python_tests_with_fixtures_marker_and_gates(pytester, run_pytest, mode):
    pytester.makepyfile(
        test_prompts="""
        import pytest
        from pytest_promptopt import Prompt, contains, regex, word_count, FakeModel

        capitals = FakeModel({"Capital of France?": "Paris", "Capital of Spain?": "Barcelona"}, name="scripted")
        PROMPT = Prompt("Capital of {{ country }}?")

        @pytest.mark.promptopt(suite="capitals", gates={"pass_rate": 0.5}, model=capitals)
        @pytest.mark.parametrize("country,capital", [("France", "Paris"), ("Spain", "Madrid")])
        def test_capital(prompt_model, prompt_check, country, capital):
            answer = prompt_model(PROMPT.render(country=country))
            assert answer.latency_ms >= 0 and answer.completion_tokens == 1
            prompt_check(answer, contains(capital), regex(r"^[A-Z]"), word_count(max=3))

        @pytest.mark.promptopt(model=capitals)
        def test_ungated(prompt_model, prompt_check):
            prompt_check(prompt_model("Capital of Spain?"), contains("Madrid"))
        """
    )
    result = run_pytest("--promptopt", "-rx", "--promptopt-report", "r.json", *mode)
    result.assert_outcomes(passed=1, xfailed=1, failed=1)
    result.stdout.fnmatch_lines(["*FAIL  contains Madrid  score 0.00*"])
    result.stdout.fnmatch_lines(["*XFAIL*test_capital*Spain*tolerated by gate pass_rate >= 0.5*"])
    report = load_report(pytester.path / "r.json")
    suites = {s["name"]: s for s in report["suites"]}
    capitals = suites["capitals"]
    assert (capitals["passed"], capitals["failed"], capitals["pass_rate"]) == (1, 1, 0.5)
    assert capitals["gates"][0]["passed"] is True and capitals["kind"] == "python"
    spain = next(r for r in capitals["results"] if "Spain" in r["nodeid"])
    assert spain["output"] == "Barcelona" and spain["vars"] == {"country": "Spain", "capital": "Madrid"}
    assert spain["scores"]["contains"] == 0.0 and spain["scores"]["regex"] == 1.0
    assert suites["test_prompts.py"]["failed"] == 1


def test_python_test_model_error_is_reported_as_error(pytester, run_pytest):
    pytester.makepyfile(
        test_down="""
        import pytest
        from pytest_promptopt import FakeModel, ModelError, contains

        def down(request):
            raise ModelError("connection refused")

        @pytest.mark.promptopt(model=FakeModel(down))
        def test_it(prompt_model, prompt_check):
            prompt_check(prompt_model("hi"), contains("x"))
        """
    )
    result = run_pytest("--promptopt", "--promptopt-report", "r.json")
    result.assert_outcomes(errors=1)
    suite = load_report(pytester.path / "r.json")["suites"][0]
    assert suite["errors"] == 1 and "connection refused" in suite["results"][0]["error"]


def test_per_case_selection_lastfailed_and_junit(pytester, run_pytest):
    pytester.makefile(".promptopt.yaml", qa=ECHO_SUITE)
    result = run_pytest("--promptopt", "-k", "france or wrong", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=1, failed=1)
    junit = (pytester.path / "junit.xml").read_text()
    assert junit.count("<testcase") == 2 and 'name="france[t0]"' in junit
    result = run_pytest("--promptopt", "--lf")
    result.assert_outcomes(failed=1)


def test_cache_warm_rerun_makes_no_calls_and_replay_miss_is_an_error(pytester, run_pytest, mode):
    pytester.makeconftest(
        """
        import os
        from pytest_promptopt import FakeModel

        def answer(request):
            with open("calls.log", "a") as log:
                log.write(request.prompt + "\\n")
            return request.prompt

        class Recorded(FakeModel):
            cacheable = True  # a function-backed fake that we allow to be cached for this test

            @property
            def cache_identity(self):
                return {"model": "acme/recorded"}

        def pytest_promptopt_make_model(spec):
            if spec.id == "acme/recorded":
                return Recorded(answer, name="acme/recorded")
        """
    )
    pytester.makefile(".promptopt.yaml", qa=ECHO_SUITE.replace("[echo]", "[acme/recorded]"))
    first = run_pytest("--promptopt", "--promptopt-report", "first.json", *mode)
    first.assert_outcomes(passed=2, failed=1)
    assert len((pytester.path / "calls.log").read_text().splitlines()) == 3
    second = run_pytest("--promptopt", "--promptopt-cache", "replay", "--promptopt-report", "second.json", *mode)
    second.assert_outcomes(passed=2, failed=1)
    assert len((pytester.path / "calls.log").read_text().splitlines()) == 3  # zero new model calls
    suite = load_report(pytester.path / "second.json")["suites"][0]
    assert sum(r["calls"] for r in suite["results"]) == 0 and sum(r["cache_hits"] for r in suite["results"]) == 3
    assert comparable(load_report(pytester.path / "first.json")) == comparable(
        load_report(pytester.path / "second.json")
    )
    # A new case in replay mode has no recording: an error, never a silent pass.
    pytester.makefile(".promptopt.yaml", qa=ECHO_SUITE.replace("[echo]", "[acme/recorded]").replace("Milan", "Naples"))
    third = run_pytest("--promptopt", "--promptopt-cache", "replay", *mode)
    third.assert_outcomes(passed=2, errors=1)
    third.stdout.fnmatch_lines(["*replay mode: no recorded response*"])


def test_bad_option_values_are_usage_errors(pytester, run_pytest):
    result = run_pytest("--promptopt", "--promptopt-model", "gpt4")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--promptopt-model*unknown model 'gpt4'*openai/gpt-4o-mini*"])
    pytester.makeini("[pytest]\npromptopt_cache = sometimes\n")
    result = run_pytest("--promptopt")
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        ["*--promptopt-cache (ini: promptopt_cache)*'sometimes' is not one of off, readwrite, replay*"]
    )


@pytest.mark.parametrize("mode", [[], ["-p", "no:xdist"]], ids=["plain", "no-xdist"])
def test_a_python_tests_provider_transform_is_refused_not_ignored(pytester, run_pytest, mode):
    """A provider's transform runs on suite cases; a Python test holds its answer itself, so a
    transform in its marker's model would be silently ignored: that test is an error saying so."""
    pytester.makepyfile(
        """
        import pytest
        from pytest_promptopt import contains

        @pytest.mark.promptopt(model={"id": "echo", "transform": "output.toUpperCase()"})
        def test_shout(prompt_model, prompt_check):
            prompt_check(prompt_model("hi"), contains("HI"))

        @pytest.mark.promptopt(model="echo")
        def test_plain(prompt_model, prompt_check):
            prompt_check(prompt_model("hi"), contains("hi"))
        """
    )
    result = run_pytest("--promptopt", *mode)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*model=...) on *test_shout: a provider's transform runs on suite cases only*"])


def test_ini_sets_the_model_and_command_line_wins(pytester, run_pytest):
    pytester.makeini("[pytest]\npromptopt_model = echo\n")
    pytester.makefile(
        ".promptopt.yaml",
        qa="prompts: ['hi {{x}}']\ntests: [{vars: {x: there}, assert: [{type: equals, value: hi there}]}]\n",
    )
    run_pytest("--promptopt").assert_outcomes(passed=1)
    pytester.makeconftest(
        """
        from pytest_promptopt import FakeModel

        def pytest_promptopt_make_model(spec):
            if spec.id == "acme/other":
                return FakeModel(lambda r: "something else")
        """
    )
    run_pytest("--promptopt", "--promptopt-model", "acme/other").assert_outcomes(failed=1)


@pytest.mark.skipif(pytest.version_tuple < (9, 2), reason="typed ini values need pytest 9.2")
def test_a_native_toml_table_gives_bools_and_numbers_as_toml_writes_them(pytester, run_pytest):
    """pytest 9's `[tool.pytest]` table: `promptopt_no_mlflow = true`, `promptopt_repeat = 2` are a
    bool and a number there, taken as they are (a "string" option refused them)."""
    pytester.makepyprojecttoml(
        '[tool.pytest]\npromptopt_model = "echo"\npromptopt_no_mlflow = true\npromptopt_repeat = 2\npromptopt_timeout = 30.5\n'
    )
    pytester.makefile(
        ".promptopt.yaml",
        qa="prompts: ['hi {{x}}']\ntests: [{vars: {x: there}, assert: [{type: equals, value: hi there}]}]\n",
    )
    result = pytester.runpytest_inprocess("--promptopt", "--promptopt-report", "r.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*2 repeats per case*"])
    assert not (pytester.path / "mlflow.db").exists()  # MLflow off, as the bool said
    # a bool where a path or a number goes is refused, not a file named False
    pytester.makepyprojecttoml("[tool.pytest]\npromptopt_html = false\n")
    refused = pytester.runpytest_inprocess("--promptopt")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*promptopt_html = false (ini): expected a value for --promptopt-html, not a bool*"])
    assert not (pytester.path / "False").exists()


def test_collection_error_for_bad_suite_names_file_line_and_path(pytester, run_pytest, mode):
    pytester.makefile(
        ".promptopt.yaml",
        qa=textwrap.dedent(
            """
            prompts: ["{{q}}"]
            providers: [echo]
            tests:
              - vars: {q: hi}
            providers: [echo]
            """
        ),
    )
    result = run_pytest("--promptopt", *mode)
    assert result.ret == (1 if "-n" in mode else 2)  # xdist reports collection errors as errors
    out = result.stdout.str()
    assert "qa.promptopt.yaml:5: providers: duplicate key 'providers' (first at line 2, again at line 5)" in out
    assert "Traceback" not in out


def test_a_malformed_check_errors_its_case_and_the_others_run(pytester, run_pytest, mode):
    pytester.makefile(
        ".promptopt.yaml",
        qa=textwrap.dedent(
            """
            prompts: ["{{q}}"]
            providers: [echo]
            tests:
              - vars: {q: hi}
                assert:
                  - type: contans
                    value: hi
              - vars: {q: ok}
                assert: [{type: contains, value: ok}]
            """
        ),
    )
    result = run_pytest("--promptopt", "--promptopt-report", "r.json", *mode)
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    assert "qa.promptopt.yaml:6: tests[0].assert[0]: unknown assertion type 'contans'; did you mean 'contains'?" in out
    assert "Traceback" not in out
    bad = next(r for r in load_report(pytester.path / "r.json")["suites"][0]["results"] if r["error"])
    assert (bad["output"], bad["calls"]) == (None, 0)  # reported without a model call


def test_junit_xml_does_not_carry_case_records(pytester, run_pytest, mode):
    pytester.makefile(".promptopt.yaml", qa=ECHO_SUITE)
    run_pytest("--promptopt", "--junitxml", "junit.xml", "--promptopt-report", "r.json", *mode).assert_outcomes(
        passed=2, failed=1
    )
    xml = (pytester.path / "junit.xml").read_text().replace("qa.promptopt.yaml", "")
    # only the gates' verdict, as a testsuite property (a failed gate is no test's failure)
    assert "promptopt" not in xml.replace('<property name="promptopt_gates_passed" value="true" />', "")
    assert len(load_report(pytester.path / "r.json")["suites"][0]["results"]) == 3


def test_bad_ini_value_does_not_break_a_run_without_promptopt(pytester, run_pytest):
    pytester.makeini("[pytest]\npromptopt_cache = sometimes\n")
    pytester.makepyfile(test_a="def test_a():\n    pass\n")
    run_pytest().assert_outcomes(passed=1)


def test_ini_report_path_is_relative_to_the_ini_file(pytester, monkeypatch):
    pytester.makeini("[pytest]\npromptopt_report = build/report.json\npromptopt_model = echo\n")
    pytester.makefile(".promptopt.yaml", qa="prompts: ['hi']\n")
    sub = pytester.mkdir("sub")
    monkeypatch.chdir(sub)
    result = pytester.runpytest_subprocess(
        "--promptopt",
        "--promptopt-no-mlflow",
        "--rootdir",
        str(pytester.path),
        str(pytester.path),
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)
    assert (pytester.path / "build" / "report.json").is_file() and not (sub / "build").exists()


def test_report_lists_cases_in_file_order_and_uses_provider_labels(pytester, run_pytest, mode):
    pytester.makefile(
        ".promptopt.yaml",
        qa="providers: [{id: echo, label: my-echo}]\nprompts: ['{{x}}']\ntests: [{vars: {x: [c, b, a]}}, {vars: {x: '0'}}]\n",
    )
    run_pytest("--promptopt", "--promptopt-report", "r.json", *mode).assert_outcomes(passed=4)
    suite = load_report(pytester.path / "r.json")["suites"][0]
    assert [r["output"] for r in suite["results"]] == ["c", "b", "a", "0"]
    assert [r["position"] for r in suite["results"]] == [0, 1, 2, 3]
    assert suite["model"] == "my-echo"


def test_python_tests_of_one_suite_must_agree_on_gates(pytester, run_pytest):
    pytester.makepyfile(
        test_gates="""
        import pytest

        @pytest.mark.promptopt(suite="s", gates={"pass_rate": 0.5})
        def test_a(prompt_check):
            pass

        @pytest.mark.promptopt(suite="s", gates={"pass_rate": 0.9})
        def test_b(prompt_check):
            pass
        """
    )
    result = run_pytest("--promptopt")
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        [
            "*suite 's': test_gates.py::test_a declares pass_rate >= 0.5 but test_gates.py::test_b declares pass_rate >= 0.9*"
        ]
    )


def test_malformed_python_check_is_an_error(pytester, run_pytest):
    pytester.makepyfile(
        test_bad="""
        import pytest
        from pytest_promptopt import word_count

        @pytest.mark.promptopt(model="echo")
        def test_it(prompt_model, prompt_check):
            prompt_check(prompt_model("hi"), word_count(min=5, max=2))
        """
    )
    result = run_pytest("--promptopt", "--promptopt-report", "r.json")
    result.assert_outcomes(errors=1)
    assert "is greater than max" in load_report(pytester.path / "r.json")["suites"][0]["results"][0]["error"]


def test_validate_command(pytester):
    pytester.makefile(
        ".promptopt.yaml",
        good="prompts: ['{{q}}']\ntests: [{vars: {q: a}}]\n",
        bad="prompts: ['{{q}}']\ntests: [{vars: {}}]\n",
    )
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "pytest_promptopt", "validate", "good.promptopt.yaml", "bad.promptopt.yaml"],
        capture_output=True,
        text=True,
        cwd=pytester.path,
    )
    assert proc.returncode == 1
    assert "good.promptopt.yaml: ok, 1 case, gates: none" in proc.stdout
    assert "bad.promptopt.yaml:2: tests[0].vars: missing variable 'q'" in proc.stderr

    # A dataset from a Spark table loads only for the Spark backend, in validate as in a run.
    pytester.makefile(
        ".promptopt.yaml", table="prompts: ['{{q}}']\ndataset: {table: main.default.t, vars: {q: question}}\n"
    )
    command = [sys.executable, "-m", "pytest_promptopt", "validate", "table.promptopt.yaml"]
    local = subprocess.run(command, capture_output=True, text=True, cwd=pytester.path)
    assert local.returncode == 1, local.stdout
    assert "table.promptopt.yaml:2: dataset.table: a Spark table is read by the Spark backend" in local.stderr
    spark = subprocess.run(
        [*command, "--promptopt-backend", "spark"], capture_output=True, text=True, cwd=pytester.path
    )
    assert spark.returncode == 0, spark.stderr
    assert "table.promptopt.yaml: ok, dataset table main.default.t" in spark.stdout
