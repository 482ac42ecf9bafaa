"""Draw docs/figures/hub_study.svg from an `avlens hub-study` table.csv (a plain SVG, no plotting
library needed):

    avlens hub-study --n-clips 360 --seed 1000 --out /tmp/hub
    python docs/figures/make_hub_figure.py /tmp/hub/table.csv docs/figures/hub_study.svg

Bars: IE_clean and IE_corrupt (x 100) per token set, one panel per dominant modality, whiskers the
95 % bootstrap CI.
"""

import csv
import html
import sys


def main(table_csv: str, out_svg: str) -> None:
    rows = list(csv.DictReader(open(table_csv)))
    doms = [d for d in ("audio", "video") if any(r["dominant"] == d for r in rows)]
    keys = (("ie_clean", "#2563eb"), ("ie_corrupt", "#f97316"))
    vals = [float(r[k + s]) for r in rows for k, _ in keys for s in ("_lo", "_hi", "")]
    lo, hi = min(min(vals), 0.0), max(max(vals), 0.0)
    pad = 0.1 * (hi - lo or 1)
    lo, hi = lo - pad, hi + pad
    W, H, top, left, ph = 760, 250 * len(doms) + 40, 40, 70, 200
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
           '<text x="10" y="20" font-size="14">Token-set causal tracing on the toy model (IE x 100, 95 % CI)</text>']
    for p, dom in enumerate(doms):
        sub = [r for r in rows if r["dominant"] == dom]
        y0 = top + p * 250
        y = lambda v: y0 + ph * (hi - v) / (hi - lo)  # noqa: E731
        out.append(f'<text x="10" y="{y0 + 10}">{dom}-dominant samples (labels: token set, mean size, n)</text>')
        out.append(f'<line x1="{left}" x2="{W - 10}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#999"/>')
        for t in (lo + pad, 0.0, hi - pad):
            out.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:.2f}</text>')
        slot = (W - left - 20) / len(sub)
        for i, r in enumerate(sub):
            x = left + i * slot
            for j, (k, colour) in enumerate(keys):
                v, a, b = float(r[k]), float(r[k + "_lo"]), float(r[k + "_hi"])
                bx = x + 10 + j * (slot - 20) / 2
                bw = (slot - 30) / 2
                out.append(f'<rect x="{bx:.1f}" y="{min(y(v), y(0)):.1f}" width="{bw:.1f}" height="{abs(y(v) - y(0)):.1f}" fill="{colour}"/>')
                cx = bx + bw / 2
                out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(a):.1f}" y2="{y(b):.1f}" stroke="black"/>')
            out.append(f'<text x="{x + slot / 2:.1f}" y="{y0 + ph + 16}" text-anchor="middle">{html.escape(r["token_set"])} ({float(r["set_size"]):.1f}, n={r["n"]})</text>')
    out.append(f'<rect x="{W - 200}" y="8" width="10" height="10" fill="{keys[0][1]}"/><text x="{W - 185}" y="17">IE_clean</text>')
    out.append(f'<rect x="{W - 110}" y="8" width="10" height="10" fill="{keys[1][1]}"/><text x="{W - 95}" y="17">IE_corrupt</text>')
    out.append("</svg>")
    open(out_svg, "w").write("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
