"""Raw media -> model inputs (`avlens.data.media`) against Hugging Face's own processors.

References, by what they check:

* `WhisperFeatureExtractor(feature_size=128)` called as `Qwen2_5OmniProcessor._process_audio`
  calls it (`padding="max_length"`, `return_attention_mask=True`, 16 kHz);
* `Qwen2VLImageProcessorPil` and Pillow's `Image.resize` (need Pillow; skipped without it);
* `tests/fixtures/qwen_processors.npz`, written by the real `Qwen2VLVideoProcessor` and the real
  `Qwen2_5OmniProcessor` (with `load_audio_from_video`) under torchvision 0.29.1's Python code on
  the CPU (see `tests/fixtures/make_media_fixtures.py` for how and why);
* `tests/hf_reference.py`'s processor-style prompts and
  `avlens.families.qwen2_5_omni.media_placeholder_ids` for placeholder expansion;
* `model.prepare(**processor_outputs)` for `prepare_media`, and HF's `get_rope_index`.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import hf_reference as R
from avlens.data import media as M
from avlens.families.qwen2_5_omni import media_placeholder_ids
from fixtures import make_media_fixtures as F

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "qwen_processors.npz")
VARIANT = R.TINY_VARIANTS[0]["name"]  # the fixture tokenizer's ids are this variant's
TOKEN_KEYS = ("audio_token_id", "video_token_id", "image_token_id", "audio_start_token_id",
              "audio_end_token_id", "vision_start_token_id", "vision_end_token_id")


@pytest.fixture(scope="module")
def fx():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def raw():
    return F.media()


@pytest.fixture(scope="module")
def tok():
    return F.tiny_omni_tokenizer()


def _ids_cfg(model) -> dict:
    return dict(model.cfg.token_ids)


def _hf_audio(waves):
    """The feature-extractor call of `Qwen2_5OmniProcessor._process_audio`."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=128)
    return fe(waves, sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="pt")


def _waves():
    rng = np.random.default_rng(0)
    return [rng.normal(0, 0.1, n).astype(np.float32) for n in (19680, 8037, 40000)]


# ---------------------------------------------------------------------------------------- audio


def test_audio_features_equal_the_omni_processors_extractor_call():
    waves = _waves()
    feats, mask = M.audio_features(waves)
    ref = _hf_audio(waves)
    assert feats.shape == (3, 128, 3000) and mask.shape == (3, 3000)  # padded to 30 s
    assert torch.equal(feats, ref["input_features"])
    assert torch.equal(mask, ref["attention_mask"].long())
    assert mask.sum(-1).tolist() == [-(-len(w) // 160) for w in waves]  # ceil(samples / 160): 10 ms hop
    # torch / float64 / single inputs give the same; trim cuts the padded frames only
    f1, m1 = M.audio_features(torch.from_numpy(waves[1]).double())
    assert torch.equal(f1[0], feats[1]) and torch.equal(m1[0], mask[1])
    ft, mt = M.audio_features(waves, trim=True)
    assert ft.shape[-1] == 250 and torch.equal(ft, feats[..., :250]) and torch.equal(mt, mask[:, :250])


def test_longest_padding_would_change_the_last_frames():
    """Why `audio_features` pads to max_length as the processor does: with padding="longest",
    the longest waveform is not zero-padded, so its last frame differs (length a multiple of
    the hop) or disappears (else), which can change the number of audio tokens."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=128)
    rng = np.random.default_rng(1)
    for n, expect in ((32000, "differs"), (32123, "dropped")):
        waves = [rng.normal(0, 0.1, n).astype(np.float32), rng.normal(0, 0.1, 9000).astype(np.float32)]
        ours, mask = M.audio_features(waves)
        lo = fe(waves, sampling_rate=16000, padding="longest", return_attention_mask=True, return_tensors="pt")
        f_ours, f_lo = int(mask[0].sum()), int(lo["attention_mask"][0].sum())
        if expect == "dropped":
            assert f_lo == f_ours - 1
            assert torch.equal(ours[0, :, :f_lo], lo["input_features"][0, :, :f_lo])
        else:
            assert f_lo == f_ours
            diff = (ours[0, :, :f_ours] - lo["input_features"][0]).abs().amax(0)
            assert diff[-1] > 1e-3 and diff[:-1].max() == 0


def test_audio_input_errors():
    with pytest.raises(ValueError, match="resample"):
        M.audio_features(np.zeros(1600, np.float32), sampling_rate=22050)
    with pytest.raises(ValueError, match="mono"):
        M.audio_features(np.zeros((1600, 2), np.float32))
    with pytest.raises(TypeError, match="int16"):
        M.audio_features(np.zeros(1600, np.int16))
    with pytest.warns(UserWarning, match="keeps the\nfirst 30 s|first 30 s"):
        f, m = M.audio_features(np.zeros(16000 * 31, np.float32))
    assert int(m.sum()) == 3000


# ---------------------------------------------------------------------------------------- images

IMAGE_CASES = [  # (H, W, min_pixels, max_pixels)
    (50, 70, 56 * 56, 28 * 28 * 1280),  # upscaled to 56x84
    (37, 91, 56 * 56, 28 * 28 * 1280),
    (200, 300, 56 * 56, 56 * 84),  # downscaled
    (56, 84, 56 * 56, 28 * 28 * 1280),  # kept
    (140, 40, 56 * 56, 28 * 28 * 4),  # height shrinks, width grows: Pillow 13 resizes vertically first
    (97, 33, 3136, 1003520),
]


def test_image_patches_equal_qwen2vl_pil_image_processor():
    pytest.importorskip("PIL")
    from transformers import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(0)
    for h, w, mn, mx in IMAGE_CASES:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = Qwen2VLImageProcessorPil(min_pixels=mn, max_pixels=mx)(images=[img], return_tensors="pt")
        pv, grid = M.image_patches(img, min_pixels=mn, max_pixels=mx)
        assert torch.equal(grid, ref["image_grid_thw"]), (h, w)
        assert pv.shape == ref["pixel_values"].shape
        assert (pv - ref["pixel_values"]).abs().max() <= 1e-6, (h, w)
    # several images of different sizes in one call; grayscale, [3, H, W] and torch inputs
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((50, 70), (90, 60))]
    gray = rng.integers(0, 256, (45, 66), dtype=np.uint8)
    ip = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    ref = ip(images=imgs + [np.repeat(gray[..., None], 3, -1)], return_tensors="pt")
    pv, grid = M.image_patches([imgs[0], torch.from_numpy(imgs[1]).permute(2, 0, 1), gray], min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    assert torch.equal(grid, ref["image_grid_thw"]) and (pv - ref["pixel_values"]).abs().max() <= 1e-6


def test_float_images_are_rounded_to_8_bit():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    a = M.image_patches(img)
    b = M.image_patches(img.astype(np.float32) / 255)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.image_patches(img.astype(np.float32))
    with pytest.raises(ValueError, match="RGBA"):
        M.image_patches(np.zeros((50, 70, 4), np.uint8))


def test_pil_bicubic_resize_is_bit_exact():
    PIL = pytest.importorskip("PIL")
    from PIL import Image

    order = "pillow13" if int(PIL.__version__.split(".")[0]) >= 13 else "horizontal"
    rng = np.random.default_rng(3)
    for _ in range(60):
        h0, w0 = (int(x) for x in rng.integers(3, 90, 2))
        h, w = (int(x) for x in rng.integers(2, 120, 2))
        img = rng.integers(0, 256, (h0, w0, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))
        ours = M.pil_bicubic_resize(img.transpose(2, 0, 1), h, w, pass_order=order).transpose(1, 2, 0)
        assert np.array_equal(ours, ref), (h0, w0, h, w)


# ---------------------------------------------------------------------------------------- video


def test_video_patches_equal_qwen2vl_video_processor_fixture(fx, raw):
    """The fixture holds `Qwen2VLVideoProcessor`'s outputs (real HF + torchvision Python code)."""
    for i, (_, _, _, mn, mx) in enumerate(F.VIDEO_CASES):
        pv, grid, spg = M.video_patches(raw[f"vp_video{i}"], min_pixels=mn, max_pixels=mx)
        assert grid.tolist() == fx[f"vp{i}_video_grid_thw"].tolist()
        ref = F.decode_levels(fx[f"vp{i}_levels_videos"], "video")
        assert np.abs(pv.numpy() - ref).max() <= 1e-5, i
        assert torch.equal(spg, torch.tensor([1.0]))  # temporal_patch_size / fps = 2 / 2
    # two videos in one call: concatenated in order, fps per video
    a, b = raw["vp_video0"], raw["vp_video2"]
    pv, grid, spg = M.video_patches([a, torch.from_numpy(b)], fps=[2.0, 4.0], min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    ref = np.concatenate([F.decode_levels(fx["vp0_levels_videos"], "video"), F.decode_levels(fx["vp2_levels_videos"], "video")])
    assert np.abs(pv.numpy() - ref).max() <= 1e-5
    assert grid.tolist() == [fx["vp0_video_grid_thw"][0].tolist(), fx["vp2_video_grid_thw"][0].tolist()]
    assert spg.tolist() == [1.0, 0.5]


def test_static_clip_equals_the_image_processor_per_frame_pair():
    """A static clip (all frames identical) of 2k frames gives k temporal grids, and each
    temporal patch holds two identical frames: exactly how the image processor builds an
    image's single temporal patch (the image repeated temporal_patch_size times). So the clip's
    patches are the image's patches repeated k times, with grid [k, h, w]. An odd frame count
    is padded with the last frame, so 2k - 1 frames give the same. With resize="pil" this holds
    whatever the size; the default torch resize matches it exactly when no resizing is needed
    and within a few 8-bit levels otherwise (next test)."""
    pytest.importorskip("PIL")
    from transformers import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(4)
    for (h, w), n_frames, resize in (((50, 70), 6, "pil"), ((140, 40), 3, "pil"), ((56, 84), 4, "torch")):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 84)(images=[img], return_tensors="pt")
        clip = np.repeat(img[None], n_frames, 0)
        pv, grid, _ = M.video_patches(clip, min_pixels=56 * 56, max_pixels=56 * 84, resize=resize)
        k = (n_frames + 1) // 2
        assert grid.tolist() == [[k, *ref["image_grid_thw"][0, 1:].tolist()]]
        assert (pv - ref["pixel_values"].repeat(k, 1)).abs().max() <= 1e-5, (h, w, resize)


def test_torch_and_pil_resize_differ_by_at_most_two_levels():
    """The default video resize (torch, as torchvision) and Pillow's agree within two 8-bit
    levels where Pillow runs its horizontal pass first (here: both sides grow)."""
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (2, 50, 70, 3), dtype=np.uint8)
    a = M.video_patches(frames, min_pixels=56 * 56, max_pixels=56 * 84)[0]
    b = M.video_patches(frames, min_pixels=56 * 56, max_pixels=56 * 84, resize="pil")[0]
    one_level = 1 / (255 * min(M.OPENAI_CLIP_STD))
    assert (a - b).abs().max() <= 2 * one_level * 1.0001
    assert (a != b).float().mean() < 0.03


def test_video_input_forms():
    rng = np.random.default_rng(6)
    v = rng.integers(0, 256, (3, 28, 56, 3), dtype=np.uint8)
    ref = M.video_patches(v, min_pixels=28 * 56, max_pixels=28 * 56)
    for alt in (torch.from_numpy(v), list(v), v.transpose(0, 3, 1, 2), v.astype(np.float64) / 255, v[None]):
        out = M.video_patches(alt, min_pixels=28 * 56, max_pixels=28 * 56)
        assert all(torch.equal(x, y) for x, y in zip(out, ref))
    one = M.video_patches(v[:1], min_pixels=28 * 56, max_pixels=28 * 56)  # a single frame is padded to 2
    assert one[1].tolist() == [[1, 2, 4]]
    with pytest.raises(ValueError, match="fps"):
        M.video_patches([v, v], fps=[2.0])


# ---------------------------------------------------------------------------------------- placeholders


def _collapse(row: list[int], t: dict, use_audio_in_video: bool) -> list[int]:
    """A processor-expanded prompt back to one placeholder per media item."""
    A, V, I = t["audio_token_id"], t["video_token_id"], t["image_token_id"]
    a_bos, a_eos = t["audio_start_token_id"], t["audio_end_token_id"]
    v_bos = t["vision_start_token_id"]
    out, i = [], 0
    while i < len(row):
        if use_audio_in_video and row[i] == v_bos and i + 1 < len(row) and row[i + 1] == a_bos:
            j = row.index(a_eos, i)
            out += [v_bos, V]
            i = j + 1
        elif row[i] in (A, V, I):
            j = i
            while j < len(row) and row[j] == row[i]:
                j += 1
            out.append(row[i])
            i = j
        else:
            out.append(row[i])
            i += 1
    return out


@pytest.mark.parametrize("kind", R.KINDS)
def test_expand_placeholders_rebuilds_hf_reference_prompts(hf_thinker, kind):
    cfg = hf_thinker(VARIANT).config
    inputs, meta = R.make_inputs_and_meta(cfg, kind, batch=3)
    t = {k: getattr(cfg, k) for k in TOKEN_KEYS}
    aiv = meta["use_audio_in_video"]
    rows = [inputs["input_ids"][i][inputs["attention_mask"][i].bool()].tolist() for i in range(3)]
    collapsed = [_collapse(r, t, aiv) for r in rows]
    # audio in prompt order (a video's track at its video's place): the global list is that order
    expanded = M.expand_placeholders(
        collapsed, t,
        audio_lengths=[a["n_frames"] for a in meta["audios"]],
        video_grids=[v["grid_thw"] for v in meta["videos"]],
        second_per_grid=[v["second_per_grid"] for v in meta["videos"]],
        image_grids=[im["grid_thw"] for im in meta["images"]],
        use_audio_in_video=aiv,
    )
    assert expanded == rows


def test_expand_placeholders_equals_media_placeholder_ids(hooked_model):
    t = _ids_cfg(hooked_model(VARIANT))
    vb, ve, ab, ae = (t[k] for k in ("vision_start_token_id", "vision_end_token_id", "audio_start_token_id", "audio_end_token_id"))
    for grid, spg, frames in [((4, 4, 4), 1.0, 300), ((3, 4, 4), 2.0, 250), ((5, 2, 4), 1.0, 500), ((6, 2, 2), 0.5, 1000)]:
        ids = M.expand_placeholders([vb, t["video_token_id"], ve], t, audio_lengths=[frames], video_grids=[grid],
                                    second_per_grid=[spg], use_audio_in_video=True)
        assert ids == media_placeholder_ids(t, n_audio_frames=frames, video_grid_thw=grid, video_second_per_grid=spg,
                                            use_audio_in_video=True)
        assert ids == [vb] + M.placeholder_block("audio_in_video", t, frames, grid, spg) + [ve]
    ids = M.expand_placeholders([vb, t["image_token_id"], ve, vb, t["video_token_id"], ve, ab, t["audio_token_id"], ae], t,
                                audio_lengths=[237], video_grids=[(4, 4, 6)], image_grids=[(1, 4, 6)])
    assert ids == media_placeholder_ids(t, n_audio_frames=237, video_grid_thw=(4, 4, 6), image_grid_thw=(1, 4, 6))


def test_expand_placeholder_text_matches_the_id_version(tok, hooked_model):
    t = _ids_cfg(hooked_model(VARIANT))
    text = [F.OMNI_TEXTS[0], "hear <|vision_bos|><|IMAGE|><|vision_eos|> <|audio_bos|><|AUDIO|><|audio_eos|> ."]
    media = dict(audio_lengths=[230, 70, 120], video_grids=[(3, 2, 4)], second_per_grid=[1.0], image_grids=[(1, 4, 6)],
                 use_audio_in_video=True)
    expanded = M.expand_placeholder_text(text, tokenizer=tok, **media)
    by_ids = M.expand_placeholders([tok(x)["input_ids"] for x in text], t, **media)
    assert [tok(x)["input_ids"] for x in expanded] == by_ids
    # default strings are Qwen2.5-Omni's
    assert M.expand_placeholder_text("<|vision_bos|><|IMAGE|><|vision_eos|>", image_grids=[(1, 2, 4)]) == (
        "<|vision_bos|>" + "<|IMAGE|>" * 2 + "<|vision_eos|>"
    )


def test_expand_placeholders_errors(hooked_model):
    t = _ids_cfg(hooked_model(VARIANT))
    A, V, vb, ve = t["audio_token_id"], t["video_token_id"], t["vision_start_token_id"], t["vision_end_token_id"]
    with pytest.raises(ValueError, match="more audio placeholders"):
        M.expand_placeholders([A, A], t, audio_lengths=[100])
    with pytest.raises(ValueError, match="2 audio inputs but 1"):
        M.expand_placeholders([A], t, audio_lengths=[100, 100])
    with pytest.raises(ValueError, match="between"):
        M.expand_placeholders([V], t, audio_lengths=[100], video_grids=[(2, 2, 2)], second_per_grid=[1.0], use_audio_in_video=True)
    with pytest.raises(ValueError, match="track"):
        M.expand_placeholders([vb, V, ve], t, video_grids=[(2, 2, 2)], second_per_grid=[1.0], use_audio_in_video=True)


# ---------------------------------------------------------------------------------------- the Omni processor


def _omni_media(raw):
    return dict(audio=[raw["omni_audio0"], raw["omni_audio1"], raw["omni_audio2"]],
                video=[raw["omni_video0"], raw["omni_video1"]], images=[raw["omni_image0"]])


def test_media_inputs_equal_the_qwen2_5_omni_processor_fixture(fx, raw, tok, hooked_model):
    """Two prompts (left-padded), an image, two videos with their audio tracks interleaved
    (use_audio_in_video) and a standalone audio: ids, masks, patches, grids, seconds per grid
    and features equal the real `Qwen2_5OmniProcessor`'s."""
    t = _ids_cfg(hooked_model(VARIANT))
    out = M.media_inputs([str(s) for s in fx["omni_texts"]], t, **_omni_media(raw), use_audio_in_video=True, tokenizer=tok,
                         image_kwargs=F.OMNI_IMAGE, video_kwargs=F.OMNI_VIDEO)
    for k in ("input_ids", "attention_mask", "feature_attention_mask", "image_grid_thw", "video_grid_thw"):
        assert out[k].tolist() == fx[f"omni_{k}"].tolist(), k
    assert out["video_second_per_grid"].tolist() == fx["omni_video_second_per_grid"].tolist()
    assert np.abs(out["pixel_values"].numpy() - F.decode_levels(fx["omni_levels"], "image")).max() <= 1e-5
    assert np.abs(out["pixel_values_videos"].numpy() - F.decode_levels(fx["omni_levels_videos"], "video")).max() <= 1e-5
    feats, mask = out["input_features"].numpy(), out["feature_attention_mask"].numpy()
    assert list(feats.shape) == fx["omni_input_features_shape"].tolist()
    k = F.FEATURE_FRAMES
    ends = np.stack([np.concatenate([feats[a, :, :k], feats[a, :, mask[a].sum() - k : mask[a].sum()]], -1) for a in range(3)])
    assert np.abs(ends - fx["omni_input_features_ends"]).max() <= 1e-5
    # the same from token ids (no tokenizer)
    ids_rows = [tok(str(s))["input_ids"] for s in fx["omni_texts"]]
    out2 = M.media_inputs(ids_rows, t, **_omni_media(raw), use_audio_in_video=True, image_kwargs=F.OMNI_IMAGE,
                          video_kwargs=F.OMNI_VIDEO)
    assert torch.equal(out2["input_ids"][out2["attention_mask"].bool()], out["input_ids"][out["attention_mask"].bool()])
    assert torch.equal(out2["attention_mask"], out["attention_mask"])


def _processor_outputs_from_fixture(fx, raw) -> dict:
    """`Qwen2_5OmniProcessor`'s outputs for the fixture prompts: the fixture's ids and patches,
    and the features of its exact extractor call (their ends are checked against the fixture)."""
    feats = _hf_audio(_omni_media(raw)["audio"])
    return dict(
        input_ids=torch.from_numpy(fx["omni_input_ids"]),
        attention_mask=torch.from_numpy(fx["omni_attention_mask"]),
        input_features=feats["input_features"],
        feature_attention_mask=torch.from_numpy(fx["omni_feature_attention_mask"]),
        pixel_values=torch.from_numpy(F.decode_levels(fx["omni_levels"], "image")),
        image_grid_thw=torch.from_numpy(fx["omni_image_grid_thw"]),
        pixel_values_videos=torch.from_numpy(F.decode_levels(fx["omni_levels_videos"], "video")),
        video_grid_thw=torch.from_numpy(fx["omni_video_grid_thw"]),
        video_second_per_grid=torch.from_numpy(fx["omni_video_second_per_grid"]),
        use_audio_in_video=True,
    )


def _assert_same_batch(a, b):
    for name in ("input_ids", "attention_mask", "position_ids", "rope_deltas"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.layout == b.layout
    for name in ("time", "chunk", "media_index"):
        x, y = getattr(a.layout, name), getattr(b.layout, name)
        assert torch.equal(torch.nan_to_num(x, nan=-7.0), torch.nan_to_num(y, nan=-7.0)), name
    assert a.features.keys() == b.features.keys()
    for k in a.features:
        assert torch.allclose(a.features[k], b.features[k], atol=1e-5, rtol=0), k


def test_prepare_media_equals_prepare_of_processor_outputs(fx, raw, tok, hooked_model, hf_thinker):
    model = hooked_model(VARIANT)
    ours = M.prepare_media(model, [str(s) for s in fx["omni_texts"]], **_omni_media(raw), use_audio_in_video=True,
                           tokenizer=tok, image_kwargs=F.OMNI_IMAGE, video_kwargs=F.OMNI_VIDEO)
    ref_inputs = _processor_outputs_from_fixture(fx, raw)
    _assert_same_batch(ours, model.prepare(**ref_inputs))
    assert ours.attention_mask[:, 0].tolist() == [1, 0]  # left padding
    pos, deltas = R.hf_rope_index(hf_thinker(VARIANT), ref_inputs)
    valid = ours.attention_mask.bool()
    assert torch.equal(ours.position_ids[:, valid], pos[:, valid]) and torch.equal(ours.rope_deltas, deltas)


def test_prepare_media_from_token_ids_without_tokenizer(hooked_model):
    """Token-id prompts, a batch of two padded on the left, audio-in-video in one, image and
    standalone audio in the other; the reference is built with `media_placeholder_ids`."""
    model = hooked_model(VARIANT)
    t = _ids_cfg(model)
    vb, ve, ab, ae = (t[k] for k in ("vision_start_token_id", "vision_end_token_id", "audio_start_token_id", "audio_end_token_id"))
    rng = np.random.default_rng(7)
    wave_v, wave_a = rng.normal(0, 0.1, 41000).astype(np.float32), rng.normal(0, 0.1, 12345).astype(np.float32)
    clip = rng.integers(0, 256, (7, 28, 56, 3), dtype=np.uint8)
    img = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    p0 = [1, 2, vb, t["video_token_id"], ve, 3]
    p1 = [vb, t["image_token_id"], ve, 4, ab, t["audio_token_id"], ae, 5, 6]
    kw = dict(min_pixels=28 * 56, max_pixels=28 * 28 * 6)
    batch = M.prepare_media(model, [p0, p1], audio=[wave_v, wave_a], video=clip, images=img, use_audio_in_video=True, **kw)

    feats, fmask = M.audio_features([wave_v, wave_a])
    pv, vgrid, spg = M.video_patches(clip, **kw)
    ipv, igrid = M.image_patches(img, **kw)
    frames = fmask.sum(-1).tolist()
    r0 = [1, 2] + media_placeholder_ids(t, n_audio_frames=frames[0], video_grid_thw=vgrid[0].tolist(),
                                        video_second_per_grid=float(spg[0]), use_audio_in_video=True) + [3]
    r1 = (media_placeholder_ids(t, image_grid_thw=igrid[0].tolist()) + [4]
          + media_placeholder_ids(t, n_audio_frames=frames[1]) + [5, 6])
    n = max(len(r0), len(r1))
    ids = torch.full((2, n), t["pad_token_id"], dtype=torch.long)
    am = torch.zeros((2, n), dtype=torch.long)
    for i, r in enumerate((r0, r1)):
        ids[i, n - len(r):] = torch.tensor(r)
        am[i, n - len(r):] = 1
    ref = model.prepare(input_ids=ids, attention_mask=am, input_features=feats, feature_attention_mask=fmask,
                        pixel_values=ipv, image_grid_thw=igrid, pixel_values_videos=pv, video_grid_thw=vgrid,
                        video_second_per_grid=spg, use_audio_in_video=True)
    _assert_same_batch(batch, ref)


def test_zeroing_raw_media_keeps_the_layout(fx, raw, tok, hooked_model):
    """"Zero the audio / the video" (unimodal dominance): zero the raw waveform or frames, then
    extract features. The layout, ids and positions stay those of the clean batch; only the
    features of the zeroed modality change."""
    model = hooked_model(VARIANT)
    kw = dict(use_audio_in_video=True, tokenizer=tok, image_kwargs=F.OMNI_IMAGE, video_kwargs=F.OMNI_VIDEO)
    texts = [str(s) for s in fx["omni_texts"]]
    media = _omni_media(raw)
    clean = M.prepare_media(model, texts, **media, **kw)
    no_audio = M.prepare_media(model, texts, **{**media, "audio": [np.zeros_like(a) for a in media["audio"]]}, **kw)
    no_video = M.prepare_media(model, texts, **{**media, "video": [np.zeros_like(v) for v in media["video"]]}, **kw)
    for zeroed, kind in ((no_audio, "audio"), (no_video, "video")):
        for name in ("input_ids", "attention_mask", "position_ids", "rope_deltas"):
            assert torch.equal(getattr(zeroed, name), getattr(clean, name))
        assert zeroed.layout == clean.layout
        assert not torch.allclose(zeroed.features[kind], clean.features[kind])
        other = [k for k in clean.features if k != kind]
        assert all(torch.equal(zeroed.features[k], clean.features[k]) for k in other)


def test_prepare_media_errors(hooked_model, tok):
    model = hooked_model(VARIANT)
    with pytest.raises(ValueError, match="tokenizer"):
        M.prepare_media(model, "<|audio_bos|><|AUDIO|><|audio_eos|>", audio=np.zeros(1600, np.float32), tokenizer=None)
    with pytest.raises(ValueError, match="more audio placeholders"):
        M.prepare_media(model, "<|audio_bos|><|AUDIO|><|audio_eos|> <|audio_bos|><|AUDIO|><|audio_eos|>",
                        audio=np.zeros(1600, np.float32), tokenizer=tok)
