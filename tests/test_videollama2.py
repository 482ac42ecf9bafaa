"""VideoLLaMA2.1-AV (`HookedVideoLLaMA2AV`): the sentinel expansion against the released code's
merge rule (written out here: each sentinel replaced, in order, by the next media block; an
audio-visual `<video>` block is cat([video tokens, audio tokens]); right padding with zero
embeddings; Hugging Face Qwen2's default positions), the Qwen2 backbone against Hugging Face, and
the checkpoint key mapping."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from avlens.families.videollama2 import (
    AUDIO_SENTINEL, VIDEO_SENTINEL, HookedVideoLLaMA2AV, VideoLLaMA2AVAdapter, split_checkpoint_keys,
)
from backbones import make_backbone


def _encoders(seed=0):
    torch.manual_seed(seed)
    video = nn.Sequential(nn.Flatten(1), nn.Linear(3 * 8 * 8, 64))  # one token per frame
    audio = nn.Linear(16, 64)  # one token per fbank row
    return video, audio


def test_expand_hand_worked():
    hf = make_backbone("qwen2")
    model = HookedVideoLLaMA2AV.from_hf_lm(hf, token_ids={"pad_token_id": 0})
    ids, mask, groups = model.expand([[1, 2, VIDEO_SENTINEL, 3], [4, AUDIO_SENTINEL]], [[[("video", 3), ("audio", 2)]], [[("audio", 2)]]])
    assert ids.tolist() == [[1, 2, 0, 0, 0, 0, 0, 3], [4, 0, 0, 0, 0, 0, 0, 0]]
    assert mask.tolist() == [[1] * 8, [1, 1, 1, 0, 0, 0, 0, 0]]
    assert groups["video"][0].tolist() == [False, False, True, True, True, False, False, False]
    assert groups["audio"][0].tolist() == [False] * 5 + [True, True, False]
    assert groups["audio"][1].tolist() == [False, True, True] + [False] * 5
    with pytest.raises(ValueError, match="more media sentinels"):
        model.expand([[VIDEO_SENTINEL, VIDEO_SENTINEL]], [[[("video", 1)]]])
    with pytest.raises(ValueError, match="neither in"):
        model.expand([[-7]], [[]])


def _released_merge(embed, rows, blocks):
    """VideoLLaMA2's prepare_inputs_labels_for_multimodal, written out for the test: per row,
    embed the text around each sentinel and put the next media block in its place; pad rows on the
    right with zero embeddings and attention mask 0."""
    out, k = [], 0
    for row in rows:
        pieces, cur = [], list(row)
        while any(t < 0 for t in cur):
            j = next(i for i, t in enumerate(cur) if t < 0)
            pieces += [embed(torch.tensor(cur[:j])), blocks[k]]
            k += 1
            cur = cur[j + 1:]
        pieces.append(embed(torch.tensor(cur)))
        out.append(torch.cat(pieces))
    n = max(x.shape[0] for x in out)
    mask = torch.tensor([[1] * x.shape[0] + [0] * (n - x.shape[0]) for x in out])
    x = torch.stack([torch.cat([e, e.new_zeros(n - e.shape[0], e.shape[1])]) for e in out])
    return x, mask


def test_prepare_sentinels_equals_released_merge_on_hf_qwen2():
    hf = make_backbone("qwen2", seed=6)
    venc, aenc = _encoders()
    model = HookedVideoLLaMA2AV.from_hf_lm(hf, VideoLLaMA2AVAdapter(venc, aenc), token_ids={"pad_token_id": 0})
    g = torch.Generator().manual_seed(1)
    video = torch.randn(4, 3, 8, 8, generator=g)
    audio_a, audio_b = torch.randn(5, 16, generator=g), torch.randn(3, 16, generator=g)
    rows = [[11, 12, VIDEO_SENTINEL, 13, 14], [21, AUDIO_SENTINEL, 22]]
    batch = model.prepare_sentinels(rows, videos=[video], audios=[audio_a, audio_b])
    with torch.no_grad():
        blocks = [torch.cat([venc(video), aenc(audio_a)]), aenc(audio_b)]
        x, mask = _released_merge(hf.get_input_embeddings(), rows, blocks)
        ref = hf(inputs_embeds=x, attention_mask=mask).logits  # HF Qwen2's default positions
    assert torch.equal(batch.attention_mask, mask)
    got = model(batch)
    valid = mask.bool()
    assert (got[valid] - ref[valid]).abs().max().item() <= 1e-4
    assert batch.layout.counts("video").tolist() == [4, 0] and batch.layout.counts("audio").tolist() == [5, 3]
    # hooks inside the adapter fire while prepare encodes: zeroing the audio tower's output
    model.add_hook("adapter.audio.hook_out", lambda t, hook: t * 0)
    try:
        silent = model.prepare_sentinels(rows, videos=[video], audios=[audio_a, audio_b])
    finally:
        model.reset_hooks()
    assert float(silent.features["audio"].abs().max()) == 0.0


def test_from_pretrained_maps_checkpoint_keys(tmp_path):
    hf = make_backbone("qwen2", seed=7)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    state["model.mm_projector.readout.0.weight"] = torch.randn(4, 4)
    state["model.mm_projector_a.0.weight"] = torch.randn(4, 4)
    save_file(state, str(tmp_path / "model.safetensors"))
    cfg = hf.config.to_dict()
    cfg["model_type"] = "videollama2_qwen2"
    cfg["mm_projector_type"] = "stc_connector_v35"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = HookedVideoLLaMA2AV.from_pretrained(str(tmp_path))
    assert sorted(model.media_state_dict) == ["mm_projector.readout.0.weight", "mm_projector_a.0.weight"]
    tok = torch.randint(0, 100, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(tok) - hf(tok).logits).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match="unexpected VideoLLaMA2 checkpoint key"):
        split_checkpoint_keys({"model.something_else.weight": torch.zeros(1)})


def test_from_pretrained_reads_legacy_rope_theta(tmp_path):
    """A released-style (transformers-4) config.json spells the RoPE base as a top-level
    `rope_theta` (here 1e6, not the 1e4 default) next to media keys; the loaded model must
    match HF's Qwen2 built with that base spelled the transformers-5 way."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hf = make_backbone("qwen2", seed=7)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors"))
    cfg = hf.config.to_dict()
    cfg.pop("rope_parameters", None)
    cfg.update(model_type="videollama2_qwen2", rope_theta=1e6, rope_scaling=None, torch_dtype="float32",
               mm_projector_type="stc_connector_v35", mm_vision_tower="clip", audio_tower="beats",
               use_sliding_window=False, transformers_version="4.40.0")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ref_cfg = hf.config.to_dict()
    ref_cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    ref = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in ref_cfg.items() if k != "model_type"})).eval()
    ref.load_state_dict(hf.state_dict())
    assert ref.config.rope_parameters["rope_theta"] == 1e6
    model = HookedVideoLLaMA2AV.from_pretrained(str(tmp_path), load_tokenizer=False)
    assert model.cfg.rope_theta == 1e6
    tok = torch.randint(0, 100, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want, base = model(tok), ref(tok).logits, hf(tok).logits
    assert (want - base).abs().max().item() > 1e-2  # the base matters at this length
    assert (got - want).abs().max().item() <= 1e-4
