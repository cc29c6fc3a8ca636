"""Benchmark `--promptopt-mlflow-traces`: time to write N case traces to a fresh SQLite store.

    python bench/mlflow_traces.py [--cases N] [--store PATH]

Each case has two assertions (so three Feedback assessments), tokens, a cost and a cache hit;
every tenth case is an error. Prints the write time, the read-back (count) time and the count.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--store", type=Path, default=None, help="SQLite file (default: a temporary one)")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    warnings.simplefilter("ignore")
    from mlflow import MlflowClient

    from pytest_promptopt.mlflow.traces import count_run_traces, log_case_traces
    from pytest_promptopt.records import CaseResult
    from pytest_promptopt.suite.model import SuiteInfo
    from pytest_promptopt.summary import summarize

    with tempfile.TemporaryDirectory() as tmp:
        db = args.store or Path(tmp) / "mlflow.db"
        client = MlflowClient(f"sqlite:///{db}")
        experiment = client.create_experiment(
            f"bench-{time.time():.0f}", artifact_location=(Path(tmp) / "mlruns").as_uri()
        )
        run_id = client.create_run(experiment).info.run_id
        info = SuiteInfo("bench", "bench", "bench.promptopt.yaml")
        checks = [
            {"type": "contains", "value": "x", "passed": True, "score": 1.0, "reason": "found x", "metric": None},
            {"type": "icontains", "value": "y", "passed": False, "score": 0.0, "reason": "no y", "metric": "mentions"},
        ]
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
                    latency_ms=12.0,
                    prompt_tokens=3,
                    completion_tokens=4,
                    cost=0.001,
                    calls=1,
                    cache_hits=1,
                ),
            )
            for i in range(args.cases)
        ]
        run = summarize(records)
        started = time.perf_counter()
        problems = log_case_traces(client, experiment, run, {info.id: run_id}, started_ms=int(time.time() * 1000))
        written = time.perf_counter()
        count = count_run_traces(client, experiment, run_id)
        counted = time.perf_counter()
    print(
        f"{args.cases} cases: write {written - started:.2f} s, count {counted - written:.2f} s, {count} traces, problems: {problems or 'none'}"
    )


if __name__ == "__main__":
    main()
