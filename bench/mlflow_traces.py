"""Benchmark MLflow case traces: what writing one trace per case adds to logging a session.

    python bench/mlflow_traces.py [--cases 200 1000] [--repeat 3]

For each size, a session of N cases (two assertions each, so three Feedback assessments and an
Expectation; tokens, a cost and a cache hit; every tenth case an error) is logged with
`mlflow.runs.log_run` to a copy of a migrated SQLite store twice, alternating: without traces
and with them (what `--promptopt-mlflow-traces` adds: one trace per case, written and counted
back). Prints the median times of `--repeat` runs, the traces' cost per case, and the ratio
with/without, both measured in the same run on the same machine (a shared, loaded machine moves
every figure, the ratio much less).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def session(cases: int):  # noqa: ANN201  (a RunSummary)
    from pytest_promptopt.records import CaseResult
    from pytest_promptopt.suite_info import SuiteInfo
    from pytest_promptopt.summary import summarize

    info = SuiteInfo("bench.promptopt.yaml", "bench", "bench.promptopt.yaml")
    checks = [
        {"type": "contains", "value": "x", "passed": True, "score": 1.0, "reason": "found x", "metric": None},
        {"type": "icontains", "value": "y", "passed": False, "score": 0.0, "reason": "no y", "metric": "mentions"},
    ]
    started = time.time()
    records = [
        (
            info,
            CaseResult(
                case_id=f"t{i}",
                name=f"case{i}[t{i}]",
                nodeid=f"bench.promptopt.yaml::case{i}[t{i}]",
                vars={"i": i},
                prompt=f"prompt {i}",
                output=None if i % 10 == 0 else f"output {i}",
                error="model error (echo): boom" if i % 10 == 0 else None,
                passed=i % 3 == 0,
                score=0.5,
                reason="1 of 2 assertions passed",
                assertions=checks,
                position=i,
                model="echo",
                template="prompt {{i}}",
                latency_ms=12.0,
                prompt_tokens=3,
                completion_tokens=4,
                cost=0.001,
                calls=1,
                cache_hits=1,
                started_at=started + i * 0.001,
                duration_s=0.001,
            ),
        )
        for i in range(cases)
    ]
    return summarize(records)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    warnings.simplefilter("ignore")
    from mlflow import MlflowClient

    from pytest_promptopt.mlflow.layout import SessionMeta
    from pytest_promptopt.mlflow.runs import log_run

    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "template.db"
        MlflowClient(f"sqlite:///{template}").search_experiments()  # migrate once
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for cases in args.cases:
            run = session(cases)
            now = int(time.time() * 1000)
            meta = SessionMeta(started_ms=now, ended_ms=now + 1000, rootdir=tmp)
            timings: dict[bool, list[float]] = {False: [], True: []}
            for attempt in range(args.repeat):
                for traces in (False, True):
                    db = Path(tmp) / f"run-{cases}-{attempt}-{traces}.db"
                    shutil.copy(template, db)
                    begun = time.perf_counter()
                    logged = log_run(
                        run,
                        meta,
                        f"sqlite:///{db}",
                        "bench",
                        artifact_location=(Path(tmp) / f"art-{cases}-{attempt}-{traces}").as_uri(),
                        traces=traces,
                    )
                    timings[traces].append(time.perf_counter() - begun)
                    if logged.problems:
                        print("problems:", logged.problems)
            off, on = statistics.median(timings[False]), statistics.median(timings[True])
            print(
                f"{cases} cases: log_run {off:.2f} s without traces, {on:.2f} s with them "
                f"(x{on / off:.2f}); traces add {(on - off) / cases * 1000:.1f} ms per case "
                f"(medians of {args.repeat})"
            )


if __name__ == "__main__":
    main()
