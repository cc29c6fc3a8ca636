"""The HTML report's plots: plotly figures of a `RunSummary` (pass rate per suite, against the
baseline, scores per metric, latency), drawn when the page has laid out.

A figure drawn while the page is still being parsed takes the width its cell has at that moment
(a grid cell that later shrinks to a third of the row leaves a plot three times too wide, most
of its bars cut off). So the figures travel as JSON and one script draws them all once the page
is laid out, each at its cell's width, and redraws a figure whenever its cell changes size.

plotly is imported inside `figures` (DEVELOPERS.md: lazy heavy imports); it comes with the `html`
extra.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from html import escape
from typing import Any

from ..summary import RunSummary

__all__ = ["DRAW_JS", "figures", "figures_json"]

PLOT_HEIGHT = 360
PASSED, FAILED, NO_SCORE = "#2e7d32", "#c62828", "#9e9e9e"

# Draws each `.plot-figure` from the figures' JSON, at its cell's size, after layout; redraws on
# resize. Reads only the JSON it is given; writes only inside the figure divs.
DRAW_JS = """
(function () {
  var data = JSON.parse(document.getElementById('promptopt-figures').textContent);
  function draw() {
    data.forEach(function (fig) {
      var div = document.getElementById('fig-' + fig.key);
      if (!div) { return; }
      Plotly.newPlot(div, fig.figure.data, fig.figure.layout, {displaylogo: false, responsive: true});
      if (window.ResizeObserver) {
        new ResizeObserver(function () { Plotly.Plots.resize(div); }).observe(div);
      }
    });
  }
  if (document.readyState === 'complete') { draw(); } else { window.addEventListener('load', draw); }
})();
"""


def _label(text: str) -> str:
    # plotly.js reads a few HTML tags in labels; escaped, a name is shown exactly as written.
    return escape(text)


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def figures_json(run: RunSummary) -> tuple[list[str], str]:
    """The figures' keys, and every figure as `[{key, figure}]` JSON, safe inside a
    `<script type="application/json">`."""
    import plotly.io as pio

    found = [{"key": key, "figure": json.loads(pio.to_json(fig, validate=True))} for key, fig in figures(run)]
    # `<` escaped: no `</script>` or `<!--` can end the script element early.
    return [f["key"] for f in found], json.dumps(found, ensure_ascii=False).replace("<", "\\u003c")


def figures(run: RunSummary) -> Iterable[tuple[str, Any]]:
    """(key, plotly figure) for each plot: their width is left to the page (autosize)."""
    import plotly.graph_objects as go

    def sized(fig: Any, key: str) -> tuple[str, Any]:
        fig.update_layout(
            template="plotly_white",
            margin={"l": 50, "r": 20, "t": 50, "b": 50},
            height=PLOT_HEIGHT,
            autosize=True,
        )
        return key, fig

    names = [_label(s.info.name) for s in run.suites]
    rates = [None if s.pass_rate is None else s.pass_rate * 100 for s in run.suites]
    # Every suite gets a bar and its value above it, even at 0% (a zero bar has no height) or
    # with no scored case (n/a: a grey stub).
    fig = go.Figure(
        go.Bar(
            x=names,
            y=[0.0 if r is None else r for r in rates],
            name="pass rate",
            marker_color=[
                NO_SCORE if s.pass_rate is None else PASSED if s.gates_passed else FAILED for s in run.suites
            ],
            text=[_rate(s.pass_rate) for s in run.suites],
            textposition="outside",
            cliponaxis=False,
        )
    )
    gate_x, gate_y = [], []
    for name, s in zip(names, run.suites):
        for g in s.gates:
            if g.name == "pass_rate":
                gate_x.append(name)
                gate_y.append(g.threshold * 100)
    if gate_x:
        fig.add_trace(
            go.Scatter(
                x=gate_x,
                y=gate_y,
                mode="markers",
                name="pass_rate gate",
                marker={"symbol": "line-ew-open", "size": 40, "line": {"width": 3}, "color": "#111"},
            )
        )
    fig.update_layout(
        title="Pass rate per suite (bars; green: gates passed)",
        yaxis={"title": "pass rate (%)", "range": [0, 112]},
        xaxis={"type": "category", "automargin": True},
        showlegend=bool(gate_x),
    )
    yield sized(fig, "pass-rate")

    compared = run.baseline.suites if run.baseline is not None else {}
    if compared:  # --promptopt-baseline: the baseline's pass rate next to this run's

        def pct(value: float | None) -> float | None:
            return None if value is None else value * 100

        pairs = [(name, compared.get(s.info.id)) for name, s in zip(names, run.suites)]
        fig = go.Figure(
            [
                go.Bar(
                    x=names,
                    y=[pct(c.baseline_pass_rate) if c else None for _, c in pairs],
                    name=f"baseline ({_label(run.baseline.ref)})",
                    marker_color="#9e9e9e",
                ),
                go.Bar(
                    x=names,
                    y=rates,
                    name="this run",
                    marker_color="#1565c0",
                    text=[f"{c.delta * 100:+.1f} pts" if c and c.delta is not None else "" for _, c in pairs],
                    textposition="outside",
                    cliponaxis=False,
                ),
            ]
        )
        fig.update_layout(
            title="Pass rate against the baseline (not a gate)",
            barmode="group",
            yaxis={"title": "pass rate (%)", "range": [0, 112]},
            xaxis={"type": "category", "automargin": True},
        )
        yield sized(fig, "baseline")

    fig = go.Figure()
    for name, s in zip(names, run.suites):
        xs, ys = [], []
        for r in s.results:
            if r.error:
                continue
            if r.score is not None:
                xs.append("case score")
                ys.append(r.score)
            for metric, value in sorted(r.named_scores.items()):
                xs.append(_label(metric))
                ys.append(value)
        if ys:
            fig.add_trace(go.Box(x=xs, y=ys, name=name, boxpoints="all", jitter=0.4, pointpos=0))
    fig.update_layout(
        title="Score distribution per metric (case score and named metrics)", boxmode="group", yaxis={"title": "score"}
    )
    yield sized(fig, "scores")

    fig = go.Figure()
    batched = max((r.latency_batch or 1 for s in run.suites for r in s.results), default=1)
    for name, s in zip(names, run.suites):
        values = [r.latency_ms for r in s.results if r.latency_ms is not None]
        if values:
            fig.add_trace(go.Histogram(x=values, name=name, opacity=0.7))
    title = "Latency distribution (model call, ms; a cache hit keeps the original latency)"
    if batched > 1:  # the bundled model answers batches: say what a case's figure is
        title = (
            f"Batch latency (ms): the wall time of each case's batch, of up to {batched} cases;"
            " a cache hit keeps the original latency"
        )
    fig.update_layout(title=title, barmode="overlay", xaxis={"title": "latency (ms)"}, yaxis={"title": "cases"})
    yield sized(fig, "latency")
