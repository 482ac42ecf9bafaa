"""The `avlens` command line.

    avlens demo [--out avlens_report.html] [--seed 0]
        Builds a tiny random Qwen2.5-Omni-architecture thinker in memory (the trained toy model
        replaces it once it ships), prepares a 3-second audio-in-video clip of synthetic
        features, prints the token layout, the hook-name table with shapes and a cache summary,
        and writes an offline HTML report.

    avlens info PATH_OR_ID
        Loads a checkpoint and prints its configuration and hook names.

    avlens train-toy [--out DIR] [--steps N] ...
        Trains the toy audio-visual model from scratch (`avlens.toy.train`).
"""

from __future__ import annotations

import argparse
import html
import sys
import time
from collections import OrderedDict
from typing import Optional, Sequence

import torch


def _tiny_model(seed: int):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from avlens import HookedAVTransformer
    from avlens.families.qwen2_5_omni import tiny_thinker_config

    torch.manual_seed(seed)
    cfg = tiny_thinker_config()
    cfg._attn_implementation = "eager"
    hf = Qwen2_5OmniThinkerForConditionalGeneration(cfg).eval()
    # redraw the weights at unit-variance scale so attention is far from uniform
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if "norm" in name or "ln" in name else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)
    return HookedAVTransformer.from_hf(hf), cfg


def _clip_inputs(model, cfg, seed: int, seconds: float = 3.0):
    """Processor-style inputs for one audio-in-video clip with synthetic features."""
    from avlens.families.qwen2_5_omni import media_placeholder_ids

    g = torch.Generator().manual_seed(seed + 1)
    ids = model.cfg.token_ids
    n_frames = int(seconds * 100)
    grid = (int(seconds), 4, 4)  # one temporal grid per second (2 frames at 2 fps)
    vcfg = cfg.vision_config
    patch_dim = vcfg.in_channels * vcfg.temporal_patch_size * vcfg.patch_size**2
    n_text = ids["pad_token_id"]
    prefix = torch.randint(0, n_text, (6,), generator=g).tolist()
    question = torch.randint(0, n_text, (8,), generator=g).tolist()
    media = media_placeholder_ids(ids, n_audio_frames=n_frames, video_grid_thw=grid, video_second_per_grid=1.0, use_audio_in_video=True)
    input_ids = torch.tensor([prefix + media + question])
    return dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        input_features=torch.randn(1, 128, n_frames, generator=g),
        feature_attention_mask=torch.ones(1, n_frames, dtype=torch.long),
        pixel_values_videos=torch.randn(grid[0] * grid[1] * grid[2], patch_dim, generator=g),
        video_grid_thw=torch.tensor([grid]),
        video_second_per_grid=torch.tensor([1.0]),
        use_audio_in_video=True,
    ), len(prefix) + len(media)


def _hook_table(cache, n_layers: int) -> list[tuple[str, str]]:
    """One row per distinct hook (block 0 stands for every block)."""
    rows = []
    for name, t in cache.items():
        if name.startswith("blocks.") and not name.startswith("blocks.0."):
            continue
        shown = name.replace("blocks.0.", "blocks.{l}.") if name.startswith("blocks.0.") else name
        rows.append((shown, "x".join(str(s) for s in t.shape)))
    return rows


DEMO_CLIPS = (
    ("dog", "clear"),
    ("car", "audio_ambiguous"),
    ("piano", "video_ambiguous"),
    ("bird", "offscreen"),
    ("bell", "silent"),
    ("train", "distractor"),
)


def _toy_batch(model, n_clips: int, seed: int):
    """A batch of multiple-choice questions on synthetic clips, and what each should answer."""
    from avlens.data import synth, tasks

    clips = [synth.make_clip(cls, cond, seed=seed + i) for i, (cls, cond) in enumerate(DEMO_CLIPS[:n_clips])]
    examples = [tasks.multiple_choice(c, seed=seed) for c in clips]
    batch = model.prepare_media(
        [tasks.prompt_text(ex) for ex in examples],
        audio=[c.waveform for c in clips], video=[c.frames for c in clips], fps=synth.FPS, use_audio_in_video=True,
    )
    return batch, clips, examples


def demo(out: str = "avlens_report.html", seed: int = 0, quiet: bool = False, n_clips: int = 4) -> str:
    from tqdm.auto import tqdm

    from avlens.toy import load_toy, toy_available

    say = (lambda *a: None) if quiet else print
    steps = tqdm(total=5, desc="avlens demo", disable=quiet, file=sys.stderr)
    t0 = time.time()
    answers = []
    if toy_available():
        model = load_toy()
        what = "the shipped toy audio-visual model (avlens.load_toy())"
        steps.update(1)
        steps.set_postfix_str("prepare_media")
        batch, clips, examples = _toy_batch(model, n_clips, seed)
        steps.update(1)
        steps.set_postfix_str("generate")
        gen = model.generate(batch, max_new_tokens=1)
        tok = model.tokenizer
        for c, ex, t in zip(clips, examples, gen.tokens[:, 0].tolist()):
            opts = " ".join(f"{l}.{o}" for l, o in zip("ABCD", ex.options))
            answers.append((c.truth.target, c.truth.condition, opts, ex.answer, tok.decode([t]).strip()))
    else:
        model, cfg = _tiny_model(seed)
        what = "a tiny RANDOM Qwen2.5-Omni-architecture thinker built in memory (no toy checkpoint is shipped yet)"
        steps.update(1)
        steps.set_postfix_str("prepare")
        inputs, question_start = _clip_inputs(model, cfg, seed)
        batch = model.prepare(**inputs)
        batch = batch.with_group("question", list(range(question_start, batch.shape[1])))
        steps.update(1)
    steps.set_postfix_str("run_with_cache")
    logits, cache = model.run_with_cache(batch)
    steps.update(1)
    steps.set_postfix_str("group summary")
    summary = model.attention_group_summary(batch)
    steps.update(1)
    rows = _hook_table(cache, model.cfg.n_layers)
    n_bytes = sum(t.numel() * t.element_size() for t in cache.values())
    steps.update(1)
    steps.close()

    say(f"avlens demo on {what}\n")
    say(model)
    say("\nToken layout (A audio, V video, T text, S special, . pad; runs merged):")
    say(batch)
    if answers:
        say("\nMultiple choice (4 options), greedy answer:")
        for target, cond, opts, gold, pred in answers:
            say(f"  {target:>6} / {cond:<16} {opts:<40} truth {gold}  model {pred}  {'ok' if gold == pred else 'WRONG'}")
    say("\nHook points (blocks.{l}.* exist for every layer l; shapes are [batch, pos, ...]):")
    width = max(len(r[0]) for r in rows)
    for name, shape in rows:
        say(f"  {name:<{width}}  {shape}")
    say("  group views: append a group to any per-position hook, e.g. blocks.{l}.hook_resid_post.audio")
    say(f"\nCache: {len(cache)} activations, {n_bytes / 2**20:.2f} MiB, logits {tuple(logits.shape)}")
    say(summary)
    _write_report(out, model, batch, rows, summary, n_bytes, len(cache), what, answers)
    say(f"\nReport written to {out} ({time.time() - t0:.1f} s)")
    return out


def _write_report(path, model, batch, rows, summary, n_bytes, n_hooks, what, answers) -> None:
    import plotly.graph_objects as go

    groups = summary.groups
    v = summary.values.mean(1)  # [layer, Gq, Gk] averaged over heads
    figs = []
    for l in range(v.shape[0]):
        fig = go.Figure(go.Heatmap(z=v[l].numpy(), x=groups, y=groups, colorscale="Viridis", zmin=0, zmax=1,
                                   hovertemplate="query %{y} -> key %{x}: %{z:.3f}<extra></extra>"))
        fig.update_layout(title=f"layer {l}: attention mass, query group (rows) -> key group (columns)",
                          width=520, height=440, xaxis_title="key group", yaxis_title="query group")
        figs.append(fig)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>avlens demo report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ddd;padding:2px 8px;font-family:monospace;font-size:12px}</style></head><body>",
        "<h1>avlens demo report</h1>",
        f"<p>avlens on {html.escape(what)}.</p>",
        "<h2 id='toc'>Contents</h2><ol><li><a href='#model'>Model</a></li><li><a href='#layout'>Token layout</a></li>"
        "<li><a href='#flow'>Attention between token groups</a></li><li><a href='#hooks'>Hook points</a></li></ol>",
        f"<h2 id='model'>Model</h2><pre>{html.escape(repr(model))}</pre>",
        f"<h2 id='layout'>Token layout</h2>{batch._repr_html_()}<pre>{html.escape(repr(batch.layout))}</pre>",
        ("<h2 id='answers'>Answers</h2><table><tr><th>object</th><th>condition</th><th>options</th><th>truth</th><th>model</th></tr>"
         + "".join(f"<tr><td>{a}</td><td>{b}</td><td>{html.escape(c)}</td><td>{d}</td><td>{e}</td></tr>" for a, b, c, d, e in answers)
         + "</table>") if answers else "",
        "<h2 id='flow'>Attention between token groups</h2><p>Computed inside one forward pass with "
        "<code>model.attention_group_summary(batch)</code>; full patterns are never kept.</p>",
    ]
    for i, fig in enumerate(figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    parts.append(f"<h2 id='hooks'>Hook points</h2><p>{n_hooks} activations cached, {n_bytes / 2**20:.2f} MiB. "
                 "Group views: append a group to any per-position hook, e.g. <code>blocks.3.hook_resid_post.audio</code>.</p>")
    parts.append("<table><tr><th>hook</th><th>shape</th></tr>" + "".join(
        f"<tr><td>{html.escape(n)}</td><td>{s}</td></tr>" for n, s in rows) + "</table></body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(parts))


def info(path_or_id: str) -> None:
    from avlens import HookedAVTransformer

    model = HookedAVTransformer.from_pretrained(path_or_id)
    print(model)
    print(model.cfg)
    names = [n for n in model.hook_dict if not n.startswith("blocks.") or n.startswith("blocks.0.")]
    print("\n".join(names))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="avlens", description="Mechanistic interpretability for audio-visual LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the demo and write the HTML report")
    p_demo.add_argument("--out", default="avlens_report.html", help="where to write the HTML report")
    p_demo.add_argument("--seed", type=int, default=0)
    p_demo.add_argument("--quiet", action="store_true")
    p_info = sub.add_parser("info", help="load a checkpoint and list its hook points")
    p_info.add_argument("path_or_id")
    sub.add_parser("train-toy", help="train the toy audio-visual model (see --help)", add_help=False)
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "train-toy":
        from avlens.toy.train import main as train_main

        return train_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.out, args.seed, args.quiet)
    elif args.command == "info":
        info(args.path_or_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
