"""Views coloured by token group (`avlens.layout.GROUP_COLORS`): the layout strip, group-prefixed
token labels, a window of positions for attention views, and attention / score heatmaps with group
bands (avlens views by default, plotly figures with `backend="plotly"`).

    html = layout_strip_html(batch.layout, row_labels=["dog / clear", ...])
    pos = attention_window(batch.layout, sample=0)         # last media chunk and the question
    labels = group_token_labels(batch.layout, 0, pos, model.to_str_tokens(batch, 0))
    view = attention_heatmap(cache["blocks.2.attn.hook_pattern"][0].mean(0)[pos][:, pos], labels,
                             [batch.layout.labels(0)[p] for p in pos])    # an avlens View
"""

from __future__ import annotations

import html
import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from avlens.layout import GROUP_COLORS, GROUP_LETTERS, PARTITION_GROUPS, BatchLayout


def _runs(labels: Sequence[str]) -> list[tuple[str, int, int]]:
    """Maximal runs of equal labels: `(label, start, end)` with `end` exclusive."""
    runs: list[tuple[str, int, int]] = []
    for p, g in enumerate(labels):
        if runs and runs[-1][0] == g:
            runs[-1] = (g, runs[-1][1], p + 1)
        else:
            runs.append((g, p, p + 1))
    return runs


_STRIP_CSS = (
    "<style>.avlens-strip{display:flex;height:22px}.avlens-strip>div{min-width:2px;overflow:hidden;"
    "white-space:nowrap;text-align:center;font-size:10px;line-height:22px;border-right:1px solid white}</style>"
)


def legend_html(groups: Sequence[str] = PARTITION_GROUPS[:5]) -> str:
    """Colour swatches naming each group."""
    return "<div class='mono' style='margin:.4em 0'>" + "".join(
        f"<span style='background:{GROUP_COLORS[g]};color:white;padding:1px 6px;margin-right:4px;"
        f"border-radius:3px'>{GROUP_LETTERS.get(g, '?')} {html.escape(g)}</span>" for g in groups
    ) + "</div>"


def layout_strip_html(layout: BatchLayout, row_labels: Optional[Sequence[str]] = None, max_rows: int = 32) -> str:
    """One horizontal strip per sample, each run of same-group positions a block whose width is
    proportional to its length, coloured by group, labelled with its letter and length (`A50`);
    hovering shows its positions and media time span. Rows share one position scale, so the
    audio-in-video interleaving (`V8 A50 V8 A50`: each 2-second chunk's video, then its audio)
    lines up across clips."""
    rows = []
    n = layout.n_pos
    for i in range(min(layout.batch_size, max_rows)):
        blocks = []
        for g, a, b in _runs(layout.labels(i)):
            tip = f"{g}: position {a} (1 token)" if b - a == 1 else f"{g}: positions {a}-{b - 1} ({b - a} tokens)"
            t = layout.time[i, a:b]
            t = t[~torch.isnan(t)]
            if len(t):
                tip += f", t = {float(t.min()):.2f}-{float(t.max()):.2f} s"
            ch = layout.chunk[i, a]
            if int(ch) >= 0:
                tip += f", chunk {int(ch)}"
            fg = "#374151" if g == "pad" else "white"
            blocks.append(
                f"<div title='{html.escape(tip, quote=True)}' style='flex:{b - a} 0 0;background:{GROUP_COLORS[g]};"
                f"color:{fg}'>{GROUP_LETTERS[g]}{b - a}</div>"
            )
        label = row_labels[i] if row_labels is not None else f"[{i}]"
        rows.append(
            f"<div class='mono' style='white-space:nowrap'>{html.escape(str(label))}</div>"
            f"<div class='avlens-strip'>{''.join(blocks)}</div>"
        )
    more = layout.batch_size - min(layout.batch_size, max_rows)
    return (
        _STRIP_CSS
        + legend_html([g for g in PARTITION_GROUPS if int(layout.counts(g).sum()) > 0])
        + "<div style='display:grid;grid-template-columns:max-content 1fr;gap:4px 10px;align-items:center'>"
        + "".join(rows)
        + f"<div></div><div class='note' style='display:flex;justify-content:space-between'><span>position 0</span>"
        + f"<span>{n - 1}</span></div></div>"
        + (f"<p class='note'>... {more} more samples</p>" if more > 0 else "")
    )


def group_token_labels(layout: BatchLayout, sample: int, positions: Sequence[int], str_tokens: Sequence[str]) -> list[str]:
    """Labels `"<group letter>:<token>"` for some positions of one sample; media positions show
    their time stamp instead of the placeholder (`A:1.24s`, `V:2.00s`, `T:dog`, `S:<|im_end|>`)."""
    labels = layout.labels(sample)
    out = []
    for p in positions:
        p = int(p)
        g = labels[p]
        t = float(layout.time[sample, p])
        tok = f"{t:.2f}s" if g in ("audio", "video", "image") and t == t else str(str_tokens[p])
        out.append(f"{GROUP_LETTERS.get(g, '?')}:{tok}")
    return out


def attention_window(layout: BatchLayout, sample: int = 0, max_len: int = 64) -> Tensor:
    """Positions of one sample to show in an attention view: from the first position of the last
    media chunk (its video frames, then its audio) to the last real position (the question and
    the answer position). When that is longer than `max_len`, the window's largest media group is
    thinned to every k-th position; if still too long, the last `max_len` positions are kept."""
    real = (~layout.masks["pad"][sample]).nonzero().flatten()
    if len(real) == 0:
        raise ValueError(f"sample {sample} has no real positions")
    last = int(real[-1])
    chunk = layout.chunk[sample]
    media_pos = (chunk >= 0).nonzero().flatten()
    if len(media_pos):
        # the last chunk of the LAST media item (chunk ids restart with each item): walk back from
        # the last media position while the chunk id holds
        start = int(media_pos[-1])
        while start > 0 and int(chunk[start - 1]) == int(chunk[start]):
            start -= 1
    else:
        start = max(int(real[0]), last + 1 - max_len)
    pos = torch.arange(start, last + 1)
    pos = pos[~layout.masks["pad"][sample, pos]]
    if len(pos) > max_len:
        labels = layout.labels(sample)
        media = [g for g in ("audio", "video", "image") if any(labels[int(p)] == g for p in pos)]
        if media:
            g = max(media, key=lambda m: sum(labels[int(p)] == m for p in pos))
            in_g = torch.tensor([labels[int(p)] == g for p in pos])
            n_keep = max(1, max_len - int((~in_g).sum()))
            stride = math.ceil(int(in_g.sum()) / n_keep)
            keep = ~in_g
            keep[in_g.nonzero().flatten()[::stride]] = True
            pos = pos[keep]
        pos = pos[-max_len:]
    return pos


def attention_heatmap(pattern: Tensor, labels: Sequence[str], groups: Sequence[str], title: str = "",
                      backend: str = "view"):
    """A `[query, key]` attention pattern over labelled positions, with bands in each position's
    group colour along the top (keys) and the right (queries): an `avlens.viz.heatmap_view`
    (offline, float16 data, white to blue from 0), or with `backend="plotly"` a plotly figure."""
    if backend not in ("view", "plotly"):
        raise ValueError(f"backend must be 'view' (an avlens View) or 'plotly' (a plotly Figure); got {backend!r}")
    if backend == "view":
        from avlens.viz.views import heatmap_view

        z = pattern.detach().float().cpu() if isinstance(pattern, Tensor) else pattern
        return heatmap_view(z, list(labels), list(labels), groups=groups, row_groups=groups, row_title="query",
                            col_title="key", value_label="attention", title=title or "Attention pattern",
                            vmin=0.0, cmap="blues")
    import plotly.graph_objects as go

    z = pattern.detach().float().cpu().numpy() if isinstance(pattern, Tensor) else pattern
    n = len(labels)
    # plotly reads tick and hover text as markup (<b>, <br>, <a>): escape token text so it shows literally
    safe = [html.escape(str(t), quote=False) for t in labels]
    hover = [[f"query {safe[q]}<br>key {safe[k]}" for k in range(n)] for q in range(n)]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n)), y=list(range(n)), text=hover, colorscale="Blues", zmin=0,
        hovertemplate="%{text}<br>attention %{z:.3f}<extra></extra>", colorbar=dict(x=1.07, len=0.8),
    ))
    from avlens.viz.grid import group_bands, group_legend

    top, top_notes = group_bands(groups, "x")
    right, right_notes = group_bands(groups, "y")
    shapes, notes = top + right, top_notes + right_notes
    group_legend(fig, groups)
    tick = dict(tickmode="array", tickvals=list(range(n)), ticktext=safe, tickfont=dict(size=8))
    fig.update_layout(
        title=title, width=860, height=820, shapes=shapes, plot_bgcolor="white",
        xaxis=dict(title="key", side="bottom", tickangle=-90, **tick),
        yaxis=dict(title="query", autorange="reversed", **tick),
        legend=dict(orientation="h", y=-0.22, x=0), margin=dict(t=80, r=120),
    )
    for a in notes:
        fig.add_annotation(**a)
    return fig


def group_flow_figure(values: Tensor, groups: Sequence[str], title: str = ""):
    """Heatmaps of attention mass from query groups (rows) to key groups (columns), one per layer;
    `values` is `[layer, query_group, key_group]` (e.g. `summary.values.mean(1)`, heads averaged)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n_layers = values.shape[0]
    cols = min(4, n_layers)
    rows = math.ceil(n_layers / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"layer {l}" for l in range(n_layers)],
                        horizontal_spacing=0.06, vertical_spacing=0.12)
    for l in range(n_layers):
        fig.add_trace(go.Heatmap(
            z=values[l].detach().float().cpu().numpy(), x=list(groups), y=list(groups), coloraxis="coloraxis",
            hovertemplate=f"layer {l}: query %{{y}} -> key %{{x}}: %{{z:.3f}}<extra></extra>",
        ), row=l // cols + 1, col=l % cols + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, coloraxis=dict(colorscale="Viridis", cmin=0, cmax=1),
                      width=min(1150, 300 * cols + 150), height=300 * rows + 80)
    return fig


def score_map_figure(scores: Tensor, groups: Sequence[str], marked: Optional[Tensor] = None, title: str = "",
                     colorbar_title: str = "", y_title: str = "layer"):
    """A plotly heatmap of per-(row, position) scores `[rows, positions]` (rows are layers by
    default) with a band in each position's group colour along the top; `marked` (bool, same
    shape) cells get a dot."""
    import plotly.graph_objects as go

    z = scores.detach().float().cpu().numpy()
    n_rows, n = z.shape
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n)), y=list(range(n_rows)), colorscale="Viridis", colorbar=dict(title=colorbar_title, x=1.02),
        customdata=[[groups[p] for p in range(n)]] * n_rows,
        hovertemplate=f"{y_title} %{{y}}, position %{{x}} (%{{customdata}}): %{{z:.3g}}<extra></extra>",
    ))
    if marked is not None and bool(marked.any()):
        r, c = marked.nonzero(as_tuple=True)
        fig.add_trace(go.Scatter(x=c.tolist(), y=r.tolist(), mode="markers", name="marked",
                                 marker=dict(color="white", size=5, line=dict(color="black", width=1))))
    from avlens.viz.grid import group_bands, group_legend

    shapes, notes = group_bands(groups, "x")
    group_legend(fig, groups)
    fig.update_layout(title=title, shapes=shapes, xaxis=dict(title="position", range=[-0.5, n - 0.5]), yaxis=dict(title=y_title),
                      legend=dict(orientation="h", y=-0.25, x=0), width=1000, height=200 + 22 * n_rows,
                      margin=dict(t=90))
    for a in notes:
        fig.add_annotation(**a)
    return fig
