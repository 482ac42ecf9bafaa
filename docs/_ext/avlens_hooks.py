"""Sphinx extension: the hook-point and token-group tables of docs/concepts.md, generated at
build time from a real model rather than written by hand.

Two directives:

- ``avlens-hook-table``: one row per hook point of the shipped toy model (``avlens.load_toy()``),
  every name in ``model.hook_dict`` covered (decoder layers folded into ``blocks.{l}`` rows when
  their shapes agree), with the shape each hook receives on a real audio-in-video batch, the shape
  read in named dimensions, how the hook fires (cached by default, opt-in config switch, encoder
  hook cached only when named, only with image inputs) and whether it has token-group views.
- ``avlens-group-table``: the token groups of that batch, their sizes, and the shape a group view
  (``blocks.0.hook_resid_post.<group>``) receives.

Why generated: a hand-written table drifts from the code; this one is whatever the model does on
the day the docs are built, so a renamed hook or a changed shape shows up in the docs at once.
The table data comes from plain functions (``sample``, ``hook_rows``, ``group_rows``) that
``tests/test_docs.py`` calls directly, without building the site.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field


#: TransformerLens config switches behind opt-in hooks (they refuse hooks while switched off).
OPT_IN_SWITCHES = ("use_attn_result", "use_split_qkv_input")
#: Clips of the sample batch: three, so the batch axis (3) is told apart from every size of the
#: toy's config (4 heads, 2 KV heads, ...).
N_CLIPS = 3
#: pixels of the sample's image: 84 x 84 gives 9 image tokens, a size no other axis has
IMAGE_PIXELS = 84 * 84


@dataclass
class Sample:
    """The model and the batch the tables are measured on."""

    model: object
    batch: object  # N_CLIPS prompts, each with an image and a clip with audio in video
    description: str


@dataclass
class HookRow:
    """One row of the hook table: a hook (or a family of per-layer hooks with equal shapes)."""

    pattern: str  # e.g. "blocks.{l}.attn.hook_pattern"
    names: list[str]  # every concrete hook name the row covers
    index: str  # the layers / encoder blocks covered, e.g. "0-3", or "" for a single hook
    shape: str  # e.g. "[3, 4, 162, 162]"; shapes seen per call joined by " | "
    dims: str  # e.g. "[batch, n_heads, pos, pos]", or "-" where sizes are not the decoder's
    fires: str  # "default cache", "cached when named", "encoder; cached when named", "opt-in: `cfg.X = True`"
    calls: int  # times it fired in one forward (per hook, e.g. once per attention chunk)
    group_views: bool


@dataclass
class GroupRow:
    """One row of the group table."""

    group: str
    kind: str  # "partition" or "overlay"
    count: str  # positions per sample, e.g. "100" or "0 (empty)"
    runs: str  # where the group sits in sample 0: runs of positions, e.g. "12-61, 70-119"
    view: str  # the group view's hook name
    shape: str  # its activation shape, or why it cannot be hooked
    dims: str = "-"


@functools.lru_cache(maxsize=1)
def sample() -> Sample:
    """Load the toy model and build the batch (cached: both directives share it).

    Each prompt is the toy's multiple-choice question about a synthetic clip (audio in video) with
    the clip's first frame added as an image, so every media hook fires in one forward."""
    import avlens
    from avlens.data import synth, tasks

    model = avlens.load_toy()
    clips = [synth.make_clip(name, "clear", seed=i) for i, name in enumerate(["dog", "drum", "bell"][:N_CLIPS])]
    video = "<|vision_bos|><|VIDEO|>"
    texts = []
    for i, c in enumerate(clips):
        text = tasks.prompt_text(tasks.multiple_choice(c, seed=i))
        if video not in text:
            raise RuntimeError(f"the toy prompt no longer contains {video!r}; update docs/_ext/avlens_hooks.py")
        texts.append(text.replace(video, "<|vision_bos|><|IMAGE|><|vision_eos|> " + video, 1))
    # the image at 84 x 84 pixels (9 tokens), so its token count differs from every other size
    batch = model.prepare_media(texts, audio=[c.waveform for c in clips], video=[c.frames for c in clips],
                                images=[c.frames[0] for c in clips], fps=synth.FPS, use_audio_in_video=True,
                                image_kwargs={"min_pixels": IMAGE_PIXELS, "max_pixels": IMAGE_PIXELS})
    desc = (f"the shipped toy model (`{model!r}`) on a batch of {N_CLIPS} prompts, each an 84 x 84 image "
            f"and a 4-second clip with audio in video (`{batch.layout.summary(0)}`)")
    return Sample(model, batch, desc)


def _symbols(model, batch, embeds: bool = False) -> dict[int, str]:
    """Size -> dimension name, for the sizes that name exactly one dimension of `batch`.

    Decoder hooks (`embeds=False`) read as batch, pos, d_model, heads, ... and n_<group> (a media
    group's positions per sample); the single-modality embeddings (`embeds=True`, no batch axis)
    as N_<group> (that group's tokens over the whole batch) and d_model. Sizes shared by two
    names (say 4 heads and 4 image tokens) stay numbers."""
    c = model.cfg
    if embeds:
        named = {"d_model": c.d_model}
        for g in ("audio", "video", "image"):
            total = int(batch.layout.counts(g).sum())
            if total:
                named[f"N_{g}"] = total
    else:
        named = {
            "batch": batch.shape[0], "pos": batch.shape[1], "d_model": c.d_model, "n_heads": c.n_heads,
            "n_kv_heads": c.n_key_value_heads, "d_head": c.d_head, "d_mlp": c.d_mlp, "d_vocab": c.d_vocab,
        }
        for g in ("audio", "video", "image", "text", "special"):  # partition groups but padding
            n = batch.layout.counts(g)
            if len(set(n.tolist())) == 1 and int(n[0]) > 0:
                named[f"n_{g}"] = int(n[0])
    by_size: dict[int, list[str]] = {}
    for name, size in named.items():
        by_size.setdefault(int(size), []).append(name)
    return {size: names[0] for size, names in by_size.items() if len(names) == 1}


def _read(shape: tuple, symbols: dict[int, str]) -> str:
    return "[" + ", ".join(symbols.get(s, str(s)) for s in shape) + "]"


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _record_shapes(model, batch, names) -> dict[str, list[tuple]]:
    """Run one forward with a recording hook on every name; the shapes each one received, in the
    order the hooks first fired."""
    seen: dict[str, list[tuple]] = {}

    def record(x, hook):
        seen.setdefault(hook.name, []).append(tuple(x.shape))

    model.run_with_hooks(batch, fwd_hooks=[(n, record) for n in names], return_type=None)
    return seen


def _pattern(name: str) -> tuple[str, str]:
    """`blocks.3.attn.hook_q` -> (`blocks.{l}.attn.hook_q`, "3"); encoder blocks use `{i}`."""
    m = re.match(r"^(.*?)blocks\.(\d+)\.(.*)$", name)
    if not m:
        return name, ""
    letter = "l" if m.group(1) == "" else "i"
    return f"{m.group(1)}blocks.{{{letter}}}.{m.group(3)}", m.group(2)


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out, start, prev = [], None, None
    for i in sorted(indices):
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
    return ", ".join(out)


def measure_hooks(s: Sample) -> dict[str, dict]:
    """Per hook name in `model.hook_dict`, in firing order: the shapes it received, how it fires,
    whether it has group views.

    One forward with a recording hook on every name that accepts one, in the model's default
    configuration. Opt-in hooks (those that refuse a hook while a TransformerLens switch in
    `OPT_IN_SWITCHES` is off; which switch is read from the model's own refusal,
    `_disabled_reason`) are measured in a second forward with the switches on (restored after),
    since a switch can change other hooks too (`use_split_qkv_input` runs ln1 per q/k/v input).
    """
    from avlens.model.hook_points import AVHookPoint

    model, batch = s.model, s.batch
    _, cache = model.run_with_cache(batch, return_type=None)
    cached = set(cache.keys())
    prefixes = tuple(getattr(model, "encoder_hook_prefixes", ()) or ())
    names = list(model.hook_dict)
    refused = [n for n in names if model._disabled_reason(n)]
    seen = _record_shapes(model, batch, [n for n in names if n not in refused])
    needs: dict[str, str] = {}
    old = {sw: getattr(model.cfg, sw) for sw in OPT_IN_SWITCHES}
    try:
        for sw in OPT_IN_SWITCHES:
            setattr(model.cfg, sw, True)
            for n in refused:
                if n not in needs and not model._disabled_reason(n):
                    needs[n] = sw
            setattr(model.cfg, sw, old[sw])
        for sw in OPT_IN_SWITCHES:
            setattr(model.cfg, sw, True)
        switched = _record_shapes(model, batch, [n for n in names if not model._disabled_reason(n)])
    finally:
        for sw, v in old.items():
            setattr(model.cfg, sw, v)
    # firing order: the default run's, each opt-in hook placed after the hook that fired before it
    order = list(seen)
    previous = None
    for n in switched:
        if n in needs:
            order.insert(order.index(previous) + 1 if previous in order else 0, n)
            seen[n] = switched[n]
        previous = n
    info: dict[str, dict] = {}
    for n in order + [n for n in names if n not in order]:
        shapes = seen.get(n, [])
        encoder = bool(prefixes) and n.startswith(prefixes)
        if n in needs:
            fires = f"opt-in: `cfg.{needs[n]} = True`"
        elif n in refused:
            fires = "opt-in (switch unknown to these docs)"
        elif not shapes:
            fires = "did not fire on the sample"
        elif n in cached:
            fires = "default cache"
        elif encoder:
            fires = "encoder; cached when named"
        else:
            fires = "cached when named"
        hp = model.hook_dict[n]
        views = isinstance(hp, AVHookPoint) and bool(getattr(hp, "has_group_views", False))
        info[n] = {"shapes": shapes, "fires": fires, "encoder": encoder, "group_views": views}
    return info


def hook_rows(s: Sample | None = None) -> list[HookRow]:
    """The hook table: every name in `model.hook_dict` in exactly one row, in hook_dict order;
    per-layer hooks folded into one `blocks.{l}` row when every layer gives the same result."""
    s = s or sample()
    info = measure_hooks(s)
    groups: dict[tuple, list[str]] = {}
    order: list[tuple] = []
    for n, d in info.items():
        pat, _ = _pattern(n)
        shapes = tuple(dict.fromkeys(d["shapes"]))  # distinct, in order
        key = (pat, shapes, len(d["shapes"]), d["fires"], d["group_views"])
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(n)
    rows = []
    for key in order:
        pat, shapes, calls, fires, views = key
        members = groups[key]
        d = info[members[0]]
        idx = [int(_pattern(n)[1]) for n in members if _pattern(n)[1]]
        if len(members) == 1:
            pat = members[0]
        shape = " | ".join(_fmt(sh) for sh in shapes) if shapes else "-"
        if d["encoder"] or not shapes:
            dims = "-"  # an encoder's sizes are its own (tower width, heads, packed positions)
        else:
            batch_first = shapes[0][0] == s.batch.shape[0] and len(shapes[0]) > 1
            symbols = _symbols(s.model, s.batch, embeds=not batch_first)
            dims = " | ".join(_read(sh, symbols) for sh in shapes)
        rows.append(HookRow(pat, members, _ranges(idx) if len(members) > 1 else "", shape, dims, fires, calls, views))
    return rows


def group_rows(s: Sample | None = None, hook: str = "blocks.0.hook_resid_post") -> list[GroupRow]:
    """The token groups of the sample batch and the shape of `<hook>.<group>` for each."""
    from avlens.layout import PARTITION_GROUPS

    s = s or sample()
    model, batch = s.model, s.batch
    layout = batch.layout
    symbols = _symbols(model, batch)
    rows, views = [], []
    for g in layout.groups:
        counts = layout.counts(g).tolist()
        count = str(counts[0]) if len(set(counts)) == 1 else "/".join(map(str, counts))
        runs = _ranges(layout.positions(g, sample=0).tolist()) or "-"
        kind = "partition" if g in PARTITION_GROUPS else "overlay"
        rows.append(GroupRow(g, kind, count + (" (empty)" if not any(counts) else ""), runs, f"{hook}.{g}", ""))
        if any(counts) and len(set(counts)) == 1:
            views.append(f"{hook}.{g}")
    _, cache = model.run_with_cache(batch, names_filter=views, return_type=None)
    for r in rows:
        if r.view in cache.keys():
            shape = tuple(cache[r.view].shape)
            r.shape, r.dims = _fmt(shape), _read(shape, symbols)
        else:
            r.shape = "empty here: hooking it raises" if r.count.endswith("(empty)") else "counts differ between samples: hooking it raises"
    return rows


# ------------------------------------------------------------------------------------ directives
# Sphinx and docutils are imported only here, so the generators above work without them
# (tests/test_docs.py runs in the test environment, which has no Sphinx).


def _directives():
    """The two directive classes (built on first use, importing Sphinx)."""
    from docutils import nodes
    from sphinx.util.docutils import SphinxDirective



    def _inline(text: str) -> list[nodes.Node]:
        """Cell text -> docutils nodes: `code` spans as literals, the rest as plain text (no markup
        is interpreted, so the directive works the same in MyST and rST pages)."""
        out: list[nodes.Node] = []
        for part in re.split(r"(`[^`]+`)", text):
            if not part:
                continue
            if part.startswith("`") and part.endswith("`") and len(part) > 2:
                out.append(nodes.literal(part[1:-1], part[1:-1]))
            else:
                out.append(nodes.Text(part))
        return out


    def _table(header: list[str], rows: list[list[str]], caption: str) -> nodes.table:
        """A docutils table; cells are strings in `_inline`'s notation."""
        table = nodes.table(classes=["avlens-generated"])
        table += nodes.title(caption, "", *_inline(caption))
        group = nodes.tgroup(cols=len(header))
        table += group
        for _ in header:
            group += nodes.colspec(colwidth=1)
        thead, tbody = nodes.thead(), nodes.tbody()
        group += thead
        group += tbody
        for target, cells in ((thead, [header]), (tbody, rows)):
            for cells_row in cells:
                row = nodes.row()
                for c in cells_row:
                    entry = nodes.entry()
                    entry += nodes.paragraph("", "", *_inline(c))
                    row += entry
                target += row
        return table


    def _shape_cell(shape: str, dims: str) -> str:
        """`[batch, pos, d_model]` = `[3, 162, 128]`, or the measured shape alone."""
        if dims in ("-", "", shape):
            return _code(shape)
        return f"{_code(dims)} = {_code(shape)}"


    def _code(text: str) -> str:
        return f"`{text}`" if text and text != "-" else (text or "")


    class _TableDirective(SphinxDirective):
        has_content = False

        def _depend(self) -> None:
            # rebuild the page when the model code or the shipped checkpoint changes
            from pathlib import Path

            import avlens

            self.env.note_dependency(__file__)
            root = Path(avlens.__file__).parent
            for rel in ("model/hooked.py", "model/hook_points.py", "model/components.py", "layout.py",
                        "families/qwen2_5_omni.py", "toy/checkpoint/config.json"):
                if (root / rel).exists():
                    self.env.note_dependency(str(root / rel))


    class HookTableDirective(_TableDirective):
        """``avlens-hook-table``: every hook point of the toy model with its measured shape."""

        def run(self):
            self._depend()
            s = sample()
            rows = hook_rows(s)
            body = [
                [_code(r.pattern), r.index, _shape_cell(r.shape, r.dims),
                 r.fires + (f"; {r.calls} calls per forward" if r.calls > 1 else ""), "yes" if r.group_views else "no"]
                for r in rows
            ]
            n = sum(len(r.names) for r in rows)
            caption = (f"Hook points of {s.description}: {len(rows)} rows covering all {n} names in `model.hook_dict`. "
                       "Generated when these docs were built.")
            return [_table(["hook", "layers", "shape", "fires", "group views"], body, caption)]


    class GroupTableDirective(_TableDirective):
        """``avlens-group-table``: the sample's token groups and their group views."""

        def run(self):
            self._depend()
            s = sample()
            rows = group_rows(s)
            body = [[_code(r.group), r.kind, r.count, r.runs,
                     _shape_cell(r.shape, r.dims) if r.dims != "-" else r.shape] for r in rows]
            hook = rows[0].view.rsplit(".", 1)[0] if rows else "blocks.0.hook_resid_post"
            caption = (f"Token groups of the sample batch (batch of {s.batch.shape[0]}, {s.batch.shape[1]} positions; "
                       f"sample 0 is `{s.batch.layout.summary(0)}`). Generated when these docs were built.")
            return [_table(["group", "kind", "positions per sample", "runs in sample 0", f"`{hook}.<group>` receives"], body, caption)]

    return HookTableDirective, GroupTableDirective


def setup(app):
    hook_table, group_table = _directives()
    app.add_directive("avlens-hook-table", hook_table)
    app.add_directive("avlens-group-table", group_table)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
