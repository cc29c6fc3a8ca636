"""Repeats: several independent samples of one case's answer, folded into one record.

A suite-file case with repeats samples its model `repeats` times in one item (`execute.py`) and
folds them with `merge_samples`. A repeated Python test is N items, one per sample, because each
sample needs fresh function fixtures; the controller folds their records with
`fold_repeated_tests`, which ends in the same `merge_samples`, so the statistics read both alike.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .records import CaseResult
from .suite.cases import python_case_id
from .suite_info import SuiteInfo

__all__ = ["fold_repeated_tests", "merge_samples", "repeat_id", "split_repeat"]


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def merge_samples(result: CaseResult, samples: Sequence[CaseResult], repeats: int) -> None:
    """Fold a case's graded samples (repeat 0, 1, ...; the run stops at the first that errored)
    into its record `result`.

    The case passes when every one of its `repeats` passed. Its output, reason and assertions are
    those of the first failing sample (what a reviewer must see), else of the first; its score,
    per-assertion scores and named metrics are means over the samples, latency the mean, tokens
    and cost the sums. An errored sample makes the case an error, as one model fault does.
    """
    result.repeats = repeats
    done = [s for s in samples if not s.error]
    errored = next((n for n, s in enumerate(samples) if s.error), None)
    result.samples = [
        {
            "passed": s.passed,
            "score": s.score,
            "reason": s.reason,
            "output": s.output,
            "named_scores": dict(s.named_scores),
            "named_weights": dict(s.named_weights),
            "latency_ms": s.latency_ms,
        }
        for s in done
    ]
    passing = sum(1 for s in done if s.passed)
    result.repeat_passed = passing
    shown = next((s for s in done if not s.passed), done[0] if done else None)
    if shown is not None:
        result.output, result.assertions, result.model = shown.output, shown.assertions, shown.model or result.model
        result.score = _mean([float(s.score) for s in done if s.score is not None])
        labels: dict[str, list[float]] = {}
        metrics: dict[str, list[float]] = {}
        for s in done:
            for label, value in s.scores.items():
                labels.setdefault(label, []).append(float(value))
            for name, value in s.named_scores.items():
                metrics.setdefault(name, []).append(float(value))
        result.scores = {label: math.fsum(v) / len(v) for label, v in labels.items()}
        result.named_scores = {name: math.fsum(v) / len(v) for name, v in metrics.items()}
        result.named_weights = dict(shown.named_weights)  # the same checks in every sample
        result.latency_ms = _mean([float(s.latency_ms) for s in done if s.latency_ms is not None])
        for name in ("prompt_tokens", "completion_tokens", "cost"):
            values = [getattr(s, name) for s in done if getattr(s, name) is not None]
            setattr(result, name, sum(values) if values else None)
    if errored is not None:
        result.error = f"repeat {errored + 1} of {repeats}: {samples[errored].error}"
        result.passed = False
        result.reason = result.error
        return
    result.passed = passing == repeats
    if shown is None:
        return
    if result.passed:
        result.reason = f"all {repeats} repeats passed"
    else:
        which = next(n for n, s in enumerate(done) if not s.passed)
        kind = "flaky: " if passing else ""
        result.reason = f"{kind}{passing} of {repeats} repeats passed; repeat {which + 1}: {shown.reason}"


def repeat_id(index: int, repeats: int) -> str:
    """The id a repeated test's sample `index` (0-based) adds to the item's name: `repeat2of5`."""
    return f"repeat{index + 1}of{repeats}"


_REPEAT_ID = re.compile(r"repeat(\d+)of(\d+)")


def split_repeat(nodeid: str) -> tuple[str, int, int] | None:
    """(the test's node id without its sample's id, the sample's index, the samples) for an item
    of a repeated test; None for any other node id. Works on item names too."""
    head, sep, name = nodeid.rpartition("::")
    base, bracket, params = name.partition("[")
    if not bracket or not params.endswith("]"):
        return None
    ids = params[:-1].split("-")
    for n, part in enumerate(ids):
        found = _REPEAT_ID.fullmatch(part)
        if found and 1 <= int(found[1]) <= int(found[2]):
            rest = "-".join(ids[:n] + ids[n + 1 :])
            return f"{head}{sep}{base}" + (f"[{rest}]" if rest else ""), int(found[1]) - 1, int(found[2])
    return None


def fold_repeated_tests(
    records: Sequence[tuple[SuiteInfo, Any]], crashed: Sequence[CaseResult] = ()
) -> list[tuple[SuiteInfo, Any]]:
    """`records` (as the controller received them, from any worker in any order) with the
    samples of each repeated test folded into one record, where its first sample was. `crashed`
    are error records of samples whose worker died: each joins its case's other samples (one
    with no other sample that arrived has no known suite, and is left out)."""
    folded: list[tuple[SuiteInfo, Any]] = []
    cases: dict[str, tuple[int, dict[int, CaseResult]]] = {}  # node id without the repeat: place, samples
    for info, record in records:
        split = split_repeat(record.nodeid) if info.kind == "python" and isinstance(record, CaseResult) else None
        if split is None:
            folded.append((info, record))
            continue
        nodeid, index, _ = split
        if nodeid not in cases:
            cases[nodeid] = (len(folded), {})
            folded.append((info, record))
        cases[nodeid][1][index] = record
    for record in crashed:
        nodeid, index, _ = split_repeat(record.nodeid) or ("", 0, 0)
        if nodeid in cases:
            cases[nodeid][1].setdefault(index, record)
    for nodeid, (place, samples) in cases.items():
        folded[place] = (folded[place][0], _fold_case(samples, nodeid))
    return folded


def _fold_case(samples: Mapping[int, CaseResult], nodeid: str) -> CaseResult:
    """One record for the items of a repeated test (`samples` by index): the case of node id
    `nodeid`, its repeats folded as a suite-file case's are (`merge_samples`). Calls, cache hits
    and time add up over the items."""
    ordered = [samples[index] for index in sorted(samples)]
    _, _, name = nodeid.rpartition("::")
    result = dataclasses.replace(ordered[0], case_id=python_case_id(nodeid), name=name, nodeid=nodeid)
    result.calls = sum(s.calls for s in ordered)
    result.cache_hits = sum(s.cache_hits for s in ordered)
    result.duration_s = sum(s.duration_s for s in ordered)
    if len(ordered) > 1:  # one selected sample (-k, --lf) is a plain record
        merge_samples(result, ordered, len(ordered))
    return result
