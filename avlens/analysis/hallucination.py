"""Hallucination benchmarks, scored exactly as their own scripts score them (METHODS.md section 7).

    from avlens.analysis.hallucination import score_avhbench, score_cmm, score_captions, parse_yes_no
    score_avhbench(records, parser="mad")     # records: AVHBench entries + "pred"
    score_cmm(rows); print(cmm_report(score_cmm(rows)))   # CMM rows with "pred"
    score_captions(preds, gt, vocabulary)     # CHAIR_i, CHAIR_s, recall

* **AVHBench** (`{"video_id", "task", "text", "label"}`; tasks `AVH_TASKS`) has no official scorer.
  Two published ones are offered:
  - ``parser="avcd"``, AVCD's ``eval_acc.py``: label and prediction stripped and lower-cased; a
    prediction is correct iff it contains "yes" or "no" *and* contains the label, a raw substring
    test (so "i don't know" contains "no", and "yes and no" is right whatever the label);
  - ``parser="mad"``, MAD's ``VideoLLaMA2/score.py``: ``extract_answer`` tries the word-bounded
    patterns ``\\byes\\b``, ``\\btrue\\b``, ``\\bcorrect\\b``, ``\\baffirmative\\b`` (-> yes), then
    ``\\bno\\b``, ``\\bfalse\\b``, ``\\bincorrect\\b``, ``\\bnegative\\b`` (-> no), in that order, on
    the lower-cased prediction; when none matches, ``normalize_answer`` of the first word (lower,
    strip, one trailing punctuation character removed; y/true/1/correct -> yes, n/false/0/incorrect
    -> no; else "yes" as a substring -> yes, else "no" as a substring -> no; else the word). The
    scored answer is ``normalize_answer(extract_answer(pred))`` against ``normalize_answer(label)``.
    So "Incorrect." -> no, "No, that's correct" -> yes (yes patterns first), "Unknown." -> no and
    "Yesterday" -> yes (substring fallback), "Y." -> yes, "untrue" -> its first word. Duplicate
    (video_id, question) pairs are dropped first (the first kept), then predictions starting
    ``ERROR:``. ``overall_script`` is the script's printed overall: pooled over every task but
    "AV Captioning" / "AV Matching", each task's correct count taken as ``int(accuracy * n)``.
  Per task: accuracy, precision, recall, F1 (positive class "yes") and yes-ratio; the overall as the
  MAD paper reports it (unweighted mean of the two hallucination tasks' accuracies) and pooled.
* **CMM** (DAMO-NLP-SG/CMM ``evaluation/calculate_score.py``, reproduced rule by rule): answer and
  prediction stripped, then lower-cased; correct iff ``answer in pred[:5]``; ground-truth yes iff
  ``"yes" in answer[:5]``, else ground-truth no iff ``"no" in answer[:5]``; PA = GT-yes rows with
  "yes" in ``pred[:5]`` / GT-yes rows, HR = GT-no rows with "no" in ``pred[:5]`` / GT-no rows; an
  empty denominator gives 0 (not NaN). Groups: the entire dataset (the script's "Overall"), each
  sub-category, and each (granularity, sub-category) pair for the granularities "object-level" and
  "event-level" only; the paper's overall is the mean over sub-categories. `cmm_report` prints the
  script's text. avlens adds per-granularity totals (``granularity_total``: the rows of each
  granularity pooled), which the script does not print.
* **CHAIR** (Rohrbach et al. 2018; counted as in PAI / OPERA ``chair.py``, which adds recall):
  object mentions found through a synonym vocabulary, the longest phrase first, a plural matching
  its singular (`singular_forms`); CHAIR_i = hallucinated mentions / all mentions (pooled over
  captions, repeated mentions counted), CHAIR_s = captions with a hallucinated mention / captions,
  recall = ground-truth objects mentioned / ground-truth objects. The paper's caption-set format:
  ``{"video_id", "prompt", "objects": ["dog/puppy", "car"]}``, each object one entry, a
  ``/``-separated list of alternative names (recalled when any of them is mentioned).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np

__all__ = [
    "AVH_TASKS",
    "AVH_HALLUCINATION_TASKS",
    "CAPTION_PROMPT",
    "parse_yes_no",
    "avcd_correct",
    "judge_avhbench",
    "mad_extract_answer",
    "mad_normalize_answer",
    "score_avhbench",
    "score_cmm",
    "cmm_report",
    "CMM_GRANULARITIES",
    "ObjectVocabulary",
    "AV_OBJECTS",
    "singular_forms",
    "caption_mentions",
    "score_captions",
    "read_records",
    "bootstrap_ci",
]

AVH_TASKS = ("Audio-driven Video Hallucination", "Video-driven Audio Hallucination", "AV Matching", "AV Captioning")
AVH_HALLUCINATION_TASKS = AVH_TASKS[:2]
AVH_YES_NO_TASKS = AVH_TASKS[:3]
CAPTION_PROMPT = "Describe what you see and hear in a single sentence."
PARSERS = ("avcd", "mad")

# MAD VideoLLaMA2/score.py, extract_answer: tried one by one, yes patterns first
_MAD_YES_PATTERNS = (r"\byes\b", r"\btrue\b", r"\bcorrect\b", r"\baffirmative\b")
_MAD_NO_PATTERNS = (r"\bno\b", r"\bfalse\b", r"\bincorrect\b", r"\bnegative\b")
# tasks MAD's print_detailed_results leaves out of its printed overall
_MAD_OVERALL_EXCLUDED = ("AV Captioning", "AV Matching")


def read_records(path_or_records) -> list[dict]:
    """Records from a JSON list, a JSON-lines file, or an iterable of dicts."""
    if isinstance(path_or_records, (str, os.PathLike)):
        with open(path_or_records) as f:
            text = f.read()
        text = text.strip()
        if not text:
            return []
        if text[0] == "[":
            return list(json.loads(text))
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return [dict(r) for r in path_or_records]


def mad_normalize_answer(answer: str) -> str:
    """MAD ``score.py`` ``normalize_answer``, line for line."""
    answer = answer.lower().strip()
    answer = re.sub(r"[^\w\s]$", "", answer)
    if answer in ["yes", "y", "true", "1", "correct"]:
        return "yes"
    elif answer in ["no", "n", "false", "0", "incorrect"]:
        return "no"
    if "yes" in answer:
        return "yes"
    elif "no" in answer:
        return "no"
    return answer


def mad_extract_answer(prediction: str) -> str:
    """MAD ``score.py`` ``extract_answer``, line for line."""
    prediction = prediction.strip()
    prediction_lower = prediction.lower()
    for pattern in _MAD_YES_PATTERNS:
        if re.search(pattern, prediction_lower):
            return "yes"
    for pattern in _MAD_NO_PATTERNS:
        if re.search(pattern, prediction_lower):
            return "no"
    words = prediction.split()
    if words:
        return mad_normalize_answer(words[0])
    return prediction.lower().strip()


def parse_yes_no(pred: str, parser: str = "mad") -> Optional[str]:
    """The answer a published scorer reads from a prediction: (MAD) ``normalize_answer(
    extract_answer(pred))`` as MAD's ``calculate_accuracy`` compares it -- "yes", "no" or the
    normalised first word; (AVCD) "yes" / "no" / None.

    AVCD's rule has no parse step (it tests the label as a substring); its parse here, used only for
    precision / recall / yes-ratio, is "yes" if "yes" occurs, else "no" if "no" occurs, else None."""
    if parser not in PARSERS:
        raise ValueError(f"parser must be one of {PARSERS}, got {parser!r}")
    if parser == "avcd":
        p = str(pred).strip().lower()
        return "yes" if "yes" in p else "no" if "no" in p else None
    return mad_normalize_answer(mad_extract_answer(str(pred)))


def avcd_correct(pred: str, label: str) -> bool:
    """AVCD's ``eval_acc.py`` rule: label and prediction stripped and lower-cased; correct iff the
    prediction contains "yes" or "no", and contains the label."""
    answer = str(label).strip().lower()
    p = str(pred).strip().lower()
    return ("yes" in p or "no" in p) and answer in p


def _mad_filter(recs: list[dict], pred_key: str, question_key: str, dropped: dict) -> list[dict]:
    """MAD ``score.py`` ``main``: duplicates (video_id, question) dropped first (first kept), then
    predictions starting ``ERROR:``."""
    seen, unique = set(), []
    for r in recs:
        key = (r["video_id"], r[question_key])
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        unique.append(r)
    kept = [r for r in unique if not str(r[pred_key]).startswith("ERROR:")]
    dropped["error"] += len(unique) - len(kept)
    return kept


def _judge(r: dict, parser: str, pred_key: str) -> tuple[Optional[str], bool]:
    """(parsed answer, correct) of one record under `parser`'s own rule."""
    parsed = parse_yes_no(r[pred_key], parser)
    if parser == "avcd":
        return parsed, avcd_correct(r[pred_key], r["label"])
    return parsed, parsed == mad_normalize_answer(str(r["label"]))


def judge_avhbench(records, parser: str = "mad", pred_key: str = "pred", question_key: str = "text") -> tuple[list[dict], dict]:
    """The yes/no records `parser`'s script scores (MAD: duplicates, then ``ERROR:`` rows dropped;
    AVCD: all), each with ``"parsed"`` and ``"correct"`` under that script's rule, and the
    ``{"error": k, "duplicate": k}`` counts dropped. `score_avhbench` and `compare_methods` both
    score from these."""
    if parser not in PARSERS:
        raise ValueError(f"parser must be one of {PARSERS}, got {parser!r}")
    recs = read_records(records)
    need = ("video_id", "task", question_key, "label", pred_key)
    for i, r in enumerate(recs):
        missing = [k for k in need if k not in r]
        if missing:
            raise KeyError(f"AVHBench record {i} lacks the keys {missing} (found {sorted(r)}); every record needs "
                           f"{list(need)}. Pass pred_key= / question_key= if your prediction or question key differs")
    dropped = {"error": 0, "duplicate": 0}
    if parser == "mad":
        recs = _mad_filter(recs, pred_key, question_key, dropped)
    out = []
    for r in recs:
        parsed, correct = _judge(r, parser, pred_key)
        out.append({**r, "parsed": parsed, "correct": correct})
    return out, dropped


def _binary_metrics(labels: Sequence[str], parsed: Sequence[Optional[str]], correct: Sequence[bool]) -> dict:
    n = len(labels)
    y = np.array([str(l).lower() == "yes" for l in labels], dtype=bool)
    p = np.array([q == "yes" for q in parsed], dtype=bool)
    tp = int((y & p).sum())
    prec = tp / int(p.sum()) if p.any() else 0.0
    rec = tp / int(y.sum()) if y.any() else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return {"n": n, "accuracy": float(np.mean(correct)) if n else float("nan"), "precision": prec, "recall": rec,
            "f1": f1, "yes_ratio": float(p.mean()) if n else float("nan"),
            "unparsed": int(sum(q not in ("yes", "no") for q in parsed))}


def score_avhbench(records, parser: str = "mad", pred_key: str = "pred", question_key: str = "text") -> dict:
    """AVHBench yes/no scores (see the module docstring) of `records` (a path or dicts with
    ``video_id, task, text, label`` and the prediction under `pred_key`).

    Returns ``{"per_task": {task: {n, accuracy, precision, recall, f1, yes_ratio, unparsed}},
    "overall_mad": mean accuracy of the two hallucination tasks, "overall_script": the MAD
    script's printed overall (sample-weighted over the tasks other than AV Captioning / AV
    Matching), "pooled": metrics over every yes/no record, "dropped": {"error": k, "duplicate": k}}``.
    AV Captioning records are left out of per_task and pooled (score them with `score_captions`).
    `parser` decides the filtering and the correctness rule (see `judge_avhbench`)."""
    judged, dropped = judge_avhbench(records, parser, pred_key, question_key)
    # the script's printed overall: every task but AV Captioning / AV Matching, per-task correct
    # counts as int(accuracy * n) (score.py evaluate_by_task / print_detailed_results)
    script_tasks: dict[str, list[bool]] = OrderedDict()
    for r in judged:
        if r["task"] not in _MAD_OVERALL_EXCLUDED:
            script_tasks.setdefault(r["task"], []).append(r["correct"])
    tot_n = sum(len(c) for c in script_tasks.values())
    tot_c = sum(int((sum(c) / len(c)) * len(c)) for c in script_tasks.values())
    overall_script = tot_c / tot_n if tot_n > 0 else 0.0

    recs = [r for r in judged if r["task"] in AVH_YES_NO_TASKS]
    by_task: dict[str, list[dict]] = OrderedDict()
    for r in recs:
        by_task.setdefault(r["task"], []).append(r)

    def metrics(rs):
        return _binary_metrics([str(r["label"]).strip().lower() for r in rs], [r["parsed"] for r in rs],
                               [r["correct"] for r in rs])

    per_task = {t: metrics(rs) for t, rs in by_task.items()}
    hall = [per_task[t]["accuracy"] for t in AVH_HALLUCINATION_TASKS if t in per_task]
    return {"parser": parser, "per_task": per_task, "overall_mad": float(np.mean(hall)) if hall else float("nan"),
            "overall_script": overall_script, "pooled": metrics(recs) if recs else None, "dropped": dropped}


#: the granularities CMM's ``calculate_score.py`` breaks down by (exact strings; other values are
#: left out of that breakdown, as the script's ``continue`` leaves them out)
CMM_GRANULARITIES = ("object-level", "event-level")


def _cmm_text(row: dict, key: str, i: int) -> str:
    v = row[key]
    if not isinstance(v, str):
        raise TypeError(f"CMM row {i}: {key!r} is {v!r} ({type(v).__name__}), not a string; CMM's scorer calls "
                        f".strip().lower() on it (write the model's text, '' if it produced none)")
    return v.strip().lower()  # the script's order: strip, then lower-case


def _cmm_counts() -> dict:
    return {"total": 0, "correct": 0, "total_yes": 0, "correct_yes": 0, "total_no": 0, "correct_no": 0}


def _cmm_add(c: dict, answer: str, pred: str) -> None:
    """One row into a group's counts, by ``calculate_score.py``'s rules."""
    c["total"] += 1
    c["correct"] += answer in pred[:5]
    if "yes" in answer[:5]:  # ground truth "yes": decided from the answer's first 5 characters
        c["total_yes"] += 1
        c["correct_yes"] += "yes" in pred[:5]
    elif "no" in answer[:5]:  # only when the answer is not a "yes" one
        c["total_no"] += 1
        c["correct_no"] += "no" in pred[:5]


def _cmm_metrics(c: dict) -> dict:
    """Counts -> accuracy, PA, HR; an empty denominator gives 0 (the script's ``else 0``)."""
    return {"n": c["total"], "accuracy": c["correct"] / c["total"] if c["total"] > 0 else 0.0,
            "pa": c["correct_yes"] / c["total_yes"] if c["total_yes"] > 0 else 0.0,
            "hr": c["correct_no"] / c["total_no"] if c["total_no"] > 0 else 0.0,
            "n_yes": c["total_yes"], "n_no": c["total_no"], "correct": c["correct"],
            "correct_yes": c["correct_yes"], "correct_no": c["correct_no"]}


def score_cmm(rows, pred_key: str = "pred") -> dict:
    """CMM scores of `rows` as DAMO-NLP-SG/CMM's ``evaluation/calculate_score.py`` computes them.

    `rows`: a path (JSON lines, as the script reads, or a JSON list) or dicts with ``sub_category,
    granularity, answer`` and the prediction under `pred_key` (``pred`` in the script). Rules, as
    the script applies them to every group:

    * ``answer`` and the prediction are stripped, then lower-cased;
    * correct iff ``answer in pred[:5]`` (the whole answer a substring of the prediction's first 5
      characters: "yes." is not in "yes, ", an empty answer is always "correct");
    * a row is ground-truth yes iff ``"yes" in answer[:5]``, else ground-truth no iff ``"no" in
      answer[:5]``, else neither (counted in accuracy only);
    * PA (perception accuracy) = GT-yes rows with ``"yes" in pred[:5]`` / GT-yes rows; HR
      (hallucination resistance) = GT-no rows with ``"no" in pred[:5]`` / GT-no rows ("nope",
      "not" and "noise" all count); a group without GT-yes (GT-no) rows has PA (HR) 0, not NaN.

    Returns
    ``{"pooled": the script's "Overall ... (entire dataset)", "sub_category": {name: ...},
    "granularity": {"object-level": {sub_category: ...}, "event-level": {sub_category: ...}},
    "granularity_total": {"object-level": ..., "event-level": ...}, "overall": {"accuracy", "pa",
    "hr"} (the paper's overall: the unweighted mean over sub-categories), "granularity_skipped":
    rows whose granularity is neither of the two}``, each group ``{n, accuracy, pa, hr, n_yes, n_no,
    correct, correct_yes, correct_no}``, groups in first-seen order as the script prints them. The
    breakdown by granularity is per (granularity, sub-category) pair, as the script's third table;
    a granularity other than exactly "object-level" / "event-level" is left out of it (and counted
    in ``granularity_skipped``).

    ``granularity_total`` is **avlens's addition** (the script prints no per-granularity total): the
    same rules applied to all the rows of one granularity pooled (counts summed over its
    sub-categories, not a mean of their rates), for the same two exact granularity strings; a
    granularity without rows has every number 0, like any empty group.
    Numbers are unrounded; `cmm_report` prints them as the script does (4 decimals). On the
    released CMM (200 GT-yes and 200 GT-no rows per sub-category) ``overall`` and ``pooled``
    coincide; on a subset they can differ."""
    rows = read_records(rows)
    pooled = _cmm_counts()
    subs: dict[str, dict] = {}
    gran: dict[str, dict[str, dict]] = {g: {} for g in CMM_GRANULARITIES}
    gran_total = {g: _cmm_counts() for g in CMM_GRANULARITIES}  # avlens's addition, see the docstring
    skipped = 0
    for i, r in enumerate(rows):
        missing = [k for k in ("sub_category", "granularity", "answer", pred_key) if k not in r]
        if missing:
            raise KeyError(f"CMM row {i} lacks {missing} (found {sorted(r)}); rows need sub_category, granularity, "
                           f"answer and the prediction (pass pred_key= if yours is not {pred_key!r})")
        answer, pred = _cmm_text(r, "answer", i), _cmm_text(r, pred_key, i)
        _cmm_add(pooled, answer, pred)
        _cmm_add(subs.setdefault(r["sub_category"], _cmm_counts()), answer, pred)
        if r["granularity"] in gran:
            _cmm_add(gran[r["granularity"]].setdefault(r["sub_category"], _cmm_counts()), answer, pred)
            _cmm_add(gran_total[r["granularity"]], answer, pred)
        else:
            skipped += 1
    per_sub = {k: _cmm_metrics(c) for k, c in subs.items()}
    overall = {m: float(np.mean([v[m] for v in per_sub.values()])) if per_sub else 0.0 for m in ("accuracy", "pa", "hr")}
    return {"pooled": _cmm_metrics(pooled), "sub_category": per_sub,
            "granularity": {g: {k: _cmm_metrics(c) for k, c in d.items()} for g, d in gran.items()},
            "granularity_total": {g: _cmm_metrics(c) for g, c in gran_total.items()},
            "overall": overall, "granularity_skipped": skipped}


def cmm_report(scores: dict, granularity_totals: bool = False) -> str:
    """The text ``calculate_score.py`` prints, from `score_cmm`'s result (same labels, column widths
    and 4-decimal rounding), so a run can be compared with the script's output line by line.

    `granularity_totals=True` appends avlens's per-granularity totals (``granularity_total``) under
    a heading that says they are not the script's; the default prints exactly the script's text."""
    p = scores["pooled"]
    lines = [f"Overall Accuracy (entire dataset): {p['accuracy']:.4f}",
             f"Overall Perception Accuracy (entire dataset): {p['pa']:.4f}",
             f"Overall Hallucination Resistance (entire dataset): {p['hr']:.4f}", "",
             f'{"sub_category":<35}{"perception accuracy":<20}{"Hallucination Resistance":<25}{"accuracy":<10}']
    for name, m in scores["sub_category"].items():
        lines.append(f"{name:<35}{m['pa']:<20.4f}{m['hr']:<25.4f}{m['accuracy']:<10.4f}")
    lines += ["", f'{"Granularity":<15}{"sub_category":<35}{"perception accuracy":<20}{"Hallucination Resistance":<25}'
                  f'{"accuracy":<10}']
    for g, subs in scores["granularity"].items():
        lines.append(f"{g.upper()} RESULTS:")
        for name, m in subs.items():
            lines.append(f"{g:<15}{name:<35}{m['pa']:<20.4f}{m['hr']:<25.4f}{m['accuracy']:<10.4f}")
    if granularity_totals:
        lines += ["", "PER-GRANULARITY TOTALS (avlens addition; calculate_score.py prints none):",
                  f'{"Granularity":<15}{"n":<8}{"perception accuracy":<20}{"Hallucination Resistance":<25}{"accuracy":<10}']
        for g, m in scores["granularity_total"].items():
            lines.append(f"{g:<15}{m['n']:<8}{m['pa']:<20.4f}{m['hr']:<25.4f}{m['accuracy']:<10.4f}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- CHAIR
# irregular plurals an object name can take (the rules in `singular_forms` miss them)
_IRREGULAR_PLURALS = {"people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
                      "geese": "goose", "feet": "foot", "teeth": "tooth", "oxen": "ox"}


def singular_forms(word: str) -> tuple[str, ...]:
    """The word (lower-cased) and the singulars it may be the plural of, the word itself first.

    English plural endings are ambiguous without a dictionary ("buses" is bus + es, "houses" is
    house + s, "glasses" is glass + es, "boxes" is box + es), so every rule that applies gives a
    candidate and the vocabulary decides (`ObjectVocabulary` matches a word when any of its forms
    is a vocabulary word): -s dropped, -es dropped, -ies -> -y, -ves -> -f / -fe, and the irregular
    plurals above. Words of 3 letters or fewer and words ending in -ss / -us / -is have no plural
    candidate (bus, glass, chorus, iris). chair.py gets the same effect from WordNet's lemmatiser."""
    w = word.lower()
    out = [w]
    if w in _IRREGULAR_PLURALS:
        out.append(_IRREGULAR_PLURALS[w])
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        if w.endswith("ies"):
            out.append(w[:-3] + "y")
        if w.endswith("ves"):
            out += [w[:-3] + "f", w[:-3] + "fe"]
        if w.endswith("es"):
            out.append(w[:-2])
        out.append(w[:-1])
    return tuple(dict.fromkeys(out))


def _words(text: str) -> list[str]:
    """Lower-cased alphabetic words (punctuation and hyphens split words: "hot-dog" -> hot, dog)."""
    return re.findall(r"[a-z]+", str(text).lower())


@dataclass
class ObjectVocabulary:
    """Objects and their synonyms (each a word or a phrase), found in text longest phrase first (as
    ``chair.py`` replaces its two-word names before single words: with "hot dog" in the vocabulary,
    "a hot dog" mentions a hot dog, not a dog). A text word matches a vocabulary word when any of
    its `singular_forms` equals it; the word as written is preferred, so "glasses" is the object
    "glasses" when the vocabulary has it and "glass" otherwise. A synonym given in the plural also
    matches its singular in text. Extend it with `add` or by passing your own mapping."""

    synonyms: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        self._exact: dict[tuple[str, ...], str] = {}  # synonyms' words as written
        self._derived: dict[tuple[str, ...], str] = {}  # their singular forms (a plural synonym's singular)
        for obj, syns in list(self.synonyms.items()):
            self.add(obj, syns)

    def add(self, obj: str, synonyms: Iterable[str] = ()) -> "ObjectVocabulary":
        """Add `obj` (itself one of its names) with `synonyms`; a name already known is re-assigned to `obj`."""
        obj = obj.lower().strip()
        syns = self.synonyms.setdefault(obj, [])
        for s in [obj, *synonyms]:
            s = s.lower().strip()
            if s not in syns:
                syns.append(s)
            key = tuple(_words(s))
            if not key:
                raise ValueError(f"object name {s!r} (for {obj!r}) has no letters; a vocabulary name must contain a word")
            self._exact[key] = obj
            for combo in itertools.product(*(singular_forms(w) for w in key)):
                if combo != key:
                    self._derived[combo] = obj
        return self

    @property
    def max_len(self) -> int:
        return max((len(k) for k in self._exact), default=1)

    def _match(self, forms: Sequence[tuple[str, ...]]) -> Optional[str]:
        """The object named by exactly these words (each given as its `singular_forms`), or None:
        words as written against names as written first, then any form against any form."""
        for table in (self._exact, self._derived):
            for combo in itertools.product(*forms):
                obj = table.get(combo)
                if obj is not None:
                    return obj
        return None

    def canonical(self, phrase: str) -> Optional[str]:
        """The object a word or phrase names (the whole phrase, plurals allowed), or None."""
        words = _words(phrase)
        return self._match([singular_forms(w) for w in words]) if words else None

    def mentions(self, text: str) -> list[str]:
        """The objects a caption mentions, in order, one per mention (repeats kept), the longest
        vocabulary phrase first at each position."""
        forms = [singular_forms(w) for w in _words(text)]
        out, i = [], 0
        while i < len(forms):
            for n in range(min(self.max_len, len(forms) - i), 0, -1):
                obj = self._match(forms[i:i + n])
                if obj is not None:
                    out.append(obj)
                    i += n
                    break
            else:
                i += 1
        return out


#: Objects that make sounds and can be seen, with common synonyms (the synthetic world's twelve
#: classes among them). Extend with `AV_OBJECTS.add("tram", ["streetcar"])` or a new vocabulary.
AV_OBJECTS_SYNONYMS: dict[str, list[str]] = {
    "dog": ["puppy", "hound", "doggy"], "car": ["automobile", "sedan"],
    "piano": ["grand piano"], "drum": ["drum kit", "drums", "percussion"], "bird": ["chick", "songbird", "sparrow"],
    "cat": ["kitten", "kitty"], "siren": ["alarm", "police siren"], "guitar": ["acoustic guitar", "electric guitar"],
    "bell": ["church bell", "chime"], "train": ["locomotive", "railway"], "phone": ["telephone", "cellphone", "smartphone"],
    "clock": ["ticking clock", "alarm clock"], "person": ["man", "woman", "child", "people", "boy", "girl", "speaker"],
    "horse": ["pony"], "cow": ["cattle"], "baby": ["infant"], "violin": ["fiddle"], "helicopter": ["chopper"],
    "airplane": ["plane", "aircraft", "jet"], "motorcycle": ["motorbike"], "water": ["stream", "river", "waterfall"],
    "chicken": ["rooster", "hen"], "sheep": ["lamb"], "duck": [], "goat": [], "pig": [], "truck": ["lorry", "fire truck"],
    "bus": [], "boat": ["ship"], "saxophone": ["sax"], "trumpet": [], "flute": [], "cello": [], "accordion": [],
}
AV_OBJECTS = ObjectVocabulary({k: list(v) for k, v in AV_OBJECTS_SYNONYMS.items()})


def caption_mentions(caption: str, vocabulary: Optional[ObjectVocabulary] = None) -> list[str]:
    return (vocabulary or AV_OBJECTS).mentions(caption)


def _gt_entries(objects: Union[str, Sequence[str]], vocab: ObjectVocabulary, vid) -> list[tuple[str, frozenset]]:
    """Ground-truth entries as ``(entry, canonical names of its alternatives)``: each entry ("a/b")
    is ONE object, named by any of its alternatives. Alternatives the vocabulary does not know are
    added to `vocab` as synonyms of the entry's first known object, or (none known) as one new
    object named by the first alternative, so a caption naming them can still be matched."""
    if isinstance(objects, str):
        objects = [objects]
    out = []
    for entry in objects:
        alts = [a.strip() for a in str(entry).split("/") if a.strip()]
        if not alts or any(not _words(a) for a in alts):
            raise ValueError(f"ground-truth object {entry!r} of {vid!r} has an empty or letterless alternative; "
                             f"write each object as words separated by '/', e.g. 'dog/puppy'")
        known = [c for c in (vocab.canonical(a) for a in alts) if c is not None]
        unknown = [a for a in alts if vocab.canonical(a) is None]
        if unknown:
            if known:
                vocab.add(known[0], unknown)
            else:
                vocab.add(unknown[0], unknown[1:])
        out.append((str(entry), frozenset(vocab.canonical(a) for a in alts)))
    return out


def score_captions(predictions, ground_truth, vocabulary: Optional[ObjectVocabulary] = None,
                   pred_key: str = "pred", id_key: str = "video_id") -> dict:
    """CHAIR-style object hallucination of captions (Rohrbach et al. 2018, *Object Hallucination in
    Image Captioning*; counted as in PAI / OPERA ``chair.py``, which adds recall).

    `predictions`: records (or a path) with `id_key` and `pred_key`; `ground_truth`: records (or a
    path) in the caption-set format (``objects``: list of ``"a/b"`` alternatives) or a mapping id ->
    objects. Per caption, its mentions are `vocabulary` objects found in it (repeats kept); a
    mention is hallucinated when it names none of the caption's ground-truth entries.

    * CHAIR_i = hallucinated mentions / mentions, pooled over captions (0 without mentions);
    * CHAIR_s = captions with a hallucinated mention / captions;
    * recall = ground-truth entries mentioned / ground-truth entries, pooled: an entry "dog/cat" is
      one object, recalled when any alternative is mentioned (chair.py's recall, with its objects
      being our entries).

    Ground-truth words the vocabulary lacks extend a copy of it for this call (`_gt_entries`).
    Returns ``{n, chair_i, chair_s, recall, mentions, hallucinated, per_caption}``, per caption
    ``{id, mentions, hallucinated, objects (canonical names), n_objects (entries), recalled
    (entries mentioned)}``. An id without ground truth is an error (name it in the ground truth)."""
    vocab = ObjectVocabulary({k: list(v) for k, v in (vocabulary or AV_OBJECTS).synonyms.items()})
    if isinstance(ground_truth, Mapping):
        gt = dict(ground_truth)
    else:
        gt = {r[id_key]: r["objects"] for r in read_records(ground_truth)}
    gt_entries = {k: _gt_entries(v, vocab, k) for k, v in gt.items()}  # the whole vocabulary before any matching
    preds = read_records(predictions)
    n_mentions = n_hall = n_hall_caps = n_gt = n_gt_hit = 0
    per = []
    for r in preds:
        vid = r[id_key]
        if vid not in gt_entries:
            raise KeyError(f"no ground-truth objects for {id_key}={vid!r}; every prediction needs an entry in the caption set")
        entries = gt_entries[vid]
        truth = set().union(*(names for _, names in entries))
        ment = vocab.mentions(r[pred_key])
        hall = [m for m in ment if m not in truth]
        recalled = [e for e, names in entries if names & set(ment)]
        n_mentions += len(ment)
        n_hall += len(hall)
        n_hall_caps += bool(hall)
        n_gt += len(entries)
        n_gt_hit += len(recalled)
        per.append({id_key: vid, "mentions": ment, "hallucinated": hall, "objects": sorted(truth),
                    "n_objects": len(entries), "recalled": recalled})
    return {"n": len(preds), "chair_i": n_hall / n_mentions if n_mentions else 0.0,
            "chair_s": n_hall_caps / len(preds) if preds else float("nan"),
            "recall": n_gt_hit / n_gt if n_gt else float("nan"), "mentions": n_mentions, "hallucinated": n_hall,
            "per_caption": per}


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap over the items."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, x.size, (n_boot, x.size))].mean(1)
    a = (1 - level) / 2 * 100
    return float(x.mean()), float(np.percentile(boots, a)), float(np.percentile(boots, 100 - a))
