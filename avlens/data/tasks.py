"""Tasks on the synthetic world: prompts and answers built from clips with known ground truth.

    from avlens.data.synth import make_clip
    from avlens.data.tasks import multiple_choice, prompt_text
    ex = multiple_choice(make_clip("car", "clear", seed=1))
    ex.question  # 'classify the sounding object into one of the categories below : A . drum B . cat
                 #  C . clock D . car respond only with a single label letter .'
    ex.answer    # 'D'
    prompt_text(ex)
    # '<|im_start|> user <|vision_bos|><|VIDEO|><|vision_eos|> classify the ... <|im_end|> <|im_start|> assistant'

Four tasks (`TASKS`):

* ``multiple_choice``: the paper's unimodal-dominance protocol (VGGSound, 20-way), scaled to 4
  shuffled options: "classify the sounding object into one of the categories below : A . dog
  B . car C . piano D . drum respond only with a single label letter ." -> "B". Every other class
  heard or seen in the clip is among the options (hard negatives), so a model that uses only the
  clip's uninformative modality can only guess between them; the rest are drawn at random.
* ``presence``: AVHBench-style yes/no probes, "is there a dog sound ?" / "do you hear a dog ?"
  (yes iff the class is in `truth.heard`) and "is a dog visible ?" / "do you see a dog ?" (yes iff
  in `truth.seen`), about objects present in the probed modality (kind ``present``), present
  only in the other modality (``other_modality``: the cross-modal hallucination case) or absent
  from the clip (``absent``).
* ``caption``: "describe what you see and hear ." -> e.g. "i see a red car and hear a car ."
  (template grammar below; it describes what can be perceived: a ``video_ambiguous`` target is
  "a blurry shape" / "a tiny shape", an ``audio_ambiguous`` mixture "a mix of sounds").
* ``modality``: "which modality tells you what the object is ?" -> "audio" / "video" / "both"
  (`Truth.informative`).

Text is word-level: lowercase words with punctuation as separate tokens, split on single spaces,
so a word-level tokenizer covers it (`task_vocabulary()` lists every word; the option letters
are the upper-case words "A", "B", ... so they differ from the article "a"). The media goes
before the question as one audio-in-video placeholder, `MEDIA_MARKER`
("<|vision_bos|><|VIDEO|><|vision_eos|>"), which `avlens.data.media` expands.
"""

from __future__ import annotations

import string
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from avlens.data.synth import CLASSES, COLOUR_NAMES, Clip, Truth
from avlens.data.tokenizer import EOS_TOKEN, IM_START, OMNI_NAMED_TOKENS

__all__ = [
    "TASKS",
    "MEDIA_MARKER",
    "SPECIAL_TOKENS",
    "MC_QUESTION",
    "Example",
    "multiple_choice",
    "presence_probe",
    "presence_probes",
    "caption",
    "modality_question",
    "examples_for_clip",
    "build_examples",
    "prompt_text",
    "full_text",
    "task_vocabulary",
]

TASKS: tuple[str, ...] = ("multiple_choice", "presence", "caption", "modality")

VISION_BOS = OMNI_NAMED_TOKENS["vision_bos_token"]
VIDEO = OMNI_NAMED_TOKENS["video_token"]
VISION_EOS = OMNI_NAMED_TOKENS["vision_eos_token"]
MEDIA_MARKER = VISION_BOS + VIDEO + VISION_EOS
#: special tokens the prompts use (all defined by `avlens.data.tokenizer`)
SPECIAL_TOKENS: tuple[str, ...] = (IM_START, EOS_TOKEN, VISION_BOS, VIDEO, VISION_EOS)

# --- templates: every word any prompt or answer can contain comes from these -------------------
MC_QUESTION = (
    "classify the sounding object into one of the categories below : {options} respond only with a single label letter ."
)
MC_OPTION = "{letter} . {cls}"
AUDIO_PROBES = ("is there a {cls} sound ?", "do you hear a {cls} ?")
VIDEO_PROBES = ("is a {cls} visible ?", "do you see a {cls} ?")
CAPTION_QUESTION = "describe what you see and hear ."
MODALITY_QUESTION = "which modality tells you what the object is ?"
YES, NO = "yes", "no"
MODALITY_ANSWERS = ("audio", "video", "both")
# caption grammar:  i see <seen> and hear <heard> .
#   <seen>  := nothing | a blurry shape | a tiny shape | a <colour> <cls> [and a <colour> <cls>]
#   <heard> := nothing | a mix of sounds | a <cls> [and a <cls>]
CAPTION = "i see {seen} and hear {heard} ."
CAPTION_WORDS = ("nothing", "a", "and", "blurry", "tiny", "shape", "mix", "of", "sounds")
CHAT_WORDS = ("user", "assistant")
LETTERS = tuple(string.ascii_uppercase)


@dataclass(frozen=True)
class Example:
    """One prompt/answer pair about a clip.

    task: one of `TASKS`; question, answer: word-level text (no media marker, see `prompt_text`).
    truth: the clip's ground truth. options: the multiple-choice options in letter order.
    probe_class, probe_modality ("audio" / "video"), probe_kind ("present", "other_modality",
    "absent"): what a presence probe asks about.
    """

    task: str
    question: str
    answer: str
    truth: Truth
    options: tuple[str, ...] = ()
    probe_class: Optional[str] = None
    probe_modality: Optional[str] = None
    probe_kind: Optional[str] = None


def _rng(truth: Truth, task: str, seed: Optional[int]) -> np.random.Generator:
    """Per-example randomness: a function of the clip (its seed, target, condition), the task and
    an optional extra seed, so the same clip gives the same example."""
    key = [truth.seed & 0xFFFFFFFF, zlib.crc32(f"{truth.target}|{truth.condition}|{task}".encode())]
    return np.random.default_rng(key + ([] if seed is None else [int(seed) & 0xFFFFFFFF]))


def _truth(x) -> Truth:
    return x.truth if isinstance(x, Clip) else x


def multiple_choice(clip, seed: Optional[int] = None, n_options: int = 4, classes: Sequence[str] = CLASSES) -> Example:
    """The paper's classification question with `n_options` shuffled options (target, every other
    class heard or seen in the clip, random classes from `classes` to fill); answer: the target's
    letter. `clip` may be a `Clip` or its `Truth`."""
    t = _truth(clip)
    pool = list(dict.fromkeys([*classes, *t.present]))
    if not 2 <= n_options <= min(len(pool), len(LETTERS)):
        raise ValueError(f"n_options must be in [2, {min(len(pool), len(LETTERS))}], got {n_options}")
    rng = _rng(t, "multiple_choice", seed)
    hard = [c for c in t.present if c != t.target][: n_options - 1]
    rest = [c for c in pool if c != t.target and c not in hard]
    fill = [rest[i] for i in rng.choice(len(rest), size=n_options - 1 - len(hard), replace=False)]
    options = [t.target, *hard, *fill]
    options = [options[i] for i in rng.permutation(n_options)]
    text = " ".join(MC_OPTION.format(letter=LETTERS[i], cls=c) for i, c in enumerate(options))
    return Example(
        "multiple_choice", MC_QUESTION.format(options=text), LETTERS[options.index(t.target)], t, tuple(options)
    )


def presence_probe(clip, cls: str, modality: str, seed: Optional[int] = None) -> Example:
    """"Is there a <cls> sound?" (modality "audio") or "Is a <cls> visible?" ("video"), one of two
    phrasings drawn from the clip and `seed`; answer "yes" iff `cls` is heard / seen."""
    t = _truth(clip)
    if modality not in ("audio", "video"):
        raise ValueError(f"modality must be 'audio' or 'video', got {modality!r}")
    here, there = (t.heard, t.seen) if modality == "audio" else (t.seen, t.heard)
    kind = "present" if cls in here else "other_modality" if cls in there else "absent"
    templates = AUDIO_PROBES if modality == "audio" else VIDEO_PROBES
    rng = _rng(t, f"presence|{cls}|{modality}", seed)
    question = templates[int(rng.integers(len(templates)))].format(cls=cls)
    return Example("presence", question, YES if kind == "present" else NO, t, (), cls, modality, kind)


def presence_probes(clip, seed: Optional[int] = None, n_absent: int = 1, classes: Sequence[str] = CLASSES) -> list[Example]:
    """Probes of both modalities for one clip: every class present in the probed modality (yes),
    every class present only in the other one (no), and `n_absent` classes absent from the clip
    (no) per modality."""
    t = _truth(clip)
    rng = _rng(t, "presence_probes", seed)
    absent = [c for c in classes if c not in t.present]
    out = []
    for modality in ("audio", "video"):
        chosen = [absent[i] for i in rng.choice(len(absent), size=min(n_absent, len(absent)), replace=False)]
        for c in [*t.present, *chosen]:
            out.append(presence_probe(t, c, modality, seed))
    return out


def _caption_answer(t: Truth) -> str:
    if t.condition == "video_ambiguous":
        seen = f"a {t.variant} shape".replace("blurred", "blurry")
    elif t.seen:
        seen = " and ".join(f"a {COLOUR_NAMES[c]} {c}" for c in t.seen)
    else:
        seen = "nothing"
    if t.condition == "audio_ambiguous":
        heard = "a mix of sounds"
    elif t.heard:
        heard = " and ".join(f"a {c}" for c in t.heard)
    else:
        heard = "nothing"
    return CAPTION.format(seen=seen, heard=heard)


def caption(clip) -> Example:
    """"Describe what you see and hear." -> "i see a red car and hear a car ." (the grammar is in
    the module's CAPTION comment)."""
    t = _truth(clip)
    return Example("caption", CAPTION_QUESTION, _caption_answer(t), t)


def modality_question(clip) -> Example:
    """"Which modality tells you what the object is?" -> `truth.informative`."""
    t = _truth(clip)
    return Example("modality", MODALITY_QUESTION, t.informative, t)


def examples_for_clip(clip, seed: Optional[int] = None, tasks: Sequence[str] = TASKS, n_options: int = 4,
                      n_absent: int = 1, classes: Sequence[str] = CLASSES) -> list[Example]:
    """Every task's examples for one clip: one multiple choice, its presence probes, one caption,
    one modality question (those named in `tasks`)."""
    bad = [x for x in tasks if x not in TASKS]
    if bad:
        raise ValueError(f"unknown tasks {bad}; tasks are {TASKS}")
    out: list[Example] = []
    if "multiple_choice" in tasks:
        out.append(multiple_choice(clip, seed, n_options, classes))
    if "presence" in tasks:
        out += presence_probes(clip, seed, n_absent, classes)
    if "caption" in tasks:
        out.append(caption(clip))
    if "modality" in tasks:
        out.append(modality_question(clip))
    return out


def build_examples(clips: Sequence[Clip], seed: Optional[int] = None, **kwargs) -> list[tuple[int, Example]]:
    """(clip index, example) for every example of every clip (`examples_for_clip` kwargs)."""
    return [(i, ex) for i, clip in enumerate(clips) for ex in examples_for_clip(clip, seed, **kwargs)]


def prompt_text(example: Example, chat: bool = True) -> str:
    """The user text with the media placeholder before the question. With `chat` (default), framed
    as a one-turn chat ending where the assistant's answer starts:
    "<|im_start|> user <|vision_bos|><|VIDEO|><|vision_eos|> <question> <|im_end|> <|im_start|> assistant"."""
    body = f"{MEDIA_MARKER} {example.question}"
    return f"{IM_START} user {body} {EOS_TOKEN} {IM_START} assistant" if chat else body


def full_text(example: Example, chat: bool = True) -> str:
    """`prompt_text` followed by the answer and the end-of-turn token (a training sequence)."""
    return f"{prompt_text(example, chat)} {example.answer} {EOS_TOKEN}"


def task_vocabulary(classes: Sequence[str] = CLASSES, max_options: Optional[int] = None) -> list[str]:
    """Every word any prompt or answer of these tasks can contain, sorted, without the special tokens
    (`SPECIAL_TOKENS`): template words, class names, colour words, option letters (up to
    `max_options`, default one per class), answers and the chat words."""
    max_options = len(classes) if max_options is None else max_options
    words: set[str] = set()
    templates = [MC_QUESTION, MC_OPTION, *AUDIO_PROBES, *VIDEO_PROBES, CAPTION_QUESTION, MODALITY_QUESTION, CAPTION]
    for tpl in templates:
        words.update(w for w in tpl.split() if not (w.startswith("{") and w.endswith("}")))
    words.update(classes)
    words.update(COLOUR_NAMES[c] for c in classes)
    words.update(LETTERS[:max_options])
    words.update((YES, NO, *MODALITY_ANSWERS, *CAPTION_WORDS, *CHAT_WORDS))
    return sorted(words)
