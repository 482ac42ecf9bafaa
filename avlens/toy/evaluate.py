"""Evaluate the toy model per task and condition, with both modalities and with one modality's raw
input zeroed (the unimodal-dominance protocol: zero the waveform or the frames, then extract
features, so token positions stay aligned).

    python -m avlens.toy.evaluate [--n-clips 360] [--seed 1000]

Answers are the model's greedy first answer token (multiple choice: a letter; probes: yes / no;
modality: audio / video / both), scored against the clip's ground truth; captions by greedy
generation and exact match (both modalities only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np
import torch

from avlens.data import synth, tasks
from avlens.data.tokenizer import config_token_ids
from avlens.toy.train import ClipStore, collate

MODES = ("both", "audio_only", "video_only")


def zeroed(clips, mode: str):
    """The clips with one modality's raw input zeroed ("audio_only": frames zeroed)."""
    if mode == "both":
        return list(clips)
    if mode == "audio_only":
        return [dataclasses.replace(c, frames=np.zeros_like(c.frames)) for c in clips]
    if mode == "video_only":
        return [dataclasses.replace(c, waveform=np.zeros_like(c.waveform)) for c in clips]
    raise ValueError(f"mode must be one of {MODES}")


def prompt_rows(examples, tokenizer, store: ClipStore) -> list[list[int]]:
    rows = []
    for ex in examples:
        prompt = tokenizer(tasks.prompt_text(ex))["input_ids"]
        j = next(i for i in range(len(prompt)) if prompt[i : i + 3] == store.marker)
        rows.append(prompt[:j] + store.block + prompt[j + 3 :])
    return rows


@torch.no_grad()
def first_token_predictions(model, tokenizer, store: ClipStore, clip_idx, rows, batch_size: int = 32) -> list[int]:
    preds = []
    for s in range(0, len(rows), batch_size):
        r = rows[s : s + batch_size]
        ids, att, _ = collate(r, [[0] * len(x) for x in r], tokenizer.pad_token_id, side="left")
        batch = model.prepare(input_ids=ids, attention_mask=att, **store.batch(clip_idx[s : s + batch_size]))
        preds += model(batch)[:, -1].argmax(-1).tolist()
    return preds


def evaluate(model, tokenizer=None, n_clips: int = 360, seed: int = 1000, modes: Sequence[str] = MODES,
             captions: int = 48, batch_size: int = 32, verbose: bool = False) -> dict:
    """Accuracy per (mode, task, condition), and the yes-rate on probes for absent objects.

    Presence probes are also scored per kind: `presence_present` (the object is in the probed
    modality), `presence_other_modality` (only in the other one: the cross-modal hallucination
    case) and `presence_absent`. In the zeroed modes every answer is scored against the clip's
    unzeroed ground truth (so e.g. "which modality" on a clear clip with the frames zeroed expects
    "both")."""
    tokenizer = tokenizer or model.tokenizer
    ids_cfg = config_token_ids(tokenizer)
    clips = synth.make_dataset(n_clips, seed=seed)
    pairs = tasks.build_examples(clips, seed=seed, tasks=("multiple_choice", "presence", "modality"))
    examples = [ex for _, ex in pairs]
    clip_idx = [i for i, _ in pairs]
    answers = [tokenizer(ex.answer)["input_ids"][0] for ex in examples]
    hits: dict = defaultdict(lambda: [0, 0])
    yes_id = tokenizer.convert_tokens_to_ids(tasks.YES)
    for mode in modes:
        store = ClipStore(zeroed(clips, mode), ids_cfg, tokenizer)
        rows = prompt_rows(examples, tokenizer, store)
        preds = first_token_predictions(model, tokenizer, store, clip_idx, rows, batch_size)
        for ex, p, a in zip(examples, preds, answers):
            tasks_ = [ex.task] + ([f"presence_{ex.probe_kind}"] if ex.task == "presence" else [])
            for task in tasks_:
                for key in ((mode, task, ex.truth.condition), (mode, task, "all")):
                    hits[key][0] += int(p == a)
                    hits[key][1] += 1
            if ex.task == "presence" and ex.probe_kind == "absent":
                hits[(mode, "absent_yes_rate", "all")][0] += int(p == yes_id)
                hits[(mode, "absent_yes_rate", "all")][1] += 1
        if verbose:
            print(mode, {k[1]: round(v[0] / v[1], 3) for k, v in hits.items() if k[0] == mode and k[2] == "all"})
    if captions:
        store = ClipStore(clips[:captions], ids_cfg, tokenizer)
        exs = [tasks.caption(c) for c in clips[:captions]]
        rows = prompt_rows(exs, tokenizer, store)
        for s in range(0, len(rows), batch_size):
            r = rows[s : s + batch_size]
            ids, att, _ = collate(r, [[0] * len(x) for x in r], tokenizer.pad_token_id, side="left")
            batch = model.prepare(input_ids=ids, attention_mask=att, **store.batch(list(range(s, s + len(r)))))
            out = model.generate(batch, max_new_tokens=16, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            for ex, toks in zip(exs[s : s + len(r)], out.tokens.tolist()):
                text = tokenizer.decode([t for t in toks if t not in (tokenizer.eos_token_id, tokenizer.pad_token_id)]).strip()
                key = ("both", "caption", ex.truth.condition)
                for k in (key, ("both", "caption", "all")):
                    hits[k][0] += int(" ".join(text.split()) == ex.answer)
                    hits[k][1] += 1
    table = {f"{m}/{t}/{c}": {"accuracy": h[0] / h[1], "n": h[1]} for (m, t, c), h in sorted(hits.items())}
    return {"n_clips": n_clips, "seed": seed, "results": table}


def markdown_table(results: dict) -> str:
    """Rows: task x condition; columns: both / audio only / video only."""
    res = results["results"]
    keys = sorted({(k.split("/")[1], k.split("/")[2]) for k in res})
    lines = ["| task | condition | both | audio only (frames zeroed) | video only (waveform zeroed) |", "|---|---|---|---|---|"]
    for task, cond in keys:
        cells = []
        for m in MODES:
            v = res.get(f"{m}/{task}/{cond}")
            cells.append(f"{100 * v['accuracy']:.1f} % (n={v['n']})" if v else "")
        lines.append(f"| {task} | {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from avlens.toy import load_toy

    p = argparse.ArgumentParser(prog="python -m avlens.toy.evaluate")
    p.add_argument("--path", default=None)
    p.add_argument("--n-clips", type=int, default=360)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--captions", type=int, default=48)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    model = load_toy(path=args.path)
    res = evaluate(model, n_clips=args.n_clips, seed=args.seed, captions=args.captions, verbose=True)
    print(markdown_table(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
