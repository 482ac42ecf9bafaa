"""Causal tracing (ROME and the paper's token sets), path patching, attribution patching and
attention knockout against independent references: brute-force loops of single
`run_with_hooks` / `generate` calls (tests/brute_force.py), the Hugging Face thinker run with an
explicit additive 4-D attention mask, and exact patching where the model is linear.
"""

from __future__ import annotations

import pytest
import torch

import hf_reference as R
from avlens import patching
from avlens.interventions.grid import layer_windows
from brute_force import VARIANT, answer_prob, at_last, audio_in_video_pair, column, four_layer_model, patch_cells, registered, run_metric

TOL = 1e-5


@pytest.fixture(scope="module")
def aiv(hf, model):
    return audio_in_video_pair(model, hf.config, "audio")


@pytest.fixture(scope="module")
def deep():
    """A 4-layer GQA thinker (private) and an audio-in-video batch of 2 with video zeroed."""
    hf4, m4 = four_layer_model()
    return (m4,) + audio_in_video_pair(m4, hf4.config, "video", seed=2)


# --------------------------------------------------------------------------------- ROME


@pytest.mark.parametrize("site,window", [("resid_post", 1), ("mlp_out", 3)])
def test_rome_trace_equals_brute_force_averaged_over_noised_copies(deep, site, window):
    m4, clean, _ = deep
    metric = answer_prob()
    L, S = m4.cfg.n_layers, clean.shape[1]
    positions = list(range(0, S, 5)) if window > 1 else None
    res = patching.causal_trace(m4, clean, metric, "audio", sigma=0.6, n_copies=3, seed=1, site=site, window=window, positions=positions)
    noisy = patching.corruptions.gaussian_noise(m4, clean, "audio", sigma=0.6, n_copies=3, seed=1)
    tiled = clean.select([0, 1] * 3)
    pos = positions if positions is not None else list(range(S))
    wins = [range(max(0, l - window // 2), min(L, l + window - window // 2)) for l in range(L)]
    cells = [(tuple(w), column(clean, p).repeat(3, 1), None) for w in wins for p in pos]
    ref = patch_cells(m4, noisy, tiled, metric, lambda l: f"blocks.{l}.hook_{site}", cells)
    ref = ref.reshape(L, len(pos), 3, 2).mean(2)
    assert res.dims == ("layer", "position") and res.values.shape == (L, len(pos))
    torch.testing.assert_close(res.per_sample, ref, atol=TOL, rtol=0)
    low = run_metric(m4, noisy, metric).reshape(3, 2).mean(0)
    torch.testing.assert_close(res.base, low, atol=TOL, rtol=0)  # p corrupted
    torch.testing.assert_close(res.source, run_metric(m4, clean, metric), atol=TOL, rtol=0)  # p clean
    torch.testing.assert_close(res.effect(), ref.mean(-1) - low.mean(), atol=TOL, rtol=0)  # ROME's indirect effect


# --------------------------------------------------------------------------------- token sets


@pytest.mark.parametrize("steps", [1, 2])
def test_token_set_tracing_gives_the_papers_indirect_effects(deep, steps):
    m4, clean, corrupted = deep
    video = clean.layout.mask("video")
    sets = {"all": "video", "first_chunk": video & (clean.layout.chunk == 0), "random": [20, 33, 41]}
    o_clean, o_corrupt = torch.tensor([[5, 6], [7, 8]]), torch.tensor([17, 18])
    res = patching.trace_token_sets(m4, clean, corrupted, sets, o_clean, o_corrupt, answer_steps=steps)
    assert set(res) == {"IE_clean", "IE_corrupt"} and res["IE_clean"].dims == ("token_set",)
    L = m4.cfg.n_layers
    names = [f"blocks.{l}.ln1.hook_normalized" for l in range(L)]
    _, cache = m4.run_with_cache(clean, names_filter=names)
    p_clean, p_corrupt = patching.AnswerProb(o_clean), patching.AnswerProb(o_corrupt)

    def steps_logits(hooks=()):
        return m4.generate(corrupted, max_new_tokens=steps, fwd_hooks=list(hooks)).logits

    base = steps_logits()
    for j, spec in enumerate(sets.values()):
        mask = clean.layout.mask(spec) if isinstance(spec, str) else (spec if isinstance(spec, torch.Tensor) else column(clean, 20) | column(clean, 33) | column(clean, 41))

        def prefill(x, hook, mask=mask):
            if hook.ctx["start_pos"] > 0:
                return x
            x = x.clone()
            x[mask] = cache[hook.name][mask]
            return x

        patched = steps_logits([(n, prefill) for n in names])
        ie_clean = 100 * (p_clean(patched, corrupted) - p_clean(base, corrupted))
        ie_corrupt = 100 * (p_corrupt(base, corrupted) - p_corrupt(patched, corrupted))
        torch.testing.assert_close(res["IE_clean"].per_sample[j], ie_clean, atol=1e-3, rtol=0)  # x100 of probabilities
        torch.testing.assert_close(res["IE_corrupt"].per_sample[j], ie_corrupt, atol=1e-3, rtol=0)
    torch.testing.assert_close(res["IE_clean"].base, torch.zeros(2))  # the unpatched run has no effect


def test_indirect_effect_needs_its_baseline():
    with pytest.raises(RuntimeError, match="bind"):
        patching.ie_clean(3)(torch.zeros(1, 1, 10))


# --------------------------------------------------------------------------------- path patching


@pytest.mark.parametrize("sender,receiver", [((0, 1), "q"), ((0, "mlp"), "k"), ((1, "attn"), "v"), ((0, 3), "v")])
def test_path_patching_equals_brute_force(deep, sender, receiver):
    m4, clean, corrupted = deep
    metric = answer_prob()
    res = patching.path_patch(m4, clean, corrupted, metric, sender, receiver)
    cfg = m4.cfg
    l_s, what = sender
    heads = cfg.n_heads if receiver == "q" else cfg.n_key_value_heads
    assert res.coords["layer"] == list(range(l_s + 1, cfg.n_layers)) and res.coords["head"] == list(range(heads))
    name = {"attn": f"blocks.{l_s}.hook_attn_out", "mlp": f"blocks.{l_s}.hook_mlp_out"}.get(what, f"blocks.{l_s}.attn.hook_z")
    _, cc = m4.run_with_cache(clean, names_filter=[name])
    _, rc = m4.run_with_cache(corrupted, names_filter=[name])
    if isinstance(what, int):
        W_O = m4.blocks[l_s].attn.W_O[what]
        delta = cc[name][:, :, what] @ W_O - rc[name][:, :, what] @ W_O
    else:
        delta = cc[name] - rc[name]
    ref = []
    cfg.use_split_qkv_input = True
    try:
        for l in res.coords["layer"]:
            for h in range(heads):
                def add(x, hook, h=h):
                    x = x.clone()
                    x[:, :, h] += delta
                    return x
                ref.append(run_metric(m4, corrupted, metric, [(f"blocks.{l}.hook_{receiver}_input", add)]))
    finally:
        cfg.use_split_qkv_input = False
    torch.testing.assert_close(res.per_sample.reshape(-1, 2), torch.stack(ref), atol=TOL, rtol=0)
    assert not registered(m4) and cfg.use_split_qkv_input is False


@pytest.mark.parametrize("sender,receiver", [((0, "mlp"), "k"), ((0, 1), "q")])
def test_path_patching_equals_the_two_pass_freeze_everything_definition(deep, sender, receiver):
    """The textbook definition, without the additive shortcut: pass 1 runs the corrupted input with
    the sender's output set to its clean value and every other attention and MLP output frozen at
    its corrupted value, caching the receiver head's input; pass 2 runs the corrupted input with
    only that receiver input replaced."""
    m4, clean, corrupted = deep
    metric = answer_prob()
    res = patching.path_patch(m4, clean, corrupted, metric, sender, receiver)
    cfg = m4.cfg
    l_s, what = sender
    outs = [f"blocks.{l}.hook_attn_out" for l in range(cfg.n_layers)] + [f"blocks.{l}.hook_mlp_out" for l in range(cfg.n_layers)]
    z_name = f"blocks.{l_s}.attn.hook_z"
    _, cc = m4.run_with_cache(clean, names_filter=outs + [z_name])
    _, rc = m4.run_with_cache(corrupted, names_filter=outs + [z_name])
    sender_out = f"blocks.{l_s}.hook_mlp_out" if what == "mlp" else f"blocks.{l_s}.hook_attn_out"

    def freeze(x, hook):
        return rc[hook.name]

    def to_clean(x, hook):
        return cc[hook.name]

    def head_to_clean(z, hook):
        z = z.clone()
        z[:, :, what] = cc[hook.name][:, :, what]
        return z

    heads = cfg.n_heads if receiver == "q" else cfg.n_key_value_heads
    ref = []
    cfg.use_split_qkv_input = True
    try:
        for l in res.coords["layer"]:
            recv = f"blocks.{l}.hook_{receiver}_input"
            hooks = [(n, freeze) for n in outs if n != sender_out]
            hooks.append((sender_out, to_clean) if what == "mlp" else (z_name, head_to_clean))
            store = {}

            def keep(x, hook):
                store["x"] = x.detach().clone()
                return x

            m4.run_with_hooks(corrupted, fwd_hooks=hooks + [(recv, keep)])
            for h in range(heads):
                def put(x, hook, h=h):
                    x = x.clone()
                    x[:, :, h] = store["x"][:, :, h]
                    return x

                ref.append(run_metric(m4, corrupted, metric, [(recv, put)]))
    finally:
        cfg.use_split_qkv_input = False
    torch.testing.assert_close(res.per_sample.reshape(-1, 2), torch.stack(ref), atol=TOL, rtol=0)
    assert not registered(m4)


# --------------------------------------------------------------------------------- attribution


@pytest.mark.parametrize("over", [("layer", "position"), ("group",)])
def test_attribution_equals_exact_patching_where_the_model_is_linear(model, aiv, over):
    clean, corrupted = aiv
    L = model.cfg.n_layers
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    metric = patching.ResidualDirection(direction)  # linear in the final residual stream
    kw = dict(site="mlp_out", over=over, layers=[L - 1])
    exact = patching.activation_patch(model, clean, corrupted, metric, **kw)
    approx = patching.attribution_patch(model, clean, corrupted, metric, **kw)
    assert approx.dims == exact.dims and approx.coords == exact.coords
    torch.testing.assert_close(approx.per_sample, exact.per_sample, atol=TOL, rtol=1e-5)
    assert not registered(model)
    assert all(p.grad is None for p in model.parameters())  # no weight gradient accumulated


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double() - a.double().mean(), b.flatten().double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_attribution_correlates_with_exact_patching_on_the_tiny_thinker(model, aiv, capsys):
    clean, corrupted = aiv
    metric = patching.LogitDiff(torch.tensor([5, 17]), torch.tensor([9, 2]))
    out = {}
    for site, over in (("resid_pre", ("layer", "position")), ("attn_out", ("layer", "position")), ("z", ("layer", "head"))):
        exact = patching.activation_patch(model, clean, corrupted, metric, site=site, over=over)
        approx = patching.attribution_patch(model, clean, corrupted, metric, site=site, over=over)
        effect, estimate = exact.per_sample - exact.base, approx.per_sample - approx.base  # per sample
        moved = effect.abs() > 0  # cells a patch can change
        out[site] = pearson(estimate[moved], effect[moved])
    with capsys.disabled():
        print("\nattribution vs exact patching, Pearson r of the effects over changed cells: " + ", ".join(f"{k} {v:.3f}" for k, v in out.items()))
    assert out["resid_pre"] > 0.5 and out["attn_out"] > 0.5 and out["z"] > 0.5


# --------------------------------------------------------------------------------- knockout


def independent_blocked(batch, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """[b, q, k]: edges key -> query with key strictly before query, both real tokens."""
    b, S = batch.shape
    real = batch.attention_mask.bool()
    out = torch.zeros(b, S, S, dtype=torch.bool)
    for i in range(b):
        for q in range(S):
            for k in range(q):
                out[i, q, k] = bool(queries[i, q] and keys[i, k] and real[i, q] and real[i, k])
    return out


def test_knockout_window_sweep_equals_brute_force(deep):
    m4, clean, _ = deep
    metric = answer_prob()
    res = patching.attention_knockout(m4, clean, metric, "video", "audio", window=3)
    L = m4.cfg.n_layers
    assert res.dims == ("layer",) and res.coords["layer"] == list(range(L))
    blocked = independent_blocked(clean, clean.layout.mask("video"), clean.layout.mask("audio"))
    p_base = run_metric(m4, clean, metric)

    def knock(s, hook):
        return s.masked_fill(blocked[:, None], float("-inf"))

    for c in range(L):
        layers = range(max(0, c - 1), min(L, c + 2))
        p_new = run_metric(m4, clean, metric, [(f"blocks.{l}.attn.hook_attn_scores", knock) for l in layers])
        torch.testing.assert_close(res.per_sample[c], (p_new - p_base) / p_base * 100, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(res.extras["p_new"][c], p_new, atol=TOL, rtol=0)
    assert layer_windows(9, 9, [0, 4, 8]) == [tuple(range(0, 5)), tuple(range(0, 9)), tuple(range(4, 9))]


@pytest.mark.parametrize("keys,queries", [("video", "audio"), ("audio", "last")])
def test_knockout_at_all_layers_equals_hf_with_an_additive_4d_mask(hf, model, aiv, keys, queries):
    clean, _ = aiv
    inputs = R.make_inputs(hf.config, "audio_in_video", batch=2, seed=0)
    metric = patching.LogitDiff(torch.tensor([5, 17]), torch.tensor([9, 2]))
    res = patching.attention_knockout(model, clean, metric, keys, queries, layers=range(model.cfg.n_layers))
    blocked = independent_blocked(clean, clean.layout.mask(keys), clean.layout.mask(queries))
    S = clean.shape[1]
    real = clean.attention_mask.bool()
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    # padded queries see themselves (no row fully masked), as avlens's mask does
    allowed = causal[None] & (real[:, None, :] | torch.eye(S, dtype=torch.bool)[None]) & ~blocked
    assert bool(allowed.any(-1).all())
    mask4 = torch.zeros(2, 1, S, S).masked_fill(~allowed[:, None], float("-inf"))
    with torch.no_grad():
        logits = R.run_hf(hf, dict(inputs, attention_mask=mask4), position_ids=clean.position_ids)
    torch.testing.assert_close(res.extras["p_new"][0], metric(at_last(clean, logits), clean), atol=TOL, rtol=0)
    assert float(res.values.abs()) > 0


def test_knockout_never_blocks_a_querys_own_edge(model, aiv):
    clean, _ = aiv
    everything = torch.ones(clean.shape, dtype=torch.bool)
    edges = patching.blocked_edges(clean, everything, everything)
    assert not bool(edges.diagonal(dim1=1, dim2=2).any())
    metric = answer_prob()
    res = patching.attention_knockout(model, clean, metric, everything, everything, layers=[0, 1])
    assert torch.isfinite(res.values).all()
    # every query attends only to itself: the attention output is its own value vector
    def own(p, hook):
        return torch.eye(p.shape[-1]).expand_as(p).clone()
    ref = run_metric(model, clean, metric, [(f"blocks.{l}.attn.hook_pattern", own) for l in range(2)])
    torch.testing.assert_close(res.extras["p_new"][0], ref, atol=TOL, rtol=0)
    with pytest.raises(patching.NoOpError, match="no-op"):  # audio keys after the text queries: nothing to block
        patching.attention_knockout(model, clean, metric, "audio", torch.zeros(clean.shape, dtype=torch.bool).index_fill_(1, torch.tensor([2]), True), verify=True)


def test_knockout_effects_are_measured_from_the_unpatched_run_in_percent(model, aiv):
    """Knockout values are % changes, so its baseline is 0 % (not the unpatched probability):
    `top(by="abs")` ranks by |change|, and the unpatched metric is kept in extras."""
    clean, _ = aiv
    metric = answer_prob()
    res = patching.attention_knockout(model, clean, metric, "audio", "last", window=1)
    p_base, p_new = res.extras["p_base"], res.extras["p_new"]
    want = ((p_new - p_base) / p_base * 100)
    want = want.mean(-1) if want.ndim == 2 else want
    torch.testing.assert_close(res.values, want)
    assert float(res.base.abs().max()) == 0.0
    top = res.top(3, by="abs")
    assert list(top["effect"].abs()) == sorted(top["effect"].abs(), reverse=True)
    torch.testing.assert_close(torch.tensor(top["effect"].to_numpy(), dtype=res.values.dtype),
                               torch.tensor(top["value"].to_numpy(), dtype=res.values.dtype))
