"""The baseline a run's settings name, read from where it lives (a baseline file or an MLflow
run) and compared with the run's suites (baseline.py does the comparing)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from .baseline import BaselineComparison, compare_run
from .baseline_files import BaselineFileError, read_baseline_file
from .settings import Settings
from .summary import RunSummary, SuiteSummary, suite_outcomes

__all__ = ["compare_with_reference"]


def compare_with_reference(
    suites: Sequence[SuiteSummary],
    settings: Settings,
    not_selected: Mapping[str, Collection[str]] | None = None,
    narrowed: Collection[str] = (),
) -> BaselineComparison:
    """The run's `BaselineComparison` with the settings' baseline; a baseline that cannot be
    loaded gives a comparison whose `error` says why (the run's results stand as they are).
    `not_selected` and `narrowed`: what this run left out (selection.LeftOut), not removed."""
    ref, regression = settings.baseline, settings.regression
    assert ref is not None
    if ref.source == "file":
        try:
            return compare_run(
                suite_outcomes(suites), read_baseline_file(Path(str(ref.path))), regression, not_selected, narrowed
            )
        except BaselineFileError as exc:
            return BaselineComparison.failed(ref.describe(), str(exc))
    mlflow = settings.mlflow
    assert mlflow is not None  # settings refuse an MLflow baseline with --promptopt-no-mlflow
    from .mlflow.baseline import compare_with_baseline  # imports mlflow: only for an MLflow baseline

    return compare_with_baseline(
        RunSummary(tuple(suites)), ref, mlflow.tracking_uri, mlflow.experiment, regression, not_selected, narrowed
    )
