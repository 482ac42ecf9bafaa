"""Compact, offline HTML pieces for notebook reprs (`_repr_html_`) of layouts, batches and results.

Jupyter, VS Code and Colab call an object's `_repr_html_` when it is the last expression of a
cell. These reprs must stay small whatever the sequence length (no per-position JSON, no
plotting library, no network), so they are built from

* run strips: one absolutely positioned block per run of same-group positions (a 2,048-token
  audio-in-video sample has a few dozen runs), bucketed when a row has more than
  `MAX_BLOCKS` runs;
* heatmaps as palette PNG data URIs (one byte a cell, scaled up by the browser), drawn here
  with pillow, so a `[28 layers, 2048 positions]` result costs at most ~80 kB (tens of kB when
  smooth);
* small escaped tables.

Every piece of text goes through `html.escape`; the only markup is what this module writes.
"""

from __future__ import annotations

import base64
import html
import io
import warnings
from typing import Optional, Sequence

import numpy as np
import torch

from avlens.layout import GROUP_COLORS, GROUP_LETTERS, PARTITION_GROUPS

#: most blocks one strip row draws; rows with more runs are drawn as this many buckets
MAX_BLOCKS = 160
#: most heatmap columns; wider grids are averaged into this many column buckets
MAX_COLS = 2048

# viridis (sequential) and a blue-white-red diverging scale (low blue, high red: the views' "rdbu"
# and plotly's "RdBu_r", which the results' .plot() use), as anchor colours interpolated linearly
_VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"]
_DIVERGING = ["#053061", "#2166ac", "#4393c3", "#92c5de", "#f7f7f7", "#f4a582", "#d6604d", "#b2182b", "#67001f"]
_BLUES = ["#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b"]
#: the anchor colours of each colour map, by the names the views (`value_scale`) and this module use
_ANCHORS = {"viridis": _VIRIDIS, "diverging": _DIVERGING, "rdbu": _DIVERGING, "blues": _BLUES}
_NAN_RGB = (229, 231, 235)

_CSS = (
    "<style>"
    ".avl-r{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;line-height:1.4;max-width:1100px;"
    "color:#1f2937;background:#fff;padding:4px 0}"
    ".avl-r .avl-h{margin-bottom:3px}.avl-r .avl-n{color:#4b5563}"
    ".avl-r .avl-c{color:#fff;padding:0 5px;margin-right:3px;border-radius:3px;white-space:nowrap;display:inline-block}"
    ".avl-r .avl-s{position:relative;height:18px;margin:1px 0;background:#f9fafb}"
    ".avl-r .avl-o{position:relative;height:5px;margin:1px 0}"
    ".avl-r .avl-s>div,.avl-r .avl-o>div{position:absolute;top:0;bottom:0;overflow:hidden;white-space:nowrap;"
    "color:#fff;font-size:10px;line-height:18px;text-align:center;box-shadow:inset -1px 0 #fff}"
    ".avl-r table{border-collapse:collapse;margin:3px 0}.avl-r td,.avl-r th{border:1px solid #e5e7eb;padding:1px 6px;"
    "text-align:left;font-size:12px;white-space:nowrap}.avl-r th{background:#f3f4f6}.avl-r td.num{text-align:right}"
    ".avl-r img.avl-m{display:block;width:100%;image-rendering:pixelated;image-rendering:crisp-edges}"
    ".avl-r .avl-grid{display:grid;grid-template-columns:max-content 1fr;gap:0 8px;align-items:center}"
    + "".join(f".avl-r .avl-{g}{{background:{c}}}" for g, c in GROUP_COLORS.items())
    + ".avl-r .avl-pad{color:#374151}"
    "</style>"
)


def esc(x) -> str:
    """`x` as escaped HTML text (quotes too, so it is safe inside attributes)."""
    return html.escape(str(x), quote=True)


def fmt(v, digits: int = 4) -> str:
    """A number with `digits` significant digits (`nan` for NaN)."""
    v = float(v)
    return "nan" if v != v else f"{v:.{digits}g}"


def card(title: str, subtitle: str = "", body: str = "") -> str:
    """The frame of every repr: the style block, a bold title, a grey subtitle, then `body`
    (trusted HTML built by this module)."""
    sub = f" <span class='avl-n'>{esc(subtitle)}</span>" if subtitle else ""
    return f"{_CSS}<div class='avl-r'><div class='avl-h'><b>{esc(title)}</b>{sub}</div>{body}</div>"


def chip(group: str, text: str) -> str:
    """A swatch in the group's colour with `text` on it."""
    color = GROUP_COLORS.get(group, "#444")
    fg = "#374151" if group == "pad" else "#fff"
    return f"<span class='avl-c' style='background:{color};color:{fg}'>{esc(text)}</span>"


def runs(labels: Sequence) -> list[tuple[object, int, int]]:
    """Maximal runs of equal labels: `(label, start, end)`, `end` exclusive."""
    out: list[list] = []
    for p, g in enumerate(labels):
        if out and out[-1][0] == g:
            out[-1][2] = p + 1
        else:
            out.append([g, p, p + 1])
    return [tuple(r) for r in out]  # type: ignore[misc]


def buckets(labels: Sequence, max_blocks: int = MAX_BLOCKS) -> list[tuple[int, int, list[tuple[object, int]]]]:
    """`max_blocks` equal buckets of positions, each `(start, end, [(label, count), ...])` (labels
    in order of first appearance); consecutive buckets holding one and the same label merge."""
    n = len(labels)
    edges = sorted({round(i * n / max_blocks) for i in range(max_blocks + 1)})
    out: list[tuple[int, int, list]] = []
    for a, b in zip(edges[:-1], edges[1:]):
        seg = list(labels[a:b])
        comp = [(g, seg.count(g)) for g in dict.fromkeys(seg)]
        if out and len(comp) == 1 and len(out[-1][2]) == 1 and out[-1][2][0][0] == comp[0][0]:
            out[-1] = (out[-1][0], b, [(comp[0][0], out[-1][2][0][1] + comp[0][1])])
        else:
            out.append((a, b, comp))
    return out


def _pct(x: float, n: int) -> str:
    return f"{100 * x / max(n, 1):.3f}".rstrip("0").rstrip(".")


def group_strip(labels: Sequence[str], tips: Optional[Sequence[str]] = None, show_text: bool = True,
                css: str = "avl-s", max_blocks: int = MAX_BLOCKS) -> str:
    """A strip of run blocks over `len(labels)` positions, each coloured by its group and, when
    wide enough, labelled with the group letter and run length (`A50`); `tips[k]` is the hover
    text of the k-th run. A row with more than `max_blocks` runs is drawn as `max_blocks` buckets
    instead, a mixed bucket split into its groups' shares (so the page stays small)."""
    n = len(labels)
    rs = runs(labels)
    blocks = []
    if len(rs) <= max_blocks:
        for k, (g, a, b) in enumerate(rs):
            tip = tips[k] if tips is not None else _run_tip(g, a, b)
            text = f"{GROUP_LETTERS.get(g, '')}{b - a}" if show_text and (b - a) / max(n, 1) >= 0.025 else ""
            blocks.append(f"<div class='avl-{esc(g)}' style='left:{_pct(a, n)}%;width:{_pct(b - a, n)}%' "
                          f"title='{esc(tip)}'>{esc(text)}</div>")
        return f"<div class='{css}'>{''.join(blocks)}</div>"
    for a, b, comp in buckets(labels, max_blocks):
        if len(comp) == 1:
            fill = f"background:{GROUP_COLORS.get(comp[0][0], '#444')}"
        else:
            stops, acc = [], 0
            for g, c in comp:
                c0, acc = acc, acc + c
                stops.append(f"{GROUP_COLORS.get(g, '#444')} {_pct(c0, b - a)}% {_pct(acc, b - a)}%")
            fill = f"background:linear-gradient(to right,{','.join(stops)})"
        tip = f"positions {a}-{b - 1}: " + ", ".join(f"{g} {c}" for g, c in comp) + " (bucketed)"
        blocks.append(f"<div style='left:{_pct(a, n)}%;width:{_pct(b - a, n)}%;{fill}' title='{esc(tip)}'></div>")
    return f"<div class='{css}'>{''.join(blocks)}</div>"


def _run_tip(g, a: int, b: int) -> str:
    return f"{g}: position {a}" if b - a == 1 else f"{g}: positions {a}-{b - 1} ({b - a})"


def layout_rows(layout, max_rows: int = 8, max_tip_chars: int = 60) -> str:
    """One run strip per sample (at most `max_rows`), overlay groups (sink, last, user spans) as
    thin marks above it; hovering a block shows its positions, time span, chunk and (for text)
    the tokens."""
    n = layout.n_pos
    overlays = [g for g in layout.groups if g not in PARTITION_GROUPS]
    rows = []
    for i in range(min(layout.batch_size, max_rows)):
        labels = layout.labels(i)
        rs = runs(labels)
        tips = []
        tokens = layout.str_tokens[i] if layout.str_tokens else None
        for g, a, b in rs:
            tip = _run_tip(g, a, b)
            t = layout.time[i, a:b]
            t = t[~torch.isnan(t)]
            if len(t):
                tip += f", t = {float(t.min()):.2f}-{float(t.max()):.2f} s"
            ch = int(layout.chunk[i, a])
            if ch >= 0:
                tip += f", chunk {ch}"
            if tokens is not None and g in ("text", "special"):
                txt = "".join(str(x) for x in tokens[a:min(b, a + max_tip_chars)])
                tip += ": " + (txt if len(txt) <= max_tip_chars else txt[: max_tip_chars - 3] + "...")
            tips.append(tip)
        marks = []
        for o in overlays:
            m = layout.masks[o][i]
            if not bool(m.any()):
                continue
            on = m.tolist()
            rs_o = [(a, b, _run_tip(o, a, b)) for g, a, b in runs(on) if g]
            if len(rs_o) > MAX_BLOCKS:  # a bucket is marked when any of its positions is
                rs_o = [(a, b, f"{o}: some of positions {a}-{b - 1} (bucketed)")
                        for a, b, comp in buckets(on) if any(g for g, _ in comp)]
            blocks = "".join(
                f"<div style='left:{_pct(a, n)}%;width:max(2px,{_pct(b - a, n)}%);background:{GROUP_COLORS.get(o, '#444')}' "
                f"title='{esc(tip)}'></div>" for a, b, tip in rs_o)
            marks.append(f"<div class='avl-o'>{blocks}</div>")
        rows.append(f"<div>[{i}]</div><div>{''.join(marks)}{group_strip(labels, tips)}</div>")
    more = layout.batch_size - min(layout.batch_size, max_rows)
    tail = f"<div class='avl-n'>... {more} more samples</div>" if more > 0 else ""
    axis = (f"<div></div><div class='avl-n' style='display:flex;justify-content:space-between'><span>0</span>"
            f"<span>position {n - 1}</span></div>")
    return f"<div class='avl-grid'>{''.join(rows)}{axis}</div>{tail}"


def group_chips(layout) -> str:
    """One swatch per non-empty group with its count (per sample when they differ)."""
    out = []
    for g in layout.groups:
        c = layout.counts(g).tolist()
        if sum(c) == 0:
            continue
        text = f"{g} {c[0]}" if len(set(c)) == 1 else f"{g} {c}"
        out.append(chip(g, text))
    return "<div>" + "".join(out) + "</div>"


# ------------------------------------------------------------------------------------ heatmaps
def _hex(c: str) -> tuple[int, int, int]:
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


def colorize(x: np.ndarray, scale: str = "viridis") -> np.ndarray:
    """RGB uint8 `[..., 3]` for values in [0, 1] (NaN: light grey) on the sequential viridis, the
    blue-white-red diverging scale (`"diverging"` / `"rdbu"`) or `"blues"`."""
    anchors = np.array([_hex(c) for c in _ANCHORS.get(scale, _DIVERGING)], dtype=np.float64)
    k = len(anchors) - 1
    nan = np.isnan(x)
    f = np.clip(np.nan_to_num(x, nan=0.0), 0, 1) * k
    lo = np.minimum(np.floor(f).astype(int), k - 1)
    w = (f - lo)[..., None]
    rgb = anchors[lo] * (1 - w) + anchors[lo + 1] * w
    rgb[nan] = _NAN_RGB
    return np.rint(rgb).astype(np.uint8)


def value_range(z: np.ndarray, center: Optional[float] = None) -> tuple[float, float]:
    """Colour limits: min and max of the finite values, symmetric around `center` when given."""
    fin = z[np.isfinite(z)]
    if fin.size == 0:
        return 0.0, 1.0
    lo, hi = float(fin.min()), float(fin.max())
    if center is not None:
        r = max(abs(hi - center), abs(center - lo)) or 1.0
        return center - r, center + r
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _pool_cols(z: np.ndarray, max_cols: int, how: str = "mean") -> np.ndarray:
    """`[rows, cols]` -> `[rows, max_cols]`: the NaN-mean (or, `how="any"`, the logical or) of
    equal buckets of columns; unchanged when it already fits."""
    n = z.shape[1]
    if n <= max_cols:
        return z
    edges = np.linspace(0, n, max_cols + 1).round().astype(int)
    if how == "any":
        return np.stack([z[:, a:b].any(1) for a, b in zip(edges[:-1], edges[1:])], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN buckets stay NaN
        return np.stack([np.nanmean(z[:, a:b], 1) for a, b in zip(edges[:-1], edges[1:])], 1)


#: palette heatmaps: indices 0..N_LEVELS-1 are the colour scale, then NaN, then "marked"
N_LEVELS = 254
_NAN_INDEX, _MARK_INDEX = N_LEVELS, N_LEVELS + 1


def palette(scale: str = "viridis", mark_color: str = GROUP_COLORS["sink"]) -> list[int]:
    """The 256-colour palette of a heatmap PNG: `N_LEVELS` steps of the scale, the NaN grey and
    the mark colour, flattened `[r, g, b, r, g, b, ...]`."""
    colors = colorize(np.linspace(0.0, 1.0, N_LEVELS), scale).tolist() + [list(_NAN_RGB), list(_hex(mark_color))]
    return [c for rgb in colors for c in rgb]


def levels(x: np.ndarray) -> np.ndarray:
    """Palette indices (uint8) of values in [0, 1] (clipped); NaN -> the NaN index."""
    idx = np.rint(np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0) * (N_LEVELS - 1)).astype(np.uint8)
    idx[np.isnan(x)] = _NAN_INDEX
    return idx


def png_data_uri(image: np.ndarray, palette_: Optional[Sequence[int]] = None) -> str:
    """An image as a `data:image/png;base64,...` URI: `[h, w, 3]` uint8 RGB, or `[h, w]` uint8
    palette indices with `palette_` (one byte a pixel: a third of the size of RGB)."""
    from PIL import Image

    buf = io.BytesIO()
    if palette_ is not None:
        img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "P")
        img.putpalette(list(palette_))
    else:
        img = Image.fromarray(np.ascontiguousarray(image), "RGB")
    img.save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def heatmap(values, row_labels: Sequence, row_title: str, col_groups: Optional[Sequence[str]] = None,
            center: Optional[float] = None, marked=None, mark_color: str = GROUP_COLORS["sink"],
            col_title: str = "position", caption: str = "", col_labels: Optional[Sequence] = None,
            vmin: Optional[float] = None, vmax: Optional[float] = None, cmap: Optional[str] = None,
            row_groups: Optional[Sequence[str]] = None) -> str:
    """A `[rows, cols]` heatmap as one palette PNG (a pixel per cell, at most `MAX_COLS` columns,
    wider grids averaged over column buckets), with row labels, a colour bar, and when
    `col_groups` is given a run strip of the columns' token groups under it (`row_groups`: a
    vertical strip of the rows' groups to its right). `marked` (bool, same shape) cells are
    painted `mark_color`. With `center` the scale diverges (blue below, red above). `vmin` /
    `vmax` / `cmap` (`"viridis"`, `"rdbu"` or `"blues"`) set the scale explicitly (what a
    `heatmap_view`'s static preview passes, so its colours match the drawing). `col_labels` name
    the first and last columns under the image (default 0 and n - 1)."""
    z = np.asarray(values.detach().float().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2:
        raise ValueError(f"a heatmap needs a 1-D or 2-D array, got shape {z.shape}")
    n_rows, n_cols = z.shape
    lo, hi = value_range(z, center)
    lo, hi = lo if vmin is None else float(vmin), hi if vmax is None else float(vmax)
    if not hi > lo:
        raise ValueError(f"the colour scale needs vmax > vmin; got vmin={lo}, vmax={hi}")
    scale = ("diverging" if center is not None else "viridis") if cmap is None else cmap
    if scale not in _ANCHORS:
        raise ValueError(f"unknown colour map {cmap!r}; use 'viridis', 'rdbu' or 'blues'")
    if center is None and scale in ("rdbu", "diverging"):
        center = (lo + hi) / 2
    idx = levels((_pool_cols(z, MAX_COLS) - lo) / (hi - lo))
    if marked is not None:
        m = np.asarray(marked.cpu() if isinstance(marked, torch.Tensor) else marked, dtype=bool).reshape(z.shape)
        idx[_pool_cols(m, MAX_COLS, "any")] = _MARK_INDEX
    uri = png_data_uri(idx, palette(scale, mark_color))
    row_px = max(3, min(16, 260 // max(n_rows, 1)))
    label_rows = row_px >= 10 and n_rows <= 40
    img = (f"<img class='avl-m' style='height:{row_px * n_rows}px' alt='{esc(caption or 'heatmap')}' "
           f"title='{esc(f'{n_rows} {row_title} x {n_cols} {col_title}; colour {fmt(lo)} .. {fmt(hi)}')}' "
           f"src='{uri}'>")
    if row_groups is not None:
        if len(row_groups) != n_rows:
            raise ValueError(f"{len(row_groups)} row groups for {n_rows} rows; give one token group per row")
        img = (f"<div style='display:flex;align-items:flex-start'><div style='flex:1;min-width:0'>{img}</div>"
               f"{_vertical_strip([str(g) for g in row_groups], row_px * n_rows)}</div>")
    labels = "".join(f"<div style='height:{row_px}px;line-height:{row_px}px;font-size:10px;text-align:right'>{esc(r)}</div>"
                     for r in row_labels) if label_rows else f"<div class='avl-n'>{esc(row_title)}</div>"
    first, last = (col_labels[0], col_labels[-1]) if col_labels is not None and len(col_labels) else (0, n_cols - 1)
    band = ""
    if col_groups is not None:
        band = f"<div></div><div>{group_strip(list(col_groups))}</div>"
    axis = (f"<div></div><div class='avl-n' style='display:flex;justify-content:space-between'>"
            f"<span>{esc(col_title)} {esc(first)}</span><span>{esc(last)}</span></div>")
    grid = (f"<div class='avl-grid'><div class='avl-n' style='font-size:10px'>{esc(row_title) if label_rows else ''}</div>"
            f"<div></div><div>{labels}</div><div>{img}</div>{band}{axis}</div>")
    return (f"<div style='margin:4px 0'>{f'<div>{esc(caption)}</div>' if caption else ''}{grid}"
            f"{colorbar(lo, hi, center, marked is not None, mark_color, scale)}</div>")


def _vertical_strip(labels: Sequence[str], height: int) -> str:
    """The rows' token groups as a thin vertical strip, `height` px tall, one block per run
    (the majority group of each bucket when there are more than `MAX_BLOCKS` runs)."""
    n = len(labels)
    rs = runs(labels)
    if len(rs) > MAX_BLOCKS:
        rs = [(max(comp, key=lambda gc: gc[1])[0], a, b) for a, b, comp in buckets(labels)]
    blocks = "".join(f"<div style='position:absolute;left:0;right:0;top:{_pct(a, n)}%;height:{_pct(b - a, n)}%;"
                     f"background:{GROUP_COLORS.get(g, '#444')}' title='{esc(_run_tip(g, a, b))}'></div>" for g, a, b in rs)
    return f"<div style='position:relative;flex:none;width:8px;margin-left:3px;height:{height}px'>{blocks}</div>"


def colorbar(lo: float, hi: float, center: Optional[float] = None, with_mark: bool = False,
             mark_color: str = GROUP_COLORS["sink"], cmap: Optional[str] = None) -> str:
    """A small horizontal colour bar from `lo` to `hi` (`cmap`: a key of `_ANCHORS`; default
    diverging with a `center`, viridis without)."""
    stops = ",".join(_ANCHORS[cmap] if cmap is not None else _DIVERGING if center is not None else _VIRIDIS)
    mid = f"<span>{fmt(center)}</span>" if center is not None else ""
    mark = f" <span class='avl-c' style='background:{mark_color}'>marked</span>" if with_mark else ""
    return (f"<div style='display:flex;align-items:center;gap:6px;margin-top:2px'><span>{fmt(lo)}</span>"
            f"<div style='width:160px;height:9px;background:linear-gradient(to right,{stops})'></div>"
            f"<span>{fmt(hi)}</span>{(' (centre ' + mid + ')') if mid else ''}{mark}</div>")


def bars(labels: Sequence, values, groups: Optional[Sequence[str]] = None, max_rows: int = 48) -> str:
    """One row per label with an inline bar proportional to |value| (negative bars grey-blue).
    The scale is the largest finite |value|; an infinite value (a relative change from 0) gets
    a full-width bar ending in a dark double edge, its cell reading inf / -inf."""
    v = [float(x) for x in (values.tolist() if hasattr(values, "tolist") else values)]
    top = max([abs(x) for x in v if np.isfinite(x)] or [1.0]) or 1.0
    rows = []
    for k, (lab, x) in enumerate(zip(labels, v)):
        if k == max_rows:
            rows.append(f"<tr><td colspan='3' class='avl-n'>... {len(v) - max_rows} more</td></tr>")
            break
        color = GROUP_COLORS.get(groups[k], "#2b6cb0") if groups is not None else ("#2b6cb0" if x >= 0 else "#64748b")
        width = 0 if x != x else 160.0 if np.isinf(x) else 160 * abs(x) / top
        edge = ";border-right:4px double #111827" if np.isinf(x) else ""
        rows.append(f"<tr><td>{esc(lab)}</td><td class='num'>{fmt(x)}</td><td style='border:none'>"
                    f"<div style='width:{width:.1f}px;height:10px;background:{color}{edge}'></div></td></tr>")
    return f"<table>{''.join(rows)}</table>"


def table(header: Optional[Sequence[str]], rows: Sequence[Sequence], max_rows: int = 40, num_cols: Sequence[int] = ()) -> str:
    """A small escaped table (at most `max_rows` rows, then a count of the rest)."""
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = []
    for k, row in enumerate(rows):
        if k == max_rows:
            body.append(f"<tr><td colspan='{len(row)}' class='avl-n'>... {len(rows) - max_rows} more rows</td></tr>")
            break
        body.append("<tr>" + "".join(f"<td{' class=num' if j in num_cols else ''}>{esc(c)}</td>" for j, c in enumerate(row)) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def text_table(header: Sequence[str], rows: Sequence[Sequence], indent: str = "  ") -> list[str]:
    """Rows of strings aligned in columns, for terminal reprs."""
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def finite_stats(t) -> str:
    """`min .., max .., mean ..` of the finite entries (or `no finite values`)."""
    x = t.detach().float().flatten() if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=torch.float32).flatten()
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        return "no finite values"
    return f"min {fmt(x.min())}, max {fmt(x.max())}, mean {fmt(x.mean())}"


__all__ = ["MAX_BLOCKS", "MAX_COLS", "N_LEVELS", "bars", "buckets", "card", "chip", "colorbar", "colorize", "esc",
           "finite_stats", "fmt", "group_chips", "group_strip", "heatmap", "layout_rows", "levels", "palette", "png_data_uri",
           "runs", "table", "text_table", "value_range"]
