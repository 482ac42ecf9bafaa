"""Plotly figures of labelled result grids (patching, tracing, knockout): heatmaps with token-group
bands along a position axis, and bar charts for one-axis results."""

from __future__ import annotations

import html

import math
from typing import Optional, Sequence

from torch import Tensor

from avlens.layout import GROUP_COLORS, GROUP_LETTERS
from avlens.viz.groups import _runs



def _t(x) -> str:
    """Text for plotly labels: plotly reads them as markup (<b>, <br>, <a>), so token text is escaped
    to show literally."""
    return html.escape(str(x), quote=False)

def group_bands(groups: Sequence[str], axis: str = "x", ref: Optional[str] = None, edge: float = 1.0,
                offset_px: int = 3, size_px: int = 14, min_label_share: float = 0.03) -> tuple[list[dict], list[dict]]:
    """Plotly shapes and annotations marking the token group of every index along a position
    axis: one rectangle per run of equal groups (`name` "group band <group>", spanning
    `start - 0.5` to `end - 0.5` in data units, coloured by `GROUP_COLORS`), `size_px` pixels
    deep, `offset_px` pixels outside the plot edge at `edge` (paper units: the top of the
    panel's y domain for `axis="x"`, the right of its x domain for `axis="y"`), and its label
    (`A50`: group letter and run length) on runs at least `min_label_share` of the axis long.
    `ref` is the axis reference ("x2", "y3", ...)."""
    groups = list(groups)
    ref = ref or axis
    shapes, notes = [], []
    n = max(len(groups), 1)
    lo, hi = offset_px, offset_px + size_px
    for g, a, b in _runs(groups):
        color = GROUP_COLORS.get(g, "#444")
        if axis == "x":
            box = dict(xref=ref, yref="paper", ysizemode="pixel", yanchor=edge, x0=a - 0.5, x1=b - 0.5, y0=lo, y1=hi)
            at = dict(xref=ref, yref="paper", x=(a + b - 1) / 2, y=edge, yanchor="bottom", yshift=lo)
        elif axis == "y":
            box = dict(xref="paper", yref=ref, xsizemode="pixel", xanchor=edge, x0=lo, x1=hi, y0=a - 0.5, y1=b - 0.5)
            at = dict(xref="paper", yref=ref, x=edge, y=(a + b - 1) / 2, xanchor="left", xshift=lo, textangle=-90)
        else:
            raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
        shapes.append(dict(type="rect", name=f"group band {g}", fillcolor=color, line_width=0, layer="above", **box))
        if (b - a) / n >= min_label_share:
            notes.append(dict(text=f"{GROUP_LETTERS.get(g, g)}{b - a}", showarrow=False, name=f"group band {g}",
                              font=dict(size=9, color="#374151" if g == "pad" else "white"), borderpad=0, **at))
    return shapes, notes


def group_legend(fig, groups: Sequence[str]) -> None:
    """Legend entries (empty traces) naming the colour of each group in `groups`."""
    import plotly.graph_objects as go

    for g in dict.fromkeys(groups):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=str(g), showlegend=True, hoverinfo="skip",
                                 marker=dict(color=GROUP_COLORS.get(g, "#444"), symbol="square", size=11)))


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
    # diverging around `center` with high values red, as avlens's views and reprs draw them
    scale = dict(colorscale="RdBu_r", cmid=float(center)) if center is not None else dict(colorscale="Viridis")
    x = list(range(len(col_labels)))
    text = [[f"{_t(row_title)} {_t(r)}<br>{_t(col_title)} {_t(c)}" for c in col_labels] for r in row_labels]
    for f in range(n_f):
        fig.add_trace(go.Heatmap(
            z=z[..., f].numpy(), x=x, y=[_t(r) for r in row_labels], text=text, coloraxis="coloraxis",
            hovertemplate="%{text}<br>" + value_title + " %{z:.4g}<extra></extra>",
        ), row=f // cols + 1, col=f % cols + 1)
    height = max(320, 300 * rows + 80)
    shapes, notes = [], []
    if col_groups is not None:
        # each panel's bands sit just above its own plot area (the top of its y domain), and the
        # panel titles move up to make room
        for f in range(n_f):
            suffix = "" if f == 0 else str(f + 1)
            top = fig.layout[f"yaxis{suffix}"].domain[1]
            sh, an = group_bands([str(g) for g in col_groups][: len(col_labels)], "x", f"x{suffix}", edge=top)
            shapes += sh
            notes += an
        for a in fig.layout.annotations:
            a.yshift = 20
        group_legend(fig, col_groups)
    tick = dict(tickmode="array", tickvals=x, ticktext=[_t(c) for c in col_labels]) if len(col_labels) <= 64 else {}
    fig.update_xaxes(title=col_title, **tick)
    fig.update_yaxes(title=row_title, autorange="reversed")
    fig.update_layout(title=title, shapes=shapes, plot_bgcolor="white", margin=dict(t=100),
                      coloraxis=dict(colorbar=dict(title=value_title), **scale),
                      width=min(1300, 420 * cols + 180) if n_f > 1 else 900, height=height,
                      legend=dict(orientation="h", y=-0.25, x=0))
    for a in notes:
        fig.add_annotation(**a)
    return fig


def bar_chart(values: Tensor, labels: Sequence, axis_title: str, title: str = "", value_title: str = "value",
              groups: Optional[Sequence[str]] = None, bands: bool = False):
    """Bars of a one-axis result, coloured by token group when `groups` gives one per bar; with
    `bands` (a position axis) the groups' runs are also drawn as labelled bands above the bars."""
    import plotly.graph_objects as go

    v = values.detach().float().cpu().numpy()
    colors = [GROUP_COLORS.get(g, "#2b6cb0") for g in groups] if groups is not None else "#2b6cb0"
    x = list(range(len(labels))) if bands else [str(l) for l in labels]
    fig = go.Figure(go.Bar(x=x, y=v, marker_color=colors, customdata=[str(l) for l in labels], showlegend=False,
                           hovertemplate=axis_title + " %{customdata}<br>" + value_title + " %{y:.4g}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=axis_title, yaxis_title=value_title, plot_bgcolor="white", width=900, height=420)
    if bands and groups is not None:
        shapes, notes = group_bands(groups, "x")
        group_legend(fig, groups)
        tick = dict(tickmode="array", tickvals=x, ticktext=[_t(l) for l in labels]) if len(labels) <= 64 else {}
        fig.update_layout(shapes=shapes, margin=dict(t=90), legend=dict(orientation="h", y=-0.25, x=0))
        fig.update_xaxes(**tick)
        for a in notes:
            fig.add_annotation(**a)
    return fig
