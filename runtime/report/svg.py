"""Small, dependency-free SVG charts for the self-contained QC report.

The HTML report must open offline, from an e-mail attachment or a CI artefact, with no scripts
and no network (its Content-Security-Policy forbids both), so the plots are inline SVG built
here as strings. Every piece of text that goes into an SVG (annotator ids, batch ids, titles)
passes through `html.escape`, which is why the report may mark these strings safe; numbers are
formatted with fixed precision, so the same data always gives the same bytes.

The `<svg>` elements carry no `xmlns`: inline SVG in HTML does not need it, and the report
then contains no URL at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

__all__ = ["bar_chart", "heatmap", "line_chart"]

FONT = 'font-family="system-ui, sans-serif"'
TEXT = "#1c2230"
MUTED = "#5a6375"
GRID = "#d6dbe4"
ACCENT = "#2455a4"
BAD = "#a8261d"
PALETTE = ("#2455a4", "#d9822b", "#1d7343", "#a8261d", "#6f42c1", "#0f8b8d", "#8c6d1f", "#c2185b")

Number = float | int | None


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _n(value: float) -> str:
    """Coordinates with one decimal: stable bytes, and no '-0.0'."""
    out = f"{value:.1f}"
    return "0.0" if out == "-0.0" else out


def _finite(value: Number) -> bool:
    return value is not None and math.isfinite(value)


def _open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'class="plot" {FONT} font-size="12">',
        f"<title>{_e(title)}</title>",
        f'<text x="8" y="18" text-anchor="start" font-size="14" font-weight="600" '
        f'fill="{TEXT}">{_e(title)}</text>',
    ]


def _y_axis(
    parts: list[str], left: float, right: float, top: float, bottom: float,
    y_min: float, y_max: float, step: float, label: str,
) -> None:  # fmt: skip
    """Horizontal grid lines with tick labels, and the y-axis label."""
    span = y_max - y_min
    count = int(round(span / step))
    for i in range(count + 1):
        value = y_min + i * step
        y = bottom - (value - y_min) / span * (bottom - top)
        parts.append(
            f'<line x1="{_n(left)}" y1="{_n(y)}" x2="{_n(right)}" y2="{_n(y)}" stroke="{GRID}"/>'
        )
        parts.append(
            f'<text x="{_n(left - 6)}" y="{_n(y + 4)}" text-anchor="end" fill="{MUTED}">'
            f"{value:.1f}</text>"
        )
    if label:
        mid = (top + bottom) / 2
        parts.append(
            f'<text x="14" y="{_n(mid)}" text-anchor="middle" fill="{MUTED}" '
            f'transform="rotate(-90 14 {_n(mid)})">{_e(label)}</text>'
        )


def _reference_lines(
    parts: list[str], lines: Sequence[tuple[float, str]], left: float, right: float,
    top: float, bottom: float, y_min: float, y_max: float,
) -> None:  # fmt: skip
    for value, label in lines:
        if not y_min <= value <= y_max:
            continue
        y = bottom - (value - y_min) / (y_max - y_min) * (bottom - top)
        parts.append(
            f'<line x1="{_n(left)}" y1="{_n(y)}" x2="{_n(right)}" y2="{_n(y)}" stroke="{BAD}" '
            'stroke-dasharray="5 4" stroke-width="1.2"/>'
        )
        parts.append(
            f'<text x="{_n(right + 4)}" y="{_n(y + 4)}" text-anchor="start" fill="{BAD}" '
            f'font-size="11">{_e(label)}</text>'
        )


def _right_margin(lines: Sequence[tuple[float, str]]) -> float:
    """Room right of the plot for the reference-line labels."""
    return 16.0 + 6.5 * max((len(str(label)) for _, label in lines), default=0)


def _title_width(title: str) -> int:
    return int(24 + 8.4 * len(title))


def _x_labels(parts: list[str], labels: Sequence[str], xs: Sequence[float], y: float) -> None:
    rotate = len(labels) > 8 or max((len(str(s)) for s in labels), default=0) * 7 > (
        (xs[1] - xs[0]) if len(xs) > 1 else 1e9
    )
    for label, x in zip(labels, xs, strict=True):
        if rotate:
            parts.append(
                f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="end" fill="{TEXT}" '
                f'transform="rotate(-35 {_n(x)} {_n(y)})">{_e(label)}</text>'
            )
        else:
            parts.append(
                f'<text x="{_n(x)}" y="{_n(y + 4)}" text-anchor="middle" fill="{TEXT}">'
                f"{_e(label)}</text>"
            )


def heatmap(
    matrix: Sequence[Sequence[Number]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str,
    vmin: float = 0.0,
    vmax: float = 1.0,
    digits: int = 2,
) -> str:
    """A labelled matrix of values (e.g. Cohen's kappa between annotators), darker = higher.

    Cells print their value; missing or non-finite cells are grey with a dash.
    """
    cell = 56 if len(col_labels) <= 10 else 36
    label_w = 12 + 7 * max((len(str(s)) for s in row_labels), default=4)
    top = 34 + 7 * max((len(str(s)) for s in col_labels), default=4) * 0.75
    width = int(max(label_w + cell * len(col_labels) + 16, _title_width(title)))
    height = int(top + cell * len(row_labels) + 12)
    parts = _open(width, height, title)
    for j, label in enumerate(col_labels):
        x = label_w + (j + 0.5) * cell
        y = top - 6
        parts.append(
            f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="start" fill="{TEXT}" '
            f'transform="rotate(-45 {_n(x)} {_n(y)})">{_e(label)}</text>'
        )
    for i, label in enumerate(row_labels):
        y = top + i * cell
        parts.append(
            f'<text x="{_n(label_w - 6)}" y="{_n(y + cell / 2 + 4)}" text-anchor="end" '
            f'fill="{TEXT}">{_e(label)}</text>'
        )
        for j in range(len(col_labels)):
            value = matrix[i][j]
            x = label_w + j * cell
            if _finite(value):
                share = min(1.0, max(0.0, (float(value) - vmin) / (vmax - vmin or 1.0)))  # type: ignore[arg-type]
                fill = _blend(share)
                text = f"{float(value):.{digits}f}"  # type: ignore[arg-type]
                ink = "#ffffff" if share > 0.55 else TEXT
            else:
                fill, text, ink = "#eceff3", "–", MUTED
            parts.append(
                f'<rect x="{_n(x)}" y="{_n(y)}" width="{cell}" height="{cell}" fill="{fill}" '
                'stroke="#ffffff" stroke-width="2"/>'
            )
            parts.append(
                f'<text x="{_n(x + cell / 2)}" y="{_n(y + cell / 2 + 4)}" text-anchor="middle" '
                f'fill="{ink}">{_e(text)}</text>'
            )
    parts.append("</svg>")
    return "\n".join(parts)


def _blend(share: float) -> str:
    """White to the accent blue."""
    low, high = (247, 249, 252), (36, 85, 164)
    rgb = [round(a + (b - a) * share) for a, b in zip(low, high, strict=True)]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[Number],
    *,
    title: str,
    lower: Sequence[Number] | None = None,
    upper: Sequence[Number] | None = None,
    flagged: Sequence[bool] | None = None,
    reference_lines: Sequence[tuple[float, str]] = (),
    y_min: float = 0.0,
    y_max: float = 1.0,
    y_step: float = 0.2,
    y_label: str = "",
) -> str:
    """Bars with optional error bars (e.g. a Wilson interval) and dashed threshold lines.

    Flagged bars are drawn in red, so the annotator a finding is about stands out.
    """
    margin = _right_margin(reference_lines)
    width = int(max(360, 74 + margin + 64 * len(labels), _title_width(title)))
    height = 280
    left, right, top = 56.0, width - margin, 34.0
    rotate_room = 30 if len(labels) > 8 else 0
    bottom = height - 36.0 - rotate_room
    parts = _open(width, height, title)
    _y_axis(parts, left, right, top, bottom, y_min, y_max, y_step, y_label)
    slot = (right - left) / max(len(labels), 1)
    bar = min(40.0, slot * 0.6)
    xs = [left + (i + 0.5) * slot for i in range(len(labels))]
    y_of = _scale(y_min, y_max, top, bottom)

    for i, (x, value) in enumerate(zip(xs, values, strict=True)):
        if not _finite(value):
            parts.append(
                f'<text x="{_n(x)}" y="{_n(bottom - 4)}" text-anchor="middle" fill="{MUTED}">'
                "n/a</text>"
            )
            continue
        v = float(value)  # type: ignore[arg-type]
        color = BAD if flagged is not None and flagged[i] else ACCENT
        y = y_of(v)
        parts.append(
            f'<rect x="{_n(x - bar / 2)}" y="{_n(y)}" width="{_n(bar)}" '
            f'height="{_n(bottom - y)}" fill="{color}" fill-opacity="0.85"/>'
        )
        lo = lower[i] if lower is not None else None
        hi = upper[i] if upper is not None else None
        label_y = y - 5
        if _finite(lo) and _finite(hi):
            y_hi = _error_bar(parts, x, y_of(float(lo)), y_of(float(hi)))  # type: ignore[arg-type]
            label_y = min(label_y, y_hi - 5)
        if bottom - y >= 20:  # inside the bar, clear of the error bar and threshold labels
            parts.append(
                f'<text x="{_n(x)}" y="{_n(bottom - 7)}" text-anchor="middle" fill="#ffffff" '
                f'font-size="11">{v:.2f}</text>'
            )
        else:
            parts.append(
                f'<text x="{_n(x)}" y="{_n(max(top + 10, label_y))}" text-anchor="middle" '
                f'fill="{TEXT}" font-size="11">{v:.2f}</text>'
            )
    _reference_lines(parts, reference_lines, left, right, top, bottom, y_min, y_max)
    parts.append(
        f'<line x1="{_n(left)}" y1="{_n(bottom)}" x2="{_n(right)}" y2="{_n(bottom)}" '
        f'stroke="{MUTED}"/>'
    )
    _x_labels(parts, list(labels), xs, bottom + 16)
    parts.append("</svg>")
    return "\n".join(parts)


def line_chart(
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[Number]]],
    *,
    title: str,
    reference_lines: Sequence[tuple[float, str]] = (),
    x_marker: tuple[float, str] | None = None,
    y_min: float = 0.0,
    y_max: float = 1.0,
    y_step: float = 0.2,
    y_label: str = "",
    x_label: str = "",
) -> str:
    """Lines over evenly spaced categories (batches, weeks, 15-minute bins), with a legend.

    A `None` or NaN point breaks the line. `x_marker` is a dashed vertical line at a category
    position (fractions allowed, e.g. 3.5 between the fourth and fifth category).
    """
    rotate_room = 30 if len(categories) > 8 else 0
    margin = _right_margin(reference_lines)
    width = int(max(480, 72 + margin + 70 * len(categories), _title_width(title)))
    left, right, top, bottom = 56.0, width - margin, 34.0, 254.0
    legend_top = bottom + rotate_room + (44 if x_label else 30)
    legend = _legend_layout([name for name, _ in series], left, width)
    legend_rows = legend[-1][1] + 1 if legend else 0
    height = int(legend_top + 18 * legend_rows + 6)
    parts = _open(width, height, title)
    _y_axis(parts, left, right, top, bottom, y_min, y_max, y_step, y_label)
    slot = (right - left) / max(len(categories), 1)
    xs = [left + (i + 0.5) * slot for i in range(len(categories))]
    y_of = _scale(y_min, y_max, top, bottom)

    _reference_lines(parts, reference_lines, left, right, top, bottom, y_min, y_max)
    if x_marker is not None:
        _x_marker(parts, left + (x_marker[0] + 0.5) * slot, x_marker[1], top, bottom)
    for k, (name, values) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        _polyline(parts, xs, [y_of(float(v)) if _finite(v) else None for v in values], color)  # type: ignore[arg-type]
        lx, row = legend[k]
        ly = legend_top + 12 + 18 * row
        parts.append(f'<rect x="{_n(lx)}" y="{_n(ly - 9)}" width="12" height="10" fill="{color}"/>')
        parts.append(f'<text x="{_n(lx + 16)}" y="{_n(ly)}" fill="{TEXT}">{_e(name)}</text>')
    parts.append(
        f'<line x1="{_n(left)}" y1="{_n(bottom)}" x2="{_n(right)}" y2="{_n(bottom)}" '
        f'stroke="{MUTED}"/>'
    )
    _x_labels(parts, list(categories), xs, bottom + 16)
    if x_label:
        parts.append(
            f'<text x="{_n((left + right) / 2)}" y="{_n(bottom + rotate_room + 36)}" '
            f'text-anchor="middle" fill="{MUTED}">{_e(x_label)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _scale(y_min: float, y_max: float, top: float, bottom: float) -> Callable[[float], float]:
    """Value to pixel row, clipped to [y_min, y_max]."""

    def y_of(value: float) -> float:
        clipped = min(y_max, max(y_min, value))
        return bottom - (clipped - y_min) / (y_max - y_min) * (bottom - top)

    return y_of


def _error_bar(parts: list[str], x: float, y_lo: float, y_hi: float) -> float:
    """A vertical interval with end ticks; returns the top end's row for the value label."""
    parts.append(
        f'<line x1="{_n(x)}" y1="{_n(y_lo)}" x2="{_n(x)}" y2="{_n(y_hi)}" '
        f'stroke="{TEXT}" stroke-width="1.3"/>'
    )
    for yy in (y_lo, y_hi):
        parts.append(
            f'<line x1="{_n(x - 6)}" y1="{_n(yy)}" x2="{_n(x + 6)}" y2="{_n(yy)}" '
            f'stroke="{TEXT}" stroke-width="1.3"/>'
        )
    return y_hi


def _legend_layout(names: Sequence[str], left: float, width: int) -> list[tuple[float, int]]:
    """(x, row) of each series' legend entry, wrapping to a new row at the right edge."""
    legend: list[tuple[float, int]] = []
    x_cursor, row = left, 0
    for name in names:
        entry = 28 + 7.0 * len(str(name))
        if x_cursor + entry > width - 8 and x_cursor > left:
            x_cursor, row = left, row + 1
        legend.append((x_cursor, row))
        x_cursor += entry
    return legend


def _x_marker(parts: list[str], x: float, label: str, top: float, bottom: float) -> None:
    """A dashed vertical line with its label (e.g. where the criteria changed)."""
    parts.append(
        f'<line x1="{_n(x)}" y1="{_n(top)}" x2="{_n(x)}" y2="{_n(bottom)}" stroke="{MUTED}" '
        'stroke-dasharray="3 3"/>'
    )
    parts.append(
        f'<text x="{_n(x + 4)}" y="{_n(top + 12)}" fill="{MUTED}" font-size="11">{_e(label)}</text>'
    )


def _polyline(
    parts: list[str], xs: Sequence[float], ys: Sequence[float | None], color: str
) -> None:
    """One series: a line through each run of defined points (a gap breaks it), and dots."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys, strict=True):
        if y is not None:
            runs[-1].append((x, y))
        elif runs[-1]:
            runs.append([])
    for run in runs:
        if len(run) > 1:
            points = " ".join(f"{_n(x)},{_n(y)}" for x, y in run)
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>'
            )
        for x, y in run:
            parts.append(f'<circle cx="{_n(x)}" cy="{_n(y)}" r="3" fill="{color}"/>')
