"""Hook points with token-group views.

Every per-position activation in avlens (residual streams, attention and MLP outputs, q/k/v/z,
the normalised attention input, ...) is an `AVHookPoint`: a TransformerLens `HookPoint` whose
children are *group views*, one per token group. A hook at `blocks.5.hook_resid_post.audio`
receives only the audio positions, `[batch, n_audio, d_model]`; what it returns is written back.
The parent hook (`blocks.5.hook_resid_post`) runs first, then the group views, in the order they
were first used. Backward hooks on a group view receive the gradient slice.

The layout of the positions in the current call (and, while decoding, the absolute position at
which the call starts) comes from the model's `RunState`, shared by all its hook points.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from avlens.layout import STANDARD_GROUPS, BatchLayout


class RunState:
    """What the hook points of one model need to know about the call in progress."""

    def __init__(self):
        self.layout: Optional[BatchLayout] = None
        self.start_pos: int = 0
        self.decoding: bool = False
        self.generating: bool = False  # inside `generate` (prefill and steps)
        self._positions: dict[str, Tensor] = {}

    def begin(self, layout: Optional[BatchLayout], start_pos: int = 0, decoding: bool = False) -> None:
        self.layout = layout
        self.start_pos = start_pos
        self.decoding = decoding
        self._positions = {}

    def group_positions(self, group: str, hook_name: str) -> Optional[Tensor]:
        """Positions `[batch, n]` of `group` in the current call (None: nothing to do this step)."""
        if group in self._positions:
            return self._positions[group]
        if self.layout is None:
            raise RuntimeError(
                f"the group view {hook_name!r} fired outside a model forward; group views need the "
                "batch's layout, which the model sets at the start of each forward."
            )
        empty = int(self.layout.mask(group).sum()) == 0
        if empty and (self.decoding or (self.generating and group == "generated")):
            # a decoding step only covers new (generated text) positions: other groups are
            # simply absent from it, which is not an error once the prefill had them
            self._positions[group] = None
            return None
        pos = self.layout.uniform_positions(group, what=f"the group view {hook_name!r}")
        self._positions[group] = pos
        return pos


class _HookContext(dict):
    """A hook's `ctx` dict; `ctx["start_pos"]` and `ctx["layout"]` read the call in progress."""

    def __init__(self, state: RunState):
        super().__init__()
        self._state = state

    def __missing__(self, key):
        if key == "start_pos":
            return self._state.start_pos
        if key == "layout":
            return self._state.layout
        raise KeyError(key)


class AVHookPoint(HookPoint):
    """A `HookPoint` on a `[batch, pos, ...]` activation, with one group view per token group."""

    def __init__(self, state: RunState, groups: tuple[str, ...] = STANDARD_GROUPS, group_views: bool = True):
        super().__init__()
        object.__setattr__(self, "_state", state)  # not a submodule
        self.ctx = _HookContext(state)
        self.has_group_views = group_views
        if group_views:
            for g in groups:
                self.add_group_view(g)

    def add_group_view(self, group: str) -> "GroupViewHookPoint":
        if group in self._modules:
            return self._modules[group]  # type: ignore[return-value]
        view = GroupViewHookPoint(self._state, group)
        self.add_module(group, view)
        return view

    def clear_context(self):
        self.ctx = _HookContext(self._state)

    @property
    def start_pos(self) -> int:
        """Absolute position of the first position in the current call (0 at prefill)."""
        return self._state.start_pos

    @property
    def layout(self) -> Optional[BatchLayout]:
        """Layout of the positions in the current call."""
        return self._state.layout

    def __call__(self, x: Tensor) -> Tensor:
        if self.fwd_hooks:
            shape = x.shape
            x = super().__call__(x)
            if not isinstance(x, Tensor) or x.shape != shape:
                got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(
                    f"a hook at {self.name!r} returned {got}; it must return a tensor of the "
                    f"activation's shape {tuple(shape)} (or None to leave it unchanged)."
                )
        else:
            x = super().__call__(x)
        if not self.has_group_views:
            return x
        active = [v for v in self._modules.values() if v.fwd_hooks or v.bwd_hooks]
        if not active:
            return x
        for view in active:
            x = view.apply(x, self.name)
        return x


class GroupViewHookPoint(HookPoint):
    """The view of a parent activation restricted to one token group (`<parent>.<group>`)."""

    is_group_view = True

    def __init__(self, state: RunState, group: str):
        super().__init__()
        object.__setattr__(self, "_state", state)
        self.group = group
        self.ctx = _HookContext(state)

    def clear_context(self):
        self.ctx = _HookContext(self._state)

    @property
    def start_pos(self) -> int:
        return self._state.start_pos

    def apply(self, x: Tensor, parent_name: Optional[str]) -> Tensor:
        pos = self._state.group_positions(self.group, self.name or f"{parent_name}.{self.group}")
        if pos is None:
            return x
        b, n = pos.shape
        if x.shape[0] != b:
            raise RuntimeError(f"group view {self.name!r}: activation batch {x.shape[0]} != layout batch {b}")
        index = pos.view(b, n, *([1] * (x.ndim - 2))).expand(b, n, *x.shape[2:])
        sub = x.gather(1, index)
        # always scatter back: hooks may edit `sub` in place and return None or `sub` itself
        new = self(sub)
        if not isinstance(new, Tensor) or new.shape != sub.shape:
            raise ValueError(
                f"the hook at {self.name!r} returned {tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__}; it must return the "
                f"group slice's shape {tuple(sub.shape)} (or None to leave it unchanged)."
            )
        return x.scatter(1, index, new.to(x.dtype))


def is_group_view_name(name: str) -> bool:
    """Whether a hook name is a group view (`...hook_xxx.<group>`)."""
    head, _, tail = name.rpartition(".")
    return bool(head) and head.rsplit(".", 1)[-1].startswith("hook_") and not tail.startswith("hook_")
