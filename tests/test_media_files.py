"""Media files in (`avlens.data.files`, PyAV): clips the tests generate and encode themselves.

References:
* decoding: the samples / frames written (lossless codecs: wav, flac, FFV1, PNG; exact after
  16-bit quantisation), an analytic sine for resampling, a loose bound for lossy mp3 / H.264;
* features: `WhisperFeatureExtractor(feature_size=128)` called as the Omni processor calls it, on
  the decoded waveform, and `Qwen2VLImageProcessorPil` on the sampled frames (a clip whose
  sampled frames come in identical pairs is, per temporal patch, one image). avlens's own audio
  features use HF's `WhisperFeatureExtractor` inside, so the HF-vs-avlens audio feature check
  only shows the wiring (rate, padding, mask); the independent audio checks are the decoded
  samples against those written and the resampled sine against the analytic one;
* frame sampling: indices worked out by hand from qwen-vl-utils' `smart_nframes` rule.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from avlens.data import files as FL  # noqa: E402
from avlens.data import media as M  # noqa: E402

RATE = 16000
IDS = {"video_token_id": 9, "audio_token_id": 8, "image_token_id": 7, "audio_start_token_id": 10,
       "audio_end_token_id": 11, "vision_start_token_id": 12, "vision_end_token_id": 13}


def write_audio(path, wave, rate=RATE, codec="pcm_s16le"):
    """Encode a float waveform `[samples]` or `[channels, samples]` with PyAV."""
    x = np.atleast_2d(np.asarray(wave, np.float32))
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate, layout="mono" if x.shape[0] == 1 else "stereo")
        fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(x), format="fltp", layout=s.layout.name)
        fr.sample_rate = rate
        for p in list(s.encode(fr)) + list(s.encode(None)):
            c.mux(p)
    return str(path)


def write_video(path, frames, fps, codec="ffv1", pix_fmt="bgr0", audio=None, options=None):
    """Encode uint8 RGB frames `[T, H, W, 3]` (and a mono 16 kHz audio track) with PyAV."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if options:
            s.options = options
        a = c.add_stream("pcm_s16le", rate=RATE, layout="mono") if audio is not None else None
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
        if a is not None:
            fr = av.AudioFrame.from_ndarray(np.asarray(audio, np.float32)[None], format="fltp", layout="mono")
            fr.sample_rate = RATE
            for p in list(a.encode(fr)) + list(a.encode(None)):
                c.mux(p)
    return str(path)


def tone(seconds=1.3, rate=RATE, seed=0):
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    return (0.4 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1310 * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def hf_features(wave):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=128)
    out = fe([wave], sampling_rate=RATE, padding="max_length", return_attention_mask=True, return_tensors="pt")
    return out["input_features"], out["attention_mask"]


@pytest.mark.parametrize("codec,ext", [("pcm_s16le", "wav"), ("flac", "flac"), ("libmp3lame", "mp3")])
def test_audio_file_decodes_and_features_equal_whisper_extractor(tmp_path, codec, ext):
    wave = tone()
    path = write_audio(tmp_path / f"clip.{ext}", wave, codec=codec)
    got = FL.load_audio(path)
    assert got.dtype == np.float32 and got.ndim == 1
    if ext == "mp3":  # lossy: the decoded tone stays within a few % of the original (after the codec delay)
        assert abs(len(got) - len(wave)) < 2000
        snr = 10 * np.log10((wave**2).sum() / max(1e-12, ((got[: len(wave)] - wave[: len(got)]) ** 2).sum()))
        assert snr > 10 or np.corrcoef(got[:8000], wave[:8000])[0, 1] > 0.5
    else:  # lossless: the 16-bit samples written
        assert len(got) == len(wave)
        assert np.abs(got - np.round(wave * 32767) / 32768).max() <= 1.0 / 32768
    inputs = M.media_inputs([[1, 8, 2]], IDS, audio=path)  # the file path itself
    ref_feats, ref_mask = hf_features(got)
    assert torch.equal(inputs["feature_attention_mask"], ref_mask.long())
    assert (inputs["input_features"] - ref_feats).abs().max().item() <= 1e-4


def test_audio_at_44k_stereo_is_resampled_and_channels_averaged(tmp_path):
    r = 44100
    t = np.arange(int(1.0 * r)) / r
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = write_audio(tmp_path / "stereo.flac", np.stack([left, np.zeros_like(left)]), rate=r, codec="flac")
    got = FL.load_audio(path, sampling_rate=RATE)
    ref = 0.25 * np.sin(2 * np.pi * 440 * np.arange(len(got)) / RATE)  # mean of the two channels
    assert abs(len(got) - RATE) <= 1
    assert np.abs(got - ref)[64:-64].max() < 1e-3  # the resampler's filter settles within 4 ms


def test_frame_sampling_follows_smart_nframes_hand_worked():
    idx, eff = FL.sample_frame_indices(100, 25.0, 2.0)  # 4 s: 8 frames at 2 fps
    assert idx == [0, 14, 28, 42, 57, 71, 85, 99] and eff == pytest.approx(2.0)
    idx, eff = FL.sample_frame_indices(5, 25.0, 2.0)  # 0.2 s: at least 4 frames (floored to 2s)
    assert idx == [0, 1, 3, 4] and eff == pytest.approx(4 / 5 * 25)
    idx, _ = FL.sample_frame_indices(9, 3.0, 1.0)  # 3 s at 1 fps -> 3 -> min 4
    assert idx == [0, 3, 5, 8]
    with pytest.raises(ValueError, match="at least 2"):
        FL.sample_frame_indices(1, 25.0, 2.0)


def _two_image_clip(h=56, w=84, seed=1):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    return np.stack([a] * 4 + [b] * 4), a, b


@pytest.mark.parametrize("codec,pix,ext", [("ffv1", "bgr0", "mkv"), ("png", "rgb24", "mov")])
def test_video_file_frames_and_patches_equal_image_processor(tmp_path, codec, pix, ext):
    """8 frames at 4 fps (A x4, B x4) sampled at 2 fps -> frames 0, 2, 5, 7 = A A B B: two temporal
    patches, each the image processor's patches of A and of B."""
    pytest.importorskip("PIL")
    from transformers import Qwen2VLImageProcessorPil

    clip, a, b = _two_image_clip()
    path = write_video(tmp_path / f"clip.{ext}", clip, 4, codec=codec, pix_fmt=pix)
    frames, eff = FL.load_video(path, fps=2.0)
    assert eff == pytest.approx(2.0)
    assert np.array_equal(frames, clip[[0, 2, 5, 7]])
    budget = dict(min_pixels=56 * 56, max_pixels=56 * 84)
    inputs = M.media_inputs([[1, 9, 1]], IDS, video=path, fps=2.0, **budget)
    ref = Qwen2VLImageProcessorPil(**budget)(images=[a, b], return_tensors="pt")
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 6]]
    assert (inputs["pixel_values_videos"] - ref["pixel_values"]).abs().max().item() <= 1e-4
    assert inputs["video_second_per_grid"].tolist() == [1.0]


def test_video_file_audio_track_is_the_audio_in_video(tmp_path):
    clip, _, _ = _two_image_clip()
    wave = tone(seconds=2.0)
    path = write_video(tmp_path / "av.mkv", clip, 4, audio=wave)
    ids = IDS
    budget = dict(min_pixels=56 * 56, max_pixels=56 * 84)
    from_file = M.media_inputs([[1, 12, 9, 13, 2]], ids, video=path, fps=2.0, use_audio_in_video=True, **budget)
    track = FL.load_audio(path)
    assert np.abs(track - np.round(wave * 32767) / 32768).max() <= 1.0 / 32768
    ref_feats, ref_mask = hf_features(track)
    assert (from_file["input_features"] - ref_feats).abs().max().item() <= 1e-4
    assert torch.equal(from_file["feature_attention_mask"], ref_mask.long())
    frames, eff = FL.load_video(path, fps=2.0)
    by_hand = M.media_inputs([[1, 12, 9, 13, 2]], ids, video=frames, audio=track, fps=eff, use_audio_in_video=True, **budget)
    for k, v in by_hand.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, from_file[k]), k
    assert int((from_file["input_ids"] == 8).sum()) == M.audio_token_count(int(ref_mask.sum()))


def test_prepare_media_takes_a_video_file(tmp_path, hooked_model, hf_thinker):
    model = hooked_model("gqa2_hd16")
    clip, _, _ = _two_image_clip()
    path = write_video(tmp_path / "av.mkv", clip, 4, audio=tone(seconds=2.0))
    t = model.cfg.token_ids
    prompt = [[3, t["vision_start_token_id"], t["video_token_id"], t["vision_end_token_id"], 5]]
    budget = dict(min_pixels=56 * 56, max_pixels=56 * 84)
    batch = model.prepare_media(prompt, video=path, use_audio_in_video=True, **budget)
    inputs = M.media_inputs(prompt, t, video=FL.load_video(path)[0], audio=FL.load_audio(path), fps=2.0,
                            use_audio_in_video=True, **budget)
    with torch.no_grad():
        ref = hf_thinker("gqa2_hd16")(**inputs).logits
    hf_thinker("gqa2_hd16").model.rope_deltas = None
    assert (model(batch) - ref).abs().max().item() <= 1e-4


def test_lossy_h264_video_decodes_close_to_the_frames(tmp_path):
    rng = np.random.default_rng(2)
    blocks = rng.integers(0, 256, (8, 7, 21, 3), dtype=np.uint8)  # 8x4-pixel colour blocks survive 4:2:0
    smooth = np.repeat(np.repeat(blocks, 8, axis=1), 4, axis=2)
    path = write_video(tmp_path / "clip.mp4", smooth, 4, codec="libx264", pix_fmt="yuv420p", options={"crf": "10"})
    frames, _ = FL.load_video(path, fps=2.0)
    assert frames.shape == (4, 56, 84, 3)
    assert np.abs(frames.astype(int) - smooth[[0, 2, 5, 7]]).mean() < 8


def test_bad_files_raise_errors_naming_the_file(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        FL.load_audio(missing)
    bad = tmp_path / "corrupt.mp3"
    bad.write_bytes(b"not audio at all " * 50)
    with pytest.raises(ValueError, match="corrupt.mp3"):
        FL.load_audio(bad)
    with pytest.raises(ValueError, match="corrupt.mp3"):
        FL.load_video(bad)
    silent = write_video(tmp_path / "silent.mkv", _two_image_clip()[0], 4)
    with pytest.raises(ValueError, match="silent.mkv' has no audio stream"):
        M.media_inputs([[12, 9, 13]], IDS, video=silent, use_audio_in_video=True)
    audio_only = write_audio(tmp_path / "a.wav", tone())
    with pytest.raises(ValueError, match="a.wav' has no video stream"):
        FL.load_video(audio_only)
    with pytest.raises(FileNotFoundError, match="gone.mp4"):
        M.media_inputs([[9]], IDS, video=str(tmp_path / "gone.mp4"))


def _all_frames_then_sample(path, fps):
    """The previous `load_video`: every frame decoded to RGB, then the smart_nframes indices over
    the decoded count (the index rule is the hand-worked one tested above)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        allf = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        rate = float(s.average_rate or s.guessed_rate)
    idx, eff = FL.sample_frame_indices(len(allf), rate, fps)
    return np.stack([allf[i] for i in idx]), eff


@pytest.mark.parametrize("codec,pix,ext", [("ffv1", "bgr0", "mkv"), ("png", "rgb24", "mov"), ("mpeg4", "yuv420p", "ts")])
def test_load_video_converts_only_the_sampled_frames(tmp_path, monkeypatch, codec, pix, ext):
    """37 frames at 7 fps sampled at 2 fps -> 10 frames: identical to converting every frame and
    sampling after, with exactly 10 RGB conversions, also when the container's stated frame
    count is missing (mkv), estimated from the duration (ts), or wrong (forced below)."""
    clip = np.random.default_rng(3).integers(0, 256, (37, 48, 64, 3), dtype=np.uint8)
    path = write_video(tmp_path / f"clip.{ext}", clip, 7, codec=codec, pix_fmt=pix)
    ref, ref_eff = _all_frames_then_sample(path, 2.0)
    assert ref.shape[0] == 10
    calls = []
    real = FL._to_rgb
    monkeypatch.setattr(FL, "_to_rgb", lambda f: calls.append(1) or real(f))
    for stated in (None, 0, 20, 60):
        if stated is not None:
            monkeypatch.setattr(FL, "_frame_count_estimate", lambda *a, n=stated: n)
        calls.clear()
        frames, eff = FL.load_video(path, fps=2.0)
        assert np.array_equal(frames, ref) and eff == ref_eff, stated
        if stated is None:
            assert len(calls) == 10
        else:  # a wrong count costs a second pass, still converting only sampled frames
            assert len(calls) <= 10 + len(FL.sample_frame_indices(max(stated, 2), 7.0, 2.0)[0])
