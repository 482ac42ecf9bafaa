"""Brute-force references and shared inputs for the causal toolkit's tests (no tests here).

Each intervention is one full `model.run_with_hooks` on the whole batch: no no-op skipping, no
batching of patches, no start-at-layer, no key/value reuse, logits everywhere. This is the
TransformerLens `get_act_patch_*` algorithm, written out so that the tests compare
`avlens.patching` against an independent implementation.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

import hf_reference as R

#: the tiny thinker the toolkit's tests use (GQA: 4 query heads, 2 KV heads)
VARIANT = "gqa2_hd16"


def registered(model) -> list:
    """Hook points that hold a hook (none should after any intervention, failed or not)."""
    return [repr(hp) for hp in model.hook_points() if hp.fwd_hooks or hp.bwd_hooks]


def answer_prob():
    from avlens import patching

    return patching.AnswerProb(torch.tensor([5, 17]))


def audio_in_video_pair(model, config, zero: str, seed: int = 0, batch: int = 2):
    """A left-padded audio-in-video batch and its copy with one modality's raw input zeroed."""
    from avlens import patching

    clean = model.prepare(**R.make_inputs(config, "audio_in_video", batch=batch, seed=seed))
    return clean, patching.corruptions.zero_media(model, clean, zero)


def four_layer_model(seed: int = 3):
    """A private 4-layer version of VARIANT (for layer windows): (hf, HookedAVTransformer)."""
    import avlens

    hf4 = R.make_hf_thinker(dict(R.get_variant(VARIANT), name=VARIANT + "_l4", num_hidden_layers=4), seed=seed)
    return hf4, avlens.HookedAVTransformer.from_hf(hf4)


def last_position(batch) -> Tensor:
    """Index of each sample's last real token (left or right padding)."""
    real = batch.attention_mask.bool()
    pos = torch.arange(real.shape[1]).expand_as(real)
    return torch.where(real, pos, torch.full_like(pos, -1)).max(-1).values


def at_last(batch, logits: Tensor) -> Tensor:
    """`[b, 1, V]`: the logits at each sample's last real token."""
    return logits[torch.arange(logits.shape[0]), last_position(batch)][:, None]


@torch.no_grad()
def run_metric(model, batch, metric, hooks=()) -> Tensor:
    logits = model.run_with_hooks(batch, fwd_hooks=list(hooks))
    return metric(at_last(batch, logits), batch)


def replacement_hook(src: Tensor, mask: Tensor, head: Optional[int]):
    """Write `src` into the activation where `mask` `[b, S]` holds (in one head if given)."""

    def hook(x, hook):
        x = x.clone()
        if head is None:
            x[mask] = src[mask]
        else:
            x[:, :, head][mask] = src[:, :, head][mask]
        return x

    return hook


@torch.no_grad()
def patch_cells(model, base, source, metric, hook_name: Callable[[int], str], cells: Sequence[tuple]) -> Tensor:
    """`[n_cells, b]`: the metric with, for each cell `(layers, mask [b, S], head or None)`, the
    source run's activation written into the base run at every layer of the cell."""
    layers = sorted({l for c in cells for l in c[0]})
    _, cache = model.run_with_cache(source, names_filter=[hook_name(l) for l in layers])
    out = []
    for cell_layers, mask, head in cells:
        hooks = [(hook_name(l), replacement_hook(cache[hook_name(l)], mask, head)) for l in cell_layers]
        out.append(run_metric(model, base, metric, hooks))
    return torch.stack(out)


def column(batch, p: int) -> Tensor:
    m = torch.zeros(batch.shape, dtype=torch.bool)
    m[:, p] = True
    return m


def everywhere(batch) -> Tensor:
    return torch.ones(batch.shape, dtype=torch.bool)
