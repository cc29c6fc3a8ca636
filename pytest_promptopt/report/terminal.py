"""The terminal summary: one table row per suite, then gate verdicts."""

from __future__ import annotations

from typing import Iterable

from ..results import RunSummary, SuiteSummary


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _row(s: SuiteSummary) -> list[str]:
    totals = s.totals()
    gates = " ".join(f"{g.name}>={g.threshold:g}:{'ok' if g.passed else 'FAIL'}" for g in s.gates) or "-"
    mean = s.mean_score()
    return [
        s.info.name,
        ",".join(s.models) or "-",
        str(len(s.results)),
        str(s.passed),
        str(s.failed),
        str(s.errors),
        _rate(s.pass_rate),
        gates,
        "-" if mean is None else f"{mean:.2f}",
        str(totals["calls"]),
        str(totals["cache_hits"]),
        f"{totals['duration_s']:.1f}s",
    ]


HEADER = ["suite", "model", "cases", "passed", "failed", "errors", "pass rate", "gates", "mean score", "calls", "cache hits", "time"]


def summary_lines(run: RunSummary) -> list[str]:
    rows = [HEADER] + [_row(s) for s in run.suites]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for s in run.suites:
        means = s.metric_means()
        if means:
            lines.append(f"{s.info.name}: metrics " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(means.items())))
    lines.extend(gate_lines(run.suites))
    return lines


def gate_lines(suites: Iterable[SuiteSummary]) -> list[str]:
    lines = []
    for s in suites:
        for g in s.gates:
            if not g.passed:
                detail = f"{g.value:.3f}" if g.value is not None else f"n/a ({g.reason})"
                lines.append(f"GATE FAILED  {s.info.name} ({s.info.file}): {g.name} = {detail}, threshold {g.threshold:g}")
    return lines
