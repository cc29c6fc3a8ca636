"""The HTML report (`--promptopt-html`) and the progress line (`--promptopt-progress`).

The report is checked as text (escaping, gates, self-contained), through the plugin in every
mode, and once in a real headless Chromium (Debian's chromium + chromium-driver, via Selenium):
it renders its plots, logs no console error, shows a script-bearing output as text, and its
filters hide and show the right rows.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_promptopt.gates import Gate
from pytest_promptopt.records import CaseResult
from pytest_promptopt.suite_info import SuiteInfo
from pytest_promptopt.summary import summarize

pytest.importorskip("plotly", reason="the html extra (plotly) is not installed")

XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"

# The echo provider answers with the prompt, so every output carries the script-bearing text.
SUITE = f"""
description: capitals
providers: [echo]
prompts: ["The capital of {{{{country}}}} is {{{{capital}}}}. {XSS}"]
tests:
  - description: france
    vars: {{country: France, capital: Paris}}
    assert: [{{type: contains, value: Paris}}, {{type: icontains, value: "{{{{country}}}}", metric: mentions}}]
  - description: spain
    vars: {{country: Spain, capital: Madrid}}
    assert: [{{type: contains, value: Madrid}}]
  - description: wrong
    vars: {{country: Italy, capital: Milan}}
    assert: [{{type: contains, value: Rome, metric: mentions}}]
gates:
  pass_rate: 0.9
"""


def sample_run():
    info = SuiteInfo(
        id="qa", name="capitals <i>", file="qa.promptopt.yaml", gates=(Gate("pass_rate", 0.9), Gate("mentions", 0.4))
    )
    other = SuiteInfo(id="py", name="py-suite", file="test_py.py", gates=(), kind="python")
    ok = {
        "type": "contains",
        "value": "Paris",
        "passed": True,
        "score": 1.0,
        "reason": "Assertion passed",
        "metric": "mentions",
    }
    bad = {
        "type": "contains",
        "value": "Rome",
        "passed": False,
        "score": 0.0,
        "reason": 'Expected output to contain "Rome"',
        "metric": None,
    }
    return summarize(
        [
            (
                info,
                CaseResult(
                    "t0",
                    "france[t0]",
                    output=f"Paris {XSS}",
                    passed=True,
                    score=1.0,
                    named_scores={"mentions": 1.0},
                    assertions=[ok],
                    latency_ms=120.0,
                    calls=1,
                    position=0,
                ),
            ),
            (
                info,
                CaseResult(
                    "t1",
                    "italy[t1]",
                    output="Milan",
                    passed=False,
                    score=0.0,
                    reason=bad["reason"],
                    named_scores={"mentions": 0.0},
                    assertions=[bad],
                    latency_ms=80.0,
                    cache_hits=1,
                    position=1,
                ),
            ),
            (info, CaseResult("t2", "spain[t2]", error="model error (acme): <b>timed out</b>", position=2)),
            (
                other,
                CaseResult(
                    "p0", "test_x", nodeid="test_py.py::test_x", output="ok", passed=True, score=1.0, latency_ms=5.0
                ),
            ),
        ]
    )


def test_the_page_escapes_user_content_shows_gates_and_needs_no_network():
    from pytest_promptopt.report.html_report import render_html

    page = render_html(sample_run(), exit_status=1)
    # Shown as text: the raw payload never appears, its escaped form does.
    assert "<script>alert(1)" not in page and "<img src=x" not in page and "<i>" not in page
    assert "Paris &lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "&lt;b&gt;timed out&lt;/b&gt;" in page and "capitals &lt;i&gt;" in page
    # Gates: value, threshold, verdict.
    assert "pass_rate: 0.500 (threshold 0.9) <b>FAIL</b>" in page
    assert "mentions: 0.500 (threshold 0.4) <b>pass</b>" in page and "1 gate(s) failed" in page
    # Assertions with score and reason; one row per case, with its status for the filter.
    assert (
        "<b>FAIL</b> contains <code>Rome</code> score 0.00" in page
        and "Expected output to contain &quot;Rome&quot;" in page
    )
    assert re.findall(r"data-status='(\w+)'", page) == ["passed", "passed", "failed", "error"]  # suites by id: py, qa
    # Self-contained: plotly.js inline once, the figures as data, nothing loaded from elsewhere.
    assert page.count("<script") == 3  # plotly.js, the figures' JSON, drawing them and the filter
    assert len(page) > 3_000_000 and "plotly.js" in page
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)=", page, re.I)
    assert [f"id='fig-{k}'" in page for k in ("pass-rate", "scores", "latency")] == [True] * 3
    # The figures' JSON cannot end its script element: every `<` in it is escaped.
    data = page.split("id='promptopt-figures'>", 1)[1].split("</script>", 1)[0]
    assert "<" not in data and "capitals &lt;i&gt;" in data


def test_plugin_writes_the_report_in_every_mode(pytester, run_pytest, mode):
    pytester.makefile(".promptopt.yaml", qa=SUITE)
    result = run_pytest("--promptopt", "--promptopt-html", "out/report.html", *mode)
    result.assert_outcomes(passed=2, xfailed=1)
    assert result.ret == 1  # the gate fails
    path = pytester.path / "out" / "report.html"
    result.stdout.fnmatch_lines([f"HTML report: {path}"])
    page = path.read_text(encoding="utf-8")
    assert page.count("data-status='passed'") == 2 and page.count("data-status='failed'") == 1
    assert "The capital of Italy is Milan. &lt;script&gt;" in page and "<script>alert" not in page


def test_ini_path_is_relative_to_the_ini_file_and_nothing_without_promptopt(pytester, run_pytest):
    pytester.makefile(".promptopt.yaml", qa=SUITE)
    pytester.makeini("[pytest]\npromptopt_html = build/r.html\n")
    sub = pytester.mkdir("sub")
    assert (
        run_pytest("--rootdir", str(pytester.path), "-c", str(pytester.path / "tox.ini")).ret == 0
    )  # skipped: no report
    assert not (pytester.path / "build").exists()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(sub)
        result = pytester.runpytest_subprocess(
            "--promptopt", "--promptopt-no-mlflow", "-c", str(pytester.path / "tox.ini"), str(pytester.path)
        )
    assert result.ret == 1
    assert (pytester.path / "build" / "r.html").is_file()


def test_bad_progress_value_is_a_usage_error(pytester, run_pytest):
    pytester.makefile(".promptopt.yaml", qa=SUITE)
    result = run_pytest("--promptopt", "--promptopt-progress", "sometimes")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--promptopt-progress (ini: promptopt_progress): *sometimes*"])


# --------------------------------------------------------------------------- progress line

SLOW = """
import time
from pytest_promptopt import FakeModel

MODEL = FakeModel({"The capital of France is Paris.": "Paris", "The capital of Spain is Madrid.": "Madrid"}, name="acme/fake")

def pytest_promptopt_make_model(spec):
    if spec.id == "acme/fake":
        return MODEL

def pytest_runtest_teardown(item):
    time.sleep(0.05)  # a "long" run: every test takes longer than the progress interval
"""

PROGRESS_SUITE = """
providers: [acme/fake]
prompts: ["The capital of {{country}} is {{capital}}."]
tests:
  - vars: {country: France, capital: Paris}
    assert: [{type: contains, value: Paris}]
  - vars: {country: Spain, capital: Madrid}
    assert: [{type: contains, value: Madrid}]
  - vars: {country: Italy, capital: Rome}
    assert: [{type: contains, value: Rome}]
"""


def test_progress_lines_count_tests_calls_cache_hits_and_errors(pytester, run_pytest, mode):
    pytester.makeconftest(SLOW)
    pytester.makefile(".promptopt.yaml", qa=PROGRESS_SUITE)
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    # Under xdist two workers' reports can reach the controller within one interval, so which
    # counts get a line varies; serially every test takes longer than the interval.
    exact = "-n" not in mode
    first = run_pytest("--promptopt", "--promptopt-progress", "0.01", *mode)
    first.assert_outcomes(passed=3, errors=1)  # Italy: the fake model does not know it
    if exact:
        first.stdout.fnmatch_lines(["promptopt: 3/4 tests done, 3 model calls, 0 cache hits, 1 error, *s"])
    else:
        first.stdout.fnmatch_lines(["promptopt: [123]/4 tests done, * model call*, * cache hit*, * error*, *s"])
    progress = [line for line in first.stdout.lines if "tests done" in line]
    # Each line stands on its own; none after the last test, whose line pytest ends with [100%].
    assert all(line.startswith("promptopt: ") for line in progress) and not any("4/4" in line for line in progress)
    first.stdout.fnmatch_lines(["*[[]100%[]]"])
    again = run_pytest("--promptopt", "--promptopt-progress", "0.01", *mode)
    if exact:
        again.stdout.fnmatch_lines(["promptopt: 3/4 tests done, 1 model call, 2 cache hits, 1 error, *s"])
    else:
        again.stdout.fnmatch_lines(["promptopt: [123]/4 tests done, *, *s"])


def test_progress_counts_the_calls_of_every_sample_of_a_repeated_test(pytester, run_pytest):
    pytester.makeconftest(SLOW)
    pytester.makepyfile(
        test_py="""
import pytest

@pytest.mark.promptopt(model="acme/fake", repeat=3)
def test_capital(prompt_model):
    assert prompt_model("The capital of France is Paris.", max_tokens=8).text == "Paris"
"""
    )
    result = run_pytest("--promptopt", "--promptopt-progress", "0.01", "-p", "no:xdist")
    result.assert_outcomes(passed=3)
    # the three samples are one case, whose record is folded again as each arrives
    result.stdout.fnmatch_lines(
        [
            "promptopt: 1/3 tests done, 1 model call, *",
            "promptopt: 2/3 tests done, 2 model calls, 0 cache hits, 0 errors, *s",
        ]
    )


def test_no_progress_line_when_quiet_off_or_a_short_run(pytester, run_pytest):
    pytester.makeconftest(SLOW)
    pytester.makefile(".promptopt.yaml", qa=PROGRESS_SUITE)
    for args in (["-q"], ["-qq"], ["-n", "2", "-q"], []):  # [] is auto: every 10 s, so a short run shows none
        result = run_pytest("--promptopt", *(["--promptopt-progress", "0.01"] if args else []), *args)
        assert result.ret == 1 and "tests done" not in result.stdout.str(), args
    assert "tests done" not in run_pytest("--promptopt", "--promptopt-progress", "off").stdout.str()


# --------------------------------------------------------------------------- a real browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path):
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
        f"--user-data-dir={tmp_path / 'profile'}",
        # Offline: any request that leaves the file would fail and log a console error.
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def many_suites():
    """Six suites, as issue 16 saw them: long names, one at 0% (a failing repair's suite), one
    whose every case errored (no pass rate), the rest in between."""
    rates = {"qa-facts and other long suite names": 0.9, "antonyms": 0.0, "summaries": 0.5, "json": 1.0}
    records = []
    for name, rate in rates.items():
        info = SuiteInfo(id=name, name=name, file=f"{name}.yaml", gates=(Gate("pass_rate", 0.8),))
        for i in range(10):
            records.append((info, CaseResult(f"{name}{i}", f"c{i}", passed=i < rate * 10, score=1.0, latency_ms=i)))
    errors = SuiteInfo(id="down", name="down", file="down.yaml")
    records += [(errors, CaseResult(f"e{i}", f"e{i}", error="model error")) for i in range(3)]
    records += [(SuiteInfo(id="py", name="py", file="t.py", kind="python"), CaseResult("p", "p", passed=True))]
    return summarize(records)


@pytest.mark.timeout(180)
def test_plots_fit_their_cells_and_show_every_suite_in_headless_chromium(tmp_path, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    from pytest_promptopt.report.html_report import write_html

    run = many_suites()
    write_html(tmp_path / "report.html", run)
    for width in (1600, 900):  # three plots to a row, then one
        browser.set_window_size(width, 1000)
        browser.get((tmp_path / "report.html").as_uri())
        WebDriverWait(browser, 30).until(
            lambda d: d.execute_script("return document.querySelectorAll('.plot-figure .main-svg').length") >= 3
        )
        sizes = browser.execute_script(
            """return [...document.querySelectorAll('.plot')].map(function (cell) {
                 var svg = cell.querySelector('.main-svg');
                 return [cell.id, cell.getBoundingClientRect().width, svg.getBoundingClientRect().width];
               });"""
        )
        assert len(sizes) == 3
        for key, cell, svg in sizes:  # drawn at its cell's width, not wider (issue 16: 1,537 px in 504)
            assert cell - 40 <= svg <= cell + 1, (width, key, cell, svg)
        # One bar per suite, each with its value shown (0% and n/a too), and every suite named.
        bars = browser.execute_script("return document.querySelectorAll('#fig-pass-rate .bars .point').length")
        labels = browser.execute_script(
            "return [...document.querySelectorAll('#fig-pass-rate .xtick text')].map(t => t.textContent)"
        )
        texts = browser.execute_script(
            "return [...document.querySelectorAll('#fig-pass-rate .bars .point text')].map(t => t.textContent)"
        )
        assert bars == len(run.suites) == 6
        assert sorted(labels) == sorted(s.info.name for s in run.suites)
        assert sorted(texts) == sorted(["0.0%", "50.0%", "90.0%", "100.0%", "100.0%", "n/a"])
    # Drawn again when its cell changes size (here: the window narrows after load).
    browser.set_window_size(1600, 1000)
    browser.get((tmp_path / "report.html").as_uri())
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.querySelectorAll('.plot-figure .main-svg').length") >= 3
    )
    browser.set_window_size(700, 1000)
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script(
            "var c = document.getElementById('plot-pass-rate'); "
            "return c.querySelector('.main-svg').getBoundingClientRect().width <= c.getBoundingClientRect().width + 1"
        )
    )
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []


@pytest.mark.timeout(180)
def test_the_report_in_headless_chromium(pytester, run_pytest, browser):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    pytester.makefile(".promptopt.yaml", qa=SUITE)
    result = run_pytest("--promptopt", "--promptopt-html", "report.html")
    assert result.ret == 1
    browser.get((pytester.path / "report.html").as_uri())

    # The plots render: plotly.js ran and drew an SVG in each figure.
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.querySelectorAll('.plot-figure .main-svg').length") >= 3
    )
    assert browser.execute_script("return typeof Plotly") == "object"
    assert browser.find_elements(By.CSS_SELECTOR, "#fig-pass-rate .bars path")  # at least one bar was drawn

    # The script-bearing output is text: no alert, no handler ran, the payload reads as written.
    with pytest.raises(NoAlertPresentException):
        _ = browser.switch_to.alert.text
    assert browser.title == "promptopt report"
    outputs = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#cases pre.output")]
    assert all(XSS in text for text in outputs) and len(outputs) == 3

    def shown() -> list[str]:
        return [
            row.find_element(By.CSS_SELECTOR, "td:nth-child(2) b").text
            for row in browser.find_elements(By.CSS_SELECTOR, "#cases tbody tr")
            if row.is_displayed()
        ]

    assert shown() == ["france[t0]", "spain[t1]", "wrong[t2]"]
    text = browser.find_element(By.ID, "filter-text")
    status = Select(browser.find_element(By.ID, "filter-status"))
    text.send_keys("MADRID")
    assert shown() == ["spain[t1]"]
    assert browser.find_element(By.ID, "filter-count").text == "1 of 3 cases"
    text.clear()
    text.send_keys("capital")
    status.select_by_value("failed")
    assert shown() == ["wrong[t2]"]
    status.select_by_value("passed")
    assert shown() == ["france[t0]", "spain[t1]"]
    status.select_by_value("error")
    assert shown() == []
    status.select_by_value("")
    text.clear()
    text.send_keys(" ")  # clear() sends no input event; an edit does
    assert shown() == ["france[t0]", "spain[t1]", "wrong[t2]"]

    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []
