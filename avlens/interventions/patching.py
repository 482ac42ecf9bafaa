"""Activation patching over layers, positions, token groups, token sets and heads, batched.

    from avlens import patching
    result = patching.activation_patch(model, clean, corrupted, patching.LogitDiff(a, b))
    result.values            # [n_layers, n_positions]

Denoising (the default) runs the corrupted input and writes the clean run's activation into one
cell (a site at some layers, positions and heads); noising runs the clean input and writes the
corrupted activation. The value of a cell is the metric on that patched run. Every cell equals
a TransformerLens-style `run_with_hooks` of one patch, computed by the engine
(`avlens.interventions.engine`) with no-op cells skipped, cells batched, and only the layers and
positions a patch can change recomputed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from avlens.batch import AVBatch
from avlens.interventions.corruptions import aligned_batches
from avlens.interventions.engine import Plan, first_true, make_reading, replace_hook, run_base, run_sweep
from avlens.interventions.grid import Cell, Grid, build_grid, normalize_over
from avlens.interventions.metrics import metric_name
from avlens.interventions.results import PatchResult, assemble
from avlens.interventions.sites import Site, resolve_site

DIRECTIONS = ("denoising", "noising")


class ReplacementSweep:
    """Cells that replace a site's base-run values by source-run values.

    `source[l]`, `base[l]`: the activation at layer l in the two runs, `[b, S, ...]`, or
    `[b, S, heads, ...]` for per-head activations (the cells' `heads` select along dim 2).
    `diff[l]` (`[b, S]` or `[b, S, heads]`, where the two differ) may be given when cheaper to
    know than to compute.
    """

    def __init__(self, hook_names: dict[int, str], source: dict[int, Tensor], base: dict[int, Tensor], cells: Sequence[Cell],
                 diff: Optional[dict[int, Tensor]] = None):
        self.hook_names = hook_names
        self.source = source
        self.cells = cells
        if diff is None:
            diff = {l: (source[l] != base[l]).flatten(3 if source[l].ndim >= 4 else 2).any(-1) for l in source}
        self.diff = diff

    def _mask(self, cell: Cell, layer: int) -> Tensor:
        m = cell.mask
        if self.diff[layer].ndim == 3:
            h = self.diff[layer].shape[2]
            heads = cell.heads if cell.heads is not None else torch.ones(h, dtype=torch.bool, device=m.device)
            m = m[..., None] & heads
        return m

    def plan(self, cell: Cell) -> Plan:
        """(first layer, first position) where the cell changes the run, or None (a no-op)."""
        firsts = {}
        for l in cell.layers:
            p = first_true(self.diff[l] & self._mask(cell, l))
            if p is not None:
                firsts[l] = p
        if not firsts:
            return None
        start = min(firsts)
        return start, min(p for l, p in firsts.items() if l >= start)

    def plans(self) -> list[Plan]:
        return [self.plan(c) for c in self.cells]

    def hooks(self, ids: Sequence[int], start: int, p0: int):
        cells = [self.cells[i] for i in ids]
        out = []
        for l in sorted({l for c in cells for l in c.layers if l >= start}):
            zero = torch.zeros_like(self._mask(cells[0], l))
            mask = torch.stack([(self._mask(c, l) if l in c.layers else zero)[:, p0:] for c in cells])
            if bool(mask.any()):
                out.append((self.hook_names[l], replace_hook(self.source[l][:, p0:], mask, len(cells))))
        return out


def describe_cell(grid: Grid, i: int, site: Optional[str] = None) -> str:
    """`'layer 3, position 17 (resid_pre)'` for cell i of a grid."""
    idx = []
    for n in reversed(grid.shape):
        idx.append(i % n)
        i //= n
    parts = [f"{d} {grid.coords[d][j]}" for d, j in zip(grid.dims, reversed(idx))]
    return ", ".join(parts or ["the patch"]) + (f" ({site})" if site else "")


@contextlib.contextmanager
def kv_heads_expanded(model, expand: bool):
    """With `expand`, K/V hooks carry one head per query head (GQA expanded) for the duration."""
    old = getattr(model.cfg, "ungroup_grouped_query_attention", False)
    model.cfg.ungroup_grouped_query_attention = bool(expand) or old
    try:
        yield
    finally:
        model.cfg.ungroup_grouped_query_attention = old


def metrics_dict(metric) -> dict[str, Any]:
    if isinstance(metric, dict):
        if not metric:
            raise ValueError("the metric dict is empty")
        for k, m in metric.items():
            if not callable(m):
                raise TypeError(f"metric {k!r} is not callable")
        return dict(metric)
    if not callable(metric):
        raise TypeError(
            f"metric must be callable, metric(logits, batch) -> Tensor[batch] (or metric(logits) -> scalar); "
            f"got {type(metric).__name__}"
        )
    return {metric_name(metric): metric}


def site_heads(model, site: Site) -> Optional[int]:
    c = model.cfg
    if not site.has_heads:
        return None
    if site.kv and not getattr(c, "ungroup_grouped_query_attention", False):
        return c.n_key_value_heads
    return c.n_heads


@dataclass
class SweepSetup:
    """The batches, the grid and the hook names of a patching sweep."""

    base: AVBatch  # the run patches go into (corrupted when denoising)
    source: AVBatch  # the run patched values come from
    site: Site
    grid: Grid
    names: dict[int, str]  # layer -> the site's hook there


def setup_sweep(model, clean, corrupted, site: str, over, direction: str, expand_kv: bool, axes: dict) -> SweepSetup:
    """Check the arguments shared by `activation_patch` and `attribution_patch` and build the
    grid (call inside `kv_heads_expanded(model, expand_kv)`: the head count depends on it)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
    L = model.cfg.n_layers
    clean_b, corrupted_b = aligned_batches(model, clean, corrupted)
    site_ = resolve_site(site, L)
    axes = dict(axes)
    if site_.layer is not None:
        if axes.get("layers") is not None and list(axes["layers"]) != [site_.layer]:
            raise ValueError(f"site {site!r} fixes the layer to {site_.layer}; drop layers= or name the site without its layer")
        axes["layers"] = [site_.layer]
    dims = normalize_over(over)
    if expand_kv and not site_.kv:
        raise ValueError(f"expand_kv applies to the k and v sites (KV heads); site {site!r} has none")
    base_b, source_b = (corrupted_b, clean_b) if direction == "denoising" else (clean_b, corrupted_b)
    grid = build_grid(dims, base_b.layout, L, site_heads(model, site_), site_name=site, **axes)
    names = {l: site_.hook(l) for l in sorted({l for c in grid.cells for l in c.layers})}
    return SweepSetup(base_b, source_b, site_, grid, names)


def activation_patch(
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
    windows: Union[int, Sequence[Sequence[int]], None] = None,
    heads: Optional[Sequence[int]] = None,
    expand_kv: bool = False,
    answer_steps: int = 1,
    logits_at=None,
    batch_size: Optional[int] = None,
    memory_budget: Optional[int] = None,
    verify: bool = False,
    progress: Optional[bool] = None,
) -> Union[PatchResult, dict[str, PatchResult]]:
    """Patch `site` over the cells of `over`; one metric value per cell.

    Args:
        model: a `HookedAVTransformer`.
        clean, corrupted: `AVBatch`es (or token tensors) with the same token groups at the same
            positions (contents may differ). A corrupted batch holding k noised copies of each
            clean sample (`corruptions.gaussian_noise`) is matched by tiling the clean one.
        metric: `metric(logits, batch) -> Tensor[batch]` (see `avlens.patching.metrics`), a
            TransformerLens-style `metric(logits) -> scalar`, or a dict of metrics (then a dict
            of results is returned).
        site: `resid_pre`, `resid_mid`, `resid_post`, `attn_out`, `mlp_out`, `attn_in` (the
            normalised attention input), `mlp_in`, `q`, `k`, `v`, `z`, or a full hook name.
        over: the axes of the grid: `layer` or `window`; `position`, `group` or `token_set`;
            `head` (see `avlens.interventions.grid`). The result's axes come in this order.
        direction: `"denoising"` (clean values into the corrupted run) or `"noising"`.
        layers: the layer axis's layers, or (without a layer axis) the layers patched together
            in every cell; default all.
        positions, groups, token_sets, windows, heads: the values of those axes (defaults:
            every position, the non-empty groups of the layout, every head; token sets map a
            name to a group name, positions or a `[batch, pos]` mask; windows are a size, for
            windows centred on each layer, or a list of layer lists).
        expand_kv: at `k` / `v`, one head per query head instead of the KV heads.
        answer_steps: >1 decodes greedily that many steps after the (patched) prefill and
            hands the metric the logits of every step (`AnswerProb` maximises over them).
        logits_at: where the metric reads (`"last"`, `"all"` or positions), overriding the
            metric's own `logits_at` (plain callables read every position by default).
        batch_size: at most this many patches per forward (default: by `memory_budget`,
            in bytes; 1 GiB on the CPU, half the free memory on a GPU).
        verify: raise `NoOpError` for any cell that cannot change, or did not change, the output.
        progress: show a progress bar (default: for sweeps of more than 20 forward passes).
    """
    if answer_steps < 1:
        raise ValueError(f"answer_steps must be >= 1, got {answer_steps}")
    metrics = metrics_dict(metric)
    axes = dict(layers=layers, positions=positions, groups=groups, token_sets=token_sets, windows=windows, heads=heads)
    with kv_heads_expanded(model, expand_kv):
        job = setup_sweep(model, clean, corrupted, site, over, direction, expand_kv, axes)
        grid, names, base_b, source_b = job.grid, job.names, job.base, job.source
        reading = make_reading(metrics, base_b, logits_at, answer_steps)
        base = run_base(model, base_b, reading, list(names.values()), answer_steps)
        base.bind(metrics)
        source = run_base(model, source_b, reading, list(names.values()), answer_steps, state=False)
        sweep = ReplacementSweep(names, {l: source.acts[n] for l, n in names.items()}, {l: base.acts[n] for l, n in names.items()}, grid.cells)
        values, stats = run_sweep(
            model, base, sweep.plans(), sweep.hooks, reading, answer_steps=answer_steps, batch_size=batch_size,
            memory_budget=memory_budget, verify=verify, describe=lambda i: describe_cell(grid, i, site), progress=progress,
            desc=f"patching {site}",
        )
    results = assemble(values, grid, base, source.score(base.metrics), method="activation patching", site=site,
                       direction=direction, position_groups=base_b.layout.labels(0), layout=base_b.layout.select(0), stats=stats)
    return results if isinstance(metric, dict) else next(iter(results.values()))
