"""VideoLLaMA2.1-AV (Cheng et al. 2024; DAMO-NLP-SG/VideoLLaMA2, branch `audio_visual`).

A Qwen2-7B-Instruct language model (`Videollama2Qwen2ForCausalLM`, model_type
`videollama2_qwen2`) with a SigLIP vision tower + STC connector (`model.mm_projector`) and a BEATs
audio tower + MLP projector (`model.mm_projector_a`). Facts read from the public code
(`videollama2/constants.py`, `videollama2/model/videollama2_arch.py`):

* The prompt carries one sentinel id per media item: `<image>` -200, `<video>` -201, `<audio>`
  -202. `prepare_inputs_labels_for_multimodal` replaces each sentinel, in order, by the next
  media feature block; for a video with its audio that block is `cat([video tokens, audio
  tokens])`, so `<video>` becomes [video tokens][audio tokens] (1352 + 1496 for 16 frames and
  30 s of audio in the released model).
* Positions are Hugging Face Qwen2's default 1-D ones; samples of different lengths are padded on
  the right (zero embeddings, attention mask 0).
* Checkpoint: the language model's tensors keep Qwen2's names (`model.embed_tokens`,
  `model.layers.*`, `model.norm`, `lm_head`); `model.mm_projector.*`, `model.mm_projector_a.*`,
  `model.vision_tower.*` and `model.audio_tower.*` belong to the media branch.

The towers and projectors are the user's (or the released code's) modules: `VideoLLaMA2AVAdapter`
wraps them in `HookedEncoder`s (hook points `adapter.video.hook_in/hook_out`,
`adapter.audio.hook_in/hook_out`).
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from avlens.batch import AVBatch
from avlens.families.generic import AVAdapter, HookedGenericAV
from avlens.families.encoders import HookedEncoder

IMAGE_SENTINEL, VIDEO_SENTINEL, AUDIO_SENTINEL = -200, -201, -202
MEDIA_PREFIXES = ("model.mm_projector.", "model.mm_projector_a.", "model.vision_tower.", "model.audio_tower.")


def split_checkpoint_keys(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A VideoLLaMA2 state dict -> (`Qwen2ForCausalLM` state dict, media-branch state dict with
    the leading `model.` removed, e.g. `mm_projector_a.0.weight`)."""
    lm, media = {}, {}
    for k, v in state.items():
        if k.startswith(MEDIA_PREFIXES):
            media[k[len("model."):]] = v
        elif k.startswith(("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")):
            lm[k] = v
        else:
            raise ValueError(f"unexpected VideoLLaMA2 checkpoint key {k!r}: neither the Qwen2 language model nor the media branch")
    return lm, media


class VideoLLaMA2AVAdapter(AVAdapter, nn.Module):
    """The media branch: `video_encoder(frames) -> [n_video_tokens, d_model]` (SigLIP + STC
    connector) and `audio_encoder(fbank) -> [n_audio_tokens, d_model]` (BEATs + projector), each
    wrapped with hook points at its input and output."""

    def __init__(self, video_encoder: Optional[nn.Module] = None, audio_encoder: Optional[nn.Module] = None):
        super().__init__()
        self.video = HookedEncoder(video_encoder) if video_encoder is not None else None
        self.audio = HookedEncoder(audio_encoder) if audio_encoder is not None else None

    def encode_one(self, kind: str, x: Tensor) -> Tensor:
        enc = getattr(self, kind)
        if enc is None:
            raise ValueError(f"the adapter has no {kind} encoder; pass {kind}_encoder=... to VideoLLaMA2AVAdapter")
        out = enc.hook_out(enc.run(enc.hook_in(x)))
        return out.reshape(-1, out.shape[-1])


class HookedVideoLLaMA2AV(HookedGenericAV):
    """VideoLLaMA2.1-AV: its Qwen2 language model hooked, its sentinel expansion as the layout.

        model = HookedVideoLLaMA2AV.from_hf_lm(qwen2_lm, VideoLLaMA2AVAdapter(video_enc, audio_enc))
        batch = model.prepare_sentinels([[..., -201, ...]], videos=[frames], audios=[fbank])
    """

    def expand(self, rows: Sequence[Sequence[int]], items: Sequence[Sequence[tuple[str, int]]]) -> tuple[Tensor, Tensor, dict]:
        """Replace each sentinel of each row by its media block. `items[i]` lists, per sentinel of
        row i in order, the (kind, n_tokens) pieces of its block (`[("video", 1352), ("audio",
        1496)]` for an audio-visual `<video>`). Returns right-padded ids (media positions hold the
        pad id), the attention mask and the group masks."""
        pad = int(self.cfg.token_ids.get("pad_token_id", 0))
        out_rows, kinds = [], []
        for r, (row, blocks) in enumerate(zip(rows, items)):
            blocks = list(blocks)
            ids, kind = [], []
            for tok in row:
                if tok in (IMAGE_SENTINEL, VIDEO_SENTINEL, AUDIO_SENTINEL):
                    if not blocks:
                        raise ValueError(f"row {r} has more media sentinels than media items given for it")
                    for k, n in blocks.pop(0):
                        ids += [pad] * n
                        kind += [k] * n
                else:
                    if not 0 <= tok < self.cfg.d_vocab:
                        raise ValueError(f"row {r}: token id {tok} is neither in [0, {self.cfg.d_vocab}) nor a media sentinel (-200/-201/-202)")
                    ids.append(tok)
                    kind.append("text")
            if blocks:
                raise ValueError(f"row {r} has {len(blocks)} media items left over: fewer sentinels than media")
            out_rows.append(ids)
            kinds.append(kind)
        n = max(len(x) for x in out_rows)
        input_ids = torch.full((len(rows), n), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        groups = {g: torch.zeros(len(rows), n, dtype=torch.bool) for g in ("audio", "video", "image")}
        for i, (ids, kind) in enumerate(zip(out_rows, kinds)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
            for j, k in enumerate(kind):
                if k in groups:
                    groups[k][i, j] = True
        return input_ids, mask, groups

    def prepare_sentinels(self, input_ids: Sequence[Sequence[int]], videos: Sequence = (), audios: Sequence = (),
                          av_pairs: Optional[Sequence[bool]] = None) -> AVBatch:
        """Prompts with sentinels (one list of ids per sample) and media in sentinel order across
        the batch -> `AVBatch`, merged as VideoLLaMA2 merges them. A `<video>` sentinel takes the next
        video and, when `av_pairs` says so (default: whenever audios are given), the next audio
        too; an `<audio>` sentinel takes the next audio."""
        if self.adapter is None:
            raise ValueError("prepare_sentinels needs an adapter with the media encoders: from_hf_lm(lm, VideoLLaMA2AVAdapter(...))")
        rows = [list(map(int, r)) for r in input_ids]
        videos, audios = list(videos), list(audios)
        n_video_sentinels = sum(r.count(VIDEO_SENTINEL) for r in rows)
        pairs = list(av_pairs) if av_pairs is not None else [bool(audios)] * n_video_sentinels
        feats = {"video": [], "audio": []}
        items, vi, ai, k = [], 0, 0, 0
        with torch.no_grad():
            for row in rows:
                blocks = []
                for tok in row:
                    if tok == VIDEO_SENTINEL:
                        if vi >= len(videos):
                            raise ValueError(f"{n_video_sentinels} <video> sentinels but {len(videos)} videos")
                        v = self.adapter.encode_one("video", videos[vi])
                        vi += 1
                        feats["video"].append(v)
                        block = [("video", v.shape[0])]
                        if pairs[k]:
                            a = self.adapter.encode_one("audio", self._next_audio(audios, ai))
                            ai += 1
                            feats["audio"].append(a)
                            block.append(("audio", a.shape[0]))
                        k += 1
                        blocks.append(block)
                    elif tok == AUDIO_SENTINEL:
                        a = self.adapter.encode_one("audio", self._next_audio(audios, ai))
                        ai += 1
                        feats["audio"].append(a)
                        blocks.append([("audio", a.shape[0])])
                    elif tok == IMAGE_SENTINEL:
                        raise NotImplementedError("image sentinels (-200) are not supported by HookedVideoLLaMA2AV.prepare_sentinels; pass a 1-frame video")
                items.append(blocks)
        if ai != len(audios) or vi != len(videos):
            raise ValueError(f"{len(videos)} videos and {len(audios)} audios given but the sentinels use {vi} and {ai}")
        ids, mask, groups = self.expand(rows, items)
        features = {k: torch.cat(v) for k, v in feats.items() if v}
        return self.prepare(input_ids=ids, attention_mask=mask, layout=groups, features=features)

    @staticmethod
    def _next_audio(audios, ai):
        if ai >= len(audios):
            raise ValueError(f"the sentinels need more than the {len(audios)} audios given")
        return audios[ai]

    @classmethod
    def from_pretrained(cls, path: str, adapter: Optional[VideoLLaMA2AVAdapter] = None, dtype: Optional[torch.dtype] = None,
                        device: Optional[str] = None, load_tokenizer: bool = True) -> "HookedVideoLLaMA2AV":
        """Load a local VideoLLaMA2 checkpoint folder (`config.json` of model_type
        `videollama2_qwen2`, safetensors shards): the Qwen2 tensors become a `Qwen2ForCausalLM`
        (weights not copied again), the media-branch tensors are kept in `model.media_state_dict`
        for the adapter's modules (`split_checkpoint_keys` gives the names)."""
        from safetensors import safe_open
        from transformers import Qwen2Config, Qwen2ForCausalLM

        from avlens.families.qwen2_5_omni import _try_tokenizer

        with open(os.path.join(path, "config.json")) as f:
            raw = json.load(f)
        if raw.get("model_type") not in ("videollama2_qwen2", "qwen2"):
            raise ValueError(f"{path} is not a VideoLLaMA2 Qwen2 checkpoint (model_type {raw.get('model_type')!r})")
        # Every key goes to Qwen2Config, which understands transformers-4 spellings (a top-level
        # `rope_theta` / `rope_scaling`, as released checkpoints have) and keeps the media keys
        # (mm_*) as plain attributes; filtering by `Qwen2Config().to_dict()` would drop
        # `rope_theta` (transformers 5 spells it inside `rope_parameters`). dtype follows the
        # weights (or the `dtype` argument), not the config.
        config = Qwen2Config(**{k: v for k, v in raw.items()
                                if k not in ("model_type", "architectures", "transformers_version", "torch_dtype", "dtype")})
        files = sorted(x for x in os.listdir(path) if x.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(f"no safetensors weights in {path}")
        state = {}
        for fname in files:
            with safe_open(os.path.join(path, fname), framework="pt") as f:
                for k in f.keys():
                    state[k] = f.get_tensor(k)
        lm_state, media = split_checkpoint_keys(state)
        if dtype is not None:
            lm_state = {k: v.to(dtype) for k, v in lm_state.items()}
        with torch.device("meta"):
            lm = Qwen2ForCausalLM(config)
        missing, unexpected = lm.load_state_dict(lm_state, strict=False, assign=True)
        missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or unexpected:
            raise ValueError(f"the checkpoint's language model does not fit Qwen2: missing {missing[:5]}, unexpected {unexpected[:5]}")
        if config.tie_word_embeddings:
            lm.lm_head.weight = lm.model.embed_tokens.weight
        lm.model.rotary_emb = type(lm.model.rotary_emb)(config)  # buffers are not in checkpoints
        lm = lm.to(device or "cpu").eval()
        model = cls.from_hf_lm(lm, adapter, tokenizer=_try_tokenizer(path) if load_tokenizer else None)
        model.media_state_dict = media
        return model
