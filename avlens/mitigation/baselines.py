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
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from avlens.mitigation.decoding import Branch, Method, MethodRun
from avlens.mitigation.steering import boost_hooks

__all__ = ["pai_contrast", "vcd_contrast", "diffusion_noise", "PAI", "VCD", "strip_media_placeholders"]

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
            raise ValueError("PAI needs media tokens in every sample and start_layer < n_layers; it would change nothing")
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
            raise ValueError(f"VCD found no raw {self.modalities} inputs to noise in this batch (build it with prepare / prepare_media)")
        with torch.no_grad():
            fresh = model.encode_media(raw)
        for m in done:
            feats[m] = fresh[m].to(batch.features[m].dtype)
        return replace(batch, features=feats, raw=raw)

    def start(self, model, prompt, batch):
        return _ContrastRun([Branch(batch, [], "original"), Branch(self.noised(model, batch), [], "noised")],
                            lambda a, b: vcd_contrast(a, b, self.alpha, self.beta))
