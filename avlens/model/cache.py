"""`AVActivationCache`: TransformerLens's `ActivationCache` for models whose residual stream gets
additive terms between blocks.

Qwen3-Omni's DeepStack adds visual features to the residual stream after the first decoder
blocks, so there `resid_pre[l + 1] = resid_post[l] + deepstack[l]`, not `resid_post[l]`.
TransformerLens's `decompose_resid` stacks only `embed`, `attn_out` and `mlp_out`, and its sum
would then miss the DeepStack terms. This subclass adds every cached
`blocks.{l}.hook_deepstack` after layer l's `mlp_out` (label `"{l}_deepstack"`), so the components
sum to the residual stream again.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import torch
from transformer_lens import ActivationCache
from transformer_lens.utilities import Slice


class AVActivationCache(ActivationCache):
    """An `ActivationCache` whose `decompose_resid` includes between-block additive terms
    (`blocks.{l}.hook_deepstack`)."""

    between_block_hooks: tuple[str, ...] = ("hook_deepstack",)

    def decompose_resid(
        self,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        mode: Literal["all", "mlp", "attn"] = "all",
        apply_ln: bool = False,
        pos_slice=None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ):
        """TransformerLens's `decompose_resid` (same arguments and result), plus one component per
        cached between-block term of the layers before `layer` (with `mode="all"`): the stack sums
        to `resid_pre[layer]` (or `resid_mid[layer]` with `mlp_input`), DeepStack included. A
        DeepStack term that was not cached is an error, not a silent omission."""
        if not isinstance(pos_slice, Slice):
            pos_slice = Slice(pos_slice)
        n_layers = self.model.cfg.n_layers
        if layer is None or layer == -1:
            layer = n_layers
        incl_attn = mode != "mlp"
        incl_mlp = mode != "attn" and not self.model.cfg.attn_only
        comps, labels = [], []
        if incl_embeds and "hook_embed" in self.cache_dict:
            comps.append(self["hook_embed"])
            labels.append("embed")
        for l in range(layer):
            if incl_attn:
                comps.append(self[("attn_out", l)])
                labels.append(f"{l}_attn_out")
            if incl_mlp:
                comps.append(self[("mlp_out", l)])
                labels.append(f"{l}_mlp_out")
            if mode == "all":
                for hook in self.between_block_hooks:
                    name = f"blocks.{l}.{hook}"
                    if name in self.cache_dict:
                        comps.append(self[name])
                        labels.append(f"{l}_{hook[len('hook_'):]}")
                    elif self._fires(l, hook):
                        raise KeyError(
                            f"{name} adds to the residual stream but is not in the cache; cache it "
                            "(names_filter=None or include it) to decompose the residual stream."
                        )
        if mlp_input and incl_attn:
            comps.append(self[("attn_out", layer)])
            labels.append(f"{layer}_attn_out")
        comps = [pos_slice.apply(c, dim=-2) for c in comps]
        stack = torch.stack(comps, dim=0)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        return (stack, labels) if return_labels else stack

    def _fires(self, layer: int, hook: str) -> bool:
        """Whether the model adds `blocks.{layer}.{hook}` in the run this cache comes from."""
        fired = getattr(self.model, "between_block_terms_fired", None)
        return bool(fired and f"blocks.{layer}.{hook}" in fired)


def wrap_cache(cache: Union[ActivationCache, dict], model, has_batch_dim: bool = True) -> AVActivationCache:
    """An `AVActivationCache` over the same tensors as `cache`."""
    cache_dict = cache.cache_dict if isinstance(cache, ActivationCache) else cache
    return AVActivationCache(cache_dict, model, has_batch_dim=has_batch_dim)
