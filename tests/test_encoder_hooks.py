"""Hook points inside the modality encoders (`avlens.families.encoders`) against the Hugging Face
towers of a tiny Qwen2.5-Omni thinker:

* `blocks.{i}.hook_resid_post` equals the tower's own `output_hidden_states` (HF's recorder);
* audio `attn.hook_pattern` chunks equal softmax(q k^T / sqrt(e)) from HF's q_proj / k_proj outputs
  per attention chunk (captured with torch hooks), with `ctx["chunk_start"]`;
* editing a pattern changes the encoder output (and the LLM logits), a pattern hook that returns
  its input changes nothing;
* the position maps: zeroing the last layer's output at one packed position changes exactly the
  LLM token `audio_position_to_token` / `vision_position_to_token` name;
* no hook and no HF attention setting is left behind, also after an exception.
"""

from __future__ import annotations

import pytest
import torch

import hf_reference as R
from avlens.families.encoders import audio_position_to_token, vision_position_to_token

VARIANT = R.TINY_VARIANTS[0]["name"]


@pytest.fixture(scope="module")
def av(hf_thinker, hooked_model, hf_case):
    return hf_thinker(VARIANT), hooked_model(VARIANT), hf_case(VARIANT, "audio_video", "b1")


def test_layer_resid_post_equals_hf_output_hidden_states(av):
    hf, model, case = av
    inp = case.inputs
    tower = hf.model.audio_tower
    fam = inp["feature_attention_mask"]
    flat = inp["input_features"].permute(0, 2, 1)[fam.bool()].permute(1, 0)
    with torch.no_grad():
        ref = tower(flat, feature_lens=fam.sum(1), aftercnn_lens=tower._get_feat_extract_output_lengths(fam.sum(1))[0],
                    output_hidden_states=True).hidden_states
        vref = hf.model.visual(inp["pixel_values_videos"], grid_thw=inp["video_grid_thw"], output_hidden_states=True).hidden_states
    names = [f"audio_tower.blocks.{i}.hook_resid_post" for i in range(2)] + [f"visual.blocks.{i}.hook_resid_post" for i in range(2)]
    _, cache = model.run_with_cache(model.prepare(**inp), names_filter=names)
    for i in range(2):
        torch.testing.assert_close(cache[f"audio_tower.blocks.{i}.hook_resid_post"], ref[len(ref) - 2 + i], rtol=0, atol=1e-5)
        torch.testing.assert_close(cache[f"visual.blocks.{i}.hook_resid_post"], vref[len(vref) - 2 + i], rtol=0, atol=1e-5)


def test_audio_attention_patterns_equal_softmax_of_hf_projections(av):
    hf, model, case = av
    attn = hf.model.audio_tower.layers[1].self_attn
    got_q, got_k = {}, {}
    h1 = attn.q_proj.register_forward_hook(lambda m, a, o: got_q.__setitem__("q", o))
    h2 = attn.k_proj.register_forward_hook(lambda m, a, o: got_k.__setitem__("k", o))
    chunks = []
    try:
        model.run_with_hooks(model.prepare(**case.inputs), fwd_hooks=[
            ("audio_tower.blocks.1.attn.hook_pattern", lambda p, hook: chunks.append((hook.ctx["chunk_start"], p.detach().clone())))])
    finally:
        h1.remove()
        h2.remove()
    heads = attn.num_heads
    q = got_q["q"].reshape(got_q["q"].shape[0], heads, -1).transpose(0, 1)
    k = got_k["k"].reshape(got_k["k"].shape[0], heads, -1).transpose(0, 1)
    assert chunks and chunks[0][0] == 0
    total = 0
    for start, p in chunks:
        n = p.shape[-1]
        ref = torch.softmax(q[:, start:start + n] @ k[:, start:start + n].transpose(1, 2) * attn.scaling, dim=-1)
        torch.testing.assert_close(p[0], ref, rtol=0, atol=1e-5)
        total += n
    assert total == q.shape[1]  # the chunks tile the packed positions
    # a model-side eager path leaves HF's setting as it was
    assert hf.model.audio_tower.config._attn_implementation == "eager"


def test_pattern_edit_changes_output_and_identity_edit_does_not(av):
    hf, model, case = av
    batch = model.prepare(**case.inputs)
    clean = model(batch)
    same = model.run_with_hooks(batch, fwd_hooks=[("visual.blocks.0.attn.hook_pattern", lambda p, hook: p)])
    assert (same - clean).abs().max().item() <= 1e-5
    uniform = model.run_with_hooks(batch, fwd_hooks=[("visual.blocks.0.attn.hook_pattern", lambda p, hook: torch.full_like(p, 1.0 / p.shape[-1]))])
    assert (uniform - clean).abs().max().item() > 1e-3


def _features_after_zeroing(model, batch, name, position):
    def zero(x, hook):
        x = x.clone()
        x[position] = 0
        return x

    h = model.hooks(fwd_hooks=[(name, zero)])
    with h:
        fresh = model.encode_media(batch.raw)
    return fresh


def test_audio_position_map_names_the_token_a_position_feeds(av):
    hf, model, case = av
    batch = model.prepare(**case.inputs)
    base = model.encode_media(batch.raw)["audio"]
    fam = case.inputs["feature_attention_mask"]
    items, tokens = audio_position_to_token(fam.sum(1))
    assert len(tokens) == int(((fam.sum(1) - 1) // 2 + 1).sum())
    for p in (0, 5, len(tokens) - 1):
        changed = (_features_after_zeroing(model, batch, "audio_tower.blocks.1.hook_resid_post", p)["audio"] - base).abs().sum(-1) > 0
        expect = [int(tokens[p])] if tokens[p] >= 0 else []
        assert changed.nonzero()[:, 0].tolist() == expect


def test_vision_position_map_follows_the_window_permutation(av):
    hf, model, case = av
    batch = model.prepare(**case.inputs)
    grid = case.inputs["video_grid_thw"]
    base = model.encode_media(batch.raw)["video"]
    m = vision_position_to_token(hf.model.visual, grid)
    assert not torch.equal(m["patch"], torch.arange(len(m["patch"])))  # windows do permute the patches
    for p in (0, 7, 30, len(m["patch"]) - 1):
        changed = (_features_after_zeroing(model, batch, "visual.blocks.1.hook_resid_post", p)["video"] - base).abs().sum(-1) > 0
        assert changed.nonzero()[:, 0].tolist() == [int(m["token"][p])]
    assert m["t"].max().item() == int(grid[0, 0]) - 1


def test_encoder_hooks_leave_nothing_behind_after_an_exception(av):
    hf, model, case = av
    batch = model.prepare(**case.inputs)
    before = [(dict(b._forward_hooks), dict(b._forward_pre_hooks)) for b in hf.model.visual.blocks]

    def boom(p, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(batch, fwd_hooks=[("visual.blocks.1.attn.hook_pattern", boom)])
    assert not model.visual.hooked and not model.audio_tower.hooked
    assert hf.model.visual.config._attn_implementation == "eager"
    # HF's own output recorders may sit there (test above); avlens's torch hooks must be gone
    assert [(dict(b._forward_hooks), dict(b._forward_pre_hooks)) for b in hf.model.visual.blocks] == before
    assert not any(hasattr(b.attn, "_avlens_attn_hooks") for b in hf.model.visual.blocks)
