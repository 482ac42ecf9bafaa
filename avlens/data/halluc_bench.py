"""A toy audio-visual hallucination benchmark from the synthetic world, in the real benchmarks' file
formats, so the evaluation harness (`avlens.analysis.hallucination`, `avlens.mitigation.compare`)
runs end to end without downloads.

    paths = write_toy_benchmark("toybench", n_clips=60, seed=2000)
    # toybench/avhbench.json   AVHBench format: {"video_id", "task", "text", "label"} (+ probe_kind, condition)
    # toybench/captions.json   the paper's caption-set format: {"video_id", "prompt", "objects"}
    # toybench/clips.json      video_id -> (class, condition, seed): ToyMedia regenerates each clip exactly

Yes/no probes (`avlens.data.tasks.presence_probes`): about objects heard only, seen only, or absent.
A probe about what is *heard* is AVHBench's "Video-driven Audio Hallucination" task (a visible but
silent object tempts a "yes"), one about what is *seen* its "Audio-driven Video Hallucination" task.
The toy's word-level vocabulary has no audio-visual matching question, so that task is absent.
Captions use the toy's prompt ("describe what you see and hear ."), and `objects` are the classes
heard or seen.

Real benchmark folders (AVHBench layout: a questions file of ``{"video_id", "task", "text",
"label"}`` records, ``videos/{id}.mp4``, ``audios/{id}.wav``, no captions.json):

    res = evaluate_folder(model, "AVHBench_v0", methods=default_methods(), out="run/")   # or
    avlens hallucination --bench-dir AVHBench_v0 --out run/

`FileMedia(root)` reads the media with `avlens.data.files` (PyAV) and logs how each video's media
was resolved: a missing video (or unreadable file) is recorded and the sample skipped, never a
crash; a missing audio file falls back to the video's own audio track *and says so* in every
prediction record of that sample (``audio_source``, ``media_note``) and in ``media.json``; with
neither, the sample is recorded and skipped.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Optional

import numpy as np

from avlens.data import synth, tasks

__all__ = ["AVH_TASK_OF_MODALITY", "write_toy_benchmark", "ToyMedia", "FileMedia", "AUDIO_FILE", "VIDEO_TRACK",
           "QUESTION_FILES", "read_avhbench_folder", "read_caption_set", "evaluate_folder"]

AVH_TASK_OF_MODALITY = {"audio": "Video-driven Audio Hallucination", "video": "Audio-driven Video Hallucination"}


def write_toy_benchmark(root: str, n_clips: int = 60, seed: int = 2000, n_absent: int = 1) -> dict[str, str]:
    """Write the toy benchmark's three files under `root` (created); returns their paths."""
    if n_clips < 1:
        raise ValueError("n_clips must be >= 1")
    os.makedirs(root, exist_ok=True)
    clips = synth.make_dataset(n_clips, seed=seed)
    avh, caps, specs = [], [], {}
    for i, clip in enumerate(clips):
        t = clip.truth
        vid = f"toy{seed}_{i:04d}"
        specs[vid] = {"class": t.target, "condition": t.condition, "seed": t.seed, "variant": t.variant,
                      "heard": list(t.heard), "seen": list(t.seen)}
        for ex in tasks.presence_probes(clip, seed=seed, n_absent=n_absent):
            avh.append({"video_id": vid, "task": AVH_TASK_OF_MODALITY[ex.probe_modality], "text": ex.question,
                        "label": ex.answer, "probe_kind": ex.probe_kind, "condition": t.condition})
        cap = tasks.caption(clip)
        avh.append({"video_id": vid, "task": "AV Captioning", "text": cap.question, "label": cap.answer, "condition": t.condition})
        caps.append({"video_id": vid, "prompt": cap.question, "objects": sorted(set(t.heard) | set(t.seen)),
                     "caption": cap.answer, "condition": t.condition})
    paths = {name: os.path.join(root, f"{name}.json") for name in ("avhbench", "captions", "clips")}
    for name, obj in (("avhbench", avh), ("captions", caps), ("clips", specs)):
        with open(paths[name], "w") as f:
            json.dump(obj, f, indent=1)
    return paths


class ToyMedia:
    """video_id -> (waveform, frames, fps), regenerated bit-exactly from `clips.json`."""

    def __init__(self, root_or_specs):
        if isinstance(root_or_specs, dict):
            self.specs = root_or_specs
        else:
            path = root_or_specs if str(root_or_specs).endswith(".json") else os.path.join(root_or_specs, "clips.json")
            with open(path) as f:
                self.specs = json.load(f)

    def __call__(self, video_id: str):
        if video_id not in self.specs:
            raise FileNotFoundError(f"no clip {video_id!r} in the toy benchmark's clips.json")
        s = self.specs[video_id]
        clip = synth.make_clip(s["class"], s["condition"], int(s["seed"]), variant=s.get("variant"))
        return clip.waveform, clip.frames, clip.fps


#: where `FileMedia` took a sample's audio from
AUDIO_FILE, VIDEO_TRACK = "audio_file", "video_track"
#: the questions file `evaluate_folder` looks for in a benchmark folder, in this order
QUESTION_FILES = ("avhbench.json", "QA.json")


def _has_audio_stream(path: str) -> bool:
    from avlens.data.files import _open

    with _open(path, "video") as container:
        return bool(container.streams.audio)


class FileMedia:
    """video_id -> (waveform, frames, fps) from `root/videos/{id}.mp4` and `root/audios/{id}.wav`
    (PyAV; `avlens.data.files`), the layout of AVHBench's released folders.

    Every call is recorded in `log[video_id]` (``{"video_id", "video", "audio", "audio_source",
    "note"?, "error"?}``, paths relative to `root`) so no substitution is silent:

    * video file missing: recorded (``error``) and `FileNotFoundError` raised (the harness skips the
      sample, never crashes);
    * audio file present: ``audio_source = "audio_file"``;
    * audio file missing, the video has an audio track and `audio_fallback` (default): that track is
      the audio, ``audio_source = "video_track"``, ``note`` says which file was missing (and a
      `UserWarning` says it too); `evaluate_folder` copies both into every prediction record of the
      sample;
    * audio file missing and no track in the video (or `audio_fallback=False`): recorded and
      `FileNotFoundError` raised (skipped);
    * a file FFmpeg cannot decode: recorded and `ValueError` raised (skipped); a corrupt audio file
      is never replaced by the video's track.

    `audio_pattern=None` reads every sample's audio from its video's track (recorded as
    ``"video_track"``)."""

    def __init__(self, root: str, fps: float = 2.0, sampling_rate: int = 16000, video_pattern: str = "videos/{id}.mp4",
                 audio_pattern: Optional[str] = "audios/{id}.wav", audio_fallback: bool = True):
        if not os.path.isdir(root):
            raise NotADirectoryError(f"benchmark media root {root!r} is not a folder (it should hold videos/ and audios/)")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.root, self.fps, self.sr, self.vp, self.ap = root, fps, sampling_rate, video_pattern, audio_pattern
        self.audio_fallback = audio_fallback
        self.log: dict[str, dict] = {}

    def __call__(self, video_id: str):
        from avlens.data.files import load_audio, load_video

        vrel = self.vp.format(id=video_id)
        arel = self.ap.format(id=video_id) if self.ap else None
        vpath = os.path.join(self.root, vrel)
        apath = os.path.join(self.root, arel) if arel else None
        entry = {"video_id": video_id, "video": vrel, "audio": arel, "audio_source": None}
        self.log[str(video_id)] = entry

        def fail(exc):
            entry["error"] = f"{type(exc).__name__}: {exc}"
            raise exc

        if not os.path.isfile(vpath):
            fail(FileNotFoundError(f"missing video {vpath}"))
        try:
            if apath is not None and os.path.isfile(apath):
                source = AUDIO_FILE
            elif apath is not None and not self.audio_fallback:
                fail(FileNotFoundError(f"missing audio {apath} (audio_fallback=False: the video's own track is not used)"))
            elif not _has_audio_stream(vpath):
                what = f"{apath} is missing and " if apath is not None else ""
                fail(FileNotFoundError(f"no audio for {video_id!r}: {what}{vpath} has no audio track"))
            else:
                source = VIDEO_TRACK
                entry["note"] = (f"{arel} is missing: the audio is the video's own track ({vrel})" if arel
                                 else f"audio_pattern=None: the audio is the video's own track ({vrel})")
                if arel:  # a substitution: said here too, for callers that never read the log
                    warnings.warn(f"{video_id}: {entry['note']}", stacklevel=2)
            frames, fps = load_video(vpath, fps=self.fps)
            wave = load_audio(apath if source == AUDIO_FILE else vpath, self.sr)
        except (ValueError, OSError) as e:
            if "error" not in entry:
                entry["error"] = f"{type(e).__name__}: {e}"
            raise
        entry["audio_source"] = source
        return np.asarray(wave, dtype=np.float32), frames, fps


def _resolve(root: str, name: str, what: str) -> str:
    """`name` as given (absolute, or an existing path) or relative to `root`; an error if neither exists."""
    path = name if os.path.isabs(name) or os.path.isfile(name) else os.path.join(root, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {name!r} not found (neither as given nor under {root!r})")
    return path


def _read_json_records(path: str) -> list:
    """The records of a JSON list or JSON-lines file, with a clear error for anything else."""
    from avlens.analysis.hallucination import read_records

    try:
        return read_records(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path!r} is not JSON (a list of records) or JSON lines: {e}") from e


def read_avhbench_folder(root: str, questions: Optional[str] = None) -> tuple[str, list[dict]]:
    """(path, records) of an AVHBench-format questions file: `questions` (a path, absolute or
    relative to `root`), else the first of `QUESTION_FILES` in `root`. Every record needs
    ``video_id, task, text, label`` and a task among `AVH_TASKS`; a bad file raises naming the
    record and the fix."""
    from avlens.analysis.hallucination import AVH_TASKS

    if not os.path.isdir(root):
        raise NotADirectoryError(f"benchmark folder {root!r} does not exist or is not a folder")
    if questions is None:
        found = [os.path.join(root, n) for n in QUESTION_FILES if os.path.isfile(os.path.join(root, n))]
        if not found:
            jsons = sorted(n for n in os.listdir(root) if n.endswith((".json", ".jsonl")))
            raise FileNotFoundError(f"no questions file in {root!r}: looked for {list(QUESTION_FILES)}; found {jsons}. "
                                    "Name yours with questions= (CLI: --questions)")
        path = found[0]
    else:
        path = _resolve(root, questions, "questions file")
    recs = _read_json_records(path)
    if not recs:
        raise ValueError(f"{path!r} holds no records")
    for i, r in enumerate(recs):
        missing = [k for k in ("video_id", "task", "text", "label") if k not in r]
        if missing:
            raise ValueError(f"record {i} of {path!r} lacks {missing} (found {sorted(r)}); AVHBench records are "
                           '{"video_id", "task", "text", "label"}')
    unknown = sorted({r["task"] for r in recs} - set(AVH_TASKS))
    if unknown:
        raise ValueError(f"{path!r} has tasks {unknown} that AVHBench does not have; its tasks are {list(AVH_TASKS)}")
    return path, recs


def read_caption_set(root: str, captions: Optional[str] = None) -> tuple[Optional[str], list[dict]]:
    """(path, records) of a caption set in the paper's format (``{"video_id", "prompt", "objects"}``):
    `captions` (a path, absolute or relative to `root`), else ``root/captions.json`` when present,
    else ``(None, [])`` (captions are then not run)."""

    if captions is None:
        default = os.path.join(root, "captions.json")
        if not os.path.isfile(default):
            return None, []
        path = default
    else:
        path = _resolve(root, captions, "caption set")
    caps = _read_json_records(path)
    for i, r in enumerate(caps):
        missing = [k for k in ("video_id", "prompt", "objects") if k not in r]
        if missing:
            raise ValueError(f"caption-set record {i} of {path!r} lacks {missing}; the format is "
                           '{"video_id", "prompt", "objects": ["dog/puppy", ...]}')
    return path, caps


def evaluate_folder(model, root: str, methods=None, questions: Optional[str] = None, captions: Optional[str] = None,
                    out: Optional[str] = None, media=None, prompt=None, parser: str = "mad", fps: float = 2.0,
                    max_items: Optional[int] = None, yes_no_tokens: int = 2, caption_tokens: int = 16,
                    n_boot: int = 1000, seed: int = 0, progress: bool = False):
    """Run `methods` (name -> Method; default plain decoding) on a real AVHBench-format folder and
    score them: `compare_methods` on the folder's yes/no questions, media from `FileMedia(root)`.

    The folder: a questions file (`read_avhbench_folder`), ``videos/{id}.mp4`` and
    ``audios/{id}.wav``; no ``captions.json`` is needed. Captions are decoded and scored (CHAIR) only
    with a caption set (`captions`, or ``root/captions.json`` when present), since AVHBench's "AV
    Captioning" rows carry a reference sentence, not object lists; those rows are otherwise not
    run. `prompt(question) -> text` frames a question for `model` (default: the toy's chat prompt).

    Media problems never stop the run: a sample whose media cannot be read is in `res.skipped` with
    the reason and the paths tried; a sample whose audio came from its video's track (audio file
    missing) carries ``audio_source = "video_track"`` and a ``media_note`` in every method's
    prediction records (others: ``"audio_file"``). With `out`, the comparison is saved there
    (`Comparison.save`) with ``media.json`` (how every video's media was resolved); the staged
    benchmark files go to ``out/bench``."""
    import shutil
    import tempfile

    from avlens.mitigation.compare import compare_methods, toy_prompt

    _, recs = read_avhbench_folder(root, questions)
    _, caps = read_caption_set(root, captions)
    media = FileMedia(root, fps=fps) if media is None else media
    tmp = None
    if out is not None:
        stage = os.path.join(out, "bench")
    else:
        tmp = tempfile.mkdtemp(prefix="avlens-bench-")
        stage = tmp
    try:
        os.makedirs(stage, exist_ok=True)
        with open(os.path.join(stage, "avhbench.json"), "w") as f:
            json.dump(recs, f, indent=1)
        with open(os.path.join(stage, "captions.json"), "w") as f:
            json.dump(caps, f, indent=1)
        res = compare_methods(model, stage, methods, media=media, prompt=prompt or toy_prompt, parser=parser,
                              yes_no_tokens=yes_no_tokens, caption_tokens=caption_tokens, max_items=max_items,
                              n_boot=n_boot, seed=seed, progress=progress)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    log = getattr(media, "log", None)
    if log is not None:
        for preds in res.predictions.values():
            for r in preds:
                info = log.get(str(r["video_id"]), {})
                r["audio_source"] = info.get("audio_source")
                if info.get("note"):
                    r["media_note"] = info["note"]
        for s in res.skipped:
            info = log.get(str(s["video_id"]), {})
            s.update({k: info[k] for k in ("video", "audio") if k in info})
    if out is not None:
        res.save(out)
        with open(os.path.join(out, "media.json"), "w") as f:
            json.dump(list(log.values()) if log is not None else [], f, indent=1)
    return res
