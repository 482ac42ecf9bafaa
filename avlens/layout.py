"""Token layouts: which sequence positions are audio, video, image, text, special or padding.

A `BatchLayout` holds one boolean mask `[batch, pos]` per group. The groups

    audio, video, image, text, special, pad

partition the positions (every position is in exactly one of them). Overlay groups may overlap
anything: `last` (the last real position of each sample, always present), `sink` (filled by sink
detection), `generated` (tokens produced by `generate`), and any user-named span such as
`question` (`layout.with_group("question", positions)`).

Media positions also carry a time stamp in seconds (`layout.time`, NaN elsewhere), the index of
the 2-second chunk they belong to (`layout.chunk`, -1 elsewhere) and the index of their media item
within the sample (`layout.media_index`, -1 elsewhere).

A `TokenLayout` is the layout of a single sample (`batch_layout[i]`); its `positions(group)`
returns a 1-D LongTensor.
"""

from __future__ import annotations

import difflib
from typing import Iterable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

PARTITION_GROUPS: tuple[str, ...] = ("audio", "video", "image", "text", "special", "pad")
STANDARD_OVERLAYS: tuple[str, ...] = ("sink", "last", "generated")
STANDARD_GROUPS: tuple[str, ...] = PARTITION_GROUPS + STANDARD_OVERLAYS

GROUP_COLORS: dict[str, str] = {
    "audio": "#e8871e",
    "video": "#2b6cb0",
    "image": "#2c9a8f",
    "text": "#8a8f98",
    "special": "#7e3fb5",
    "pad": "#e5e7eb",
    "sink": "#d7263d",
    "last": "#111827",
    "generated": "#16a34a",
}
# one letter per partition group: run-length codes (`summary`) and group-prefixed token labels
GROUP_LETTERS: dict[str, str] = {"audio": "A", "video": "V", "image": "I", "text": "T", "special": "S", "pad": "."}


class GroupPositions(NamedTuple):
    """Positions of a group across a batch: `index[b, j]` is valid where `mask[b, j]`."""

    index: Tensor  # [batch, n_max] long, padded with 0
    mask: Tensor  # [batch, n_max] bool


def closest(name: str, options: Iterable[str], n: int = 3) -> list[str]:
    """The closest valid names to `name`, for error messages."""
    options = list(options)
    hits = difflib.get_close_matches(name, options, n=n, cutoff=0.5)
    if not hits:
        hits = [o for o in options if name in o or o in name][:n]
    return hits


class BatchLayout:
    """Group masks `[batch, pos]` with time stamps and chunk ids for media positions."""

    def __init__(
        self,
        masks: dict[str, Tensor],
        time: Optional[Tensor] = None,
        chunk: Optional[Tensor] = None,
        media_index: Optional[Tensor] = None,
        str_tokens: Optional[list[list[str]]] = None,
        validate: bool = True,
    ):
        masks = {k: v.bool() for k, v in masks.items()}
        missing = [g for g in PARTITION_GROUPS if g not in masks]
        any_mask = next(iter(masks.values()))
        for g in missing:
            masks[g] = torch.zeros_like(any_mask)
        if any_mask.ndim != 2:
            raise ValueError(f"group masks must be [batch, pos]; got shape {tuple(any_mask.shape)}")
        shape = any_mask.shape
        for name, m in masks.items():
            if m.shape != shape:
                raise ValueError(
                    f"group {name!r} has mask shape {tuple(m.shape)} but the others have "
                    f"{tuple(shape)}; every group mask must be [batch, pos]."
                )
        if validate:
            cover = torch.stack([masks[g] for g in PARTITION_GROUPS]).sum(0)
            if not bool((cover == 1).all()):
                b, p = [int(i) for i in (cover != 1).nonzero()[0]]
                inside = [g for g in PARTITION_GROUPS if masks[g][b, p]]
                raise ValueError(
                    f"the groups {PARTITION_GROUPS} must partition the positions, but sample {b} "
                    f"position {p} is in {inside or 'none of them'}."
                )
        if "last" not in masks:
            masks["last"] = _last_mask(~masks["pad"])
        for g in ("sink", "generated"):
            masks.setdefault(g, torch.zeros_like(any_mask))
        self.masks: dict[str, Tensor] = masks
        nan = torch.full(shape, float("nan"), device=any_mask.device)
        self.time = time if time is not None else nan
        self.chunk = chunk if chunk is not None else torch.full(shape, -1, dtype=torch.long, device=any_mask.device)
        self.media_index = (
            media_index if media_index is not None else torch.full(shape, -1, dtype=torch.long, device=any_mask.device)
        )
        self.str_tokens = str_tokens

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def text_only(cls, attention_mask: Tensor, special: Optional[Tensor] = None) -> "BatchLayout":
        """A layout in which every real position is text (or `special` where that mask is set)."""
        attention_mask = attention_mask.bool()
        special = special.bool() & attention_mask if special is not None else torch.zeros_like(attention_mask)
        return cls({"text": attention_mask & ~special, "special": special, "pad": ~attention_mask})

    # ----------------------------------------------------------------------------- basic facts
    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.masks["pad"].shape)  # type: ignore[return-value]

    @property
    def batch_size(self) -> int:
        return self.shape[0]

    @property
    def n_pos(self) -> int:
        return self.shape[1]

    @property
    def device(self) -> torch.device:
        return self.masks["pad"].device

    @property
    def groups(self) -> list[str]:
        """Every group name this layout knows: the partition, then the overlays."""
        return list(PARTITION_GROUPS) + [g for g in self.masks if g not in PARTITION_GROUPS]

    @property
    def attention_mask(self) -> Tensor:
        return ~self.masks["pad"]

    def _check_group(self, group: str) -> None:
        if group not in self.masks:
            hint = closest(group, self.groups)
            raise KeyError(
                f"unknown token group {group!r}. Known groups: {self.groups}"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + " Add a user-named group with layout.with_group(name, positions)."
            )

    def mask(self, group: str) -> Tensor:
        """Boolean mask `[batch, pos]` of a group."""
        self._check_group(group)
        return self.masks[group]

    def __contains__(self, group: str) -> bool:
        return group in self.masks

    def counts(self, group: str) -> Tensor:
        """Number of positions of `group` in each sample: LongTensor `[batch]`."""
        return self.mask(group).sum(-1)

    def positions(
        self, group: str, sample: Optional[int] = None, padded: Optional[bool] = None
    ) -> Union[Tensor, GroupPositions]:
        """Positions of a group.

        For one sample (`sample=i`, or a layout of batch size 1) a 1-D LongTensor. For a batch, a
        `GroupPositions(index, mask)` with `index` `[batch, n_max]` padded with 0 and `mask` saying
        which entries are real. `padded=True` forces the batch form.
        """
        m = self.mask(group)
        if sample is not None:
            return m[sample].nonzero().flatten()
        if padded is None:
            padded = self.batch_size > 1
        if not padded:
            return m[0].nonzero().flatten()
        counts = m.sum(-1)
        n_max = int(counts.max()) if m.numel() else 0
        # a stable sort puts the group's positions first, in order
        order = torch.sort((~m).to(torch.int8), dim=-1, stable=True).indices[:, :n_max]
        valid = torch.arange(n_max, device=m.device)[None, :] < counts[:, None]
        return GroupPositions(torch.where(valid, order, torch.zeros_like(order)), valid)

    def uniform_positions(self, group: str, what: str = "this operation") -> Tensor:
        """Positions `[batch, n]` of a group whose count is the same in every sample.

        Raises a clear error when the group is empty or its counts differ across samples.
        """
        m = self.mask(group)
        counts = m.sum(-1)
        if int(counts.max()) == 0:
            raise ValueError(
                f"token group {group!r} is empty in this batch, so {what} would do nothing. "
                + (
                    "Detect the sink tokens first and add them to the layout with "
                    "batch.with_group('sink', positions)."
                    if group == "sink"
                    else "Check the inputs contain that modality, or choose another group."
                )
            )
        if not bool((counts == counts[0]).all()):
            raise ValueError(
                f"token group {group!r} has different sizes across the batch ({counts.tolist()}), "
                f"so {what} cannot give one [batch, n, ...] tensor. Use samples with equal "
                f"{group} counts (identical layouts are not required), or run them one at a time."
            )
        n = int(counts[0])
        return torch.sort((~m).to(torch.int8), dim=-1, stable=True).indices[:, :n]

    def labels(self, sample: int = 0) -> list[str]:
        """The partition group of every position of one sample."""
        stack = torch.stack([self.masks[g][sample] for g in PARTITION_GROUPS])
        idx = stack.float().argmax(0).tolist()
        return [PARTITION_GROUPS[i] for i in idx]

    # ----------------------------------------------------------------------------- derived layouts
    def with_group(self, name: str, positions) -> "BatchLayout":
        """A copy with an overlay group `name` at `positions`.

        `positions` may be a bool mask `[batch, pos]` or `[pos]`, a LongTensor / list of positions
        (the same for every sample), or a list with one position list per sample. Negative
        positions count from the end. Partition groups cannot be redefined.
        """
        if name in PARTITION_GROUPS:
            raise ValueError(
                f"{name!r} is a partition group (one of {PARTITION_GROUPS}) and is set by the "
                "family's layout builder; choose another name for an overlay."
            )
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"group names must be Python identifiers (they become hook names); got {name!r}")
        b, n = self.shape
        mask = torch.zeros(b, n, dtype=torch.bool, device=self.device)
        if isinstance(positions, Tensor) and positions.dtype == torch.bool:
            if positions.shape == (n,):
                positions = positions[None].expand(b, n)
            if positions.shape != (b, n):
                raise ValueError(f"a bool mask for group {name!r} must be [batch, pos] = {(b, n)} or [pos]")
            mask = positions.to(self.device).clone()
        else:
            if isinstance(positions, Tensor):
                if positions.is_floating_point() or positions.is_complex():
                    raise TypeError(f"positions for group {name!r} must be integers or a bool mask, got a {positions.dtype} tensor")
                positions = positions.tolist()
            if isinstance(positions, int):
                positions = [positions]
            per_sample = positions if positions and isinstance(positions[0], (list, tuple)) else [positions] * b
            if len(per_sample) != b:
                raise ValueError(f"got {len(per_sample)} position lists for group {name!r} but the batch has {b} samples")
            for i, ps in enumerate(per_sample):
                for p in ps:
                    if isinstance(p, bool) or not isinstance(p, int):
                        raise TypeError(f"positions for group {name!r} must be integers, got {p!r}")
                    if not -n <= int(p) < n:
                        raise IndexError(f"position {p} for group {name!r} is outside the sequence (length {n})")
                    mask[i, int(p)] = True
        masks = dict(self.masks)
        masks[name] = mask
        return self._replace(masks=masks)

    def _replace(self, **kw) -> "BatchLayout":
        args = dict(
            masks=self.masks, time=self.time, chunk=self.chunk, media_index=self.media_index, str_tokens=self.str_tokens
        )
        args.update(kw)
        return type(self)(validate=False, **args)

    def slice(self, start: int, end: Optional[int] = None) -> "BatchLayout":
        """The layout of positions `start:end` (used for decoding steps)."""
        sl = slice(start, end)
        return BatchLayout(
            {k: v[:, sl] for k, v in self.masks.items()},
            time=self.time[:, sl],
            chunk=self.chunk[:, sl],
            media_index=self.media_index[:, sl],
            str_tokens=[t[sl] for t in self.str_tokens] if self.str_tokens else None,
            validate=False,
        )

    def select(self, index: Union[int, Sequence[int], Tensor]) -> "BatchLayout":
        """The layout of some samples of the batch."""
        if isinstance(index, int):
            index = [index]
        index = torch.as_tensor(index, device=self.device, dtype=torch.long)
        st = [self.str_tokens[i] for i in index.tolist()] if self.str_tokens else None
        return BatchLayout(
            {k: v[index] for k, v in self.masks.items()},
            time=self.time[index],
            chunk=self.chunk[index],
            media_index=self.media_index[index],
            str_tokens=st,
            validate=False,
        )

    @staticmethod
    def cat(layouts: Sequence["BatchLayout"]) -> "BatchLayout":
        """The layouts of equally long batches stacked along the batch axis (the samples of the
        first, then of the second, ...). Groups missing from one layout are empty there."""
        if not layouts:
            raise ValueError("BatchLayout.cat needs at least one layout")
        n = {lay.n_pos for lay in layouts}
        if len(n) != 1:
            raise ValueError(f"BatchLayout.cat needs layouts of one length; got lengths {sorted(n)}: pad them first")
        names = list(dict.fromkeys(k for lay in layouts for k in lay.masks))
        masks = {
            k: torch.cat([lay.masks[k] if k in lay.masks else torch.zeros(lay.shape, dtype=torch.bool, device=lay.device)
                          for lay in layouts])
            for k in names
        }
        st = [t for lay in layouts for t in lay.str_tokens] if all(lay.str_tokens for lay in layouts) else None
        return BatchLayout(
            masks,
            time=torch.cat([lay.time for lay in layouts]),
            chunk=torch.cat([lay.chunk for lay in layouts]),
            media_index=torch.cat([lay.media_index for lay in layouts]),
            str_tokens=st,
            validate=False,
        )

    def extend(self, n_new: int, str_tokens: Optional[list[list[str]]] = None) -> "BatchLayout":
        """The layout with `n_new` generated text positions appended (they join `text` and
        `generated`; `last` moves to the final position)."""
        b = self.batch_size
        new_true = torch.ones(b, n_new, dtype=torch.bool, device=self.device)
        new_false = torch.zeros_like(new_true)
        masks = {}
        for k, v in self.masks.items():
            if k in ("text", "generated"):
                add = new_true
            else:
                add = new_false
            masks[k] = torch.cat([v, add], dim=1)
        masks["last"] = torch.cat([torch.zeros_like(self.masks["last"]), new_false], 1)
        masks["last"][:, -1] = True
        pad_f = torch.full((b, n_new), float("nan"), device=self.device)
        pad_l = torch.full((b, n_new), -1, dtype=torch.long, device=self.device)
        st = None
        if self.str_tokens is not None:
            st = [t + (str_tokens[i] if str_tokens else ["?"] * n_new) for i, t in enumerate(self.str_tokens)]
        return BatchLayout(
            masks,
            time=torch.cat([self.time, pad_f], 1),
            chunk=torch.cat([self.chunk, pad_l], 1),
            media_index=torch.cat([self.media_index, pad_l], 1),
            str_tokens=st,
            validate=False,
        )

    def to(self, device) -> "BatchLayout":
        return BatchLayout(
            {k: v.to(device) for k, v in self.masks.items()},
            time=self.time.to(device),
            chunk=self.chunk.to(device),
            media_index=self.media_index.to(device),
            str_tokens=self.str_tokens,
            validate=False,
        )

    def __getitem__(self, i: int) -> "TokenLayout":
        if not isinstance(i, int):
            raise TypeError("index a BatchLayout with an int sample index; use .select(...) for several")
        if not -self.batch_size <= i < self.batch_size:
            raise IndexError(f"sample {i} is outside the batch of {self.batch_size}")
        sub = self.select(i)
        return TokenLayout(
            sub.masks, time=sub.time, chunk=sub.chunk, media_index=sub.media_index, str_tokens=sub.str_tokens, validate=False
        )

    def __len__(self) -> int:
        return self.batch_size

    def __eq__(self, other) -> bool:
        if not isinstance(other, BatchLayout) or self.shape != other.shape:
            return False
        return all(torch.equal(self.masks[g], other.masks[g]) for g in PARTITION_GROUPS)

    def differences(self, other: "BatchLayout") -> list[str]:
        """Human-readable differences in group counts and places between two layouts."""
        out = []
        if self.shape != other.shape:
            return [f"shapes differ: {self.shape} vs {other.shape}"]
        for g in PARTITION_GROUPS:
            a, b = self.masks[g], other.masks[g]
            if not torch.equal(a, b):
                diff = (a != b).nonzero()
                s, p = [int(x) for x in diff[0]]
                out.append(
                    f"group {g!r}: counts {a.sum(-1).tolist()} vs {b.sum(-1).tolist()}, first "
                    f"difference at sample {s} position {p}"
                )
        return out

    # ----------------------------------------------------------------------------- display
    def summary(self, sample: int = 0) -> str:
        """A compact run-length code of one sample: e.g. `T12 S1 A50 S1 V64 T8`."""
        labels = self.labels(sample)
        runs: list[tuple[str, int]] = []
        for lab in labels:
            if runs and runs[-1][0] == lab:
                runs[-1] = (lab, runs[-1][1] + 1)
            else:
                runs.append((lab, 1))
        return " ".join(f"{GROUP_LETTERS[g]}{n}" for g, n in runs)

    def __repr__(self) -> str:
        """Shape, group counts (one number when every sample agrees), then per sample (at most 4)
        its run-length code, its media time spans and its overlay positions (sink, user spans)."""
        counts = {g: self.counts(g).tolist() for g in self.groups if int(self.counts(g).sum()) > 0 or g in PARTITION_GROUPS[:4]}
        lines = [f"{type(self).__name__}(batch={self.batch_size}, pos={self.n_pos})"]
        lines.append("  counts: " + ", ".join(f"{g}={c if len(set(c)) > 1 else c[0]}" for g, c in counts.items()))
        overlays = [g for g in self.groups if g not in PARTITION_GROUPS and g != "last"]
        for i in range(min(self.batch_size, 4)):
            s = self.summary(i)
            lines.append(f"  [{i}] " + (s if len(s) < 160 else s[:157] + "..."))
            extra = []
            for g in ("audio", "video", "image"):
                t = self.time[i][self.masks[g][i].to(self.time.device)]
                t = t[~torch.isnan(t)]
                if len(t):
                    extra.append(f"{g} {float(t.min()):.2f}-{float(t.max()):.2f} s")
            for g in overlays:
                pos = self.masks[g][i].nonzero().flatten().tolist()
                if pos:
                    extra.append(f"{g} {pos if len(pos) <= 8 else str(pos[:8])[:-1] + f', ... ({len(pos)})]'}")
            if extra:
                lines.append("      " + "; ".join(extra))
        if self.batch_size > 4:
            lines.append(f"  ... {self.batch_size - 4} more samples")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """A card for notebooks: group counts as coloured swatches, then one strip per sample (at
        most 8) with a block per run of same-group positions and overlay groups (sink, last,
        user spans) marked above it; hover a block for its positions, time span and text. Its
        size grows with the number of runs, not of positions."""
        from avlens.viz.reprs import card, group_chips, layout_rows

        return card(f"{type(self).__name__}", f"batch={self.batch_size}, pos={self.n_pos}",
                    group_chips(self) + layout_rows(self))


class TokenLayout(BatchLayout):
    """The layout of a single sample: `positions(group)` is a 1-D LongTensor."""

    def positions(self, group: str, sample: Optional[int] = None, padded: Optional[bool] = None):
        return super().positions(group, sample=0 if sample is None else sample, padded=padded)


def _last_mask(real: Tensor) -> Tensor:
    """Mask of the last real position of each sample."""
    b, n = real.shape
    idx = torch.arange(n, device=real.device)[None].expand(b, n)
    last = torch.where(real, idx, torch.full_like(idx, -1)).max(-1).values
    out = torch.zeros_like(real)
    has = last >= 0
    out[has.nonzero().flatten(), last[has]] = True
    return out
