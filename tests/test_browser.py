"""The pages avlens writes, opened in headless Chromium (issue 7): the `avlens demo` report, a
tutorial's solution notebook exported to HTML by nbconvert, and every `avlens.viz` view saved
standalone. Each page must run without a JavaScript error, draw its views (element screenshots
that are not blank, and the elements each view is made of), fetch nothing, and show token text
that holds HTML or `</script>` as text: the hostile tokens below set a sentinel global if any of
them ever runs.

Marker `browser` (`pytest -m "not browser"` leaves these out). Without Chromium or playwright the
tests are skipped with a loud reason; with `AVLENS_REQUIRE_BROWSER=1` (`.ci/run`) they fail. One
Chromium serves the module (the `chromium` fixture in conftest.py) and the demo runs once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import browser_util as B

browser = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]

#: Token texts that would run JavaScript (each sets window.__avlens_pwned) or turn into markup if
#: any layer between the token and the screen treated them as HTML instead of text.
HOSTILE = (
    "</script><script>window.__avlens_pwned=1</script>",
    '<img src=x onerror="window.__avlens_pwned=2">',
    '"><svg onload=window.__avlens_pwned=3>',
    "'><svg onload=window.__avlens_pwned=4>",
    "&amp; <b>bold</b>",
    # circuitsvis's AttentionPatterns sets token text as HTML after replacing its first space by
    # &nbsp;: a tag whose attributes are separated by tabs or slashes still runs there
    "<img\tsrc=x\tonerror=window.__avlens_pwned=5>",
    '<img/src="x"/onerror=window.__avlens_pwned=6>',
)
#: elements the hostile tokens would create if they were parsed as HTML
INJECTED = "img[src='x'], [onerror], [onload], b"


# ================================================================================ shared pages


def _view_kind(locator) -> str:
    classes = (locator.get_attribute("class") or "").split()
    kinds = [c[len("avlens-"):] for c in classes if c.startswith("avlens-") and c != "avlens-view"]
    assert len(kinds) == 1, f"an .avlens-view element should carry one avlens-<kind> class; got {classes}"
    return kinds[0]


def check_view(locator, expect: dict | None = None) -> str:
    """One `.avlens-view` element: its script ran (the fallback note is gone), its screenshot is
    not blank and it holds the elements its kind draws. `expect` may give exact counts
    (`tokens`: strip/drill-down token chips; `frames`: frame-strip steps). Returns its kind."""
    expect = expect or {}
    kind = _view_kind(locator)
    text = locator.inner_text()
    assert "did not run" not in text, f"the {kind} view's script did not run:\n{text[:300]}"
    B.assert_rendered(locator, f"the {kind} view")
    count = lambda sel: locator.locator(sel).count()  # noqa: E731
    if kind == "group_flow":
        assert count("canvas") >= 2, "group flow: the grid and the detail matrix are canvases"
        assert count(".av-chip") >= 2, "group flow: one chip per token group"
    elif kind == "drilldown":
        n = count(".av-tok")
        assert n >= 1 and n == expect.get("tokens", n), f"drill-down: {n} token chips, expected {expect.get('tokens')}"
        host = locator.locator("[id$='cv']")
        assert host.count() == 1, "drill-down: no circuitsvis host element"
        assert host.locator("canvas").count() >= 2, "drill-down: circuitsvis drew no head canvases"
        B.assert_rendered(host, "the drill-down's circuitsvis view")
    elif kind == "token_strip":
        n = count(".av-tok")
        assert n >= 1 and n == expect.get("tokens", n), f"token strip: {n} token cells, expected {expect.get('tokens')}"
    elif kind == "spectrogram":
        assert count("img") == 1 and count("canvas") >= 1, "spectrogram: the log-mel image and the value band"
        if count("audio"):  # the inline WAV decodes: the player knows the clip's duration
            locator.page.wait_for_function(
                "el => el.querySelector('audio').readyState >= 1", arg=locator.element_handle(), timeout=B.TIMEOUT_MS)
            duration = locator.evaluate("el => el.querySelector('audio').duration")
            assert duration > 0 and duration == duration, f"spectrogram: the audio does not play (duration {duration})"
            if "seconds" in expect:
                assert abs(duration - expect["seconds"]) < 0.01, (duration, expect["seconds"])
    elif kind in ("heatmap", "bars"):
        cv = locator.locator("canvas")
        assert cv.count() >= 1, f"{kind}: no canvas"
        B.assert_rendered(cv.first, f"the {kind} view's canvas")
        n = expect.get("canvases")  # one per panel (+ the heatmap's colour bar)
        assert n is None or cv.count() == n, f"{kind}: {cv.count()} canvases, expected {n}"
    elif kind == "frame_strip":
        n = count("img")
        assert n >= 1 and n == expect.get("frames", n), f"frame strip: {n} frames, expected {expect.get('frames')}"
        assert count("img + canvas") == n, "frame strip: one heat canvas over each frame"
    else:
        raise AssertionError(f"unknown view kind {kind!r}: teach check_view what it draws")
    return kind


def check_page(opened: B.OpenedPage, min_views: int = 0) -> dict[str, int]:
    """What every page must do: no JavaScript problem, nothing fetched, no broken image, every
    in-page link resolves, every avlens view / plotly figure / circuitsvis view drawn. Returns
    how many of each it found."""
    page = opened.page
    opened.assert_no_errors()
    opened.assert_offline()
    broken = page.evaluate("() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80))")
    assert not broken, f"images that did not load: {broken}"
    assert not B.toc_problems(page), f"links to ids that do not exist: {B.toc_problems(page)}"
    views = page.locator(".avlens-view")
    for i in range(views.count()):
        check_view(views.nth(i))
    plots = page.locator(".plotly-graph-div")
    for i in range(plots.count()):
        plot = plots.nth(i)
        assert plot.locator(".main-svg").count() >= 1, f"plotly figure {plot.get_attribute('id')} drew no SVG"
        B.assert_rendered(plot, f"plotly figure {plot.get_attribute('id')}")
    attn = page.locator("[id^='avlens-attn-']")  # Report.add_attention: circuitsvis AttentionPatterns
    for i in range(attn.count()):
        a = attn.nth(i)
        assert a.locator("canvas").count() >= 1 and a.locator("button").count() >= 1, \
            f"circuitsvis drew nothing in {a.get_attribute('id')}"
        B.assert_rendered(a, f"circuitsvis view {a.get_attribute('id')}")
    assert views.count() >= min_views, f"{views.count()} avlens views on the page, expected at least {min_views}"
    return {"views": views.count(), "plotly": plots.count(), "attention": attn.count()}


@pytest.fixture(scope="module")
def toy(chromium):
    """The toy model (random weights when no checkpoint ships) on one demo clip, with one head's
    attention from the answer position and the group summary."""
    import avlens
    from avlens.cli import _random_toy_model, demo_clips
    from avlens.data import synth, tasks
    from avlens.toy import toy_available

    model = avlens.load_toy() if toy_available() else _random_toy_model(0)
    clips, examples = demo_clips(1)
    batch = model.prepare_media([tasks.prompt_text(e) for e in examples], audio=[c.waveform for c in clips],
                                video=[c.frames for c in clips], fps=synth.FPS, use_audio_in_video=True)
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, names_filter="blocks.1.attn.hook_pattern")
    last = int(batch.layout.positions("last", sample=0))
    return SimpleNamespace(model=model, clip=clips[0], batch=batch, last=last,
                           values=cache["blocks.1.attn.hook_pattern"][0, 0, last],
                           summary=model.attention_group_summary(batch))


# ================================================================================ (a) the demo report


@pytest.fixture(scope="module")
def demo(chromium, tmp_path_factory):
    """`avlens demo` (small: 2 clips, 6 hub clips) written once and opened once."""
    from avlens.cli import main

    out = tmp_path_factory.mktemp("browser-demo") / "report"
    assert main(["demo", "--out", str(out), "--n-clips", "2", "--hub-clips", "6", "--quiet"]) == 0
    opened = B.open_page(chromium, (out / "index.html").as_uri())
    yield opened
    opened.close()


@browser
def test_demo_report_runs_without_javascript_errors_and_fetches_nothing(demo):
    demo.assert_no_errors()
    demo.assert_offline()


@browser
def test_demo_report_draws_every_figure_and_view(demo):
    found = check_page(demo)
    # the demo's attention heatmap, group flow and sink map (plotly, or avlens views that replace them)
    assert found["plotly"] + found["views"] >= 3, found
    assert found["attention"] + demo.page.locator(".avlens-drilldown").count() >= 1, found  # a circuitsvis view


@browser
def test_demo_report_table_of_contents_links_reach_their_sections(demo):
    page = demo.page
    links = page.locator("ol.toc a")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert len(hrefs) >= 5 and all(h.startswith("#") for h in hrefs), hrefs
    sections = page.evaluate("() => [...document.querySelectorAll('section[id]')].map(s => s.id)")
    assert [h[1:] for h in hrefs] == sections, (hrefs, sections)
    links.nth(len(hrefs) - 1).click()  # the last section is far down the page: the click scrolls to it
    page.wait_for_function("id => { const top = document.getElementById(id).getBoundingClientRect().top;"
                           " return window.scrollY > 0 && top >= -1 && top < window.innerHeight; }",
                           arg=hrefs[-1][1:], timeout=10_000)
    assert page.evaluate("() => location.hash") == hrefs[-1]


@browser
def test_demo_layout_strip_is_drawn_in_group_colours(demo):
    from avlens.layout import GROUP_COLORS

    strip = demo.page.locator(".avlens-strip").first
    B.assert_rendered(strip, "the layout strip")
    colours = demo.page.evaluate(
        "() => [...new Set([...document.querySelector('.avlens-strip').children].map(b => getComputedStyle(b).backgroundColor))]")

    def rgb(hex_):
        return f"rgb({int(hex_[1:3], 16)}, {int(hex_[3:5], 16)}, {int(hex_[5:7], 16)})"

    assert {rgb(GROUP_COLORS[g]) for g in ("audio", "video", "text", "special")} <= set(colours), colours


# ================================================================================ (b) a tutorial


def _solution_notebook(name: str) -> Path:
    path = ROOT / "tutorials" / "solutions" / f"{name}.ipynb"
    if not path.exists():
        pytest.fail(f"no solution notebook {path.name} in tutorials/solutions/ (generate them with `make tutorials`)", pytrace=False)
    return path


def _exported_notebook(chromium, tmp_path_factory, name: str):
    """A solution notebook, executed (nbclient, when it has no outputs) and exported to HTML
    (nbconvert's lab template, images embedded), opened once. Returns (opened page, exporter, nb)."""
    import nbformat
    from nbconvert import HTMLExporter

    path = _solution_notebook(name)
    nb = nbformat.read(path, as_version=4)
    if not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
        from nbclient import NotebookClient

        env_threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        os.environ.update({k: v or "1" for k, v in env_threads.items()})  # the kernel inherits them
        try:
            NotebookClient(nb, timeout=600, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        finally:
            for k, v in env_threads.items():
                if v is None:
                    os.environ.pop(k, None)
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
    out = tmp_path_factory.mktemp(f"browser-tutorial-{name}") / f"{path.stem}.html"
    out.write_text(body, encoding="utf-8")
    return B.open_page(chromium, out.as_uri()), exporter, nb


@pytest.fixture(scope="module")
def tutorial(chromium, tmp_path_factory):
    """Tutorial 1 (hooks and groups: group-flow, strip and media views) as exported HTML."""
    opened, exporter, nb = _exported_notebook(chromium, tmp_path_factory, "t1")
    yield opened, exporter, nb
    opened.close()


@pytest.fixture(scope="module")
def tutorial_t2(chromium, tmp_path_factory):
    """Tutorial 2 (patching and tracing: the results' `.plot()` heatmaps and bars) as exported HTML."""
    opened, exporter, nb = _exported_notebook(chromium, tmp_path_factory, "t2")
    yield opened, exporter, nb
    opened.close()


@browser
def test_tutorial_html_runs_without_javascript_errors(tutorial):
    opened, exporter, _ = tutorial
    opened.assert_no_errors()
    # nbconvert's own template asks for require.js and MathJax from a CDN (answered empty here);
    # the notebook's outputs, avlens's views among them, ask for nothing
    template = tuple(u for u in (exporter.require_js_url, exporter.mathjax_url) if u)
    others = [u for u in opened.external if not u.startswith(template)]
    assert not others, f"the tutorial's outputs fetch from the network: {others}"


@browser
def test_tutorial_html_draws_its_views(tutorial):
    opened, _, nb = tutorial
    page = opened.page
    opened.external.clear()  # the template's CDN requests are checked above
    found = check_page(opened, min_views=1)
    outputs = page.locator(".jp-OutputArea-output").count()
    assert outputs >= sum(len(c.get("outputs", [])) for c in nb.cells if c.cell_type == "code") // 2, outputs
    assert "Traceback" not in page.inner_text("body"), "a cell of the executed tutorial raised"
    anchors = page.locator("a.anchor-link")
    assert anchors.count() >= 3 and not B.toc_problems(page), "the section anchors of the tutorial resolve"
    assert found["views"] >= 1, found


@browser
def test_tutorial_t2_heatmaps_draw_offline_in_exported_html(tutorial_t2):
    """Tutorial 2's `.plot()` outputs are avlens views: in nbconvert's static HTML they draw (a
    plotly figure there would be an empty application/vnd.plotly.v1+json output)."""
    opened, exporter, nb = tutorial_t2
    opened.assert_no_errors()
    template = tuple(u for u in (exporter.require_js_url, exporter.mathjax_url) if u)
    assert not [u for u in opened.external if not u.startswith(template)], opened.external
    opened.external.clear()
    found = check_page(opened, min_views=3)  # every view: script ran, non-blank, its elements
    page = opened.page
    assert "Traceback" not in page.inner_text("body"), "a cell of the executed tutorial raised"
    heatmaps = page.locator(".avlens-heatmap")
    assert heatmaps.count() >= 2, f"{heatmaps.count()} heatmap views (by_position.plot(), trace.plot())"
    for i in range(heatmaps.count()):
        assert heatmaps.nth(i).locator(".av-fallback").count() == 0, "the static preview stays after the script ran"
    assert page.locator(".avlens-bars").count() >= 1  # ko.plot(): one axis
    mimes = {m for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) for m in o.get("data", {})}
    assert "application/vnd.plotly.v1+json" not in mimes, "a .plot() still returns a plotly figure"
    assert found["plotly"] == 0


# ================================================================================ (c) each view, standalone


VIEW_KINDS = ("group_flow", "drilldown", "token_strip", "spectrogram", "frame_strip", "heatmap", "bars")


def make_view(toy, kind: str, **kw):
    """One view of each kind on the toy clip, with the expected element counts."""
    from avlens import viz

    lay = toy.batch.layout
    if kind == "group_flow":
        return viz.group_flow_view(toy.summary, **kw), {}
    if kind == "drilldown":
        v = viz.attention_drilldown(toy.model, toy.batch, layer=1, **kw)
        return v, {"tokens": len(v.payload["tokens"])}
    if kind == "token_strip":
        v = viz.token_strip(lay, values=toy.values, query=toy.last, **kw)
        return v, {"tokens": int((~lay.mask("pad")[0]).sum())}
    if kind == "spectrogram":
        from avlens.data import synth

        wave = toy.clip.waveform
        return viz.spectrogram_view(toy.batch, toy.values, waveform=wave, **kw), {"seconds": len(wave) / synth.SAMPLING_RATE}
    if kind == "frame_strip":
        v = viz.frame_strip_view(toy.batch, toy.values, frames=toy.clip.frames, **kw)
        return v, {"frames": v.payload["steps"]}
    if kind == "heatmap":  # two panels with group bands on both axes and marked cells
        n = lay.n_pos
        z = torch.stack([toy.values[None].expand(3, n) * torch.arange(1, 4)[:, None]] * 2)
        v = viz.heatmap_view(z, groups=lay.labels(0), facet_labels=["a", "b"], marked=z > z.mean(), **kw)
        return v, {"canvases": 3}  # two panels and the colour bar
    if kind == "bars":
        v = viz.bar_view(toy.values[:40], list(range(40)), groups=lay.labels(0)[:40], bands=True,
                         lo=toy.values[:40] * 0.5, hi=toy.values[:40] * 1.5, **kw)
        return v, {"canvases": 1}
    raise ValueError(kind)


@browser
@pytest.mark.parametrize("kind", VIEW_KINDS)
def test_each_view_saved_standalone_renders(chromium, toy, kind, tmp_path):
    view, expect = make_view(toy, kind)
    opened = B.open_page(chromium, view.save(tmp_path / f"{kind}.html").as_uri())
    try:
        check_page(opened, min_views=1)
        assert check_view(opened.page.locator(".avlens-view").first, expect) == kind
    finally:
        opened.close()


@browser
def test_views_show_a_static_preview_where_scripts_cannot_run(chromium, toy, tmp_path):
    """With JavaScript off (an untrusted notebook, GitHub's preview) every view shows its static
    fallback: PNGs that load for the group flow, heatmap, spectrogram and frames, text for the
    strip and the drill-down; with JavaScript on, none of it is left."""
    from avlens.viz import Report

    report = Report("static previews")
    for kind in VIEW_KINDS:
        report.add_view(make_view(toy, kind)[0], title=kind)
    path = report.write(tmp_path / "static")
    context = chromium.new_context(java_script_enabled=False, viewport=B.VIEWPORT)
    try:
        page = context.new_page()
        page.route("**/*", lambda route: route.abort() if not route.request.url.startswith(("file:", "data:")) else route.continue_())
        page.goto(path.as_uri(), wait_until="load")
        views = page.locator(".avlens-view")
        assert views.count() == len(VIEW_KINDS)
        for i in range(views.count()):
            v, kind = views.nth(i), _view_kind(views.nth(i))
            fb = v.locator(".av-fallback")
            assert fb.count() == 1 and "did not run" in fb.inner_text(), kind
            B.assert_rendered(fb, f"the {kind} view's static preview")
            imgs = fb.locator("img")
            if kind in ("group_flow", "heatmap", "spectrogram", "frame_strip"):
                assert imgs.count() >= 1, f"{kind}: no PNG in the static preview"
                for j in range(imgs.count()):
                    assert imgs.nth(j).evaluate("i => i.complete && i.naturalWidth > 0"), f"{kind}: a preview PNG did not load"
            else:
                assert fb.locator("pre, table").count() >= 1, f"{kind}: no text summary in the static preview"
    finally:
        context.close()
    opened = B.open_page(chromium, path.as_uri())
    try:
        assert opened.page.locator(".av-fallback").count() == 0  # every script replaced its preview
        opened.assert_no_errors()
    finally:
        opened.close()


@browser
def test_report_with_every_view_inlines_circuitsvis_once_and_draws_them_all(chromium, toy, tmp_path):
    from avlens.viz import Report

    report = Report("every view")
    for kind in VIEW_KINDS + ("drilldown",):  # two drill-downs: the bundle is still inlined once
        report.add_view(make_view(toy, kind)[0], title=kind)
    text = report.render()
    assert text.count("var CircuitsVis=") == 1
    n = len(VIEW_KINDS) + 1
    opened = B.open_page(chromium, report.write(tmp_path / "r").as_uri())
    try:
        assert check_page(opened, min_views=n)["views"] == n
        assert [_view_kind(opened.page.locator(".avlens-view").nth(i)) for i in range(n)] == list(VIEW_KINDS) + ["drilldown"]
    finally:
        opened.close()


@browser
def test_notebook_outputs_of_the_same_view_twice_both_render(chromium, toy, tmp_path):
    """What Jupyter does with `view` shown in two cells: two `_repr_html_` fragments, each with its
    own copy of the bundle, in one document."""
    view, expect = make_view(toy, "drilldown")
    path = tmp_path / "nb.html"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'></head><body>"
                    f"<div class='cell'>{view._repr_html_()}</div><div class='cell'>{view._repr_html_()}</div></body></html>",
                    encoding="utf-8")
    opened = B.open_page(chromium, path.as_uri())
    try:
        assert check_page(opened, min_views=2)["views"] == 2
        for i in range(2):
            check_view(opened.page.locator(".avlens-view").nth(i), expect)
    finally:
        opened.close()


@browser
def test_bar_view_with_infinite_values_draws_its_bars(chromium, tmp_path):
    """A knockout's relative change from a base of 0 is inf. The bar view builds its axis from the
    finite values, so every bar is drawn (an axis reaching Infinity made every bar's height NaN:
    nothing drawn), the infinite ones to the axis's ends, measured in each bar's colour."""
    from avlens.viz import bar_view

    view = bar_view([1.0, float("inf"), 2.0, float("-inf")], ["a", "b", "c", "d"], groups=["text", "video", "audio", "special"])
    opened = B.open_page(chromium, view.save(tmp_path / "inf.html").as_uri())
    try:
        check_page(opened, min_views=1)
        heights = opened.page.evaluate("""(colors) => {
            const cv = document.querySelector('.avlens-bars canvas'), g = cv.getContext('2d');
            const d = g.getImageData(0, 0, cv.width, cv.height).data, hex = c => [1, 3, 5].map(i => parseInt(c.slice(i, i + 2), 16));
            // the tallest run of each bar's colour over the canvas's columns
            return colors.map(c => { const [r, gg, b] = hex(c); let best = 0;
              for (let x = 0; x < cv.width; x++) { let n = 0;
                for (let y = 0; y < cv.height; y++) { const k = 4 * (y * cv.width + x);
                  if (d[k] === r && d[k + 1] === gg && d[k + 2] === b) n++; }
                best = Math.max(best, n); }
              return best; }); }""", view.payload["colors"])
        one, inf, two, ninf = heights
        assert min(heights) > 0, f"bars not drawn (pixel heights {heights})"
        # the axis runs -2 .. 2 (2, the largest finite |value|, mirrored for -inf): 1 is half as
        # tall as 2, and the infinite bars reach the axis's ends (at their edge, beside the marker)
        assert abs(two - 2 * one) <= 2 and abs(inf - two) <= 2 and abs(ninf - two) <= 2, heights
    finally:
        opened.close()


@browser
def test_a_view_whose_drawing_throws_keeps_its_static_preview(chromium, tmp_path):
    """The preview is removed only after the drawing code has finished: a script error leaves it
    (and nothing half drawn) on the page, and the error is reported."""
    from avlens.viz import View, heatmap_view

    class Broken(View):
        kind = "heatmap"
        render_js = "V.el('div',root,'av-half','half drawn');throw new Error('avlens-test-broken');"

    good = heatmap_view(torch.rand(3, 4))
    broken = Broken("broken", {}, fallback=good.fallback)
    path = tmp_path / "broken.html"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'></head><body>{broken._repr_html_()}"
                    f"{good._repr_html_()}</body></html>", encoding="utf-8")
    opened = B.open_page(chromium, path.as_uri())
    try:
        assert any("avlens-test-broken" in e for e in opened.errors), opened.errors
        views = opened.page.locator(".avlens-view")
        fb = views.nth(0).locator(".av-fallback")
        assert fb.count() == 1 and fb.is_visible() and "did not run" in fb.inner_text()
        assert views.nth(0).locator(".av-half").count() == 0, "the half-drawn part stays"
        assert fb.locator("img").evaluate("i => i.complete && i.naturalWidth > 0")
        assert views.nth(1).locator(".av-fallback").count() == 0  # the working view replaced its preview
        check_view(views.nth(1))
    finally:
        opened.close()


# ================================================================================ hostile token text


def _hostile_tokens(n: int, real: list[str], positions) -> list[str]:
    """`real` with the tokens at `positions` replaced by the hostile strings in turn."""
    out = list(real)
    for i, p in enumerate(positions):
        out[int(p)] = HOSTILE[i % len(HOSTILE)]
    return out


@pytest.fixture(scope="module")
def hostile(chromium, toy, tmp_path_factory):
    """One report whose every text channel carries the hostile strings: title, banner, text,
    layout-strip row labels, circuitsvis AttentionPatterns tokens and head names, a plotly
    heatmap's labels, the drill-down (from a pattern, and from the model with hostile token
    text), the token strip's tokens, and the media views' titles and value labels."""
    from avlens import viz
    from avlens.viz import Report

    model, batch, lay = toy.model, toy.batch, toy.batch.layout
    real = list(model.to_str_tokens(batch, 0))
    text_pos = lay.positions("text", sample=0).tolist()
    tokens = _hostile_tokens(len(real), real, text_pos)
    k = len(HOSTILE)
    pat = torch.softmax(torch.randn(2, k, k, generator=torch.Generator().manual_seed(0)), -1).tril()
    pat = pat / pat.sum(-1, keepdim=True)

    report = Report(HOSTILE[0], banner=HOSTILE[1])
    report.add_section(HOSTILE[2])
    report.add_text(" | ".join(HOSTILE))
    for h in HOSTILE:
        report.add_html(viz.layout_strip_html(lay, row_labels=[h]))
    report.add_attention(list(HOSTILE), pat, head_names=[HOSTILE[3], HOSTILE[4]], caption=HOSTILE[1])
    report.add_plotly(viz.attention_heatmap(pat[0], list(HOSTILE), ["text"] * k, title=HOSTILE[2], backend="plotly"))
    report.add_view(viz.attention_drilldown_from_pattern(pat, list(HOSTILE), [("text", "audio", "video", "special")[i % 4] for i in range(k)],
                                                         head_names=[HOSTILE[0], HOSTILE[1]], title=HOSTILE[3]),
                    title="drill-down from a pattern")
    with pytest.MonkeyPatch.context() as mp:  # the model's own path: attention_drilldown reads to_str_tokens
        mp.setattr(model, "to_str_tokens", lambda *a, **kw: list(tokens))
        drill = viz.attention_drilldown(model, batch, layer=1, window=text_pos[-12:])
    report.add_view(drill, title="drill-down from the model")
    report.add_view(viz.token_strip(lay, values=toy.values, str_tokens=tokens, value_label=HOSTILE[1],
                                    title=HOSTILE[0], overlays=[]), title="token strip")
    report.add_view(viz.spectrogram_view(batch, toy.values, value_label=HOSTILE[1], title=HOSTILE[2]), title="spectrogram")
    report.add_view(viz.frame_strip_view(batch, toy.values, value_label=HOSTILE[4], title=HOSTILE[3]), title="frames")
    report.add_view(viz.attention_heatmap(pat[0], list(HOSTILE), ["text"] * k, title=HOSTILE[0]), title="heatmap view")
    opened = B.open_page(chromium, report.write(tmp_path_factory.mktemp("browser-hostile")).as_uri())
    yield opened, [t for t in drill.payload["tokens"] if t[2:] in HOSTILE]
    opened.close()


@browser
def test_hostile_token_text_never_runs(hostile):
    opened, _ = hostile
    page = opened.page
    page.wait_for_timeout(200)  # an injected onerror/onload would have fired by now
    assert page.evaluate("() => typeof window.__avlens_pwned") == "undefined", \
        f"a hostile token ran: window.__avlens_pwned = {page.evaluate('() => window.__avlens_pwned')}"
    injected = page.evaluate(f"""() => [...document.querySelectorAll({INJECTED!r})].map(e => {{
        const where = []; for (let p = e.parentElement; p && where.length < 6; p = p.parentElement)
            where.push(p.tagName.toLowerCase() + (p.id ? '#' + p.id : '') + (p.classList.length ? '.' + [...p.classList].join('.') : ''));
        return e.outerHTML.slice(0, 120) + '  in  ' + where.join(' < '); }})""")
    assert not injected, f"hostile token text became elements: {injected}"
    opened.assert_no_errors()
    opened.assert_offline()


@browser
def test_hostile_token_text_is_shown_as_text(hostile):
    opened, drill_labels = hostile
    page = opened.page
    assert page.title() == HOSTILE[0]
    assert page.inner_text("h1") == HOSTILE[0]
    assert page.inner_text(".banner") == HOSTILE[1]
    body = page.inner_text("body")
    for h in HOSTILE:
        assert h in body, f"{h!r} is not on the page as text"
    strips = page.locator(".avlens-strip")
    assert strips.count() == len(HOSTILE)
    views = page.locator(".avlens-view")
    kinds = [_view_kind(views.nth(i)) for i in range(views.count())]
    assert kinds == ["drilldown", "drilldown", "token_strip", "spectrogram", "frame_strip", "heatmap"], kinds
    from_pattern, from_model, strip, spec, frames = (views.nth(i).inner_text() for i in range(5))
    for h in HOSTILE:
        assert h in from_pattern and h in strip, h  # drill-down chips and token-strip tokens
    assert drill_labels and all(lab in from_model for lab in drill_labels), drill_labels  # "T:<img src=x ...>"
    assert HOSTILE[1] in strip and HOSTILE[2] in spec and HOSTILE[3] in frames  # value labels and titles
    assert HOSTILE[3] in views.nth(0).inner_text()  # the drill-down's title
    cv = page.locator("[id^='avlens-attn-']").first  # circuitsvis AttentionPatterns: token buttons, head names
    squash = lambda t: " ".join(t.replace("\xa0", " ").split())  # noqa: E731  (it shows the first space as &nbsp;)
    shown = [squash(cv.locator("button").nth(i).inner_text()) for i in range(len(HOSTILE))]
    assert shown == [squash(h) for h in HOSTILE]


@browser
def test_hostile_page_still_draws_everything(hostile):
    opened, _ = hostile
    found = check_page(opened, min_views=6)
    assert found == {"views": 6, "plotly": 1, "attention": 1}, found


@browser
def test_hostile_drilldown_saved_standalone_and_as_notebook_output(chromium, tmp_path):
    from avlens.viz import attention_drilldown_from_pattern

    k = len(HOSTILE)
    view = attention_drilldown_from_pattern(torch.full((1, k, k), 1.0 / k).tril(), list(HOSTILE), ["text"] * k, title=HOSTILE[0])
    nb = tmp_path / "nb.html"
    nb.write_text(f"<!doctype html><html><head><meta charset='utf-8'></head><body>{view._repr_html_()}</body></html>",
                  encoding="utf-8")
    for path in (view.save(tmp_path / "drill.html"), nb):
        opened = B.open_page(chromium, path.as_uri())
        try:
            page = opened.page
            assert page.evaluate("() => typeof window.__avlens_pwned") == "undefined", path.name
            check_page(opened, min_views=1)
            text = page.inner_text(".avlens-view")
            assert all(h in text for h in HOSTILE), (path.name, text[:500])
        finally:
            opened.close()


@browser
def test_notebook_reprs_render_offline_and_keep_token_text_inert(chromium, toy, tmp_path):
    """The `_repr_html_` cards a notebook shows for a layout, a batch and the group summary, plus a
    layout whose token text is hostile (it goes into the strips' hover titles)."""
    from avlens.layout import BatchLayout

    lay = toy.batch.layout
    real = list(toy.model.to_str_tokens(toy.batch, 0))
    tokens = _hostile_tokens(len(real), real, lay.positions("text", sample=0).tolist())
    hostile_layout = BatchLayout(dict(lay.masks), lay.time, lay.chunk, lay.media_index, str_tokens=[tokens])
    cells = [lay._repr_html_(), toy.batch._repr_html_(), toy.summary._repr_html_(), hostile_layout._repr_html_()]
    path = tmp_path / "reprs.html"
    path.write_text("<!doctype html><html><head><meta charset='utf-8'></head><body>" + "".join(
        f"<div class='cell' id='cell-{i}' style='margin:12px 0'>{c}</div>" for i, c in enumerate(cells)) + "</body></html>",
        encoding="utf-8")
    opened = B.open_page(chromium, path.as_uri())
    try:
        page = opened.page
        check_page(opened)
        for i in range(len(cells)):
            B.assert_rendered(page.locator(f"#cell-{i}"), f"repr {i}")
        assert page.evaluate("() => typeof window.__avlens_pwned") == "undefined"
        assert page.locator("img[src='x'], [onerror], [onload]").count() == 0
        assert page.locator("#cell-3 b").count() == page.locator("#cell-0 b").count()  # the card's own title only
        titles = page.evaluate("() => [...document.querySelectorAll('#cell-3 [title]')].map(e => e.title)")
        assert any(HOSTILE[0][:20] in t for t in titles), titles  # the hover text holds the token as text
    finally:
        opened.close()


# ================================================================================ skip or fail


def test_missing_browser_skips_loudly_or_fails_when_required(monkeypatch):
    """No browser needed: the skip / fail rule itself (`AVLENS_REQUIRE_BROWSER`)."""
    monkeypatch.setenv("AVLENS_CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("AVLENS_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="BROWSER TESTS SKIPPED.*install Debian chromium"):
        B.find_chromium()
    for value in ("1", "true"):
        monkeypatch.setenv("AVLENS_REQUIRE_BROWSER", value)
        with pytest.raises(pytest.fail.Exception, match="NO BROWSER.*AVLENS_REQUIRE_BROWSER=1.*install Debian chromium"):
            B.find_chromium()
    monkeypatch.setenv("AVLENS_REQUIRE_BROWSER", "0")
    with pytest.raises(pytest.skip.Exception):
        B.find_chromium()


def test_browser_without_playwright_skips_or_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)  # import raises ImportError
    monkeypatch.delenv("AVLENS_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="BROWSER TESTS SKIPPED: playwright"):
        with B.launch():
            pass
    monkeypatch.setenv("AVLENS_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="playwright"):
        with B.launch():
            pass


def test_blank_and_drawn_screenshots_are_told_apart():
    import io

    from PIL import Image, ImageDraw

    def png(im):
        buf = io.BytesIO()
        im.save(buf, "PNG")
        return buf.getvalue()

    blank = Image.new("RGB", (200, 100), "white")
    assert B.ink(png(blank)) == (1, 0.0)
    drawn = blank.copy()
    ImageDraw.Draw(drawn).rectangle([10, 10, 109, 59], fill=(43, 108, 176))  # 100 x 50 pixels
    ImageDraw.Draw(drawn).rectangle([150, 0, 159, 99], fill=(232, 135, 30))  # 10 x 100 pixels
    n, frac = B.ink(png(drawn))
    assert n == 3 and frac == pytest.approx((5000 + 1000) / 20000)
