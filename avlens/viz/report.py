"""A self-contained offline HTML report: titled sections of HTML, tables and avlens views (the
canvas heatmaps / bars that results' `.plot()` returns, group flow, token strips, media views,
circuitsvis drill-downs), with each bundle a view needs inlined once per page.

    report = Report("avlens demo", intro="What this page shows.")
    report.add_section("Token layout", layout_strip_html(batch.layout))
    report.add_view(result.plot())                     # any avlens.viz View, appended to the last section
    report.add_view(group_flow_view(summary), title="Attention flow")   # ... or in a new section
    report.add_attention(tokens, pattern)              # circuitsvis AttentionPatterns, [head, q, k]
    report.add_plotly(result.plot(backend="plotly"))   # a plotly figure (inlines plotly.js, ~4.8 MB)
    report.write("avlens-report")                      # -> avlens-report/index.html

The page fetches nothing when opened (no CDN, no fonts, no source maps), so it works offline and
can be mailed as one file. circuitsvis's own `attention_patterns(...)` HTML embeds its whole 1.3 MB
bundle in every view; here the bundle is inlined once and each view is one small call to
`CircuitsVis.render(id, CircuitsVis.AttentionPatterns, props)`, the call circuitsvis's
`render_local` makes. Plotly figures, when a page has any, are likewise one `Plotly.newPlot(...)`
call each against one inlined plotly.js.

All text is escaped: titles and table cells with `html.escape`, data inside `<script>` with
`json_for_script`, which escapes `<`, `>` and `&` so a token such as `</script>` cannot end the
script early.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

_SOURCE_MAP = re.compile(r"^//[#@] sourceMappingURL=.*$", re.M)
_CLOSE_SCRIPT = re.compile(r"</(script)", re.I)

PAGE_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#1f2937}
h1{margin-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #e5e7eb;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #d1d5db;padding:2px 8px;font-size:13px;text-align:left}
th{background:#f3f4f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.ok{color:#15803d;font-weight:600} td.wrong{color:#b91c1c}
code,pre,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
pre{background:#f9fafb;border:1px solid #e5e7eb;padding:.6em;overflow-x:auto}
.banner{background:#fef3c7;border:2px solid #d97706;padding:.7em 1em;border-radius:6px;margin:1em 0}
.note{color:#4b5563;font-size:13px}
.toc li{margin:.1em 0}
""".strip()


def script_safe(js: str) -> str:
    """JavaScript source that can sit inside an inline `<script>`: `</script` becomes `<\\/script`
    (the same string or regex in JavaScript) and `<!--` becomes `<\\!--`, so the HTML parser
    never leaves the script early."""
    return _CLOSE_SCRIPT.sub(r"<\\/\1", js).replace("<!--", "<\\!--")


def json_for_script(obj) -> str:
    """`obj` as a JSON literal that is safe inside an inline `<script>`: `<`, `>`, `&` and the line
    separators U+2028/U+2029 are written as `\\uXXXX` escapes (they can only occur inside JSON
    strings, where the escapes mean the same characters)."""
    s = json.dumps(obj, separators=(",", ":"), default=_json_default)
    return _escape_json_text(s)


def _escape_json_text(s: str) -> str:
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _json_default(x):
    if hasattr(x, "tolist"):  # numpy arrays and scalars, torch tensors
        return x.tolist()
    raise TypeError(f"cannot put a {type(x).__name__} into the report's JSON")


def table_html(header: Optional[Sequence[str]], rows: Sequence[Sequence],
               classes: Optional[Sequence[Sequence[str]]] = None) -> str:
    """An HTML table (no header row when `header` is None); every cell is escaped
    (`classes[i][j]` sets a CSS class, e.g. "num", "ok", "wrong", "mono")."""
    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, v in enumerate(row):
            cls = classes[i][j] if classes is not None and classes[i][j] else ""
            attr = f" class='{html.escape(cls, quote=True)}'" if cls else ""
            cells.append(f"<td{attr}>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def table_from_markdown(md: str) -> str:
    """A GitHub-style pipe table (header, `|---|` rule, rows) as an escaped HTML table."""
    lines = [ln.strip() for ln in md.strip().splitlines() if ln.strip().startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    rows = [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
    return table_html(cells[0], rows, [["num" if "%" in c else "" for c in r] for r in rows])


def plotly_bundle() -> str:
    """plotly.js, as shipped with the installed plotly package."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def circuitsvis_bundle() -> str:
    """circuitsvis's browser bundle (`dist/cdn/iife.js`, defines the global `CircuitsVis`)."""
    import circuitsvis

    return (Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js").read_text(encoding="utf-8")


#: the libraries a page may inline, in the order they go into <head>
BUNDLES = {"plotly": plotly_bundle, "circuitsvis": circuitsvis_bundle}


def bundle_scripts(names) -> str:
    """Inline `<script>` tags for some bundles (`"plotly"`, `"circuitsvis"`), each once, in a fixed
    order, without source-map comments (the page must fetch nothing)."""
    unknown = set(names) - set(BUNDLES)
    if unknown:
        raise ValueError(f"unknown bundles {sorted(unknown)}; known: {sorted(BUNDLES)}")
    return "".join(f"<script>{script_safe(_SOURCE_MAP.sub('', BUNDLES[n]()))}</script>" for n in BUNDLES if n in set(names))


def _is_view(x) -> bool:
    """Whether `x` is an avlens.viz View (duck-typed: views.py imports this module)."""
    return hasattr(x, "html") and hasattr(x, "requires")


@dataclass
class Section:
    """One titled section of a report: `parts` are HTML fragments, in order."""

    title: str
    id: str
    parts: list[str] = field(default_factory=list)


class Report:
    """A self-contained HTML page built section by section (see the module docstring)."""

    def __init__(self, title: str, intro: str = "", banner: Optional[str] = None):
        self.title = title
        self.intro = intro  # HTML, shown under the title
        self.banner = banner  # plain text, shown in a highlighted box under the title
        self.sections: list[Section] = []
        self._n_views = 0
        self._uses: set[str] = set()

    # ------------------------------------------------------------------------- building
    def add_section(self, title: str, html_: str = "", id: Optional[str] = None) -> Section:
        """Start a new section (`html_` is trusted HTML; escape text yourself, or use
        `add_text`). Later `add_*` calls append to it."""
        sid = re.sub(r"[^a-z0-9]+", "-", (id or title).lower()).strip("-") or "section"
        taken = {s.id for s in self.sections}
        base, k = sid, 2
        while sid in taken:
            sid, k = f"{base}-{k}", k + 1
        sec = Section(title, sid)
        self.sections.append(sec)
        if html_:
            sec.parts.append(html_)
        return sec

    def _current(self) -> Section:
        if not self.sections:
            raise ValueError("add a section first: report.add_section(title)")
        return self.sections[-1]

    def add_html(self, html_: str) -> None:
        """Append trusted HTML to the last section."""
        self._current().parts.append(html_)

    def add_text(self, text: str, css_class: Optional[str] = None) -> None:
        """Append a paragraph of plain text (escaped) to the last section."""
        cls = f" class='{html.escape(css_class, quote=True)}'" if css_class else ""
        self._current().parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def add_table(self, header: Optional[Sequence[str]], rows: Sequence[Sequence], classes=None) -> None:
        """Append a table (cells escaped; no header row when `header` is None) to the last section."""
        self._current().parts.append(table_html(header, rows, classes))

    def _new_id(self, kind: str) -> str:
        self._n_views += 1
        return f"avlens-{kind}-{self._n_views}"

    def add_plotly(self, fig, config: Optional[dict] = None) -> None:
        """Append a plotly figure (drawn by the page's single inlined copy of plotly.js). An
        avlens `View` (what `.plot()` returns by default) is passed on to `add_view`; anything
        plotly cannot serialise is refused before the page is marked as needing plotly.js."""
        if _is_view(fig):
            if config:
                raise TypeError("config= is a plotly option; an avlens View takes none (use report.add_view(view))")
            self.add_view(fig)
            return
        import plotly.io as pio

        try:
            fig_json = _escape_json_text(pio.to_json(fig, validate=False))
        except Exception as e:  # plotly raises ValueError / TypeError / its own errors
            raise TypeError(f"add_plotly takes a plotly Figure (e.g. .plot(backend='plotly')); got {type(fig).__name__} "
                            f"that plotly cannot serialise ({e}). For an avlens View use report.add_view") from e
        cfg = json_for_script({"displaylogo": False, "responsive": True, **(config or {})})
        section = self._current()
        self._uses.add("plotly")
        div = self._new_id("plot")
        section.parts.append(
            f"<div id='{div}' class='plotly-graph-div'></div>"
            f"<script>(function(){{var f={fig_json};Plotly.newPlot('{div}',f.data,f.layout,{cfg});}})();</script>"
        )

    def add_view(self, view, title: Optional[str] = None) -> None:
        """Append an `avlens.viz.View` (heatmap, bars, group flow, drill-down, token strip,
        spectrogram, frame strip) to the last section, or to a new section `title`. The bundles the view needs are
        inlined once in the page's head, however many views need them."""
        if not _is_view(view):
            raise TypeError(f"add_view takes an avlens.viz.View; got {type(view).__name__} (use add_html for HTML strings)")
        if title is not None or not self.sections:
            self.add_section(title if title is not None else getattr(view, "title", "View"))
        self._uses |= set(view.requires)
        self._current().parts.append(view.html())

    def add_attention(self, tokens: Sequence[str], pattern, head_names: Optional[Sequence[str]] = None,
                      caption: Optional[str] = None, decimals: int = 4) -> None:
        """Append a circuitsvis `AttentionPatterns` view: `pattern` is `[head, query, key]` over the
        positions `tokens` label (queries and keys are the same positions)."""
        pat = np.asarray(pattern.detach().float().cpu() if hasattr(pattern, "detach") else pattern, dtype=np.float64)
        if pat.ndim != 3 or pat.shape[1] != pat.shape[2] or pat.shape[1] != len(tokens):
            raise ValueError(
                f"pattern must be [head, query, key] with query = key = len(tokens) = {len(tokens)}; got {pat.shape}"
            )
        self._uses.add("circuitsvis")
        div = self._new_id("attn")
        # circuitsvis's AttentionPatterns writes each token into its button as HTML (React's
        # dangerouslySetInnerHTML), so tokens go in HTML-escaped to be shown as text, never run
        props = {"tokens": [html.escape(str(t)) for t in tokens], "attention": np.round(pat, decimals).tolist()}
        if head_names is not None:
            props["headLabels"] = [str(h) for h in head_names]
        if caption:
            self._current().parts.append(f"<p class='note'>{html.escape(caption)}</p>")
        self._current().parts.append(
            f"<div id='{div}' style='margin:15px 0'></div>"
            f"<script>CircuitsVis.render('{div}',CircuitsVis.AttentionPatterns,{json_for_script(props)});</script>"
        )

    # ------------------------------------------------------------------------- output
    def render(self) -> str:
        """The whole page as one HTML string."""
        head = [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width,initial-scale=1'>",
            f"<title>{html.escape(self.title)}</title><style>{PAGE_CSS}</style>",
        ]
        # the bundles go first, once each, so every view's script below can call them
        head.append(bundle_scripts(self._uses))
        head.append("</head><body>")
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        if self.banner:
            body.append(f"<div class='banner'>{html.escape(self.banner)}</div>")
        if self.intro:
            body.append(self.intro)
        if self.sections:
            body.append("<ol class='toc'>" + "".join(
                f"<li><a href='#{s.id}'>{html.escape(s.title)}</a></li>" for s in self.sections) + "</ol>")
        for s in self.sections:
            body.append(f"<section id='{s.id}'><h2>{html.escape(s.title)}</h2>{''.join(s.parts)}</section>")
        body.append("</body></html>")
        return "".join(head + body)

    def write(self, directory: Union[str, Path]) -> Path:
        """Write `directory/index.html` (creating the directory) and return its path."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "index.html"
        path.write_text(self.render(), encoding="utf-8")
        return path
