"""Hooked modality encoders: a Hugging Face audio or vision tower with hook points at its input,
its output, and inside every layer.

Hook points of a tower `T` (`audio_tower` or `visual`; the VideoLLaMA2 adapter's `adapter.audio`
/ `adapter.video` have `hook_in` / `hook_out` only):

    T.hook_in                        the tower input (mel features `[n_audio, mels, frames]`, or
                                     flattened patches `[n_patches, C * T * P * P]`)
    T.blocks.{i}.hook_resid_pre      layer i's input,  `[n_packed, d_tower]`
    T.blocks.{i}.hook_resid_post     layer i's output, `[n_packed, d_tower]`
    T.blocks.{i}.attn.hook_pattern   layer i's attention pattern, `[1, heads, n_c, n_c]`, fired once
                                     per attention chunk c (audio: each <= 2 s chunk of each audio;
                                     vision: each window, or each image / frame group in full-
                                     attention layers); `hook.ctx["chunk_start"]` is the chunk's
                                     first packed position. An edit changes the layer's output.
    T.hook_out                       the projected tokens spliced into the LLM, `[n_tokens, d_model]`

Order: layers run in index order; within a layer, hook_resid_pre, the pattern hooks (chunks in
packed order), hook_resid_post. Hooks fire while the encoders run: in `prepare`, and again in every
forward pass while any hook of the tower is attached (so patches inside the encoder reach the LLM).
Pattern hooks make the tower use explicit (eager) attention while they are attached.

Packed positions: the audio tower packs every audio's conv-downsampled frames one after another
(one position per 2 mel frames, 20 ms); `audio_position_to_token` maps them to the LLM audio
token they are pooled into. The vision tower packs the patches of every image / video one after
another, then *permutes* them into window order (`window_index`, in units of merge_size**2
patches); `vision_position_to_token` maps a packed (permuted) position to its patch and to the
LLM image / video token (one per merge_size**2 patches), with its temporal grid.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

_ATTN_NAME = "avlens_hooked_eager"


def _hooked_eager_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Eager attention (`[b, heads, n, e]` in, Hugging Face's layout) whose pattern passes through
    the module's avlens hook point, if one is attached."""
    rep = getattr(module, "num_key_value_groups", 1)
    if rep > 1:
        key = key.repeat_interleave(rep, dim=1)
        value = value.repeat_interleave(rep, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if attention_mask is not None:
        scores = scores + attention_mask
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    hooks: Optional[AttnHooks] = getattr(module, "_avlens_attn_hooks", None)
    if hooks is not None:
        hooks.hook_pattern.ctx["chunk_start"] = hooks.offset
        pattern = hooks.hook_pattern(pattern)
        hooks.offset += query.shape[2]
    out = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return out, pattern


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(_ATTN_NAME, _hooked_eager_attention)


class AttnHooks(nn.Module):
    def __init__(self):
        super().__init__()
        self.hook_pattern = HookPoint()
        self.offset = 0


class EncoderLayerHooks(nn.Module):
    def __init__(self):
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.hook_resid_post = HookPoint()
        self.attn = AttnHooks()


def _layers(hf: nn.Module) -> list[tuple[nn.Module, Optional[nn.Module]]]:
    """(layer, its attention module) of a Whisper-style (`.layers[i].self_attn`) or ViT-style
    (`.blocks[i].attn`) tower; no layers for other modules."""
    layers = getattr(hf, "layers", None)
    if layers is None:
        layers = getattr(hf, "blocks", None)
    if not isinstance(layers, nn.ModuleList):
        return []
    return [(layer, getattr(layer, "self_attn", None) or getattr(layer, "attn", None)) for layer in layers]


class HookedEncoder(nn.Module):
    """A Hugging Face modality encoder with hook points (module docstring). `run(...)` calls the
    encoder with the layer hooks in place; outside `run` the HF module is untouched."""

    def __init__(self, hf_module: nn.Module):
        super().__init__()
        self.hf = hf_module
        self.hook_in = HookPoint()
        self.hook_out = HookPoint()
        layers = _layers(hf_module)
        if layers:
            self.blocks = nn.ModuleList([EncoderLayerHooks() for _ in layers])

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def hooked(self) -> bool:
        """Whether any hook point of this encoder holds a hook."""
        points = self.__dict__.get("_hook_point_list")
        if points is None:  # the module tree is fixed after construction: walk it once, not every forward
            points = [m for m in self.modules() if isinstance(m, HookPoint)]
            self.__dict__["_hook_point_list"] = points
        return any(m.fwd_hooks or m.bwd_hooks for m in points)

    def _pattern_hooked(self) -> bool:
        return any(b.attn.hook_pattern.fwd_hooks or b.attn.hook_pattern.bwd_hooks for b in getattr(self, "blocks", []))

    @contextlib.contextmanager
    def _layer_hooks(self):
        handles, patched = [], []
        config = getattr(self.hf, "config", None)
        old_impl = getattr(config, "_attn_implementation", None)
        try:
            if hasattr(self, "blocks"):
                use_pattern = self._pattern_hooked()
                for (layer, attn), hooks in zip(_layers(self.hf), self.blocks):
                    handles.append(layer.register_forward_pre_hook(_pre_hook(hooks), with_kwargs=True))
                    handles.append(layer.register_forward_hook(_post_hook(hooks)))
                    if use_pattern and attn is not None:
                        object.__setattr__(attn, "_avlens_attn_hooks", hooks.attn)
                        patched.append(attn)
                if use_pattern and config is not None:
                    _register_attention()
                    config._attn_implementation = _ATTN_NAME
            yield
        finally:
            for h in handles:
                h.remove()
            for attn in patched:
                object.__delattr__(attn, "_avlens_attn_hooks")
            if config is not None and old_impl is not None:
                config._attn_implementation = old_impl

    def run(self, *args, **kwargs):
        """Call the HF encoder with the layer hook points in place."""
        with self._layer_hooks():
            return self.hf(*args, **kwargs)


def _pre_hook(hooks: EncoderLayerHooks):
    def fn(module, args, kwargs):
        hooks.attn.offset = 0
        if args:
            return (hooks.hook_resid_pre(args[0]),) + tuple(args[1:]), kwargs
        kwargs["hidden_states"] = hooks.hook_resid_pre(kwargs["hidden_states"])
        return args, kwargs

    return fn


def _post_hook(hooks: EncoderLayerHooks):
    def fn(module, args, output):
        if isinstance(output, tuple):
            return (hooks.hook_resid_post(output[0]),) + tuple(output[1:])
        return hooks.hook_resid_post(output)

    return fn


# ------------------------------------------------------------------------------- position maps


def audio_position_to_token(feature_lens: Tensor) -> tuple[Tensor, Tensor]:
    """Qwen2.5-Omni's audio tower: for every packed encoder position, `(audio item, LLM audio token
    index counted across the batch, -1 for a trailing position dropped by the pooling)`.

    Item a with F_a mel frames has `(F_a - 1) // 2 + 1` positions (conv stride 2: position i is
    centred on mel frame 2i, 20 ms); positions 2k and 2k + 1 are averaged into the item's audio
    token k (40 ms, 25 per second)."""
    after = (feature_lens.long() - 1) // 2 + 1
    n_tok = (after - 2) // 2 + 1
    items, tokens, first = [], [], 0
    for a, (n_pos, n_t) in enumerate(zip(after.tolist(), n_tok.tolist())):
        k = torch.arange(n_pos) // 2
        tokens.append(torch.where(k < n_t, k + first, torch.full_like(k, -1)))
        items.append(torch.full((n_pos,), a))
        first += n_t
    return torch.cat(items), torch.cat(tokens)


def vision_position_to_token(visual: nn.Module, grid_thw: Tensor) -> dict[str, Tensor]:
    """Qwen2.5-VL / Qwen2.5-Omni ViT: for every packed (window-permuted) position p of the layer
    hooks, `patch` (index in the processor's patch order), `token` (the LLM image / video token it
    is merged into, counted across the items of this call), `item` and `t` (temporal grid)."""
    from transformers.vision_utils import get_vision_window_index

    m = visual.spatial_merge_size
    unit = m * m
    n = int(grid_thw.prod(-1).sum())
    if getattr(visual, "window_size", None):
        window_index, _ = get_vision_window_index(grid_thw, spatial_merge_size=m, window_size=visual.window_size, patch_size=visual.patch_size)
    else:  # no window attention (Qwen3-Omni's ViT): packed positions are in patch order
        window_index = torch.arange(n // unit)
    p = torch.arange(n)
    patch = window_index.cpu()[p // unit] * unit + p % unit
    token = patch // unit
    per_item = grid_thw.prod(-1).tolist()
    item = torch.repeat_interleave(torch.arange(len(per_item)), torch.tensor(per_item))[patch]
    starts = torch.tensor([0] + per_item).cumsum(0)[:-1]
    hw = (grid_thw[:, 1] * grid_thw[:, 2])
    t = (patch - starts[item]) // hw[item]
    return {"patch": patch, "token": token, "item": item, "t": t}
