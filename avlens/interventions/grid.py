"""What a sweep varies: its axes and the cells they make.

Axes (`over=`), any combination of at most one from each row:

    layer       one layer per cell                 window     a set of layers per cell
    position    one position (column) per cell     group      a token group's positions
    token_set   a named set of positions
    head        one head (q / z: query heads; k / v: KV heads)

An axis that is absent takes its default for every cell: all layers at once (the paper's default
for token sets; `layers=` narrows it), every position, every head. So `over=("layer",
"position")` is TransformerLens's grid, `over=("token_set",)` patches each set at all layers at
once, and `over=("window", "token_set")` patches each set in each layer window.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from avlens.layout import BatchLayout

AXES = ("layer", "window", "position", "group", "token_set", "head")
_ALIASES = {
    "pos": "position", "positions": "position", "layers": "layer", "head_index": "head", "heads": "head",
    "groups": "group", "token_sets": "token_set", "tokens": "token_set", "windows": "window",
}
_LAYER_AXES = ("layer", "window")
_POSITION_AXES = ("position", "group", "token_set")


@dataclass
class Cell:
    """One intervention: the layers it acts at, the positions `[b, S]` and the heads (`[H]` bool,
    None for all) it covers."""

    layers: tuple[int, ...]
    mask: Tensor
    heads: Optional[Tensor] = None


@dataclass
class Grid:
    dims: tuple[str, ...]
    coords: dict[str, list]
    cells: list[Cell]  # row-major over dims

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.coords[d]) for d in self.dims)


def layer_windows(n_layers: int, size: int, centers: Optional[Sequence[int]] = None) -> list[tuple[int, ...]]:
    """Windows of `size` layers around each centre, clipped to the model:
    `[max(0, c - size // 2), min(n_layers, c + size - size // 2))`. Size 9 gives
    `[c - 4, c + 5)` (Zhang et al., *Cross-modal information flow in MLLMs*); size 10 ROME's
    `[c - 5, c + 5)`."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"a layer window size must be a positive integer, got {size!r}")
    centers = range(n_layers) if centers is None else centers
    out = []
    for c in centers:
        if not 0 <= int(c) < n_layers:
            raise ValueError(f"window centre {c} is outside the model's layers 0..{n_layers - 1}")
        out.append(tuple(range(max(0, int(c) - size // 2), min(n_layers, int(c) + size - size // 2))))
    return out


def normalize_over(over: Union[str, Sequence[str]]) -> tuple[str, ...]:
    if isinstance(over, str):
        over = (over,)
    dims = tuple(_ALIASES.get(a, a) for a in over)
    for a in dims:
        if a not in AXES:
            raise ValueError(f"unknown axis {a!r} in over={tuple(over)}; axes: {AXES}")
    if len(set(dims)) != len(dims):
        raise ValueError(f"over={tuple(over)} repeats an axis")
    for family in (_LAYER_AXES, _POSITION_AXES):
        both = [a for a in dims if a in family]
        if len(both) > 1:
            raise ValueError(f"over={tuple(over)} has {both}: choose one of {family} per sweep")
    return dims


def positions_mask(layout: BatchLayout, spec: Any, name: str) -> Tensor:
    """A bool mask `[b, S]` from a group name, positions (the same for every sample, negative
    counting from the end), one position list per sample, or a bool mask. Empty is an error."""
    if isinstance(spec, str):
        mask = layout.mask(spec)
    else:
        try:
            mask = layout.with_group("token_set", spec).mask("token_set")
        except (TypeError, ValueError, IndexError) as e:
            raise type(e)(f"token set {name!r}: {e}") from None
    if not bool(mask.any()):
        raise ValueError(
            f"token set {name!r} ({spec if isinstance(spec, str) else 'positions'}) is empty in this batch, so "
            "patching it would do nothing. Check the inputs contain it (sinks must be detected and "
            "added with batch.with_group('sink', ...) first)."
        )
    return mask


def build_grid(
    dims: tuple[str, ...],
    layout: BatchLayout,
    n_layers: int,
    n_heads: Optional[int],
    *,
    layers: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    groups: Optional[Sequence[str]] = None,
    token_sets: Optional[dict] = None,
    windows: Union[int, Sequence[Sequence[int]], None] = None,
    heads: Optional[Sequence[int]] = None,
    site_name: str = "",
) -> Grid:
    """The cells of a sweep over `dims` (row-major)."""
    b, S = layout.shape
    if layers is None:
        layers = list(range(n_layers))
    else:
        layers = [int(l) for l in ([layers] if isinstance(layers, int) else layers)]
        bad = [l for l in layers if not 0 <= l < n_layers]
        if bad or not layers:
            raise ValueError(f"layers {bad or layers} are outside the model's layers 0..{n_layers - 1}")
    if "head" in dims and n_heads is None:
        raise ValueError(f"site {site_name!r} has no head axis; patch per head at 'q', 'k', 'v' or 'z'")
    axes: list[tuple[str, list, list[dict]]] = []
    for d in dims:
        if d == "layer":
            axes.append((d, list(layers), [{"layers": (l,)} for l in layers]))
        elif d == "window":
            if windows is None:
                raise ValueError("over includes 'window': pass windows= (a window size, or a list of layer lists)")
            wins = layer_windows(n_layers, windows) if isinstance(windows, int) else [tuple(int(l) for l in w) for w in windows]
            for w in wins:
                if not w or any(not 0 <= l < n_layers for l in w):
                    raise ValueError(f"window {list(w)} must be a non-empty list of layers in 0..{n_layers - 1}")
            axes.append((d, [f"{w[0]}-{w[-1]}" if len(w) > 1 else str(w[0]) for w in wins], [{"layers": w} for w in wins]))
        elif d == "position":
            pos = list(range(S)) if positions is None else [int(p) for p in positions]
            bad = [p for p in pos if not -S <= p < S]
            if bad:
                raise IndexError(f"positions {bad} are outside the sequence (length {S})")
            pos = [p % S for p in pos]
            cols = torch.eye(S, dtype=torch.bool, device=layout.device)
            axes.append((d, pos, [{"mask": cols[p][None].expand(b, S)} for p in pos]))
        elif d == "group":
            names = groups if groups is not None else [
                g for g in layout.groups if g not in ("pad", "generated") and int(layout.counts(g).sum()) > 0
            ]
            axes.append((d, list(names), [{"mask": positions_mask(layout, g, g)} for g in names]))
        elif d == "token_set":
            if not token_sets:
                raise ValueError("over includes 'token_set': pass token_sets={name: group name, positions or mask}")
            axes.append((d, list(token_sets), [{"mask": positions_mask(layout, v, k)} for k, v in token_sets.items()]))
        elif d == "head":
            hs = list(range(n_heads)) if heads is None else [int(h) for h in heads]
            bad = [h for h in hs if not 0 <= h < n_heads]
            if bad or not hs:
                raise ValueError(f"heads {bad or hs} are outside this site's heads 0..{n_heads - 1}")
            eye = torch.eye(n_heads, dtype=torch.bool, device=layout.device)
            axes.append((d, hs, [{"heads": eye[h]} for h in hs]))
    all_positions = torch.ones(b, S, dtype=torch.bool, device=layout.device)
    cells = []
    for combo in itertools.product(*[a[2] for a in axes]):
        spec: dict = {}
        for part in combo:
            spec.update(part)
        cells.append(Cell(layers=spec.get("layers", tuple(layers)), mask=spec.get("mask", all_positions), heads=spec.get("heads")))
    return Grid(dims=dims, coords={a[0]: a[1] for a in axes}, cells=cells)
