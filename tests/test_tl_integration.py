"""HookedAVTransformer as a TransformerLens model: run_with_cache / ActivationCache, direct logit
attribution through TL's own cache functions, TL's activation patching on token tensors and on
multimodal AVBatches, string tokens with group labels, eval mode.

References: the HF thinker, TransformerLens's functions, brute-force loops written here.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformer_lens
from transformer_lens import patching

import avlens
from hf_reference import make_hf_thinker, make_inputs, make_inputs_and_meta, run_hf, unbatch

VARIANT = "gqa2_hd16"
ATOL = 1e-4


@pytest.fixture(scope="module")
def mixed(hf, model):
    inputs, meta = make_inputs_and_meta(hf.config, "mixed", batch=2, seed=0)
    return inputs, meta, model.prepare(**inputs)


@pytest.fixture(scope="module")
def short_audio(hf, model):
    """One unpadded sample with a short audio (22 audio tokens)."""
    inputs, meta = make_inputs_and_meta(hf.config, "audio", batch=2, seed=0)
    sub, _ = unbatch(inputs, meta)[1]
    return sub, model.prepare(**sub)


def _group_view_like(name: str) -> bool:
    tail = name.rsplit(".", 1)[-1]
    return tail in avlens.layout.STANDARD_GROUPS


# --------------------------------------------------------------------------------- run_with_cache


def test_run_with_cache_returns_a_transformer_lens_activation_cache_with_hf_logits(hf, model, mixed):
    inputs, _, batch = mixed
    logits, cache = model.run_with_cache(batch)
    assert isinstance(cache, transformer_lens.ActivationCache)
    m = inputs["attention_mask"].bool()
    assert float((logits.detach() - run_hf(hf, inputs)).abs()[m].max()) < ATOL
    # TL's (name, layer) indexing resolves against the cache
    torch.testing.assert_close(cache["resid_pre", 1], cache["blocks.1.hook_resid_pre"])
    torch.testing.assert_close(cache["pattern", 0], cache["blocks.0.attn.hook_pattern"])


def test_default_cache_leaves_group_views_out(model, mixed):
    _, _, batch = mixed
    _, cache = model.run_with_cache(batch)
    keys = list(cache.keys())
    assert "blocks.0.hook_resid_pre" in keys
    assert not [k for k in keys if _group_view_like(k)]
    # a callable filter sees base hook names only: even "everything" caches no group view
    _, cache = model.run_with_cache(batch, names_filter=lambda n: True)
    assert not [k for k in cache.keys() if _group_view_like(k)]


def test_names_filter_string_list_and_callable(model, mixed):
    inputs, _, batch = mixed
    _, full = model.run_with_cache(batch)

    _, c = model.run_with_cache(batch, names_filter="blocks.1.hook_resid_mid")
    assert list(c.keys()) == ["blocks.1.hook_resid_mid"]
    torch.testing.assert_close(c["blocks.1.hook_resid_mid"], full["blocks.1.hook_resid_mid"])

    names = ["blocks.0.hook_attn_out", "blocks.1.attn.hook_z", "ln_final.hook_scale"]
    _, c = model.run_with_cache(batch, names_filter=names)
    assert sorted(c.keys()) == sorted(names)

    _, c = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_mlp_out"))
    assert sorted(c.keys()) == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]


def test_group_views_are_cached_when_named_in_the_list(model, hf):
    # audio_in_video batch 1: group counts trivially equal
    inputs = make_inputs(hf.config, "audio_in_video", batch=1, seed=0)
    batch = model.prepare(**inputs)
    names = ["blocks.0.hook_resid_post", "blocks.0.hook_resid_post.audio", "blocks.1.attn.hook_q.video"]
    _, c = model.run_with_cache(batch, names_filter=names)
    assert sorted(c.keys()) == sorted(names)
    _, full = model.run_with_cache(batch)
    ids = inputs["input_ids"][0]
    a = ids == hf.config.audio_token_id
    v = ids == hf.config.video_token_id
    torch.testing.assert_close(c["blocks.0.hook_resid_post.audio"][0], full["blocks.0.hook_resid_post"][0][a])
    torch.testing.assert_close(c["blocks.1.attn.hook_q.video"][0], full["blocks.1.attn.hook_q"][0][v])
    assert c["blocks.1.attn.hook_q.video"].shape == (1, int(v.sum()), model.cfg.n_heads, model.cfg.d_head)


def test_run_with_cache_stop_at_layer_caches_only_earlier_activations(model, mixed):
    _, _, batch = mixed
    _, full = model.run_with_cache(batch)
    out, c = model.run_with_cache(batch, stop_at_layer=1)
    torch.testing.assert_close(out, full["blocks.1.hook_resid_pre"])
    assert "blocks.0.hook_resid_post" in c.keys()
    assert not [k for k in c.keys() if k.startswith("blocks.1.") or k.startswith("ln_final")]


# --------------------------------------------------------------------------------- decomposition / DLA


@torch.no_grad()
def _check_decomposition_and_logit_attrs(model, batch):
    logits, cache = model.run_with_cache(batch)
    L = model.cfg.n_layers
    comps, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed"] + [f"{l}_{c}" for l in range(L) for c in ("attn_out", "mlp_out")]
    assert comps.shape[0] == len(labels)
    torch.testing.assert_close(comps.sum(0), cache[f"blocks.{L - 1}.hook_resid_post"], atol=1e-5, rtol=0)

    g = torch.Generator().manual_seed(0)
    answer = torch.randint(0, model.cfg.d_vocab, batch.shape, generator=g)
    attrs = cache.logit_attrs(cache.decompose_resid(), tokens=answer)
    assert attrs.shape == (len(labels),) + tuple(batch.shape)
    expected = logits.gather(-1, answer[..., None])[..., 0]
    assert float((attrs.sum(0) - expected).abs().max()) < 1e-4
    # per-head results (TL computes them from z and W_O) sum to each layer's attention output
    heads = cache.stack_head_results(layer=-1)
    H = model.cfg.n_heads
    for l in range(L):
        torch.testing.assert_close(heads[l * H:(l + 1) * H].sum(0) + model.blocks[l].attn.b_O,
                                   cache[f"blocks.{l}.hook_attn_out"], atol=1e-5, rtol=1e-5)
    return logits


def test_decompose_resid_sums_to_final_resid_and_logit_attrs_sum_to_logits(model, mixed):
    _, _, batch = mixed
    _check_decomposition_and_logit_attrs(model, batch)


def test_fold_ln_keeps_logits_and_logit_attribution(hf):
    # private HF model: fold_ln must not touch it, but if it does no other test is affected
    hf_private = make_hf_thinker(VARIANT, seed=0)
    model = avlens.HookedAVTransformer.from_hf(hf_private)
    inputs = make_inputs(hf_private.config, "mixed", batch=2, seed=0)
    batch = model.prepare(**inputs)
    ref = run_hf(hf_private, inputs)
    with torch.no_grad():
        before = model(batch)
    model.fold_ln()
    with torch.no_grad():
        after = model(batch)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    logits = _check_decomposition_and_logit_attrs(model, batch)
    m = inputs["attention_mask"].bool()
    assert float((logits.detach() - ref).abs()[m].max()) < ATOL


def test_fold_ln_does_not_modify_the_shared_hf_weights():
    hf_private = make_hf_thinker(VARIANT, seed=0)
    inputs = make_inputs(hf_private.config, "audio", batch=1, seed=0)
    state_before = {k: v.detach().clone() for k, v in hf_private.state_dict().items()}
    ref = run_hf(hf_private, inputs)
    model = avlens.HookedAVTransformer.from_hf(hf_private)
    other = avlens.HookedAVTransformer.from_hf(hf_private)  # a second wrapper of the same HF model
    batch = model.prepare(**inputs)
    model.fold_ln()
    changed = [k for k, v in hf_private.state_dict().items() if not torch.equal(v, state_before[k])]
    assert not changed, f"fold_ln changed the HF model's weights: {changed[:6]}"
    assert torch.equal(run_hf(hf_private, inputs), ref)
    with torch.no_grad():
        assert float((other(batch) - ref).abs().max()) < ATOL


# --------------------------------------------------------------------------------- patching


def _brute_force_resid_pre_patch(model, corrupted, clean_cache, metric):
    L, P = model.cfg.n_layers, corrupted.shape[-1]
    out = torch.zeros(L, P)
    for l in range(L):
        clean = clean_cache[f"blocks.{l}.hook_resid_pre"]
        for p in range(P):
            def hook(x, hook, p=p, clean=clean):
                x = x.clone()
                x[:, p] = clean[:, p]
                return x
            out[l, p] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{l}.hook_resid_pre", hook)]))
    return out


def test_tl_resid_pre_patching_on_token_tensors_equals_brute_force(model):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 170, (2, 9), generator=g)
    corrupted = clean.clone()
    corrupted[:, 3] = (corrupted[:, 3] + 7) % 170
    t1, t2 = 11, 42
    metric = lambda logits: (logits[:, -1, t1] - logits[:, -1, t2]).mean()  # noqa: E731
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean)
        corrupted_metric = float(metric(model(corrupted)))
    result = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    assert result.shape == (model.cfg.n_layers, 9)
    brute = _brute_force_resid_pre_patch(model, corrupted, clean_cache, metric)
    torch.testing.assert_close(result.cpu().float(), brute, atol=1e-5, rtol=0)
    # layer 0: only the corrupted position matters, and patching it restores the clean run
    assert abs(float(result[0, 3]) - float(metric(clean_logits))) < 1e-4
    others = [p for p in range(9) if p != 3]
    assert float((result[0, others] - corrupted_metric).abs().max()) < 1e-4


def test_tl_resid_pre_patching_on_multimodal_batches_equals_brute_force(hf, model, short_audio):
    inputs, clean = short_audio
    corrupted = dataclasses.replace(clean, features={**clean.features, "audio": torch.zeros_like(clean.features["audio"])})
    assert corrupted.layout == clean.layout
    t1, t2 = 5, 17
    metric = lambda logits: (logits[:, -1, t1] - logits[:, -1, t2]).mean()  # noqa: E731
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean)
        corrupted_metric = float(metric(model(corrupted)))
    assert abs(float(metric(clean_logits)) - corrupted_metric) > 1e-3  # the corruption matters
    result = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    P = clean.shape[1]
    assert result.shape == (model.cfg.n_layers, P)
    brute = _brute_force_resid_pre_patch(model, corrupted, clean_cache, metric)
    torch.testing.assert_close(result.cpu().float(), brute, atol=1e-5, rtol=0)
    # layer 0: patching a non-audio position changes nothing (its embedding is not corrupted)
    audio = (inputs["input_ids"][0] == hf.config.audio_token_id)
    assert float((result[0, ~audio] - corrupted_metric).abs().max()) < 1e-4
    assert float((result[0, audio] - corrupted_metric).abs().max()) > 1e-4


# --------------------------------------------------------------------------------- strings, tokens, mode


def test_to_str_tokens_labels_every_position_with_its_group(model, mixed):
    _, meta, batch = mixed
    for i, s in enumerate(meta["samples"]):
        pairs = model.to_str_tokens(batch, sample=i, with_groups=True)
        expected = ["special" if t in ("audio_start", "audio_end", "vision_start", "vision_end") else t for t in s["token_types"]]
        assert [g for _, g in pairs] == expected
        for (tok, g) in pairs:
            if g in ("audio", "video", "image"):
                assert tok.startswith(f"<{g}"), tok
        plain = model.to_str_tokens(batch, sample=i)
        assert plain == [t for t, _ in pairs]


def test_text_only_input_may_be_a_plain_long_tensor(hf, model):
    inputs = make_inputs(hf.config, "text", batch=2, seed=0)
    tokens = inputs["input_ids"][1:]  # the unpadded sample
    assert bool(inputs["attention_mask"][1].all())
    with torch.no_grad():
        logits = model(tokens)
    ref = run_hf(hf, dict(input_ids=tokens, attention_mask=torch.ones_like(tokens)))
    assert float((logits - ref).abs().max()) < ATOL
    pairs = model.to_str_tokens(tokens, with_groups=True)
    assert len(pairs) == tokens.shape[1] and {g for _, g in pairs} == {"text"}


def test_to_tokens_without_tokenizer_raises_a_clear_error(model):
    assert model.tokenizer is None
    with pytest.raises(Exception, match="tokenizer"):
        model.to_tokens("hello")


def test_model_is_in_eval_mode_after_from_hf():
    hf_private = make_hf_thinker(VARIANT, seed=0).train()  # even from a model in training mode
    m = avlens.HookedAVTransformer.from_hf(hf_private)
    assert m.training is False
    assert not [n for n, mod in m.named_modules() if mod.training]


def test_a_lazily_created_group_view_keeps_the_model_in_eval_mode_for_tl_patching(hf, short_audio):
    _, batch = short_audio
    model = avlens.HookedAVTransformer.from_hf(hf)  # private wrapper: views are added to it
    batch = batch.with_group("question", [1, 2])  # a user-named span: its views are made on first use
    seen = []
    model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_pre.question", lambda x, hook: seen.append(x.shape))])
    assert seen == [(1, 2, model.cfg.d_model)]
    training = [n for n, mod in model.named_modules() if mod.training]
    assert not training, f"modules left in training mode: {training}"
    _, cache = model.run_with_cache(batch)
    metric = lambda logits: logits[:, -1, 3].mean()  # noqa: E731
    out = patching.get_act_patch_resid_pre(model, batch, cache, metric)  # TL refuses training mode
    assert out.shape == (model.cfg.n_layers, batch.shape[1])
