"""Patchable sites: the per-position activations a patch can replace, by short name.

    site        hook (layer l)                     shape              head axis
    resid_pre   blocks.l.hook_resid_pre            [b, p, d_model]    -
    resid_mid   blocks.l.hook_resid_mid            [b, p, d_model]    -
    resid_post  blocks.l.hook_resid_post           [b, p, d_model]    -
    attn_out    blocks.l.hook_attn_out             [b, p, d_model]    -
    mlp_out     blocks.l.hook_mlp_out              [b, p, d_model]    -
    attn_in     blocks.l.ln1.hook_normalized       [b, p, d_model]    -   (the normalised input
                                                                          of attention, which
                                                                          feeds q, k and v: the
                                                                          paper's patched state)
    mlp_in      blocks.l.ln2.hook_normalized       [b, p, d_model]    -
    q, z        blocks.l.attn.hook_q / hook_z      [b, p, h, d_head]  query heads
    k, v        blocks.l.attn.hook_k / hook_v      [b, p, g, d_head]  KV heads (query heads with
                                                                      expand_kv=True)

Full hook names (`blocks.3.hook_resid_pre`) are accepted too; the layer is then fixed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from avlens.layout import closest

SITE_HOOKS: dict[str, str] = {
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "attn_in": "blocks.{l}.ln1.hook_normalized",
    "mlp_in": "blocks.{l}.ln2.hook_normalized",
    "q": "blocks.{l}.attn.hook_q",
    "k": "blocks.{l}.attn.hook_k",
    "v": "blocks.{l}.attn.hook_v",
    "z": "blocks.{l}.attn.hook_z",
}
HEAD_SITES = ("q", "k", "v", "z")
KV_SITES = ("k", "v")
# other names of the same sites
_ALIASES = {"ln1": "attn_in", "ln2": "mlp_in"}


@dataclass(frozen=True)
class Site:
    """A patchable activation: `name` (a key of `SITE_HOOKS`) and, when given as a full hook
    name, the one layer it lives at."""

    name: str
    layer: Optional[int] = None

    def hook(self, layer: int) -> str:
        return SITE_HOOKS[self.name].format(l=layer)

    @property
    def has_heads(self) -> bool:
        return self.name in HEAD_SITES

    @property
    def kv(self) -> bool:
        return self.name in KV_SITES


def resolve_site(site: str, n_layers: int) -> Site:
    """`"resid_pre"` -> Site("resid_pre"); `"blocks.3.attn.hook_z"` -> Site("z", layer=3)."""
    if not isinstance(site, str):
        raise TypeError(f"site must be a string such as 'resid_pre' or 'blocks.3.hook_attn_out'; got {type(site).__name__}")
    name = _ALIASES.get(site, site)
    if name in SITE_HOOKS:
        return Site(name)
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", site)
    if m:
        layer, rest = int(m.group(1)), m.group(2)
        for key, template in SITE_HOOKS.items():
            if template.split("{l}.", 1)[1] == rest:
                if not 0 <= layer < n_layers:
                    raise ValueError(f"site {site!r}: layer {layer} is outside the model's {n_layers} layers")
                return Site(key, layer)
    options = list(SITE_HOOKS)
    hint = closest(site, options)
    raise ValueError(
        f"unknown patching site {site!r}."
        + (f" Did you mean {hint[0]!r}?" if hint else "")
        + f" Sites: {options} (or a full hook name such as 'blocks.0.hook_resid_pre'). Attention "
        "scores and patterns are not position-indexed: use attention_knockout for edges."
    )
