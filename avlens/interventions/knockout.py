"""Attention knockout (Geva et al. 2023; Zhang et al., CVPR 2025, *Cross-modal Information Flow in
Multimodal Large Language Models*): block the attention edges from a set of key positions to a
set of query positions in a window of layers, and measure the relative change of the answer
probability, `(p_new - p_base) / p_base x 100`.

Blocking adds `-inf` to those edges' attention scores before the softmax (`attn.hook_attn_scores`),
so each query row renormalises over the keys it still sees. A query's edge to itself is never
blocked, so no row is ever fully masked (a fully masked row would be NaN); edges that causal
attention or padding already removes are not counted. The default window is 9 layers around each
centre layer, `[max(0, l - 4), min(L, l + 5))`, swept over every centre.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from avlens.batch import AVBatch
from avlens.interventions.engine import make_reading, run_base, run_sweep
from avlens.interventions.grid import Grid, layer_windows, positions_mask
from avlens.interventions.patching import describe_cell, metrics_dict
from avlens.interventions.results import PatchResult


def blocked_edges(batch: AVBatch, keys, queries) -> Tensor:
    """Bool `[b, query, key]`: the attention edges a knockout removes, from the `keys` positions
    to the `queries` positions (group names, positions or masks), among those causal attention
    allows between real tokens, never a query's edge to itself."""
    lay = batch.layout
    K = positions_mask(lay, keys, "keys")
    Q = positions_mask(lay, queries, "queries")
    S = lay.n_pos
    q = torch.arange(S, device=K.device)
    causal_not_self = q[None, :] < q[:, None]  # [query, key]: key strictly before the query
    real = ~lay.mask("pad")
    return Q[:, :, None] & K[:, None, :] & causal_not_self[None] & real[:, :, None] & real[:, None, :]


def attention_knockout(
    model,
    batch,
    metric,
    keys,
    queries,
    *,
    window: int = 9,
    centers: Optional[Sequence[int]] = None,
    layers: Optional[Sequence[int]] = None,
    logits_at=None,
    batch_size: Optional[int] = None,
    memory_budget: Optional[int] = None,
    verify: bool = False,
    progress: Optional[bool] = None,
) -> PatchResult:
    """Knock out the edges from `keys` to `queries` (group names such as `"video"` / `"audio"` /
    `"last"`, positions, or `[batch, pos]` masks) in a window of `window` layers around each
    centre layer (default: every layer), or once in `layers` (e.g. `range(n_layers)`).

    `result.values` is the relative change of the metric (usually `AnswerProb`), per sample
    `(p_new - p_base) / p_base x 100`, averaged; `result.extras["p_new"]` the knocked-out
    metric per cell and sample, `result.base` the unmodified one.
    """
    batch = model._to_batch(batch)
    L = model.cfg.n_layers
    blocked = blocked_edges(batch, keys, queries)
    if layers is not None:
        wins = [tuple(sorted({int(l) for l in layers}))]
        if not wins[0] or any(not 0 <= l < L for l in wins[0]):
            raise ValueError(f"layers must be a non-empty list of layers in 0..{L - 1}; got {list(layers)}")
        grid_dims, coords = ("window",), {"window": [f"{wins[0][0]}-{wins[0][-1]}"]}
    else:
        centres = list(range(L)) if centers is None else [int(c) for c in centers]
        wins = layer_windows(L, window, centres)
        grid_dims, coords = ("layer",), {"layer": centres}
    metrics = metrics_dict(metric)
    if len(metrics) != 1:
        raise ValueError("attention_knockout takes one metric")
    reading = make_reading(metrics, batch, logits_at)
    base = run_base(model, batch, reading)
    base.bind(metrics)
    rows = blocked.any(-1).any(0).nonzero()
    p0 = int(rows[0]) if len(rows) else None
    plans = [None if p0 is None else (w[0], p0) for w in wins]
    grid = Grid(dims=grid_dims, coords=coords, cells=[])
    what = f"knockout {keys!r} -> {queries!r}"

    def hooks(ids, start, p0):
        n = len(ids)
        out = []
        for l in sorted({l for i in ids for l in wins[i]}):
            m = torch.stack([blocked[:, p0:] if l in wins[i] else torch.zeros_like(blocked[:, p0:]) for i in ids])  # [n, b, q, k]
            out.append((f"blocks.{l}.attn.hook_attn_scores", _knockout_hook(m, n)))
        return out

    values, stats = run_sweep(model, base, plans, hooks, reading, batch_size=batch_size, memory_budget=memory_budget, eager=True,
                              verify=verify, describe=lambda i: describe_cell(grid, i, what) + f" (layers {list(wins[i])})",
                              progress=progress, desc="attention knockout")
    (name, p_new), = values.items()
    p_base = base.scores[name].cpu()
    rel = (p_new - p_base) / p_base * 100
    per = rel if rel.ndim == 2 else None
    # `base` is the unpatched run in the values' own unit (a 0 % change), so effects (`top(by="abs")`,
    # diverging colours) are measured from it; the unpatched metric itself is extras["p_base"]
    return PatchResult(
        values=rel.mean(-1) if per is not None else rel, dims=grid_dims, coords=coords, per_sample=per,
        base=torch.zeros_like(p_base),
        method=f"attention knockout {keys} -> {queries}", site="attn.hook_attn_scores", metric=f"relative change of {name} (%)",
        position_groups=batch.layout.labels(0), stats=stats,
        extras={"p_new": p_new, "p_base": p_base, "windows": wins, "n_blocked_edges": int(blocked.sum())},
    )


def _knockout_hook(mask: Tensor, n: int):
    def hook(scores, hook):
        sv = scores.view(n, -1, *scores.shape[1:])  # [n, b, h, q, k]
        return sv.masked_fill(mask[:, :, None], float("-inf")).view_as(scores)

    return hook
