"""Tiny random Hugging Face Qwen3-Omni thinkers and processor-style inputs (test helper, no tests).

The model: 3 text layers (layers 0 and 2 sparse MoE with 8 experts, top-2, normalised; layer 1
dense via `mlp_only_layers`), q/k RMSNorm, interleaved M-RoPE `[2, 3, 3]`, a 3-block vision tower
with DeepStack from blocks 0 and 2 (added after decoder layers 0 and 1), a 2-layer AuT audio
tower. Experts run Hugging Face's eager loop (`_experts_implementation = "eager"`); every
parameter is redrawn by `hf_reference.reinit_parameters`.

The inputs are laid out as `Qwen3OmniMoeProcessor` lays them out (read from transformers 5.x
`processing_qwen3_omni_moe.py`): `<|audio_start|>` [audio pads] `<|audio_end|>`;
`<|vision_start|>` [video pads] `<|vision_end|>`; audio in video: `<|vision_start|><|audio_start|>`,
then video and audio pads merged by time (a video grid goes first while its temporal id
`g * second_per_grid * pps` is <= the next audio token's index; numpy float64, as the processor
computes it), then `<|audio_end|><|vision_end|>`.
"""

from __future__ import annotations

import numpy as np
import torch

from hf_reference import reinit_parameters

V = 200
IDS = dict(
    pad=V - 10, audio=V - 1, image=V - 2, video=V - 3, audio_start=V - 4, vision_start=V - 5,
    audio_end=V - 6, vision_end=V - 7,
)
PPS = 13  # position_id_per_seconds of the processor and real checkpoints (the config default is 25)
N_WINDOW = 50


def make_config():
    from transformers import Qwen3OmniMoeThinkerConfig

    text = dict(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
        decoder_sparse_step=1, mlp_only_layers=[1], norm_topk_prob=True, rms_norm_eps=1e-6,
        max_position_embeddings=4096, pad_token_id=IDS["pad"],
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    )
    audio = dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
                 output_dim=64, downsample_hidden_size=16, n_window=N_WINDOW, n_window_infer=800, conv_chunksize=500,
                 max_source_positions=1500)
    vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, temporal_patch_size=2,
                  spatial_merge_size=2, out_hidden_size=64, num_position_embeddings=64, deepstack_visual_indexes=[0, 2],
                  in_channels=3)
    cfg = Qwen3OmniMoeThinkerConfig(
        text_config=text, audio_config=audio, vision_config=vision, position_id_per_seconds=PPS,
        audio_token_id=IDS["audio"], image_token_id=IDS["image"], video_token_id=IDS["video"],
        audio_start_token_id=IDS["audio_start"],
    )
    cfg.vision_start_token_id = IDS["vision_start"]  # the config class lacks it (MODELS.md)
    cfg._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "eager"
    cfg.text_config._experts_implementation = "eager"
    return cfg


def make_thinker(seed: int = 0):
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    torch.manual_seed(seed)
    m = Qwen3OmniMoeThinkerForConditionalGeneration(make_config()).eval()
    return reinit_parameters(m, seed=seed)


def token_ids() -> dict[str, int]:
    """The avlens token_ids the config cannot carry."""
    return {"audio_end_token_id": IDS["audio_end"], "vision_end_token_id": IDS["vision_end"]}


def audio_tokens(n_frames: int) -> int:
    """Qwen3-Omni's AuT token count (`_get_feat_extract_output_lengths`), written out."""
    chunk = N_WINDOW * 2
    leave = n_frames % chunk
    feat = (leave - 1) // 2 + 1
    return ((feat - 1) // 2 + 1 - 1) // 2 + 1 + (n_frames // chunk) * 13


def _aiv_block(grid, spg: float, n_audio: int) -> list[int]:
    h, w = grid[1] // 2, grid[2] // 2
    video_idx = np.broadcast_to(np.arange(grid[0]).reshape(-1, 1, 1), (grid[0], h, w)).reshape(-1) * spg * PPS
    out, vi, ai = [IDS["audio_start"]], 0, 0
    while vi < len(video_idx) and ai < n_audio:
        if video_idx[vi] <= ai:
            out.append(IDS["video"])
            vi += 1
        else:
            out.append(IDS["audio"])
            ai += 1
    out += [IDS["video"]] * (len(video_idx) - vi) + [IDS["audio"]] * (n_audio - ai)
    return [IDS["vision_start"]] + out + [IDS["audio_end"], IDS["vision_end"]]


CASES = ("text", "audio", "image", "video", "audio_video", "audio_in_video", "image_video")


def make_inputs(kind: str, batch: int = 1, seed: int = 0):
    """Processor-style inputs for one case; batch 2 is left-padded (the samples differ in text)."""
    g = torch.Generator().manual_seed(seed)
    frames = [250, 130]
    vgrid, igrid, spg = [4, 4, 6], [1, 4, 4], 2 / 3  # fps 3: fractional temporal ids (t = g * 8.67)
    rows, feats, fmask, pv, vg, pi, ig, spgs = [], [], [], [], [], [], [], []

    def text(n):
        return torch.randint(0, 150, (n,), generator=g).tolist()

    for b in range(batch):
        row = text(3 + 2 * b)
        nf = frames[b % 2]
        if kind in ("audio", "audio_video"):
            row += [IDS["audio_start"]] + [IDS["audio"]] * audio_tokens(nf) + [IDS["audio_end"]] + text(2)
            feats.append(nf)
        if kind in ("image", "image_video"):
            row += [IDS["vision_start"]] + [IDS["image"]] * (int(np.prod(igrid)) // 4) + [IDS["vision_end"]] + text(1)
            ig.append(igrid)
        if kind in ("video", "audio_video", "image_video"):
            row += [IDS["vision_start"]] + [IDS["video"]] * (int(np.prod(vgrid)) // 4) + [IDS["vision_end"]]
            vg.append(vgrid)
            spgs.append(spg)
        if kind == "audio_in_video":
            row += _aiv_block(vgrid, spg, audio_tokens(nf))
            vg.append(vgrid)
            spgs.append(spg)
            feats.append(nf)
        row += text(4)
        rows.append(row)
    n = max(len(r) for r in rows)
    ids = torch.full((batch, n), IDS["pad"])
    am = torch.zeros(batch, n, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, n - len(r):] = torch.tensor(r)
        am[b, n - len(r):] = 1
    out = {"input_ids": ids, "attention_mask": am}
    if feats:
        F = max(feats)
        out["input_features"] = torch.randn(len(feats), 128, F, generator=g)
        out["feature_attention_mask"] = torch.stack([(torch.arange(F) < f).long() for f in feats])
    if vg:
        out["video_grid_thw"] = torch.tensor(vg)
        out["pixel_values_videos"] = torch.randn(int(torch.tensor(vg).prod(-1).sum()), 3 * 2 * 16 * 16, generator=g)
        out["video_second_per_grid"] = torch.tensor(spgs)
    if ig:
        out["image_grid_thw"] = torch.tensor(ig)
        out["pixel_values"] = torch.randn(int(torch.tensor(ig).prod(-1).sum()), 3 * 2 * 16 * 16, generator=g)
    if kind == "audio_in_video":
        out["use_audio_in_video"] = True
    return out


def hf_logits(hf, inputs) -> torch.Tensor:
    hf.model.rope_deltas = None
    with torch.no_grad():
        return hf(**inputs).logits


def hf_rope_index(hf, inputs):
    fam = inputs.get("feature_attention_mask")
    return hf.model.get_rope_index(
        inputs["input_ids"], inputs.get("image_grid_thw"), inputs.get("video_grid_thw"), inputs["attention_mask"],
        inputs.get("use_audio_in_video", False), None if fam is None else fam.sum(1), inputs.get("video_second_per_grid"),
    )
