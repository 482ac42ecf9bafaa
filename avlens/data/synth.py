"""A synthetic audio-visual world: sound-making objects with known ground truth.

    from avlens.data.synth import make_clip, make_dataset
    clip = make_clip("dog", "offscreen", seed=3)      # a dog barks; a silent guitar is in view
    clip.waveform   # float32 [64000], 16 kHz mono
    clip.frames     # uint8 [8, 112, 112, 3], 2 fps
    clip.truth      # Truth(target='dog', condition='offscreen', heard=('dog',), seen=('guitar',),
                    #       informative='audio', seed=3, variant='other')
    clips = make_dataset(240, seed=0)                 # balanced over classes x conditions

Twelve classes (`CLASSES`), each with an audio signature (a waveform built from a pitch contour,
partials, an amplitude envelope and noise bands: barks, an engine hum, piano notes, drum beats,
bird chirps, meows, a siren wail, guitar strums, bell strikes, train chugs, a phone ring, clock
ticks) and a visual signature (a shape drawn in its own colour, with its own texture and motion:
a hopping brown dog, a red car driving across, a flashing siren, a clock whose hand turns, ...).
Within a class, pitch, tempo, loudness, colour, size, position, direction and speed vary with the
seed, so the task is not trivial; when clear, every class is separable from either modality alone.

Conditions (`CONDITIONS`) control what each modality says about the clip's *target* object:

* ``clear``: the target is heard and seen, alone (plus faint ambient noise). Informative: both.
* ``audio_ambiguous``: the target's sound is mixed with the sounds of two other classes at
  equal or higher level, plus noise; only the target is visible. Audio alone cannot single out
  the target, so video decides. Informative: video.
* ``video_ambiguous``: the target is heard clearly, but drawn as a colourless, motionless,
  blurred (variant ``blurred``) or tiny (variant ``tiny``) silhouette. Informative: audio.
* ``offscreen``: the target is heard but not seen; the frames show no object (variant
  ``empty``) or a silent object of another class (variant ``other``). Informative: audio.
* ``silent``: the target is seen but makes no sound; the audio is ambient noise only.
  Informative: video.
* ``distractor``: the target is heard and seen, plus one object of another class that is only
  seen (variant ``visible``: video alone cannot tell which object sounds, so informative: audio)
  or only heard (variant ``audible``: audio alone cannot tell which sound belongs to the visible
  object, so informative: video).

"Informative" follows one rule: a modality is informative when, taken alone, it singles out the
target among all classes. The multiple-choice builder in `avlens.data.tasks` puts every other
heard or seen class among the options, so a model that uses only the uninformative modality
cannot do better than guess between them (the unimodal-dominance setting of the paper, Sec. 4 of
the design notes: zero one modality's raw input and see whether the answer changes).

Everything is deterministic from ``seed`` (same arguments -> bit-identical arrays on the same
numpy build); a 4-second clip takes about 10-20 ms to make on one CPU core (numpy only).
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "CLASSES",
    "CONDITIONS",
    "INFORMATIVE",
    "VARIANTS",
    "COLOUR_NAMES",
    "SAMPLING_RATE",
    "FPS",
    "FRAME_SIZE",
    "DURATION",
    "Truth",
    "Clip",
    "make_clip",
    "make_dataset",
    "synth_sound",
    "render_object",
]

CLASSES: tuple[str, ...] = (
    "dog", "car", "piano", "drum", "bird", "cat", "siren", "guitar", "bell", "train", "phone", "clock",
)
CONDITIONS: tuple[str, ...] = ("clear", "audio_ambiguous", "video_ambiguous", "offscreen", "silent", "distractor")
# which modality singles out the target, per condition (distractor: per variant)
INFORMATIVE: dict[str, str] = {
    "clear": "both",
    "audio_ambiguous": "video",
    "video_ambiguous": "audio",
    "offscreen": "audio",
    "silent": "video",
    "distractor:visible": "audio",
    "distractor:audible": "video",
}
VARIANTS: dict[str, tuple[str, ...]] = {
    "clear": ("",),
    "audio_ambiguous": ("mix",),
    "video_ambiguous": ("blurred", "tiny"),
    "offscreen": ("empty", "other"),
    "silent": ("",),
    "distractor": ("visible", "audible"),
}

SAMPLING_RATE = 16000
FPS = 2.0
FRAME_SIZE = 112
DURATION = 4.0

# the colour each class is drawn in (RGB) and the word captions use for it
_COLOURS: dict[str, tuple[float, float, float]] = {
    "dog": (135, 80, 35),
    "car": (220, 30, 30),
    "piano": (22, 22, 22),
    "drum": (250, 140, 10),
    "bird": (35, 75, 235),
    "cat": (105, 105, 115),
    "siren": (230, 20, 20),  # alternates with blue every frame
    "guitar": (140, 50, 175),
    "bell": (240, 205, 30),
    "train": (30, 150, 60),
    "phone": (240, 110, 180),
    "clock": (248, 248, 248),
}
COLOUR_NAMES: dict[str, str] = {
    "dog": "brown", "car": "red", "piano": "black", "drum": "orange", "bird": "blue", "cat": "grey",
    "siren": "flashing", "guitar": "purple", "bell": "yellow", "train": "green", "phone": "pink",
    "clock": "white",
}

_TARGET_RMS = 0.1  # loudness of a clear object's sound (before +-3 dB jitter)
_AMBIENT_RMS = 0.003  # faint pink noise present in every clip


@dataclass(frozen=True)
class Truth:
    """Ground truth of one clip.

    target: the clip's object, the answer to "what is the sounding object" (for ``silent``
        clips, the visible object that makes no sound).
    heard: classes whose sound is in the waveform, target first.
    seen: classes whose object is drawn in the frames, target first (a ``video_ambiguous``
        target counts as seen: it is there, as a blurred or tiny silhouette).
    informative: the modality that alone singles out the target: "audio", "video" or "both".
    condition: one of `CONDITIONS`; variant: how the condition was realised (see `VARIANTS`).
    seed: the seed `make_clip` was called with.
    """

    target: str
    condition: str
    heard: tuple[str, ...]
    seen: tuple[str, ...]
    informative: str
    seed: int
    variant: str = ""

    @property
    def present(self) -> tuple[str, ...]:
        """Classes heard or seen (or both), in order of first appearance."""
        return tuple(dict.fromkeys(self.heard + self.seen))


@dataclass(frozen=True, eq=False)
class Clip:
    """One audio-visual clip: a mono waveform, RGB frames and their ground truth."""

    waveform: np.ndarray  # float32 [n_samples], in [-1, 1]
    frames: np.ndarray  # uint8 [T, H, W, 3]
    fps: float
    sampling_rate: int
    truth: Truth

    @property
    def duration(self) -> float:
        return len(self.waveform) / self.sampling_rate

    def zeroed(self, modality: str) -> "Clip":
        """A copy with one modality's raw input zeroed ("audio" or "video"), as the unimodal-dominance
        framework does (zero the input, keep the layout); the truth is unchanged."""
        if modality == "audio":
            return dataclasses.replace(self, waveform=np.zeros_like(self.waveform))
        if modality == "video":
            return dataclasses.replace(self, frames=np.zeros_like(self.frames))
        raise ValueError(f"modality must be 'audio' or 'video', got {modality!r}")

    def __repr__(self) -> str:
        t = self.truth
        T, H, W, _ = self.frames.shape
        var = f"/{t.variant}" if t.variant else ""
        return (
            f"Clip({t.target}, {t.condition}{var}, seed={t.seed}, {self.duration:g} s: audio "
            f"{len(self.waveform)} @ {self.sampling_rate} Hz, video {T}x{H}x{W} @ {self.fps:g} fps; "
            f"heard={t.heard}, seen={t.seen}, informative={t.informative})"
        )


# ---------------------------------------------------------------------------------------------
# audio


def _noise_band(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    """White noise band-passed to [lo, hi] Hz (brick wall in the frequency domain), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    spec[(f < lo) | (f > hi)] = 0
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _pink(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Pink (1/f power) noise above 20 Hz, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    spec *= np.where(f > 20, 1.0 / np.sqrt(np.maximum(f, 20.0)), 0.0)
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _partials(f0: np.ndarray, env: np.ndarray, sr: int, ratios, amps, pows=None) -> np.ndarray:
    """sum_k amps[k] * env**pows[k] * sin(ratios[k] * phi), phi = 2 pi integral of f0 (Hz, per
    sample). Partials above 0.95 x Nyquist are muted sample by sample (no aliasing). The phase is
    accumulated in float64 and wrapped before a float32 sine; only samples where env != 0 are
    computed."""
    phi = (2 * np.pi / sr) * np.cumsum(f0)
    out = np.zeros_like(phi)
    live = np.flatnonzero(env)
    if len(live) == 0:
        return out
    phi, f0, env = phi[live], f0[live], env[live].astype(np.float32)
    wrapped = (phi - (2 * np.pi) * np.rint(phi * (0.5 / np.pi))).astype(np.float32)  # in [-pi, pi]
    log_env = None
    nyq = 0.95 * sr / 2
    f_lo, f_hi = float(f0.min()), float(f0.max())
    acc = np.zeros(len(live), np.float32)
    pows = [1.0] * len(ratios) if pows is None else pows
    for r, a, p in zip(ratios, amps, pows):
        if a == 0 or r * f_lo >= nyq:
            continue
        if float(r).is_integer():  # small multiples of the wrapped phase are exact enough in float32
            ph = np.float32(r) * wrapped
        else:  # wrap r * phi in float64 first
            ph = r * phi
            ph = (ph - (2 * np.pi) * np.rint(ph * (0.5 / np.pi))).astype(np.float32)
        if p == 1.0:
            term = env * np.sin(ph)
        else:  # env ** p, through exp / log (fast in float32)
            if log_env is None:
                log_env = np.log(np.maximum(np.abs(env), np.float32(1e-30)))
            term = np.exp(np.float32(p) * log_env) * np.sin(ph)
        if r * f_hi >= nyq:
            term *= r * f0 < nyq
        acc += np.float32(a) * term
    out[live] = acc
    return out


def _events(rng, duration, first, gap_lo, gap_hi) -> list[float]:
    """Onset times from `first` on, spaced uniformly in [gap_lo, gap_hi] s, before `duration`."""
    ts, t = [], first
    while t < duration:
        ts.append(t)
        t += rng.uniform(gap_lo, gap_hi)
    return ts


def _span(t: np.ndarray, start: float, length: float = np.inf) -> tuple[slice, np.ndarray]:
    """(slice of the samples of `t` with start <= t < start + length, their time since `start`);
    `t` is the clip's sample times, arange(n) / sr."""
    sr = float(round(1.0 / (t[1] - t[0]))) if len(t) > 1 else 1.0
    i0 = min(len(t), max(0, int(np.ceil(start * sr - 1e-6))))
    i1 = len(t) if not np.isfinite(length) else min(len(t), max(i0, int(np.ceil((start + length) * sr - 1e-6))))
    return slice(i0, i1), t[i0:i1] - start


def _until_next(onsets) -> list[tuple[int, float, float]]:
    """(index, onset, time to the next onset or inf) for each onset."""
    onsets = list(onsets)
    nxt = onsets[1:] + [np.inf]
    return [(i, s, n - s) for i, (s, n) in enumerate(zip(onsets, nxt))]


def _snd_dog(rng, t, sr):
    # barks: short harmonic bursts (f0 ~400-520 Hz, falling), raspy noise, in groups of 1-3
    f0 = np.full_like(t, 400.0)
    env = np.zeros_like(t)
    base = rng.uniform(380, 520)
    dur = t[-1]
    start = rng.uniform(0.0, 0.4)
    while start < dur - 0.15:
        for _ in range(rng.integers(1, 4)):
            L = rng.uniform(0.12, 0.2)
            m, tau = _span(t, start, L)
            fb = base * rng.uniform(0.93, 1.07)
            f0[m] = fb * (1.15 - 0.35 * tau / L)
            env[m] = (1 - np.exp(-tau / 0.008)) * (1 - tau / L) ** 1.5
            start += L + rng.uniform(0.08, 0.15)
        start += rng.uniform(0.4, 0.9)
    tone = _partials(f0, env, sr, range(1, 9), [1 / k for k in range(1, 9)])
    return tone + 0.5 * env * _noise_band(rng, len(t), sr, 500, 2500)


def _snd_car(rng, t, sr):
    # engine: low harmonic hum (38-50 Hz, rising rpm, slight wobble) and rumbling low noise
    dur = t[-1]
    f0 = rng.uniform(38, 50) * (1 + rng.uniform(0.1, 0.35) * t / dur + 0.03 * np.sin(2 * np.pi * 0.7 * t))
    env = np.ones_like(t)
    tone = _partials(f0, env, sr, range(1, 17), [1 / k**0.7 for k in range(1, 17)])
    return tone + 0.8 * _noise_band(rng, len(t), sr, 50, 500)


def _snd_piano(rng, t, sr):
    # notes every ~0.45 s from a C-major scale (262-523 Hz), slightly inharmonic, decaying
    scale = np.array([262, 294, 330, 349, 392, 440, 494, 523.0]) * rng.uniform(0.97, 1.03)
    f0 = np.full_like(t, scale[0])
    env = np.zeros_like(t)
    for _, s, L in _until_next(_events(rng, t[-1], rng.uniform(0, 0.2), 0.35, 0.55)):
        m, tau = _span(t, s, L)
        f0[m] = scale[rng.integers(len(scale))]
        env[m] = (1 - np.exp(-tau / 0.005)) * np.exp(-tau / 0.6)
    ks = np.arange(1, 9)
    return _partials(f0, env, sr, ks * np.sqrt(1 + 4e-4 * ks**2), 1 / ks**1.3, 1 + 0.15 * ks)


def _snd_drum(rng, t, sr):
    # beat at 100-140 bpm: kick (pitch drop 155 -> 55 Hz) on beats 1 and 3, snare noise on 2 and 4
    period = 60 / rng.uniform(100, 140)
    f0 = np.full_like(t, 55.0)
    kick = np.zeros_like(t)
    snare = np.zeros_like(t)
    for i, s, _ in _until_next(np.arange(rng.uniform(0, period), t[-1], period)):
        if i % 2 == 0:
            m, tau = _span(t, s, 2 * period)
            f0[m] = 55 + 100 * np.exp(-tau / 0.03)
            kick[m] = np.exp(-tau / 0.15)
        else:
            m, tau = _span(t, s, 0.6)
            snare[m] = np.maximum(snare[m], np.exp(-tau / 0.07))
    tone = _partials(f0, kick, sr, [1, 2], [1, 0.2])
    return tone + 0.8 * snare * _noise_band(rng, len(t), sr, 1200, 5000)


def _snd_bird(rng, t, sr):
    # trills of 3-7 upward chirps (2.4-3.2 kHz -> x1.4-1.7), 40-80 ms each
    f0 = np.full_like(t, 3000.0)
    env = np.zeros_like(t)
    lo = rng.uniform(2400, 3200)
    for s in _events(rng, t[-1], rng.uniform(0, 0.3), 0.5, 1.0):
        for _ in range(rng.integers(3, 8)):
            L = rng.uniform(0.04, 0.08)
            m, tau = _span(t, s, L)
            a = lo * rng.uniform(0.95, 1.05)
            f0[m] = a * (1 + rng.uniform(0.4, 0.7) * tau / L)
            env[m] = np.sin(np.pi * tau / L)
            s += L + rng.uniform(0.03, 0.06)
    return _partials(f0, env, sr, [1, 2], [1, 0.15])


def _snd_cat(rng, t, sr):
    # 1-3 meows of 0.6-0.9 s, f0 rising and falling (480-600 Hz -> x1.45), smooth envelope
    f0 = np.full_like(t, 500.0)
    env = np.zeros_like(t)
    base = rng.uniform(480, 600)
    for s in _events(rng, t[-1] - 0.5, rng.uniform(0, 0.4), 1.0, 1.6):
        L = rng.uniform(0.6, 0.9)
        m, tau = _span(t, s, L)
        x = tau / L
        f0[m] = base * rng.uniform(0.95, 1.05) * (1 + 0.45 * np.sin(np.pi * x) - 0.1 * x)
        env[m] = np.sin(np.pi * x) ** 0.6
    return _partials(f0, env, sr, range(1, 7), [1, 0.8, 0.6, 0.35, 0.2, 0.1])


def _snd_siren(rng, t, sr):
    # continuous wail: f0 swinging around 750-900 Hz by +-250-350 Hz, period 1.2-2 s
    c, d, P = rng.uniform(750, 900), rng.uniform(250, 350), rng.uniform(1.2, 2.0)
    f0 = c + d * np.sin(2 * np.pi * t / P + rng.uniform(0, 2 * np.pi))
    return _partials(f0, np.ones_like(t), sr, [1, 2, 3], [1, 0.25, 0.1])


def _snd_guitar(rng, t, sr):
    # strums every 0.7-1 s of a power chord (root 110-196 Hz, fifth, octave), plucked decays
    roots = rng.choice([110.0, 130.8, 146.8, 164.8, 196.0], size=2, replace=False)
    strums = _events(rng, t[-1], rng.uniform(0, 0.3), 0.7, 1.0)
    out = np.zeros_like(t)
    ks = np.arange(1, 9)
    for j, interval in enumerate((1.0, 1.5, 2.0)):
        f0 = np.full_like(t, roots[0] * interval)
        env = np.zeros_like(t)
        for i, s, L in _until_next(s + 0.015 * j for s in strums):
            m, tau = _span(t, s, L)
            f0[m] = roots[i % 2] * interval
            env[m] = (1 - np.exp(-tau / 0.002)) * np.exp(-tau / 0.5)
        out += _partials(f0, env, sr, ks, 1 / ks, 1 + 0.25 * ks)
    return out


def _snd_bell(rng, t, sr):
    # 1-3 strikes of an inharmonic bell (f0 500-750 Hz), long decay, high partials die first
    f0 = np.full_like(t, rng.uniform(500, 750))
    env = np.zeros_like(t)
    for s in _events(rng, t[-1] - 0.3, rng.uniform(0, 0.3), 1.0, 1.6):
        m, tau = _span(t, s)
        env[m] += (1 - np.exp(-tau / 0.001)) * np.exp(-tau / 1.2)
    env = np.minimum(env, 1.5)
    ratios = [0.5, 1, 1.19, 1.5, 2.0, 2.5, 2.66, 3.0]
    amps = [0.6, 1, 0.7, 0.4, 0.5, 0.3, 0.25, 0.2]
    pows = [0.5, 1, 1.3, 1.6, 2, 2.5, 3, 3.5]
    return _partials(f0, env, sr, ratios, amps, pows)


def _snd_train(rng, t, sr):
    # chugs (noise 150-1500 Hz) at 3-4.5 Hz with accents, a low rumble, clickety-clack pairs
    n = len(t)
    env = np.zeros_like(t)
    accents = (1.0, 0.6, 0.8, 0.6)
    rate = rng.uniform(3, 4.5)
    for i, s, L in _until_next(np.arange(rng.uniform(0, 1 / rate), t[-1], 1 / rate)):
        m, tau = _span(t, s, L)
        env[m] = accents[i % 4] * np.exp(-tau / 0.06)
    clicks = np.zeros_like(t)
    for s in _events(rng, t[-1], rng.uniform(0, 0.5), 0.8, 1.2):
        for s2 in (s, s + 0.12):
            m, tau = _span(t, s2, 0.1)
            clicks[m] = np.maximum(clicks[m], np.exp(-tau / 0.01))
    rumble = _partials(np.full_like(t, rng.uniform(50, 65)), np.ones_like(t), sr, [1, 2, 3], [0.4, 0.2, 0.1])
    return env * _noise_band(rng, n, sr, 150, 1500) + rumble + 0.5 * clicks * _noise_band(rng, n, sr, 2000, 6000)


def _snd_phone(rng, t, sr):
    # ring: two tones (1.1-1.3 kHz and x1.25) alternating at 20 Hz, on 0.4 / off 0.2 / on 0.4 / off 1.0 s
    f1 = rng.uniform(1100, 1300)
    f0 = np.where(np.floor(t * 20) % 2 == 0, f1, 1.25 * f1)
    phase = (t + rng.uniform(0, 2.0)) % 2.0
    on = ((phase < 0.4) | ((phase >= 0.6) & (phase < 1.0))).astype(np.float64)
    k = np.ones(int(0.005 * sr)) / int(0.005 * sr)  # 5 ms ramps
    env = np.convolve(on, k, mode="same")
    return _partials(f0, env, sr, [1, 2], [1, 0.3])


def _snd_clock(rng, t, sr):
    # tick (2-2.6 kHz ping) and tock (x0.7) alternating every 0.5 s, with a noise click
    f = rng.uniform(2000, 2600)
    f0 = np.full_like(t, f)
    ping = np.zeros_like(t)
    click = np.zeros_like(t)
    for i, s, _ in _until_next(np.arange(rng.uniform(0, 0.5), t[-1], 0.5)):
        m, tau = _span(t, s, 0.2)
        f0[m] = f if i % 2 == 0 else 0.7 * f
        ping[m] = np.exp(-tau / 0.015)
        click[m] = np.exp(-tau / 0.003)
    return _partials(f0, ping, sr, [1, 2.7], [1, 0.3]) + 0.7 * click * _noise_band(rng, len(t), sr, 2000, 7000)


_SOUNDS = {
    "dog": _snd_dog, "car": _snd_car, "piano": _snd_piano, "drum": _snd_drum, "bird": _snd_bird,
    "cat": _snd_cat, "siren": _snd_siren, "guitar": _snd_guitar, "bell": _snd_bell,
    "train": _snd_train, "phone": _snd_phone, "clock": _snd_clock,
}


def synth_sound(cls: str, rng: np.random.Generator, n_samples: int, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """The sound of one object of class `cls`: float64 [n_samples], unit RMS (pitch, tempo and
    timing drawn from `rng`)."""
    t = np.arange(n_samples) / sampling_rate
    x = _SOUNDS[cls](rng, t, sampling_rate)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


# ---------------------------------------------------------------------------------------------
# video


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each float32 [size, size]."""
    c = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(c, c)


class _Layer:
    """An object layer: colour [H, W, 3] and coverage [H, W] (bool), painted primitive by primitive.
    `focus` restricts the work to a window around the object (the primitives' masks and `x`, `y`
    are the window's); everything outside it stays empty."""

    def __init__(self, size: int):
        self.X, self.Y = _grid(size)
        self.size = size
        self.rgb = np.zeros((size, size, 3), np.float32)
        self.alpha = np.zeros((size, size), bool)
        self.focus(size / 2, size / 2, size)

    def focus(self, cx: float, cy: float, r: float) -> None:
        lo = lambda c: int(min(self.size, max(0, np.floor(c - r))))  # noqa: E731
        hi = lambda c: int(min(self.size, max(0, np.ceil(c + r))))  # noqa: E731
        self.win = (slice(lo(cy), hi(cy)), slice(lo(cx), hi(cx)))
        self.x, self.y = self.X[self.win], self.Y[self.win]

    def fill(self, mask: np.ndarray, colour) -> None:
        self.rgb[self.win][mask] = colour
        self.alpha[self.win] |= mask

    # primitives -> masks
    def ellipse(self, cx, cy, rx, ry):
        return ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2 <= 1

    def rect(self, x0, y0, x1, y1):
        return (self.x >= x0) & (self.x < x1) & (self.y >= y0) & (self.y < y1)

    def tri(self, p0, p1, p2):
        def side(a, b):
            return (b[0] - a[0]) * (self.y - a[1]) - (b[1] - a[1]) * (self.x - a[0])

        s0, s1, s2 = side(p0, p1), side(p1, p2), side(p2, p0)
        return ((s0 >= 0) & (s1 >= 0) & (s2 >= 0)) | ((s0 <= 0) & (s1 <= 0) & (s2 <= 0))

    def seg(self, p0, p1, width):
        (x0, y0), (x1, y1) = p0, p1
        dx, dy = x1 - x0, y1 - y0
        u = np.clip(((self.x - x0) * dx + (self.y - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
        return (self.x - x0 - u * dx) ** 2 + (self.y - y0 - u * dy) ** 2 <= (width / 2) ** 2


def _shade(colour, k: float):
    return tuple(min(255.0, c * k) for c in colour)


def _draw_dog(L, cx, cy, s, f, p, col):
    d = p["dir"]
    cy = cy - 0.12 * s * abs(np.sin(np.pi * f / 2 + p["phase"])) * p["move"]
    cx = cx + d * 2.0 * (f - p["mid"]) * p["move"]
    L.focus(cx, cy, 0.75 * s + 2)
    L.fill(L.seg((cx - d * 0.42 * s, cy - 0.05 * s), (cx - d * 0.62 * s, cy - 0.28 * s), 0.06 * s), col)
    for ox in (-0.32, -0.18, 0.18, 0.32):
        L.fill(L.rect(cx + ox * s - 0.035 * s, cy + 0.1 * s, cx + ox * s + 0.035 * s, cy + 0.38 * s), col)
    L.fill(L.ellipse(cx, cy, 0.45 * s, 0.22 * s), col)
    L.fill(L.ellipse(cx + d * 0.45 * s, cy - 0.22 * s, 0.16 * s, 0.16 * s), col)
    L.fill(L.ellipse(cx + d * 0.38 * s, cy - 0.33 * s, 0.06 * s, 0.11 * s), _shade(col, 0.6))


def _draw_car(L, cx, cy, s, f, p, col):
    cx = cx + p["dir"] * p["speed"] * (f - p["mid"]) * p["move"]
    L.focus(cx, cy, 0.65 * s + 2)
    L.fill(L.rect(cx - 0.55 * s, cy - 0.08 * s, cx + 0.55 * s, cy + 0.15 * s), col)
    L.fill(L.rect(cx - 0.28 * s, cy - 0.3 * s, cx + 0.22 * s, cy - 0.08 * s), col)
    L.fill(L.rect(cx - 0.23 * s, cy - 0.25 * s, cx + 0.17 * s, cy - 0.1 * s), (170, 200, 220))
    for ox in (-0.32, 0.32):
        L.fill(L.ellipse(cx + ox * s, cy + 0.17 * s, 0.12 * s, 0.12 * s), (20, 20, 20))
        L.fill(L.ellipse(cx + ox * s, cy + 0.17 * s, 0.05 * s, 0.05 * s), (150, 150, 150))


def _draw_piano(L, cx, cy, s, f, p, col):
    L.focus(cx, cy, 0.6 * s + 2)
    L.fill(L.rect(cx - 0.5 * s, cy - 0.45 * s, cx + 0.5 * s, cy + 0.35 * s), col)
    L.fill(L.rect(cx - 0.45 * s, cy + 0.35 * s, cx - 0.38 * s, cy + 0.5 * s), col)
    L.fill(L.rect(cx + 0.38 * s, cy + 0.35 * s, cx + 0.45 * s, cy + 0.5 * s), col)
    L.fill(L.rect(cx - 0.55 * s, cy, cx + 0.55 * s, cy + 0.14 * s), (245, 245, 240))
    for i in range(10):
        x = cx - 0.5 * s + (i + 0.5) * 0.1 * s
        if i % 7 not in (2, 6):
            L.fill(L.rect(x - 0.02 * s, cy, x + 0.02 * s, cy + 0.08 * s), col)


def _draw_drum(L, cx, cy, s, f, p, col):
    s = s * (1 + 0.1 * (-1) ** f * p["move"])
    L.focus(cx, cy, 0.5 * s + 2)
    L.fill(L.ellipse(cx, cy + 0.3 * s, 0.35 * s, 0.1 * s), col)
    L.fill(L.rect(cx - 0.35 * s, cy - 0.12 * s, cx + 0.35 * s, cy + 0.3 * s), col)
    for i in range(4):
        x0 = cx - 0.35 * s + i * 0.175 * s
        L.fill(L.seg((x0, cy - 0.05 * s), (x0 + 0.0875 * s, cy + 0.25 * s), 0.03 * s), (250, 235, 200))
        L.fill(L.seg((x0 + 0.0875 * s, cy + 0.25 * s), (x0 + 0.175 * s, cy - 0.05 * s), 0.03 * s), (250, 235, 200))
    L.fill(L.ellipse(cx, cy - 0.12 * s, 0.35 * s, 0.1 * s), (245, 230, 195))


def _draw_bird(L, cx, cy, s, f, p, col):
    d = p["dir"]
    c = f - p["mid"]
    cx = cx + d * p["speed"] * c * p["move"]
    cy = cy + p["vy"] * c * p["move"]
    L.focus(cx, cy, 0.45 * s + 2)
    L.fill(L.tri((cx - d * 0.2 * s, cy), (cx - d * 0.38 * s, cy - 0.1 * s), (cx - d * 0.38 * s, cy + 0.1 * s)), col)
    L.fill(L.ellipse(cx, cy, 0.22 * s, 0.12 * s), col)
    L.fill(L.ellipse(cx + d * 0.2 * s, cy - 0.08 * s, 0.08 * s, 0.08 * s), col)
    beak = L.tri((cx + d * 0.26 * s, cy - 0.1 * s), (cx + d * 0.26 * s, cy - 0.05 * s), (cx + d * 0.36 * s, cy - 0.07 * s))
    L.fill(beak, (250, 190, 20))
    up = (f + p["flap"]) % 2 == 0 or not p["move"]
    tip = (cx - d * 0.05 * s, cy - 0.35 * s) if up else (cx - d * 0.05 * s, cy + 0.3 * s)
    L.fill(L.tri((cx - d * 0.1 * s, cy), (cx + d * 0.08 * s, cy), tip), _shade(col, 0.75))


def _draw_cat(L, cx, cy, s, f, p, col):
    d = p["dir"]
    cx = cx + d * 2.0 * (f - p["mid"]) * p["move"]
    L.focus(cx, cy, 0.6 * s + 2)
    L.fill(L.seg((cx - d * 0.36 * s, cy), (cx - d * 0.5 * s, cy - 0.35 * s), 0.06 * s), col)
    for ox in (-0.25, 0.25):
        L.fill(L.rect(cx + ox * s - 0.035 * s, cy + 0.1 * s, cx + ox * s + 0.035 * s, cy + 0.36 * s), col)
    body = L.ellipse(cx, cy + 0.05 * s, 0.38 * s, 0.18 * s)
    L.fill(body, col)
    L.fill(body & (np.sin(L.x * (2 * np.pi / (0.14 * s))) > 0.4), _shade(col, 0.55))
    hx, hy = cx + d * 0.38 * s, cy - 0.15 * s
    L.fill(L.ellipse(hx, hy, 0.15 * s, 0.14 * s), col)
    for ex in (-0.1, 0.1):
        ear = L.tri((hx + (ex - 0.06) * s, hy - 0.08 * s), (hx + (ex + 0.06) * s, hy - 0.08 * s), (hx + ex * s, hy - 0.26 * s))
        L.fill(ear, col)
    L.fill(L.ellipse(hx + d * 0.06 * s, hy - 0.02 * s, 0.025 * s, 0.025 * s), (120, 230, 80))


def _draw_siren(L, cx, cy, s, f, p, col):
    red = (f + p["flap"]) % 2 == 0 or not p["move"]
    c = col if red else (25, 60, 235)
    L.focus(cx, cy, 0.65 * s + 2)
    L.fill(L.rect(cx - 0.32 * s, cy + 0.05 * s, cx + 0.32 * s, cy + 0.22 * s), (200, 200, 205))
    L.fill(L.ellipse(cx, cy + 0.05 * s, 0.25 * s, 0.3 * s) & (L.y <= cy + 0.05 * s), c)
    for ang in (-0.6, 0.0, 0.6):
        dx, dy = np.sin(ang), -np.cos(ang)
        ray = L.seg((cx + dx * 0.4 * s, cy - 0.1 * s + dy * 0.3 * s), (cx + dx * 0.55 * s, cy - 0.1 * s + dy * 0.45 * s), 0.05 * s)
        L.fill(ray, c)


def _draw_guitar(L, cx, cy, s, f, p, col):
    cx = cx + 2.0 * (-1) ** f * p["move"]
    L.focus(cx, cy, 0.8 * s + 2)
    L.fill(L.rect(cx - 0.045 * s, cy - 0.62 * s, cx + 0.045 * s, cy - 0.15 * s), (95, 55, 20))
    L.fill(L.rect(cx - 0.07 * s, cy - 0.72 * s, cx + 0.07 * s, cy - 0.6 * s), (60, 35, 15))
    L.fill(L.ellipse(cx, cy + 0.18 * s, 0.24 * s, 0.24 * s), col)
    L.fill(L.ellipse(cx, cy - 0.1 * s, 0.18 * s, 0.18 * s), col)
    L.fill(L.ellipse(cx, cy + 0.05 * s, 0.07 * s, 0.07 * s), (20, 15, 15))
    L.fill(L.rect(cx - 0.1 * s, cy + 0.27 * s, cx + 0.1 * s, cy + 0.31 * s), (60, 35, 15))


def _draw_bell(L, cx, cy, s, f, p, col):
    sw = 6.0 * np.sin(np.pi * f / 2 + p["phase"]) * p["move"]
    cx = cx + sw
    L.focus(cx, cy, 0.65 * s + 2)
    L.fill(L.seg((cx - sw, cy - 0.55 * s), (cx, cy - 0.3 * s), 0.04 * s), (90, 70, 40))
    top = cy - 0.25 * s
    u = np.clip((L.y - top) / (0.45 * s), 0, 1)
    L.fill((np.abs(L.x - cx) <= (0.14 + 0.16 * u**2) * s) & (L.y >= top) & (L.y < cy + 0.2 * s), col)
    L.fill(L.ellipse(cx, top, 0.14 * s, 0.1 * s), col)
    L.fill(L.rect(cx - 0.33 * s, cy + 0.18 * s, cx + 0.33 * s, cy + 0.25 * s), _shade(col, 0.8))
    L.fill(L.ellipse(cx - 0.5 * sw, cy + 0.3 * s, 0.06 * s, 0.06 * s), (90, 70, 40))


def _draw_train(L, cx, cy, s, f, p, col):
    d = p["dir"]
    cx = cx + d * p["speed"] * (f - p["mid"]) * p["move"]
    L.focus(cx, cy, 0.97 * s + 2)
    L.fill(L.rect(cx - 0.9 * s, cy - 0.2 * s, cx + 0.9 * s, cy + 0.2 * s), col)
    L.fill(L.rect(cx - 0.92 * s, cy - 0.26 * s, cx + 0.92 * s, cy - 0.2 * s), _shade(col, 0.6))
    L.fill(L.rect(cx + d * 0.75 * s - 0.07 * s, cy - 0.45 * s, cx + d * 0.75 * s + 0.07 * s, cy - 0.2 * s), (30, 30, 30))
    for i in range(5):
        x = cx + (-0.7 + 0.3 * i) * s
        L.fill(L.rect(x - 0.08 * s, cy - 0.14 * s, x + 0.08 * s, cy + 0.0 * s), (250, 230, 120))
    for ox in (-0.65, -0.25, 0.25, 0.65):
        L.fill(L.ellipse(cx + ox * s, cy + 0.24 * s, 0.1 * s, 0.1 * s), (25, 25, 25))


def _draw_phone(L, cx, cy, s, f, p, col):
    jx, jy = p["jitter"][f % len(p["jitter"])] * p["move"]
    cx, cy = cx + jx, cy + jy
    L.focus(cx, cy, 0.45 * s + 2)
    L.fill(L.rect(cx - 0.2 * s, cy - 0.38 * s, cx + 0.2 * s, cy + 0.38 * s), col)
    L.fill(L.rect(cx - 0.15 * s, cy - 0.3 * s, cx + 0.15 * s, cy + 0.22 * s), (30, 30, 60))
    L.fill(L.ellipse(cx, cy + 0.3 * s, 0.04 * s, 0.04 * s), (235, 235, 235))
    if p["move"]:
        for sgn in (-1, 1):
            for k in (0.28, 0.36):
                L.fill(L.seg((cx + sgn * k * s, cy - 0.12 * s), (cx + sgn * k * s, cy + 0.12 * s), 0.035 * s), (90, 90, 90))


def _draw_clock(L, cx, cy, s, f, p, col):
    L.focus(cx, cy, 0.45 * s + 2)
    L.fill(L.ellipse(cx, cy, 0.4 * s, 0.4 * s), (25, 25, 25))
    L.fill(L.ellipse(cx, cy, 0.34 * s, 0.34 * s), col)
    for dx, dy in ((0, -1), (1, 0), (0, 1), (-1, 0)):
        L.fill(L.seg((cx + dx * 0.25 * s, cy + dy * 0.25 * s), (cx + dx * 0.31 * s, cy + dy * 0.31 * s), 0.04 * s), (25, 25, 25))
    a = p["phase"] + p["dir"] * (np.pi / 4) * f * p["move"]
    L.fill(L.seg((cx, cy), (cx + 0.28 * s * np.sin(a), cy - 0.28 * s * np.cos(a)), 0.04 * s), (25, 25, 25))
    b = p["phase"] * 3
    L.fill(L.seg((cx, cy), (cx + 0.17 * s * np.sin(b), cy - 0.17 * s * np.cos(b)), 0.06 * s), (25, 25, 25))
    L.fill(L.ellipse(cx, cy, 0.05 * s, 0.05 * s), (200, 30, 30))


_DRAW = {
    "dog": _draw_dog, "car": _draw_car, "piano": _draw_piano, "drum": _draw_drum, "bird": _draw_bird,
    "cat": _draw_cat, "siren": _draw_siren, "guitar": _draw_guitar, "bell": _draw_bell,
    "train": _draw_train, "phone": _draw_phone, "clock": _draw_clock,
}
# nominal size relative to the canvas (long objects are drawn smaller)
_SIZE = {"train": 0.28, "car": 0.38, "bird": 0.48, "bell": 0.5, "phone": 0.46, "clock": 0.46}
_DEFAULT_SIZE = 0.44


def _object_params(rng: np.random.Generator, n_frames: int) -> dict:
    """Per-clip pose and motion parameters shared by all classes (each uses what it needs)."""
    return {
        "dir": float(rng.choice([-1.0, 1.0])),
        "phase": float(rng.uniform(0, 2 * np.pi)),
        "flap": int(rng.integers(2)),
        "speed": float(rng.uniform(4, 7)),
        "vy": float(rng.uniform(-2.5, 2.5)),
        "mid": (n_frames - 1) / 2,
        "jitter": rng.uniform(-2.5, 2.5, size=(max(n_frames, 1), 2)),
        "move": 1.0,
    }


def render_object(
    cls: str, size: int, cx: float, cy: float, s: float, frame: int, params: dict, colour
) -> tuple[np.ndarray, np.ndarray]:
    """One object of class `cls` at frame index `frame`: (rgb float32 [size, size, 3], coverage bool
    [size, size]). `s` is its size in pixels, (cx, cy) its centre, `params` from the clip's draw."""
    layer = _Layer(size)
    _DRAW[cls](layer, cx, cy, s, frame, params, colour)
    return layer.rgb, layer.alpha


def _upsample(a: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a small [h, w] grid to [size, size]."""
    def interp(n):
        pos = np.linspace(0, n - 1, size)
        i0 = np.clip(np.floor(pos).astype(int), 0, n - 2)
        w = pos - i0
        M = np.zeros((size, n))
        M[np.arange(size), i0] = 1 - w
        M[np.arange(size), i0 + 1] = w
        return M

    return interp(a.shape[0]) @ a @ interp(a.shape[1]).T


def _box_blur(a: np.ndarray, r: int) -> np.ndarray:
    """Separable box blur of radius r (window 2r+1) of a 2-D array, edges replicated."""
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis)
        hi = np.take(c, np.arange(2 * r + 1, c.shape[axis]), axis=axis)
        lo = np.take(c, np.arange(0, c.shape[axis] - 2 * r - 1), axis=axis)
        a = (hi - lo) / (2 * r + 1)
    return a


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A pale, low-saturation, smoothly varying backdrop: float32 [size, size, 3] in 150-205."""
    base = rng.uniform(155, 195) + rng.uniform(-10, 10, size=3)
    blobs = np.stack([_upsample(rng.uniform(-10, 10, (3, 3)), size) for _ in range(3)], -1)
    grad = np.linspace(-1, 1, size)[:, None, None] * rng.uniform(-8, 8)
    return (base + blobs + grad).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# clips


def _clip_rng(seed: int, cls: str, condition: str) -> np.random.SeedSequence:
    words = [int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, zlib.crc32(cls.encode()), zlib.crc32(condition.encode())]
    return np.random.SeedSequence(words)


def _others(rng: np.random.Generator, pool: Sequence[str], exclude: Sequence[str], k: int, condition: str) -> list[str]:
    """`k` distinct classes of `pool` not in `exclude`, drawn from `rng`."""
    cand = list(dict.fromkeys(c for c in pool if c not in exclude))
    if len(cand) < k:
        raise ValueError(f"condition {condition!r} needs {k} classes other than the target in `classes`, got {cand}")
    return [cand[i] for i in rng.choice(len(cand), size=k, replace=False)]


def make_clip(
    cls: str,
    condition: str = "clear",
    seed: int = 0,
    duration: float = DURATION,
    *,
    size: int = FRAME_SIZE,
    fps: float = FPS,
    sampling_rate: int = SAMPLING_RATE,
    classes: Sequence[str] = CLASSES,
    variant: Optional[str] = None,
) -> Clip:
    """One clip whose target object is of class `cls`, under `condition` (see the module docstring).

    Args:
        cls: the target's class, one of `CLASSES`.
        condition: one of `CONDITIONS`.
        seed: everything random (pitch, tempo, colour, size, position, motion, other objects,
            noise) follows from (seed, cls, condition); same arguments -> bit-identical arrays.
        duration: seconds (4 s -> 64000 samples and 8 frames at the defaults; over 2 s, so the
            audio-in-video interleaving has several 2-second chunks).
        size: frame height and width in pixels. fps: frames per second. sampling_rate: Hz.
        classes: the pool other objects (mixed-in sounds, distractors, off-screen objects) are
            drawn from.
        variant: force one of the condition's `VARIANTS` (default: drawn from the seed).
    """
    if cls not in _SOUNDS:
        raise ValueError(f"unknown class {cls!r}; classes are {CLASSES}")
    if condition not in VARIANTS:
        raise ValueError(f"unknown condition {condition!r}; conditions are {CONDITIONS}")
    bad = [c for c in classes if c not in _SOUNDS]
    if bad:
        raise ValueError(f"unknown classes {bad}; classes are {CLASSES}")
    n = int(round(duration * sampling_rate))
    T = int(round(duration * fps))
    if n < 1 or T < 1:
        raise ValueError(f"duration {duration} s gives {n} samples and {T} frames; both must be >= 1")
    ss_scene, ss_audio, ss_video = _clip_rng(seed, cls, condition).spawn(3)
    rng = np.random.default_rng(ss_scene)
    if variant is None:
        variant = VARIANTS[condition][int(rng.integers(len(VARIANTS[condition])))]
    elif variant not in VARIANTS[condition]:
        raise ValueError(f"variant {variant!r} is not one of {VARIANTS[condition]} for {condition!r}")

    # who is heard, who is seen
    heard, seen = [cls], [cls]
    if condition == "audio_ambiguous":
        heard += _others(rng, classes, [cls], 2, condition)
    elif condition == "offscreen":
        seen = _others(rng, classes, [cls], 1, condition) if variant == "other" else []
    elif condition == "silent":
        heard = []
    elif condition == "distractor":
        (heard if variant == "audible" else seen).extend(_others(rng, classes, [cls], 1, condition))
    informative = INFORMATIVE[f"distractor:{variant}" if condition == "distractor" else condition]
    truth = Truth(cls, condition, tuple(heard), tuple(seen), informative, int(seed), variant)

    waveform = _make_audio(np.random.default_rng(ss_audio), truth, n, sampling_rate)
    frames = _make_video(np.random.default_rng(ss_video), truth, T, size)
    return Clip(waveform, frames, float(fps), int(sampling_rate), truth)


def _make_audio(rng: np.random.Generator, truth: Truth, n: int, sr: int) -> np.ndarray:
    out = _AMBIENT_RMS * _pink(rng, n, sr)
    level = _TARGET_RMS * 10 ** (rng.uniform(-3, 3) / 20)
    for i, c in enumerate(truth.heard):
        gain = 1.0
        if i > 0 and truth.condition == "audio_ambiguous":
            gain = 10 ** (rng.uniform(0, 3) / 20)  # mixed-in sounds at the target's level or above
        elif i > 0:
            gain = 10 ** (rng.uniform(-3, 3) / 20)  # an audible distractor, as loud as the target
        out = out + level * gain * synth_sound(c, rng, n, sr)
    if truth.condition == "audio_ambiguous":
        out = out + level * rng.uniform(0.3, 0.6) * (_pink(rng, n, sr) + _noise_band(rng, n, sr, 20, 7900)) / np.sqrt(2)
    peak = np.max(np.abs(out))
    if peak > 0.99:
        out = out * (0.99 / peak)
    return out.astype(np.float32)


def _make_video(rng: np.random.Generator, truth: Truth, T: int, size: int) -> np.ndarray:
    bg = _background(rng, size)
    objects = []  # (cls, cx, cy, s, params, colour, style)
    n_obj = len(truth.seen)
    # one object: near the centre; two: one in the upper and one in the lower half, so that
    # objects moving sideways never cross
    slots = rng.permutation([0.3, 0.72]) if n_obj > 1 else [rng.uniform(0.42, 0.58)]
    for i, c in enumerate(truth.seen):
        params = _object_params(rng, T)
        s = size * _SIZE.get(c, _DEFAULT_SIZE) * rng.uniform(0.8, 1.2) * (0.7 if n_obj > 1 else 1.0)
        cx = size * rng.uniform(0.4, 0.6)
        cy = size * slots[i] + rng.uniform(-0.03, 0.03) * size
        colour = np.clip(np.asarray(_COLOURS[c]) + rng.normal(0, 8, 3), 0, 255).astype(np.float32)
        style = "normal"
        if c == truth.target and truth.condition == "video_ambiguous":
            style = truth.variant
            params["move"] = 0.0
            if style == "tiny":
                s = size * rng.uniform(0.05, 0.08)
                cx, cy = size * rng.uniform(0.15, 0.85), size * rng.uniform(0.15, 0.85)
        objects.append((c, cx, cy, s, params, colour, style))
    # draw the target last (on top)
    objects.sort(key=lambda o: o[0] == truth.target)

    frames = np.empty((T, size, size, 3), np.float32)
    bg_mean = bg.reshape(-1, 3).mean(0)
    static_cache: dict[int, tuple] = {}
    for f in range(T):
        img = bg.copy()
        for j, (c, cx, cy, s, params, colour, style) in enumerate(objects):
            if style == "normal":
                rgb, alpha = render_object(c, size, cx, cy, s, f, params, colour)
                img[alpha] = rgb[alpha]
                continue
            # video_ambiguous: a motionless, colourless silhouette, blurred or tiny
            if j not in static_cache:
                _, alpha = render_object(c, size, cx, cy, s, 0, params, colour)
                a = alpha.astype(np.float64)
                if style == "blurred":
                    r = max(2, int(round(s * 0.2)))
                    a = _box_blur(_box_blur(a, r), r) * 0.6
                else:
                    a = a * 0.7
                static_cache[j] = (a.astype(np.float32)[..., None], bg_mean * 0.78)
            a, grey = static_cache[j]
            img = img * (1 - a) + grey * a
        frames[f] = img
    frames += np.float32(3.0) * rng.standard_normal(frames.shape, dtype=np.float32)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def make_dataset(
    n: int,
    seed: int = 0,
    conditions: Sequence[str] = CONDITIONS,
    classes: Sequence[str] = CLASSES,
    duration: float = DURATION,
    **clip_kwargs,
) -> list[Clip]:
    """`n` clips balanced over classes x conditions (each pair once per round, rounds in a shuffled
    order; repeat a condition in `conditions` to weight it). Clip i gets its own seed drawn from
    `seed`, so the dataset is deterministic and different seeds give different clips."""
    classes, conditions = list(classes), list(conditions)
    if not classes or not conditions:
        raise ValueError("make_dataset needs at least one class and one condition")
    rng = np.random.default_rng(seed)
    grid = list(product(classes, conditions))
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        pairs += [grid[i] for i in rng.permutation(len(grid))]
    seeds = rng.integers(0, 2**31 - 1, size=n)
    return [
        make_clip(c, cond, int(s), duration, classes=classes, **clip_kwargs)
        for (c, cond), s in zip(pairs[:n], seeds)
    ]
