"""Metrics for patching, tracing and knockout: `metric(logits, batch) -> Tensor[batch]`.

A metric maps the logits of one (patched) run to one value per sample, so many patches can share
a forward pass and each sample can carry its own answer. A TransformerLens-style
`metric(logits) -> scalar` works too (called once per patch with that patch's logits).

Where a metric reads matters for speed: the avlens metrics below set `logits_at = "last"`, so a
sweep unembeds only each sample's last real position and hands the metric `[batch, 1, d_vocab]`
(`[batch, k, d_vocab]` with `answer_steps=k`: the prefill's last position, then each greedy
step). A plain callable gets the full `[batch, pos, d_vocab]` logits unless the sweep is told
`logits_at="last"` (then `logits[:, -1]` still works on what it gets).

Provided (METHODS.md section 5):

- `AnswerProb(answers)`: softmax probability of the answer's first sub-token; with several
  candidates per sample (the word's and " " + word's first sub-token) the larger one; maximised
  over the positions / steps it is given (the official `max_prob_for_word`).
- `LogitDiff(correct, incorrect)`: `logit[correct] - logit[incorrect]` at the last position.
- `ie_clean(o_clean)`, `ie_corrupt(o_corrupt)`: the paper's indirect effects,
  `IE_clean = P_patched(o_clean) - P_corrupt(o_clean)` and
  `IE_corrupt = P_corrupt(o_corrupt) - P_patched(o_corrupt)`, x 100, where "corrupt" is the
  unpatched run the patches start from; the sweep binds that baseline (`Metric.bind`).
- `ResidualDirection(direction)`: the final residual stream (before `ln_final`) at the last
  position, dotted with a direction: a metric that is linear in the residual stream.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from avlens.batch import AVBatch

Answers = Union[int, str, Sequence[int], Sequence[str], Tensor]


class Metric:
    """Base class: `__call__(logits, batch) -> Tensor[batch]`.

    Attributes:
        logits_at: `"last"` (each sample's last real position), `"all"`, or a LongTensor of
            absolute positions (`[n]` or `[batch, n]`).
        reads: `"logits"`, or `"resid"` for the final residual stream before `ln_final`
            (`[batch, n, d_model]` is then passed instead of logits).
    """

    name: str = "metric"
    logits_at: Any = "last"
    reads: str = "logits"

    def __call__(self, logits: Tensor, batch: AVBatch) -> Tensor:
        raise NotImplementedError

    def bind(self, base_read: Tensor, batch: AVBatch) -> "Metric":
        """The metric to use for patches of a run whose own (unpatched) reading is `base_read`.
        Most metrics ignore it; the indirect effects subtract the unpatched probability."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def answer_tokens(answers: Answers, model=None, leading_space: bool = True) -> Tensor:
    """Answer token ids `[n, k]` (k candidates per sample) from ids or words.

    Ids: an int (one answer for every sample), a list or LongTensor `[n]`, or `[n, k]`.
    Words (need `model.tokenizer`): the first sub-token of the word and, with `leading_space`,
    of `" " + word` (the larger probability counts; METHODS.md section 5).
    """
    if isinstance(answers, Tensor):
        if answers.is_floating_point():
            raise TypeError(f"answer tokens must be integer ids, got a {answers.dtype} tensor")
        t = answers.long()
        return t.reshape(1, 1) if t.ndim == 0 else (t[:, None] if t.ndim == 1 else t)
    if isinstance(answers, int):
        return torch.tensor([[answers]])
    if isinstance(answers, str):
        answers = [answers]
    answers = list(answers)
    if not answers:
        raise ValueError("no answers given")
    if all(isinstance(a, int) for a in answers):
        return torch.tensor(answers, dtype=torch.long)[:, None]
    if all(isinstance(a, str) for a in answers):
        tok = getattr(model, "tokenizer", None) if model is not None else None
        if tok is None:
            raise ValueError(
                "answers given as words need a tokenizer: pass model= (with model.tokenizer set), "
                "or give the answers' token ids instead."
            )
        rows = []
        for word in answers:
            cands = []
            for text in ([word, " " + word] if leading_space else [word]):
                ids = tok(text, add_special_tokens=False)["input_ids"]
                if ids:
                    cands.append(int(ids[0]))
            if not cands:
                raise ValueError(f"the answer {word!r} tokenizes to nothing")
            rows.append(cands + cands[-1:] * (2 - len(cands)))
        return torch.tensor(rows, dtype=torch.long)
    raise TypeError(f"answers must be token ids or words, got {answers[:3]!r}")


def _per_sample(tokens: Tensor, n: int, what: str) -> Tensor:
    """Answers for `n` samples: one row for all, one per sample, or one per sample of each of
    several copies (a batch tiled by a corruption with noised copies)."""
    m = tokens.shape[0]
    if m == n:
        return tokens
    if m == 1 or n % m == 0:
        return tokens.repeat(n // m, 1)
    raise ValueError(f"{what}: {m} answers for a batch of {n} samples; give one per sample (or one for all)")


class AnswerProb(Metric):
    """Softmax probability of the answer's first sub-token (max over candidates and over the
    positions or greedy steps read): the official `max_prob_for_word`."""

    name = "answer_prob"

    def __init__(self, answers: Answers, model=None, leading_space: bool = True):
        self.tokens = answer_tokens(answers, model, leading_space)

    def __call__(self, logits: Tensor, batch: Optional[AVBatch] = None) -> Tensor:
        if logits.ndim == 2:
            logits = logits[:, None]
        tokens = _per_sample(self.tokens.to(logits.device), logits.shape[0], self.name)
        probs = logits.float().softmax(-1)  # [b, n, V]
        p = probs.gather(-1, tokens[:, None, :].expand(-1, probs.shape[1], -1))  # [b, n, k]
        return p.amax(-1).amax(-1)


class LogitDiff(Metric):
    """`logits[correct] - logits[incorrect]` at the last position, per sample."""

    name = "logit_diff"

    def __init__(self, correct: Answers, incorrect: Answers, model=None):
        self.correct = answer_tokens(correct, model, leading_space=False)[:, :1]
        self.incorrect = answer_tokens(incorrect, model, leading_space=False)[:, :1]

    def __call__(self, logits: Tensor, batch: Optional[AVBatch] = None) -> Tensor:
        last = logits[:, -1] if logits.ndim == 3 else logits
        n = last.shape[0]
        c = _per_sample(self.correct.to(last.device), n, self.name)
        w = _per_sample(self.incorrect.to(last.device), n, self.name)
        return (last.gather(-1, c) - last.gather(-1, w))[:, 0].float()


class IndirectEffect(Metric):
    """The paper's indirect effect of a patch, x `scale` (METHODS.md section 5):
    `sign * (P_patched(answer) - P_unpatched(answer))`. `sign=+1` with `o_clean` is IE_clean,
    `sign=-1` with `o_corrupt` is IE_corrupt. The unpatched probability comes from the run the
    patches start from, bound by the sweep (`bind`)."""

    def __init__(self, answers: Answers, sign: int, name: str, model=None, scale: float = 100.0):
        if sign not in (1, -1):
            raise ValueError("sign must be +1 (IE_clean) or -1 (IE_corrupt)")
        self.prob = AnswerProb(answers, model)
        self.sign, self.scale, self.name = sign, scale, name
        self.p_base: Optional[Tensor] = None

    def bind(self, base_read: Tensor, batch: AVBatch) -> "IndirectEffect":
        bound = IndirectEffect.__new__(IndirectEffect)
        bound.__dict__.update(self.__dict__)
        bound.p_base = self.prob(base_read, batch)
        return bound

    def __call__(self, logits: Tensor, batch: Optional[AVBatch] = None) -> Tensor:
        if self.p_base is None:
            raise RuntimeError(
                f"{self.name} compares a patched run with the unpatched one; use it in a patching "
                "or tracing function (which binds the unpatched probability), or call "
                "metric.bind(unpatched_logits, batch) first."
            )
        return self.sign * self.scale * (self.prob(logits, batch) - self.p_base.to(logits.device))


def ie_clean(o_clean: Answers, model=None) -> IndirectEffect:
    """IE_clean = 100 (P_patched(o_clean) - P_corrupt(o_clean))."""
    return IndirectEffect(o_clean, +1, "IE_clean", model)


def ie_corrupt(o_corrupt: Answers, model=None) -> IndirectEffect:
    """IE_corrupt = 100 (P_corrupt(o_corrupt) - P_patched(o_corrupt))."""
    return IndirectEffect(o_corrupt, -1, "IE_corrupt", model)


class ResidualDirection(Metric):
    """The final residual stream (before `ln_final`) at the last position dotted with
    `direction` `[d_model]`: linear in every activation that adds into the residual stream."""

    name = "residual_direction"
    reads = "resid"

    def __init__(self, direction: Tensor):
        if direction.ndim != 1:
            raise ValueError(f"direction must be [d_model], got shape {tuple(direction.shape)}")
        self.direction = direction

    def __call__(self, resid: Tensor, batch: Optional[AVBatch] = None) -> Tensor:
        return resid[:, -1].float() @ self.direction.to(resid.device).float()


# ---------------------------------------------------------------------------------- calling


def metric_reads(metric, logits_at=None) -> tuple[str, Any]:
    """(what, where) a metric reads: `("logits" | "resid", "last" | "all" | positions)`.
    A sweep's `logits_at=` overrides where; plain callables read all logits by default."""
    what = getattr(metric, "reads", "logits")
    where = logits_at if logits_at is not None else getattr(metric, "logits_at", "all")
    if what not in ("logits", "resid"):
        raise ValueError(f"metric.reads must be 'logits' or 'resid', got {what!r}")
    if isinstance(where, str) and where not in ("last", "all"):
        raise ValueError(f"logits_at must be 'last', 'all' or positions; got {where!r}")
    return what, where


def takes_batch(metric) -> bool:
    """Whether `metric` is called as `metric(logits, batch)` (else TransformerLens's
    `metric(logits)`)."""
    if isinstance(metric, Metric):
        return True
    try:
        params = inspect.signature(metric).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    return len(positional) >= 2


def metric_name(metric) -> str:
    return getattr(metric, "name", None) or getattr(metric, "__name__", None) or type(metric).__name__


def evaluate(metric, read: Tensor, batch: AVBatch, with_batch: bool) -> Tensor:
    """Call a metric and check its shape: returns `[batch]` or a 0-d tensor."""
    out = metric(read, batch) if with_batch else metric(read)
    if not isinstance(out, Tensor):
        try:
            out = torch.as_tensor(out, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"the metric {metric_name(metric)!r} returned {type(out).__name__}; it must return a tensor") from None
    n = batch.batch_size
    if out.ndim == 0 or tuple(out.shape) == (n,):
        return out.detach().float()
    raise ValueError(
        f"the metric {metric_name(metric)!r} returned shape {tuple(out.shape)}; it must return one value "
        f"per sample, shape [batch] = [{n}] (metric(logits, batch)), or a scalar "
        "(TransformerLens-style metric(logits)). Reduce over positions and vocabulary inside the metric."
    )
