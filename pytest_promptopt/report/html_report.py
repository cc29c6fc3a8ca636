"""The HTML report (`--promptopt-html PATH`): one self-contained file a person can open offline.

It reads only a `RunSummary`, like every reporter. The plots are plotly figures (html_plots.py),
drawn once the page has laid out; plotly.js is inlined once in the page, so viewing the file
needs no network. Every piece of user content (suite names, outputs, reasons, errors) is
HTML-escaped: a model's output is shown as text, never interpreted. The case table is filtered by
a few lines of vanilla JavaScript.

plotly is imported inside `render_html` (DEVELOPERS.md: lazy heavy imports); it comes with the
`html` extra.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from html import escape
from pathlib import Path
from typing import Any

from ..records import CaseResult
from ..redact import redact
from ..summary import RunSummary, SuiteSummary
from ..wording import counted
from .html_plots import DRAW_JS, figures_json

__all__ = ["render_html", "write_html"]

STATUSES = ("passed", "failed", "error")


def write_html(path: Path, run: RunSummary, *, exit_status: int | None = None) -> None:
    """Write atomically, so a reader (or the MLflow upload) never sees half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(render_html(run, exit_status=exit_status), encoding="utf-8")
    os.replace(tmp, path)


def render_html(run: RunSummary, *, exit_status: int | None = None) -> str:
    from plotly.offline import get_plotlyjs

    from .. import __version__

    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    verdict = "all gates passed" if run.gates_passed else f"{len(run.failed_gates())} gate(s) failed"
    cases = sum(s.cases for s in run.suites)
    head = (
        f"<p class=meta>{counted(cases, 'case')} in {counted(len(run.suites), 'suite')} · "
        f"<span class='{'ok' if run.gates_passed else 'bad'}'>{escape(verdict)}</span>"
        + ("" if exit_status is None else f" · exit status {int(exit_status)}")
        + f" · {escape(created)} · pytest-promptopt {escape(__version__)}</p>"
    )
    body = [
        "<h1>promptopt report</h1>",
        head,
        "<h2>Suites</h2>",
        _suites_table(run.suites),
        *(["<h2>Repairs</h2>", _repairs(run.repairs)] if run.repairs else []),
        "<h2>Plots</h2>",
        _plots(run),
        "<h2>Cases</h2>",
        _cases_table(run.suites),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        "<meta name=viewport content='width=device-width, initial-scale=1'>\n"
        "<title>promptopt report</title>\n"
        f"<style>{_CSS}</style>\n"
        # plotly.js, once, inline: the page must work offline (no CDN).
        f"<script>{get_plotlyjs()}</script>\n"
        "</head>\n<body>\n" + "\n".join(body) + f"\n<script>{DRAW_JS}\n{_JS}</script>\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------- summary


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "–" if value is None else fmt.format(value)


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _suites_table(suites: list[SuiteSummary]) -> str:
    rows = []
    for s in suites:
        totals = s.totals()
        gates = "".join(
            f"<li class='{'ok' if g.passed else 'bad'}'>{escape(g.name)}: {_num(g.value)} "
            f"(threshold {g.threshold:g}) <b>{'pass' if g.passed else 'FAIL'}</b>"
            + ("" if g.value is not None else f" <span class=reason>{escape(g.reason)}</span>")
            + "</li>"
            for g in s.gates
        )
        metrics = ", ".join(f"{escape(k)} = {v:.3f}" for k, v in sorted(s.metric_means().items())) or "–"
        rows.append(
            "<tr class='suite'>"
            f"<td><b>{escape(s.info.name)}</b><br><span class=file>{escape(s.info.file)}</span></td>"
            f"<td>{escape(', '.join(s.models)) or '–'}</td>"
            f"<td>{s.cases}</td><td>{s.passed}</td><td>{s.failed}</td><td>{s.errors}</td>"
            f"<td>{_rate(s.pass_rate)}</td><td>{_num(s.mean_score(), '{:.2f}')}</td><td>{metrics}</td>"
            f"<td>{_num(s.latency_percentile(0.5), '{:.0f}')} / {_num(s.latency_percentile(0.95), '{:.0f}')}</td>"
            f"<td>{totals['calls']}</td><td>{totals['cache_hits']}</td>"
            f"<td>{'<ul class=gates>' + gates + '</ul>' if gates else 'no gates'}</td>"
            "</tr>"
        )
    header = "".join(
        f"<th>{h}</th>"
        for h in (
            "suite",
            "model",
            "cases",
            "passed",
            "failed",
            "errors",
            "pass rate",
            "mean score",
            "metric means",
            "latency p50 / p95 (ms)",
            "calls",
            "cache hits",
            "gates",
        )
    )
    return f"<table class=summary><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


# --------------------------------------------------------------------------- repairs


def _score(score: Any) -> str:
    return "–" if score is None else escape(score.describe())


def _diff(diff: str) -> str:
    """A unified diff, line by line, coloured by its first character (each line escaped)."""

    def cls(line: str) -> str:
        if line.startswith(("+++", "---")):
            return "head"
        return {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "same")

    return (
        "<pre class=diff>"
        + "".join(f"<span class={cls(line)}>{escape(line)}</span>\n" for line in diff.splitlines())
        + "</pre>"
    )


def _repairs(repairs: list[Any]) -> str:
    """--promptopt-repair: per repaired prompt the held-out (the verdict) and in-sample pass
    rates before and after, the calls, where the proposal went, then the proposal and its diff."""
    rows, details = [], []
    for r in repairs:
        data = redact(r.to_dict())  # the prompt and demos may quote case data
        status = "ok" if r.status == "repaired" else ("bad" if r.status in ("error", "refused") else "")
        where = ""
        if r.file:
            where = f"{'applied to' if r.applied else 'proposal'} <code>{escape(r.file)}</code>"
            if r.diff_file:
                where += f"<br>diff <code>{escape(r.diff_file)}</code>"
        notes = [escape(data["reason"])] if data.get("reason") else []
        if r.weak_estimate:
            notes.append(f"held-out estimate is weak: only {len(r.heldout_cases)} case(s); read the interval")
        rows.append(
            "<tr class=repair>"
            f"<td><b>{escape(r.suite_name)}</b><br><span class=file>prompt {r.prompt_index}"
            + (f" · {escape(r.prompt_label)}" if r.prompt_label else "")
            + "</span></td>"
            f"<td>{escape(r.model) or '–'}</td>"
            f"<td><span class='{status}'><b>{escape(r.status)}</b></span></td>"
            f"<td>{escape(r.optimizer) or '–'}</td>"
            f"<td>{_score(r.heldout_before)} → {_score(r.heldout_after)}</td>"
            f"<td>{_score(r.insample_before)} → {_score(r.insample_after)}</td>"
            f"<td>{r.calls.total} (task {r.calls.task_calls}, proposer {r.calls.proposer_calls}"
            + (f", judge {r.calls.judge_calls}" if r.calls.judge_calls else "")
            + "; "
            f"projected {r.projected.total}, budget {r.budget})</td>"
            f"<td>{where or '–'}</td>"
            f"<td class=reason>{'<br>'.join(notes)}</td>"
            "</tr>"
        )
        if data.get("prompt") is not None:
            title = f"{escape(r.suite_name)} prompt {r.prompt_index}" + (f" on {escape(r.model)}" if r.model else "")
            cases = escape(", ".join(data.get("heldout_cases") or [])) or "–"
            details.append(
                f"<details class=repair><summary>{title}: proposed prompt and diff</summary>"
                f"<p class=meta>held-out cases: {cases}</p>"
                f"<h4>{'Proposed prompt' if r.repaired else 'Best prompt found (not proposed)'}</h4><pre class=prompt>{escape(data['prompt'])}</pre>"
                + (
                    f"<h4>Diff</h4>{_diff(data['diff'])}"
                    if data.get("diff")
                    else "<p class=meta>no diff: this prompt was not proposed</p>"
                )
                + "</details>"
            )
    header = "".join(
        f"<th>{h}</th>"
        for h in (
            "suite",
            "model",
            "status",
            "optimizer",
            "held-out before → after",
            "in-sample before → after",
            "model calls",
            "proposal",
            "notes",
        )
    )
    return f"<table class=repairs><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>" + "".join(
        details
    )


# --------------------------------------------------------------------------- plots


def _plots(run: RunSummary) -> str:
    """A cell per figure, and the figures' JSON; DRAW_JS draws them after layout."""
    keys, data = figures_json(run)
    cells = "".join(
        f"<div class=plot id='plot-{key}'><div class=plot-figure id='fig-{key}'></div></div>" for key in keys
    )
    return f"<div class=plots>{cells}</div>\n<script type='application/json' id='promptopt-figures'>{data}</script>"


# --------------------------------------------------------------------------- cases


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _assertion(a: dict[str, Any]) -> str:
    passed = bool(a.get("passed"))
    score = a.get("score")
    what = escape(str(a.get("type", "")))
    if a.get("value") is not None:
        what += f" <code>{escape(_text(a.get('value')))}</code>"
    if a.get("metric"):
        what += f" <span class=metric>[{escape(str(a['metric']))}]</span>"
    return (
        f"<li class='{'ok' if passed else 'bad'}'><b>{'PASS' if passed else 'FAIL'}</b> {what} "
        f"score {_num(score, '{:.2f}') if isinstance(score, (int, float)) else '–'}"
        + (f"<div class=reason>{escape(_text(a.get('reason')))}</div>" if a.get("reason") else "")
        + "</li>"
    )


def _case_row(suite: SuiteSummary, result: CaseResult) -> str:
    data = redact(result.to_dict())
    status = result.status
    assertions = "".join(_assertion(a) for a in data.get("assertions") or [])
    score = "" if result.score is None else f"<div class=score>score {result.score:.2f}</div>"
    if result.repeats > 1:  # the filter box finds "flaky"
        score += f"<div class=score>{result.samples_passed}/{result.repeats} repeats passed{' · flaky' if result.flaky else ''}</div>"
    return (
        f"<tr class='case' data-status='{status}'>"
        f"<td>{escape(suite.info.name)}</td>"
        f"<td><b>{escape(data['name'])}</b><div class=file>{escape(data['case_id'])}</div></td>"
        f"<td><span class='status {status}'>{status}</span>{score}</td>"
        f"<td><pre class=output>{escape(_text(data.get('output')))}</pre></td>"
        f"<td>{'<ul class=assertions>' + assertions + '</ul>' if assertions else ''}"
        + (f"<div class=reason>{escape(data['reason'])}</div>" if data.get("reason") and not assertions else "")
        + "</td>"
        f"<td><pre class=error>{escape(_text(data.get('error')))}</pre></td>"
        "</tr>"
    )


def _cases_table(suites: list[SuiteSummary]) -> str:
    total = sum(len(s.results) for s in suites)
    options = "".join(f"<option value={s}>{s}</option>" for s in STATUSES)
    controls = (
        "<div class=filters>"
        "<label>Filter <input id=filter-text type=search placeholder='text in any column' autocomplete=off></label> "
        f"<label>Status <select id=filter-status><option value=''>all</option>{options}</select></label> "
        f"<span id=filter-count>{total} of {total} cases</span>"
        "</div>"
    )
    rows = "".join(_case_row(s, r) for s in suites for r in s.results)
    header = "".join(
        f"<th>{h}</th>" for h in ("suite", "case", "status", "output", "assertions (score, reason)", "error")
    )
    return f"{_dataset_files(suites)}{controls}<table id=cases class=cases><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"


def _dataset_files(suites: list[SuiteSummary]) -> str:
    """Dataset suites' rows are not in the page (there may be 100,000): where they are instead."""
    items = []
    for s in suites:
        if s.cases_file is not None:
            path = Path(s.cases_file)
            link = (
                f"<a href='{escape(path.as_uri())}'>{escape(str(path))}</a>"
                if path.is_absolute()
                else f"<code>{escape(str(path))}</code>"
            )
            items.append(
                f"<li><b>{escape(s.info.name)}</b>: {s.cases} cases, not listed here; per-case table (Parquet): {link}</li>"
            )
    return f"<ul class=datasets>{''.join(items)}</ul>" if items else ""


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1a1a1a}
h1{margin:0 0 4px}h2{margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f4f4f4;position:sticky;top:0}
.ok{color:#2e7d32}.bad{color:#c62828}.meta,.file,.reason{color:#555}.file{font-size:12px}
ul.gates,ul.assertions{margin:0;padding-left:16px}
pre{white-space:pre-wrap;word-break:break-word;margin:0;max-height:16em;overflow:auto;font-size:12.5px}
.status{font-weight:bold;padding:1px 6px;border-radius:3px;color:#fff}
.status.passed{background:#2e7d32}.status.failed{background:#c62828}.status.error{background:#ef6c00}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
.plot{min-width:0}.plot-figure{width:100%;height:360px}
.diff .add{color:#2e7d32}.diff .del{color:#c62828}.diff .hunk{color:#6a1b9a}.diff .head{color:#555;font-weight:bold}
details.repair{margin:8px 0}details.repair pre{max-height:24em;background:#fafafa;padding:4px}
.filters{margin:8px 0}.filters input{width:24em}#filter-count{color:#555;margin-left:8px}
"""

# Filters the case table: a row shows when its text contains every word typed (case-insensitive)
# and its status matches. Reads only textContent and data attributes; writes only `hidden`.
_JS = """
(function () {
  var text = document.getElementById('filter-text');
  var status = document.getElementById('filter-status');
  var count = document.getElementById('filter-count');
  var rows = Array.prototype.slice.call(document.querySelectorAll('#cases tbody tr'));
  var haystack = rows.map(function (row) { return row.textContent.toLowerCase(); });
  function apply() {
    var words = text.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var wanted = status.value;
    var shown = 0;
    rows.forEach(function (row, i) {
      var ok = (!wanted || row.getAttribute('data-status') === wanted) &&
        words.every(function (w) { return haystack[i].indexOf(w) !== -1; });
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + ' of ' + rows.length + ' cases';
  }
  text.addEventListener('input', apply);
  status.addEventListener('change', apply);
  apply();
})();
"""
