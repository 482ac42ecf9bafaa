"""Tiny random Hugging Face decoders of each backbone type the generic family supports, and
merged-embedding inputs for them (a helper module for the tests; it holds no tests).

Every parameter is redrawn by `hf_reference.reinit_parameters` (norm weights around 1, non-zero
biases), so a forgotten bias or norm weight shows as an O(1) logit difference.
"""

from __future__ import annotations

import torch

from hf_reference import reinit_parameters

VOCAB = 120
AUDIO_ID, VIDEO_ID, START_ID, END_ID = 110, 111, 112, 113

_COMMON = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=False, attn_implementation="eager",
)


def make_backbone(kind: str, seed: int = 0):
    """A tiny float32 eager HF model: "qwen2", "llama" (head_dim 24 != d/heads, rope llama3),
    "mistral", "qwen3" (q/k RMSNorm) or "qwen2_5_vl" (3-D M-RoPE, the text path of
    `Qwen2_5_VLForConditionalGeneration`)."""
    import transformers as T

    torch.manual_seed(seed)
    if kind == "qwen2":
        m = T.Qwen2ForCausalLM(T.Qwen2Config(**_COMMON, rope_parameters={"rope_type": "default", "rope_theta": 1e4}))
    elif kind == "llama":
        m = T.LlamaForCausalLM(T.LlamaConfig(
            **{**_COMMON, "rms_norm_eps": 1e-5}, head_dim=24, attention_bias=False, mlp_bias=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        ))
    elif kind == "mistral":
        m = T.MistralForCausalLM(T.MistralConfig(**_COMMON, sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 1e6}))
    elif kind == "qwen3":
        m = T.Qwen3ForCausalLM(T.Qwen3Config(**_COMMON, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 1e6}))
    elif kind == "qwen2_5_vl":
        text = {k: v for k, v in _COMMON.items() if k not in ("tie_word_embeddings", "attn_implementation")}
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
        cfg = T.Qwen2_5_VLConfig(
            text_config=text, tie_word_embeddings=False,
            vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=64,
                               patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=56,
                               fullatt_block_indexes=[0], in_channels=3),
            image_token_id=VOCAB - 1, video_token_id=VOCAB - 2, vision_start_token_id=VOCAB - 3,
        )
        cfg._attn_implementation = "eager"
        m = T.Qwen2_5_VLForConditionalGeneration(cfg)
    else:
        raise ValueError(kind)
    return reinit_parameters(m.eval(), seed=seed)


def media_prompt(seed: int = 0, n_audio: int = 5, n_video: int = 6, left_pad: int = 3):
    """Two samples `[2, L]` with text, an audio run and a video run (placeholders AUDIO_ID /
    VIDEO_ID between START_ID / END_ID); sample 1 is left-padded by `left_pad`."""
    g = torch.Generator().manual_seed(seed)

    def text(n):
        return torch.randint(0, 100, (n,), generator=g).tolist()

    rows = []
    for extra in (0, left_pad):
        rows.append(text(3 + extra) + [START_ID] + [AUDIO_ID] * n_audio + [END_ID] + text(2) + [START_ID]
                    + [VIDEO_ID] * n_video + [END_ID] + text(4 - extra))
    ids = torch.tensor(rows)
    am = torch.ones_like(ids)
    am[1, :left_pad] = 0
    ids[1, :left_pad] = 0
    return ids, am


def features(ids: torch.Tensor, am: torch.Tensor, d: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for kind, pid in (("audio", AUDIO_ID), ("video", VIDEO_ID)):
        n = int(((ids == pid) & am.bool()).sum())
        out[kind] = torch.randn(n, d, generator=g)
    return out


def merged_embeddings(embed: torch.nn.Module, ids, am, feats) -> torch.Tensor:
    """Hugging Face's merge, written out: token embeddings with each kind's features scattered
    into its placeholder positions in row-major order."""
    with torch.no_grad():
        x = embed(ids)
        for kind, pid in (("audio", AUDIO_ID), ("video", VIDEO_ID)):
            if kind in feats:
                mask = ((ids == pid) & am.bool())[..., None]
                x = x.masked_scatter(mask, feats[kind])
    return x


def hf_positions(am: torch.Tensor) -> torch.Tensor:
    """HF generate's 1-D positions for a left-padded batch: running count of real tokens."""
    return (am.cumsum(-1) - 1).masked_fill(am == 0, 1)
