"""Tiny random Hugging Face Qwen2.5-Omni reference models and processor-style inputs.

This is a helper module for the test-suite (it holds no tests itself). It builds

* tiny, deterministic, float32 ``Qwen2_5OmniThinkerForConditionalGeneration`` models whose
  special token ids are remapped into a small vocabulary (:func:`make_hf_thinker`);
* inputs laid out exactly as ``Qwen2_5OmniProcessor`` lays them out, including the
  ``use_audio_in_video`` 2-second chunk interleaving, plus metadata that says where every
  group of tokens sits (:func:`make_inputs`, :func:`make_inputs_and_meta`);
* a tiny full ``Qwen2_5OmniForConditionalGeneration`` (thinker + talker + token2wav) for
  checkpoint save / load tests (:func:`make_full_omni_model`).

All facts were read from transformers 5.24 (``models/qwen2_5_omni``). Everything here is
CPU-only and fast (a model build plus a forward pass takes well under a second).

Weights: HF's random init leaves biases at 0 and norm weights at 1, which hides bugs such as
a forgotten bias or norm weight. :func:`reinit_parameters` therefore redraws *every* parameter
from a seeded generator: norm weights ``1 + 0.1 N``, biases ``0.1 N`` and all other weights
``N(0, 1 / fan_in)`` (embeddings ``N(0, 1 / hidden)``). Activations and logits stay O(1) and
attention is far from uniform, so positional / masking bugs give O(1) logit differences.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from transformers import (
    Qwen2_5OmniConfig,
    Qwen2_5OmniForConditionalGeneration,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
)

__all__ = [
    "TINY_VARIANTS",
    "KINDS",
    "BATCHABLE_KINDS",
    "TokenIds",
    "get_variant",
    "make_thinker_config",
    "make_hf_thinker",
    "make_full_omni_config",
    "make_full_omni_model",
    "reinit_parameters",
    "token_ids",
    "audio_token_count",
    "chunked_index",
    "make_inputs",
    "make_inputs_and_meta",
    "unbatch",
    "hf_rope_index",
    "run_hf",
]

# ---------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------

# Order of the special tokens placed at ``special_base + k`` in each variant's vocabulary.
# Everything below ``special_base`` is "ordinary text". Real ids in brackets.
_SPECIAL_ORDER = (
    "pad",  # <|endoftext|> (151643)
    "eos",  # <|im_end|> (151645)
    "bos",  # (151644 <|im_start|>; Qwen prompts carry no bos, only generate() uses it)
    "user",  # config.user_token_id (872 in the real config)
    "audio",  # <|AUDIO|> (151646)
    "audio_start",  # <|audio_bos|> (151647)
    "audio_end",  # <|audio_eos|> (151648)
    "vision_start",  # <|vision_bos|> (151652)
    "vision_end",  # <|vision_eos|> (151653)
    "image",  # <|IMAGE|> (151655)
    "video",  # <|VIDEO|> (151656)
)

_COMMON_AUDIO = dict(
    num_mel_bins=128,
    encoder_layers=2,
    d_model=32,
    encoder_attention_heads=4,
    encoder_ffn_dim=64,
    n_window=100,  # real value: audio is encoded in independent 200-frame (2 s) chunks
    max_source_positions=1500,
)
_COMMON_VISION = dict(
    depth=2,
    hidden_size=32,
    num_heads=2,
    intermediate_size=64,
    patch_size=14,
    temporal_patch_size=2,
    spatial_merge_size=2,
    in_channels=3,
    # window_size // spatial_merge_size // patch_size = 2 merged tokens per window side, so
    # the 4x6-patch frames used below split into several windows; block 1 is full attention.
    window_size=56,
    fullatt_block_indexes=[1],
)

#: Tiny text-backbone shapes. Each dict is a complete description understood by
#: :func:`make_thinker_config` (``audio`` / ``vision`` entries override the tower defaults).
TINY_VARIANTS: list[dict[str, Any]] = [
    dict(
        name="gqa2_hd16",
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        mrope_section=[2, 3, 3],
        num_hidden_layers=2,
        vocab_size=200,
        special_base=180,
        tie_word_embeddings=False,
        audio={},
        vision={},
    ),
    dict(
        name="mqa_hd16",
        hidden_size=96,
        num_attention_heads=6,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=160,
        mrope_section=[2, 3, 3],
        num_hidden_layers=2,
        vocab_size=256,
        special_base=240,
        tie_word_embeddings=False,
        audio=dict(d_model=48, encoder_attention_heads=2, encoder_ffn_dim=80),
        vision=dict(hidden_size=48, num_heads=3, intermediate_size=80),
    ),
    dict(
        name="mha_hd32",
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=96,
        mrope_section=[4, 6, 6],
        num_hidden_layers=2,
        vocab_size=200,
        special_base=180,
        tie_word_embeddings=False,
        audio={},
        vision={},
    ),
    dict(
        name="tied_gqa3_hd8",
        hidden_size=48,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=96,
        mrope_section=[1, 1, 2],
        num_hidden_layers=2,
        vocab_size=160,
        special_base=140,
        tie_word_embeddings=True,  # lm_head.weight IS model.language_model.embed_tokens.weight
        audio={},
        vision={},
    ),
]

#: Input kinds understood by :func:`make_inputs`.
KINDS = ("text", "audio", "image", "video", "audio_video", "audio_in_video", "mixed")
#: Every kind supports ``batch >= 2`` (left-padded by default).
BATCHABLE_KINDS = KINDS


def get_variant(variant: dict | str | int) -> dict[str, Any]:
    """Return the variant dict for a dict, a variant name or an index into TINY_VARIANTS."""
    if isinstance(variant, dict):
        return variant
    if isinstance(variant, int):
        return TINY_VARIANTS[variant]
    for v in TINY_VARIANTS:
        if v["name"] == variant:
            return v
    raise KeyError(f"unknown tiny variant {variant!r}")


def _special_ids(variant: dict) -> dict[str, int]:
    base = variant["special_base"]
    ids = {name: base + k for k, name in enumerate(_SPECIAL_ORDER)}
    assert max(ids.values()) < variant["vocab_size"]
    return ids


# ---------------------------------------------------------------------------------------------
# Configs and models
# ---------------------------------------------------------------------------------------------


def make_thinker_config(variant: dict | str | int) -> Qwen2_5OmniThinkerConfig:
    """A tiny ``Qwen2_5OmniThinkerConfig`` with all special ids remapped into the small vocab.

    Sets ``vision_start_token_id`` (HF has no default for it), puts ``mrope_section`` inside
    ``text_config.rope_parameters`` (else HF silently uses [16, 24, 24]) and keeps the real
    ``rope_theta = 1e6``, ``position_id_per_seconds = 25`` and ``seconds_per_chunk = 2``.
    """
    v = get_variant(variant)
    assert v["hidden_size"] == v["num_attention_heads"] * v["head_dim"], "HF derives head_dim"
    assert sum(v["mrope_section"]) * 2 == v["head_dim"], "mrope_section must sum to head_dim/2"
    ids = _special_ids(v)
    hidden = v["hidden_size"]
    text_config = dict(
        vocab_size=v["vocab_size"],
        hidden_size=hidden,
        intermediate_size=v["intermediate_size"],
        num_hidden_layers=v["num_hidden_layers"],
        num_attention_heads=v["num_attention_heads"],
        num_key_value_heads=v["num_key_value_heads"],
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": list(v["mrope_section"]),
        },
        use_sliding_window=False,
        tie_word_embeddings=v["tie_word_embeddings"],
        pad_token_id=ids["pad"],
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
    )
    audio_config = {**_COMMON_AUDIO, **v.get("audio", {}), "output_dim": hidden}
    vision_config = {**_COMMON_VISION, **v.get("vision", {}), "out_hidden_size": hidden}
    return Qwen2_5OmniThinkerConfig(
        text_config=text_config,
        audio_config=audio_config,
        vision_config=vision_config,
        audio_token_id=ids["audio"],
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        audio_start_token_id=ids["audio_start"],
        audio_end_token_id=ids["audio_end"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        user_token_id=ids["user"],
        position_id_per_seconds=25,
        seconds_per_chunk=2,
        # the top-level thinker flag is the one HF uses to decide whether lm_head is tied
        tie_word_embeddings=v["tie_word_embeddings"],
        pad_token_id=ids["pad"],
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
    )


_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith("RMSNorm")


@torch.no_grad()
def reinit_parameters(module: nn.Module, seed: int = 0) -> nn.Module:
    """Redraw every parameter of ``module`` from a generator seeded with ``seed``.

    Norm weights ``1 + 0.1 N``, biases ``0.1 N``, weights of dim >= 2 ``N(0, 1 / fan_in)`` with
    ``fan_in = numel / shape[0]`` (so an embedding ``[V, d]`` gets ``N(0, 1 / d)``), any other
    1-D / scalar parameter ``1 + 0.1 N``. Tied parameters are drawn once. The result depends
    only on the parameter names, shapes and ``seed`` (not on HF's init or the global RNG).
    """
    gen = torch.Generator().manual_seed(seed)
    owners = {}
    for mod_name, mod in module.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owners[f"{mod_name}.{p_name}" if mod_name else p_name] = mod
    for name, p in module.named_parameters():  # deduplicated: tied weights appear once
        owner = owners[name]
        leaf = name.rsplit(".", 1)[-1]
        shape = tuple(p.shape)
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        if _is_norm(owner) and leaf == "weight":
            new = 1.0 + 0.1 * noise
        elif leaf == "bias":
            new = 0.1 * noise
        elif p.dim() >= 2:
            fan_in = max(1, p.numel() // shape[0])
            new = noise / fan_in**0.5
        else:
            new = 1.0 + 0.1 * noise
        p.copy_(new.to(p.dtype))
    return module


def make_hf_thinker(
    variant: dict | str | int, seed: int = 0, attn: str = "eager"
) -> Qwen2_5OmniThinkerForConditionalGeneration:
    """Tiny float32 HF thinker in eval mode, parameters a pure function of (variant, seed)."""
    config = make_thinker_config(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(
            config, attn_implementation=attn, dtype=torch.float32
        )
    reinit_parameters(model, seed)
    model.eval()
    model.model.rope_deltas = None
    return model


def make_full_omni_config(variant: dict | str | int) -> Qwen2_5OmniConfig:
    """Config of a tiny full model: the variant's thinker plus a tiny talker and token2wav."""
    v = get_variant(variant)
    thinker = make_thinker_config(v)
    ids = _special_ids(v)
    talker_vocab = max(256, v["vocab_size"])  # >= thinker vocab: no out-of-vocab id warnings
    talker = dict(
        vocab_size=talker_vocab,
        embedding_size=v["hidden_size"],  # talker embeds thinker hidden states
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [2, 3, 3],
        },
        # thinker-vocab ids (real: 151860/151861/151859); only talker generation uses them
        tts_text_start_token_id=v["special_base"] - 3,
        tts_text_end_token_id=v["special_base"] - 2,
        tts_text_pad_token_id=v["special_base"] - 1,
        tts_codec_start_token_id=talker_vocab - 4,
        tts_codec_end_token_id=talker_vocab - 3,
        tts_codec_pad_token_id=talker_vocab - 2,
        tts_codec_mask_token_id=talker_vocab - 1,
        audio_token_id=ids["audio"],
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        audio_start_token_id=ids["audio_start"],
        audio_end_token_id=ids["audio_end"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        spatial_merge_size=2,
    )
    token2wav = dict(
        dit_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            head_dim=16,
            ff_mult=2,
            emb_dim=16,
            enc_emb_dim=8,
            enc_dim=8,
            enc_channels=[16, 16, 16, 16, 32],
            enc_kernel_sizes=[5, 3, 3, 3, 1],
            enc_dilations=[1, 2, 3, 4, 1],
            enc_attention_channels=8,
            enc_res2net_scale=2,
            enc_se_channels=8,
            look_ahead_layers=[1],
            look_backward_layers=[0],
            num_embeds=talker_vocab + 1,
            mel_dim=80,
            block_size=24,
        ),
        bigvgan_config=dict(
            mel_dim=80,
            upsample_initial_channel=32,
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3, 5]],
            upsample_rates=[2, 2],
            upsample_kernel_sizes=[4, 4],
        ),
    )
    return Qwen2_5OmniConfig(
        thinker_config=thinker.to_dict(), talker_config=talker, token2wav_config=token2wav
    )


def make_full_omni_model(
    variant: dict | str | int, seed: int = 0
) -> Qwen2_5OmniForConditionalGeneration:
    """Tiny full Qwen2.5-Omni (thinker + talker + token2wav), float32, eval mode.

    ``model.thinker`` has exactly the parameters of ``make_hf_thinker(variant, seed)``; the
    talker / token2wav are redrawn with seeds ``seed + 1`` / ``seed + 2``. Build ~0.1 s.
    ``save_pretrained`` writes keys in the original checkpoint layout: ``thinker.model.*``
    (text backbone, no ``language_model``), ``thinker.audio_tower.*``, ``thinker.visual.*``,
    ``thinker.lm_head.weight``, ``talker.*``, ``token2wav.*``.
    """
    config = make_full_omni_config(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5OmniForConditionalGeneration._from_config(
            config, attn_implementation="eager", dtype=torch.float32
        )
    reinit_parameters(model.thinker, seed)
    reinit_parameters(model.talker, seed + 1)
    reinit_parameters(model.token2wav, seed + 2)
    model.eval()
    model.thinker.model.rope_deltas = None
    return model


# ---------------------------------------------------------------------------------------------
# Token ids
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenIds:
    """Special token ids of a (tiny) thinker config. ``n_text`` = size of the ordinary-text
    range ``[0, n_text)`` from which :func:`make_inputs` draws text tokens."""

    pad: int
    bos: int
    eos: int
    user: int
    audio: int
    audio_start: int
    audio_end: int
    vision_start: int
    vision_end: int
    image: int
    video: int
    vocab_size: int
    n_text: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _thinker_config(config) -> Qwen2_5OmniThinkerConfig:
    if isinstance(config, nn.Module):  # a model was passed
        config = config.config
    if isinstance(config, Qwen2_5OmniConfig):
        return config.thinker_config
    return config


def token_ids(config) -> TokenIds:
    """Special ids read from a thinker config, a full Omni config or a model."""
    cfg = _thinker_config(config)
    text = cfg.get_text_config()
    eos = text.eos_token_id if text.eos_token_id is not None else cfg.eos_token_id
    if isinstance(eos, (list, tuple)):
        eos = eos[0]
    specials = dict(
        pad=text.pad_token_id if text.pad_token_id is not None else cfg.pad_token_id,
        bos=text.bos_token_id if text.bos_token_id is not None else cfg.bos_token_id,
        eos=eos,
        user=cfg.user_token_id,
        audio=cfg.audio_token_id,
        audio_start=cfg.audio_start_token_id,
        audio_end=cfg.audio_end_token_id,
        vision_start=cfg.vision_start_token_id,
        vision_end=cfg.vision_end_token_id,
        image=cfg.image_token_id,
        video=cfg.video_token_id,
    )
    return TokenIds(**specials, vocab_size=text.vocab_size, n_text=min(specials.values()))


# ---------------------------------------------------------------------------------------------
# Processor arithmetic (mirrors processing_qwen2_5_omni.py)
# ---------------------------------------------------------------------------------------------


def audio_token_count(n_frames: int) -> int:
    """Audio tokens for ``n_frames`` mel frames: ``((F - 1) // 2 + 1 - 2) // 2 + 1``."""
    after_conv = (n_frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


def chunked_index(token_indices, tokens_per_chunk: int) -> list[tuple[int, int]]:
    """Exact copy of ``Qwen2_5OmniProcessor.get_chunked_index`` (same as the model's).

    Walks the monotone values; each time a value reaches ``current_chunk * tokens_per_chunk``
    it closes a chunk and increments ``current_chunk`` by ONE. So a jump over several chunk
    boundaries yields extra, very short chunks rather than empty ones.
    """
    out = []
    i, start = 0, 0
    current = 1
    while i < len(token_indices):
        if token_indices[i] >= current * tokens_per_chunk:
            out.append((start, i))
            start = i
            current += 1
        i += 1
    out.append((start, len(token_indices)))
    return out


def _video_time_values(grid_thw, second_per_grid: float, merge: int, pps: float) -> np.ndarray:
    t, h, w = grid_thw
    per_frame = (h // merge) * (w // merge)
    idx = np.broadcast_to(np.arange(t).reshape(-1, 1), (t, per_frame)).reshape(-1)
    return idx * second_per_grid * pps  # float, as the processor computes it


# ---------------------------------------------------------------------------------------------
# Input specs
# ---------------------------------------------------------------------------------------------

# Media sizes are fixed per sample slot (cycled for batch > len), text lengths are random.
# grid_thw is in patches (h, w multiples of spatial_merge_size); audio sizes in mel frames.
_AUDIO_FRAMES = [237, 90, 163]  # 237: two encoder chunks (200 + 37) -> 59 tokens; 90 -> 22
_IMAGE_GRIDS = [(1, 4, 6), (1, 8, 4), (1, 2, 2)]
_VIDEO_SPECS = [((4, 4, 6), 1.0), ((2, 4, 4), 2.0), ((3, 2, 4), 0.5)]  # (grid_thw, s/grid)
# audio in video: every sample spans >= 2 chunks of 2 s.
#  slot 0: video t = 0,25,50,75 (2 chunks), audio 300 frames = 75 tokens (2 chunks: 50 + 25)
#          -> V8 A50 V8 A25; the last emitted chunk is audio (max 74) while the video reaches 75.
#  slot 1: video t = 0,50,100 (3 chunks), audio 250 frames = 62 tokens (50 + 12)
#          -> V4 A50 V4 A12 V4; the last emitted chunk is video.
#  slot 2: video t = 0,25,50,75,100 (3 chunks), audio 500 frames = 125 tokens (3 chunks)
_AIV_SPECS = [((4, 4, 4), 1.0, 300), ((3, 4, 4), 2.0, 250), ((5, 2, 4), 1.0, 500)]


def _rand_text(rng: np.random.Generator, n: int, n_text: int) -> list[int]:
    return [int(x) for x in rng.integers(0, n_text, size=n)]


class _Builder:
    """Accumulates one sample's tokens and its layout."""

    def __init__(self, ids: TokenIds, rng: np.random.Generator):
        self.ids = ids
        self.rng = rng
        self.tokens: list[int] = []
        self.types: list[str] = []
        self.segments: list[list] = []  # [name, start, end] (relative to the unpadded sample)

    def _add(self, name: str, toks: list[int], type_name: str | None = None):
        if not toks:
            return
        start = len(self.tokens)
        self.tokens.extend(toks)
        self.types.extend([type_name or name] * len(toks))
        if self.segments and self.segments[-1][0] == name and self.segments[-1][2] == start:
            self.segments[-1][2] = len(self.tokens)
        else:
            self.segments.append([name, start, len(self.tokens)])
        return start

    def text(self, n: int):
        self._add("text", _rand_text(self.rng, n, self.ids.n_text))

    def special(self, name: str):
        self._add(name, [getattr(self.ids, name)])

    def block(self, name: str, n: int) -> list[int]:
        start = len(self.tokens)
        self._add(name, [getattr(self.ids, name)] * n)
        return list(range(start, start + n))


def make_inputs_and_meta(
    config,
    kind: str,
    batch: int = 1,
    seed: int = 0,
    padding_side: str = "left",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Processor-style HF thinker inputs plus layout metadata.

    Returns ``(inputs, meta)``. ``inputs`` holds exactly keyword arguments of
    ``Qwen2_5OmniThinkerForConditionalGeneration.forward`` (only those the kind needs, plus
    ``use_audio_in_video`` always): ``input_ids``, ``attention_mask`` [B, L] long;
    ``input_features`` [n_audio, 128, F_max] float32 (zero beyond each F) and
    ``feature_attention_mask`` [n_audio, F_max] long (right-padded); ``pixel_values`` /
    ``pixel_values_videos`` [n_patches, 3 * 2 * 14 * 14] float32 with ``image_grid_thw`` /
    ``video_grid_thw`` [n, 3] long and ``video_second_per_grid`` [n_video] float32.
    Media items are numbered globally in row order (sample 0 first), as the processor does.

    ``meta`` (plain dicts / lists / ints; all positions are column indices in the padded row)::

        kind, batch, seq_len, padding_side, use_audio_in_video, token_ids (dict)
        audios / videos / images: global item lists (the same dicts as in the samples)
        samples[i]:
          offset, length          real tokens are row[offset : offset + length]
          pad                     padded columns (input id = pad id, attention_mask 0)
          text                    ordinary text columns
          special                 {"audio_start"|"audio_end"|"vision_start"|"vision_end": [cols]}
          token_types             per column: "pad" | "text" | "audio" | "video" | "image" |
                                  "audio_start" | "audio_end" | "vision_start" | "vision_end"
          segments                ordered [name, start, end) runs covering the whole row
          audio[k]                {index, n_frames, n_tokens, positions, chunks, in_video}
          video[k]                {index, grid_thw, second_per_grid, n_tokens, positions,
                                   chunks, audio_index}
          image[k]                {index, grid_thw, n_tokens, positions}

    ``positions`` lists the item's placeholder columns in feature order (the k-th column gets
    the k-th encoder output). ``chunks`` are the [start, end) column runs of the item (one run
    unless the audio is interleaved in a video). ``in_video`` / ``audio_index`` link an
    audio-in-video pair (global indices; ``None`` otherwise).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if padding_side not in ("left", "right"):
        raise ValueError("padding_side must be 'left' or 'right'")
    cfg = _thinker_config(config)
    ids = token_ids(cfg)
    vcfg = cfg.vision_config
    merge = vcfg.spatial_merge_size
    patch_dim = vcfg.in_channels * vcfg.temporal_patch_size * vcfg.patch_size**2
    n_mels = cfg.audio_config.num_mel_bins
    pps = cfg.position_id_per_seconds
    tokens_per_chunk = int(pps * cfg.seconds_per_chunk)
    use_aiv = kind == "audio_in_video"

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)

    audios: list[dict] = []  # global lists, in row / prompt order (== processor order)
    images: list[dict] = []
    videos: list[dict] = []
    samples: list[dict] = []
    builders: list[_Builder] = []

    def add_audio(b: _Builder, smeta: dict, n_frames: int):
        n = audio_token_count(n_frames)
        b.special("audio_start")
        pos = b.block("audio", n)
        b.special("audio_end")
        item = dict(index=len(audios), n_frames=n_frames, n_tokens=n, positions=pos,
                    chunks=[[pos[0], pos[-1] + 1]], in_video=None)
        audios.append(item)
        smeta["audio"].append(item)

    def add_image(b: _Builder, smeta: dict, grid):
        n = int(np.prod(grid)) // merge**2
        b.special("vision_start")
        pos = b.block("image", n)
        b.special("vision_end")
        item = dict(index=len(images), grid_thw=list(grid), n_tokens=n, positions=pos)
        images.append(item)
        smeta["image"].append(item)

    def add_video(b: _Builder, smeta: dict, grid, spg: float):
        n = int(np.prod(grid)) // merge**2
        b.special("vision_start")
        pos = b.block("video", n)
        b.special("vision_end")
        item = dict(index=len(videos), grid_thw=list(grid), second_per_grid=float(spg), n_tokens=n,
                    positions=pos, chunks=[[pos[0], pos[-1] + 1]], audio_index=None)
        videos.append(item)
        smeta["video"].append(item)

    def add_audio_in_video(b: _Builder, smeta: dict, grid, spg: float, n_frames: int):
        # Processor: the prompt holds <|vision_bos|><|VIDEO|><|vision_eos|>; the <|VIDEO|> is
        # replaced by <|audio_bos|> + for each chunk j: [video chunk j][audio chunk j]
        # + <|audio_eos|>.
        n_audio = audio_token_count(n_frames)
        n_video = int(np.prod(grid)) // merge**2
        vchunks = chunked_index(_video_time_values(grid, spg, merge, pps), tokens_per_chunk)
        achunks = chunked_index(np.arange(n_audio), tokens_per_chunk)
        b.special("vision_start")
        b.special("audio_start")
        vpos: list[int] = []
        apos: list[int] = []
        vch: list[list[int]] = []
        ach: list[list[int]] = []
        for j in range(max(len(vchunks), len(achunks))):
            if j < len(vchunks):
                s, e = vchunks[j]
                p = b.block("video", e - s)
                vpos += p
                if p:
                    vch.append([p[0], p[-1] + 1])
            if j < len(achunks):
                s, e = achunks[j]
                p = b.block("audio", e - s)
                apos += p
                if p:
                    ach.append([p[0], p[-1] + 1])
        b.special("audio_end")
        b.special("vision_end")
        assert len(vpos) == n_video and len(apos) == n_audio
        a_item = dict(index=len(audios), n_frames=n_frames, n_tokens=n_audio, positions=apos,
                      chunks=ach, in_video=len(videos))
        v_item = dict(index=len(videos), grid_thw=list(grid), second_per_grid=float(spg),
                      n_tokens=n_video, positions=vpos, chunks=vch, audio_index=len(audios))
        audios.append(a_item)
        videos.append(v_item)
        smeta["audio"].append(a_item)
        smeta["video"].append(v_item)

    for i in range(batch):
        b = _Builder(ids, rng)
        smeta: dict[str, Any] = dict(audio=[], video=[], image=[])
        slot = i % 3
        pre = int(rng.integers(1 if i == 0 else 0, 5))
        post = int(rng.integers(2, 6))
        if kind == "text":
            b.text(int(rng.integers(6, 12)) + 4 * i)
        else:
            b.text(pre)
            if kind == "audio":
                add_audio(b, smeta, _AUDIO_FRAMES[slot])
            elif kind == "image":
                add_image(b, smeta, _IMAGE_GRIDS[slot])
            elif kind == "video":
                add_video(b, smeta, *_VIDEO_SPECS[slot])
            elif kind == "audio_video":
                mid = int(rng.integers(0, 3))
                if i % 2 == 0:  # video first, then audio
                    add_video(b, smeta, *_VIDEO_SPECS[slot])
                    b.text(mid)
                    add_audio(b, smeta, _AUDIO_FRAMES[slot])
                else:  # audio first, then video
                    add_audio(b, smeta, _AUDIO_FRAMES[slot])
                    b.text(mid)
                    add_video(b, smeta, *_VIDEO_SPECS[slot])
            elif kind == "audio_in_video":
                grid, spg, frames = _AIV_SPECS[slot]
                add_audio_in_video(b, smeta, grid, spg, frames)
            elif kind == "mixed":
                add_image(b, smeta, _IMAGE_GRIDS[slot])
                b.text(int(rng.integers(1, 3)))
                add_audio(b, smeta, _AUDIO_FRAMES[(slot + 1) % 3])
                b.text(int(rng.integers(1, 3)))
                add_video(b, smeta, *_VIDEO_SPECS[slot])
            b.text(post)
        builders.append(b)
        samples.append(smeta)

    seq_len = max(len(b.tokens) for b in builders)
    input_ids = torch.full((batch, seq_len), ids.pad, dtype=torch.long)
    attention_mask = torch.zeros((batch, seq_len), dtype=torch.long)
    for i, (b, smeta) in enumerate(zip(builders, samples)):
        n = len(b.tokens)
        off = seq_len - n if padding_side == "left" else 0
        input_ids[i, off:off + n] = torch.tensor(b.tokens, dtype=torch.long)
        attention_mask[i, off:off + n] = 1
        types = ["pad"] * seq_len
        types[off:off + n] = b.types
        pad = [j for j in range(seq_len) if types[j] == "pad"]
        segments = [[name, s + off, e + off] for name, s, e in b.segments]
        if pad:
            pad_seg = ["pad", pad[0], pad[-1] + 1]
            segments = [pad_seg] + segments if padding_side == "left" else segments + [pad_seg]
        for key in ("audio", "video", "image"):
            for item in smeta[key]:
                item["positions"] = [p + off for p in item["positions"]]
                if "chunks" in item:
                    item["chunks"] = [[s + off, e + off] for s, e in item["chunks"]]
        smeta.update(
            offset=off,
            length=n,
            pad=pad,
            text=[j for j in range(seq_len) if types[j] == "text"],
            special={
                name: [j for j in range(seq_len) if types[j] == name]
                for name in ("audio_start", "audio_end", "vision_start", "vision_end")
            },
            token_types=types,
            segments=segments,
        )

    inputs: dict[str, Any] = dict(input_ids=input_ids, attention_mask=attention_mask)
    if audios:
        f_max = max(a["n_frames"] for a in audios)
        feats = torch.zeros((len(audios), n_mels, f_max), dtype=torch.float32)
        fmask = torch.zeros((len(audios), f_max), dtype=torch.long)
        for k, a in enumerate(audios):
            f = a["n_frames"]
            feats[k, :, :f] = torch.randn((n_mels, f), generator=gen)
            fmask[k, :f] = 1  # the feature extractor pads on the right
        inputs["input_features"] = feats
        inputs["feature_attention_mask"] = fmask
    if images:
        grids = torch.tensor([im["grid_thw"] for im in images], dtype=torch.long)
        n_patches = int(grids.prod(-1).sum())
        inputs["pixel_values"] = torch.randn((n_patches, patch_dim), generator=gen)
        inputs["image_grid_thw"] = grids
    if videos:
        grids = torch.tensor([vd["grid_thw"] for vd in videos], dtype=torch.long)
        n_patches = int(grids.prod(-1).sum())
        inputs["pixel_values_videos"] = torch.randn((n_patches, patch_dim), generator=gen)
        inputs["video_grid_thw"] = grids
        inputs["video_second_per_grid"] = torch.tensor(
            [vd["second_per_grid"] for vd in videos], dtype=torch.float32
        )
    inputs["use_audio_in_video"] = use_aiv

    meta = dict(
        kind=kind,
        batch=batch,
        seq_len=seq_len,
        padding_side=padding_side,
        use_audio_in_video=use_aiv,
        token_ids=ids.as_dict(),
        audios=audios,
        videos=videos,
        images=images,
        samples=samples,
    )
    return inputs, meta


def make_inputs(
    config,
    kind: str,
    batch: int = 1,
    seed: int = 0,
    padding_side: str = "left",
) -> dict[str, Any]:
    """HF thinker forward kwargs for one of :data:`KINDS` (metadata: :func:`make_inputs_and_meta`).

    Kinds: ``text``; ``audio`` (``<|audio_bos|> N x <|AUDIO|> <|audio_eos|>``); ``image`` and
    ``video`` (``<|vision_bos|> M x <|IMAGE|>/<|VIDEO|> <|vision_eos|>``); ``audio_video``
    (separate audio and video items, order alternating between samples,
    ``use_audio_in_video=False``); ``audio_in_video`` (``use_audio_in_video=True``, every
    sample spans >= 2 chunks of 2 s, interleaved as the processor does); ``mixed`` (image,
    audio and video items in one prompt). ``batch >= 2`` gives samples of different lengths
    padded with the pad id (attention_mask 0), on ``padding_side``.
    """
    return make_inputs_and_meta(config, kind, batch=batch, seed=seed, padding_side=padding_side)[0]


def unbatch(
    inputs: dict[str, Any], meta: dict[str, Any]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Split a (padded) batch into unpadded single-sample ``(inputs, meta)`` pairs.

    Each single-sample input carries only that sample's media, so
    ``run_hf(model, inputs_i)[0]`` should equal the batch logits at
    ``meta["samples"][i]["offset"] : offset + length``.
    """
    out = []
    for i, s in enumerate(meta["samples"]):
        off, n = s["offset"], s["length"]
        sub: dict[str, Any] = dict(
            input_ids=inputs["input_ids"][i:i + 1, off:off + n].clone(),
            attention_mask=inputs["attention_mask"][i:i + 1, off:off + n].clone(),
        )
        if s["audio"]:
            idx = [a["index"] for a in s["audio"]]
            f_max = max(a["n_frames"] for a in s["audio"])
            sub["input_features"] = inputs["input_features"][idx, :, :f_max].clone()
            sub["feature_attention_mask"] = inputs["feature_attention_mask"][idx, :f_max].clone()
        for key, pix, grid in (("image", "pixel_values", "image_grid_thw"),
                               ("video", "pixel_values_videos", "video_grid_thw")):
            if not s[key]:
                continue
            all_grids = inputs[grid]
            starts = torch.cat([torch.zeros(1, dtype=torch.long), all_grids.prod(-1).cumsum(0)])
            idx = [it["index"] for it in s[key]]
            sub[pix] = torch.cat([inputs[pix][starts[k]:starts[k + 1]] for k in idx]).clone()
            sub[grid] = all_grids[idx].clone()
            if key == "video":
                sub["video_second_per_grid"] = inputs["video_second_per_grid"][idx].clone()
        sub["use_audio_in_video"] = inputs["use_audio_in_video"]

        # metadata re-based to the unpadded row, media re-indexed locally
        s2 = copy.deepcopy(s)
        amap = {a["index"]: k for k, a in enumerate(s["audio"])}
        vmap = {v["index"]: k for k, v in enumerate(s["video"])}
        for key in ("audio", "video", "image"):
            for k, it in enumerate(s2[key]):
                it["index"] = k
                it["positions"] = [p - off for p in it["positions"]]
                if "chunks" in it:
                    it["chunks"] = [[a - off, b - off] for a, b in it["chunks"]]
                if key == "audio" and it["in_video"] is not None:
                    it["in_video"] = vmap[it["in_video"]]
                if key == "video" and it["audio_index"] is not None:
                    it["audio_index"] = amap[it["audio_index"]]
        s2["offset"], s2["pad"] = 0, []
        s2["text"] = [p - off for p in s["text"]]
        s2["special"] = {k: [p - off for p in v] for k, v in s["special"].items()}
        s2["token_types"] = s["token_types"][off:off + n]
        s2["segments"] = [[nm, a - off, b - off] for nm, a, b in s["segments"] if nm != "pad"]
        m2 = dict(meta, batch=1, seq_len=n, audios=s2["audio"], videos=s2["video"],
                  images=s2["image"], samples=[s2])
        out.append((sub, m2))
    return out


# ---------------------------------------------------------------------------------------------
# Running the reference
# ---------------------------------------------------------------------------------------------


def _thinker_model(model):
    """The ``Qwen2_5OmniThinkerModel`` inside a thinker / full model (or the model itself)."""
    if hasattr(model, "thinker"):
        model = model.thinker
    if hasattr(model, "model") and hasattr(model.model, "get_rope_index"):
        return model.model
    return model


@torch.no_grad()
def hf_rope_index(model, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's ``get_rope_index`` for these inputs, called exactly as the forward calls it.

    Returns ``(position_ids [3, B, L], rope_deltas [B, 1])``. Padded slots get position 1.
    """
    m = _thinker_model(model)
    fmask = inputs.get("feature_attention_mask")
    return m.get_rope_index(
        inputs["input_ids"],
        inputs.get("image_grid_thw"),
        inputs.get("video_grid_thw"),
        inputs["attention_mask"],
        bool(inputs.get("use_audio_in_video", False)),
        fmask.sum(-1) if fmask is not None else None,
        inputs.get("video_second_per_grid"),
    )


@torch.no_grad()
def run_hf(model, inputs: dict[str, Any], **kwargs) -> torch.Tensor:
    """Logits ``[B, L, V]`` of the HF thinker (``rope_deltas`` reset first, no cache)."""
    if hasattr(model, "thinker"):
        model = model.thinker
    model.model.rope_deltas = None
    out = model(**inputs, use_cache=False, **kwargs)
    model.model.rope_deltas = None
    return out.logits
