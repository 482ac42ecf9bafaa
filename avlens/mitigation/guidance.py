"""The paper's adaptive guidance between the original and the sink-steered model (*Probing
Cross-modal Information Hubs in Audio-Visual LLMs*, ICML 2026, Sec. 6; official code
`logic/adaptive_guidance_complex.py`, the version its inference script imports; the older
`adaptive_guidance_new.py` as `variant="gated"`).

Two branches, each with its own KV cache, one loop. At step t, from the original branch's
last-query attention in the band `round(18 L / 28) .. round(25 L / 28)` (per layer, then averaged
over the band's layers, as the official `_calculate_adaptive_metrics`):

    cross = mean attention (over heads and sinks) on the audio cross-modal sinks
            + the same on the video cross-modal sinks          (official: av_sink + va_sink)
    uni   = the same on the unimodal sinks                      (official: aa_sink + vv_sink)
    tm    = attention mass on the positions after the last media token (the text after the media
            and the generated tokens; official: `[..., text_token_start:]`), head-averaged
    complex: w = cross / (cross + uni); target = min(cap, base_strength * w)
             if tm > tm_lo: target *= 0.5 (1 + cos(pi min(1, (tm - tm_lo) / tm_width)))
             if w < w_threshold: target *= (w / w_threshold)^2
    gated:   w = uni / (cross + uni); target = 0 if w < w_threshold or tm > gate_tm else min(cap, base_strength * w)
    s_t = momentum s_{t-1} + (1 - momentum) target,  s = 0 for the first `warmup_steps` steps
    output = log p_orig + s_t (log p_steered - log p_orig)

Defaults: cap 0.6, base_strength 0.5, tm_lo 0.4, tm_width 0.2, w_threshold 0.6, momentum 0.5,
gate_tm 0.5, warmup_steps 1 (strength 0 at the first decoding step). A modality without
cross-modal (or unimodal) sinks contributes 0 to its sum (the official code's mean over an empty
index set would be NaN). Note that with the defaults a
one-token answer (yes/no) is the original model's: set `warmup_steps=0` to guide the first token.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from avlens.mitigation.baselines import _check_number
from avlens.mitigation.decoding import Branch, Method, MethodRun
from avlens.mitigation.steering import SinkSteering, _last_media, _pad_keys, guidance_band, steering_sinks

__all__ = ["guidance_target", "AdaptiveGuidance"]


def _finite(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def guidance_target(cross: Tensor, uni: Tensor, tm: Tensor, base_strength: float = 0.5, cap: float = 0.6, tm_lo: float = 0.4,
                    tm_width: float = 0.2, w_threshold: float = 0.6, variant: str = "complex", gate_tm: float = 0.5,
                    eps: float = 1e-12) -> Tensor:
    """The per-step target strength (module docstring), elementwise over samples."""
    cross, uni, tm = cross.double(), uni.double(), tm.double()
    denom = (cross + uni).clamp(min=eps)
    if variant == "complex":
        w = cross / denom
        t = torch.clamp(base_strength * w, max=cap)
        decay = 0.5 * (1 + torch.cos(math.pi * torch.clamp((tm - tm_lo) / tm_width, max=1.0)))
        t = torch.where(tm > tm_lo, t * decay, t)
        return torch.where(w < w_threshold, t * (w / w_threshold) ** 2, t)
    if variant == "gated":
        w = uni / denom
        t = torch.clamp(base_strength * w, max=cap)
        return torch.where((w < w_threshold) | (tm > gate_tm), torch.zeros_like(t), t)
    raise ValueError(f"variant must be 'complex' or 'gated', got {variant!r}")


class _GuidanceRun(MethodRun):
    def __init__(self, branches, method: "AdaptiveGuidance", sink_masks: dict[str, Tensor], text_start: Tensor, n_layers):
        super().__init__(branches)
        self.m = method
        # {"cross_audio", "cross_video", "uni_audio", "uni_video"}: [b, n_prompt] bool; text_start: [b]
        self.sink_masks, self.text_start = sink_masks, text_start
        self.acc: list[tuple[Tensor, Tensor, Tensor]] = []
        self.s: Optional[Tensor] = None
        self.history: list[Tensor] = []
        self.metrics: list[tuple[Tensor, Tensor, Tensor]] = []  # per step: (cross, uni, text mass), band-averaged

    def record(self, pattern: Tensor) -> None:
        a = pattern[:, :, -1, :].float().mean(1)  # [b, k]: last query, head-averaged
        k = a.shape[1]

        def mean_on(name: str) -> Tensor:  # mean over the set's sinks (0 for an empty set)
            m = _pad_keys(self.sink_masks[name].to(a.device), k)
            return (a * m).sum(-1) / m.sum(-1).clamp(min=1)

        cross = mean_on("cross_audio") + mean_on("cross_video")
        uni = mean_on("uni_audio") + mean_on("uni_video")
        after = torch.arange(k, device=a.device)[None, :] >= self.text_start.to(a.device)[:, None]
        self.acc.append((cross, uni, (a * after).sum(-1)))

    def combine(self, step, logits):
        cross, uni, tm = (torch.stack(x).mean(0) for x in zip(*self.acc))
        self.acc = []
        self.metrics.append((cross, uni, tm))
        m = self.m
        target = guidance_target(cross, uni, tm, m.base_strength, m.cap, m.tm_lo, m.tm_width, m.w_threshold, m.variant, m.gate_tm)
        if step < m.warmup_steps:
            s = torch.zeros_like(target)
        else:
            prev = self.s if self.s is not None else torch.zeros_like(target)
            s = m.momentum * prev + (1 - m.momentum) * target
        self.s = s
        self.history.append(s)
        lo, ls = F.log_softmax(logits[0].float(), -1), F.log_softmax(logits[1].float(), -1)
        return lo + s[:, None].to(lo.dtype) * (ls - lo)


class AdaptiveGuidance(Method):
    """Adaptive guidance between the original model and `steering` (default `SinkSteering()`), with
    the per-step strength schedule of the module docstring (paper ICML 2026 Sec. 6; official
    `logic/adaptive_guidance_complex.py`, `variant="gated"`: `adaptive_guidance_new.py`). Two KV
    caches, one loop. `run.history` holds the strength of every step."""

    name = "adaptive_guidance"

    def __init__(self, steering: Optional[SinkSteering] = None, base_strength: float = 0.5, cap: float = 0.6,
                 tm_lo: float = 0.4, tm_width: float = 0.2, w_threshold: float = 0.6, momentum: float = 0.5,
                 variant: str = "complex", gate_tm: float = 0.5, warmup_steps: int = 1, band: tuple = (18, 25, 28)):
        if variant not in ("complex", "gated"):
            raise ValueError(f"variant must be 'complex' or 'gated', got {variant!r}")
        if not (_finite(momentum) and 0 <= momentum < 1):
            raise ValueError(f"AdaptiveGuidance momentum (s_t = momentum s_(t-1) + (1 - momentum) target) must be a finite "
                             f"number in [0, 1) (the official value is 0.5), got {momentum!r}")
        A = "AdaptiveGuidance"
        _check_number(A, "base_strength", base_strength, 0.5, what="the target strength before the cap: base_strength w")
        _check_number(A, "cap", cap, 0.6, what="the largest target strength")
        _check_number(A, "tm_lo", tm_lo, 0.4, hi=1.0, what="the text-attention mass where the cosine decay starts")
        _check_number(A, "tm_width", tm_width, 0.2, lo_open=True, what="the text-mass width of the cosine decay")
        _check_number(A, "w_threshold", w_threshold, 0.6, hi=1.0, lo_open=True,
                      what="the share w below which the target is scaled by (w / w_threshold)^2 (gated: set to 0)")
        _check_number(A, "gate_tm", gate_tm, 0.5, hi=1.0, what="gated variant: no guidance where the text mass exceeds it")
        if not (isinstance(warmup_steps, numbers.Integral) and not isinstance(warmup_steps, bool) and warmup_steps >= 0):
            raise ValueError(f"AdaptiveGuidance warmup_steps (decoding steps at strength 0 before guidance starts) must "
                             f"be an integer >= 0 (official: 1), got {warmup_steps!r}")
        if steering is not None and not isinstance(steering, SinkSteering):
            raise ValueError(f"AdaptiveGuidance steering must be a SinkSteering (the paper's default: SinkSteering(), "
                             f"alpha 0.2 on the cross-modal sinks) or None, got {steering!r}")
        if not (isinstance(band, (tuple, list)) and len(band) == 3 and all(
                isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in band)) or not 0 <= band[0] <= band[1] < band[2]:
            raise ValueError(f"AdaptiveGuidance band must be integers (lo, hi, of) with 0 <= lo <= hi < of (the paper: (18, 25, 28)), got {band}")
        self.steering = steering or SinkSteering()
        self.base_strength, self.cap, self.tm_lo, self.tm_width = base_strength, cap, tm_lo, tm_width
        self.w_threshold, self.momentum, self.variant, self.gate_tm = w_threshold, momentum, variant, gate_tm
        self.warmup_steps, self.band = warmup_steps, band

    def start(self, model, prompt, batch):
        sinks = steering_sinks(model, batch, self.steering.sinks)
        steer_hooks = self.steering.fwd_hooks(model, batch, sinks)
        b, n = batch.shape
        masks = {}
        for kind, d in (("cross", sinks.cross), ("uni", sinks.unimodal)):
            for m in ("audio", "video"):
                mk = torch.zeros(b, n, dtype=torch.bool)
                for i in range(b):
                    mk[i, d[m][i]] = True
                masks[f"{kind}_{m}"] = mk
        run = _GuidanceRun([], self, masks, _last_media(batch) + 1, model.cfg.n_layers)

        def rec(pattern, hook):
            run.record(pattern)

        band = guidance_band(model.cfg.n_layers, *self.band)
        orig = Branch(batch, [(f"blocks.{l}.attn.hook_pattern", rec) for l in band], "original")
        run.branches = [orig, Branch(batch, steer_hooks, "steered")]
        return run
