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
        item = SkippedSuite.from_parent(self, name="promptopt")
        # A skip marker, as Python prompt tests get: pytest then reports the suite file as the
        # skip's place (`SKIPPED [1] qa.promptopt.yaml: ...`), not this module.
        item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
        item.add_marker("promptopt")  # `-m promptopt` / `-m "not promptopt"` select prompt tests
        yield item


class SkippedSuite(pytest.Item):
    def runtest(self) -> None:
        pytest.skip(SKIP_REASON)  # markers ignored (`-p no:skipping`): skipped all the same

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, self.name  # the file's first line (a marker's skip needs a line)
