"""Contrastive decoding baselines (METHODS.md section 7), each with its contrast as a pure function.

* `PAI` (Liu et al., ECCV 2024, *Paying More Attention to Image*; official code `LALBJ/PAI`): the
  boost `s += alpha |s|` on the media keys for the last query in layers 2..L-1 (`start_layer=2`,
  `end_layer` = depth), and `pai_contrast`: `gamma (log p - log p_uncond) + log p_uncond` with the
  media-free run, tokens with `log p < max log p + log beta` dropped. alpha 0.2, gamma 1.1 (the
  README; the script's default is 2), beta 0.1.
* `VCD` (Leng et al., CVPR 2024, *Visual Contrastive Decoding*; official code `DAMO-NLP-SG/VCD`):
  `vcd_contrast`: `(1 + alpha) z(v) - alpha z(v_noised)` with logits below `log beta + max z(v)`
  dropped; alpha 1, beta 0.1; the noised media is VCD's `add_diffusion_noise` (1,000 steps, sigmoid
  beta schedule from 1e-5 to 5e-3, step 500) applied to the encoders' inputs (pixel patches and
  log-mel features), here for audio and video.
* `AVCD` (Jung et al., NeurIPS 2025; official code `kaistmm/AVCD`): dominant modality from last-query
  attention, three branches with the other modalities' most attended tokens masked,
  `avcd_contrast`: `(2 + 2 alpha) z - 2 alpha z1 + z2 + z3`, alpha 0.5, cutoff beta 0.2, plain logits
  where the entropy of `softmax(z)` < 0.6.
* `MAD` (arXiv 2601.21181; official code `top-yun/MAD`): the model's own audio / video / both
  self-assessment weights four branches (`mad_weights`), gamma 0.5.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from avlens.mitigation.decoding import AVPrompt, Branch, Method, MethodRun, NotApplicable, NothingToSteer
from avlens.mitigation.steering import _pad_keys, boost_hooks

__all__ = ["pai_contrast", "vcd_contrast", "diffusion_noise", "PAI", "VCD", "strip_media_placeholders", "avcd_contrast",
           "avcd_selection", "avcd_text_mask", "AVCD", "AVCD_PLAN", "mad_weights", "mad_contrast", "mad_word_ids", "MAD", "toy_assessment"]

_RAW_KEYS = {"audio": "input_features", "video": "pixel_values_videos", "image": "pixel_values"}
_PLACEHOLDER = re.compile(r"<\|(vision|audio)_bos\|>.*?<\|(vision|audio)_eos\|>\s*")


def strip_media_placeholders(text: str) -> str:
    """The prompt without its Qwen-Omni-style media placeholders (`<|vision_bos|>...<|vision_eos|>`)."""
    return _PLACEHOLDER.sub("", text)


def pai_contrast(logits: Tensor, logits_uncond: Tensor, gamma: float = 1.1, beta: float = 0.1) -> Tensor:
    """`gamma (lp - lp_u) + lp_u` on log-probabilities, -inf where `lp < max lp + log beta`."""
    lp, lu = F.log_softmax(logits.float(), -1), F.log_softmax(logits_uncond.float(), -1)
    out = gamma * (lp - lu) + lu
    return out.masked_fill(lp < lp.amax(-1, keepdim=True) + math.log(beta), float("-inf"))


def vcd_contrast(logits: Tensor, logits_noised: Tensor, alpha: float = 1.0, beta: float = 0.1) -> Tensor:
    """`(1 + alpha) z - alpha z_noised`, -inf where `z < max z + log beta` (VCD's cutoff on raw logits)."""
    z, zn = logits.float(), logits_noised.float()
    out = (1 + alpha) * z - alpha * zn
    return out.masked_fill(z < z.amax(-1, keepdim=True) + math.log(beta), float("-inf"))


def diffusion_noise(x: Tensor, noise_step: int = 500, num_steps: int = 1000, generator=None) -> Tensor:
    """VCD's `add_diffusion_noise`: `sqrt(abar_t) x + sqrt(1 - abar_t) eps` with
    `betas = sigmoid(linspace(-6, 6, num_steps)) (5e-3 - 1e-5) + 1e-5`."""
    if not 0 <= noise_step < num_steps:
        raise ValueError(f"noise_step must be in [0, {num_steps}), got {noise_step}")
    betas = torch.sigmoid(torch.linspace(-6, 6, num_steps)) * (0.5e-2 - 1e-5) + 1e-5
    abar = torch.cumprod(1 - betas, 0)[noise_step]
    eps = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
    return (abar.sqrt() * x.float() + (1 - abar).sqrt() * eps).to(x.dtype)


class _ContrastRun(MethodRun):
    def __init__(self, branches, fn):
        super().__init__(branches)
        self.fn = fn

    def combine(self, step, logits):
        return self.fn(logits[0], logits[1])


class PAI(Method):
    """PAI (ECCV 2024; `LALBJ/PAI`): media-key boost for the last query in layers `start_layer`..L-1
    plus the contrast with the media-free prompt (`pai_contrast`). Needs an `AVPrompt` (the
    media-free prompt is rebuilt with `strip` applied to its text)."""

    name = "pai"
    needs_prompt = True

    def __init__(self, alpha: float = 0.2, gamma: float = 1.1, beta: float = 0.1, start_layer: int = 2, strip=strip_media_placeholders):
        self.alpha, self.gamma, self.beta, self.start_layer, self.strip = alpha, gamma, beta, start_layer, strip

    def start(self, model, prompt, batch):
        lay = batch.layout
        keys = lay.mask("audio") | lay.mask("video") | lay.mask("image")
        layers = list(range(self.start_layer, model.cfg.n_layers))
        if not layers or not bool(keys.any(1).all()):
            raise NothingToSteer("PAI needs media tokens in every sample and start_layer < n_layers; it would change nothing")
        text = self.strip(prompt.text)
        if text == prompt.text:
            raise ValueError("PAI's media-free prompt equals the prompt: pass strip= that removes this family's media placeholders")
        uncond = prompt.build(model, text=text, audio=None, video=None)
        steered = Branch(batch, boost_hooks(batch, keys, layers, self.alpha, last_only=True), "steered")
        return _ContrastRun([steered, Branch(uncond, [], "media_free")], lambda a, b: pai_contrast(a, b, self.gamma, self.beta))


class VCD(Method):
    """Visual contrastive decoding (CVPR 2024; `DAMO-NLP-SG/VCD`), generalised to audio: the contrast
    with a run on diffusion-noised encoder inputs of `modalities` (`vcd_contrast`, `diffusion_noise`),
    seeded."""

    name = "vcd"

    def __init__(self, alpha: float = 1.0, beta: float = 0.1, noise_step: int = 500, modalities: Sequence[str] = ("audio", "video"), seed: int = 0):
        self.alpha, self.beta, self.noise_step, self.modalities, self.seed = alpha, beta, noise_step, tuple(modalities), seed

    def noised(self, model, batch):
        raw = dict(batch.raw or {})
        feats = dict(batch.features)
        gen = torch.Generator().manual_seed(self.seed)
        done = []
        for m in self.modalities:
            key = _RAW_KEYS[m]
            if raw.get(key) is None or int(batch.layout.counts(m).sum()) == 0:
                continue
            raw[key] = diffusion_noise(raw[key], self.noise_step, generator=gen)
            done.append(m)
        if not done or not hasattr(model, "encode_media"):
            raise NothingToSteer(f"VCD found no raw {self.modalities} inputs to noise in this batch (build it with prepare / prepare_media)")
        with torch.no_grad():
            fresh = model.encode_media(raw)
        for m in done:
            feats[m] = fresh[m].to(batch.features[m].dtype)
        return replace(batch, features=feats, raw=raw)

    def start(self, model, prompt, batch):
        return _ContrastRun([Branch(batch, [], "original"), Branch(self.noised(model, batch), [], "noised")],
                            lambda a, b: vcd_contrast(a, b, self.alpha, self.beta))


# ---------------------------------------------------------------------------------------------
# AVCD (Jung, Jang, Chung, NeurIPS 2025, arXiv 2505.20862; official code kaistmm/AVCD,
# `videollama2/__init__.py::mm_infer`)
# ---------------------------------------------------------------------------------------------

AVCD_MODALITIES = ("text", "video", "audio")
# the official branch plan: dominant modality -> (z1, z2, z3), each the modalities whose highly attended
# tokens are masked ("language": VA, A, V; "video": LA, A, L; "audio": LV, V, L)
AVCD_PLAN = {"text": (("video", "audio"), ("audio",), ("video",)),
             "video": (("text", "audio"), ("audio",), ("text",)),
             "audio": (("text", "video"), ("video",), ("text",))}


def avcd_contrast(z: Tensor, z1: Tensor, z2: Tensor, z3: Tensor, alpha: float = 0.5, beta: float = 0.2,
                  entropy_threshold: float = 0.6, fill: float = float("-inf")) -> Tensor:
    """AVCD's step: `(2 + 2 alpha) z - 2 alpha z1 + z2 + z3`, entries with `z < max z + log beta` set to
    `fill`; per sample, where the entropy (nats) of `softmax(z)` is below `entropy_threshold` the plain
    logits `z` are returned instead (the official entropy gate, which skips the cutoff too). The
    official code fills with -1e-4 (`fill=-1e-4` reproduces it); the default -inf is the paper's
    adaptive plausibility constraint."""
    z, z1, z2, z3 = (x.float() for x in (z, z1, z2, z3))
    out = (2 + 2 * alpha) * z - 2 * alpha * z1 + z2 + z3
    out = out.masked_fill(z < z.amax(-1, keepdim=True) + math.log(beta), fill)
    ent = -(F.softmax(z, -1) * F.log_softmax(z, -1)).sum(-1)
    return torch.where((ent < entropy_threshold)[:, None], z, out)


def avcd_text_mask(layout) -> Tensor:
    """`[b, n]`: the text after the last media token (the official code's "language" span: the
    prompt after the video and audio tokens, system text excluded)."""
    media = layout.mask("audio") | layout.mask("video") | layout.mask("image")
    pos = torch.arange(media.shape[1], device=media.device)
    last = torch.where(media, pos, torch.full_like(pos, -1)).amax(1)
    return layout.mask("text") & (pos[None, :] > last[:, None])


def avcd_selection(attn: Tensor, groups: dict, quantile: float = 0.5) -> tuple[list[str], Tensor, Tensor]:
    """The official selection (kaistmm/AVCD `videollama2/model/qwen.py`), from the original branch's
    last-query attention `attn [layer, b, head, k]` over the prefill, in the layers used (all but
    the last, by default) and bool token masks `groups[m] [b, k]` for m in text / video / audio:

    * dominant modality: the largest layer-mean of (head-mean attention summed over m's tokens / n_m);
    * threshold per sample: the head-mean of the `quantile` (median) over all keys of the layer-mean attention;
    * "highly attended" `[layer, b, head, k]`: tokens whose attention in that layer and head exceeds the threshold.

    Returns (dominant per sample, threshold `[b]`, highly attended)."""
    dominant = []
    head_mean = attn.float().mean(2)  # [l, b, k]
    for b in range(attn.shape[1]):
        per = {}
        for m in AVCD_MODALITIES:
            g = groups[m][b]
            if not bool(g.any()):
                raise NothingToSteer(f"AVCD needs text, video and audio tokens in every sample; sample {b} has no {m} tokens")
            per[m] = float((head_mean[:, b] * g).sum(-1).mean() / g.sum())
        dominant.append(max(AVCD_MODALITIES, key=lambda m: per[m]))
    thr = torch.quantile(attn.float().mean(0), quantile, dim=-1).mean(-1)  # [b]
    return dominant, thr, attn.float() > thr[None, :, None, None]


class _AVCDRun(MethodRun):
    def __init__(self, method: "AVCD", groups: dict, layers: list[int]):
        super().__init__([])
        self.m, self.groups, self.layers = method, groups, list(layers)
        self.acc: dict[int, Tensor] = {}
        self.dominant: Optional[list[str]] = None
        self.threshold: Optional[Tensor] = None
        # per perturbed branch: {layer: [b, head, n_prompt] bool}, the keys masked in that layer and head
        self.key_masks: list[Optional[dict[int, Tensor]]] = [None, None, None]

    def record(self, pattern: Tensor, layer: int) -> None:
        if self.dominant is not None:  # the prefill decided; decoding steps leave it alone
            return
        self.acc[layer] = pattern[:, :, -1, :].float()
        if len(self.acc) == len(self.layers):
            attn = torch.stack([self.acc[l] for l in self.layers])  # [l, b, h, k]
            groups = {m: g.to(attn.device) for m, g in self.groups.items()}
            self.dominant, self.threshold, high = avcd_selection(attn, groups, self.m.quantile)
            for i in range(3):
                allowed = torch.zeros_like(groups["text"])
                for b, d in enumerate(self.dominant):
                    for m in AVCD_PLAN[d][i]:
                        allowed[b] |= groups[m][b]
                self.key_masks[i] = {l: high[j] & allowed[:, None, :] for j, l in enumerate(self.layers)}
            self.acc = {}

    def mask_scores(self, i: int, layer: int, scores: Tensor) -> Tensor:
        masks = self.key_masks[i]
        if masks is None:
            raise RuntimeError("AVCD's masked branch ran before the original branch's prefill chose the tokens")
        km = masks.get(layer)
        if km is None:  # a layer the official code leaves unmasked (the last)
            return scores
        n_q, n_k = scores.shape[-2], scores.shape[-1]
        km = km.to(scores.device)
        if km.shape[-1] < n_k:
            km = torch.cat([km, km.new_zeros(*km.shape[:-1], n_k - km.shape[-1])], -1)
        q_abs = torch.arange(n_k - n_q, n_k, device=scores.device)
        off_diag = q_abs[:, None] != torch.arange(n_k, device=scores.device)[None, :]  # [q, k]: keep a token's own key
        return scores.masked_fill(km[:, :, None, :] & off_diag, float("-inf"))

    def combine(self, step, logits):
        m = self.m
        return avcd_contrast(*logits, alpha=m.alpha, beta=m.beta, entropy_threshold=m.entropy_threshold, fill=m.fill)


class AVCD(Method):
    """Audio-visual contrastive decoding (Jung, Jang, Chung, *AVCD: Mitigating Hallucinations in
    Audio-Visual Large Language Models through Contrastive Decoding*, NeurIPS 2025, arXiv 2505.20862;
    official code `kaistmm/AVCD`: `videollama2/__init__.py` (the loop) and `videollama2/model/qwen.py`
    (selection and masks)). From the original branch's per-head last-query attention in the prefill,
    in every layer but the last (`layers`), `avcd_selection` picks the dominant modality among text
    (after the media), video and audio and a threshold (head-mean of the median over keys of the
    layer-mean attention); three perturbed branches mask, in each of those layers and heads, the
    tokens of other modalities whose attention there exceeds the threshold, by the official plan
    `AVCD_PLAN` (z1: both others, z2 and z3: one each); each step combines them with `avcd_contrast`
    (alpha 0.5, cutoff beta 0.2, entropy gate 0.6). Four branches, each with its own KV cache.

    Departures from the released code, stated: (1) it re-runs every branch without a cache at every
    step (selection re-estimated each step, branches skipped when the gate holds); here selection
    and masks are fixed at the prefill and every branch steps every time (its cache must follow).
    (2) The released mask is written into the *query* rows of the selected tokens
    (`modality_mask[:, :, span, :] = av_mask`, so those tokens attend to nothing after renormalising),
    while the paper describes masking the tokens as keys; avlens masks them as keys (attention
    scores -inf for every query but the token's own). (3) The released plausibility fill is -1e-4
    (`fill=-1e-4` reproduces it); the default here is -inf, the usual cutoff."""

    name = "avcd"

    def __init__(self, alpha: float = 0.5, beta: float = 0.2, entropy_threshold: float = 0.6, quantile: float = 0.5,
                 layers: Optional[Sequence[int]] = None, fill: float = float("-inf")):
        if not 0 <= quantile <= 1:
            raise ValueError(f"quantile must be in [0, 1] (the official threshold is the median, 0.5), got {quantile}")
        self.alpha, self.beta, self.entropy_threshold, self.quantile = alpha, beta, entropy_threshold, quantile
        self.layers, self.fill = None if layers is None else list(layers), fill

    def start(self, model, prompt, batch):
        lay = batch.layout
        groups = {"text": avcd_text_mask(lay), "video": lay.mask("video") | lay.mask("image"), "audio": lay.mask("audio")}
        for m, g in groups.items():
            if not bool(g.any(1).all()):
                raise NothingToSteer(f"AVCD needs text, video and audio tokens in every sample; some sample has no {m} tokens")
        L = model.cfg.n_layers
        layers = list(range(L - 1)) if self.layers is None else self.layers
        bad = [l for l in layers if not 0 <= l < L]
        if not layers or bad:
            raise ValueError(f"AVCD layers must be a non-empty subset of 0..{L - 1}; got {self.layers}")
        run = _AVCDRun(self, groups, layers)

        def rec(l):
            return lambda pattern, hook: run.record(pattern, l)

        def masker(i, l):
            return lambda scores, hook: run.mask_scores(i, l, scores)

        orig = Branch(batch, [(f"blocks.{l}.attn.hook_pattern", rec(l)) for l in layers], "original")
        run.branches = [orig] + [Branch(batch, [(f"blocks.{l}.attn.hook_attn_scores", masker(i, l)) for l in layers], f"z{i + 1}")
                                 for i in range(3)]
        return run


# ---------------------------------------------------------------------------------------------
# MAD (modality-adaptive decoding, arXiv 2601.21181; official code top-yun/MAD, `qwen-omni/utils.py`)
# ---------------------------------------------------------------------------------------------

MAD_WORDS = ("audio", "video", "both")


def mad_weights(p_a: Tensor, p_v: Tensor, p_b: Tensor, gamma: float = 0.5) -> Tensor:
    """`[2 + 2 gamma p_b, 1 - gamma (p_b - p_v), 1 - gamma (p_b - p_a), -gamma (p_v + p_a)]` per sample,
    for the branches (audio+video, video only, audio only, text only): `[b, 4]`."""
    return torch.stack([2 + 2 * gamma * p_b, 1 - gamma * (p_b - p_v), 1 - gamma * (p_b - p_a), -gamma * (p_v + p_a)], -1)


def mad_contrast(logits: Sequence[Tensor], weights: Tensor) -> Tensor:
    """`sum_i weights[:, i] z_i` on raw logits (the official code's `logits_mat.sum(0)`)."""
    return sum(weights[:, i, None].to(torch.float32) * z.float() for i, z in enumerate(logits))


def mad_word_ids(tokenizer, words: Sequence[str] = MAD_WORDS) -> list[int]:
    """The single-token ids of the self-assessment answers; `NotApplicable` if any is missing from the
    vocabulary (unknown or split into several tokens)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = []
    for w in words:
        t = tokenizer.encode(w, add_special_tokens=False)
        if len(t) != 1 or (unk is not None and t[0] == unk):
            raise NotApplicable(f"MAD is not applicable to this model: its vocabulary has no single token for {w!r} "
                                f"(encodes to {t}), so it cannot answer the audio / video / both self-assessment")
        ids.append(int(t[0]))
    return ids


def toy_assessment(prompt: AVPrompt) -> str:
    """The toy's self-assessment prompt: its "which modality" question with the clip's media (the toy
    cannot read MAD's "To answer this question, which modality is needed (audio, video, or both):")."""
    from avlens.data import tasks

    return tasks.prompt_text(tasks.Example("modality", tasks.MODALITY_QUESTION, "", None))


class _MADRun(MethodRun):
    def __init__(self, branches, weights: Tensor, probs: Tensor):
        super().__init__(branches)
        self.weights, self.probs = weights, probs  # [b, 4]; [b, 3] = p_a, p_v, p_b

    def combine(self, step, logits):
        return mad_contrast(logits, self.weights.to(logits[0].device))


class MAD(Method):
    """Modality-adaptive decoding (*MAD*, arXiv 2601.21181; official code `top-yun/MAD`,
    `qwen-omni/utils.py::mm_contrast_decode_qwen`). The model is asked which modality is needed
    (`assessment(prompt)` -> prompt text, with the clip's media; default the toy's
    "which modality tells you what the object is ?"); the softmax over its next-token logits of
    "audio", "video", "both" gives p_a, p_v, p_b; four branches (audio+video, video only, audio only,
    text only), each with its own KV cache, are summed with `mad_weights` (gamma 0.5, the official
    script's default; the paper's tables use 2.5) on raw logits, greedy. A modality is removed by
    zeroing its raw input (`zero_media`: silent waveform / black frames, positions unchanged), where the
    official code drops it from the prompt. Raises `NotApplicable` if the vocabulary lacks the three
    words. `run.probs` holds (p_a, p_v, p_b)."""

    name = "mad"
    needs_prompt = True

    def __init__(self, gamma: float = 0.5, assessment: Callable[[AVPrompt], str] = toy_assessment, words: Sequence[str] = MAD_WORDS):
        self.gamma, self.assessment, self.words = gamma, assessment, tuple(words)

    @torch.no_grad()
    def modality_probs(self, model, prompt: AVPrompt) -> Tensor:
        """`[b, 3]`: softmax over the assessment prompt's last-position logits of the three words."""
        ids = mad_word_ids(model.tokenizer, self.words)
        z = model.forward(prompt.build(model, text=self.assessment(prompt)))[:, -1].float()
        return torch.softmax(z[:, ids], -1)

    def start(self, model, prompt, batch):
        from avlens.interventions.corruptions import zero_media

        probs = self.modality_probs(model, prompt)
        p_a, p_v, p_b = probs.unbind(-1)
        w = mad_weights(p_a, p_v, p_b, self.gamma)
        no_audio = zero_media(model, batch, "audio")
        no_video = zero_media(model, batch, "video")
        text_only = zero_media(model, no_audio, "video")
        return _MADRun([Branch(batch, [], "audio_video"), Branch(no_audio, [], "video_only"), Branch(no_video, [], "audio_only"),
                        Branch(text_only, [], "text_only")], w, probs)
