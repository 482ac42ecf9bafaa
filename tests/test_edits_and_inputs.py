"""Edits that must take effect, inputs that must not be changed, and inputs that must be refused.

References: Hugging Face's thinker with the same edit made through a PyTorch hook, and the
unedited batch."""

import dataclasses

import pytest
import torch

from hf_reference import TINY_VARIANTS, make_inputs, run_hf

VARIANT = TINY_VARIANTS[0]


@pytest.fixture(scope="module")
def av(hf_thinker, hooked_model):
    hf, model = hf_thinker(VARIANT), hooked_model(VARIANT)
    inputs = make_inputs(hf.config, "audio_video", batch=1, seed=5)
    return hf, model, inputs, model.prepare(**inputs)


def _hf_with_layer_input_edit(hf, inputs, layer, mask, value=0.0):
    """HF logits with decoder layer `layer`'s input set to `value` where `mask` [b, p]."""

    def pre(module, args, kwargs):
        x = args[0].clone()
        x[mask] = value
        return (x,) + args[1:], kwargs

    h = hf.model.language_model.layers[layer].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        return run_hf(hf, inputs)
    finally:
        h.remove()


@pytest.mark.parametrize("style", ["return_none", "return_same", "zero_"])
def test_in_place_edit_in_a_group_view_hook_takes_effect_like_hf(av, style):
    hf, model, inputs, batch = av

    def hook(x, hook):
        if style == "zero_":
            return x.zero_()
        x[:] = 0.0
        return None if style == "return_none" else x

    got = model.run_with_hooks(batch, fwd_hooks=[("blocks.1.hook_resid_pre.audio", hook)])
    ref = _hf_with_layer_input_edit(hf, inputs, 1, batch.layout.mask("audio"))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    assert (got - model(batch)).abs().max() > 1e-2


def test_in_place_hooks_do_not_change_the_callers_batch_or_residual(av):
    _, model, _, batch = av
    clean = model(batch)
    feats = batch.features["audio"].clone()
    model.run_with_hooks(batch, fwd_hooks=[("hook_audio_embed", lambda x, hook: x.mul_(0))])
    torch.testing.assert_close(batch.features["audio"], feats, rtol=0, atol=0)
    torch.testing.assert_close(model(batch), clean, rtol=0, atol=0)
    _, cache = model.run_with_cache(batch, names_filter="blocks.1.hook_resid_pre")
    resid = cache["blocks.1.hook_resid_pre"]
    kept = resid.clone()
    model.run_with_hooks(resid, start_at_layer=1, batch=batch, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: x.zero_())])
    torch.testing.assert_close(resid, kept, rtol=0, atol=0)


def test_encoder_hooks_take_effect_in_the_forward_like_hf(av):
    hf, model, inputs, batch = av

    def zero_out(module, args, output):
        output.last_hidden_state = torch.zeros_like(output.last_hidden_state)
        return output

    h = hf.model.audio_tower.register_forward_hook(zero_out)
    try:
        ref = run_hf(hf, inputs)
    finally:
        h.remove()
    got = model.run_with_hooks(batch, fwd_hooks=[("audio_tower.hook_out", lambda x, hook: torch.zeros_like(x))])
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    # the default cache leaves encoder hooks out; naming one caches it
    _, cache = model.run_with_cache(batch)
    assert not any(k.startswith(("audio_tower.", "visual.")) for k in cache.keys())
    _, cache = model.run_with_cache(batch, names_filter=["audio_tower.hook_out"])
    torch.testing.assert_close(cache["audio_tower.hook_out"], batch.features["audio"], atol=1e-6, rtol=0)


def test_generate_refuses_right_padding(hf_thinker, hooked_model):
    hf, model = hf_thinker(VARIANT), hooked_model(VARIANT)
    inputs = make_inputs(hf.config, "text", batch=2, seed=1, padding_side="right")
    with pytest.raises(ValueError, match="left padding"):
        model.generate(model.prepare(**inputs), max_new_tokens=2)


def test_start_at_layer_without_batch_is_refused_for_multimodal_positions(av):
    _, model, _, batch = av
    _, cache = model.run_with_cache(batch, names_filter="blocks.1.hook_resid_pre")
    with pytest.raises(ValueError, match="batch="):
        model(cache["blocks.1.hook_resid_pre"], start_at_layer=1)


def test_disabled_opt_in_hooks_are_refused(av):
    _, model, _, batch = av
    for name in ("blocks.0.attn.hook_result", "blocks.0.hook_q_input"):
        with pytest.raises(ValueError, match="use_"):
            model.run_with_hooks(batch, fwd_hooks=[(name, lambda x, hook: x)])
        with pytest.raises(ValueError, match="use_"):
            model.run_with_cache(batch, names_filter=[name])
    assert all(not hp.fwd_hooks for hp in model.hook_points())


@pytest.mark.parametrize("name", ["blocks.0.attn.hook_pattern", "blocks.0.hook_resid_pre"])
def test_a_hook_returning_the_wrong_shape_gets_a_clear_error(av, name):
    _, model, _, batch = av
    with pytest.raises(ValueError, match="shape"):
        model.run_with_hooks(batch, fwd_hooks=[(name, lambda x, hook: x[:, :1])])
    assert all(not hp.fwd_hooks for hp in model.hook_points())


def test_pos_slice_on_group_views_slices_positions(av):
    _, model, _, batch = av
    n_audio = int(batch.layout.counts("audio")[0])
    _, cache = model.run_with_cache(batch, names_filter=["blocks.0.attn.hook_q.audio"], pos_slice=slice(0, 3))
    q = cache["blocks.0.attn.hook_q.audio"]
    assert q.shape == (1, 3, model.cfg.n_heads, model.cfg.d_head) and n_audio > 3


def test_inconsistent_processor_outputs_get_clear_errors(hf_thinker, hooked_model):
    hf, model = hf_thinker(VARIANT), hooked_model(VARIANT)
    video = make_inputs(hf.config, "video", batch=1, seed=2)
    bad = dict(video, pixel_values_videos=video["pixel_values_videos"][:-4])
    with pytest.raises(ValueError, match="video_grid_thw"):
        model.prepare(**bad)
    spg = video["video_second_per_grid"]
    bad = dict(video, video_second_per_grid=torch.cat([spg, spg]))
    with pytest.raises(ValueError, match="one per video"):
        model.prepare(**bad)
    bad = dict(video, attention_mask=video["attention_mask"][:, :-1])
    with pytest.raises(ValueError, match="attention_mask"):
        model.prepare(**bad)
    av_sep = make_inputs(hf.config, "audio_video", batch=1, seed=2)
    with pytest.raises(ValueError, match="use_audio_in_video"):
        model.prepare(**dict(av_sep, use_audio_in_video=True))
    audio = make_inputs(hf.config, "audio", batch=1, seed=2)
    bad = dict(audio, input_features=audio["input_features"][:, :, :-1])
    with pytest.raises(ValueError, match="feature_attention_mask"):
        model.prepare(**bad)
    with pytest.raises(TypeError, match="unexpected"):
        model.prepare(**dict(audio, pixel_values_video=None))
    with pytest.raises(TypeError, match="integers"):
        model.prepare(**audio).with_group("q", torch.tensor([1.0, 2.0]))
