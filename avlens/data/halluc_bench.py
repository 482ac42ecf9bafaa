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

Media for real files: `FileMedia(root)` reads `videos/{id}.mp4` and `audios/{id}.wav` with
`avlens.data.files` (PyAV); a missing file raises `FileNotFoundError`, which the harness records and
skips.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from avlens.data import synth, tasks

__all__ = ["AVH_TASK_OF_MODALITY", "write_toy_benchmark", "ToyMedia", "FileMedia"]

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


class FileMedia:
    """video_id -> (waveform, frames, fps) from `root/videos/{id}.mp4` and `root/audios/{id}.wav`
    (PyAV; `avlens.data.files`). No audio file: the video's own audio track is used. A missing
    video raises FileNotFoundError (the harness records and skips the sample)."""

    def __init__(self, root: str, fps: float = 2.0, sampling_rate: int = 16000, video_pattern: str = "videos/{id}.mp4",
                 audio_pattern: Optional[str] = "audios/{id}.wav"):
        self.root, self.fps, self.sr, self.vp, self.ap = root, fps, sampling_rate, video_pattern, audio_pattern

    def __call__(self, video_id: str):
        from avlens.data.files import load_audio, load_video

        vpath = os.path.join(self.root, self.vp.format(id=video_id))
        if not os.path.exists(vpath):
            raise FileNotFoundError(f"missing video {vpath}")
        apath = os.path.join(self.root, self.ap.format(id=video_id)) if self.ap else None
        frames, fps = load_video(vpath, fps=self.fps)
        wave = load_audio(apath if apath and os.path.exists(apath) else vpath, self.sr)
        return np.asarray(wave, dtype=np.float32), frames, fps
