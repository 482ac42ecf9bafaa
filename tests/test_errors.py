"""Bad inputs get a clear exception that names the problem and the fix, and no hook survives an
exception. Clean runs are compared against the HF thinker."""

from __future__ import annotations

import os

import pytest
import torch

import avlens
from hf_reference import make_inputs, make_thinker_config, run_hf

VARIANT = "gqa2_hd16"
ATOL = 1e-4


@pytest.fixture(scope="module")
def audio(hf, model):
    inputs = make_inputs(hf.config, "audio", batch=1, seed=0)
    return inputs, model.prepare(**inputs)


def _registered(model):
    """Names of hook points (group views included) that still hold a hook."""
    points = dict(model.hook_dict)
    points.update(getattr(model, "group_view_dict", {}))
    out = [n for n, hp in points.items() if hp.fwd_hooks or hp.bwd_hooks]
    out += [repr(hp) for hp in model.hook_points() if hp.fwd_hooks or hp.bwd_hooks]
    return out


# --------------------------------------------------------------------------------- inputs


def test_placeholder_count_differing_from_feature_count_names_both_counts(hf, model, audio):
    inputs, _ = audio
    ids = inputs["input_ids"]
    audio_pos = (ids[0] == hf.config.audio_token_id).nonzero().flatten()
    n_audio = len(audio_pos)
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[audio_pos[3]] = False
    bad = dict(inputs, input_ids=ids[:, keep], attention_mask=inputs["attention_mask"][:, keep])
    with pytest.raises(ValueError) as e:
        model.prepare(**bad)
    msg = str(e.value)
    assert str(n_audio - 1) in msg and str(n_audio) in msg, msg
    assert "placeholder" in msg and "audio" in msg
    assert "processor" in msg  # says how to fix it


def test_missing_video_second_per_grid_is_named(hf, model):
    inputs = make_inputs(hf.config, "video", batch=1, seed=0)
    del inputs["video_second_per_grid"]
    with pytest.raises(ValueError, match="video_second_per_grid"):
        model.prepare(**inputs)


def test_missing_feature_attention_mask_is_named(model, audio):
    inputs, _ = audio
    bad = {k: v for k, v in inputs.items() if k != "feature_attention_mask"}
    with pytest.raises(ValueError, match="feature_attention_mask"):
        model.prepare(**bad)


def test_mrope_section_not_summing_to_half_head_dim_in_avconfig():
    with pytest.raises(ValueError) as e:
        avlens.AVConfig(d_model=64, d_head=16, n_heads=4, n_layers=1, d_vocab=10, rope_kind="mrope", mrope_section=[2, 3, 4])
    msg = str(e.value)
    assert "mrope_section" in msg and "8" in msg and "9" in msg, msg


def test_mrope_section_not_summing_to_half_head_dim_in_hf_config():
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    cfg = make_thinker_config(VARIANT)
    cfg.text_config.rope_parameters["mrope_section"] = [4, 4, 4]  # head_dim 16 needs sum 8
    bad_hf = Qwen2_5OmniThinkerForConditionalGeneration._from_config(cfg, attn_implementation="eager")
    with pytest.raises(ValueError) as e:
        avlens.HookedAVTransformer.from_hf(bad_hf)
    msg = str(e.value)
    assert "mrope_section" in msg and "[4, 4, 4]" in msg and "8" in msg, msg


# --------------------------------------------------------------------------------- hook names


def test_unknown_hook_name_suggests_the_closest_valid_name(model, audio):
    _, batch = audio
    with pytest.raises(KeyError) as e:
        model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_pree", lambda x, hook: x)])
    assert "'blocks.0.hook_resid_pre'" in str(e.value)
    assert not _registered(model)


def test_unknown_group_in_a_group_view_suggests_the_closest_group(hf, audio):
    _, batch = audio
    # a private wrapper: resolving the misspelt view creates a hook point for it
    model = avlens.HookedAVTransformer.from_hf(hf)
    with pytest.raises(KeyError) as e:
        model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_pre.audoi", lambda x, hook: x)])
    msg = str(e.value)
    assert "audoi" in msg and "'audio'" in msg, msg
    assert not _registered(model)


def test_group_view_on_an_activation_without_positions_is_refused(model, audio):
    _, batch = audio
    with pytest.raises(KeyError, match="group views"):
        model.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_pattern.audio", lambda x, hook: x)])
    assert not _registered(model)


def test_group_view_with_different_counts_across_the_batch_names_the_counts(hf, model):
    inputs = make_inputs(hf.config, "audio", batch=2, seed=0)
    batch = model.prepare(**inputs)
    counts = [int(c) for c in (inputs["input_ids"] == hf.config.audio_token_id).sum(-1)]
    assert counts[0] != counts[1]
    with pytest.raises(ValueError) as e:
        model.run_with_hooks(batch, fwd_hooks=[("blocks.1.hook_resid_mid.audio", lambda x, hook: x)])
    msg = str(e.value)
    assert str(counts) in msg and "audio" in msg, msg
    assert not _registered(model)


@pytest.mark.parametrize("name", ["blocks.0.hook_resid_pre.sink", "blocks.1.hook_mlp_out.video", "hook_embed.image"])
def test_hooking_an_empty_group_is_an_error_not_a_silent_no_op(model, audio, name):
    _, batch = audio
    group = name.rsplit(".", 1)[-1]
    with pytest.raises(ValueError) as e:
        model.run_with_hooks(batch, fwd_hooks=[(name, lambda x, hook: torch.zeros_like(x))])
    msg = str(e.value)
    assert repr(group) in msg and "empty" in msg, msg
    assert not _registered(model)


def test_group_view_returning_the_wrong_shape_names_both_shapes(model, audio):
    _, batch = audio
    n_audio = int(batch.layout.counts("audio")[0])
    with pytest.raises(ValueError) as e:
        model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_pre.audio", lambda x, hook: x[:, :-1])])
    msg = str(e.value)
    assert f"(1, {n_audio - 1}, {model.cfg.d_model})" in msg and f"(1, {n_audio}, {model.cfg.d_model})" in msg, msg
    assert not _registered(model)


# --------------------------------------------------------------------------------- cleanup after exceptions


class Boom(RuntimeError):
    pass


def _boom(x, hook):
    raise Boom(hook.name)


FAILING_HOOKS = {
    "plain": [("blocks.1.hook_resid_pre", _boom)],
    "group_view": [("blocks.0.hook_resid_mid", lambda x, hook: x), ("blocks.1.hook_resid_post.audio", _boom)],
    "pattern": [("blocks.0.attn.hook_pattern", lambda x, hook: x), ("blocks.1.attn.hook_pattern", _boom)],
    "late_group_view": [("blocks.0.hook_resid_pre.audio", lambda x, hook: x), ("ln_final.hook_scale", _boom)],
}


@pytest.mark.parametrize("case", sorted(FAILING_HOOKS))
def test_no_hook_survives_an_exception_in_run_with_hooks(hf, model, audio, case):
    inputs, batch = audio
    bwd = [("blocks.0.hook_resid_post.audio", lambda g, hook: None), ("blocks.1.hook_attn_out", lambda g, hook: None)]
    with pytest.raises(Boom):
        model.run_with_hooks(batch, fwd_hooks=FAILING_HOOKS[case], bwd_hooks=bwd)
    assert not _registered(model)
    with torch.no_grad():
        logits = model(batch)
    assert float((logits - run_hf(hf, inputs)).abs().max()) < ATOL


@pytest.mark.parametrize("case", sorted(FAILING_HOOKS))
def test_no_hook_survives_an_exception_inside_the_hooks_context(hf, model, audio, case):
    inputs, batch = audio
    with pytest.raises(Boom):
        with model.hooks(fwd_hooks=FAILING_HOOKS[case], bwd_hooks=[("blocks.1.hook_resid_mid.audio", lambda g, hook: None)]):
            model(batch)
    assert not _registered(model)
    with torch.no_grad():
        logits = model(batch)
    assert float((logits - run_hf(hf, inputs)).abs().max()) < ATOL


def test_no_hook_survives_an_exception_raised_by_user_code_in_the_hooks_context(hf, model, audio):
    inputs, batch = audio
    with pytest.raises(Boom):
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre.audio", lambda x, hook: x * 0)],
                         bwd_hooks=[("blocks.1.hook_resid_mid", lambda g, hook: None)]):
            model(batch)
            raise Boom("user code")
    assert not _registered(model)
    with torch.no_grad():
        logits = model(batch)
    assert float((logits - run_hf(hf, inputs)).abs().max()) < ATOL


def test_no_hook_survives_a_layout_error_raised_at_forward_time(hf, model):
    inputs = make_inputs(hf.config, "audio", batch=2, seed=0)
    batch = model.prepare(**inputs)
    with pytest.raises(ValueError):
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x), ("blocks.0.hook_resid_pre.audio", lambda x, hook: x)]):
            model(batch)
    assert not _registered(model)
    with torch.no_grad():
        logits = model(batch)
    m = inputs["attention_mask"].bool()
    assert float((logits - run_hf(hf, inputs)).abs()[m].max()) < ATOL


# --------------------------------------------------------------------------------- checkpoints


class _Marker:
    """Unpickling this creates a file: the proof that a pickle ran code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_only_checkpoint_needs_an_explicit_opt_in(hf, tmp_path):
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError) as e:
        avlens.HookedAVTransformer.from_pretrained(str(tmp_path))
    msg = str(e.value)
    assert "pickle" in msg and "allow_pickle" in msg and "safetensors" in msg, msg

    loaded = avlens.HookedAVTransformer.from_pretrained(str(tmp_path), allow_pickle=True)
    inputs = make_inputs(hf.config, "audio", batch=1, seed=0)
    with torch.no_grad():
        assert float((loaded(loaded.prepare(**inputs)) - run_hf(hf, inputs)).abs().max()) < ATOL


def test_opted_in_pickle_is_loaded_with_weights_only(hf, tmp_path):
    hf.config.save_pretrained(tmp_path)
    marker = tmp_path / "code_ran"
    state = dict(hf.state_dict())
    state["evil"] = _Marker(str(marker))
    torch.save(state, tmp_path / "pytorch_model.bin")  # unpickling it calls open(marker, "w")
    with pytest.raises(Exception):
        avlens.HookedAVTransformer.from_pretrained(str(tmp_path), allow_pickle=True)
    assert not os.path.exists(marker)
