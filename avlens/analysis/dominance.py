"""Modality dominance of sinks, the cross-modal / unimodal split, and the unimodal-dominance rules
(METHODS.md sections 2-5).

    mds = modality_dominance(model, batch, sinks)        # [n_layers, n_sinks], a ModalityDominance
    cross, uni = cross_modal_split(sinks, mds.mean(0), dominant="audio")
    classify_dominance(y_av, y_a, y_v)                     # "audio" / "video" / None
    ie_clean(p_patched, p_corrupt), ie_corrupt(p_corrupt, p_patched)
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from avlens.analysis._collect import LaterQueryCollector, attach_collector, detach_collector
from avlens.interventions.results import LabelledTensor

__all__ = ["ModalityDominance", "modality_dominance", "cross_modal_split", "classify_dominance", "ie_clean", "ie_corrupt"]


class ModalityDominance(LabelledTensor):
    """The modality dominance score of one sample's sinks: a `[n_layers, n_sinks]` tensor with
    axes `("layer", "sink")` (the sink labels are their positions), the sinks' token groups
    (`sink_groups`) and the sample's one-sample layout (`sample_layout`; `Tensor.layout` is
    torch's own attribute). It is a tensor: arithmetic gives plain tensors (`mds.mean(0)`),
    `mds.sel(sink=40)` one sink's scores per layer.

    +1: only video queries attend to the sink; -1: only audio queries; 0: balanced (or none)."""

    @staticmethod
    def __new__(cls, data: Tensor, sinks: Sequence[int], sink_groups: Sequence[str], layout=None):
        t = LabelledTensor.__new__(cls, data, ("layer", "sink"), {"layer": list(range(data.shape[0])), "sink": [int(p) for p in sinks]})
        if len(sink_groups) != len(t.coords["sink"]):
            raise ValueError(f"{len(sink_groups)} sink groups for {len(t.coords['sink'])} sinks")
        t.sink_groups, t.sample_layout = list(sink_groups), layout
        return t

    def __deepcopy__(self, memo):
        import copy

        return ModalityDominance(self.plain().clone(), self.coords["sink"], self.sink_groups, copy.deepcopy(self.sample_layout, memo))

    def __reduce_ex__(self, proto):
        return ModalityDominance, (self.plain(), self.coords["sink"], self.sink_groups, self.sample_layout)

    def _per_sink(self) -> list[tuple[int, str, float]]:
        mean = self.plain().float().mean(0).tolist() if self.shape[0] else [float("nan")] * self.shape[1]
        return list(zip(self.coords["sink"], self.sink_groups, mean))

    def __repr__(self, **kw) -> str:
        """Layers and sinks, then each sink (at most 12): position, group, layer-mean MDS and
        which modality's queries attend to it more."""
        lines = [f"ModalityDominance(layers={self.shape[0]}, sinks={self.shape[1]}): MDS = (v - a) / (v + a), "
                 "+1 video-attended, -1 audio-attended"]
        for p, g, m in self._per_sink()[:12]:
            side = "video-attended" if m > 0 else ("audio-attended" if m < 0 else "balanced")
            lines.append(f"  sink {p} ({g}): mean over layers {m:+.3f} ({side})")
        if self.shape[1] > 12:
            lines.append(f"  ... {self.shape[1] - 12} more sinks")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """A card: the layer x sink map (a PNG, diverging around 0, the sinks' group strip under
        it) and the per-sink layer means."""
        from avlens.viz.reprs import card, heatmap, table

        body = heatmap(self.plain(), self.coords["layer"], "layer", self.sink_groups, center=0.0, col_title="sink",
                       col_labels=self.coords["sink"], caption="MDS per layer and sink (+1 video-attended, -1 audio-attended)")
        body += table(["sink", "group", "mean MDS"], [[p, g, f"{m:+.3f}"] for p, g, m in self._per_sink()], num_cols=[0, 2])
        return card("ModalityDominance", f"layers={self.shape[0]}, sinks={self.shape[1]}", body)

    def plot(self, title: Optional[str] = None, kind: str = "heatmap", backend: str = "view"):
        """kind="heatmap": MDS per layer (rows) and sink (columns, in the order given), diverging
        around 0 (+1 video-attended red, -1 audio-attended blue), a labelled band over the sinks
        in their token groups' colours: an `avlens.viz.heatmap_view`, or a plotly figure with
        `backend="plotly"`.
        kind="strip": the layer-mean MDS at each sink's position on the sample's
        `avlens.viz.token_strip` (other positions blank; needs `sample_layout`). Returns a `View`."""
        if kind not in ("heatmap", "strip"):
            raise ValueError(f"kind must be 'heatmap' or 'strip'; got {kind!r}")
        if backend not in ("view", "plotly"):
            raise ValueError(f"backend must be 'view' (an avlens View) or 'plotly' (a plotly Figure); got {backend!r}")
        title = title or "modality dominance score per layer and sink (+1 video-attended, -1 audio-attended)"
        if kind == "strip":
            if self.sample_layout is None:
                raise ValueError("kind='strip' needs the sample's layout; this score was built without one")
            from avlens.viz import token_strip

            full = torch.full((self.sample_layout.n_pos,), float("nan"))
            full[torch.tensor(self.coords["sink"], dtype=torch.long)] = self.plain().float().mean(0).cpu()
            return token_strip(self.sample_layout, full, sample=0, title=title + ", mean over layers")
        if backend == "plotly":
            from avlens.viz.grid import grid_heatmap

            return grid_heatmap(self.plain(), self.coords["layer"], self.coords["sink"], "layer", "sink position",
                                col_groups=self.sink_groups, title=title, value_title="MDS", center=0.0)
        from avlens.viz.views import heatmap_view

        return heatmap_view(self.plain().float().cpu(), self.coords["layer"], self.coords["sink"], groups=self.sink_groups,
                            row_title="layer", col_title="sink position", value_label="MDS", title=title, center=0.0)


@torch.no_grad()
def modality_dominance(model, batch, sinks, eps: float = 1e-9, N: int = 2,
                       definition: str = "hidden") -> Union[ModalityDominance, list[ModalityDominance]]:
    """Modality dominance score of each sink at each layer, from the prefill attention:

        v = mean_{h, q in video, q > s} A[h, q, s],   a = mean_{h, q in audio, q > s} A[h, q, s]
        MDS = (v - a) / (v + a + eps)

    A side with no video (audio) queries after the sink scores 0, as in the official code (so MDS is
    +1 or -1 there, or 0 when both are missing). Computed inside the forward pass with streaming
    per-key sums; full attention patterns are never all kept.

    `sinks`: positions (one list for a single sample, or one list per sample), or a `SinkReport`
    (its global sinks with `N` under `definition`). Returns a `ModalityDominance`, a labelled
    `[n_layers, n_sinks]` tensor (a list of those for a batch). A sample without sinks is an error
    (there is nothing to score).
    """
    from avlens.analysis.sinks import SinkReport

    batch = model._to_batch(batch)
    b, p = batch.shape
    if isinstance(sinks, SinkReport):
        sinks = sinks.global_sinks(N, definition=definition)
    per_sample = [list(sinks)] if b == 1 and (not sinks or not isinstance(sinks[0], (list, tuple))) else [list(s) for s in sinks]
    if len(per_sample) != b:
        raise ValueError(f"sinks has {len(per_sample)} position lists for a batch of {b}; pass one list per sample")
    empty = [s for s, ps in enumerate(per_sample) if not ps]
    if empty:
        raise ValueError(f"sample(s) {empty} have no sinks to score; find some first (find_sinks(...).global_sinks(N), "
                         "or a lower tau / eps, or the attention definition)")
    lay = batch.layout
    for g in ("audio", "video"):
        if int(lay.counts(g).min()) == 0:
            s = int((lay.counts(g) == 0).nonzero()[0])
            raise ValueError(f"sample {s} has no {g} positions: the modality dominance score compares attention from "
                             "video and audio queries, so every sample needs both")
    for s, ps in enumerate(per_sample):
        bad = [q for q in ps if not 0 <= int(q) < p or not bool(batch.attention_mask[s, int(q)])]
        if bad:
            raise ValueError(f"sink positions {bad} of sample {s} are outside the sequence (length {p}) or at padding")
    collector = LaterQueryCollector({"video": lay.mask("video"), "audio": lay.mask("audio")}, model.cfg.n_layers, model.cfg.n_heads)
    blocks = attach_collector(model, collector)
    try:
        model.forward(batch, return_type=None)
    finally:
        detach_collector(blocks)
    v_all = collector.mean_from_later("video").mean(2).cpu()  # [b, l, k], head-averaged
    a_all = collector.mean_from_later("audio").mean(2).cpu()
    out = []
    for s, ps in enumerate(per_sample):
        idx = torch.tensor([int(q) for q in ps], dtype=torch.long)
        v, a = v_all[s][:, idx], a_all[s][:, idx]
        labels = lay.labels(s)
        out.append(ModalityDominance((v - a) / (v + a + eps), idx.tolist(), [labels[int(q)] for q in idx], lay.select(s)))
    return out[0] if b == 1 else out


def cross_modal_split(sinks: Sequence[int], mds: Union[Tensor, Sequence[float]], dominant: str) -> tuple[list[int], list[int]]:
    """Split the non-dominant modality's sinks into (cross-modal, unimodal) at the median of their
    layer-averaged MDS (METHODS.md section 3; a median split, not a threshold):

    * audio-dominant sample (`sinks` are the video sinks): sort by MDS descending; the first
      `n // 2` (most video-attended) are unimodal, the rest cross-modal;
    * video-dominant sample (the audio sinks): sort ascending; the first `n // 2` (most
      audio-attended) are unimodal, the rest cross-modal.

    Ties keep the input order (a stable sort, as Python's `sorted(..., reverse=True)`).
    """
    sinks = [int(s) for s in sinks]
    scores = mds.tolist() if isinstance(mds, Tensor) else list(mds)
    if len(scores) != len(sinks):
        raise ValueError(f"{len(sinks)} sinks but {len(scores)} MDS values; pass the layer-averaged MDS of each sink (mds.mean(0))")
    if dominant not in ("audio", "video"):
        raise ValueError(f"dominant must be 'audio' or 'video', got {dominant!r}")
    order = sorted(range(len(sinks)), key=lambda i: scores[i], reverse=dominant == "audio")
    mid = len(sinks) // 2
    uni = [sinks[i] for i in order[:mid]]
    cross = [sinks[i] for i in order[mid:]]
    return cross, uni


def classify_dominance(y_av, y_a, y_v) -> Optional[str]:
    """The unimodal-dominance rule: "audio" if `y_av == y_a != y_v`, "video" if `y_av == y_v != y_a`,
    else None (correctness is not required)."""
    if y_av == y_a and y_a != y_v:
        return "audio"
    if y_av == y_v and y_v != y_a:
        return "video"
    return None


def ie_clean(p_patched_clean: Union[float, Tensor], p_corrupt_clean: Union[float, Tensor]):
    """`IE_clean(S) = P_patched(o_clean) - P_corrupt(o_clean)` (x 100 for the paper's tables)."""
    return p_patched_clean - p_corrupt_clean


def ie_corrupt(p_corrupt_corrupt: Union[float, Tensor], p_patched_corrupt: Union[float, Tensor]):
    """`IE_corrupt(S) = P_corrupt(o_corrupt) - P_patched(o_corrupt)` (x 100 for the paper's tables)."""
    return p_corrupt_corrupt - p_patched_corrupt
