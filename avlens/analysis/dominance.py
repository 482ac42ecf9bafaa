"""Modality dominance of sinks, the cross-modal / unimodal split, and the unimodal-dominance rules
(METHODS.md sections 2-5).

    mds = modality_dominance(model, batch, sinks)        # [n_layers, n_sinks]
    cross, uni = cross_modal_split(sinks, mds.mean(0), dominant="audio")
    classify_dominance(y_av, y_a, y_v)                     # "audio" / "video" / None
    ie_clean(p_patched, p_corrupt), ie_corrupt(p_corrupt, p_patched)
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from avlens.analysis._collect import LaterQueryCollector, attach_collector, detach_collector

__all__ = ["modality_dominance", "cross_modal_split", "classify_dominance", "ie_clean", "ie_corrupt"]


@torch.no_grad()
def modality_dominance(model, batch, sinks, eps: float = 1e-9, N: int = 2, definition: str = "hidden") -> Union[Tensor, list[Tensor]]:
    """Modality dominance score of each sink at each layer, from the prefill attention:

        v = mean_{h, q in video, q > s} A[h, q, s],   a = mean_{h, q in audio, q > s} A[h, q, s]
        MDS = (v - a) / (v + a + eps)

    A side with no video (audio) queries after the sink scores 0, as in the official code (so MDS is
    +1 or -1 there, or 0 when both are missing). Computed inside the forward pass with streaming
    per-key sums; full attention patterns are never all kept.

    `sinks`: positions (one list for a single sample, or one list per sample), or a `SinkReport`
    (its global sinks with `N` under `definition`). Returns `[n_layers, n_sinks]` (a list of those
    for a batch). A sample without sinks is an error (there is nothing to score).
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
        out.append((v - a) / (v + a + eps))
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
