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
  self-assessment weights four branches (`mad_weights`), gamma 0.5; the assessment prompt is
  MAD's own (`official_assessment`) or, on the toy, the toy's modality question (`toy_assessment`).

Every constructor checks its arguments (ValueError naming the argument, its range and the
published default).
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import replace
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from avlens.mitigation.decoding import AVPrompt, Branch, Method, MethodRun, NotApplicable, NothingToSteer
from avlens.mitigation.steering import _pad_keys, boost_hooks

__all__ = ["pai_contrast", "vcd_contrast", "diffusion_noise", "PAI", "VCD", "strip_media_placeholders", "avcd_contrast",
           "avcd_selection", "avcd_text_mask", "AVCD", "AVCD_PLAN", "mad_weights", "mad_contrast", "mad_word_ids", "MAD", "toy_assessment",
           "official_assessment", "MAD_MODALITY_QUERY"]

_RAW_KEYS = {"audio": "input_features", "video": "pixel_values_videos", "image": "pixel_values"}
VCD_NOISE_STEPS = 1000  # VCD's add_diffusion_noise: a 1,000-step schedule
_PLACEHOLDER = re.compile(r"<\|(vision|audio)_bos\|>.*?<\|(vision|audio)_eos\|>\s*")


def strip_media_placeholders(text: str) -> str:
    """The prompt without its Qwen-Omni-style media placeholders (`<|vision_bos|>...<|vision_eos|>`)."""
    return _PLACEHOLDER.sub("", text)


def _check_number(method: str, name: str, value, default, lo: float = 0.0, hi: Optional[float] = None,
                  lo_open: bool = False, what: str = "") -> None:
    """A ValueError naming the method, the argument, its meaning, the allowed range and the
    published default, unless `value` is a finite real number in the range (`lo`, or `(lo`
    when `lo_open`, up to `hi]`)."""
    rng = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]" if hi is not None else f"{'>' if lo_open else '>='} {lo:g}"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and (hi is None or value <= hi)
    if not ok:
        raise ValueError(f"{method} {name}{f' ({what})' if what else ''} must be a finite number {rng}; "
                         f"{method}'s published default is {default}, got {value!r}")


def _check_int(method: str, name: str, value, default, lo: int = 0, hi: Optional[int] = None, what: str = "") -> None:
    """Like `_check_number` for an integer in `[lo, hi)` (`hi` None: no upper bound)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= lo and (hi is None or value < hi)
    if not ok:
        rng = f"in [{lo}, {hi})" if hi is not None else f">= {lo}"
        raise ValueError(f"{method} {name}{f' ({what})' if what else ''} must be an integer {rng}; "
                         f"{method}'s published default is {default}, got {value!r}")


_BETA_WHAT = "the plausibility cutoff: tokens below max + log(beta) are dropped, so beta = 0 is undefined"


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
    """PAI (Liu et al., *Paying More Attention to Image*, ECCV 2024; official code `LALBJ/PAI`):
    media-key boost `s + alpha |s|` for the last query in layers `start_layer`..L-1 (`fwd_hooks`)
    plus the contrast with the media-free prompt (`pai_contrast`). Needs an `AVPrompt` (the
    media-free prompt is rebuilt with `strip` applied to its text).

    Args (published defaults): alpha 0.2 (>= 0; 0 = no boost), gamma 1.1 (>= 0; 1 = no contrast,
    the official script's default is 2), beta 0.1 (in (0, 1]), start_layer 2 (>= 0; must be below
    the model's depth, checked when run). Out-of-range values raise ValueError here."""

    name = "pai"
    needs_prompt = True

    def __init__(self, alpha: float = 0.2, gamma: float = 1.1, beta: float = 0.1, start_layer: int = 2, strip=strip_media_placeholders):
        _check_number("PAI", "alpha", alpha, 0.2, what="the attention boost s + alpha |s| on the media keys; 0 = none")
        _check_number("PAI", "gamma", gamma, 1.1, what="the contrast gamma (log p - log p_media_free) + log p_media_free; 1 = none")
        _check_number("PAI", "beta", beta, 0.1, lo=0.0, hi=1.0, lo_open=True, what=_BETA_WHAT)
        _check_int("PAI", "start_layer", start_layer, 2, what="the first layer boosted")
        if not callable(strip):
            raise ValueError(f"PAI strip must be a function text -> the text without its media placeholders "
                             f"(default strip_media_placeholders), got {strip!r}")
        self.alpha, self.gamma, self.beta, self.start_layer, self.strip = alpha, gamma, beta, start_layer, strip

    def fwd_hooks(self, model, batch) -> list:
        """PAI's attention boost alone: `attn.hook_attn_scores` hooks adding `alpha |s|` to the
        scores of the media keys (audio, video, image) for the last query of each forward (in the
        prefill the prompt's last token, then each decoded token) in layers `start_layer`..L-1. For
        `model.generate(batch, fwd_hooks=...)` or `model.run_with_hooks`; without the contrast
        with the media-free prompt (that needs a second branch: `decode(model, prompt, PAI())`).
        Raises ValueError if no layer is left, `NothingToSteer` if a sample has no media token."""
        batch = model._to_batch(batch)
        L = model.cfg.n_layers
        layers = list(range(self.start_layer, L))
        if not layers:
            raise ValueError(f"PAI start_layer={self.start_layer} leaves no layer of this {L}-layer model to boost; "
                             f"pass start_layer < {L} (PAI's published default is 2)")
        lay = batch.layout
        keys = lay.mask("audio") | lay.mask("video") | lay.mask("image")
        if not bool(keys.any(1).all()):
            bad = (~keys.any(1)).nonzero().flatten().tolist()
            raise NothingToSteer(f"PAI boosts attention to media tokens, and samples {bad} have none; it would change nothing")
        return boost_hooks(batch, keys, layers, self.alpha, last_only=True)

    def start(self, model, prompt, batch):
        hooks = self.fwd_hooks(model, batch)
        text = self.strip(prompt.text)
        if text == prompt.text:
            raise ValueError("PAI's media-free prompt equals the prompt: pass strip= that removes this family's media placeholders")
        uncond = prompt.build(model, text=text, audio=None, video=None)
        steered = Branch(batch, hooks, "steered")
        return _ContrastRun([steered, Branch(uncond, [], "media_free")], lambda a, b: pai_contrast(a, b, self.gamma, self.beta))


class VCD(Method):
    """Visual contrastive decoding (CVPR 2024; `DAMO-NLP-SG/VCD`), generalised to audio: the contrast
    with a run on diffusion-noised encoder inputs of `modalities` (`vcd_contrast`, `diffusion_noise`),
    seeded.

    Args (published defaults): alpha 1 (>= 0), beta 0.1 (in (0, 1]), noise_step 500 (in [0, 1000)),
    modalities ("audio", "video"; distinct names from "audio", "video", "image"), seed 0.
    Out-of-range values raise ValueError here."""

    name = "vcd"

    def __init__(self, alpha: float = 1.0, beta: float = 0.1, noise_step: int = 500, modalities: Sequence[str] = ("audio", "video"), seed: int = 0):
        _check_number("VCD", "alpha", alpha, 1, what="the contrast (1 + alpha) z - alpha z_noised; 0 = none")
        _check_number("VCD", "beta", beta, 0.1, lo=0.0, hi=1.0, lo_open=True, what=_BETA_WHAT)
        _check_int("VCD", "noise_step", noise_step, 500, hi=VCD_NOISE_STEPS,
                   what=f"the diffusion step of the noise, of VCD's {VCD_NOISE_STEPS}-step schedule")
        if isinstance(modalities, str):
            raise ValueError(f"VCD modalities must be a sequence of modality names, e.g. ({modalities!r},), not the string "
                             f"{modalities!r}; the default is ('audio', 'video')")
        mods = tuple(modalities)
        bad = [m for m in mods if m not in _RAW_KEYS]
        if not mods or bad or len(set(mods)) != len(mods):
            raise ValueError(f"VCD modalities must be distinct names from {tuple(_RAW_KEYS)} (at least one); got {mods!r}. "
                             f"The default is ('audio', 'video'); VCD's published setting noises the image")
        _check_int("VCD", "seed", seed, 0, what="the noise generator's seed")
        self.alpha, self.beta, self.noise_step, self.modalities, self.seed = alpha, beta, noise_step, mods, seed

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
    """`[b, n]`: every real position after the last media token (the official code's "language"
    span `[2186:]`: the prompt after the video and audio tokens, their end markers included;
    system text before the media excluded)."""
    media = layout.mask("audio") | layout.mask("video") | layout.mask("image")
    pos = torch.arange(media.shape[1], device=media.device)
    last = torch.where(media, pos, torch.full_like(pos, -1)).amax(1)
    return (pos[None, :] > last[:, None]) & ~layout.mask("pad")


def avcd_selection(attn: Tensor, groups: dict, quantile: float = 0.5, valid: Optional[Tensor] = None) -> tuple[list[str], Tensor]:
    """The official selection (kaistmm/AVCD `videollama2/model/qwen.py`), from the original branch's
    last-query attention `attn [layer, b, head, k]` over the prefill, in the layers used (all but
    the last, by default) and bool token masks `groups[m] [b, k]` for m in text / video / audio:

    * dominant modality: the largest layer-mean of (head-mean attention summed over m's tokens / n_m);
    * threshold per sample: the head-mean of the `quantile` (median) over the keys of the layer-mean
      attention (`valid [b, k]`: the real keys; padding is left out).

    Returns (dominant per sample, threshold `[b]`). Which tokens a perturbed branch masks is decided
    in that branch, from its own attention (`_AVCDRun.mask_scores`)."""
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
    mean = attn.float().mean(0)  # [b, h, k]
    if valid is not None:
        mean = mean.masked_fill(~valid[:, None, :].to(mean.device), float("nan"))
    thr = torch.nanquantile(mean, quantile, dim=-1).mean(-1)  # [b]
    return dominant, thr


class _AVCDRun(MethodRun):
    def __init__(self, method: "AVCD", groups: dict, layers: list[int], valid: Tensor):
        super().__init__([])
        self.m, self.groups, self.layers, self.valid = method, groups, list(layers), valid
        self.acc: dict[int, Tensor] = {}
        self.dominant: Optional[list[str]] = None
        self.threshold: Optional[Tensor] = None
        # per perturbed branch: the prompt tokens its plan may mask `[b, n_prompt]`, and, filled in
        # by its own prefill, {layer: [b, head, n_prompt] bool} the keys masked in that layer and head
        self.allowed: list[Optional[Tensor]] = [None, None, None]
        self.key_masks: list[dict[int, Tensor]] = [{}, {}, {}]

    def record(self, pattern: Tensor, layer: int) -> None:
        if self.dominant is not None:  # the prefill decided; decoding steps leave it alone
            return
        self.acc[layer] = pattern[:, :, -1, :].float()
        if len(self.acc) == len(self.layers):
            attn = torch.stack([self.acc[l] for l in self.layers])  # [l, b, h, k]
            groups = {m: g.to(attn.device) for m, g in self.groups.items()}
            self.dominant, self.threshold = avcd_selection(attn, groups, self.m.quantile, self.valid)
            for i in range(3):
                allowed = torch.zeros_like(groups["text"])
                for b, d in enumerate(self.dominant):
                    for m in AVCD_PLAN[d][i]:
                        allowed[b] |= groups[m][b]
                self.allowed[i] = allowed
            self.acc = {}

    def mask_scores(self, i: int, layer: int, scores: Tensor) -> Tensor:
        """Branch i's edit of layer `layer`'s scores. At its prefill, as the official code does in
        each masked forward, the branch's own last-query attention in this layer (before the edit;
        earlier layers already masked) picks, per head, the plan's tokens above the original
        branch's threshold; those keys are then masked for every query but their own, at the
        prefill and every decoding step."""
        if self.allowed[i] is None:
            raise RuntimeError("AVCD's masked branch ran before the original branch's prefill chose the modality")
        n_q, n_k = scores.shape[-2], scores.shape[-1]
        km = self.key_masks[i].get(layer)
        if km is None:
            n = self.allowed[i].shape[-1]
            own = torch.softmax(scores[..., -1, :n].float(), -1)  # [b, h, n] (the prefill: n_k == n)
            km = (own > self.threshold.to(own.device)[:, None, None]) & self.allowed[i].to(own.device)[:, None, :]
            self.key_masks[i][layer] = km
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
    (every position after the media), video and audio and a threshold (head-mean of the median over
    the real keys of the layer-mean attention); three perturbed branches mask, in each of those
    layers and heads, the tokens of other modalities whose attention *in that branch's own forward*
    (earlier layers already masked, as the released code computes `query_sum` from the masked
    forward's `attn_weight`) exceeds the threshold, by the official plan
    `AVCD_PLAN` (z1: both others, z2 and z3: one each); each step combines them with `avcd_contrast`
    (alpha 0.5, cutoff beta 0.2, entropy gate 0.6). Four branches, each with its own KV cache.

    Departures from the released code, stated: (1) it re-runs every branch without a cache at every
    step (selection re-estimated each step, branches skipped when the gate holds); here selection
    and masks are fixed at the prefill and every branch steps every time (its cache must follow).
    (2) The released mask is written into the *query* rows of the selected tokens
    (`modality_mask[:, :, span, :] = av_mask`, so those tokens attend to nothing after renormalising),
    while the paper describes masking the tokens as keys; avlens masks them as keys (attention
    scores -inf for every query but the token's own). (3) The released plausibility fill is -1e-4
    (`fill=-1e-4` reproduces it); the default here is -inf, the usual cutoff.

    Args (published defaults): alpha 0.5 (>= 0), beta 0.2 (in (0, 1]), entropy_threshold 0.6 (>= 0,
    nats), quantile 0.5 (in [0, 1]), layers None (all but the last; else distinct indices >= 0,
    below the model's depth, checked when run), fill -inf (<= 0). Out-of-range values raise
    ValueError here."""

    name = "avcd"

    def __init__(self, alpha: float = 0.5, beta: float = 0.2, entropy_threshold: float = 0.6, quantile: float = 0.5,
                 layers: Optional[Sequence[int]] = None, fill: float = float("-inf")):
        _check_number("AVCD", "alpha", alpha, 0.5, what="the contrast (2 + 2 alpha) z - 2 alpha z1 + z2 + z3")
        _check_number("AVCD", "beta", beta, 0.2, lo=0.0, hi=1.0, lo_open=True, what=_BETA_WHAT)
        _check_number("AVCD", "entropy_threshold", entropy_threshold, 0.6,
                      what="the entropy (nats) of softmax(z) below which the plain logits are kept; 0 = always contrast")
        _check_number("AVCD", "quantile", quantile, 0.5, hi=1.0,
                      what="the quantile over keys of the attention that sets the threshold; 0.5 = the median")
        if layers is not None:
            layers = list(layers)
            bad = [l for l in layers if not isinstance(l, numbers.Integral) or isinstance(l, bool) or l < 0]
            if not layers or bad or len(set(layers)) != len(layers):
                raise ValueError(f"AVCD layers must be None (every layer but the last, the published setting) or distinct "
                                 f"layer indices >= 0, at least one; got {layers!r}")
            layers = [int(l) for l in layers]
        if not isinstance(fill, numbers.Real) or isinstance(fill, bool) or math.isnan(fill) or fill > 0:
            raise ValueError(f"AVCD fill (the score of tokens below the plausibility cutoff) must be -inf or a number "
                             f"<= 0 so that dropped tokens are not preferred; the default is -inf, the released code's "
                             f"-1e-4, got {fill!r}")
        self.alpha, self.beta, self.entropy_threshold, self.quantile = alpha, beta, entropy_threshold, quantile
        self.layers, self.fill = layers, fill

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
        run = _AVCDRun(self, groups, layers, ~lay.mask("pad"))

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


#: MAD's self-assessment query, verbatim (top-yun/MAD `qwen-omni/utils.py` and `VideoLLaMA2/config.py`,
#: `MODALITY_QUERY_PROMPT`, trailing space included)
MAD_MODALITY_QUERY = "To answer this question, which modality is needed (audio, video, or both): "
_MEDIA_END = r"<\|(?:vision|audio)_eos\|>|<(?:video|audio|image)>"


def official_assessment(prompt: Union[AVPrompt, str], media_end: str = _MEDIA_END, turn_end: str = "<|im_end|>") -> str:
    """MAD's official self-assessment prompt built from `prompt`: the user's question (the text
    after the last media placeholder, up to `turn_end`) replaced by ``"Question: " + question +
    "\n" + MAD_MODALITY_QUERY``, everything else (system text, chat markers, media placeholders,
    the whitespace after the media) kept.

    Source: top-yun/MAD `qwen-omni/utils.py::mm_contrast_decode_qwen` builds its "head"
    conversation as the video, then ``{"type": "text", "text": "Question: " + question + "\n" +
    add_prompt}`` with ``add_prompt = MODALITY_QUERY_PROMPT`` (`eval_batch_mad.py`,
    `eval_batch_cmm_mad.py`; `question` there already ends with the answer instruction " Answer
    only 'Yes' or 'No'. Do not include any explanation.", so whatever the prompt's question holds is
    kept); VideoLLaMA2's `mm_contrast_decode` writes the same text after ``<video>\n``. The
    next-token logits at the end of this prompt (the chat's assistant turn) give p_a, p_v, p_b.

    `media_end`: a regex for the end of a media placeholder (default: Qwen-Omni's
    ``<|vision_eos|>`` / ``<|audio_eos|>`` and the ``<video>`` / ``<audio>`` / ``<image>``
    sentinels). Raises ValueError if the prompt has no placeholder or no question after it."""
    text = prompt.text if isinstance(prompt, AVPrompt) else str(prompt)
    ends = list(re.finditer(media_end, text))
    if not ends:
        raise ValueError(f"official_assessment found no media placeholder (pattern {media_end!r}) in the prompt {text[:120]!r}; "
                         "MAD's question goes after the media. Pass media_end= for your family's placeholder, or "
                         "MAD(assessment=your_function) that returns the assessment prompt")
    start = ends[-1].end()
    stop = text.find(turn_end, start)
    stop = len(text) if stop < 0 else stop
    segment = text[start:stop]
    question = segment.strip()
    if not question:
        raise ValueError(f"official_assessment found no question between the last media placeholder and {turn_end!r} in "
                         f"{text[:200]!r}; put the question after the media, or pass MAD(assessment=your_function)")
    lead = segment[: len(segment) - len(segment.lstrip())]
    return text[:start] + lead + "Question: " + question + "\n" + MAD_MODALITY_QUERY + text[stop:]


def toy_assessment(prompt: AVPrompt) -> str:
    """The toy's self-assessment prompt: its "which modality" question with the clip's media, the
    same for every question (the toy's word-level vocabulary cannot read MAD's official query,
    `official_assessment`). Only meaningful on the toy model."""
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
    (`assessment(prompt)` -> prompt text, with the clip's media): `official_assessment` is MAD's own
    prompt ("Question: <question>\nTo answer this question, which modality is needed (audio,
    video, or both): ") and the default; `toy_assessment` is the toy's "which modality tells you what
    the object is ?" (the toy cannot read the official one; `default_methods(toy=True)` uses it).
    The softmax over its next-token logits of
    "audio", "video", "both" gives p_a, p_v, p_b; four branches (audio+video, video only, audio only,
    text only), each with its own KV cache, are summed with `mad_weights` (gamma 0.5, the official
    script's default; the paper's tables use 2.5) on raw logits, greedy. A modality is removed by
    zeroing its raw input (`zero_media`: silent waveform / black frames, positions unchanged), where the
    official code drops it from the prompt. Raises `NotApplicable` if the vocabulary lacks the three
    words. `run.probs` holds (p_a, p_v, p_b).

    Args (published defaults): gamma 0.5 (>= 0), assessment (a function), words ("audio", "video",
    "both": three distinct names, in that order). Out-of-range values raise ValueError here."""

    name = "mad"
    needs_prompt = True

    def __init__(self, gamma: float = 0.5, assessment: Optional[Callable[[AVPrompt], str]] = None, words: Sequence[str] = MAD_WORDS):
        assessment = official_assessment if assessment is None else assessment
        _check_number("MAD", "gamma", gamma, 0.5, what="the strength of the self-assessed weighting; 0 gives 2 z_av + z_v + z_a")
        if not callable(assessment):
            raise ValueError(f"MAD assessment must be a function AVPrompt -> the self-assessment prompt text "
                             f"(official_assessment for MAD's own prompt, toy_assessment on the toy), got {assessment!r}")
        if isinstance(words, str) or len(tuple(words)) != 3 or len(set(words)) != 3 \
                or not all(isinstance(w, str) and w.strip() for w in words):
            raise ValueError(f"MAD words must be three distinct non-empty strings naming audio, video and both, in that "
                             f"order; the published ones are {MAD_WORDS}, got {words!r}")
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
