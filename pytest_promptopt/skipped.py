"""What a run without --promptopt collects of a suite file: one item, skipped with how to run it.

Nothing is read or parsed and nothing else of the plugin is imported (plugin.py asks for this
module only when --promptopt is off), so a project's ordinary `pytest` costs what plain pytest
costs (docs/performance.md, "Without --promptopt").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

__all__ = ["SKIP_REASON", "SkippedSuite", "SkippedSuiteFile"]

SKIP_REASON = "prompt test: run it with `pytest --promptopt`"


class SkippedSuiteFile(pytest.File):
    def collect(self) -> Any:
        yield SkippedSuite.from_parent(self, name="promptopt")


class SkippedSuite(pytest.Item):
    def runtest(self) -> None:
        pytest.skip(SKIP_REASON)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name
