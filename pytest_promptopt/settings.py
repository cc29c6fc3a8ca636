"""Run settings, parsed once from the command line, the ini file and defaults (in that order)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .cache import CacheMode
from .models.registry import BUNDLED, ModelSpec, parse_model_spec

__all__ = ["OPTIONS", "Option", "Settings"]


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
    Option("--promptopt", "", "run prompt tests (suite files and tests marked promptopt); without it they are skipped", is_flag=True),
    Option("--promptopt-model", "promptopt_model", f"default model for suites without providers (default: {BUNDLED}, the bundled offline model)", BUNDLED),
    Option("--promptopt-cache", "promptopt_cache", "response cache: off, readwrite, or replay (a miss is an error)", "readwrite", ("off", "readwrite", "replay")),
    Option("--promptopt-cache-dir", "promptopt_cache_dir", "folder of the response cache (relative to rootdir)", ".promptopt"),
    Option("--promptopt-report", "promptopt_report", "write the JSON report to this path", None),
    Option("--promptopt-timeout", "promptopt_timeout", "timeout in seconds for one hosted model call", "60"),
)


@dataclass(frozen=True)
class Settings:
    enabled: bool
    model: ModelSpec
    cache_mode: CacheMode
    cache_path: Path
    report_path: Path | None
    timeout_s: float
    rootdir: Path

    @classmethod
    def from_config(cls, config: Any) -> "Settings":
        import pytest

        rootdir = Path(str(config.rootpath))

        def value(option: Option) -> Any:
            dest = option.flag.lstrip("-").replace("-", "_")
            given = config.getoption(dest)
            if given is not None and given is not False:
                return given
            if option.ini:
                ini = config.getini(option.ini)
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

        def path(raw: Any) -> Path | None:
            if raw in (None, ""):
                return None
            p = Path(str(raw)).expanduser()
            return p if p.is_absolute() else Path(str(config.invocation_params.dir)) / p

        cache_dir = Path(str(value(by_flag["--promptopt-cache-dir"]))).expanduser()
        timeout_s = parsed("--promptopt-timeout", timeout)
        return cls(
            enabled=bool(config.getoption("promptopt")),
            model=parsed("--promptopt-model", model),
            cache_mode=parsed("--promptopt-cache", cache_mode),
            cache_path=(cache_dir if cache_dir.is_absolute() else rootdir / cache_dir) / "cache.sqlite",
            report_path=parsed("--promptopt-report", path),
            timeout_s=timeout_s,
            rootdir=rootdir,
        )
