"""Path patching (Wang et al. 2022, *Interpretability in the Wild*; TransformerLens's "direct
path"): a sender component's effect on the output through one receiver's query, key or value
input only.

The base run (corrupted when denoising) is left as it is everywhere, except that one receiver
head's q (or k, or v) input becomes `base resid_pre + (sender's source output - sender's base
output)`. Every other component (and every other head's input) keeps its base value, so the
sender reaches the output only through that edge; the receiver's changed output then flows to
the logits normally. Senders: a head `(layer, head)` (its output `z_h W_O[h]`), a whole attention
layer `(layer, "attn")` or an MLP `(layer, "mlp")`. Receivers: every head of every later layer
(KV heads for k and v).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from avlens.interventions.corruptions import aligned_batches
from avlens.interventions.engine import make_reading, run_base, run_sweep
from avlens.interventions.grid import Cell, Grid, positions_mask
from avlens.interventions.patching import DIRECTIONS, ReplacementSweep, describe_cell, metrics_dict
from avlens.interventions.results import PatchResult, assemble

Sender = tuple[int, Union[int, str]]


def _sender_hook(model, sender: Sender) -> tuple[str, Optional[int]]:
    if not (isinstance(sender, (tuple, list)) and len(sender) == 2):
        raise ValueError(f"sender must be (layer, head), (layer, 'attn') or (layer, 'mlp'); got {sender!r}")
    layer, what = sender
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if not isinstance(layer, int) or not 0 <= layer < L - 1:
        raise ValueError(f"the sender's layer must be in 0..{L - 2} (receivers sit in later layers); got {layer!r}")
    if what == "attn":
        return f"blocks.{layer}.hook_attn_out", None
    if what == "mlp":
        return f"blocks.{layer}.hook_mlp_out", None
    if isinstance(what, int) and 0 <= what < H:
        return f"blocks.{layer}.attn.hook_z", what
    raise ValueError(f"sender {sender!r}: the second item must be a head index in 0..{H - 1}, 'attn' or 'mlp'")


def path_patch(
    model,
    clean,
    corrupted,
    metric,
    sender: Sender,
    receiver: str = "q",
    *,
    direction: str = "denoising",
    sender_positions=None,
    receiver_layers: Optional[Sequence[int]] = None,
    logits_at=None,
    batch_size: Optional[int] = None,
    memory_budget: Optional[int] = None,
    verify: bool = False,
    progress: Optional[bool] = None,
) -> PatchResult:
    """The metric with the sender's effect routed into each receiver head's `receiver` input
    ("q", "k" or "v") only: `[layer, head]` over the layers after the sender (or
    `receiver_layers`). `sender_positions` (a group name, positions or mask) restricts the
    sender's output positions whose change is sent (default: all)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
    if receiver not in ("q", "k", "v"):
        raise ValueError(f"receiver must be 'q', 'k' or 'v'; got {receiver!r}")
    cfg = model.cfg
    L = cfg.n_layers
    clean_b, corrupted_b = aligned_batches(model, clean, corrupted)
    base_b, source_b = (corrupted_b, clean_b) if direction == "denoising" else (clean_b, corrupted_b)
    sender_hook, head = _sender_hook(model, sender)
    rl = list(range(sender[0] + 1, L)) if receiver_layers is None else [int(l) for l in receiver_layers]
    if not rl or any(not sender[0] < l < L for l in rl):
        raise ValueError(f"receiver layers must come after the sender's layer {sender[0]} (and be < {L}); got {rl}")
    n_heads = cfg.n_heads if receiver == "q" else cfg.n_key_value_heads
    metrics = metrics_dict(metric)
    old_split = cfg.use_split_qkv_input
    cfg.use_split_qkv_input = True
    try:
        reading = make_reading(metrics, base_b, logits_at)
        base = run_base(model, base_b, reading, [sender_hook])
        base.bind(metrics)
        source = run_base(model, source_b, reading, [sender_hook], state=False)
        delta = source.acts[sender_hook] - base.acts[sender_hook]
        if head is not None:  # one head's output: z_h W_O[h] (the bias belongs to no head)
            delta = delta[:, :, head] @ model.blocks[sender[0]].attn.W_O[head]
        if sender_positions is not None:
            delta = delta * positions_mask(base_b.layout, sender_positions, "sender_positions")[..., None].to(delta.dtype)
        changed = (delta != 0).any(-1)  # [b, S]
        b, S = base_b.shape
        names, src, ref, diff = {}, {}, {}, {}
        for l in rl:
            names[l] = f"blocks.{l}.hook_{receiver}_input"
            ref[l] = base.resid_pre[l][:, :, None].expand(-1, -1, n_heads, -1)
            src[l] = (base.resid_pre[l] + delta)[:, :, None].expand(-1, -1, n_heads, -1)
            diff[l] = changed[:, :, None].expand(-1, -1, n_heads)
        eye = torch.eye(n_heads, dtype=torch.bool, device=delta.device)
        everywhere = torch.ones(b, S, dtype=torch.bool, device=delta.device)
        grid = Grid(dims=("layer", "head"), coords={"layer": rl, "head": list(range(n_heads))},
                    cells=[Cell(layers=(l,), mask=everywhere, heads=eye[h]) for l in rl for h in range(n_heads)])
        sweep = ReplacementSweep(names, src, ref, grid.cells, diff=diff)
        what = f"path from {sender} into {receiver}"
        values, stats = run_sweep(model, base, sweep.plans(), sweep.hooks, reading, batch_size=batch_size, memory_budget=memory_budget,
                                  verify=verify, describe=lambda i: describe_cell(grid, i, what), progress=progress, desc="path patching")
        source_scores = source.score(base.metrics)
    finally:
        cfg.use_split_qkv_input = old_split
    results = assemble(values, grid, base, source_scores, method=f"path patching {sender} -> {receiver}", site=f"hook_{receiver}_input",
                       direction=direction, stats=stats, extras={"sender": sender, "receiver": receiver})
    return results if isinstance(metric, dict) else next(iter(results.values()))
