"""The evaluation trajectory across checkpoints as one standalone SVG."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from rlhfspec.runtime.report.svg import line_chart


def _nice_range(values: Sequence[float | None]) -> tuple[float, float, float]:
    """(y_min, y_max, step) on a 1-2-5 grid covering the values.

    The step is at least 0.1 because `svg_plots` prints tick labels with one decimal: a finer
    grid would print repeated, misleading labels.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0, 0.2
    low, high = min(finite), max(finite)
    span = high - low if high > low else max(abs(high), 1.0)
    raw = span / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(step, 0.1)
    y_min = math.floor(low / step) * step
    y_max = math.ceil(high / step) * step
    if y_max <= y_min:
        y_max = y_min + step
    return round(y_min, 10) + 0.0, round(y_max, 10) + 0.0, round(step, 10)


def _svg_size(svg: str) -> tuple[int, int]:
    match = re.search(r'<svg [^>]*?width="(\d+)" height="(\d+)"', svg)
    if match is None:  # pragma: no cover - svg_plots always writes both
        raise ValueError("chart without width/height")
    return int(match.group(1)), int(match.group(2))


def trajectory_svg(
    results: Sequence[dict[str, Any]], *, guards: dict[str, float] | None = None
) -> str:
    """A standalone SVG: mean reward, KL to the reference and length (words) over the steps.

    One chart per metric, stacked; each has a line for every prompt set and one for all sets
    pooled, so a reward climb bought with length or with drift from the reference is visible
    at a glance. `guards` (``max_kl``) adds the KL guard as a dashed line. Every label is
    escaped by `svg_plots`.
    """
    ordered = sorted(results, key=lambda r: (int(r["step"]), str(r["label"])))
    categories = [str(r["step"]) for r in ordered]
    names: list[str] = []
    for result in ordered:
        names += [n for n in result["sets"] if n not in names]
    metrics = (
        ("Mean reward", "reward", ("reward", "mean")),
        ("KL to the reference", "KL", ("kl", "mean")),
        ("Mean response length", "words", ("length", "words_mean")),
    )
    charts = []
    for title, y_label, (group, key) in metrics:
        series: list[tuple[str, list[float | None]]] = [
            ("all sets", [r["overall"][group][key] for r in ordered])
        ]
        for name in names:
            series.append(
                (
                    name,
                    [r["sets"][name][group][key] if name in r["sets"] else None for r in ordered],
                )
            )
        lines: list[tuple[float, str]] = []
        if y_label == "KL" and guards and guards.get("max_kl") is not None:
            lines.append((float(guards["max_kl"]), f"max_kl {float(guards['max_kl']):g}"))
        values = [v for _, vs in series for v in vs] + [v for v, _ in lines]
        y_min, y_max, step = _nice_range(values)
        charts.append(
            line_chart(
                categories,
                series,
                title=title,
                reference_lines=lines,
                y_min=y_min,
                y_max=y_max,
                y_step=step,
                y_label=y_label,
                x_label="training step",
            )
        )
    sizes = [_svg_size(c) for c in charts]
    width = max(w for w, _ in sizes)
    height = sum(h for _, h in sizes)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}">',
        "<title>Evaluation trajectory across checkpoints</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    offset = 0
    for chart, (_, h) in zip(charts, sizes, strict=True):
        parts.append(chart.replace("<svg ", f'<svg x="0" y="{offset}" ', 1))
        offset += h
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
