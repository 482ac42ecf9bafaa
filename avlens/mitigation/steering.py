"""Attention edits at decoding time: the paper's cross-modal-sink boost and VAR's redistribution.

* `boost_scores(scores, queries, keys, alpha)`: the pre-softmax boost `s += alpha |s|` on chosen
  (query, key) cells (PAI, Liu et al. ECCV 2024, `attention.py`; reused by the paper's ASD code).
* `SinkSteering`: the paper's method (*Probing Cross-modal Information Hubs in Audio-Visual LLMs*,
  ICML 2026, Sec. 6; official code "ASD", `logic/` + modeling file): the boost on the cross-modal
  sinks (global sinks, N = 3, split by modality dominance), for the text queries after the media in
  the prefill and for every decoded token, in layers `l > round(5 L / 28)` (the paper's "> 5 of 28").
* `redistribute_pattern` / `VAR`: Kang et al., ICLR 2025, *See What You Are Told: Visual Attention
  Sink in Large Multimodal Models* (official code `var`): in rows where the media is attended
  (>= 0.2 of the row) and its sinks hold at most rho = 0.5 of that, attention on the sink tokens is
  scaled by p = 0.6 and the freed mass goes to the non-sink media tokens in proportion to their
  attention (row sums preserved); the last layer is left alone. Generalised to audio and video.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from avlens.analysis.dominance import cross_modal_split, modality_dominance
from avlens.analysis.sinks import find_sinks
from avlens.mitigation.decoding import Branch, Method, MethodRun, NothingToSteer

__all__ = ["SinkConfig", "SteeringSinks", "steering_sinks", "boost_scores", "boost_layers", "guidance_band",
           "query_mask", "SinkSteering", "redistribute_pattern", "VAR"]


_LOADED = False  # set at the end of the module


def boost_layers(n_layers: int, after: int = 5, of: int = 28) -> list[int]:
    """Layers `l > round(after * L / of)` (the paper: `l > 5` of 28)."""
    return [l for l in range(n_layers) if l > round(after * n_layers / of)]


def guidance_band(n_layers: int, lo: int = 18, hi: int = 25, of: int = 28) -> list[int]:
    """`round(lo L / of) .. round(hi L / of)` inclusive, clipped to the model (the paper: 18-25 of 28)."""
    a, b = round(lo * n_layers / of), min(n_layers - 1, round(hi * n_layers / of))
    return list(range(min(a, b), b + 1))


@dataclass
class SinkConfig:
    """How the sinks are found (`find_sinks`): `definition` "hidden" (massive activations, tau) or
    "attention" (eps); global sinks with `N`; `dims` for the hidden-state definition (None:
    discovered). Defaults are the paper's; the toy model needs `SinkConfig("attention", eps=0.1,
    dims=[])` (it has no massive activations, docs/analysis.md)."""

    definition: str = "hidden"
    N: int = 3
    tau: float = 25.0
    eps: float = 0.3
    dims: Optional[Sequence[int]] = None

    def __post_init__(self):
        if not _LOADED:  # the published defaults built as default arguments while this module loads
            return  # (the checks live in baselines, which imports this module)
        from avlens.mitigation.baselines import _check_int, _check_number

        if self.definition not in ("hidden", "attention"):
            raise ValueError(f"SinkConfig definition must be 'hidden' (massive activations, tau) or 'attention' (eps); "
                             f"the paper's default is 'hidden', got {self.definition!r}")
        _check_int("SinkConfig", "N", self.N, 3, lo=1, what="global sinks: the most frequent floor(|T| / N) per-layer sinks")
        _check_number("SinkConfig", "tau", self.tau, "25.0 (VAR's: 20)", lo=0.0, lo_open=True,
                      what="the hidden-state threshold on max |x_hat_d| over the sink dims")
        _check_number("SinkConfig", "eps", self.eps, 0.3, lo=0.0, hi=1.0, lo_open=True,
                      what="the attention threshold: a sink receives > eps of the later queries' attention in some head")
        if self.dims is not None and (isinstance(self.dims, (str, bytes)) or not all(
                isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 0 for d in self.dims)):
            raise ValueError(f"SinkConfig dims must be None (discovered, the default) or a sequence of hidden-state "
                             f"dimensions (integers >= 0; [] skips the hidden-state definition), got {self.dims!r}")


@dataclass
class SteeringSinks:
    """Per sample: cross-modal and unimodal sinks of each modality (positions in the batch)."""

    cross: dict[str, list[list[int]]]
    unimodal: dict[str, list[list[int]]]

    def positions(self, kind: str, sample: int) -> list[int]:
        d = self.cross if kind == "cross" else self.unimodal
        return sorted(p for m in ("audio", "video") for p in d[m][sample])

    def mask(self, kind: str, batch_size: int, n_pos: int, device=None) -> Tensor:
        m = torch.zeros(batch_size, n_pos, dtype=torch.bool, device=device)
        for s in range(batch_size):
            m[s, self.positions(kind, s)] = True
        return m


@torch.no_grad()
def steering_sinks(model, batch, config: SinkConfig = SinkConfig()) -> SteeringSinks:
    """Global sinks (N = 3) of each media modality, split into cross-modal and unimodal at the median
    of their layer-averaged modality dominance score (`cross_modal_split`): for the video sinks the
    most video-attended half is unimodal, for the audio sinks the most audio-attended half.

    One sample without global sinks gets empty lists (`SinkSteering` then raises); in a batch of
    several, every sample needs global sinks (their dominance is scored together): samples without
    any raise `NothingToSteer` naming them."""
    batch = model._to_batch(batch)
    rep = find_sinks(model, batch, dims=config.dims, tau=config.tau, eps=config.eps) if config.dims is not None \
        else find_sinks(model, batch, tau=config.tau, eps=config.eps)
    sinks = rep.global_sinks(config.N, definition=config.definition)
    per_sample = [sinks] if batch.batch_size == 1 else sinks
    bad = [s for s, ps in enumerate(per_sample) if not ps]
    if bad and batch.batch_size > 1:
        raise NothingToSteer(f"samples {bad} of this batch of {batch.batch_size} have no global sinks (SinkConfig {config}), "
                             "so no cross-modal or unimodal sinks to steer toward. Use a looser sink definition (e.g. "
                             "SinkConfig('attention', eps=0.1, dims=[])), or decode those samples without steering.")
    labels = [batch.layout.labels(s) for s in range(batch.batch_size)]
    cross = {"audio": [], "video": []}
    uni = {"audio": [], "video": []}
    mds = modality_dominance(model, batch, per_sample if batch.batch_size > 1 else per_sample[0]) if any(per_sample) else None
    mds = [mds] if batch.batch_size == 1 else mds
    for s, ps in enumerate(per_sample):
        avg = mds[s].mean(0).tolist() if ps else []
        for m, dom in (("video", "audio"), ("audio", "video")):
            idx = [i for i, p in enumerate(ps) if labels[s][p] == m]
            c, u = cross_modal_split([ps[i] for i in idx], [avg[i] for i in idx], dominant=dom)
            cross[m].append(c)
            uni[m].append(u)
    return SteeringSinks(cross, uni)


def _last_media(batch) -> Tensor:
    """`[b]`: each sample's last audio / video / image position (-1 without media)."""
    lay = batch.layout
    media = lay.mask("audio") | lay.mask("video") | lay.mask("image")
    pos = torch.arange(media.shape[1], device=media.device)
    return torch.where(media, pos, torch.full_like(pos, -1)).amax(1)


def query_mask(batch, n_q: int, start: int, last_only: bool = False, last_media: Optional[Tensor] = None) -> Tensor:
    """Bool `[b, n_q]`: queries of a call starting at absolute position `start` that come after the
    sample's last media token (the text after the media; every decoded token). `last_only`: only the
    call's last query (PAI's "last query"). `last_media` (`_last_media(batch)`) saves recomputing it."""
    lm = _last_media(batch) if last_media is None else last_media
    q = start + torch.arange(n_q, device=lm.device)
    m = q[None, :] > lm[:, None]
    if last_only:
        m &= torch.arange(n_q, device=lm.device)[None, :] == n_q - 1
    return m


def _pad_keys(keys: Tensor, k: int) -> Tensor:
    if keys.shape[1] >= k:
        return keys[:, :k]
    return torch.cat([keys, keys.new_zeros(keys.shape[0], k - keys.shape[1])], 1)


class _StepMemo:
    """One value per forward call (keyed by the call's query count, start position, key count and
    device), shared by every layer's hook: masks are built once per decoding step, not once per
    layer. Holds only the latest call's value."""

    def __init__(self, build: Callable):
        self.build, self.key, self.value = build, None, None

    def __call__(self, n_q: int, start: int, k: int, device):
        key = (n_q, start, k, device)
        if key != self.key:
            self.key, self.value = key, self.build(n_q, start, k, device)
        return self.value


def boost_scores(scores: Tensor, queries: Tensor, keys: Tensor, alpha: float) -> Tensor:
    """`scores[b, h, q, k] + alpha |scores|` where `queries[b, q]` and `keys[b, k]` both hold."""
    # cells the model masked (filled with finfo.min) stay masked: boosting them would overflow
    # (alpha |min| = inf) or, for alpha > 1, turn a masked cell into a huge positive score
    m = queries[:, None, :, None] & keys[:, None, None, :] & (scores > torch.finfo(scores.dtype).min)
    return torch.where(m, scores + alpha * scores.abs(), scores)


def boost_hooks(batch, keys: Tensor, layers: Sequence[int], alpha: float, last_only: bool = False) -> list:
    """`attn.hook_attn_scores` hooks applying `boost_scores` to the queries after the media (or the
    last query) and the key positions `keys` (`[b, n_prompt]` bool), in prefill and decoding. The
    `alpha x (query, key)` mask is built once per forward call and shared by the layers."""
    keys = keys.bool()
    last_media = _last_media(batch)

    def build(n_q, start, k, device):
        q = query_mask(batch, n_q, start, last_only, last_media.to(device))
        m = q[:, None, :, None] & _pad_keys(keys.to(device), k)[:, None, None, :]
        return alpha * m.float()

    memo = _StepMemo(build)

    def hook(scores, hook):
        m = memo(scores.shape[2], hook.start_pos, scores.shape[3], scores.device)
        # alpha |s| on the chosen cells only; a masked cell (finfo.min) is never chosen (its query
        # cannot see that key), so the product cannot overflow there
        return torch.addcmul(scores, scores.abs(), m.to(scores.dtype))

    return [(f"blocks.{l}.attn.hook_attn_scores", hook) for l in layers]


class SinkSteering(Method):
    """The paper's cross-modal-sink attention steering (ICML 2026, Sec. 6; official code "ASD": the
    PAI-style boost in the modeling file, commented out in the release, so `alpha=0` reproduces the
    released behaviour). `s += alpha |s|` on the cross-modal sinks (`steering_sinks`, global sinks
    with `sinks.N` = 3) for the queries after the media and each decoded token, in layers
    `l > round(after L / of)`.

    Args: alpha (0.2), sinks (`SinkConfig`), after / of (5 / 28), target ("cross"; "unimodal" steers
    toward the unimodal sinks instead, a control)."""

    name = "sink_steering"

    def __init__(self, alpha: float = 0.2, sinks: SinkConfig = SinkConfig(), after: int = 5, of: int = 28, target: str = "cross"):
        from avlens.mitigation.baselines import _check_int, _check_number

        if target not in ("cross", "unimodal"):
            raise ValueError(f"target must be 'cross' or 'unimodal', got {target!r}")
        if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool) and math.isfinite(alpha) and alpha < 0:
            raise ValueError(f"SinkSteering alpha must be >= 0 (s += alpha |s| boosts; a negative alpha suppresses); the paper's is 0.2, got {alpha}")
        _check_number("SinkSteering", "alpha", alpha, 0.2, what="the boost s += alpha |s| on the sink keys; 0 = none")
        if not isinstance(sinks, SinkConfig):
            raise ValueError(f"SinkSteering sinks must be a SinkConfig (the paper's default: SinkConfig(), global sinks "
                             f"with N = 3), got {sinks!r}")
        _check_int("SinkSteering", "after", after, 5, what="layers l > round(after L / of) are steered")
        _check_int("SinkSteering", "of", of, 28, lo=1, what="the depth `after` refers to")
        if not 0 <= after < of:
            raise ValueError(f"after / of must satisfy 0 <= after < of (the paper: layers > 5 of 28); got {after} / {of}")
        self.alpha, self.sinks, self.after, self.of, self.target = alpha, sinks, after, of, target

    def fwd_hooks(self, model, batch, sinks: Optional[SteeringSinks] = None) -> list:
        """The hooks, for `model.generate(batch, fwd_hooks=...)` or `model.run_with_hooks`. Raises
        if there is nothing to steer (no target sink or no layer), never a silent no-op."""
        batch = model._to_batch(batch)
        sinks = sinks or steering_sinks(model, batch, self.sinks)
        keys = sinks.mask(self.target, batch.batch_size, batch.shape[1])
        layers = boost_layers(model.cfg.n_layers, self.after, self.of)
        if not layers:
            raise ValueError(f"no layer l > round({self.after} * {model.cfg.n_layers} / {self.of}) to steer")
        if not bool(keys.any(1).all()):
            bad = (~keys.any(1)).nonzero().flatten().tolist()
            raise NothingToSteer(f"samples {bad} have no {self.target} sinks (SinkConfig {self.sinks}); steering would change "
                             "nothing. Use a looser sink definition (e.g. SinkConfig('attention', eps=0.1, dims=[])) or skip them.")
        self._last_sinks = sinks
        return boost_hooks(batch, keys, layers, self.alpha)

    def start(self, model, prompt, batch):
        return MethodRun([Branch(batch, self.fwd_hooks(model, batch), "steered")])


# --------------------------------------------------------------------------------------- VAR
class _VarMasks:
    """The masks VAR's redistribution needs for one layer, as float matrices (built once per key
    count): `M [b, 1, k, m]` media, `MS` media sinks, `MnS_T [b, 1, m, k]` non-sink media,
    `S [b, 1, k, 1]` sinks, `scale [b, 1, 1, k]` = p on sinks, 1 elsewhere."""

    def __init__(self, sinks: Tensor, media: dict[str, Tensor], p: float, device):
        S = sinks.bool().to(device)  # [b, k]
        if media:
            M = torch.stack([m.bool().to(device) for m in media.values()], -1)  # [b, k, m]
        else:
            M = torch.zeros(*S.shape, 0, dtype=torch.bool, device=device)
        self.M = M.float()[:, None]
        self.MS = (M & S[..., None]).float()[:, None]
        self.MnS_T = (M & ~S[..., None]).float().transpose(1, 2)[:, None]
        self.S = S.float()[:, None, :, None]
        self.scale = torch.where(S, torch.tensor(float(p), device=device), torch.tensor(1.0, device=device))[:, None, None, :]


def _redistribute(P: Tensor, queries: Tensor, masks: _VarMasks, p: float, rho: float, min_media: float) -> Tensor:
    n = masks.S.shape[2]
    if P.shape[-1] > n:
        # keys past the masks' length (generated tokens) are neither media nor sinks: VAR leaves
        # them as they are, so the masks are built once for the prompt, not once per step
        return torch.cat([_redistribute(P[..., :n], queries, masks, p, rho, min_media), P[..., n:]], -1)
    tot = P @ masks.M  # [b, h, q, m]: each modality's share of the row
    in_sinks = P @ masks.MS  # [b, h, q, m]: the share held by that modality's sinks
    cond = (tot >= min_media) & (in_sinks <= rho * tot) & queries[:, None, :, None]
    recv = (cond.to(P.dtype) @ masks.MnS_T) > 0  # [b, h, q, k]: non-sink tokens of qualifying modalities
    recv_P = P * recv
    recv_mass = recv_P.sum(-1, keepdim=True)
    freed = (1 - p) * (P @ masks.S)  # [b, h, q, 1]
    new = torch.addcmul(P * masks.scale, recv_P, freed / recv_mass.clamp(min=1e-30))
    return torch.where(recv_mass > 0, new, P)


def redistribute_pattern(pattern: Tensor, queries: Tensor, sinks: Tensor, media: dict[str, Tensor], p: float = 0.6,
                         rho: float = 0.5, min_media: float = 0.2) -> Tensor:
    """VAR's redistribution on a softmaxed pattern `[b, h, q, k]`. `queries [b, q]`, `sinks [b, k]`
    (every sink token, any group), `media` {modality: `[b, k]`}. A row is edited when, for some
    modality m, m's tokens get >= `min_media` of the row and m's sinks hold <= `rho` of that; then
    every sink's attention is multiplied by `p` and the freed mass `(1 - p) x (sink attention)` is
    given to the non-sink tokens of the qualifying modalities in proportion to their attention."""
    P = pattern.float()
    masks = _VarMasks(sinks, media, p, P.device)
    return _redistribute(P, queries.to(P.device), masks, p, rho, min_media).to(pattern.dtype)


class VAR(Method):
    """Visual attention redistribution (Kang et al., ICLR 2025; official code `var`), generalised to
    audio and video: `redistribute_pattern` on `attn.hook_pattern` in every layer but the last, for
    the queries after the media and every decoded token. The sinks are each layer's own sink tokens
    (`find_sinks`, any group, as VAR marks them per layer). Defaults: p = 0.6, rho = 0.5, media share
    0.2, sink threshold tau = 20 (VAR's published values; the paper's own sinks use tau = 25).

    Never a silent no-op, per sample: a batch with a sample without media or without sinks raises
    `NothingToSteer` before decoding, and a decode in which no attention row of some sample
    qualified for redistribution (prefill and steps) raises it at the end, naming those samples
    (`compare_methods` then decodes that prompt plainly and counts it)."""

    name = "var"

    def __init__(self, p: float = 0.6, rho: float = 0.5, min_media: float = 0.2, sinks: SinkConfig = SinkConfig(tau=20.0)):
        if not 0 <= p <= 1:
            raise ValueError(f"p (the share of a sink's attention it keeps) must be in [0, 1]; VAR's default is 0.6, got {p}")
        if not 0 <= rho <= 1:
            raise ValueError(f"rho must be in [0, 1]; VAR's default is 0.5, got {rho}")
        if not 0 <= min_media <= 1:
            raise ValueError(f"min_media (a share of a row) must be in [0, 1]; VAR's default is 0.2, got {min_media}")
        self.p, self.rho, self.min_media, self.sinks = p, rho, min_media, sinks

    def fwd_hooks(self, model, batch, edited: Optional[list] = None) -> list:
        """The redistribution hooks (for `model.generate(batch, fwd_hooks=...)` too). `edited`, if
        given, collects per hooked call a `[b]` tensor: the attention rows (heads x queries) the
        edit changed in each sample. Raises `NothingToSteer` naming the samples without media
        tokens or without sinks in the edited layers."""
        batch = model._to_batch(batch)
        edited = [] if edited is None else edited
        c = self.sinks
        rep = find_sinks(model, batch, dims=c.dims, tau=c.tau, eps=c.eps) if c.dims is not None else find_sinks(model, batch, tau=c.tau, eps=c.eps)
        L, b, n = model.cfg.n_layers, batch.batch_size, batch.shape[1]
        per_layer = torch.zeros(L, b, n, dtype=torch.bool)
        for s in range(b):
            for l, ps in enumerate(rep.per_layer(s, c.definition)):
                per_layer[l, s, ps] = True
        lay = batch.layout
        media = {m: lay.mask(m).cpu() for m in ("audio", "video", "image") if bool(lay.mask(m).any())}
        has_media = torch.zeros(b, dtype=torch.bool)
        for v in media.values():
            has_media |= v.any(1)
        if not bool(has_media.all()):
            bad = (~has_media).nonzero().flatten().tolist()
            raise NothingToSteer(f"samples {bad} have no audio, video or image tokens: VAR has no media attention to "
                                 "redistribute there (it would decode them plainly); decode them without VAR")
        has_sinks = per_layer[: L - 1].any(2).any(0)  # [b]
        if not bool(has_sinks.all()):
            bad = (~has_sinks).nonzero().flatten().tolist()
            raise NothingToSteer(f"samples {bad} have no sinks in layers 0..{L - 2} (SinkConfig {c}); VAR would change "
                                 "nothing there")
        layers = [l for l in range(L - 1) if bool(per_layer[l].any())]
        last_media = _last_media(batch)
        queries = _StepMemo(lambda n_q, start, k, dev: query_mask(batch, n_q, start, last_media=last_media.to(dev)))

        def make(l):
            # masks for this layer, rebuilt only when the key count changes (once per decoding step)
            memo = _StepMemo(lambda n_q, start, k, dev: _VarMasks(
                _pad_keys(per_layer[l].to(dev), k), {m: _pad_keys(v.to(dev), k) for m, v in media.items()}, self.p, dev))
            n_prompt = per_layer.shape[2]

            def hook(pattern, hook):
                n_q, k, dev = pattern.shape[2], pattern.shape[3], pattern.device
                P = pattern.float()
                out = _redistribute(P, queries(n_q, hook.start_pos, k, dev), memo(1, 0, min(k, n_prompt), dev),
                                    self.p, self.rho, self.min_media)
                # rows changed per sample, kept without a device sync (checked once, after decoding)
                edited.append((out != P).any(-1).sum((1, 2)))
                return out.to(pattern.dtype)
            return hook

        return [(f"blocks.{l}.attn.hook_pattern", make(l)) for l in layers]

    def start(self, model, prompt, batch):
        run = _VARRun([])
        run.branches = [Branch(batch, self.fwd_hooks(model, batch, run.edited), "var")]
        return run


class _VARRun(MethodRun):
    def __init__(self, branches):
        super().__init__(branches)
        self.edited: list[Tensor] = []  # per hooked call: [b] rows changed in each sample

    def finish(self) -> None:
        b = self.branches[0].batch.batch_size
        per_sample = torch.stack([x.cpu() for x in self.edited]).sum(0) if self.edited else torch.zeros(b, dtype=torch.long)
        bad = (per_sample == 0).nonzero().flatten().tolist()
        if bad:
            raise NothingToSteer(f"VAR edited no attention row in samples {bad}: no query after the media gave >= min_media "
                                 "of its attention to a modality whose sinks hold <= rho of it, so their output is plain "
                                 "decoding's")


_LOADED = True
