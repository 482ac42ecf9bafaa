"""Attention mass between token groups, accumulated inside the forward pass.

For every layer l, head h, query group Q and key group K:

    mass[b, l, h, Q, K] = mean_{q in Q} sum_{k in K} A_l[b, h, q, k]

i.e. the share of a Q query's attention that goes to K (rows over the partition groups sum to 1).
Optionally also the attention each key position receives from each query group,

    received[b, l, h, Q, k] = sum_{q in Q} A_l[b, h, q, k]     (with query_counts to take means),

which sink and modality-dominance analyses need. Both are accumulated one query chunk at a time
while the model runs, so no full `[b, h, p, p]` pattern is ever kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from avlens.layout import BatchLayout


class GroupSummaryCollector:
    def __init__(self, layout: BatchLayout, groups: Sequence[str], n_layers: int, n_heads: int, per_key: bool):
        self.groups = list(groups)
        masks = torch.stack([layout.mask(g) for g in self.groups], dim=-1).float()  # [b, p, G]
        self.gmask = masks
        b, p, G = masks.shape
        self.mass = torch.zeros(b, n_layers, n_heads, G, G, device=masks.device)
        self.received = torch.zeros(b, n_layers, n_heads, G, p, device=masks.device) if per_key else None
        self.seen_layers: set[int] = set()

    def add(self, layer: int, pattern: Tensor, q0: int) -> None:
        """Accumulate a pattern chunk `[b, h, c, k]` whose first query is position q0."""
        pat = pattern.float()
        c, n_k = pat.shape[2], pat.shape[3]
        gq = self.gmask[:, q0 : q0 + c]  # [b, c, G]
        gk = self.gmask[:, :n_k]  # [b, k, G]
        to_group = torch.einsum("bhqk,bkg->bhqg", pat, gk)
        self.mass[:, layer] += torch.einsum("bhqg,bqf->bhfg", to_group, gq)
        if self.received is not None:
            self.received[:, layer, :, :, :n_k] += torch.einsum("bhqk,bqf->bhfk", pat, gq)
        self.seen_layers.add(layer)


@dataclass
class AttentionGroupSummary:
    """Attention mass from each query group to each key group, per layer and head.

    Attributes:
        groups: group names indexing the last two axes of `mass`.
        mass: `[batch, layer, head, query_group, key_group]`: mean over the query group's
            positions of the attention mass on the key group.
        query_counts: `[batch, group]` positions per group.
        received: optional `[batch, layer, head, query_group, key_pos]`: summed attention each key
            position receives from each query group (divide by `query_counts` for means).
    """

    groups: list[str]
    mass: Tensor
    query_counts: Tensor
    received: Optional[Tensor] = None

    @property
    def values(self) -> Tensor:
        """`[layer, head, query_group, key_group]`, averaged over the samples of the batch."""
        return self.mass.mean(0)

    def __getitem__(self, key: tuple[str, str]) -> Tensor:
        """`summary["text", "audio"]` -> `[batch, layer, head]`."""
        q, k = key
        return self.mass[:, :, :, self._index(q), self._index(k)]

    def _index(self, g: str) -> int:
        if g not in self.groups:
            raise KeyError(f"group {g!r} is not in this summary; it has {self.groups}")
        return self.groups.index(g)

    def to_frame(self):
        """A long pandas DataFrame (sample, layer, head, query_group, key_group, mass)."""
        import pandas as pd

        b, L, H, G, _ = self.mass.shape
        idx = torch.cartesian_prod(torch.arange(b), torch.arange(L), torch.arange(H), torch.arange(G), torch.arange(G))
        vals = self.mass.reshape(-1).cpu()
        return pd.DataFrame(
            {
                "sample": idx[:, 0].numpy(),
                "layer": idx[:, 1].numpy(),
                "head": idx[:, 2].numpy(),
                "query_group": [self.groups[i] for i in idx[:, 3].tolist()],
                "key_group": [self.groups[i] for i in idx[:, 4].tolist()],
                "mass": vals.numpy(),
            }
        )

    def __repr__(self) -> str:
        """Shape; the mean mass matrix (query group rows, key group columns, layers, heads and
        samples averaged) over the groups present; then, for each flow into a media group, the
        three heads carrying the most of it."""
        b, L, H, G, _ = self.mass.shape
        v = self.values.mean((0, 1))  # [G, G]
        lines = [f"AttentionGroupSummary(batch={b}, layers={L}, heads={H}) mean mass, query group -> key group:"]
        present = [i for i, _ in enumerate(self.groups) if int(self.query_counts[:, i].sum()) > 0]
        lines.append("          " + "".join(f"{self.groups[j]:>9}" for j in present))
        for i in present:
            lines.append(f"{self.groups[i]:>9} " + "".join(f"{float(v[i, j]):9.3f}" for j in present))
        per_head = self.values  # [L, H, G, G]
        flows = [(i, j) for j in present if self.groups[j] in ("audio", "video", "image")
                 for i in present if i != j and self.groups[i] not in ("pad",)]
        if flows and L * H > 1:
            lines.append("  heads with the most mass into media (layer.head mass):")
            for i, j in flows[:8]:
                m = per_head[:, :, i, j].flatten()
                top = m.argsort(descending=True)[:3].tolist()
                lines.append(f"    {self.groups[i]} -> {self.groups[j]}: "
                             + ", ".join(f"L{t // H}H{t % H} {float(m[t]):.3f}" for t in top))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The group-flow view (`avlens.viz.group_flow_view`): per layer x head, the attention
        mass from each query group to each key group, as a compact standalone fragment."""
        from avlens.viz import group_flow_view

        return group_flow_view(self)._repr_html_()
