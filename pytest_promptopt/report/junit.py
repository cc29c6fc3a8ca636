"""The plugin's verdicts in JUnit XML (`--junitxml`): a failed gate is no test's failure there, so
the `<testsuite>` carries it as properties, as pytest's `record_testsuite_property` writes them;
a model fault inside a Python prompt test's call is an `<error>`, not the `<failure>` pytest's
writer makes of any failed call."""

from __future__ import annotations

from typing import Any

import pytest

from ..summary import RunSummary

__all__ = ["add_gate_properties", "failure_as_error"]


def add_gate_properties(config: pytest.Config, run: RunSummary) -> None:
    """`promptopt_gates_passed`, and each failed gate's and regression's reason, when pytest
    writes JUnit XML in this run."""
    from _pytest.junitxml import xml_key  # pytest's own stash key; the property API is public

    xml: Any = config.stash.get(xml_key, None)
    if xml is None:
        return
    xml.add_global_property("promptopt_gates_passed", str(run.gates_passed).lower())
    for suite, gate in run.failed_gates():
        xml.add_global_property(f"promptopt_gate_failed[{suite.info.name}]", gate.reason)
    for comparison in run.regressions():
        xml.add_global_property(f"promptopt_regression[{comparison.name}]", comparison.regression_reason)


def failure_as_error(config: pytest.Config, report: pytest.TestReport) -> None:
    """Turn the `<failure>` JUnit XML's writer just made of `report` (a failed call) into an
    `<error>`, with the `<testsuite>`'s counts. The writer keeps a testcase's elements until the
    session ends, so the change reaches the file."""
    from _pytest.junitxml import xml_key

    xml: Any = config.stash.get(xml_key, None)
    if xml is None or not isinstance(getattr(xml, "stats", None), dict):
        return  # no JUnit XML in this run (or a writer of another shape: it keeps its <failure>)
    for node in reversed(getattr(xml.node_reporter(report), "nodes", ())):
        if node.tag == "failure":
            node.tag = "error"
            xml.stats["failure"] -= 1
            xml.stats["error"] += 1
            return
