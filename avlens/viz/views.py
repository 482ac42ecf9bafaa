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
where a value exceeds float16's range), and only what is drawn is sent: group summaries (G x G
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
import html
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
    "encode_array",
    "decode_array",
]

# ================================================================================== payload data

#: float16's largest finite value; arrays beyond it are sent as float32
_F16_MAX = 65504.0


def encode_array(x, dtype: Optional[str] = None) -> dict:
    """`x` as `{"dtype", "shape", "b64"}`: base64 of its little-endian bytes.

    `dtype` is `"f16"` (default for floats: 2 bytes a value, about 3 significant digits, NaN kept
    to mean "no value"), `"f32"` (chosen automatically when a finite value exceeds float16's
    range), `"u8"`, `"i16"` or `"i32"` (integers: group codes, positions, column maps).
    """
    a = np.asarray(x.detach().float().cpu().numpy() if isinstance(x, Tensor) else x)
    if dtype is None:
        if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
            dtype = "i32"
        else:
            finite = a[np.isfinite(a)]
            dtype = "f32" if finite.size and float(np.abs(finite).max()) > _F16_MAX else "f16"
    np_dtype = {"f16": "<f2", "f32": "<f4", "u8": "u1", "i16": "<i2", "i32": "<i4"}.get(dtype)
    if np_dtype is None:
        raise ValueError(f"unknown payload dtype {dtype!r}; use 'f16', 'f32', 'u8', 'i16' or 'i32'")
    if dtype in ("u8", "i16", "i32"):
        info = np.iinfo(np.dtype(np_dtype))
        if a.size and (int(a.min()) < info.min or int(a.max()) > info.max):
            raise ValueError(f"values {int(a.min())}..{int(a.max())} do not fit a {dtype} payload array")
    return {"dtype": dtype, "shape": list(a.shape), "b64": base64.b64encode(a.astype(np_dtype).tobytes()).decode("ascii")}


def decode_array(d: dict) -> np.ndarray:
    """The numpy array of an `encode_array` dict (what the page's JavaScript decodes)."""
    np_dtype = {"f16": "<f2", "f32": "<f4", "u8": "u1", "i16": "<i2", "i32": "<i4"}[d["dtype"]]
    return np.frombuffer(base64.b64decode(d["b64"]), dtype=np_dtype).reshape(d["shape"])


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

#: helpers every view's script uses, defined once per page (`window.__avlensViz`): base64 arrays,
#: colour maps, a tooltip, a colour bar, group chips
HELPERS_JS = r"""
window.__avlensViz=window.__avlensViz||(function(){
function bytes(b){var s=atob(b),n=s.length,u=new Uint8Array(n);for(var i=0;i<n;i++)u[i]=s.charCodeAt(i);return u;}
function h2f(h){var s=(h&32768)?-1:1,e=(h>>10)&31,f=h&1023;if(e===0)return s*f*5.960464477539063e-8;
if(e===31)return f?NaN:s*Infinity;return s*Math.pow(2,e-15)*(1+f/1024);}
function decode(a){var u=bytes(a.b64),dv=new DataView(u.buffer),n=1,i;for(i=0;i<a.shape.length;i++)n*=a.shape[i];
var o=new Float64Array(n),t=a.dtype;for(i=0;i<n;i++){o[i]=t==='f16'?h2f(dv.getUint16(2*i,true)):t==='f32'?dv.getFloat32(4*i,true):
t==='u8'?u[i]:t==='i16'?dv.getInt16(2*i,true):dv.getInt32(4*i,true);}return o;}
var MAPS={viridis:[[68,1,84],[71,44,122],[59,81,139],[44,113,142],[33,144,141],[39,173,129],[92,200,99],[170,220,50],[253,231,37]],
rdbu:[[5,48,97],[33,102,172],[67,147,195],[146,197,222],[209,229,240],[247,247,247],[253,219,199],[244,165,130],[214,96,77],[178,24,43],[103,0,31]],
blues:[[247,251,255],[222,235,247],[198,219,239],[158,202,225],[107,174,214],[66,146,198],[33,113,181],[8,81,156],[8,48,107]]};
function rgb(v,s){if(!(v===v))return null;var c=MAPS[s.cmap]||MAPS.viridis,t=(v-s.vmin)/(s.vmax-s.vmin);
t=t<0?0:t>1?1:t;var x=t*(c.length-1),i=Math.min(Math.floor(x),c.length-2),f=x-i,a=c[i],b=c[i+1];
return[Math.round(a[0]+f*(b[0]-a[0])),Math.round(a[1]+f*(b[1]-a[1])),Math.round(a[2]+f*(b[2]-a[2]))];}
function css(c,al){return c?(al===undefined?'rgb('+c.join(',')+')':'rgba('+c.join(',')+','+al+')'):'transparent';}
function ink(c){return c&&(0.299*c[0]+0.587*c[1]+0.114*c[2])<140?'#fff':'#111';}
function fmt(v){if(!(v===v))return'-';var a=Math.abs(v);return a!==0&&(a<1e-3||a>=1e5)?v.toExponential(2):(+v.toPrecision(4)).toString();}
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
return{decode:decode,rgb:rgb,css:css,ink:ink,fmt:fmt,el:el,tip:tip,colorbar:colorbar,chips:chips};})();
"""


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

    def __init__(self, title: str, payload: dict, requires: Sequence[str] = (), description: Sequence[str] = ()):
        unknown = set(requires) - {"circuitsvis", "plotly"}
        if unknown:
            raise ValueError(f"unknown bundles {sorted(unknown)}; a view may require 'circuitsvis' (or 'plotly')")
        self.title = str(title)
        self.payload = payload
        self.requires = frozenset(requires)
        self.description = list(description)  # extra lines for the terminal repr

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
        fallback = ("This view is drawn by JavaScript; it did not run (in Jupyter: trust the notebook "
                    "or re-run the cell).")
        # the element is found from the script itself first: a notebook may run the script while
        # its output is not yet attached to the document
        body = (f"(function(){{var V=window.__avlensViz,P={self.payload_json()},root=document.getElementById('{uid}'),"
                f"me=document.currentScript,box=me&&me.previousElementSibling;"
                f"if(box&&box.querySelector)root=box.querySelector('#{uid}')||root;if(!root)return;"
                f"root.textContent='';{self.render_js}}})();")
        return (
            f"<div class='avlens-view avlens-{self.kind}'><style>{VIEW_CSS}</style>"
            f"<div class='av-title'>{html.escape(self.title)}</div>"
            f"<div id='{uid}' style='position:relative'><span class='av-note'>{fallback}</span></div></div>"
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

    def __repr__(self) -> str:
        kb = self.payload_bytes / 1024
        head = f"{type(self).__name__}({self.title!r}, payload {kb:.1f} kB"
        head += f", needs {'+'.join(sorted(self.requires))})" if self.requires else ")"
        return "\n".join([head] + ["  " + line for line in self.description])


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

    The data are L x H x G x G float16 values, whatever the sequence length (a 28-layer, 28-head
    model with 5 groups: 39 kB).

    Args:
        summary: `model.attention_group_summary(batch)` (an `AttentionGroupSummary`, mass
            `[batch, layer, head, G, G]`), or a tensor `[layer, head, G, G]` with `groups`.
        sample: one sample of the batch; `None` averages the batch over query positions: each
            sample's row for query group q weighs by its number of q positions (a sample without
            q positions does not pull the mean towards 0).
        groups: group names of a tensor `summary` (taken from the summary object otherwise).
        vmax: top of the colour scale (mass is a fraction of each query's attention: 1 by default).
        cell: pixels per matrix entry (default: chosen so the grid is at most ~1,100 px wide).
    """
    mass, counts, names = _flow_values(summary, sample, groups)
    L, H, G, _ = mass.shape
    if cell is None:
        cell = int(max(2, min(10, (1100 - 60) // max(1, (H + 1) * (G + 1)))))
    if not vmax > 0:
        raise ValueError(f"vmax must be positive (the top of the mass colour scale); got {vmax}")
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
    return GroupFlowView(title or "Attention flow between token groups", payload, description=desc)


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
            window = window.tolist()
        if isinstance(window, (int, np.integer)):
            window = [window]
        try:
            pos = [int(p) for p in window]
        except (TypeError, ValueError) as e:
            raise TypeError(f"{what} must be a range, slice, (start, end) or a sequence of positions; got {window!r}") from e
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
