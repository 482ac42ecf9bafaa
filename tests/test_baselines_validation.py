"""The contrastive baselines' argument checks, MAD's official self-assessment prompt, and PAI's
attention boost on its own (`PAI.fwd_hooks`).

References: the allowed ranges are the ones the formulas need (log(beta) needs beta > 0, a boost or
contrast weight below 0 reverses the method, VCD's schedule has 1,000 steps); MAD's prompt is
typed out from top-yun/MAD (`qwen-omni/utils.py`: ``"Question: " + question + "\\n" +
MODALITY_QUERY_PROMPT`` after the video); PAI's boost is recomputed by loops from the toy's cached
unsteered attention scores (`s + alpha |s|` on the last query's media keys, layers 2..L-1)."""

import math

import numpy as np
import pytest
import torch

from avlens.mitigation import AVPrompt, NothingToSteer, decode, default_methods
from avlens.mitigation.baselines import (AVCD, MAD, MAD_MODALITY_QUERY, PAI, VCD, official_assessment,
                                         toy_assessment)

# ------------------------------------------------------------------------- argument checks

BAD = [
    # (constructor, kwargs, words the message must contain)
    (PAI, dict(alpha=-0.1), ["PAI alpha", ">= 0", "default is 0.2", "-0.1"]),
    (PAI, dict(alpha=float("inf")), ["PAI alpha", "finite", "default is 0.2"]),
    (PAI, dict(gamma=-1.0), ["PAI gamma", ">= 0", "default is 1.1"]),
    (PAI, dict(beta=0.0), ["PAI beta", "in (0, 1]", "log(beta)", "default is 0.1"]),
    (PAI, dict(beta=1.5), ["PAI beta", "in (0, 1]", "default is 0.1"]),
    (PAI, dict(beta=float("nan")), ["PAI beta", "default is 0.1"]),
    (PAI, dict(start_layer=-1), ["PAI start_layer", "integer >= 0", "default is 2"]),
    (PAI, dict(start_layer=2.5), ["PAI start_layer", "integer", "default is 2"]),
    (PAI, dict(strip="no"), ["PAI strip", "function"]),
    (VCD, dict(alpha=-1), ["VCD alpha", ">= 0", "default is 1"]),
    (VCD, dict(beta=0), ["VCD beta", "in (0, 1]", "default is 0.1"]),
    (VCD, dict(beta=-0.5), ["VCD beta", "default is 0.1"]),
    (VCD, dict(noise_step=1000), ["VCD noise_step", "[0, 1000)", "default is 500"]),
    (VCD, dict(noise_step=-1), ["VCD noise_step", "default is 500"]),
    (VCD, dict(modalities=("audio", "text")), ["VCD modalities", "('audio', 'video', 'image')", "('audio', 'text')"]),
    (VCD, dict(modalities=()), ["VCD modalities", "at least one"]),
    (VCD, dict(modalities=("video", "video")), ["VCD modalities", "distinct"]),
    (VCD, dict(modalities="audio"), ["VCD modalities", "('audio',)", "not the string"]),
    (VCD, dict(seed=1.5), ["VCD seed", "integer"]),
    (AVCD, dict(alpha=-0.5), ["AVCD alpha", ">= 0", "default is 0.5"]),
    (AVCD, dict(beta=0.0), ["AVCD beta", "in (0, 1]", "default is 0.2"]),
    (AVCD, dict(beta=2.0), ["AVCD beta", "default is 0.2"]),
    (AVCD, dict(entropy_threshold=-0.1), ["AVCD entropy_threshold", ">= 0", "default is 0.6"]),
    (AVCD, dict(quantile=1.5), ["AVCD quantile", "in [0, 1]", "default is 0.5"]),
    (AVCD, dict(layers=[]), ["AVCD layers", "at least one"]),
    (AVCD, dict(layers=[0, -1]), ["AVCD layers", ">= 0"]),
    (AVCD, dict(layers=[1, 1]), ["AVCD layers", "distinct"]),
    (AVCD, dict(fill=1.0), ["AVCD fill", "<= 0", "-1e-4"]),
    (AVCD, dict(fill=float("nan")), ["AVCD fill", "<= 0"]),
    (MAD, dict(gamma=-0.5), ["MAD gamma", ">= 0", "default is 0.5"]),
    (MAD, dict(assessment="which modality?"), ["MAD assessment", "function", "official_assessment"]),
    (MAD, dict(words=("audio", "video")), ["MAD words", "three distinct", "('audio', 'video', 'both')"]),
    (MAD, dict(words=("audio", "audio", "both")), ["MAD words", "three distinct"]),
    (MAD, dict(words="avb"), ["MAD words", "three distinct"]),
]


@pytest.mark.parametrize("cls, kwargs, words", BAD, ids=[f"{c.__name__}-{next(iter(k))}-{i}" for i, (c, k, _) in enumerate(BAD)])
def test_out_of_range_arguments_are_rejected_at_construction(cls, kwargs, words):
    with pytest.raises(ValueError) as e:
        cls(**kwargs)
    msg = str(e.value)
    for w in words:
        assert w in msg, (w, msg)


def test_edge_values_inside_the_ranges_are_accepted():
    PAI(alpha=0, gamma=0, beta=1.0, start_layer=0)
    VCD(alpha=0, beta=1, noise_step=0, modalities=("image",))
    VCD(noise_step=999, modalities=["audio", "video", "image"])
    AVCD(alpha=0, beta=1.0, entropy_threshold=0, quantile=0, layers=[0, 3], fill=-1e-4)
    AVCD(quantile=1, fill=0.0)
    MAD(gamma=0, words=["audio", "video", "both"])
    PAI(alpha=np.float32(0.3), start_layer=np.int64(1))  # numpy scalars are numbers too
    AVCD(layers=np.arange(3).tolist()), AVCD(layers=list(np.arange(3)))
    # the defaults are the published ones
    p, v, a, m = PAI(), VCD(), AVCD(), MAD()
    assert (p.alpha, p.gamma, p.beta, p.start_layer) == (0.2, 1.1, 0.1, 2)
    assert (v.alpha, v.beta, v.noise_step, v.modalities) == (1.0, 0.1, 500, ("audio", "video"))
    assert (a.alpha, a.beta, a.entropy_threshold, a.quantile, a.layers, a.fill) == (0.5, 0.2, 0.6, 0.5, None, float("-inf"))
    assert (m.gamma, m.words) == (0.5, ("audio", "video", "both"))


# ------------------------------------------------------------------- MAD's official prompt

def test_official_assessment_is_mads_head_prompt():
    """Qwen2.5-Omni's chat text for MAD's yes/no question, then the head prompt MAD's
    `mm_contrast_decode_qwen` builds from it, both typed out by hand."""
    assert MAD_MODALITY_QUERY == "To answer this question, which modality is needed (audio, video, or both): "
    q = "Is there a dog barking? Answer only 'Yes' or 'No'. Do not include any explanation."
    system = "<|im_start|>system\nYou are Qwen.<|im_end|>\n"
    media = "<|vision_bos|><|VIDEO|><|vision_eos|>"
    text = f"{system}<|im_start|>user\n{media}{q}<|im_end|>\n<|im_start|>assistant\n"
    want = (f"{system}<|im_start|>user\n{media}Question: {q}\n"
            "To answer this question, which modality is needed (audio, video, or both): <|im_end|>\n<|im_start|>assistant\n")
    assert official_assessment(AVPrompt(text)) == want
    assert official_assessment(text) == want
    # separate audio and video placeholders: the question is after the last one
    two = f"<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>{media}{q}<|im_end|>\n<|im_start|>assistant\n"
    assert official_assessment(two) == (f"<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>{media}Question: {q}\n"
                                        f"{MAD_MODALITY_QUERY}<|im_end|>\n<|im_start|>assistant\n")
    # VideoLLaMA2's `<video>\n` + question: the newline after the media is kept
    assert official_assessment("<video>\nIs it raining?") == f"<video>\nQuestion: Is it raining?\n{MAD_MODALITY_QUERY}"
    # the toy's space-separated chat text
    toy = "<|im_start|> user <|vision_bos|><|VIDEO|><|vision_eos|> is there a dog ? <|im_end|> <|im_start|> assistant"
    assert official_assessment(toy) == ("<|im_start|> user <|vision_bos|><|VIDEO|><|vision_eos|> Question: is there a dog ?\n"
                                        f"{MAD_MODALITY_QUERY}<|im_end|> <|im_start|> assistant")


def test_official_assessment_errors_name_the_fix():
    with pytest.raises(ValueError, match="no media placeholder.*MAD\\(assessment="):
        official_assessment("<|im_start|>user\nIs there a dog?<|im_end|>")
    with pytest.raises(ValueError, match="no question between the last media placeholder"):
        official_assessment("<|im_start|>user\nIs there a dog? <|vision_bos|><|VIDEO|><|vision_eos|> <|im_end|>")


def test_default_methods_choose_the_assessment():
    assert default_methods()["mad"].assessment is official_assessment
    assert default_methods(toy=True)["mad"].assessment is toy_assessment


# ------------------------------------------------------------------------ on the toy model

def test_pai_boost_equals_brute_force_on_unsteered_scores(toy, prompt):
    """`PAI.fwd_hooks` alone, one layer at a time (so the reference is that layer's unsteered
    input): the cached clean scores with `s + alpha |s|` written by loops into the last query's row
    at the media (audio + video) keys, in layers 2..L-1 only; nothing else changes."""
    alpha = 0.2
    batch = prompt.build(toy)
    L, n = toy.cfg.n_layers, batch.shape[1]
    hooks = PAI(alpha=alpha).fwd_hooks(toy, batch)
    names = [f"blocks.{l}.attn.hook_attn_scores" for l in range(L)]
    assert sorted({h[0] for h in hooks}) == sorted(names[2:])  # layers 0 and 1 untouched
    labels = batch.layout.labels(0)
    media = [k for k in range(n) if labels[k] in ("audio", "video")]
    assert media and labels[n - 1] == "text"
    _, clean = toy.run_with_cache(batch, names_filter=names)
    for l in range(2, L):
        got = {}
        mine = [h for h in hooks if h[0] == names[l]]
        toy.run_with_hooks(batch, fwd_hooks=mine + [(names[l], lambda s, hook: got.setdefault("s", s.clone()))])
        ref = clean[names[l]].clone()
        H = ref.shape[1]
        for h in range(H):
            for k in media:
                s = float(ref[0, h, n - 1, k])
                ref[0, h, n - 1, k] = s + alpha * abs(s)
        torch.testing.assert_close(got["s"], ref)
        assert not torch.equal(got["s"], clean[names[l]])
    assert not any(hp.fwd_hooks for hp in toy.hook_dict.values())


def test_pai_hooks_compose_with_generate(toy, prompt):
    """The boost alone through `model.generate(..., fwd_hooks=...)`: the first step's logits are the
    boosted forward's last logits, the decoding steps are boosted too, nothing stays registered;
    PAI's steered branch in `decode` uses the same hooks."""
    batch = prompt.build(toy)
    pai = PAI(alpha=1.0)
    hooks = pai.fwd_hooks(toy, batch)
    plain = toy.generate(batch, max_new_tokens=4)
    boosted = toy.generate(batch, max_new_tokens=4, fwd_hooks=hooks)
    ref = toy.run_with_hooks(batch, fwd_hooks=hooks)[:, -1]
    torch.testing.assert_close(boosted.logits[:, 0].float(), ref.float())
    assert not torch.allclose(boosted.logits[:, 0], plain.logits[:, 0])
    assert not torch.allclose(boosted.logits[:, 1:], plain.logits[:, 1:])  # decoding steps are boosted
    assert not any(hp.fwd_hooks for hp in toy.hook_dict.values())
    run = pai.start(toy, prompt, batch)
    assert [h[0] for h in run.branches[0].hooks] == [h[0] for h in hooks] and run.branches[1].hooks == []


def test_pai_without_media_or_layers_raises(toy, prompt):
    text_only = AVPrompt(prompt.text.split("<|vision_bos|>")[0] + " what is it ?")
    with pytest.raises(NothingToSteer, match="no media|have none"):
        PAI().fwd_hooks(toy, text_only.build(toy))
    L = toy.cfg.n_layers
    with pytest.raises(ValueError, match=f"start_layer={L} leaves no layer.*start_layer < {L}"):
        PAI(start_layer=L).fwd_hooks(toy, prompt.build(toy))


def test_mad_with_the_official_assessment_reads_its_prompt(toy, prompt):
    """MAD(assessment=official_assessment): p_a, p_v, p_b are the softmax of the toy's logits of
    "audio", "video", "both" after the official head prompt (recomputed from one forward)."""
    ids = [toy.tokenizer.encode(w, add_special_tokens=False)[0] for w in ("audio", "video", "both")]
    head = AVPrompt(official_assessment(prompt), audio=prompt.audio, video=prompt.video, fps=prompt.fps)
    assert "Question:" in head.text and MAD_MODALITY_QUERY in head.text
    z = toy.forward(head.build(toy))[0, -1].detach().double()
    e = [math.exp(float(z[i]) - max(float(z[j]) for j in ids)) for i in ids]
    want = torch.tensor([x / sum(e) for x in e], dtype=torch.float64)
    out = decode(toy, prompt, MAD(assessment=official_assessment), max_new_tokens=1)
    torch.testing.assert_close(out.run.probs[0].double(), want, rtol=1e-5, atol=1e-6)
    # and it differs from the toy's own question (a different prompt, different probabilities)
    toy_probs = decode(toy, prompt, MAD(assessment=toy_assessment), max_new_tokens=1).run.probs[0].double()
    assert not np.allclose(toy_probs.numpy(), want.numpy())
