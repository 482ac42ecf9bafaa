"""Generic backbone family: any AVLLM whose language model is a Hugging Face Qwen2 / Qwen2.5 /
Qwen2.5-VL (text) / Llama / Mistral / Qwen3 (dense) checkpoint.

Many audio-visual LLMs are an off-the-shelf decoder plus their own encoders and projectors
(VideoLLaMA2-AV, video-SALMONN 2 / 2+ / o1, ...). avlens hooks the decoder and takes the media
embeddings from you, in one of two ways:

    model = HookedAVTransformer.from_hf_lm(hf_lm)                     # weights shared
    batch = model.prepare(inputs_embeds=merged, layout=["text", "audio", "audio", "text"])

or with a few-line `AVAdapter` that says which prompt tokens are media placeholders and how to
encode raw media into `[n_tokens, d_model]` features (see `docs/families.md`, "Writing an adapter"):

    model = HookedAVTransformer.from_hf_lm(hf_lm, adapter=MyAdapter(encoders))
    batch = model.prepare(input_ids=ids, audio=wave, video=frames)   # kwargs go to adapter.encode

Positions are 1-D (a running count of real tokens, as Hugging Face's causal LMs compute them)
unless the adapter (or the caller, `position_ids=`) gives others; a Qwen2.5-VL backbone takes
3-D M-RoPE positions (`HookedVideoSalmonn2Plus` builds them).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from avlens.batch import MEDIA_KINDS, AVBatch
from avlens.families.hf_backbone import backbone_config, hf_rotary, share_decoder_weights, sliding_window_of, text_rope_parameters
from avlens.layout import PARTITION_GROUPS, BatchLayout, closest
from avlens.model.hooked import HookedAVTransformer

LayoutSpec = Union[BatchLayout, Mapping[str, Tensor], Sequence[str], Sequence[Sequence[str]]]


class AVAdapter:
    """What a particular AVLLM adds to its language model: where media go in the prompt and how
    raw media become embeddings. Subclass it and set or override:

    - `placeholders`: `{"audio": id, "video": id, "image": id}`, the prompt token that each media
      feature vector replaces (one placeholder token per feature row, as Hugging Face's
      `masked_scatter` merge does);
    - `special_ids`: further token ids that form the `special` group (media delimiters);
    - `encode(**media) -> {"audio": [n, d_model], ...}`: the projected encoder outputs, rows in
      placeholder order (row-major over the batch); `model.prepare(input_ids=..., **media)` calls it;
    - `position_ids(input_ids, attention_mask, layout)`: `(position_ids, rope_deltas)` if the model
      does not use the 1-D running count (return None to keep it).

    An adapter that is an `nn.Module` becomes the submodule `model.adapter` (moved with the model;
    hook points inside it are named `adapter.*` and fire while `prepare` encodes).
    """

    placeholders: dict[str, int] = {}
    special_ids: tuple[int, ...] = ()

    def encode(self, **media) -> dict[str, Tensor]:
        raise NotImplementedError(
            f"{type(self).__name__}.encode is not defined, so prepare() cannot take raw media "
            f"({sorted(media)}). Define encode(**media) -> {{kind: [n_tokens, d_model]}}, or pass "
            "precomputed features=... / inputs_embeds=... to prepare."
        )

    def position_ids(self, input_ids: Tensor, attention_mask: Tensor, layout: BatchLayout):
        return None


def as_batch_layout(spec: LayoutSpec, attention_mask: Tensor, special: Optional[Tensor] = None) -> BatchLayout:
    """A `BatchLayout` from a layout given as a `BatchLayout`, a dict of group masks (`[batch, pos]`
    or `[pos]`), or group names per position (a list for one sample, a list of lists for a batch).
    Padding (attention_mask 0) is `pad` whatever the spec says; unnamed real positions are `text`."""
    valid = attention_mask.bool()
    shape = tuple(valid.shape)
    if isinstance(spec, BatchLayout):
        if spec.shape != shape:
            raise ValueError(f"the layout is {spec.shape} but the batch is {shape} ([batch, pos])")
        return spec
    if isinstance(spec, Mapping):
        masks = {}
        for g, m in spec.items():
            if g not in PARTITION_GROUPS:
                raise ValueError(f"unknown group {g!r} in the layout; partition groups: {PARTITION_GROUPS}" + _hint(g))
            m = torch.as_tensor(m, device=valid.device).bool()
            if m.ndim == 1:
                m = m[None]
            if tuple(m.shape) != shape:
                raise ValueError(f"the {g!r} mask has shape {tuple(m.shape)}; the batch is {shape} ([batch, pos])")
            masks[g] = m
    else:
        rows = [spec] if spec and isinstance(spec[0], str) else list(spec)
        if len(rows) != shape[0] or any(len(r) != shape[1] for r in rows):
            raise ValueError(
                f"the layout gives {[len(r) for r in rows]} group names per sample; the batch is {shape} "
                "([batch, pos]): give one group name per position"
            )
        masks = {}
        for g in sorted({g for r in rows for g in r}):
            if g not in PARTITION_GROUPS:
                raise ValueError(f"unknown group {g!r} in the layout; partition groups: {PARTITION_GROUPS}" + _hint(g))
            masks[g] = torch.tensor([[x == g for x in r] for r in rows], device=valid.device)
    out = {g: masks[g] & valid for g in ("audio", "video", "image") if g in masks}
    media = torch.zeros_like(valid)
    for m in out.values():
        if bool((media & m).any()):
            raise ValueError("a position is in two media groups of the layout; each position belongs to one group")
        media |= m
    spec_special = masks.get("special", torch.zeros_like(valid))
    if special is not None:
        spec_special = spec_special | special
    out["special"] = spec_special & valid & ~media
    out["pad"] = ~valid
    out["text"] = valid & ~media & ~out["special"]
    return BatchLayout(out)


def _hint(name: str) -> str:
    hits = closest(name, PARTITION_GROUPS)
    return f" (did you mean {hits[0]!r}?)" if hits else ""


def find_text_model(lm: nn.Module, lm_head: Optional[nn.Module] = None) -> tuple[nn.Module, nn.Module]:
    """(decoder with `.layers`, lm_head) of a Hugging Face causal LM, conditional-generation model
    (Qwen2.5-VL: `model.language_model`) or bare decoder (then `lm_head` must be given, unless the
    embeddings are tied)."""
    head = lm_head if lm_head is not None else getattr(lm, "lm_head", None)
    inner = getattr(lm, "model", lm) if hasattr(lm, "lm_head") else lm
    inner = getattr(inner, "language_model", inner)
    if not hasattr(inner, "layers") or not hasattr(inner, "embed_tokens"):
        raise TypeError(
            f"{type(lm).__name__} is not a Hugging Face decoder avlens can read: expected a causal LM "
            "(e.g. Qwen2ForCausalLM, LlamaForCausalLM), Qwen2_5_VLForConditionalGeneration, or a bare "
            "decoder with .embed_tokens and .layers."
        )
    if head is None:
        if not getattr(inner.config, "tie_word_embeddings", False):
            raise ValueError(f"{type(lm).__name__} has no lm_head: pass lm_head=... (the unembedding module)")
        head = nn.Linear(inner.config.hidden_size, inner.config.vocab_size, bias=False)
        head.weight = inner.embed_tokens.weight
    layer = inner.layers[0]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        if not hasattr(layer.self_attn, name):
            raise NotImplementedError(f"{type(inner).__name__}'s attention has no {name}; avlens reads separate q/k/v/o projections")
    for name in ("gate_proj", "up_proj", "down_proj"):
        if not hasattr(layer.mlp, name):
            raise NotImplementedError(
                f"{type(inner).__name__}'s MLP has no {name} (a mixture-of-experts layer?); the generic family "
                "reads SwiGLU MLPs. Qwen3-Omni's MoE thinker has its own family (HookedQwen3Omni)."
            )
    return inner, head


class HookedGenericAV(HookedAVTransformer):
    """A hooked Qwen2 / Llama / Mistral / Qwen3 / Qwen2.5-VL decoder whose media embeddings come
    from an `AVAdapter` or from the caller (`inputs_embeds` + `layout`)."""

    encoder_hook_prefixes = ("adapter.",)

    def __init__(self, cfg, tokenizer: Any = None):
        super().__init__(cfg, tokenizer=tokenizer)
        self.adapter: Optional[AVAdapter] = None  # an nn.Module adapter is registered as a submodule
        self.sliding_window: Optional[int] = None

    # ---------------------------------------------------------------------------------- loading
    @classmethod
    def from_hf_lm(
        cls,
        lm: nn.Module,
        adapter: Optional[AVAdapter] = None,
        *,
        lm_head: Optional[nn.Module] = None,
        tokenizer: Any = None,
        token_ids: Optional[dict[str, int]] = None,
    ) -> "HookedGenericAV":
        """Wrap a Hugging Face language model (weights shared, not copied).

        Args:
            lm: `Qwen2ForCausalLM`, `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen3ForCausalLM`,
                `Qwen2_5_VLForConditionalGeneration` (its text model), or a bare decoder with `lm_head=`.
            adapter: an `AVAdapter` (placeholders, `encode`), optional.
            token_ids: special token ids (`{"audio_token_id": ..., "pad_token_id": ...}`), merged
                with the adapter's placeholders.
        """
        text_model, head = find_text_model(lm, lm_head)
        tc = text_model.config
        p = next(text_model.parameters())
        rp = text_rope_parameters(tc)
        hf_rot = getattr(text_model, "rotary_emb", None)
        section = getattr(hf_rot, "mrope_section", None) or rp.get("mrope_section")
        rope_kind = "1d"
        if section is not None:
            rope_kind = "mrope_interleaved" if rp.get("mrope_interleaved") else "mrope"
        ids = dict(token_ids or {})
        if adapter is not None:
            for kind, tid in adapter.placeholders.items():
                if kind not in MEDIA_KINDS:
                    raise ValueError(f"adapter placeholder kind {kind!r} is not one of {MEDIA_KINDS}")
                ids[f"{kind}_token_id"] = int(tid)
        if getattr(tc, "pad_token_id", None) is not None:
            ids.setdefault("pad_token_id", int(tc.pad_token_id))
        cfg = backbone_config(
            tc, text_model, rope_kind=rope_kind, mrope_section=list(section) if section is not None else None,
            dtype=p.dtype, device=str(p.device), model_family=cls.__name__,
            original_architecture=type(lm).__name__, token_ids=ids,
        )
        with torch.device("meta"):
            model = cls(cfg, tokenizer=tokenizer)
        share_decoder_weights(model, text_model, head)
        model.rotary = hf_rotary(model, text_model, p.device)
        model.sliding_window = sliding_window_of(text_model)
        model.hf_config = tc
        if isinstance(adapter, nn.Module):
            model.adapter = adapter
        else:
            object.__setattr__(model, "adapter", adapter)
        model.setup()
        model.eval()
        return model

    @classmethod
    def from_hf(cls, hf_model, **kwargs) -> "HookedGenericAV":
        """`from_hf_lm` (so `HookedAVTransformer.from_hf(qwen2_causal_lm)` works too)."""
        return cls.from_hf_lm(hf_model, **kwargs)

    @classmethod
    def from_pretrained(cls, path_or_id: str, adapter: Optional[AVAdapter] = None, dtype: Optional[torch.dtype] = None,
                        device: Optional[str] = None, load_tokenizer: bool = True, **hf_kwargs) -> "HookedGenericAV":
        """Load a causal-LM checkpoint with `transformers.AutoModelForCausalLM` (safetensors), then
        `from_hf_lm`."""
        from transformers import AutoModelForCausalLM

        from avlens.families.qwen2_5_omni import _try_tokenizer

        lm = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=dtype or "auto", use_safetensors=True, **hf_kwargs)
        lm = lm.to(device or "cpu").eval()
        tok = _try_tokenizer(path_or_id) if load_tokenizer and os.path.isdir(path_or_id) else None
        return cls.from_hf_lm(lm, adapter, tokenizer=tok)

    # ---------------------------------------------------------------------------------- inputs
    def special_token_ids(self) -> set[int]:
        ids = set(getattr(self.adapter, "special_ids", ()) or ())
        return ids | super().special_token_ids()

    def prepare(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        *,
        inputs_embeds: Optional[Tensor] = None,
        layout: Optional[LayoutSpec] = None,
        features: Optional[dict[str, Tensor]] = None,
        position_ids: Optional[Tensor] = None,
        rope_deltas: Optional[Tensor] = None,
        **media,
    ) -> AVBatch:
        """Inputs -> `AVBatch`.

        Either `input_ids` (with media placeholders) and the media (`**media`, passed to
        `adapter.encode`, or `features={kind: [n, d_model]}` directly), or `inputs_embeds`
        `[batch, pos, d_model]` already merged. `layout` says which positions are which (a
        `BatchLayout`, a dict of group masks, or group names per position); by default it is read
        from the placeholder ids. `position_ids` default to the adapter's, else the 1-D running
        count of real tokens.
        """
        dev = self.W_E.device
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (with media placeholders) or inputs_embeds (already merged)")
        if media:
            if self.adapter is None:
                raise TypeError(
                    f"prepare() got media {sorted(media)} but the model has no adapter to encode them: build it with "
                    "from_hf_lm(lm, adapter=...), or pass features={kind: [n, d_model]} / inputs_embeds=..."
                )
            if features is not None:
                raise ValueError("pass media for the adapter or precomputed features, not both")
            with torch.no_grad():
                features = self.adapter.encode(**media)
        features = {k: v.to(dev) for k, v in (features or {}).items()}
        if inputs_embeds is not None:
            if features:
                raise ValueError("inputs_embeds are already merged; do not also pass media features")
            inputs_embeds = torch.as_tensor(inputs_embeds).to(dev)
            if inputs_embeds.ndim == 2:
                inputs_embeds = inputs_embeds[None]
            if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != self.cfg.d_model:
                raise ValueError(f"inputs_embeds must be [batch, pos, {self.cfg.d_model}]; got {tuple(inputs_embeds.shape)}")
            shape = inputs_embeds.shape[:2]
        else:
            input_ids = torch.as_tensor(input_ids)
            if input_ids.ndim == 1:
                input_ids = input_ids[None]
            input_ids = input_ids.to(dev).long()
            shape = input_ids.shape
        attention_mask = torch.ones(shape, dtype=torch.long, device=dev) if attention_mask is None else torch.as_tensor(attention_mask).to(dev).long()
        if attention_mask.ndim == 1:
            attention_mask = attention_mask[None]
        if tuple(attention_mask.shape) != tuple(shape):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; the inputs are {tuple(shape)} ([batch, pos])")
        special = None
        if input_ids is not None:
            ids = sorted(self.special_token_ids())
            special = torch.isin(input_ids, torch.tensor(ids, device=dev)) if ids else None
        if layout is None:
            if input_ids is None:
                raise ValueError("with inputs_embeds, pass layout=... (group names per position or group masks)")
            layout = {k: input_ids == self.cfg.token_ids[f"{k}_token_id"] for k in MEDIA_KINDS if f"{k}_token_id" in self.cfg.token_ids}
            missing = [k for k in features if f"{k}_token_id" not in self.cfg.token_ids]
            if missing:
                raise ValueError(
                    f"{missing} features given but the model knows no placeholder id for them; set the adapter's "
                    "placeholders (or token_ids={'<kind>_token_id': id}), or pass layout=..."
                )
        lay = as_batch_layout(layout, attention_mask, special)
        for kind in MEDIA_KINDS:
            n = int(lay.counts(kind).sum())
            if n and kind not in features and inputs_embeds is None:
                raise ValueError(f"the prompt has {n} {kind} positions but no {kind} features or media were given")
        if position_ids is None:
            got = self.adapter.position_ids(input_ids, attention_mask, lay) if self.adapter is not None else None
            if got is not None:
                position_ids, rope_deltas = got
            else:
                position_ids, rope_deltas = self.text_positions(attention_mask)
        position_ids = torch.as_tensor(position_ids).to(dev)
        if position_ids.ndim == 2 and self.cfg.rope_kind != "1d":
            position_ids = position_ids[None].expand(3, -1, -1)
        if rope_deltas is None:  # Hugging Face's: max id (over the axes) + 1 - real tokens
            top = position_ids.reshape(-1, *shape).amax(0).max(-1, keepdim=True).values
            rope_deltas = top + 1 - attention_mask.sum(-1, keepdim=True)
        return AVBatch(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, layout=lay,
            features=features, rope_deltas=rope_deltas, inputs_embeds=inputs_embeds,
        )

    def forward(self, input=None, return_type: Optional[str] = "logits", **kwargs):
        window = self.sliding_window
        if window is not None:
            kv = kwargs.get("kv_cache")
            n = (kv.length if kv is not None else 0) + _n_positions(input, kwargs.get("batch"))
            if n > window:
                raise NotImplementedError(
                    f"{n} positions exceed the backbone's sliding window of {window}; avlens attends to the "
                    "full prefix, which equals sliding-window attention only up to the window. Use shorter inputs."
                )
        return super().forward(input, return_type, **kwargs)


def _n_positions(input, batch) -> int:
    """Sequence length of a forward's input (0 when it cannot be told, e.g. strings)."""
    shape = getattr(input if input is not None else batch, "shape", None)
    return int(shape[1]) if shape is not None and len(shape) >= 2 else 0
