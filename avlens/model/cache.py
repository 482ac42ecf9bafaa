"""`AVActivationCache`: TransformerLens's `ActivationCache` for models whose residual stream gets
additive terms between blocks.

Qwen3-Omni's DeepStack adds visual features to the residual stream after the first decoder
blocks, so there `resid_pre[l + 1] = resid_post[l] + deepstack[l]`, not `resid_post[l]`.
TransformerLens's `decompose_resid` stacks only `embed`, `attn_out` and `mlp_out`, and its sum
would then miss the DeepStack terms. This subclass adds every cached
`blocks.{l}.hook_deepstack` after layer l's `mlp_out` (label `"{l}_deepstack"`), so the components
sum to the residual stream again. `get_full_resid_decomposition` likewise appends one row per
DeepStack term (labels `"{l}_deepstack"`, after TransformerLens's rows) so its rows sum to the
residual stream.

Which between-block terms the run added is read from the model when the cache is made (the
model's state describes its last forward pass, which may not be this cache's later on).
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import torch
from transformer_lens import ActivationCache
from transformer_lens.utilities import Slice


def _to_2d(project: Optional[torch.Tensor]):
    """(`[d_model, n]` projection or None, whether to squeeze the last dim at the end)."""
    if project is None:
        return None, False
    return (project.unsqueeze(-1), True) if project.ndim == 1 else (project, False)


class AVActivationCache(ActivationCache):
    """An `ActivationCache` whose `decompose_resid` includes between-block additive terms
    (`blocks.{l}.hook_deepstack`)."""

    between_block_hooks: tuple[str, ...] = ("hook_deepstack",)

    # ------------------------------------------------------------------------ display
    def _summary_rows(self) -> list[tuple[str, int, tuple, str, float]]:
        """(name pattern with `{l}` for the layer, number of layers, shape, dtype, MB in all)."""
        import re

        rows: dict[str, list] = {}
        for name, t in self.cache_dict.items():
            # decoder and encoder-tower layers alike: blocks.3.x, audio_tower.blocks.3.x -> blocks.{l}.x
            pattern = re.sub(r"(^|\.)blocks\.\d+\.", r"\1blocks.{l}.", name)
            r = rows.setdefault(pattern, [0, tuple(t.shape), str(t.dtype).replace("torch.", ""), 0.0])
            r[0] += 1
            r[3] += t.numel() * t.element_size() / 1e6
        return [(k, v[0], v[1], v[2], v[3]) for k, v in rows.items()]

    def __repr__(self) -> str:
        rows = self._summary_rows()
        total = sum(r[4] for r in rows)
        lines = [f"AVActivationCache: {len(self.cache_dict)} activations in {len(rows)} kinds, {total:.1f} MB"
                 + ("" if self.has_batch_dim else " (batch dim removed)")]
        width = max((len(r[0]) for r in rows), default=0)
        for name, n, shape, dtype, mb in rows:
            lines.append(f"  {name:<{width}}  x{n:<3} {str(list(shape)):<22} {dtype:<8} {mb:8.2f} MB")
        lines.append("Index by name (cache['blocks.0.hook_resid_post']); decompose_resid / accumulated_resid / "
                     "logit_attrs as in TransformerLens.")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """A compact table: one row per kind of activation (layers collapsed), with shape, dtype
        and memory; no tensor values (a cache can hold gigabytes)."""
        import html as _html

        rows = self._summary_rows()
        total = sum(r[4] for r in rows)
        body = "".join(
            f"<tr><td style='font-family:monospace'>{_html.escape(name)}</td><td>{n}</td>"
            f"<td style='font-family:monospace'>{_html.escape(str(list(shape)))}</td><td>{_html.escape(dtype)}</td>"
            f"<td style='text-align:right'>{mb:.2f}</td></tr>"
            for name, n, shape, dtype, mb in rows
        )
        return (f"<div><b>AVActivationCache</b>: {len(self.cache_dict)} activations in {len(rows)} kinds, "
                f"{total:.1f} MB<table style='border-collapse:collapse;font-size:12px'>"
                "<tr><th style='text-align:left'>hook</th><th>layers</th><th>shape</th><th>dtype</th><th>MB</th></tr>"
                f"{body}</table></div>")

    def __init__(self, cache_dict, model, has_batch_dim: bool = True, fired: Optional[set] = None):
        super().__init__(cache_dict, model, has_batch_dim=has_batch_dim)
        if fired is None:
            fired = getattr(model, "between_block_terms_fired", None) or set()
        self.between_block_fired: frozenset = frozenset(fired)  # the run's, fixed at creation

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
        """Whether `blocks.{layer}.{hook}` added a term in the run this cache comes from."""
        return f"blocks.{layer}.{hook}" in self.between_block_fired

    def _between_block_terms(self, layer: int, pos_slice: Slice) -> tuple[list[torch.Tensor], list[str]]:
        """The cached between-block terms added before `layer`'s input (layers < `layer`)."""
        comps, labels = [], []
        for l in range(layer):
            for hook in self.between_block_hooks:
                name = f"blocks.{l}.{hook}"
                if name in self.cache_dict:
                    comps.append(pos_slice.apply(self[name], dim=-2))
                    labels.append(f"{l}_{hook[len('hook_'):]}")
                elif self._fires(l, hook):
                    raise KeyError(
                        f"{name} adds to the residual stream but is not in the cache; cache it "
                        "(names_filter=None or include it) to decompose the residual stream."
                    )
        return comps, labels

    def get_full_resid_decomposition(
        self,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice=None,
        return_labels: bool = False,
        project_output_onto: Optional[torch.Tensor] = None,
    ):
        """TransformerLens's `get_full_resid_decomposition` (same arguments, rows and labels),
        followed by one row per cached between-block term of the layers before `layer` (labels
        `"{l}_deepstack"`; LN and the projection applied to them as to every other row), so the
        rows sum to the residual stream into `layer`, DeepStack included. A term that the run
        added but the cache lacks is an error."""
        if layer is None or layer == -1:
            layer = self.model.cfg.n_layers
        if not isinstance(pos_slice, Slice):
            pos_slice = Slice(pos_slice)
        extra, extra_labels = self._between_block_terms(layer, pos_slice)
        out = super().get_full_resid_decomposition(
            layer, mlp_input=mlp_input, expand_neurons=expand_neurons, apply_ln=apply_ln, pos_slice=pos_slice,
            return_labels=True, project_output_onto=project_output_onto,
        )
        stack, labels = out
        if extra:
            ds = torch.stack(extra, dim=0)
            if apply_ln:
                ds = self.apply_ln_to_stack(ds, layer, pos_slice=pos_slice, mlp_input=mlp_input)
            project, squeeze = _to_2d(project_output_onto)
            if project is not None:
                ds = ds @ project.to(ds.dtype)
                if squeeze:
                    ds = ds.squeeze(-1)
            stack = torch.cat([stack, ds.to(stack.dtype)], dim=0)
            labels = list(labels) + extra_labels
        return (stack, labels) if return_labels else stack


def wrap_cache(cache: Union[ActivationCache, dict], model, has_batch_dim: bool = True) -> AVActivationCache:
    """An `AVActivationCache` over the same tensors as `cache`."""
    cache_dict = cache.cache_dict if isinstance(cache, ActivationCache) else cache
    return AVActivationCache(cache_dict, model, has_batch_dim=has_batch_dim,
                             fired=set(getattr(model, "between_block_terms_fired", None) or ()))
