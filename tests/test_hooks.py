"""Hook points of HookedAVTransformer: names, shapes and values against the Hugging Face
reference, attention edits, group views, start/stop layers, backward hooks, the group attention
summary and hooks during generation.

References are independent of avlens: the HF thinker (hidden states, eager attentions, forward
hooks on its modules), TransformerLens's `get_act_name`, and brute-force loops written here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformer_lens.utilities import get_act_name

import avlens
from hf_reference import make_inputs, make_inputs_and_meta, run_hf, unbatch

VARIANT = "gqa2_hd16"  # 4 query heads, 2 KV heads: GQA is exercised
ATOL = 1e-4


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ids(hf):
    c = hf.config
    return dict(audio=c.audio_token_id, video=c.video_token_id, image=c.image_token_id)


@pytest.fixture(scope="module")
def mixed(hf, model):
    """A padded batch of 2 with image, audio and video in each prompt."""
    inputs = make_inputs(hf.config, "mixed", batch=2, seed=0)
    return inputs, model.prepare(**inputs)


def _pad_stack(singles):
    """Left-pad single-sample processor inputs into one batch (media concatenated in row order)."""
    L = max(s["input_ids"].shape[1] for s in singles)
    pad_id = 0
    out = {}
    ids = torch.full((len(singles), L), pad_id, dtype=torch.long)
    am = torch.zeros((len(singles), L), dtype=torch.long)
    for i, s in enumerate(singles):
        n = s["input_ids"].shape[1]
        ids[i, L - n:] = s["input_ids"][0]
        am[i, L - n:] = 1
    out["input_ids"], out["attention_mask"] = ids, am
    if "input_features" in singles[0]:
        F_max = max(s["input_features"].shape[-1] for s in singles)
        feats, fmask = [], []
        for s in singles:
            f, m = s["input_features"], s["feature_attention_mask"]
            feats.append(F.pad(f, (0, F_max - f.shape[-1])))
            fmask.append(F.pad(m, (0, F_max - m.shape[-1])))
        out["input_features"], out["feature_attention_mask"] = torch.cat(feats), torch.cat(fmask)
    for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "video_second_per_grid"):
        if k in singles[0]:
            out[k] = torch.cat([s[k] for s in singles])
    out["use_audio_in_video"] = singles[0]["use_audio_in_video"]
    return out


def equal_count_batch(config, kind):
    """Samples 0 and 3 of a batch of 4 share their media sizes (slot 0) but not their text
    lengths: a batch with equal group counts and different layouts."""
    inputs, meta = make_inputs_and_meta(config, kind, batch=4, seed=1)
    singles = unbatch(inputs, meta)
    return _pad_stack([singles[0][0], singles[3][0]])


@pytest.fixture(scope="module")
def audio_pair(hf, model):
    inputs = equal_count_batch(hf.config, "audio")
    batch = model.prepare(**inputs)
    counts = batch.layout.counts("audio").tolist()
    assert counts[0] == counts[1] > 0 and batch.layout.counts("pad").tolist() != [0, 0]
    return inputs, batch


def _hf_logits_with_layer_input_edit(hf, inputs, layer, fn):
    """HF logits when the input hidden states of decoder layer `layer` are replaced by fn(h)."""
    lay = hf.model.language_model.layers[layer]

    def pre(mod, args, kwargs):
        return (fn(args[0]),) + tuple(args[1:]), kwargs

    h = lay.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        return run_hf(hf, inputs)
    finally:
        h.remove()


def _valid(inputs):
    return inputs["attention_mask"].bool()


def _maxdiff(a, b, mask=None):
    d = (a.detach() - b.detach()).abs()
    if mask is not None:
        d = d[mask]
    return float(d.max())


# --------------------------------------------------------------------------------- names / shapes

OPT_IN = ("attn.hook_result", "hook_q_input", "hook_k_input", "hook_v_input")


def test_every_documented_hook_fires_with_transformer_lens_shapes(model, ids, mixed):
    inputs, batch = mixed
    cfg = model.cfg
    b, p = batch.shape
    d, h, g, e, m = cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.d_mlp
    n = {k: int((inputs["input_ids"] == v).sum()) for k, v in ids.items()}
    assert all(v > 0 for v in n.values())

    fired = {}

    def rec(x, hook):
        fired[hook.name] = tuple(x.shape)

    model.run_with_hooks(batch, fwd_hooks=[(lambda name: True, rec)])

    expected = {
        "hook_embed": (b, p, d),
        "hook_audio_embed": (n["audio"], d),
        "hook_video_embed": (n["video"], d),
        "hook_image_embed": (n["image"], d),
        "ln_final.hook_scale": (b, p, 1),
        "ln_final.hook_normalized": (b, p, d),
    }
    for l in range(cfg.n_layers):
        B = f"blocks.{l}."
        expected.update({
            B + "hook_resid_pre": (b, p, d), B + "hook_resid_mid": (b, p, d), B + "hook_resid_post": (b, p, d),
            B + "hook_attn_out": (b, p, d), B + "hook_mlp_out": (b, p, d),
            B + "ln1.hook_scale": (b, p, 1), B + "ln1.hook_normalized": (b, p, d),
            B + "ln2.hook_scale": (b, p, 1), B + "ln2.hook_normalized": (b, p, d),
            B + "attn.hook_q": (b, p, h, e), B + "attn.hook_k": (b, p, g, e), B + "attn.hook_v": (b, p, g, e),
            B + "attn.hook_rot_q": (b, p, h, e), B + "attn.hook_rot_k": (b, p, g, e),
            B + "attn.hook_attn_scores": (b, h, p, p), B + "attn.hook_pattern": (b, h, p, p),
            B + "attn.hook_z": (b, p, h, e),
            B + "mlp.hook_pre": (b, p, m), B + "mlp.hook_pre_linear": (b, p, m), B + "mlp.hook_post": (b, p, m),
        })
    for name, shape in expected.items():
        assert name in model.hook_dict, name
        assert fired.get(name) == shape, (name, fired.get(name), shape)
    # the opt-in hooks are off by default
    assert not any(k.endswith(OPT_IN) for k in fired), sorted(k for k in fired if k.endswith(OPT_IN))


def test_get_act_name_names_all_exist_in_hook_dict(model):
    names = []
    for l in range(model.cfg.n_layers):
        for act in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q", "k", "v", "z",
                    "rot_q", "rot_k", "attn_scores", "pattern", "result", "pre", "post", "pre_linear",
                    "q_input", "k_input", "v_input"):
            names.append(get_act_name(act, l))
        names += [get_act_name("scale", l, "ln1"), get_act_name("scale", l, "ln2"),
                  get_act_name("normalized", l, "ln1"), get_act_name("normalized", l, "ln2")]
    names += [get_act_name("embed"), get_act_name("scale"), get_act_name("normalized")]
    missing = [n for n in names if n not in model.hook_dict]
    assert not missing, missing


def test_ln_scales_and_normalized_match_rms_of_their_input(model, mixed):
    _, batch = mixed
    _, cache = model.run_with_cache(batch)
    L = model.cfg.n_layers
    eps = model.cfg.eps
    pairs = [("ln_final", cache[f"blocks.{L - 1}.hook_resid_post"])]
    for l in range(L):
        pairs += [(f"blocks.{l}.ln1", cache[f"blocks.{l}.hook_resid_pre"]),
                  (f"blocks.{l}.ln2", cache[f"blocks.{l}.hook_resid_mid"])]
    for name, x in pairs:
        scale = torch.sqrt((x.double() ** 2).mean(-1, keepdim=True) + eps)
        got = cache[name + ".hook_scale"]
        assert got.shape == scale.shape
        torch.testing.assert_close(got.double(), scale, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(cache[name + ".hook_normalized"].double(), x.double() / scale, rtol=1e-5, atol=1e-5)


def test_q_k_v_hooks_equal_hf_projections_of_the_normalised_input(hf, model, mixed):
    inputs, batch = mixed
    cfg = model.cfg
    got = {}
    handles = []
    for l, lay in enumerate(hf.model.language_model.layers):
        for nm in ("q_proj", "k_proj", "v_proj"):
            def rec(mod, args, out, key=(l, nm)):
                got[key] = out.detach()
            handles.append(getattr(lay.self_attn, nm).register_forward_hook(rec))
    try:
        run_hf(hf, inputs)
    finally:
        for hd in handles:
            hd.remove()
    _, cache = model.run_with_cache(batch)
    m = _valid(inputs)
    b, p = batch.shape
    for l in range(cfg.n_layers):
        for nm, heads in (("q", cfg.n_heads), ("k", cfg.n_key_value_heads), ("v", cfg.n_key_value_heads)):
            ref = got[(l, nm + "_proj")].view(b, p, heads, cfg.d_head)
            assert _maxdiff(cache[f"blocks.{l}.attn.hook_{nm}"], ref, m) < 1e-5, (l, nm)


def test_resid_post_equals_hf_hidden_states_and_pattern_equals_hf_eager_attentions(hf, model, mixed):
    inputs, batch = mixed
    hf.model.rope_deltas = None
    with torch.no_grad():
        out = hf(**inputs, output_hidden_states=True, output_attentions=True, use_cache=False)
    hf.model.rope_deltas = None
    logits, cache = model.run_with_cache(batch)
    m = _valid(inputs)
    L = model.cfg.n_layers
    hs = out.hidden_states
    # HF: hidden_states[0] = embeddings, [l + 1] = output of layer l, except the last entry,
    # which is the *normalised* final stream (after model.norm).
    assert len(hs) == L + 1
    assert _maxdiff(cache["hook_embed"], hs[0], m) < 1e-6
    assert _maxdiff(cache["blocks.0.hook_resid_pre"], hs[0], m) < 1e-6
    for l in range(L - 1):
        assert _maxdiff(cache[f"blocks.{l}.hook_resid_post"], hs[l + 1], m) < 1e-5, l
        assert _maxdiff(cache[f"blocks.{l + 1}.hook_resid_pre"], hs[l + 1], m) < 1e-5, l
    final_normed = cache["ln_final.hook_normalized"] * model.ln_final.w
    assert _maxdiff(final_normed, hs[L], m) < 1e-5
    assert _maxdiff(logits, out.logits, m) < ATOL
    for l in range(L):
        pat = cache[f"blocks.{l}.attn.hook_pattern"]
        rows = m[:, None, :, None].expand_as(pat)  # valid query rows
        assert _maxdiff(pat, out.attentions[l], rows) < 1e-5, l
        torch.testing.assert_close(pat.sum(-1), torch.ones_like(pat.sum(-1)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["audio_video", "audio_in_video"])
def test_ungrouped_k_v_are_per_query_head_and_logits_still_match_hf(hf, kind):
    inputs = make_inputs(hf.config, kind, batch=2, seed=0)
    base = avlens.HookedAVTransformer.from_hf(hf)
    ung = avlens.HookedAVTransformer.from_hf(hf)
    ung.cfg.ungroup_grouped_query_attention = True
    batch = base.prepare(**inputs)
    _, c0 = base.run_with_cache(batch)
    logits, c1 = ung.run_with_cache(batch)
    cfg = base.cfg
    b, p = batch.shape
    rep = cfg.n_heads // cfg.n_key_value_heads
    assert rep > 1
    for l in range(cfg.n_layers):
        for nm in ("k", "v", "rot_k"):
            x = c1[f"blocks.{l}.attn.hook_{nm}"]
            assert x.shape == (b, p, cfg.n_heads, cfg.d_head), nm
            for hq in range(cfg.n_heads):
                torch.testing.assert_close(x[:, :, hq], c0[f"blocks.{l}.attn.hook_{nm}"][:, :, hq // rep])
    m = _valid(inputs)
    assert _maxdiff(logits, run_hf(hf, inputs), m) < ATOL


def test_opt_in_attn_result_sums_to_attn_out_and_keeps_hf_logits(hf, mixed):
    inputs, batch = mixed
    model = avlens.HookedAVTransformer.from_hf(hf)
    model.cfg.use_attn_result = True
    logits, cache = model.run_with_cache(batch)
    cfg = model.cfg
    b, p = batch.shape
    for l in range(cfg.n_layers):
        res = cache[f"blocks.{l}.attn.hook_result"]
        assert res.shape == (b, p, cfg.n_heads, cfg.d_model)
        torch.testing.assert_close(res.sum(2) + model.blocks[l].attn.b_O, cache[f"blocks.{l}.hook_attn_out"], atol=1e-5, rtol=1e-5)
        # each head's result is its z through its slice of W_O (brute force over heads)
        z = cache[f"blocks.{l}.attn.hook_z"]
        Wo = model.blocks[l].attn.o_proj.weight  # [d, h*e] (HF layout)
        for hh in range(cfg.n_heads):
            sl = slice(hh * cfg.d_head, (hh + 1) * cfg.d_head)
            torch.testing.assert_close(res[:, :, hh], z[:, :, hh] @ Wo[:, sl].T, atol=1e-5, rtol=1e-5)
    assert _maxdiff(logits, run_hf(hf, inputs), _valid(inputs)) < ATOL


def test_opt_in_split_qkv_input_hooks_fire_only_when_enabled_and_keep_hf_logits(hf, mixed):
    inputs, batch = mixed
    model = avlens.HookedAVTransformer.from_hf(hf)
    _, cache = model.run_with_cache(batch)
    assert not any(k.endswith(("hook_q_input", "hook_k_input", "hook_v_input")) for k in cache.keys())
    model.cfg.use_split_qkv_input = True
    logits, cache = model.run_with_cache(batch)
    cfg = model.cfg
    b, p = batch.shape
    for l in range(cfg.n_layers):
        pre = cache[f"blocks.{l}.hook_resid_pre"]
        for nm, heads in (("q", cfg.n_heads), ("k", cfg.n_key_value_heads), ("v", cfg.n_key_value_heads)):
            x = cache[f"blocks.{l}.hook_{nm}_input"]
            assert x.shape == (b, p, heads, cfg.d_model)
            torch.testing.assert_close(x, pre[:, :, None].expand_as(x))
    assert _maxdiff(logits, run_hf(hf, inputs), _valid(inputs)) < ATOL
    # an edit to one head's query input changes the output (the hook is live)
    def zero_head0(x, hook):
        x = x.clone()
        x[:, :, 0] = 0
        return x
    edited = model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_q_input", zero_head0)])
    assert _maxdiff(edited, logits, _valid(inputs)) > 1e-3


# --------------------------------------------------------------------------------- attention edits


@pytest.fixture(scope="module")
def single_audio(hf, model):
    """One unpadded audio sample (short audio)."""
    inputs, meta = make_inputs_and_meta(hf.config, "audio", batch=2, seed=0)
    sub = unbatch(inputs, meta)[1][0]
    return sub, model.prepare(**sub)


def test_zeroing_one_head_pattern_equals_hf_with_that_head_removed_before_o_proj(hf, model, single_audio):
    inputs, batch = single_audio
    layer, head = 1, 2
    e = model.cfg.d_head

    def zero_pattern(pat, hook):
        pat = pat.clone()
        pat[:, head] = 0
        return pat

    got = model.run_with_hooks(batch, fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", zero_pattern)])

    # HF reference: a zero pattern row gives z = 0 for that head, i.e. o_proj's input slice is 0
    o_proj = hf.model.language_model.layers[layer].self_attn.o_proj

    def pre(mod, args):
        x = args[0].clone()
        x[..., head * e:(head + 1) * e] = 0
        return (x,)

    hd = o_proj.register_forward_pre_hook(pre)
    try:
        ref = run_hf(hf, inputs)
    finally:
        hd.remove()
    clean = run_hf(hf, inputs)
    assert _maxdiff(got, ref) < ATOL
    assert _maxdiff(got, clean) > 1e-2  # the edit is not a no-op


def test_uniform_pattern_over_allowed_keys_equals_hf_with_causal_mean_of_values(hf, model, single_audio):
    inputs, batch = single_audio
    layer = 0
    cfg = model.cfg
    rep = cfg.n_heads // cfg.n_key_value_heads

    def uniform(pat, hook):
        q, k = pat.shape[-2:]
        allowed = torch.ones(q, k, dtype=pat.dtype).tril().expand_as(pat)  # unpadded: causal
        return allowed / allowed.sum(-1, keepdim=True)

    got = model.run_with_hooks(batch, fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", uniform)])

    attn = hf.model.language_model.layers[layer].self_attn
    store = {}

    def grab_v(mod, args, out):
        store["v"] = out

    def replace_z(mod, args):
        b, p, _ = args[0].shape
        v = store["v"].view(b, p, cfg.n_key_value_heads, cfg.d_head)
        mean_v = v.cumsum(1) / torch.arange(1, p + 1, dtype=v.dtype)[None, :, None, None]
        z = mean_v.repeat_interleave(rep, dim=2)  # query head h reads KV head h // rep
        return (z.reshape(b, p, -1),)

    h1 = attn.v_proj.register_forward_hook(grab_v)
    h2 = attn.o_proj.register_forward_pre_hook(replace_z)
    try:
        ref = run_hf(hf, inputs)
    finally:
        h1.remove()
        h2.remove()
    assert _maxdiff(got, ref) < ATOL
    assert _maxdiff(got, run_hf(hf, inputs)) > 1e-2


def test_minus_inf_score_on_one_key_equals_pattern_with_that_key_removed_and_renormalised(model, single_audio):
    _, batch = single_audio
    key = 3
    for layer in range(model.cfg.n_layers):
        def mask_key_scores(scores, hook):
            scores = scores.clone()
            scores[:, :, key + 1:, key] = float("-inf")  # queries that have other keys left
            return scores

        def renorm(pat, hook):
            pat = pat.clone()
            pat[:, :, key + 1:, key] = 0
            return pat / pat.sum(-1, keepdim=True)

        a = model.run_with_hooks(batch, fwd_hooks=[(f"blocks.{layer}.attn.hook_attn_scores", mask_key_scores)])
        b = model.run_with_hooks(batch, fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", renorm)])
        clean = model(batch)
        assert torch.isfinite(a).all()
        assert _maxdiff(a, b) < 1e-5, layer
        assert _maxdiff(a, clean) > 1e-3, layer  # editing the scores changes the logits
        # positions up to and including the key are untouched by the edit
        assert _maxdiff(a[:, : key + 1], clean[:, : key + 1]) < 1e-5


def test_editing_attn_scores_changes_logits_at_every_layer(model, single_audio):
    _, batch = single_audio
    clean = model(batch)
    for layer in range(model.cfg.n_layers):
        def scale(scores, hook):
            return scores * 0.1  # flatter attention
        out = model.run_with_hooks(batch, fwd_hooks=[(f"blocks.{layer}.attn.hook_attn_scores", scale)])
        assert _maxdiff(out, clean) > 1e-2, layer


def test_sdpa_is_used_without_attention_hooks_and_not_when_pattern_is_hooked(model, single_audio, monkeypatch):
    _, batch = single_audio
    reference = model(batch)
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    L = model.cfg.n_layers

    calls.clear()
    out = model(batch)
    assert len(calls) == L
    torch.testing.assert_close(out, reference)

    calls.clear()
    model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x)])
    assert len(calls) == L  # a non-attention hook keeps the fast path

    calls.clear()
    out = model.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: x)])
    assert len(calls) == L - 1  # layer 0 materialises its pattern
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)

    calls.clear()
    model.run_with_hooks(batch, fwd_hooks=[(lambda n: n.endswith("hook_attn_scores"), lambda x, hook: x)])
    assert len(calls) == 0

    calls.clear()
    model(batch)  # hooks are gone: back to the fast path
    assert len(calls) == L


# --------------------------------------------------------------------------------- group views


@pytest.mark.parametrize("kind", ["video", "audio_in_video"])
@pytest.mark.parametrize("layer", [0, 1])
def test_zeroing_video_resid_pre_changes_logits_only_from_the_first_video_position(hf, model, ids, kind, layer):
    inputs = make_inputs(hf.config, kind, batch=1, seed=0)
    batch = model.prepare(**inputs)
    vmask = inputs["input_ids"][0] == ids["video"]
    first = int(vmask.nonzero()[0, 0])
    assert first > 0

    clean = model(batch)
    edited = model.run_with_hooks(
        batch, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre.video", lambda x, hook: torch.zeros_like(x))]
    )
    assert torch.equal(edited[:, :first], clean[:, :first])  # bit-identical before the video
    per_pos = (edited - clean).abs().amax(-1)[0]
    assert bool((per_pos[first:] > 1e-4).all()), per_pos[first:]

    ref = _hf_logits_with_layer_input_edit(hf, inputs, layer, lambda h: h.masked_fill(vmask[None, :, None], 0.0))
    assert _maxdiff(edited, ref) < ATOL


def test_group_views_receive_the_group_slice_with_batch_first(model, ids, audio_pair):
    inputs, batch = audio_pair
    amask = inputs["input_ids"] == ids["audio"]
    n = int(amask[0].sum())
    seen = {}

    def rec(x, hook):
        seen[hook.name] = x.detach().clone()

    names = ["blocks.1.hook_resid_pre", "blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.ln1.hook_scale", "blocks.0.mlp.hook_post"]
    _, cache = model.run_with_cache(batch)
    model.run_with_hooks(batch, fwd_hooks=[(nm + ".audio", rec) for nm in names])
    for nm in names:
        parent = cache[nm]
        view = seen[nm + ".audio"]
        assert view.shape == (2, n) + tuple(parent.shape[2:]), nm
        for i in range(2):
            torch.testing.assert_close(view[i], parent[i][amask[i]], msg=nm)


def test_what_a_group_view_returns_is_written_back_as_in_hf(hf, model, ids, audio_pair):
    inputs, batch = audio_pair
    amask = inputs["input_ids"] == ids["audio"]
    n = int(amask[0].sum())
    delta = torch.randn(2, n, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    got = model.run_with_hooks(batch, fwd_hooks=[("blocks.1.hook_resid_pre.audio", lambda x, hook: x + delta)])

    def add(h):
        h = h.clone()
        for i in range(2):
            h[i, amask[i]] += delta[i]
        return h

    ref = _hf_logits_with_layer_input_edit(hf, inputs, 1, add)
    m = _valid(inputs)
    assert _maxdiff(got, ref, m) < ATOL
    assert _maxdiff(got, run_hf(hf, inputs), m) > 1e-2


def test_parent_hook_runs_before_its_group_views(model, audio_pair):
    _, batch = audio_pair
    order = []
    hooks = [
        ("blocks.0.hook_resid_post.special", lambda x, hook: order.append("special")),
        ("blocks.0.hook_resid_post.audio", lambda x, hook: order.append("audio")),
        ("blocks.0.hook_resid_post", lambda x, hook: order.append("parent")),
    ]
    model.run_with_hooks(batch, fwd_hooks=hooks)
    assert order[0] == "parent" and sorted(order[1:]) == ["audio", "special"]

    # the view sees what the parent hook wrote
    seen = {}

    def parent(x, hook):
        return x + 1.0

    def view(x, hook):
        seen["x"] = x.clone()

    _, cache = model.run_with_cache(batch, names_filter="blocks.0.hook_resid_post.audio")
    model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post", parent), ("blocks.0.hook_resid_post.audio", view)])
    torch.testing.assert_close(seen["x"], cache["blocks.0.hook_resid_post.audio"] + 1.0)


def test_backward_hook_on_a_group_view_gets_the_parent_gradient_at_its_positions(model, ids, audio_pair):
    inputs, batch = audio_pair
    amask = inputs["input_ids"] == ids["audio"]
    grads = {}

    def rec(g, hook):
        grads[hook.name] = g.detach().clone()

    w = torch.randn(batch.shape[0], batch.shape[1], model.cfg.d_vocab, generator=torch.Generator().manual_seed(1))
    try:
        with model.hooks(bwd_hooks=[("blocks.1.hook_resid_mid", rec), ("blocks.1.hook_resid_mid.audio", rec)]):
            logits = model(batch)
            (logits * w).sum().backward()
    finally:
        model.zero_grad(set_to_none=True)
    parent, view = grads["blocks.1.hook_resid_mid"], grads["blocks.1.hook_resid_mid.audio"]
    n = int(amask[0].sum())
    assert view.shape == (2, n, model.cfg.d_model)
    assert parent.abs().max() > 0
    for i in range(2):
        torch.testing.assert_close(view[i], parent[i][amask[i]], rtol=0, atol=0)


# --------------------------------------------------------------------------------- start / stop


def _block_hook_names(model, layers):
    return [n for n in model.hook_dict if any(n.startswith(f"blocks.{l}.") for l in layers) and not n.endswith(OPT_IN)]


@pytest.mark.parametrize("k", [1, 2])
def test_start_at_layer_from_cached_resid_pre_equals_full_run_and_skips_earlier_blocks(model, mixed, k):
    inputs, batch = mixed
    L = model.cfg.n_layers
    full, cache = model.run_with_cache(batch)
    resid = cache[f"blocks.{k}.hook_resid_pre"] if k < L else cache[f"blocks.{L - 1}.hook_resid_post"]
    fired = []
    early = _block_hook_names(model, range(k)) + ["hook_embed", "hook_audio_embed", "hook_video_embed", "hook_image_embed"]
    late = _block_hook_names(model, range(k, L)) + ["ln_final.hook_scale"]
    out = model.run_with_hooks(
        resid, start_at_layer=k, batch=batch,
        fwd_hooks=[(n, lambda x, hook: fired.append(hook.name)) for n in early + late],
    )
    assert not [n for n in fired if n in early], fired
    assert set(late) <= set(fired)
    assert _maxdiff(out, full, _valid(inputs)) < 1e-5


@pytest.mark.parametrize("k", [0, 1])
def test_stop_at_layer_returns_that_layers_resid_pre_and_skips_later_blocks(model, mixed, k):
    _, batch = mixed
    L = model.cfg.n_layers
    _, cache = model.run_with_cache(batch)
    fired = []
    # opt-in hooks (hook_result, hook_q/k/v_input) refuse hooks while disabled, as in TransformerLens
    names = [n for n in model.hook_dict if not n.endswith(("hook_result", "hook_q_input", "hook_k_input", "hook_v_input"))]
    out = model.run_with_hooks(batch, stop_at_layer=k, fwd_hooks=[(n, lambda x, hook: fired.append(hook.name)) for n in names])
    torch.testing.assert_close(out, cache[f"blocks.{k}.hook_resid_pre"])
    late = set(_block_hook_names(model, range(k, L))) | {"ln_final.hook_scale", "ln_final.hook_normalized"}
    assert not late & set(fired), sorted(late & set(fired))
    assert "hook_embed" in fired


# --------------------------------------------------------------------------------- group summary


def _meta_group_masks(meta):
    """Group masks [b, p] from hf_reference's metadata (independent of avlens's layout)."""
    b, p = meta["batch"], meta["seq_len"]
    out = {g: torch.zeros(b, p, dtype=torch.bool) for g in ("audio", "video", "image", "text", "special", "pad", "last")}
    for i, s in enumerate(meta["samples"]):
        for j, t in enumerate(s["token_types"]):
            g = "special" if t in ("audio_start", "audio_end", "vision_start", "vision_end") else t
            out[g][i, j] = True
        out["last"][i, s["offset"] + s["length"] - 1] = True
    return out


def test_attention_group_summary_equals_brute_force_from_cached_patterns(hf, model, monkeypatch):
    inputs, meta = make_inputs_and_meta(hf.config, "audio_video", batch=2, seed=3)
    batch = model.prepare(**inputs)
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))

    calls = []
    for blk in model.blocks:
        hp = blk.attn.hook_pattern
        real_forward = hp.forward
        monkeypatch.setattr(hp, "forward", lambda x, _f=real_forward: (calls.append(1), _f(x))[1])
    summary = model.attention_group_summary(batch, per_key=True)
    assert calls == []  # no hook_pattern call, so no full pattern was handed out

    masks = _meta_group_masks(meta)
    groups = summary.groups
    assert set(groups) == {"audio", "video", "text", "special", "last"}
    B, P = batch.shape
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert summary.mass.shape == (B, L, H, len(groups), len(groups))
    assert summary.received.shape == (B, L, H, len(groups), P)
    for gi, g in enumerate(groups):
        assert summary.query_counts[:, gi].tolist() == masks[g].sum(-1).tolist()
    for b in range(B):
        for l in range(L):
            A = cache[f"blocks.{l}.attn.hook_pattern"][b].double()  # [h, q, k]
            for qi, qg in enumerate(groups):
                qpos = masks[qg][b].nonzero().flatten().tolist()
                for ki, kg in enumerate(groups):
                    kpos = masks[kg][b].nonzero().flatten().tolist()
                    for h in range(H):
                        tot = 0.0
                        for q in qpos:
                            tot += float(A[h, q, kpos].sum())
                        expected = tot / len(qpos)
                        assert abs(float(summary.mass[b, l, h, qi, ki]) - expected) < 1e-5, (b, l, h, qg, kg)
                rec = A[:, qpos, :].sum(1)  # [h, k]
                assert float((summary.received[b, l, :, qi] - rec).abs().max()) < 1e-5, (b, l, qg)
    # a query group's mass over the (non-pad) partition groups sums to one
    part = [groups.index(g) for g in groups if g != "last"]
    row_sums = summary.mass[:, :, :, part][..., part].sum(-1)
    torch.testing.assert_close(row_sums, torch.ones_like(row_sums), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------- generate


def test_generate_hooks_fire_at_prefill_and_each_step_with_absolute_start_pos(hf, model):
    inputs = make_inputs(hf.config, "audio", batch=2, seed=0)
    batch = model.prepare(**inputs)
    b, p = batch.shape
    calls = []

    def rec(x, hook):
        layout = hook.ctx["layout"]
        calls.append((tuple(x.shape), hook.ctx["start_pos"], layout.mask("text").clone(), layout.mask("generated").clone()))

    n_new = 4
    out = model.generate(
        batch, max_new_tokens=n_new,
        fwd_hooks=[("blocks.1.hook_resid_post", rec)],
    )
    assert out.tokens.shape == (b, n_new)
    assert len(calls) == n_new  # prefill + (n_new - 1) decoding steps
    assert calls[0][0] == (b, p, model.cfg.d_model) and calls[0][1] == 0
    for s in range(1, n_new):
        shape, start, text, gen = calls[s]
        assert shape == (b, 1, model.cfg.d_model)
        assert start == p + s - 1
        assert text.shape == (b, 1) and bool(text.all()) and bool(gen.all())  # generated tokens: text + generated
    # no hook is left behind by generate
    assert not any(hp.fwd_hooks for hp in model.hook_points())


def test_generate_group_view_on_audio_fires_at_prefill_only(hf, model):
    inputs = equal_count_batch(hf.config, "audio")
    batch = model.prepare(**inputs)
    n_audio = int(batch.layout.counts("audio")[0])
    seen = []
    last = []
    model.generate(batch, max_new_tokens=3, fwd_hooks=[
        ("blocks.0.hook_resid_pre.audio", lambda x, hook: seen.append((tuple(x.shape), hook.ctx["start_pos"]))),
        ("blocks.0.hook_resid_pre.last", lambda x, hook: last.append(hook.ctx["start_pos"])),
    ])
    assert seen == [((2, n_audio, model.cfg.d_model), 0)]
    assert last == [0, batch.shape[1], batch.shape[1] + 1]  # other views keep firing while decoding


@pytest.mark.parametrize("kind,bsz", [("audio", 1), ("video", 2), ("audio_in_video", 2)])
def test_generate_greedy_tokens_equal_hf_argmax_on_the_extended_prompt(hf, model, kind, bsz):
    inputs = make_inputs(hf.config, kind, batch=bsz, seed=0)
    batch = model.prepare(**inputs)
    out = model.generate(batch, max_new_tokens=4)
    ids, am = inputs["input_ids"], inputs["attention_mask"]
    for s in range(4):
        ext = dict(inputs, input_ids=ids, attention_mask=am)
        ref = run_hf(hf, ext)[:, -1]
        assert _maxdiff(out.logits[:, s], ref) < ATOL, s
        nxt = ref.argmax(-1)
        assert out.tokens[:, s].tolist() == nxt.tolist(), s
        ids = torch.cat([ids, nxt[:, None]], 1)
        am = torch.cat([am, torch.ones_like(am[:, :1])], 1)


def test_run_with_cache_returns_an_activation_cache_with_compact_reprs(model, mixed):
    """`run_with_cache` gives an `ActivationCache` subclass: TransformerLens's decomposition on it
    equals the plain `ActivationCache`'s, and its reprs summarise (one row per kind of activation,
    layers collapsed) instead of listing tensors."""
    from transformer_lens import ActivationCache

    _, cache = model.run_with_cache(mixed[1])
    assert isinstance(cache, ActivationCache)
    plain = ActivationCache(cache.cache_dict, model)
    torch.testing.assert_close(cache.decompose_resid(), plain.decompose_resid())
    torch.testing.assert_close(cache.accumulated_resid(), plain.accumulated_resid())
    L = model.cfg.n_layers
    per_layer = sorted({n.split(".", 2)[2] for n in cache.cache_dict if n.startswith("blocks.0.")})
    assert per_layer and all(f"blocks.{l}.{h}" in cache.cache_dict for l in range(L) for h in per_layer)
    kinds = {f"blocks.{{l}}.{h}": L for h in per_layer}
    kinds.update({n: 1 for n in cache.cache_dict if not n.startswith("blocks.")})
    text = repr(cache)
    assert f"{len(cache.cache_dict)} activations in {len(kinds)} kinds" in text
    for key, n in kinds.items():
        line = next(l for l in text.splitlines() if l.split()[:1] == [key])
        assert f"x{n}" in line and str(list(cache.cache_dict[key.replace("{l}", "0")].shape)) in line
    page = cache._repr_html_()
    assert page.count("<tr>") == len(kinds) + 1 and len(page) < 200 * (len(kinds) + 5)
    # encoder-tower layers collapse too (audio_tower.blocks.{l}..., visual.blocks.{l}...)
    names = ["audio_tower.blocks.0.hook_resid_pre", "audio_tower.blocks.1.hook_resid_pre", "visual.blocks.3.attn.hook_pattern"]
    enc = type(cache)({n: torch.zeros(2, 3) for n in names}, model)
    assert "audio_tower.blocks.{l}.hook_resid_pre" in repr(enc) and "x2" in repr(enc)
    assert "visual.blocks.{l}.attn.hook_pattern" in repr(enc) and "2 kinds" in repr(enc)
