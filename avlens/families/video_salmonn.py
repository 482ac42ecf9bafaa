"""video-SALMONN 2+ (Tang et al. 2025; bytedance/video-SALMONN-2, `video_SALMONN2_plus/`).

The model is Qwen2.5-VL with an audio branch (Whisper-large-v3 encoder + window Q-Former, about
2 tokens per second). Its language model is Qwen2.5-VL's text model (a Qwen2 decoder with 3-D
M-RoPE), which `HookedGenericAV.from_hf_lm` wraps from a `Qwen2_5_VLForConditionalGeneration`;
the media features come from the released encoders (or yours), as `features=` or an adapter.

Facts read from the public code (`qwenvl/data/dataset.py`, `qwenvl/model/modeling_qwen2_5_vl.py`):

* Prompt: a video with its audio becomes `<|vision_start|>`, then per temporal grid g
  `[<|video_pad|> x h*w/4][<|audio_pad|> x share_g]`, then `<|vision_end|>`. The audio tokens are
  shared out over the grids: with `second_per_grid` s, grid g's share is
  `floor((g+1) * s * 2) - floor(g * s * 2)` and the last grid takes the rest; without it, an even
  split with the remainder spread as `split_into_groups` spreads it. `<|audio_pad|>` is 151665.
* 3-D positions (`get_rope_index`, audio-visual branch): text before a video block counts on from
  1 + the maximum id so far (all three axes); video token (g, row, col) gets
  `(floor(g * s * 2), row, col) + o` and audio token k gets `(k, 0, k) + o`, with o the id after
  the text before the block; positions are given to the block's tokens by kind, in order (the
  interleaving in the prompt does not change them). Text after the last video block starts at
  1 + the maximum *temporal* id of that block. `rope_deltas = max + 1 - (padded row length)`.
  Padding gets 1.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from avlens.batch import AVBatch
from avlens.families.generic import HookedGenericAV

VIDEO_SALMONN2_PLUS_TOKEN_IDS = {
    "video_token_id": 151656,  # <|video_pad|>
    "image_token_id": 151655,  # <|image_pad|>
    "audio_token_id": 151665,  # <|audio_pad|>
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
}


def audio_shares(n_audio: int, n_grids: int, second_per_grid: Optional[float] = None) -> list[int]:
    """How many audio tokens follow each temporal grid's video tokens (video-SALMONN 2+'s
    `split_into_groups`)."""
    if second_per_grid is not None:
        frame = (torch.arange(n_grids) * float(second_per_grid) * 2).long().tolist()
        shares = [b - a for a, b in zip(frame, frame[1:])]
        shares.append(n_audio - sum(shares))
        if shares[-1] < 0:
            raise ValueError(f"{n_audio} audio tokens are too few for {n_grids} grids of {second_per_grid} s")
        return shares
    base, rem = divmod(n_audio, n_grids)
    shares = [base] * n_grids
    if rem:
        step = n_grids / rem
        for i in range(1, rem + 1):
            shares[min(math.floor(i * step) - 1, n_grids - 1)] += 1
    return shares


def placeholder_ids(video_grid_thw: Sequence[int], n_audio: int, second_per_grid: Optional[float] = None,
                    token_ids: Optional[dict] = None, merge_size: int = 2) -> list[int]:
    """The token ids video-SALMONN 2+ puts in the prompt for one video with its audio."""
    t = {**VIDEO_SALMONN2_PLUS_TOKEN_IDS, **(token_ids or {})}
    gt, gh, gw = (int(x) for x in video_grid_thw)
    per_grid = gh * gw // merge_size**2
    out = [t["vision_start_token_id"]]
    for share in audio_shares(n_audio, gt, second_per_grid):
        out += [t["video_token_id"]] * per_grid + [t["audio_token_id"]] * share
    return out + [t["vision_end_token_id"]]


def rope_positions(input_ids: Tensor, attention_mask: Tensor, video_grid_thw, audio_lengths, second_per_grid=None,
                   token_ids: Optional[dict] = None, merge_size: int = 2, tokens_per_second: int = 2) -> tuple[Tensor, Tensor]:
    """3-D positions `[3, b, p]` (long) and rope_deltas `[b, 1]` of video-SALMONN 2+'s
    audio-visual `get_rope_index` (module docstring). Videos (and their audio lengths) are counted
    across the batch in order."""
    t = {**VIDEO_SALMONN2_PLUS_TOKEN_IDS, **(token_ids or {})}
    V, A, VS = t["video_token_id"], t["audio_token_id"], t["vision_start_token_id"]
    b, n = input_ids.shape
    pos = torch.ones(3, b, n, dtype=torch.long)
    deltas = torch.zeros(b, 1, dtype=torch.long)
    grids = torch.as_tensor(video_grid_thw).tolist()
    vi = 0
    for i in range(b):
        valid = attention_mask[i].bool().cpu()
        ids = input_ids[i].cpu()[valid].tolist()
        out = torch.zeros(3, len(ids), dtype=torch.long)
        n_videos = sum(1 for j in range(len(ids) - 1) if ids[j] == VS and ids[j + 1] == V)
        st, nxt, last_t = 0, 0, None
        for _ in range(n_videos):
            ed = ids.index(V, st)
            out[:, st:ed] = torch.arange(ed - st) + nxt
            o = nxt + ed - st
            if vi >= len(grids) or vi >= len(audio_lengths):
                raise ValueError(f"sample {i} has more video blocks than the {len(grids)} videos / {len(audio_lengths)} audio lengths given")
            gt, gh, gw = grids[vi]
            h, w = gh // merge_size, gw // merge_size
            s = 1.0 if second_per_grid is None else float(torch.as_tensor(second_per_grid).reshape(-1)[vi])
            tt = (torch.arange(gt).view(-1, 1).expand(-1, h * w) * s * tokens_per_second).long().flatten()
            hh = torch.arange(h).view(1, -1, 1).expand(gt, -1, w).flatten()
            ww = torch.arange(w).view(1, 1, -1).expand(gt, h, -1).flatten()
            vpos = torch.stack([tt, hh, ww]) + o
            k = torch.arange(int(audio_lengths[vi]))
            apos = torch.stack([k, torch.zeros_like(k), k]) + o
            end = ed + vpos.shape[1] + apos.shape[1]
            block = torch.tensor(ids[ed:end])
            if len(block) != end - ed or int((block == V).sum()) != vpos.shape[1] or int((block == A).sum()) != apos.shape[1]:
                raise ValueError(
                    f"the video block at position {ed} of sample {i} should hold {vpos.shape[1]} video and {apos.shape[1]} "
                    "audio pads (video_grid_thw and audio_lengths of that video); build it with placeholder_ids(...)"
                )
            piece = torch.zeros(3, end - ed, dtype=torch.long)
            piece[:, block == A] = apos
            piece[:, block == V] = vpos
            out[:, ed:end] = piece
            nxt, last_t, st = int(piece.max()) + 1, int(piece[0].max()), end
            vi += 1
        if st < len(ids):
            start = last_t + 1 if last_t is not None else 0
            out[:, st:] = torch.arange(len(ids) - st) + start
        pos[:, i, valid] = out
        deltas[i, 0] = int(out.max()) + 1 - n
    return pos, deltas


class HookedVideoSalmonn2Plus(HookedGenericAV):
    """video-SALMONN 2+: the Qwen2.5-VL text model hooked, video-SALMONN 2+'s layout and 3-D positions.

        model = HookedVideoSalmonn2Plus.from_hf_lm(qwen2_5_vl_model)   # token ids default to the real ones
        ids = text + placeholder_ids(grid, n_audio, second_per_grid) + text
        batch = model.prepare(input_ids=ids, features={"video": v, "audio": a}, video_grid_thw=[grid],
                              audio_lengths=[n_audio], video_second_per_grid=[s])
    """

    tokens_per_second = 2  # hard-coded in video-SALMONN 2+'s get_rope_index (`* 2`)

    @classmethod
    def from_hf_lm(cls, lm, adapter=None, *, token_ids: Optional[dict] = None, **kwargs) -> "HookedVideoSalmonn2Plus":
        ids = {**VIDEO_SALMONN2_PLUS_TOKEN_IDS, **(token_ids or {})}
        model = super().from_hf_lm(lm, adapter, token_ids=ids, **kwargs)
        if model.cfg.rope_kind != "mrope":
            raise TypeError(f"video-SALMONN 2+ needs a Qwen2.5-VL backbone (3-D M-RoPE); {type(lm).__name__} has {model.cfg.rope_kind} positions")
        return model

    def special_token_ids(self) -> set[int]:
        t = self.cfg.token_ids
        return {t["vision_start_token_id"], t["vision_end_token_id"]} | super().special_token_ids()

    def prepare(self, input_ids=None, attention_mask=None, *, video_grid_thw=None, audio_lengths=None,
                video_second_per_grid=None, position_ids=None, **kw) -> AVBatch:
        """`HookedGenericAV.prepare` with video-SALMONN 2+'s 3-D positions (from `video_grid_thw`,
        `audio_lengths` and `video_second_per_grid`, one per video)."""
        if position_ids is None and video_grid_thw is not None:
            if audio_lengths is None or any(int(n) == 0 for n in torch.as_tensor(audio_lengths).reshape(-1).tolist()):
                raise NotImplementedError(
                    "video-SALMONN 2+ without audio (audio_lengths missing or 0 for a video) is not supported: its "
                    "audio-visual positions need audio tokens per video, and for video alone the released code falls "
                    "back to Qwen2.5-VL's own get_rope_index, which avlens does not reproduce here. Pass audio_lengths "
                    "(audio tokens per video), or compute the positions with Hugging Face's Qwen2.5-VL get_rope_index "
                    "and pass position_ids= (and rope_deltas=)."
                )
            ids = torch.as_tensor(input_ids)
            ids = ids[None] if ids.ndim == 1 else ids
            am = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).reshape(ids.shape)
            position_ids, deltas = rope_positions(
                ids, am, video_grid_thw, list(audio_lengths), video_second_per_grid,
                token_ids=self.cfg.token_ids, tokens_per_second=self.tokens_per_second,
            )
            kw["rope_deltas"] = deltas
        return super().prepare(input_ids, attention_mask, position_ids=position_ids, **kw)
