"""Sphinx extension: make executed notebooks (the tutorials, the quickstart) render offline.

myst-nb executes notebooks in a kernel that inherits this process's environment. Two things in
the notebooks' outputs would otherwise break the offline site:

- **Plotly figures** (a result's `.plot(backend="plotly")`; the default `.plot()` is an avlens
  view, self-contained HTML that needs none of this). Under a headless kernel plotly's default
  renderer emits only its JSON mime type, which a static page cannot show; its "notebook"
  renderer emits HTML but loads MathJax from a CDN in every figure, and "connected" loads
  plotly.js from a CDN.
  So the kernel gets an IPython start-up file (through `IPYTHONDIR`) that registers a renderer
  writing each figure as an HTML fragment without plotly.js or MathJax, and every page holding a
  figure gets plotly.js as one local static file (`_static/plotly.min.js`, written from the
  installed plotly package), cached by the browser across pages.
- **Progress bars**: tqdm in a kernel without ipywidgets prints a warning and text bars; they are
  off (`TQDM_DISABLE=1`) and the warning filtered.

All of it lives under docs/_build; nothing in the source tree changes.
"""

from __future__ import annotations

import os
from pathlib import Path

STARTUP = '''"""IPython start-up for kernels executing the avlens docs (written by docs/_ext/avlens_notebooks.py)."""
try:
    import plotly.io as _pio
    from plotly.io.base_renderers import MimetypeRenderer as _MimetypeRenderer

    class _AvlensDocsRenderer(_MimetypeRenderer):
        """Each figure as a div and its JSON; drawn by the page's plotly.js (_static/plotly.min.js,
        which the theme loads at the end of the page, hence the wait for `load`)."""

        def to_mimebundle(self, fig_dict):
            import uuid

            div = "avlens-plotly-" + uuid.uuid4().hex
            data = _pio.to_json(fig_dict, validate=False)
            for a, b in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
                data = data.replace(a, b)  # script-safe: no "</script>" can end the script
            height = (fig_dict.get("layout") or {}).get("height") or 525
            html = (f'<div id="{div}" class="plotly-graph-div" style="height:{int(height)}px; width:100%;"></div>'
                    f'<script>(function () {{ var fig = {data}; function draw() {{ Plotly.newPlot("{div}", '
                    f'fig.data, fig.layout || {{}}, {{"responsive": true, "displaylogo": false}}); }} '
                    f'if (window.Plotly) {{ draw(); }} else {{ window.addEventListener("load", draw); }} }})();</script>')
            return {"text/html": html}

    _pio.renderers["avlens_docs"] = _AvlensDocsRenderer()
    _pio.renderers.default = "avlens_docs"
except ImportError:  # plotly is optional for the docs kernel
    pass
'''

PLOTLY_JS = "plotly.min.js"


def _prepare(app) -> None:
    build = Path(app.outdir).parent  # docs/_build
    ipython = build / "ipython"
    startup = ipython / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-avlens-docs.py").write_text(STARTUP)
    os.environ["IPYTHONDIR"] = str(ipython)
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings = os.environ.get("PYTHONWARNINGS", "")
    if "IProgress not found" not in warnings:  # tqdm.auto's import-time warning about ipywidgets
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [warnings, "ignore:IProgress not found"]))


def _page(app, pagename, templatename, context, doctree):
    if 'class="plotly-graph-div"' in (context.get("body") or ""):  # a figure's output, not a mention
        app.add_js_file(PLOTLY_JS, priority=400)


def _copy_plotly(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        return
    static = Path(app.outdir) / "_static"
    static.mkdir(parents=True, exist_ok=True)
    target = static / PLOTLY_JS
    js = get_plotlyjs()
    if not target.exists() or target.read_text() != js:
        target.write_text(js)


def setup(app):
    app.connect("builder-inited", _prepare)
    app.connect("html-page-context", _page)
    app.connect("build-finished", _copy_plotly)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
