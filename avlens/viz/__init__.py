"""Visualisation: views coloured by token group and the self-contained offline HTML report.

    from avlens.viz import Report, layout_strip_html, attention_window, group_token_labels
    report = Report("my analysis")
    report.add_section("Token layout", layout_strip_html(batch.layout))
    report.write("my-report")                      # my-report/index.html, works offline

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

__all__ = [
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
