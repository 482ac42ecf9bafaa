"""One decoding loop for every mitigation method: each method runs one or more *branches* (a
batch and the hooks that edit it), each with its own KV cache, and combines the branches' next-token
logits at every step. Greedy, like the published baselines.

    out = decode(model, prompt, SinkSteering(...), max_new_tokens=16, eos_token_id=...)
    out.tokens, out.scores, out.seconds, out.setup_seconds

`model.generate(prompt, method=...)` decodes through this loop; single-branch hook methods also
give their hooks on their own (`SinkSteering.fwd_hooks`, `VAR.fwd_hooks`, `PAI.fwd_hooks`), so
`model.generate(batch, fwd_hooks=...)` steers too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from avlens.batch import AVBatch
from avlens.layout import BatchLayout
from avlens.model.components import KVCache

__all__ = ["AVPrompt", "Branch", "MethodRun", "Method", "Plain", "DecodeOutput", "decode", "KEEP", "NotApplicable", "NothingToSteer"]

KEEP = object()  # "keep this prompt's media" in AVPrompt.build


class NothingToSteer(ValueError):
    """The method has nothing to act on for this prompt (no cross-modal sink, no media, no row that
    qualifies): raised instead of silently decoding plainly. `compare_methods` decodes such a
    prompt plainly and counts it in `n_not_applied`; any other error propagates."""


class NotApplicable(Exception):
    """The method cannot run on this model at all (e.g. MAD on a model whose vocabulary lacks its
    self-assessment answers). Not a ValueError: `compare_methods` reports the whole method as not
    applicable instead of falling back to plain decoding sample by sample."""


@dataclass
class AVPrompt:
    """A prompt with its raw media, so methods can rebuild it (without media, with one modality,
    with another question): `text` holds the family's media placeholder(s); `audio` a waveform,
    `video` frames `[T, H, W, 3]`; `prepare` keyword arguments in `kwargs`."""

    text: str
    audio: Optional[np.ndarray] = None
    video: Optional[np.ndarray] = None
    fps: float = 2.0
    use_audio_in_video: bool = True
    kwargs: dict = field(default_factory=dict)

    def build(self, model, text: Optional[str] = None, audio: Any = KEEP, video: Any = KEEP,
              use_audio_in_video: Optional[bool] = None) -> AVBatch:
        a = self.audio if audio is KEEP else audio
        v = self.video if video is KEEP else video
        uav = self.use_audio_in_video if use_audio_in_video is None else use_audio_in_video
        return model.prepare_media(self.text if text is None else text, audio=a, video=v, fps=self.fps,
                                   use_audio_in_video=uav and a is not None and v is not None, **self.kwargs)


@dataclass
class Branch:
    """One forward stream: its prompt batch and the hooks active on its forwards."""

    batch: AVBatch
    hooks: list = field(default_factory=list)
    name: str = "main"


class MethodRun:
    """A method's state for one prompt: its branches and how their logits combine."""

    def __init__(self, branches: Sequence[Branch]):
        self.branches = list(branches)

    def combine(self, step: int, logits: list[Tensor]) -> Tensor:
        """Next-token scores `[b, vocab]` (argmax is the token) from the branches' logits."""
        return logits[0]

    def finish(self) -> None:
        """Called once decoding ends; a method raises `NothingToSteer` here if it turned out to
        change nothing (e.g. VAR found no row to edit)."""


class Method:
    """A decoding-time intervention. `start(model, prompt, batch)` -> `MethodRun`."""

    name = "method"
    needs_prompt = False  # True if it rebuilds the prompt (needs an AVPrompt, not just a batch)

    def start(self, model, prompt: Optional[AVPrompt], batch: AVBatch) -> MethodRun:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


class Plain(Method):
    """Plain greedy decoding (the reference every method is compared with)."""

    name = "plain"

    def start(self, model, prompt, batch):
        return MethodRun([Branch(batch)])


@dataclass
class DecodeOutput:
    """tokens `[b, n]`; scores `[b, n, vocab]` the combined scores each token was chosen from;
    seconds: wall time of the decoding loop (prefill + steps of every branch); setup_seconds: the
    method's preparation (sink detection, self-assessment, ...); n_branches; prefill_seconds: the
    prefill share of `seconds`; n_steps: decode steps run on the KV caches (tokens after the first)."""

    tokens: Tensor
    scores: Tensor
    seconds: float
    setup_seconds: float
    n_branches: int
    run: Any = field(default=None, repr=False)
    prefill_seconds: float = 0.0
    n_steps: int = 0


def _batch_of(model, prompt) -> tuple[Optional[AVPrompt], AVBatch]:
    if isinstance(prompt, AVPrompt):
        return prompt, prompt.build(model)
    return None, model._to_batch(prompt)


def _rows(fn: Callable, rows: slice) -> Callable:
    """`fn` applied to the rows `rows` of a stacked activation only (the other branches' rows pass
    through unchanged); what `fn` returns replaces those rows."""

    def hook(x, hook):
        part = x[rows]
        y = fn(part, hook)
        if y is None:
            return None
        out = x.clone()
        out[rows] = y
        return out

    return hook


class _Stack:
    """Branches decoded as one batch: their KV caches, layouts and rope deltas stacked along the
    batch axis, each branch's hooks acting on its own rows only. A branch shorter than the stack
    (only ever a hook-free one, `_stack_groups`) is padded on the left: padded keys are masked, and
    the next position is counted from the real keys, so its rows compute what they would alone."""

    def __init__(self, members: list[int], branches: list[Branch], caches: list[KVCache], b: int, dev):
        self.members = members
        n = max(caches[i].key_mask.shape[1] for i in members)
        L = len(caches[members[0]].keys)
        self.cache = KVCache(L)
        for l in range(L):
            self.cache.keys[l] = torch.cat([_left_pad(caches[i].keys[l], n) for i in members])
            self.cache.values[l] = torch.cat([_left_pad(caches[i].values[l], n) for i in members])
        self.cache.key_mask = torch.cat([_left_pad(caches[i].key_mask, n) for i in members])
        self.layout = BatchLayout.cat([_left_pad_layout(branches[i].batch.layout, n) for i in members])
        self.deltas = torch.cat([_deltas(branches[i].batch, dev) for i in members])
        self.pos_ndim = branches[members[0]].batch.position_ids.ndim
        self.b = b
        one = len(members) == 1
        self.hooks = [(name, fn if one else _rows(fn, slice(j * b, (j + 1) * b)))
                      for j, i in enumerate(members) for name, fn in branches[i].hooks]

    def step(self, model, nxt: Tensor, logits: list) -> None:
        self.layout = self.layout.extend(1)
        toks = nxt.repeat(len(self.members))
        if self.hooks:
            with model.hooks(fwd_hooks=list(self.hooks)):
                out = model._decode_step(toks, self.cache, self.layout, self.deltas, self.pos_ndim)
        else:
            out = model._decode_step(toks, self.cache, self.layout, self.deltas, self.pos_ndim)
        for j, i in enumerate(self.members):
            logits[i] = out[j * self.b:(j + 1) * self.b]


def _left_pad(x: Tensor, n: int) -> Tensor:
    """`x [b, k, ...]` with zeros prepended along axis 1 up to length `n`."""
    if x.shape[1] == n:
        return x
    return torch.cat([x.new_zeros(x.shape[0], n - x.shape[1], *x.shape[2:]), x], 1)


def _left_pad_layout(layout: BatchLayout, n: int) -> BatchLayout:
    """The layout with `pad` positions prepended up to length `n`."""
    k = n - layout.n_pos
    if k == 0:
        return layout
    b, dev = layout.batch_size, layout.device
    masks = {g: torch.cat([torch.full((b, k), g == "pad", dtype=torch.bool, device=dev), m], 1) for g, m in layout.masks.items()}
    return BatchLayout(
        masks,
        time=torch.cat([torch.full((b, k), float("nan"), device=dev), layout.time], 1),
        chunk=torch.cat([torch.full((b, k), -1, dtype=torch.long, device=dev), layout.chunk], 1),
        media_index=torch.cat([torch.full((b, k), -1, dtype=torch.long, device=dev), layout.media_index], 1),
        str_tokens=[["<pad>"] * k + t for t in layout.str_tokens] if layout.str_tokens else None,
        validate=False,
    )


def _deltas(batch: AVBatch, dev) -> Tensor:
    d = batch.rope_deltas
    return torch.zeros(batch.batch_size, 1, dtype=torch.long, device=dev) if d is None else d.to(dev)


def _stack_groups(branches: Sequence[Branch], stack: bool) -> list[list[int]]:
    """Indices of the branches that share one batched forward per decoding step (every branch
    alone when `stack` is False). Branches with hooks stack only with branches of their own prompt
    length (their hooks index keys by position); hook-free branches also join a longer stack,
    padded on the left: per position-id layout, the stack of the first hooked branch's length
    (the longest branch's when none has hooks) takes every hook-free branch not longer than it."""
    if not stack:
        return [[i] for i in range(len(branches))]
    groups: list[list[int]] = []
    by_ndim: dict[int, list[int]] = {}
    for i, br in enumerate(branches):
        by_ndim.setdefault(br.batch.position_ids.ndim, []).append(i)
    for idx in by_ndim.values():
        n = lambda i: branches[i].batch.shape[1]  # noqa: E731
        hooked = [i for i in idx if branches[i].hooks]
        n_star = n(hooked[0]) if hooked else max(n(i) for i in idx)
        main = [i for i in idx if (n(i) == n_star if branches[i].hooks else n(i) <= n_star)]
        groups.append(main)
        rest: dict[int, list[int]] = {}
        for i in idx:
            if i not in main:
                rest.setdefault(n(i), []).append(i)
        groups.extend(rest.values())
    return sorted(groups)


@torch.no_grad()
def decode(model, prompt: Union[AVPrompt, AVBatch], method: Optional[Method] = None, max_new_tokens: int = 16,
           eos_token_id: Optional[Union[int, Sequence[int]]] = None, pad_token_id: Optional[int] = None,
           stack_branches: bool = True, fwd_hooks: Sequence = ()) -> DecodeOutput:
    """Greedy decoding with `method` (default `Plain()`), every branch on its own KV cache, one
    loop. With `max_new_tokens=1` it is the method's single forward (yes/no scoring reads
    `out.scores[:, 0]`).

    Each branch is prefilled on its own. With `stack_branches` (default), the branches then decode
    together where they can (`_stack_groups`: equally long prompts, plus hook-free shorter ones
    padded on the left): one batched forward per step over their stacked KV caches, each branch's
    hooks wrapped to see and edit only its own rows (`hook.layout` is the stacked layout). The
    tokens and scores equal the branch-by-branch loop (`stack_branches=False`) up to float rounding
    of the batched matmuls; the per-token cost of a k-branch method drops from about k forwards to
    about one batched forward.

    `fwd_hooks`: extra hooks added to every branch whose prompt has the prompt's shape (the
    prompt itself and its same-length variants: steered, noised, masked; not PAI's shorter
    media-free prompt), seeing only that branch's rows; they are not active during the method's
    setup (sink detection, MAD's self-assessment)."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    method = method or Plain()
    p, batch = _batch_of(model, prompt)
    if method.needs_prompt and p is None:
        raise TypeError(f"{type(method).__name__} rebuilds the prompt (without media / with other inputs), so pass an "
                        "avlens.mitigation.AVPrompt(text, audio=..., video=...) rather than a prepared batch")
    if not bool(batch.attention_mask[:, -1].bool().all()):
        raise ValueError("decode needs left padding (some samples end in padding); pad on the left")
    t0 = time.perf_counter()
    run = method.start(model, p, batch)
    setup = time.perf_counter() - t0
    if fwd_hooks:
        for br in run.branches:
            if tuple(br.batch.shape) == tuple(batch.shape):
                br.hooks = list(br.hooks) + list(fwd_hooks)
    eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    eos_t = torch.tensor(sorted(eos), device=model.W_E.device) if eos else None
    if pad_token_id is None:
        pad_token_id = model.cfg.token_ids.get("pad_token_id", next(iter(eos), 0))
    dev = model.W_E.device
    L = model.cfg.n_layers
    for br in run.branches:
        if br.batch.batch_size != batch.batch_size:
            raise ValueError(f"branch {br.name!r} has {br.batch.batch_size} samples but the prompt has {batch.batch_size}")
    t0 = time.perf_counter()
    caches, logits = [], []
    model.run_state.generating = True
    try:
        for br in run.branches:
            cache = KVCache(L)
            cache.key_mask = br.batch.attention_mask.to(dev).long()
            with model.hooks(fwd_hooks=list(br.hooks)):
                logits.append(model.forward(br.batch, kv_cache=cache)[:, -1])
            caches.append(cache)
        stacks = None
        prefill = time.perf_counter() - t0
        n_steps = 0
        tokens, scores = [], []
        finished = torch.zeros(batch.batch_size, dtype=torch.bool, device=dev)
        for step in range(max_new_tokens):
            s = run.combine(step, logits)
            scores.append(s)
            nxt = torch.where(finished, torch.full_like(s[:, 0], pad_token_id, dtype=torch.long), s.argmax(-1))
            tokens.append(nxt)
            if eos_t is not None:
                finished |= torch.isin(nxt, eos_t)
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            if stacks is None:  # built once, after the first token (a one-token answer never needs it)
                stacks = [_Stack(g, run.branches, caches, batch.batch_size, dev)
                          for g in _stack_groups(run.branches, stack_branches)]
                caches = None  # the stacks own the caches now
            for st in stacks:
                st.step(model, nxt, logits)
            n_steps += 1
    finally:
        model.run_state.generating = False
    secs = time.perf_counter() - t0
    run.finish()
    return DecodeOutput(torch.stack(tokens, 1), torch.stack(scores, 1), secs, setup, len(run.branches), run, prefill, n_steps)
