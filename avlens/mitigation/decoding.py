"""One decoding loop for every mitigation method: each method runs one or more *branches* (a
batch and the hooks that edit it), each with its own KV cache, and combines the branches' next-token
logits at every step. Greedy, like the published baselines.

    out = decode(model, prompt, SinkSteering(...), max_new_tokens=16, eos_token_id=...)
    out.tokens, out.scores, out.seconds, out.setup_seconds

`model.generate` is untouched: single-branch hook methods also give their hooks for it
(`SinkSteering.fwd_hooks(model, batch)`), so `model.generate(batch, fwd_hooks=...)` steers too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from avlens.batch import AVBatch
from avlens.model.components import KVCache

__all__ = ["AVPrompt", "Branch", "MethodRun", "Method", "Plain", "DecodeOutput", "decode", "KEEP", "NotApplicable"]

KEEP = object()  # "keep this prompt's media" in AVPrompt.build


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


@torch.no_grad()
def decode(model, prompt: Union[AVPrompt, AVBatch], method: Optional[Method] = None, max_new_tokens: int = 16,
           eos_token_id: Optional[Union[int, Sequence[int]]] = None, pad_token_id: Optional[int] = None) -> DecodeOutput:
    """Greedy decoding with `method` (default `Plain()`), every branch on its own KV cache, one
    loop. With `max_new_tokens=1` it is the method's single forward (yes/no scoring reads
    `out.scores[:, 0]`)."""
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
    eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    if pad_token_id is None:
        pad_token_id = model.cfg.token_ids.get("pad_token_id", next(iter(eos), 0))
    dev = model.W_E.device
    L = model.cfg.n_layers
    t0 = time.perf_counter()
    caches, layouts, logits = [], [], []
    model.run_state.generating = True
    try:
        for br in run.branches:
            cache = KVCache(L)
            cache.key_mask = br.batch.attention_mask.to(dev).long()
            with model.hooks(fwd_hooks=list(br.hooks)):
                logits.append(model.forward(br.batch, kv_cache=cache)[:, -1])
            caches.append(cache)
            layouts.append(br.batch.layout)
        prefill = time.perf_counter() - t0
        n_steps = 0
        tokens, scores = [], []
        finished = torch.zeros(batch.batch_size, dtype=torch.bool, device=dev)
        for step in range(max_new_tokens):
            s = run.combine(step, logits)
            scores.append(s)
            nxt = torch.where(finished, torch.full_like(s[:, 0], pad_token_id, dtype=torch.long), s.argmax(-1))
            tokens.append(nxt)
            if eos:
                finished |= torch.isin(nxt, torch.tensor(sorted(eos), device=dev))
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            for i, br in enumerate(run.branches):
                layouts[i] = layouts[i].extend(1)
                deltas = br.batch.rope_deltas
                if deltas is None:
                    deltas = torch.zeros(br.batch.batch_size, 1, dtype=torch.long, device=dev)
                with model.hooks(fwd_hooks=list(br.hooks)):
                    logits[i] = model._decode_step(nxt, caches[i], layouts[i], deltas, br.batch.position_ids.ndim)
            n_steps += 1
    finally:
        model.run_state.generating = False
    secs = time.perf_counter() - t0
    return DecodeOutput(torch.stack(tokens, 1), torch.stack(scores, 1), secs, setup, len(run.branches), run, prefill, n_steps)
