"""Raw media to Qwen2.5-Omni model inputs, equal to Hugging Face's processors, without torchvision.

    from avlens.data.media import prepare_media
    batch = prepare_media(model, "<|vision_bos|><|VIDEO|><|vision_eos|> What is making the sound?",
                          video=frames, audio=waveform, use_audio_in_video=True)
    # == model.prepare(**Qwen2_5OmniProcessor(...)(text=..., videos=..., audio=...))

* `audio_features`: waveforms (16 kHz, mono) -> Whisper 128-bin log-mel features, padded as
  `Qwen2_5OmniProcessor` pads them: to the extractor's 30 s (`padding="max_length"`), with a
  `feature_attention_mask` saying which frames are real (the model keeps only those). Padding to
  the longest item instead (`padding="longest"`) changes the last frames of each audio.
* `image_patches`: images -> Qwen2.5-VL patches `[n_patches, C * T * P * P]` and
  `image_grid_thw`, equal to `Qwen2VLImageProcessorPil` (same `smart_resize`, Pillow's
  fixed-point bicubic resampling replicated in numpy, rescale, CLIP normalisation, patch order).
* `video_patches`: frames `[T, H, W, 3]` -> patches, `video_grid_thw` and
  `video_second_per_grid`, equal to `Qwen2VLVideoProcessor` run on the CPU (torchvision resizes
  uint8 frames with `torch.nn.functional.interpolate(..., "bicubic", antialias=True)`, which is
  what this module calls), the frame count padded to a multiple of the temporal patch by
  repeating the last frame.
* `expand_placeholders` / `expand_placeholder_text`: one `<|AUDIO|>`, `<|IMAGE|>` or `<|VIDEO|>`
  per media item -> as many placeholders as the encoder outputs tokens; with
  `use_audio_in_video`, `<|VIDEO|>` becomes `<|audio_bos|>` [video chunk][audio chunk]...
  `<|audio_eos|>` in 2-second chunks, as the processor's `replace_video_with_audio_token` does.
* `media_inputs` (the processor outputs as a dict) and `prepare_media` (`model.prepare` of them).

"Zero the audio" or "zero the video" (unimodal-dominance tests) means: zero the raw waveform or
frames, then extract features, e.g. `prepare_media(model, text, audio=np.zeros_like(wave), ...)`.
The layout (and so every position id) stays the same as the clean batch's.

Media items are numbered across a batch in prompt order (sample 0 first), as the processor does.
With `use_audio_in_video`, each video's audio track is the next waveform of `audio` at the video's
place in that order (a standalone `<|AUDIO|>` before the video takes the waveform before it).
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "IMAGE_MIN_PIXELS",
    "IMAGE_MAX_PIXELS",
    "VIDEO_MIN_PIXELS",
    "VIDEO_MAX_PIXELS",
    "smart_resize",
    "pil_bicubic_resize",
    "whisper_feature_extractor",
    "audio_features",
    "image_patches",
    "video_patches",
    "audio_token_count",
    "chunked_index",
    "placeholder_block",
    "expand_placeholders",
    "expand_placeholder_text",
    "media_inputs",
    "prepare_media",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: `Qwen2VLImageProcessor`'s default pixel budget for images.
IMAGE_MIN_PIXELS = 56 * 56
IMAGE_MAX_PIXELS = 28 * 28 * 1280
#: `Qwen2_5OmniProcessor`'s default pixel budget for video frames (its `videos_kwargs["size"]`,
#: which overrides the video processor's own).
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28

_KINDS = ("audio", "video", "image")
_PLACEHOLDER_STRINGS = {
    "audio_token_id": "<|AUDIO|>",
    "video_token_id": "<|VIDEO|>",
    "image_token_id": "<|IMAGE|>",
    "audio_start_token_id": "<|audio_bos|>",
    "audio_end_token_id": "<|audio_eos|>",
    "vision_start_token_id": "<|vision_bos|>",
    "vision_end_token_id": "<|vision_eos|>",
}
_TOKENIZER_ATTRS = {
    "audio_token_id": "audio_token",
    "video_token_id": "video_token",
    "image_token_id": "image_token",
    "audio_start_token_id": "audio_bos_token",
    "audio_end_token_id": "audio_eos_token",
    "vision_start_token_id": "vision_bos_token",
    "vision_end_token_id": "vision_eos_token",
}


# ============================================================================================ audio


_EXTRACTORS: dict[tuple, Any] = {}


def whisper_feature_extractor(n_mels: int = 128, sampling_rate: int = 16000):
    """A (cached) `transformers.WhisperFeatureExtractor(feature_size=n_mels)`: 25 ms windows,
    10 ms hop, 30 s chunk. Pass your checkpoint's own extractor where it differs."""
    from transformers import WhisperFeatureExtractor

    key = (n_mels, sampling_rate)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=sampling_rate)
    return _EXTRACTORS[key]


def _as_waveform(x, i: int) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise ValueError(
            f"audio #{i} has shape {tuple(x.shape)}; expected a 1-D mono waveform (mix stereo down "
            "first, e.g. wave.mean(-1)); pass several waveforms as a list."
        )
    if x.size == 0:
        raise ValueError(f"audio #{i} is empty")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"audio #{i} has dtype {x.dtype}; pass float samples in [-1, 1] (for int16 PCM: wave / 32768)"
        )
    return x.astype(np.float32)


def _as_waveform_list(waveforms) -> list[np.ndarray]:
    if isinstance(waveforms, (list, tuple)):
        if len(waveforms) and np.isscalar(waveforms[0]):
            return [_as_waveform(np.asarray(waveforms, dtype=np.float32), 0)]
        return [_as_waveform(w, i) for i, w in enumerate(waveforms)]
    # a 2-D array is rejected by _as_waveform (stereo [samples, 2] is the usual mistake): pass
    # several waveforms as a list
    return [_as_waveform(waveforms, 0)]


def audio_features(
    waveforms,
    sampling_rate: int = 16000,
    feature_extractor=None,
    n_mels: int = 128,
    trim: bool = False,
) -> tuple[Tensor, Tensor]:
    """Waveforms -> `(input_features [n, n_mels, F], feature_attention_mask [n, F])`.

    Exactly the feature-extractor call of `Qwen2_5OmniProcessor`:
    `feature_extractor(audio, sampling_rate=16000, padding="max_length",
    return_attention_mask=True)`: every waveform is zero-padded to the extractor's
    `n_samples` (30 s), and longer ones are cut there (truncation, as HF does; a warning
    says so); `F` is `nb_max_frames` (3000), and the mask marks the `ceil(len(wave) / hop)` real
    frames. `trim=True` cuts the padded frames off after extraction (to the longest real
    length): the model uses only the masked frames, so its outputs do not change.

    Args:
        waveforms: one 1-D float waveform (numpy or torch), or a list of them.
        sampling_rate: of the waveforms; must be the extractor's (16 kHz): resample first.
        feature_extractor: a `WhisperFeatureExtractor` (e.g. loaded from a checkpoint); default
            `WhisperFeatureExtractor(feature_size=n_mels)`.
    """
    fe = feature_extractor if feature_extractor is not None else whisper_feature_extractor(n_mels)
    if sampling_rate != fe.sampling_rate:
        raise ValueError(
            f"the waveforms are sampled at {sampling_rate} Hz but the feature extractor expects "
            f"{fe.sampling_rate} Hz: resample them first (e.g. with numpy/scipy or torchaudio)."
        )
    waves = _as_waveform_list(waveforms)
    if not waves:
        raise ValueError("no waveform given")
    for i, w in enumerate(waves):
        if w.shape[0] > fe.n_samples:
            warnings.warn(
                f"audio #{i} lasts {w.shape[0] / sampling_rate:.1f} s; the feature extractor keeps the "
                f"first {fe.n_samples / sampling_rate:.0f} s (as Hugging Face's processor does)."
            )
    out = fe(waves, sampling_rate=sampling_rate, padding="max_length", return_attention_mask=True, return_tensors="pt")
    feats = out["input_features"].to(torch.float32)
    mask = out["attention_mask"].to(torch.long)
    if trim:
        f = int(mask.sum(-1).max())
        feats, mask = feats[..., :f].contiguous(), mask[:, :f].contiguous()
    return feats, mask


def audio_token_count(n_frames: int) -> int:
    """Audio tokens from `n_frames` valid mel frames (10 ms hop): `((F - 1) // 2 + 1 - 2) // 2 + 1`."""
    return ((int(n_frames) - 1) // 2 + 1 - 2) // 2 + 1


# ============================================================================================ vision


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 14 * 14 * 4 * 1280):
    """Hugging Face's Qwen2-VL `smart_resize`: the size nearest to (height, width) whose sides are
    multiples of `factor` and whose area lies in [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit resampling (Resample.c)


def _pil_bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(
        x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0, np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0)
    )


def _pil_coefficients(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bicubic filter, as a dense
    `[out_size, in_size]` matrix of fixed-point integers (stored as float64, exact)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    inv_filterscale = 1.0 / filterscale
    out = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        w = _pil_bicubic((np.arange(xmin, xmax) - center + 0.5) * inv_filterscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        out[xx, xmin:xmax] = w
    # (int)(x * 2^22 + 0.5) for x >= 0, (int)(x * 2^22 - 0.5) for x < 0: round half away from 0
    return np.trunc(out * (1 << _PRECISION_BITS) + np.where(out < 0, -0.5, 0.5))


def _clip8(acc: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(acc / (1 << _PRECISION_BITS)), 0, 255)


def pil_bicubic_resize(image: np.ndarray, height: int, width: int, pass_order: str = "pillow13") -> np.ndarray:
    """Pillow's `Image.resize((width, height), BICUBIC)` of an 8-bit image `[..., H, W]` (any
    leading dims, e.g. channels), bit-exact: two separable passes with 22-bit fixed-point
    weights, each rounded and clipped to uint8. Returns uint8.

    `pass_order`: Pillow >= 13 runs the vertical pass first when the height shrinks by more than
    twice what the width shrinks (`H - h > 0 and H - h > 2 * (W - w)`), else the horizontal
    pass first (`"pillow13"`, the default); Pillow < 13 always runs the horizontal pass first
    (`"horizontal"`). The order changes a few pixels by a few levels.
    """
    x = np.asarray(image)
    if x.dtype != np.uint8:
        raise TypeError(f"pil_bicubic_resize takes uint8 images, got {x.dtype}")
    if pass_order not in ("pillow13", "horizontal"):
        raise ValueError(f"pass_order must be 'pillow13' or 'horizontal', got {pass_order!r}")
    h0, w0 = x.shape[-2:]
    half = float(1 << (_PRECISION_BITS - 1))

    # float64 holds the integer sums exactly (|sum| < 2^53 for any realistic image)
    def horizontal(y):
        return _clip8(y @ _pil_coefficients(w0, width).T + half) if width != w0 else y

    def vertical(y):
        if height == h0:
            return y
        k = _pil_coefficients(h0, height)
        return _clip8(np.swapaxes(np.swapaxes(y, -1, -2) @ k.T, -1, -2) + half)

    y = x.astype(np.float64)
    vertical_first = pass_order == "pillow13" and (h0 - height) > 0 and (h0 - height) > (w0 - width) * 2
    y = horizontal(vertical(y)) if vertical_first else vertical(horizontal(y))
    return y.astype(np.uint8)


def _to_uint8(x: np.ndarray, what: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if x.dtype == bool:
        return x.astype(np.uint8) * 255
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"{what}: integer pixel values must lie in [0, 255]; got [{x.min()}, {x.max()}]")
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if x.size and (np.isnan(x).any() or x.min() < 0.0 or x.max() > 1.0):
            raise ValueError(
                f"{what}: float pixel values must lie in [0, 1] (got [{np.nanmin(x):.3g}, {np.nanmax(x):.3g}]); "
                "pass uint8 arrays for values in [0, 255]."
            )
        # a float frame is quantised as a decoded 8-bit video frame would be
        return np.round(x.astype(np.float64) * 255.0).astype(np.uint8)
    raise TypeError(f"{what}: unsupported pixel dtype {x.dtype}")


def _channels_first(x: np.ndarray, what: str) -> np.ndarray:
    """`[..., H, W, C]` or `[..., C, H, W]` -> uint8 `[..., 3, H, W]` (grayscale repeated)."""
    if x.shape[-1] in (1, 3):
        x = np.moveaxis(x, -1, -3)
    elif x.shape[-3] not in (1, 3):
        if 4 in (x.shape[-1], x.shape[-3]):
            raise ValueError(f"{what} has 4 channels (RGBA?); pass RGB (drop or composite the alpha channel)")
        raise ValueError(f"{what} has shape {tuple(x.shape)}; expected [..., H, W, 3] (or [..., 3, H, W], or grayscale)")
    if x.shape[-3] == 1:
        x = np.repeat(x, 3, axis=-3)
    return _to_uint8(np.ascontiguousarray(x), what)


def _image_array(img, i: int) -> np.ndarray:
    if isinstance(img, Tensor):
        img = img.detach().cpu().numpy()
    if type(img).__module__.startswith("PIL."):
        img = np.asarray(img.convert("RGB"))
    x = np.asarray(img)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3:
        raise ValueError(f"image #{i} has shape {tuple(x.shape)}; expected [H, W, 3]")
    return _channels_first(x, f"image #{i}")  # [3, H, W]


def _image_list(images) -> list[np.ndarray]:
    if isinstance(images, (list, tuple)):
        return [_image_array(im, i) for i, im in enumerate(images)]
    if isinstance(images, (np.ndarray, Tensor)) and images.ndim == 4:
        return [_image_array(im, i) for i, im in enumerate(images)]
    return [_image_array(images, 0)]


def _patchify(frames, patch_size: int, temporal_patch_size: int, merge_size: int):
    """`[T, C, H, W]` (T a multiple of the temporal patch; numpy or torch) -> `[gt*gh*gw, C*tp*P*P]`
    in Qwen2-VL's order: (t, h/m, w/m, m_h, m_w) rows, (C, tp, P, P) columns."""
    t, c, h, w = frames.shape
    p, tp, m = patch_size, temporal_patch_size, merge_size
    gt, gh, gw = t // tp, h // p, w // p
    x = frames.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    order = (0, 3, 6, 4, 7, 2, 1, 5, 8)
    x = x.transpose(order) if isinstance(x, np.ndarray) else x.permute(order)
    return x.reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)


def _check_vision_params(patch_size, temporal_patch_size, merge_size):
    for name, v in (("patch_size", patch_size), ("temporal_patch_size", temporal_patch_size), ("merge_size", merge_size)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def image_patches(
    images,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    min_pixels: int = IMAGE_MIN_PIXELS,
    max_pixels: int = IMAGE_MAX_PIXELS,
    image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
    image_std: Sequence[float] = OPENAI_CLIP_STD,
    rescale_factor: float = 1 / 255,
    do_resize: bool = True,
) -> tuple[Tensor, Tensor]:
    """Images -> `(pixel_values [n_patches, 3 * T * P * P] float32, image_grid_thw [n, 3] long)`.

    Equal to `Qwen2VLImageProcessorPil(min_pixels=..., max_pixels=...)(images)`: each image is
    resized to `smart_resize(H, W, patch_size * merge_size, min_pixels, max_pixels)` with
    Pillow's bicubic filter (replicated bit-exactly in numpy, so Pillow is not needed),
    rescaled by 1/255 (in float64, then float32), normalised with `image_mean` / `image_std`
    (float32) and cut into patches; an image fills its temporal patch with `temporal_patch_size`
    copies of itself, so its grid is `[1, H / P, W / P]`.

    Args:
        images: one image `[H, W, 3]` (uint8 in [0, 255], or float in [0, 1], which is rounded
            to uint8 first; `[3, H, W]` and grayscale `[H, W]` work too; torch tensors and PIL
            images too), a list of them, or an array `[N, H, W, 3]`.
    """
    _check_vision_params(patch_size, temporal_patch_size, merge_size)
    factor = patch_size * merge_size
    mean = np.asarray(image_mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(image_std, dtype=np.float32).reshape(-1, 1, 1)
    patches, grids = [], []
    for i, img in enumerate(_image_list(images)):
        h, w = img.shape[-2:]
        if do_resize:
            rh, rw = smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
            img = pil_bicubic_resize(img, rh, rw) if (rh, rw) != (h, w) else img
        elif h % factor or w % factor:
            raise ValueError(f"image #{i} is {h}x{w}; with do_resize=False both sides must be multiples of {factor}")
        x = (img.astype(np.float64) * rescale_factor).astype(np.float32)
        x = (x - mean) / std
        frames = np.broadcast_to(x[None], (temporal_patch_size,) + x.shape)
        p, (gt, gh, gw) = _patchify(frames, patch_size, temporal_patch_size, merge_size)
        patches.append(p)
        grids.append([gt, gh, gw])
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(patches, 0))), torch.tensor(grids, dtype=torch.long)


def _video_array(v, i: int) -> np.ndarray:
    if isinstance(v, Tensor):
        v = v.detach().cpu().numpy()
    if isinstance(v, (list, tuple)):  # a list of frames
        v = np.stack([np.asarray(f.detach().cpu().numpy() if isinstance(f, Tensor) else f) for f in v])
    x = np.asarray(v)
    if x.ndim == 3:  # grayscale frames [T, H, W]
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"video #{i} has shape {tuple(x.shape)}; expected frames [T, H, W, 3]")
    if x.shape[0] == 0:
        raise ValueError(f"video #{i} has no frames")
    return _channels_first(x, f"video #{i}")  # [T, 3, H, W]


def _video_list(videos) -> list[np.ndarray]:
    if isinstance(videos, (np.ndarray, Tensor)):
        if videos.ndim == 5:
            return [_video_array(v, i) for i, v in enumerate(videos)]
        return [_video_array(videos, 0)]
    if isinstance(videos, (list, tuple)):
        if not videos:
            return []
        first = videos[0]
        if isinstance(first, (list, tuple)) or getattr(first, "ndim", 0) >= 4:
            return [_video_array(v, i) for i, v in enumerate(videos)]  # several videos
        return [_video_array(videos, 0)]  # a list of frames: one video
    raise TypeError(f"unsupported video input {type(videos).__name__}; pass frames [T, H, W, 3] or a list of videos")


def video_patches(
    videos,
    fps: Union[float, Sequence[float]] = 2.0,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
    image_std: Sequence[float] = OPENAI_CLIP_STD,
    rescale_factor: float = 1 / 255,
    resize: str = "torch",
    do_resize: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Frames -> `(pixel_values_videos [n_patches, 3 * T * P * P] float32, video_grid_thw [n, 3]
    long, video_second_per_grid [n] float32)`.

    Equal to `Qwen2VLVideoProcessor` (no frame sampling, as `Qwen2_5OmniProcessor` calls it) plus
    the processor's `video_second_per_grid = temporal_patch_size / fps`: every frame is resized
    to `smart_resize(H, W, patch_size * merge_size, min_pixels, max_pixels)`, normalised with
    the rescale fused into mean and std (`(x - 255 * mean) / (255 * std)` in float32, as HF's
    torch backend does), the frame count padded to a multiple of `temporal_patch_size` by
    repeating the last frame, and cut into patches.

    Args:
        videos: one video, frames `[T, H, W, 3]` (uint8, or float in [0, 1] rounded to uint8;
            `[T, 3, H, W]` works too), already sampled at `fps` frames per second; or a list of
            videos, or an array `[N, T, H, W, 3]`.
        fps: frames per second of each video (one value for all, or one per video).
        resize: `"torch"` (default): `torch.nn.functional.interpolate(uint8, bicubic,
            antialias=True)`, which is what torchvision's resize runs for uint8 frames on the CPU,
            so the result equals `Qwen2VLVideoProcessor`'s. `"pil"`: Pillow's bicubic, as the
            image processor resizes. Where Pillow runs its horizontal pass first, the two
            differ by at most two 8-bit levels at about 1 % of the pixels (random-noise frames);
            where Pillow >= 13 runs the vertical pass first (the height shrinking by more than
            twice what the width shrinks), differences on noise reach ~20 levels.
    """
    _check_vision_params(patch_size, temporal_patch_size, merge_size)
    if resize not in ("torch", "pil"):
        raise ValueError(f"resize must be 'torch' or 'pil', got {resize!r}")
    vids = _video_list(videos)
    if not vids:
        raise ValueError("no video given")
    fps_list = [float(f) for f in fps] if isinstance(fps, (list, tuple, np.ndarray, Tensor)) else [float(fps)] * len(vids)
    if len(fps_list) != len(vids):
        raise ValueError(f"{len(fps_list)} fps values for {len(vids)} videos; pass one per video or a single value")
    if any(not f > 0 for f in fps_list):
        raise ValueError(f"fps must be positive, got {fps_list}")
    factor = patch_size * merge_size
    mean = torch.tensor(list(image_mean)) * (1.0 / rescale_factor)
    std = torch.tensor(list(image_std)) * (1.0 / rescale_factor)
    patches, grids = [], []
    for i, v in enumerate(vids):
        h, w = v.shape[-2:]
        x = torch.from_numpy(v)
        if do_resize:
            rh, rw = smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
            if (rh, rw) != (h, w):
                if resize == "torch":
                    x = torch.nn.functional.interpolate(
                        x.contiguous(), size=[rh, rw], mode="bicubic", align_corners=False, antialias=True
                    )
                else:
                    x = torch.from_numpy(pil_bicubic_resize(v, rh, rw))
        elif h % factor or w % factor:
            raise ValueError(f"video #{i} is {h}x{w}; with do_resize=False both sides must be multiples of {factor}")
        x = (x.to(torch.float32) - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
        if pad := -x.shape[0] % temporal_patch_size:
            x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)], 0)
        p, (gt, gh, gw) = _patchify(x, patch_size, temporal_patch_size, merge_size)
        patches.append(p)
        grids.append([gt, gh, gw])
    spg = torch.tensor([temporal_patch_size / f for f in fps_list], dtype=torch.float32)
    return torch.cat(patches, 0).contiguous(), torch.tensor(grids, dtype=torch.long), spg


# ====================================================================================== placeholders


def chunked_index(token_indices, tokens_per_chunk: int) -> list[tuple[int, int]]:
    """`Qwen2_5OmniProcessor.get_chunked_index`: split monotone time indices into chunks of
    `tokens_per_chunk`; the chunk counter advances by one per boundary crossed."""
    out, start, current = [], 0, 1
    for i, v in enumerate(token_indices):
        if v >= current * tokens_per_chunk:
            out.append((start, i))
            start = i
            current += 1
    out.append((start, len(token_indices)))
    return out


def _grid(g) -> tuple[int, int, int]:
    g = [int(x) for x in (g.tolist() if isinstance(g, (Tensor, np.ndarray)) else g)]
    if len(g) != 3:
        raise ValueError(f"a grid is (t, h, w); got {g}")
    return g[0], g[1], g[2]


def placeholder_block(
    kind: str,
    token_ids_cfg: dict,
    n_audio_frames: Optional[int] = None,
    grid_thw=None,
    second_per_grid: Optional[float] = None,
    merge_size: int = 2,
    position_id_per_seconds: float = 25,
    seconds_per_chunk: float = 2.0,
) -> list[int]:
    """The ids that replace ONE placeholder token of a media item (delimiters excluded; for
    `"audio_in_video"` the `<|audio_bos|>` ... `<|audio_eos|>` that replace `<|VIDEO|>`).

    `kind`: `"audio"` (needs `n_audio_frames`), `"image"` / `"video"` (need `grid_thw`), or
    `"audio_in_video"` (needs all three and `second_per_grid`), computed as
    `Qwen2_5OmniProcessor.replace_*_token` does (time indices in float64, not truncated).
    """
    t = token_ids_cfg
    m2 = merge_size**2
    if kind == "audio":
        return [t["audio_token_id"]] * audio_token_count(n_audio_frames)
    if kind in ("image", "video"):
        gt, gh, gw = _grid(grid_thw)
        return [t[f"{kind}_token_id"]] * (gt * gh * gw // m2)
    if kind != "audio_in_video":
        raise ValueError(f"unknown placeholder kind {kind!r}")
    gt, gh, gw = _grid(grid_thw)
    h, w = gh // merge_size, gw // merge_size
    v_idx = np.broadcast_to(np.arange(gt).reshape(-1, 1, 1), (gt, h, w)).reshape(-1)
    v_idx = v_idx * float(second_per_grid) * position_id_per_seconds
    a_idx = np.arange(audio_token_count(n_audio_frames))
    per_chunk = int(position_id_per_seconds * seconds_per_chunk)
    vc, ac = chunked_index(v_idx, per_chunk), chunked_index(a_idx, per_chunk)
    out = [t["audio_start_token_id"]]
    for j in range(max(len(vc), len(ac))):
        if j < len(vc):
            out += [t["video_token_id"]] * (vc[j][1] - vc[j][0])
        if j < len(ac):
            out += [t["audio_token_id"]] * (ac[j][1] - ac[j][0])
    out.append(t["audio_end_token_id"])
    return out


class _Items:
    """Per-item replacement blocks, consumed in prompt order across a batch."""

    def __init__(self, token_ids_cfg, audio_lengths, video_grids, second_per_grid, image_grids,
                 use_audio_in_video, merge_size, position_id_per_seconds, seconds_per_chunk, rule=None):
        self.t = token_ids_cfg
        self.rule = rule or placeholder_block
        self.audio = [int(x) for x in _as_list(audio_lengths)]
        self.video = [_grid(g) for g in _as_list(video_grids)]
        self.image = [_grid(g) for g in _as_list(image_grids)]
        spg = _as_list(second_per_grid)
        if self.video and use_audio_in_video and len(spg) != len(self.video):
            raise ValueError(
                f"use_audio_in_video needs one second_per_grid per video ({len(self.video)} videos, {len(spg)} values)"
            )
        self.spg = [float(x) for x in spg]
        self.aiv = use_audio_in_video
        self.kw = dict(merge_size=merge_size, position_id_per_seconds=position_id_per_seconds, seconds_per_chunk=seconds_per_chunk)
        self.used = {"audio": 0, "video": 0, "image": 0}

    def _take(self, kind: str) -> int:
        store = getattr(self, kind)
        i = self.used[kind]
        if i >= len(store):
            extra = " (each video's audio track counts as one audio)" if kind == "audio" and self.aiv else ""
            raise ValueError(
                f"the prompt has more {kind} placeholders than {kind} inputs ({len(store)} given{extra}). "
                f"Write ONE {_PLACEHOLDER_STRINGS[kind + '_token_id']} per {kind} item; was the prompt already expanded?"
            )
        self.used[kind] = i + 1
        return i

    def block(self, kind: str) -> list[int]:
        if kind == "audio":
            return self.rule("audio", self.t, n_audio_frames=self.audio[self._take("audio")], **self.kw)
        if kind == "image":
            return self.rule("image", self.t, grid_thw=self.image[self._take("image")], **self.kw)
        vi = self._take("video")
        if not self.aiv:
            return self.rule("video", self.t, grid_thw=self.video[vi], **self.kw)
        ai = self._take("audio")
        return self.rule(
            "audio_in_video", self.t, n_audio_frames=self.audio[ai], grid_thw=self.video[vi],
            second_per_grid=self.spg[vi], **self.kw,
        )

    def finish(self):
        for kind in _KINDS:
            n = len(getattr(self, kind))
            if self.used[kind] != n:
                what = f"{_PLACEHOLDER_STRINGS[kind + '_token_id']} placeholders"
                if kind == "audio" and self.aiv:
                    what += " plus audio-in-video <|VIDEO|> placeholders"
                raise ValueError(f"{n} {kind} inputs but {self.used[kind]} {what} in the prompt(s); pass one input per placeholder")


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, Tensor):
        return x.tolist()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if np.isscalar(x):
        return [x]
    return list(x)


def _nested(token_ids) -> tuple[list[list[int]], bool]:
    if isinstance(token_ids, Tensor):
        token_ids = token_ids.tolist()
    if isinstance(token_ids, np.ndarray):
        token_ids = token_ids.tolist()
    token_ids = list(token_ids)
    if token_ids and isinstance(token_ids[0], (list, tuple, Tensor, np.ndarray)):
        return [[int(x) for x in (r.tolist() if isinstance(r, (Tensor, np.ndarray)) else r)] for r in token_ids], True
    return [[int(x) for x in token_ids]], False


def expand_placeholders(
    token_ids,
    token_ids_cfg: dict,
    audio_lengths=None,
    video_grids=None,
    second_per_grid=None,
    image_grids=None,
    use_audio_in_video: bool = False,
    merge_size: int = 2,
    position_id_per_seconds: float = 25,
    seconds_per_chunk: float = 2.0,
    placeholder_rule=None,
):
    """Expand ONE placeholder token per media item into the ids `Qwen2_5OmniProcessor` writes
    (another family's processor with `placeholder_rule`, a function like `placeholder_block`).

    Every `<|AUDIO|>` becomes `audio_token_count(frames)` `<|AUDIO|>`, every `<|IMAGE|>` /
    `<|VIDEO|>` `t * h * w / merge_size**2` copies; with `use_audio_in_video`, every
    `<|VIDEO|>` (which must sit between `<|vision_bos|>` and `<|vision_eos|>`) becomes
    `<|audio_bos|>` [video chunk][audio chunk]... `<|audio_eos|>` (2-second chunks) and takes
    the next audio as its track. Other ids are kept.

    Args:
        token_ids: one prompt (list of ids / 1-D tensor) or several (list of lists; no padding).
        token_ids_cfg: the placeholder and delimiter ids (`model.cfg.token_ids`: keys
            `audio_token_id`, `video_token_id`, `image_token_id`, `audio_start_token_id`,
            `audio_end_token_id`, `vision_start_token_id`, `vision_end_token_id`).
        audio_lengths: valid mel frames per audio (`feature_attention_mask.sum(-1)`), in prompt
            order across the batch.
        video_grids / image_grids: `[n, 3]` grids (t, h, w in patches).
        second_per_grid: per video (needed with `use_audio_in_video`).

    Returns the expanded ids, nested like `token_ids` (list of ints, or list of lists).
    """
    rows, batched = _nested(token_ids)
    t = token_ids_cfg
    ids = {t[f"{k}_token_id"]: k for k in _KINDS}
    items = _Items(t, audio_lengths, video_grids, second_per_grid, image_grids, use_audio_in_video,
                   merge_size, position_id_per_seconds, seconds_per_chunk, rule=placeholder_rule)
    out = []
    for r, row in enumerate(rows):
        new: list[int] = []
        for j, tok in enumerate(row):
            kind = ids.get(tok)
            if kind is None:
                new.append(tok)
                continue
            if kind == "video" and use_audio_in_video:
                if j == 0 or j + 1 >= len(row) or row[j - 1] != t["vision_start_token_id"] or row[j + 1] != t["vision_end_token_id"]:
                    raise ValueError(
                        f"prompt {r}, position {j}: with use_audio_in_video the <|VIDEO|> placeholder must sit "
                        "between <|vision_bos|> and <|vision_eos|> (the model reads the block that way)"
                    )
            new += items.block(kind)
        out.append(new)
    items.finish()
    return out if batched else out[0]


def _token_strings(tokenizer=None, token_ids_cfg: Optional[dict] = None, token_strings: Optional[dict] = None) -> dict:
    out = dict(_PLACEHOLDER_STRINGS)
    if tokenizer is not None:
        for key, attr in _TOKENIZER_ATTRS.items():
            s = getattr(tokenizer, attr, None)
            if not isinstance(s, str) and token_ids_cfg is not None and key in token_ids_cfg:
                s = tokenizer.convert_ids_to_tokens(int(token_ids_cfg[key]))
            if isinstance(s, str):
                out[key] = s
    if token_strings:
        out.update(token_strings)
    return out


def expand_placeholder_text(
    text,
    audio_lengths=None,
    video_grids=None,
    second_per_grid=None,
    image_grids=None,
    use_audio_in_video: bool = False,
    merge_size: int = 2,
    position_id_per_seconds: float = 25,
    seconds_per_chunk: float = 2.0,
    tokenizer=None,
    token_ids_cfg: Optional[dict] = None,
    token_strings: Optional[dict] = None,
    placeholder_rule=None,
):
    """The string version of `expand_placeholders`, as the processor's text replacement does.

    Placeholder strings come from `token_strings` (keys as in `token_ids_cfg`), else from the
    tokenizer (`tokenizer.audio_token`, ..., or the tokens of `token_ids_cfg`'s ids), else
    Qwen2.5-Omni's (`<|AUDIO|>`, `<|IMAGE|>`, `<|VIDEO|>`, `<|audio_bos|>`, ...). `text`: a string
    or a list of strings; returns the same nesting.
    """
    s = _token_strings(tokenizer, token_ids_cfg, token_strings)
    # work on ids standing for the strings, then map back
    fake = {k: -(i + 1) for i, k in enumerate(_PLACEHOLDER_STRINGS)}
    back = {v: s[k] for k, v in fake.items()}
    pattern = re.compile("|".join(re.escape(s[f"{k}_token_id"]) for k in _KINDS))
    inv = {s[f"{k}_token_id"]: fake[f"{k}_token_id"] for k in _KINDS}
    texts = [text] if isinstance(text, str) else list(text)
    rows = []
    for tx in texts:
        row: list = []
        last = 0
        for mt in pattern.finditer(tx):
            if mt.start() > last:
                row.append(tx[last : mt.start()])
            row.append(inv[mt.group(0)])
            last = mt.end()
        if last < len(tx):
            row.append(tx[last:])
        rows.append(row)
    # the use_audio_in_video check needs the delimiters as separate items
    vb, ve = s["vision_start_token_id"], s["vision_end_token_id"]
    items = _Items(fake, audio_lengths, video_grids, second_per_grid, image_grids, use_audio_in_video,
                   merge_size, position_id_per_seconds, seconds_per_chunk, rule=placeholder_rule)
    kinds = {fake[f"{k}_token_id"]: k for k in _KINDS}
    out = []
    for r, row in enumerate(rows):
        pieces = []
        for j, part in enumerate(row):
            if isinstance(part, str):
                pieces.append(part)
                continue
            kind = kinds[part]
            if kind == "video" and use_audio_in_video:
                before = row[j - 1] if j > 0 and isinstance(row[j - 1], str) else ""
                after = row[j + 1] if j + 1 < len(row) and isinstance(row[j + 1], str) else ""
                if not (before.endswith(vb) and after.startswith(ve)):
                    raise ValueError(
                        f"text {r}: with use_audio_in_video each {s['video_token_id']} must sit between {vb} and {ve}"
                    )
            pieces.append("".join(back[x] for x in items.block(kind)))
        out.append("".join(pieces))
    items.finish()
    return out[0] if isinstance(text, str) else out


# ============================================================================================ batch


def _model_params(model) -> dict:
    """Vision / audio / timing parameters of a Qwen2.5-Omni-style hooked model (defaults if absent)."""
    hf = getattr(model, "hf_config", None)
    vc = getattr(hf, "vision_config", None)
    ac = getattr(hf, "audio_config", None)
    return dict(
        patch_size=int(getattr(vc, "patch_size", 14)),
        temporal_patch_size=int(getattr(vc, "temporal_patch_size", 2)),
        merge_size=int(getattr(model, "spatial_merge_size", None) or getattr(vc, "spatial_merge_size", 2)),
        n_mels=int(getattr(ac, "num_mel_bins", 128)),
        position_id_per_seconds=getattr(model, "position_id_per_seconds", None) or 25,
        seconds_per_chunk=getattr(model, "seconds_per_chunk", None) or 2,
        placeholder_rule=getattr(model, "placeholder_rule", None),  # a family's own expansion
    )


def _vision_kwargs(min_pixels, max_pixels, extra: Optional[dict]) -> dict:
    kw = {}
    if min_pixels is not None:
        kw["min_pixels"] = min_pixels
    if max_pixels is not None:
        kw["max_pixels"] = max_pixels
    kw.update(extra or {})
    return kw


def media_inputs(
    text,
    token_ids_cfg: dict,
    audio=None,
    video=None,
    images=None,
    fps: Union[float, Sequence[float]] = 2.0,
    sampling_rate: int = 16000,
    use_audio_in_video: bool = False,
    *,
    tokenizer=None,
    pad_token_id: Optional[int] = None,
    padding_side: str = "left",
    feature_extractor=None,
    n_mels: int = 128,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    position_id_per_seconds: float = 25,
    seconds_per_chunk: float = 2.0,
    min_pixels: Optional[int] = None,
    max_pixels: Optional[int] = None,
    image_kwargs: Optional[dict] = None,
    video_kwargs: Optional[dict] = None,
    trim_audio: bool = False,
    placeholder_rule=None,
) -> dict[str, Any]:
    """Raw media + a prompt with one placeholder per item -> `Qwen2_5OmniProcessor`'s outputs.

    Returns a dict with `input_ids`, `attention_mask` (`[batch, pos]` long, padded on
    `padding_side`), and as present `input_features`, `feature_attention_mask`, `pixel_values`,
    `image_grid_thw`, `pixel_values_videos`, `video_grid_thw`, `video_second_per_grid`, plus
    `use_audio_in_video`: the keyword arguments of `model.prepare` and of the HF thinker.

    Args:
        text: a string or list of strings (needs `tokenizer`; placeholders written as the
            tokenizer's `audio_token` etc., e.g. `<|vision_bos|><|VIDEO|><|vision_eos|>`), or
            token ids: a list of ints or a list of lists (one per sample, unpadded).
        audio / video / images: one item or a list (in prompt order across the batch; with
            `use_audio_in_video`, a video's audio track sits at its video's place in `audio`).
            Audio and video items may be file paths (decoded with PyAV, `avlens.data.files`):
            audio is resampled to the extractor's rate, video frames are sampled at `fps` (the
            effective rate then sets `video_second_per_grid`), and with `use_audio_in_video` and
            no `audio` each video file's own audio track is used.
        min_pixels / max_pixels: pixel budget for images and video frames (defaults: the HF
            processors' own, `IMAGE_*_PIXELS` and `VIDEO_*_PIXELS`); `image_kwargs` /
            `video_kwargs` pass further arguments to `image_patches` / `video_patches`.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    from avlens.data.files import resolve_media_files

    fe_rate = feature_extractor.sampling_rate if feature_extractor is not None else 16000
    audio, video, fps, sampling_rate = resolve_media_files(audio, video, fps, sampling_rate, use_audio_in_video, fe_rate)
    vis = dict(patch_size=patch_size, temporal_patch_size=temporal_patch_size, merge_size=merge_size)
    out: dict[str, Any] = {}
    audio_lengths = video_grids = image_grids = spg = None
    if audio is not None:
        feats, fmask = audio_features(audio, sampling_rate=sampling_rate, feature_extractor=feature_extractor, n_mels=n_mels, trim=trim_audio)
        out["input_features"], out["feature_attention_mask"] = feats, fmask
        audio_lengths = fmask.sum(-1).tolist()
    if images is not None:
        pv, grid = image_patches(images, **vis, **_vision_kwargs(min_pixels, max_pixels, image_kwargs))
        out["pixel_values"], out["image_grid_thw"] = pv, grid
        image_grids = grid.tolist()
    if video is not None:
        pv, grid, spg_t = video_patches(video, fps=fps, **vis, **_vision_kwargs(min_pixels, max_pixels, video_kwargs))
        out["pixel_values_videos"], out["video_grid_thw"], out["video_second_per_grid"] = pv, grid, spg_t
        video_grids = grid.tolist()
        # the processor expands with the python float temporal_patch_size / fps (float64)
        n_v = grid.shape[0]
        fps_list = [float(f) for f in fps] if isinstance(fps, (list, tuple, np.ndarray, Tensor)) else [float(fps)] * n_v
        spg = [temporal_patch_size / f for f in fps_list]
    timing = dict(
        use_audio_in_video=use_audio_in_video, merge_size=merge_size,
        position_id_per_seconds=position_id_per_seconds, seconds_per_chunk=seconds_per_chunk,
        placeholder_rule=placeholder_rule,
    )
    media = dict(audio_lengths=audio_lengths, video_grids=video_grids, second_per_grid=spg, image_grids=image_grids)
    is_text = isinstance(text, str) or (isinstance(text, (list, tuple)) and len(text) > 0 and isinstance(text[0], str))
    if is_text:
        if tokenizer is None:
            raise ValueError("text given as strings needs a tokenizer (model.tokenizer, or pass token ids)")
        texts = [text] if isinstance(text, str) else list(text)
        expanded = expand_placeholder_text(texts, tokenizer=tokenizer, token_ids_cfg=token_ids_cfg, **media, **timing)
        rows = [list(r) for r in tokenizer(expanded)["input_ids"]]
    else:
        rows, _ = _nested(text)
        rows = expand_placeholders(rows, token_ids_cfg, **media, **timing)
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    if pad_token_id is None:
        pad_token_id = token_ids_cfg.get("pad_token_id", 0)
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        off = n - len(r) if padding_side == "left" else 0
        ids[i, off : off + len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, off : off + len(r)] = 1
    out = {"input_ids": ids, "attention_mask": mask, **out, "use_audio_in_video": use_audio_in_video}
    return out


def prepare_media(
    model,
    text,
    audio=None,
    video=None,
    images=None,
    fps: Union[float, Sequence[float]] = 2.0,
    sampling_rate: int = 16000,
    use_audio_in_video: bool = False,
    **kw,
):
    """Raw media -> `AVBatch`: `model.prepare(**media_inputs(...))`, the same batch as
    `model.prepare(**Qwen2_5OmniProcessor(...)(text=..., audio=..., videos=..., images=...))`.

    The patch size, temporal patch, merge size, mel bins, `position_id_per_seconds` and
    `seconds_per_chunk` come from the model; the placeholder ids from `model.cfg.token_ids`;
    the tokenizer (for string prompts) from `model.tokenizer`. Further keyword arguments go to
    `media_inputs` (`min_pixels`, `max_pixels`, `image_kwargs`, `video_kwargs`,
    `feature_extractor`, `padding_side`, `pad_token_id`, `tokenizer`, `trim_audio`).

    Zeroing a modality: pass zeroed raw media, e.g. `audio=np.zeros_like(wave)` or
    `video=np.zeros_like(frames)`; the layout stays that of the clean batch.
    """
    params = _model_params(model)
    for k in ("patch_size", "temporal_patch_size", "merge_size", "n_mels", "position_id_per_seconds", "seconds_per_chunk", "placeholder_rule"):
        kw.setdefault(k, params[k])
    kw.setdefault("tokenizer", getattr(model, "tokenizer", None))
    inputs = media_inputs(
        text, model.cfg.token_ids, audio=audio, video=video, images=images, fps=fps,
        sampling_rate=sampling_rate, use_audio_in_video=use_audio_in_video, **kw,
    )
    return model.prepare(**inputs)
