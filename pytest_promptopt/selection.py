"""Which prompt cases a session left out: the cases of collected suites that pytest did not run
because the command line selected fewer (`-k`, `-m`, `--deselect`, `--lf`, `--sw`, a node id
such as `suite.promptopt.yaml::case`, or any plugin that narrows the items).

Such a session is complete for pytest but holds only part of its suites: its cases decide its
gates as usual, but it must not stand for the whole project later. An MLflow session run with
cases left out is never a `mlflow:branch=...` baseline, and `--promptopt-update-baseline` keeps
the old baseline entries of the cases it did not run (baseline_files.merge_baseline).

Suite files are measured exactly: every case a suite file offers against the items pytest kept.
A Python prompt test is counted when pytest reports it deselected (`pytest_deselected`); a
Python test left out by a node id on the command line is never collected, so it is not seen.
Under xdist every worker collects and narrows the same items; each sends its count with its
`workeroutput` and the controller keeps one (`LeftOut.merge`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

__all__ = ["LeftOut", "WORKEROUTPUT_KEY"]

WORKEROUTPUT_KEY = "promptopt_left_out"  # xdist workeroutput: `LeftOut.found()`


class LeftOut:
    """Per suite id: which of its cases this session left out (a suite file's by case id; a
    Python suite's only counted)."""

    def __init__(self) -> None:
        self._offered: dict[str, list[str]] = {}  # suite file id -> the case ids it offered
        self._deselected: dict[str, int] = {}  # Python suite id -> tests pytest deselected
        self._cases: dict[str, set[str]] = {}  # the result, once collection is done (or merged)
        self._counts: dict[str, int] = {}

    def offered(self, suite_id: str, case_ids: Iterable[str]) -> None:
        """A suite file offered these cases (one per item) at collection."""
        self._offered.setdefault(suite_id, []).extend(case_ids)

    def deselected(self, suite_ids: Iterable[str]) -> None:
        """Python prompt tests pytest deselected, one suite id each."""
        for suite_id in suite_ids:
            self._deselected[suite_id] = self._deselected.get(suite_id, 0) + 1

    def collected(self, kept: Iterable[tuple[str, str]]) -> None:
        """Collection is done: `kept` holds (suite id, case id) of every suite-file item pytest kept."""
        ran = set(kept)
        found: dict[str, list[str]] = {}
        for suite_id, case_ids in self._offered.items():
            missing = [c for c in case_ids if (suite_id, c) not in ran]
            if missing:
                found[suite_id] = missing
        found.update({suite_id: n for suite_id, n in self._deselected.items() if suite_id not in found})
        self.merge(found)

    def merge(self, found: Mapping[str, Sequence[str] | int]) -> None:
        """A worker's findings (or this process's): suite id -> the case ids left out, or a count
        for a Python suite. Every worker narrows the same items, so they agree; a worker that
        collected less (it crashed) only adds nothing."""
        for suite_id, value in found.items():
            if isinstance(value, int):
                self._counts[suite_id] = max(self._counts.get(suite_id, 0), value)
            else:
                ids = self._cases.setdefault(suite_id, set())
                ids.update(value)
                self._counts[suite_id] = max(self._counts.get(suite_id, 0), len(ids))

    def found(self) -> dict[str, list[str] | int]:
        """What `merge` takes: for xdist's workeroutput."""
        return {k: sorted(self._cases[k]) if k in self._cases else n for k, n in self._counts.items()}

    @property
    def counts(self) -> dict[str, int]:
        """Suite id -> cases left out; only suites that left some out."""
        return dict(self._counts)

    @property
    def case_ids(self) -> dict[str, frozenset[str]]:
        """Suite id -> the ids of the cases left out (empty for a Python suite: only counted);
        a baseline comparison does not call them removed."""
        return {k: frozenset(self._cases.get(k, ())) for k in self._counts}

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def describe(self) -> str | None:
        """One phrase for the terminal, or None when the session ran every case it collected."""
        if not self._counts:
            return None
        n, suites = self.total, len(self._counts)
        return (
            f"{n} prompt case{'s' if n != 1 else ''} of {suites} suite{'s' if suites != 1 else ''} not selected "
            "(-k, -m, --deselect, --lf, --sw or node ids): the gates judged the cases that ran; "
            "not a branch baseline"
        )
