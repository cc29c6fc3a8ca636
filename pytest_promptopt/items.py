"""pytest nodes for suite files: one `CaseItem` per case, so -k, --lf, JUnit and xdist work per case."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from .report.text import describe_case
from .results import CaseResult
from .session import PromptoptSession, record_key, session_key
from .suite.model import Case, SuiteError

SUITE_SUFFIXES = (".promptopt.yaml", ".promptopt.yml", ".promptopt.json")
PROMPTFOO_NAMES = ("promptfooconfig.yaml", "promptfooconfig.yml", "promptfooconfig.json")
SKIP_REASON = "prompt test: run it with `pytest --promptopt`"


def is_suite_file(path: Path) -> bool:
    return path.name.endswith(SUITE_SUFFIXES) or path.name in PROMPTFOO_NAMES


def _case_nodeid(parent: pytest.Collector, name: str) -> Any:
    """pytest >= 9.2 compares structured node ids: `file::name[params]` read back from the
    --lf cache parses as name + params, so a non-Function item must be built the same way or
    --lf/--ff never match it. Older pytest compares strings and needs nothing."""
    parent_id = getattr(parent, "id", None)
    base, bracket, params = name.partition("[")
    if parent_id is None or not hasattr(parent_id, "with_params") or not bracket:
        return None
    return parent_id.child(base).with_params(params.removesuffix("]"))


class CaseFailed(AssertionError):
    """The model answered and the case's assertions failed."""


class SuiteFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        session: PromptoptSession | None = self.config.stash.get(session_key, None)
        if session is None or not session.settings.enabled:
            # Not parsed at all: without --promptopt the plugin costs nothing.
            yield DisabledSuite.from_parent(self, name="promptopt")
            return
        from .suite.loader import load_suite

        display = self.path.relative_to(self.config.rootpath).as_posix() if self.path.is_relative_to(self.config.rootpath) else str(self.path)
        loaded = load_suite(self.path, display, session.settings.model, session.registry.resolve)
        for case in loaded.cases:
            yield CaseItem.from_parent(self, name=case.name, nodeid=_case_nodeid(self, case.name), case=case)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:  # type: ignore[override]
        if isinstance(excinfo.value, SuiteError):
            return f"invalid prompt suite: {excinfo.value}"
        return super().repr_failure(excinfo)


class DisabledSuite(pytest.Item):
    def runtest(self) -> None:
        pytest.skip(SKIP_REASON)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, None, self.name


class CaseItem(pytest.Item):
    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.result: CaseResult | None = None

    def setup(self) -> None:
        # The model call happens in setup, so a model fault is a pytest *error*, not a failure.
        session = self.config.stash[session_key]
        self.result = session.run_case(self.case, self.nodeid)
        self.stash[record_key] = session.encode(self.case.suite, self.result)
        if self.result.error:
            # pytest renders setup errors without repr_failure; pytrace=False shows just the text.
            pytest.fail(describe_case(self.result, self.case.rendered_prompt), pytrace=False)

    def runtest(self) -> None:
        result = self.result
        assert result is not None
        if result.passed:
            return
        gates = self.case.suite.gates
        if gates:
            pytest.xfail(f"tolerated by gate {', '.join(g.describe() for g in gates)}: {result.reason}")
        raise CaseFailed(result.reason)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, CaseFailed) and self.result is not None:
            return describe_case(self.result, self.case.rendered_prompt)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        # pytest shows the domain with dots as '::', so it must not contain the file name.
        return self.path, None, self.name
