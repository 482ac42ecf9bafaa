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
              "attention summary", "sinks and hub study", "write report")
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
    summary = model.attention_group_summary(batch)
    done(DEMO_STEPS[6])
    from avlens.analysis import cross_modal_hub_study, find_sink_dims, find_sinks, toy_samples

    sink_dims = find_sink_dims(model, [batch])
    sinks = find_sinks(model, batch, dims=[], eps=HUB_SETTINGS["eps"])
    sinks.sink_dims = sink_dims
    study = cross_modal_hub_study(model, toy_samples(model, synth.make_dataset(hub_clips, seed=HUB_SEED)), progress=False,
                                  **HUB_SETTINGS)
    halluc = demo_hallucination(model)
    done(DEMO_STEPS[7])
    return DemoRun(model, description, random, clips, examples, batch, logits, cache, answers, summary, sinks, study,
                   time.time() - t0, halluc)


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


def build_demo_report(run: DemoRun):
    """The demo's `avlens.viz.Report`: summary, token layout, answers, an attention window,
    attention between groups, the model card and the hook points."""
    from avlens.viz import Report

    report = Report(
        "avlens demo",
        intro=f"<p>avlens on {html.escape(run.description)}.</p>",
        banner=("This report was made with a tiny RANDOM model (the toy checkpoint folder avlens/toy/checkpoint/ is missing): every answer "
                "and attention pattern below is noise. The page shows what avlens computes, not what a model "
                "learned.") if run.random else None,
    )
    _summary_section(report, run)
    _layout_section(report, run)
    _answers_section(report, run)
    _attention_section(report, run)
    _flow_section(report, run)
    _hub_section(report, run)
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
    from avlens.viz import attention_heatmap, attention_window, group_token_labels

    lay = run.batch.layout
    layer, shares = _media_layer(run, sample)
    pos = attention_window(lay, sample)
    labels = group_token_labels(lay, sample, pos.tolist(), run.model.to_str_tokens(run.batch, sample))
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
        "weight on positions outside the window is not shown, so rows need not sum to 1.", "note")
    report.add_attention(labels, window, head_names=[f"L{layer}H{h}" for h in range(window.shape[0])],
                         caption="Per head (circuitsvis): hover a token to see where it attends.")
    report.add_plotly(attention_heatmap(window.mean(0), labels, groups,
                                        f"layer {layer}, mean over heads; bands: token group of key (top) and query (right)"))


def _flow_section(report, run: DemoRun) -> None:
    from avlens.viz import group_flow_figure

    report.add_section("Attention between token groups", id="flow")
    report.add_text(
        "Mean attention mass from each query group (rows) to each key group (columns), per layer, heads and "
        "clips averaged; computed inside one forward pass by model.attention_group_summary(batch), "
        "without keeping full patterns.", "note")
    s = run.summary
    report.add_plotly(group_flow_figure(s.values.mean(1), s.groups, "attention mass, query group -> key group"))


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
    """Sink tokens of clip 0 and the small unimodal-dominance study (METHODS.md sections 1-5)."""
    report.add_section("Cross-modal sinks", id="hubs")
    rep, st = run.sinks, run.study
    fb = rep.found_by(0)
    labels = run.batch.layout.labels(0)
    report.add_text(
        f"Sink tokens of clip {_clip_name(0, run.examples[0])} by the attention definition (a position receiving a mean "
        f"attention above eps = {rep.eps:g} from the queries after it, in some head; uniform attention here would be "
        f"1/{run.batch.shape[1]}). find_sink_dims on these clips: {_dims_sentence(rep.sink_dims)} Sinks at any layer: "
        + (", ".join(f"{p} ({labels[p]})" for p in fb["attention"]) or "none") + ".")
    report.add_plotly(rep.plot(0, definition="attention"))
    report.add_html("<h3>Unimodal-dominance study</h3>")
    report.add_text(
        f"avlens.analysis.cross_modal_hub_study on {len(st.records)} synthetic clips (make_dataset seed {HUB_SEED}), settings "
        f"{HUB_SETTINGS}: {st!r}. IE x 100 per token set of the non-dominant modality, mean and 95 % bootstrap CI "
        "(docs/analysis.md has the full 360-clip run and what it means).", "note")
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
    samples = toy_samples(model, synth.make_dataset(n_clips, seed=seed))
    st = cross_modal_hub_study(model, samples, definition=definition, eps=eps, min_audio_chunks=min_audio_chunks,
                               answer_steps=answer_steps, records=str(root / "records.jsonl"))
    table = st.table()
    table.to_csv(root / "table.csv", index=False)
    report = Report("avlens hub study", intro=f"<p>{html.escape(repr(st))}; settings {html.escape(str(st.settings))}</p>")
    report.add_section("Token-set causal tracing", id="table")
    report.add_table(list(table.columns), [[f"{v:.3f}" if isinstance(v, float) else v for v in row] for row in table.itertuples(index=False)])
    report.add_plotly(st.plot())
    report.add_section("Skipped samples", id="skipped")
    report.add_table(["reason", "samples"], sorted(st.skip_reasons().items()))
    path = report.write(str(root))
    print(st)
    print(table.round(3).to_string(index=False))
    print(f"records {root / 'records.jsonl'}, table {root / 'table.csv'}, report {path}")
    return path


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
                      args.captions, args.max_items, args.fps)
    return 0


def hallucination(out: str, n_clips: int, seed: int, methods: Optional[str], parser: str, bench_dir: Optional[str] = None,
                  questions: Optional[str] = None, captions: Optional[str] = None, max_items: Optional[int] = None,
                  fps: float = 2.0) -> None:
    """Run the methods on the toy hallucination benchmark (written to OUT/bench) or, with
    `bench_dir`, on a real AVHBench-format folder (`avlens.data.halluc_bench.evaluate_folder`:
    skipped samples and audio fallbacks are recorded); print and save the table."""
    from avlens.data.halluc_bench import (FileMedia, evaluate_folder, read_avhbench_folder, read_caption_set,
                                         write_toy_benchmark)
    from avlens.mitigation import compare_methods, default_methods
    from avlens.toy import load_toy

    all_methods = default_methods(toy=True)
    names = list(all_methods) if methods is None else [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in names if m not in all_methods]
    if bad:
        raise SystemExit(f"unknown methods {bad}; choose from {list(all_methods)}")
    model = load_toy()
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
                              parser=parser, fps=fps, max_items=max_items, progress=True)
        fallbacks = [v for v in media.log.values() if v.get("note")]
        print(f"{len(media.log)} videos read from {bench_dir}: {len(res.skipped)} skipped, {len(fallbacks)} with the "
              f"audio taken from the video's own track (media.json, skipped.json in {out})")
        for v in fallbacks:
            print(f"  audio fallback {v['video_id']}: {v['note']}")
        for s in res.skipped:
            print(f"  skipped {s['video_id']}: {s['reason']}")
    (Path(out) / "table.md").write_text(res.markdown() + "\n")
    print(res.markdown())


if __name__ == "__main__":
    raise SystemExit(main())
