"""Audio and video files in, decoded with PyAV (FFmpeg), for the raw-media path (`prepare_media`).

    from avlens.data.files import load_audio, load_video
    wave = load_audio("clip.mp3")                       # float32 mono at 16 kHz, resampled
    frames, fps = load_video("clip.mp4", fps=2.0)       # uint8 [T, H, W, 3] at ~2 frames/s
    batch = model.prepare_media(text, video="clip.mp4", use_audio_in_video=True)  # paths work too

* `load_audio`: any container / codec FFmpeg reads (wav, flac, mp3, m4a, the audio track of a
  video file), any sample rate and channel count -> mono float32 in [-1, 1] at `sampling_rate`
  (FFmpeg's `swresample` for the rate; channels then averaged).
* `load_video`: frames sampled as qwen-vl-utils / qwen-omni-utils sample them for Qwen2.5-VL /
  Qwen2.5-Omni (`smart_nframes`, "fps" mode): `n = total_frames / native_fps * fps`, clamped to
  `[min_frames, min(max_frames, total_frames)]` and floored to a multiple of the temporal patch
  (2); frame indices `linspace(0, total - 1, n).round()`; the effective sampling rate
  `n / total_frames * native_fps` is returned, since the processor derives
  `video_second_per_grid = temporal_patch_size / fps` from it.
  Only the sampled frames are converted to RGB, so memory follows the result, not the clip.

A file that does not exist raises `FileNotFoundError`; one FFmpeg cannot decode (corrupt, not
media, no audio / video stream) raises `ValueError`; both name the file.
"""

from __future__ import annotations

import math
import os
from typing import Union

import numpy as np

PathLike = Union[str, os.PathLike]

FRAME_FACTOR = 2
MIN_FRAMES = 4
MAX_FRAMES = 768


def is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("decoding media files needs PyAV: pip install av (or avlens[media])") from e
    return av


def _open(path: PathLike, what: str):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} file {path!r} does not exist")
    av = _av()
    try:
        return av.open(path)
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise ValueError(f"could not open {what} file {path!r}: {e} (is it a media file FFmpeg can read?)") from e


def load_audio(path: PathLike, sampling_rate: int = 16000) -> np.ndarray:
    """The first audio stream of `path` as a mono float32 waveform at `sampling_rate` Hz."""
    av = _av()
    path = os.fspath(path)
    with _open(path, "audio") as container:
        if not container.streams.audio:
            raise ValueError(f"{path!r} has no audio stream")
        stream = container.streams.audio[0]
        # resample only the rate (planar float, channels kept): FFmpeg's own stereo -> mono
        # downmix scales by 1/sqrt(2) per channel, not by 1/2
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=int(sampling_rate))
        chunks = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):  # flush the resampler's delay line
                chunks.append(out.to_ndarray())
        except av.error.FFmpegError as e:
            raise ValueError(f"could not decode the audio of {path!r}: {e}") from e
    if not chunks or sum(c.shape[-1] for c in chunks) == 0:
        raise ValueError(f"{path!r} decoded to no audio samples")
    return np.concatenate(chunks, axis=-1).mean(0).astype(np.float32)  # [channels, samples] -> mono


def sample_frame_indices(total_frames: int, native_fps: float, fps: float, min_frames: int = MIN_FRAMES,
                         max_frames: int = MAX_FRAMES, frame_factor: int = FRAME_FACTOR) -> tuple[list[int], float]:
    """(frame indices, effective fps) by qwen-vl-utils' `smart_nframes` rule (module docstring)."""
    if total_frames < frame_factor:
        raise ValueError(f"the video has {total_frames} frames; at least {frame_factor} are needed")
    lo = math.ceil(min_frames / frame_factor) * frame_factor
    hi = math.floor(min(max_frames, total_frames) / frame_factor) * frame_factor
    n = total_frames / native_fps * fps
    n = min(min(max(n, lo), hi), total_frames)
    n = int(math.floor(n / frame_factor) * frame_factor)
    idx = np.round(np.linspace(0, total_frames - 1, n)).astype(int).tolist()
    return idx, n / total_frames * native_fps


def _to_rgb(frame) -> np.ndarray:
    """One decoded frame as uint8 RGB `[H, W, 3]` (the only conversion `load_video` makes)."""
    return frame.to_ndarray(format="rgb24")


def _frame_count_estimate(container, stream, rate: float) -> int:
    """The frame count the container states (`nb_frames`), else duration x rate; 0 if neither."""
    if stream.frames:
        return int(stream.frames)
    if stream.duration is not None and stream.time_base is not None:
        return int(round(float(stream.duration * stream.time_base) * rate))
    if container.duration:
        return int(round(container.duration / 1e6 * rate))
    return 0


def load_video(path: PathLike, fps: float = 2.0, min_frames: int = MIN_FRAMES, max_frames: int = MAX_FRAMES) -> tuple[np.ndarray, float]:
    """Frames of the first video stream of `path`, sampled at about `fps` frames per second:
    `(uint8 [T, H, W, 3] RGB, effective fps)`.

    Only the sampled frames are converted to RGB (memory ~ the result, not the clip). The
    indices come from the decoded frame count: the container's stated count (or duration x
    rate) picks them during one decoding pass, and if the pass decodes a different number of
    frames, a second pass converts the frames the true count picks."""
    av = _av()
    path = os.fspath(path)
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")

    def decode(wanted: set, kept: dict) -> int:
        """Decode every frame, converting those in `wanted` not yet in `kept`; the frame count."""
        with _open(path, "video") as container:
            stream = container.streams.video[0]
            n = 0
            try:
                for i, frame in enumerate(container.decode(stream)):
                    if i in wanted and i not in kept:
                        kept[i] = _to_rgb(frame)
                    n = i + 1
            except av.error.FFmpegError as e:
                raise ValueError(f"could not decode the video of {path!r}: {e}") from e
        return n

    with _open(path, "video") as container:
        if not container.streams.video:
            raise ValueError(f"{path!r} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        guess = _frame_count_estimate(container, stream, float(rate)) if rate is not None and float(rate) > 0 else 0
    kept: dict[int, np.ndarray] = {}
    wanted = set()
    if guess >= FRAME_FACTOR:
        wanted = set(sample_frame_indices(guess, float(rate), fps, min_frames, max_frames)[0])
    total = decode(wanted, kept)
    if total == 0:
        raise ValueError(f"{path!r} decoded to no video frames")
    if rate is None or float(rate) <= 0:
        raise ValueError(f"{path!r} does not say its frame rate; decode it yourself and pass frames with fps=")
    idx, eff = sample_frame_indices(total, float(rate), fps, min_frames, max_frames)
    kept = {i: kept[i] for i in idx if i in kept}
    if any(i not in kept for i in idx):  # the stated count was off: convert the right frames
        decode(set(idx), kept)
    return np.stack([kept[i] for i in idx]), eff


def resolve_media_files(audio, video, fps, sampling_rate: int, use_audio_in_video: bool, target_rate: int):
    """Replace file paths among `audio` / `video` items by decoded media, for `media_inputs`.

    Returns `(audio, video, fps, sampling_rate)`. Audio files are decoded at `target_rate` (the
    feature extractor's); video files at `fps` (per video), whose effective rates replace `fps`.
    With `use_audio_in_video` and no `audio`, each video file's own audio track is the audio."""
    video_paths = _items(video)
    if video is not None and any(is_path(v) for v in video_paths):
        fps_list = list(fps) if isinstance(fps, (list, tuple)) else [fps] * len(video_paths)
        if len(fps_list) != len(video_paths):
            raise ValueError(f"{len(fps_list)} fps values for {len(video_paths)} videos")
        decoded, eff = [], []
        for v, f in zip(video_paths, fps_list):
            if is_path(v):
                frames, f = load_video(v, fps=f)
                v = frames
            decoded.append(v)
            eff.append(f)
        if use_audio_in_video and audio is None:
            if not all(is_path(v) for v in video_paths):
                raise ValueError("use_audio_in_video with audio=None needs every video given as a file (its track is the audio)")
            audio = [load_audio(p, target_rate) for p in video_paths]
            sampling_rate = target_rate
        video, fps = decoded if len(decoded) > 1 or isinstance(video, (list, tuple)) else decoded[0], eff if len(eff) > 1 else eff[0]
    audio_items = _items(audio)
    if audio is not None and any(is_path(a) for a in audio_items):
        if any(not is_path(a) for a in audio_items) and sampling_rate != target_rate:
            raise ValueError(
                f"audio files are decoded at {target_rate} Hz but the waveforms beside them are at {sampling_rate} Hz: "
                "resample those waveforms, or pass files only"
            )
        audio = [load_audio(a, target_rate) if is_path(a) else a for a in audio_items]
        sampling_rate = target_rate
    return audio, video, fps, sampling_rate


def _items(x) -> list:
    """The media items of an argument that may be one item (array or path) or a list of them."""
    if x is None:
        return []
    if is_path(x):
        return [x]
    if isinstance(x, (list, tuple)) and x and any(is_path(i) for i in x):
        return list(x)
    return [x]
