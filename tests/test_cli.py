"""`avlens demo` runs end to end and writes a self-contained offline report with its sections; the
report builder inlines the circuitsvis bundle once (and plotly.js only for plotly figures), loads nothing from the
network and escapes every text it is given."""

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch

from avlens.cli import DEMO_STEPS, eval_results, main
from avlens.layout import BatchLayout
from avlens.toy import toy_available
from avlens.viz import Report, attention_window, script_safe, table_from_markdown

SECTIONS = {
    "summary": "Summary",
    "layout": "Token layout",
    "answers": "Answers",
    "attention": "Attention in a window",
    "flow": "Attention between token groups",
    "hubs": "Cross-modal sinks",
    "hallucination": "Hallucination mitigation",
    "model-card": "Model card",
    "hooks": "Hook points",
}


class _Page(HTMLParser):
    """Every start tag with its attributes, and the text of every <script>, as a browser parses them."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


@pytest.fixture(scope="module")
def demo_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    assert main(["demo", "--out", str(out), "--n-clips", "2", "--hub-clips", "6", "--quiet"]) == 0
    return (out / "index.html").read_text(encoding="utf-8")


def test_demo_report_has_every_section(demo_page):
    for sid, title in SECTIONS.items():
        assert f"<section id='{sid}'><h2>{title}</h2>" in demo_page, sid
    assert "0: dog / clear" in demo_page and "1: car / audio_ambiguous" in demo_page  # the clips
    assert "CircuitsVis.render(" in demo_page and "CircuitsVis.AttentionHeads" in demo_page  # the drill-down view
    # attention heatmap, patching heatmap, sink map: avlens heatmap views (canvas, float16), not plotly
    assert demo_page.count("class='avlens-view avlens-heatmap'") == 3 and "Plotly.newPlot(" not in demo_page
    assert "blocks.{l}.hook_resid_post" in demo_page
    section = demo_page[demo_page.index("<section id='hallucination'>"):demo_page.index("<section id='model-card'>")]
    assert all(f"<td>{m}</td>" in section for m in ("plain", "vcd", "avcd")), section[:2000]
    assert ("class='banner'" in demo_page) == (not toy_available())  # a random model says so
    if toy_available():  # the model card's evaluation table (from the checkpoint's avlens_toy.json)
        assert "presence_other_modality" in demo_page and "audio only (frames zeroed)" in demo_page


def test_demo_layout_strip_shows_audio_in_video_interleaving(demo_page):
    strip = demo_page[demo_page.index("<section id='layout'>"):demo_page.index("<section id='answers'>")]
    first_row = strip[strip.index("<div class='avlens-strip'>"):]
    runs = " ".join(re.findall(r">([AVTS]\d+)</div>", first_row[:first_row.index("</div></div>")]))
    assert re.search(r"V\d+ A\d+ V\d+ A\d+", runs), runs  # each chunk's video, then its audio


def test_demo_report_inlines_circuitsvis_once_and_no_plotly(demo_page):
    from plotly.offline import get_plotlyjs

    assert demo_page.count(script_safe(get_plotlyjs())[:400]) == 0  # every figure is an avlens view
    assert demo_page.count("var CircuitsVis=") == 1
    assert len(demo_page.encode()) < 15 * 2**20


def test_demo_report_loads_nothing_from_the_network(demo_page):
    page = _Page(demo_page)
    for tag, attrs in page.tags:
        assert not (tag == "script" and "src" in attrs), attrs  # every script is inline
        assert tag != "link", attrs  # no stylesheets or fonts from elsewhere
        for key in ("src", "href", "srcset", "data"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, attrs)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", demo_page)
    assert "sourceMappingURL" not in demo_page  # no source map fetched by developer tools


def test_report_escapes_text_and_tokens_so_nothing_breaks_out(tmp_path):
    import plotly.graph_objects as go

    evil = "</script><script>alert('pwned')</script><!--"
    report = Report(evil, banner=evil)
    report.add_section(evil)
    report.add_text(evil)
    report.add_table([evil], [[evil]])
    report.add_attention([evil, "ok"], torch.tensor([[[1.0, 0.0], [0.5, 0.5]]]), head_names=[evil], caption=evil)
    report.add_plotly(go.Figure(go.Heatmap(z=[[1.0]], x=[evil], y=[evil]), layout_title_text=evil))
    text = report.write(tmp_path / "r").read_text(encoding="utf-8")
    page = _Page(text)
    # exactly the scripts the report wrote: two bundles, one attention view, one figure
    assert [t for t, _ in page.tags].count("script") == 4
    assert "<script>alert" not in text
    # the view's data, decoded by a JSON parser, is the token (HTML-escaped: circuitsvis puts it in as HTML)
    view = next(s for s in page.scripts if s.startswith("CircuitsVis.render("))
    props = json.loads(re.fullmatch(r"CircuitsVis\.render\('[\w-]+',CircuitsVis\.AttentionPatterns,(.*)\);", view).group(1))
    assert props["tokens"] == [html.escape(evil), "ok"] and props["headLabels"] == [evil]  # circuitsvis sets tokens as HTML
    assert props["attention"] == [[[1.0, 0.0], [0.5, 0.5]]]
    fig = next(s for s in page.scripts if "Plotly.newPlot(" in s)
    data = json.loads(re.fullmatch(r"\(function\(\)\{var f=(.*);Plotly\.newPlot\(.*", fig, re.S).group(1))
    assert data["data"][0]["x"] == [evil] and data["layout"]["title"]["text"] == evil
    visible = "".join(d for d in re.split(r"<[^>]+>", text.split("</head>")[1]))
    assert visible.count("&lt;/script&gt;&lt;script&gt;alert") >= 5  # title, banner, section, text, table...


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_every_inline_script_is_valid_javascript(demo_page, tmp_path):
    for i, script in enumerate(_Page(demo_page).scripts):
        path = tmp_path / f"s{i}.js"
        path.write_text(script, encoding="utf-8")
        res = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True)
        assert res.returncode == 0, (i, script[:200], res.stderr[-500:])


def test_demo_prints_a_summary_and_a_progress_bar(tmp_path, capsys):
    out = tmp_path / "r"
    main(["demo", "--out", str(out), "--n-clips", "1", "--hub-clips", "2"])
    cap = capsys.readouterr()
    for what in ("HookedQwen2_5Omni", "BatchLayout", "accuracy", "Cache:", "hook_resid_pre", str(out / "index.html")):
        assert what in cap.out, what
    assert "avlens demo" in cap.err and f"{len(DEMO_STEPS)}/{len(DEMO_STEPS)}" in cap.err  # tqdm's bar
    main(["demo", "--out", str(out), "--n-clips", "1", "--hub-clips", "2", "--quiet"])
    cap = capsys.readouterr()
    assert cap.out == "" and "avlens demo" not in cap.err


def test_demo_rejects_no_clips():
    with pytest.raises(SystemExit):
        main(["demo", "--n-clips", "0"])


def test_attention_window_is_the_last_chunk_and_the_question():
    # T2 S2 | chunk 0: V8 A50 | chunk 1: V8 A50 | S2 T31 S1 T2 (the demo's audio-in-video prompt)
    runs = [("text", 2, -1), ("special", 2, -1), ("video", 8, 0), ("audio", 50, 0), ("video", 8, 1), ("audio", 50, 1),
            ("special", 2, -1), ("text", 31, -1), ("special", 1, -1), ("text", 2, -1)]
    labels = [g for g, n, _ in runs for _ in range(n)]
    chunk = torch.tensor([[c for _, n, c in runs for _ in range(n)]])
    masks = {g: torch.tensor([[lab == g for lab in labels]]) for g in ("audio", "video", "text", "special", "pad")}
    layout = BatchLayout(masks, chunk=chunk)
    pos = attention_window(layout, 0, max_len=64).tolist()
    assert pos[0] == 62 and pos[-1] == 155 and len(pos) <= 64  # from chunk 1's first video token to the end
    assert set(range(62, 70)) <= set(pos) and set(range(120, 156)) <= set(pos)  # video and the question kept
    audio = [p for p in pos if labels[p] == "audio"]
    assert 10 <= len(audio) < 50 and all(70 <= p < 120 for p in audio)  # audio thinned
    assert attention_window(layout, 0, max_len=200).tolist() == list(range(62, 156))


def test_model_card_finds_and_tables_evaluation_results():
    from avlens.toy.evaluate import markdown_table

    res = {"n_clips": 12, "seed": 1, "results": {
        "both/multiple_choice/all": {"accuracy": 0.75, "n": 12},
        "audio_only/multiple_choice/all": {"accuracy": 0.5, "n": 12},
    }}
    assert eval_results({"training": {"steps": 3}, "eval": res}) is res
    assert eval_results({**res, "min_pixels": 3136}) is not None
    assert eval_results({"training": {"steps": 3}}) is None
    table = table_from_markdown(markdown_table(res))
    assert "<th>task</th>" in table and "75.0 % (n=12)" in table and "50.0 % (n=12)" in table
    assert "---" not in table


def test_hub_study_command_writes_records_table_and_report(tmp_path, capsys):
    if not toy_available():
        pytest.skip("no toy checkpoint shipped")
    out = tmp_path / "hub"
    assert main(["hub-study", "--out", str(out), "--n-clips", "8", "--seed", "5"]) == 0
    assert len((out / "records.jsonl").read_text().splitlines()) == 8
    assert (out / "table.csv").exists()
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Token-set causal tracing" in page and "Skipped samples" in page
    assert "HubStudy(8 samples" in capsys.readouterr().out


def test_default_demo_page_is_under_15_mb_and_its_group_flow_has_the_sink_group(tmp_path):
    """The default `avlens demo` (6 clips, the default hub study), as a user runs it: the page stays
    under 15 MB (decimal), and the group-flow summary has the global sinks as their own group."""
    from avlens.cli import demo, run_demo

    path = demo(str(tmp_path / "report"), quiet=True)
    size = path.stat().st_size
    assert size < 15e6, f"demo page is {size / 1e6:.1f} MB"
    run = run_demo(n_clips=2, hub_clips=6)
    assert "sink" in run.summary.groups
    k = run.summary.groups.index("sink")
    assert int(run.summary.query_counts[:, k].sum()) > 0
    # every present query group's attention over the partition groups still sums to 1
    part = [run.summary.groups.index(g) for g in run.summary.groups if g in ("audio", "video", "image", "text", "special")]
    rows = run.summary.mass[..., part].sum(-1)  # [b, layer, head, query group]
    present = run.summary.query_counts > 0  # [b, query group]
    torch.testing.assert_close(rows.permute(0, 3, 1, 2)[present], torch.ones_like(rows.permute(0, 3, 1, 2)[present]),
                               atol=1e-4, rtol=0)
