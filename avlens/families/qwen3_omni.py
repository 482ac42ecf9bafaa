"""Qwen3-Omni thinker (`Qwen3OmniMoeThinkerForConditionalGeneration`; Qwen Team 2025, "Qwen3-Omni
Technical Report").

The thinker is a Qwen3-MoE decoder: q/k RMSNorm per head, no biases, sparse mixture-of-experts
MLPs (top-k routing with renormalised probabilities; `mlp_only_layers` stay dense), and
interleaved M-RoPE with float position ids (frequency j takes the H axis if j % 3 == 1 and
j < 3 * section[1], W if j % 3 == 2 and j < 3 * section[2], else T). Audio-in-video is a
token-level merge by time: a video token whose temporal id is <= the next audio token's goes
first. DeepStack: the vision tower's intermediate features (one level per
`deepstack_visual_indexes` entry) are added to the residual stream at the image / video positions
after decoder blocks 0, 1, ...; each addition is the hook point `blocks.{l}.hook_deepstack`
(`[batch, pos, d_model]`, zero off the visual positions), so `resid_pre[l + 1] = resid_post[l] +
deepstack[l]`, and `run_with_cache` returns an `AVActivationCache` whose `decompose_resid`
includes those terms.

Config pitfalls (transformers 5.x): the thinker config has no `vision_start_token_id` (set it;
real checkpoints use 151652), its `position_id_per_seconds` defaults to 25 while the processor and
real checkpoints use 13, and its audio ids default to Qwen2.5-Omni's (real: `<|audio_start|>`
151669, `<|audio_pad|>` 151675). avlens takes every id from the config it is given, as Hugging
Face's model does; `token_ids=` fills the ids the config lacks (`audio_end_token_id`,
`vision_end_token_id`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

import torch
from torch import Tensor, nn

from avlens.batch import AVBatch
from avlens.families.hf_backbone import backbone_config, hf_rotary, share_decoder_weights
from avlens.families.qwen2_5_omni import HookedQwen2_5Omni, _MediaCursor
from avlens.model.cache import wrap_cache
from avlens.model.components import TransformerBlock
from avlens.model.hook_points import AVHookPoint, RunState
from avlens.model.hooked import HookedAVTransformer
from avlens.model.moe import MoEMLP

VISUAL_KINDS = ("image", "video")

#: Pixel normalisation of Qwen3-Omni's (and Qwen3-VL's) processors: mean = std = 0.5 per channel
#: (transformers' IMAGENET_STANDARD_MEAN / _STD; the released preprocessor_config.json), not the
#: OpenAI-CLIP values of Qwen2-VL / Qwen2.5-Omni.
QWEN3_IMAGE_MEAN = (0.5, 0.5, 0.5)
QWEN3_IMAGE_STD = (0.5, 0.5, 0.5)
#: Image pixel budget of the released preprocessor_config.json (`min_pixels` / `max_pixels`).
QWEN3_IMAGE_MIN_PIXELS = 3136
QWEN3_IMAGE_MAX_PIXELS = 12845056
#: Video frame budget: `Qwen3OmniMoeProcessor.videos_kwargs["size"]`, which the processor passes
#: to its video processor on every call (so it overrides the checkpoint's image budget).
QWEN3_VIDEO_MIN_PIXELS = 128 * 32 * 32
QWEN3_VIDEO_MAX_PIXELS = 768 * 32 * 32


def default_vision_processing() -> dict:
    """HookedQwen3Omni's `prepare_media` defaults, as the released checkpoint's processor."""
    return dict(image_mean=QWEN3_IMAGE_MEAN, image_std=QWEN3_IMAGE_STD,
                image_min_pixels=QWEN3_IMAGE_MIN_PIXELS, image_max_pixels=QWEN3_IMAGE_MAX_PIXELS,
                video_min_pixels=QWEN3_VIDEO_MIN_PIXELS, video_max_pixels=QWEN3_VIDEO_MAX_PIXELS)


def vision_processing_from_preprocessor_config(root) -> dict:
    """`default_vision_processing()` updated from `root/preprocessor_config.json` when present:
    `image_mean`, `image_std` (images and video frames: the processor's video processor reads
    the same file) and the image budget (`min_pixels` / `max_pixels`, or `size`'s
    `shortest_edge` / `longest_edge`). The video budget stays the processor's `videos_kwargs`."""
    import json
    import os

    out = default_vision_processing()
    path = os.path.join(str(root), "preprocessor_config.json")
    if not os.path.isfile(path):
        return out
    with open(path) as f:
        cfg = json.load(f)
    for k in ("image_mean", "image_std"):
        if cfg.get(k) is not None:
            v = cfg[k]
            out[k] = tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3))
    size = cfg.get("size") or {}
    lo = cfg.get("min_pixels", size.get("shortest_edge"))
    hi = cfg.get("max_pixels", size.get("longest_edge"))
    if lo is not None:
        out["image_min_pixels"] = int(lo)
    if hi is not None:
        out["image_max_pixels"] = int(hi)
    return out


@dataclass(repr=False)
class DeepStackBatch(AVBatch):
    """An `AVBatch` that also carries the DeepStack features of its visual tokens:
    `deepstack[kind]` is `[levels, n_kind_tokens, d_model]` (rows in placeholder order, as
    `features[kind]`)."""

    deepstack: dict[str, Tensor] = field(default_factory=dict)

    def _fields(self, base: AVBatch) -> dict:
        return {f.name: getattr(base, f.name) for f in fields(AVBatch)}

    def to(self, device) -> "DeepStackBatch":
        return DeepStackBatch(**self._fields(super().to(device)), deepstack={k: v.to(device) for k, v in self.deepstack.items()})

    def select(self, index) -> "DeepStackBatch":
        idx = [index] if isinstance(index, int) else torch.as_tensor(index).tolist()
        deep = {}
        for kind, d in self.deepstack.items():
            starts = [0] + self.layout.counts(kind).cumsum(0).tolist()
            deep[kind] = torch.cat([d[:, starts[i] : starts[i + 1]] for i in idx], 1)
        return DeepStackBatch(**self._fields(super().select(idx)), deepstack=deep)


class DeepStackState:
    """The DeepStack terms of the forward pass in progress, shared by the blocks."""

    def __init__(self, n_levels: int):
        self.n_levels = n_levels
        self.terms: Optional[list[Tensor]] = None
        self.fired: set[str] = set()

    def begin(self, batch: Optional[AVBatch], kv_cache, dtype: torch.dtype) -> None:
        self.terms, self.fired = None, set()
        if batch is None or self.n_levels == 0 or (kv_cache is not None and kv_cache.length > 0):
            return  # text input, or a decoding step (new positions are text)
        visual = batch.layout.mask("image") | batch.layout.mask("video")
        if not bool(visual.any()):
            return
        deep = getattr(batch, "deepstack", None)
        if not deep:
            raise ValueError(
                "this batch has image/video positions but no DeepStack features, which Qwen3-Omni adds "
                "after its first decoder blocks (it was not built by HookedQwen3Omni.prepare, or was "
                "rebuilt as a plain AVBatch). Build it with model.prepare(...)."
            )
        self.set_from(batch, dtype)

    def set_from(self, batch: "DeepStackBatch", dtype: torch.dtype) -> None:
        if not getattr(batch, "deepstack", None):
            return  # nothing visual (audio / text only): no terms to add
        dev = batch.attention_mask.device
        terms = []
        for level in range(self.n_levels):
            x = torch.zeros(*batch.shape, batch.deepstack[next(iter(batch.deepstack))].shape[-1], device=dev, dtype=dtype)
            for kind in VISUAL_KINDS:
                if kind in batch.deepstack:
                    mask = batch.layout.mask(kind).to(dev)[..., None]
                    x = x.masked_scatter(mask, batch.deepstack[kind][level].to(dev, dtype))
            terms.append(x)
        self.terms = terms

    def term(self, layer: int) -> Optional[Tensor]:
        if self.terms is None or layer >= len(self.terms):
            return None
        self.fired.add(f"blocks.{layer}.hook_deepstack")
        return self.terms[layer]


class DeepStackBlock(TransformerBlock):
    """A decoder block after which the DeepStack term of its level is added:
    `out = resid_post + hook_deepstack(term)` (`hook_resid_post` fires before the addition)."""

    def __init__(self, cfg, state: RunState, layer: int, deepstack: DeepStackState):
        super().__init__(cfg, state, layer)
        self.hook_deepstack = AVHookPoint(state)
        object.__setattr__(self, "_deepstack", deepstack)  # shared, not a submodule

    def forward(self, resid_pre: Tensor, rope, mask, kv_cache=None) -> Tensor:
        out = super().forward(resid_pre, rope, mask, kv_cache)
        term = self._deepstack.term(self.layer)
        if term is None:
            return out
        return out + self.hook_deepstack(term)


class HookedQwen3Omni(HookedQwen2_5Omni):
    """Qwen3-Omni thinker: MoE decoder, interleaved M-RoPE (float ids), DeepStack, AuT audio tower."""

    position_dtype = torch.float32  # Hugging Face's get_rope_index gives float ids here

    def __init__(self, cfg, tokenizer: Any = None, n_deepstack: int = 0):
        super().__init__(cfg, tokenizer=tokenizer)
        self.deepstack = DeepStackState(n_deepstack)
        self.vision_processing = default_vision_processing()
        if n_deepstack > cfg.n_layers:
            raise ValueError(f"{n_deepstack} DeepStack levels for {cfg.n_layers} decoder layers")
        self.blocks = nn.ModuleList(
            [DeepStackBlock(cfg, self.run_state, l, self.deepstack) if l < n_deepstack else b for l, b in enumerate(self.blocks)]
        )
        self.setup()

    # ---------------------------------------------------------------------------------- loading
    @classmethod
    def from_hf(cls, hf_model, tokenizer: Any = None, token_ids: Optional[dict[str, int]] = None) -> "HookedQwen3Omni":
        """Wrap a `Qwen3OmniMoeThinkerForConditionalGeneration` (or the full
        `Qwen3OmniMoeForConditionalGeneration`, whose thinker is taken); weights shared."""
        thinker = getattr(hf_model, "thinker", hf_model)
        if type(thinker).__name__ != "Qwen3OmniMoeThinkerForConditionalGeneration":
            raise TypeError(f"expected a Qwen3-Omni thinker, got {type(thinker).__name__}")
        tc = thinker.config.text_config
        lm = thinker.model.language_model
        p = next(thinker.parameters())
        c = thinker.config
        if getattr(c, "vision_start_token_id", None) is None:
            raise ValueError(
                "the thinker config has no vision_start_token_id (Hugging Face's get_rope_index needs it too): "
                "set thinker.config.vision_start_token_id (151652 in real checkpoints)."
            )
        ids = {
            "audio_token_id": c.audio_token_id, "video_token_id": c.video_token_id, "image_token_id": c.image_token_id,
            "audio_start_token_id": c.audio_start_token_id, "vision_start_token_id": c.vision_start_token_id,
            "audio_end_token_id": getattr(c, "audio_end_token_id", None) or 151670,
            "vision_end_token_id": getattr(c, "vision_end_token_id", None) or 151653,
        }
        ids.update(token_ids or {})
        if getattr(tc, "pad_token_id", None) is not None:
            ids["pad_token_id"] = tc.pad_token_id
        cfg = backbone_config(
            tc, lm, rope_kind="mrope_interleaved", mrope_section=list(lm.rotary_emb.mrope_section),
            dtype=p.dtype, device=str(p.device), model_family="HookedQwen3Omni",
            original_architecture="Qwen3OmniMoeThinkerForConditionalGeneration", token_ids=ids,
        )
        n_deep = len(thinker.config.vision_config.deepstack_visual_indexes)
        with torch.device("meta"):
            model = cls(cfg, tokenizer=tokenizer, n_deepstack=n_deep)
        share_decoder_weights(model, lm, thinker.lm_head, share_mlp=False)
        for block, layer in zip(model.blocks, lm.layers):
            if hasattr(layer.mlp, "experts"):
                block.mlp = MoEMLP.from_hf(layer.mlp, tc.hidden_act, model.run_state)
            else:
                m = layer.mlp
                block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj = m.gate_proj, m.up_proj, m.down_proj
        model.rotary = hf_rotary(model, lm, p.device)
        return model.attach_thinker_parts(thinker, seconds_per_chunk=2)  # chunks only label the layout

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str,
        dtype: Optional[torch.dtype] = None,
        device: Optional[str] = None,
        load_tokenizer: bool = True,
        token_ids: Optional[dict[str, int]] = None,
        attn_implementation: str = "sdpa",
    ) -> "HookedQwen3Omni":
        """Load a Qwen3-Omni thinker checkpoint (model_type `qwen3_omni_moe_thinker`) or a full
        Qwen3-Omni checkpoint (`qwen3_omni_moe`, whose thinker is kept) with Hugging Face's loader
        (safetensors; its MoE weight conversion included), then `from_hf`. A full checkpoint is
        loaded whole before the talker is dropped: save the thinker alone to load less."""
        import os

        from transformers import AutoConfig
        from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as hf_mod

        from avlens.families.qwen2_5_omni import _try_tokenizer

        config = AutoConfig.from_pretrained(path_or_id)
        kw = dict(dtype=dtype or "auto", use_safetensors=True, attn_implementation=attn_implementation)
        if config.model_type == "qwen3_omni_moe_thinker":
            thinker = hf_mod.Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(path_or_id, **kw)
        elif config.model_type == "qwen3_omni_moe":
            thinker = hf_mod.Qwen3OmniMoeForConditionalGeneration.from_pretrained(path_or_id, **kw).thinker
        else:
            raise ValueError(f"{path_or_id} is not a Qwen3-Omni checkpoint (model_type {config.model_type!r})")
        if getattr(thinker.config, "vision_start_token_id", None) is None:
            thinker.config.vision_start_token_id = 151652  # real checkpoints' <|vision_start|>
        thinker = thinker.to(device or "cpu").eval()
        tok = _try_tokenizer(path_or_id) if load_tokenizer and os.path.isdir(path_or_id) else None
        model = cls.from_hf(thinker, tokenizer=tok, token_ids=token_ids)
        if os.path.isdir(path_or_id):
            model.vision_processing = vision_processing_from_preprocessor_config(path_or_id)
        return model

    def prepare_media(self, text, audio=None, video=None, images=None, fps=2.0, sampling_rate: int = 16000,
                      use_audio_in_video: bool = False, **kw) -> AVBatch:
        """As `HookedQwen2_5Omni.prepare_media`, with Qwen3-Omni's processor settings
        (`model.vision_processing`; `from_pretrained` reads them from the checkpoint's
        preprocessor_config.json): pixels normalised with mean = std = 0.5, images resized within
        3136 .. 12845056 pixels and video frames within 128*32*32 .. 768*32*32 (the processor's
        `videos_kwargs`). `min_pixels` / `max_pixels` (or `model.media_defaults`) set both budgets;
        `image_kwargs` / `video_kwargs` override per modality."""
        from avlens.data.media import prepare_media

        for k, v in getattr(self, "media_defaults", {}).items():
            kw.setdefault(k, v)
        vp = self.vision_processing
        for kind in ("image", "video"):
            extra = dict(kw.pop(f"{kind}_kwargs", None) or {})
            extra.setdefault("image_mean", vp["image_mean"])
            extra.setdefault("image_std", vp["image_std"])
            for bound in ("min_pixels", "max_pixels"):
                if kw.get(bound) is None:
                    extra.setdefault(bound, vp[f"{kind}_{bound}"])
            kw[f"{kind}_kwargs"] = extra
        return prepare_media(self, text, audio=audio, video=video, images=images, fps=fps,
                             sampling_rate=sampling_rate, use_audio_in_video=use_audio_in_video, **kw)

    # ---------------------------------------------------------------------------------- encoders
    def audio_token_lengths(self, n_frames: Tensor) -> Tensor:
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

        return _get_feat_extract_output_lengths(n_frames, self.audio_tower.hf.n_window)

    def encode_audio(self, input_features: Tensor, feature_attention_mask: Tensor) -> Tensor:
        """AuT audio tower: mel features `[n, mels, frames]` -> `[n_tokens, d_model]` (valid frames
        only, chunked by the tower as Hugging Face runs it)."""
        tower = self.audio_tower
        input_features = tower.hook_in(input_features.to(tower.dtype))
        lengths = feature_attention_mask.sum(1)
        flat = input_features.permute(0, 2, 1)[feature_attention_mask.bool()].permute(1, 0)
        out = tower.run(flat, feature_lens=lengths).last_hidden_state
        expected = int(self.audio_token_lengths(lengths).sum())
        if out.shape[0] != expected:
            raise RuntimeError(f"audio tower gave {out.shape[0]} tokens, expected {expected}")
        return tower.hook_out(out)

    def encode_visual_deepstack(self, pixel_values: Tensor, grid_thw: Tensor) -> tuple[Tensor, Tensor]:
        """Vision tower: patches -> (merged tokens `[n, d_model]`, DeepStack `[levels, n, d_model]`)."""
        tower = self.visual
        pixel_values = tower.hook_in(pixel_values.to(tower.dtype))
        out = tower.run(pixel_values, grid_thw=grid_thw)
        deep = torch.stack(list(out.deepstack_features)) if out.deepstack_features else pixel_values.new_zeros(0, out.pooler_output.shape[0], out.pooler_output.shape[-1])
        return tower.hook_out(out.pooler_output), deep

    def encode_visual(self, pixel_values: Tensor, grid_thw: Tensor) -> Tensor:
        return self.encode_visual_deepstack(pixel_values, grid_thw)[0]

    def encode_media(self, raw: dict) -> dict[str, Tensor]:
        """`{"audio", "image", "video"}` features plus `"deepstack_image"` / `"deepstack_video"`
        (`[levels, n, d_model]`), which `make_batch` moves into `DeepStackBatch.deepstack`."""
        dev = self.W_E.device
        features = {}
        if raw.get("input_features") is not None:
            features["audio"] = self.encode_audio(raw["input_features"].to(dev), raw["feature_attention_mask"].to(dev))
        for kind, pv, grid in (("image", "pixel_values", "image_grid_thw"), ("video", "pixel_values_videos", "video_grid_thw")):
            if raw.get(pv) is not None:
                features[kind], features[f"deepstack_{kind}"] = self.encode_visual_deepstack(raw[pv].to(dev), raw[grid].to(dev))
        return features

    def make_batch(self, **kw) -> DeepStackBatch:
        feats = dict(kw.pop("features", {}))
        deep = {k: feats.pop(f"deepstack_{k}") for k in VISUAL_KINDS if f"deepstack_{k}" in feats}
        return DeepStackBatch(**kw, features=feats, deepstack=deep)

    def placeholder_rule(self, kind: str, token_ids_cfg: dict, n_audio_frames=None, grid_thw=None, second_per_grid=None,
                         merge_size: int = 2, position_id_per_seconds: float = 13, seconds_per_chunk: float = 2.0) -> list[int]:
        """The ids `Qwen3OmniMoeProcessor` writes for ONE media placeholder (used by
        `prepare_media`): audio `n` pads with n from the AuT length formula; image / video
        `t * h * w / merge**2` pads; audio in video `<|audio_start|>` + video and audio pads merged
        by time (a video grid goes first while `g * second_per_grid * pps` <= the next audio
        index, in float64 as the processor computes it) + `<|audio_end|>`."""
        t = token_ids_cfg
        if kind == "audio":
            return [t["audio_token_id"]] * int(self.audio_token_lengths(torch.tensor(int(n_audio_frames))))
        gt, gh, gw = (int(x) for x in grid_thw)
        per_grid = gh * gw // merge_size**2
        if kind in ("image", "video"):
            return [t[f"{kind}_token_id"]] * (gt * per_grid)
        n_audio = int(self.audio_token_lengths(torch.tensor(int(n_audio_frames))))
        video_t = [g * float(second_per_grid) * float(position_id_per_seconds) for g in range(gt) for _ in range(per_grid)]
        out, vi, ai = [t["audio_start_token_id"]], 0, 0
        while vi < len(video_t) and ai < n_audio:
            if video_t[vi] <= ai:
                out.append(t["video_token_id"])
                vi += 1
            else:
                out.append(t["audio_token_id"])
                ai += 1
        out += [t["video_token_id"]] * (len(video_t) - vi) + [t["audio_token_id"]] * (n_audio - ai)
        return out + [t["audio_end_token_id"]]

    # ---------------------------------------------------------------------------------- forward
    def embed_batch(self, batch: AVBatch) -> Tensor:
        if self.encoders_hooked and batch.features:
            batch = self.reencoded(batch)
            if self.deepstack.terms is not None:  # `begin` found image/video positions to add to
                self.deepstack.set_from(batch, self.W_E.dtype)
        return HookedAVTransformer.embed_batch(self, batch)

    def forward(self, input=None, return_type: Optional[str] = "logits", **kwargs):
        batch = input if isinstance(input, AVBatch) else kwargs.get("batch")
        self.deepstack.begin(batch, kwargs.get("kv_cache"), self.W_E.dtype)
        try:
            return super().forward(input, return_type, **kwargs)
        finally:
            self.deepstack.terms = None

    @property
    def between_block_terms_fired(self) -> set[str]:
        """The `blocks.{l}.hook_deepstack` points that added a term in the last forward pass."""
        return set(self.deepstack.fired)

    def run_with_cache(self, *model_args, return_cache_object: bool = True, remove_batch_dim: bool = False, **kwargs):
        """As `HookedAVTransformer.run_with_cache`; the cache is an `AVActivationCache`, whose
        `decompose_resid` includes the DeepStack terms."""
        out, cache = super().run_with_cache(*model_args, return_cache_object=False, remove_batch_dim=remove_batch_dim, **kwargs)
        return (out, wrap_cache(cache, self, has_batch_dim=not remove_batch_dim)) if return_cache_object else (out, cache)

    # ---------------------------------------------------------------------------------- positions
    def _sample_positions(self, ids: list[int], cursor: _MediaCursor, use_audio_in_video: bool):
        """3-D float positions of one sample, replicating Hugging Face's Qwen3-Omni
        `get_rope_index`: text counts on; `<bos>` ids count on (two for audio-in-video); audio
        `s + k`; vision `t = s + g * second_per_grid * pps` (images: `g * pps`), `h = s + row`,
        `w = s + col`; audio-in-video merges video and audio tokens by temporal id (video first
        on ties); the `<eos>` ids start at 1 + the maximum of the last merged piece."""
        t = self.cfg.token_ids
        A, V, I = t["audio_token_id"], t["video_token_id"], t["image_token_id"]
        a_bos, v_bos = t["audio_start_token_id"], t["vision_start_token_id"]
        pps = float(self.position_id_per_seconds)
        n = len(ids)
        pos = torch.zeros(3, n, dtype=torch.float32)
        tm = torch.full((n,), float("nan"))
        mi = torch.full((n,), -1, dtype=torch.long)
        local = {"audio": 0, "video": 0, "image": 0}
        nxt, i = 0.0, 0

        def count_run(j: int, allowed: set) -> int:
            k = j
            while k < n and ids[k] in allowed:
                k += 1
            return k

        def check_run(at: int, cnt: int, allowed: set, what: str) -> None:
            end = count_run(at, allowed)
            if end - at != cnt:
                raise ValueError(
                    f"{end - at} placeholder tokens in the {what} block at position {at} but its media give {cnt}: "
                    "each media item needs exactly as many placeholders as its encoder outputs tokens. Re-run the "
                    "processor on the same media."
                )

        while i < n:
            tok = ids[i]
            nxt_tok = ids[i + 1] if i + 1 < n else None
            if tok == v_bos and nxt_tok == a_bos:  # audio in video
                pos[:, i], pos[:, i + 1] = nxt, nxt + 1
                s = nxt + 2
                vi, ai = cursor.next("video"), cursor.next("audio")
                grid = cursor.video_grids[vi]
                spg = float(cursor.video_spg[vi])
                vp = self._q3_vision(grid, torch.arange(grid[0]).float() * torch.tensor(spg).float() * pps, s)
                na = cursor.audio_lens[ai]
                ap = torch.arange(na).float().view(1, -1).expand(3, -1) + s
                v_secs = (torch.arange(grid[0]).float() * spg).repeat_interleave(vp.shape[1] // grid[0])
                a_secs = torch.arange(na).float() / pps
                order, last = self._time_merge(vp, ap)
                k = i + 2
                check_run(k, vp.shape[1] + na, {A, V}, "audio-in-video")
                for j, (kind, idx) in enumerate(order):
                    tok_kind = "video" if ids[k + j] == V else "audio"
                    if tok_kind != kind:
                        raise ValueError(
                            f"audio-in-video block at position {i}: token {k + j} is {tok_kind}, but merging the video and "
                            f"audio by time puts a {kind} token there. Re-run the processor with the same media and fps."
                        )
                    src, secs = (vp, v_secs) if kind == "video" else (ap, a_secs)
                    pos[:, k + j] = src[:, idx]
                    tm[k + j] = secs[idx]
                    mi[k + j] = local[kind]
                k += len(order)
                local["video"] += 1
                local["audio"] += 1
                pos[:, k], pos[:, k + 1] = last + 1, last + 2  # <|audio_eos|><|vision_eos|>
                nxt = last + 3
                i = k + 2
            elif (tok == v_bos and nxt_tok in (V, I)) or (tok == a_bos and nxt_tok == A):
                kind = {V: "video", I: "image", A: "audio"}[nxt_tok]
                pos[:, i] = nxt
                s = nxt + 1
                idx = cursor.next(kind)
                if kind == "audio":
                    na = cursor.audio_lens[idx]
                    p = torch.arange(na).float().view(1, -1).expand(3, -1) + s
                    secs = torch.arange(na).float() / pps
                else:
                    grid = (cursor.video_grids if kind == "video" else cursor.image_grids)[idx]
                    spg = float(cursor.video_spg[idx]) if kind == "video" else float("nan")
                    t_index = torch.arange(grid[0]).float() * (torch.tensor(spg).float() * pps if kind == "video" else pps)
                    p = self._q3_vision(grid, t_index, s)
                    secs = (torch.arange(grid[0]).float() * spg).repeat_interleave(p.shape[1] // grid[0])
                cnt = p.shape[1]
                check_run(i + 1, cnt, {nxt_tok}, kind)
                pos[:, i + 1 : i + 1 + cnt] = p
                tm[i + 1 : i + 1 + cnt] = secs
                mi[i + 1 : i + 1 + cnt] = local[kind]
                local[kind] += 1
                end = i + 1 + cnt
                if end < n:
                    pos[:, end] = float(p.max()) + 1  # <eos>
                nxt = float(p.max()) + 2
                i = end + 1
            else:
                pos[:, i] = nxt
                nxt += 1
                i += 1
        ch = torch.where(torch.isnan(tm), -1, torch.nan_to_num(tm) // float(self.seconds_per_chunk)).long()
        return pos, tm, ch, mi

    def _q3_vision(self, grid: list[int], t_index: Tensor, start: float) -> Tensor:
        """Float (t, h, w) ids `[3, n]` of a vision item's merged tokens, from its temporal ids."""
        m = self.spatial_merge_size
        t = t_index.view(-1, 1).expand(-1, (grid[1] // m) * (grid[2] // m)).flatten()
        hw = self._vision_positions(grid, torch.zeros(grid[0], dtype=torch.long), 0)[1:].float()
        return torch.cat([t[None], hw]) + start

    @staticmethod
    def _time_merge(vp: Tensor, ap: Tensor) -> tuple[list[tuple[str, int]], float]:
        """Hugging Face's merge of video and audio tokens by temporal id (video first on ties), as
        (kind, index) pairs, and the maximum id of the last merged piece (the tail of whichever
        kind is left when the other runs out)."""
        order, vi, ai = [], 0, 0
        nv, na = vp.shape[1], ap.shape[1]
        while vi < nv and ai < na:
            if vp[0, vi] <= ap[0, ai]:
                order.append(("video", vi))
                vi += 1
            else:
                order.append(("audio", ai))
                ai += 1
        tail = vp[:, vi:] if vi < nv else ap[:, ai:]
        order += [("video", j) for j in range(vi, nv)] + [("audio", j) for j in range(ai, na)]
        return order, float(tail.max())
