"""Run mitigation methods on the same benchmark samples and tabulate them (method x metric, with
bootstrap confidence intervals and the per-token latency relative to plain decoding).

    from avlens.mitigation import compare_methods, default_methods
    res = compare_methods(model, "toybench", methods=default_methods(toy=True))
    res.table            # pandas DataFrame, one row per method
    res.save("out/")     # table.csv, table.json, predictions_<method>.jsonl, skipped.json

Every method decodes greedily from the same prompts (`decode`); yes/no probes are scored by the
AVHBench parsers (`parser`, default MAD's): accuracy, yes-ratio and F1 all from the records and the
correctness rule of that parser's script (`judge_avhbench`), captions by CHAIR. Where a method has nothing to edit
on a sample (it raises `NothingToSteer`, e.g. no cross-modal sink), that sample is decoded plainly
and counted in `n_not_applied`; any other error propagates. A method that cannot run on the model at all (`NotApplicable`, e.g. MAD
without the audio / video / both words) gets a row with empty metrics and its reason in
`not_applicable`. A sample whose media cannot be read is
recorded in `res.skipped` and left out for every method.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from avlens.analysis.hallucination import (AVH_YES_NO_TASKS, ObjectVocabulary, bootstrap_ci, judge_avhbench, read_records,
                                           score_avhbench, score_captions)
from avlens.mitigation.decoding import AVPrompt, Method, NothingToSteer, NotApplicable, Plain, decode

__all__ = ["compare_methods", "Comparison", "toy_prompt", "omni_prompt", "template_prompt", "QWEN_OMNI_SYSTEM"]

# Qwen2.5-Omni's default system prompt (its model card and processor chat template)
QWEN_OMNI_SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
                    "auditory and visual inputs, as well as generating text and speech.")


def toy_prompt(question: str) -> str:
    """The toy model's chat prompt with the audio-in-video placeholder before the question."""
    from avlens.data import tasks

    return tasks.prompt_text(tasks.Example("presence", question, "", None))


def omni_prompt(question: str, system: Optional[str] = QWEN_OMNI_SYSTEM) -> str:
    """A Qwen-Omni chat prompt (Qwen2.5-Omni, Qwen3-Omni): the system turn, then a user turn with the
    video placeholder (its audio track goes in with `use_audio_in_video`) before the question, ending
    where the assistant's answer starts, as the processor's chat template writes it."""
    sys_turn = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return (f"{sys_turn}<|im_start|>user\n<|vision_bos|><|VIDEO|><|vision_eos|>{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


def template_prompt(template: str) -> Callable[[str], str]:
    """A prompt function from a template with one `{question}` field (and the family's media
    placeholder written in it), e.g. for a model whose chat format `omni_prompt` does not fit."""
    if template.count("{question}") != 1:
        raise ValueError("the prompt template needs exactly one {question} field, e.g. "
                         "'<|im_start|>user\\n<|vision_bos|><|VIDEO|><|vision_eos|>{question}<|im_end|>\\n<|im_start|>assistant\\n'")
    try:
        template.format(question="?")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"the prompt template has braces other than {{question}} ({e}); double them ({{{{ }}}}) to keep them") from None
    return lambda question: template.format(question=question)


@dataclass
class Comparison:
    table: "object"  # pandas DataFrame
    predictions: dict[str, list[dict]]
    skipped: list[dict] = field(default_factory=list)

    def save(self, out: str) -> None:
        os.makedirs(out, exist_ok=True)
        self.table.to_csv(os.path.join(out, "table.csv"), index=False)
        self.table.to_json(os.path.join(out, "table.json"), orient="records", indent=1)
        for name, recs in self.predictions.items():
            with open(os.path.join(out, f"predictions_{name}.jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in recs)
        with open(os.path.join(out, "skipped.json"), "w") as f:
            json.dump(self.skipped, f, indent=1)

    _SHOWN = ("accuracy", "f1", "yes_ratio", "false_yes_rate", "chair_i", "chair_s", "step_ratio", "latency_ratio")

    def _rows(self, digits: int = 3) -> list[list[str]]:
        """One row per method: name, items, then the shown metrics (`mean [lo, hi]` where the
        table has bootstrap intervals), `n/a: reason` for methods that cannot run on the model."""
        out = []
        for _, r in self.table.iterrows():
            if r.get("not_applicable"):
                out.append([str(r["method"]), "-", "-"] + [f"n/a: {r['not_applicable']}"] + [""] * (len(self._SHOWN) - 1))
                continue
            cells = [str(r["method"]), f"{int(r.get('n_yes_no', 0))}+{int(r.get('n_captions', 0))}", str(int(r.get("n_not_applied", 0)))]
            for c in self._SHOWN:
                v = r.get(c, float("nan"))
                if c + "_lo" in r and v == v:
                    cells.append(f"{v:.{digits}f} [{r[c + '_lo']:.{digits}f}, {r[c + '_hi']:.{digits}f}]")
                else:
                    cells.append("-" if v != v else f"{v:.{digits if 'ratio' not in c else 2}f}")
            out.append(cells)
        return out

    def _header(self) -> list[str]:
        return ["method", "items (yes/no+captions)", "not applied"] + list(self._SHOWN)

    def __repr__(self) -> str:
        """Methods x metrics (95 % bootstrap intervals), items per method, and the skipped media."""
        from avlens.viz.reprs import text_table

        n = len(self.table)
        lines = [f"Comparison({n} method{'s' if n != 1 else ''}, {len(self.skipped)} media skipped)"]
        lines += text_table(self._header(), self._rows())
        for sk in self.skipped[:5]:
            lines.append(f"  skipped {sk.get('video_id')}: {sk.get('reason')}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """A card for notebooks: the same table, escaped, and the skipped media."""
        from avlens.viz.reprs import card, table

        body = table(self._header(), self._rows(), num_cols=list(range(1, len(self._SHOWN) + 3)))
        if self.skipped:
            body += "<div class='avl-n'>skipped media</div>" + table(["video", "reason"], [[s.get("video_id"), s.get("reason")] for s in self.skipped])
        n = len(self.table)
        return card("Comparison", f"{n} method{'s' if n != 1 else ''}, {len(self.skipped)} media skipped", body)

    def markdown(self, digits: int = 3) -> str:
        t = self.table
        cols = ["method", "n_not_applied", "accuracy", "f1", "yes_ratio", "false_yes_rate", "chair_i", "chair_s", "recall",
                "ms_per_token", "latency_ratio", "step_ms", "step_ratio", "setup_ms", "total_ratio"]
        head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
        rows = []
        for _, r in t.iterrows():
            cells = []
            if r.get("not_applicable"):
                rows.append("| " + " | ".join([str(r["method"])] + ["n/a"] * (len(cols) - 1)) + " |")
                continue
            for c in cols:
                v = r[c]
                if c in ("accuracy", "yes_ratio", "false_yes_rate", "chair_i", "chair_s"):
                    cells.append(f"{v:.{digits}f} [{r[c + '_lo']:.{digits}f}, {r[c + '_hi']:.{digits}f}]")
                elif isinstance(v, float):
                    cells.append(f"{v:.{digits if c not in ('ms_per_token', 'step_ms') else 2}f}")
                else:
                    cells.append(str(v))
            rows.append("| " + " | ".join(cells) + " |")
        return head + "\n".join(rows)


def compare_methods(model, bench: str, methods: Optional[dict[str, Method]] = None, media: Optional[Callable] = None,
                    prompt: Callable[[str], str] = toy_prompt, parser: str = "mad", vocabulary: Optional[ObjectVocabulary] = None,
                    yes_no_tokens: int = 2, caption_tokens: int = 16, max_items: Optional[int] = None, n_boot: int = 1000,
                    seed: int = 0, progress: bool = False) -> Comparison:
    """Run `methods` (name -> Method; default plain only) on the benchmark folder `bench`
    (`avhbench.json`, `captions.json`, as `write_toy_benchmark` writes or real files in those
    formats) with media from `media(video_id) -> (waveform, frames, fps)` (default: `ToyMedia`
    when `bench/clips.json` exists, else `FileMedia(bench)`)."""
    import pandas as pd

    from avlens.data.halluc_bench import FileMedia, ToyMedia

    methods = methods or {"plain": Plain()}
    if media is None:
        media = ToyMedia(bench) if os.path.exists(os.path.join(bench, "clips.json")) else FileMedia(bench)
    avh = [r for r in read_records(os.path.join(bench, "avhbench.json")) if r["task"] in AVH_YES_NO_TASKS]
    caps = read_records(os.path.join(bench, "captions.json"))
    if max_items is not None:
        avh, caps = avh[:max_items], caps[: max(1, max_items // 6)]
    cache: dict[str, object] = {}
    skipped = []

    def get(vid):
        if vid not in cache:
            try:
                cache[vid] = media(vid)
            except (FileNotFoundError, OSError, ValueError) as e:
                cache[vid] = None
                skipped.append({"video_id": vid, "reason": f"{type(e).__name__}: {e}"})
        return cache[vid]

    items = [("yes_no", r) for r in avh] + [("caption", r) for r in caps]
    items = [(k, r) for k, r in items if get(r["video_id"]) is not None]
    eos = getattr(model.tokenizer, "eos_token_id", None)
    preds: dict[str, list[dict]] = {}
    rows = []
    # items outer, methods inner: every method meets the same machine load, so the latency ratios
    # stay fair when other work shares the CPU
    acc = {name: {"recs": [], "secs": 0.0, "setup": 0.0, "n_tok": 0, "step_secs": 0.0, "n_steps": 0, "na": ""}
           for name in methods}
    it = items
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(items, desc=f"{len(methods)} methods")
    for kind, r in it:
        wave, frames, fps = get(r["video_id"])
        q = r["text"] if kind == "yes_no" else r["prompt"]
        p = AVPrompt(prompt(q), audio=wave, video=frames, fps=fps)
        n_new = yes_no_tokens if kind == "yes_no" else caption_tokens
        for name, method in methods.items():
            a = acc[name]
            if a["na"]:
                continue
            try:
                o, applied = decode(model, p, method, n_new, eos), True
            except NotApplicable as e:  # the method cannot run on this model at all: its row says so
                a["na"] = str(e)
                continue
            except NothingToSteer:  # nothing to act on in this sample (e.g. no cross-modal sink): plain decoding, counted
                o, applied = decode(model, p, Plain(), n_new, eos), False
            toks = [t for t in o.tokens[0].tolist() if t != eos]
            text = model.tokenizer.decode(toks).strip()
            a["secs"] += o.seconds
            a["setup"] += o.setup_seconds
            a["n_tok"] += o.tokens.shape[1]
            a["step_secs"] += o.seconds - o.prefill_seconds
            a["n_steps"] += o.n_steps
            a["recs"].append({**r, "kind": kind, "pred": text, "seconds": o.seconds, "n_tokens": int(o.tokens.shape[1]),
                              "applied": applied})
    for name in methods:
        a = acc[name]
        out_recs, secs, setup, n_tok, step_secs, n_steps = a["recs"], a["secs"], a["setup"], a["n_tok"], a["step_secs"], a["n_steps"]
        not_applicable = a["na"]
        if not_applicable:
            nan = float("nan")
            row = {"method": name, "n_yes_no": 0, "n_captions": 0, "n_not_applied": len(items), "not_applicable": not_applicable}
            for k in ("accuracy", "yes_ratio", "false_yes_rate", "chair_s", "chair_i"):
                row[k] = row[k + "_lo"] = row[k + "_hi"] = nan
            row.update(f1=nan, overall_mad=nan, recall=nan, ms_per_token=nan, step_ms=nan, setup_ms=nan, total_ms_per_token=nan)
            rows.append(row)
            preds[name] = []
            continue
        preds[name] = out_recs
        yn = [r for r in out_recs if r["kind"] == "yes_no"]
        cp = [r for r in out_recs if r["kind"] == "caption"]
        s = score_avhbench(yn, parser=parser) if yn else None
        row = {"method": name, "n_yes_no": len(yn), "n_captions": len(cp), "n_not_applied": sum(not r["applied"] for r in out_recs)}
        # the parser's own records and rule (MAD: duplicates / ERROR: rows dropped, its regex and
        # normalisation; AVCD: its substring test), the same records the f1 below comes from
        judged, _ = judge_avhbench(yn, parser=parser) if yn else ([], None)
        correct = [float(r["correct"]) for r in judged]
        yes = [float(r["parsed"] == "yes") for r in judged]
        false_yes = [float(r["parsed"] == "yes") for r in judged if str(r["label"]).strip().lower() == "no"]
        for key, vals in (("accuracy", correct), ("yes_ratio", yes), ("false_yes_rate", false_yes)):
            row[key], row[key + "_lo"], row[key + "_hi"] = bootstrap_ci(vals, n_boot, seed)
        row["f1"] = s["pooled"]["f1"] if s else float("nan")
        row["overall_mad"] = s["overall_mad"] if s else float("nan")
        if cp:
            c = score_captions(cp, {r["video_id"]: r["objects"] for r in caps}, vocabulary)
            per = c["per_caption"]
            hs = np.array([float(bool(x["hallucinated"])) for x in per])
            row["chair_s"], row["chair_s_lo"], row["chair_s_hi"] = bootstrap_ci(hs, n_boot, seed)
            h = np.array([len(x["hallucinated"]) for x in per], float)
            m = np.array([len(x["mentions"]) for x in per], float)
            rng = np.random.default_rng(seed)
            idx = rng.integers(0, len(per), (n_boot, len(per)))
            boots = h[idx].sum(1) / np.maximum(m[idx].sum(1), 1)
            row["chair_i"], row["chair_i_lo"], row["chair_i_hi"] = c["chair_i"], float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))
            row["recall"] = c["recall"]
        else:
            for k in ("chair_s", "chair_i"):
                row[k] = row[k + "_lo"] = row[k + "_hi"] = float("nan")
            row["recall"] = float("nan")
        row["ms_per_token"] = 1000 * secs / max(n_tok, 1)
        # a decode step on the KV caches (every branch), the prefill excluded: the speed path
        row["step_ms"] = 1000 * step_secs / n_steps if n_steps else float("nan")
        row["setup_ms"] = 1000 * setup / max(len(out_recs), 1)
        # everything a user waits for, per token: the method's setup (sink detection, MAD's
        # self-assessment), every branch's prefill and the steps
        row["total_ms_per_token"] = 1000 * (secs + setup) / max(n_tok, 1)
        row["not_applicable"] = ""
        rows.append(row)
    table = pd.DataFrame(rows)
    base = table.loc[table["method"] == "plain", "ms_per_token"]
    table["latency_ratio"] = table["ms_per_token"] / float(base.iloc[0]) if len(base) else float("nan")
    base_step = table.loc[table["method"] == "plain", "step_ms"]
    table["step_ratio"] = table["step_ms"] / float(base_step.iloc[0]) if len(base_step) else float("nan")
    base_total = table.loc[table["method"] == "plain", "total_ms_per_token"]
    table["total_ratio"] = table["total_ms_per_token"] / float(base_total.iloc[0]) if len(base_total) else float("nan")
    return Comparison(table, preds, skipped)
