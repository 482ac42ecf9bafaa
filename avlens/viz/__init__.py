"""Visualisation: views coloured by token group and the self-contained offline HTML report.

    from avlens.viz import Report, layout_strip_html, attention_window, group_token_labels
    report = Report("my analysis")
    report.add_section("Token layout", layout_strip_html(batch.layout))
    report.write("my-report")                      # my-report/index.html, works offline

Views that scale to long sequences (`avlens.viz.views`, `avlens.viz.media_views`): each is a `View`
with `_repr_html_` (a notebook shows it), `.save(path)` and `Report.add_view(view)`:

    group_flow_view(model.attention_group_summary(batch))       # layer x head grid of G x G mass
    attention_drilldown(model, batch, layer=2, window=(40, 90)) # circuitsvis over a window only
    token_strip(batch.layout, values)                           # O(n) strip coloured by a value
    spectrogram_view(batch, values, waveform=clip.waveform)     # audio tokens on the spectrogram
    frame_strip_view(batch, values, frames=clip.frames)         # video tokens on each frame's grid
    heatmap_view(values, rows, cols, groups=layout.labels(0))   # any grid, group bands on positions
    bar_view(values, labels, groups=groups)                     # one-axis results

Results' `.plot()` (patching, tracing, knockout, sink maps, modality dominance, the hub study) and
`attention_heatmap` return these views; `.plot(backend="plotly")` gives the plotly figure. A view
shows a static PNG / text preview where its script cannot run (an untrusted notebook, GitHub).

`avlens demo` builds its report with these; later tools add their own sections the same way.
"""

from avlens.viz.grid import bar_chart, grid_heatmap
from avlens.viz.groups import (
    attention_heatmap,
    attention_window,
    group_flow_figure,
    group_token_labels,
    layout_strip_html,
    legend_html,
)
from avlens.viz.report import Report, Section, json_for_script, script_safe, table_from_markdown, table_html
from avlens.viz.media_views import FrameStripView, SpectrogramView, frame_strip_view, spectrogram_view
from avlens.viz.views import (
    AttentionDrilldownView,
    BarView,
    GroupFlowView,
    HeatmapView,
    TokenStripView,
    View,
    attention_drilldown,
    attention_drilldown_from_pattern,
    bar_view,
    group_flow_view,
    heatmap_view,
    token_strip,
)

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
    "SpectrogramView",
    "FrameStripView",
    "spectrogram_view",
    "frame_strip_view",
    "Report",
    "Section",
    "attention_heatmap",
    "bar_chart",
    "attention_window",
    "grid_heatmap",
    "group_flow_figure",
    "group_token_labels",
    "json_for_script",
    "layout_strip_html",
    "legend_html",
    "script_safe",
    "table_from_markdown",
    "table_html",
]
