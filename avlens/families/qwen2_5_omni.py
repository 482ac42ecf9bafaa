"""Qwen2.5-Omni thinker (Xu et al. 2025, "Qwen2.5-Omni Technical Report").

The thinker is a Qwen2 decoder (q/k/v bias, GQA, SwiGLU, RMSNorm) whose rotary embedding is
TMRoPE: 3-D (temporal, height, width) position ids, frequencies split into contiguous blocks
`mrope_section` (e.g. [16, 24, 24]). Audio tokens (25 per second) and video tokens are
time-aligned: a video token at temporal grid g sits at t = s + floor(g * second_per_grid * 25),
an audio token k at s + k. With `use_audio_in_video`, the video and its audio track are
interleaved in 2-second chunks, `[video chunk][audio chunk]`, both starting at the same s.

This module builds the layout and the 3-D positions from the token ids (replicating Hugging Face's
`get_rope_index` exactly, including its rules for the ids after a media block), shares the HF
weights, and reads only the thinker's tensors from a checkpoint. The audio and vision towers stay
the Hugging Face modules, wrapped with hook points at their inputs and outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import Any, Optional

import torch
from safetensors import safe_open
from torch import Tensor, nn

from avlens.batch import AVBatch
from avlens.config import AVConfig
from avlens.layout import BatchLayout
from avlens.model.hooked import HookedAVTransformer
from avlens.model.components import Rotary
from avlens.families.encoders import HookedEncoder
from avlens.families.hf_backbone import share_decoder_weights

_IGNORED_PROCESSOR_KEYS = {"token_type_ids"}


def _chunk_spans(values: list[int], per_chunk: int, offset: int) -> list[tuple[int, int]]:
    """Split a non-decreasing list of temporal ids into chunks of `per_chunk` ids (relative to
    `offset`): Hugging Face's `get_chunked_index`, whose chunk counter advances by one per
    boundary crossed."""
    spans, start, current = [], 0, 1
    for i, v in enumerate(values):
        if v - offset >= current * per_chunk:
            spans.append((start, i))
            start = i
            current += 1
    spans.append((start, len(values)))
    return spans


class _MediaCursor:
    """Walks the media items of a batch in the order Hugging Face consumes them."""

    def __init__(self, audio_lens, video_grids, video_spg, image_grids):
        self.audio_lens = audio_lens  # tokens per audio item
        self.video_grids = video_grids  # [n, 3] long
        self.video_spg = video_spg  # [n] tensor (seconds per temporal grid)
        self.image_grids = image_grids
        self.audio = self.video = self.image = 0

    def next(self, kind: str):
        i = getattr(self, kind)
        setattr(self, kind, i + 1)
        store = {"audio": self.audio_lens, "video": self.video_grids, "image": self.image_grids}[kind]
        if store is None or i >= len(store):
            raise ValueError(
                f"the prompt has more {kind} placeholder blocks than {kind} inputs "
                f"({0 if store is None else len(store)} given): pass one {kind} per block."
            )
        return i


class HookedQwen2_5Omni(HookedAVTransformer):
    """Qwen2.5-Omni thinker with TMRoPE, audio/video/image towers and audio-in-video layouts."""

    encoder_hook_prefixes = ("audio_tower.", "visual.")
    position_dtype = torch.long  # Hugging Face's get_rope_index gives integer ids here

    def audio_token_lengths(self, n_frames: Tensor) -> Tensor:
        """Audio tokens the tower makes from each audio's number of valid mel frames."""
        return self.audio_tower.hf._get_feat_extract_output_lengths(n_frames)[1]

    # ---------------------------------------------------------------------------------- config
    @staticmethod
    def config_from_hf(thinker_config, dtype: Optional[torch.dtype] = None, device: Optional[str] = None) -> AVConfig:
        tc = thinker_config.text_config
        rp = dict(getattr(tc, "rope_parameters", None) or {})
        if rp.get("rope_type", "default") not in ("default", None):
            raise NotImplementedError(f"rope_type {rp.get('rope_type')!r} is not supported; avlens implements the default TMRoPE")
        if getattr(tc, "use_sliding_window", False):
            raise NotImplementedError("use_sliding_window=True is not supported (Qwen2.5-Omni checkpoints do not use it)")
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        # Hugging Face silently falls back to [16, 24, 24] when mrope_section is absent; so do we,
        # and AVConfig then says clearly if that does not fit the head dimension.
        section = list(rp.get("mrope_section", [16, 24, 24]))
        ids = {
            "audio_token_id": thinker_config.audio_token_id,
            "video_token_id": thinker_config.video_token_id,
            "image_token_id": thinker_config.image_token_id,
            "audio_start_token_id": thinker_config.audio_start_token_id,
            "audio_end_token_id": thinker_config.audio_end_token_id,
            "vision_start_token_id": getattr(thinker_config, "vision_start_token_id", None) or 151652,
            "vision_end_token_id": getattr(thinker_config, "vision_end_token_id", None) or 151653,
        }
        pad = getattr(tc, "pad_token_id", None)
        if pad is not None:
            ids["pad_token_id"] = pad
        return AVConfig(
            d_model=tc.hidden_size,
            d_head=head_dim,
            n_layers=tc.num_hidden_layers,
            n_ctx=tc.max_position_embeddings,
            n_heads=tc.num_attention_heads,
            n_key_value_heads=tc.num_key_value_heads,
            d_mlp=tc.intermediate_size,
            d_vocab=tc.vocab_size,
            eps=tc.rms_norm_eps,
            act_fn=tc.hidden_act,
            rope_kind="mrope",
            mrope_section=section,
            rope_theta=float(rp.get("rope_theta", getattr(tc, "rope_theta", 1e6))),
            qkv_bias=True,
            dtype=dtype or torch.float32,
            device=device,
            model_family="HookedQwen2_5Omni",
            original_architecture="Qwen2_5OmniThinkerForConditionalGeneration",
            token_ids=ids,
        )

    # ---------------------------------------------------------------------------------- loading
    @classmethod
    def from_hf(cls, hf_model, tokenizer: Any = None) -> "HookedQwen2_5Omni":
        """Wrap a `Qwen2_5OmniThinkerForConditionalGeneration` (or the full
        `Qwen2_5OmniForConditionalGeneration`, whose thinker is taken). The weights are shared
        with the HF model, not copied."""
        thinker = getattr(hf_model, "thinker", hf_model)
        if type(thinker).__name__ != "Qwen2_5OmniThinkerForConditionalGeneration":
            raise TypeError(f"expected a Qwen2.5-Omni thinker, got {type(thinker).__name__}")
        p = next(thinker.parameters())
        cfg = cls.config_from_hf(thinker.config, dtype=p.dtype, device=str(p.device))
        cfg.tie_word_embeddings = False  # the lm_head module is shared as it is (tied or not)
        with torch.device("meta"):
            model = cls(cfg, tokenizer=tokenizer)
        share_decoder_weights(model, thinker.model.language_model, thinker.lm_head)
        model.rotary = Rotary(cfg).to(p.device)
        return model.attach_thinker_parts(thinker, thinker.config.seconds_per_chunk)

    def attach_thinker_parts(self, thinker, seconds_per_chunk: float) -> "HookedQwen2_5Omni":
        """Wrap the thinker's audio and vision towers (hook points in and inside them) and take its
        timing parameters; then register the hook points and switch to eval mode."""
        self.audio_tower = HookedEncoder(thinker.model.audio_tower)
        self.visual = HookedEncoder(thinker.model.visual)
        self.spatial_merge_size = thinker.model.spatial_merge_size
        self.position_id_per_seconds = thinker.config.position_id_per_seconds
        self.seconds_per_chunk = seconds_per_chunk
        self.hf_config = thinker.config
        self.setup()
        self.eval()
        return self

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str,
        dtype: Optional[torch.dtype] = None,
        device: Optional[str] = None,
        allow_pickle: bool = False,
        attn_implementation: str = "sdpa",
        load_tokenizer: bool = True,
    ) -> "HookedQwen2_5Omni":
        """Load the thinker of a Qwen2.5-Omni checkpoint from a local folder or hub id.

        Only the thinker's tensors are read (talker and token2wav tensors are skipped, shard by
        shard), straight into the requested dtype: a 7B thinker loads without first building
        the whole model in float32. Pickle (`.bin`) checkpoints load only with
        `allow_pickle=True`, and then with `torch.load(weights_only=True)`.
        """
        from transformers import AutoConfig
        from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniThinkerForConditionalGeneration

        root = _resolve_checkpoint(path_or_id, allow_pickle)
        config = AutoConfig.from_pretrained(root)
        thinker_cfg = getattr(config, "thinker_config", config)
        if getattr(thinker_cfg, "model_type", None) != "qwen2_5_omni_thinker":
            raise ValueError(f"{path_or_id} is not a Qwen2.5-Omni checkpoint (model_type {config.model_type!r})")
        if getattr(thinker_cfg, "vision_start_token_id", None) is None:
            thinker_cfg.vision_start_token_id = 151652
        state = _read_thinker_state(root, allow_pickle)
        if dtype is None:
            dtype = next(iter(state.values())).dtype
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        thinker_cfg._attn_implementation = attn_implementation
        with _parameters_on_meta():
            hf = Qwen2_5OmniThinkerForConditionalGeneration._from_config(thinker_cfg, dtype=dtype)
        expected = set(hf.state_dict().keys())
        tied = "lm_head.weight" not in state and getattr(thinker_cfg, "tie_word_embeddings", False)
        missing = sorted(k for k in expected - set(state) if not (tied and k == "lm_head.weight"))
        if missing:
            raise ValueError(f"the checkpoint lacks {len(missing)} thinker tensors, e.g. {missing[:5]}")
        unexpected = sorted(set(state) - expected)
        if unexpected:
            raise ValueError(f"the checkpoint has {len(unexpected)} unexpected thinker tensors, e.g. {unexpected[:5]}")
        hf.load_state_dict(state, strict=False, assign=True)
        if tied:
            hf.lm_head.weight = hf.model.language_model.embed_tokens.weight
        hf = hf.to(device or "cpu").eval()
        tokenizer = None
        if load_tokenizer:
            tokenizer = _try_tokenizer(root)
        model = cls.from_hf(hf, tokenizer=tokenizer)
        model.media_defaults = _processor_pixel_budget(root)
        return model

    # ---------------------------------------------------------------------------------- inputs
    def special_token_ids(self) -> set[int]:
        t = self.cfg.token_ids
        ids = {t[k] for k in ("audio_start_token_id", "audio_end_token_id", "vision_start_token_id", "vision_end_token_id")}
        return ids | super().special_token_ids()

    def encode_audio(self, input_features: Tensor, feature_attention_mask: Tensor) -> Tensor:
        """Audio tower: mel features `[n, mels, frames]` -> `[n_tokens, d_model]` (valid frames
        only, as Hugging Face does)."""
        tower = self.audio_tower
        input_features = tower.hook_in(input_features.to(tower.dtype))
        lengths = feature_attention_mask.sum(1)
        flat = input_features.permute(0, 2, 1)[feature_attention_mask.bool()].permute(1, 0)
        after_cnn, out_lens = tower.hf._get_feat_extract_output_lengths(lengths)
        out = tower.run(flat, feature_lens=lengths, aftercnn_lens=after_cnn).last_hidden_state
        if out.shape[0] != int(out_lens.sum()):
            raise RuntimeError(f"audio tower gave {out.shape[0]} tokens, expected {int(out_lens.sum())}")
        return tower.hook_out(out)

    def encode_visual(self, pixel_values: Tensor, grid_thw: Tensor) -> Tensor:
        """Vision tower: flattened patches + grids -> merged tokens `[n_tokens, d_model]`."""
        tower = self.visual
        pixel_values = tower.hook_in(pixel_values.to(tower.dtype))
        out = tower.run(pixel_values, grid_thw=grid_thw)
        feats = out.pooler_output if hasattr(out, "pooler_output") and out.pooler_output is not None else out
        if isinstance(feats, (tuple, list)):
            feats = torch.cat(list(feats), 0)
        return tower.hook_out(feats)

    def prepare(
        self,
        input_ids: Tensor,
        attention_mask: Optional[Tensor] = None,
        input_features: Optional[Tensor] = None,
        feature_attention_mask: Optional[Tensor] = None,
        pixel_values: Optional[Tensor] = None,
        image_grid_thw: Optional[Tensor] = None,
        pixel_values_videos: Optional[Tensor] = None,
        video_grid_thw: Optional[Tensor] = None,
        video_second_per_grid: Optional[Tensor] = None,
        use_audio_in_video: bool = False,
        **extra,
    ) -> AVBatch:
        """Processor outputs (`Qwen2_5OmniProcessor(...)`) -> `AVBatch`.

        Runs the towers once, builds the layout (groups, time stamps, 2-second chunk ids) and
        the 3-D positions exactly as Hugging Face's `get_rope_index` does.
        """
        unknown = set(extra) - _IGNORED_PROCESSOR_KEYS
        if unknown:
            raise TypeError(
                f"prepare() got unexpected inputs {sorted(unknown)}; it takes the outputs of "
                "Qwen2_5OmniProcessor (input_ids, attention_mask, input_features, "
                "feature_attention_mask, pixel_values, image_grid_thw, pixel_values_videos, "
                "video_grid_thw, video_second_per_grid) and use_audio_in_video."
            )
        dev = self.W_E.device
        input_ids = torch.as_tensor(input_ids)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        input_ids = input_ids.to(dev).long()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(dev).long()
        t = self.cfg.token_ids
        if input_features is not None and feature_attention_mask is None:
            raise ValueError(
                "input_features without feature_attention_mask: the number of valid mel frames of "
                "each audio (and so its number of audio tokens) comes from feature_attention_mask. "
                "Pass the processor's feature_attention_mask."
            )
        if pixel_values_videos is not None and video_second_per_grid is None:
            raise ValueError(
                "video input without video_second_per_grid: the temporal rotary positions of video "
                "tokens need the seconds per temporal grid of each video. Pass the processor's "
                "video_second_per_grid (temporal_patch_size / fps per video)."
            )
        if pixel_values_videos is not None and video_grid_thw is None:
            raise ValueError("pixel_values_videos without video_grid_thw: pass the processor's video_grid_thw")
        if pixel_values is not None and image_grid_thw is None:
            raise ValueError("pixel_values without image_grid_thw: pass the processor's image_grid_thw")
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has {tuple(input_ids.shape)}; they must match")
        if input_features is not None:
            if input_features.ndim != 3 or feature_attention_mask.ndim != 2 or input_features.shape[0] != feature_attention_mask.shape[0] or input_features.shape[-1] != feature_attention_mask.shape[-1]:
                raise ValueError(
                    f"input_features {tuple(input_features.shape)} and feature_attention_mask "
                    f"{tuple(feature_attention_mask.shape)} do not fit: expected [n_audio, mels, frames] "
                    "and [n_audio, frames] from the same processor call."
                )
        m2 = self.spatial_merge_size**2
        for kind, pv, grid in (("video", pixel_values_videos, video_grid_thw), ("image", pixel_values, image_grid_thw)):
            if pv is None:
                continue
            grid = torch.as_tensor(grid)
            if grid.ndim != 2 or grid.shape[1] != 3:
                raise ValueError(f"{kind}_grid_thw must be [n_{kind}s, 3] (t, h, w per {kind}); got {tuple(grid.shape)}")
            if int(grid.prod(-1).sum()) != pv.shape[0]:
                raise ValueError(
                    f"{kind} patches ({pv.shape[0]} rows) do not match {kind}_grid_thw, which implies "
                    f"{int(grid.prod(-1).sum())} (sum of t*h*w); pass the tensors of one processor call."
                )
            if bool((grid[:, 1:] % self.spatial_merge_size != 0).any()):
                raise ValueError(f"{kind}_grid_thw heights and widths must be multiples of the merge size {self.spatial_merge_size}")
        if pixel_values_videos is not None:
            n_videos = torch.as_tensor(video_grid_thw).shape[0]
            n_spg = torch.as_tensor(video_second_per_grid).reshape(-1).shape[0]
            if n_spg != n_videos:
                raise ValueError(f"video_second_per_grid has {n_spg} entries for {n_videos} videos; pass one per video")
        for kind, present in (("audio", input_features is not None), ("video", pixel_values_videos is not None), ("image", pixel_values is not None)):
            n_ph = int(((input_ids == t[f"{kind}_token_id"]) & attention_mask.bool()).sum())
            if n_ph and not present:
                raise ValueError(f"the prompt has {n_ph} {kind} placeholder tokens but no {kind} input was given")
            if present and not n_ph:
                raise ValueError(f"{kind} input was given but the prompt has no {kind} placeholder tokens (id {t[f'{kind}_token_id']})")

        audio_lens = None
        if input_features is not None:
            fam = feature_attention_mask.to(dev)
            audio_lens = self.audio_token_lengths(fam.sum(1)).tolist()
        spg = None
        if video_second_per_grid is not None:
            spg = torch.as_tensor(video_second_per_grid)
        cursor = _MediaCursor(
            audio_lens,
            video_grid_thw.tolist() if video_grid_thw is not None else None,
            spg,
            image_grid_thw.tolist() if image_grid_thw is not None else None,
        )
        positions, time, chunk, media_index, deltas = self._positions_and_times(input_ids, attention_mask, cursor, use_audio_in_video)
        for kind, store, used in (("audio", audio_lens, cursor.audio), ("video", cursor.video_grids, cursor.video), ("image", cursor.image_grids, cursor.image)):
            if store is not None and used != len(store):
                raise ValueError(f"{len(store)} {kind} inputs but {used} {kind} placeholder blocks in the prompt")

        raw = dict(
            input_features=input_features,
            feature_attention_mask=feature_attention_mask,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            video_second_per_grid=video_second_per_grid,
            use_audio_in_video=use_audio_in_video,
        )
        with torch.no_grad():
            features = self.encode_media(raw)

        valid = attention_mask.bool()
        masks = {k: (input_ids == t[f"{k}_token_id"]) & valid for k in ("audio", "video", "image")}
        media = masks["audio"] | masks["video"] | masks["image"]
        special_ids = torch.tensor(sorted(self.special_token_ids()), device=dev)
        masks["special"] = torch.isin(input_ids, special_ids) & valid & ~media
        masks["pad"] = ~valid
        masks["text"] = valid & ~media & ~masks["special"]
        str_tokens = None
        if self.tokenizer is not None:
            str_tokens = [[self.tokenizer.decode([i]) for i in row] for row in input_ids.tolist()]
        layout = BatchLayout(masks, time=time, chunk=chunk, media_index=media_index, str_tokens=str_tokens)
        return self.make_batch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            layout=layout,
            features=features,
            rope_deltas=deltas,
            raw=raw,
        )

    def encode_media(self, raw: dict) -> dict[str, Tensor]:
        """Run the encoders on a batch's raw inputs: `{"audio": ..., "image": ..., "video": ...}`."""
        dev = self.W_E.device
        features = {}
        if raw.get("input_features") is not None:
            features["audio"] = self.encode_audio(raw["input_features"].to(dev), raw["feature_attention_mask"].to(dev))
        if raw.get("pixel_values") is not None:
            features["image"] = self.encode_visual(raw["pixel_values"].to(dev), raw["image_grid_thw"].to(dev))
        if raw.get("pixel_values_videos") is not None:
            features["video"] = self.encode_visual(raw["pixel_values_videos"].to(dev), raw["video_grid_thw"].to(dev))
        return features

    def make_batch(self, **fields) -> AVBatch:
        """The `AVBatch` of `prepare` (a family whose encoders give more than the spliced features
        overrides this)."""
        return AVBatch(**fields)

    @property
    def encoders_hooked(self) -> bool:
        return self.audio_tower.hooked or self.visual.hooked

    def reencoded(self, batch: AVBatch) -> AVBatch:
        """The batch with its media features computed afresh from its raw inputs (so hooks on the
        encoders take effect)."""
        if batch.inputs_embeds is not None or not batch.raw:
            raise ValueError(
                "a hook is attached to audio_tower/visual, but this batch carries no raw media "
                "inputs to run the encoders on (it was not built by prepare, or was sliced). "
                "Build it with model.prepare(...)."
            )
        fresh = self.encode_media(batch.raw)
        return self.make_batch(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
            layout=batch.layout, features={**batch.features, **fresh}, rope_deltas=batch.rope_deltas,
        )

    def embed_batch(self, batch: AVBatch) -> Tensor:
        if self.encoders_hooked and batch.features:
            batch = self.reencoded(batch)
        return super().embed_batch(batch)

    def prepare_media(self, text, audio=None, video=None, images=None, fps=2.0, sampling_rate: int = 16000,
                      use_audio_in_video: bool = False, **kw) -> AVBatch:
        """Raw media in: `text` (a string, needing `model.tokenizer`, or token ids) with one
        placeholder per media item (`<|vision_bos|><|VIDEO|><|vision_eos|>`, `<|audio_bos|><|AUDIO|>
        <|audio_eos|>`, ...), waveforms (16 kHz) and frames (`[T, H, W, 3]` uint8) -> the same
        `AVBatch` as `prepare(**Qwen2_5OmniProcessor(...))`. Zeroing a modality as in the paper:
        pass `audio=np.zeros_like(wave)` or `video=np.zeros_like(frames)`; the layout is unchanged.
        Pixel budgets default to `model.media_defaults` (set by `avlens.load_toy`), else to the
        Hugging Face processors' own. See `avlens.data.media.prepare_media`."""
        from avlens.data.media import prepare_media

        for k, v in getattr(self, "media_defaults", {}).items():
            kw.setdefault(k, v)
        return prepare_media(self, text, audio=audio, video=video, images=images, fps=fps,
                             sampling_rate=sampling_rate, use_audio_in_video=use_audio_in_video, **kw)

    # ---------------------------------------------------------------------------------- positions
    def _positions_and_times(self, input_ids: Tensor, attention_mask: Tensor, cursor: _MediaCursor, use_audio_in_video: bool):
        b, n = input_ids.shape
        dev = input_ids.device
        positions = torch.ones(3, b, n, dtype=self.position_dtype)
        time = torch.full((b, n), float("nan"))
        chunk = torch.full((b, n), -1, dtype=torch.long)
        media_index = torch.full((b, n), -1, dtype=torch.long)
        deltas = torch.zeros(b, 1, dtype=self.position_dtype)
        has_grid = cursor.video_grids is not None or cursor.image_grids is not None
        for i in range(b):
            valid = attention_mask[i].bool().cpu()
            ids = input_ids[i].cpu()[valid].tolist()
            pos, tm, ch, mi = self._sample_positions(ids, cursor, use_audio_in_video)
            positions[:, i, valid] = pos
            time[i, valid] = tm
            chunk[i, valid] = ch
            media_index[i, valid] = mi
            deltas[i, 0] = pos.max() + 1 - len(ids) if len(ids) else 0
        if not has_grid:
            # Hugging Face's text/audio path: running count, padding at 1 (equal on real tokens)
            positions, deltas = self.text_positions(attention_mask.cpu())
            positions, deltas = positions.to(self.position_dtype), deltas.to(self.position_dtype)
        return positions.to(dev), time.to(dev), chunk.to(dev), media_index.to(dev), deltas.to(dev)

    def _vision_positions(self, grid: list[int], t_index: Tensor, start: int) -> Tensor:
        gt, gh, gw = grid
        m = self.spatial_merge_size
        h, w = gh // m, gw // m
        t_idx = t_index.view(-1, 1).expand(-1, h * w).flatten()
        h_idx = torch.arange(h).view(1, -1, 1).expand(gt, -1, w).flatten()
        w_idx = torch.arange(w).view(1, 1, -1).expand(gt, h, -1).flatten()
        return torch.stack([t_idx, h_idx, w_idx]) + start

    def _video_t_index(self, vi: int) -> tuple[Tensor, Tensor]:
        gt = cursor_grid = self._cursor.video_grids[vi][0]
        spg = self._cursor.video_spg[vi]
        # float32 arithmetic in Hugging Face's order, so truncation matches exactly
        t_index = (torch.arange(gt) * spg.cpu().float() * self.position_id_per_seconds).long()
        seconds = torch.arange(cursor_grid).float() * spg.cpu().float()
        return t_index, seconds

    def _sample_positions(self, ids: list[int], cursor: _MediaCursor, use_audio_in_video: bool):
        t = self.cfg.token_ids
        A, V, I = t["audio_token_id"], t["video_token_id"], t["image_token_id"]
        a_bos, a_eos = t["audio_start_token_id"], t["audio_end_token_id"]
        v_bos, v_eos = t["vision_start_token_id"], t["vision_end_token_id"]
        per_chunk = int(self.position_id_per_seconds * self.seconds_per_chunk)
        pps = self.position_id_per_seconds
        self._cursor = cursor
        n = len(ids)
        pos = torch.zeros(3, n, dtype=torch.long)
        tm = torch.full((n,), float("nan"))
        ch = torch.full((n,), -1, dtype=torch.long)
        mi = torch.full((n,), -1, dtype=torch.long)
        local = {"audio": 0, "video": 0, "image": 0}
        nxt, i = 0, 0

        def run_end(j: int, allowed: set) -> int:
            while j < n and ids[j] in allowed:
                j += 1
            return j

        while i < n:
            tok = ids[i]
            if use_audio_in_video and tok == v_bos and i + 1 < n and ids[i + 1] == a_bos:
                pos[:, i] = pos[:, i + 1] = nxt
                s = nxt + 1
                j = run_end(i + 2, {A, V})
                vi, ai = cursor.next("video"), cursor.next("audio")
                grid = cursor.video_grids[vi]
                t_index, v_sec = self._video_t_index(vi)
                vpos = self._vision_positions(grid, t_index, s)
                n_audio = cursor.audio_lens[ai]
                apos = torch.arange(n_audio).view(1, -1).expand(3, -1) + s
                hw = grid[1] * grid[2] // self.spatial_merge_size**2
                v_secs = v_sec.repeat_interleave(hw)
                a_secs = torch.arange(n_audio).float() / pps
                vspans = _chunk_spans(vpos[0].tolist(), per_chunk, s)
                aspans = _chunk_spans(apos[0].tolist(), per_chunk, s)
                if j - (i + 2) != vpos.shape[1] + n_audio:
                    raise ValueError(
                        f"audio-in-video block at position {i}: {j - (i + 2)} placeholder tokens, but the "
                        f"video ({grid}) and its audio need {vpos.shape[1]} + {n_audio}. Re-run the "
                        "processor with the same media and use_audio_in_video=True."
                    )
                k = i + 2
                last_max = s - 1
                for c in range(max(len(vspans), len(aspans))):
                    for kind, spans, p_all, secs, pid, idx in (
                        ("video", vspans, vpos, v_secs, V, vi),
                        ("audio", aspans, apos, a_secs, A, ai),
                    ):
                        if c >= len(spans):
                            continue
                        a0, a1 = spans[c]
                        cnt = a1 - a0
                        if cnt == 0:
                            continue
                        block_ids = ids[k : k + cnt]
                        if any(x != pid for x in block_ids):
                            raise ValueError(
                                f"audio-in-video block at position {i}: chunk {c} should hold {cnt} "
                                f"{kind} tokens at positions {k}..{k + cnt - 1}; the prompt's placeholders "
                                "are not interleaved as [video chunk][audio chunk] per 2 s. Re-run the "
                                "processor with use_audio_in_video=True."
                            )
                        pos[:, k : k + cnt] = p_all[:, a0:a1]
                        tm[k : k + cnt] = secs[a0:a1]
                        ch[k : k + cnt] = c
                        mi[k : k + cnt] = local[kind]
                        last_max = int(p_all[:, a0:a1].max())
                        k += cnt
                local["video"] += 1
                local["audio"] += 1
                if j + 1 >= n or ids[j] != a_eos or ids[j + 1] != v_eos:
                    raise ValueError(
                        f"the audio-in-video block starting at position {i} must end with "
                        "<|audio_eos|><|vision_eos|>; re-run the processor with use_audio_in_video=True."
                    )
                pos[:, j] = pos[:, j + 1] = last_max + 1
                nxt = last_max + 2
                i = j + 2
            elif tok in (A, V, I):
                kind = {A: "audio", V: "video", I: "image"}[tok]
                if kind == "video" and use_audio_in_video:
                    raise ValueError(
                        f"use_audio_in_video=True, but the video at position {i} is not an audio-in-video "
                        "block (<|vision_bos|><|audio_bos|> [video chunk][audio chunk]... <|audio_eos|>"
                        "<|vision_eos|>). Use the processor's output with the same use_audio_in_video value."
                    )
                j = run_end(i, {tok})
                idx = cursor.next(kind)
                if kind == "audio":
                    cnt = cursor.audio_lens[idx]
                    p = torch.arange(cnt).view(1, -1).expand(3, -1) + nxt
                    secs = torch.arange(cnt).float() / pps
                else:
                    grid = (cursor.video_grids if kind == "video" else cursor.image_grids)[idx]
                    if kind == "video":
                        t_index, g_sec = self._video_t_index(idx)
                    else:
                        t_index = (torch.arange(grid[0]) * 1 * pps).long()
                        g_sec = torch.full((grid[0],), float("nan"))
                    p = self._vision_positions(grid, t_index, nxt)
                    cnt = p.shape[1]
                    secs = g_sec.repeat_interleave(grid[1] * grid[2] // self.spatial_merge_size**2)
                if j - i != cnt:
                    raise ValueError(
                        f"{j - i} {kind} placeholder tokens at position {i} but the {kind} input #{idx} "
                        f"gives {cnt} features. Each {kind} needs exactly as many placeholders as "
                        "its encoder outputs tokens: re-run the processor on the same media."
                    )
                pos[:, i:j] = p
                tm[i:j] = secs
                if kind != "image":
                    for c, (a0, a1) in enumerate(_chunk_spans(p[0].tolist(), per_chunk, nxt)):
                        ch[i + a0 : i + a1] = c
                mi[i:j] = local[kind]
                local[kind] += 1
                nxt = int(p.max()) + 1
                i = j
            else:
                pos[:, i] = nxt
                nxt += 1
                i += 1
        return pos, tm, ch, mi


# ------------------------------------------------------------------------------------ checkpoints


def _resolve_checkpoint(path_or_id: str, allow_pickle: bool) -> str:
    if os.path.isdir(path_or_id):
        return path_or_id
    if os.path.exists(path_or_id):
        raise ValueError(f"{path_or_id} is a file; pass the checkpoint folder (with config.json)")
    from huggingface_hub import hf_hub_download, snapshot_download

    # configs, tokenizer files and the safetensors index first; then only the shards that hold
    # thinker tensors (a 7B Omni checkpoint's talker and token2wav shards are never fetched)
    root = snapshot_download(path_or_id, allow_patterns=["*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken"])
    index = os.path.join(root, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        for fname in sorted({fn for k, fn in weight_map.items() if _thinker_key(k) is not None}):
            hf_hub_download(path_or_id, fname)
        return root
    patterns = ["*.safetensors"] + (["*.bin"] if allow_pickle else [])
    return snapshot_download(path_or_id, allow_patterns=patterns + ["*.json"])


def _thinker_key(key: str) -> Optional[str]:
    """Map a checkpoint key to the HF thinker's module key; None for talker / token2wav."""
    if key.startswith(("talker.", "token2wav.")):
        return None
    if key.startswith("thinker."):
        key = key[len("thinker.") :]
    if key.startswith("audio_tower."):
        return "model." + key
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not key.startswith(("model.language_model.", "model.audio_tower.", "model.visual.")):
        return "model.language_model." + key[len("model.") :]
    return key


def _read_thinker_state(root: str, allow_pickle: bool) -> dict[str, Tensor]:
    index = os.path.join(root, "model.safetensors.index.json")
    single = os.path.join(root, "model.safetensors")
    state: dict[str, Tensor] = {}
    if os.path.exists(index) or os.path.exists(single):
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        else:
            with safe_open(single, framework="pt") as f:
                weight_map = {k: "model.safetensors" for k in f.keys()}
        by_file: dict[str, list[str]] = {}
        for k, fname in weight_map.items():
            if _thinker_key(k) is not None:
                by_file.setdefault(fname, []).append(k)
        for fname, keys in by_file.items():
            with safe_open(os.path.join(root, fname), framework="pt") as f:
                for k in keys:
                    state[_thinker_key(k)] = f.get_tensor(k)
        return state
    bins = sorted(x for x in os.listdir(root) if x.endswith(".bin"))
    if bins:
        if not allow_pickle:
            raise ValueError(
                f"{root} holds only pickle checkpoints ({bins[:3]}), which can run code when "
                "loaded. Convert them to safetensors, or pass allow_pickle=True to load them with "
                "torch.load(weights_only=True)."
            )
        for fname in bins:
            sd = torch.load(os.path.join(root, fname), map_location="cpu", weights_only=True)
            for k, v in sd.items():
                tk = _thinker_key(k)
                if tk is not None:
                    state[tk] = v
        return state
    raise FileNotFoundError(f"no safetensors (or .bin) weights in {root}")


@contextlib.contextmanager
def _parameters_on_meta():
    """Create parameters on the meta device (buffers stay real), so a model skeleton costs no
    memory before the checkpoint's tensors are assigned into it."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(module._parameters[name].to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def _try_tokenizer(root: str):
    if not any(os.path.exists(os.path.join(root, f)) for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(root)
    except Exception as e:  # a broken tokenizer should not stop the weights from loading
        warnings.warn(f"could not load the tokenizer from {root}: {e}")
        return None


# ------------------------------------------------------------------------------------ prompts


def audio_token_count(n_frames: int) -> int:
    """Audio tokens the Qwen2.5-Omni audio tower makes from `n_frames` mel frames (10 ms hop):
    two stride-2 stages, `((F - 1) // 2 + 1 - 2) // 2 + 1` (25 tokens per second)."""
    return ((n_frames - 1) // 2 + 1 - 2) // 2 + 1


def media_placeholder_ids(
    token_ids: dict[str, int],
    n_audio_frames: Optional[int] = None,
    video_grid_thw: Optional[tuple[int, int, int]] = None,
    video_second_per_grid: float = 1.0,
    image_grid_thw: Optional[tuple[int, int, int]] = None,
    use_audio_in_video: bool = False,
    spatial_merge_size: int = 2,
    position_id_per_seconds: int = 25,
    seconds_per_chunk: int = 2,
) -> list[int]:
    """The token ids Qwen2.5-Omni's processor puts in a prompt for one audio, video and/or image,
    delimiters included. With `use_audio_in_video`, the video and its audio track are
    interleaved in `seconds_per_chunk` chunks, `[video chunk][audio chunk]`, between
    `<|vision_bos|><|audio_bos|>` and `<|audio_eos|><|vision_eos|>`."""
    t = token_ids
    out: list[int] = []
    m2 = spatial_merge_size**2
    if use_audio_in_video:
        if n_audio_frames is None or video_grid_thw is None:
            raise ValueError("use_audio_in_video needs both n_audio_frames and video_grid_thw")
        gt, gh, gw = video_grid_thw
        per_grid = gh * gw // m2
        spg = torch.tensor(float(video_second_per_grid)).float()
        v_t = (torch.arange(gt) * spg * position_id_per_seconds).long().repeat_interleave(per_grid).tolist()
        n_a = audio_token_count(n_audio_frames)
        per_chunk = int(position_id_per_seconds * seconds_per_chunk)
        vs, as_ = _chunk_spans(v_t, per_chunk, 0), _chunk_spans(list(range(n_a)), per_chunk, 0)
        out += [t["vision_start_token_id"], t["audio_start_token_id"]]
        for c in range(max(len(vs), len(as_))):
            if c < len(vs):
                out += [t["video_token_id"]] * (vs[c][1] - vs[c][0])
            if c < len(as_):
                out += [t["audio_token_id"]] * (as_[c][1] - as_[c][0])
        out += [t["audio_end_token_id"], t["vision_end_token_id"]]
        return out
    if image_grid_thw is not None:
        n = int(torch.tensor(image_grid_thw).prod()) // m2
        out += [t["vision_start_token_id"]] + [t["image_token_id"]] * n + [t["vision_end_token_id"]]
    if video_grid_thw is not None:
        n = int(torch.tensor(video_grid_thw).prod()) // m2
        out += [t["vision_start_token_id"]] + [t["video_token_id"]] * n + [t["vision_end_token_id"]]
    if n_audio_frames is not None:
        out += [t["audio_start_token_id"]] + [t["audio_token_id"]] * audio_token_count(n_audio_frames) + [t["audio_end_token_id"]]
    return out


def _processor_pixel_budget(root) -> dict:
    """`{"min_pixels", "max_pixels"}` from the checkpoint's preprocessor_config.json (the image
    processor's `size` {"shortest_edge", "longest_edge"} or the older top-level keys), so
    `prepare_media` resizes frames as the checkpoint's own processor does; {} when absent."""
    import json
    from pathlib import Path

    path = Path(root) / "preprocessor_config.json"
    if not path.is_file():
        return {}
    cfg = json.loads(path.read_text())
    size = cfg.get("size") or {}
    lo = cfg.get("min_pixels", size.get("shortest_edge"))
    hi = cfg.get("max_pixels", size.get("longest_edge"))
    return {k: int(v) for k, v in (("min_pixels", lo), ("max_pixels", hi)) if v is not None}


def tiny_thinker_config(
    vocab_size: int = 512,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 128,
    mrope_section: Optional[list[int]] = None,
    token_ids: Optional[dict[str, int]] = None,
    audio_d_model: int = 32,
    audio_heads: int = 2,
    vision_hidden: int = 32,
    vision_heads: int = 2,
    max_position_embeddings: int = 32768,
):
    """A Hugging Face `Qwen2_5OmniThinkerConfig` for a small thinker with 2-layer towers (patch 14,
    temporal patch 2, merge 2; 128 mel bins). Special token ids default to the top of the
    vocabulary (`token_ids` overrides them, e.g. from a tokenizer). Used by `avlens demo`, the
    benchmark and the toy model's training."""
    from transformers import Qwen2_5OmniThinkerConfig

    head_dim = d_model // n_heads
    if mrope_section is None:
        q = head_dim // 2
        mrope_section = [q - 2 * (q * 3 // 8), q * 3 // 8, q * 3 // 8]
    top = vocab_size - 1
    ids = dict(
        pad_token_id=top - 10, eos_token_id=top - 9, bos_token_id=top - 8,
        audio_token_id=top - 7, audio_start_token_id=top - 6, audio_end_token_id=top - 5,
        vision_start_token_id=top - 4, vision_end_token_id=top - 3, image_token_id=top - 2, video_token_id=top - 1,
    )
    if token_ids is not None:
        ids.update(token_ids)
        ids.setdefault("bos_token_id", None)
        if "bos_token_id" not in token_ids:
            ids["bos_token_id"] = None
    text = dict(
        vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, rms_norm_eps=1e-6,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(mrope_section)},
        pad_token_id=ids["pad_token_id"], eos_token_id=ids["eos_token_id"], bos_token_id=ids.get("bos_token_id"),
    )
    audio = dict(num_mel_bins=128, d_model=audio_d_model, encoder_layers=2, encoder_attention_heads=audio_heads,
                 encoder_ffn_dim=2 * audio_d_model, output_dim=d_model, n_window=100, max_source_positions=1500)
    vision = dict(depth=2, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=vision_heads,
                  out_hidden_size=d_model, patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=56,
                  fullatt_block_indexes=[1], in_channels=3)
    cfg = Qwen2_5OmniThinkerConfig(
        text_config=text, audio_config=audio, vision_config=vision,
        audio_token_index=ids["audio_token_id"], image_token_index=ids["image_token_id"], video_token_index=ids["video_token_id"],
        audio_start_token_id=ids["audio_start_token_id"], audio_end_token_id=ids["audio_end_token_id"],
        vision_start_token_id=ids["vision_start_token_id"], vision_end_token_id=ids["vision_end_token_id"],
        tie_word_embeddings=False,
    )
    cfg.pad_token_id = ids["pad_token_id"]
    return cfg
