"""Results' `.plot()` group bands and the notebook / terminal reprs of layouts, batches and results.

Bands are checked against a brute-force run-length of `layout.labels(i)`; heatmap reprs by
decoding their PNG (the largest cell must be the brightest pixel at its row and column); sizes
against fixed bounds (a 2,048-token batch's repr stays small); escaping by parsing the HTML as a
browser does (no element a hostile token could have injected)."""

from __future__ import annotations

import base64
import copy
import io
import math
import pickle
import re
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from avlens.analysis.dominance import ModalityDominance
from avlens.analysis.sinks import SinkReport
from avlens.analysis.study import HubStudy
from avlens.batch import AVBatch
from avlens.interventions.results import LabelledTensor, PatchResult
from avlens.layout import GROUP_COLORS, GROUP_LETTERS, PARTITION_GROUPS, BatchLayout
from avlens.mitigation.compare import Comparison
from avlens.model.summary import AttentionGroupSummary
from avlens.viz import BarView, GroupFlowView, HeatmapView, TokenStripView, attention_heatmap
from avlens.viz.views import decode_array

EVIL = "</script><script>window.__pwned=1</script><img src=x onerror=alert(1)>"
# the toy prompt's layout: T2 S2 | chunk 0: V8 A50 | chunk 1: V8 A50 | S2 T31 S1 T2
TOY_RUNS = [("text", 2), ("special", 2), ("video", 8), ("audio", 50), ("video", 8), ("audio", 50), ("special", 2),
            ("text", 31), ("special", 1), ("text", 2)]


def make_layout(runs_per_sample, str_tokens=None) -> BatchLayout:
    """A layout from run lists (`[(group, length), ...]` per sample, right-padded to one length),
    media positions time-stamped 0.04 s apart per modality and chunked by 2-second blocks."""
    n = max(sum(k for _, k in runs) for runs in runs_per_sample)
    b = len(runs_per_sample)
    masks = {g: torch.zeros(b, n, dtype=torch.bool) for g in PARTITION_GROUPS}
    time = torch.full((b, n), float("nan"))
    chunk = torch.full((b, n), -1, dtype=torch.long)
    for i, runs in enumerate(runs_per_sample):
        p, t = 0, {"audio": 0.0, "video": 0.0}
        for g, k in runs:
            masks[g][i, p:p + k] = True
            if g in t:
                step = 0.04 if g == "audio" else 2.0 / 8 * 2
                for j in range(k):
                    time[i, p + j] = t[g]
                    chunk[i, p + j] = int(t[g] // 2)
                    t[g] += step
            p += k
        masks["pad"][i, p:] = True
    return BatchLayout(masks, time=time, chunk=chunk, str_tokens=str_tokens)


def brute_runs(labels):
    """(group, start, end) of every maximal run, by a plain loop."""
    out = []
    start = 0
    for p in range(1, len(labels) + 1):
        if p == len(labels) or labels[p] != labels[start]:
            out.append((labels[start], start, p))
            start = p
    return out


def bands(fig, xref=None):
    """The group-band shapes of a figure (optionally of one axis), as (group, x0, x1)."""
    out = []
    for s in fig.layout.shapes:
        if (s.name or "").startswith("group band ") and (xref is None or s.xref == xref):
            out.append((s.name[len("group band "):], s.x0, s.x1, s.fillcolor))
    return out


def expected_bands(labels):
    return [(g, a - 0.5, b - 0.5, GROUP_COLORS[g]) for g, a, b in brute_runs(labels)]


class Tags(HTMLParser):
    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.tags, self.text = [], []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


SAFE_TAGS = {"style", "div", "span", "b", "table", "tr", "td", "th", "img"}


def assert_safe_html(h, hostile=EVIL):
    """Only the markup the reprs write: no script, no element from the hostile text, which must
    come back as text (or an attribute value) when parsed."""
    page = Tags(h)
    assert {t for t, _ in page.tags} <= SAFE_TAGS, {t for t, _ in page.tags}
    for tag, attrs in page.tags:
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
    assert "<script" not in h.lower() and "<img src=x" not in h
    if hostile:
        shown = "".join(page.text) + "".join(v or "" for _, a in page.tags for v in a.values())
        assert hostile in shown  # shown as text, not swallowed


def png_pixels(h):
    """The first PNG heatmap of a repr, as an [h, w, 3] uint8 array."""
    from PIL import Image

    m = re.search(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", h)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(m.group(1)))).convert("RGB"))


def toy_result(n_layers=3, dims=("layer", "position"), positions=None, seed=0):
    lay = make_layout([TOY_RUNS])
    pos = list(range(lay.n_pos)) if positions is None else list(positions)
    g = torch.Generator().manual_seed(seed)
    sizes = {"layer": n_layers, "position": len(pos), "head": 4}
    coords = {"layer": list(range(n_layers)), "position": pos, "head": list(range(4))}
    values = torch.rand(*[sizes[d] for d in dims], generator=g)
    return PatchResult(values=values, dims=dims, coords={d: coords[d] for d in dims}, base=torch.tensor([0.5, 0.5]),
                       source=torch.tensor([0.9, 0.9]), metric="answer_prob", position_groups=lay.labels(0), layout=lay), lay


# ------------------------------------------------------------------------------------ bands (plotly backend)


def test_patch_heatmap_has_one_labelled_band_per_group_run():
    res, lay = toy_result()
    fig = res.plot(backend="plotly")
    assert bands(fig) == expected_bands(lay.labels(0))
    # labels: the group letter and run length on every run at least 3 % of the axis
    notes = {(a.text, a.x) for a in fig.layout.annotations if (a.name or "").startswith("group band ")}
    want = {(f"{GROUP_LETTERS[g]}{b - a}", (a + b - 1) / 2) for g, a, b in brute_runs(lay.labels(0)) if (b - a) / lay.n_pos >= 0.03}
    assert notes == want and ("A50", 36.5) in notes
    assert {t.name for t in fig.data if t.type == "scatter"} == {"text", "special", "video", "audio"}  # legend


def test_position_axis_is_horizontal_whatever_the_axis_order():
    res, lay = toy_result(dims=("position", "layer"))
    fig = res.plot(backend="plotly")
    heat = fig.data[0]
    assert np.asarray(heat.z).shape == (3, lay.n_pos)  # rows: layers, columns: positions
    torch.testing.assert_close(torch.tensor(np.asarray(heat.z), dtype=torch.float32), res.values.plain().T)
    assert bands(fig) == expected_bands(lay.labels(0))


def test_every_panel_of_a_faceted_result_gets_its_bands_above_its_own_plot():
    res, lay = toy_result(dims=("layer", "head", "position"))  # facets: heads
    fig = res.plot(backend="plotly")
    assert len(fig.data) - 4 == 4  # four heatmap panels (+ four legend entries)
    for f in range(4):
        ref = "x" if f == 0 else f"x{f + 1}"
        got = bands(fig, ref)
        assert got == expected_bands(lay.labels(0)), ref
        top = fig.layout["yaxis" + ("" if f == 0 else str(f + 1))].domain[1]
        ys = {s.yanchor for s in fig.layout.shapes if s.xref == ref}
        assert ys == {top}


def test_bands_follow_a_subset_of_positions():
    res, lay = toy_result(positions=range(100, 156))
    fig = res.plot(backend="plotly")
    labels = [lay.labels(0)[p] for p in range(100, 156)]
    assert bands(fig) == expected_bands(labels)
    assert bands(fig)[0][0] == "audio"


def test_one_axis_results_bars_with_bands_over_positions_and_none_over_groups():
    lay = make_layout([TOY_RUNS])
    res = PatchResult(values=torch.rand(lay.n_pos), dims=("position",), coords={"position": list(range(lay.n_pos))},
                      position_groups=lay.labels(0))
    fig = res.plot(backend="plotly")
    assert fig.data[0].type == "bar" and bands(fig) == expected_bands(lay.labels(0))
    assert list(fig.data[0].marker.color) == [GROUP_COLORS[g] for g in lay.labels(0)]
    by_group = PatchResult(values=torch.rand(3), dims=("group",), coords={"group": ["audio", "video", "text"]})
    fig = by_group.plot(backend="plotly")
    assert bands(fig) == [] and list(fig.data[0].marker.color) == [GROUP_COLORS[g] for g in ("audio", "video", "text")]


def test_sink_map_and_attention_heatmap_bands():
    lay = make_layout([TOY_RUNS, TOY_RUNS[:-1] + [("pad", 2)]])
    L, H, n = 4, 2, lay.n_pos
    g = torch.Generator().manual_seed(1)
    rep = SinkReport(dims=[], tau=25.0, eps=0.3, hidden_scores=torch.zeros(2, L, n), attention_scores=torch.rand(2, L, H, n, generator=g),
                     layout=lay, valid=~lay.masks["pad"])
    for s in (0, 1):
        fig = rep.plot(s, definition="attention", backend="plotly")
        assert bands(fig) == expected_bands(lay.labels(s))
    labels = lay.labels(0)[100:140]
    fig = attention_heatmap(torch.rand(40, 40), [str(i) for i in range(40)], labels, backend="plotly")
    top = [(s.name[11:], s.x0, s.x1) for s in fig.layout.shapes if s.yref == "paper"]
    right = [(s.name[11:], s.y0, s.y1) for s in fig.layout.shapes if s.xref == "paper"]
    assert top == right == [(gr, a - 0.5, b - 0.5) for gr, a, b in brute_runs(labels)]


def test_modality_dominance_plot_bands_over_its_sinks():
    mds = ModalityDominance(torch.rand(4, 5) * 2 - 1, [13, 20, 4, 90, 5], ["audio", "audio", "video", "audio", "video"])
    fig = mds.plot(backend="plotly")
    assert bands(fig) == expected_bands(["audio", "audio", "video", "audio", "video"])
    assert fig.layout.coloraxis.cmid == 0


# ------------------------------------------------------------------------------------ bands and data of the default views


def view_bands(view, axis="cols"):
    """A view's band runs as (group, start, end), decoded from its payload."""
    B = view.payload["bands"]
    return [(B["names"][k], a, b) for k, a, b in (B[axis] or [])]


def f16_close(got, want):
    """float16 payloads: within half a float16 step of the reference (relative 2^-11, plus subnormals)."""
    want = np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=2 ** -11, atol=2 ** -24)


def test_default_plot_is_a_heatmap_view_with_brute_force_bands_and_values():
    res, lay = toy_result()
    view = res.plot()
    assert isinstance(view, HeatmapView) and view.kind == "heatmap"
    assert view_bands(view) == brute_runs(lay.labels(0))  # one band per run of same-group positions
    B = view.payload["bands"]
    assert [B["colors"][B["names"].index(g)] for g, _, _ in view_bands(view)] == [GROUP_COLORS[g] for g, _, _ in brute_runs(lay.labels(0))]
    assert B["letters"][B["names"].index("audio")] == "A" and ("audio", 12, 62) in view_bands(view)  # labelled A50
    f16_close(decode_array(view.payload["values"])[0], res.values.plain().numpy())
    assert view.payload["scale"]["cmap"] == "rdbu"  # a baseline: diverging around it
    sc = view.payload["scale"]
    assert abs((sc["vmin"] + sc["vmax"]) / 2 - 0.5) < 1e-9  # centred on the unpatched metric
    assert view.payload["cols"] is None and view.payload["col_start"] == 0  # 0..n-1 is not sent


def test_default_plot_bands_follow_a_subset_and_the_position_axis_goes_across():
    res, lay = toy_result(positions=range(100, 156))
    view = res.plot()
    assert view_bands(view) == brute_runs([lay.labels(0)[p] for p in range(100, 156)])
    assert view.payload["col_start"] == 100 and view.payload["col_title"] == "position"
    res, lay = toy_result(dims=("position", "layer"))
    view = res.plot()
    assert view.payload["shape"] == [1, 3, lay.n_pos] and view_bands(view) == brute_runs(lay.labels(0))
    f16_close(decode_array(view.payload["values"])[0], res.values.plain().numpy().T)


def test_faceted_result_is_one_panel_per_head():
    res, lay = toy_result(dims=("layer", "head", "position"))
    view = res.plot()
    assert view.payload["shape"] == [4, 3, lay.n_pos] and view.payload["facets"] == ["0", "1", "2", "3"]
    assert view.payload["facet_title"] == "head"
    want = res.values.plain().numpy()  # [layer, head, position]
    f16_close(decode_array(view.payload["values"]), want.transpose(1, 0, 2))


def test_large_heatmap_payload_is_small_and_decodes():
    """A 28-layer x 2,048-position result: float16 data, under 300 kB (plotly's figure was 2.5 MB)."""
    runs = [("text", 2), ("special", 2)] + [("video", 8), ("audio", 50)] * 34 + [("special", 2), ("text", 70)]
    lay = make_layout([runs])
    assert lay.n_pos == 2048
    vals = torch.rand(28, 2048, generator=torch.Generator().manual_seed(4))
    res = PatchResult(values=vals, dims=("layer", "position"), coords={"layer": list(range(28)), "position": list(range(2048))},
                      base=torch.tensor([0.5]), metric="answer_prob", position_groups=lay.labels(0))
    view = res.plot()
    assert view.payload_bytes < 300_000, view.payload_bytes
    assert len(view.html().encode()) < 300_000  # the static PNG preview included
    f16_close(decode_array(view.payload["values"])[0], vals.numpy())
    assert view_bands(view) == brute_runs(lay.labels(0)) and len(view_bands(view)) == 72
    assert len(res.plot(backend="plotly").to_json()) > 2_000_000  # what the view replaces


def test_one_axis_results_are_bar_views_with_group_colours():
    lay = make_layout([TOY_RUNS])
    vals = torch.rand(lay.n_pos)
    res = PatchResult(values=vals, dims=("position",), coords={"position": list(range(lay.n_pos))}, position_groups=lay.labels(0))
    view = res.plot()
    assert isinstance(view, BarView) and view_bands(view) == brute_runs(lay.labels(0))
    assert view.payload["colors"] == [GROUP_COLORS[g] for g in lay.labels(0)]
    f16_close(decode_array(view.payload["values"])[0], vals.numpy())
    by_group = PatchResult(values=torch.tensor([0.25, -0.5, 1.0]), dims=("group",), coords={"group": ["audio", "video", "text"]})
    view = by_group.plot()
    assert view.payload["bands"]["cols"] is None and view.payload["labels"] == ["audio", "video", "text"]
    assert view.payload["colors"] == [GROUP_COLORS[g] for g in ("audio", "video", "text")]
    assert decode_array(view.payload["values"]).tolist() == [[0.25, -0.5, 1.0]]


def test_sink_map_view_marks_the_sink_cells_and_has_bands():
    lay = make_layout([TOY_RUNS, TOY_RUNS[:-1] + [("pad", 2)]])
    L, H, n = 4, 2, lay.n_pos
    g = torch.Generator().manual_seed(1)
    att = torch.rand(2, L, H, n, generator=g)
    rep = SinkReport(dims=[], tau=25.0, eps=0.9, hidden_scores=torch.zeros(2, L, n), attention_scores=att, layout=lay,
                     valid=~lay.masks["pad"])
    for s in (0, 1):
        view = rep.plot(s, definition="attention")
        assert isinstance(view, HeatmapView) and view_bands(view) == brute_runs(lay.labels(s))
        z = att[s].amax(1).numpy()
        f16_close(decode_array(view.payload["values"])[0], z)
        marked = set(decode_array(view.payload["marked"]).tolist())
        mask = rep._mask("attention")[s]
        want = {l * n + p for l in range(L) for p in range(n) if bool(mask[l, p])}
        assert marked == want and len(want) > 0


def test_attention_heatmap_view_bands_on_both_axes_and_modality_dominance_view():
    labels = make_layout([TOY_RUNS]).labels(0)[100:140]
    pat = torch.rand(40, 40)
    view = attention_heatmap(pat, [str(i) for i in range(40)], labels)
    assert isinstance(view, HeatmapView)
    assert view_bands(view, "cols") == view_bands(view, "rows") == brute_runs(labels)
    f16_close(decode_array(view.payload["values"])[0], pat.numpy())
    assert view.payload["scale"]["vmin"] == 0.0 and view.payload["cols"] == view.payload["rows"] == [str(i) for i in range(40)]
    sinks = ["audio", "audio", "video", "audio", "video"]
    data = torch.rand(4, 5) * 2 - 1
    mview = ModalityDominance(data, [13, 20, 4, 90, 5], sinks).plot()
    assert view_bands(mview) == brute_runs(sinks) and mview.payload["cols"] == ["13", "20", "4", "90", "5"]
    assert mview.payload["scale"]["cmap"] == "rdbu" and mview.payload["scale"]["vmin"] == -mview.payload["scale"]["vmax"]
    f16_close(decode_array(mview.payload["values"])[0], data.numpy())


def test_hub_study_plot_is_a_bar_view_with_its_intervals():
    recs = [{"id": i, "skipped": None, "dominant": "audio", "set_sizes": {"all": 16, "sink": 4},
             "ie_clean": {"all": c, "sink": c / 10}, "ie_corrupt": {"all": c / 5, "sink": c / 50}}
            for i, c in enumerate([10.0, 20.0, 30.0])]
    st = HubStudy(recs, {"N": 2})
    view = st.plot()
    t = st.table()
    assert isinstance(view, BarView) and view.payload["facets"] == ["audio-dominant: IE_clean x 100", "audio-dominant: IE_corrupt x 100"]
    sets = view.payload["labels"]
    for f, key in enumerate(("ie_clean", "ie_corrupt")):
        for j, s_ in enumerate(sets):
            row = t[t["token_set"] == s_].iloc[0]
            for arr, col in (("values", key), ("lo", key + "_lo"), ("hi", key + "_hi")):
                assert abs(decode_array(view.payload[arr])[f, j] - row[col]) <= 2e-2 * max(1.0, abs(row[col])), (arr, col)
    assert len(st.plot(backend="plotly").data) == 2


def test_plot_backends_are_checked():
    res, _ = toy_result()
    with pytest.raises(ValueError, match="backend must be 'view'"):
        res.plot(backend="matplotlib")


def test_plot_checks_kind_and_backend_before_anything_else():
    """A bad backend is refused for kind='strip' too (the strip path used to skip the check), and a
    bad kind or backend before a bad sample or axis label is looked at."""
    res, _ = toy_result()
    lay = make_layout([TOY_RUNS])
    n = lay.n_pos
    rep = SinkReport(dims=[], tau=25.0, eps=0.3, hidden_scores=torch.zeros(1, 3, n), attention_scores=torch.rand(1, 3, 2, n),
                     layout=lay, valid=~lay.masks["pad"])
    mds = ModalityDominance(torch.rand(3, 2) * 2 - 1, [13, 20], ["audio", "video"], lay)
    for plot, kinds in ((res.plot, ("auto", "heatmap", "strip")), (rep.plot, ("map", "strip")), (mds.plot, ("heatmap", "strip"))):
        for kind in kinds:
            with pytest.raises(ValueError, match="backend must be 'view'"):
                plot(kind=kind, backend="bogus")
        with pytest.raises(ValueError, match="kind must be"):
            plot(kind="pie")
    with pytest.raises(ValueError, match="backend must be 'view'"):
        rep.plot(sample=99, kind="strip", backend="bogus")  # not the sample's IndexError
    with pytest.raises(ValueError, match="kind must be"):
        res.plot(kind="pie", layer=0)  # not the axis labels' TypeError
    assert isinstance(res.plot(kind="strip", layer=0, backend="plotly"), TokenStripView)  # a valid backend: still a strip


# ------------------------------------------------------------------------------------ strips


def test_patch_strip_is_a_token_strip_of_the_selected_row():
    res, lay = toy_result()
    view = res.plot(kind="strip", layer=1)
    assert isinstance(view, TokenStripView)
    got = decode_array(view.payload["values"])
    want = res.values.sel(layer=1).plain().numpy()
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)  # float16 payload
    assert view.payload["value_label"] == "answer_prob" and view.payload["time"] is not None
    with pytest.raises(ValueError, match="pick one label"):
        res.plot(kind="strip")
    with pytest.raises(KeyError, match="unknown axis"):
        res.plot(kind="strip", layr=1)
    with pytest.raises(TypeError, match="only select a row"):
        res.plot(layer=1)
    no_pos = PatchResult(values=torch.rand(3), dims=("group",), coords={"group": ["audio", "video", "text"]})
    with pytest.raises(ValueError, match="no 'position'"):
        no_pos.plot(kind="strip")


def test_patch_strip_over_a_subset_and_without_a_layout():
    res, lay = toy_result(positions=range(100, 156))
    res.layout = None  # rebuilt from position_groups (no time stamps then)
    view = res.plot(kind="strip", layer=0)
    assert view.payload["n"] == 56 and view.payload["runs"] == [[100, 156]]
    np.testing.assert_allclose(decode_array(view.payload["values"]), res.values.sel(layer=0).plain().numpy(), atol=2e-3)


def test_sink_strip_is_the_largest_score_over_layers():
    lay = make_layout([TOY_RUNS])
    g = torch.Generator().manual_seed(2)
    att = torch.rand(1, 4, 2, lay.n_pos, generator=g)
    rep = SinkReport(dims=[], tau=25.0, eps=0.3, hidden_scores=torch.zeros(1, 4, lay.n_pos), attention_scores=att,
                     layout=lay, valid=~lay.masks["pad"])
    view = rep.plot(definition="attention", kind="strip")
    want = np.array([max(float(att[0, l, h, p]) for l in range(4) for h in range(2)) for p in range(lay.n_pos)])
    np.testing.assert_allclose(decode_array(view.payload["values"]), want, atol=2e-3)


# ------------------------------------------------------------------------------------ layout / batch reprs


def long_layout(batch=8, n=2048):
    """Audio-in-video samples of `n` tokens (15 chunks of V64 A50 then text), right-padded."""
    runs = [("text", 3), ("special", 2)] + [("video", 64), ("audio", 50)] * 15 + [("special", 2)]
    used = sum(k for _, k in runs)
    per = [runs + [("text", n - used - 7 * i)] for i in range(batch)]
    return make_layout(per)


def test_layout_repr_shows_counts_codes_time_spans_and_overlays():
    lay = make_layout([TOY_RUNS, TOY_RUNS]).with_group("sink", [[4, 60], [7]])
    r = repr(lay)
    assert r.splitlines()[0] == "BatchLayout(batch=2, pos=156)"
    assert "audio=100, video=16" in r and "sink=[2, 1]" in r
    assert "[0] T2 S2 V8 A50 V8 A50 S2 T31 S1 T2" in r
    assert "audio 0.00-3.96 s" in r and "sink [4, 60]" in r and "sink [7]" in r
    one = repr(lay[1])
    assert one.startswith("TokenLayout(batch=1, pos=156)") and "sink [7]" in one


def test_layout_html_has_one_block_per_run_and_marks_overlays():
    lay = make_layout([TOY_RUNS, TOY_RUNS]).with_group("sink", [[4, 60], [7]])
    h = lay._repr_html_()
    assert_safe_html(h, hostile=None)
    page = Tags(h)
    blocks = [a for t, a in page.tags if t == "div" and (a.get("class") or "").startswith("avl-") and a.get("class")[4:] in PARTITION_GROUPS]
    assert len(blocks) == 2 * len(brute_runs(lay.labels(0)))
    first = blocks[:len(TOY_RUNS)]
    for (g, a, b), blk in zip(brute_runs(lay.labels(0)), first):
        assert blk["class"] == f"avl-{g}"
        left = float(re.search(r"left:([\d.]+)%", blk["style"]).group(1))
        assert abs(left - 100 * a / lay.n_pos) < 1e-3
        assert blk["title"].startswith(f"{g}: position")
    tips = [a.get("title", "") for _, a in page.tags]
    assert "sink: position 4" in tips and "sink: position 60" in tips and "sink: position 7" in tips
    assert any("t = 0.00-1.96 s, chunk 0" in t for t in tips)


def test_a_2048_token_batch_repr_stays_small():
    lay = long_layout()
    assert lay.shape == (8, 2048)
    h = lay._repr_html_()
    assert len(h.encode()) < 64_000, len(h)
    batch = AVBatch(input_ids=torch.zeros(lay.shape, dtype=torch.long), attention_mask=(~lay.masks["pad"]).long(),
                    position_ids=torch.zeros(3, *lay.shape, dtype=torch.long), layout=lay,
                    features={"audio": torch.zeros(int(lay.counts("audio").sum()), 16)})
    hb = batch._repr_html_()
    assert len(hb.encode()) < 45_000 and "features: audio [6000, 16]" in hb and "3-D (M-RoPE)" in hb
    assert repr(batch).startswith("AVBatch(shape=(8, 2048), features: audio=(6000, 16), 3-D positions)")
    # worst case: a group change at every position -> bucketed into at most MAX_BLOCKS blocks a row
    alt = make_layout([[("audio" if i % 2 else "text", 1) for i in range(2048)]] * 8)
    ha = alt._repr_html_()
    assert len(ha.encode()) < 400_000, len(ha)
    assert "(bucketed)" in ha


def test_layout_html_escapes_token_text():
    evil = "</script><img src=x onerror=alert(1)>"  # hover texts keep 60 characters of a run
    toks = [evil, "x"] + ["y"] * 154
    lay = make_layout([TOY_RUNS], str_tokens=[toks])
    h = lay._repr_html_()
    assert_safe_html(h, hostile=evil + "x")


# ------------------------------------------------------------------------------------ result reprs


def test_patch_result_repr_lists_the_top_cells_by_effect():
    res, lay = toy_result()
    r = repr(res)
    v = res.values.plain()
    flat = sorted(((abs(float(v[l, p]) - 0.5), l, p) for l in range(3) for p in range(lay.n_pos)), reverse=True)
    for _, l, p in flat[:5]:
        assert f"layer {l}, position {p} ({lay.labels(0)[p]}): {float(v[l, p]):.4g}" in r
    assert "unpatched run 0.5, source run 0.9" in r


def test_labelled_tensor_repr_names_where_the_extremes_are():
    t = LabelledTensor(torch.tensor([[0.0, 3.0, 1.0], [-2.0, 0.5, float("nan")]]), ("layer", "group"),
                       {"layer": [4, 5], "group": ["audio", "video", "text"]})
    r = repr(t)
    assert "LabelledTensor(layer=2, group=3)" in r
    assert "min -2, max 3" in r and "max at layer 4, group video; min at layer 5, group audio" in r
    h = t._repr_html_()
    assert_safe_html(h, hostile=None)


def test_patch_result_html_heatmap_puts_the_largest_cell_at_its_row_and_column():
    res, lay = toy_result(n_layers=6)
    res.base = None  # sequential (viridis) scale: the maximum is the brightest yellow
    h = res._repr_html_()
    px = png_pixels(h)
    assert px.shape == (6, lay.n_pos, 3)
    l, p = divmod(int(res.values.plain().argmax()), lay.n_pos)
    assert tuple(px[l, p]) == (0xfd, 0xe7, 0x25)
    l, p = divmod(int(res.values.plain().argmin()), lay.n_pos)
    assert tuple(px[l, p]) == (0x44, 0x01, 0x54)
    assert_safe_html(h, hostile=None)


def test_a_28_layer_2048_position_result_repr_stays_small_and_escapes_its_names():
    lay = long_layout(batch=1)
    n = lay.n_pos
    res = PatchResult(values=torch.rand(28, n), dims=("layer", "position"), coords={"layer": list(range(28)), "position": list(range(n))},
                      base=torch.tensor([0.3]), metric=EVIL, method=EVIL, position_groups=lay.labels(0))
    h = res._repr_html_()
    assert len(h.encode()) < 100_000, len(h)  # worst case: noise does not compress
    assert_safe_html(h)
    assert EVIL in repr(res)


def test_sink_report_reprs_show_its_global_sinks():
    lay = make_layout([TOY_RUNS])
    att = torch.zeros(1, 4, 2, lay.n_pos)
    att[0, :, 0, 14] = 0.9  # an audio sink at every layer
    att[0, 1:3, 1, 64] = 0.5  # a video sink at two layers
    att[0, :, 1, 0] = 0.8  # a text sink (not kept: global sinks are audio / video)
    rep = SinkReport(dims=[], tau=25.0, eps=0.3, hidden_scores=torch.zeros(1, 4, lay.n_pos), attention_scores=att,
                     layout=lay, valid=~lay.masks["pad"])
    r = repr(rep)
    assert "attention sink cells: 10" in r and "[0] attention global sinks (N=2): 14 (audio), 64 (video)" in r
    h = rep._repr_html_()
    assert_safe_html(h, hostile=None)
    cells = [t for t in Tags(h).text]
    assert "14" in cells and "audio" in cells and "64" in cells and "video" in cells
    px = png_pixels(h)
    sink = tuple(int(GROUP_COLORS["sink"][i:i + 2], 16) for i in (1, 3, 5))
    marked = {(l, p) for l in range(4) for p in range(lay.n_pos) if tuple(px[l, p]) == sink}
    assert marked == {(l, 14) for l in range(4)} | {(1, 64), (2, 64)} | {(l, 0) for l in range(4)}


def test_modality_dominance_is_a_labelled_tensor_with_reprs():
    data = torch.tensor([[0.5, -0.2], [0.1, -0.6]])
    lay = make_layout([TOY_RUNS])
    mds = ModalityDominance(data, [70, 14], ["video", "audio"], lay)
    assert mds.dims == ("layer", "sink") and mds.coords["sink"] == [70, 14]
    assert type(mds.mean(0)) is torch.Tensor and torch.allclose(mds.mean(0), data.mean(0))
    r = repr(mds)
    assert "sink 70 (video): mean over layers +0.300 (video-attended)" in r
    assert "sink 14 (audio): mean over layers -0.400 (audio-attended)" in r
    for copy_ in (copy.deepcopy(mds), pickle.loads(pickle.dumps(mds))):
        assert isinstance(copy_, ModalityDominance) and copy_.sink_groups == ["video", "audio"]
        assert torch.equal(copy_.plain(), data) and copy_.sample_layout.n_pos == lay.n_pos
    h = mds._repr_html_()
    assert_safe_html(h, hostile=None)
    view = mds.plot(kind="strip")
    vals = decode_array(view.payload["values"])
    assert abs(vals[70] - 0.3) < 1e-3 and abs(vals[14] + 0.4) < 1e-3 and np.isnan(vals[0])


def test_hub_study_reprs_show_the_table():
    recs = []
    for i, (clean, corrupt) in enumerate([(10.0, 2.0), (20.0, 4.0), (30.0, 6.0)]):
        recs.append({"id": i, "skipped": None, "dominant": "audio", "set_sizes": {"all": 16, "sink": 4},
                     "ie_clean": {"all": clean, "sink": clean / 10}, "ie_corrupt": {"all": corrupt, "sink": corrupt / 10}})
    recs.append({"id": 3, "skipped": EVIL})
    st = HubStudy(recs, {"N": 2, "definition": "attention"})
    r = repr(st)
    assert r.splitlines()[0].startswith("HubStudy(4 samples: 3 audio-dominant, 0 video-dominant, 1 skipped")
    row = next(line for line in r.splitlines() if " all " in line)
    assert "20.00 [" in row and "4.00 [" in row and " 3 " in row  # means over the three samples
    h = st._repr_html_()
    assert_safe_html(h)
    assert "20.00 [" in h


def test_group_summary_repr_and_html_view():
    L, H, G = 3, 4, 3
    g = torch.Generator().manual_seed(3)
    mass = torch.rand(2, L, H, G, G, generator=g)
    s = AttentionGroupSummary(["audio", "video", "text"], mass, torch.tensor([[50, 8, 20], [50, 8, 20]]))
    r = repr(s)
    per = mass.mean(0)
    m = per[:, :, 2, 0].flatten()
    top = sorted(range(L * H), key=lambda i: -float(m[i]))[:3]
    assert "text -> audio: " + ", ".join(f"L{t // H}H{t % H} {float(m[t]):.3f}" for t in top) in r
    h = s._repr_html_()
    assert "avlens-group_flow" in h and len(h.encode()) < 60_000  # no bundle needed, small data
    big = AttentionGroupSummary(["audio", "video", "text", "special", "pad"], torch.rand(1, 28, 28, 5, 5),
                                torch.tensor([[1000, 900, 100, 40, 8]]))
    assert isinstance(big._repr_html_(), str) and len(big._repr_html_().encode()) < 150_000


def test_comparison_reprs_show_the_metrics_and_escape_names():
    row = {"method": EVIL, "n_yes_no": 4, "n_captions": 1, "n_not_applied": 0, "not_applicable": ""}
    for k, v in (("accuracy", 0.75), ("yes_ratio", 0.5), ("false_yes_rate", 0.25), ("chair_i", 0.1), ("chair_s", 0.2)):
        row[k], row[k + "_lo"], row[k + "_hi"] = v, v - 0.1, v + 0.1
    row.update(f1=0.8, step_ratio=1.5, latency_ratio=2.25)
    na = {"method": "mad", "n_yes_no": 0, "n_captions": 0, "n_not_applied": 5, "not_applicable": "no audio/video words"}
    cmp = Comparison(pd.DataFrame([row, na]), {EVIL: [], "mad": []}, [{"video_id": "v1", "reason": "missing"}])
    r = repr(cmp)
    assert r.splitlines()[0] == "Comparison(2 methods, 1 media skipped)"
    assert "0.750 [0.650, 0.850]" in r and "2.25" in r and "n/a: no audio/video words" in r and "skipped v1: missing" in r
    h = cmp._repr_html_()
    assert_safe_html(h)
    assert "0.750 [0.650, 0.850]" in h


@pytest.mark.skipif(not __import__("avlens.toy", fromlist=["toy_available"]).toy_available(), reason="no toy checkpoint shipped")
def test_patching_results_carry_the_layout_so_the_strip_has_times_and_text():
    import avlens
    from avlens import patching
    from avlens.cli import demo_clips
    from avlens.data import synth, tasks

    model = avlens.load_toy()
    clips, exs = demo_clips(1)
    clean = model.prepare_media([tasks.prompt_text(exs[0])], audio=[clips[0].waveform], video=[clips[0].frames], fps=synth.FPS,
                                use_audio_in_video=True)
    corrupted = patching.corruptions.zero_media(model, clean, "audio")
    n = clean.shape[1]
    res = patching.activation_patch(model, clean, corrupted, patching.AnswerProb([exs[0].answer], model), layers=[0],
                                    positions=list(range(n - 40, n)), logits_at="last", progress=False)
    assert res.layout is not None and res.layout.labels(0) == clean.layout.labels(0)
    view = res.plot(kind="strip", layer=0)
    tokens = model.to_str_tokens(clean, 0)
    assert view.payload["runs"] == [[n - 40, n]]
    assert view.payload["text"] == ["" if g in ("audio", "video") else tokens[p]
                                    for p, g in zip(range(n - 40, n), clean.layout.labels(0)[n - 40:])]
    np.testing.assert_allclose(decode_array(view.payload["values"]), res.values.sel(layer=0).plain().numpy(), atol=2e-3)
