"""Per-token values drawn on the media they came from: over the audio tokens on the clip's
spectrogram (with the audio playable in the page), over the video tokens as heat on each frame's
patch grid.

    spectrogram_view(batch, values, waveform=clip.waveform)   # log-mel image + heat band + <audio>
    frame_strip_view(batch, values, frames=clip.frames)       # one frame per temporal grid step

`values` is anything with one number per position (`[pos]` or `[batch, pos]`: the attention a
query pays to each key, a patching effect, a sink score); only the media item's tokens are drawn.

Geometry (Qwen2.5-Omni, and any family whose layout carries time stamps and media indices):

* audio: token k of an audio item starts at `layout.time` (k / 25 s for Qwen2.5-Omni: the
  Whisper-style tower turns 4 mel frames of 10 ms into one token) and lasts until the next
  token's start. The spectrogram's pixel column x covers mel frames `[x * f, (x + 1) * f)` (f = 1
  unless the clip is longer than `max_columns` frames) and shows the value of the token whose time
  span holds the column's centre.
* video: the tokens of a video item are merged 2 x 2 patches in Qwen2-VL's order: temporal grid
  step t, then merged row r, then merged column c (`video_grid_thw` = (gt, gh, gw) patches, so
  gh/2 x gw/2 tokens a step). With audio in video the item's video tokens are split into
  2-second chunks between audio chunks, but in position order they keep that (t, r, c) order. Step
  t covers frames `[t * temporal_patch, (t + 1) * temporal_patch)`; its first frame is shown.

Media travel as PNG / WAV data URIs (nothing is fetched); values as float16 (see `views`).
"""

from __future__ import annotations

import base64
import io
import math
import wave
from typing import Optional, Sequence

import numpy as np
from torch import Tensor

from avlens.layout import BatchLayout
from avlens.viz.views import View, _as_numpy, _check_positive_int, _per_position, encode_array, value_scale

__all__ = [
    "SpectrogramView",
    "FrameStripView",
    "spectrogram_view",
    "frame_strip_view",
    "media_item_positions",
    "audio_columns",
    "frames_from_pixel_values",
    "png_data_uri",
    "wav_data_uri",
]


# ================================================================================== media data


def png_data_uri(image: np.ndarray) -> str:
    """A `data:image/png;base64,...` URI of a uint8 image `[H, W]` (grey) or `[H, W, 3]` (RGB)."""
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"png_data_uri takes uint8 [H, W] or [H, W, 3]; got {a.dtype} {tuple(a.shape)}")
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def wav_data_uri(waveform, sampling_rate: int = 16000) -> str:
    """A `data:audio/wav;base64,...` URI of a mono waveform (floats in [-1, 1], clipped), as 16-bit
    PCM: every browser's `<audio>` plays it."""
    w = _as_numpy(waveform, "waveform")
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"the waveform must be a non-empty 1-D mono signal; got shape {tuple(w.shape)} "
                         "(average stereo channels first)")
    if not (isinstance(sampling_rate, (int, np.integer)) and sampling_rate > 0):
        raise ValueError(f"sampling_rate must be a positive integer (Hz); got {sampling_rate!r}")
    pcm = np.round(np.clip(np.nan_to_num(w), -1.0, 1.0) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sampling_rate))
        f.writeframes(pcm.tobytes())
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def media_item_positions(layout: BatchLayout, kind: str, sample: int = 0, index: int = 0) -> tuple[list[int], int]:
    """Positions (ascending) of one media item of one sample, and the item's index among all the
    batch's items of that kind (prompt order, sample 0 first: the row of `input_features`, the
    video of `video_grid_thw`).

    `index` counts the sample's items of `kind` (`layout.media_index`); a layout without media
    indices has one item per sample."""
    if not -layout.batch_size <= sample < layout.batch_size:
        raise IndexError(f"sample {sample} is outside the batch of {layout.batch_size}")
    sample %= layout.batch_size
    m = layout.mask(kind)

    def items(i: int) -> list[int]:
        ids = layout.media_index[i][m[i]].tolist()
        return sorted(set(ids))

    mine = items(sample)
    if not mine:
        raise ValueError(f"sample {sample} has no {kind} tokens; choose a sample with {kind} input")
    if mine == [-1]:  # no media indices: the sample's tokens of this kind are one item
        if index != 0:
            raise ValueError(f"this layout has no media indices, so sample {sample} has one {kind} item: use index 0")
        pos = m[sample].nonzero().flatten().tolist()
        return pos, sum(1 for i in range(sample) if items(i))
    if index not in mine:
        raise ValueError(f"sample {sample} has {kind} items {mine}; there is no {kind} item {index}")
    pos = (m[sample] & (layout.media_index[sample] == index)).nonzero().flatten().tolist()
    before = sum(len(items(i)) for i in range(sample))
    return pos, before + mine.index(index)


def _item_values(values, layout: BatchLayout, sample: int, pos: list[int], kind: str) -> np.ndarray:
    """Values for an item's tokens: from one value per position, or one per item token."""
    v = _as_numpy(values, "values")
    if v.ndim == 1 and v.shape[0] == len(pos) and len(pos) != layout.n_pos:
        return v
    try:
        return _per_position(v, layout, sample)[pos]
    except ValueError as e:
        raise ValueError(f"{e}; or give exactly one value per {kind} token of the item ({len(pos)})") from None


def audio_columns(times: np.ndarray, token_seconds: float, n_columns: int, seconds_per_column: float) -> np.ndarray:
    """For each pixel column of a spectrogram, the index of the token whose time span
    `[times[j], times[j] + token_seconds)` holds the column's centre `(x + 0.5) * seconds_per_column`
    (-1 where none does). `times` ascending."""
    centre = (np.arange(n_columns) + 0.5) * seconds_per_column
    j = np.searchsorted(times, centre, side="right") - 1
    ok = (j >= 0) & (centre < times[np.clip(j, 0, None)] + token_seconds)
    return np.where(ok, j, -1)


# ================================================================================== spectrogram

_SPEC_JS = r"""
var W=P.width,M=P.height,cols=V.decode(P.columns),val=P.values?V.decode(P.values):null,tt=V.decode(P.times),
tpos=P.positions,s=P.scale,tp=V.tip(root),dw=P.display_width;
if(val)V.colorbar(root,s,P.value_label);
var ctl=V.el('label',root,'av-note');var cb=V.el('input',ctl);cb.type='checkbox';ctl.appendChild(document.createTextNode(' heat over the spectrogram'));
var box=V.el('div',root);box.style.cssText='position:relative;width:'+dw+'px;margin-top:4px';
var img=V.el('img',box);img.src=P.image;img.alt='log-mel spectrogram';img.style.cssText='display:block;width:'+dw+'px;height:'+P.display_height+'px';
var ov=V.el('canvas',box);ov.width=W;ov.height=1;ov.style.cssText='position:absolute;left:0;top:0;width:'+dw+'px;height:'+P.display_height+'px;opacity:.5;display:none;image-rendering:pixelated';
var band=V.el('canvas',box);band.width=W;band.height=1;band.style.cssText='width:'+dw+'px;height:22px;image-rendering:pixelated;border-top:1px solid #fff';
var head=V.el('div',box);head.style.cssText='position:absolute;top:0;width:2px;height:'+(P.display_height+23)+'px;background:#ef4444;display:none;pointer-events:none';
function colour(x){var j=cols[x];if(j<0)return null;return val?V.rgb(val[j],s):[232,135,30];}
[band,ov].forEach(function(c){var g=c.getContext('2d');for(var x=0;x<W;x++){var col=colour(x);if(col){g.fillStyle=V.css(col);g.fillRect(x,0,1,1);}}});
cb.addEventListener('change',function(){ov.style.display=cb.checked?'block':'none';});
var ax=V.el('div',box,'av-note');ax.style.cssText='display:flex;justify-content:space-between';
V.el('span',ax,null,'0 s');V.el('span',ax,null,'time: '+P.seconds.toFixed(2)+' s (spectrogram above, '+(val?P.value_label:'audio tokens')+' below)');V.el('span',ax,null,P.seconds.toFixed(2)+' s');
function hover(ev){var b=box.getBoundingClientRect(),x=Math.floor((ev.clientX-b.left)/dw*W),y=ev.clientY-b.top;
if(x<0||x>=W||y>P.display_height+23){tp.hide();return;}var j=cols[x],t=(x+0.5)*P.seconds_per_column,
lines=['t = '+t.toFixed(3)+' s (column '+x+')'];
if(y<P.display_height)lines.push('mel bin '+Math.min(M-1,Math.max(0,Math.floor((1-y/P.display_height)*M))));
if(j>=0){lines.push('audio token at position '+tpos[j]+', '+tt[j].toFixed(2)+'-'+(tt[j]+P.token_seconds).toFixed(2)+' s');
if(val)lines.push(P.value_label+' '+V.fmt(val[j]));}else lines.push('no audio token here');tp.show(ev,lines.join('\n'));}
box.addEventListener('mousemove',hover);box.addEventListener('mouseleave',function(){tp.hide();});
if(P.audio){var au=V.el('audio',root);au.controls=true;au.src=P.audio;au.style.cssText='display:block;margin-top:6px;width:'+Math.min(dw,420)+'px';
function tick(){var t=au.currentTime;head.style.left=Math.min(dw-2,t/P.seconds*dw)+'px';if(!au.paused)requestAnimationFrame(tick);}
au.addEventListener('play',function(){head.style.display='block';tick();});au.addEventListener('seeked',tick);au.addEventListener('timeupdate',tick);}
V.el('div',root,'av-note',P.note);
"""


class SpectrogramView(View):
    """Per-audio-token values on the clip's spectrogram time axis; see `spectrogram_view`."""

    kind = "spectrogram"
    render_js = _SPEC_JS


def _layout_and_raw(batch) -> tuple[BatchLayout, dict]:
    if isinstance(batch, BatchLayout):
        return batch, {}
    layout = getattr(batch, "layout", None)
    if not isinstance(layout, BatchLayout):
        raise TypeError(f"pass an AVBatch (model.prepare_media(...)) or a BatchLayout; got {type(batch).__name__}")
    return layout, dict(getattr(batch, "raw", None) or {})


def spectrogram_view(
    batch,
    values=None,
    sample: int = 0,
    *,
    audio_index: int = 0,
    features=None,
    waveform=None,
    sampling_rate: int = 16000,
    hop_seconds: float = 0.01,
    token_seconds: Optional[float] = None,
    value_label: str = "value",
    title: Optional[str] = None,
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    center: Optional[float] = None,
    cmap: Optional[str] = None,
    max_columns: int = 1200,
    display_width: Optional[int] = None,
) -> SpectrogramView:
    """The log-mel spectrogram of one audio item, with the per-token `values` of its audio tokens
    drawn as a heat band on the same time axis (and, with a checkbox, over the spectrogram), and
    the audio playable with a moving playhead when `waveform` is given.

    Args:
        batch: the `AVBatch` (its `raw["input_features"]` / `feature_attention_mask` give the
            features) or a `BatchLayout` (then pass `features`).
        values: one number per position (`[pos]`, `[batch, pos]`) or per audio token of the
            item; None draws where the audio tokens are.
        sample / audio_index: which sample, and which of its audio items (an audio-in-video
            track counts as an audio item).
        features: the item's log-mel features `[n_mels, frames]` (default: from the batch,
            cut to its valid frames).
        waveform: the item's waveform (mono, `sampling_rate` Hz) for the `<audio>` player. The
            batch does not keep waveforms: pass the clip's (`clip.waveform`).
        hop_seconds: the features' frame hop (Whisper: 10 ms).
        token_seconds: how long one audio token lasts (default: the gap between consecutive
            token time stamps, 0.04 s for Qwen2.5-Omni).
        max_columns: longer clips average groups of frames into one pixel column.
    """
    layout, raw = _layout_and_raw(batch)
    pos, item = media_item_positions(layout, "audio", sample, audio_index)
    sample %= layout.batch_size
    times = layout.time[sample, pos].double().cpu().numpy()
    if not np.isfinite(times).all():
        raise ValueError("the audio tokens carry no time stamps (layout.time is NaN), so they cannot be placed on the spectrogram")
    order = np.argsort(times, kind="stable")
    pos, times = [pos[i] for i in order], times[order]
    if token_seconds is None:
        gaps = np.diff(times)
        gaps = gaps[gaps > 0]
        token_seconds = float(np.median(gaps)) if gaps.size else 0.04
    if not token_seconds > 0:
        raise ValueError(f"token_seconds must be positive; got {token_seconds}")
    if features is None:
        feats_all = raw.get("input_features")
        if feats_all is None:
            raise ValueError("this batch carries no input_features (a sliced or selected batch drops them): pass features=[n_mels, frames]")
        f = feats_all[item]
        fam = raw.get("feature_attention_mask")
        n_valid = int(fam[item].sum()) if fam is not None else f.shape[-1]
        features = f[..., :n_valid]
    feats = _as_numpy(features, "features")
    if feats.ndim != 2 or feats.shape[1] == 0:
        raise ValueError(f"features must be one item's log-mel [n_mels, frames]; got shape {tuple(feats.shape)}")
    if not (isinstance(max_columns, int) and max_columns > 0):
        raise ValueError(f"max_columns must be a positive integer; got {max_columns!r}")
    if display_width is not None:
        _check_positive_int(display_width, "display_width", "the spectrogram's width on the page in pixels")
    n_mels, n_frames = feats.shape
    k = max(1, math.ceil(n_frames / max_columns))
    width = math.ceil(n_frames / k)
    padded = np.full((n_mels, width * k), np.nan)
    padded[:, :n_frames] = feats
    cols_img = np.nanmean(padded.reshape(n_mels, width, k), axis=2)  # [n_mels, width]
    lo, hi = float(np.nanmin(cols_img)), float(np.nanmax(cols_img))
    grey = np.round((cols_img - lo) / ((hi - lo) or 1.0) * 255).astype(np.uint8)[::-1]  # low bins at the bottom
    spc = hop_seconds * k
    columns = audio_columns(times, token_seconds, width, spc)
    payload = {
        "width": width, "height": n_mels, "image": png_data_uri(grey), "image_range": [lo, hi],
        "frames_per_column": k, "seconds_per_column": spc, "seconds": width * spc,
        "columns": encode_array(columns, "i16" if len(pos) < 32768 else "i32"), "times": encode_array(times, "f32"),
        "positions": [int(p) for p in pos], "token_seconds": float(token_seconds),
        "values": None, "scale": None, "value_label": value_label, "audio": None,
        "display_width": int(display_width or min(1000, max(480, 2 * width))), "display_height": 150,
    }
    desc = [f"sample {sample}, audio item {audio_index} (batch item {item}): {len(pos)} tokens over "
            f"{times[-1] + token_seconds:.2f} s; spectrogram {n_mels} mel x {n_frames} frames ({width} columns)"]
    if values is not None:
        v = _item_values(values, layout, sample, pos, "audio")
        payload["values"] = encode_array(v)
        payload["scale"] = value_scale(v, vmin, vmax, center, cmap)
        j = int(np.nanargmax(v)) if np.isfinite(v).any() else None
        if j is not None:
            desc.append(f"{value_label}: max {v[j]:.4g} at position {pos[j]} (t = {times[j]:.2f} s)")
    if waveform is not None:
        payload["audio"] = wav_data_uri(waveform, sampling_rate)
        desc.append(f"audio: {len(_as_numpy(waveform, 'waveform')) / sampling_rate:.2f} s at {sampling_rate} Hz, playable")
    payload["note"] = (f"Audio tokens at positions {pos[0]}..{pos[-1]}, one per {token_seconds * 1000:.0f} ms. "
                       "Hover for time, mel bin, token and value" + ("; press play to follow the playhead." if waveform is not None else "."))
    static = (f"<img src='{payload['image']}' alt='log-mel spectrogram' style='display:block;width:{payload['display_width']}px;"
              f"height:{payload['display_height']}px'>" + _text_fallback(desc))
    return SpectrogramView(title or f"Audio of sample {sample}" + (f": {value_label} per audio token" if values is not None else ""),
                           payload, description=desc, fallback=static)


def _text_fallback(lines: Sequence[str]) -> str:
    """The description lines as escaped preformatted text (part of a static preview)."""
    import html

    return ("<pre style='margin:4px 0;font:11px ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap'>"
            + html.escape("\n".join(lines)) + "</pre>")


# ================================================================================== frame strip

_FRAMES_JS = r"""
var T=P.steps,h=P.rows,w=P.cols,val=P.values?V.decode(P.values):null,pos=V.decode(P.positions),s=P.scale,tp=V.tip(root);
if(val)V.colorbar(root,s,P.value_label);
var ctl=V.el('label',root,'av-note');ctl.appendChild(document.createTextNode('heat opacity '));var sl=V.el('input',ctl);
sl.type='range';sl.min=0;sl.max=100;sl.value=Math.round(P.alpha*100);sl.style.verticalAlign='middle';
var row=V.el('div',root);row.style.cssText='display:flex;flex-wrap:wrap;gap:8px;margin-top:4px';var ovs=[];
for(var t=0;t<T;t++){(function(t){var fig=V.el('div',row),box=V.el('div',fig),dw=P.frame_width,dh=P.frame_height;
box.style.cssText='position:relative;width:'+dw+'px;height:'+dh+'px';
if(P.frames){var im=V.el('img',box);im.src=P.frames[t];im.alt='frame at '+P.times[t].toFixed(2)+' s';
im.style.cssText='display:block;width:'+dw+'px;height:'+dh+'px;image-rendering:'+(P.pixelated?'pixelated':'auto');}
else{box.style.background='#e5e7eb';}
var cv=V.el('canvas',box);cv.width=dw;cv.height=dh;cv.style.cssText='position:absolute;left:0;top:0;opacity:'+P.alpha;ovs.push(cv);
var g=cv.getContext('2d');for(var r=0;r<h;r++)for(var c=0;c<w;c++){var k=(t*h+r)*w+c,x0=Math.round(c*dw/w),y0=Math.round(r*dh/h),
x1=Math.round((c+1)*dw/w),y1=Math.round((r+1)*dh/h),col=val?V.rgb(val[k],s):[43,108,176];
if(col){g.fillStyle=V.css(col,val?1:0.25);g.fillRect(x0,y0,x1-x0-1,y1-y0-1);}}
V.el('div',fig,'av-note','t = '+P.times[t].toFixed(2)+' s');
cv.addEventListener('mousemove',function(ev){var b=cv.getBoundingClientRect(),c=Math.floor((ev.clientX-b.left)/b.width*w),
r=Math.floor((ev.clientY-b.top)/b.height*h);if(c<0||r<0||c>=w||r>=h){tp.hide();return;}var k=(t*h+r)*w+c;
tp.show(ev,'t = '+P.times[t].toFixed(2)+' s, patch row '+r+' col '+c+'\nvideo token at position '+pos[k]+(val?'\n'+P.value_label+' '+V.fmt(val[k]):''));});
cv.addEventListener('mouseleave',function(){tp.hide();});})(t);}
sl.addEventListener('input',function(){ovs.forEach(function(c){c.style.opacity=sl.value/100;});});
V.el('div',root,'av-note',P.note);
"""


class FrameStripView(View):
    """Per-video-token values as heat on each frame's patch grid; see `frame_strip_view`."""

    kind = "frame_strip"
    render_js = _FRAMES_JS


def frames_from_pixel_values(
    pixel_values_videos,
    grid_thw,
    item: int = 0,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    image_mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
    image_std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
) -> np.ndarray:
    """The frames a Qwen2-VL-style processor saw, rebuilt from its patches: uint8 `[gt *
    temporal_patch_size, gh * patch_size, gw * patch_size, 3]` for video `item`.

    Undoes `_patchify`'s order (rows (t, h/m, w/m, m, m), columns (C, tp, P, P)) and the
    normalisation `(x / 255 - mean) / std` (CLIP's mean and std by default), rounding to 8 bits;
    the frames are at the processor's resized size (e.g. 56 x 56 for the toy), not the original."""
    pv = _as_numpy(pixel_values_videos, "pixel_values_videos")
    grids = np.asarray(grid_thw.tolist() if isinstance(grid_thw, Tensor) else grid_thw, dtype=np.int64).reshape(-1, 3)
    if not 0 <= item < len(grids):
        raise ValueError(f"there are {len(grids)} videos in the batch; no video {item}")
    p, tp, m = patch_size, temporal_patch_size, merge_size
    if pv.ndim != 2 or pv.shape[1] != 3 * tp * p * p:
        raise ValueError(
            f"pixel_values_videos has shape {tuple(pv.shape)}; with patch_size={p} and temporal_patch_size={tp} "
            f"each row should hold 3 * {tp} * {p} * {p} = {3 * tp * p * p} values: pass the model's patch sizes"
        )
    sizes = grids.prod(1)
    if int(sizes.sum()) != pv.shape[0]:
        raise ValueError(f"video_grid_thw {grids.tolist()} needs {int(sizes.sum())} patch rows; pixel_values_videos has {pv.shape[0]}")
    start = int(sizes[:item].sum())
    gt, gh, gw = (int(x) for x in grids[item])
    x = pv[start : start + gt * gh * gw].reshape(gt, gh // m, gw // m, m, m, 3, tp, p, p)
    x = x.transpose(0, 6, 1, 3, 7, 2, 4, 8, 5).reshape(gt * tp, gh * p, gw * p, 3)  # t, H, W, C
    x = x * np.asarray(image_std) * 255.0 + np.asarray(image_mean) * 255.0
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _frame_image(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, bool]:
    """A uint8 RGB frame, shrunk to at most `max_side` pixels a side; whether it is small (drawn
    with visible pixels when enlarged)."""
    from PIL import Image

    f = np.asarray(frame)
    if f.ndim == 2:
        f = np.repeat(f[..., None], 3, axis=2)
    if f.ndim != 3 or f.shape[2] not in (3, 4):
        raise ValueError(f"frames must be [T, H, W, 3]; a frame has shape {tuple(f.shape)}")
    f = f[..., :3]
    if f.dtype != np.uint8:
        f = np.clip(np.round(f * 255 if f.max() <= 1.0 else f), 0, 255).astype(np.uint8)
    h, w = f.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        f = np.asarray(Image.fromarray(f).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR))
    return f, max(h, w) < 128


def frame_strip_view(
    batch,
    values=None,
    sample: int = 0,
    *,
    video_index: int = 0,
    frames=None,
    grid=None,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    value_label: str = "value",
    title: Optional[str] = None,
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    center: Optional[float] = None,
    cmap: Optional[str] = None,
    frame_width: int = 168,
    max_frame_side: int = 192,
    alpha: float = 0.55,
) -> FrameStripView:
    """One frame per temporal grid step of a video item, each labelled with its time, with the
    per-token `values` of its video tokens as heat on the merged patch grid (hover a cell for its
    token and value; a slider sets the heat's opacity).

    Args:
        batch: the `AVBatch` (its `raw["video_grid_thw"]` gives the grid and, when `frames` is not
            given, `raw["pixel_values_videos"]` the frames) or a `BatchLayout` (then pass `grid`).
        values: one number per position (`[pos]`, `[batch, pos]`) or per video token of the item;
            None outlines the grid.
        sample / video_index: which sample, and which of its video items.
        frames: the frames `[T, H, W, 3]` (uint8) of the item exactly as the processor sampled
            them, i.e. at the `fps` given to `prepare_media` (frame i at i / fps seconds), not the
            clip's native frame rate: step t shows frame `t * temporal_patch_size` (the first of
            the frames it merges), which is only the right frame when the frames are the
            sampled ones (`clip.frames` of the synthetic clips is already at `synth.FPS`; resample
            a real video to the processor's fps first, or leave `frames` out to rebuild them
            from the batch). The grid covers the
            processor's resized frame, which keeps the aspect ratio up to rounding to 28 pixels, so
            it is stretched over the original frame. Without `frames`, the frames are rebuilt
            from the batch's patches (`frames_from_pixel_values`: un-normalised, at the resized
            size); with neither, the grid is drawn on grey.
        grid: `(gt, gh, gw)` in patches (default: the batch's `video_grid_thw` for this item).
        patch_size / temporal_patch_size / merge_size: the vision tower's (Qwen2.5-Omni: 14, 2, 2).
        frame_width: display width of each frame in pixels; `max_frame_side` shrinks big frames
            before they are embedded (the page stays small). Both positive integers.
        alpha: the heat's opacity in [0, 1] (a slider changes it on the page).
    """
    for name, x, what in (("frame_width", frame_width, "display width of a frame in pixels"),
                          ("max_frame_side", max_frame_side, "the longest side a frame is embedded at, in pixels"),
                          ("patch_size", patch_size, "the vision tower's patch side"),
                          ("temporal_patch_size", temporal_patch_size, "frames merged into one temporal grid step"),
                          ("merge_size", merge_size, "patches merged into one token per side")):
        _check_positive_int(x, name, what)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha is the heat's opacity and must be a number in [0, 1]; got {alpha!r}")
    layout, raw = _layout_and_raw(batch)
    pos, item = media_item_positions(layout, "video", sample, video_index)
    sample %= layout.batch_size
    if grid is None:
        grids = raw.get("video_grid_thw")
        if grids is None:
            raise ValueError("this batch carries no video_grid_thw (a selected or sliced batch drops it): pass grid=(t, h, w)")
        grid = grids[item].tolist()
    gt, gh, gw = (int(x) for x in (grid.tolist() if isinstance(grid, Tensor) else grid))
    if gh % merge_size or gw % merge_size:
        raise ValueError(f"the grid {(gt, gh, gw)} is not divisible by merge_size={merge_size}")
    h, w = gh // merge_size, gw // merge_size
    if len(pos) != gt * h * w:
        raise ValueError(
            f"video item {video_index} of sample {sample} has {len(pos)} tokens but the grid {(gt, gh, gw)} with merge "
            f"{merge_size} needs {gt} x {h} x {w} = {gt * h * w}: pass this item's grid and merge_size"
        )
    pos_grid = np.asarray(pos, dtype=np.int64).reshape(gt, h, w)  # position order is (t, row, col)
    times = [float(layout.time[sample, int(pos_grid[t, 0, 0])]) for t in range(gt)]
    times = [t if t == t else float(i) for i, t in enumerate(times)]
    source = "none"
    if frames is None and raw.get("pixel_values_videos") is not None and raw.get("video_grid_thw") is not None:
        frames = frames_from_pixel_values(raw["pixel_values_videos"], raw["video_grid_thw"], item, patch_size,
                                          temporal_patch_size, merge_size)
        source = "rebuilt from pixel_values_videos"
    elif frames is not None:
        source = "given"
    images, pixelated = None, False
    fw, fh = int(frame_width), int(round(frame_width * gh / gw))
    if frames is not None:
        fr = frames.detach().cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
        if fr.ndim not in (3, 4) or fr.shape[0] == 0:
            raise ValueError(f"frames must be [T, H, W, 3]; got shape {tuple(fr.shape)}")
        images = []
        for t in range(gt):
            img, small = _frame_image(fr[min(t * temporal_patch_size, fr.shape[0] - 1)], max_frame_side)
            pixelated = pixelated or small
            images.append(png_data_uri(img))
        fh = int(round(frame_width * fr.shape[1] / fr.shape[2]))
    payload = {
        "steps": gt, "rows": h, "cols": w, "times": times, "positions": encode_array(pos_grid, "i32"),
        "frames": images, "pixelated": pixelated, "frame_width": fw, "frame_height": fh, "alpha": float(alpha),
        "values": None, "scale": None, "value_label": value_label,
    }
    desc = [f"sample {sample}, video item {video_index} (batch item {item}): {gt} steps x {h} x {w} tokens, "
            f"times {times[0]:.2f}..{times[-1]:.2f} s; frames {source}"]
    if values is not None:
        v = _item_values(values, layout, sample, pos, "video").reshape(gt, h, w)
        payload["values"] = encode_array(v)
        payload["scale"] = value_scale(v, vmin, vmax, center, cmap)
        if np.isfinite(v).any():
            t, r, c = np.unravel_index(int(np.nanargmax(v)), v.shape)
            desc.append(f"{value_label}: max {v[t, r, c]:.4g} at t = {times[t]:.2f} s, row {r}, col {c} (position {pos_grid[t, r, c]})")
    payload["note"] = (f"Each frame: one temporal grid step ({temporal_patch_size} frames merged; the first shown), "
                       f"{h} x {w} video tokens (each {merge_size}x{merge_size} patches of {patch_size} px). Frames: {source}.")
    static = ""
    if images:
        static = "<div style='display:flex;flex-wrap:wrap;gap:8px;margin:4px 0'>" + "".join(
            f"<div><img src='{u}' alt='frame at {t:.2f} s' style='display:block;width:{fw}px;height:{fh}px'>"
            f"<div style='color:#4b5563;font-size:11px'>t = {t:.2f} s</div></div>" for u, t in zip(images, times)) + "</div>"
    return FrameStripView(title or f"Video of sample {sample}" + (f": {value_label} per video token" if values is not None else ""),
                          payload, description=desc, fallback=static + _text_fallback(desc))
