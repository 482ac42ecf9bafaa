"""Results of causal interventions: small dataclasses holding labelled tensors.

    result = avlens.patching.activation_patch(model, clean, corrupted, metric)
    result.values          # [n_layers, n_positions], the metric averaged over samples
    result.dims, result.coords["position"]
    result.per_sample      # [n_layers, n_positions, batch]
    result.to_frame()      # pandas, one row per cell
    result.top(5)          # the five largest cells
    result.plot()          # an avlens heatmap view with token-group bands along the position axis
    result.plot(backend="plotly")   # the same as a plotly figure
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor


class LabelledTensor(Tensor):
    """A tensor whose axes have names (`dims`) and labels (`coords[dim]`, one per index).

        v = result.values                      # LabelledTensor, dims ("layer", "position")
        v.sel(layer=3)                         # [n_positions], dims ("position",)
        v.sel(layer=3, position=17)            # 0-d

    Any torch operation on it gives a plain tensor (labels do not survive arithmetic)."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, data: Tensor, dims, coords):
        t = Tensor._make_subclass(cls, data.detach())
        t.dims, t.coords = tuple(dims), {d: list(coords[d]) for d in dims}
        if tuple(data.shape) != tuple(len(t.coords[d]) for d in t.dims):
            raise ValueError(f"shape {tuple(data.shape)} does not match the axes {[(d, len(t.coords[d])) for d in t.dims]}")
        return t

    def sel(self, **labels) -> "LabelledTensor":
        """The sub-tensor at the given labels (`sel(layer=2, group="audio")`); the other axes stay."""
        index, dims = [], []
        for d in self.dims:
            if d in labels:
                if labels[d] not in self.coords[d]:
                    raise KeyError(f"{labels[d]!r} is not a label of axis {d!r}: {self.coords[d][:12]}")
                index.append(self.coords[d].index(labels[d]))
            else:
                index.append(slice(None))
                dims.append(d)
        unknown = set(labels) - set(self.dims)
        if unknown:
            raise KeyError(f"unknown axes {sorted(unknown)}; this tensor's axes are {self.dims}")
        return LabelledTensor(self.plain()[tuple(index)], dims, self.coords)

    def plain(self) -> Tensor:
        """The values as a plain tensor."""
        return Tensor._make_subclass(Tensor, self)

    def __deepcopy__(self, memo):
        return LabelledTensor(self.plain().clone(), self.dims, copy.deepcopy(self.coords, memo))

    def __reduce_ex__(self, proto):
        return LabelledTensor, (self.plain(), self.dims, self.coords)

    def __repr__(self, **kw) -> str:
        """The axes with their sizes and first labels, min / max (with where) / mean, then the
        values as torch prints them."""
        return "\n".join(self._summary_lines()) + "\n" + repr(self.plain())

    def _summary_lines(self) -> list[str]:
        from avlens.viz.reprs import finite_stats

        sizes = ", ".join(f"{d}={len(self.coords[d])}" for d in self.dims)
        lines = [f"{type(self).__name__}({sizes})"]
        for d in self.dims:
            c = self.coords[d]
            lines.append(f"  {d}: {c if len(c) <= 8 else str(c[:6])[:-1] + f', ... {c[-1]!r}]'}")
        v = self.plain().float()
        if v.numel():
            line = "  " + finite_stats(v)
            finite = torch.isfinite(v)
            if v.ndim and bool(finite.any()):
                hi = int(torch.where(finite, v, torch.full_like(v, float("-inf"))).argmax())
                lo = int(torch.where(finite, v, torch.full_like(v, float("inf"))).argmin())
                line += f" (max at {self._where(hi)}; min at {self._where(lo)})"
            lines.append(line)
        return lines

    def _where(self, flat_index: int) -> str:
        """The labels of a flat index: `layer 2, position 40`."""
        return ", ".join(f"{d} {self.coords[d][j]}" for d, j in zip(self.dims, _unravel(flat_index, self.shape)))

    def _repr_html_(self) -> str:
        """A card: axes and statistics, then the values as a heatmap (two or three axes; a position
        axis always along x), bars (one axis) or the value (none); compact whatever the size (a
        PNG, not per-cell markup)."""
        from avlens.viz.reprs import card, esc

        lines = self._summary_lines()
        body = "".join(f"<div>{esc(line.strip())}</div>" for line in lines[1:])
        return card(type(self).__name__, lines[0][len(type(self).__name__):], body + _values_html(self.plain(), self.dims, self.coords))


def _unravel(i: int, shape) -> list[int]:
    out = []
    for n in reversed(tuple(shape)):
        out.append(i % n)
        i //= n
    return out[::-1]


def _position_axis_last(values: Tensor, dims: tuple[str, ...]) -> tuple[Tensor, tuple[str, ...]]:
    """Move the `position` axis to index 1 (the heatmap's x axis; index 0 for one axis) so position
    axes, which are long and carry the token-group bands, are always horizontal."""
    if "position" not in dims or values.ndim < 2:
        return values, dims
    others = [d for d in dims if d != "position"]
    order = [others[0], "position"] + others[1:]
    return values.permute(*[dims.index(d) for d in order]), tuple(order)


def _values_html(values: Tensor, dims, coords, position_groups: Optional[list] = None, center: Optional[float] = None,
                 max_facets: int = 4) -> str:
    """The HTML body of a labelled grid: heatmaps (PNG) with the position axis along x and its
    group strip, bars for one non-position axis."""
    from avlens.viz.reprs import bars, esc, heatmap

    values, dims = _position_axis_last(values.detach().float().cpu(), tuple(dims))

    def col_groups(d):
        if d == "position" and position_groups is not None:
            return [position_groups[int(p)] if 0 <= int(p) < len(position_groups) else "pad" for p in coords[d]]
        return None

    if values.ndim == 0:
        return f"<div>value {esc(float(values))}</div>"
    if values.ndim == 1:
        d = dims[0]
        if d == "position":
            return heatmap(values[None], [""], "", col_groups(d), center=center, col_title="position", col_labels=coords[d])
        return bars(coords[d], values, groups=coords[d] if d == "group" else None)
    facets = [None] if values.ndim == 2 else list(range(values.shape[2]))
    parts = []
    for f in facets[:max_facets]:
        z = values if f is None else values[:, :, f]
        cap = "" if f is None else f"{dims[2]} {coords[dims[2]][f]}"
        parts.append(heatmap(z, coords[dims[0]], dims[0], col_groups(dims[1]), center=center, col_title=dims[1], caption=cap,
                             col_labels=coords[dims[1]]))
    if len(facets) > max_facets:
        parts.append(f"<div class='avl-n'>... {len(facets) - max_facets} more {esc(dims[2])} panels (.plot() draws every panel)</div>")
    return "".join(parts)


@dataclass
class PatchResult:
    """A labelled grid of metric values, one per intervention.

    Attributes:
        values: the metric per cell, averaged over samples: a `LabelledTensor` with axes `dims`
            (`values.sel(layer=3, group="audio")`).
        dims: axis names, e.g. `("layer", "position")`.
        coords: the label of every index along each axis.
        per_sample: `values` before averaging, `[*values.shape, batch]` (None for
            TransformerLens-style scalar metrics).
        base: the metric on the unpatched run the interventions start from (the corrupted
            run when denoising), `[batch]` or 0-d.
        source: the metric on the run the patched values come from (the clean run when
            denoising), when there is one.
        method, site, direction, metric: what was run.
        position_groups: the token group of every position (sample 0), for the plot's bands.
        layout: the layout of the (first sample of the) batch the positions index, set by
            activation / attribution patching and tracing: `plot(kind="strip")` draws its
            time-stamped media cells and token text (without it, a strip from `position_groups`).
        stats: cells, no-op cells skipped, forward passes, seconds.
        extras: method-specific tensors (e.g. knockout's probabilities).
    """

    values: Tensor
    dims: tuple[str, ...]
    coords: dict[str, list]
    per_sample: Optional[Tensor] = None
    base: Optional[Tensor] = None
    source: Optional[Tensor] = None
    method: str = "activation patching"
    site: Optional[str] = None
    direction: Optional[str] = None
    metric: str = "metric"
    position_groups: Optional[list[str]] = None
    stats: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    layout: Any = None

    def __post_init__(self):
        self.values = LabelledTensor(self.values, self.dims, self.coords)
        if self.per_sample is not None:
            b = self.per_sample.shape[-1]
            self.per_sample = LabelledTensor(self.per_sample, self.dims + ("sample",), {**self.coords, "sample": list(range(b))})

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def _mean(self, t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.float().mean()

    def effect(self) -> Tensor:
        """`values - base`: what each intervention changed (e.g. ROME's indirect effect)."""
        if self.base is None:
            raise ValueError("this result has no unpatched baseline")
        return self.values - self._mean(self.base)

    def normalized(self) -> Tensor:
        """`(values - base) / (source - base)`: the share of the clean-corrupted gap recovered (0 =
        the unpatched run, 1 = the source run)."""
        if self.source is None or self.base is None:
            raise ValueError("normalised values need both the unpatched and the source run's metric")
        gap = self._mean(self.source) - self._mean(self.base)
        if float(gap.abs()) == 0:
            raise ValueError("the source and unpatched runs have the same metric: nothing to normalise by")
        return (self.values - self._mean(self.base)) / gap

    def to_frame(self, per_sample: bool = False):
        """A pandas DataFrame with one row per cell (per cell and sample with `per_sample=True`):
        one column per axis, then `value`."""
        import pandas as pd

        grids = torch.meshgrid(*[torch.arange(len(self.coords[d])) for d in self.dims], indexing="ij")
        flat = {d: [self.coords[d][int(i)] for i in g.flatten()] for d, g in zip(self.dims, grids)}
        if not per_sample:
            return pd.DataFrame({**flat, "value": self.values.flatten().tolist()})
        if self.per_sample is None:
            raise ValueError("no per-sample values: the metric returned one scalar per run")
        b = self.per_sample.shape[-1]
        rows = {d: [v for v in vals for _ in range(b)] for d, vals in flat.items()}
        rows["sample"] = list(range(b)) * len(self.values.flatten())
        rows["value"] = self.per_sample.reshape(-1).tolist()
        return pd.DataFrame(rows)

    def top(self, k: int = 10, by: str = "value"):
        """The `k` cells with the largest value (`by="value"`), effect magnitude (`"abs"`: largest
        |value - base|) or smallest value (`"min"`), as a DataFrame."""
        df = self.to_frame()
        if by == "value":
            return df.nlargest(k, "value")
        if by == "min":
            return df.nsmallest(k, "value")
        if by == "abs":
            ref = float(self._mean(self.base)) if self.base is not None else 0.0
            return df.assign(effect=df["value"] - ref).reindex((df["value"] - ref).abs().sort_values(ascending=False).index).head(k)
        raise ValueError(f"by must be 'value', 'abs' or 'min'; got {by!r}")

    def plot(self, title: Optional[str] = None, kind: str = "auto", layout=None, sample: int = 0, backend: str = "view",
             **labels):
        """The values as an avlens view (offline in Jupyter, VS Code, Colab and static HTML, float16
        data), or a plotly figure with `backend="plotly"`.

        kind="auto" (or "heatmap"): a heatmap for two axes (three: one panel per index of the
            third), bars for one (`avlens.viz.heatmap_view` / `bar_view`). A `position` axis is
            always drawn along x, with a labelled band per run of same-group positions above the
            plot (`GROUP_COLORS`); with an unpatched baseline the colours diverge around it
            (high = red).
        kind="strip": the values over positions as an `avlens.viz.token_strip` (media tokens as
            time-stamped cells) of one sample's layout: `layout` (else the result's own, else
            one rebuilt from `position_groups`). Pick one index of every other axis by its
            label (`result.plot(kind="strip", layer=3)`). Returns a `View` whatever `backend`.
        backend: "view" (default, a `View`) or "plotly" (a plotly `Figure`: heatmap with
            group-band shapes, or bars; needs plotly.js from the page or the notebook)."""
        if kind not in ("auto", "heatmap", "strip"):
            raise ValueError(f"kind must be 'auto', 'heatmap' or 'strip'; got {kind!r}")
        if backend not in ("view", "plotly"):
            raise ValueError(f"backend must be 'view' (an avlens View) or 'plotly' (a plotly Figure); got {backend!r}")
        if kind == "strip":
            return self._strip(title, layout, sample, labels)
        if labels:
            raise TypeError(f"axis labels {sorted(labels)} only select a row for kind='strip'; for the heatmap use "
                            "result.values.sel(...) and plot that, or drop them")
        title = title if title is not None else self._title()
        label = self.metric
        groups_of = self._groups_of
        center = None if self.base is None else float(self._mean(self.base))
        if self.values.ndim == 1:
            d = self.dims[0]
            groups = groups_of(self.coords[d]) if d == "position" else (self.coords[d] if d == "group" else None)
            bands = d == "position" and groups is not None
            if backend == "plotly":
                from avlens.viz.grid import bar_chart

                return bar_chart(self.values.plain(), self.coords[d], d, title, label, groups=groups, bands=bands)
            from avlens.viz.views import bar_view

            return bar_view(self.values.plain(), self.coords[d], groups=groups, bands=bands, axis_title=d,
                            value_label=label, title=title)
        if self.values.ndim not in (2, 3):
            raise ValueError(f"plot draws one to three axes; this result has {self.dims}")
        values, dims = _position_axis_last(self.values.plain(), self.dims)
        rows, cols = dims[0], dims[1]
        col_groups = groups_of(self.coords[cols]) if cols == "position" else None
        facet = dims[2] if values.ndim == 3 else ""
        if backend == "plotly":
            from avlens.viz.grid import grid_heatmap

            return grid_heatmap(values, self.coords[rows], self.coords[cols], rows, cols, col_groups=col_groups,
                                facet_labels=self.coords.get(facet), facet_title=facet, title=title, value_title=label,
                                center=center)
        from avlens.viz.views import heatmap_view

        z = values.float()
        if z.ndim == 3:  # [rows, cols, facet] -> [facet, rows, cols]
            z = z.permute(2, 0, 1)
        return heatmap_view(z, self.coords[rows], self.coords[cols], groups=col_groups,
                            facet_labels=self.coords.get(facet) if facet else None, facet_title=facet,
                            row_title=rows, col_title=cols, value_label=label, title=title, center=center)

    def _groups_of(self, positions) -> Optional[list[str]]:
        """The token group of each position label (None without `position_groups`)."""
        if self.position_groups is None:
            return None
        n = len(self.position_groups)
        return [self.position_groups[int(p)] if 0 <= int(p) < n else "pad" for p in positions]

    def _strip(self, title, layout, sample: int, labels: dict):
        from avlens.layout import PARTITION_GROUPS, BatchLayout

        if "position" not in self.dims:
            raise ValueError(f"kind='strip' draws values over positions; this result's axes are {self.dims} (no 'position'). "
                             "Patch with over=(..., 'position') or use the default heatmap / bars")
        v = self.values
        for d, lab in labels.items():
            if d not in v.dims:
                raise KeyError(f"unknown axis {d!r}; this result's axes are {self.dims}")
            v = v.sel(**{d: lab})
        if v.dims != ("position",):
            rest = {d: self.coords[d][:8] for d in v.dims if d != "position"}
            raise ValueError(f"kind='strip' needs one value per position: pick one label of each other axis, e.g. "
                             f"result.plot(kind='strip', {', '.join(f'{d}={c[0]!r}' for d, c in rest.items())}) (labels: {rest})")
        layout = layout if layout is not None else self.layout
        if layout is None:
            if self.position_groups is None:
                raise ValueError("kind='strip' needs the token layout: pass layout=batch.layout")
            g = self.position_groups
            layout = BatchLayout({k: torch.tensor([[x == k for x in g]]) for k in PARTITION_GROUPS}, validate=False)
            sample = 0
        if not 0 <= sample < layout.batch_size:
            raise IndexError(f"sample {sample} is outside the layout's batch of {layout.batch_size}")
        full = torch.full((layout.n_pos,), float("nan"))
        pos = torch.tensor([int(p) for p in v.coords["position"]], dtype=torch.long)
        if bool((pos >= layout.n_pos).any()):
            raise ValueError(f"positions up to {int(pos.max())} but the layout has {layout.n_pos}: pass the layout of the batch "
                             "this result was computed on")
        full[pos] = v.plain().float().cpu()
        from avlens.viz import token_strip

        sel = ", ".join(f"{d} {lab}" for d, lab in labels.items())
        shown = pos.tolist() if len(pos) < int((~layout.masks["pad"][sample]).sum()) else None
        return token_strip(layout, full, sample=sample, positions=shown, value_label=self.metric,
                           center=None if self.base is None else float(self._mean(self.base)),
                           title=title if title is not None else self._title() + (f" ({sel})" if sel else ""))

    def _title(self) -> str:
        parts = [self.method]
        if self.site:
            parts.append(f"at {self.site}")
        if self.direction:
            parts.append(f"({self.direction})")
        return " ".join(parts) + f": {self.metric}"

    def top_cells(self, k: int = 5, by: str = "abs") -> list[tuple[dict, float]]:
        """The `k` cells with the largest effect |value - unpatched| (`by="abs"`), value
        (`"value"`) or smallest value (`"min"`): `(labels, value)` pairs, without pandas."""
        v = self.values.plain().float().flatten()
        ref = float(self._mean(self.base)) if self.base is not None else 0.0
        key = {"abs": (v - ref).abs(), "value": v, "min": -v}.get(by)
        if key is None:
            raise ValueError(f"by must be 'abs', 'value' or 'min'; got {by!r}")
        key = torch.where(torch.isfinite(key), key, torch.full_like(key, float("-inf")))
        idx = key.argsort(descending=True)[: max(0, k)].tolist()
        return [({d: self.coords[d][j] for d, j in zip(self.dims, _unravel(i, self.shape))}, float(v[i])) for i in idx]

    def _label_text(self, dim: str, label) -> str:
        """A label as shown in reprs; positions carry their token group: `40 (audio)`."""
        g = self._groups_of([label]) if dim == "position" else None
        return f"{label} ({g[0]})" if g else str(label)

    def _cell_label(self, labels: dict) -> str:
        return ", ".join(f"{d} {self._label_text(d, lab)}" for d, lab in labels.items())

    def __repr__(self) -> str:
        dims = ", ".join(f"{d}={len(self.coords[d])}" for d in self.dims)
        lines = [f"PatchResult[{self._title()}]({dims})"]
        v = self.values.float()
        if v.numel():
            lines.append(f"  values: min {float(v.min()):.4g}, max {float(v.max()):.4g}, mean {float(v.mean()):.4g}")
        if self.base is not None:
            src = f", source run {float(self._mean(self.source)):.4g}" if self.source is not None else ""
            lines.append(f"  unpatched run {float(self._mean(self.base)):.4g}{src}")
        if v.numel() > 1:
            what = "|value - unpatched|" if self.base is not None else "|value|"
            lines.append(f"  top cells by {what}:")
            lines += [f"    {self._cell_label(labels)}: {value:.4g}" for labels, value in self.top_cells(5)]
        if self.stats is not None:
            s = self.stats
            lines.append(f"  {s.n_cells} cells, {s.n_skipped} no-ops skipped, {s.n_forwards} forward passes, {s.seconds:.2f} s")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """A card for notebooks: the runs' metrics, the grid as a heatmap (a PNG; the position axis
        along x with its token-group strip; diverging around the unpatched run's metric), and
        the top cells. A few tens of kilobytes even for 28 layers x 2,048 positions."""
        from avlens.viz.reprs import card, esc, table

        dims = ", ".join(f"{d}={len(self.coords[d])}" for d in self.dims)
        info = []
        if self.base is not None:
            src = f", source run {float(self._mean(self.source)):.4g}" if self.source is not None else ""
            info.append(f"unpatched run {float(self._mean(self.base)):.4g}{src}")
        if self.stats is not None:
            s = self.stats
            info.append(f"{s.n_cells} cells, {s.n_skipped} no-ops skipped, {s.n_forwards} forward passes, {s.seconds:.2f} s")
        body = "".join(f"<div>{esc(x)}</div>" for x in info)
        center = None if self.base is None else float(self._mean(self.base))
        body += _values_html(self.values.plain(), self.dims, self.coords, self.position_groups, center)
        if self.values.numel() > 1:
            body += "<div class='avl-n'>top cells</div>" + table(
                list(self.dims) + ["value"],
                [[self._label_text(d, lab) for d, lab in labels.items()] + [f"{value:.4g}"] for labels, value in self.top_cells(5)],
                num_cols=[len(self.dims)])
        return card(f"PatchResult: {self._title()}", f"({dims})", body)


def assemble(values: dict[str, Tensor], grid, base, source_scores, **kw) -> dict[str, PatchResult]:
    """Per-metric PatchResults from a sweep's `[n_cells, b]` (or `[n_cells]`) values."""
    out = {}
    shape = grid.shape
    for k, v in values.items():
        per = v.reshape(*shape, *v.shape[1:]) if v.ndim == 2 else None
        mean = per.mean(-1) if per is not None else v.reshape(shape)
        out[k] = PatchResult(values=mean, dims=grid.dims, coords=grid.coords, per_sample=per, base=base.scores[k].cpu(),
                             source=None if source_scores is None else source_scores[k].cpu(), metric=k, **kw)
    return out
