"""The scalable views of `avlens.viz` (group flow, drill-down, token strip, spectrogram, frame strip)
on the shipped toy model: payload sizes (a 2,048-token sample's group flow under 2 MB, the
drill-down growing with its window and not with the sequence, the strip O(n)), payloads decoding
back to brute-force references computed from `run_with_cache` patterns, media geometry checked
against the encoders' own facts (4 mel frames per audio token; the rotary row/column ids of video
tokens), hostile token text kept as text, and no hook left behind after an error."""

from __future__ import annotations

import base64
import io
import json
import re
import wave

import numpy as np
import pytest
import torch

from avlens.data import synth, tasks
from avlens.layout import GROUP_COLORS, GROUP_LETTERS, BatchLayout
from avlens.toy import toy_available
from avlens.viz import (
    Report,
    attention_drilldown,
    attention_drilldown_from_pattern,
    frame_strip_view,
    group_flow_view,
    spectrogram_view,
    token_strip,
)
from avlens.viz.media_views import frames_from_pixel_values

pytestmark = pytest.mark.skipif(not toy_available(), reason="the toy checkpoint avlens/toy/checkpoint is missing")

HOSTILE = [
    "</script><script>window.__avlens_pwned=1</script>",
    "<img src=x onerror=window.__avlens_pwned=1>",
    "</SCRIPT >&amp;<!--",
    "line\u2028sep\u2029x",
]


def _b64(d: dict) -> np.ndarray:
    """Decode a payload array independently of avlens.viz.views.decode_array."""
    dt = {"f16": "<f2", "f32": "<f4", "u8": "u1", "i16": "<i2", "i32": "<i4"}[d["dtype"]]
    return np.frombuffer(base64.b64decode(d["b64"]), dtype=dt).reshape(d["shape"]).astype(np.float64)


def _prompt(n_media: int = 1) -> str:
    body = " ".join([tasks.MEDIA_MARKER] * n_media)
    return f"{tasks.IM_START} user {body} which object makes the sound ? {tasks.EOS_TOKEN} {tasks.IM_START} assistant"


def _batch(model, clips):
    return model.prepare_media([_prompt()] * len(clips), audio=[c.waveform for c in clips],
                               video=[c.frames for c in clips], fps=synth.FPS, use_audio_in_video=True)


@pytest.fixture(scope="module")
def clips():
    # different durations, so the two samples have different group counts (and left padding)
    return [synth.make_clip("dog", "clear", seed=1, duration=4.0), synth.make_clip("car", "clear", seed=2, duration=2.0)]


@pytest.fixture(scope="module")
def small(toy, clips):
    """A 2-sample batch and its full attention patterns (brute-force references)."""
    batch = _batch(toy, clips)
    with torch.no_grad():
        _, cache = toy.run_with_cache(batch, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    pats = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(toy.cfg.n_layers)], 1).double()  # [b, L, H, q, k]
    return batch, pats


@pytest.fixture(scope="module")
def long_batch(toy):
    """One sample of more than 2,048 tokens: three 24-second audio-in-video clips."""
    cl = [synth.make_clip(c, "clear", seed=i, duration=24.0) for i, c in enumerate(["dog", "car", "bell"])]
    b = toy.prepare_media(_prompt(3), audio=[c.waveform for c in cl], video=[c.frames for c in cl],
                          fps=synth.FPS, use_audio_in_video=True)
    assert b.layout.n_pos >= 2048
    return b


def _no_hooks(model) -> bool:
    hps = list(model.hook_dict.values()) + list(getattr(model, "group_view_dict", {}).values())
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in hps)


# ================================================================================== group flow


def _brute_mass(pats, layout, groups):
    """[b, L, H, G, G]: for each query group, summed attention per key group over its positions;
    and the query counts [b, G]."""
    b = pats.shape[0]
    sums = torch.zeros(b, pats.shape[1], pats.shape[2], len(groups), len(groups), dtype=torch.float64)
    counts = torch.zeros(b, len(groups), dtype=torch.float64)
    for i in range(b):
        for qi, qg in enumerate(groups):
            qm = layout.mask(qg)[i]
            counts[i, qi] = qm.sum()
            for ki, kg in enumerate(groups):
                km = layout.mask(kg)[i]
                sums[i, :, :, qi, ki] = pats[i][:, :, qm][:, :, :, km].sum((-1, -2))
    return sums, counts


def test_group_flow_values_decode_to_brute_force_attention_mass(toy, small):
    batch, pats = small
    summary = toy.attention_group_summary(batch)
    sums, counts = _brute_mass(pats, batch.layout, summary.groups)
    assert not torch.equal(counts[0], counts[1])  # the batch mean must weigh samples
    for sample in (0, 1):
        view = group_flow_view(summary, sample=sample)
        got = _b64(view.payload["values"])
        want = (sums[sample] / counts[sample].clamp(min=1)[None, None, :, None]).numpy()
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)  # float16
        assert view.payload["groups"] == summary.groups
    # batch mean over all query positions of each group
    view = group_flow_view(summary)
    want = (sums.sum(0) / counts.sum(0).clamp(min=1)[None, None, :, None]).numpy()
    np.testing.assert_allclose(_b64(view.payload["values"]), want, atol=1e-3, rtol=1e-3)
    assert view.payload["query_counts"] == counts.sum(0).long().tolist()
    assert "GroupFlowView" in repr(view) and "audio" in repr(view)


def test_group_flow_of_a_2048_token_sample_is_under_2_mb(toy, long_batch):
    summary = toy.attention_group_summary(long_batch)
    view = group_flow_view(summary, sample=0)
    assert view.requires == frozenset()
    frag = view.html()
    assert view.payload_bytes < 2_000_000 and len(frag.encode()) < 2_000_000
    # no bundles: the notebook fragment is the page fragment (up to its fresh element id)
    assert re.sub(r"avl[0-9a-f]{12}", "", view._repr_html_()) == re.sub(r"avl[0-9a-f]{12}", "", frag)
    L, H, G = toy.cfg.n_layers, toy.cfg.n_heads, len(summary.groups)
    assert _b64(view.payload["values"]).shape == (L, H, G, G)
    np.testing.assert_allclose(_b64(view.payload["values"]), summary.mass[0].double().numpy(), atol=1e-3, rtol=1e-3)
    # float16 base64, not float lists: about 2 * 4/3 bytes per value plus fixed metadata
    assert view.payload_bytes < 3 * L * H * G * G + 3000


def test_group_flow_rejects_bad_input(small):
    batch, _ = small
    with pytest.raises(TypeError, match="attention_group_summary"):
        group_flow_view(batch)
    with pytest.raises(ValueError, match="groups"):
        group_flow_view(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[layer, head, G, G\]"):
        group_flow_view(torch.rand(2, 3, 4), groups=list("abcd"))


# ================================================================================== drill-down


def test_drilldown_window_equals_cached_pattern(toy, small):
    batch, pats = small
    start = int((~batch.layout.masks["pad"][1]).nonzero()[0])  # sample 1 is left-padded
    window = [start + d for d in (0, 3, 4, 9, 12, 13, 20, 33, 40)] + [batch.layout.n_pos - 1]
    view = attention_drilldown(toy, batch, layer=2, heads=[1, 3], window=window, sample=1)
    got = _b64(view.payload["pattern"])
    w = torch.tensor(window)
    want = pats[1, 2][[1, 3]][:, w][:, :, w].numpy()
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)
    assert view.payload["positions"] == window
    assert view.payload["head_names"] == ["L2H1", "L2H3"]
    labels = batch.layout.labels(1)
    names = view.payload["group_names"]
    for i, p in enumerate(window):
        assert names[view.payload["groups"][i]] == labels[p]
        assert view.payload["tokens"][i].startswith(GROUP_LETTERS[labels[p]] + ":")
    assert view.requires == frozenset({"circuitsvis"})
    assert "CircuitsVis.AttentionHeads" in view.html()
    assert _no_hooks(toy)


def test_default_window_is_the_last_items_last_chunk_and_the_question(toy, long_batch):
    # three audio-in-video items: chunk ids restart with each item, so the last chunk is the
    # third item's (brute force: the media run that ends at the last media position)
    lay = long_batch.layout
    media = [p for p, g in enumerate(lay.labels(0)) if g in ("audio", "video")]
    last = media[-1]
    first = last
    while lay.chunk[0, first - 1] == lay.chunk[0, last]:
        first -= 1
    view = attention_drilldown(toy, long_batch, layer=0, max_len=200)
    real_end = int((~lay.masks["pad"][0]).nonzero()[-1])
    assert view.payload["positions"] == list(range(first, real_end + 1))
    assert int(lay.media_index[0, first]) == int(lay.media_index[0, last]) == 2


def test_drilldown_payload_grows_with_the_window_not_the_sequence(toy, clips, long_batch):
    short = _batch(toy, clips[:1])
    assert long_batch.layout.n_pos > 10 * short.layout.n_pos
    a = attention_drilldown(toy, short, layer=1, window=(0, 30))
    b = attention_drilldown(toy, long_batch, layer=1, window=(0, 30))
    assert a.payload["tokens"] == b.payload["tokens"]
    assert a.payload_bytes == b.payload_bytes
    wide = attention_drilldown(toy, long_batch, layer=1, window=(0, 60))
    assert wide.payload_bytes > 3 * b.payload_bytes  # the pattern is w^2
    assert wide.payload_bytes < 60 * 60 * 4 * 4  # float16 base64, not float lists


def test_hostile_token_text_stays_text():
    n = len(HOSTILE)
    view = attention_drilldown_from_pattern(torch.full((1, n, n), 1.0 / n), HOSTILE, ["text"] * n,
                                            title="</script><b>title</b>")
    strip = token_strip(BatchLayout.text_only(torch.ones(1, n)), torch.arange(n).float(), str_tokens=HOSTILE)
    for v in (view, strip):
        frag = v.html()
        low = frag.lower()
        # every '</script' on the page closes one of the view's own scripts
        assert low.count("</script") == low.count("<script") == 1
        assert "<img" not in low and "<!--" not in frag and "\u2028" not in frag
        assert "&lt;/script&gt;&lt;b&gt;title" in frag or v is strip
        # the JSON in the script parses back to exactly the original strings
        payload = json.loads(re.search(r",P=(\{.*?\}),root=", frag).group(1))
        assert (payload["tokens"] if v is view else payload["text"]) == HOSTILE
    page = Report("r")
    page.add_view(view, "hostile")
    page.add_view(strip)
    # parsed as a browser tokenises it: the circuitsvis bundle and the two views' scripts, each
    # whole; no element from a token
    tags, scripts = _parse(page.render())
    assert "img" not in tags and len(scripts) == 3
    assert all(s.rstrip().endswith("})();") for s in scripts[1:])


def _parse(page: str):
    from html.parser import HTMLParser

    class P(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.scripts, self._in = [], [], False

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            if tag == "script":
                self._in = True
                self.scripts.append("")

        def handle_endtag(self, tag):
            if tag == "script":
                self._in = False

        def handle_data(self, data):
            if self._in:
                self.scripts[-1] += data

    p = P()
    p.feed(page)
    return p.tags, p.scripts


def test_drilldown_bad_input_leaves_no_hook(toy, small, monkeypatch):
    batch, _ = small
    with pytest.raises(ValueError, match="layers 0..3"):
        attention_drilldown(toy, batch, layer=7)
    with pytest.raises(ValueError, match="heads are 0..3"):
        attention_drilldown(toy, batch, layer=0, heads=[9])
    with pytest.raises(ValueError, match="outside the sequence"):
        attention_drilldown(toy, batch, layer=0, window=[5, 10_000])
    with pytest.raises(ValueError, match="padding"):
        attention_drilldown(toy, batch, layer=0, window=[0, 1], sample=1)  # sample 1 is left-padded
    assert _no_hooks(toy)

    # an error in the middle of the forward, after the pattern hook has fired
    def boom(*args, **kwargs):
        raise RuntimeError("mlp failed")

    monkeypatch.setattr(toy.blocks[2].mlp, "forward", boom)
    with pytest.raises(RuntimeError, match="mlp failed"):
        attention_drilldown(toy, batch, layer=2, window=(10, 20))
    assert _no_hooks(toy)


# ================================================================================== token strip


def test_token_strip_is_linear_in_the_sequence_and_decodes(small, long_batch):
    sizes = {}
    for n in (500, 4000):
        lay = BatchLayout.text_only(torch.ones(1, n, dtype=torch.long))
        v = torch.linspace(-1, 2, n)
        view = token_strip(lay, v, str_tokens=["tok"] * n)
        sizes[n] = len(view.html().encode())
        np.testing.assert_allclose(_b64(view.payload["values"]), v.numpy(), atol=2e-3, rtol=1e-3)
        assert view.payload["scale"]["cmap"] == "rdbu"  # both signs: diverging around 0
    per_token = (sizes[4000] - sizes[500]) / 3500
    assert per_token < 16, per_token  # 'tok' + value + group code + JSON punctuation
    # a media-heavy sample: media tokens carry no text, time stamps as float32
    lay = long_batch.layout
    view = token_strip(lay, torch.rand(lay.n_pos))
    assert view.payload_bytes / lay.n_pos < 20
    np.testing.assert_allclose(_b64(view.payload["time"]), lay.time[0].numpy(), atol=1e-5, equal_nan=True)
    # a batch layout: sample 1 is left-padded; only its real positions are shown, with its values
    batch, pats = small
    vals = pats[:, 3, 0, -1]  # [b, k]: attention from the last query, layer 3 head 0
    view = token_strip(batch.layout, vals, sample=1, query=batch.layout.n_pos - 1)
    real = (~batch.layout.masks["pad"][1]).nonzero().flatten()
    assert view.payload["n"] == len(real) and view.payload["runs"] == [[int(real[0]), int(real[-1]) + 1]]
    np.testing.assert_allclose(_b64(view.payload["values"]), vals[1, real].numpy(), atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match=r"one value per position"):
        token_strip(batch.layout, torch.rand(7))


# ================================================================================== media views


def test_spectrogram_columns_follow_the_audio_tower_stride(toy, small, clips):
    batch, pats = small
    vals = pats[:, 3, 1, -1]
    audio_pos = batch.layout.positions("audio", sample=0).tolist()
    for max_columns, frames_per_col in ((1200, 1), (100, 4)):
        view = spectrogram_view(batch, vals, sample=0, waveform=clips[0].waveform, max_columns=max_columns)
        p = view.payload
        assert p["frames_per_column"] == frames_per_col and p["positions"] == audio_pos
        cols = _b64(p["columns"]).astype(int)
        # the tower makes one token of every 4 mel frames (10 ms each): frame f -> token f // 4
        frame = np.arange(len(cols)) * frames_per_col
        want = np.where(frame // 4 < len(audio_pos), frame // 4, -1)
        np.testing.assert_array_equal(cols, want)
        tok_vals = _b64(p["values"])
        np.testing.assert_allclose(tok_vals, vals[0, audio_pos].numpy(), atol=1e-5, rtol=2e-3)
    # the image is the item's valid log-mel frames, low bins at the bottom
    from PIL import Image

    view = spectrogram_view(batch, vals, sample=0)
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(view.payload["image"].split(",", 1)[1]))))
    n_valid = int(batch.raw["feature_attention_mask"][0].sum())
    feats = batch.raw["input_features"][0, :, :n_valid].double().numpy()
    want = (feats - feats.min()) / (feats.max() - feats.min()) * 255
    assert img.shape == feats.shape
    assert np.abs(img[::-1].astype(float) - want).max() <= 0.5 + 1e-6
    # the audio plays the clip: 16-bit PCM of the waveform
    view = spectrogram_view(batch, vals, sample=1, waveform=clips[1].waveform)
    with wave.open(io.BytesIO(base64.b64decode(view.payload["audio"].split(",", 1)[1]))) as f:
        assert f.getframerate() == 16000 and f.getnchannels() == 1
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    assert len(pcm) == len(clips[1].waveform)
    assert np.abs(pcm / 32767 - np.clip(clips[1].waveform, -1, 1)).max() <= 1 / 32767  # 16-bit quantisation
    assert view.payload["positions"] == batch.layout.positions("audio", sample=1).tolist()


def test_frame_strip_cells_match_the_rotary_row_and_column(toy, small):
    batch, pats = small
    vals = pats[:, 3, 2, -1]
    for sample in (0, 1):
        view = frame_strip_view(batch, vals, sample=sample)
        p = view.payload
        grid_pos = _b64(p["positions"]).astype(int)
        grid_val = _b64(p["values"])
        vpos = batch.layout.positions("video", sample=sample)
        pid = batch.position_ids[:, sample, vpos]  # [3, n]: TMRoPE (t, h, w) ids of the video tokens
        steps = sorted(set(pid[0].tolist()))
        for j, pos in enumerate(vpos.tolist()):
            t = steps.index(int(pid[0, j]))
            r = int(pid[1, j] - pid[1].min())
            c = int(pid[2, j] - pid[2].min())
            assert grid_pos[t, r, c] == pos
            assert abs(grid_val[t, r, c] - float(vals[sample, pos])) <= 2e-3 * abs(float(vals[sample, pos])) + 1e-7
        assert p["times"] == [float(batch.layout.time[sample, int(grid_pos[t, 0, 0])]) for t in range(len(steps))]
        assert p["frames"] is not None and len(p["frames"]) == len(steps)


def test_frames_rebuilt_from_pixel_values_equal_the_input_frames(toy):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(6, 56, 56, 3), dtype=np.uint8)  # the toy's frame size: no resizing
    wave_ = synth.make_clip("dog", seed=0, duration=3.0).waveform
    batch = toy.prepare_media(_prompt(), audio=[wave_], video=[frames], fps=synth.FPS, use_audio_in_video=True)
    rebuilt = frames_from_pixel_values(batch.raw["pixel_values_videos"], batch.raw["video_grid_thw"], 0)
    assert rebuilt.shape == frames.shape
    assert np.abs(rebuilt.astype(int) - frames.astype(int)).max() <= 1
    from PIL import Image

    view = frame_strip_view(batch)
    for t, uri in enumerate(view.payload["frames"]):
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
        assert np.abs(img.astype(int) - frames[2 * t].astype(int)).max() <= 1  # step t shows frame 2t


def test_media_views_reject_bad_input(small):
    batch, _ = small
    text_only = BatchLayout.text_only(torch.ones(1, 9))
    with pytest.raises(ValueError, match="no audio tokens"):
        spectrogram_view(text_only)
    with pytest.raises(ValueError, match="no audio item 3"):
        spectrogram_view(batch, audio_index=3)
    with pytest.raises(ValueError, match="pass features"):
        spectrogram_view(batch.layout)
    with pytest.raises(ValueError, match="per video token"):
        frame_strip_view(batch, torch.rand(5))
    with pytest.raises(ValueError, match="needs"):
        frame_strip_view(batch, grid=(4, 8, 8))


# ================================================================================== the contract


def test_views_are_standalone_and_a_report_inlines_each_bundle_once(toy, small, tmp_path):
    batch, pats = small
    marker = "var CircuitsVis="
    drill = attention_drilldown(toy, batch, layer=0, window=(4, 20))
    assert marker not in drill.html()
    assert drill._repr_html_().count(marker) == 1
    path = drill.save(tmp_path / "drill.html")
    assert path.read_text().count(marker) == 1 and path.read_text().startswith("<!doctype html>")
    flow = group_flow_view(toy.attention_group_summary(batch))
    page = Report("views")
    page.add_view(flow, "flow")
    page.add_view(drill)
    page.add_view(attention_drilldown(toy, batch, layer=1, window=(4, 20)))
    page.add_view(spectrogram_view(batch, pats[:, 0, 0, -1]), "audio")
    page.add_view(frame_strip_view(batch, pats[:, 0, 0, -1]))
    html = page.render()
    assert html.count(marker) == 1 and "Plotly" not in html[:2000]
    assert html.count("class='avlens-view") == 5
    assert not re.search(r"(src|href)=['\"]?https?:", html)  # nothing fetched
    with pytest.raises(ValueError, match=r"\.html"):
        flow.save(tmp_path / "flow.png")
    with pytest.raises(TypeError, match="add_html"):
        page.add_view("<p>not a view</p>")


# ================================================================================== scale, fallbacks, validation


def _av_layout_2048() -> BatchLayout:
    """A 2,048-token audio-in-video layout (T2 S2 | 34 chunks of V8 A50 | S2 T70), with two global
    sinks as the overlay group `sink`: the shape of a real long sample, no model needed."""
    runs = [("text", 2), ("special", 2)] + [("video", 8), ("audio", 50)] * 34 + [("special", 2), ("text", 70)]
    groups = [g for g, k in runs for _ in range(k)]
    masks = {g: torch.tensor([[x == g for x in groups]]) for g in ("audio", "video", "image", "text", "special", "pad")}
    return BatchLayout(masks, validate=False).with_group("sink", [[4, 12]])


def test_group_flow_payload_of_a_28_layer_28_head_6_group_summary_on_2048_tokens():
    from avlens.model.summary import AttentionGroupSummary

    lay = _av_layout_2048()
    assert lay.n_pos == 2048
    groups = ["audio", "video", "text", "special", "pad", "sink"]
    counts = torch.tensor([[int(lay.mask(g)[0].sum()) for g in groups]])
    assert counts.tolist() == [[1700, 272, 72, 4, 0, 2]]
    e = -torch.log(torch.rand(1, 28, 28, len(groups), len(groups), generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    mass = e / e.sum(-1, keepdim=True)  # Dirichlet(1) rows: each query group's mass sums to 1 (the least compressible case)
    summary = AttentionGroupSummary(groups, mass.float(), counts)
    view = group_flow_view(summary, sample=0)
    frag = view.html()  # no bundles: the fragment is the whole notebook output
    assert view.requires == frozenset()
    assert view.payload_bytes < 2_000_000 and len(frag.encode()) < 2_000_000
    # the numbers group_flow_view's docstring quotes (28 x 28 x 6 x 6 float16 = 56 kB, base64 ~76 kB; with the PNG preview ~125 kB)
    assert view.payload_bytes < 80_000, view.payload_bytes
    assert len(frag.encode()) < 140_000, len(frag.encode())
    np.testing.assert_allclose(_b64(view.payload["values"]), mass[0].double().numpy(), rtol=2 ** -11, atol=2 ** -24)
    assert view.payload["query_counts"] == counts[0].tolist() and view.payload["groups"] == groups


def _png_of(fragment: str, n: int = 0) -> np.ndarray:
    from PIL import Image

    uris = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", fragment)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uris[n]))).convert("RGB"))


def _fallback(view) -> str:
    """The static part of a view's fragment (what shows when its script cannot run)."""
    h = view.html()
    start = h.index("<div class='av-fallback'>")
    return h[start:h.index("<script>", start)]


def test_static_fallbacks_hold_a_png_or_text(toy, small, clips):
    from avlens.viz import heatmap_view

    batch, pats = small
    values = pats[:, 0, 0, -1]
    # the group flow: one block of G x G pixels per (layer row, head column), gaps of one pixel
    summary = toy.attention_group_summary(batch)
    flow = group_flow_view(summary, sample=0)
    L, H, G = toy.cfg.n_layers, toy.cfg.n_heads, len(summary.groups)
    img = _png_of(_fallback(flow))
    assert img.shape[:2] == ((L + 1) * (G + 1) - 1, (H + 1) * (G + 1) - 1)
    m = summary.mass[0].double().numpy()
    # brute force: the brightest (viridis: most yellow) pixel of layer l's head-h block is its largest entry
    l, h = np.unravel_index(int(np.argmax(m.max((2, 3)))), m.shape[:2])
    q, k = np.unravel_index(int(np.argmax(m[l, h])), (G, G))
    block = img[(l + 1) * (G + 1):(l + 1) * (G + 1) + G, (h + 1) * (G + 1):(h + 1) * (G + 1) + G].astype(int)
    assert np.unravel_index(int(np.argmax(block[..., 0] + block[..., 1])), (G, G)) == (q, k)
    # the heatmap: reprs' palette PNG with one pixel per cell
    hm = heatmap_view(np.arange(12.0).reshape(3, 4), groups=["audio", "audio", "video", "text"])
    assert _png_of(_fallback(hm)).shape[:2] == (3, 4)
    # media: the spectrogram image and the frames as PNGs; text views: their description
    spec = spectrogram_view(batch, values)
    assert spec.payload["image"] in _fallback(spec)
    frames = frame_strip_view(batch, values, frames=clips[0].frames)
    assert all(u in _fallback(frames) for u in frames.payload["frames"])
    strip = token_strip(batch.layout, values)
    assert "sample 0:" in _fallback(strip) and "<pre" in _fallback(strip)
    drill = attention_drilldown_from_pattern(torch.rand(2, 4, 4), HOSTILE, ["text"] * 4)
    fb = _fallback(drill)
    assert "window of 4 positions" in fb and "<script" not in fb.lower()
    for view in (flow, hm, spec, frames, strip, drill):
        # the fallback sits inside the view's element, where the script removes it once it has
        # drawn (not before: a drawing that throws leaves the preview; see test_browser.py)
        h = view.html()
        uid = re.search(r"<div id='(avl[0-9a-f]{12})'", h).group(1)
        assert h.index(f"id='{uid}'") < h.index("av-fallback") < h.index("<script>")
        script = h[h.index("<script>"):]
        assert script.index("draw();") < script.index("root.removeChild(fb)")
        assert "root.textContent=''" not in script


def test_helpers_global_is_versioned_by_a_hash_of_their_code():
    import hashlib

    from avlens.viz import views

    name = views.VIZ_GLOBAL
    assert name == "__avlensViz_" + hashlib.sha256(views._HELPERS_BODY.encode()).hexdigest()[:12]
    h = token_strip(BatchLayout.text_only(torch.ones(1, 3))).html()
    assert f"window.{name}=window.{name}||" in h and f"var V=window.{name}," in h
    assert "window.__avlensViz=" not in h and "window.__avlensViz," not in h  # the unversioned name is gone


def test_views_reject_bad_sizes_and_positions(toy, small):
    batch, pats = small
    summary = toy.attention_group_summary(batch)
    for cell in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="cell must be a positive integer"):
            group_flow_view(summary, cell=cell)
    for fw in (0, -1, 10.5):
        with pytest.raises(ValueError, match="frame_width must be a positive integer"):
            frame_strip_view(batch, frame_width=fw)
    with pytest.raises(ValueError, match="max_frame_side must be a positive integer"):
        frame_strip_view(batch, max_frame_side=0)
    for alpha in (5, -0.1, 1.01, "0.5"):
        with pytest.raises(ValueError, match=r"alpha .* in \[0, 1\]"):
            frame_strip_view(batch, alpha=alpha)
    assert frame_strip_view(batch, alpha=0).payload["alpha"] == 0.0 and frame_strip_view(batch, alpha=1).payload["alpha"] == 1.0
    for max_len in (0, -3, 4.0):
        with pytest.raises(ValueError, match="max_len must be a positive integer"):
            attention_drilldown(toy, batch, layer=0, max_len=max_len)
    for window in ((0.0, 10.0), [1, 2.5], np.array([1.0, 2.0])):
        with pytest.raises(ValueError, match="positions must be integers"):
            attention_drilldown(toy, batch, layer=0, window=window)
    with pytest.raises(ValueError, match="positions must be integers"):
        token_strip(batch.layout, positions=[0.5, 3])
    with pytest.raises(ValueError, match="display_width must be a positive integer"):
        spectrogram_view(batch, display_width=0)
    # integer forms still work: numpy integers, a LongTensor, a boolean mask
    w = attention_drilldown(toy, batch, layer=0, window=torch.tensor([4, 5, 6]))
    assert w.payload["positions"] == [4, 5, 6]
    assert attention_drilldown(toy, batch, layer=0, window=(np.int64(4), np.int64(7))).payload["positions"] == [4, 5, 6]
    assert _no_hooks(toy)


# ================================================================================ heatmap / bar views: edge cases


def test_float_payloads_keep_small_differences_on_large_offsets():
    """Brute force over offsets and spreads: five evenly spaced values stay distinct and every
    decoded value is within 1e-3 of the range of itself, also where float16 alone keeps fewer
    than three significant digits across the range (20 +- 0.02: float16's step at 20 is 0.016).
    The decode is done here from the bytes and the offset, not with avlens's decode_array."""
    from avlens.viz import heatmap_view
    from avlens.viz.views import encode_array

    def decode(d):
        return _b64(d) + d.get("offset", 0.0)

    view = heatmap_view(20 + np.array([[-.02, -.01, 0, .01, .02]]), center=20)
    assert view.payload["values"]["dtype"] == "f16" and view.payload["values"]["offset"] == 20.0  # still 2 bytes a value
    got = decode(view.payload["values"])[0, 0]
    assert len(set(got.tolist())) == 5
    np.testing.assert_allclose(got, 20 + np.array([-.02, -.01, 0, .01, .02]), atol=1e-3 * 0.04)
    rng = np.random.default_rng(0)
    for offset in (0.0, 1e-3, 0.7, -3.0, 20.0, 511.0, -4096.0, 6e4):
        for spread in (1e-5, 1e-3, 0.04, 1.0, 50.0):
            x = offset + spread * np.linspace(-0.5, 0.5, 5)
            d = encode_array(x)
            y = decode(d)
            assert len(set(y.tolist())) == 5, (offset, spread, d.get("offset"), y)
            assert np.abs(y - x).max() <= 1e-3 * spread, (offset, spread, y - x)
            r = offset + spread * (rng.random(200) - 0.5)  # random values: within 1e-3 of their range
            ry = decode(encode_array(r))
            assert np.abs(ry - r).max() <= 1e-3 * (r.max() - r.min()), (offset, spread)
    # values reaching down to 0 keep float16's relative precision (no offset: a 1e-4 weight reads 1e-4)
    d = encode_array(np.array([0.0, 1e-4, 0.3, 1.0]))
    assert "offset" not in d and abs(decode(d)[1] - 1e-4) <= 1e-4 * 2 ** -10
    # NaN stays NaN and infinities stay infinite with an offset; integers are never offset
    d = encode_array(np.array([20.0, 20.01, np.nan, np.inf, -np.inf]))
    assert "offset" in d and np.isnan(decode(d)[2]) and decode(d)[3] == np.inf and decode(d)[4] == -np.inf
    assert "offset" not in encode_array(np.array([1000, 1001]))
    # a range too small for float16's smallest steps (subnormals step by 6e-8): float32
    assert encode_array(np.array([0.0, 1e-6, 2e-6]))["dtype"] == "f32"


def test_bar_view_draws_infinite_values_clipped_with_a_label():
    """A knockout's relative change from a base of 0 is inf: the payload keeps it, the axis is
    built from the finite values (see _BARS_JS; drawn bars are checked in test_browser.py), and
    the static preview gives it a full-width bar that reads inf, with no NaN width anywhere."""
    from avlens.viz import bar_view
    from avlens.viz.views import _BARS_JS

    view = bar_view([0.5, np.inf, -1.0, -np.inf], ["a", "b", "c", "d"], lo=[0.4, np.inf, -1.2, -np.inf],
                    hi=[0.6, np.inf, -0.8, -np.inf])
    assert _b64(view.payload["values"]).tolist() == [[0.5, np.inf, -1.0, -np.inf]]
    fb = _fallback(view)
    assert "nan" not in fb.lower()
    widths = [float(w) for w in re.findall(r"width:([0-9.]+)px;height:10px", fb)]
    assert widths == [80.0, 160.0, 160.0, 160.0]  # |x| / largest finite |x| * 160; inf: the full width
    assert ">inf<" in fb and ">-inf<" in fb and fb.count("double #111827") == 2
    assert "isFinite(x)" in _BARS_JS and any("infinite" in line for line in view.description)


def test_view_show_and_write_html(monkeypatch, tmp_path):
    """`.show()` in a script writes a standalone page and opens it in the browser (returning its
    path); in a notebook kernel it displays the view; `.write_html` is `.save`."""
    import webbrowser

    from avlens.viz import heatmap_view
    from avlens.viz import views as views_mod

    view = heatmap_view(np.arange(6.0).reshape(2, 3), title="shown")
    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url) or True)
    monkeypatch.setattr(views_mod, "_in_notebook", lambda: False)
    path = view.show()
    try:
        assert opened == [path.resolve().as_uri()] and path.suffix == ".html"
        page = path.read_text(encoding="utf-8")
        assert page.startswith("<!doctype html>") and "<title>shown</title>" in page and "avlens-heatmap" in page
    finally:
        path.unlink()
    shown = []
    import IPython.display

    monkeypatch.setattr(views_mod, "_in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    assert view.show() is None and shown == [view] and len(opened) == 1
    out = view.write_html(tmp_path / "v.html")
    assert out == tmp_path / "v.html" and "avlens-heatmap" in out.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match=r"\.html"):
        view.write_html(tmp_path / "v.png")
    assert views_mod._in_notebook() is True  # patched; the real one is False outside a kernel:
    monkeypatch.undo()
    assert views_mod._in_notebook() is False


def test_report_add_plotly_takes_a_view_and_refuses_other_things_cleanly():
    from avlens.viz import bar_view

    view = bar_view([1.0, 2.0], ["a", "b"])
    report = Report("r")
    report.add_section("s")
    report.add_plotly(view)  # what .plot() returns by default: passed on to add_view
    assert len(report.sections) == 1 and "avlens-bars" in report.sections[0].parts[-1]
    assert "plotly" not in report._uses
    with pytest.raises(TypeError, match="add_view"):
        report.add_plotly(object())
    with pytest.raises(TypeError, match="config= is a plotly option"):
        report.add_plotly(view, config={"displaylogo": True})
    assert "plotly" not in report._uses and "Plotly.newPlot" not in report.render()
    with pytest.raises(ValueError, match="add a section first"):
        Report("empty").add_plotly({"data": [], "layout": {}})
    report.add_plotly({"data": [{"type": "bar", "x": ["a"], "y": [1]}], "layout": {}})
    assert "plotly" in report._uses


def test_heatmap_and_bar_views_reject_bad_arguments():
    """Each bad argument is refused with a message naming it; shapes are compared exactly, so a
    transposed `marked` / `lo` (same size, wrong cells) is an error, not a silent reshape."""
    from avlens.viz import bar_view, heatmap_view

    z = np.arange(6.0).reshape(2, 3)
    bad_heatmaps = [
        (dict(values=np.arange(3.0)), "values must be"),
        (dict(values=np.zeros((0, 3))), "no empty axis"),
        (dict(values=np.zeros((2, 2, 2, 2))), "values must be"),
        (dict(values=z, row_labels=["a"]), "1 row labels for 2 rows"),
        (dict(values=z, col_labels=["a", "b"]), "2 column labels for 3 columns"),
        (dict(values=z, facet_labels=["f"]), "facet_labels are for"),
        (dict(values=np.stack([z, z]), facet_labels=["f"]), "1 facet labels for 2 facets"),
        (dict(values=z, groups=["audio"] * 2), "2 groups for 3 columns"),
        (dict(values=z, row_groups=["audio"] * 3), "3 groups for 2 rows"),
        (dict(values=z, marked=z.T > 2), r"marked must have the values' shape \(2, 3\); got \(3, 2\) \(transposed\?\)"),
        (dict(values=np.stack([z, z]), marked=z > 2), r"marked must have the values' shape \(2, 2, 3\)"),
        (dict(values=z, cmap="jet"), "unknown colour map 'jet'"),
        (dict(values=z, vmin=2.0, vmax=1.0), "vmax > vmin"),
        (dict(values="abc"), "values must be a tensor or array"),
    ]
    for kw, msg in bad_heatmaps:
        with pytest.raises((ValueError, TypeError), match=msg):
            heatmap_view(**kw)
    heatmap_view(z, marked=(z > 2)[None])  # the values' shape with the facet axis of one panel: fine
    v = np.arange(6.0).reshape(2, 3)
    bad_bars = [
        (dict(values=np.zeros((2, 2, 2)), labels=["a", "b"]), "values must be"),
        (dict(values=[], labels=[]), "no empty axis"),
        (dict(values=[1.0, 2.0], labels=["a"]), "1 labels for 2 bars"),
        (dict(values=[1.0, 2.0], labels=["a", "b"], facet_labels=["f"]), "facet_labels are for"),
        (dict(values=v, labels=list("abc"), facet_labels=["f"]), "1 facet labels for 2 facets"),
        (dict(values=[1.0, 2.0], labels=["a", "b"], groups=["audio"]), "1 groups for 2 bars"),
        (dict(values=[1.0, 2.0], labels=["a", "b"], bands=True), "pass groups="),
        (dict(values=[1.0, 2.0], labels=["a", "b"], lo=[0.0, 1.0]), "give both lo= and hi="),
        (dict(values=v, labels=list("abc"), lo=v.T, hi=v.T), r"lo must have the values' shape \(2, 3\); got \(3, 2\)"),
        (dict(values=v, labels=list("abc"), lo=v, hi=v[0]), r"hi must have the values' shape \(2, 3\); got \(3,\)"),
    ]
    for kw, msg in bad_bars:
        with pytest.raises(ValueError, match=msg):
            bar_view(**kw)
    assert bar_view(v, list("abc"), facet_labels=torch.tensor([1, 2])).payload["facets"] == ["1", "2"]
    assert heatmap_view(np.stack([z, z]), facet_labels=torch.tensor([7, 8])).payload["facets"] == ["7", "8"]
    assert bar_view([1.0, 2.0], ["a", "b"], lo=[[0.0, 1.0]], hi=[[2.0, 3.0]]).payload["lo"]["shape"] == [1, 2]


def test_heatmap_preview_uses_the_views_colour_scale_and_row_groups():
    """The static preview's PNG is coloured with the view's own vmin / vmax / colour map (the
    anchors of the page's MAPS: blues' ends are #f7fbff and #08306b), not with a scale of its
    own, and shows the row groups as a strip of run blocks."""
    from avlens.viz import heatmap_view
    from avlens.viz.views import _HELPERS_BODY

    assert "blues:[[247,251,255]" in _HELPERS_BODY and "[8,48,107]]" in _HELPERS_BODY
    px = _png_of(_fallback(heatmap_view(np.array([[0.0, 1.0]]), cmap="blues", vmin=0.0, vmax=1.0)))[0].astype(int)
    assert px[0].tolist() == [247, 251, 255] and px[1].tolist() == [8, 48, 107]
    # vmin / vmax: 0.5 on a 0..2 viridis scale is a quarter of the way, not the top (yellow)
    px = _png_of(_fallback(heatmap_view(np.array([[0.5, 0.5]]), vmin=0.0, vmax=2.0)))[0, 0].astype(int)
    assert px[2] > px[1] > px[0]  # viridis at 0.25: blue-dominated (#3b528b-ish), not #fde725
    # mixed signs: diverging around 0 as the view does, so 0 is the white middle
    px = _png_of(_fallback(heatmap_view(np.array([[-1.0, 0.0, 3.0]]))))[0].astype(int)
    assert np.abs(px[1] - 247).max() <= 4 and px[2][0] > px[2][2]  # 0 white (254 palette levels), 3 red
    fb = _fallback(heatmap_view(np.zeros((4, 4)), row_groups=["text", "audio", "audio", "video"]))
    strip = re.findall(r"top:([0-9.]+)%;height:([0-9.]+)%;background:(#[0-9a-fA-F]{6})", fb)
    assert strip == [("0", "25", GROUP_COLORS["text"]), ("25", "50", GROUP_COLORS["audio"]), ("75", "25", GROUP_COLORS["video"])]
