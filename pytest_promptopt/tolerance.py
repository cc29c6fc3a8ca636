"""A failing case its suite's gates tolerate: pytest shows it as an expected failure (XFAIL) and
the gates decide the run. Its own exception class, so that `--runxfail`, which runs the user's
xfail marks as ordinary tests, leaves the plugin's tolerance alone."""

from __future__ import annotations

from typing import Any, NoReturn

import pytest

__all__ = ["Tolerated", "keep_tolerated", "tolerate"]


class Tolerated(pytest.xfail.Exception):
    """Raised for a failing case its gates tolerate (`tolerate`)."""


def tolerate(gates: str, reason: str) -> NoReturn:
    """Raise `Tolerated` for a case that failed `reason` under the gates `gates` (described)."""
    raise Tolerated(f"tolerated by gate {gates}: {reason}")


def keep_tolerated(
    report: pytest.TestReport, excinfo: pytest.ExceptionInfo[BaseException] | None, runxfail: bool
) -> None:
    """Under `--runxfail` pytest reports a raised xfail as a failure; a `Tolerated` one stays an
    expected failure (the report pytest's skipping plugin would have made)."""
    value: Any = excinfo.value if excinfo is not None else None
    if runxfail and report.failed and isinstance(value, Tolerated):
        report.outcome, report.wasxfail = "skipped", value.msg or ""
