"""Attribution patching (Nanda 2023, *Attribution Patching: Activation Patching At Industrial
Scale*; Syed et al. 2023): the first-order estimate of every cell of an activation-patching grid
from one forward and one backward pass on the base run,

    metric(patched) ~ metric(base) + sum_{cell} (a_source - a_base) . d metric / d a |_base

where the sum runs over the cell's layers, positions and heads. It is exact where the metric is
linear in the patched activation (e.g. `mlp_out` of the last layer with a metric linear in the
final residual stream, `ResidualDirection`), and an approximation elsewhere; check it against
`activation_patch` on a sample before trusting a grid.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from avlens.interventions.engine import BaseRun, SweepStats, _final_resid_hook, _gather, make_reading, run_base
from avlens.interventions.metrics import takes_batch
from avlens.interventions.patching import kv_heads_expanded, metrics_dict, setup_sweep
from avlens.interventions.results import assemble


def attribution_patch(
    model,
    clean,
    corrupted,
    metric,
    site: str = "resid_pre",
    over: Union[str, Sequence[str]] = ("layer", "position"),
    *,
    direction: str = "denoising",
    layers: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    groups: Optional[Sequence[str]] = None,
    token_sets: Optional[dict] = None,
    windows=None,
    heads: Optional[Sequence[int]] = None,
    expand_kv: bool = False,
    logits_at=None,
):
    """Estimates of `activation_patch(...)`'s grid (same arguments and axes) from gradients:
    `result.values` estimates the patched metric; `result.extras["attribution"]` holds the
    estimated change per cell and sample."""
    t0 = time.perf_counter()
    metrics = metrics_dict(metric)
    axes = dict(layers=layers, positions=positions, groups=groups, token_sets=token_sets, windows=windows, heads=heads)
    with kv_heads_expanded(model, expand_kv):
        job = setup_sweep(model, clean, corrupted, site, over, direction, expand_kv, axes)
        grid, names, base_b, source_b = job.grid, job.names, job.base, job.source
        used = list(names)
        reading = make_reading(metrics, base_b, logits_at)
        source = run_base(model, source_b, reading, list(names.values()), state=False)
        acts, read = _forward_with_graph(model, base_b, reading, list(names.values()))
    base = BaseRun(batch=base_b, resid_pre=[], keys=[], values=[], acts={}, read=read.detach())
    base.bind(metrics)
    b = base_b.batch_size
    values, attributions = {}, {}
    for k, m in base.metrics.items():
        out = m(read, base_b) if takes_batch(m) else m(read)
        grads = torch.autograd.grad(out.sum(), [acts[names[l]] for l in used], retain_graph=True, allow_unused=True)
        per_layer = {}
        for l, g in zip(used, grads):
            delta = source.acts[names[l]] - acts[names[l]].detach()
            a = torch.zeros_like(delta) if g is None else delta * g
            per_layer[l] = a.flatten(3 if a.ndim >= 4 else 2).sum(-1)  # [b, S] or [b, S, heads]
        cells = torch.stack([_cell_sum(per_layer, c) for c in grid.cells])  # [n_cells, b]
        attributions[k] = cells
        score = base.scores[k].cpu()
        values[k] = score + (cells.cpu() if score.ndim == 1 else cells.cpu().sum(-1))
    stats = SweepStats(n_cells=len(grid.cells), n_forwards=2, seconds=time.perf_counter() - t0)
    results = assemble(values, grid, base, source.score(base.metrics), method="attribution patching", site=site,
                       direction=direction, position_groups=base_b.layout.labels(0), layout=base_b.layout.select(0), stats=stats)
    for k, r in results.items():
        r.extras["attribution"] = attributions[k].reshape(*grid.shape, b).cpu()
    return results if isinstance(metric, dict) else next(iter(results.values()))


def _cell_sum(per_layer: dict[int, Tensor], cell) -> Tensor:
    """Sum of a cell's attributions over its layers, positions and heads: `[b]`."""
    total = 0
    for l in cell.layers:
        a = per_layer[l]
        m = cell.mask.to(a.dtype)
        if a.ndim == 3:
            heads = cell.heads if cell.heads is not None else torch.ones(a.shape[2], dtype=torch.bool, device=a.device)
            a = (a * heads.to(a.dtype)).sum(-1)
        total = total + (a * m).sum(-1)
    return total.detach()


def _forward_with_graph(model, batch, reading, names: list[str]) -> tuple[dict[str, Tensor], Tensor]:
    """One forward with autograd on, keeping the activations at `names` (graph nodes) and what
    the metric reads. The embedding is made a leaf that requires grad, so this works whether or
    not the weights do; no weight gradient is accumulated (`torch.autograd.grad` asks only for
    the activations')."""
    store: dict[str, Tensor] = {}

    def leaf(x, hook):
        return x.detach().requires_grad_(True)

    def keep(x, hook):
        store[hook.name] = x

    hooks = [("hook_embed", leaf)] + [(n, keep) for n in names]
    if reading.what == "resid":
        hooks.append((_final_resid_hook(model), keep))
    kw = {}
    if reading.what == "resid":
        kw["return_type"] = None
    elif not reading.all:
        kw["logits_at"] = reading.positions
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        out = model.forward(batch, **kw)
    if reading.what == "resid":
        r = store[_final_resid_hook(model)]
        out = r if reading.all else _gather(r, reading.positions)
    return store, out
