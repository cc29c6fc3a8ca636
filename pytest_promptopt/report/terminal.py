"""The terminal summary: one table row per suite, then gate verdicts; the baseline and repair sections."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..baseline import BaselineComparison
from ..gates import PASS_K
from ..summary import RunSummary, SuiteSummary


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _row(s: SuiteSummary) -> list[str]:
    totals = s.totals()
    gates = (
        " ".join(
            f"{g.name}>={g.threshold:g}{'' if g.rule == 'point' else '(' + g.rule + ')'}:{'ok' if g.passed else 'FAIL'}"
            for g in s.gates
        )
        or "-"
    )
    mean = s.mean_score()
    return [
        s.info.name,
        ",".join(s.models) or "-",
        str(s.cases),
        str(s.passed),
        str(s.failed),
        str(s.errors),
        _rate(s.pass_rate),
        _interval(s.intervals().get("pass_rate")),
        gates,
        "-" if mean is None else f"{mean:.2f}",
        str(totals["calls"]),
        str(totals["cache_hits"]),
        f"{totals['duration_s']:.1f}s",
    ]


HEADER = [
    "suite",
    "model",
    "cases",
    "passed",
    "failed",
    "errors",
    "pass rate",
    "95% CI",
    "gates",
    "mean score",
    "calls",
    "cache hits",
    "time",
]


def _interval(found: tuple[float, float] | None) -> str:
    return "-" if found is None else f"{found[0] * 100:.0f}-{found[1] * 100:.0f}%"


def summary_lines(run: RunSummary) -> list[str]:
    rows = [HEADER] + [_row(s) for s in run.suites]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for s in run.suites:
        means = s.metric_means()
        if means:
            lines.append(f"{s.info.name}: metrics " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(means.items())))
        if s.repeats > 1:
            lines.append(repeat_line(s))
        if s.cases_file is not None:  # a dataset suite: its rows are in a file, not in the summary
            lines.append(f"{s.info.name}: per-case results in {s.cases_file}")
    lines.extend(gate_lines(run.suites))
    for c in run.regressions():
        lines.append(f"GATE FAILED  {c.name} ({c.suite_id}): regression against the baseline: {c.regression_reason}")
    return lines


def repeat_line(s: SuiteSummary, shown: int = 5) -> str:
    """A repeated suite: samples per case, pass^k with its interval, and the flaky cases (the
    table's pass rate and CI are then over every sample)."""
    flaky = s.flaky
    names = ", ".join(r.name for r in flaky[:shown]) + (
        f", ... ({len(flaky) - shown} more)" if len(flaky) > shown else ""
    )
    return (
        f"{s.info.name}: {s.repeats} repeats per case, pass^k {_rate(s.pass_k)} (95% CI {_interval(s.intervals().get(PASS_K))}), "
        f"{len(flaky)} flaky" + (f": {names}" if flaky else "")
    )


def gate_lines(suites: Iterable[SuiteSummary]) -> list[str]:
    lines = []
    for s in suites:
        for g in s.gates:
            if not g.passed:
                detail = f"{g.value:.3f}" if g.value is not None else f"n/a ({g.reason})"
                line = f"GATE FAILED  {s.info.name} ({s.info.file}): {g.name} = {detail}, threshold {g.threshold:g}"
                if g.rule != "point" and g.value is not None:
                    line += f" ({g.reason})"
                lines.append(line)
    return lines


def _points(delta: float | None) -> str:
    return "n/a" if delta is None else f"{delta * 100:+.1f} pts"


def _short(text: str | None, limit: int = 80) -> str:
    if text is None:
        return "(no output)"
    one = " ".join(text.split())
    return repr(one if len(one) <= limit else one[: limit - 3] + "...")


def baseline_lines(comparison: BaselineComparison) -> list[str]:
    """The baseline section: where the baseline came from, per-suite deltas and the regression
    gate's verdict, then each case that flipped with both outputs."""
    if comparison.error:
        return [f"baseline not loaded: {comparison.error}"]
    source = f"session run {comparison.run_id}" if comparison.run_id else "baseline file"
    gating = (
        "regression gate on" if comparison.gating else "compared, not gated: --promptopt-update-baseline replaces it"
    )
    lines = [f"baseline {comparison.ref}: {source} ({gating})"]
    if comparison.baseline_left_out not in ("", "0"):
        # Named by run id (a branch never picks one): its selection left cases out, which this run
        # shows as added.
        left_out = comparison.baseline_left_out
        count = "some cases" if left_out == "unknown" else f"{left_out} case{'' if left_out == '1' else 's'}"
        lines.append(
            f"    that session ran part of the project ({count} not selected, -k / -m / node ids): cases it "
            "did not run show as added, and its pass rates are over the cases it ran"
        )
    for c in comparison.suites.values():
        metrics = "".join(
            f"; {name} {m.baseline:.3f} -> {m.current:.3f} ({m.delta:+.3f})"
            for name, m in c.metric_deltas.items()
            if m.delta is not None and m.baseline is not None and m.current is not None
        )
        counts = f"{len(c.newly_failing)} newly failing, {len(c.newly_passing)} newly passing, {len(c.added)} added, {len(c.removed)} removed"
        if c.not_selected:
            counts += f", {c.not_selected} not selected"
        if not c.in_baseline:
            lines.append(f"{c.name}: not in the baseline ({len(c.added)} added)")
            continue
        lines.append(
            f"{c.name}: pass rate {_rate(c.baseline_pass_rate)} -> {_rate(c.pass_rate)} ({_points(c.delta)}){metrics}; {counts}"
        )
        if c.p_value is not None:
            verdict = f"REGRESSED: {c.regression_reason}" if c.regressed else "no significant regression"
            lines.append(f"    {c.compared} paired cases, McNemar p = {c.p_value:.3g}: {verdict}")
        for case_id in c.added:
            lines.append(f"    added since the baseline: {case_id}")
        for case_id in c.removed:
            lines.append(f"    removed since the baseline: {case_id}")
    if comparison.removed_suites:
        lines.append("suites only in the baseline: " + ", ".join(comparison.removed_suites))
    for c in comparison.suites.values():
        for flip in c.flipped:
            kind = "newly failing" if flip.baseline_status == "passed" else "newly passing"
            lines.append(f"  {kind}  {c.name} :: {flip.name} ({flip.case_id}): {flip.baseline_status} -> {flip.status}")
            lines.append(f"      baseline: {_short(flip.baseline_output)}")
            lines.append(f"      now:      {_short(flip.output)}")
    return lines


def repair_lines(repairs: Sequence[Any], registered: Mapping[int, str] | None = None) -> list[str]:
    """The repair section: per repaired prompt, held-out and in-sample pass rates before -> after
    (the held-out ones judge the proposal), the calls spent, and where the proposal is; otherwise
    why there is none. `registered`: the Prompt Registry URI of each proposal registered in MLflow,
    by position in `repairs`."""
    lines = []
    for index, r in enumerate(repairs):
        what = f"{r.suite_name} prompt {r.prompt_index}" + (f" on {r.model}" if r.model else "")
        if r.status != "repaired":
            by = f" ({r.optimizer})" if r.optimizer else ""
            lines.append(f"{what}: {r.status}{by}: {r.reason or 'no reason given'}")
            if r.heldout_before is not None and r.heldout_after is not None:
                lines.append(f"    held-out {r.heldout_before.describe()} -> {r.heldout_after.describe()}; {_calls(r)}")
            continue
        lines.append(
            f"{what}: repaired by {r.optimizer}: held-out {_change(r.heldout_before, r.heldout_after)}; "
            f"in-sample {_change(r.insample_before, r.insample_after)}; {_calls(r)}"
        )
        if r.file is None:
            lines.append(f"    proposal not written: {r.reason}")
        elif r.applied:
            lines.append(f"    applied to {r.file}  diff: {r.diff_file}")
        else:
            lines.append(f"    proposal: {r.file}  diff: {r.diff_file}")
        if r.file is not None and r.reason:  # written, but e.g. "not applied: ..."
            lines.append(f"    {r.reason}")
        if registered and registered.get(index):
            lines.append(f"    registered: {registered[index]} (alias candidate)")
        if r.weak_estimate:
            lines.append(
                f"    held-out estimate is weak: only {len(r.heldout_cases)} case(s); read the interval, not the point"
            )
    return lines or ["nothing to repair: no suite failed its gates or matched --promptopt-repair-suite"]


def _change(before: Any, after: Any) -> str:
    return f"{before.describe() if before is not None else 'n/a'} -> {after.describe() if after is not None else 'n/a'}"


def _calls(r: Any) -> str:
    projected = r.projected.total
    return f"{r.calls.total} model calls (projected {projected}, budget {r.budget})"
