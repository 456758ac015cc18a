"""Rendering of audit reports: the QC report (Markdown, self-contained HTML) and SVG plots.

The SVG plots are hand-written, dependency-free and deterministic (the same
numbers give the same bytes), so reports diff cleanly and the handoff
package stays reproducible. Templates render through the one sandboxed,
autoescaping environment of `rlhfspec.common.templating`.
"""

from rlhfspec.runtime.report.qc_report import format_text, write_qc_reports
from rlhfspec.runtime.report.svg import bar_chart, heatmap, line_chart

__all__ = ["bar_chart", "format_text", "heatmap", "line_chart", "write_qc_reports"]
