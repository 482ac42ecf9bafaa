"""The offline HTML pages the CLI writes (`avlens demo`, `avlens hub-study`, `avlens hallucination`):
under 15 MB, a table of contents linking every section (and every section holding a view), nothing
loaded from the network, each library bundle inlined at most once, and the demo's views present
(group flow, drill-down, token strips, spectrogram with playable audio, frame strip, patching with
group bands, sinks). Run as cheaply as tests/test_cli.py runs the demo (2 clips, a 6-clip study)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from avlens.cli import main
from avlens.toy import toy_available
from avlens.viz.report import circuitsvis_bundle, plotly_bundle, script_safe


class Page(HTMLParser):
    """Tags with attributes and their nesting: sections, the TOC's links, the views in each section."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.sections: list[str] = []  # section ids, in page order
        self.toc: list[str] = []  # the TOC's href targets, in order
        self.views: dict[str, list[str]] = {}  # section id -> classes of the views in it
        self._stack: list[tuple[str, dict]] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "a" and any(t == "ol" and "toc" in (x.get("class") or "") for t, x in self._stack):
            self.toc.append(a.get("href"))
        cls = a.get("class") or ""
        if tag == "div" and "avlens-view" in cls.split():
            sec = next((x.get("id") for t, x in reversed(self._stack) if t == "section"), None)
            self.views.setdefault(sec, []).append(cls)
        if tag not in ("meta", "img", "br", "input", "source", "link"):
            self._stack.append((tag, a))

    def handle_endtag(self, tag):
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                break


def check_offline_page(text: str) -> Page:
    """The checks every CLI page passes; returns the parsed page."""
    assert len(text.encode("utf-8")) < 15 * 2**20
    page = Page(text)
    # a table of contents linking every section, in order, and nothing else
    assert page.sections and len(set(page.sections)) == len(page.sections)
    assert page.toc == [f"#{s}" for s in page.sections]
    # every view sits in a section the TOC links
    assert set(page.views) <= set(page.sections), page.views.keys()
    # offline: no script / link / media / frame source on the network
    for tag, attrs in page.tags:
        assert tag != "link", attrs
        for key in ("src", "href", "data", "srcset", "poster"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, attrs)
    assert not re.search(r"<script[^>]+src=", text)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", text)
    # each library bundle at most once
    assert text.count(script_safe(plotly_bundle())[:400]) <= 1
    assert text.count(script_safe(circuitsvis_bundle())[:400]) <= 1
    return page


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    assert main(["demo", "--out", str(out), "--n-clips", "2", "--hub-clips", "6", "--quiet"]) == 0
    text = (out / "index.html").read_text(encoding="utf-8")
    return text, check_offline_page(text)


def test_demo_page_is_small_offline_and_every_section_is_in_the_toc(demo):
    text, page = demo
    assert page.sections == ["summary", "layout", "answers", "flow", "attention", "answer-strip", "answer-audio",
                             "answer-video", "patching", "hubs", "study", "hallucination", "model-card", "hooks"]
    # the heatmaps (attention, patching, sink map) are avlens views now: no plotly.js on the page;
    # circuitsvis (drill-down) once
    assert text.count(script_safe(plotly_bundle())[:400]) == 0 and "Plotly.newPlot(" not in text
    assert text.count(script_safe(circuitsvis_bundle())[:400]) == 1
    assert "class='avlens-top' href='#'" in text  # the contents are one click away on a long page


def test_demo_page_holds_the_views_in_their_sections(demo):
    text, page = demo
    kinds = {sec: [c.split()[1] for c in classes] for sec, classes in page.views.items()}
    patching = kinds.pop("patching")
    assert kinds == {
        "flow": ["avlens-group_flow"],
        "attention": ["avlens-drilldown", "avlens-heatmap"],
        "answer-strip": ["avlens-token_strip"],
        "answer-audio": ["avlens-spectrogram"],
        "answer-video": ["avlens-frame_strip"],
        "hubs": ["avlens-heatmap", "avlens-token_strip"],  # the sink map (.plot()), then the strip
    }
    # result.plot()'s heatmap, the effect of patching one layer on a strip, then on the zeroed modality's media
    assert patching[:2] == ["avlens-heatmap", "avlens-token_strip"] and patching[2] in ("avlens-spectrogram", "avlens-frame_strip")
    audio = text[text.index("<section id='answer-audio'>"):text.index("<section id='answer-video'>")]
    assert "data:audio/wav;base64," in audio  # the clip plays from the page itself
    patching = text[text.index("<section id='patching'>"):text.index("<section id='hubs'>")]
    # .plot()'s group bands travel as runs [group index, start, end) with the group names
    assert re.search(r'"bands":\{"names":\["audio","video","text","special"[^}]*"cols":\[\[\d+,0,\d+\]', patching)


@pytest.mark.skipif(not toy_available(), reason="no toy checkpoint shipped")
def test_hub_study_page(tmp_path):
    out = tmp_path / "hub"
    assert main(["hub-study", "--out", str(out), "--n-clips", "8", "--seed", "5"]) == 0
    text = (out / "index.html").read_text(encoding="utf-8")
    page = check_offline_page(text)
    assert page.sections[0] == "table" and page.sections[-1] == "skipped"
    assert "sample" in page.sections  # one kept sample's sinks on a strip and on its media
    assert len(page.views["sample"]) == 2


@pytest.mark.skipif(not toy_available(), reason="no toy checkpoint shipped")
def test_hallucination_page(tmp_path):
    out = tmp_path / "hal"
    assert main(["hallucination", "--out", str(out), "--n-clips", "1", "--methods", "plain"]) == 0
    text = (out / "index.html").read_text(encoding="utf-8")
    page = check_offline_page(text)
    assert page.sections == ["table", "predictions", "probe", "skipped"]
    assert "<td>plain</td>" in text and "Plotly" not in text  # tables and avlens's own views only
    assert [c.split()[1] for c in page.views["probe"]] == ["avlens-token_strip", "avlens-spectrogram", "avlens-frame_strip"]
