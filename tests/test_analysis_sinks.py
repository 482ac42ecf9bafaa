"""Sink dimensions, sink tokens, modality dominance and the cross-modal split, against brute-force
computations from Hugging Face's own `output_hidden_states` / `output_attentions` (eager) on the
tiny Qwen2.5-Omni thinker, planted states, and hand-worked cases."""

import pytest
import torch

from avlens.analysis import (
    classify_dominance,
    cross_modal_split,
    find_sink_dims,
    find_sinks,
    global_sinks_from_layers,
    ie_clean,
    ie_corrupt,
    modality_dominance,
)

VARIANT = "gqa2_hd16"


@pytest.fixture(scope="module")
def case(hf, model):
    """A left-padded batch of 2 with audio in video, and HF's hidden states and attentions."""
    from hf_reference import make_inputs

    inputs = make_inputs(hf.config, "audio_in_video", batch=2, seed=3)
    hf.model.rope_deltas = None
    with torch.no_grad():
        out = hf(**inputs, use_cache=False, output_hidden_states=True, output_attentions=True)
    hf.model.rope_deltas = None
    return model.prepare(**inputs), out.hidden_states, out.attentions


def _brute_hidden(hidden_states, dims, valid):
    rows = []
    for x in hidden_states[:-1]:  # hidden_states[l] enters layer l
        x = x.float()
        xh = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        rows.append(xh[..., dims].abs().amax(-1) * valid)
    return torch.stack(rows, 1)  # [b, l, p]


def _brute_later_mean(attentions, qmask):
    """mean over q in qmask with q > k of A[b, h, q, k] -> [b, l, h, k] (0 where there is none)."""
    out = []
    for A in attentions:
        b, h, p, _ = A.shape
        res = torch.zeros(b, h, p)
        for s in range(b):
            for k in range(p):
                qs = [q for q in range(k + 1, p) if qmask[s, q]]
                if qs:
                    res[s, :, k] = A[s, :, qs, k].mean(-1)
        out.append(res)
    return torch.stack(out, 1)


def _threshold(values, q=0.5):
    """A threshold near the q-quantile of `values` that sits in a gap (no value within 1e-4), so
    float noise cannot flip a cell."""
    v = values.flatten().sort().values
    i = int(q * (len(v) - 1))
    while i + 1 < len(v) and float(v[i + 1] - v[i]) < 2e-4:
        i += 1
    return float(v[i] + v[i + 1]) / 2


def test_hidden_state_sink_map_equals_hf_hidden_states(model, case):
    batch, hs, _ = case
    dims = [3, 17]
    valid = batch.attention_mask.bool()
    ref = _brute_hidden(hs, dims, valid)
    rep = find_sinks(model, batch, dims=dims, tau=1.0)
    torch.testing.assert_close(rep.hidden_scores, ref, atol=1e-5, rtol=0)
    tau = _threshold(ref[valid[:, None, :].expand_as(ref)])  # some but not all cells are sinks
    rep = find_sinks(model, batch, dims=dims, tau=tau)
    expect = (ref > tau) & valid[:, None, :]
    assert torch.equal(rep.is_sink, expect)
    assert 0 < int(expect.sum()) < int(valid.sum()) * model.cfg.n_layers
    assert rep.is_sink.shape == (2, model.cfg.n_layers, batch.shape[1])


def test_attention_sink_scores_equal_hf_attentions(model, case):
    batch, _, attn = case
    valid = batch.attention_mask.bool()
    ref = _brute_later_mean(attn, valid)
    rep = find_sinks(model, batch, dims=[], eps=0.3)
    torch.testing.assert_close(rep.attention_scores, ref, atol=1e-5, rtol=0)
    eps = _threshold(ref.amax(2)[valid[:, None, :].expand(-1, ref.shape[1], -1)])
    rep = find_sinks(model, batch, dims=[], eps=eps)
    expect = (ref > eps).any(2) & valid[:, None, :]
    assert torch.equal(rep.attention_is_sink, expect)
    assert 0 < int(expect.sum()) < int(valid.sum()) * model.cfg.n_layers
    assert not rep.is_sink.any()  # no dims: the hidden-state definition marks nothing


def test_modality_dominance_equals_hf_attentions(model, case):
    batch, _, attn = case
    lay = batch.layout
    v = _brute_later_mean(attn, lay.mask("video")).mean(2)  # [b, l, k]
    a = _brute_later_mean(attn, lay.mask("audio")).mean(2)
    sinks = [lay.positions("audio", 0)[:3].tolist() + lay.positions("video", 0)[-2:].tolist() + [int(batch.shape[1]) - 1],
             lay.positions("video", 1)[:4].tolist()]
    got = modality_dominance(model, batch, sinks)
    for s in range(2):
        idx = torch.tensor(sinks[s])
        ref = (v[s][:, idx] - a[s][:, idx]) / (v[s][:, idx] + a[s][:, idx] + 1e-9)
        torch.testing.assert_close(got[s], ref, atol=1e-5, rtol=0)
        assert got[s].shape == (model.cfg.n_layers, len(sinks[s]))
    # the last position has no later queries of either modality: MDS 0, as in the official code
    assert torch.all(got[0][:, -1] == 0)


def test_planted_massive_activations_are_recovered_exactly(model, case):
    batch, _, _ = case
    n = batch.shape[1]
    planted_dims, planted_pos = [5, 40], [(0, n - 30), (1, n - 9)]
    assert all(bool(batch.attention_mask[s, p]) for s, p in planted_pos)
    first = 1

    def plant(x, hook):
        x = x.clone()
        for s, p in planted_pos:
            x[s, p, planted_dims] += 3000.0
        return x

    with model.hooks(fwd_hooks=[(f"blocks.{first}.hook_resid_pre", plant)]):
        dims = find_sink_dims(model, [batch])
        # |x_hat_d| <= sqrt(d_model) = 8 here, so the paper's tau = 25 cannot fire in this model
        with pytest.raises(ValueError, match="can never be exceeded"):
            find_sinks(model, batch, dims=dims.dims, tau=25.0)
        rep = find_sinks(model, batch, dims=dims.dims, tau=4.0)
    assert sorted(dims.dims) == planted_dims
    for d in planted_dims:
        assert dims.layers[d] == list(range(first, model.cfg.n_layers))
        assert sorted({(s, p) for _, s, p, _ in dims.tokens[d]}) == planted_pos
    for s, p in planted_pos:
        assert rep.is_sink[s, first:, p].all() and not rep.is_sink[s, :first, p].any()
    marked = {(s, p) for s, l, p in rep.is_sink.nonzero().tolist()}
    assert marked == set(planted_pos)
    assert not model.hook_dict[f"blocks.{first}.hook_resid_pre"].fwd_hooks  # hooks removed


def test_global_sinks_official_rule_with_ties():
    # layer lists concatenated: 4 x3 (first seen in layer 0), 9 x3 (first seen in layer 0, after 4),
    # 2 x2, 7 x1, 1 x1
    per_layer = [[4, 9], [2, 4, 9], [1, 2, 4, 7, 9]]
    assert global_sinks_from_layers(per_layer, prompt_length=8, N=2) == [4, 9, 2, 1]
    assert global_sinks_from_layers(per_layer, prompt_length=8, N=4) == [4, 9]
    assert global_sinks_from_layers([[], []], prompt_length=8, N=2) == []  # fewer than K come back
    # first-seen order, not position order: 9 is seen (layer 0) before 4 (layer 1), both twice
    assert global_sinks_from_layers([[9], [4], [4, 9]], prompt_length=4, N=2) == [9, 4]
    with pytest.raises(ValueError, match="positive integer"):
        global_sinks_from_layers(per_layer, 8, N=0)
    with pytest.raises(ValueError, match="larger than the prompt length"):
        global_sinks_from_layers(per_layer, 8, N=9)


def test_report_global_sinks_keep_media_and_make_a_layout(model, case):
    batch, hs, _ = case
    valid = batch.attention_mask.bool()
    dims = [3, 17]
    ref = _brute_hidden(hs, dims, valid)
    tau = _threshold(ref[valid[:, None, :].expand_as(ref)], 0.7)
    rep = find_sinks(model, batch, dims=dims, tau=tau)
    for s in range(2):
        mask = (ref[s] > tau) & valid[s]
        per_layer = [mask[l].nonzero().squeeze(1).tolist() for l in range(mask.shape[0])]
        top = global_sinks_from_layers(per_layer, int(valid[s].sum()), 2)
        labels = batch.layout.labels(s)
        assert rep.global_sinks(2, sample=s) == [p for p in top if labels[p] in ("audio", "video")]
    lay = rep.to_layout(2)
    for s in range(2):
        assert sorted(lay.positions("sink", s).tolist()) == sorted(rep.global_sinks(2, sample=s))
    fb = rep.found_by(0)
    assert set(fb["both"]) | set(fb["hidden_only"]) == set(fb["hidden"])
    assert rep.plot(0).payload["shape"] == [1, model.cfg.n_layers, batch.shape[1]]  # the default: an avlens view
    fig = rep.plot(0, backend="plotly")
    assert fig.data[0].z.shape == (model.cfg.n_layers, batch.shape[1])


def test_cross_modal_split_median_rule_and_ties():
    sinks = [10, 11, 12, 13, 14]
    mds = [0.5, -0.2, 0.5, 0.9, -0.7]
    # audio-dominant: video sinks sorted descending (stable): 13, 10, 12, 11, 14; first 2 unimodal
    cross, uni = cross_modal_split(sinks, mds, "audio")
    assert uni == [13, 10] and cross == [12, 11, 14]
    # video-dominant: audio sinks sorted ascending (stable): 14, 11, 10, 12, 13
    cross, uni = cross_modal_split(sinks, torch.tensor(mds), "video")
    assert uni == [14, 11] and cross == [10, 12, 13]
    assert cross_modal_split([3], [0.1], "audio") == ([3], [])
    with pytest.raises(ValueError, match="MDS values"):
        cross_modal_split([1, 2], [0.1], "audio")
    with pytest.raises(ValueError, match="dominant"):
        cross_modal_split([1], [0.1], "text")


def test_dominance_classification_and_ie_formulas():
    assert classify_dominance("A", "A", "B") == "audio"
    assert classify_dominance("B", "A", "B") == "video"
    assert classify_dominance("A", "A", "A") is None  # both agree: neither dominates
    assert classify_dominance("C", "A", "B") is None
    assert ie_clean(0.7, 0.2) == pytest.approx(0.5) and ie_corrupt(0.6, 0.1) == pytest.approx(0.5)


def test_bad_inputs_get_clear_errors(model, case, hf):
    from hf_reference import make_inputs

    batch, _, _ = case
    with pytest.raises(ValueError, match="outside"):
        find_sinks(model, batch, dims=[10_000])
    with pytest.raises(ValueError, match="one list per sample"):
        modality_dominance(model, batch, [[1], [2], [3]])
    with pytest.raises(ValueError, match="outside the sequence"):
        modality_dominance(model, batch, [[10_000], [1]])
    text = model.prepare(**make_inputs(hf.config, "audio", batch=1, seed=0))
    with pytest.raises(ValueError, match="no video positions"):
        modality_dominance(model, text, [1])
    with pytest.raises(TypeError, match="only apply when dims are discovered"):
        find_sinks(model, batch, dims=[1], min_ratio=10)
    for b in model.blocks:  # nothing left installed after the failures
        assert b.attn.summary_collector is None


def test_sink_dim_statistics_equal_hf_hidden_states(model, case):
    batch, hs, _ = case
    valid = batch.attention_mask.bool()
    L, d = model.cfg.n_layers, model.cfg.d_model
    best_abs, best_ratio = torch.zeros(L, d), torch.zeros(L, d)
    for l in range(L):
        a = hs[l].float().abs()
        for s in range(a.shape[0]):
            v = a[s][valid[s]]
            best_abs[l] = torch.maximum(best_abs[l], v.amax(0))
            best_ratio[l] = torch.maximum(best_ratio[l], v.amax(0) / v.median())
    thr = _threshold(best_ratio.amax(0), 0.8)  # some but not all dims pass the relative rule
    dims = find_sink_dims(model, [batch], min_abs=None, min_ratio=thr)
    torch.testing.assert_close(dims.max_abs, best_abs, atol=1e-5, rtol=0)
    torch.testing.assert_close(dims.max_ratio, best_ratio, atol=1e-4, rtol=1e-5)
    expect = sorted(int(x) for x in (best_ratio >= thr).any(0).nonzero().squeeze(1))
    assert sorted(dims.dims) == expect and 0 < len(expect) < d
    for x in expect:
        assert dims.layers[x] == [l for l in range(L) if best_ratio[l, x] >= thr]


def test_streaming_statistics_agree_across_query_chunks(model, case, monkeypatch):
    """Many small query chunks (the long-sequence path) give the same scores as one chunk."""
    from avlens.analysis import _collect

    batch, _, attn = case
    sinks = [batch.layout.positions("audio", 0)[:3].tolist(), batch.layout.positions("video", 1)[:2].tolist()]
    one = modality_dominance(model, batch, sinks)
    rep_one = find_sinks(model, batch, dims=[])
    monkeypatch.setattr(_collect.LaterQueryCollector, "chunk_elements", 5 * 4 * batch.shape[1] * 2)  # ~5 queries
    many = modality_dominance(model, batch, sinks)
    rep_many = find_sinks(model, batch, dims=[])
    for a, b in zip(one, many):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(rep_one.attention_scores, rep_many.attention_scores, atol=1e-6, rtol=0)
    torch.testing.assert_close(rep_many.attention_scores, _brute_later_mean(attn, batch.attention_mask.bool()), atol=1e-5, rtol=0)


def test_no_sinks_and_busy_collectors_get_clear_errors(model, case):
    from avlens.analysis._collect import LaterQueryCollector, attach_collector

    batch, _, _ = case
    with pytest.raises(ValueError, match="no sinks to score"):
        modality_dominance(model, batch, [[], [3]])
    other = LaterQueryCollector({"all": batch.attention_mask.bool()}, model.cfg.n_layers, model.cfg.n_heads)
    model.blocks[-1].attn.summary_collector = other
    try:
        with pytest.raises(RuntimeError, match="already being collected"):
            find_sinks(model, batch, dims=[])
        assert all(b.attn.summary_collector is None for b in model.blocks[:-1])  # nothing half-installed
    finally:
        model.blocks[-1].attn.summary_collector = None
