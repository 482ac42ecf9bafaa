"""Views that scale to long audio-visual sequences, the same in Jupyter, VS Code, Colab and a
static HTML file.

    summary = model.attention_group_summary(batch)
    group_flow_view(summary)                                # layer x head grid of group -> group mass
    attention_drilldown(model, batch, layer=2, window=range(40, 90))   # circuitsvis, 50 positions
    token_strip(batch.layout, values=pattern[0, 3, -1])    # O(n) strip coloured by any value
    view.save("flow.html")                                  # a standalone page

Every view is a `View`: `.html()` is a fragment for a page that already holds the bundles in
`.requires` (`Report.add_view` inlines each bundle once per page), `._repr_html_()` is the same
fragment with its bundles inlined (what a notebook shows), `.save(path)` writes a standalone page,
`.payload_bytes` is the size of its data. Nothing is fetched when a view is shown: no CDN, no
fonts.

Why not plotly or raw circuitsvis: both ship every number as a JSON float list (circuitsvis draws
heads x n^2 cells: 16 heads over 1,024 positions made a 388 MB page). Here the data travel as
base64 little-endian float16 arrays (`{"dtype": "f16", "shape": [...], "b64": ...}`; float32
where float16 would not keep each value within 1/1,024 of the range; differences from an
`"offset"` where the values' range is small next to their size, see `encode_array`), and only what is drawn is sent: group summaries (G x G
per head, whatever the sequence length), windows of positions (the drill-down's payload grows
with the window, not with the sequence), one value per token (the strip is O(n)). The drawing
is a few kilobytes of inline vanilla JavaScript on a canvas; only the drill-down uses a library
(circuitsvis's `AttentionHeads`).

Token text is data, never markup: it travels inside JSON written with `json_for_script` (so a
token `</script>` cannot end the script) and is put on the page with `textContent` (so a token
`<img src=x onerror=...>` is shown as text). circuitsvis's React components render strings as
text too; its own Python `render` does not escape `</script>`, which is why avlens never calls it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from avlens.layout import GROUP_COLORS, GROUP_LETTERS, PARTITION_GROUPS, BatchLayout
from avlens.viz.report import bundle_scripts, json_for_script

__all__ = [
    "View",
    "GroupFlowView",
    "AttentionDrilldownView",
    "TokenStripView",
    "group_flow_view",
    "attention_drilldown",
    "attention_drilldown_from_pattern",
    "token_strip",
    "HeatmapView",
    "BarView",
    "heatmap_view",
    "bar_view",
    "band_runs",
    "encode_array",
    "decode_array",
]

# ================================================================================== payload data

#: float16's largest finite value; arrays beyond it (after any offset) are sent as float32
_F16_MAX = 65504.0


def encode_array(x, dtype: Optional[str] = None) -> dict:
    """`x` as `{"dtype", "shape", "b64"}`: base64 of its little-endian bytes, plus `"offset"` when
    the values travel relative to one (see below).

    `dtype` is `"f16"` (default for floats: 2 bytes a value, about 3 significant digits, NaN kept
    to mean "no value"), `"f32"`, `"u8"`, `"i16"` or `"i32"` (integers: group codes, positions,
    column maps).

    With the automatic dtype, floats whose values stay farther from 0 than their range spans
    (e.g. logits 19.98 .. 20.02, where float16's step at 20 is 0.016 and the five values would
    decode to three) are sent as float16 differences from the midpoint of that range, `"offset"`,
    which the page (and `decode_array`) adds back; values that reach down to 0 keep float16's
    own relative precision (no offset: a 1e-4 attention weight still reads 1e-4). Either way
    each finite value must decode within range / 1,024 of itself, checked here; float32 is sent
    where it would not (a value beyond float16's 65,504, or a range so small float16's smallest
    steps are too coarse), with the same offset. Infinite values stay infinite; NaN stays NaN.
    """
    a = np.asarray(x.detach().float().cpu().numpy() if isinstance(x, Tensor) else x)
    offset = 0.0
    if dtype is None:
        if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
            dtype = "i32"
        else:
            dtype, offset = _float_encoding(a)
            if offset:
                a = a.astype(np.float64) - offset
    np_dtype = {"f16": "<f2", "f32": "<f4", "u8": "u1", "i16": "<i2", "i32": "<i4"}.get(dtype)
    if np_dtype is None:
        raise ValueError(f"unknown payload dtype {dtype!r}; use 'f16', 'f32', 'u8', 'i16' or 'i32'")
    if dtype in ("u8", "i16", "i32"):
        info = np.iinfo(np.dtype(np_dtype))
        if a.size and (int(a.min()) < info.min or int(a.max()) > info.max):
            raise ValueError(f"values {int(a.min())}..{int(a.max())} do not fit a {dtype} payload array")
    out = {"dtype": dtype, "shape": list(a.shape), "b64": base64.b64encode(a.astype(np_dtype).tobytes()).decode("ascii")}
    if offset:
        out["offset"] = offset
    return out


def _float_encoding(a: np.ndarray) -> tuple[str, float]:
    """`(dtype, offset)` for the finite values of `a` (see `encode_array`): the offset is the
    midpoint of their range when they all stay farther from 0 than the range spans (else 0);
    the dtype is "f16" when float16 differences from it decode every finite value within
    range / 1,024, "f32" otherwise."""
    finite = a[np.isfinite(a)].astype(np.float64)
    if not finite.size:
        return "f16", 0.0
    lo, hi = float(finite.min()), float(finite.max())
    offset = lo / 2 + hi / 2 if lo * hi > 0 and min(abs(lo), abs(hi)) > hi - lo else 0.0
    if max(abs(lo - offset), abs(hi - offset)) > _F16_MAX:
        return "f32", offset
    err = np.abs((finite - offset).astype(np.float16).astype(np.float64) + offset - finite).max()
    return ("f16" if err <= (hi - lo) / 1024 else "f32"), offset


def decode_array(d: dict) -> np.ndarray:
    """The numpy array of an `encode_array` dict (what the page's JavaScript decodes): float64
    with the `"offset"` added back when the dict has one."""
    np_dtype = {"f16": "<f2", "f32": "<f4", "u8": "u1", "i16": "<i2", "i32": "<i4"}[d["dtype"]]
    a = np.frombuffer(base64.b64decode(d["b64"]), dtype=np_dtype).reshape(d["shape"])
    return a.astype(np.float64) + float(d["offset"]) if d.get("offset") else a


def _as_numpy(x, what: str) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().float().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be a tensor or array of numbers; got {type(x).__name__}") from e


def value_scale(values: np.ndarray, vmin: Optional[float] = None, vmax: Optional[float] = None,
                center: Optional[float] = None, cmap: Optional[str] = None) -> dict:
    """The colour scale of some values: `{"vmin", "vmax", "cmap"}`.

    Values of both signs (or an explicit `center`) get the diverging `"rdbu"` map, symmetric
    around the centre; one-signed values get `"viridis"` from 0 (or the smallest value, if
    negative) to the largest. `vmin` / `vmax` / `cmap` override."""
    finite = values[np.isfinite(values)] if values.size else values
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    if center is None and lo < 0 < hi:
        center = 0.0
    if center is not None:
        r = max(abs(hi - center), abs(center - lo)) or 1.0
        auto = (center - r, center + r, "rdbu")
    else:
        auto = (min(lo, 0.0), hi if hi > min(lo, 0.0) else min(lo, 0.0) + 1.0, "viridis")
    out = {"vmin": float(auto[0] if vmin is None else vmin), "vmax": float(auto[1] if vmax is None else vmax),
           "cmap": auto[2] if cmap is None else cmap}
    if out["cmap"] not in ("viridis", "rdbu", "blues"):
        raise ValueError(f"unknown colour map {out['cmap']!r}; use 'viridis', 'rdbu' or 'blues'")
    if not out["vmax"] > out["vmin"]:
        raise ValueError(f"the colour scale needs vmax > vmin; got vmin={out['vmin']}, vmax={out['vmax']}")
    return out


# ================================================================================== page code

#: CSS shared by every view (scoped by the `avlens-view` class; written once per view, ~0.7 kB)
VIEW_CSS = (
    # a white card with dark text: the same on a dark notebook theme (VS Code, JupyterLab dark)
    ".avlens-view{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:12px;color:#1f2937;"
    "background:#fff;padding:6px 8px;border-radius:4px;position:relative;margin:10px 0;line-height:1.35;text-align:left}"
    ".avlens-view .av-title{font-weight:600;font-size:13px;margin-bottom:4px}"
    ".avlens-view .av-note{color:#4b5563;font-size:11px}"
    ".avlens-view .av-tip{position:absolute;z-index:10;pointer-events:none;background:rgba(17,24,39,.93);color:#fff;"
    "padding:3px 7px;border-radius:4px;font:11px ui-monospace,Menlo,Consolas,monospace;white-space:pre;display:none}"
    ".avlens-view .av-chip{display:inline-block;color:#fff;padding:0 5px;margin:0 4px 2px 0;border-radius:3px;"
    "font:11px ui-monospace,Menlo,Consolas,monospace}"
    ".avlens-view canvas{display:block}"
    ".avlens-view .av-tok{display:inline-block;font:11px/17px ui-monospace,Menlo,Consolas,monospace;"
    "margin:0 1px 3px 0;padding:0 2px;border-bottom:3px solid transparent;white-space:pre;min-height:17px;vertical-align:top}"
    ".avlens-view .av-cell{padding:0;width:6px;margin-right:0}"
    ".avlens-view .av-run{display:inline-block;font:9px/17px ui-monospace,Menlo,Consolas,monospace;color:#4b5563;"
    "margin:0 2px 3px 4px;vertical-align:top}"
)

#: the helpers' code (an expression whose value is the helper object): base64 arrays, colour maps,
#: a tooltip, a colour bar, group chips
_HELPERS_BODY = r"""(function(){
function bytes(b){var s=atob(b),n=s.length,u=new Uint8Array(n);for(var i=0;i<n;i++)u[i]=s.charCodeAt(i);return u;}
function h2f(h){var s=(h&32768)?-1:1,e=(h>>10)&31,f=h&1023;if(e===0)return s*f*5.960464477539063e-8;
if(e===31)return f?NaN:s*Infinity;return s*Math.pow(2,e-15)*(1+f/1024);}
function decode(a){var u=bytes(a.b64),dv=new DataView(u.buffer),n=1,i,off=a.offset||0;for(i=0;i<a.shape.length;i++)n*=a.shape[i];
var o=new Float64Array(n),t=a.dtype;for(i=0;i<n;i++){o[i]=(t==='f16'?h2f(dv.getUint16(2*i,true)):t==='f32'?dv.getFloat32(4*i,true):
t==='u8'?u[i]:t==='i16'?dv.getInt16(2*i,true):dv.getInt32(4*i,true))+off;}return o;}
var MAPS={viridis:[[68,1,84],[71,44,122],[59,81,139],[44,113,142],[33,144,141],[39,173,129],[92,200,99],[170,220,50],[253,231,37]],
rdbu:[[5,48,97],[33,102,172],[67,147,195],[146,197,222],[209,229,240],[247,247,247],[253,219,199],[244,165,130],[214,96,77],[178,24,43],[103,0,31]],
blues:[[247,251,255],[222,235,247],[198,219,239],[158,202,225],[107,174,214],[66,146,198],[33,113,181],[8,81,156],[8,48,107]]};
function rgb(v,s){if(!(v===v))return null;var c=MAPS[s.cmap]||MAPS.viridis,t=(v-s.vmin)/(s.vmax-s.vmin);
t=t<0?0:t>1?1:t;var x=t*(c.length-1),i=Math.min(Math.floor(x),c.length-2),f=x-i,a=c[i],b=c[i+1];
return[Math.round(a[0]+f*(b[0]-a[0])),Math.round(a[1]+f*(b[1]-a[1])),Math.round(a[2]+f*(b[2]-a[2]))];}
function css(c,al){return c?(al===undefined?'rgb('+c.join(',')+')':'rgba('+c.join(',')+','+al+')'):'transparent';}
function ink(c){return c&&(0.299*c[0]+0.587*c[1]+0.114*c[2])<140?'#fff':'#111';}
function fmt(v){if(!(v===v))return'-';if(!isFinite(v))return v>0?'inf':'-inf';var a=Math.abs(v);return a!==0&&(a<1e-3||a>=1e5)?v.toExponential(2):(+v.toPrecision(4)).toString();}
function el(tag,parent,cls,text){var e=document.createElement(tag);if(cls)e.className=cls;if(text!==undefined)e.textContent=text;if(parent)parent.appendChild(e);return e;}
function tip(root){var t=el('div',root,'av-tip');return{show:function(ev,text){var r=root.getBoundingClientRect();t.textContent=text;
t.style.display='block';var x=ev.clientX-r.left+14,y=ev.clientY-r.top+14;if(x+t.offsetWidth>root.clientWidth)x=Math.max(0,ev.clientX-r.left-t.offsetWidth-8);
t.style.left=x+'px';t.style.top=y+'px';},hide:function(){t.style.display='none';}};}
function colorbar(parent,s,label){var w=el('div',parent);w.style.cssText='display:flex;align-items:center;gap:6px;margin:4px 0';
el('span',w,'av-note',label||'value');el('span',w,'av-note',fmt(s.vmin));var c=el('canvas',w);c.width=160;c.height=10;
c.style.cssText='width:160px;height:10px;border:1px solid #d1d5db';var g=c.getContext('2d');
for(var x=0;x<160;x++){g.fillStyle=css(rgb(s.vmin+(x+0.5)/160*(s.vmax-s.vmin),s));g.fillRect(x,0,1,10);}
el('span',w,'av-note',fmt(s.vmax));return w;}
function chips(parent,names,colors,letters){var w=el('div',parent);for(var i=0;i<names.length;i++){
var c=el('span',w,'av-chip',(letters&&letters[i]?letters[i]+' ':'')+names[i]);c.style.background=colors[i];}return w;}
return{decode:decode,rgb:rgb,css:css,ink:ink,fmt:fmt,el:el,tip:tip,colorbar:colorbar,chips:chips};})()"""

#: the page-global name of the helpers: versioned by a hash of their code, so a page (a notebook
#: whose cells ran under different avlens versions) never hands a view helpers of another version
VIZ_GLOBAL = "__avlensViz_" + hashlib.sha256(_HELPERS_BODY.encode("utf-8")).hexdigest()[:12]

#: helpers every view's script uses, defined once per page as `window[VIZ_GLOBAL]`
HELPERS_JS = f"\nwindow.{VIZ_GLOBAL}=window.{VIZ_GLOBAL}||{_HELPERS_BODY};\n"


def _script(js: str) -> str:
    """An inline script; every dynamic value in `js` comes from `json_for_script`, and the fixed
    code holds no `</script`, so the HTML parser cannot leave it early."""
    if "</script" in js.lower():
        raise ValueError("inline view code must not contain '</script'; pass data through json_for_script")
    return f"<script>{js}</script>"


class View:
    """A rendered view: HTML plus the data it draws.

    Attributes:
        kind: a short name (`"group_flow"`, `"drilldown"`, `"token_strip"`, ...).
        title: shown above the view (escaped).
        payload: the data the view's script draws (JSON-able; arrays as `encode_array` dicts).
        requires: bundles the page must hold: a subset of `{"circuitsvis"}`.
    """

    kind = "view"
    #: the script that draws the view from `P` (the payload), `root` (its element), `V` (helpers)
    render_js = ""

    def __init__(self, title: str, payload: dict, requires: Sequence[str] = (), description: Sequence[str] = (),
                 fallback: Optional[str] = None):
        unknown = set(requires) - {"circuitsvis", "plotly"}
        if unknown:
            raise ValueError(f"unknown bundles {sorted(unknown)}; a view may require 'circuitsvis' (or 'plotly')")
        self.title = str(title)
        self.payload = payload
        self.requires = frozenset(requires)
        self.description = list(description)  # extra lines for the terminal repr
        #: trusted static HTML shown where the script cannot run (an untrusted notebook, GitHub's
        #: notebook preview): a PNG or a text summary; None shows the description as text
        self.fallback = fallback

    def fallback_html(self) -> str:
        """What the view shows before (or without) its script: a note, then the static fallback
        (a PNG of the data for the heatmap-like views, the description as text otherwise). The
        script replaces it with the interactive drawing."""
        static = self.fallback if self.fallback is not None else (
            "<pre style='margin:4px 0;font:11px ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap'>"
            + html.escape("\n".join(self.description)) + "</pre>" if self.description else "")
        note = ("Static preview: this view is drawn by JavaScript, which did not run here (in Jupyter: trust the "
                "notebook or re-run the cell for the interactive view).")
        return f"<div class='av-fallback'><div class='av-note' style='color:#4b5563;font-size:11px'>{note}</div>{static}</div>"

    # ------------------------------------------------------------------------------ output
    def payload_json(self) -> str:
        """The payload as the script-safe JSON literal the page embeds."""
        return json_for_script(self.payload)

    @property
    def payload_bytes(self) -> int:
        """Size in bytes of the view's data as embedded in the page (the JSON literal, base64
        arrays and data URIs included; the fixed drawing code and the bundles not)."""
        return len(self.payload_json().encode("utf-8"))

    def html(self) -> str:
        """An HTML fragment for a page that already holds the bundles in `.requires` (element
        ids are fresh on every call, so a page may show the same view twice)."""
        uid = "avl" + uuid.uuid4().hex[:12]
        # the element is found from the script itself first: a notebook may run the script while
        # its output is not yet attached to the document. The drawing goes after the static
        # fallback, which is removed only once the drawing code has finished: if it throws, what
        # it drew so far is removed instead and the fallback stays (the error still reaches the
        # console)
        body = (f"(function(){{var V=window.{VIZ_GLOBAL},P={self.payload_json()},root=document.getElementById('{uid}'),"
                f"me=document.currentScript,box=me&&me.previousElementSibling;"
                f"if(box&&box.querySelector)root=box.querySelector('#{uid}')||root;if(!root)return;"
                f"var fb=root.firstChild;function draw(){{{self.render_js}\n}}"
                f"try{{draw();}}catch(e){{while(fb&&fb.nextSibling)root.removeChild(fb.nextSibling);throw e;}}"
                f"if(fb&&fb.parentNode===root)root.removeChild(fb);}})();")
        return (
            f"<div class='avlens-view avlens-{self.kind}'><style>{VIEW_CSS}</style>"
            f"<div class='av-title'>{html.escape(self.title)}</div>"
            f"<div id='{uid}' style='position:relative'>{self.fallback_html()}</div></div>"
            + _script(HELPERS_JS + body)
        )

    def _repr_html_(self) -> str:
        """The fragment with its bundles inlined: self-contained in Jupyter, VS Code and Colab
        (each Colab output is its own page)."""
        return bundle_scripts(self.requires) + self.html()

    def save(self, path: Union[str, Path]) -> Path:
        """Write a standalone HTML page (bundles inlined, nothing fetched) and return its path."""
        path = Path(path)
        if path.suffix.lower() not in (".html", ".htm"):
            raise ValueError(f"save a view to a .html file; got {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        page = (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title>{bundle_scripts(self.requires)}</head>"
            f"<body style='margin:1.5em'>{self.html()}</body></html>"
        )
        path.write_text(page, encoding="utf-8")
        return path

    def write_html(self, path: Union[str, Path]) -> Path:
        """The same as `save` (the name plotly figures use): a standalone page at `path`."""
        return self.save(path)

    def show(self) -> Optional[Path]:
        """Show the view from anywhere: in a notebook (Jupyter, VS Code, Colab) it is displayed
        as the cell's output (returns None); in a script or a terminal it is written to a
        temporary standalone page, opened in the default web browser, and the page's path is
        returned (so `result.plot().show()` works as it does for a plotly figure)."""
        if _in_notebook():
            from IPython.display import display

            display(self)
            return None
        import tempfile
        import webbrowser

        fd, name = tempfile.mkstemp(prefix="avlens-view-", suffix=".html")
        os.close(fd)
        path = self.save(name)
        webbrowser.open(path.resolve().as_uri())
        return path

    def __repr__(self) -> str:
        kb = self.payload_bytes / 1024
        head = f"{type(self).__name__}({self.title!r}, payload {kb:.1f} kB"
        head += f", needs {'+'.join(sorted(self.requires))})" if self.requires else ")"
        return "\n".join([head] + ["  " + line for line in self.description])


def _in_notebook() -> bool:
    """Whether this runs in a notebook kernel (Jupyter, VS Code, Colab): an IPython shell with a
    kernel, where `display` draws HTML. A terminal IPython has no kernel (display would print
    the repr), so it opens a browser like a script."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _group_colors(groups: Sequence[str]) -> list[str]:
    return [GROUP_COLORS.get(g, "#444444") for g in groups]


def _group_letters(groups: Sequence[str]) -> list[str]:
    """One-letter codes of the partition groups; two letters for overlays (`sink` -> `Si`, so it
    is not read as `S` special)."""
    return [GROUP_LETTERS.get(g) or g[:2].capitalize() for g in groups]


# ================================================================================== group flow

_GROUP_FLOW_JS = r"""
var L=P.layers,H=P.heads,G=P.groups.length,v=V.decode(P.values),s=P.scale;
function at(l,h,q,k){return v[((l*H+h)*G+q)*G+k];}
// mean over heads (column "mean") and over layers (row "all"): averages of the shown values
var rows=L+1,cols=H+1,M=new Float64Array(rows*cols*G*G);
function put(r,c,q,k,x){M[((r*cols+c)*G+q)*G+k]=x;}
for(var q=0;q<G;q++)for(var k=0;k<G;k++){var tot=0;for(var l=0;l<L;l++){var sh=0;
for(var h=0;h<H;h++){var x=at(l,h,q,k);put(l+1,h+1,q,k,x);sh+=x;}put(l+1,0,q,k,sh/H);tot+=sh;}
put(0,0,q,k,tot/(L*H));for(var h2=0;h2<H;h2++){var sl=0;for(var l2=0;l2<L;l2++)sl+=at(l2,h2,q,k);put(0,h2+1,q,k,sl/L);}}
function get(r,c,q,k){return M[((r*cols+c)*G+q)*G+k];}
V.chips(root,P.groups,P.colors,P.letters);
var wrap=V.el('div',root);wrap.style.cssText='display:flex;gap:14px;align-items:flex-start;flex-wrap:wrap';
var cs=P.cell,band=Math.max(2,Math.round(cs/3)),gap=Math.max(4,cs),bw=G*cs+band+gap,lw=58,th=16;
var cv=V.el('canvas',wrap);cv.width=lw+cols*bw;cv.height=th+rows*bw+8;var g=cv.getContext('2d');
g.font='10px ui-monospace,Menlo,monospace';g.fillStyle='#374151';g.textBaseline='middle';
for(var c=0;c<cols;c++){g.fillText(c===0?'mean':'H'+(c-1),lw+c*bw+1,th/2);}
for(var r=0;r<rows;r++){var y0=th+r*bw;g.fillStyle='#374151';g.fillText(r===0?'all L':'L'+(r-1),2,y0+band+G*cs/2);
for(var c2=0;c2<cols;c2++){var x0=lw+c2*bw;
for(var i=0;i<G;i++){g.fillStyle=P.colors[i];g.fillRect(x0+band+i*cs,y0,cs,band);g.fillRect(x0,y0+band+i*cs,band,cs);}
for(var q2=0;q2<G;q2++)for(var k2=0;k2<G;k2++){g.fillStyle=V.css(V.rgb(get(r,c2,q2,k2),s));g.fillRect(x0+band+k2*cs,y0+band+q2*cs,cs,cs);}
if(r===0||c2===0){g.strokeStyle='#9ca3af';g.lineWidth=1;g.strokeRect(x0+band-0.5,y0+band-0.5,G*cs+1,G*cs+1);}}}
g.fillStyle='#111827';g.fillRect(lw-4,th+bw-gap/2-0.5,cols*bw,1);g.fillRect(lw+bw-gap/2-0.5,th,1,rows*bw);
var side=V.el('div',wrap);V.colorbar(side,s,P.value_label);
var dt=V.el('div',side,'av-note','hover a head: its matrix, query group (row) -> key group (column)');dt.style.margin='4px 0';
var big=V.el('canvas',side),bc=34,bl=70;big.width=bl+G*bc+2;big.height=bl+G*bc+2;var bg=big.getContext('2d');
function detail(r,c){bg.clearRect(0,0,big.width,big.height);bg.font='10px ui-monospace,Menlo,monospace';bg.textBaseline='middle';
dt.textContent=(r===0?'all layers':'layer '+(r-1))+', '+(c===0?'mean over heads':'head '+(c-1))+': query group (row) -> key group (column)';
for(var i=0;i<G;i++){bg.fillStyle=P.colors[i];bg.fillText(P.letters[i]+' '+P.groups[i].slice(0,7),0,bl+i*bc+bc/2);
bg.save();bg.translate(bl+i*bc+bc/2,bl-4);bg.rotate(-Math.PI/2);bg.fillText(P.letters[i]+' '+P.groups[i].slice(0,7),0,0);bg.restore();}
for(var q=0;q<G;q++)for(var k=0;k<G;k++){var x=get(r,c,q,k),col=V.rgb(x,s);bg.fillStyle=V.css(col);bg.fillRect(bl+k*bc,bl+q*bc,bc-1,bc-1);
bg.fillStyle=V.ink(col);bg.textAlign='center';bg.fillText(x.toFixed(2),bl+k*bc+bc/2,bl+q*bc+bc/2);bg.textAlign='left';}}
detail(0,0);var tp=V.tip(root);
cv.addEventListener('mousemove',function(ev){var b=cv.getBoundingClientRect(),x=(ev.clientX-b.left)*cv.width/b.width-lw,
y=(ev.clientY-b.top)*cv.height/b.height-th,c=Math.floor(x/bw),r=Math.floor(y/bw),k=Math.floor((x-c*bw-band)/cs),q=Math.floor((y-r*bw-band)/cs);
if(x<0||y<0||c>=cols||r>=rows||k<0||q<0||k>=G||q>=G){tp.hide();return;}detail(r,c);
tp.show(ev,(r===0?'all layers':'layer '+(r-1))+', '+(c===0?'mean of heads':'head '+(c-1))+'\nquery '+P.groups[q]+' -> key '+P.groups[k]+
'\n'+P.value_label+' '+V.fmt(get(r,c,q,k)));});
cv.addEventListener('mouseleave',function(){tp.hide();});
V.el('div',root,'av-note',P.note);
"""


class GroupFlowView(View):
    """Per layer x head, the G x G matrix of attention mass from each query group (rows) to each
    key group (columns), as a grid of small heatmaps; see `group_flow_view`."""

    kind = "group_flow"
    render_js = _GROUP_FLOW_JS


def group_flow_view(
    summary,
    sample: Optional[int] = None,
    *,
    groups: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
    vmax: float = 1.0,
    cell: Optional[int] = None,
) -> GroupFlowView:
    """The group-flow summary: a grid of small heatmaps, one per (layer row, head column), each the
    G x G matrix of attention mass from query group q (row) to key group k (column), with a
    "mean" column (mean over heads) and an "all L" row (mean over layers). Group-coloured bars
    label the matrices' rows and columns; hovering shows the numbers and draws that head's
    matrix large with its values.

    The data are L x H x G x G float16 values, whatever the sequence length. Measured for a
    28-layer, 28-head model with 6 groups (sink included) on a 2,048-token sample, with random
    masses (the least compressible case; tests/test_viz_views.py): payload 76 kB, the whole
    fragment with its static PNG preview (41 kB) and the drawing code 125 kB.

    Args:
        summary: `model.attention_group_summary(batch)` (an `AttentionGroupSummary`, mass
            `[batch, layer, head, G, G]`), or a tensor `[layer, head, G, G]` with `groups`.
        sample: one sample of the batch; `None` averages the batch over query positions: each
            sample's row for query group q weighs by its number of q positions (a sample without
            q positions does not pull the mean towards 0).
        groups: group names of a tensor `summary` (taken from the summary object otherwise).
        vmax: top of the colour scale (mass is a fraction of each query's attention: 1 by default).
        cell: pixels per matrix entry, a positive integer (default: chosen so the grid is at most
            ~1,100 px wide).
    """
    if cell is not None:
        _check_positive_int(cell, "cell", "pixels per matrix entry")
    if not vmax > 0:
        raise ValueError(f"vmax must be positive (the top of the mass colour scale); got {vmax}")
    mass, counts, names = _flow_values(summary, sample, groups)
    L, H, G, _ = mass.shape
    if cell is None:
        cell = int(max(2, min(10, (1100 - 60) // max(1, (H + 1) * (G + 1)))))
    scale = {"vmin": 0.0, "vmax": float(vmax), "cmap": "viridis"}
    what = "batch mean (weighted by query positions)" if sample is None else f"sample {sample}"
    note = (f"{L} layers x {H} heads, {what}. Each small matrix: rows = query group, columns = key group "
            f"(coloured bars), value = mean over the query group's positions of the attention mass on the key group.")
    payload = {
        "layers": L, "heads": H, "groups": names, "colors": _group_colors(names), "letters": _group_letters(names),
        "values": encode_array(mass, "f16"), "scale": scale, "cell": cell, "value_label": "attention mass",
        "query_counts": [int(c) for c in counts], "note": note,
    }
    m = mass.mean(axis=(0, 1))
    desc = [f"{L} layers x {H} heads x {G} groups ({what}); mean mass, query group -> key group:",
            "          " + "".join(f"{g[:8]:>9}" for g in names)]
    desc += [f"{g[:8]:>9} " + "".join(f"{float(m[i, j]):9.3f}" for j in range(G)) for i, g in enumerate(names)]
    return GroupFlowView(title or "Attention flow between token groups", payload, description=desc,
                         fallback=_flow_fallback(mass, names, float(vmax), what))


def _flow_grid(mass: np.ndarray) -> np.ndarray:
    """`[L, H, G, G]` -> `[L + 1, H + 1, G, G]` with the view's "all L" row (mean over layers)
    first and its "mean" column (mean over heads) first, as the canvas draws them."""
    L, H, G, _ = mass.shape
    out = np.empty((L + 1, H + 1, G, G))
    out[1:, 1:] = mass
    out[1:, 0] = mass.mean(1)
    out[0, 1:] = mass.mean(0)
    out[0, 0] = mass.mean((0, 1))
    return out


def _flow_fallback(mass: np.ndarray, names: list[str], vmax: float, what: str) -> str:
    """The group flow as one palette PNG (each head's G x G matrix a block of G x G pixels, a
    one-pixel gap between blocks, scaled up crisply by the browser), its colour bar and how to
    read it: the static preview of a `GroupFlowView` (a few kB)."""
    from avlens.viz.reprs import colorbar, esc, levels, palette, png_data_uri

    grid = _flow_grid(mass)
    R, C, G, _ = grid.shape
    b = G + 1
    img = np.full((R * b - 1, C * b - 1), np.nan)
    for r in range(R):
        for c in range(C):
            img[r * b:r * b + G, c * b:c * b + G] = grid[r, c]
    idx = levels(img / vmax)
    pal = palette("viridis", "#ffffff")
    scale = max(2, min(8, 1000 // img.shape[1]))
    groups = ", ".join(f"{GROUP_LETTERS.get(g) or g[:2].capitalize()} {g}" for g in names)
    return (f"<img src='{png_data_uri(idx, pal)}' alt='group flow: {esc(what)}' "
            f"style='display:block;width:{img.shape[1] * scale}px;height:{img.shape[0] * scale}px;"
            "image-rendering:pixelated;image-rendering:crisp-edges;margin:4px 0'>"
            f"{colorbar(0.0, vmax)}<div style='color:#4b5563;font-size:11px'>Rows of blocks: all layers (mean), then "
            f"layer 0..{R - 2}; columns: mean over heads, then head 0..{C - 2}. Each block: query group (row) -> key "
            f"group (column), in the order {esc(groups)}.</div>")


def _flow_values(summary, sample, groups) -> tuple[np.ndarray, list[int], list[str]]:
    """`[L, H, G, G]` mass (one sample, or the count-weighted batch mean), query counts, names."""
    if isinstance(summary, (Tensor, np.ndarray)):
        mass = _as_numpy(summary, "summary")
        if mass.ndim != 4 or mass.shape[2] != mass.shape[3]:
            raise ValueError(f"a tensor summary must be [layer, head, G, G]; got shape {tuple(mass.shape)}")
        if groups is None or len(groups) != mass.shape[2]:
            raise ValueError(f"pass groups=[...] naming the {mass.shape[2]} groups of a tensor summary")
        if sample is not None:
            raise ValueError("sample= needs an AttentionGroupSummary (a [layer, head, G, G] tensor has no batch)")
        return mass, [0] * mass.shape[2], list(groups)
    if not (hasattr(summary, "mass") and hasattr(summary, "groups")):
        raise TypeError(
            f"group_flow_view takes model.attention_group_summary(batch) or a [layer, head, G, G] tensor; "
            f"got {type(summary).__name__}"
        )
    if groups is not None and list(groups) != list(summary.groups):
        raise ValueError(f"groups= is only for tensor summaries; this summary's groups are {summary.groups}")
    full = summary.mass.detach().double().cpu()  # [b, L, H, G, G]
    qc = summary.query_counts.detach().double().cpu()  # [b, G]
    b = full.shape[0]
    if sample is not None:
        if not -b <= sample < b:
            raise IndexError(f"sample {sample} is outside the batch of {b}")
        return full[sample].numpy(), qc[sample].long().tolist(), list(summary.groups)
    w = qc / qc.sum(0).clamp(min=1)  # [b, G]: each sample's share of the batch's q positions
    mass = (full * w[:, None, None, :, None]).sum(0)
    return mass.numpy(), qc.sum(0).long().tolist(), list(summary.groups)


# ================================================================================== drill-down

_DRILL_JS = r"""
var pat=V.decode(P.pattern),h=P.pattern.shape[0],w=P.pattern.shape[1],att=[];
for(var a=0;a<h;a++){var M=[];for(var q=0;q<w;q++){var r=[];for(var k=0;k<w;k++)r.push(pat[(a*w+q)*w+k]);M.push(r);}att.push(M);}
V.chips(root,P.group_names,P.group_colors,P.group_letters);
var strip=V.el('div',root);strip.style.cssText='display:flex;flex-wrap:wrap;gap:1px;margin:2px 0 6px 0';var tp=V.tip(root);
P.tokens.forEach(function(t,i){var c=V.el('span',strip,'av-tok',t);c.style.background=P.group_colors[P.groups[i]];c.style.color='#fff';
c.addEventListener('mousemove',function(ev){tp.show(ev,'position '+P.positions[i]+' ('+P.group_names[P.groups[i]]+')\n'+t);});
c.addEventListener('mouseleave',function(){tp.hide();});});
V.el('div',root,'av-note',P.note);
var host=V.el('div',root);host.id=root.id+'cv';
if(typeof CircuitsVis==='undefined'){host.textContent='The circuitsvis bundle is not on this page (show the view with its _repr_html_, or add it with Report.add_view).';}
else{(function go(){if(!host.isConnected){setTimeout(go,50);return;}  // circuitsvis looks the element up in the document
CircuitsVis.render(host.id,CircuitsVis.AttentionHeads,{attention:att,tokens:P.tokens,attentionHeadNames:P.head_names,
maxValue:P.vmax,minValue:0,maskUpperTri:P.causal});})();}
"""


class AttentionDrilldownView(View):
    """A circuitsvis `AttentionHeads` view of a window of positions; see `attention_drilldown`."""

    kind = "drilldown"
    render_js = _DRILL_JS


def _check_positive_int(x, name: str, what: str) -> int:
    """`x` as an int when it is a positive integer (not a bool, not a float); a ValueError naming
    `name` otherwise."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or int(x) <= 0:
        raise ValueError(f"{name} must be a positive integer ({what}); got {x!r}")
    return int(x)


def _int_position(p, what: str) -> int:
    """One position: an integer (Python, numpy or a 0-d integer tensor); floats and bools are
    refused rather than silently truncated."""
    if isinstance(p, Tensor) and p.ndim == 0 and not p.dtype.is_floating_point and p.dtype != torch.bool:
        return int(p)
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
        raise ValueError(f"{what} positions must be integers; got {p!r} ({type(p).__name__}). "
                        "Pass whole positions, e.g. (0, 10) or range(0, 10)")
    return int(p)


def _positions(window, n: int, what: str = "window") -> list[int]:
    """A window given as range/slice/(start, end)/sequence/tensor -> sorted unique positions in [0, n)."""
    if isinstance(window, slice):
        pos = list(range(n))[window]
    elif isinstance(window, tuple) and len(window) == 2 and all(isinstance(x, (int, np.integer)) for x in window):
        start, end = int(window[0]), int(window[1])
        start, end = start + n if start < 0 else start, end + n if end < 0 else end
        if not 0 <= start < end <= n:
            raise ValueError(f"{what} (start, end) = {window} must satisfy 0 <= start < end <= {n} (end exclusive)")
        pos = list(range(start, end))
    else:
        if isinstance(window, Tensor):
            if window.dtype == torch.bool:
                window = window.nonzero().flatten()
            window = window.tolist()
        if isinstance(window, np.ndarray):
            if window.dtype == np.bool_:
                window = window.nonzero()[0]
            window = window.tolist()
        if isinstance(window, (int, np.integer)) and not isinstance(window, bool):
            window = [window]
        try:
            items = list(window)
        except TypeError as e:
            raise TypeError(f"{what} must be a range, slice, (start, end) or a sequence of positions; got {window!r}") from e
        pos = [_int_position(p, what) for p in items]
        for p in pos:
            if not -n <= p < n:
                raise ValueError(f"{what} position {p} is outside the sequence (length {n})")
        pos = [p + n if p < 0 else p for p in pos]
    pos = sorted(set(pos))
    if not pos:
        raise ValueError(f"the {what} is empty; give at least one position")
    return pos


def _drill_heads(heads, n_heads: int) -> list[int]:
    if heads is None:
        return list(range(n_heads))
    hs = [heads] if isinstance(heads, (int, np.integer)) else list(heads.tolist() if isinstance(heads, Tensor) else heads)
    for h in hs:
        if not isinstance(h, (int, np.integer)) or not 0 <= int(h) < n_heads:
            raise ValueError(f"head {h!r} does not exist: heads are 0..{n_heads - 1}")
    if not hs:
        raise ValueError("heads is empty; pass None for all heads")
    return [int(h) for h in hs]


def attention_drilldown_from_pattern(
    pattern,
    tokens: Sequence[str],
    groups: Sequence[str],
    *,
    head_names: Optional[Sequence[str]] = None,
    positions: Optional[Sequence[int]] = None,
    causal: bool = True,
    title: Optional[str] = None,
    vmax: float = 1.0,
) -> AttentionDrilldownView:
    """A circuitsvis `AttentionHeads` view of a given window pattern.

    Args:
        pattern: `[head, query, key]` (or `[query, key]`) over the window's positions.
        tokens: a label per window position (shown as text, never as markup, whatever it holds).
        groups: the token group of each window position (colours the label strip above the heads).
        head_names: one per head (default `head 0`, ...).
        positions: the sequence positions of the window (shown on hover; default 0..w-1).
        causal: mask the upper triangle (keys after the query), as a decoder's attention does.
        vmax: the pattern value drawn darkest.
    """
    pat = _as_numpy(pattern, "pattern")
    if pat.ndim == 2:
        pat = pat[None]
    w = len(tokens)
    if pat.ndim != 3 or pat.shape[1] != w or pat.shape[2] != w:
        raise ValueError(f"pattern must be [head, query, key] with query = key = len(tokens) = {w}; got shape {tuple(pat.shape)}")
    if len(groups) != w:
        raise ValueError(f"give one group per token: {len(groups)} groups for {w} tokens")
    if head_names is not None and len(head_names) != pat.shape[0]:
        raise ValueError(f"{len(head_names)} head names for {pat.shape[0]} heads")
    if positions is not None and len(positions) != w:
        raise ValueError(f"{len(positions)} positions for {w} tokens")
    names = list(dict.fromkeys(str(g) for g in groups))
    code = {g: i for i, g in enumerate(names)}
    head_names = [str(h) for h in head_names] if head_names is not None else [f"head {i}" for i in range(pat.shape[0])]
    note = (f"{w} positions x {pat.shape[0]} heads. Token labels: group letter + text "
            "(media tokens: their time stamp); the strip above gives each token's group colour.")
    payload = {
        "tokens": [str(t) for t in tokens], "groups": [code[str(g)] for g in groups], "group_names": names,
        "group_colors": _group_colors(names), "group_letters": _group_letters(names),
        "positions": [int(p) for p in (positions if positions is not None else range(w))],
        "pattern": encode_array(pat, "f16"), "head_names": head_names, "causal": bool(causal), "vmax": float(vmax),
        "note": note,
    }
    desc = [f"window of {w} positions x {pat.shape[0]} heads; groups {', '.join(f'{g}={list(groups).count(g)}' for g in names)}"]
    return AttentionDrilldownView(title or "Attention drill-down", payload, requires=("circuitsvis",), description=desc)


def _str_tokens(model, batch, sample: int) -> list[str]:
    if hasattr(model, "to_str_tokens"):
        return list(model.to_str_tokens(batch, sample))
    st = batch.layout.str_tokens
    if st is not None:
        return list(st[sample])
    return [str(t) for t in batch.input_ids[sample].tolist()]


def window_labels(layout: BatchLayout, sample: int, positions: Sequence[int], str_tokens: Sequence[str]) -> list[str]:
    """`"<group letter>:<text>"` per position; media tokens show their time stamp (`A:1.24s`),
    and a token's text is shown with newlines and tabs made visible."""
    labels = layout.labels(sample)
    out = []
    for p in positions:
        g = labels[p]
        t = float(layout.time[sample, p])
        tok = f"{t:.2f}s" if g in ("audio", "video", "image") and t == t else str(str_tokens[p])
        tok = tok.replace("\n", "\\n").replace("\t", "\\t")
        out.append(f"{GROUP_LETTERS.get(g, '?')}:{tok}")
    return out


def attention_drilldown(
    model,
    batch,
    layer: int,
    heads=None,
    window=None,
    sample: int = 0,
    *,
    title: Optional[str] = None,
    max_len: int = 64,
) -> AttentionDrilldownView:
    """Attention of some heads over a window of positions, as a circuitsvis `AttentionHeads` view
    whose payload grows with the window, not with the sequence.

    The model runs up to `layer` (`stop_at_layer=layer + 1`) with one hook on
    `blocks.{layer}.attn.hook_pattern` that keeps `pattern[sample, heads][:, window][:, :, window]`
    (the full pattern of that one layer exists for the moment the hook runs, as in any eager
    forward; nothing else is stored). The hook is removed whatever happens, errors included.

    Args:
        model: a `HookedAVTransformer`.
        batch: its input (an `AVBatch`, token ids or strings).
        layer: the layer.
        heads: a head index or a list of them (default: all).
        window: the positions to show: a range, slice, `(start, end)` (end exclusive), a list or
            a LongTensor of positions (they need not be contiguous). Default:
            `avlens.viz.attention_window(layout, sample, max_len)`, the last media chunk and the
            question, thinned to at most `max_len` positions.
        sample: which sample of the batch.
    """
    max_len = _check_positive_int(max_len, "max_len", "the most positions the default window shows")
    n_layers = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= int(layer) < n_layers:
        raise ValueError(f"layer {layer!r} does not exist: the model has layers 0..{n_layers - 1}")
    layer = int(layer)
    hs = _drill_heads(heads, model.cfg.n_heads)
    batch = model._to_batch(batch) if hasattr(model, "_to_batch") else batch
    layout = batch.layout
    if not -layout.batch_size <= sample < layout.batch_size:
        raise IndexError(f"sample {sample} is outside the batch of {layout.batch_size}")
    sample = sample % layout.batch_size
    if window is None:
        from avlens.viz.groups import attention_window

        pos = attention_window(layout, sample, max_len=max_len).tolist()
    else:
        pos = _positions(window, layout.n_pos)
    pad = layout.masks["pad"][sample, pos]
    if bool(pad.any()):
        bad = [p for p, m in zip(pos, pad.tolist()) if m]
        raise ValueError(f"window positions {bad[:8]} of sample {sample} are padding; choose real positions")
    str_tokens = _str_tokens(model, batch, sample)
    # run only the chosen sample (media features follow it), unless its encoders must re-run
    run, idx = batch, sample
    if batch.batch_size > 1 and not getattr(model, "encoders_hooked", False) and hasattr(batch, "select"):
        run, idx = batch.select(sample), 0
    pos_t = torch.tensor(pos, dtype=torch.long)
    kept: dict[str, Tensor] = {}

    def keep_window(pattern: Tensor, hook) -> None:
        p = pos_t.to(pattern.device)
        kept["w"] = pattern[idx, hs][:, p][:, :, p].detach().float().cpu().clone()

    with torch.no_grad():
        model.run_with_hooks(run, return_type=None, stop_at_layer=layer + 1,
                             fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", keep_window)])
    if "w" not in kept:
        raise RuntimeError(f"blocks.{layer}.attn.hook_pattern did not run; is layer {layer} part of this model's forward?")
    labels = layout.labels(sample)
    return attention_drilldown_from_pattern(
        kept["w"], window_labels(layout, sample, pos, str_tokens), [labels[p] for p in pos],
        head_names=[f"L{layer}H{h}" for h in hs], positions=pos,
        title=title or f"Layer {layer} attention, sample {sample}, positions {pos[0]}..{pos[-1]} ({len(pos)} shown)",
    )


# ================================================================================== token strip

_STRIP_JS = r"""
var n=P.n,grp=V.decode(P.groups),tm=P.time?V.decode(P.time):null,ch=P.chunk?V.decode(P.chunk):null,
val=P.values?V.decode(P.values):null,s=P.scale,tp=V.tip(root),pos=[];
P.runs.forEach(function(r){for(var p=r[0];p<r[1];p++)pos.push(p);});
var ov={};P.overlays.forEach(function(o){o.positions.forEach(function(p){(ov[p]=ov[p]||[]).push(o);});});
V.chips(root,P.group_names,P.group_colors,P.group_letters);
if(P.overlays.length){var oc=V.el('div',root);P.overlays.forEach(function(o){var c=V.el('span',oc,'av-chip',o.name+' (outlined)');
c.style.background='#fff';c.style.color='#111';c.style.outline='2px solid '+o.color;});}
if(val)V.colorbar(root,s,P.value_label);
var box=V.el('div',root);box.style.cssText='max-height:'+P.max_height+'px;overflow-y:auto;padding:4px 2px;border:1px solid #e5e7eb';
var prev=-1,media=P.media;
for(var i=0;i<n;i++){var g=grp[i],isM=media[g],p=pos[i];
if(isM&&(g!==prev||(ch&&i>0&&ch[i]!==ch[i-1]))){var e=i;while(e+1<n&&grp[e+1]===g&&!(ch&&ch[e+1]!==ch[i]))e++;
var lab=P.group_letters[g]+(tm&&tm[i]===tm[i]?' '+tm[i].toFixed(2)+'-'+tm[e].toFixed(2)+'s':'');V.el('span',box,'av-run',lab);}
prev=g;var c=V.el('span',box,isM?'av-tok av-cell':'av-tok',isM?'':P.text[i]);var col=val?V.rgb(val[i],s):null;
c.style.borderBottomColor=P.group_colors[g];
if(val){c.style.background=col?V.css(col):'#f3f4f6';c.style.color=V.ink(col);}else if(isM){c.style.background=P.group_colors[g];}
if(ov[p]){c.style.outline='2px solid '+ov[p][0].color;c.style.outlineOffset='-2px';}
if(p===P.query){c.style.boxShadow='0 0 0 2px #111827';}
c.dataset.i=i;}
box.addEventListener('mousemove',function(ev){var t=ev.target;if(!t.dataset||t.dataset.i===undefined){tp.hide();return;}
var i=+t.dataset.i,g=grp[i],lines=['position '+pos[i]+' \u00b7 '+P.group_names[g]+(pos[i]===P.query?' \u00b7 the query':'')];
if(!media[g])lines.push(JSON.stringify(P.text[i]));
if(tm&&tm[i]===tm[i])lines.push('t = '+tm[i].toFixed(3)+' s'+(ch&&ch[i]>=0?' \u00b7 chunk '+ch[i]:''));
if(ov[pos[i]])lines.push('in '+ov[pos[i]].map(function(o){return o.name;}).join(', '));
if(val)lines.push(P.value_label+' '+V.fmt(val[i]));tp.show(ev,lines.join('\n'));});
box.addEventListener('mouseleave',function(){tp.hide();});
V.el('div',root,'av-note',P.note);
"""


class TokenStripView(View):
    """Tokens of one sample as a flowing strip coloured by a value or by group; see `token_strip`."""

    kind = "token_strip"
    render_js = _STRIP_JS


def _runs_of(pos: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for p in pos:
        if runs and runs[-1][1] == p:
            runs[-1][1] = p + 1
        else:
            runs.append([p, p + 1])
    return runs


def _per_position(values, layout: BatchLayout, sample: int, what: str = "values") -> np.ndarray:
    """Values `[pos]` or `[batch, pos]` -> this sample's `[pos]` float array."""
    v = _as_numpy(values, what)
    if v.ndim == 2:
        if v.shape != tuple(layout.shape):
            raise ValueError(f"{what} of shape {tuple(v.shape)}: a 2-D array must be [batch, pos] = {tuple(layout.shape)}")
        v = v[sample]
    if v.ndim != 1 or v.shape[0] != layout.n_pos:
        raise ValueError(
            f"{what} must hold one value per position: [pos] = [{layout.n_pos}] or [batch, pos] = "
            f"{list(layout.shape)}; got shape {tuple(v.shape)} (scatter a group's values into a full-length "
            "array with NaN elsewhere)"
        )
    return v


def token_strip(
    layout,
    values=None,
    sample: int = 0,
    *,
    str_tokens: Optional[Sequence[str]] = None,
    positions=None,
    query: Optional[int] = None,
    value_label: str = "value",
    title: Optional[str] = None,
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    center: Optional[float] = None,
    cmap: Optional[str] = None,
    overlays: Optional[Sequence[str]] = None,
    max_height: int = 360,
) -> TokenStripView:
    """The tokens of one sample as a flowing strip: text tokens show their text, media tokens are
    narrow cells (each run labelled with its group letter and time span; hovering a cell shows
    its time stamp and chunk). Coloured by `values` (attention from a query, a patching effect,
    a sink score, MDS, ...) with a colour bar, or by group when `values` is None; a line under
    each token always gives its group colour. The page holds O(n) data: a group code, a float32
    time stamp, a float16 value per token and the text of text tokens (media tokens carry none).

    Args:
        layout: a `BatchLayout` (or an `AVBatch`, whose layout is used).
        values: one number per position, `[pos]` or `[batch, pos]` (NaN = no value, drawn grey).
        sample: which sample.
        str_tokens: the text of each position (default: `layout.str_tokens`, else the group
            name). Pass `model.to_str_tokens(batch, sample)` for models without them.
        positions: the positions to show (range, slice, `(start, end)` or a list; default: every
            non-padding position).
        query: a position to outline (e.g. the query whose attention `values` holds).
        value_label: what the values are (colour bar and hover).
        vmin / vmax / center / cmap: the colour scale (see `value_scale`; values of both signs
            get a diverging map centred on 0).
        overlays: overlay groups to outline (default: every non-empty overlay except `last`,
            e.g. `sink` or a user group such as `question`).
    """
    layout = getattr(layout, "layout", layout)
    if not isinstance(layout, BatchLayout):
        raise TypeError(f"token_strip takes a BatchLayout (batch.layout) or an AVBatch; got {type(layout).__name__}")
    if not -layout.batch_size <= sample < layout.batch_size:
        raise IndexError(f"sample {sample} is outside the batch of {layout.batch_size}")
    sample = sample % layout.batch_size
    real = (~layout.masks["pad"][sample]).nonzero().flatten().tolist()
    pos = real if positions is None else _positions(positions, layout.n_pos, "positions")
    if not pos:
        raise ValueError(f"sample {sample} has no positions to show")
    labels = layout.labels(sample)
    present = [g for g in PARTITION_GROUPS if any(labels[p] == g for p in pos)]
    code = {g: i for i, g in enumerate(present)}
    media = [g in ("audio", "video", "image") for g in present]
    if str_tokens is None and layout.str_tokens is not None:
        str_tokens = layout.str_tokens[sample]
    if str_tokens is not None and len(str_tokens) != layout.n_pos:
        raise ValueError(f"{len(str_tokens)} str_tokens for a sequence of {layout.n_pos} positions")
    text = ["" if media[code[labels[p]]] else (str(str_tokens[p]) if str_tokens is not None else f"<{labels[p]}>") for p in pos]
    time = layout.time[sample, pos].float().cpu().numpy()
    chunk = layout.chunk[sample, pos].cpu().numpy()
    payload: dict[str, Any] = {
        "n": len(pos), "runs": _runs_of(pos), "groups": encode_array(np.array([code[labels[p]] for p in pos]), "u8"),
        "group_names": present, "group_colors": _group_colors(present), "group_letters": _group_letters(present),
        "media": media, "text": text, "query": int(query) if query is not None else None,
        # float32: float16 would round a time stamp past 16 s by up to 8 ms (a fifth of an audio token)
        "time": encode_array(time, "f32") if bool(np.isfinite(time).any()) else None,
        "chunk": encode_array(chunk, "i16") if bool((chunk >= 0).any()) else None,
        "values": None, "scale": None, "value_label": value_label, "max_height": int(max_height),
    }
    desc = [f"sample {sample}: {len(pos)} positions ({layout.summary(sample)[:100]})"]
    if query is not None and not 0 <= int(query) < layout.n_pos:
        raise ValueError(f"query position {query} is outside the sequence (length {layout.n_pos})")
    if values is not None:
        v = _per_position(values, layout, sample)[pos]
        payload["values"] = encode_array(v)
        payload["scale"] = value_scale(v, vmin, vmax, center, cmap)
        finite = v[np.isfinite(v)]
        if finite.size:
            top = np.argsort(-np.nan_to_num(v, nan=-np.inf))[:3]
            desc.append(f"{value_label}: min {finite.min():.4g}, max {finite.max():.4g}; top at positions "
                        + ", ".join(f"{pos[i]} ({labels[pos[i]]})" for i in top))
    if overlays is None:
        overlays = [g for g in layout.groups[len(PARTITION_GROUPS):] if g != "last" and bool(layout.masks[g][sample].any())]
    ovl = []
    shown = set(pos)
    for g in overlays:
        m = layout.mask(g)[sample].nonzero().flatten().tolist()
        ovl.append({"name": g, "color": GROUP_COLORS.get(g, "#d7263d"), "positions": [p for p in m if p in shown]})
    payload["overlays"] = ovl
    note = "Hover a token for its position, text, time stamp and value."
    if values is None:
        note += " Coloured by token group."
    payload["note"] = note
    return TokenStripView(title or f"Tokens of sample {sample}" + (f", coloured by {value_label}" if values is not None else ""),
                          payload, description=desc)


# ================================================================================== heatmap and bars

#: draws the run bands of a position axis on a canvas (shared by the heatmap and the bar view):
#: `runs` are `[group index, start, end)`, `B` the payload's band groups
_BANDS_JS = r"""
function drawBands(g,B,runs,vert,x0,y0,len,n,depth){g.font='9px ui-monospace,Menlo,monospace';g.textBaseline='middle';
runs.forEach(function(u){var gi=u[0],a=u[1],b=u[2],p=x0,q=y0,lab=B.letters[gi]+(b-a),w=(b-a)*len/n;
g.fillStyle=B.colors[gi];if(vert){q=y0+a*len/n;g.fillRect(x0,q,depth,w);}else{p=x0+a*len/n;g.fillRect(p,y0,w,depth);}
if((b-a)/n>=0.03&&g.measureText(lab).width+4<=w){g.fillStyle=B.names[gi]==='pad'?'#374151':'#fff';g.save();
if(vert){g.translate(x0+depth/2,q+w/2);g.rotate(-Math.PI/2);}else g.translate(p+w/2,y0+depth/2);
g.textAlign='center';g.fillText(lab,0,0);g.restore();}});}
function groupAt(B,runs,i){for(var j=0;j<runs.length;j++)if(i>=runs[j][1]&&i<runs[j][2])return B.names[runs[j][0]];return null;}
function axisLabels(g,n,len,x0,y0,label,rotate){g.font='10px ui-monospace,Menlo,monospace';g.fillStyle='#374151';g.textBaseline='middle';
var w=len/n;if(rotate){for(var c=0;c<n;c++){g.save();g.translate(x0+(c+0.5)*w,y0+3);g.rotate(-Math.PI/2);g.textAlign='right';
g.fillText(label(c),0,0);g.restore();}return;}
var k=Math.max(1,Math.ceil(n/Math.max(2,Math.floor(len/70))));g.textAlign='center';
for(var c2=0;c2<n;c2+=k){g.fillRect(x0+(c2+0.5)*w,y0,1,3);g.fillText(label(c2),Math.min(Math.max(x0+(c2+0.5)*w,x0+12),x0+len-12),y0+9);}}
function labelDepth(g,n,len,label){g.font='10px ui-monospace,Menlo,monospace';if(n>80||len/n<9)return 18;var m=0;
for(var c=0;c<n;c++)m=Math.max(m,g.measureText(label(c)).width);return Math.min(110,m+8);}
"""

_HEATMAP_JS = _BANDS_JS + r"""
var F=P.shape[0],R=P.shape[1],C=P.shape[2],v=V.decode(P.values),s=P.scale,tp=V.tip(root),B=P.bands;
function cl(c){return P.cols?P.cols[c]:String(P.col_start+c);}
function rl(r){return P.rows?P.rows[r]:String(P.row_start+r);}
var mk={};if(P.marked){var mi=V.decode(P.marked);for(var i=0;i<mi.length;i++)mk[mi[i]]=1;}
if(B.names.length)V.chips(root,B.names,B.colors,B.letters);
var bar=V.colorbar(root,s,P.value_label);
if(P.marked){var mc=V.el('span',bar,'av-chip','\u25cf '+P.mark_label);mc.style.background='#111827';}
var ctx0=document.createElement('canvas').getContext('2d');ctx0.font='10px ui-monospace,Menlo,monospace';
var maxW=F>1?430:940,pw=C>=maxW?maxW:C*Math.max(1,Math.min(28,Math.floor(maxW/C))),cw=pw/C,
rh=Math.max(2,Math.min(24,Math.floor((F>1?220:420)/R))),ph=R*rh,showR=rh>=9&&R<=80,lw=8;
var kR=showR?1:Math.max(1,Math.ceil(R/Math.max(1,Math.floor(ph/14))));
for(var r0=0;r0<R;r0+=kR)lw=Math.max(lw,ctx0.measureText(rl(r0)).width+10);lw=Math.min(lw,170);
var bh=B.cols?14:0,rb=B.rows?14:0,top=bh+6,bot=labelDepth(ctx0,C,pw,cl)+16;
var wrap=V.el('div',root);wrap.style.cssText='display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start';
for(var f=0;f<F;f++){(function(f){
var box=V.el('div',wrap);if(P.facets)V.el('div',box,'av-note',(P.facet_title?P.facet_title+' ':'')+P.facets[f]);
var off=document.createElement('canvas');off.width=C;off.height=R;var og=off.getContext('2d'),im=og.createImageData(C,R);
for(var i=0;i<R*C;i++){var col=V.rgb(v[f*R*C+i],s)||[229,231,235];im.data[4*i]=col[0];im.data[4*i+1]=col[1];im.data[4*i+2]=col[2];im.data[4*i+3]=255;}
og.putImageData(im,0,0);
var cv=V.el('canvas',box);cv.width=lw+pw+rb+4;cv.height=top+ph+bot;var g=cv.getContext('2d');
g.imageSmoothingEnabled=C>pw||R>ph;g.drawImage(off,lw,top,pw,ph);
g.font='10px ui-monospace,Menlo,monospace';g.fillStyle='#374151';g.textBaseline='middle';g.textAlign='right';
for(var r=0;r<R;r+=kR)g.fillText(rl(r),lw-4,top+(r+0.5)*rh);
axisLabels(g,C,pw,lw,top+ph,cl,C<=80&&cw>=9);
g.fillStyle='#374151';g.textAlign='center';g.fillText(P.col_title,lw+pw/2,top+ph+bot-6);g.textAlign='left';g.fillText(P.row_title,0,top+ph+bot-6);
if(B.cols)drawBands(g,B,B.cols,false,lw,2,pw,C,bh);if(B.rows)drawBands(g,B,B.rows,true,lw+pw+3,top,ph,R,rb);
if(P.marked){g.lineWidth=1;for(var key in mk){var j=+key;if(Math.floor(j/(R*C))!==f)continue;var rc=j%(R*C),mr=Math.floor(rc/C),mcol=rc%C;
g.beginPath();g.arc(lw+(mcol+0.5)*cw,top+(mr+0.5)*rh,Math.max(1.5,Math.min(cw,rh)/3),0,2*Math.PI);g.fillStyle='#fff';g.fill();g.strokeStyle='#111827';g.stroke();}}
cv.addEventListener('mousemove',function(ev){var b=cv.getBoundingClientRect(),x=(ev.clientX-b.left)*cv.width/b.width-lw,
y=(ev.clientY-b.top)*cv.height/b.height-top,c=Math.floor(x/cw),r=Math.floor(y/rh);if(x<0||y<0||c>=C||r>=R){tp.hide();return;}
var i=(f*R+r)*C+c,gr=B.rows?groupAt(B,B.rows,r):null,gc=B.cols?groupAt(B,B.cols,c):null,lines=[];
if(P.facets)lines.push((P.facet_title?P.facet_title+' ':'')+P.facets[f]);
lines.push(P.row_title+' '+rl(r)+(gr?' ('+gr+')':''));lines.push(P.col_title+' '+cl(c)+(gc?' ('+gc+')':''));
lines.push(P.value_label+' '+V.fmt(v[i])+(mk[i]?' \u00b7 '+P.mark_label:''));tp.show(ev,lines.join('\n'));});
cv.addEventListener('mouseleave',function(){tp.hide();});})(f);}
V.el('div',root,'av-note',P.note);
"""


class HeatmapView(View):
    """A `[rows, cols]` (or faceted `[facet, rows, cols]`) grid of values on a canvas, with group
    bands along position axes; see `heatmap_view`."""

    kind = "heatmap"
    render_js = _HEATMAP_JS


def band_runs(groups: Sequence[str], names: list[str]) -> list[list[int]]:
    """Maximal runs of equal groups as `[index of the group in names, start, end]` (end
    exclusive): the bands a view draws along a position axis (labelled `A50`: letter, length)."""
    runs: list[list[int]] = []
    code = {g: i for i, g in enumerate(names)}
    for p, g in enumerate(groups):
        k = code[str(g)]
        if runs and runs[-1][0] == k:
            runs[-1][2] = p + 1
        else:
            runs.append([k, p, p + 1])
    return runs


def _bands_payload(cols: Optional[Sequence[str]], rows: Optional[Sequence[str]] = None) -> dict:
    """`{"names", "colors", "letters", "cols", "rows"}`: the band groups (in the order
    `PARTITION_GROUPS`, then others by first appearance) and each axis's runs (None: no bands)."""
    seen = [str(g) for g in (list(cols or []) + list(rows or []))]
    names = [g for g in PARTITION_GROUPS if g in seen] + [g for g in dict.fromkeys(seen) if g not in PARTITION_GROUPS]
    return {"names": names, "colors": _group_colors(names), "letters": _group_letters(names),
            "cols": band_runs(cols, names) if cols is not None else None,
            "rows": band_runs(rows, names) if rows is not None else None}


def _axis_labels(labels, n: int, what: str) -> tuple[Optional[list[str]], int]:
    """Labels as strings, or `(None, start)` when they are the integers start..start+n-1 (then
    the page writes them itself: a 2,048-position axis costs nothing)."""
    if labels is None:
        return None, 0
    labels = list(labels.tolist() if hasattr(labels, "tolist") else labels)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} {what} labels for {n} {what}s; give one label per {what}")
    ints = all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in labels)
    if ints and n and all(int(labels[i]) == int(labels[0]) + i for i in range(n)):
        return None, int(labels[0])
    return [str(x) for x in labels], 0


def _check_groups(groups, n: int, what: str) -> Optional[list[str]]:
    if groups is None:
        return None
    groups = [str(g) for g in groups]
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} {what}: give one token group per {what} (e.g. layout.labels(0))")
    return groups


def heatmap_view(
    values,
    row_labels: Optional[Sequence] = None,
    col_labels: Optional[Sequence] = None,
    *,
    groups: Optional[Sequence[str]] = None,
    row_groups: Optional[Sequence[str]] = None,
    facet_labels: Optional[Sequence] = None,
    facet_title: str = "",
    row_title: str = "row",
    col_title: str = "column",
    value_label: str = "value",
    title: Optional[str] = None,
    center: Optional[float] = None,
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    cmap: Optional[str] = None,
    marked=None,
    mark_label: str = "marked",
    note: Optional[str] = None,
) -> HeatmapView:
    """A heatmap on a canvas, the default `.plot()` of patching / tracing results, sink maps, the
    modality dominance score and attention patterns: offline, the same in Jupyter, VS Code, Colab
    and a static HTML page, with a hover readout (row, column, group, value), a colour bar and
    group bands.

    The values travel as float16 (2 bytes a cell, base64: a 28 x 2,048 grid is ~150 kB, where a
    plotly figure with a hover string per cell was 2.5 MB); integer axis labels that count up by
    one are not sent at all. Before the script runs (an untrusted notebook, GitHub's preview) the
    view shows a palette PNG of the same grid (`avlens.viz.reprs.heatmap`, first 4 facets).

    Args:
        values: `[rows, cols]`, or `[facet, rows, cols]` for one panel per facet.
        row_labels / col_labels: one label per row / column (default 0..n-1).
        groups: the token group of each column (a position axis: `layout.labels(0)`, or the
            groups of the positions shown); draws a labelled band per run of equal groups above
            the grid (`A50`: group letter and run length, on runs at least 3 % of the axis).
        row_groups: the same for the rows (drawn to the right: an attention pattern's queries).
        facet_labels / facet_title: the panels' names.
        row_title / col_title / value_label: what the axes and the values are.
        center: diverging colour map centred here (high = red, low = blue); values of both
            signs get it around 0 automatically, one-signed values viridis. `vmin` / `vmax` /
            `cmap` override (see `value_scale`).
        marked: bool, the shape of `values`: cells drawn with a dot (e.g. sink cells).
    """
    z = _as_numpy(values, "values")
    if z.ndim == 2:
        z = z[None]
        if facet_labels is not None:
            raise ValueError("facet_labels are for [facet, rows, cols] values; these are [rows, cols]")
    if z.ndim != 3 or 0 in z.shape:
        raise ValueError(f"values must be [rows, cols] or [facet, rows, cols] with no empty axis; got shape {tuple(z.shape)}")
    F, R, C = z.shape
    rows, row_start = _axis_labels(row_labels, R, "row")
    cols, col_start = _axis_labels(col_labels, C, "column")
    facets = _facet_labels(facet_labels, F)
    cgroups, rgroups = _check_groups(groups, C, "columns"), _check_groups(row_groups, R, "rows")
    scale = value_scale(z, vmin, vmax, center, cmap)
    payload: dict[str, Any] = {
        "shape": [F, R, C], "values": encode_array(z),
        "rows": rows, "row_start": row_start, "cols": cols, "col_start": col_start,
        "facets": facets, "facet_title": str(facet_title), "row_title": str(row_title), "col_title": str(col_title),
        "value_label": str(value_label), "scale": scale, "bands": _bands_payload(cgroups, rgroups),
        "marked": None, "mark_label": str(mark_label),
    }
    m = None
    if marked is not None:
        m = np.asarray(marked.detach().cpu().numpy() if isinstance(marked, Tensor) else marked, dtype=bool)
        m = _same_shape(m, z, "marked").reshape(z.shape)
        payload["marked"] = encode_array(np.flatnonzero(m), "i32")
    payload["note"] = note or (f"{R} {row_title} x {C} {col_title}" + (f" x {F} {facet_title or 'panels'}" if F > 1 else "")
                               + ". Hover a cell for its labels and value.")
    finite = z[np.isfinite(z)]
    desc = [f"{F} x {R} x {C}" if F > 1 else f"{R} {row_title} x {C} {col_title}"]
    if finite.size:
        f, r, c = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(z), z, -np.inf))), z.shape)
        desc.append(f"{value_label}: min {finite.min():.4g}, max {finite.max():.4g} at {row_title} "
                    f"{rows[r] if rows else row_start + r}, {col_title} {cols[c] if cols else col_start + c}"
                    + (f", {facet_title} {facets[f]}" if facets else ""))
    return HeatmapView(title or "Heatmap", payload, description=desc,
                       fallback=_heatmap_fallback(z, rows or [str(row_start + i) for i in range(R)],
                                                  cols or [str(col_start + i) for i in range(C)], cgroups, scale,
                                                  m, row_title, col_title, facets, facet_title, rgroups))


def _same_shape(a: np.ndarray, z: np.ndarray, what: str) -> np.ndarray:
    """`a` when its shape is exactly that of the values `z` (`[facet, ...]`), or `z`'s without its
    facet axis when there is one facet (what the caller passed for un-faceted values); a
    ValueError otherwise (a transposed array of the same size would mark the wrong cells)."""
    if a.shape == z.shape or (z.shape[0] == 1 and a.shape == z.shape[1:]):
        return a
    want = tuple(z.shape[1:]) if z.shape[0] == 1 else tuple(z.shape)
    raise ValueError(f"{what} must have the values' shape {want}; got {tuple(a.shape)}"
                     + (" (transposed?)" if a.size == z.size else ""))


def _facet_labels(labels, F: int) -> Optional[list[str]]:
    """One string per facet (tensors and arrays through `.tolist()`, so `tensor([1, 2])` gives
    '1', '2', not 'tensor(1)'), or None."""
    if labels is None:
        return None
    facets = [str(x) for x in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    if len(facets) != F:
        raise ValueError(f"{len(facets)} facet labels for {F} facets; give one label per facet")
    return facets


def _heatmap_fallback(z: np.ndarray, rows, cols, groups, scale: dict, marked, row_title, col_title, facets, facet_title,
                      row_groups=None, max_facets: int = 4) -> str:
    """Palette PNGs of the first `max_facets` panels (`reprs.heatmap`: a pixel per cell, colour
    bar, group strips), the static preview of a `HeatmapView`, in the view's colour scale
    (`scale`: vmin, vmax, colour map) so the preview's colours match the drawing's."""
    from avlens.viz.reprs import _CSS, esc, heatmap

    parts = [heatmap(z[f], rows, row_title, groups, marked=None if marked is None else marked[f],
                     col_title=col_title, col_labels=[cols[0], cols[-1]],
                     caption=(f"{facet_title} {facets[f]}".strip() if facets else ""),
                     vmin=scale["vmin"], vmax=scale["vmax"], cmap=scale["cmap"], row_groups=row_groups)
             for f in range(min(len(z), max_facets))]
    if len(z) > max_facets:
        parts.append(f"<div class='avl-n'>... {len(z) - max_facets} more {esc(facet_title or 'panels')} in the interactive view</div>")
    return f"{_CSS}<div class='avl-r'>{''.join(parts)}</div>"


_BARS_JS = _BANDS_JS + r"""
var F=P.shape[0],n=P.shape[1],v=V.decode(P.values),lo=P.lo?V.decode(P.lo):null,hi=P.hi?V.decode(P.hi):null,tp=V.tip(root),B=P.bands;
function lab(i){return P.labels[i];}
if(B.names.length)V.chips(root,B.names,B.colors,B.letters);
// the axis spans 0 and the finite values (an infinite value, e.g. a relative change from 0, would
// make every bar NaN); infinite bars and whisker ends are drawn clipped at the axis's end
var a0=0,a1=0,pinf=false,ninf=false;[v,lo,hi].forEach(function(a){if(a)for(var i=0;i<a.length;i++){var x=a[i];
if(isFinite(x)){a0=Math.min(a0,x);a1=Math.max(a1,x);}else if(x===Infinity)pinf=true;else if(x===-Infinity)ninf=true;}});
if(pinf&&!(a1>0))a1=(a1-a0)||1;if(ninf&&!(a0<0))a0=-((a1-a0)||1);if(!(a1>a0))a1=a0+1;
var ctx0=document.createElement('canvas').getContext('2d'),maxW=F>1?430:900,pw=n>=maxW?maxW:n*Math.max(1,Math.min(48,Math.floor(maxW/n))),
cw=pw/n,ph=170,lw=56,bh=B.cols?14:0,top=bh+8,bot=labelDepth(ctx0,n,pw,lab)+16;
function Y(x){return top+(a1-Math.max(a0,Math.min(a1,x)))/(a1-a0)*ph;}
var wrap=V.el('div',root);wrap.style.cssText='display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start';
for(var f=0;f<F;f++){(function(f){
var box=V.el('div',wrap);if(P.facets)V.el('div',box,'av-note',P.facets[f]);
var cv=V.el('canvas',box);cv.width=lw+pw+6;cv.height=top+ph+bot;var g=cv.getContext('2d');
g.font='10px ui-monospace,Menlo,monospace';g.textBaseline='middle';g.textAlign='right';g.fillStyle='#374151';
[a0,0,a1].forEach(function(t){g.fillText(V.fmt(t),lw-6,Y(t));g.fillRect(lw-4,Y(t),3,1);});
g.fillStyle='#e5e7eb';g.fillRect(lw,top,1,ph);g.fillStyle='#9ca3af';g.fillRect(lw,Y(0),pw,1);
for(var i=0;i<n;i++){var x=v[f*n+i];if(x!==x)continue;var y0=Y(0),y1=Y(x),gap=cw>=4?1:0;
g.fillStyle=P.colors?P.colors[i]:(x>=0?'#2b6cb0':'#64748b');g.fillRect(lw+i*cw+gap/2,Math.min(y0,y1),Math.max(1,cw-gap),Math.max(1,Math.abs(y1-y0)));
if(!isFinite(x)){var mx=lw+(i+0.5)*cw,up=x>0,hw=Math.max(3,Math.min(6,cw/2)),ty=up?top+1:top+ph-1;g.fillStyle='#111827';
g.beginPath();g.moveTo(mx-hw,up?ty+hw:ty-hw);g.lineTo(mx+hw,up?ty+hw:ty-hw);g.lineTo(mx,ty);g.fill();
var it=up?'inf':'-inf',tw=g.measureText(it).width+4,tx=Math.min(Math.max(mx,lw+tw/2),lw+pw-tw/2),yy=up?ty+hw+7:ty-hw-7;
g.fillStyle='rgba(255,255,255,.9)';g.fillRect(tx-tw/2,yy-6,tw,12);g.fillStyle='#111827';g.textAlign='center';g.fillText(it,tx,yy);g.textAlign='right';}
if(lo&&hi&&lo[f*n+i]===lo[f*n+i]){var cx=lw+(i+0.5)*cw,ya=Y(lo[f*n+i]),yb=Y(hi[f*n+i]),k=Math.min(6,cw/4);g.fillStyle='#111827';
g.fillRect(cx-0.5,Math.min(ya,yb),1,Math.abs(yb-ya));g.fillRect(cx-k,ya-0.5,2*k,1);g.fillRect(cx-k,yb-0.5,2*k,1);}}
axisLabels(g,n,pw,lw,top+ph,lab,n<=80&&cw>=9);
g.fillStyle='#374151';g.textAlign='center';g.fillText(P.axis_title,lw+pw/2,top+ph+bot-6);
if(B.cols)drawBands(g,B,B.cols,false,lw,2,pw,n,bh);
cv.addEventListener('mousemove',function(ev){var b=cv.getBoundingClientRect(),x=(ev.clientX-b.left)*cv.width/b.width-lw,i=Math.floor(x/cw);
if(x<0||i>=n){tp.hide();return;}var k=f*n+i,gi=B.cols?groupAt(B,B.cols,i):(P.groups?P.groups[i]:null),
lines=[(P.facets?P.facets[f]+'\n':'')+P.axis_title+' '+lab(i)+(gi?' ('+gi+')':''),P.value_label+' '+V.fmt(v[k])];
if(lo&&hi)lines.push('interval ['+V.fmt(lo[k])+', '+V.fmt(hi[k])+']');tp.show(ev,lines.join('\n'));});
cv.addEventListener('mouseleave',function(){tp.hide();});})(f);}
V.el('div',root,'av-note',P.note);
"""


class BarView(View):
    """Bars of a one-axis result (optionally faceted, with intervals); see `bar_view`."""

    kind = "bars"
    render_js = _BARS_JS


def bar_view(
    values,
    labels: Sequence,
    *,
    groups: Optional[Sequence[str]] = None,
    bands: bool = False,
    lo=None,
    hi=None,
    facet_labels: Optional[Sequence] = None,
    axis_title: str = "",
    value_label: str = "value",
    title: Optional[str] = None,
    note: Optional[str] = None,
) -> BarView:
    """Bars on a canvas (the default `.plot()` of one-axis results: a knockout per group, a
    patching sweep over positions, the hub study's table), offline and small: float16 values,
    hover readout, a zero line.

    Args:
        values: `[n]`, or `[facet, n]` for one panel per facet (NaN: no bar).
        labels: one label per bar.
        groups: the token group of each bar: bars in the group colours.
        bands: `groups` run along a position axis: draw a labelled band per run above the bars.
        lo / hi: an interval per bar (e.g. a 95 % CI), the shape of `values`, drawn as whiskers.
        facet_labels: the panels' names.
    """
    z = _as_numpy(values, "values")
    if z.ndim == 1:
        z = z[None]
        if facet_labels is not None:
            raise ValueError("facet_labels are for [facet, n] values; these are [n]")
    if z.ndim != 2 or 0 in z.shape:
        raise ValueError(f"values must be [n] or [facet, n] with no empty axis; got shape {tuple(np.shape(values))}")
    F, n = z.shape
    labels = [str(x) for x in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} bars; give one label per bar")
    groups = _check_groups(groups, n, "bars")
    if bands and groups is None:
        raise ValueError("bands=True draws the groups' runs: pass groups= (one token group per bar)")
    facets = _facet_labels(facet_labels, F)
    if (lo is None) != (hi is None):
        raise ValueError("give both lo= and hi= (the interval's ends), or neither")
    payload: dict[str, Any] = {
        "shape": [F, n], "values": encode_array(z), "labels": labels, "facets": facets,
        "colors": _group_colors(groups) if groups is not None else None, "groups": groups,
        "bands": _bands_payload(groups if bands else None) if groups is not None else _bands_payload(None),
        "axis_title": str(axis_title), "value_label": str(value_label), "lo": None, "hi": None,
        "note": note or "Hover a bar for its label and value.",
    }
    if lo is not None:
        lo_a = _same_shape(_as_numpy(lo, "lo"), z, "lo").reshape(z.shape)
        hi_a = _same_shape(_as_numpy(hi, "hi"), z, "hi").reshape(z.shape)
        payload["lo"], payload["hi"] = encode_array(lo_a), encode_array(hi_a)
    finite = z[np.isfinite(z)]
    desc = [f"{n} bars" + (f" x {F} panels" if F > 1 else "")]
    if finite.size:
        desc.append(f"{value_label}: min {finite.min():.4g}, max {finite.max():.4g}")
    n_inf = int(np.isinf(z).sum())
    if n_inf:
        desc.append(f"{n_inf} infinite value{'s' if n_inf > 1 else ''}: drawn to the end of the axis, marked inf / -inf")
    return BarView(title or "Bars", payload, description=desc, fallback=_bars_fallback(z, labels, groups, facets))


def _bars_fallback(z: np.ndarray, labels, groups, facets, max_facets: int = 4) -> str:
    """Tables with inline bars (`reprs.bars`) of the first panels: the static preview of a `BarView`."""
    from avlens.viz.reprs import _CSS, bars, esc

    parts = [(f"<div>{esc(facets[f])}</div>" if facets else "") + bars(labels, z[f], groups) for f in range(min(len(z), max_facets))]
    return f"{_CSS}<div class='avl-r'>{''.join(parts)}</div>"
