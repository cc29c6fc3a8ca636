"""The gates' verdict in JUnit XML (`--junitxml`): a failed gate is no test's failure there, so
the `<testsuite>` carries it as properties, as pytest's `record_testsuite_property` writes them."""

from __future__ import annotations

from typing import Any

import pytest

from ..summary import RunSummary

__all__ = ["add_gate_properties"]


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
