"""The plugin's command-line options, each with its ini twin, default and help: declared once,
read by `plugin.pytest_addoption` and parsed by `settings.Settings.from_config`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .models.specs import BUNDLED
from .repair.config import DEFAULT_BUDGET, OPTIMIZERS
from .runners.limits import DEFAULT_CONCURRENCY, DEFAULT_RETRIES

__all__ = ["DEFAULT_BASELINE", "OPTIONS", "Option"]

DEFAULT_BASELINE = ".promptopt/baseline.json"  # relative to the rootdir


@dataclass(frozen=True)
class Option:
    """A command-line option and its ini twin, declared once for the plugin and the docs."""

    flag: str
    ini: str
    help: str
    default: Any = None
    choices: tuple[str, ...] | None = None
    is_flag: bool = False


OPTIONS: tuple[Option, ...] = (
    Option(
        "--promptopt",
        "",
        "run prompt tests (suite files and tests marked promptopt); without it they are skipped",
        is_flag=True,
    ),
    Option(
        "--promptopt-model",
        "promptopt_model",
        f"default model for suites without providers (default: {BUNDLED}, the bundled offline model)",
        BUNDLED,
    ),
    Option(
        "--promptopt-judge-model",
        "promptopt_judge_model",
        "judge model of model-graded assertions (llm-rubric, g-eval, factuality, ...) without a provider, e.g. openai/gpt-4o-mini (default: --promptopt-model; the bundled model is a weak judge)",
        None,
    ),
    Option(
        "--promptopt-cache",
        "promptopt_cache",
        "response cache: off, readwrite, or replay (a miss is an error)",
        "readwrite",
        ("off", "readwrite", "replay"),
    ),
    Option(
        "--promptopt-cache-dir",
        "promptopt_cache_dir",
        "folder of the response cache (relative to rootdir)",
        ".promptopt",
    ),
    Option("--promptopt-report", "promptopt_report", "write the JSON report to this path", None),
    Option("--promptopt-timeout", "promptopt_timeout", "timeout in seconds for one hosted model call", "60"),
    Option(
        "--promptopt-script-timeout",
        "promptopt_script_timeout",
        "time limit in seconds for one call of user code (javascript/python checks, transforms, prompt functions, var loaders); past it the case is an error",
        "5",
    ),
    Option(
        "--promptopt-no-mlflow", "promptopt_no_mlflow", "do not log the run to MLflow (ini: true/false)", is_flag=True
    ),
    Option(
        "--promptopt-mlflow-uri",
        "promptopt_mlflow_uri",
        "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<rootdir>/mlflow.db)",
        None,
    ),
    Option(
        "--promptopt-experiment", "promptopt_experiment", "MLflow experiment name (default: the rootdir's name)", None
    ),
    Option(
        "--promptopt-prompt-prefix",
        "promptopt_prompt_prefix",
        "prefix of the Prompt Registry names given to suites' own prompts, e.g. 'main.prompts.' for a Unity Catalog registry",
        None,
    ),
    Option(
        "--promptopt-mlflow-traces",
        "promptopt_mlflow_traces",
        "also log every case as an MLflow trace with its assertions as feedback (ini: true/false)",
        is_flag=True,
    ),
    # HTML report and progress line
    Option(
        "--promptopt-html",
        "promptopt_html",
        "write a self-contained HTML report to this path (needs the html extra: plotly)",
        None,
    ),
    Option(
        "--promptopt-progress",
        "promptopt_progress",
        "progress line every N seconds: auto (every 10 s), off, or a number of seconds; never with -q",
        "auto",
    ),
    # Baselines (a file or an MLflow run) and the regression gate
    Option(
        "--promptopt-baseline",
        "promptopt_baseline",
        f"compare with a baseline: a baseline FILE (default {DEFAULT_BASELINE} when it exists), mlflow:<run_id> or mlflow:branch=<name> (the latest finished session run on that git branch)",
        None,
    ),
    Option(
        "--promptopt-update-baseline",
        "",
        f"write this run's per-case outcomes as the baseline file (--promptopt-baseline PATH, else {DEFAULT_BASELINE})",
        is_flag=True,
    ),
    Option(
        "--promptopt-regression-alpha",
        "promptopt_regression_alpha",
        "significance level of the regression gate (paired tests against the baseline)",
        "0.05",
    ),
    Option(
        "--promptopt-regression-min-effect",
        "promptopt_regression_min_effect",
        "smallest drop (pass rate or metric mean, 0-1) the regression gate fails on",
        "0.05",
    ),
    Option(
        "--promptopt-gate-rule",
        "promptopt_gate_rule",
        "rule of gates that name none: point (the estimate), strict (its 95%% lower bound) or tolerant (its upper bound)",
        "point",
        ("point", "strict", "tolerant"),
    ),
    Option(
        "--promptopt-repeat",
        "promptopt_repeat",
        "independent samples of each prompt case (suite-file cases and Python prompt tests), each its own cache entry (a suite's repeat: or a test's promptopt(repeat=) overrides the ini value; this option overrides both)",
        "1",
    ),
    # Scale: concurrency, rate limits, retries, batches, backends
    Option(
        "--promptopt-concurrency",
        "promptopt_concurrency",
        "hosted model calls in flight at once, shared by all xdist workers",
        str(DEFAULT_CONCURRENCY),
    ),
    Option(
        "--promptopt-rate-limit",
        "promptopt_rate_limit",
        "requests/tokens per minute per provider, shared by all xdist workers, e.g. 'openai:rpm=500,tpm=30000; anthropic:rpm=50'",
        None,
    ),
    Option(
        "--promptopt-retries",
        "promptopt_retries",
        "retries of a hosted call on 429, 5xx, timeouts and connection errors (exponential backoff with jitter; Retry-After honoured)",
        str(DEFAULT_RETRIES),
    ),
    Option(
        "--promptopt-batch-size", "promptopt_batch_size", "prompts the bundled model generates for in one batch", "8"
    ),
    Option(
        "--promptopt-backend",
        "promptopt_backend",
        "where cases run: local (this process or its xdist workers) or spark",
        "local",
        ("local", "spark"),
    ),
    Option(
        "--promptopt-spark-master",
        "promptopt_spark_master",
        "Spark master URL for --promptopt-backend spark (default: local[*])",
        None,
    ),
    Option(
        "--promptopt-spark-remote",
        "promptopt_spark_remote",
        "Spark Connect URL (sc://host:port) for --promptopt-backend spark; Databricks Connect speaks it",
        None,
    ),
    # Repair
    Option(
        "--promptopt-repair",
        "",
        "after the run, repair with DSPy the prompts of suites whose gates failed (or those of --promptopt-repair-suite) and propose the result",
        is_flag=True,
    ),
    Option(
        "--promptopt-repair-suite",
        "promptopt_repair_suite",
        "repair these suites (ids or names, comma-separated) even when their gates pass",
        None,
    ),
    Option(
        "--promptopt-repair-optimizer",
        "promptopt_repair_optimizer",
        "auto, labeled, bootstrap, random-search (demonstrations), gepa or miprov2 (instructions; need --promptopt-repair-model)",
        None,
        OPTIMIZERS,
    ),
    Option(
        "--promptopt-repair-model",
        "promptopt_repair_model",
        "proposer model of the instruction optimisers (any provider, e.g. openai/gpt-4o-mini)",
        None,
    ),
    Option(
        "--promptopt-repair-budget",
        "promptopt_repair_budget",
        f"most model calls the repair of one prompt may make (default {DEFAULT_BUDGET})",
        None,
    ),
    Option(
        "--promptopt-repair-seed",
        "promptopt_repair_seed",
        "seed of the held-out split and the optimisers (default 0)",
        None,
    ),
    Option(
        "--promptopt-repair-apply",
        "",
        "write a winning proposal into the suite (its prompt file or prompts entry) instead of only beside it",
        is_flag=True,
    ),
)
