"""`HookedQwen3Omni` against Hugging Face's `Qwen3OmniMoeThinkerForConditionalGeneration` on a tiny
random thinker (MoE + dense layers, q/k norm, interleaved M-RoPE with fractional temporal ids,
DeepStack, AuT audio tower; float32, eager attention, eager experts):

* logits <= 1e-4 and 3-D positions / rope_deltas equal to HF's `get_rope_index` for text, audio,
  image, video, audio+video, audio-in-video and image+video, batch 1 and a left-padded batch 2;
* MoE: `hook_router_logits` equals HF's router output; zeroing an expert's column of
  `hook_expert_weights` equals HF with that expert's `down_proj` zeroed; per-expert hooks see the
  positions HF's top-k routes to them;
* DeepStack: `blocks.{l}.hook_deepstack` holds HF's `deepstack_visual_embeds[l]` at the visual
  positions (captured from HF's language model call), `resid_post[l] != resid_pre[l + 1]`, and the
  `AVActivationCache.decompose_resid` stack sums to the residual stream;
* greedy `generate` equals HF `generate` (float rope deltas continue the positions).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import avlens
import qwen3_reference as Q
from avlens.model.cache import AVActivationCache

BATCHES = [1, 2]


@pytest.fixture(scope="module")
def q3():
    hf = Q.make_thinker()
    return hf, avlens.HookedAVTransformer.from_hf(hf, token_ids=Q.token_ids())


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("kind", Q.CASES)
def test_qwen3_omni_logits_and_positions_equal_hf_thinker(kind, batch, q3):
    hf, model = q3
    inputs = Q.make_inputs(kind, batch)
    ref = Q.hf_logits(hf, inputs)
    pos, deltas = Q.hf_rope_index(hf, inputs)
    b = model.prepare(**inputs)
    got = model(b)
    valid = inputs["attention_mask"].bool()
    assert (got[valid] - ref[valid]).abs().max().item() <= 1e-4
    assert b.position_ids.dtype == torch.float32
    assert torch.equal(b.position_ids[:, valid], pos[:, valid])
    assert torch.equal(b.rope_deltas.float(), deltas.float())
    ids = inputs["input_ids"]
    for group, tid in (("audio", Q.IDS["audio"]), ("video", Q.IDS["video"]), ("image", Q.IDS["image"])):
        assert torch.equal(b.layout.mask(group), (ids == tid) & valid)


def test_qwen3_omni_interleaved_audio_in_video_layout_is_a_time_merge(q3):
    """In the audio-in-video block the video grids and audio tokens alternate by time, and the
    layout's time stamps are non-decreasing across the merged block (checked against the
    processor-style layout built in qwen3_reference)."""
    hf, model = q3
    b = model.prepare(**Q.make_inputs("audio_in_video", 1))
    media = b.layout.mask("audio")[0] | b.layout.mask("video")[0]
    t = b.layout.time[0, media]
    kinds = b.layout.labels(0)
    runs = sum(1 for i in range(1, len(kinds)) if kinds[i] != kinds[i - 1] and kinds[i] in ("audio", "video"))
    assert runs > 4  # several video/audio alternations, not [all video][all audio]
    assert bool((t[1:] >= t[:-1] - 1 / Q.PPS - 1e-6).all())


def _capture_router_logits(hf, inputs):
    got = {}
    handles = []
    for l, layer in enumerate(hf.model.language_model.layers):
        if hasattr(layer.mlp, "gate"):
            handles.append(layer.mlp.gate.register_forward_hook(lambda mod, a, out, l=l: got.__setitem__(l, out[0])))
    try:
        Q.hf_logits(hf, inputs)
    finally:
        for h in handles:
            h.remove()
    return got


def test_moe_router_logits_and_expert_routing_equal_hf(q3):
    hf, model = q3
    inputs = Q.make_inputs("audio_video", 1)
    ref = _capture_router_logits(hf, inputs)
    assert sorted(ref) == [0, 2]  # layer 1 is dense (mlp_only_layers)
    names = [f"blocks.{l}.mlp.hook_router_logits" for l in ref] + [f"blocks.0.mlp.experts.{e}.hook_out" for e in range(8)]
    _, cache = model.run_with_cache(model.prepare(**inputs), names_filter=names)
    for l, logits in ref.items():
        torch.testing.assert_close(cache[f"blocks.{l}.mlp.hook_router_logits"][0], logits, rtol=0, atol=1e-5)
    top = ref[0].topk(2, dim=-1).indices
    for e in range(8):
        n_routed = int((top == e).any(-1).sum())
        name = f"blocks.0.mlp.experts.{e}.hook_out"
        assert (cache[name].shape[0] if name in cache.cache_dict else 0) == n_routed


def test_zeroing_an_expert_weight_equals_hf_with_that_expert_removed(q3):
    hf, model = q3
    inputs = Q.make_inputs("video", 1)
    e, layer = 3, 2
    hf_layer = hf.model.language_model.layers[layer].mlp.experts
    saved = hf_layer.down_proj.data[e].clone()
    try:
        hf_layer.down_proj.data[e] = 0
        ref = Q.hf_logits(hf, inputs)
    finally:
        hf_layer.down_proj.data[e] = saved

    def ablate(w, hook):
        w[..., e] = 0
        return w

    got = model.run_with_hooks(model.prepare(**inputs), fwd_hooks=[(f"blocks.{layer}.mlp.hook_expert_weights", ablate)])
    assert (got - ref).abs().max().item() <= 1e-4
    assert (got - Q.hf_logits(hf, inputs)).abs().max().item() > 1e-3  # the expert mattered


def test_deepstack_hook_holds_hf_deepstack_embeds_and_decompose_resid_includes_it(q3):
    hf, model = q3
    inputs = Q.make_inputs("image_video", 2)
    seen = {}

    def grab(mod, args, kwargs):
        seen["embeds"] = kwargs["deepstack_visual_embeds"]
        seen["mask"] = kwargs["visual_pos_masks"]

    h = hf.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        Q.hf_logits(hf, inputs)
    finally:
        h.remove()
    _, cache = model.run_with_cache(model.prepare(**inputs))
    assert isinstance(cache, AVActivationCache)
    assert "blocks.2.hook_deepstack" not in model.hook_dict  # two levels: after layers 0 and 1
    mask = seen["mask"]
    for l, emb in enumerate(seen["embeds"]):
        term = cache[f"blocks.{l}.hook_deepstack"]
        torch.testing.assert_close(term[mask], emb, rtol=0, atol=1e-5)
        assert bool((term[~mask] == 0).all())
        gap = cache[f"blocks.{l + 1}.hook_resid_pre"] - cache[f"blocks.{l}.hook_resid_post"]
        torch.testing.assert_close(gap, term, rtol=0, atol=1e-6)
    for layer in range(model.cfg.n_layers + 1):
        stack, labels = cache.decompose_resid(layer, return_labels=True)
        target = cache[f"blocks.{layer}.hook_resid_pre"] if layer < model.cfg.n_layers else cache["blocks.2.hook_resid_post"]
        torch.testing.assert_close(stack.sum(0), target, rtol=0, atol=1e-5)
        assert ("0_deepstack" in labels) == (layer >= 1)


def test_deepstack_batch_survives_select_and_a_plain_batch_is_refused(q3):
    hf, model = q3
    inputs = Q.make_inputs("video", 2)
    batch = model.prepare(**inputs)
    full = model(batch)
    one = model(batch.select([1]))
    valid = inputs["attention_mask"][1].bool()
    assert (one[0, valid] - full[1, valid]).abs().max().item() <= 1e-5
    plain = avlens.AVBatch(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
        layout=batch.layout, features=batch.features, rope_deltas=batch.rope_deltas,
    )
    with pytest.raises(ValueError, match="no DeepStack features"):
        model(plain)


def test_visual_encoder_hook_reencodes_with_deepstack(q3):
    hf, model = q3
    inputs = Q.make_inputs("image", 1)
    ref = Q.hf_logits(hf, inputs)
    got = model.run_with_hooks(model.prepare(**inputs), fwd_hooks=[("visual.hook_in", lambda x, hook: x)])
    assert (got - ref).abs().max().item() <= 1e-4
    zero = model.run_with_hooks(model.prepare(**inputs), fwd_hooks=[("visual.hook_in", lambda x, hook: x * 0)])
    assert (zero - ref).abs().max().item() > 1e-3


def test_qwen3_omni_greedy_generate_equals_hf_generate(q3):
    hf, model = q3
    inputs = Q.make_inputs("audio_in_video", 1)
    hf.model.rope_deltas = None
    with torch.no_grad():
        ref = hf.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False, output_logits=True,
                          return_dict_in_generate=True, pad_token_id=Q.IDS["pad"], eos_token_id=None)
    out = model.generate(model.prepare(**inputs), max_new_tokens=4)
    n = inputs["input_ids"].shape[1]
    assert torch.equal(out.tokens, ref.sequences[:, n:])
    torch.testing.assert_close(out.logits, torch.stack(ref.logits, 1), rtol=0, atol=1e-4)


def test_qwen3_omni_from_pretrained_thinker_checkpoint_gives_hf_logits(q3, tmp_path):
    hf, _ = q3
    hf.save_pretrained(tmp_path)
    # a checkpoint's own preprocessor settings (not the released ones) must reach prepare_media
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(dict(
        _RELEASED_PREPROCESSOR, image_mean=[0.4, 0.3, 0.2], image_std=[0.2, 0.25, 0.3], max_pixels=50000)))
    model = avlens.HookedAVTransformer.from_pretrained(str(tmp_path), token_ids=Q.token_ids(), attn_implementation="eager")
    assert type(model).__name__ == "HookedQwen3Omni"
    inputs = Q.make_inputs("audio_in_video", 1)
    with torch.no_grad():
        got = model(model.prepare(**inputs))
    assert (got - Q.hf_logits(hf, inputs)).abs().max().item() <= 1e-4
    from transformers import Qwen2VLImageProcessorPil

    img = np.random.default_rng(5).integers(0, 256, (300, 260, 3), dtype=np.uint8)  # 78000 px > 50000: resized
    ref = Qwen2VLImageProcessorPil.from_pretrained(str(tmp_path))(images=[img], return_tensors="pt")
    t = model.cfg.token_ids
    batch = model.prepare_media([[5, t["vision_start_token_id"], t["image_token_id"], t["vision_end_token_id"]]], images=img)
    assert batch.raw["image_grid_thw"].tolist() == ref["image_grid_thw"].tolist()
    assert (batch.raw["pixel_values"] - ref["pixel_values"]).abs().max().item() <= 1e-5


def test_fold_ln_keeps_qwen3_omni_logits_and_leaves_hf_unchanged():
    hf = Q.make_thinker(seed=2)
    model = avlens.HookedAVTransformer.from_hf(hf, token_ids=Q.token_ids())
    inputs = Q.make_inputs("video", 1)
    ref = Q.hf_logits(hf, inputs)
    model.fold_ln()
    with torch.no_grad():
        got = model(model.prepare(**inputs))
    assert (got - ref).abs().max().item() <= 1e-4
    assert (Q.hf_logits(hf, inputs) - ref).abs().max().item() == 0


def test_prepare_media_expands_placeholders_as_the_qwen3_processor_and_matches_hf(q3):
    """Raw waveform + frames -> the ids `Qwen3OmniMoeProcessor` writes (audio-in-video merged by
    time; the processor-derived builder in qwen3_reference) and HF's logits on those inputs."""
    import numpy as np

    from avlens.data.media import media_inputs

    hf, model = q3
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(int(2.6 * 16000))).astype(np.float32)
    frames = rng.integers(0, 256, (6, 64, 96, 3), dtype=np.uint8)  # 6 frames at 3 fps: 3 temporal grids
    t = model.cfg.token_ids
    prompt = [[5, t["vision_start_token_id"], t["video_token_id"], t["vision_end_token_id"], 6]]
    budget = dict(min_pixels=64 * 64, max_pixels=64 * 96, trim_audio=True)
    batch = model.prepare_media(prompt, video=frames, audio=[wave], fps=3.0, use_audio_in_video=True, **budget)
    half = dict(image_mean=(0.5,) * 3, image_std=(0.5,) * 3)  # Qwen3's processor (tested below vs HF)
    inputs = media_inputs(prompt, t, video=frames, audio=[wave], fps=3.0, use_audio_in_video=True, patch_size=16,
                          position_id_per_seconds=Q.PPS, placeholder_rule=model.placeholder_rule, video_kwargs=half, **budget)
    n_frames = int(inputs["feature_attention_mask"].sum())
    grid = inputs["video_grid_thw"][0].tolist()
    assert grid == [3, 4, 6]
    expected = [5] + Q._aiv_block(grid, 2 / 3.0, Q.audio_tokens(n_frames)) + [6]
    assert batch.input_ids[0].tolist() == expected
    ref = Q.hf_logits(hf, {k: v for k, v in inputs.items()})
    assert (model(batch) - ref).abs().max().item() <= 1e-4


def test_qwen3_encoder_layer_hooks_equal_hf_hidden_states_and_identity_pattern_edit_is_exact(q3):
    hf, model = q3
    inputs = Q.make_inputs("audio_in_video", 1)
    with torch.no_grad():
        vref = hf.model.visual(inputs["pixel_values_videos"], grid_thw=inputs["video_grid_thw"], output_hidden_states=True).hidden_states
    batch = model.prepare(**inputs)
    names = [f"visual.blocks.{i}.hook_resid_post" for i in range(3)] + ["audio_tower.blocks.1.hook_resid_post"]
    _, cache = model.run_with_cache(batch, names_filter=names)
    for i in range(3):
        torch.testing.assert_close(cache[f"visual.blocks.{i}.hook_resid_post"], vref[len(vref) - 3 + i], rtol=0, atol=1e-5)
    torch.testing.assert_close(cache["audio_tower.blocks.1.hook_resid_post"], _hf_audio_layer_outputs(hf, inputs, 1), rtol=0, atol=1e-5)
    clean = model(batch)
    hooks = [(f"{t}.blocks.{i}.attn.hook_pattern", lambda p, hook: p) for t, n in (("visual", 3), ("audio_tower", 2)) for i in range(n)]
    same = model.run_with_hooks(batch, fwd_hooks=hooks)
    assert (same - clean).abs().max().item() <= 1e-5


def _hf_audio_layer_outputs(hf, inputs, layer: int) -> torch.Tensor:
    """HF's AuT layer `layer` output (packed [frames, d]) during HF's own thinker forward."""
    seen = []
    h = hf.model.audio_tower.layers[layer].register_forward_hook(lambda mod, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        Q.hf_logits(hf, inputs)
    finally:
        h.remove()
    return torch.cat(seen)


def test_audio_only_batch_with_encoder_hooks_equals_hf(q3):
    """No image/video, so no DeepStack terms: encoder hooks (which re-encode the media) and an
    audio_tower names_filter must run and give HF's logits and HF's AuT layer output."""
    hf, model = q3
    inputs = Q.make_inputs("audio", 2)
    ref = Q.hf_logits(hf, inputs)
    valid = inputs["attention_mask"].bool()
    batch = model.prepare(**inputs)
    for name in ("audio_tower.hook_in", "audio_tower.blocks.0.hook_resid_post", "visual.hook_in"):
        got = model.run_with_hooks(batch, fwd_hooks=[(name, lambda x, hook: x)])
        assert (got[valid] - ref[valid]).abs().max().item() <= 1e-4, name
    zero = model.run_with_hooks(batch, fwd_hooks=[("audio_tower.blocks.0.hook_resid_post", lambda x, hook: x * 0)])
    assert (zero[valid] - ref[valid]).abs().max().item() > 1e-3  # the hook really re-encoded the audio
    out, cache = model.run_with_cache(batch, names_filter=lambda n: n.startswith("audio_tower"))
    assert (out[valid] - ref[valid]).abs().max().item() <= 1e-4
    torch.testing.assert_close(cache["audio_tower.blocks.1.hook_resid_post"], _hf_audio_layer_outputs(hf, inputs, 1), rtol=0, atol=1e-5)
    assert not model.between_block_terms_fired


def test_full_resid_decomposition_includes_deepstack_and_sums_to_the_residual(q3):
    """TransformerLens's `get_full_resid_decomposition` knows only heads, MLPs, embed and bias;
    with DeepStack its rows must also carry the `hook_deepstack` terms to sum to the stream."""
    hf, model = q3
    batch = model.prepare(**Q.make_inputs("image_video", 2))
    _, cache = model.run_with_cache(batch)
    L = model.cfg.n_layers
    for layer in range(L + 1):
        target = cache[f"blocks.{layer}.hook_resid_pre"] if layer < L else cache[f"blocks.{L - 1}.hook_resid_post"]
        stack, labels = cache.get_full_resid_decomposition(layer, expand_neurons=False, return_labels=True)
        assert [x for x in labels if "deepstack" in x] == [f"{l}_deepstack" for l in range(min(layer, 2))]
        assert len(labels) == stack.shape[0]
        torch.testing.assert_close(stack.sum(0), target, rtol=0, atol=1e-5)
        if layer < L:
            mid = cache.get_full_resid_decomposition(layer, mlp_input=True, expand_neurons=False)
            torch.testing.assert_close(mid.sum(0), cache[f"blocks.{layer}.hook_resid_mid"], rtol=0, atol=1e-5)
    # apply_ln at the unembed: rows sum to the final norm's normalized input (RMSNorm: x / scale)
    normed = cache.get_full_resid_decomposition(expand_neurons=False, apply_ln=True, pos_slice=-1)
    final = cache[f"blocks.{L - 1}.hook_resid_post"][:, -1]
    torch.testing.assert_close(normed.sum(0), final / cache["ln_final.hook_scale"][:, -1], rtol=0, atol=1e-5)
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    proj = cache.get_full_resid_decomposition(expand_neurons=False, apply_ln=True, pos_slice=-1, project_output_onto=v)
    torch.testing.assert_close(proj.sum(0), (final / cache["ln_final.hook_scale"][:, -1]) @ v, rtol=0, atol=1e-4)


def test_cache_remembers_which_deepstack_terms_its_own_run_added(q3):
    """A cache without the DeepStack hooks must refuse to decompose even after a later text-only
    forward pass has reset the model's state."""
    hf, model = q3
    _, cache = model.run_with_cache(model.prepare(**Q.make_inputs("video", 1)), names_filter=lambda n: "deepstack" not in n)
    assert cache.between_block_fired == {"blocks.0.hook_deepstack", "blocks.1.hook_deepstack"}
    model(model.prepare(**Q.make_inputs("text", 1)))
    assert not model.between_block_terms_fired
    with pytest.raises(KeyError, match="blocks.0.hook_deepstack"):
        cache.decompose_resid()
    with pytest.raises(KeyError, match="blocks.0.hook_deepstack"):
        cache.get_full_resid_decomposition(expand_neurons=False)
    _, text_cache = model.run_with_cache(model.prepare(**Q.make_inputs("text", 1)))
    stack = text_cache.get_full_resid_decomposition(expand_neurons=False)
    torch.testing.assert_close(stack.sum(0), text_cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"], rtol=0, atol=1e-5)


# Qwen/Qwen3-Omni-30B-A3B-Instruct's preprocessor_config.json (image / audio keys), which the
# processor's image and video processors are loaded from.
_RELEASED_PREPROCESSOR = {
    "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128, "hop_length": 160, "n_fft": 400,
    "n_samples": 4800000, "sampling_rate": 16000, "image_processor_type": "Qwen2VLImageProcessor",
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "patch_size": 16, "temporal_patch_size": 2,
    "merge_size": 2, "min_pixels": 3136, "max_pixels": 12845056, "processor_class": "Qwen3OmniMoeProcessor",
}


def test_prepare_media_normalises_as_hf_qwen3_omni_image_processor(q3, tmp_path):
    """Images and video frames -> the patches of HF's `Qwen2VLImageProcessorPil` loaded from the
    released preprocessor_config.json (mean = std = 0.5, patch 16); video frames resized within
    `Qwen3OmniMoeProcessor.videos_kwargs["size"]` (the processor's own class attribute)."""
    from transformers import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import Qwen3OmniMoeProcessor

    _, model = q3
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(_RELEASED_PREPROCESSOR))
    hf_image = Qwen2VLImageProcessorPil.from_pretrained(str(tmp_path))
    assert list(hf_image.image_mean) == [0.5] * 3  # the family's processor, not CLIP's defaults
    t = model.cfg.token_ids
    vs, ve = t["vision_start_token_id"], t["vision_end_token_id"]
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    batch = model.prepare_media([[5, vs, t["image_token_id"], ve]], images=img)
    ref = hf_image(images=[img], return_tensors="pt")
    assert batch.raw["image_grid_thw"].tolist() == ref["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert (batch.raw["pixel_values"] - ref["pixel_values"]).abs().max().item() <= 1e-5
    # video: frames A A B B at 352x384 (a multiple of 32 within the video budget: no resize), so
    # each temporal patch is the image processor's patches of A, then of B
    a, b = rng.integers(0, 256, (2, 352, 384, 3), dtype=np.uint8)
    size = Qwen3OmniMoeProcessor.videos_kwargs["size"]
    hf_video_frame = Qwen2VLImageProcessorPil.from_pretrained(str(tmp_path), min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    assert (hf_video_frame.size["shortest_edge"], hf_video_frame.size["longest_edge"]) == (128 * 32 * 32, 768 * 32 * 32)
    batch = model.prepare_media([[5, vs, t["video_token_id"], ve]], video=np.stack([a, a, b, b]), fps=2.0)
    ref = hf_video_frame(images=[a, b], return_tensors="pt")
    assert batch.raw["video_grid_thw"].tolist() == [[2, 22, 24]]
    assert (batch.raw["pixel_values_videos"] - ref["pixel_values"]).abs().max().item() <= 1e-5
    # a 320x320 frame is below the video budget's 131072 px: both resize it to the same grid
    small = rng.integers(0, 256, (4, 320, 320, 3), dtype=np.uint8)
    batch = model.prepare_media([[5, vs, t["video_token_id"], ve]], video=small, fps=2.0)
    grid = hf_video_frame(images=[small[0]], return_tensors="pt")["image_grid_thw"][0].tolist()
    assert batch.raw["video_grid_thw"].tolist() == [[2] + grid[1:]] == [[2, 24, 24]]


def _changed_tokens(model, batch, hook_name, p, kind, base):
    def zero(x, hook):
        x = x.clone()
        x[p] = 0
        return x

    with model.hooks(fwd_hooks=[(hook_name, zero)]):
        f = model.encode_media(batch.raw)[kind]
    return ((f - base).abs().sum(-1) > 0).nonzero()[:, 0].tolist()


def test_qwen3_encoder_position_maps_name_the_token_a_position_feeds(q3):
    """AuT: packed position p of the last layer feeds audio token p (counted across the batch;
    no pooling after the layers). ViT (no window permutation): position p feeds token
    p // merge**2, as `vision_position_to_token` says. Checked by zeroing one position."""
    from avlens.families.encoders import vision_position_to_token

    hf, model = q3
    inputs = Q.make_inputs("audio_video", 2)
    batch = model.prepare(**inputs)
    base = model.encode_media(batch.raw)
    n_tok = sum(Q.audio_tokens(int(n)) for n in inputs["feature_attention_mask"].sum(1))
    assert base["audio"].shape[0] == n_tok
    for p in (0, 5, n_tok // 2, n_tok - 1):
        assert _changed_tokens(model, batch, "audio_tower.blocks.1.hook_resid_post", p, "audio", base["audio"]) == [p]
    m = vision_position_to_token(hf.model.visual, inputs["video_grid_thw"])
    assert torch.equal(m["patch"], torch.arange(len(m["patch"])))  # Qwen3's ViT: no windows
    for p in (0, 3, 4, 29, len(m["patch"]) - 1):
        got = _changed_tokens(model, batch, "visual.blocks.2.hook_resid_post", p, "video", base["video"])
        assert got == [int(m["token"][p])] == [p // 4]
