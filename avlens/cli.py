"""The `avlens` command line.

    avlens demo [--out avlens-report] [--n-clips 6] [--seed 0] [--quiet]
        Loads the shipped toy audio-visual model (a tiny random model of the same kind when no
        checkpoint ships), builds a few synthetic clips with known ground truth, asks the model a
        multiple-choice question about each (both modalities, then audio zeroed, then video
        zeroed), runs them with the cache, prints a summary and writes a self-contained offline
        HTML report to avlens-report/index.html.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

# the demo's clips: object i with condition i (cycled), so the first six cover every condition
DEMO_OBJECTS = ("dog", "car", "piano", "bird", "bell", "train", "cat", "siren", "guitar", "drum", "phone", "clock")
# how each answer column's clips were changed: the unimodal-dominance protocol zeroes one raw input
ZEROING = {"both": None, "audio zeroed": "audio", "video zeroed": "video"}
DEMO_STEPS = ("load model", "build clips", "prepare media", "run with cache", "answers, modalities zeroed",
              "activation patching", "attention summary", "sinks and hub study", "write report")
#: the demo's small unimodal-dominance study: clips (seed) and settings (docs/analysis.md)
HUB_CLIPS, HUB_SEED = 24, 5
HUB_SETTINGS = dict(definition="attention", eps=0.1, min_audio_chunks=1)


def _random_toy_model(seed: int):
    """A toy-architecture thinker with the toy tokenizer and RANDOM weights (drawn at unit-variance
    scale, so attention is far from uniform): what the demo runs when no checkpoint ships."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from avlens import HookedAVTransformer
    from avlens.data import tasks
    from avlens.data.tokenizer import build_tokenizer, config_token_ids
    from avlens.families.qwen2_5_omni import tiny_thinker_config
    from avlens.toy.train import MAX_PIXELS, MIN_PIXELS

    tokenizer = build_tokenizer(tasks.task_vocabulary())
    cfg = tiny_thinker_config(vocab_size=len(tokenizer), token_ids=config_token_ids(tokenizer))
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    hf = Qwen2_5OmniThinkerForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if "norm" in name or "ln" in name else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)
    model = HookedAVTransformer.from_hf(hf)
    model.set_tokenizer(tokenizer)
    model.media_defaults = {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}  # the toy's frame size
    model.toy_settings = {}
    return model


def demo_clips(n_clips: int, seed: int = 0):
    """`n_clips` synthetic clips (object i under condition i, cycled) and a multiple-choice
    question about each."""
    from avlens.data import synth, tasks

    clips = [
        synth.make_clip(DEMO_OBJECTS[i % len(DEMO_OBJECTS)], synth.CONDITIONS[i % len(synth.CONDITIONS)], seed=seed + i)
        for i in range(n_clips)
    ]
    return clips, [tasks.multiple_choice(c, seed=seed) for c in clips]


@dataclass
class Answer:
    """The model's greedy answer to one question, under one way of presenting the clip."""

    token: str
    prob: float  # the model's probability of `token`
    truth_prob: float  # its probability of the correct answer
    correct: bool

    def __str__(self) -> str:
        return f"{self.token} ({self.prob:.2f})"


def answers_from_logits(model, logits, batch, examples) -> list[Answer]:
    """Greedy first answer token at each sample's last real position (the `last` group)."""
    last = logits[batch.layout.mask("last").to(logits.device)].float()  # [batch, vocab]
    probs = last.softmax(-1)
    out = []
    for ex, p in zip(examples, probs):
        tok = int(p.argmax())
        truth_id = model.tokenizer.convert_tokens_to_ids(ex.answer)
        text = model.tokenizer.decode([tok]).strip()
        out.append(Answer(text, float(p[tok]), float(p[truth_id]), text == ex.answer))
    return out


@dataclass
class DemoRun:
    """What the demo computed: the report and the terminal summary show it."""

    model: object
    description: str
    random: bool
    clips: list
    examples: list
    batch: object  # the clips with both modalities
    logits: torch.Tensor
    cache: object
    answers: dict  # column of ZEROING -> list[Answer], one per clip
    summary: object  # AttentionGroupSummary of `batch`
    sinks: object = None  # SinkReport of `batch` (attention definition)
    study: object = None  # HubStudy on HUB_CLIPS clips
    seconds: float = 0.0
    halluc: object = None  # Comparison of a few mitigation methods on a one-clip toy benchmark
    patch: object = None  # PatchResult: clip 0's clean residual stream patched into its zeroed run
    patch_zeroed: str = ""  # the modality zeroed in the patching's corrupted run


def run_demo(n_clips: int = 6, seed: int = 0, progress=None, hub_clips: int = HUB_CLIPS) -> DemoRun:
    """Load the model, build the clips, run them (cached, then with each modality zeroed)."""
    from avlens.data import synth, tasks
    from avlens.toy import load_toy, toy_available

    def done(next_step: str) -> None:
        if progress is not None:
            progress.update(1)
            progress.set_postfix_str(next_step)

    t0 = time.time()
    if toy_available():
        model, random = load_toy(), False
        description = ("the shipped toy audio-visual model (avlens.load_toy()): a tiny Qwen2.5-Omni thinker "
                       "trained from scratch on avlens's synthetic audio-visual world")
    else:
        model, random = _random_toy_model(seed), True
        description = ("a tiny RANDOM Qwen2.5-Omni thinker with the toy model's tokenizer: no toy checkpoint "
                       "is shipped in avlens/toy/checkpoint/ yet, so its answers mean nothing")
    done(DEMO_STEPS[1])
    clips, examples = demo_clips(n_clips, seed)
    texts = [tasks.prompt_text(ex) for ex in examples]
    done(DEMO_STEPS[2])
    batches = {}
    for column, modality in ZEROING.items():
        shown = [c.zeroed(modality) if modality else c for c in clips]
        batches[column] = model.prepare_media(texts, audio=[c.waveform for c in shown], video=[c.frames for c in shown],
                                              fps=synth.FPS, use_audio_in_video=True)
    done(DEMO_STEPS[3])
    batch = batches["both"]
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch)
        done(DEMO_STEPS[4])
        answers = {"both": answers_from_logits(model, logits, batch, examples)}
        for column in list(ZEROING)[1:]:
            answers[column] = answers_from_logits(model, model(batches[column]), batches[column], examples)
    done(DEMO_STEPS[5])
    patch, patch_zeroed = demo_patching(model, batches, answers, examples)
    done(DEMO_STEPS[6])
    from avlens.analysis import cross_modal_hub_study, find_sink_dims, find_sinks, toy_samples

    sink_dims = find_sink_dims(model, [batch])
    sinks = find_sinks(model, batch, dims=[], eps=HUB_SETTINGS["eps"])
    sinks.sink_dims = sink_dims
    # the group flow with the global sinks as their own group (attention definition, as the toy needs)
    summary = model.attention_group_summary(batch.with_layout(sinks.to_layout(N=3, definition="attention")))
    done(DEMO_STEPS[7])
    study = cross_modal_hub_study(model, toy_samples(model, synth.make_dataset(hub_clips, seed=HUB_SEED)), progress=False,
                                  **HUB_SETTINGS)
    halluc = demo_hallucination(model)
    done(DEMO_STEPS[8])
    return DemoRun(model, description, random, clips, examples, batch, logits, cache, answers, summary, sinks, study,
                   time.time() - t0, halluc, patch, patch_zeroed)


def demo_patching(model, batches: dict, answers: dict, examples):
    """Activation patching on clip 0 (about a second): the clean run's residual stream
    (`resid_pre`, every layer x position) written one cell at a time into the run with the
    modality whose zeroing lowers p(truth) most, scored by the probability of the correct letter.
    Returns the `PatchResult` and the zeroed modality."""
    from avlens.interventions.metrics import AnswerProb
    from avlens.interventions.patching import activation_patch

    drop = {m: answers["both"][0].truth_prob - answers[f"{m} zeroed"][0].truth_prob for m in ("audio", "video")}
    zeroed = max(drop, key=drop.get)
    clean, corrupted = batches["both"].select(0), batches[f"{zeroed} zeroed"].select(0)
    res = activation_patch(model, clean, corrupted, AnswerProb([examples[0].answer], model), site="resid_pre",
                           over=("layer", "position"), logits_at="last", progress=False)
    return res, zeroed


DEMO_HALLUC = {"n_clips": 1, "seed": 2000, "methods": ("plain", "vcd", "avcd"), "n_boot": 200}


def demo_hallucination(model):
    """Plain decoding, VCD and AVCD on a one-clip toy hallucination benchmark (a second or two; the full
    table with every method is docs/hallucination.md, `avlens hallucination`)."""
    import tempfile

    from avlens.data.halluc_bench import write_toy_benchmark
    from avlens.mitigation import compare_methods, default_methods

    methods = default_methods(toy=True)
    with tempfile.TemporaryDirectory() as d:
        write_toy_benchmark(d, n_clips=DEMO_HALLUC["n_clips"], seed=DEMO_HALLUC["seed"])
        return compare_methods(model, d, {m: methods[m] for m in DEMO_HALLUC["methods"]}, n_boot=DEMO_HALLUC["n_boot"])


def demo(out: str = "avlens-report", seed: int = 0, quiet: bool = False, n_clips: int = 6, hub_clips: int = HUB_CLIPS) -> Path:
    """`avlens demo`: run the demo, write `out/index.html`, print a summary; returns the page's path."""
    from tqdm.auto import tqdm

    if n_clips < 1:
        raise ValueError(f"n_clips must be at least 1, got {n_clips}")
    t0 = time.time()
    bar = tqdm(total=len(DEMO_STEPS), desc="avlens demo", unit="step", disable=quiet, file=sys.stderr)
    bar.set_postfix_str(DEMO_STEPS[0])
    run = run_demo(n_clips, seed, progress=bar, hub_clips=hub_clips)
    path = build_demo_report(run).write(out)
    run.seconds = time.time() - t0
    bar.update(1)
    bar.close()
    if not quiet:
        print(terminal_summary(run, path))
    return path


# ------------------------------------------------------------------------------------ summary


def accuracy_line(run: DemoRun) -> str:
    n = len(run.clips)
    return ", ".join(f"{col} {sum(a.correct for a in ans)}/{n}" for col, ans in run.answers.items())


def terminal_summary(run: DemoRun, path: Path) -> str:
    model, batch = run.model, run.batch
    lines = [f"avlens demo on {run.description}", f"  model   {model!r}"]
    lines.append(f"  clips   {len(run.clips)}, {batch.shape[1]} tokens each "
                 f"(A audio, V video, T text, S special; runs merged):")
    lines += ["    " + ln for ln in repr(batch.layout).splitlines()]
    lines.append("  answers (multiple choice, 4 options; greedy first token and its probability; x: wrong):")
    cols = list(run.answers)
    lines.append(f"    {'#':>2}  {'clip':<26} {'truth':<6} " + " ".join(f"{c:<14}" for c in cols))
    for i, ex in enumerate(run.examples):
        t = ex.truth
        clip = f"{t.target} / {t.condition}"
        cells = []
        for c in cols:
            a = run.answers[c][i]
            tok = a.token if len(a.token) <= 8 else a.token[:7] + "~"
            cells.append(f"{tok} ({a.prob:.2f}){'' if a.correct else ' x'}".ljust(14))
        lines.append(f"    {i:>2}  {clip:<26} {ex.answer:<6} " + " ".join(cells))
    lines.append(f"  accuracy  {accuracy_line(run)}")
    hooks = [name for name, _ in _hook_table(run.cache)]
    n_bytes = sum(t.numel() * t.element_size() for t in run.cache.values())
    lines.append(f"  Cache: {len(run.cache)} activations, {n_bytes / 2**20:.2f} MiB; hook names per block: "
                 + ", ".join(h for h in hooks if h.startswith("blocks."))[:200] + " ...")
    lines.append(f"  report  {path} ({path.stat().st_size / 2**20:.1f} MiB, opens offline)")
    lines.append(f"  time    {run.seconds:.1f} s")
    return "\n".join(lines)


def _hook_table(cache) -> list[tuple[str, str]]:
    """One row per distinct hook (block 0 stands for every block)."""
    rows = []
    for name, t in cache.items():
        if name.startswith("blocks.") and not name.startswith("blocks.0."):
            continue
        shown = name.replace("blocks.0.", "blocks.{l}.") if name.startswith("blocks.0.") else name
        rows.append((shown, "x".join(str(s) for s in t.shape)))
    return rows


# ------------------------------------------------------------------------------------ report


#: page furniture for long reports: the table of contents in columns, and a "contents" link that
#: stays in the corner of the window, so the contents are one click away anywhere on the page
TOC_HTML = (
    "<style>ol.toc{columns:3 16em;column-gap:2em;background:#f9fafb;border:1px solid #e5e7eb;border-radius:6px;"
    "padding:.6em 1em .6em 2.4em}ol.toc li{break-inside:avoid}"
    "a.avlens-top{position:fixed;right:1em;bottom:1em;background:#fff;border:1px solid #d1d5db;border-radius:4px;"
    "padding:2px 9px;font-size:13px;text-decoration:none;box-shadow:0 1px 3px rgba(0,0,0,.15);z-index:10}"
    "section{scroll-margin-top:.5em}</style>"
    "<a class='avlens-top' href='#' title='back to the table of contents'>&uarr; contents</a>"
)


def build_demo_report(run: DemoRun):
    """The demo's `avlens.viz.Report`: one section per view, each linked from the table of
    contents: summary, token layout, answers, the group-flow view, an attention drill-down, the
    answer's attention as a token strip, on the spectrogram and on the frames, activation
    patching, sinks, the hub study, hallucination mitigation, the model card and the hooks."""
    from avlens.viz import Report

    report = Report(
        "avlens demo",
        intro=f"<p>avlens on {html.escape(run.description)}.</p>{TOC_HTML}",
        banner=("This report was made with a tiny RANDOM model (the toy checkpoint folder avlens/toy/checkpoint/ is missing): every answer "
                "and attention pattern below is noise. The page shows what avlens computes, not what a model "
                "learned.") if run.random else None,
    )
    _summary_section(report, run)
    _layout_section(report, run)
    _answers_section(report, run)
    _flow_section(report, run)
    _attention_section(report, run)
    _answer_attention_sections(report, run)
    _patching_section(report, run)
    _hub_section(report, run)
    _study_section(report, run)
    _hallucination_section(report, run)
    _model_card_section(report, run)
    _hooks_section(report, run)
    return report


def _clip_name(i: int, ex) -> str:
    t = ex.truth
    return f"{i}: {t.target} / {t.condition}" + (f" ({t.variant})" if t.variant else "")


def _summary_section(report, run: DemoRun) -> None:
    m = run.model
    n_params = sum(p.numel() for p in m.parameters())
    n_bytes = sum(t.numel() * t.element_size() for t in run.cache.values())
    report.add_section("Summary", id="summary")
    report.add_table(None, [
        ("model", repr(m)),
        ("what", run.description),
        ("backbone parameters", f"{n_params:,}"),
        ("clips", f"{len(run.clips)} synthetic 4-second clips (avlens.data.synth), audio in video"),
        ("tokens per clip", f"{run.batch.shape[1]}: {run.batch.layout.summary(0)}"),
        ("answer accuracy", accuracy_line(run)),
        ("cache", f"{len(run.cache)} activations, {n_bytes / 2**20:.2f} MiB"),
        ("computed in", f"{run.seconds:.1f} s"),
    ])


def _layout_section(report, run: DemoRun) -> None:
    from avlens.viz import layout_strip_html

    report.add_section("Token layout", id="layout")
    report.add_text(
        "Each clip's token sequence, coloured by token group. The clip is audio in video, so its media "
        "is split into 2-second chunks, each holding that chunk's video tokens followed by its audio "
        "tokens (25 per second), between the vision/audio start and end tokens. Hover a block for its "
        "positions and time span.", "note")
    report.add_html(layout_strip_html(run.batch.layout, [_clip_name(i, ex) for i, ex in enumerate(run.examples)]))
    report.add_html(f"<pre>{html.escape(repr(run.batch.layout))}</pre>")


def _answers_section(report, run: DemoRun) -> None:
    from avlens.data import tasks

    question = tasks.MC_QUESTION.format(options=" ".join(f"{x} . <option>" for x in "ABCD"))
    report.add_section("Answers", id="answers")
    report.add_text(
        f"Each clip comes with a multiple-choice question: \"{question}\". The options include every "
        "other object heard or seen in the clip. The model's answer is its greedy first token (with its "
        "probability) at the answer position; p(truth) is its probability of the correct letter. "
        "'audio zeroed' and 'video zeroed' run the same clip with that modality's raw input zeroed "
        "(the unimodal-dominance protocol): the layout stays the same, only the content goes.", "note")
    header = ["clip", "heard", "seen", "informative", "options", "truth"]
    for col in run.answers:
        header += [col, "p(truth)"]
    rows, classes = [], []
    for i, ex in enumerate(run.examples):
        t = ex.truth
        opts = " ".join(f"{tasks.LETTERS[j]}. {o}" for j, o in enumerate(ex.options))
        row = [_clip_name(i, ex), ", ".join(t.heard) or "-", ", ".join(t.seen) or "-", t.informative, opts,
               f"{ex.answer} ({t.target})"]
        cls = ["", "", "", "", "mono", ""]
        for col, ans in run.answers.items():
            a = ans[i]
            row += [str(a), f"{a.truth_prob:.2f}"]
            cls += ["ok" if a.correct else "wrong", "num"]
        rows.append(row)
        classes.append(cls)
    report.add_table(header, rows, classes)
    report.add_text(f"Accuracy: {accuracy_line(run)}.")


def _media_layer(run: DemoRun, sample: int) -> tuple[int, list[float]]:
    """The layer whose heads (averaged) put the most attention from the answer position on media."""
    lay = run.batch.layout
    q = int(lay.positions("last", sample=sample)[0])
    media = lay.mask("audio")[sample] | lay.mask("video")[sample] | lay.mask("image")[sample]
    shares = []
    for l in range(run.model.cfg.n_layers):
        pat = run.cache[f"blocks.{l}.attn.hook_pattern"][sample, :, q]  # [head, key]
        shares.append(float(pat[:, media.to(pat.device)].sum(-1).mean()))
    return max(range(len(shares)), key=shares.__getitem__), shares


def _attention_section(report, run: DemoRun, sample: int = 0) -> None:
    """A drill-down (circuitsvis over a window of positions) of the layer that looks at media
    most, and the head-mean pattern as a heatmap with group bands."""
    from avlens.viz import attention_drilldown_from_pattern, attention_heatmap, attention_window
    from avlens.viz.views import window_labels

    lay = run.batch.layout
    layer, shares = _media_layer(run, sample)
    pos = attention_window(lay, sample)
    labels = window_labels(lay, sample, pos.tolist(), run.model.to_str_tokens(run.batch, sample))
    groups = [lay.labels(sample)[p] for p in pos.tolist()]
    pattern = run.cache[f"blocks.{layer}.attn.hook_pattern"][sample].float().cpu()  # [head, q, k]
    window = pattern[:, pos][:, :, pos]
    last_chunk = lay.chunk[sample] == lay.chunk[sample].max()
    n_audio = int((lay.mask("audio")[sample] & last_chunk).sum()) if int(lay.chunk[sample].max()) >= 0 else 0
    thinned = groups.count("audio") < n_audio
    report.add_section("Attention in a window", id="attention")
    report.add_text(
        f"Clip {_clip_name(sample, run.examples[sample])}, layer {layer}: the layer whose answer position puts "
        "the most attention on media tokens (mean over heads, per layer: "
        + ", ".join(f"{s:.2f}" for s in shares) + "). The window holds "
        f"{len(pos)} of the clip's {lay.n_pos} positions: the last media chunk's video and audio tokens"
        + (f" (audio thinned to {groups.count('audio')} of its {n_audio}, evenly spaced)" if thinned else "")
        + ", then the question and the answer position. Labels start with the token's group (A audio, V video, "
        "T text, S special; media tokens show their time stamp). Values are the model's attention weights; "
        "weight on positions outside the window is not shown, so rows need not sum to 1. The drill-down's data grow "
        "with the window, not with the sequence (avlens.viz.attention_drilldown).", "note")
    report.add_view(attention_drilldown_from_pattern(
        window, labels, groups, head_names=[f"L{layer}H{h}" for h in range(window.shape[0])], positions=pos.tolist(),
        title=f"Layer {layer}, every head, {len(pos)} positions (circuitsvis AttentionHeads): click a head, hover a token"))
    report.add_view(attention_heatmap(window.mean(0), labels, groups,
                                      f"layer {layer}, mean over heads; bands: token group of key (top) and query (right)"))


def _flow_section(report, run: DemoRun) -> None:
    from avlens.viz import group_flow_view

    report.add_section("Attention between token groups", id="flow")
    report.add_text(
        "Attention mass from each query group (rows of each small matrix) to each key group (columns), for every "
        "layer and head, with a column averaging the heads and a row averaging the layers; computed inside one "
        "forward pass by model.attention_group_summary(batch), without keeping full patterns, so its data do not "
        "grow with the sequence (L x H x G x G numbers). Hover a head for its numbers.", "note")
    report.add_view(group_flow_view(run.summary, title=f"Group flow, {len(run.clips)} clips (batch mean)"))


def _answer_attention(run: DemoRun, sample: int = 0) -> tuple[int, int, torch.Tensor]:
    """The media layer, the answer (query) position and the head-mean attention it pays to every
    position of the sample: `[pos]`."""
    layer, _ = _media_layer(run, sample)
    q = int(run.batch.layout.positions("last", sample=sample)[0])
    att = run.cache[f"blocks.{layer}.attn.hook_pattern"][sample, :, q].float().mean(0).cpu()
    return layer, q, att


def _answer_attention_sections(report, run: DemoRun, sample: int = 0) -> None:
    """The answer position's attention (media layer, heads averaged) over clip 0 as a token strip,
    on the audio's spectrogram (playable) and on the video frames' patch grids."""
    from avlens.viz import frame_strip_view, spectrogram_view, token_strip

    layer, q, att = _answer_attention(run, sample)
    clip = run.clips[sample]
    what = f"attention from the answer (layer {layer}, mean over heads)"
    report.add_section("Attention from the answer: token strip", id="answer-strip")
    report.add_text(
        f"Clip {_clip_name(sample, run.examples[sample])}: every token of the sequence, coloured by the attention the "
        f"answer position ({q}, outlined) pays to it at layer {layer}, heads averaged. Media tokens are narrow cells, "
        "each run labelled with its group letter and time span; text tokens show their text. Hover a token for its "
        "position, time and value. The strip holds one value per token (avlens.viz.token_strip).", "note")
    report.add_view(token_strip(run.batch.layout, att, sample=sample, query=q, value_label=what,
                                str_tokens=run.model.to_str_tokens(run.batch, sample),
                                title=f"Clip {_clip_name(sample, run.examples[sample])}: {what}"))
    report.add_section("Attention from the answer: audio on the spectrogram", id="answer-audio")
    report.add_text(
        "The same attention over the clip's audio tokens (one per 40 ms), drawn on the clip's log-mel spectrogram "
        "time axis; play the clip to follow the playhead (the audio is in the page).", "note")
    report.add_view(spectrogram_view(run.batch, att, sample=sample, waveform=clip.waveform,
                                     sampling_rate=clip.sampling_rate, value_label=what,
                                     title=f"Clip {_clip_name(sample, run.examples[sample])}: audio tokens"))
    report.add_section("Attention from the answer: video frames", id="answer-video")
    report.add_text(
        "The same attention over the clip's video tokens, as heat on each temporal step's grid of merged patches "
        "(2 x 2 patches of 14 pixels per token), over the step's first frame.", "note")
    report.add_view(frame_strip_view(run.batch, att, sample=sample, frames=clip.frames, value_label=what,
                                     title=f"Clip {_clip_name(sample, run.examples[sample])}: video tokens"))


def _patching_section(report, run: DemoRun) -> None:
    """Clip 0's activation patching: the layer x position heatmap (group bands), the effect of
    the first layer as a token strip and on the zeroed modality's media view."""
    from avlens.viz import frame_strip_view, spectrogram_view

    res = run.patch
    report.add_section("Activation patching", id="patching")
    if res is None:
        report.add_text("Not computed.")
        return
    base = float(res.base.float().mean())
    src = float(res.source.float().mean()) if res.source is not None else float("nan")
    ex = run.examples[0]
    s = res.stats
    report.add_text(
        f"Clip {_clip_name(0, ex)}: the clean run's residual stream entering each layer (resid_pre), one layer x "
        f"position cell at a time, written into the run with the {run.patch_zeroed} zeroed (the modality whose "
        f"zeroing lowers p(truth) most). The metric is p({ex.answer}), the correct letter: {base:.3f} in the "
        f"{run.patch_zeroed}-zeroed run, {src:.3f} in the clean run. {s.n_cells} cells, {s.n_skipped} that cannot "
        f"change anything skipped, {s.n_forwards} forward passes, {s.seconds:.1f} s "
        "(avlens.patching.activation_patch; result.plot() draws this heatmap, an avlens view, with a labelled band per run of "
        "same-group positions).", "note")
    report.add_view(res.plot())
    media = res.values.plain()[:, torch.tensor([g in ("audio", "video") for g in res.position_groups])]
    layer = int((media - base).abs().amax(1).argmax()) if media.numel() else 0
    effect = res.values.plain()[layer].float() - base
    what = f"p({ex.answer}) - {base:.3f}, patching layer {layer}"
    report.add_view(res.plot(kind="strip", layer=layer, title=f"Effect of patching one position at layer {layer} "
                                                                "(result.plot(kind='strip', layer=...))"))
    full = torch.full((run.batch.shape[1],), float("nan"))
    full[: effect.shape[0]] = effect
    clip = run.clips[0]
    if run.patch_zeroed == "audio":
        report.add_view(spectrogram_view(run.batch, full, sample=0, waveform=clip.waveform, sampling_rate=clip.sampling_rate,
                                         value_label=what, center=0.0, title=f"Patching effect on the audio tokens (layer {layer})"))
    else:
        report.add_view(frame_strip_view(run.batch, full, sample=0, frames=clip.frames, value_label=what, center=0.0,
                                         title=f"Patching effect on the video tokens (layer {layer})"))


def eval_results(settings: dict) -> Optional[dict]:
    """The evaluation results (the dict `avlens.toy.evaluate.evaluate` returns) in a checkpoint's
    avlens_toy.json: at its top level or under "eval", "evaluation" or "model_card"; None if absent."""
    for cand in (settings, *(settings.get(k) for k in ("eval", "evaluation", "model_card"))):
        if isinstance(cand, dict) and isinstance(cand.get("results"), dict) and cand["results"]:
            return cand
    return None


def _dims_sentence(d) -> str:
    if not d.dims:
        return (f"no massive activations (largest |activation| {float(d.max_abs.max()):.3g}, largest ratio to the "
                f"median {float(d.max_ratio.max()):.3g}; the rule asks for > {d.min_abs:g} and >= {d.min_ratio:g}x), so the "
                "hidden-state definition finds nothing here.")
    return f"massive activations in dims {d.dims[:8]} (the hidden-state definition applies)."


def _hub_section(report, run: DemoRun) -> None:
    """Sink tokens of clip 0 (METHODS.md section 1): the layer x position map and the strip."""
    report.add_section("Cross-modal sinks", id="hubs")
    rep = run.sinks
    fb = rep.found_by(0)
    labels = run.batch.layout.labels(0)
    report.add_text(
        f"Sink tokens of clip {_clip_name(0, run.examples[0])} by the attention definition (a position receiving a mean "
        f"attention above eps = {rep.eps:g} from the queries after it, in some head; uniform attention here would be "
        f"1/{run.batch.shape[1]}). find_sink_dims on these clips: {_dims_sentence(rep.sink_dims)} Sinks at any layer: "
        + (", ".join(f"{p} ({labels[p]})" for p in fb["attention"]) or "none") + ".")
    report.add_view(rep.plot(0, definition="attention"))
    report.add_view(rep.plot(0, definition="attention", kind="strip",
                             title="Sink score of every token (largest over layers): report.plot(kind='strip')"))


def _study_section(report, run: DemoRun) -> None:
    """The small unimodal-dominance study (METHODS.md sections 2-5)."""
    st = run.study
    report.add_section("Unimodal-dominance study", id="study")
    report.add_text(
        f"avlens.analysis.cross_modal_hub_study on {len(st.records)} synthetic clips (make_dataset seed {HUB_SEED}), settings "
        f"{HUB_SETTINGS}: {repr(st).splitlines()[0]}. IE x 100 per token set of the non-dominant modality, mean and 95 % "
        "bootstrap CI (docs/analysis.md has the full 360-clip run and what it means).", "note")
    t = st.table()
    if len(t):
        rows = [(r.dominant, r.token_set, r.n, f"{r.set_size:.1f}", f"{r.ie_clean:.2f} [{r.ie_clean_lo:.2f}, {r.ie_clean_hi:.2f}]",
                 f"{r.ie_corrupt:.2f} [{r.ie_corrupt_lo:.2f}, {r.ie_corrupt_hi:.2f}]") for r in t.itertuples()]
        report.add_table(["dominant", "token set", "n", "mean size", "IE_clean x 100", "IE_corrupt x 100"], rows)
    else:
        report.add_text("No sample was kept (see the skip reasons above).")


def _hallucination_section(report, run: DemoRun) -> None:
    """A few mitigation methods side by side on a one-clip toy benchmark (docs/hallucination.md)."""
    from avlens.viz import table_from_markdown

    report.add_section("Hallucination mitigation", id="hallucination")
    res = run.halluc
    if res is None:
        report.add_text("Not computed.")
        return
    n = int(res.table["n_yes_no"].max()) if len(res.table) else 0
    report.add_text(f"Plain decoding, VCD and AVCD (docs/hallucination.md) on a one-clip toy benchmark ({n} yes/no "
                    f"probes and one caption, seed {DEMO_HALLUC['seed']}; 95 % bootstrap intervals over so few items "
                    "are wide). The full comparison of every method on 60 clips is `avlens hallucination` and its "
                    "table in docs/hallucination.md.", "note")
    report.add_html(table_from_markdown(res.markdown()))


def _model_card_section(report, run: DemoRun) -> None:
    from avlens.viz import table_from_markdown

    m, c = run.model, run.model.cfg
    report.add_section("Model card", id="model-card")
    report.add_table(None, [
        ("class", type(m).__name__),
        ("layers", c.n_layers),
        ("d_model", c.d_model),
        ("heads (key/value heads)", f"{c.n_heads} ({c.n_key_value_heads})"),
        ("d_head / d_mlp", f"{c.d_head} / {c.d_mlp}"),
        ("vocabulary", c.d_vocab),
        ("rotary", f"{c.rope_kind} {c.mrope_section or ''}"),
        ("backbone parameters", f"{sum(p.numel() for p in m.parameters()):,}"),
    ])
    if run.random:
        report.add_text("No toy checkpoint is shipped in this installation (avlens/toy/checkpoint/), so this model "
                        "has no training and no evaluation results: see docs/toy_model.md.")
        return
    settings = getattr(m, "toy_settings", {}) or {}
    training = settings.get("training") or {}
    scalars = [(k, v) for k, v in training.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    if scalars:
        report.add_html("<h3>Training</h3>")
        report.add_table(None, scalars)
    report.add_html("<h3>Evaluation</h3>")
    res = eval_results(settings)
    if res is None:
        report.add_text("The checkpoint's avlens_toy.json holds no evaluation results; compute them with "
                        "python -m avlens.toy.evaluate (see docs/toy_model.md).")
        return
    from avlens.toy.evaluate import markdown_table

    report.add_text(f"Accuracy per task and condition on {res.get('n_clips', '?')} held-out clips (seed "
                    f"{res.get('seed', '?')}), with both modalities and with one modality's raw input zeroed "
                    "(python -m avlens.toy.evaluate).", "note")
    report.add_html(table_from_markdown(markdown_table(res)))


def _hooks_section(report, run: DemoRun) -> None:
    rows = _hook_table(run.cache)
    report.add_section("Hook points", id="hooks")
    report.add_text("Every activation model.run_with_cache(batch) cached for the clips, block 0 standing for "
                    "every block (blocks.{l}.* exists for each layer l); shapes are [batch, pos, ...]. Group views: "
                    "append a group to any per-position hook, e.g. blocks.1.hook_resid_post.audio.")
    report.add_table(("hook", "shape"), rows, [["mono", "mono"]] * len(rows))


def info(path_or_id: str) -> None:
    from avlens import HookedAVTransformer

    model = HookedAVTransformer.from_pretrained(path_or_id)
    print(model)
    print(model.cfg)
    names = [n for n in model.hook_dict if not n.startswith("blocks.") or n.startswith("blocks.0.")]
    print("\n".join(names))


def hub_study(out: str, n_clips: int = 360, seed: int = 1000, definition: str = "attention", eps: float = 0.1,
              min_audio_chunks: int = 1, answer_steps: int = 1) -> Path:
    """`avlens hub-study`: the unimodal-dominance study on the toy model and `n_clips` synthetic
    clips; resumable (records.jsonl), writes table.csv and an offline index.html with the figure."""
    from avlens.analysis import cross_modal_hub_study, toy_samples
    from avlens.data import synth
    from avlens.toy import load_toy
    from avlens.viz import Report

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    model = load_toy()
    clips = synth.make_dataset(n_clips, seed=seed)
    samples = toy_samples(model, clips)
    st = cross_modal_hub_study(model, samples, definition=definition, eps=eps, min_audio_chunks=min_audio_chunks,
                               answer_steps=answer_steps, records=str(root / "records.jsonl"))
    table = st.table()
    table.to_csv(root / "table.csv", index=False)
    report = hub_study_report(st, samples, clips)
    path = report.write(str(root))
    print(st)
    print(table.round(3).to_string(index=False))
    print(f"records {root / 'records.jsonl'}, table {root / 'table.csv'}, report {path}")
    return path


def hub_study_report(st, samples=None, clips=None):
    """The hub study's offline page: the table and its figure, the sinks of the first kept sample
    (their modality dominance on a token strip and on that modality's media view, with the
    cross-modal / unimodal split outlined) when `samples` (the `StudySample`s, in study order;
    `clips` their synthetic clips, for the audio player and the frames) are given, and the skip
    reasons."""
    from avlens.viz import Report

    head = repr(st).splitlines()[0]
    report = Report("avlens hub study", intro=f"<p>{html.escape(head)}; settings {html.escape(str(st.settings))}</p>{TOC_HTML}")
    table = st.table()
    report.add_section("Token-set causal tracing", id="table")
    report.add_text("IE_clean and IE_corrupt x 100 per dominant modality and token set of the non-dominant modality "
                    "(mean and 95 % bootstrap CI over samples; METHODS.md section 5).", "note")
    report.add_table(list(table.columns), [[f"{v:.3f}" if isinstance(v, float) else v for v in row] for row in table.itertuples(index=False)])
    if len(table):
        report.add_view(st.plot())
    samples = list(samples or [])
    index = {str(s.id): i for i, s in enumerate(samples)}
    kept = next((r for r in st.kept if str(r["id"]) in index), None)
    if kept is not None:
        i = index[str(kept["id"])]
        _hub_sample_section(report, kept, samples[i], clips[i] if clips is not None and i < len(clips) else None)
    report.add_section("Skipped samples", id="skipped")
    report.add_table(["reason", "samples"], sorted(st.skip_reasons().items()))
    return report


def _hub_sample_section(report, rec: dict, sample, clip=None) -> None:
    """One kept sample: the modality dominance score of its non-dominant modality's sinks on a
    token strip (cross-modal and unimodal sinks outlined as groups) and on the media view."""
    from avlens.viz import frame_strip_view, spectrogram_view, token_strip

    batch = sample.batch
    other = "video" if rec["dominant"] == "audio" else "audio"
    lay = batch.layout
    for name in ("cross_modal_sink", "unimodal_sink"):
        if rec.get(name):
            lay = lay.with_group(name, rec[name])
    mds = torch.full((lay.n_pos,), float("nan"))
    mds[torch.tensor(rec["sinks"], dtype=torch.long)] = torch.tensor(rec["mds"], dtype=torch.float32)
    report.add_section(f"Sinks of one sample ({rec['id']})", id="sample")
    report.add_text(
        f"Sample {rec['id']}: {rec['dominant']}-dominant (answers with both modalities, audio only, video only: "
        f"{rec['y']['av']}, {rec['y']['a']}, {rec['y']['v']}), so the sinks come from the {other} tokens: "
        f"{len(rec['sinks'])} global sinks, coloured by their layer-mean modality dominance score (+1: attended by video "
        "queries, -1: by audio queries; other tokens grey). The cross-modal / unimodal median split is outlined.", "note")
    report.add_view(token_strip(lay, mds, sample=0, value_label="MDS (layer mean)", center=0.0,
                                title=f"Sample {rec['id']}: modality dominance of the {other} sinks"))
    if other == "audio":
        report.add_view(spectrogram_view(batch, mds, sample=0, value_label="MDS (layer mean)", center=0.0,
                                         waveform=getattr(clip, "waveform", None), sampling_rate=getattr(clip, "sampling_rate", 16000),
                                         title="The audio sinks on the spectrogram"))
    else:
        report.add_view(frame_strip_view(batch, mds, sample=0, value_label="MDS (layer mean)", center=0.0,
                                         frames=getattr(clip, "frames", None), title="The video sinks on the frames"))


def hallucination_report(res, out, title: str = "avlens hallucination", n_predictions: int = 12, model=None,
                         bench: Optional[str] = None) -> Path:
    """Write `out/index.html`: the comparison table (95 % bootstrap intervals), the first
    `n_predictions` predictions of every method side by side, the skipped media and, with the
    `model` and a toy `bench` folder, where the model looks when it answers the first yes/no
    probe (token strip, spectrogram, frames)."""
    from avlens.viz import Report, table_from_markdown

    n = len(res.table)
    report = Report(title, intro=f"<p>{n} mitigation method{'s' if n != 1 else ''} decoded from the same prompts "
                                 f"(docs/hallucination.md).</p>{TOC_HTML}")
    report.add_section("Methods compared", id="table")
    report.add_html(table_from_markdown(res.markdown()))
    report.add_section("Predictions", id="predictions")
    names = [m for m, recs in res.predictions.items() if recs]
    if names:
        first = res.predictions[names[0]][:n_predictions]
        rows = []
        for i, r in enumerate(first):
            q = r.get("text") if r.get("kind") == "yes_no" else r.get("prompt")
            row = [r.get("video_id", ""), r.get("kind", ""), q or "", r.get("label", "")]
            row += [res.predictions[m][i]["pred"] if i < len(res.predictions[m]) else "" for m in names]
            rows.append(row)
        report.add_text(f"The first {len(first)} items of {len(res.predictions[names[0]])}; every prediction is in "
                        "predictions_<method>.jsonl.", "note")
        report.add_table(["video", "kind", "question / prompt", "label"] + names, rows)
    else:
        report.add_text("No method produced predictions.")
    if model is not None and bench is not None:
        _probe_sections(report, model, bench)
    report.add_section("Skipped media", id="skipped")
    if res.skipped:
        report.add_table(["video", "reason"], [[s.get("video_id"), s.get("reason")] for s in res.skipped])
    else:
        report.add_text("None.")
    return report.write(out)


def _probe_sections(report, model, bench: str) -> None:
    """The first yes/no probe of a toy benchmark, run once with plain decoding's prompt: the
    attention its answer position pays to every token (the layer that looks at media most,
    heads averaged) as a token strip, on the spectrogram and on the frames."""
    import os

    from avlens.analysis.hallucination import AVH_YES_NO_TASKS, read_records
    from avlens.data.halluc_bench import ToyMedia
    from avlens.mitigation.compare import toy_prompt
    from avlens.viz import frame_strip_view, spectrogram_view, token_strip

    if not os.path.exists(os.path.join(bench, "clips.json")):
        return
    probes = [r for r in read_records(os.path.join(bench, "avhbench.json")) if r["task"] in AVH_YES_NO_TASKS]
    if not probes:
        return
    r = probes[0]
    wave, frames, fps = ToyMedia(bench)(r["video_id"])
    batch = model.prepare_media(toy_prompt(r["text"]), audio=wave, video=frames, fps=fps, use_audio_in_video=True)
    lay = batch.layout
    q = int(lay.positions("last", sample=0)[0])
    media = (lay.mask("audio")[0] | lay.mask("video")[0]).cpu()
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, names_filter=lambda name: name.startswith("blocks.") and name.endswith("attn.hook_pattern"))
    rows = {n: cache[n][0, :, q].float().mean(0).cpu() for n in cache.keys()}  # [key], heads averaged
    shares = {n: float(v[media].sum()) for n, v in rows.items()}
    name = max(shares, key=shares.get)
    layer, att = int(name.split(".")[1]), rows[name]
    what = f"attention from the answer (layer {layer}, mean over heads)"
    label = f"{r['video_id']}: \"{r['text']}\" (label {r.get('label')})"
    report.add_section("Where the model looks: first probe", id="probe")
    report.add_text(f"Probe {label}, plain prompt. Layer {layer} is the layer whose answer position puts the most "
                    f"attention on media ({shares[name]:.2f}); every token coloured by that attention.", "note")
    report.add_view(token_strip(lay, att, sample=0, query=q, value_label=what, str_tokens=model.to_str_tokens(batch, 0),
                                title=f"Probe {r['video_id']}: {what}"))
    report.add_view(spectrogram_view(batch, att, sample=0, waveform=wave, value_label=what, title="The audio tokens"))
    report.add_view(frame_strip_view(batch, att, sample=0, frames=frames, value_label=what, title="The video tokens"))


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="avlens", description="Mechanistic interpretability for audio-visual LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the demo and write the offline HTML report")
    p_demo.add_argument("--out", default="avlens-report", help="folder to write the report to (index.html)")
    p_demo.add_argument("--n-clips", type=_positive, default=6, help="how many synthetic clips (default 6)")
    p_demo.add_argument("--seed", type=int, default=0)
    p_demo.add_argument("--hub-clips", type=_positive, default=HUB_CLIPS, help=f"clips in the report's hub study (default {HUB_CLIPS})")
    p_demo.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p_info = sub.add_parser("info", help="load a checkpoint and list its hook points")
    p_info.add_argument("path_or_id")
    sub.add_parser("train-toy", help="train the toy audio-visual model (see --help)", add_help=False)
    p_hub = sub.add_parser("hub-study", help="run the unimodal-dominance study on the toy model (docs/analysis.md)")
    p_hub.add_argument("--out", default="avlens-hub-study", help="folder for records.jsonl, table.csv and index.html")
    p_hub.add_argument("--n-clips", type=_positive, default=360)
    p_hub.add_argument("--seed", type=int, default=1000)
    p_hub.add_argument("--definition", default=HUB_SETTINGS["definition"], choices=("auto", "hidden", "attention"))
    p_hub.add_argument("--eps", type=float, default=HUB_SETTINGS["eps"])
    p_hub.add_argument("--min-audio-chunks", type=int, default=HUB_SETTINGS["min_audio_chunks"])
    p_hub.add_argument("--answer-steps", type=_positive, default=1)
    p_hal = sub.add_parser("hallucination", help="compare hallucination mitigation methods on the toy benchmark (docs/hallucination.md)")
    p_hal.add_argument("--out", default="avlens-hallucination", help="folder for the benchmark files, table.csv/json and predictions")
    p_hal.add_argument("--n-clips", type=_positive, default=60)
    p_hal.add_argument("--seed", type=int, default=2000)
    p_hal.add_argument("--methods", default=None, help="comma-separated subset of the methods (default: all)")
    p_hal.add_argument("--parser", default="mad", choices=("mad", "avcd"))
    p_hal.add_argument("--bench-dir", default=None,
                       help="run on a real AVHBench-format folder (questions json, videos/{id}.mp4, audios/{id}.wav) "
                            "instead of writing the toy benchmark; --n-clips / --seed are then unused")
    p_hal.add_argument("--questions", default=None, help="the questions file in --bench-dir (default: avhbench.json, else QA.json)")
    p_hal.add_argument("--captions", default=None,
                       help="a caption set ({video_id, prompt, objects}) for CHAIR scoring with --bench-dir "
                            "(default: BENCH_DIR/captions.json if present, else captions are not run)")
    p_hal.add_argument("--max-items", type=_positive, default=None, help="only the first N questions (a quick look)")
    p_hal.add_argument("--fps", type=float, default=2.0, help="video frames per second read from --bench-dir (default 2)")
    p_hal.add_argument("--model", default=None, dest="model_path",
                       help="a supported AVLLM (local folder or hub id) instead of the toy model; needs --bench-dir")
    p_hal.add_argument("--prompt-template", default=None,
                       help="with --model: the prompt, one {question} field and the media placeholder "
                            "(default: the Qwen-Omni chat format with <|vision_bos|><|VIDEO|><|vision_eos|>)")
    p_hal.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="with --model")
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "train-toy":
        from avlens.toy.train import main as train_main

        return train_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.out, args.seed, args.quiet, args.n_clips, args.hub_clips)
    elif args.command == "info":
        info(args.path_or_id)
    elif args.command == "hub-study":
        hub_study(args.out, args.n_clips, args.seed, args.definition, args.eps, args.min_audio_chunks, args.answer_steps)
    elif args.command == "hallucination":
        if args.bench_dir is None and (args.questions or args.captions):
            p_hal.error("--questions / --captions name files in a real benchmark folder: give --bench-dir too")
        if not args.fps > 0:
            p_hal.error(f"--fps must be positive, got {args.fps}")
        hallucination(args.out, args.n_clips, args.seed, args.methods, args.parser, args.bench_dir, args.questions,
                      args.captions, args.max_items, args.fps, args.model_path, args.prompt_template, args.dtype)
    return 0


def hallucination(out: str, n_clips: int, seed: int, methods: Optional[str], parser: str, bench_dir: Optional[str] = None,
                  questions: Optional[str] = None, captions: Optional[str] = None, max_items: Optional[int] = None,
                  fps: float = 2.0, model_path: Optional[str] = None, prompt_template: Optional[str] = None,
                  dtype: str = "float32") -> None:
    """Run the methods on the toy hallucination benchmark (written to OUT/bench) or, with
    `bench_dir`, on a real AVHBench-format folder (`avlens.data.halluc_bench.evaluate_folder`:
    skipped samples and audio fallbacks are recorded); print and save the table. With
    `model_path` (a local folder or hub id of a supported AVLLM) that model is loaded with
    `HookedAVTransformer.from_pretrained` and prompted with `prompt_template` (one `{question}`
    field; default the Qwen-Omni chat format, `omni_prompt`), with the published defaults of every
    method; without it, the shipped toy model."""
    from avlens.data.halluc_bench import (FileMedia, evaluate_folder, read_avhbench_folder, read_caption_set,
                                         write_toy_benchmark)
    from avlens.mitigation import compare_methods, default_methods
    from avlens.mitigation.compare import omni_prompt, template_prompt, toy_prompt
    from avlens.toy import load_toy

    if model_path is None and prompt_template is not None:
        raise SystemExit("--prompt-template needs --model (the toy model has its own prompt format)")
    if model_path is not None and bench_dir is None:
        raise SystemExit("--model needs --bench-dir: the toy benchmark is written in the toy model's vocabulary")
    try:
        prompt = toy_prompt if model_path is None else (template_prompt(prompt_template) if prompt_template else omni_prompt)
    except ValueError as e:
        raise SystemExit(f"--prompt-template: {e}") from None
    all_methods = default_methods(toy=model_path is None)
    names = list(all_methods) if methods is None else [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in names if m not in all_methods]
    if bad:
        raise SystemExit(f"unknown methods {bad}; choose from {list(all_methods)}")
    if model_path is None:
        model = load_toy()
    else:
        from avlens import HookedAVTransformer

        if dtype not in ("float32", "bfloat16", "float16"):
            raise SystemExit(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
        model = HookedAVTransformer.from_pretrained(model_path, dtype=getattr(torch, dtype))
        if not hasattr(model, "prepare_media"):
            raise SystemExit(
                f"avlens hallucination --model {model_path}: the {type(model).__name__} family cannot build prompts from "
                "raw media files (only families with model.prepare_media, the Qwen-Omni ones, can), so this command "
                "cannot run it (nor evaluate_folder(model, root, prompt=..., media=...), which builds its prompts the "
                "same way). From Python, prepare the batches with the family's own processor and model.prepare(...), "
                "decode them with avlens.mitigation.decode(model, batch, method) (methods that rebuild the prompt "
                "from raw media need prepare_media too) and score the predictions with "
                "avlens.analysis.hallucination.score_avhbench.")
        if getattr(model, "tokenizer", None) is None:
            raise SystemExit(f"{model_path} has no tokenizer files; the methods decode text, so the folder needs them")
    chosen = {m: all_methods[m] for m in names}
    if bench_dir is None:
        bench = str(Path(out) / "bench")
        write_toy_benchmark(bench, n_clips=n_clips, seed=seed)
        res = compare_methods(model, bench, chosen, parser=parser, max_items=max_items, progress=True)
        res.save(out)
    else:
        try:  # the folder's files are checked before any decoding
            read_avhbench_folder(bench_dir, questions)
            read_caption_set(bench_dir, captions)
            media = FileMedia(bench_dir, fps=fps)
        except (OSError, ValueError) as e:
            raise SystemExit(f"avlens hallucination --bench-dir {bench_dir}: {e}") from e
        res = evaluate_folder(model, bench_dir, chosen, questions=questions, captions=captions, out=out, media=media,
                              parser=parser, fps=fps, max_items=max_items, progress=True, prompt=prompt)
        fallbacks = [v for v in media.log.values() if v.get("note")]
        print(f"{len(media.log)} videos read from {bench_dir}: {len(res.skipped)} skipped, {len(fallbacks)} with the "
              f"audio taken from the video's own track (media.json, skipped.json in {out})")
        for v in fallbacks:
            print(f"  audio fallback {v['video_id']}: {v['note']}")
        for s in res.skipped:
            print(f"  skipped {s['video_id']}: {s['reason']}")
    (Path(out) / "table.md").write_text(res.markdown() + "\n")
    page = hallucination_report(res, out, model=model, bench=bench if bench_dir is None else None)
    print(res.markdown())
    print(f"report {page}")


if __name__ == "__main__":
    raise SystemExit(main())
