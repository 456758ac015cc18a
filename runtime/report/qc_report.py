"""The QC report for people: terminal text, Markdown and a self-contained HTML audit page.

`report.json` is for machines (`QcReport.to_json`); `report.md` reads well in a pull request;
`report.html` is the audit artefact with the plots. All three are rendered in memory first and
then written one by one atomically, so a failure never leaves a half-written report, and none
of them carries a clock time, so the same data gives the same bytes.

Annotator text (justifications, and ids that come from the data) is escaped everywhere it is
rendered: by autoescape in HTML, by the `md` filter in Markdown and by `html.escape` inside the
SVG plots, which are the only strings marked safe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.templating import render_template
from rlhfspec.runtime.annotation.qc import QC_CODES, QcReport
from rlhfspec.runtime.report import svg as svg_plots

__all__ = ["REPORT_FILES", "format_text", "render_html", "render_markdown", "write_qc_reports"]

REPORT_FILES = ("report.json", "report.md", "report.html")
MIN_CURVE_POINTS = 10
"""Fatigue-curve bins with fewer records are not drawn: their agreement is mostly noise."""


def _f(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _p(value: Any) -> str:
    if value is None:
        return "n/a"
    return "< 1e-12" if value < 1e-12 else f"{value:.2g}"


def _count(value: Any) -> str:
    return f"{int(value):,}"


def format_text(report: QcReport) -> str:
    """One line per finding, then a summary line (no trailing newline): `rlhfspec qc`'s output."""
    lines = [f"{f.severity}[{f.code}] {f.subject}: {f.message}" for f in report.findings]
    overview = report.metrics.get("overview", {})
    verdict = "failed" if report.errors else "passed"
    summary = (
        f"qc {verdict}: {len(report.errors)} error(s), {len(report.warnings)} warning(s) in "
        f"{_count(overview.get('records', 0))} records from {overview.get('annotators', 0)} "
        f"annotators in {overview.get('batches', 0)} batches"
    )
    agreement = report.metrics.get("agreement", {})
    if agreement.get("value") is not None:
        summary += f"; {agreement['metric_used']} {_f(agreement['value'], 3)} ({agreement['band']})"
    if report.excluded_annotators:
        summary += f"; excluded annotators: {', '.join(report.excluded_annotators)}"
    lines.append(summary)
    return "\n".join(lines)


def _flag_codes(report: QcReport) -> dict[str, list[str]]:
    """Codes of the findings about each annotator."""
    out: dict[str, list[str]] = {}
    for finding in report.findings:
        if finding.annotator:
            out.setdefault(finding.annotator, []).append(finding.code)
    return out


def context(report: QcReport) -> dict[str, Any]:
    """What the QC templates see: numbers already formatted, so Markdown and HTML agree."""
    metrics = report.metrics
    agreement = metrics["agreement"]
    names, pairwise = _pairwise_rows(agreement["pairwise"])
    annotators = _annotator_rows(report)
    batches = _batch_rows(metrics)
    weeks = _week_rows(metrics)
    split = metrics["split_votes"]
    return {
        "meta": report.meta,
        "verdict": "fail" if report.errors else "pass",
        "n_errors": len(report.errors),
        "n_warnings": len(report.warnings),
        "excluded": report.excluded_annotators,
        "findings": [
            {
                "severity": f.severity,
                "code": f.code,
                "name": f.name,
                "subject": f.subject,
                "message": f.message,
            }
            for f in report.findings
        ],
        "overview": _overview_rows(metrics["overview"]),
        "agreement": _agreement_summary(agreement),
        "pairwise_names": names,
        "pairwise": pairwise,
        "annotators": annotators,
        "batches": batches,
        "weeks": weeks,
        "split": {
            "voted": _count(split["items"]),
            "split": _count(split["split"]),
            "share": _f(split["share"], 3),
            "threshold": _f(split["threshold"]),
        },
        "thresholds": metrics["thresholds"],
        "ai_judges": _ai_judges(metrics.get("ai_judge")),
        "qualification": _qualification(metrics.get("qualification")),
        "fatigue_bin_minutes": metrics["fatigue_curve"]["bin_minutes"],
        "samples": report.samples,
        "codes": _code_rows(),
    }


def _annotator_rows(report: QcReport) -> list[dict[str, Any]]:
    """One row per annotator: gold, consensus, position, fatigue and session figures."""
    metrics = report.metrics
    flags = _flag_codes(report)
    annotators = []
    for name, row in metrics["annotators"].items():
        gold, pos, fat, ses, con = (
            row["gold"], row["position"], row["fatigue"], row["sessions"], row["consensus"]
        )  # fmt: skip
        annotators.append({
            "name": name,
            "codes": ", ".join(flags.get(name, [])),
            "excluded": name in report.excluded_annotators,
            "records": _count(row["records"]),
            "gold": f"{_f(gold['accuracy'])} ({gold['correct']}/{gold['scored']})",
            "gold_ci": f"{_f(gold['ci_low'])}-{_f(gold['ci_high'])}",
            "gold_share": _f(gold["share"], 3),
            "consensus_kappa": _f(con["kappa"]),
            "consensus_agreement": _f(con["agreement"]),
            "pairwise_mean": _f(row["pairwise_mean_kappa"]),
            "first_share": f"{_f(pos['first_share'])} of {pos['non_tie']}",
            "first_p": _p(pos["p_value"]),
            "early": f"{_f(fat['early_agreement'])} ({fat['early_n']})",
            "late": f"{_f(fat['late_agreement'])} ({fat['late_n']})",
            "drop": _f(fat["drop"]),
            "sessions": str(ses["count"]),
            "over_limit": str(ses["over_limit"]),
            "max_session": _f(ses["max_minutes"], 0),
            "median_session": _f(ses["median_minutes"], 0),
        })  # fmt: skip
    return annotators


def _pairwise_rows(pair: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The pairwise kappa matrix as rows of formatted cells (overlap in brackets)."""
    names: list[str] = pair["annotators"]
    pairwise = [
        {
            "name": names[i],
            "cells": [
                "–" if i == j else f"{_f(pair['kappa'][i][j])} ({pair['overlap'][i][j]})"
                for j in range(len(names))
            ],
        }
        for i in range(len(names))
    ]
    return names, pairwise


def _batch_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per batch: criteria versions found, agreement and gold before/after exclusion."""
    return [
        {
            "id": b["id"],
            "criteria_version": b.get("criteria_version") or "(not in spec)",
            "versions_found": ", ".join(
                f"{v} ({_count(c)})" for v, c in metrics["criteria_versions"]["found"].get(b["id"], {}).items()
            ) or "–",
            "records": _count(b.get("records", 0)),
            "item_count": _count(b.get("items", 0)),
            "agreement": _f(b.get("agreement"), 3),
            "band": b.get("band") or "n/a",
            "agreement_kept": _f(b.get("agreement_kept"), 3),
            "gold": _f(b.get("gold_accuracy")),
            "gold_kept": _f(b.get("gold_accuracy_kept")),
            "reference": _f(b.get("reference_agreement")),
        }
        for b in metrics["batches"]
    ]  # fmt: skip


def _week_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per week of labelling, for the drift table."""
    return [
        {
            "week": w["week"],
            "records": _count(w["records"]),
            "agreement": _f(w["agreement"], 3),
            "agreement_kept": _f(w["agreement_kept"], 3),
            "gold": _f(w["gold_accuracy"]),
            "gold_kept": _f(w["gold_accuracy_kept"]),
            "reference": _f(w["reference_agreement"]),
        }
        for w in metrics["over_time"]
    ]


def _overview_rows(overview: dict[str, Any]) -> list[tuple[str, str]]:
    """The overview table: what the batch holds."""
    return [
        ("Records", _count(overview["records"])),
        ("Gold records", _count(overview["gold_records"])),
        ("Items (non-gold)", _count(overview["non_gold_items"])),
        (
            "Gold items labelled / in the gold file",
            f"{overview['gold_items']} / {overview['gold_items_in_file']}",
        ),
        ("Annotators", str(overview["annotators"])),
        ("Batches", str(overview["batches"])),
        ("Sessions", str(overview["sessions"])),
        ("Cancelled (skipped in the tool)", _count(overview["cancelled"])),
        ("Bad rows skipped", _count(overview["skipped_rows"])),
    ]  # fmt: skip


def _agreement_summary(agreement: dict[str, Any]) -> dict[str, Any]:
    """The headline agreement figure with its band, target and the other statistics."""
    return {
        "metric": agreement["metric"],
        "metric_used": agreement["metric_used"],
        "note": agreement["note"],
        "value": _f(agreement["value"], 3),
        "band": agreement["band"] or "n/a",
        "target": _f(agreement["target"]),
        "floor": _f(agreement["floor"]),
        "without": _f(agreement["value_without_excluded"], 3),
        "without_band": agreement["band_without_excluded"] or "n/a",
        "cohen": _f(agreement["cohen_kappa_mean"], 3),
        "fleiss": _f(agreement["fleiss_kappa"], 3),
        "alpha": _f(agreement["krippendorff_alpha"], 3),
    }


def _code_rows() -> list[dict[str, Any]]:
    """Every Q code with its meaning, for the report's legend."""
    return [
        {
            "code": code,
            "severity": c.severity,
            "name": c.name,
            "meaning": c.meaning,
            "excludes": c.excludes,
        }
        for code, c in QC_CODES.items()
    ]  # fmt: skip


def _qualification(section: dict[str, Any] | None) -> dict[str, Any] | None:
    """The calibration table: one row per annotator who answered it."""
    if section is None:
        return None
    rows = [
        {
            "name": name,
            "answered": f"{r['answered']} of {r['items']}",
            "correct": _count(r["correct"]),
            "agreement": _f(r["agreement"], 3),
            "attempts": _count(len(r["attempts"])),
            "result": "pass" if r["passed"] else "fail",
        }
        for name, r in section["annotators"].items()
    ]
    return {
        "version": section["criteria_version"],
        "n_items": _count(section["items"]),
        "pass_mark": _f(section["pass_mark"]),
        "batches": ", ".join(section["batches"]) or "none yet",
        "rows": rows,
    }


def _ai_judges(section: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per AI judge: who, with which prompt, and how it compares with people."""
    rows = []
    for name, j in (section or {}).get("judges", {}).items():
        a = j["agreement"]
        rows.append({
            "name": name, "models": ", ".join(j["models"]),
            "prompt": ", ".join(p[:12] for p in j["prompt_sha256"]),
            "labelled": _count(j["ai_labelled_pairs"]), "reviewed": _count(j["reviewed_with_majority"]),
            "kappa": f"{_f(a['kappa'], 3)} [{_f(a['low'], 3)}, {_f(a['high'], 3)}]",
            "orders": _f(j["order_agreement"]["share"], 3),
            "first": _f(j["position"]["first_shown_share"], 3),
            "length": _f(j["length"]["bias"], 3), "gold": _f(j["gold"]["accuracy"], 3),
            "gate": "pass" if j["gate_passed"] else "fail",
        })  # fmt: skip
    return rows


def plots(report: QcReport) -> dict[str, Markup]:
    """The report's SVG plots, marked safe: every text in them went through `html.escape`."""
    metrics = report.metrics
    flags = _flag_codes(report)
    thresholds = metrics["thresholds"]
    names = list(metrics["annotators"])
    rows = [metrics["annotators"][n] for n in names]
    pair = metrics["agreement"]["pairwise"]
    kappa = [
        [None if i == j else pair["kappa"][i][j] for j in range(len(names))]
        for i in range(len(names))
    ]
    out: dict[str, str] = {
        "heatmap": svg_plots.heatmap(
            kappa, names, names, title="Cohen's kappa between annotators (shared non-gold items)"
        ),
        "position": svg_plots.bar_chart(
            names,
            [r["position"]["first_share"] for r in rows],
            lower=[r["position"]["ci_low"] for r in rows],
            upper=[r["position"]["ci_high"] for r in rows],
            flagged=["Q004" in flags.get(n, []) for n in names],
            reference_lines=[
                (thresholds["max_first_share"], f"max {thresholds['max_first_share']:g}"),
                (0.5, "no preference 0.5"),
            ],
            title="Share of first-shown picks (non-tie answers, 95% CI)",
            y_label="first-shown share",
        ),
    }
    if thresholds["gold_min_accuracy"] is not None:
        out["gold"] = svg_plots.bar_chart(
            names,
            [r["gold"]["accuracy"] for r in rows],
            lower=[r["gold"]["ci_low"] for r in rows],
            upper=[r["gold"]["ci_high"] for r in rows],
            flagged=["Q003" in flags.get(n, []) for n in names],
            reference_lines=[
                (thresholds["gold_min_accuracy"], f"min {thresholds['gold_min_accuracy']:g}")
            ],
            title="Gold accuracy per annotator (95% Wilson CI)",
            y_label="gold accuracy",
        )
    curve = metrics["fatigue_curve"]
    width = float(curve["bin_minutes"])
    starts = sorted({p["start"] for points in curve["annotators"].values() for p in points})
    if starts:
        n_bins = int(round(max(starts) / width)) + 1
        categories = [f"{i * width:g}-{(i + 1) * width:g}" for i in range(n_bins)]
        series = []
        for name in names:
            values: list[float | None] = [None] * n_bins
            for point in curve["annotators"].get(name, []):
                if point["n"] >= MIN_CURVE_POINTS:
                    values[int(round(point["start"] / width))] = point["agreement"]
            series.append((name, values))
        late = float(curve["late_after_minutes"]) / width - 0.5
        out["fatigue"] = svg_plots.line_chart(
            categories,
            series,
            title="Agreement with the reference by minutes into the session",
            x_marker=(late, f"late after {curve['late_after_minutes']:g} min"),
            y_label="agreement",
            x_label=f"minutes into the session (bins with at least {MIN_CURVE_POINTS} tasks)",
        )
    batches = [b for b in metrics["batches"] if b.get("records")]
    if batches:
        out["drift"] = _drift_chart([b["id"] for b in batches], batches, thresholds, "batch")
    weeks = metrics["over_time"]
    if len(weeks) > 1:
        out["weeks"] = _drift_chart([w["week"] for w in weeks], weeks, thresholds, "ISO week")
    return {key: Markup(svg) for key, svg in out.items()}  # noqa: S704 - escaped in svg_plots


def _drift_chart(
    labels: Sequence[str], rows: Sequence[dict[str, Any]], thresholds: dict[str, Any], what: str
) -> str:
    keys = [
        ("agreement", "agreement, all annotators"),
        ("agreement_kept", "agreement, kept annotators"),
        ("gold_accuracy", "gold accuracy, all"),
        ("gold_accuracy_kept", "gold accuracy, kept"),
    ]
    series = [(label, [row.get(key) for row in rows]) for key, label in keys]
    finite = [v for _, vs in series for v in vs if v is not None and math.isfinite(v)]
    low = min([0.0, *finite])
    y_min = math.floor(low / 0.2) * 0.2
    return svg_plots.line_chart(
        list(labels),
        series,
        title=f"Drift: agreement and gold accuracy per {what}",
        reference_lines=[
            (thresholds["agreement_target"], f"target {thresholds['agreement_target']:g}"),
            (thresholds["agreement_floor"], f"floor {thresholds['agreement_floor']:g}"),
        ],
        y_min=y_min,
        y_label="value",
    )


def render_markdown(report: QcReport) -> str:
    return render_template("qc_report.md.j2", context(report))


def render_html(report: QcReport) -> str:
    return render_template("qc_report.html.j2", {**context(report), "plots": plots(report)})


def write_qc_reports(report: QcReport, out_dir: Path) -> list[Path]:
    """Write report.json, report.md and report.html into `out_dir`; returns their paths.

    Everything is rendered before the first write, and each file is replaced atomically.
    """
    texts = {
        "report.json": report.to_json(),
        "report.md": render_markdown(report),
        "report.html": render_html(report),
    }
    paths = []
    try:
        for name in REPORT_FILES:
            path = out_dir / name
            atomic_write_text(path, texts[name])
            paths.append(path)
    except OSError as exc:
        raise RunError(f"cannot write the QC report to {out_dir}: {exc.strerror or exc}") from None
    return paths
