"""Results of causal interventions: small dataclasses holding labelled tensors.

    result = avlens.patching.activation_patch(model, clean, corrupted, metric)
    result.values          # [n_layers, n_positions], the metric averaged over samples
    result.dims, result.coords["position"]
    result.per_sample      # [n_layers, n_positions, batch]
    result.to_frame()      # pandas, one row per cell
    result.top(5)          # the five largest cells
    result.plot()          # plotly heatmap with token-group bands along the position axis
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
        return f"LabelledTensor(dims={self.dims})\n" + repr(self.plain())


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

    def plot(self, title: Optional[str] = None):
        """A plotly figure: a heatmap for two axes (three: one panel per index of the last axis),
        bars for one. Position axes get token-group bands."""
        from avlens.viz.grid import bar_chart, grid_heatmap

        title = title if title is not None else self._title()
        label = self.metric
        if self.values.ndim == 1:
            d = self.dims[0]
            groups = self.position_groups if d == "position" else (self.coords[d] if d == "group" else None)
            return bar_chart(self.values, self.coords[d], d, title, label, groups=groups)
        if self.values.ndim not in (2, 3):
            raise ValueError(f"plot draws one to three axes; this result has {self.dims}")
        rows, cols = self.dims[0], self.dims[1]
        col_groups = None
        if cols == "position" and self.position_groups is not None:
            col_groups = [self.position_groups[int(p)] for p in self.coords[cols]]
        facet = self.dims[2] if self.values.ndim == 3 else ""
        return grid_heatmap(self.values, self.coords[rows], self.coords[cols], rows, cols, col_groups=col_groups,
                            facet_labels=self.coords.get(facet), facet_title=facet, title=title, value_title=label,
                            center=None if self.base is None else float(self._mean(self.base)))

    def _title(self) -> str:
        parts = [self.method]
        if self.site:
            parts.append(f"at {self.site}")
        if self.direction:
            parts.append(f"({self.direction})")
        return " ".join(parts) + f": {self.metric}"

    def __repr__(self) -> str:
        dims = ", ".join(f"{d}={len(self.coords[d])}" for d in self.dims)
        lines = [f"PatchResult[{self._title()}]({dims})"]
        v = self.values.float()
        if v.numel():
            lines.append(f"  values: min {float(v.min()):.4g}, max {float(v.max()):.4g}, mean {float(v.mean()):.4g}")
        if self.base is not None:
            src = f", source run {float(self._mean(self.source)):.4g}" if self.source is not None else ""
            lines.append(f"  unpatched run {float(self._mean(self.base)):.4g}{src}")
        if self.stats is not None:
            s = self.stats
            lines.append(f"  {s.n_cells} cells, {s.n_skipped} no-ops skipped, {s.n_forwards} forward passes, {s.seconds:.2f} s")
        return "\n".join(lines)


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
