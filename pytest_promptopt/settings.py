"""Run settings, parsed once from the command line, the ini file and defaults (in that order)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .baseline import BaselineRef, Regression
from .cache import CacheMode
from .mlflow.client import MlflowSettings
from .models.specs import ModelSpec, local_runtime_choice, parse_model_spec
from .options import DEFAULT_BASELINE, OPTIONS, Option
from .repair.config import OPTIMIZERS, Given, RepairSettings
from .runners.limits import DEFAULT_CONCURRENCY, DEFAULT_RETRIES, RateLimit, parse_rate_limits
from .runners.spark_session import SparkSettings
from .sandbox import DEFAULT_SCRIPT_TIMEOUT_S
from .suite.model import MAX_REPEAT, Repeats, SuiteLimits

__all__ = ["MlflowSettings", "Settings", "SparkSettings"]


@dataclass(frozen=True)
class Scale:
    """How this run spreads model calls: concurrency, rate limits, retries, batches, backend."""

    concurrency: int = DEFAULT_CONCURRENCY  # for the whole run; xdist workers split it
    rate_limits: tuple[RateLimit, ...] = ()
    retries: int = DEFAULT_RETRIES
    batch_size: int = 8
    backend: str = "local"
    spark: SparkSettings | None = None  # set when backend == "spark"


@dataclass(frozen=True)
class Settings:
    """A run's options, parsed once; made only when --promptopt is given (plugin.py)."""

    model: ModelSpec
    cache_mode: CacheMode
    cache_path: Path
    report_path: Path | None
    timeout_s: float
    rootdir: Path
    mlflow: MlflowSettings | None = None  # None: --promptopt-no-mlflow
    html_path: Path | None = None  # --promptopt-html
    progress_s: float | None = None  # seconds between progress lines; None: off
    baseline: BaselineRef | None = None  # --promptopt-baseline (or the default baseline file when it exists)
    update_baseline: Path | None = None  # --promptopt-update-baseline: where to write the baseline file
    regression: Regression = Regression()
    gate_rule: str = "point"
    scale: Scale = Scale()
    repair: RepairSettings | None = None  # --promptopt-repair
    judge_model: ModelSpec | None = None  # --promptopt-judge-model; None: the run's default model
    repeats: Repeats = Repeats()  # --promptopt-repeat
    local_runtime: str | None = None  # --promptopt-local-runtime; None: $PROMPTOPT_LOCAL_RUNTIME, else auto
    # --promptopt-max-cases, --promptopt-max-alias-nodes, --promptopt-allow-outside-files
    suite_limits: SuiteLimits = SuiteLimits()
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S  # --promptopt-script-timeout: one call of user code

    @property
    def backend(self) -> str:
        return self.scale.backend

    @property
    def judge(self) -> ModelSpec:
        """The judge model of model-graded assertions that name none."""
        return self.judge_model or self.model

    @property
    def spark(self) -> SparkSettings | None:
        return self.scale.spark

    @classmethod
    def from_config(cls, config: Any) -> Settings:
        rootdir = Path(str(config.rootpath))

        def value(option: Option) -> Any:
            dest = option.flag.lstrip("-").replace("-", "_")
            given = config.getoption(dest)
            if given is not None and given is not False:
                return given
            if option.ini:
                ini = config.getini(option.ini)
                if isinstance(ini, bool) and not option.is_flag:
                    # a native TOML table's `true` for a path, a number or a name: no such value
                    raise pytest.UsageError(
                        f"{option.ini} = {str(ini).lower()} (ini): expected a value for {option.flag}, not a bool"
                    )
                if ini not in (None, "", []):
                    return ini
            return option.default

        by_flag = {o.flag: o for o in OPTIONS}

        def parsed(flag: str, convert: Callable[[Any], Any]) -> Any:
            raw = value(by_flag[flag])
            try:
                return convert(raw)
            except (TypeError, ValueError) as exc:
                ini = by_flag[flag].ini
                raise pytest.UsageError(f"{flag} (ini: {ini}): {exc}") from None

        def model(raw: Any) -> ModelSpec:
            return parse_model_spec(str(raw), "--promptopt-model")

        def cache_mode(raw: Any) -> CacheMode:
            try:
                return CacheMode(str(raw).strip().lower())
            except ValueError:
                raise ValueError(f"{raw!r} is not one of off, readwrite, replay") from None

        def timeout(raw: Any) -> float:
            seconds = float(raw)
            if seconds <= 0:
                raise ValueError(f"must be a positive number of seconds, got {raw!r}")
            return seconds

        def report_path(raw: Any) -> Path | None:
            return None if raw in (None, "") else _output_path(config, "promptopt_report", raw, rootdir)

        cache_dir = Path(str(value(by_flag["--promptopt-cache-dir"]))).expanduser()
        cache_dir = cache_dir if cache_dir.is_absolute() else rootdir / cache_dir
        timeout_s = parsed("--promptopt-timeout", timeout)
        mlflow = None
        if not parsed("--promptopt-no-mlflow", _boolean):
            mlflow = _mlflow_settings(config, rootdir, cache_dir / "pending", parsed)
        return cls(
            model=parsed("--promptopt-model", model),
            cache_mode=parsed("--promptopt-cache", cache_mode),
            cache_path=cache_dir / "cache.sqlite",
            report_path=parsed("--promptopt-report", report_path),
            timeout_s=timeout_s,
            rootdir=rootdir,
            mlflow=mlflow,
            **_baselines(config, rootdir, parsed, mlflow),
            scale=_scale(parsed),
            repeats=Repeats(parsed("--promptopt-repeat", _repeat), config.getoption("promptopt_repeat") is not None),
            suite_limits=SuiteLimits(
                max_alias_nodes=parsed("--promptopt-max-alias-nodes", _positive),
                max_cases=parsed("--promptopt-max-cases", _positive),
                root=rootdir,
                allow_outside_files=parsed("--promptopt-allow-outside-files", _boolean),
            ),
            repair=_repair(config, parsed),
            judge_model=parsed("--promptopt-judge-model", _judge_model),
            local_runtime=parsed("--promptopt-local-runtime", local_runtime_choice),
            script_timeout_s=parsed("--promptopt-script-timeout", timeout),
            **_report_settings(config, rootdir, parsed),
        )


def _judge_model(raw: Any) -> ModelSpec | None:
    text = "" if raw is None else str(raw).strip()
    return parse_model_spec(text, "--promptopt-judge-model") if text else None


def _repair(config: Any, parsed: Callable[[str, Callable[[Any], Any]], Any]) -> RepairSettings | None:
    """`--promptopt-repair*`: each value remembers whether the command line gave it, since the
    command line overrides a suite's `repair:` block and the ini file does not."""
    if not config.getoption("promptopt_repair"):
        return None
    import importlib.util

    if importlib.util.find_spec("dspy") is None:  # fail now, not after a long run
        raise pytest.UsageError("--promptopt-repair needs DSPy: pip install 'pytest-promptopt[repair]'")

    def given(flag: str, convert: Callable[[Any], Any]) -> Given:
        value = parsed(flag, lambda raw: None if raw in (None, "") else convert(raw))
        if value is None:
            return Given()
        return Given(value, "cli" if config.getoption(flag.lstrip("-").replace("-", "_")) is not None else "ini")

    def whole(minimum: int) -> Callable[[Any], int]:
        def check(raw: Any) -> int:
            number = int(str(raw).strip())
            if number < minimum:
                raise ValueError(f"must be a whole number >= {minimum}, got {raw!r}")
            return number

        return check

    def optimizer(raw: Any) -> str:
        name = str(raw).strip().lower()
        if name not in OPTIMIZERS:
            raise ValueError(f"{raw!r} is not one of {', '.join(OPTIMIZERS)}")
        return name

    chosen = given("--promptopt-repair-optimizer", optimizer)
    if chosen.value == "miprov2" and importlib.util.find_spec("optuna") is None:
        raise pytest.UsageError(
            "--promptopt-repair-optimizer miprov2 needs optuna: pip install 'pytest-promptopt[repair]'"
        )
    suites = parsed(
        "--promptopt-repair-suite", lambda raw: tuple(s.strip() for s in str(raw or "").split(",") if s.strip())
    )
    model = parsed(
        "--promptopt-repair-model",
        lambda raw: None if raw in (None, "") else parse_model_spec(str(raw), "--promptopt-repair-model"),
    )
    return RepairSettings(
        suites=suites,
        optimizer=chosen,
        budget=given("--promptopt-repair-budget", whole(1)),
        seed=given("--promptopt-repair-seed", whole(0)),
        model=model,
        apply=bool(config.getoption("promptopt_repair_apply")),
    )


def _scale(parsed: Callable[[str, Callable[[Any], Any]], Any]) -> Scale:
    def positive(raw: Any) -> int:
        number = int(str(raw).strip())
        if number < 1:
            raise ValueError(f"must be a positive whole number, got {raw!r}")
        return number

    def retries(raw: Any) -> int:
        number = int(str(raw).strip())
        if number < 0:
            raise ValueError(f"must be 0 or more, got {raw!r}")
        return number

    def url(scheme: str) -> Callable[[Any], str | None]:
        def check(raw: Any) -> str | None:
            text = "" if raw is None else str(raw).strip()
            if not text:
                return None
            if scheme and not text.startswith(scheme):
                raise ValueError(f"{raw!r} is not a Spark Connect URL; write {scheme}host:port")
            return text

        return check

    backend = str(parsed("--promptopt-backend", lambda raw: str(raw).strip().lower()))
    if backend not in ("local", "spark"):
        raise pytest.UsageError(f"--promptopt-backend (ini: promptopt_backend): {backend!r} is not one of local, spark")
    master = parsed("--promptopt-spark-master", url(""))
    remote = parsed("--promptopt-spark-remote", url("sc://"))
    if backend != "spark" and (master or remote):
        raise pytest.UsageError("--promptopt-spark-master/--promptopt-spark-remote need --promptopt-backend spark")
    if master and remote:
        raise pytest.UsageError("give --promptopt-spark-master or --promptopt-spark-remote, not both")
    return Scale(
        concurrency=parsed("--promptopt-concurrency", positive),
        rate_limits=parsed("--promptopt-rate-limit", lambda raw: parse_rate_limits("" if raw is None else str(raw))),
        retries=parsed("--promptopt-retries", retries),
        batch_size=parsed("--promptopt-batch-size", positive),
        backend=backend,
        spark=SparkSettings(master, remote) if backend == "spark" else None,
    )


PROGRESS_AUTO_S = 10.0


def _report_settings(config: Any, rootdir: Path, parsed: Callable[[str, Callable[[Any], Any]], Any]) -> dict[str, Any]:
    """`html_path` and `progress_s` (the HTML report and the progress line)."""

    def html_path(raw: Any) -> Path | None:
        if raw in (None, ""):
            return None
        import importlib.util

        if importlib.util.find_spec("plotly") is None:  # fail now, not after a long run
            raise ValueError("the HTML report needs plotly: pip install 'pytest-promptopt[html]'")
        return _output_path(config, "promptopt_html", raw, rootdir)

    def progress(raw: Any) -> float | None:
        text = str(raw).strip().lower()
        if text == "auto":
            return PROGRESS_AUTO_S
        if text == "off":
            return None
        seconds = float(text)
        if not seconds > 0:
            raise ValueError(f"expected auto, off or a positive number of seconds, got {raw!r}")
        return seconds

    return {"html_path": parsed("--promptopt-html", html_path), "progress_s": parsed("--promptopt-progress", progress)}


def _baselines(
    config: Any, rootdir: Path, parsed: Callable[[str, Callable[[Any], Any]], Any], mlflow: MlflowSettings | None
) -> dict[str, Any]:
    """`baseline` (a file PATH, `mlflow:<run_id>` or `mlflow:branch=<name>`; else the default
    file when it exists), `update_baseline`, `regression` and `gate_rule`."""

    def ref(raw: Any) -> BaselineRef | None:
        text = "" if raw is None else str(raw).strip()
        if not text:
            return None
        if not text.lower().startswith("mlflow:"):
            return BaselineRef("file", path=str(_output_path(config, "promptopt_baseline", text, rootdir)))
        rest = text[len("mlflow:") :].strip()
        if rest.lower().startswith("branch="):
            branch = rest[len("branch=") :].strip()
            if not branch:
                raise ValueError(f"{raw!r}: the branch name is empty")
            found = BaselineRef("mlflow", branch=branch)
        elif re.fullmatch(r"[A-Za-z0-9_-]+", rest):
            found = BaselineRef("mlflow", run_id=rest)
        else:
            raise ValueError(f"{raw!r} is neither mlflow:<run_id> nor mlflow:branch=<name>")
        if mlflow is None:
            raise ValueError(
                "an MLflow baseline is read from the tracking store, which --promptopt-no-mlflow turns off"
            )
        return found

    def fraction(raw: Any) -> float:
        number = float(raw)
        if not 0 <= number < 1:
            raise ValueError(f"must be a number from 0 to 1 (exclusive), got {raw!r}")
        return number

    def rule(raw: Any) -> str:
        text = str(raw).strip().lower()
        if text not in ("point", "strict", "tolerant"):
            raise ValueError(f"{raw!r} is not one of point, strict, tolerant")
        return text

    baseline = parsed("--promptopt-baseline", ref)
    default = rootdir / DEFAULT_BASELINE
    update = None
    if config.getoption("promptopt_update_baseline"):
        if baseline is not None and baseline.source != "file":
            raise pytest.UsageError(
                "--promptopt-update-baseline writes a baseline file; give it a PATH, not an MLflow run"
            )
        update = Path(baseline.path) if baseline is not None else default
    if baseline is None and default.is_file():
        baseline = BaselineRef("file", path=str(default))
    alpha = parsed("--promptopt-regression-alpha", fraction)
    if alpha == 0:
        raise pytest.UsageError("--promptopt-regression-alpha (ini: promptopt_regression_alpha): must be above 0")
    return {
        "baseline": baseline,
        "update_baseline": update,
        "regression": Regression(alpha=alpha, min_effect=parsed("--promptopt-regression-min-effect", fraction)),
        "gate_rule": parsed("--promptopt-gate-rule", rule),
    }


def _output_path(config: Any, dest: str, raw: Any, rootdir: Path) -> Path:
    """A path given on the command line is relative to where pytest starts; one in the ini file
    is relative to that file, wherever pytest is started from."""
    p = Path(str(raw)).expanduser()
    if config.getoption(dest) is not None:
        base = Path(str(config.invocation_params.dir))
    elif config.inipath is not None:
        base = Path(str(config.inipath)).parent
    else:
        base = rootdir
    return base / p


def _positive(raw: Any) -> int:
    number = int(str(raw).strip())
    if number < 1:
        raise ValueError(f"must be a positive whole number, got {raw!r}")
    return number


def _repeat(raw: Any) -> int:
    number = _positive(raw)
    if number > MAX_REPEAT:
        raise ValueError(f"at most {MAX_REPEAT} samples per case, got {raw!r}")
    return number


def _boolean(raw: Any) -> bool:
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _traces(config: Any, parsed: Callable[[str, Callable[[Any], Any]], Any]) -> bool | None:
    """Case traces: True (--promptopt-mlflow-traces), False (--promptopt-no-mlflow-traces) or None,
    auto (traces for runs of up to mlflow.runs.TRACES_AUTO_LIMIT cases)."""
    if config.getoption("promptopt_no_mlflow_traces"):
        if config.getoption("promptopt_mlflow_traces"):
            raise pytest.UsageError("--promptopt-mlflow-traces and --promptopt-no-mlflow-traces contradict each other")
        return False

    def tri_state(raw: Any) -> bool | None:
        if raw is None or str(raw).strip().lower() == "auto":
            return None
        try:
            return _boolean(raw)
        except ValueError:
            raise ValueError(f"expected auto, true or false, got {raw!r}") from None

    return parsed("--promptopt-mlflow-traces", tri_state)


# A scheme (`sqlite:`, `http:`, `databricks:`...) or one of MLflow's bare names for Databricks.
_URI = re.compile(r"^([a-z][a-z0-9+.-]*:.+|databricks|databricks-uc)$", re.I)


def _tracking_uri(raw: str) -> str:
    uri = raw.strip()
    if not _URI.match(uri) or re.match(r"^[a-z]:[\\/]", uri, re.I):
        raise ValueError(
            f"{raw!r} is not a tracking URI; use e.g. sqlite:///path/to/mlflow.db, http://host:5000 or databricks"
        )
    return uri


def _mlflow_settings(
    config: Any, rootdir: Path, pending_dir: Path, parsed: Callable[[str, Callable[[Any], Any]], Any]
) -> MlflowSettings:
    """Tracking URI: --promptopt-mlflow-uri, else $MLFLOW_TRACKING_URI, else the ini key, else the
    project's own SQLite store (MLflow 3's default; its file store refuses to run).

    The environment variable is MLflow's own setting, so it is passed on as MLflow reads it (it
    may name a file store that MLFLOW_ALLOW_FILE_STORE allows) and never stops a pytest run."""
    given = config.getoption("promptopt_mlflow_uri")
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if given is None and env:
        uri = env
    else:
        uri = parsed("--promptopt-mlflow-uri", lambda raw: None if raw is None else _tracking_uri(str(raw)))
    local_store = uri is None
    if local_store:
        uri = f"sqlite:///{(rootdir / 'mlflow.db').as_posix()}"

    def experiment(raw: Any) -> str:
        name = (rootdir.name or "promptopt") if raw is None else str(raw).strip()
        if not name:
            raise ValueError("the experiment name must not be empty")
        return name

    def prompt_prefix(raw: Any) -> str:
        prefix = "" if raw is None else str(raw).strip()
        if prefix and not re.fullmatch(r"[A-Za-z0-9_.\-]+", prefix):
            raise ValueError(f"{raw!r} may hold only letters, digits and _ . - (e.g. main.prompts.)")
        return prefix

    return MlflowSettings(
        uri,
        parsed("--promptopt-experiment", experiment),
        pending_dir,
        local_store,
        traces=_traces(config, parsed),
        prompt_prefix=parsed("--promptopt-prompt-prefix", prompt_prefix),
    )
