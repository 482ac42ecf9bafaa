"""Backbone variants, rotary embeddings, sampling, tokenizer paths and backward group-view hooks,
each checked against an independent reference:

* 1-D RoPE backbones: `HookedAVTransformer(AVConfig(rope_kind="1d"))` with weights copied from a
  tiny random HF `Qwen2ForCausalLM` (q/k/v bias) and `LlamaForCausalLM` (no biases, decoupled
  head_dim) gives HF's logits on a left-padded batch (SDPA, eager and ungrouped-KV paths), and
  greedy `generate` gives HF `generate`'s tokens and step logits;
* `Rotary` cos/sin for "1d" / "mrope" / "mrope_interleaved" equal HF's Qwen2, Qwen2.5-Omni and
  Qwen3-VL / Qwen3-Omni-MoE text rotary embeddings, and `apply_rotary` equals HF's
  `apply_rotary_pos_emb`;
* sampling in `generate`: seeded reproducibility, top_k=1 == greedy, every token inside the
  top-k / nucleus set (brute force and HF's logits warpers on the returned step logits), and the
  empirical distribution of 2000 draws equals softmax(logits / T) restricted to that set;
* tokenizer paths with a WordLevel `PreTrainedTokenizerFast` built here;
* a backward hook on a group view (`blocks.1.hook_resid_mid.audio`) receives the gradient that
  torch autograd computes through the HF thinker (retain_grad on the input of layer 1's
  post_attention_layernorm).
"""

from __future__ import annotations

import pytest
import torch

import avlens
from avlens.model.components import Rotary, apply_rotary
from hf_reference import TINY_VARIANTS, make_inputs, make_inputs_and_meta, run_hf

VARIANT = TINY_VARIANTS[0]  # gqa2_hd16


# =============================================================================================
# 1. 1-D RoPE backbones vs HF Qwen2 / Llama
# =============================================================================================

V1D = 100  # vocabulary of the 1-D backbones


def _randomise(hf, seed: int):
    """Redraw every HF parameter (norm weights around 1, non-zero biases), seeded."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.3 * noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)
    return hf


def _hf_qwen2(seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    c = Qwen2Config(
        vocab_size=V1D, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        tie_word_embeddings=False, attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return _randomise(Qwen2ForCausalLM(c).eval(), seed)


def _hf_llama(seed=1):
    from transformers import LlamaConfig, LlamaForCausalLM

    # head_dim 24 != hidden / heads: q_proj is [96, 64], o_proj [64, 96]
    c = LlamaConfig(
        vocab_size=V1D, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 5e5},
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False, attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return _randomise(LlamaForCausalLM(c).eval(), seed)


def _avlens_from_causal_lm(hf) -> avlens.HookedAVTransformer:
    """A 1-D RoPE HookedAVTransformer with the HF causal LM's weights copied in."""
    c = hf.config
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    has_qkv_bias = hf.model.layers[0].self_attn.q_proj.bias is not None
    cfg = avlens.AVConfig(
        d_model=c.hidden_size, d_head=d_head, n_heads=c.num_attention_heads,
        n_key_value_heads=c.num_key_value_heads, n_layers=c.num_hidden_layers,
        d_mlp=c.intermediate_size, d_vocab=c.vocab_size, rope_kind="1d",
        rope_theta=c.rope_parameters["rope_theta"], eps=c.rms_norm_eps, qkv_bias=has_qkv_bias,
    )
    m = avlens.HookedAVTransformer(cfg)
    sd = hf.state_dict()
    with torch.no_grad():
        m.embed.W_E.copy_(sd["model.embed_tokens.weight"])
        m.unembed.lm_head.weight.copy_(sd["lm_head.weight"])
        m.ln_final.w.copy_(sd["model.norm.weight"])
        for l, b in enumerate(m.blocks):
            P = f"model.layers.{l}."
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                lin = getattr(b.attn, n)
                lin.weight.copy_(sd[P + "self_attn." + n + ".weight"])
                assert (lin.bias is None) == (P + "self_attn." + n + ".bias" not in sd), n
                if lin.bias is not None:
                    lin.bias.copy_(sd[P + "self_attn." + n + ".bias"])
            for n in ("gate_proj", "up_proj", "down_proj"):
                getattr(b.mlp, n).weight.copy_(sd[P + "mlp." + n + ".weight"])
            b.ln1.w.copy_(sd[P + "input_layernorm.weight"])
            b.ln2.w.copy_(sd[P + "post_attention_layernorm.weight"])
    return m


@pytest.fixture(scope="module")
def backbones():
    """{name: (hf causal LM, avlens copy)}; tests that flip cfg flags restore them."""
    out = {}
    for name, make in (("qwen2", _hf_qwen2), ("llama", _hf_llama)):
        hf = make()
        out[name] = (hf, _avlens_from_causal_lm(hf))
    return out


def _left_padded_tokens(seed=0):
    gen = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, V1D, (2, 13), generator=gen)
    am = torch.ones_like(tok)
    am[1, :4] = 0
    tok[1, :4] = 0  # pad id
    return tok, am


def _hf_positions(am):
    """HF generate's position ids for a left-padded batch: running count of real tokens."""
    return (am.cumsum(-1) - 1).masked_fill(am == 0, 1)


@pytest.mark.parametrize("path", ["sdpa", "eager", "ungrouped_kv"])
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_1d_backbone_logits_equal_hf_causal_lm_left_padded(arch, path, backbones):
    hf, model = backbones[arch]
    assert (model.blocks[0].attn.q_proj.bias is not None) == (arch == "qwen2")
    tok, am = _left_padded_tokens()
    valid = am.bool()
    with torch.no_grad():
        ref = hf(input_ids=tok, attention_mask=am, position_ids=_hf_positions(am)).logits
        ref_default_pos = hf(input_ids=tok, attention_mask=am).logits
        old = (model.cfg.use_attn_eager, model.cfg.ungroup_grouped_query_attention)
        model.cfg.use_attn_eager = path == "eager"
        model.cfg.ungroup_grouped_query_attention = path == "ungrouped_kv"
        try:
            got = model(tok, attention_mask=am)
        finally:
            model.cfg.use_attn_eager, model.cfg.ungroup_grouped_query_attention = old
    assert got.shape == ref.shape
    torch.testing.assert_close(got[valid], ref[valid], rtol=0, atol=1e-4)
    # 1-D RoPE is shift invariant: HF's default arange positions give the same logits
    torch.testing.assert_close(got[valid], ref_default_pos[valid], rtol=0, atol=1e-4)
    # the unpadded sample alone gives the same logits as inside the padded batch
    with torch.no_grad():
        alone = model(tok[1:, 4:])
    torch.testing.assert_close(alone[0], ref[1, 4:], rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_1d_backbone_greedy_generate_equals_hf_generate_left_padded(arch, backbones):
    hf, model = backbones[arch]
    tok, am = _left_padded_tokens(seed=1)
    n_new = 4
    with torch.no_grad():
        ref = hf.generate(
            input_ids=tok, attention_mask=am, max_new_tokens=n_new, min_new_tokens=n_new,
            do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0,
            eos_token_id=None,
        )
    out = model.generate(model.text_batch(tok, am), max_new_tokens=n_new)
    ref_tokens = ref.sequences[:, tok.shape[1]:]
    ref_logits = torch.stack(ref.logits, dim=1)
    assert torch.equal(out.tokens, ref_tokens)
    torch.testing.assert_close(out.logits, ref_logits, rtol=0, atol=1e-4)
    assert torch.equal(out.sequences, ref.sequences)


# =============================================================================================
# 2. Rotary embeddings vs HF
# =============================================================================================


def _rand_pos3(b, p, seed, hi=300):
    return torch.randint(0, hi, (3, b, p), generator=torch.Generator().manual_seed(seed))


def _hf_interleaved_rotary(ref: str, sec, hd, theta):
    if ref == "qwen3_vl":
        from transformers import Qwen3VLTextConfig
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding as Emb

        Cfg = Qwen3VLTextConfig
    else:
        from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeTextConfig as Cfg
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
            Qwen3OmniMoeThinkerTextRotaryEmbedding as Emb,
        )
    cfg = Cfg(
        hidden_size=hd * 2, num_attention_heads=2, num_key_value_heads=2, head_dim=hd,
        rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": list(sec), "mrope_interleaved": True},
    )
    emb = Emb(cfg)
    assert list(emb.mrope_section) == list(sec)
    return emb


def _hf_contiguous_rotary(sec, hd, theta):
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniTextConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniRotaryEmbedding

    cfg = Qwen2_5OmniTextConfig(
        hidden_size=hd * 2, num_attention_heads=2, num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": list(sec)},
    )
    emb = Qwen2_5OmniRotaryEmbedding(cfg)
    assert list(emb.mrope_section) == list(sec)
    return emb


def _avlens_rotary(kind, hd, theta, sec=None):
    return Rotary(avlens.AVConfig(d_model=hd * 2, d_head=hd, n_heads=2, rope_kind=kind, mrope_section=sec, rope_theta=theta))


INTERLEAVED_CASES = [([24, 20, 20], 128), ([2, 3, 3], 16), ([4, 2, 2], 16), ([6, 5, 5], 32)]
CONTIGUOUS_CASES = [([16, 24, 24], 128), ([2, 3, 3], 16), ([4, 6, 6], 32), ([1, 1, 2], 8)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ref", ["qwen3_vl", "qwen3_omni_moe"])
@pytest.mark.parametrize("sec,hd", INTERLEAVED_CASES)
def test_interleaved_mrope_cos_sin_equal_hf_qwen3(sec, hd, ref, dtype):
    theta = 1e6
    hf = _hf_interleaved_rotary(ref, sec, hd, theta)
    av = _avlens_rotary("mrope_interleaved", hd, theta, sec)
    pos = _rand_pos3(2, 11, seed=hd + sum(sec))
    x = torch.zeros(2, 11, hd, dtype=dtype)
    cos_h, sin_h = hf(x, pos.clone())
    cos_a, sin_a = av(pos.clone(), dtype)
    assert cos_a.dtype == dtype and cos_a.shape == cos_h.shape == (2, 11, hd)
    torch.testing.assert_close(cos_a, cos_h, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin_a, sin_h, rtol=0, atol=1e-6)
    # text-only [b, p] positions (same on all three axes) are broadcast like HF
    pos2 = pos[0]
    cos_h2, sin_h2 = hf(x, pos2.clone())
    cos_a2, sin_a2 = av(pos2.clone(), dtype)
    torch.testing.assert_close(cos_a2, cos_h2, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin_a2, sin_h2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sec,hd", CONTIGUOUS_CASES)
def test_contiguous_mrope_cos_sin_equal_hf_qwen2_5_omni(sec, hd, dtype):
    theta = 1e6
    hf = _hf_contiguous_rotary(sec, hd, theta)
    av = _avlens_rotary("mrope", hd, theta, sec)
    pos = _rand_pos3(3, 9, seed=7 + hd)
    x = torch.zeros(3, 9, hd, dtype=dtype)
    cos_h, sin_h = hf(x, pos.clone())
    cos_a, sin_a = av(pos.clone(), dtype)
    torch.testing.assert_close(cos_a, cos_h, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin_a, sin_h, rtol=0, atol=1e-6)
    cos_h2, sin_h2 = hf(x, pos[0].clone())
    cos_a2, sin_a2 = av(pos[0].clone(), dtype)
    torch.testing.assert_close(cos_a2, cos_h2, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin_a2, sin_h2, rtol=0, atol=1e-6)


def test_1d_rotary_cos_sin_equal_hf_qwen2():
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    c = Qwen2Config(hidden_size=64, num_attention_heads=4, rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    hf = Qwen2RotaryEmbedding(c)
    pos = torch.randint(0, 300, (2, 11), generator=torch.Generator().manual_seed(0))
    cos_h, sin_h = hf(torch.zeros(2, 11, 16), pos)
    av = _avlens_rotary("1d", 16, 1e4)
    cos_a, sin_a = av(pos, torch.float32)
    torch.testing.assert_close(cos_a, cos_h, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin_a, sin_h, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kind,sec,hd",
    [("mrope_interleaved", [24, 20, 20], 128), ("mrope_interleaved", [2, 3, 3], 16), ("mrope", [2, 3, 3], 16), ("mrope", [16, 24, 24], 128)],
)
def test_apply_rotary_equals_hf_apply_rotary_pos_emb(kind, sec, hd):
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import apply_rotary_pos_emb as omni_apply
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb as vl_apply

    theta = 1e6
    if kind == "mrope":
        hf_emb, hf_apply = _hf_contiguous_rotary(sec, hd, theta), omni_apply
    else:
        hf_emb, hf_apply = _hf_interleaved_rotary("qwen3_vl", sec, hd, theta), vl_apply
    gen = torch.Generator().manual_seed(hd)
    b, p, h, g = 2, 7, 4, 2
    q = torch.randn(b, p, h, hd, generator=gen)  # avlens layout [b, p, heads, e]
    k = torch.randn(b, p, g, hd, generator=gen)
    pos = _rand_pos3(b, p, seed=hd + 1)
    cos_h, sin_h = hf_emb(q, pos.clone())
    # HF layout [b, heads, p, e] with unsqueeze_dim=1
    q_h, k_h = hf_apply(q.transpose(1, 2), k.transpose(1, 2), cos_h, sin_h, unsqueeze_dim=1)
    cos_a, sin_a = _avlens_rotary(kind, hd, theta, sec)(pos.clone(), torch.float32)
    q_a, k_a = apply_rotary(q, cos_a, sin_a), apply_rotary(k, cos_a, sin_a)
    torch.testing.assert_close(q_a, q_h.transpose(1, 2), rtol=0, atol=1e-5)
    torch.testing.assert_close(k_a, k_h.transpose(1, 2), rtol=0, atol=1e-5)


# =============================================================================================
# 3. Sampling in generate
# =============================================================================================


def _brute_force_allowed(logits_row: torch.Tensor, temperature: float, top_k, top_p):
    """(allowed token set, {token: probability}) by explicit loops, in float64."""
    z = [float(v) / temperature for v in logits_row.double()]
    order = sorted(range(len(z)), key=lambda i: -z[i])
    keep = list(order)
    if top_k is not None:
        kth = z[order[min(top_k, len(z)) - 1]]
        keep = [i for i in order if z[i] >= kth]
    m = max(z[i] for i in keep)
    w = {i: torch.tensor(z[i] - m, dtype=torch.float64).exp().item() for i in keep}
    s = sum(w.values())
    probs = {i: w[i] / s for i in keep}
    if top_p is not None:
        nucleus, mass = [], 0.0
        for i in keep:  # descending
            if mass < top_p or not nucleus:
                nucleus.append(i)
            mass += probs[i]
        s = sum(probs[i] for i in nucleus)
        probs = {i: probs[i] / s for i in nucleus}
        keep = nucleus
    return set(keep), probs


def _hf_warped_allowed(logits_row: torch.Tensor, temperature: float, top_k, top_p):
    """Allowed set and probabilities from HF's logits warpers (the order generate applies them)."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    s = logits_row.double()[None].clone()
    s = TemperatureLogitsWarper(temperature)(None, s)
    if top_k is not None:
        s = TopKLogitsWarper(top_k)(None, s)
    if top_p is not None:
        s = TopPLogitsWarper(top_p)(None, s)
    p = s.softmax(-1)[0]
    return set(torch.isfinite(s[0]).nonzero().flatten().tolist()), p


@pytest.fixture(scope="module")
def av_batch(hf_thinker, hooked_model):
    hf, model = hf_thinker(VARIANT), hooked_model(VARIANT)
    inputs = make_inputs(hf.config, "audio_video", batch=2)
    return inputs, model.prepare(**inputs)


def test_sampling_is_seeded_and_top_k_1_is_greedy(hooked_model, av_batch, hf_thinker):
    model = hooked_model(VARIANT)
    inputs, batch = av_batch
    greedy = model.generate(batch, max_new_tokens=5)
    # the step logits of the first step are HF's last-position logits
    ref = run_hf(hf_thinker(VARIANT), inputs)[:, -1]
    torch.testing.assert_close(greedy.logits[:, 0], ref, rtol=0, atol=1e-4)

    k1 = model.generate(batch, max_new_tokens=5, do_sample=True, top_k=1, seed=0, temperature=2.0)
    assert torch.equal(k1.tokens, greedy.tokens)
    torch.testing.assert_close(k1.logits, greedy.logits, rtol=0, atol=1e-5)
    tiny_p = model.generate(batch, max_new_tokens=5, do_sample=True, top_p=1e-6, seed=1)
    assert torch.equal(tiny_p.tokens, greedy.tokens)

    kw = dict(max_new_tokens=5, do_sample=True, temperature=3.0)
    a = model.generate(batch, seed=3, **kw)
    b = model.generate(batch, seed=3, **kw)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    others = [model.generate(batch, seed=s, **kw).tokens for s in (4, 5, 6)]
    assert any(not torch.equal(o, a.tokens) for o in others), "different seeds gave identical samples"


def test_sampling_without_seed_uses_the_global_torch_rng(hooked_model, av_batch):
    """Like HF generate: torch.manual_seed makes unseeded sampling reproducible, and different
    global seeds (or successive calls) give different draws."""
    model = hooked_model(VARIANT)
    _, batch = av_batch
    kw = dict(max_new_tokens=6, do_sample=True, temperature=5.0)
    torch.manual_seed(123)
    a = model.generate(batch, **kw).tokens
    torch.manual_seed(123)
    b = model.generate(batch, **kw).tokens
    assert torch.equal(a, b)
    draws = []
    for s in (1, 2, 3):
        torch.manual_seed(s)
        draws.append(model.generate(batch, **kw).tokens)
    assert any(not torch.equal(d, draws[0]) for d in draws[1:]), (
        "generate(do_sample=True) without seed= ignores torch.manual_seed and returns the same "
        "draws every time"
    )


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(1.0, 5, None), (2.0, None, 0.6), (1.5, 12, 0.8), (0.7, None, 0.95)],
)
def test_sampled_tokens_lie_in_top_k_nucleus_set_of_step_logits(hooked_model, av_batch, temperature, top_k, top_p):
    model = hooked_model(VARIANT)
    _, batch = av_batch
    for seed in range(4):
        out = model.generate(batch, max_new_tokens=4, do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        assert out.tokens.shape == (2, 4) and out.logits.shape[:2] == (2, 4)
        for i in range(2):
            for s in range(4):
                allowed, _ = _brute_force_allowed(out.logits[i, s], temperature, top_k, top_p)
                hf_allowed, _ = _hf_warped_allowed(out.logits[i, s], temperature, top_k, top_p)
                assert allowed == hf_allowed  # the brute-force reference agrees with HF's warpers
                if top_k is not None:
                    assert len(allowed) <= top_k
                assert int(out.tokens[i, s]) in allowed, (seed, i, s)


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(1.0, None, None), (2.0, 10, None), (1.5, None, 0.7), (3.0, 15, 0.9)],
)
def test_empirical_sampling_distribution_matches_restricted_softmax(hooked_model, hf_thinker, temperature, top_k, top_p):
    model = hooked_model(VARIANT)
    n = 2000
    gen = torch.Generator().manual_seed(11)
    prompt = torch.randint(0, 180, (1, 10), generator=gen)
    out = model.generate(prompt.expand(n, -1).contiguous(), max_new_tokens=1, do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, seed=5)
    # the step logits are HF's
    ref = run_hf(hf_thinker(VARIANT), dict(input_ids=prompt, attention_mask=torch.ones_like(prompt)))[0, -1]
    torch.testing.assert_close(out.logits[0, 0], ref, rtol=0, atol=1e-4)
    allowed, probs = _brute_force_allowed(ref, temperature, top_k, top_p)
    hf_allowed, hf_p = _hf_warped_allowed(ref, temperature, top_k, top_p)
    assert allowed == hf_allowed
    expected = torch.zeros(ref.shape[-1], dtype=torch.float64)
    for t, pr in probs.items():
        expected[t] = pr
    torch.testing.assert_close(expected, hf_p, rtol=0, atol=1e-9)
    assert 2 <= len(allowed), "degenerate case: pick a flatter distribution"
    toks = out.tokens[:, 0]
    assert set(toks.tolist()) <= allowed
    emp = torch.bincount(toks, minlength=ref.shape[-1]).double() / n
    assert (emp - expected).abs().max().item() < 0.05
    # Pearson chi-square over tokens with expected count >= 5 (others pooled): loose bound
    cnt = emp * n
    exp_cnt = expected * n
    big = exp_cnt >= 5
    obs = torch.cat([cnt[big], cnt[~big].sum()[None]])
    ex = torch.cat([exp_cnt[big], exp_cnt[~big].sum()[None]])
    nz = ex > 0
    chi2 = (((obs - ex) ** 2)[nz] / ex[nz]).sum().item()
    dof = int(nz.sum()) - 1
    assert chi2 < dof + 5 * (2 * dof) ** 0.5 + 5, (chi2, dof)
    # every allowed token expected >= 10 times is drawn (catches a nucleus that drops the token
    # crossing top_p, whose mass is too small for the max-diff bound)
    likely = (exp_cnt >= 10).nonzero().flatten().tolist()
    assert all(cnt[t] > 0 for t in likely), [t for t in likely if cnt[t] == 0]


def test_top_k_larger_than_vocab_behaves_like_hf_no_top_k(hooked_model, av_batch):
    """HF's TopKLogitsWarper clamps top_k to the vocabulary size."""
    model = hooked_model(VARIANT)
    _, batch = av_batch
    V = model.cfg.d_vocab_out
    out = model.generate(batch, max_new_tokens=3, do_sample=True, top_k=V + 50, seed=2)
    for i in range(2):
        for s in range(3):
            allowed, _ = _hf_warped_allowed(out.logits[i, s], 1.0, V + 50, None)
            assert len(allowed) == V and int(out.tokens[i, s]) in allowed


# =============================================================================================
# 4. Tokenizer paths
# =============================================================================================


@pytest.fixture(scope="module")
def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(50)}
    vocab.update({"<pad>": 50, "<unk>": 51, "<sep>": 52, "<bos>": 53})
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=t, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
        additional_special_tokens=["<sep>"],
    )
    assert tok.padding_side == "right"
    assert set(tok.all_special_ids) == {50, 51, 52, 53}
    return tok


@pytest.fixture
def tok_model(hf_thinker, word_tokenizer):
    """A model sharing the cached HF thinker's weights, with the word tokenizer."""
    return avlens.HookedAVTransformer.from_hf(hf_thinker(VARIANT), tokenizer=word_tokenizer)


def test_to_tokens_left_pads_and_restores_tokenizer_padding_side(tok_model, word_tokenizer):
    texts = ["w1 w2 w3", "w4 w5"]
    ids = tok_model.to_tokens(texts)
    assert ids.tolist() == [[1, 2, 3], [50, 4, 5]]
    word_tokenizer.padding_side = "left"
    try:
        ref = word_tokenizer(texts, return_tensors="pt", padding=True)["input_ids"]
    finally:
        word_tokenizer.padding_side = "right"
    assert torch.equal(ids, ref)
    assert word_tokenizer.padding_side == "right"
    assert tok_model.to_tokens("w7 w8").tolist() == [[7, 8]]
    assert tok_model.to_tokens(texts, padding_side="right").tolist() == [[1, 2, 3], [4, 5, 50]]
    assert word_tokenizer.padding_side == "right"


def test_string_input_equals_hf_on_same_ids_and_mask(tok_model, hf_thinker, word_tokenizer):
    texts = ["w1 w2 w9 w3", "w3", "w4 <sep> w5"]
    with torch.no_grad():
        got = tok_model(texts)
    ids = torch.tensor([[1, 2, 9, 3], [50, 50, 50, 3], [50, 4, 52, 5]])
    am = (torch.arange(4)[None] >= torch.tensor([[0], [3], [1]])).long()
    ref = run_hf(hf_thinker(VARIANT), dict(input_ids=ids, attention_mask=am))
    valid = am.bool()
    torch.testing.assert_close(got[valid], ref[valid], rtol=0, atol=1e-4)
    # a single string
    with torch.no_grad():
        one = tok_model("w4 w5")
    ref1 = run_hf(hf_thinker(VARIANT), dict(input_ids=torch.tensor([[4, 5]]), attention_mask=torch.ones(1, 2, dtype=torch.long)))
    torch.testing.assert_close(one, ref1, rtol=0, atol=1e-4)
    assert word_tokenizer.padding_side == "right"


def test_to_str_tokens_and_to_single_token(tok_model, word_tokenizer):
    assert tok_model.to_str_tokens("w1 w2 w3") == ["w1", "w2", "w3"]
    assert tok_model.to_str_tokens("w1 <sep> w3", with_groups=True) == [("w1", "text"), ("<sep>", "special"), ("w3", "text")]
    pairs = tok_model.to_str_tokens(["w1 w2 w3", "w4 w5"], sample=1, with_groups=True)
    ids = [50, 4, 5]
    assert [s for s, _ in pairs] == [word_tokenizer.decode([i]) for i in ids]
    assert [g for _, g in pairs] == ["pad", "text", "text"]
    assert tok_model.to_single_token("w3") == word_tokenizer.convert_tokens_to_ids("w3") == 3
    assert tok_model.to_single_token("<sep>") == 52
    with pytest.raises(ValueError):
        tok_model.to_single_token("w1 w2")


def test_tokens_to_residual_directions_of_a_string_give_hf_logit(tok_model, hf_thinker):
    hf = hf_thinker(VARIANT)
    d = tok_model.tokens_to_residual_directions("w3")
    lm = hf.model.language_model
    ref = hf.lm_head.weight[3].detach() * lm.norm.weight.detach()
    assert d.shape == (tok_model.cfg.d_model,)
    torch.testing.assert_close(d, ref, rtol=0, atol=1e-6)
    # dot with HF's RMS-normalised final residual (before the norm weight) is HF's logit
    seen = {}
    h = lm.norm.register_forward_pre_hook(lambda mod, args: seen.__setitem__("x", args[0].detach()))
    try:
        ids = torch.tensor([[1, 2, 9, 4]])
        logits = run_hf(hf, dict(input_ids=ids, attention_mask=torch.ones_like(ids)))
    finally:
        h.remove()
    x = seen["x"][0, -1]
    normed = x / (x.pow(2).mean() + lm.norm.variance_epsilon).sqrt()
    torch.testing.assert_close(normed @ d, logits[0, -1, 3], rtol=0, atol=1e-4)
    several = tok_model.tokens_to_residual_directions(torch.tensor([3, 7]))
    assert several.shape == (2, tok_model.cfg.d_model)
    torch.testing.assert_close(several[0], ref, rtol=0, atol=1e-6)


def test_tokenizer_special_ids_land_in_special_group(tok_model, word_tokenizer):
    ids = torch.tensor([[53, 1, 52, 2, 51], [50, 50, 53, 3, 4]])
    am = (ids != 50).long()
    am[0] = 1
    batch = tok_model.text_batch(ids, am)
    lay = batch.layout
    special_ids = set(word_tokenizer.all_special_ids)
    for b in range(2):
        for p in range(5):
            t, real = int(ids[b, p]), bool(am[b, p])
            expect = "pad" if not real else ("special" if t in special_ids else "text")
            assert lay.labels(b)[p] == expect, (b, p, t)
    # a string containing special tokens
    b2 = tok_model._to_batch(["<bos> w1 <sep> w2", "w3 <unk>"])
    assert b2.layout.mask("special").tolist() == [[True, False, True, False], [False, False, False, True]]
    assert b2.layout.mask("pad").tolist() == [[False] * 4, [True, True, False, False]]


# =============================================================================================
# 5. Backward hook on a group view vs autograd through the HF thinker
# =============================================================================================


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("kind", ["audio_video", "audio_in_video"])
def test_bwd_hook_on_resid_mid_audio_view_equals_hf_autograd(kind, layer, hf_thinker, hooked_model):
    """The tiny thinker has 2 layers, so below layer 1's attention nothing mixes positions any
    more: the gradient at the audio positions of blocks.1.hook_resid_mid is exactly 0 (HF agrees);
    layer 0 carries a real signal through layer 1's attention."""
    hf, model = hf_thinker(VARIANT), hooked_model(VARIANT)
    inputs, meta = make_inputs_and_meta(hf.config, kind, batch=1, seed=2)
    audio_pos = [p for a in meta["samples"][0]["audio"] for p in a["positions"]]
    assert len(audio_pos) > 0
    answer = 17
    lm = hf.model.language_model
    params = list(hf.parameters())
    try:
        # HF: gradient of logits[0, -1, answer] w.r.t. the input of the layer's post-attention norm
        seen = {}

        def pre(mod, args):
            args[0].retain_grad()
            seen["resid_mid"] = args[0]

        h = lm.layers[layer].post_attention_layernorm.register_forward_pre_hook(pre)
        try:
            hf.model.rope_deltas = None
            hf_logits = hf(**inputs, use_cache=False).logits
            hf.model.rope_deltas = None
        finally:
            h.remove()
        hf_logits[0, -1, answer].backward()
        hf_grad = seen["resid_mid"].grad.detach().clone()  # [1, L, d]
        for p in params:
            p.grad = None

        # avlens: a backward hook on the audio view of blocks.1.hook_resid_mid
        grads, full = [], []
        batch = model.prepare(**inputs)
        with model.hooks(bwd_hooks=[
            (f"blocks.{layer}.hook_resid_mid.audio", lambda g, hook: grads.append(g.detach().clone())),
            (f"blocks.{layer}.hook_resid_mid", lambda g, hook: full.append(g.detach().clone())),
        ]):
            logits = model(batch)
            loss = logits[0, -1, answer]
            loss.backward()
        torch.testing.assert_close(logits.detach(), hf_logits.detach(), rtol=0, atol=1e-4)
    finally:
        for p in params:
            p.grad = None
        for p in model.parameters():
            p.grad = None
    assert len(grads) == 1 and len(full) == 1
    g = grads[0]
    assert g.shape == (1, len(audio_pos), model.cfg.d_model)
    ref = hf_grad[0, audio_pos]
    if layer == 0:
        assert ref.abs().max() > 1e-3  # a real signal reaches the audio positions
    else:
        assert ref.abs().max() == 0
    torch.testing.assert_close(g[0], ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(full[0], hf_grad, rtol=0, atol=1e-4)
    assert all(not hp.bwd_hooks for hp in model.hook_points())
