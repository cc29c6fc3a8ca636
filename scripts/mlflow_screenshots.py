"""Screenshots of MLflow's UI after `pytest --promptopt`, for docs/mlflow.md.

    python scripts/mlflow_screenshots.py [--model smollm2|echo] [--out docs/images]

Starts `mlflow server` on a temporary SQLite store (loopback, a free port), copies the example
suite `example_suites/qa.promptopt.yaml` into a temporary project and runs it twice against the
server, the second time with a changed prompt (so the Prompt Registry gets a second version and
"compare to" has two runs to pair), then opens each view in headless Chromium (Debian's
`chromium` and `chromium-driver`, driven by Selenium) and saves a PNG per view under `--out`:

    mlflow-evaluation-runs.png   the Evaluation runs list (suite runs, dataset, pass rate)
    mlflow-run-traces.png        a suite run's cases (vars, answer, assessments)
    mlflow-trace.png             one case: vars, answer, linked prompt, expectations, feedback
    mlflow-compare.png           "compare to": each case's answers under both prompt versions
    mlflow-prompts.png           the experiment's Prompts page
    mlflow-prompt.png            a prompt's versions, with their model config
    mlflow-quality.png           the Overview's Quality tab (assessments averaged by name)

`--model echo` runs in seconds (the echo model repeats the prompt); the default, the bundled
model, takes a few minutes on a CPU and gives real answers. Everything stays on loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "example_suites" / "qa.promptopt.yaml"
PROMPT = "Answer in one short sentence. {{question}}"
CHANGED = "Answer with a short sentence, nothing else. {{question}}"
EXPERIMENT = "promptopt-screenshots"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="the suite's provider: smollm2 (bundled) or echo")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            parser.error(f"{path} is missing: apt-get install -y chromium chromium-driver")
    text = SUITE.read_text(encoding="utf-8")
    if PROMPT not in text:
        parser.error(f"{SUITE}: its prompt is no longer {PROMPT!r}; update PROMPT in {__file__}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="promptopt-shots-") as tmp, mlflow_server(Path(tmp)) as url:
        project = Path(tmp) / "project"
        project.mkdir()
        for prompt in (PROMPT, CHANGED):
            suite = text.replace(PROMPT, prompt).replace("id: smollm2", f"id: {args.model}")
            (project / "qa.promptopt.yaml").write_text(suite, encoding="utf-8")
            run_suite(project, url)
        experiment, first, second = suite_runs(url)
        with chromium(Path(tmp)) as browser:
            shoot(browser, url, experiment, first, second, args.out)
    for name in sorted(p.name for p in args.out.glob("mlflow-*.png")):
        print(args.out / name)
    return 0


def run_suite(project: Path, url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--promptopt", "-p", "no:randomly", "-p", "no:cacheprovider", "-q"]
        + ["--promptopt-mlflow-uri", url, "--promptopt-experiment", EXPERIMENT],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)},
    )
    if done.returncode not in (0, 1):  # 1: a gate failed, which is fine for a screenshot
        raise SystemExit(f"pytest exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout


def suite_runs(url: str) -> tuple[str, Any, Any]:
    """The experiment's id and the suite's two runs, oldest first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment], filter_string="tags.`promptopt.suite` = 'qa-facts'")
    first, second = sorted(runs, key=lambda r: r.info.start_time)
    return experiment, first, second


def shoot(browser: Any, url: str, experiment: str, first: Any, second: Any, out: Path) -> None:
    from selenium.webdriver.common.by import By

    base = f"{url}/#/experiments/{experiment}"
    save = screenshot(browser, out)
    open_page(browser, f"{base}/evaluation-runs", "pass_rate")
    save("mlflow-evaluation-runs.png")
    name = second.info.run_name
    wait(browser, lambda d: next((a for a in d.find_elements(By.CSS_SELECTOR, "a") if a.text == name), None)).click()
    link = wait(
        browser, lambda d: next((a for a in d.find_elements(By.CSS_SELECTOR, "a") if a.text.startswith("{")), None)
    )
    time.sleep(2)  # the table's assessment cells fill in after its rows
    save("mlflow-run-traces.png")
    link.click()
    wait(browser, lambda d: "linked prompt" in page_text(d))
    assess = [b for b in browser.find_elements(By.CSS_SELECTOR, "button") if "Assess" in b.text]
    if assess:
        assess[0].click()
        time.sleep(1)
    for toggle in browser.find_elements(
        By.CSS_SELECTOR, '[data-component-id="shared.model-trace-explorer.toggle-assessment-expanded"]'
    ):
        with contextlib.suppress(Exception):
            toggle.click()
    time.sleep(1)
    save("mlflow-trace.png")
    compare = f"{base}/evaluation-runs?selectedRunUuid={second.info.run_id}&compareToRunUuid={first.info.run_id}"
    open_page(browser, compare, "Comparing")
    time.sleep(2)
    save("mlflow-compare.png")
    open_page(browser, f"{base}/prompts", "qa-facts")
    save("mlflow-prompts.png")
    open_page(browser, f"{base}/prompts/qa-facts", "Version 2")
    save("mlflow-prompt.png")
    open_page(browser, f"{base}/overview/quality", "Quality")
    time.sleep(3)  # the charts draw after their queries return
    save("mlflow-quality.png")


# Before each shot: dismiss MLflow's one-time tips ("Got it"). (Its Assistant side panel stays:
# it has no control this script could find to close it reliably.)
TIDY = """
for (const b of document.querySelectorAll('button')) { if (b.innerText.trim() === 'Got it') b.click(); }
"""


def screenshot(browser: Any, out: Path) -> Callable[[str], None]:
    def save(name: str) -> None:
        browser.execute_script(TIDY)
        time.sleep(1)
        browser.save_screenshot(str(out / name))
        print(f"saved {name}", file=sys.stderr)

    return save


def wait(browser: Any, condition: Callable[[Any], Any], timeout: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.5).until(condition)


def page_text(browser: Any) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.TAG_NAME, "body").text


def open_page(browser: Any, url: str, shows: str) -> None:
    browser.get(url)
    wait(browser, lambda d: shows in page_text(d))


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """`mlflow server` on a free loopback port over a new SQLite store in `root`; its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = root / "server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
            + ["--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
            + ["--workers", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=root,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while not up(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"mlflow server did not come up:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)


def up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def chromium(root: Path) -> Iterator[Any]:
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
        "--window-size=1800,1000",
        f"--user-data-dir={root / 'chromium'}",
        "--proxy-server=http://127.0.0.1:9",  # offline: only loopback is reached
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
