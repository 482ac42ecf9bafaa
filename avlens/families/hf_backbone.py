"""Reading a Hugging Face decoder into avlens: the config and the weight sharing every family uses.

Hugging Face's Qwen2, Qwen2.5-VL / Qwen2.5-Omni text, Llama, Mistral and Qwen3 decoders share
one module layout:

    text_model.embed_tokens, text_model.layers[l].{input_layernorm, self_attn.{q,k,v,o}_proj
    [, q_norm, k_norm], post_attention_layernorm, mlp.{gate,up,down}_proj}, text_model.norm,
    text_model.rotary_emb (inv_freq, attention_scaling)

`backbone_config` reads an `AVConfig` from the text config and those modules (biases and q/k norms
are read off the modules themselves, so a checkpoint's real layout wins over config defaults);
`share_decoder_weights` points an avlens model's parameters at the HF tensors (no copy).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from avlens.config import AVConfig
from avlens.model.components import Rotary


def text_rope_parameters(tc) -> dict:
    """The rope parameters of a text config (transformers 5: `rope_parameters`; older: fields)."""
    rp = dict(getattr(tc, "rope_parameters", None) or {})
    if "rope_theta" not in rp and getattr(tc, "rope_theta", None) is not None:
        rp["rope_theta"] = tc.rope_theta
    return rp


def sliding_window_of(text_model: nn.Module) -> Optional[int]:
    """The smallest sliding window any layer uses (None: all layers attend to the full prefix)."""
    attns = [layer.self_attn for layer in text_model.layers]
    if any(hasattr(a, "sliding_window") for a in attns):  # Qwen2 / Qwen2.5-VL: per layer type
        windows = [int(a.sliding_window) for a in attns if getattr(a, "sliding_window", None)]
    else:  # Mistral: one window for every layer, in the config
        w = getattr(text_model.config, "sliding_window", None)
        windows = [int(w)] if w else []
    return min(windows) if windows else None


def backbone_config(
    tc,
    text_model: nn.Module,
    *,
    rope_kind: str,
    mrope_section: Optional[list[int]] = None,
    dtype: Optional[torch.dtype] = None,
    device: Optional[str] = None,
    **fields: Any,
) -> AVConfig:
    """An `AVConfig` for a Hugging Face text config `tc` and its decoder module `text_model`.

    `fields` set further `AVConfig` fields (`model_family`, `token_ids`, `d_mlp`, ...)."""
    layer = text_model.layers[0]
    attn = layer.self_attn
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    rp = text_rope_parameters(tc)
    mlp = getattr(layer.mlp, "gate_proj", None)
    kw = dict(
        d_model=tc.hidden_size,
        d_head=head_dim,
        n_layers=tc.num_hidden_layers,
        n_ctx=getattr(tc, "max_position_embeddings", 32768),
        n_heads=tc.num_attention_heads,
        n_key_value_heads=getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads,
        d_mlp=getattr(tc, "intermediate_size", None),
        d_vocab=tc.vocab_size,
        eps=tc.rms_norm_eps,
        act_fn=tc.hidden_act,
        rope_kind=rope_kind,
        mrope_section=mrope_section,
        rope_theta=float(rp.get("rope_theta", 10000.0)),
        qkv_bias=attn.q_proj.bias is not None,
        o_bias=attn.o_proj.bias is not None,
        mlp_bias=mlp is not None and mlp.bias is not None,
        qk_norm=hasattr(attn, "q_norm"),
        dtype=dtype or torch.float32,
        device=device,
    )
    kw.update(fields)
    return AVConfig(**kw)


def hf_rotary(model, text_model: nn.Module, device) -> Rotary:
    """avlens's `Rotary` with the HF model's own inverse frequencies (so scaled rope types such as
    Llama 3's `llama3` or `linear` are taken as they are). Rope types that also scale cos/sin
    (`attention_scaling != 1`, e.g. YaRN) or change with the sequence (`dynamic`) are refused."""
    rot = Rotary(model.cfg).to(device)
    hf = getattr(text_model, "rotary_emb", None)
    if hf is None:
        return rot
    scaling = float(getattr(hf, "attention_scaling", 1.0))
    rope_type = getattr(hf, "rope_type", "default")
    if scaling != 1.0 or "dynamic" in str(rope_type):
        raise NotImplementedError(
            f"rope_type {rope_type!r} (attention_scaling {scaling}) is not supported: avlens applies "
            "fixed rotary frequencies with no cos/sin scaling. Supported: default, linear, llama3."
        )
    inv = hf.inv_freq.detach().to(device=device, dtype=torch.float32)
    if inv.shape != rot.inv_freq.shape:
        raise ValueError(f"the HF rotary has {inv.shape[0]} frequencies, avlens expects {rot.inv_freq.shape[0]} (d_head / 2)")
    rot.inv_freq = inv.clone()
    return rot


def share_attention_and_norms(block, layer) -> None:
    """Point one avlens block's attention and norms at an HF decoder layer's modules."""
    a, h = block.attn, layer.self_attn
    a.q_proj, a.k_proj, a.v_proj, a.o_proj = h.q_proj, h.k_proj, h.v_proj, h.o_proj
    if hasattr(h, "q_norm"):
        a.q_norm.w, a.q_norm.eps = h.q_norm.weight, h.q_norm.variance_epsilon
        a.k_norm.w, a.k_norm.eps = h.k_norm.weight, h.k_norm.variance_epsilon
    block.ln1.w, block.ln1.eps = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
    block.ln2.w, block.ln2.eps = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon


def share_decoder_weights(model, text_model: nn.Module, lm_head: nn.Module, share_mlp: bool = True) -> None:
    """Point `model`'s embedding, blocks, final norm and unembedding at the HF modules (shared,
    not copied: an edit to one shows in the other). `share_mlp=False` leaves the MLPs to the
    caller (mixture-of-experts layers)."""
    if len(model.blocks) != len(text_model.layers):
        raise ValueError(f"avlens has {len(model.blocks)} blocks, the HF decoder {len(text_model.layers)} layers")
    model.embed.W_E = text_model.embed_tokens.weight
    for block, layer in zip(model.blocks, text_model.layers):
        share_attention_and_norms(block, layer)
        if share_mlp:
            m = layer.mlp
            block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj = m.gate_proj, m.up_proj, m.down_proj
    model.ln_final.w, model.ln_final.eps = text_model.norm.weight, text_model.norm.variance_epsilon
    model.unembed.lm_head = lm_head
