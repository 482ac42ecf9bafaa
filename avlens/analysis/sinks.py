"""Sink dimensions and sink tokens (METHODS.md section 1).

    dims = find_sink_dims(model, [batch])           # massive-activation dimensions, discovered
    report = find_sinks(model, batch, dims=dims.dims, tau=25.0)
    report.is_sink                                   # [n_layers, n_positions] (per sample for batches)
    report.global_sinks(N=2)                         # the official rule: audio / video positions
    batch = batch.with_layout(report.to_layout(N=2)) # or model hooks on `*.sink` group views

Two definitions of a sink token, computed in one forward pass:

* **hidden state** (VAR, the paper): position p is a sink at layer l if
  `max_{d in dims} |x_hat_d| > tau`, where `x_hat = x / sqrt(mean(x^2) + 1e-6)` is the residual
  stream entering layer l (`blocks.{l}.hook_resid_pre`), normalised without weights, in float32
  whatever the model's dtype. `dims` are the massive-activation dimensions (`find_sink_dims`:
  Sun et al., *Massive Activations in LLMs*: |a| > 100 and >= 1000x the median magnitude of the
  hidden state; the paper's dims for Qwen2.5-7B are [458, 2570] with tau = 25).
* **attention** (Gu et al., *When Attention Sink Emerges*, ICLR 2025): p is a sink at layer l if,
  in some head, the mean attention p receives from the queries after it exceeds `eps` = 0.3.

Small models may have sinks without massive activations; then `find_sink_dims` returns no dims,
the hidden-state map is empty, and the attention definition carries the analysis
(`report.found_by()` says which definition found which tokens).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import Tensor

from avlens.analysis._collect import (
    LaterQueryCollector,
    attach_collector,
    detach_collector,
    resid_pre_hooks,
    rms_normalised,
)
from avlens.batch import AVBatch
from avlens.layout import BatchLayout

__all__ = ["SinkDims", "SinkReport", "find_sink_dims", "find_sinks", "global_sinks_from_layers"]

MEDIA_GROUPS = ("audio", "video")


# ----------------------------------------------------------------------------- sink dimensions
@dataclass
class SinkDims:
    """Hidden dimensions carrying massive activations.

    Attributes:
        dims: the dimensions, ordered by their largest magnitude (largest first).
        layers: dim -> layers (of `blocks.{l}.hook_resid_pre`) where it is massive.
        tokens: dim -> `(batch index, sample, position, group)` of every massive activation (up to
            `max_records` in all).
        max_abs: `[n_layers, d_model]` largest |activation| per layer and dim over all tokens.
        max_ratio: `[n_layers, d_model]` largest |activation| / median magnitude of its hidden
            state (the sample's non-pad residual at that layer).
        min_abs, min_ratio: the thresholds used (`min_abs` None: the relative rule).
    """

    dims: list[int]
    layers: dict[int, list[int]]
    tokens: dict[int, list[tuple[int, int, int, str]]]
    max_abs: Tensor
    max_ratio: Tensor
    min_abs: Optional[float]
    min_ratio: float

    def __repr__(self) -> str:
        if not self.dims:
            return (f"SinkDims(no massive activations: largest |a| = {float(self.max_abs.max()):.3g}, largest "
                    f"ratio to the median = {float(self.max_ratio.max()):.3g}; thresholds min_abs={self.min_abs}, "
                    f"min_ratio={self.min_ratio})")
        parts = []
        for d in self.dims:
            groups = Counter(t[3] for t in self.tokens[d])
            parts.append(f"dim {d}: layers {_ranges(self.layers[d])}, tokens {dict(groups)}")
        return "SinkDims(\n  " + "\n  ".join(parts) + "\n)"


def _ranges(xs: Sequence[int]) -> str:
    xs = sorted(xs)
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(out)


def _as_batches(model, batches) -> list[AVBatch]:
    if isinstance(batches, (AVBatch, Tensor, str)):
        batches = [batches]
    out = [model._to_batch(b) for b in batches]
    if not out:
        raise ValueError("find_sink_dims needs at least one batch of sample inputs")
    return out


@torch.no_grad()
def find_sink_dims(
    model,
    batches: Union[AVBatch, Iterable[AVBatch]],
    min_abs: Optional[float] = 100.0,
    min_ratio: float = 1000.0,
    min_layers: int = 1,
    max_records: int = 100_000,
) -> SinkDims:
    """Discover the massive-activation dimensions of `model` from its residual stream on `batches`.

    An activation `resid_pre[l][b, p, d]` is massive if `|a| > min_abs` and
    `|a| >= min_ratio x median(|resid_pre[l][b]|)` (the median over the sample's non-pad tokens and
    all dims). A dimension is a sink dimension if it is massive in at least `min_layers` layers.
    `min_abs=None` is the relative rule for small models (whose activations never reach 100): only
    the ratio counts; lower `min_ratio` too (e.g. 50) when the model is tiny.
    """
    if min_abs is not None and min_abs < 0:
        raise ValueError(f"min_abs must be >= 0 or None (relative rule), got {min_abs}")
    if min_ratio <= 0:
        raise ValueError(f"min_ratio must be > 0, got {min_ratio}")
    L, d_model = model.cfg.n_layers, model.cfg.d_model
    max_abs = torch.zeros(L, d_model)
    max_ratio = torch.zeros(L, d_model)
    layers: dict[int, set] = {}
    tokens: dict[int, list] = {}
    n_records = [0]
    for bi, batch in enumerate(_as_batches(model, batches)):
        valid = batch.attention_mask.bool().cpu()
        labels = [batch.layout.labels(s) for s in range(batch.shape[0])]

        def record(layer: int, x: Tensor, bi=bi, valid=valid, labels=labels) -> None:
            a = x.abs().cpu()  # [b, p, d]
            for s in range(a.shape[0]):
                v = a[s][valid[s]]  # [n, d]
                med = v.median().clamp(min=1e-12)
                max_abs[layer] = torch.maximum(max_abs[layer], v.amax(0))
                max_ratio[layer] = torch.maximum(max_ratio[layer], v.amax(0) / med)
                hit = v >= min_ratio * med
                if min_abs is not None:
                    hit &= v > min_abs
                if not bool(hit.any()):
                    continue
                positions = valid[s].nonzero().squeeze(1)
                for i, d in hit.nonzero().tolist():
                    layers.setdefault(d, set()).add(layer)
                    if n_records[0] < max_records:
                        p = int(positions[i])
                        tokens.setdefault(d, []).append((bi, s, p, labels[s][p]))
                        n_records[0] += 1

        model.run_with_hooks(batch, return_type=None, fwd_hooks=resid_pre_hooks(L, record))
    dims = [d for d, ls in layers.items() if len(ls) >= min_layers]
    dims.sort(key=lambda d: -float(max_abs[:, d].max()))
    return SinkDims(
        dims=dims,
        layers={d: sorted(layers[d]) for d in dims},
        tokens={d: tokens.get(d, []) for d in dims},
        max_abs=max_abs,
        max_ratio=max_ratio,
        min_abs=min_abs,
        min_ratio=min_ratio,
    )


# ----------------------------------------------------------------------------- sink tokens
def global_sinks_from_layers(per_layer: Sequence[Sequence[int]], prompt_length: int, N: int = 2) -> list[int]:
    """The official global-sink rule on per-layer sink lists (each in position order):
    `Counter(concatenated lists).most_common(floor(prompt_length / N))`, i.e. the most frequent
    sinks, ties in first-seen order (lowest layer first, then position). Only tokens that are a
    sink in at least one layer count, so fewer than K may come back. (Keeping only audio / video
    positions is `SinkReport.global_sinks`'s job.)"""
    if not isinstance(N, int) or N < 1:
        raise ValueError(f"N must be a positive integer (the paper uses 2, 3 or 4), got {N!r}")
    if N > prompt_length:
        raise ValueError(f"N={N} is larger than the prompt length {prompt_length}, so floor(|T| / N) = 0 sinks would be kept")
    k = prompt_length // N
    counts = Counter(p for layer in per_layer for p in layer)
    return [p for p, _ in counts.most_common(k)]


@dataclass
class SinkReport:
    """Sink tokens of a batch under both definitions (see the module docstring).

    Attributes:
        dims: the sink dimensions used by the hidden-state definition (may be empty).
        tau: the hidden-state threshold; eps: the attention threshold.
        hidden_scores: `[batch, n_layers, n_positions]` `max_{d in dims} |x_hat_d|` (0 at pads and
            when there are no dims).
        attention_scores: `[batch, n_layers, n_heads, n_positions]`: mean attention each position
            receives from the (non-pad) queries after it (0 where there are none).
        layout: the batch's layout.
    """

    dims: list[int]
    tau: float
    eps: float
    hidden_scores: Tensor
    attention_scores: Tensor
    layout: BatchLayout
    valid: Tensor = field(repr=False)

    @property
    def batch_size(self) -> int:
        return self.hidden_scores.shape[0]

    def _squeeze(self, t: Tensor) -> Tensor:
        return t[0] if self.batch_size == 1 else t

    @property
    def is_sink(self) -> Tensor:
        """Hidden-state sinks: bool `[n_layers, n_positions]` for one sample, `[batch, n_layers,
        n_positions]` for a batch."""
        return self._squeeze(self._hidden_mask())

    @property
    def attention_is_sink(self) -> Tensor:
        """Attention sinks (any head above `eps`), shaped like `is_sink`."""
        return self._squeeze(self._attention_mask())

    def _hidden_mask(self) -> Tensor:
        if not self.dims:
            return torch.zeros_like(self.hidden_scores, dtype=torch.bool)
        return (self.hidden_scores > self.tau) & self.valid[:, None, :]

    def _attention_mask(self) -> Tensor:
        return (self.attention_scores > self.eps).any(2) & self.valid[:, None, :]

    def _mask(self, definition: str) -> Tensor:
        if definition == "hidden":
            return self._hidden_mask()
        if definition == "attention":
            return self._attention_mask()
        raise ValueError(f"definition must be 'hidden' or 'attention', got {definition!r}")

    def per_layer(self, sample: int = 0, definition: str = "hidden") -> list[list[int]]:
        """The sink positions at each layer (position order)."""
        m = self._mask(definition)[sample]
        return [m[l].nonzero().squeeze(1).tolist() for l in range(m.shape[0])]

    def global_sinks(self, N: int = 2, sample: Optional[int] = None, definition: str = "hidden",
                     groups: Sequence[str] = MEDIA_GROUPS) -> Union[list[int], list[list[int]]]:
        """The global sinks by the official rule (`global_sinks_from_layers` with |T| the sample's
        non-pad length), kept to positions in `groups` (audio and video), in frequency order.
        Positions index the (padded) batch. One list for one sample (or `sample=`), else one per
        sample."""
        self._check_sample(sample)
        samples = range(self.batch_size) if sample is None else [sample]
        out = []
        for s in samples:
            top = global_sinks_from_layers(self.per_layer(s, definition), int(self.valid[s].sum()), N)
            labels = self.layout.labels(s)
            out.append([p for p in top if labels[p] in groups])
        return out[0] if sample is not None or self.batch_size == 1 else out

    def found_by(self, sample: int = 0) -> dict[str, list[int]]:
        """Which positions each definition marks as a sink in at least one layer."""
        self._check_sample(sample)
        h = set(self._hidden_mask()[sample].any(0).nonzero().squeeze(1).tolist())
        a = set(self._attention_mask()[sample].any(0).nonzero().squeeze(1).tolist())
        return {"hidden": sorted(h), "attention": sorted(a), "both": sorted(h & a),
                "hidden_only": sorted(h - a), "attention_only": sorted(a - h)}

    def to_layout(self, N: int = 2, definition: str = "hidden", name: str = "sink") -> BatchLayout:
        """The layout with the global sinks as the overlay group `name` (default "sink")."""
        sinks = self.global_sinks(N, definition=definition)
        per_sample = [sinks] if self.batch_size == 1 else sinks
        return self.layout.with_group(name, per_sample)

    def _scores(self, sample: int, definition: str) -> tuple[Tensor, float]:
        """`[n_layers, n_positions]` scores of one sample under a definition, and its threshold."""
        if definition == "hidden":
            return self.hidden_scores[sample], self.tau
        if definition == "attention":
            return self.attention_scores[sample].amax(1), self.eps
        raise ValueError(f"definition must be 'hidden' or 'attention', got {definition!r}")

    def plot(self, sample: int = 0, definition: str = "hidden", title: Optional[str] = None, kind: str = "map",
             backend: str = "view"):
        """kind="map": a layer x position heatmap of the sink scores (hidden: max |x_hat| over the
        dims; attention: max over heads of the mean attention from later queries) with the sink
        cells marked (dots) and a labelled band per run of same-group positions above it: an
        `avlens.viz.heatmap_view` (offline, float16 data), or a plotly figure with
        `backend="plotly"`.
        kind="strip": each position's largest score over layers as an `avlens.viz.token_strip`
        of the sample's layout (returns a `View` whatever `backend`)."""
        if kind not in ("map", "strip"):
            raise ValueError(f"kind must be 'map' or 'strip'; got {kind!r}")
        if backend not in ("view", "plotly"):
            raise ValueError(f"backend must be 'view' (an avlens View) or 'plotly' (a plotly Figure); got {backend!r}")
        self._check_sample(sample)
        z, thr = self._scores(sample, definition)
        what = (f"max |x_hat| over dims {self.dims}" if definition == "hidden" else "max over heads of the mean attention from later queries")
        title = title or f"sink tokens ({definition} definition: {what} > {thr:g})"
        if kind == "strip":
            from avlens.viz import token_strip

            per_pos = z.amax(0).float().masked_fill(~self.valid[sample].to(z.device), float("nan"))
            return token_strip(self.layout, per_pos, sample=sample, title=title + ", max over layers")
        marked = self._mask(definition)[sample]
        if backend == "plotly":
            from avlens.viz.groups import score_map_figure

            return score_map_figure(z, self.layout.labels(sample), marked=marked, title=title, colorbar_title=definition)
        from avlens.viz.views import heatmap_view

        return heatmap_view(z.float().cpu(), groups=self.layout.labels(sample), row_title="layer", col_title="position",
                            value_label=f"{definition} sink score", title=title, marked=marked.cpu(),
                            mark_label=f"sink (> {thr:g})", cmap="viridis")

    def _default_definition(self) -> str:
        return "hidden" if self.dims and bool(self._hidden_mask().any()) else "attention"

    def _sink_rows(self, sample: int, definition: str, N: int = 2) -> list[list]:
        """Global sinks of one sample with their group, time stamp, number of sink layers and
        largest score, for the reprs."""
        z, _ = self._scores(sample, definition)
        m = self._mask(definition)[sample]
        labels = self.layout.labels(sample)
        rows = []
        for p in self.global_sinks(N, sample=sample, definition=definition):
            t = float(self.layout.time[sample, p])
            rows.append([p, labels[p], f"{t:.2f} s" if t == t else "", int(m[:, p].sum()), f"{float(z[:, p].max()):.3g}"])
        return rows

    def _repr_html_(self) -> str:
        """A card for notebooks: thresholds and counts, the first sample's layer x position score
        map (a PNG; sink cells in the sink colour; group strip under it) under the definition
        that finds sinks, and its global sinks (N = 2)."""
        from avlens.viz.reprs import card, esc, heatmap, table

        h, a = self._hidden_mask(), self._attention_mask()
        d = self._default_definition()
        z, thr = self._scores(0, d)
        body = (f"<div>dims {esc(self.dims)}, tau {self.tau:g}, eps {self.eps:g}; sink cells: hidden-state {int(h.sum())}, "
                f"attention {int(a.sum())}</div>")
        body += heatmap(z, list(range(z.shape[0])), "layer", self.layout.labels(0), marked=self._mask(d)[0],
                        caption=f"sample 0, {d} definition (marked: score > {thr:g})")
        rows = self._sink_rows(0, d)
        body += (f"<div class='avl-n'>global sinks of sample 0 ({d}, N=2, audio / video)</div>"
                 + table(["position", "group", "time", "sink layers", "max score"], rows, num_cols=[0, 3, 4])
                 if rows else "<div class='avl-n'>no global audio / video sinks in sample 0</div>")
        if self.batch_size > 1:
            body += f"<div class='avl-n'>{self.batch_size - 1} more samples: report.plot(sample=i)</div>"
        return card("SinkReport", f"batch={self.batch_size}, layers={h.shape[1]}, positions={h.shape[2]}", body)

    def _check_sample(self, sample: Optional[int]) -> None:
        if sample is not None and not 0 <= sample < self.batch_size:
            raise IndexError(f"sample {sample} is out of range for a batch of {self.batch_size}")

    def __repr__(self) -> str:
        """Shape, dims and thresholds, sink-cell counts, then per sample (at most 4) its global
        audio / video sinks (N = 2) under each definition that finds any, with their groups."""
        h, a = self._hidden_mask(), self._attention_mask()
        lines = [f"SinkReport(batch={self.batch_size}, layers={h.shape[1]}, positions={h.shape[2]}, dims={self.dims}, "
                 f"tau={self.tau:g}, eps={self.eps:g}; hidden-state sink cells: {int(h.sum())}, attention sink cells: "
                 f"{int(a.sum())})"]
        for s in range(min(self.batch_size, 4)):
            for d, m in (("hidden", h), ("attention", a)):
                if not bool(m[s].any()):
                    continue
                labels = self.layout.labels(s)
                sinks = self.global_sinks(2, sample=s, definition=d)
                shown = ", ".join(f"{p} ({labels[p]})" for p in sinks[:8]) + (f", ... ({len(sinks)})" if len(sinks) > 8 else "")
                lines.append(f"  [{s}] {d} global sinks (N=2): {shown or 'none in audio / video'}")
        if self.batch_size > 4:
            lines.append(f"  ... {self.batch_size - 4} more samples")
        return "\n".join(lines)


@torch.no_grad()
def find_sinks(model, batch, dims: Optional[Sequence[int]] = None, tau: float = 25.0, eps: float = 0.3,
               **dims_kwargs) -> SinkReport:
    """Sink tokens of `batch` under the hidden-state and the attention definitions (one forward).

    `dims`: the sink dimensions; None discovers them first with `find_sink_dims(model, [batch],
    **dims_kwargs)` (an extra forward). Pass `dims=[]` to skip the hidden-state definition.
    """
    batch = model._to_batch(batch)
    if dims is None:
        dims = find_sink_dims(model, [batch], **dims_kwargs).dims
    elif dims_kwargs:
        raise TypeError(f"{sorted(dims_kwargs)} only apply when dims are discovered (dims=None)")
    dims = [int(d) for d in dims]
    bad = [d for d in dims if not 0 <= d < model.cfg.d_model]
    if bad:
        raise ValueError(f"sink dims {bad} are outside [0, d_model={model.cfg.d_model})")
    if dims and tau >= model.cfg.d_model**0.5:
        raise ValueError(
            f"tau={tau:g} can never be exceeded: |x_hat_d| <= sqrt(d_model) = {model.cfg.d_model**0.5:.3g} for an "
            f"RMS-normalised state of d_model={model.cfg.d_model}. The paper's tau=25 is for d_model=3584; pick a "
            "smaller tau for this model (or use the attention definition)."
        )
    L = model.cfg.n_layers
    b, p = batch.shape
    valid = batch.attention_mask.bool()
    hidden = torch.zeros(b, L, p)
    idx = torch.tensor(dims, dtype=torch.long)

    def score(layer: int, x: Tensor) -> None:
        if dims:
            hidden[:, layer] = rms_normalised(x)[..., idx.to(x.device)].abs().amax(-1).cpu() * valid.cpu()

    collector = LaterQueryCollector({"all": valid}, L, model.cfg.n_heads)
    blocks = attach_collector(model, collector)
    try:
        model.run_with_hooks(batch, return_type=None, fwd_hooks=resid_pre_hooks(L, score))
    finally:
        detach_collector(blocks)
    attn = collector.mean_from_later("all").cpu()
    return SinkReport(dims=dims, tau=float(tau), eps=float(eps), hidden_scores=hidden, attention_scores=attn,
                      layout=batch.layout, valid=valid.cpu())
