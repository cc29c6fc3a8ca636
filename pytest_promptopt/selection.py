"""Which prompt cases a session left out: the cases of collected suites that pytest did not run
because the command line selected fewer (`-k`, `-m`, `--deselect`, `--lf`, `--sw`, a node id
such as `suite.promptopt.yaml::case`, or any plugin that narrows the items).

Such a session is complete for pytest but holds only part of its suites: its cases decide its
gates as usual, but it must not stand for the whole project later. An MLflow session run with
cases left out is never a `mlflow:branch=...` baseline, and `--promptopt-update-baseline` keeps
the old baseline entries of the cases it did not run (baseline_files.merge_baseline).

What is known, by how pytest narrowed:
- a suite file: every case it offered against the items pytest kept, by case id;
- a Python prompt test pytest reports deselected (`pytest_deselected`): its case id;
- a Python module named by a node id on the command line (`test_x.py::test_a`): pytest never
  collects its other tests, so its suites are `narrowed`, which of their cases is not known;
- `--lf` skipping whole files it remembers no failure in: `skipped_files`, not which suites.
It also keeps the files whose items it saw (`files`): an old baseline entry of a suite from a
file this session collected, but not among its suites, is a suite that is gone (renamed).
Under xdist every worker collects and narrows the same items; each sends what it found with its
`workeroutput` and the controller merges them (`LeftOut.merge`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .wording import counted

__all__ = ["LeftOut", "WORKEROUTPUT_KEY"]

WORKEROUTPUT_KEY = "promptopt_left_out"  # xdist workeroutput: `LeftOut.found()`


class LeftOut:
    """What this session's selection left out of the suites it collected."""

    def __init__(self) -> None:
        self._offered: dict[str, list[str]] = {}  # suite file id -> the case ids it offered
        self._cases: dict[str, set[str]] = {}  # suite id -> case ids left out
        self._narrowed: set[str] = set()  # Python suites narrowed by a node id: cases unknown
        self._skipped_files = 0  # files --lf did not collect
        self._files: set[str] = set()  # files (rootdir-relative) whose items were collected

    # ---------------------------------------------------------------- while collecting

    def offered(self, suite_id: str, case_ids: Iterable[str]) -> None:
        """A suite file offered these cases (one per item) at collection."""
        self._offered.setdefault(suite_id, []).extend(case_ids)

    def deselected(self, cases: Iterable[tuple[str, str]]) -> None:
        """Python prompt tests pytest deselected: (suite id, case id) each."""
        for suite_id, case_id in cases:
            self._cases.setdefault(suite_id, set()).add(case_id)

    def collected(
        self,
        kept: Iterable[tuple[str, str]],
        files: Iterable[str],
        narrowed: Iterable[str] = (),
        skipped_files: int = 0,
    ) -> None:
        """Collection is done: `kept`, (suite id, case id) of every suite-file item pytest kept;
        `files`, where the session's items come from; `narrowed`, Python suites of modules named
        by a node id; `skipped_files`, the files --lf did not collect."""
        ran = set(kept)
        for suite_id, case_ids in self._offered.items():
            missing = {c for c in case_ids if (suite_id, c) not in ran}
            if missing:
                self._cases.setdefault(suite_id, set()).update(missing)
        self._narrowed.update(narrowed)
        self._skipped_files = max(self._skipped_files, skipped_files)
        self._files.update(files)

    # ---------------------------------------------------------------- across xdist

    def found(self) -> dict[str, Any]:
        """What `merge` takes (JSON-safe: it crosses xdist in a worker's `workeroutput`)."""
        return {
            "cases": {k: sorted(v) for k, v in self._cases.items()},
            "narrowed": sorted(self._narrowed),
            "skipped_files": self._skipped_files,
            "files": sorted(self._files),
        }

    def merge(self, found: Mapping[str, Any]) -> None:
        """A worker's findings. Every worker narrows the same items, so they agree; a worker
        that crashed sends nothing and the others' stand."""
        for suite_id, case_ids in (found.get("cases") or {}).items():
            self._cases.setdefault(str(suite_id), set()).update(map(str, case_ids))
        self._narrowed.update(map(str, found.get("narrowed") or ()))
        self._skipped_files = max(self._skipped_files, int(found.get("skipped_files") or 0))
        self._files.update(map(str, found.get("files") or ()))

    # ---------------------------------------------------------------- read by the session

    @property
    def case_ids(self) -> dict[str, frozenset[str]]:
        """Suite id -> the ids of its cases left out (empty for a suite only `narrowed`)."""
        return {k: frozenset(self._cases.get(k, ())) for k in self._cases.keys() | self._narrowed}

    @property
    def narrowed(self) -> frozenset[str]:
        """Suites whose left-out cases are not known (a node id narrowed their module)."""
        return frozenset(self._narrowed - self._cases.keys())

    @property
    def counts(self) -> dict[str, int]:
        """Suite id -> cases known to be left out; only suites that left some out."""
        return {k: len(v) for k, v in self._cases.items() if v}

    @property
    def files(self) -> frozenset[str]:
        return frozenset(self._files)

    def describe(self) -> str | None:
        """One phrase for the terminal and MLflow, or None when nothing was left out."""
        left = []
        n, suites = sum(self.counts.values()), len(self.counts)
        if n:
            left.append(f"{counted(n, 'prompt case')} of {counted(suites, 'suite')}")
        if self.narrowed:
            left.append(f"the other tests of {len(self.narrowed)} Python suite(s) named by node ids")
        parts = [" and ".join(left) + " not selected (-k, -m, --deselect, --lf, --sw or node ids)"] if left else []
        if self._skipped_files:
            parts.append(f"{self._skipped_files} file(s) --lf did not collect")
        if not parts:
            return None
        return "; ".join(parts) + ": the gates judged the cases that ran; not a branch baseline"
