"""QC checks over items, batches and time: split votes, coverage, versions, drift."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from rlhfspec.common.findings import Finding
from rlhfspec.runtime.annotation.qc_frame import (
    _Agreement,
    _agreement,
    _band,
    _Frame,
    _iso_weeks,
)
from rlhfspec.runtime.annotation.qc_model import _LABELS, QcSettings, _finding, _rate
from rlhfspec.runtime.annotation.table import AnnotationTable


def _check_votes(
    frame: _Frame, settings: QcSettings, table: AnnotationTable
) -> tuple[list[Finding], dict[str, Any]]:
    """Split votes, coverage, unkeyed gold records and required justifications."""
    findings: list[Finding] = []
    counts = _label_counts(frame, frame.main)
    votes = counts.sum(axis=1)
    n_voted, n_split = _split_of(counts)
    share = _rate(n_split, n_voted)
    if n_voted and share > settings.max_split_vote_share:
        findings.append(
            _finding(
                "Q013", "overall",
                f"{n_split} of {n_voted} items ({share:.1%}) have no strict majority, above "
                f"{settings.max_split_vote_share:g}; the criteria may be ambiguous",
                share, settings.max_split_vote_share,
            )
        )  # fmt: skip
    labelled = votes >= 1
    short = labelled & (votes < settings.annotators_per_item)
    if short.any():
        findings.append(
            _finding(
                "Q019", "overall",
                f"{int(short.sum())} of {int(labelled.sum())} items have fewer than "
                f"{settings.annotators_per_item} annotators",
                float(short.sum()), float(settings.annotators_per_item),
            )
        )  # fmt: skip
    findings += _check_unkeyed_gold(frame, table)
    justification_findings, justification = _check_justifications(frame, settings, table)
    findings += justification_findings
    metrics = {
        "split_votes": {
            "items": n_voted,
            "split": n_split,
            "share": share,
            "threshold": settings.max_split_vote_share,
        },
        "coverage": {
            "items": int(labelled.sum()),
            "under_covered": int(short.sum()),
            "annotators_per_item": settings.annotators_per_item,
        },
        "justification": justification,
    }
    return findings, metrics


def _check_unkeyed_gold(frame: _Frame, table: AnnotationTable) -> list[Finding]:
    """Q018: records marked gold whose item has no answer in the gold file."""
    findings: list[Finding] = []
    unkeyed = table.gold.astype(bool) & ~frame.has_key
    if unkeyed.any():
        findings.append(
            _finding(
                "Q018", "overall",
                f"{int(unkeyed.sum())} record(s) on {np.unique(frame.item[unkeyed]).size} item(s) "
                "are marked gold but have no answer in the gold file; they are left out of gold "
                "accuracy and agreement",
                float(unkeyed.sum()),
            )
        )  # fmt: skip
    return findings


def _check_justifications(
    frame: _Frame, settings: QcSettings, table: AnnotationTable
) -> tuple[list[Finding], dict[str, Any]]:
    """Q016: records without the justification the spec requires; the share per annotator."""
    findings: list[Finding] = []
    justified = table.has_justification.astype(bool)
    by_annotator = frame.count(~justified)
    if settings.justification == "required" and by_annotator.any():
        who = ", ".join(
            f"{frame.names[a]} {int(by_annotator[a])}" for a in np.flatnonzero(by_annotator)
        )
        findings.append(
            _finding(
                "Q016", "overall",
                f"{int(by_annotator.sum())} of {frame.ann.size} records lack the required "
                f"justification ({who})",
                float(by_annotator.sum()),
            )
        )  # fmt: skip
    return findings, {
        "required": settings.justification,
        "missing": int(by_annotator.sum()),
        "share_by_annotator": {
            name: _rate(int(frame.count(justified)[a]), int(frame.count(frame.ann >= 0)[a]))
            for a, name in enumerate(frame.names)
        },
    }


def _batch_order(settings: QcSettings, table: AnnotationTable) -> list[str]:
    tags = dict(settings.batches)
    return [b for b, _ in settings.batches] + sorted(b for b in table.batches if b not in tags)


def _check_versions(
    settings: QcSettings, table: AnnotationTable
) -> tuple[list[Finding], dict[str, Any]]:
    """Every record must follow the criteria version its batch is tagged with (Q014)."""
    findings: list[Finding] = []
    tags = dict(settings.batches)
    by_batch = np.bincount(
        table.batch.astype(np.int64) * max(len(table.versions), 1) + table.version.astype(np.int64),
        minlength=len(table.batches) * max(len(table.versions), 1),
    ).reshape(len(table.batches), max(len(table.versions), 1))
    found: dict[str, Any] = {}
    for b, b_id in enumerate(table.batches):
        counts = {table.versions[v]: int(by_batch[b, v]) for v in np.flatnonzero(by_batch[b])}
        found[b_id] = counts
        tag = tags.get(b_id)
        wrong = {v: c for v, c in counts.items() if v != tag}
        if tag is not None and wrong:
            versions = ", ".join(f"{v} ({c})" for v, c in wrong.items())
            total = sum(counts.values())
            findings.append(
                _finding(
                    "Q014", f"batch {b_id}",
                    f"{sum(wrong.values())} of {total} records carry criteria version {versions} "
                    f"but the spec tags the batch {tag}",
                    float(sum(wrong.values())),
                )
            )  # fmt: skip
    return findings, {"tags": tags, "found": found}


def _check_batches(
    frame: _Frame,
    settings: QcSettings,
    table: AnnotationTable,
    kept: npt.NDArray[np.bool_],
    kept_overall: float,
) -> tuple[list[Finding], list[dict[str, Any]]]:
    """Drift: agreement and gold accuracy per batch, judged on the annotators who passed QC.

    Judging on the kept annotators reports an excluded annotator once, under their own name,
    rather than once per batch; the all-annotator values are kept in the metrics.
    """
    findings: list[Finding] = []
    tags = dict(settings.batches)
    code_of = {b: i for i, b in enumerate(table.batches)}
    batch = table.batch.astype(np.int64)
    rows_per_batch = np.bincount(batch, minlength=len(table.batches))
    out: list[dict[str, Any]] = []
    baseline: float | None = None
    for b_id in _batch_order(settings, table):
        code = code_of.get(b_id)
        subject = f"batch {b_id}"
        entry: dict[str, Any] = {"id": b_id, "criteria_version": tags.get(b_id)}
        if code is None or rows_per_batch[code] == 0:
            findings.append(_finding("Q021", subject, "no records (after skipping bad rows)"))
            entry.update({"records": 0, "items": 0, "annotators": 0})
            out.append(entry)
            continue
        rows = batch == code
        judged, (k_ok, k_n) = _batch_figures(frame, settings, rows, kept, entry)
        out.append(entry)
        has_kept = bool((rows & frame.main & kept).any())
        findings += _batch_level(subject, judged, has_kept, settings, kept_overall)
        value = judged.value
        if math.isfinite(value):
            if baseline is None:
                baseline = value
            elif baseline - value > settings.drift_tolerance:
                findings.append(
                    _finding(
                        "Q011", subject,
                        f"{judged.metric} {value:.3f} is {baseline - value:.3f} below the first "
                        f"batch's {baseline:.3f} (tolerance {settings.drift_tolerance:g})",
                        value - baseline, -settings.drift_tolerance,
                    )
                )  # fmt: skip
        accuracy = _rate(k_ok, k_n)
        if k_n and accuracy < settings.min_accuracy:
            findings.append(
                _finding(
                    "Q012", subject,
                    f"pooled gold accuracy {accuracy:.3f} ({k_ok}/{k_n}) below "
                    f"{settings.min_accuracy:g}",
                    accuracy, settings.min_accuracy,
                )
            )  # fmt: skip
    return findings, out


def _batch_figures(
    frame: _Frame,
    settings: QcSettings,
    rows: npt.NDArray[np.bool_],
    kept: npt.NDArray[np.bool_],
    entry: dict[str, Any],
) -> tuple[_Agreement, tuple[int, int]]:
    """Fill one batch's metrics entry; return the kept annotators' agreement and gold score."""
    every = frame.agreement(rows & frame.main, settings)
    judged = frame.agreement(rows & frame.main & kept, settings)
    g_ok, g_n = frame.gold_accuracy(rows)
    k_ok, k_n = frame.gold_accuracy(rows & kept)
    entry.update({
        "records": int(rows.sum()),
        "items": int(np.unique(frame.item[rows & frame.main]).size),
        "annotators": int(np.unique(frame.ann[rows]).size),
        "metric_used": every.metric,
        "agreement": every.value,
        "band": _band(every.value),
        "agreement_kept": judged.value,
        "band_kept": _band(judged.value),
        "reference_agreement": _rate(int((frame.match & rows).sum()), int((frame.scored & rows).sum())),
        "gold_scored": g_n,
        "gold_accuracy": _rate(g_ok, g_n),
        "gold_scored_kept": k_n,
        "gold_accuracy_kept": _rate(k_ok, k_n),
    })  # fmt: skip
    return judged, (k_ok, k_n)


def _batch_level(
    subject: str, judged: _Agreement, has_kept: bool, settings: QcSettings, kept_overall: float
) -> list[Finding]:
    """Q020/Q009/Q010: a batch's agreement undefined, below the floor, or below the target."""
    value = judged.value
    if not math.isfinite(value):
        if has_kept:
            return [_finding("Q020", subject, f"{judged.metric} undefined: {judged.note}")]
    elif value < settings.floor:
        return [
            _finding(
                "Q009", subject,
                f"{judged.metric} {value:.3f} below the floor {settings.floor:g}",
                value, settings.floor,
            )
        ]  # fmt: skip
    elif value < settings.target and kept_overall >= settings.target:
        return [
            _finding(
                "Q010", subject,
                f"{judged.metric} {value:.3f} below the target {settings.target:g} (all "
                f"batches together: {kept_overall:.3f})",
                value, settings.target,
            )
        ]  # fmt: skip
    return []


def _over_time(
    frame: _Frame,
    settings: QcSettings,
    started: npt.NDArray[np.float64],
    kept: npt.NDArray[np.bool_],
) -> list[dict[str, Any]]:
    """Agreement and gold accuracy per ISO week of the task start: drift inside batches too."""
    if not started.size:
        return []
    weeks, week = _iso_weeks(started)
    out: list[dict[str, Any]] = []
    for w, label in enumerate(weeks):
        rows = week == w
        g_ok, g_n = frame.gold_accuracy(rows)
        k_ok, k_n = frame.gold_accuracy(rows & kept)
        out.append({
            "week": label,
            "records": int(rows.sum()),
            "agreement": frame.agreement(rows & frame.main, settings).value,
            "agreement_kept": frame.agreement(rows & frame.main & kept, settings).value,
            "reference_agreement": _rate(int((frame.match & rows).sum()), int((frame.scored & rows).sum())),
            "gold_accuracy": _rate(g_ok, g_n),
            "gold_accuracy_kept": _rate(k_ok, k_n),
        })  # fmt: skip
    return out


def check_dimensions(
    frame: _Frame, settings: QcSettings, table: AnnotationTable, kept: npt.NDArray[np.bool_]
) -> tuple[list[Finding], dict[str, Any]]:
    """Q026: agreement on each quality dimension judged one by one, with the overall metric.

    Judged on the annotators who passed QC (non-gold items), like the batch checks; a
    dimension whose agreement is below the floor is where the criteria's wording needs work.
    """
    findings: list[Finding] = []
    out: dict[str, Any] = {}
    for d, name in enumerate(table.dimensions):
        label = table.dim_canon[:, d].astype(np.int64)
        rows = frame.main & kept & (label >= 0)
        every = frame.main & (label >= 0)
        judged = _agreement(
            frame.item[rows], frame.ann[rows], label[rows], frame.n_items, frame.n_ann, settings
        )
        all_ann = _agreement(
            frame.item[every], frame.ann[every], label[every], frame.n_items, frame.n_ann, settings
        )
        out[name] = {
            "records": int(every.sum()),
            "answered_share": _rate(int(every.sum()), int(frame.main.sum())),
            "metric_used": judged.metric,
            "agreement": all_ann.value,
            "agreement_kept": judged.value,
            "band_kept": _band(judged.value),
        }
        if math.isfinite(judged.value) and judged.value < settings.floor:
            findings.append(
                _finding(
                    "Q026", f"dimension {name}",
                    f"{judged.metric} {judged.value:.3f} on {name} below the floor "
                    f"{settings.floor:g}: its description may need clarifying",
                    judged.value, settings.floor,
                )
            )  # fmt: skip
    return findings, out


def _label_counts(frame: _Frame, rows: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Votes per item and canonical label over `rows` (items x labels)."""
    return np.bincount(
        frame.item[rows] * _LABELS + frame.canon[rows], minlength=frame.n_items * _LABELS
    ).reshape(frame.n_items, _LABELS)


def _split_of(counts: npt.NDArray[np.int64]) -> tuple[int, int]:
    """(items with at least two votes, items among them without a strict majority)."""
    votes = counts.sum(axis=1)
    voted = votes >= 2
    split = voted & (2 * counts.max(axis=1) <= votes)
    return int(voted.sum()), int(split.sum())


def _split_items(frame: _Frame, rows: npt.NDArray[np.bool_]) -> tuple[int, int]:
    """`_split_of` the votes in `rows` (one batch, one week)."""
    return _split_of(_label_counts(frame, rows))


def check_split_periods(
    frame: _Frame, settings: QcSettings, table: AnnotationTable, kept: npt.NDArray[np.bool_]
) -> tuple[list[Finding], dict[str, Any]]:
    """Q027: the split-vote rate per batch and per ISO week (of the item's first vote).

    The overall rate (Q013) can hide one batch where a criteria change or a new prompt source
    made items ambiguous; this is where that shows. Counted on the annotators who passed QC.
    """
    findings: list[Finding] = []
    base = frame.main & kept
    per_batch = []
    for b_id in _batch_order(settings, table):
        code = table.batches.index(b_id) if b_id in table.batches else -1
        voted, split = _split_items(frame, base & (table.batch == code))
        share = _rate(split, voted)
        per_batch.append({"batch": b_id, "items": voted, "split": split, "share": share})
        if voted and share > settings.max_split_vote_share:
            findings.append(
                _finding(
                    "Q027", f"batch {b_id}",
                    f"{split} of {voted} items ({share:.1%}) split, above "
                    f"{settings.max_split_vote_share:g}",
                    share, settings.max_split_vote_share,
                )
            )  # fmt: skip
    per_week = []
    if table.started.size:
        weeks, week = _iso_weeks(table.started)
        for w, label in enumerate(weeks):
            voted, split = _split_items(frame, base & (week == w))
            per_week.append(
                {"week": label, "items": voted, "split": split, "share": _rate(split, voted)}
            )
    return findings, {"batches": per_batch, "weeks": per_week}
