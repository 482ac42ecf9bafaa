"""`AVConfig`: the configuration of a hooked audio-visual decoder.

A subclass of TransformerLens's `TransformerLensConfig`, so every field that TransformerLens's
`ActivationCache` and `patching` read (`n_layers`, `n_heads`, `n_key_value_heads`, `d_head`,
`d_mlp`, `device`, `attn_only`, `normalization_type`, `final_rms`, ...) exists with its usual
meaning. avlens adds what multimodal rotary embeddings and token groups need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from transformer_lens.config import TransformerLensConfig

ROPE_KINDS = ("1d", "mrope", "mrope_interleaved")


@dataclass
class AVConfig(TransformerLensConfig):
    """Configuration of a `HookedAVTransformer`.

    Fields beyond TransformerLens's:
        rope_kind: "1d" (plain RoPE), "mrope" (Qwen2-VL / Qwen2.5-Omni multimodal RoPE: the rotary
            frequencies split into contiguous T / H / W blocks of sizes `mrope_section`), or
            "mrope_interleaved" (Qwen3-Omni / Qwen3-VL: frequency index i takes H or W by i mod 3).
        mrope_section: frequency counts per axis (T, H, W); must sum to d_head // 2.
        rope_theta: the rotary base.
        qkv_bias / o_bias / mlp_bias: whether those projections carry a bias (Qwen2: q/k/v only).
        qk_norm: RMSNorm on each head's q and k before rotary (Qwen3).
        tie_word_embeddings: whether W_U is W_E transposed (the weights are then shared).
        use_attn_eager: always materialise scores and patterns (otherwise only when a hook on
            them is active or a group summary is requested; else scaled_dot_product_attention).
        ungroup_grouped_query_attention: expand K/V to one per query head before `hook_k` /
            `hook_v`, so K/V hooks (and edits) are per query head.
        model_family: the family class name that built this config (for dispatch and reprs).
        token_ids: the family's special token ids (audio/video/image placeholders, bos/eos, ...).
    """

    d_model: int = 64
    d_head: int = 16
    n_layers: int = 2
    n_ctx: int = 32768
    n_heads: int = -1
    d_mlp: Optional[int] = None
    d_vocab: int = -1
    d_vocab_out: int = -1

    normalization_type: Optional[str] = "RMS"
    uses_rms_norm: bool = True
    final_rms: bool = True
    gated_mlp: bool = True
    act_fn: str = "silu"
    eps: float = 1e-6
    positional_embedding_type: str = "rotary"

    rope_kind: str = "1d"
    mrope_section: Optional[list[int]] = None
    rope_theta: float = 10000.0
    qkv_bias: bool = True
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    model_family: str = "HookedAVTransformer"
    token_ids: dict[str, int] = field(default_factory=dict)
    original_architecture: Optional[str] = None
    use_attn_eager: bool = False
    ungroup_grouped_query_attention: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.n_key_value_heads is None:
            self.n_key_value_heads = self.n_heads
        if self.d_vocab_out == -1:
            self.d_vocab_out = self.d_vocab
        if self.rope_kind not in ROPE_KINDS:
            raise ValueError(
                f"rope_kind={self.rope_kind!r} is not one of {ROPE_KINDS}. Use '1d' for plain "
                "RoPE, 'mrope' for Qwen2.5-Omni / Qwen2.5-VL, 'mrope_interleaved' for Qwen3-Omni."
            )
        if self.n_heads % self.n_key_value_heads != 0:
            raise ValueError(
                f"n_heads={self.n_heads} is not a multiple of n_key_value_heads="
                f"{self.n_key_value_heads}; grouped-query attention needs each KV head to serve "
                "the same number of query heads."
            )
        if self.d_head % 2 != 0:
            raise ValueError(f"d_head={self.d_head} must be even for rotary embeddings.")
        if self.rope_kind != "1d":
            if self.mrope_section is None:
                raise ValueError(
                    f"rope_kind={self.rope_kind!r} needs mrope_section (frequencies per T/H/W "
                    f"axis summing to d_head // 2 = {self.d_head // 2})."
                )
            self.mrope_section = [int(s) for s in self.mrope_section]
            if len(self.mrope_section) != 3 or sum(self.mrope_section) != self.d_head // 2:
                raise ValueError(
                    f"mrope_section={self.mrope_section} must have 3 entries (T, H, W) summing to "
                    f"d_head // 2 = {self.d_head // 2}; it sums to {sum(self.mrope_section)}. "
                    "Set it to the checkpoint's rope_parameters['mrope_section'] (for Qwen2.5-Omni "
                    "with d_head 128: [16, 24, 24])."
                )

    @property
    def n_rep(self) -> int:
        """Query heads per KV head (grouped-query attention)."""
        return self.n_heads // self.n_key_value_heads

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    def to_dict(self):
        out = super().to_dict()
        out["dtype"] = self.dtype
        return out


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
