"""The engine under every exact intervention (patching, tracing, path patching, knockout).

A sweep is a list of *cells*, each one intervention on the same unpatched *base* run (the
corrupted run when denoising). For each cell the caller says where it can first change anything,
`(start_layer, first_position)`, or that it cannot (a no-op: clean and corrupted values are equal
there). The engine then does only the work that an exact answer needs (PERFORMANCE.md):

- a no-op cell costs nothing: its value is the base run's metric;
- a cell starts at `start_layer` from the base run's cached residual stream (`start_at_layer`);
- positions before `first_position` are unchanged at every layer (causal attention), so only
  positions from there on are recomputed, attending to the base run's cached keys and values
  for the earlier ones;
- the unembedding runs only where the metric reads (usually the last position);
- cells with the same start layer and nearby first positions share one forward pass: their
  copies of the batch are stacked along the batch axis (patch-major), up to a memory budget.

Interventions act through ordinary hooks (`model.hooks`), so they are removed whatever happens;
every hook must fire, and with `verify=True` a cell whose output equals the base run's raises
`NoOpError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from avlens.batch import AVBatch
from avlens.model.components import KVCache, TransformerBlock
from avlens.interventions.metrics import evaluate, metric_reads, takes_batch

#: (start layer, first position) where a cell can first change the run; None: a no-op
Plan = Optional[tuple[int, int]]
HookList = list[tuple[str, Callable]]

DEFAULT_CPU_BUDGET = 1 << 30  # bytes of activations per batched forward


class NoOpError(ValueError):
    """An intervention asked to verify itself changed nothing."""


# ----------------------------------------------------------------------------------- reading


@dataclass
class Reading:
    """What the metrics read: `what` ("logits" or "resid") at `positions` (`[b, R]` absolute
    positions, or None for every position)."""

    what: str
    positions: Optional[Tensor]

    @property
    def all(self) -> bool:
        return self.positions is None


def make_reading(metrics: dict, batch: AVBatch, logits_at=None, answer_steps: int = 1) -> Reading:
    specs = {name: metric_reads(m, logits_at) for name, m in metrics.items()}
    distinct = {(w, p if isinstance(p, str) else "positions") for w, p in specs.values()}
    if len(distinct) > 1:
        raise ValueError(
            f"these metrics read different things ({specs}); one sweep reads one place for all its "
            "metrics. Run them separately, or pass logits_at= to make them read the same positions."
        )
    what, where = next(iter(specs.values()))
    b, S = batch.shape
    if where == "all":
        pos = None
    elif where == "last":
        pos = batch.layout.mask("last").long().argmax(-1, keepdim=True)  # [b, 1]
    else:
        pos = torch.as_tensor(where, dtype=torch.long, device=batch.device)
        if pos.ndim == 1:
            pos = pos[None].expand(b, -1)
        if pos.ndim != 2 or pos.shape[0] != b:
            raise ValueError(f"logits_at positions must be [n] or [batch, n] = [{b}, n]; got shape {tuple(pos.shape)}")
        pos = torch.where(pos < 0, pos + S, pos)
        if pos.numel() and not (int(pos.min()) >= 0 and int(pos.max()) < S):
            raise IndexError(f"logits_at positions must lie in [-{S}, {S}); got {where!r}")
    if answer_steps > 1:
        if what != "logits" or where != "last":
            raise ValueError("answer_steps > 1 scores greedy steps: the metric must read logits at 'last'")
        if not bool(batch.attention_mask[:, -1].bool().all()):
            raise ValueError(
                "answer_steps > 1 decodes greedily after the prefill, which needs left padding (some "
                "samples end in padding). Pad on the left, or use answer_steps=1."
            )
    return Reading(what, pos)


# ----------------------------------------------------------------------------------- base run


@dataclass
class BaseRun:
    """An unpatched run, the state patches start from, and the metrics bound to it."""

    batch: AVBatch
    resid_pre: list[Tensor]  # [n_layers] x [b, S, d]
    keys: list[Optional[Tensor]]  # [n_layers] x [b, S, kv heads, d_head] (rotated)
    values: list[Optional[Tensor]]
    acts: dict[str, Tensor]  # other cached activations, by hook name
    read: Tensor  # what the metrics read: [b, R, d_vocab] logits or [b, R, d_model] residual
    metrics: dict[str, Any] = field(default_factory=dict)  # bound to this run
    scores: dict[str, Tensor] = field(default_factory=dict)  # metric values here, [b] or 0-d
    with_batch: dict[str, bool] = field(default_factory=dict)

    def bind(self, metrics: dict) -> None:
        """Bind `metrics` to this run (the indirect effects take its probability as the
        baseline) and score it."""
        self.with_batch = {k: takes_batch(m) for k, m in metrics.items()}
        self.metrics = {k: (m.bind(self.read, self.batch) if hasattr(m, "bind") else m) for k, m in metrics.items()}
        self.scores = self.score(self.metrics)

    def score(self, metrics: dict) -> dict[str, Tensor]:
        """The values of (already bound) metrics on this run."""
        return {k: evaluate(m, self.read, self.batch, takes_batch(m)) for k, m in metrics.items()}


def _final_resid_hook(model) -> str:
    return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"


@torch.no_grad()
def run_base(model, batch: AVBatch, reading: Reading, names: Sequence[str] = (), answer_steps: int = 1, state: bool = True) -> BaseRun:
    """Run `batch` once, caching the activations `names`, what the metrics read and, with
    `state`, every layer's resid_pre and keys/values (what patches start from)."""
    L = model.cfg.n_layers
    store: dict[str, Tensor] = {}

    def save(x, hook):
        store[hook.name] = x.detach()

    want = ([f"blocks.{l}.hook_resid_pre" for l in range(L)] if state else []) + list(names)
    if reading.what == "resid":
        want.append(_final_resid_hook(model))
    cache = KVCache(L) if (state or answer_steps > 1) else None
    if cache is not None:
        cache.key_mask = batch.attention_mask
    kw: dict[str, Any] = {}
    if reading.what == "resid":
        kw["return_type"] = None
    elif not reading.all:
        kw["logits_at"] = reading.positions
    with model.hooks(fwd_hooks=[(n, save) for n in dict.fromkeys(want)]):
        out = model.forward(batch, kv_cache=cache, **kw)
    if reading.what == "resid":
        resid = store[_final_resid_hook(model)]
        read = resid if reading.all else _gather(resid, reading.positions)
    else:
        read = out
    # the prefill's keys and values (decoding below appends to the cache's own lists)
    keys, values = (list(cache.keys), list(cache.values)) if state else ([], [])
    if answer_steps > 1:
        read = greedy_steps(model, batch, cache, read, answer_steps, torch.arange(batch.batch_size, device=batch.device))
    return BaseRun(
        batch=batch,
        resid_pre=[store[f"blocks.{l}.hook_resid_pre"] for l in range(L)] if state else [],
        keys=keys,
        values=values,
        acts={n: store[n] for n in names},
        read=read,
    )


def _gather(x: Tensor, pos: Tensor) -> Tensor:
    """x `[b, S, ...]` at positions `[b, R]` -> `[b, R, ...]`."""
    idx = pos.view(*pos.shape, *([1] * (x.ndim - 2))).expand(*pos.shape, *x.shape[2:])
    return x.gather(1, idx)


def tile_batch(batch: AVBatch, rows: Tensor, start: int = 0) -> AVBatch:
    """The samples `rows` of `batch` (repeats allowed), positions `start:` only. Media features
    are dropped: a batch built here is only run from a residual stream or a KV cache."""
    lay = batch.layout.select(rows)
    if start:
        lay = lay.slice(start)
    return AVBatch(
        input_ids=(batch.input_ids if batch.input_ids is not None else torch.zeros_like(batch.attention_mask).long())[rows, start:],
        attention_mask=batch.attention_mask[rows, start:],
        position_ids=batch.position_ids[..., rows, start:],
        layout=lay,
        rope_deltas=None if batch.rope_deltas is None else batch.rope_deltas[rows],
    )


@torch.no_grad()
def greedy_steps(model, batch: AVBatch, cache: KVCache, first: Tensor, steps: int, rows: Tensor) -> Tensor:
    """Continue a prefill greedily for `steps - 1` more tokens; `first` is the prefill's last-
    position logits `[n, 1, V]`. Returns the logits of every step `[n, steps, V]` (the official
    metric is maximised over them)."""
    layout = batch.layout.select(rows)
    deltas = batch.rope_deltas[rows] if batch.rope_deltas is not None else torch.zeros(len(rows), 1, dtype=torch.long, device=first.device)
    logits = [first[:, -1]]
    for _ in range(steps - 1):
        layout = layout.extend(1)
        nxt = logits[-1].argmax(-1)
        logits.append(model._decode_step(nxt, cache, layout, deltas, batch.position_ids.ndim))
    return torch.stack(logits, 1)


# ----------------------------------------------------------------------------------- sweep


def partial_forward_exact(model) -> bool:
    """Whether a forward from layer l over positions p.. (given the residual stream there and the
    earlier positions' keys and values) reproduces the full forward: true when every block is the
    standard pre-norm block. A family whose blocks add inputs of their own (Qwen3-Omni's DeepStack
    adds visual features after its first blocks) gets full forwards instead, still batched."""
    return all(type(b).forward is TransformerBlock.forward for b in model.blocks)


@dataclass
class SweepStats:
    n_cells: int = 0
    n_skipped: int = 0
    n_forwards: int = 0
    seconds: float = 0.0


def _budget(model, memory_budget: Optional[int]) -> int:
    if memory_budget is not None:
        if memory_budget <= 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
        return int(memory_budget)
    dev = model.W_E.device
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free * 0.5)
    return DEFAULT_CPU_BUDGET


def _patch_bytes(model, b: int, S: int, n_new: int, start: int, read_len: int, read_width: int, eager: bool) -> int:
    """Rough peak activation memory of one patch's copy of the batch in a forward from layer
    `start` that recomputes `n_new` positions: one layer's transients (residual, norms, q/k/v/z,
    MLP, and the score and pattern tensors of eager attention), the keys and values of every
    layer from `start` (cached prefix + its concatenated copy), and what the metric reads."""
    c = model.cfg
    el = torch.finfo(model.W_E.dtype).bits // 8
    per_pos = 8 * c.d_model + 3 * c.d_mlp + 2 * c.n_heads * c.d_head + (2 * c.n_heads * S if eager else 0)
    kv = 4 * (c.n_layers - start) * S * c.n_key_value_heads * c.d_head
    return el * b * (n_new * per_pos + kv + read_len * read_width)


def run_sweep(
    model,
    base: BaseRun,
    plans: Sequence[Plan],
    make_hooks: Callable[[Sequence[int], int, int], HookList],
    reading: Reading,
    *,
    answer_steps: int = 1,
    batch_size: Optional[int] = None,
    memory_budget: Optional[int] = None,
    eager: bool = False,
    verify: bool = False,
    describe: Callable[[int], str] = str,
    progress: Optional[bool] = None,
    desc: str = "patching",
) -> tuple[dict[str, Tensor], SweepStats]:
    """Run every cell; returns per-metric values `[n_cells, b]` (or `[n_cells]` for scalar metrics)
    and the sweep's statistics.

    `make_hooks(cell_ids, start, p0)` returns the hooks that apply those cells to a forward from
    layer `start` over positions `p0:`; the activations they see are `[n * b, ...]`, patch-major
    (rows `i * b : (i + 1) * b` belong to the i-th cell).
    """
    t0 = time.perf_counter()
    batch = base.batch
    b, S = batch.shape
    n = len(plans)
    stats = SweepStats(n_cells=n)
    skipped = [i for i, p in enumerate(plans) if p is None]
    stats.n_skipped = len(skipped)
    if verify and skipped:
        _raise_noop(skipped, describe, "its source and base values are identical")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 patches per forward, got {batch_size}")
    out = {k: torch.empty((n,) + tuple(v.shape), dtype=torch.float32) for k, v in base.scores.items()}
    for k, v in base.scores.items():
        out[k][skipped] = v.cpu()

    if not partial_forward_exact(model):
        plans = [None if p is None else (0, 0) for p in plans]
    budget = _budget(model, memory_budget)
    read_len = S if reading.all else reading.positions.shape[1]
    read_width = model.cfg.d_vocab_out if reading.what == "logits" else model.cfg.d_model
    chunks = _chunks(model, plans, b, S, (read_len + answer_steps) * read_width, budget, batch_size, eager)
    show = progress if progress is not None else (len(chunks) > 20)
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=n - len(skipped), desc=desc, unit="patch")
    noops: list[int] = []
    noise = 1e-6 * max(1.0, float(base.read.abs().max())) if verify else 0.0
    try:
        for ids, start, p0 in chunks:
            read = _run_chunk(model, base, ids, start, p0, make_hooks(ids, start, p0), reading, answer_steps)
            stats.n_forwards += 1
            for j, i in enumerate(ids):
                r = read[j * b:(j + 1) * b]
                # unchanged up to float32 noise (recomputing a position in a different batch shape
                # may differ in the last bits)
                if verify and float((r - base.read).abs().max()) <= noise:
                    noops.append(i)
                for k, m in base.metrics.items():
                    out[k][i] = evaluate(m, r, batch, base.with_batch[k]).cpu()
            if bar is not None:
                bar.update(len(ids))
    finally:
        if bar is not None:
            bar.close()
    if noops:
        _raise_noop(sorted(noops), describe, "the output it changes is identical to the unpatched run's")
    stats.seconds = time.perf_counter() - t0
    return out, stats


def _raise_noop(ids: Sequence[int], describe, why: str):
    shown = "; ".join(describe(i) for i in ids[:5])
    more = f" (and {len(ids) - 5} more)" if len(ids) > 5 else ""
    raise NoOpError(
        f"{len(ids)} intervention(s) would be silent no-ops ({why}): {shown}{more}. Choose sites, "
        "positions or layers where the two runs differ (e.g. at or after the corrupted tokens), or "
        "drop verify=True to accept no-ops (their value is then the unpatched metric)."
    )


def _chunks(model, plans, b, S, read_elems, budget, batch_size, eager, slack: Optional[float] = None, add: Optional[int] = None):
    """Group cells into forwards: same start layer, and first positions close enough that
    recomputing every cell of the group from its earliest one costs at most `slack` x a cell's own
    positions, plus `add` positions; within the memory budget.

    On the CPU, batching patches gains little (measured on the patching benchmark: chunks of
    about 5 patches were ~30 % cheaper in CPU time than one patch per forward, and
    recomputing up to 25 % more positions to make chunks larger cost ~10 %), so chunks stay
    tight. On a GPU, where a short forward is latency-bound, larger chunks pay for some waste."""
    if slack is None or add is None:
        gpu = model.W_E.device.type == "cuda"
        slack = slack if slack is not None else (1.5 if gpu else 1.0)
        add = add if add is not None else (64 if gpu else 4)
    by_start: dict[int, list[tuple[int, int]]] = {}
    for i, p in enumerate(plans):
        if p is not None:
            by_start.setdefault(p[0], []).append((p[1], i))
    chunks = []
    for start in sorted(by_start):
        cells = sorted(by_start[start])
        cur: list[int] = []
        p_cur = 0
        cap = 1
        for p, i in cells:
            if cur and (len(cur) >= cap or (S - p_cur) > slack * (S - p) + add):
                chunks.append((cur, start, p_cur))
                cur = []
            if not cur:
                p_cur = p
                per = _patch_bytes(model, b, S, S - p, start, read_elems, 1, eager)
                cap = max(1, budget // max(1, per))
                if batch_size is not None:
                    cap = min(cap, batch_size)
            cur.append(i)
        if cur:
            chunks.append((cur, start, p_cur))
    return chunks


def _run_chunk(model, base: BaseRun, ids: Sequence[int], start: int, p0: int, hooks: HookList, reading: Reading, answer_steps: int) -> Tensor:
    """One forward for `len(ids)` cells from layer `start`, positions `p0:`; returns what the
    metrics read, `[n * b, R, ...]`."""
    batch = base.batch
    b, S = batch.shape
    L = model.cfg.n_layers
    n = len(ids)
    rows = torch.arange(b, device=batch.device).repeat(n)
    full = start == 0 and p0 == 0 and not partial_forward_exact(model)
    if full:  # the whole batch from its inputs (the family's own batch type, media included)
        sub, x = batch.select(rows.tolist()), None
    else:
        sub, x = tile_batch(batch, rows, p0), base.resid_pre[start][:, p0:].repeat(n, 1, 1)
    cache = KVCache(L)
    cache.key_mask = batch.attention_mask[rows]
    if p0 > 0:
        for l in range(start, L):
            cache.keys[l] = base.keys[l][:, :p0].repeat(n, 1, 1, 1)
            cache.values[l] = base.values[l][:, :p0].repeat(n, 1, 1, 1)
    fired: set[str] = set()

    def wrap(name, fn):
        def hook(x, hook):
            fired.add(name)
            return fn(x, hook)
        return hook

    wrapped = [(name, wrap(name, fn)) for name, fn in hooks]
    captured: dict[str, Tensor] = {}
    final = _final_resid_hook(model)
    if reading.what == "resid":
        wrapped.append((final, lambda t, hook: captured.__setitem__("resid", t)))
    kw: dict[str, Any] = {}
    rel = None
    if not reading.all:
        pos = reading.positions[rows]
        rel = (pos - p0).clamp(min=0)
        if reading.what == "logits":
            kw["logits_at"] = rel
    if reading.what == "resid":
        kw["return_type"] = None
    with torch.no_grad(), model.hooks(fwd_hooks=wrapped):
        if full:
            out = model.forward(sub, kv_cache=cache, **kw)
        else:
            out = model.forward(x, start_at_layer=start, batch=sub, kv_cache=cache, **kw)
    missing = sorted({name for name, _ in hooks} - fired)
    if missing:
        raise RuntimeError(
            f"the intervention's hooks at {missing} did not fire, so it would silently do nothing. "
            "This is a bug in avlens or a hook point that this model does not call."
        )
    if reading.what == "resid":
        out = captured["resid"]
        if rel is not None:
            out = _gather(out, rel)
    base_read = base.read[rows]
    if reading.all:
        read = torch.cat([base_read[:, :p0], out], 1)
    else:
        before = (reading.positions[rows] < p0).view(*rel.shape, *([1] * (out.ndim - 2)))
        read = torch.where(before, base_read[:, : rel.shape[1]], out)
    if answer_steps > 1:
        for l in range(start):
            cache.keys[l] = base.keys[l][rows]
            cache.values[l] = base.values[l][rows]
        read = greedy_steps(model, batch, cache, read, answer_steps, rows)
    return read


# ----------------------------------------------------------------------------------- helpers


def replace_hook(source: Tensor, mask: Tensor, n: int) -> Callable:
    """A hook writing `source` `[b, S', ...]` into the rows of n patches where `mask`
    `[n, b|1, S', *k]` is set (mask dims after S' match the activation's, with size 1 allowed)."""

    def hook(x, hook):
        xv = x.view(n, -1, *x.shape[1:])
        m = mask.view(*mask.shape, *([1] * (xv.ndim - mask.ndim)))
        return torch.where(m, source.unsqueeze(0).to(x.dtype), xv).view_as(x)

    return hook


def first_true(mask: Tensor) -> Optional[int]:
    """The first position (dim 1 of `[b, S, ...]`) where `mask` holds anywhere, or None."""
    cols = mask.reshape(mask.shape[0], mask.shape[1], -1).any(-1).any(0)
    idx = cols.nonzero()
    return int(idx[0]) if len(idx) else None
