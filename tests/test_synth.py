"""The synthetic audio-visual world and its tasks: deterministic, its conditions do what they claim
(checked with brute-force nearest-centroid references on crude features, not with the generator's
own bookkeeping), and the task builders give well-formed prompts covered by the vocabulary."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from avlens.data import synth, tasks
from avlens.data.synth import CLASSES, CONDITIONS, make_clip, make_dataset
from avlens.data.tasks import (
    MEDIA_MARKER,
    SPECIAL_TOKENS,
    caption,
    examples_for_clip,
    full_text,
    modality_question,
    multiple_choice,
    presence_probe,
    presence_probes,
    prompt_text,
    task_vocabulary,
)

# --------------------------------------------------------------------------------------------
# determinism, shapes


def test_same_seed_gives_bit_identical_clips_and_different_seeds_differ():
    for cond in CONDITIONS:
        a, b = make_clip("dog", cond, seed=7), make_clip("dog", cond, seed=7)
        assert a.waveform.tobytes() == b.waveform.tobytes()
        assert a.frames.tobytes() == b.frames.tobytes()
        assert a.truth == b.truth
        c = make_clip("dog", cond, seed=8)
        assert not np.array_equal(a.waveform, c.waveform)
        assert not np.array_equal(a.frames, c.frames)
    small = dict(duration=1.0, size=28)
    d1, d2, d3 = (make_dataset(12, seed=sd, **small) for sd in (3, 3, 4))
    assert all(x.waveform.tobytes() == y.waveform.tobytes() and x.frames.tobytes() == y.frames.tobytes() for x, y in zip(d1, d2))
    assert [x.truth for x in d1] == [y.truth for y in d2]
    assert [x.truth for x in d1] != [y.truth for y in d3]


def test_clip_arrays_have_the_declared_shapes_rates_and_ranges():
    clip = make_clip("car", "clear", seed=0)
    assert clip.waveform.dtype == np.float32 and clip.waveform.shape == (64000,)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (8, 112, 112, 3)
    assert clip.sampling_rate == 16000 and clip.fps == 2.0 and clip.duration == 4.0
    assert np.abs(clip.waveform).max() <= 1.0
    short = make_clip("bell", "distractor", seed=1, duration=3.0, size=84)
    assert short.waveform.shape == (48000,) and short.frames.shape == (6, 84, 84, 3)
    z = clip.zeroed("audio")
    assert not z.waveform.any() and np.array_equal(z.frames, clip.frames) and z.truth == clip.truth
    assert not clip.zeroed("video").frames.any()
    with pytest.raises(ValueError):
        make_clip("zebra", "clear")
    with pytest.raises(ValueError):
        make_clip("dog", "foggy")


def test_make_dataset_is_balanced_over_classes_and_conditions():
    clips = make_dataset(len(CLASSES) * len(CONDITIONS), seed=0, duration=1.0, size=28)
    pairs = Counter((c.truth.target, c.truth.condition) for c in clips)
    assert len(pairs) == len(CLASSES) * len(CONDITIONS) and set(pairs.values()) == {1}
    sub = make_dataset(8, seed=0, conditions=["clear"], classes=["dog", "car"], duration=1.0, size=28)
    assert Counter(c.truth.target for c in sub) == {"dog": 4, "car": 4}
    assert all(c.truth.condition == "clear" for c in sub)


# --------------------------------------------------------------------------------------------
# conditions: the ground truth they record, and what the arrays show


@pytest.fixture(scope="module")
def world():
    """Every class under every condition, two seeds each (144 clips)."""
    return [make_clip(c, cond, seed=s) for c in CLASSES for cond in CONDITIONS for s in range(2)]


@pytest.fixture(scope="module")
def world_examples(world):
    return [(clip, ex) for clip in world for ex in examples_for_clip(clip)]


def test_conditions_record_the_ground_truth_they_claim(world):
    variants = Counter()
    for clip in world:
        t = clip.truth
        cls, cond = t.target, t.condition
        variants[(cond, t.variant)] += 1
        assert t.seed in (0, 1) and t.present[0] == cls
        others_heard = [c for c in t.heard if c != cls]
        others_seen = [c for c in t.seen if c != cls]
        assert cls not in others_heard + others_seen and len(set(t.heard)) == len(t.heard)
        if cond == "clear":
            assert t.heard == t.seen == (cls,) and t.informative == "both"
        elif cond == "audio_ambiguous":
            assert t.heard[0] == cls and len(others_heard) == 2 and t.seen == (cls,)
            assert t.informative == "video"
        elif cond == "video_ambiguous":
            assert t.heard == t.seen == (cls,) and t.informative == "audio"
            assert t.variant in ("blurred", "tiny")
        elif cond == "offscreen":
            assert t.heard == (cls,) and cls not in t.seen and t.informative == "audio"
            assert len(t.seen) == (1 if t.variant == "other" else 0)
        elif cond == "silent":
            assert t.heard == () and t.seen == (cls,) and t.informative == "video"
        elif cond == "distractor":
            assert cls in t.heard and cls in t.seen
            if t.variant == "visible":
                assert t.heard == (cls,) and len(others_seen) == 1 and t.informative == "audio"
            else:
                assert t.seen == (cls,) and len(others_heard) == 1 and t.informative == "video"
    assert set(variants) == {(c, v) for c, vs in synth.VARIANTS.items() for v in vs}


def _rms(x):
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)))


def _edge_pixels(frames, jump=40):
    """Pixels whose colour jumps by more than `jump` (any channel) to the right or below neighbour:
    drawn objects have sharp edges; the backdrop is smooth."""
    x = frames.astype(np.int16)
    dx = np.abs(np.diff(x, axis=2)).max(-1)
    dy = np.abs(np.diff(x, axis=1)).max(-1)
    return int((dx > jump).sum() + (dy > jump).sum())


def test_silent_clips_carry_no_object_sound_and_empty_offscreen_clips_show_no_object():
    for cls in CLASSES:
        silent = make_clip(cls, "silent", seed=2)
        clear = make_clip(cls, "clear", seed=2)
        assert _rms(silent.waveform) < 0.01 < 0.03 < _rms(clear.waveform)
        empty = make_clip(cls, "offscreen", seed=2, variant="empty")
        assert _edge_pixels(empty.frames) == 0 < 50 < _edge_pixels(clear.frames)
        blurred = make_clip(cls, "video_ambiguous", seed=2, variant="blurred")
        assert _edge_pixels(blurred.frames) == 0
        assert _rms(blurred.waveform) > 0.03


# brute-force references: nearest class centroid on crude features, fitted on clear clips


def _audio_feature(w, sr=16000):
    """Mean and std over time of the log energy in 24 log-spaced bands (40 Hz - 8 kHz)."""
    n, hop = 512, 256
    idx = np.arange(0, len(w) - n, hop)[:, None] + np.arange(n)
    power = np.abs(np.fft.rfft(w[idx] * np.hanning(n), axis=1)) ** 2
    f = np.fft.rfftfreq(n, 1 / sr)
    edges = np.geomspace(40, 8000, 25)
    bands = np.stack([power[:, (f >= lo) & (f < hi)].sum(1) for lo, hi in zip(edges[:-1], edges[1:])], 1)
    lb = np.log(bands + 1e-8)
    return np.concatenate([lb.mean(0), lb.std(0)])


def _video_feature(frames):
    """A 64-bin colour histogram (4 levels per channel) over all frames, and the mean frame difference."""
    q = frames // 64
    code = (q[..., 0].astype(int) * 16 + q[..., 1] * 4 + q[..., 2]).ravel()
    hist = np.bincount(code, minlength=64) / code.size
    motion = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean()
    return np.concatenate([np.sqrt(hist), [motion / 10]])


class _NearestCentroid:
    def __init__(self, X, y):
        X = np.asarray(X)
        self.mu, self.sd = X.mean(0), X.std(0) + 1e-6
        Z = (X - self.mu) / self.sd
        self.centroids = {c: Z[[i for i, v in enumerate(y) if v == c]].mean(0) for c in set(y)}

    def predict(self, x, options):
        z = (x - self.mu) / self.sd
        return min(options, key=lambda c: float(np.sum((z - self.centroids[c]) ** 2)))


@pytest.fixture(scope="module")
def references():
    train = [make_clip(c, "clear", seed=10_000 + s) for c in CLASSES for s in range(6)]
    y = [c.truth.target for c in train]
    return (
        _NearestCentroid([_audio_feature(c.waveform) for c in train], y),
        _NearestCentroid([_video_feature(c.frames) for c in train], y),
    )


def _accuracies(references, condition, variant=None, seeds=range(2)):
    """Accuracy of the audio and the video reference on (a) 12-way classification, (b) the clips'
    4-way multiple-choice questions (choosing among the question's options)."""
    ref_a, ref_v = references
    clips = [make_clip(c, condition, seed=s, variant=variant) for c in CLASSES for s in seeds]
    fa = [_audio_feature(c.waveform) for c in clips]
    fv = [_video_feature(c.frames) for c in clips]
    mcs = [multiple_choice(c) for c in clips]
    tgt = [c.truth.target for c in clips]

    def acc(ref, feats, options):
        return float(np.mean([ref.predict(f, o) == t for f, o, t in zip(feats, options, tgt)]))

    full = [CLASSES] * len(clips)
    opts = [m.options for m in mcs]
    return {"a": acc(ref_a, fa, full), "v": acc(ref_v, fv, full), "mc_a": acc(ref_a, fa, opts), "mc_v": acc(ref_v, fv, opts)}


def test_classes_are_separable_from_either_modality_when_clear(references):
    r = _accuracies(references, "clear")
    assert r["a"] >= 0.9 and r["v"] >= 0.9, r  # 12-way, chance 0.08


@pytest.mark.parametrize(
    "condition, variant",
    [
        ("audio_ambiguous", None),
        ("video_ambiguous", "blurred"),
        ("video_ambiguous", "tiny"),
        ("offscreen", "empty"),
        ("offscreen", "other"),
        ("silent", None),
        ("distractor", "visible"),
        ("distractor", "audible"),
    ],
)
def test_the_informative_modality_answers_and_the_other_cannot(references, condition, variant):
    """On the 4-way questions, the reference that sees only the informative modality is right; the one
    that sees only the other modality is near chance (0.25) or, with one equally plausible visible
    or audible alternative among the options (distractor), near 0.5."""
    # with one equally plausible alternative, more clips are needed to tell 0.5 from 1
    r = _accuracies(references, condition, variant, seeds=range(4) if condition == "distractor" else range(2))
    informative = synth.INFORMATIVE[f"{condition}:{variant}" if condition == "distractor" else condition]
    good, bad = ("mc_a", "mc_v") if informative == "audio" else ("mc_v", "mc_a")
    ceiling = 0.75 if condition == "distractor" else 0.5
    assert r[good] >= 0.85 and r[bad] <= ceiling, r


# --------------------------------------------------------------------------------------------
# tasks

TOKEN = re.compile(r"^([a-z]+|[A-Z]|[.:?,])$")
SPECIAL = re.compile("|".join(re.escape(s) for s in SPECIAL_TOKENS))


def test_questions_and_answers_are_word_level_text(world_examples):
    exs = world_examples
    assert {ex.task for _, ex in exs} == set(tasks.TASKS)
    for _, ex in exs:
        for text in (ex.question, ex.answer):
            assert text == text.strip() and "  " not in text
            assert all(TOKEN.match(w) for w in text.split(" ")), text


def test_multiple_choice_options_are_shuffled_and_the_letter_points_to_the_target(world):
    clips = world
    letters = Counter()
    for clip in clips:
        ex = multiple_choice(clip)
        # parse the options back out of the question text
        m = re.fullmatch(
            r"classify the sounding object into one of the categories below : (.*) respond only with a single label letter \.",
            ex.question,
        )
        assert m, ex.question
        parsed = re.findall(r"([A-Z]) \. ([a-z]+)", m.group(1))
        assert [l for l, _ in parsed] == ["A", "B", "C", "D"]
        options = [c for _, c in parsed]
        assert tuple(options) == ex.options and len(set(options)) == 4
        assert dict(parsed)[ex.answer] == clip.truth.target
        # every other heard or seen class is a hard negative among the options
        assert set(clip.truth.heard + clip.truth.seen) <= set(options)
        letters[ex.answer] += 1
        assert multiple_choice(clip) == ex  # deterministic
    n = sum(letters.values())
    assert set(letters) == {"A", "B", "C", "D"} and min(letters.values()) > 0.15 * n, letters
    ex6 = multiple_choice(clips[0], n_options=6)
    assert len(ex6.options) == 6 and ex6.options[ord(ex6.answer) - 65] == clips[0].truth.target


def test_presence_probes_answer_from_what_is_heard_and_seen(world):
    clips = world
    kinds = Counter()
    for clip in clips:
        t = clip.truth
        for ex in presence_probes(clip, n_absent=2):
            words = ex.question.split()
            modality = "audio" if ("sound" in words or "hear" in words) else "video"
            cls = next(w for w in words if w in CLASSES)
            assert (modality, cls) == (ex.probe_modality, ex.probe_class)
            present = cls in (t.heard if modality == "audio" else t.seen)
            assert ex.answer == ("yes" if present else "no")
            kinds[(ex.probe_modality, ex.probe_kind, ex.answer)] += 1
        if t.condition == "offscreen":
            assert presence_probe(clip, t.target, "video").answer == "no"
            assert presence_probe(clip, t.target, "video").probe_kind == "other_modality"
        if t.condition == "silent":
            assert presence_probe(clip, t.target, "audio").answer == "no"
    for modality in ("audio", "video"):
        assert kinds[(modality, "present", "yes")] > 0
        assert kinds[(modality, "other_modality", "no")] > 0
        assert kinds[(modality, "absent", "no")] > 0
    assert not any(k[1] != "present" and k[2] == "yes" for k in kinds)


def test_captions_follow_the_grammar_and_name_what_is_perceivable(world):
    for cls in CLASSES:
        clear = make_clip(cls, "clear", seed=0)
        assert caption(clear).answer == f"i see a {synth.COLOUR_NAMES[cls]} {cls} and hear a {cls} ."
        assert caption(make_clip(cls, "silent", seed=0)).answer == f"i see a {synth.COLOUR_NAMES[cls]} {cls} and hear nothing ."
    obj = r"a [a-z]+ (?:" + "|".join(CLASSES) + ")"
    seen = rf"(nothing|a blurry shape|a tiny shape|{obj}(?: and {obj})?)"
    heard = r"(nothing|a mix of sounds|a [a-z]+(?: and a [a-z]+)?)"
    grammar = re.compile(rf"i see {seen} and hear {heard} \.")
    for clip in world:
        t, ans = clip.truth, caption(clip).answer
        m = grammar.fullmatch(ans)
        assert m, ans
        if t.condition not in ("video_ambiguous",):
            assert re.findall(r"a [a-z]+ ([a-z]+)", m.group(1)) == list(t.seen)
        if t.condition != "audio_ambiguous":
            assert re.findall(r"a ([a-z]+)", m.group(2)) == list(t.heard)


def test_modality_question_answers_the_informative_modality(world):
    clips = world
    for clip in clips:
        ex = modality_question(clip)
        assert ex.question == "which modality tells you what the object is ?"
        assert ex.answer == clip.truth.informative in ("audio", "video", "both")
    assert {modality_question(c).answer for c in clips} == {"audio", "video", "both"}


def test_prompt_puts_the_media_marker_before_the_question():
    ex = caption(make_clip("dog", "clear", seed=0))
    assert prompt_text(ex, chat=False) == f"{MEDIA_MARKER} describe what you see and hear ."
    p = prompt_text(ex)
    assert p.startswith("<|im_start|> user ") and p.endswith("<|im_end|> <|im_start|> assistant")
    assert p.index(MEDIA_MARKER) < p.index("describe") and p.count("<|VIDEO|>") == 1
    assert full_text(ex) == p + " i see a brown dog and hear a dog . <|im_end|>"


def test_vocabulary_covers_every_word_of_every_prompt_and_answer(world_examples):
    vocab = set(task_vocabulary())
    assert not vocab & set(SPECIAL_TOKENS)
    exs = world_examples
    used = set()
    for _, ex in exs:
        for w in SPECIAL.sub(" ", full_text(ex)).split():
            assert w in vocab, (w, full_text(ex))
            used.add(w)
    # and through the toy tokenizer built from it: no unknown words
    from avlens.data.tokenizer import build_tokenizer

    tok = build_tokenizer(task_vocabulary())
    unk = tok.convert_tokens_to_ids("<unk>")
    for _, ex in exs[:200]:
        ids = tok(full_text(ex))["input_ids"]
        assert unk not in ids
        assert ids.count(tok.convert_tokens_to_ids("<|VIDEO|>")) == 1
    # the vocabulary has no dead words beyond the unused option letters E..L
    assert vocab - used <= set("EFGHIJKL"), vocab - used
