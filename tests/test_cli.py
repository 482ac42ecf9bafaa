"""`avlens demo` runs end to end and writes an offline report with its sections."""

from avlens.cli import main


def test_demo_writes_a_self_contained_report(tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    html = out.read_text()
    for section in ("id='model'", "id='layout'", "id='flow'", "id='hooks'", "blocks.{l}.hook_resid_post"):
        assert section in html
    assert 'src="http' not in html and "src='http" not in html  # no script or asset from a CDN
    assert "Plotly" in html  # plotly.js inlined
    assert out.stat().st_size < 15 * 2**20


def test_demo_prints_layout_hooks_and_cache_summary(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path / "r.html")])
    text = capsys.readouterr().out
    assert "BatchLayout" in text and "hook_resid_pre" in text and "Cache:" in text
