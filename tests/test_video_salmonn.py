"""video-SALMONN 2+ (`HookedVideoSalmonn2Plus`): prompt layout and 3-D positions against layouts
worked out by hand from the released code's rules, and the hooked Qwen2.5-VL backbone against
Hugging Face's `Qwen2_5_VLForConditionalGeneration` text path with those explicit position ids."""

from __future__ import annotations

import torch

from avlens.families.video_salmonn import HookedVideoSalmonn2Plus, audio_shares, placeholder_ids, rope_positions
from backbones import make_backbone

T = {"video_token_id": 111, "audio_token_id": 110, "vision_start_token_id": 112, "vision_end_token_id": 113, "image_token_id": 109}
V, A, VS, VE = 111, 110, 112, 113


def test_audio_shares_hand_worked():
    assert audio_shares(5, 3) == [2, 1, 2]  # base 1, remainder 2 at floor(1.5) - 1 = 0 and floor(3) - 1 = 2
    assert audio_shares(6, 3) == [2, 2, 2]
    assert audio_shares(7, 3, second_per_grid=1.0) == [2, 2, 3]  # grids at 0, 2, 4 (2 ids / s); last takes the rest
    assert audio_shares(4, 2, second_per_grid=0.5) == [1, 3]


def test_placeholder_ids_and_positions_hand_worked():
    grid = (2, 4, 4)  # 2 temporal grids of 2x2 merged tokens
    block = placeholder_ids(grid, n_audio=3, second_per_grid=1.0, token_ids=T)
    assert block == [VS] + [V] * 4 + [A] * 2 + [V] * 4 + [A] + [VE]
    ids = torch.tensor([[5, 6] + block + [7, 8]])
    pos, deltas = rope_positions(ids, torch.ones_like(ids), [grid], [3], [1.0], token_ids=T)
    # text 5, 6, <vision_start>: 0, 1, 2; o = 3
    # video g=0 (t 0): (3,3,3) (3,3,4) (3,4,3) (3,4,4); g=1 (t = floor(1 * 1.0 * 2) = 2): (5,...)
    # audio k: (3 + k, 3, 3 + k); tokens V V V V A A V V V V A
    # <vision_end>, 7, 8 start at 1 + max temporal id of the block (5): 6, 7, 8
    expected = [
        (0, 0, 0), (1, 1, 1), (2, 2, 2),
        (3, 3, 3), (3, 3, 4), (3, 4, 3), (3, 4, 4), (3, 3, 3), (4, 3, 4),
        (5, 3, 3), (5, 3, 4), (5, 4, 3), (5, 4, 4), (5, 3, 5),
        (6, 6, 6), (7, 7, 7), (8, 8, 8),
    ]
    assert pos[:, 0].T.tolist() == [list(e) for e in expected]
    assert deltas.tolist() == [[9 - 17]]


def test_two_videos_text_between_counts_from_the_block_maximum_and_padding_gets_1():
    grid = (1, 2, 4)  # 2 video tokens, one grid
    b1 = placeholder_ids(grid, 4, None, token_ids=T)  # [VS V V A A A A VE]
    ids = torch.tensor([[0, 0, 5] + b1 + [6] + b1 + [7]])
    am = torch.ones_like(ids)
    am[0, :2] = 0
    pos, deltas = rope_positions(ids, am, [grid, grid], [4, 4], None, token_ids=T)
    p = pos[:, 0].T.tolist()
    assert p[:2] == [[1, 1, 1], [1, 1, 1]]  # padding
    # 5, VS: 0, 1; o = 2: video (2,2,2) (2,2,3); audio (2+k, 2, 2+k) k < 4 -> max id 5 (w of audio)
    assert p[2:10] == [[0, 0, 0], [1, 1, 1], [2, 2, 2], [2, 2, 3], [2, 2, 2], [3, 2, 3], [4, 2, 4], [5, 2, 5]]
    # VE, 6, VS (text between the blocks) continue from 1 + the block's maximum over all axes: 6
    assert p[10:13] == [[6, 6, 6], [7, 7, 7], [8, 8, 8]]
    # second block o = 9; trailing VE, 7 from 1 + its maximum temporal id (9 + 3 = 12): 13, 14
    assert p[13:15] == [[9, 9, 9], [9, 9, 10]] and p[-2:] == [[13, 13, 13], [14, 14, 14]]
    assert deltas.tolist() == [[15 - 21]]  # max + 1 - padded row length (2 pads + 19 tokens)


def test_backbone_equals_hf_qwen2_5_vl_text_path_with_explicit_positions():
    hf = make_backbone("qwen2_5_vl", seed=3)
    model = HookedVideoSalmonn2Plus.from_hf_lm(hf, token_ids=T)
    grids = [(2, 4, 4), (3, 2, 4)]
    n_audio = [3, 5]
    rows = [[5, 6] + placeholder_ids(grids[0], 3, 1.0, T) + [7], [9] + placeholder_ids(grids[1], 5, 0.5, T) + [8, 4, 3]]
    n = max(map(len, rows))
    ids = torch.zeros(2, n, dtype=torch.long)
    am = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, n - len(r):], am[i, n - len(r):] = torch.tensor(r), 1
    g = torch.Generator().manual_seed(0)
    feats = {"video": torch.randn(int((ids == V).sum()), 64, generator=g), "audio": torch.randn(int((ids == A).sum()), 64, generator=g)}
    batch = model.prepare(input_ids=ids, attention_mask=am, features=feats, video_grid_thw=grids,
                          audio_lengths=n_audio, video_second_per_grid=[1.0, 0.5])
    pos, _ = rope_positions(ids, am, grids, n_audio, [1.0, 0.5], token_ids=T)
    assert torch.equal(batch.position_ids, pos)
    with torch.no_grad():
        x = hf.get_input_embeddings()(ids)
        x = x.masked_scatter((ids == V)[..., None], feats["video"]).masked_scatter((ids == A)[..., None], feats["audio"])
        ref = hf(inputs_embeds=x, attention_mask=am, position_ids=pos).logits
    got = model(batch)
    valid = am.bool()
    assert (got[valid] - ref[valid]).abs().max().item() <= 1e-4
    assert batch.layout.counts("audio").tolist() == n_audio
    assert batch.layout.counts("special").tolist() == [2, 2]


def test_video_without_audio_is_refused_with_the_workaround():
    """The released code falls back to Qwen2.5-VL's own positions for video alone; avlens does not
    reproduce that fallback and says so instead of giving audio-visual positions."""
    import pytest

    hf = make_backbone("qwen2_5_vl", seed=3)
    model = HookedVideoSalmonn2Plus.from_hf_lm(hf, token_ids=T)
    grid = (2, 4, 4)
    ids = torch.tensor([[5, VS] + [V] * 8 + [VE, 7]])  # a video block with no audio pads
    feats = {"video": torch.randn(int((ids == V).sum()), 64)}
    for lengths in (None, [0]):
        with pytest.raises(NotImplementedError, match="without audio .* position_ids="):
            model.prepare(input_ids=ids, features=feats, video_grid_thw=[grid], audio_lengths=lengths, video_second_per_grid=[1.0])
    # explicit positions (e.g. from HF's Qwen2.5-VL get_rope_index) are taken as given
    pos = torch.arange(ids.shape[1]).expand(3, 1, -1)
    batch = model.prepare(input_ids=ids, features=feats, position_ids=pos)
    assert torch.equal(batch.position_ids, pos)
