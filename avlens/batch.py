"""`AVBatch`: everything a hooked audio-visual decoder needs for one forward pass.

An `AVBatch` is built by a family's `prepare(...)` from processor outputs. It holds the token ids
(with media placeholders), the projected encoder features that replace those placeholders, the
(3-D) rotary position ids, the attention mask, the per-sample `rope_deltas` that decoding
continues from, and the `BatchLayout` saying which positions are which. It has a `.shape`
(`[batch, pos]`), so TransformerLens's own patching functions can take it in place of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch
from torch import Tensor

from avlens.layout import BatchLayout

MEDIA_KINDS = ("audio", "video", "image")


@dataclass
class AVBatch:
    """Inputs of one forward pass of a `HookedAVTransformer`.

    Attributes:
        input_ids: `[batch, pos]` token ids, media positions holding their placeholder id.
        attention_mask: `[batch, pos]`, 1 for real tokens, 0 for padding.
        position_ids: rotary positions: `[3, batch, pos]` for M-RoPE, `[batch, pos]` for 1-D.
        layout: the `BatchLayout` of the batch.
        features: projected encoder outputs per media kind (`"audio"`, `"video"`, `"image"`),
            each `[n_tokens, d_model]`, in placeholder order (row-major over the batch), as
            Hugging Face's `masked_scatter` consumes them.
        rope_deltas: `[batch, 1]`: decode position = (number of real tokens so far) + delta.
        inputs_embeds: optional `[batch, pos, d_model]` merged embeddings; if given, they are
            used instead of `input_ids` + `features` (for backbones whose media embeddings are
            made outside avlens).
        raw: the processor outputs this batch was prepared from (for re-encoding).
    """

    input_ids: Optional[Tensor]
    attention_mask: Tensor
    position_ids: Tensor
    layout: BatchLayout
    features: dict[str, Tensor] = field(default_factory=dict)
    rope_deltas: Optional[Tensor] = None
    inputs_embeds: Optional[Tensor] = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        n = self.layout.shape
        if tuple(self.attention_mask.shape) != tuple(n):
            raise ValueError(
                f"attention_mask has shape {tuple(self.attention_mask.shape)} but the layout is {tuple(n)}"
            )
        if self.input_ids is not None and tuple(self.input_ids.shape) != tuple(n):
            raise ValueError(f"input_ids has shape {tuple(self.input_ids.shape)} but the layout is {tuple(n)}")
        if self.input_ids is None and self.inputs_embeds is None:
            raise ValueError("an AVBatch needs input_ids (with media features) or inputs_embeds")
        if self.position_ids.shape[-2:] != n:
            raise ValueError(
                f"position_ids has shape {tuple(self.position_ids.shape)}; expected [..., batch, pos] = [..., {n[0]}, {n[1]}]"
            )
        for kind, feats in self.features.items():
            if kind not in MEDIA_KINDS:
                raise ValueError(f"unknown media kind {kind!r}; expected one of {MEDIA_KINDS}")
            n_slots = int(self.layout.mask(kind).sum())
            if feats.shape[0] != n_slots:
                raise ValueError(
                    f"{feats.shape[0]} {kind} feature vectors for {n_slots} {kind} placeholder "
                    f"positions. The prompt must hold exactly one placeholder token per feature: "
                    f"re-run the processor on the same media, or fix the placeholder expansion."
                )

    @property
    def shape(self) -> torch.Size:
        """`[batch, pos]`, like a token tensor (TransformerLens's patching reads this)."""
        return torch.Size(self.layout.shape)

    @property
    def batch_size(self) -> int:
        return self.layout.batch_size

    @property
    def device(self) -> torch.device:
        return self.attention_mask.device

    def __len__(self) -> int:
        return self.batch_size

    def to(self, device) -> "AVBatch":
        mv = lambda t: t.to(device) if isinstance(t, Tensor) else t  # noqa: E731
        return AVBatch(
            input_ids=mv(self.input_ids),
            attention_mask=mv(self.attention_mask),
            position_ids=mv(self.position_ids),
            layout=self.layout.to(device),
            features={k: mv(v) for k, v in self.features.items()},
            rope_deltas=mv(self.rope_deltas),
            inputs_embeds=mv(self.inputs_embeds),
            raw=self.raw,
        )

    def with_layout(self, layout: BatchLayout) -> "AVBatch":
        """The same batch with another layout (e.g. one with a `sink` or `question` group)."""
        if layout.shape != self.layout.shape or layout != self.layout:
            diff = self.layout.differences(layout)
            raise ValueError("the new layout must keep the partition groups; it differs: " + "; ".join(diff))
        return replace(self, layout=layout)

    def with_group(self, name: str, positions) -> "AVBatch":
        """Shorthand for `batch.with_layout(batch.layout.with_group(name, positions))`."""
        return replace(self, layout=self.layout.with_group(name, positions))

    def select(self, index) -> "AVBatch":
        """A batch of some samples (media features follow their samples)."""
        if isinstance(index, int):
            index = [index]
        idx = torch.as_tensor(index, dtype=torch.long, device=self.device)
        feats = {}
        for kind, f in self.features.items():
            counts = self.layout.counts(kind).tolist()
            starts = [0]
            for c in counts:
                starts.append(starts[-1] + c)
            feats[kind] = torch.cat([f[starts[i] : starts[i + 1]] for i in idx.tolist()], 0)
        pos = self.position_ids[..., idx, :]
        return AVBatch(
            input_ids=self.input_ids[idx] if self.input_ids is not None else None,
            attention_mask=self.attention_mask[idx],
            position_ids=pos,
            layout=self.layout.select(idx),
            features=feats,
            rope_deltas=self.rope_deltas[idx] if self.rope_deltas is not None else None,
            inputs_embeds=self.inputs_embeds[idx] if self.inputs_embeds is not None else None,
            raw={},
        )

    def __repr__(self) -> str:
        """Shape, media features, the kind of rotary positions, the raw inputs kept for
        re-encoding, then the layout's own repr (group counts and run-length codes)."""
        feats = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.features.items()) or "none"
        pos_kind = "3-D" if self.position_ids.ndim == 3 else "1-D"
        raw = [k for k, v in (self.raw or {}).items() if v is not None]
        extra = f", raw inputs: {', '.join(raw[:6])}{', ...' if len(raw) > 6 else ''}" if raw else ""
        embeds = ", inputs_embeds given" if self.inputs_embeds is not None else ""
        return (
            f"AVBatch(shape={tuple(self.shape)}, features: {feats}, {pos_kind} positions{embeds}{extra})\n"
            + "\n".join("  " + line for line in repr(self.layout).splitlines())
        )

    def _repr_html_(self) -> str:
        """A card for notebooks: shape, media features and positions, then the layout's strips
        (one block per run of same-group positions; compact whatever the sequence length)."""
        from avlens.viz.reprs import card, esc, group_chips, layout_rows

        feats = ", ".join(f"{k} {list(v.shape)}" for k, v in self.features.items()) or "no media features"
        pos_kind = "3-D (M-RoPE)" if self.position_ids.ndim == 3 else "1-D"
        raw = [k for k, v in (self.raw or {}).items() if v is not None]
        info = (f"<div>features: {esc(feats)}; {esc(pos_kind)} position ids"
                + (f"; inputs_embeds {esc(list(self.inputs_embeds.shape))}" if self.inputs_embeds is not None else "")
                + (f"; raw inputs kept: {esc(', '.join(raw[:8]))}" if raw else "") + "</div>")
        return card("AVBatch", f"shape={tuple(self.shape)}", info + group_chips(self.layout) + layout_rows(self.layout))
