"""The unimodal-dominance study (METHODS.md sections 4-5): the paper's Table 1 for any model.

    samples = toy_samples(model, synth.make_dataset(60, seed=5))    # or your own StudySample list
    study = cross_modal_hub_study(model, samples, min_audio_chunks=1, records="study.jsonl")
    study.table()        # per dominant modality x token set: IE_clean, IE_corrupt (x 100, mean, 95 % CI)
    study.plot()
    study.records        # one dict per sample (kept or skipped, with the reason)

Per sample, with its raw media (so a modality can be zeroed before feature extraction):

1. three runs, `av` (both), `a` (frames zeroed), `v` (waveform zeroed); greedy first answer tokens
   `y_av, y_a, y_v`; audio-dominant if `y_av == y_a != y_v`, video-dominant if
   `y_av == y_v != y_a`, else skipped ("neither modality dominates"); correctness not required;
2. video-dominant samples with fewer than `min_audio_chunks` audio chunks are skipped (the
   official video-dominant script uses 5; the toy's 4-second clips have 2, so its study uses 1);
3. sinks of the clean run (`find_sinks`, global sinks with `N`), kept to the *non-dominant*
   modality; their layer-averaged MDS gives the cross-modal / unimodal median split;
4. corrupted run: the dominant modality's raw input zeroed; `o_clean = y_av`, `o_corrupt` = the
   prediction from the non-dominant modality alone (answers are words: the decoded first token,
   scored as the larger probability of the word's and " " + word's first sub-token, maximised
   over `answer_steps` greedy steps: 1 = prefill only; the official scripts generate a few tokens,
   pass e.g. 4 for that); token-set tracing (`trace_token_sets`: clean
   states of the set written back at every layer at once, at the normalised attention input)
   gives IE_clean and IE_corrupt for the sets all / sink / random (same size as sink, seeded) /
   object (user-given) / cross_modal_sink / unimodal_sink.

Samples without raw media, without audio or video, or without sinks in the non-dominant modality
are skipped with the reason recorded; the run never fails on one sample. With `records=path` every
finished sample is appended to a JSON-lines file and a re-run resumes from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch

from avlens.analysis.dominance import classify_dominance, cross_modal_split, modality_dominance
from avlens.analysis.sinks import find_sink_dims, find_sinks
from avlens.batch import AVBatch

__all__ = ["StudySample", "HubStudy", "cross_modal_hub_study", "toy_samples", "TOKEN_SETS"]

TOKEN_SETS = ("all", "sink", "random", "object", "cross_modal_sink", "unimodal_sink")
OTHER = {"audio": "video", "video": "audio"}


@dataclass
class StudySample:
    """One multiple-choice sample: a single-sample `AVBatch` built from raw media
    (`model.prepare_media(...)`, so its `raw` holds the waveform and frames), an id, and optional
    `object_positions` (the user-given "object" token set: the object's token positions, as
    `{"audio": [...], "video": [...]}` since the non-dominant modality is known only after the runs,
    or one list used whichever modality is non-dominant; positions outside that modality skip the
    sample with the reason)."""

    batch: AVBatch
    id: Union[str, int, None] = None
    object_positions: Union[Sequence[int], dict, None] = None
    info: dict = field(default_factory=dict)


def toy_samples(model, clips, seed: Optional[int] = None) -> list[StudySample]:
    """Study samples from synthetic clips (`avlens.data.synth`): the 4-way multiple-choice prompt
    of each clip, audio in video, with the clip's ground truth in `info`."""
    from avlens.data import synth, tasks

    out = []
    for i, clip in enumerate(clips):
        ex = tasks.multiple_choice(clip, seed)
        batch = model.prepare_media(tasks.prompt_text(ex), audio=clip.waveform, video=clip.frames, fps=synth.FPS,
                                    use_audio_in_video=True)
        t = clip.truth
        out.append(StudySample(batch, id=f"{i}:{t.target}:{t.condition}", info=dict(
            target=t.target, condition=t.condition, answer=ex.answer, options=list(ex.options), informative=t.informative)))
    return out


@dataclass
class HubStudy:
    """The study's per-sample records and summaries."""

    records: list[dict]
    settings: dict

    @property
    def kept(self) -> list[dict]:
        return [r for r in self.records if r.get("skipped") is None]

    @property
    def skipped(self) -> list[dict]:
        return [r for r in self.records if r.get("skipped") is not None]

    def table(self, n_boot: int = 1000, seed: int = 0):
        """pandas DataFrame: one row per (dominant modality, token set) with n, the mean set size,
        and IE_clean / IE_corrupt x 100 (mean and 95 % bootstrap CI over samples)."""
        import pandas as pd

        rng = np.random.default_rng(seed)
        rows = []
        for dom in ("audio", "video"):
            recs = [r for r in self.kept if r["dominant"] == dom]
            for s in TOKEN_SETS:
                have = [r for r in recs if s in r["ie_clean"]]
                if not have:
                    continue
                row = {"dominant": dom, "token_set": s, "n": len(have),
                       "set_size": float(np.mean([r["set_sizes"][s] for r in have]))}
                for key in ("ie_clean", "ie_corrupt"):
                    x = np.array([r[key][s] for r in have], dtype=float)
                    row[key] = float(x.mean())
                    boots = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(1) if len(x) > 1 else x
                    row[key + "_lo"], row[key + "_hi"] = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))
                rows.append(row)
        return pd.DataFrame(rows, columns=["dominant", "token_set", "n", "set_size", "ie_clean", "ie_clean_lo", "ie_clean_hi",
                                           "ie_corrupt", "ie_corrupt_lo", "ie_corrupt_hi"])

    def skip_reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.skipped:
            out[r["skipped"]] = out.get(r["skipped"], 0) + 1
        return out

    def plot(self, backend: str = "view"):
        """IE_clean and IE_corrupt x 100 per token set with their 95 % CIs, one panel per dominant
        modality and effect: an `avlens.viz.bar_view` (offline, small), or a plotly figure of bar
        charts with `backend="plotly"`."""
        if backend not in ("view", "plotly"):
            raise ValueError(f"backend must be 'view' (an avlens View) or 'plotly' (a plotly Figure); got {backend!r}")
        t = self.table()
        doms = [d for d in ("audio", "video") if (t["dominant"] == d).any()]
        title = "token-set causal tracing (the paper's Table 1 protocol)"
        if backend == "view":
            from avlens.viz.views import bar_view

            if not doms:
                raise ValueError("no kept samples: nothing to plot (see study.skip_reasons())")
            sets = list(dict.fromkeys(t["token_set"]))
            vals, lo, hi, facets = [], [], [], []
            for d in doms:
                sub = t[t["dominant"] == d].set_index("token_set")
                for key, name in (("ie_clean", "IE_clean x 100"), ("ie_corrupt", "IE_corrupt x 100")):
                    facets.append(f"{d}-dominant: {name}")
                    vals.append([float(sub[key].get(s_, float("nan"))) for s_ in sets])
                    lo.append([float(sub[key + "_lo"].get(s_, float("nan"))) for s_ in sets])
                    hi.append([float(sub[key + "_hi"].get(s_, float("nan"))) for s_ in sets])
            return bar_view(np.array(vals), sets, lo=np.array(lo), hi=np.array(hi), facet_labels=facets,
                            axis_title="token set", value_label="IE x 100", title=title,
                            note="Mean over samples; whiskers: 95 % bootstrap CI. Hover a bar for its numbers.")
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=max(1, len(doms)), cols=2, subplot_titles=[f"{d}-dominant: {k}" for d in doms for k in ("IE_clean x 100", "IE_corrupt x 100")])
        for i, d in enumerate(doms):
            sub = t[t["dominant"] == d]
            for j, key in enumerate(("ie_clean", "ie_corrupt")):
                fig.add_trace(go.Bar(x=sub["token_set"], y=sub[key], showlegend=False,
                                     error_y=dict(type="data", symmetric=False, array=sub[key + "_hi"] - sub[key],
                                                  arrayminus=sub[key] - sub[key + "_lo"])), row=i + 1, col=j + 1)
        fig.update_layout(title=title, height=320 * max(1, len(doms)) + 60, width=1000)
        return fig

    def _headline(self) -> str:
        kept = self.kept
        doms = {d: sum(r["dominant"] == d for r in kept) for d in ("audio", "video")}
        return (f"HubStudy({len(self.records)} samples: {doms['audio']} audio-dominant, {doms['video']} video-dominant, "
                f"{len(self.skipped)} skipped {self.skip_reasons()})")

    def _table_rows(self) -> list[list[str]]:
        """The table's rows as strings: IE x 100 as `mean [lo, hi]`."""
        t = self.table()
        return [[r.dominant, r.token_set, str(r.n), f"{r.set_size:.1f}", f"{r.ie_clean:.2f} [{r.ie_clean_lo:.2f}, {r.ie_clean_hi:.2f}]",
                 f"{r.ie_corrupt:.2f} [{r.ie_corrupt_lo:.2f}, {r.ie_corrupt_hi:.2f}]"] for r in t.itertuples()]

    _HEADER = ["dominant", "token set", "n", "mean size", "IE_clean x 100 [95% CI]", "IE_corrupt x 100 [95% CI]"]

    def __repr__(self) -> str:
        """Sample counts (kept per dominant modality, skipped with reasons), the settings, and the
        table: IE_clean / IE_corrupt x 100 per dominant modality and token set (mean, 95 % CI)."""
        from avlens.viz.reprs import text_table

        lines = [self._headline()]
        lines.append("  settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()))
        rows = self._table_rows()
        if rows:
            lines += text_table(self._HEADER, rows)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """A card for notebooks: counts, settings, the table (escaped) and the skip reasons."""
        from avlens.viz.reprs import card, esc, table

        kept = self.kept
        doms = {d: sum(r["dominant"] == d for r in kept) for d in ("audio", "video")}
        body = f"<div>settings: {esc(', '.join(f'{k}={v}' for k, v in self.settings.items()))}</div>"
        rows = self._table_rows()
        body += table(self._HEADER, rows, num_cols=[2, 3, 4, 5]) if rows else "<div>no sample was kept</div>"
        reasons = sorted(self.skip_reasons().items(), key=lambda kv: -kv[1])
        if reasons:
            body += "<div class='avl-n'>skipped samples</div>" + table(["reason", "samples"], reasons, num_cols=[1])
        return card("HubStudy", f"{len(self.records)} samples: {doms['audio']} audio-dominant, {doms['video']} "
                                f"video-dominant, {len(self.skipped)} skipped", body)


def _answer(model, batch: AVBatch) -> str:
    """The greedy first answer token as a word (decoded, stripped): answers are compared as words,
    as the official code compares generated text, so "A" and " A" (different ids in Qwen's
    tokenizer) are the same answer."""
    with torch.no_grad():
        tok = int(model(batch, logits_at=torch.tensor([[batch.shape[1] - 1]]))[0, -1].argmax())
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("the study reads answers as words and needs model.tokenizer (set_tokenizer)")
    word = tokenizer.decode([tok]).strip()
    return word if word else tokenizer.convert_ids_to_tokens(tok)


def _audio_chunks(batch: AVBatch) -> int:
    """Audio chunks as the official script counts them: runs of consecutive audio positions
    (`get_continuous_ranges`)."""
    pos = batch.layout.mask("audio")[0].nonzero().squeeze(1)
    if pos.numel() == 0:
        return 0
    return int((pos.diff() != 1).sum()) + 1


def _load_records(path: Optional[str], settings: dict) -> dict:
    """Finished records of an earlier run with the same settings (others are re-run); a truncated
    line (a run killed while writing) is ignored."""
    if not path or not os.path.exists(path):
        return {}
    done = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("settings") == settings:
                done[str(r["id"])] = r
    return done


def cross_modal_hub_study(
    model,
    samples: Sequence[Union[StudySample, AVBatch]],
    *,
    N: int = 2,
    definition: str = "auto",
    sink_dims: Optional[Sequence[int]] = None,
    tau: float = 25.0,
    eps: float = 0.3,
    min_audio_chunks: int = 5,
    answer_steps: int = 1,
    site: str = "attn_in",
    seed: int = 0,
    records: Optional[str] = None,
    progress: bool = True,
) -> HubStudy:
    """Run the unimodal-dominance study over `samples` (see the module docstring).

    definition: "hidden" (massive-activation sinks over `sink_dims`, discovered from the samples
        when None, with threshold `tau`), "attention" (Gu et al.'s, threshold `eps`), or "auto":
        hidden when sink dims exist and `tau` can be exceeded in this model (`tau < sqrt(d_model)`),
        else attention. The definition used is in `settings`.
    min_audio_chunks: video-dominant samples with fewer audio chunks are skipped (official: 5).
    answer_steps: the answer probability is maximised over this many greedy steps (1: prefill).
    records: a JSON-lines file; finished samples are appended, and samples already in it are not
        re-run (resume after an interruption).
    """
    from tqdm.auto import tqdm

    from avlens.interventions.corruptions import zero_media
    from avlens.interventions.tracing import trace_token_sets

    if definition not in ("auto", "hidden", "attention"):
        raise ValueError(f"definition must be 'auto', 'hidden' or 'attention', got {definition!r}")
    if not isinstance(N, int) or N < 1:
        raise ValueError(f"N must be a positive integer (the paper uses 2, 3 or 4), got {N!r}")
    samples = [s if isinstance(s, StudySample) else StudySample(s) for s in samples]
    if not samples:
        raise ValueError("no samples given")
    for i, s in enumerate(samples):
        if s.id is None:
            s.id = i
        if not isinstance(s.batch, AVBatch) or s.batch.shape[0] != 1:
            raise ValueError(f"sample {s.id}: each sample must be a single-sample AVBatch (model.prepare_media(...) of one prompt)")
    ids = [str(s.id) for s in samples]
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids must be unique (they key the resumable records)")

    used = definition
    dims: list[int] = []
    if definition in ("auto", "hidden"):
        if sink_dims is None:
            found = find_sink_dims(model, [s.batch for s in samples[: min(8, len(samples))]])
            dims = found.dims
        else:
            dims = [int(d) for d in sink_dims]
        can_fire = tau < model.cfg.d_model**0.5
        if definition == "auto":
            used = "hidden" if dims and can_fire else "attention"
        elif not dims:
            raise ValueError("definition='hidden' but the model shows no massive activations on these samples "
                             "(find_sink_dims found no dims); pass sink_dims=, or use definition='attention' or 'auto'")
    settings = dict(N=N, definition=used, sink_dims=dims, tau=tau, eps=eps, min_audio_chunks=min_audio_chunks,
                    answer_steps=answer_steps, site=site, seed=seed)

    done = _load_records(records, settings)
    out_records: list[dict] = []
    sink = open(records, "a") if records else None
    try:
        for k, s in enumerate(tqdm(samples, desc="hub study", disable=not progress)):
            if str(s.id) in done:
                out_records.append(done[str(s.id)])
                continue
            try:
                rec = _one_sample(model, s, settings, seed + k, zero_media, trace_token_sets)
            except (ValueError, IndexError, TypeError) as e:  # a bad sample is recorded, not fatal
                rec = {"id": s.id, "skipped": f"error: {e}"}
            rec.update({"info": s.info} if s.info else {})
            rec["settings"] = settings
            out_records.append(rec)
            if sink:
                sink.write(json.dumps(rec) + "\n")
                sink.flush()
    finally:
        if sink:
            sink.close()
    return HubStudy(out_records, settings)


def _one_sample(model, s: StudySample, settings: dict, seed: int, zero_media, trace_token_sets) -> dict:
    batch = s.batch
    rec: dict = {"id": s.id, "skipped": None}
    lay = batch.layout
    for g in ("audio", "video"):
        if int(lay.counts(g)[0]) == 0:
            return {**rec, "skipped": f"no {g} in the sample (the study needs both modalities)"}
    raw = batch.raw or {}
    if raw.get("input_features") is None or raw.get("pixel_values_videos") is None:
        return {**rec, "skipped": "no encoder inputs to re-encode (build the sample with model.prepare_media or "
                                  "model.prepare(**processor_outputs) so a modality can be zeroed)"}
    runs = {"av": batch, "a": zero_media(model, batch, "video"), "v": zero_media(model, batch, "audio")}
    y = {k: _answer(model, b) for k, b in runs.items()}
    rec["y"] = y
    dom = classify_dominance(y["av"], y["a"], y["v"])
    rec["dominant"] = dom
    if dom is None:
        return {**rec, "skipped": "neither modality dominates (y_av, y_a, y_v do not single one out)"}
    n_chunks = _audio_chunks(batch)
    rec["audio_chunks"] = n_chunks
    if dom == "video" and n_chunks < settings["min_audio_chunks"]:
        return {**rec, "skipped": f"video-dominant with {n_chunks} audio chunks < min_audio_chunks={settings['min_audio_chunks']}"}
    other = OTHER[dom]
    use_dims = settings["sink_dims"] if settings["definition"] == "hidden" else []
    rep = find_sinks(model, batch, dims=use_dims, tau=settings["tau"], eps=settings["eps"])
    sinks = [p for p in rep.global_sinks(settings["N"], sample=0, definition=settings["definition"]) if lay.labels(0)[p] == other]
    rec["n_sinks"] = len(sinks)
    if not sinks:
        return {**rec, "skipped": f"no {settings['definition']}-definition sinks in the non-dominant modality ({other})"}
    mds = modality_dominance(model, batch, sinks).mean(0)  # a single sink counts as cross-modal (mid = 0), as officially
    cross, uni = cross_modal_split(sinks, mds, dom)
    pool = lay.positions(other, 0).tolist()
    rng = np.random.default_rng(seed)
    sets = {"all": pool, "sink": sinks, "random": sorted(rng.choice(pool, size=len(sinks), replace=False).tolist())}
    if s.object_positions is not None:
        obj = s.object_positions.get(other) if isinstance(s.object_positions, dict) else s.object_positions
        if obj is not None:
            obj = [int(p) for p in obj]
            labels = lay.labels(0)
            bad = [p for p in obj if not 0 <= p < batch.shape[1] or labels[p] != other]
            if bad:
                return {**rec, "skipped": f"object positions {bad} are not {other} positions (the non-dominant modality); "
                                          "give them per modality: object_positions={'audio': [...], 'video': [...]}"}
            sets["object"] = obj
    if cross:
        sets["cross_modal_sink"] = cross
    if uni:
        sets["unimodal_sink"] = uni
    corrupted = runs["v"] if dom == "audio" else runs["a"]  # the dominant modality's raw input zeroed
    o_clean, o_corrupt = y["av"], y["v" if dom == "audio" else "a"]
    res = trace_token_sets(model, batch, corrupted, {k: [v] for k, v in sets.items()}, [o_clean], [o_corrupt],
                           site=settings["site"], answer_steps=settings["answer_steps"], progress=False)
    rec["random"] = sets["random"]
    names = res["IE_clean"].coords["token_set"]
    rec.update(
        sinks=sinks, mds=[float(x) for x in mds], cross_modal_sink=cross, unimodal_sink=uni,
        set_sizes={k: len(v) for k, v in sets.items()},
        ie_clean={n: float(v) for n, v in zip(names, res["IE_clean"].values.tolist())},
        ie_corrupt={n: float(v) for n, v in zip(names, res["IE_corrupt"].values.tolist())},
    )
    return rec
