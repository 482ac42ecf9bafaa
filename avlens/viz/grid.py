"""Plotly figures of labelled result grids (patching, tracing, knockout): heatmaps with token-group
bands along a position axis, and bar charts for one-axis results."""

from __future__ import annotations

import math
from typing import Optional, Sequence

from torch import Tensor

from avlens.layout import GROUP_COLORS
from avlens.viz.groups import _runs


def _bands(groups: Sequence[str], n_cols: int, xref: str = "x") -> list[dict]:
    """Coloured rectangles above the plot, one per run of positions of the same group."""
    shapes = []
    for g, a, b in _runs(list(groups)[:n_cols]):
        shapes.append(dict(type="rect", xref=xref, yref="paper", x0=a - 0.5, x1=b - 0.5, y0=1.01, y1=1.045,
                           fillcolor=GROUP_COLORS.get(g, "#444"), line_width=0))
    return shapes


def grid_heatmap(
    values: Tensor,
    row_labels: Sequence,
    col_labels: Sequence,
    row_title: str,
    col_title: str,
    col_groups: Optional[Sequence[str]] = None,
    facet_labels: Optional[Sequence] = None,
    facet_title: str = "",
    title: str = "",
    value_title: str = "value",
    center: Optional[float] = None,
):
    """Heatmap of `values` `[rows, cols]` (or `[rows, cols, facets]`, one panel per facet, at most
    12). With `col_groups` (the token group of each column, e.g. `layout.labels(0)`), bands in
    the group colours run along the top, with a legend. With `center` (e.g. the unpatched run's
    metric) the colour scale diverges around it."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    z = values.detach().float().cpu()
    if z.ndim == 2:
        z = z[..., None]
        facet_labels = [""]
    n_f = min(z.shape[-1], 12)
    cols = min(3, n_f)
    rows = math.ceil(n_f / cols)
    titles = [f"{facet_title} {facet_labels[i]}".strip() for i in range(n_f)] if facet_labels is not None else None
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles if n_f > 1 else None,
                        horizontal_spacing=0.06, vertical_spacing=0.14 if rows > 1 else 0.1)
    scale = dict(colorscale="RdBu", cmid=float(center)) if center is not None else dict(colorscale="Viridis")
    x = list(range(len(col_labels)))
    text = [[f"{row_title} {r}<br>{col_title} {c}" for c in col_labels] for r in row_labels]
    for f in range(n_f):
        fig.add_trace(go.Heatmap(
            z=z[..., f].numpy(), x=x, y=[str(r) for r in row_labels], text=text, coloraxis="coloraxis",
            hovertemplate="%{text}<br>" + value_title + " %{z:.4g}<extra></extra>",
        ), row=f // cols + 1, col=f % cols + 1)
    shapes = []
    if col_groups is not None:
        for f in range(n_f):
            xref = "x" if f == 0 else f"x{f + 1}"
            shapes += _bands(col_groups, len(col_labels), xref)
        for g in dict.fromkeys(col_groups):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=g, showlegend=True,
                                     marker=dict(color=GROUP_COLORS.get(g, "#444"), symbol="square", size=11)))
    tick = dict(tickmode="array", tickvals=x, ticktext=[str(c) for c in col_labels]) if len(col_labels) <= 64 else {}
    fig.update_xaxes(title=col_title, **tick)
    fig.update_yaxes(title=row_title, autorange="reversed")
    fig.update_layout(title=title, shapes=shapes, plot_bgcolor="white", coloraxis=dict(colorbar=dict(title=value_title), **scale),
                      width=min(1300, 420 * cols + 180) if n_f > 1 else 900, height=max(320, 300 * rows + 80),
                      legend=dict(orientation="h", y=-0.25, x=0))
    return fig


def bar_chart(values: Tensor, labels: Sequence, axis_title: str, title: str = "", value_title: str = "value",
              groups: Optional[Sequence[str]] = None):
    """Bars of a one-axis result, coloured by token group when `groups` gives one per bar."""
    import plotly.graph_objects as go

    v = values.detach().float().cpu().numpy()
    colors = [GROUP_COLORS.get(g, "#2b6cb0") for g in groups] if groups is not None else "#2b6cb0"
    fig = go.Figure(go.Bar(x=[str(l) for l in labels], y=v, marker_color=colors,
                           hovertemplate=axis_title + " %{x}<br>" + value_title + " %{y:.4g}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=axis_title, yaxis_title=value_title, plot_bgcolor="white", width=800, height=400)
    return fig
