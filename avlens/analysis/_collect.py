"""Streaming statistics gathered inside one forward pass (no full attention pattern is kept).

`LaterQueryCollector` plugs into the attention's summary-collector slot (the protocol of
`avlens.model.summary.GroupSummaryCollector`: `add(layer, pattern_chunk, q0)`, called with each
query chunk's softmaxed pattern `[batch, head, chunk, key]`). For query groups G it accumulates

    received[b, l, h, G, k] = sum_{q in G, q > k} A_l[b, h, q, k]

(strictly later queries only: a key's attention to itself is not counted), and
`later_counts[b, G, k] = #{q in G : q > k}`, so means over later queries follow.

`resid_pre_hooks` returns forward hooks on every layer's `hook_resid_pre` that hand the float32
residual to a callback and keep nothing themselves.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor


class LaterQueryCollector:
    #: float32 pattern elements per query chunk: 1 Mi (4 MB) keeps the statistics' working memory
    #: small beside the forward's own (benchmarks/bench_analysis.py)
    chunk_elements = 2**20

    def __init__(self, query_masks: Mapping[str, Tensor], n_layers: int, n_heads: int):
        self.groups = list(query_masks)
        self.qmask = torch.stack([query_masks[g] for g in self.groups], dim=-1).float()  # [b, p, G]
        b, p, G = self.qmask.shape
        self.received = torch.zeros(b, n_layers, n_heads, G, p, device=self.qmask.device)
        # number of group queries strictly after each key: suffix sums shifted by one
        suffix = self.qmask.flip(1).cumsum(1).flip(1)  # [b, p, G]: #{q >= k}
        self.later_counts = (suffix - self.qmask).permute(0, 2, 1)  # [b, G, p]: #{q > k}
        self.seen_layers: set[int] = set()

    def add(self, layer: int, pattern: Tensor, q0: int) -> None:
        pat = pattern.float()
        c, n_k = pat.shape[2], pat.shape[3]
        q = torch.arange(q0, q0 + c, device=pat.device)
        later = (q[:, None] > torch.arange(n_k, device=pat.device)[None, :]).float()  # [c, k]
        gq = self.qmask[:, q0 : q0 + c]  # [b, c, G]
        self.received[:, layer, :, :, :n_k] += torch.einsum("bhqk,qk,bqg->bhgk", pat, later, gq)
        self.seen_layers.add(layer)

    def mean_from_later(self, group: str) -> Tensor:
        """`[b, l, h, k]`: mean attention key k receives from the group's queries after it (0 where
        there are none)."""
        g = self.groups.index(group)
        cnt = self.later_counts[:, g]  # [b, k]
        return self.received[:, :, :, g] / cnt.clamp(min=1)[:, None, None, :]


def attach_collector(model, collector) -> list:
    """Install `collector` on every attention layer; returns the blocks (for `detach_collector`)."""
    blocks = list(model.blocks)
    if any(getattr(b.attn, "summary_collector", None) is not None for b in blocks):
        raise RuntimeError("another attention statistic is already being collected on this model")
    for b in blocks:
        b.attn.summary_collector = collector
    return blocks


def detach_collector(blocks) -> None:
    for b in blocks:
        b.attn.summary_collector = None


def rms_normalised(x: Tensor, eps: float = 1e-6) -> Tensor:
    """`x / sqrt(mean(x^2) + eps)` over the last axis, in float32 (no weight): the paper's sink
    normalisation."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def resid_pre_hooks(n_layers: int, fn: Callable[[int, Tensor], None]) -> list:
    """Forward hooks `(name, hook)` on `blocks.{l}.hook_resid_pre` calling `fn(l, resid_float32)`."""

    def make(layer: int):
        def hook(x, hook):  # noqa: ARG001 - TransformerLens hook signature
            fn(layer, x.detach().float())

        return hook

    return [(f"blocks.{l}.hook_resid_pre", make(l)) for l in range(n_layers)]
