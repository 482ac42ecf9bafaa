"""avlens.patching.activation_patch against independent references: brute-force loops of single
`run_with_hooks` calls (tests/brute_force.py) on multimodal batches of the tiny Qwen2.5-Omni
thinker (audio-in-video, mixed media, padding), and TransformerLens 4.3's own `get_act_patch_*`
on text input. Also: the corruptions (zero_media equals re-extracting zeroed raw media), no-op
skipping and verification, bad input, hook cleanup, and the result object.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens import patching as tl_patching

import avlens
import hf_reference as R
from avlens import patching
from avlens.interventions.patching import kv_heads_expanded
from brute_force import VARIANT, answer_prob, audio_in_video_pair, column, everywhere, four_layer_model, patch_cells, registered, run_metric

TOL = 1e-5


@pytest.fixture(scope="module")
def aiv(hf, model):
    """Audio-in-video, 2 samples (left padding), audio zeroed at the raw-signal level."""
    return audio_in_video_pair(model, hf.config, "audio")


@pytest.fixture(scope="module")
def mixed(hf, model):
    """Image + audio + video per sample, 3 samples, right padding; video zeroed."""
    clean = model.prepare(**R.make_inputs(hf.config, "mixed", batch=3, seed=1, padding_side="right"))
    return clean, patching.corruptions.zero_media(model, clean, "video")


@pytest.fixture(scope="module")
def model4():
    return four_layer_model()


def site_hook(site):
    return lambda l: patching.SITE_HOOKS[site].format(l=l)


# --------------------------------------------------------------------------------- brute force


def test_resid_pre_layer_by_position_equals_brute_force_on_audio_in_video(model, aiv):
    clean, corrupted = aiv
    metric = answer_prob()
    res = patching.activation_patch(model, clean, corrupted, metric)
    L, S = model.cfg.n_layers, clean.shape[1]
    assert res.dims == ("layer", "position") and res.values.shape == (L, S)
    cells = [((l,), column(clean, p), None) for l in range(L) for p in range(S)]
    ref = patch_cells(model, corrupted, clean, metric, site_hook("resid_pre"), cells)
    torch.testing.assert_close(res.per_sample, ref.reshape(L, S, 2), atol=TOL, rtol=0)
    torch.testing.assert_close(res.base, run_metric(model, corrupted, metric), atol=TOL, rtol=0)
    torch.testing.assert_close(res.source, run_metric(model, clean, metric), atol=TOL, rtol=0)
    # the work done: every position before the first audio token is a skipped no-op
    first_audio = int(clean.layout.mask("audio").any(0).nonzero()[0])
    assert res.stats.n_skipped >= L * first_audio


@pytest.mark.parametrize("case", ["attn_out", "attn_in_by_group", "mlp_out_noising", "z_by_head_and_position", "k_kv_heads", "v_expanded", "q_by_head"])
def test_sites_and_axes_equal_brute_force_on_audio_in_video(model, aiv, case):
    clean, corrupted = aiv
    metric = answer_prob()
    L, S, H, G = model.cfg.n_layers, clean.shape[1], model.cfg.n_heads, model.cfg.n_key_value_heads
    base, source = corrupted, clean
    kw, expand = {}, False
    groups = ["audio", "video", "text", "special", "last"]
    positions = list(range(10, S, 9))
    if case == "attn_out":
        site, over = "attn_out", ("layer", "position")
        cells = [((l,), column(clean, p), None) for l in range(L) for p in range(S)]
    elif case == "attn_in_by_group":
        site, over, kw = "attn_in", ("layer", "group"), dict(groups=groups)
        cells = [((l,), clean.layout.mask(g), None) for l in range(L) for g in groups]
    elif case == "mlp_out_noising":
        site, over, kw = "mlp_out", ("layer", "position"), dict(direction="noising")
        base, source = clean, corrupted
        cells = [((l,), column(clean, p), None) for l in range(L) for p in range(S)]
    elif case == "z_by_head_and_position":
        site, over, kw = "z", ("layer", "position", "head"), dict(positions=positions)
        cells = [((l,), column(clean, p), h) for l in range(L) for p in positions for h in range(H)]
    elif case == "k_kv_heads":
        site, over = "k", ("layer", "head")
        cells = [((l,), everywhere(clean), h) for l in range(L) for h in range(G)]
    elif case == "v_expanded":
        site, over, kw, expand = "v", ("head", "layer"), dict(expand_kv=True), True
        cells = [((l,), everywhere(clean), h) for h in range(H) for l in range(L)]
    else:
        site, over, kw = "q", ("head", "position"), dict(layers=[1], positions=positions)
        cells = [((1,), column(clean, p), h) for h in range(H) for p in positions]
    res = patching.activation_patch(model, clean, corrupted, metric, site=site, over=over, **kw)
    with kv_heads_expanded(model, expand):
        ref = patch_cells(model, base, source, metric, site_hook(site), cells)
    torch.testing.assert_close(res.per_sample.reshape(-1, 2), ref, atol=TOL, rtol=0)
    assert not registered(model)
    assert model.cfg.ungroup_grouped_query_attention is False


def test_token_sets_in_layer_windows_equal_brute_force(model4, hf):
    hf4, m4 = model4
    clean = m4.prepare(**R.make_inputs(hf4.config, "audio_in_video", batch=2, seed=2))
    corrupted = patching.corruptions.zero_media(m4, clean, "video")
    metric = answer_prob()
    audio = clean.layout.mask("audio")
    first_half = audio & (audio.long().cumsum(-1) <= audio.sum(-1, keepdim=True) // 2)
    sets = {"audio": "audio", "first_half": first_half, "tail": [-4, -3, -2, -1]}
    windows = [[0, 1], [1, 2, 3], [3]]
    res = patching.activation_patch(m4, clean, corrupted, metric, site="resid_mid", over=("window", "token_set"), token_sets=sets, windows=windows)
    assert res.coords["window"] == ["0-1", "1-3", "3"] and res.coords["token_set"] == list(sets)
    masks = [audio, first_half, torch.zeros_like(audio).index_fill_(1, torch.tensor([-4, -3, -2, -1]) % clean.shape[1], True)]
    cells = [(tuple(w), m, None) for w in windows for m in masks]
    ref = patch_cells(m4, corrupted, clean, metric, site_hook("resid_mid"), cells)
    torch.testing.assert_close(res.per_sample.reshape(-1, 2), ref, atol=TOL, rtol=0)
    # without a layer axis every set is patched at all layers at once (the paper's default)
    all_layers = patching.activation_patch(m4, clean, corrupted, metric, site="attn_in", over="token_set", token_sets=sets)
    ref = patch_cells(m4, corrupted, clean, metric, site_hook("attn_in"), [(tuple(range(4)), m, None) for m in masks])
    torch.testing.assert_close(all_layers.per_sample, ref, atol=TOL, rtol=0)


def test_right_padded_mixed_media_batch_by_group_equals_brute_force(model, mixed):
    clean, corrupted = mixed
    metric = patching.LogitDiff(torch.tensor([3, 4, 5]), torch.tensor([9, 9, 2]))
    res = patching.activation_patch(model, clean, corrupted, metric, over=("layer", "group"), batch_size=2)
    groups = res.coords["group"]
    assert {"audio", "video", "image", "text", "special", "last"} <= set(groups)
    cells = [((l,), clean.layout.mask(g), None) for l in range(model.cfg.n_layers) for g in groups]
    ref = patch_cells(model, corrupted, clean, metric, site_hook("resid_pre"), cells)
    torch.testing.assert_close(res.per_sample.reshape(-1, 3), ref, atol=TOL, rtol=0)


def test_batching_and_memory_budget_do_not_change_values(model, aiv):
    clean, corrupted = aiv
    metric = answer_prob()
    one = patching.activation_patch(model, clean, corrupted, metric, site="attn_out", batch_size=1)
    tight = patching.activation_patch(model, clean, corrupted, metric, site="attn_out", memory_budget=200_000)
    big = patching.activation_patch(model, clean, corrupted, metric, site="attn_out", batch_size=64)
    assert one.stats.n_forwards > big.stats.n_forwards
    torch.testing.assert_close(one.values, big.values, atol=TOL, rtol=0)
    torch.testing.assert_close(tight.values, big.values, atol=TOL, rtol=0)


# --------------------------------------------------------------------------------- TransformerLens


@pytest.fixture(scope="module")
def text_pair():
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 170, (2, 11), generator=g)
    corrupted = clean.clone()
    corrupted[:, 4] = (corrupted[:, 4] + 7) % 170
    corrupted[1, 8] = (corrupted[1, 8] + 3) % 170
    return clean, corrupted


def tl_metric(logits):
    return (logits[:, -1, 11] - logits[:, -1, 42]).mean()


@pytest.mark.parametrize("tl_fn,site,over", [
    (tl_patching.get_act_patch_resid_pre, "resid_pre", ("layer", "position")),
    (tl_patching.get_act_patch_attn_out, "attn_out", ("layer", "position")),
    (tl_patching.get_act_patch_attn_head_out_by_pos, "z", ("layer", "position", "head")),
])
def test_text_only_patching_equals_transformer_lens(model, text_pair, tl_fn, site, over):
    clean, corrupted = text_pair
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
    ref = tl_fn(model, corrupted, clean_cache, tl_metric)
    res = patching.activation_patch(model, clean, corrupted, tl_metric, site=site, over=over)
    assert res.per_sample is None and res.values.shape == ref.shape
    torch.testing.assert_close(res.values, ref.cpu().float(), atol=TOL, rtol=0)


def test_answer_steps_score_the_max_over_greedy_steps_like_generate(model, aiv):
    clean, corrupted = aiv
    metric = patching.AnswerProb(torch.tensor([[5, 6], [17, 18]]))
    sets = {"audio": "audio", "video": "video"}
    res = patching.activation_patch(model, clean, corrupted, metric, site="attn_in", over="token_set", token_sets=sets, answer_steps=3)
    L = model.cfg.n_layers
    _, cache = model.run_with_cache(clean, names_filter=[f"blocks.{l}.ln1.hook_normalized" for l in range(L)])
    for j, g in enumerate(sets):
        mask = clean.layout.mask(g)

        def prefill_only(x, hook, mask=mask):
            if hook.ctx["start_pos"] > 0:  # decoding steps are not patched
                return x
            x = x.clone()
            x[mask] = cache[hook.name][mask]
            return x

        out = model.generate(corrupted, max_new_tokens=3, fwd_hooks=[(f"blocks.{l}.ln1.hook_normalized", prefill_only) for l in range(L)])
        torch.testing.assert_close(res.per_sample[j], metric(out.logits, corrupted), atol=TOL, rtol=0)
    torch.testing.assert_close(res.base, metric(model.generate(corrupted, max_new_tokens=3).logits, corrupted), atol=TOL, rtol=0)


# --------------------------------------------------------------------------------- no-ops


def test_no_op_cells_are_skipped_and_equal_the_unpatched_metric(model, text_pair):
    clean, corrupted = text_pair
    metric = patching.LogitDiff(11, 42)
    res = patching.activation_patch(model, clean, corrupted, metric)
    L, S = model.cfg.n_layers, clean.shape[1]
    # identical inputs before position 4: nothing there (at any layer) can change; at layer 0
    # only the corrupted embeddings differ
    expected = L * 4 + (S - 4 - 2)
    assert res.stats.n_skipped == expected
    assert torch.equal(res.per_sample[:, :4], res.base.expand(L, 4, 2))


def test_verify_raises_on_identical_clean_and_corrupted_values(model, aiv):
    clean, corrupted = aiv
    with pytest.raises(patching.NoOpError, match="no-op"):
        patching.activation_patch(model, clean, corrupted, answer_prob(), over=("layer", "position"), positions=[0, 1], verify=True)
    with pytest.raises(patching.NoOpError, match="token_set text"):
        patching.activation_patch(model, clean, corrupted, answer_prob(), over="token_set", token_sets={"text": "text"}, layers=[0], verify=True)
    # a patch that changes the output passes verification
    ok = patching.activation_patch(model, clean, corrupted, answer_prob(), over="token_set", token_sets={"audio": "audio"}, verify=True)
    assert ok.stats.n_skipped == 0
    # a patch whose values differ but cannot reach the read position: resid_post of the last
    # layer at an earlier position never reaches the last position's logits
    with pytest.raises(patching.NoOpError, match="identical to the unpatched"):
        patching.activation_patch(model, clean, corrupted, answer_prob(), site="resid_post", over="position", layers=[1],
                                  positions=[40], verify=True)
    assert not registered(model)


# --------------------------------------------------------------------------------- errors


def test_bad_inputs_get_clear_errors_and_leave_no_hooks(model, aiv, hf):
    clean, corrupted = aiv
    metric = answer_prob()
    cases = [
        (dict(site="resid_pree"), ValueError, "resid_pre"),
        (dict(over=("layer", "grop")), ValueError, "unknown axis"),
        (dict(over=("layer", "group"), groups=["audoi"]), KeyError, "did you mean 'audio'"),
        (dict(over=("layer", "head")), ValueError, "no head axis"),
        (dict(over=("layer", "group"), groups=["sink"]), ValueError, "empty"),
        (dict(direction="sideways"), ValueError, "direction"),
        (dict(over=("layer", "window")), ValueError, "choose one of"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            patching.activation_patch(model, clean, corrupted, metric, **kw)
        assert not registered(model)
    tokens = torch.arange(3, 12)[None]
    special = tokens.clone()
    special[0, 2] = model.cfg.token_ids["audio_start_token_id"]  # a special token: another group
    with pytest.raises(ValueError, match="same token groups at the same positions.*group 'text'.*position 2"):
        patching.activation_patch(model, tokens, special, metric)
    with pytest.raises(ValueError, match=r"\(1, 9\) \[batch, pos\] and the corrupted one \(1, 8\)"):
        patching.activation_patch(model, tokens, tokens[:, 1:], metric)
    with pytest.raises(ValueError, match=r"returned shape \(2, 103\)"):
        patching.activation_patch(model, clean, corrupted, lambda logits, batch: logits[..., 0], logits_at="all")

    calls = []

    def failing(logits, batch):  # fails in the middle of the sweep
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("metric failed")
        return logits[:, -1, 0]

    with pytest.raises(RuntimeError, match="metric failed"):
        patching.activation_patch(model, clean, corrupted, failing, site="v", over=("layer", "head"), expand_kv=True, batch_size=1)
    assert not registered(model)
    assert model.cfg.ungroup_grouped_query_attention is False

    # an exception inside a patched forward (a user's hook failing): the sweep's hooks go,
    # the user's own hook stays
    def bomb(x, hook):
        if x.shape[1] < clean.shape[1]:  # a partial (patched) forward
            raise RuntimeError("user hook failed")

    model.add_hook("blocks.1.hook_mlp_out", bomb)
    try:
        with pytest.raises(RuntimeError, match="user hook failed"):
            patching.activation_patch(model, clean, corrupted, metric, site="attn_in")
        assert len(registered(model)) == 1
    finally:
        model.reset_hooks()
    assert not registered(model)


# --------------------------------------------------------------------------------- results


def test_result_frame_top_and_plot_with_group_bands(model, aiv):
    clean, corrupted = aiv
    res = patching.activation_patch(model, clean, corrupted, answer_prob(), progress=True)
    assert res.values.dims == ("layer", "position") and res.values.coords["position"] == list(range(clean.shape[1]))
    assert float(res.values.sel(layer=1, position=40)) == float(res.values[1, 40])
    assert res.values.sel(layer=0).dims == ("position",) and res.per_sample.dims == ("layer", "position", "sample")
    with pytest.raises(KeyError, match="not a label"):
        res.values.sel(layer=7)
    df = res.to_frame()
    assert list(df.columns) == ["layer", "position", "value"] and len(df) == res.values.numel()
    long = res.to_frame(per_sample=True)
    assert len(long) == 2 * res.values.numel()
    top = res.top(3)
    assert list(top["value"]) == sorted(res.values.flatten().tolist(), reverse=True)[:3]
    assert len(res.top(4, by="abs")) == 4
    view = res.plot()  # an avlens heatmap view: group bands along positions
    assert view.kind == "heatmap" and len(view.payload["bands"]["cols"]) >= len(set(res.position_groups))
    assert set(view.payload["bands"]["names"]) >= {"audio", "video", "text"}
    fig = res.plot(backend="plotly")
    assert len(fig.layout.shapes) >= len(set(res.position_groups))  # group bands along positions
    assert {t.name for t in fig.data if t.type == "scatter"} >= {"audio", "video", "text"}
    assert "no-ops skipped" in repr(res)
    by_group = patching.activation_patch(model, clean, corrupted, answer_prob(), over="group")
    assert by_group.plot().kind == "bars" and by_group.plot(backend="plotly").data[0].type == "bar"
    normalized = res.normalized()
    assert normalized.shape == res.values.shape


def test_logits_at_unembeds_only_the_given_positions(model, aiv):
    clean, _ = aiv
    with torch.no_grad():
        full = model(clean)
        idx = torch.tensor([[0, 50, 102], [102, 3, 3]])
        some = model(clean, logits_at=idx)
    torch.testing.assert_close(some, full.gather(1, idx[..., None].expand(-1, -1, full.shape[-1])), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="return_type must be 'logits'"):
        model(clean, logits_at=idx, return_type="loss")


# --------------------------------------------------------------------------------- corruptions


@pytest.fixture(scope="module")
def raw_media():
    rng = np.random.default_rng(0)
    wave = (0.3 * rng.standard_normal(16000 * 3)).astype(np.float32)
    frames = rng.integers(0, 255, (4, 56, 84, 3), dtype=np.uint8)
    return wave, frames


@pytest.mark.parametrize("modality,in_video", [("audio", False), ("video", False), ("audio", True), ("video", True)])
def test_zero_media_equals_preparing_zeroed_raw_media(model, raw_media, modality, in_video):
    wave, frames = raw_media
    t = model.cfg.token_ids
    if in_video:
        ids = [3, 4, t["vision_start_token_id"], t["video_token_id"], t["vision_end_token_id"], 5, 6]
    else:
        ids = [3, t["audio_start_token_id"], t["audio_token_id"], t["audio_end_token_id"], 4,
               t["vision_start_token_id"], t["video_token_id"], t["vision_end_token_id"], 5]
    kw = dict(use_audio_in_video=in_video, min_pixels=28 * 28, max_pixels=56 * 84, fps=2.0)
    clean = model.prepare_media(torch.tensor(ids), audio=wave, video=frames, **kw)
    zeros = {"audio": np.zeros_like(wave), "video": np.zeros_like(frames)}
    ref = model.prepare_media(torch.tensor(ids), audio=zeros["audio"] if modality == "audio" else wave,
                              video=zeros["video"] if modality == "video" else frames, **kw)
    ours = patching.corruptions.zero_media(model, clean, modality)
    assert ours.layout == clean.layout and torch.equal(ours.position_ids, clean.position_ids)
    torch.testing.assert_close(ours.features[modality], ref.features[modality], atol=1e-5, rtol=0)
    other = "video" if modality == "audio" else "audio"
    assert torch.equal(ours.features[other], clean.features[other])
    assert not torch.allclose(ours.features[modality], clean.features[modality])
    with torch.no_grad():
        torch.testing.assert_close(model(ours), model(ref), atol=1e-5, rtol=0)


def test_other_corruptions_keep_positions_and_change_only_their_group(model, aiv, hf):
    clean, _ = aiv
    with torch.no_grad():
        x = model.embed_batch(clean)
    audio = clean.layout.mask("audio")
    zf = patching.corruptions.zero_features(model, clean, "video")
    assert torch.equal(zf.features["audio"], clean.features["audio"]) and not torch.equal(zf.features["video"], clean.features["video"])
    ze = patching.corruptions.zero_embeddings(model, clean, "text")
    assert torch.equal(ze.inputs_embeds[clean.layout.mask("text")], torch.zeros_like(x[clean.layout.mask("text")]))
    assert torch.equal(ze.inputs_embeds[~clean.layout.mask("text")], x[~clean.layout.mask("text")])
    ref = model.prepare(**R.make_inputs(hf.config, "audio_in_video", batch=2, seed=4))
    sigma = 3 * float(model.embed_batch(ref).detach()[ref.layout.mask("audio")].std())
    noisy = patching.corruptions.gaussian_noise(model, clean, "audio", reference=ref, n_copies=3, seed=7)
    again = patching.corruptions.gaussian_noise(model, clean, "audio", sigma=sigma, n_copies=3, seed=7)
    assert noisy.batch_size == 6 and torch.equal(noisy.inputs_embeds, again.inputs_embeds)
    tiled = x.repeat(3, 1, 1)
    noise = noisy.inputs_embeds - tiled
    assert float(noise[~audio.repeat(3, 1)].abs().max()) == 0
    assert abs(float(noise[audio.repeat(3, 1)].std()) / sigma - 1) < 0.05
    assert not torch.equal(noise[:2], noise[2:4])  # copies are noised independently
    swapped = patching.corruptions.swap_media(clean, "video", donor=ref)
    assert torch.equal(swapped.features["video"], ref.features["video"]) and swapped.layout == clean.layout
    with pytest.raises(ValueError, match="same token count"):
        patching.corruptions.swap_media(clean, "audio", permutation=[1, 0])
    with pytest.raises(ValueError, match="no raw audio inputs"):
        patching.corruptions.zero_media(model, swapped, "audio")
    with pytest.raises(ValueError, match="sigma"):
        patching.corruptions.gaussian_noise(model, clean, "audio")


# --------------------------------------------------------------------------------- other families


def test_deepstack_family_patching_equals_brute_force():
    """Qwen3-Omni adds DeepStack features between its first blocks, so a forward from a middle
    layer over later positions is not exact there: the sweep runs full (batched) forwards, and
    zero_media re-encodes the DeepStack features with the frames."""
    import qwen3_reference as Q
    from avlens.interventions.engine import partial_forward_exact

    hf3 = Q.make_thinker()
    m3 = avlens.HookedAVTransformer.from_hf(hf3, token_ids=Q.token_ids())
    assert not partial_forward_exact(m3)
    inputs = Q.make_inputs("audio_in_video", 2)
    clean = m3.prepare(**inputs)
    corrupted = patching.corruptions.zero_media(m3, clean, "video")
    # Qwen3-Omni normalises pixels with mean = std = 0.5: a black frame's patches are all -1
    ref = m3.prepare(**dict(inputs, pixel_values_videos=torch.full_like(inputs["pixel_values_videos"], -1.0)))
    torch.testing.assert_close(corrupted.features["video"], ref.features["video"], atol=1e-5, rtol=0)
    torch.testing.assert_close(corrupted.deepstack["video"], ref.deepstack["video"], atol=1e-5, rtol=0)
    metric = answer_prob()
    L = m3.cfg.n_layers
    res = patching.activation_patch(m3, clean, corrupted, metric, over=("layer", "group"), groups=["video", "audio", "last"])
    cells = [((l,), clean.layout.mask(g), None) for l in range(L) for g in ["video", "audio", "last"]]
    torch.testing.assert_close(res.per_sample.reshape(-1, 2), patch_cells(m3, corrupted, clean, metric, site_hook("resid_pre"), cells),
                               atol=TOL, rtol=0)
    res = patching.activation_patch(m3, clean, corrupted, metric, site="z", over=("layer", "head"))
    cells = [((l,), everywhere(clean), h) for l in range(L) for h in range(m3.cfg.n_heads)]
    torch.testing.assert_close(res.per_sample.reshape(-1, 2), patch_cells(m3, corrupted, clean, metric, site_hook("z"), cells),
                               atol=TOL, rtol=0)
    assert not registered(m3)
