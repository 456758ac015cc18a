"""Stage 3 quality control: agreement, gold accuracy, position bias, fatigue, drift.

Preference data is only as good as the people who label it, and the ways it goes wrong are
known: a careless annotator, one who habitually picks the response shown first, one who keeps
going long after fatigue sets in, criteria that drift from batch to batch or are ambiguous
enough that votes split. `run_qc` reads every batch the spec lists, and `analyse` measures
each of these against the thresholds in the spec's `annotation` block. Each problem becomes a
`Finding` with a stable code, so CI, dashboards and the aggregation step can rely on it.

`analyse` is a pure function of an `AnnotationTable` (numpy columns) and the gold answers, and
is vectorised over rows and items (loops only over annotators, pairs, batches and weeks), so the
same code checks a pilot of a few thousand labels and a queue of a million.

Labels are compared in the item's canonical orientation (`AnnotationTable.canon`: the two
response ids sorted), because annotators saw each pair in a random order; position bias is the
one check made on the shown order (`AnnotationTable.choice`).

The reference label of a record, used by the fatigue check and the per-record drift numbers,
is the gold answer on a gold item and otherwise the strict majority of the *other* annotators
of the item (leave-one-out consensus); records without either are left out of those checks.

Codes are stable (a code never changes meaning or severity). They are registered in
common/codes.py with every other family's and listed in docs/diagnostics.md; `QC_CODES` is
QC's view of the registry.

Records of an AI judge (annotator `ai:<model>`) are kept out of every Q check, which measures
people, and measured against the human review sample instead (J001-J006,
`runtime/annotation/judge/review.py`); a J error fails the `ai_judge_agreement` gate.

An error with a code marked `excludes` (Q003, Q004, Q005, Q007, Q023, Q024, Q028) puts the annotator in `QcReport.excluded_annotators`:
their labels are unreliable, so the aggregation step leaves their votes out when
`aggregation.exclude_failed_annotators` is on. Q006 (sessions over the limit) is an error
because the session limit is a rule of the spec, not a measurement, but it does not exclude
by itself: long sessions are a process failure, and whether the labels suffered is what Q005
measures.

Which records a check looks at:

* Overall agreement (Q001/Q002) is the spec's gate on the data as collected: every annotator,
  non-gold items. The message also gives the value without the excluded annotators, which is
  what aggregation will use.
* Per-annotator agreement (Q007/Q008) is Cohen's kappa with the leave-one-out consensus
  (`agreement.leave_one_out_agreement`) on non-gold items, judged against the same target and
  floor; pairs sharing fewer than `MIN_PAIR_OVERLAP` items are left out of mean kappas.
* Batch checks (Q009-Q012) look at the annotators who passed QC, so an excluded annotator is
  reported once, under their name, not once per batch; the metrics carry both values. Q010
  fires only while the whole data set (same annotators) reaches the target, i.e. when the
  batch stands out; Q011 compares with the first batch listed in the spec.
* Fatigue (Q005) compares tasks started before and from `late_after_minutes` into the session
  (minutes from the session's first start), and needs `MIN_FATIGUE_SAMPLE` tasks on each side.
* Position bias (Q004) uses every record, gold included; ties are left out of the share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from rlhfspec.common.errors import RunError
from rlhfspec.common.findings import Finding
from rlhfspec.common.hashing import file_fingerprint
from rlhfspec.common.jsonl import missing_strings, read_objects, refusal
from rlhfspec.compiler.lockfile import criteria_hash
from rlhfspec.compiler.plan import generator
from rlhfspec.runtime.annotation.calibration import qualification
from rlhfspec.runtime.annotation.loading import Loaded, load_annotations, response_lengths
from rlhfspec.runtime.annotation.qc_annotators import check_annotators
from rlhfspec.runtime.annotation.qc_batches import (
    _batch_order,
    _check_batches,
    _check_versions,
    _check_votes,
    _over_time,
    check_dimensions,
    check_split_periods,
)
from rlhfspec.runtime.annotation.qc_frame import (
    _Agreement,
    _band,
    _Frame,
    _gold_per_item,
    _prepare,
    _reference_labels,
)
from rlhfspec.runtime.annotation.qc_model import (
    _SEVERITY_RANK,
    DRIFT_TOLERANCE,
    MAX_SAMPLES_PER_ANNOTATOR,
    QC_CODES,
    SAMPLE_CHARS,
    QcCode,
    QcInputs,
    QcReport,
    QcSettings,
    _clean,
    _finding,
)
from rlhfspec.runtime.annotation.records import CHOICES, SKIP_HINT
from rlhfspec.runtime.annotation.table import AnnotationTable
from rlhfspec.runtime.project import Project

__all__ = [
    "DRIFT_TOLERANCE",
    "QC_CODES",
    "Finding",
    "QcCode",
    "QcInputs",
    "QcReport",
    "QcSettings",
    "_reference_labels",
    "analyse",
    "canonical_gold_label",
    "read_gold",
    "run_qc",
]


def _excluding(overall: _Agreement, kept_value: float, excluded: list[str]) -> str:
    if not excluded:
        return ""
    return f"; without {', '.join(excluded)}: {kept_value:.3f} ({_band(kept_value) or 'undefined'})"


def _overall_findings(
    overall: _Agreement, without: _Agreement, excluded: list[str], settings: QcSettings
) -> list[Finding]:
    """Q001/Q002/Q020: the agreement gate on every annotator, as collected (the spec's gate)."""
    value = overall.value
    also = _excluding(overall, without.value, excluded)
    if not math.isfinite(value):
        return [_finding("Q020", "overall", f"{overall.metric} undefined: {overall.note}")]
    for code, limit, word in (
        ("Q001", settings.floor, "floor"),
        ("Q002", settings.target, "target"),
    ):
        if value < limit:
            message = f"{overall.metric} {value:.3f} ({_band(value)}) below the {word} {limit:g}"
            return [_finding(code, "overall", message + also, value, limit)]
    return []


def _skipped_findings(inputs: QcInputs) -> list[Finding]:
    """Q017 (rows skipped under --skip-bad-rows) and Q022 (tasks done by someone else)."""
    findings = []
    for where, problems in sorted(inputs.skipped.items()):
        if problems:
            shown = "; ".join(problems[:3]) + (
                f"; ... and {len(problems) - 3} more" if len(problems) > 3 else ""
            )
            subject = "overall" if where == "gold" else f"batch {where}"
            message = f"{len(problems)} bad row(s) skipped: {shown}"
            findings.append(_finding("Q017", subject, message, float(len(problems))))
    for batch, others in sorted(inputs.reassigned.items()):
        if others:
            shown = "; ".join(others[:3]) + (
                f"; ... and {len(others) - 3} more" if len(others) > 3 else ""
            )
            message = (
                f"{len(others)} task(s) completed by someone other than the annotator they were "
                f"assigned to: {shown}; the planned overlap, gold share and A/B balance do not hold"
            )
            findings.append(_finding("Q022", f"batch {batch}", message, float(len(others))))
    return findings


def _qualification_findings(inputs: QcInputs, table: AnnotationTable) -> list[Finding]:
    """Q028: live votes under the calibrated criteria version from an annotator who has not
    passed its calibration set. Votes under older versions predate that set, so they are
    judged by the other checks only. With no calibration answers listed at all, one Q029
    warning: the set is defined but not in use yet, and excluding everyone would only
    hide that."""
    if (
        inputs.qualification is None
        or inputs.qualification["criteria_version"] not in table.versions
    ):
        return []
    results = inputs.qualification["annotators"]
    mark = inputs.qualification["pass_mark"]
    version = inputs.qualification["criteria_version"]
    live = table.annotator[table.version == table.versions.index(version)]
    if not inputs.qualification["batches"]:
        message = (
            f"{len(np.unique(live))} annotator(s) have live votes under criteria {version}, "
            "but no calibration answers are listed, so nobody's qualification is checked"
        )
        return [_finding("Q029", "overall", message)]
    out = []
    for name in [table.annotators[i] for i in np.unique(live)]:
        result = results.get(name)
        if result is not None and result["passed"]:
            continue
        why = (
            "never answered the calibration set"
            if result is None
            else f"agreed with {result['correct']} of {result['items']} calibration answers "
            f"({result['agreement']:.2f}, pass mark {mark:g})"
        )
        value = None if result is None else float(result["agreement"])
        out.append(
            _finding("Q028", f"annotator {name}", f"has live votes but {why}", value, float(mark))
        )
    return out


def _excluded(findings: list[Finding]) -> list[str]:
    return sorted(
        {
            f.annotator
            for f in findings
            if f.annotator and f.severity == "error" and QC_CODES[f.code].excludes
        }
    )


def analyse(
    table: AnnotationTable,
    gold: Mapping[str, int],
    settings: QcSettings,
    *,
    inputs: QcInputs | None = None,
) -> QcReport:
    """Every QC measurement and finding, from columns only (no files, no clock).

    Why pure: the CLI, the aggregation step and the benchmark all call this one function, and
    the same table always gives the same report, byte for byte.

    Args:
        table: the annotations (`AnnotationTable.from_records` or `.from_arrays`).
        gold: item id -> gold label in canonical orientation (0 = the response with the smaller
            id preferred, 1 = the other, 2 = tie); see `canonical_gold_label`.
        settings: thresholds, usually `QcSettings.from_spec(spec)`.
        inputs: file-level facts (skipped rows, cancelled annotations, fingerprints) from
            `run_qc`; optional.
    """
    inputs = inputs or QcInputs()
    frame = _prepare(table, gold)
    overall = frame.agreement(frame.main, settings)
    findings, annotators, curves = check_annotators(frame, settings, overall)
    findings += _qualification_findings(inputs, table)
    excluded = _excluded(findings)
    keep = np.ones(frame.n_ann, dtype=bool)
    keep[[frame.names.index(a) for a in excluded]] = False
    kept = keep[frame.ann]
    without = frame.agreement(frame.main & kept, settings) if excluded else overall

    findings += _overall_findings(overall, without, excluded, settings)
    vote_findings, vote_metrics = _check_votes(frame, settings, table)
    version_findings, version_metrics = _check_versions(settings, table)
    batch_findings, batches = _check_batches(frame, settings, table, kept, without.value)
    dim_findings, dim_metrics = check_dimensions(frame, settings, table, kept)
    split_findings, split_metrics = check_split_periods(frame, settings, table, kept)
    findings += vote_findings + version_findings + batch_findings + dim_findings + split_findings
    findings += _skipped_findings(inputs)
    findings.sort(key=lambda f: (_SEVERITY_RANK[f.severity], f.code, f.subject))

    metrics: dict[str, Any] = {
        "overview": _overview(frame, settings, table, inputs, gold, vote_metrics),
        "agreement": _agreement_metrics(overall, without, settings, frame.names),
        "annotators": annotators,
        **vote_metrics,
        "criteria_versions": version_metrics,
        "batches": batches,
        "dimensions": dim_metrics,
        "split_votes_over_time": split_metrics,
        "over_time": _over_time(frame, settings, table.started, kept),
        "fatigue_curve": {
            "bin_minutes": settings.fatigue_bin_minutes,
            "late_after_minutes": settings.late_after_minutes,
            "annotators": curves,
        },
        "thresholds": _thresholds(settings),
        "inputs": [dict(f) for f in inputs.files],
    }
    if inputs.qualification is not None:
        metrics["qualification"] = dict(inputs.qualification)
    meta: dict[str, Any] = {
        "name": "annotations",
        "spec_file": "(arrays)",
        "criteria_version": "",
        "criteria_sha256": "",
        "generator": generator(),
    }
    meta.update(inputs.meta)
    return QcReport(
        findings=findings, metrics=_clean(metrics), excluded_annotators=excluded, meta=meta
    )


def _overview(
    frame: _Frame,
    settings: QcSettings,
    table: AnnotationTable,
    inputs: QcInputs,
    gold: Mapping[str, int],
    vote_metrics: Mapping[str, Any],
) -> dict[str, Any]:
    has_rows = frame.item.size > 0
    return {
        "records": int(frame.item.size),
        "gold_records": int(frame.gold_row.sum()),
        "items": int(np.unique(frame.item).size) if has_rows else 0,
        "non_gold_items": vote_metrics["coverage"]["items"],
        "gold_items": int(np.unique(frame.item[frame.has_key]).size) if has_rows else 0,
        "gold_items_in_file": inputs.gold_items or len(gold),
        "annotators": len(frame.names),
        "batches": len(_batch_order(settings, table)),
        "sessions": int(frame.sess_minutes.size),
        "cancelled": int(sum(inputs.cancelled.values())),
        "skipped_rows": int(sum(len(p) for p in inputs.skipped.values())),
        "records_with_reference": int(frame.scored.sum()),
    }


def _agreement_metrics(
    overall: _Agreement, without: _Agreement, settings: QcSettings, names: list[str]
) -> dict[str, Any]:
    return {
        "metric": settings.metric,
        "metric_used": overall.metric,
        "note": overall.note,
        "value": overall.value,
        "band": _band(overall.value),
        "target": settings.target,
        "floor": settings.floor,
        "value_without_excluded": without.value,
        "band_without_excluded": _band(without.value),
        "cohen_kappa_mean": overall.cohen_mean,
        "fleiss_kappa": overall.fleiss,
        "krippendorff_alpha": overall.alpha,
        "pairs_used": overall.pairs_used,
        "pairwise": {"annotators": names, "kappa": overall.kappa, "overlap": overall.overlap},
    }


def _thresholds(settings: QcSettings) -> dict[str, Any]:
    return {
        "agreement_target": settings.target,
        "agreement_floor": settings.floor,
        "gold_min_accuracy": settings.min_accuracy if settings.has_gold else None,
        "gold_share": list(settings.gold_share) if settings.has_gold else None,
        "max_first_share": settings.max_first_share,
        "significance": settings.significance,
        "late_after_minutes": settings.late_after_minutes,
        "max_drop": settings.max_drop,
        "session_max_minutes": settings.session_max_minutes,
        "max_split_vote_share": settings.max_split_vote_share,
        "annotators_per_item": settings.annotators_per_item,
        "min_pair_overlap": settings.min_pair_overlap,
        "min_fatigue_sample": settings.min_fatigue_sample,
        "drift_tolerance": settings.drift_tolerance,
        "max_longer_excess": settings.max_longer_excess,
        "min_speed_ratio": settings.min_speed_ratio,
        "min_justification_words": settings.min_justification_words,
        "max_repeated_justification_share": settings.max_repeated_justification_share,
    }


# ---------------------------------------------------------------------------------------------
# Files: batches, gold, samples
# ---------------------------------------------------------------------------------------------


def canonical_gold_label(response_a: str, response_b: str, preferred: str) -> int:
    """Gold answer in the table's canonical orientation (response ids sorted): 0, 1 or 2 (tie).

    The gold file states `preferred` relative to its own `response_a`/`response_b`, which need
    not be sorted; annotators' labels are compared in sorted order, so the answer is flipped
    when the file lists the larger id first.
    """
    if preferred == "tie":
        return 2
    first = preferred == "A"
    return 0 if first == (response_a < response_b) else 1


def read_gold(
    path: Path, *, display: str
) -> tuple[dict[str, int], dict[str, tuple[str, str]], list[str]]:
    """Gold answers (canonical labels), each gold item's response pair, and row problems."""
    answers: dict[str, int] = {}
    pairs: dict[str, tuple[str, str]] = {}
    problems: list[str] = []
    for number, row in read_objects(path, display, problems):
        where = f"{display}: line {number}:"
        bad = [
            f"field '{f}': {m}"
            for f, m in missing_strings(row, ("item_id", "response_a", "response_b"))
        ]
        if row.get("preferred") not in CHOICES:
            bad.append(f"field 'preferred': must be one of A, B, tie, got {row.get('preferred')!r}")
        if bad:
            problems.extend(f"{where} {b}" for b in bad)
            continue
        if row["response_a"] == row["response_b"]:
            problems.append(f"{where} field 'response_b': the same response as response_a")
            continue
        if row["item_id"] in answers:
            problems.append(f"{where} field 'item_id': gold item {row['item_id']} listed twice")
            continue
        answers[row["item_id"]] = canonical_gold_label(
            row["response_a"], row["response_b"], row["preferred"]
        )
        low, high = sorted((str(row["response_a"]), str(row["response_b"])))
        pairs[row["item_id"]] = (low, high)
    return answers, pairs, problems


def _check_gold_pairs(
    records: list[dict[str, Any]], pairs: Mapping[str, tuple[str, str]], problems: list[str]
) -> None:
    """A gold record must show the same two responses as the answer key, else the key is wrong.

    Records that do not are marked `_drop` and their problem appended.
    """
    for index, record in enumerate(records):
        pair = pairs.get(record["item_id"])
        if pair is not None and pair != tuple(sorted((record["response_a"], record["response_b"]))):
            hint = (
                "; the batch shows blinded ids: list its unblinding key as the batch's `key`"
                if str(record["response_a"]).startswith("resp-")
                else ""
            )
            problems.append(
                f"{record['batch']}: record {index + 1} (item {record['item_id']}, annotator "
                f"{record['annotator']}): responses differ from the gold file's {pair[0]}, "
                f"{pair[1]}{hint}"
            )
            record["_drop"] = True


def _gold_for(
    project: Project, loaded: Loaded, skip_bad_rows: bool
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """The gold answers, checked against the records; the records with bad gold rows dropped."""
    ann_spec = project.spec.get("annotation", {})
    records = loaded.records
    if "gold" not in ann_spec:
        return {}, records
    gold_rel = ann_spec["gold"]["path"]
    gold_path = project.path(gold_rel)
    gold, pairs, problems = read_gold(gold_path, display=gold_rel)
    _check_gold_pairs(records, pairs, problems)
    if problems and not skip_bad_rows:
        raise refusal(f"gold file {gold_rel} refused", problems, SKIP_HINT)
    if problems:
        loaded.skipped["gold"] = problems
        records = [r for r in records if not r.pop("_drop", False)]
    loaded.files.append(
        {"batch": None, "path": gold_rel, "format": "gold", **file_fingerprint(gold_path)}
    )
    return gold, records


def run_qc(project: Project, *, skip_bad_rows: bool = False) -> QcReport:
    """Read every batch and the gold file of a validated project, then `analyse` them.

    Bad rows refuse the whole run (a silently dropped row changes agreement); with
    `skip_bad_rows` they are skipped and reported as Q017 warnings instead. No usable record
    at all is an error, never an empty pass.
    """
    spec = project.spec
    loaded = load_annotations(project, skip_bad_rows=skip_bad_rows)
    gold, records = _gold_for(project, loaded, skip_bad_rows)
    qualified = qualification(project, skip_bad_rows=skip_bad_rows)
    if not records:
        raise RunError(
            f"{project.display}: the annotation batches hold no usable records"
            + (" (every row was skipped as bad)" if loaded.skipped else "")
        )
    from rlhfspec.runtime.annotation.judge.review import review_judges, split_ai

    records, ai_records = split_ai(records)  # the AI judge is measured against people, apart
    if not records:
        raise RunError(f"{project.display}: the annotation batches hold no human records")
    settings = QcSettings.from_spec(spec)
    ai_only = {r["batch"] for r in ai_records} - {r["batch"] for r in records}
    settings = replace(settings, batches=tuple(b for b in settings.batches if b[0] not in ai_only))
    table = AnnotationTable.from_records(
        records, lengths=response_lengths(project), dimensions=settings.dimensions
    )
    meta = {
        "name": project.name,
        "spec_file": project.spec_path.name,
        "criteria_version": spec["criteria"]["version"],
        "criteria_sha256": criteria_hash(spec["criteria"]),
        "generator": generator(),
    }
    inputs = QcInputs(
        meta=meta,
        files=loaded.files,
        cancelled=loaded.cancelled,
        skipped=loaded.skipped,
        reassigned=loaded.reassigned,
        gold_items=len(gold),
        qualification=qualified,
    )
    report = analyse(table, gold, settings, inputs=inputs)
    if ai_records:
        report.metrics["ai_judge"], found = review_judges(
            spec, ai_records, records, gold, report.excluded_annotators
        )
        report.findings.extend(found)
    report.samples = _samples(report, table, records, gold)
    return report


def _samples(
    report: QcReport,
    table: AnnotationTable,
    records: Sequence[Mapping[str, Any]],
    gold: Mapping[str, int],
) -> list[dict[str, Any]]:
    """A few justifications where a flagged annotator disagreed with the reference.

    Auditors read these to tell carelessness from a real ambiguity in the criteria. The text is
    the annotator's own and is escaped wherever it is rendered.
    """
    flagged = sorted({f.annotator for f in report.findings if f.annotator})
    if not flagged:
        return []
    gold_item = _gold_per_item(table, gold)
    item = table.item.astype(np.int64)
    canon = table.canon.astype(np.int64)
    reference = _reference_labels(item, canon, gold_item, len(table.items))
    wrong = (reference >= 0) & (canon != reference) & table.has_justification.astype(bool)
    out: list[dict[str, Any]] = []
    for name in flagged:
        a = table.annotators.index(name)
        rows = np.flatnonzero(wrong & (table.annotator == a))
        rows = rows[np.lexsort((table.item[rows], table.batch[rows]))][:MAX_SAMPLES_PER_ANNOTATOR]
        for r in rows.tolist():
            record = records[r]
            text = str(record.get("justification") or "")
            if len(text) > SAMPLE_CHARS:
                text = text[: SAMPLE_CHARS - 1] + "…"
            pair = sorted((str(record["response_a"]), str(record["response_b"])))
            out.append({
                "annotator": name,
                "batch": record["batch"],
                "item_id": record["item_id"],
                "shown_first": record["response_a"],
                "shown_second": record["response_b"],
                "chose": _label_name(int(canon[r]), pair),
                "reference": _label_name(int(reference[r]), pair),
                "reference_kind": "gold" if gold_item[item[r]] >= 0 else "consensus",
                "justification": text,
            })  # fmt: skip
    return out


def _label_name(label: int, pair: Sequence[str]) -> str:
    """A canonical label as the response id it prefers, or "tie"."""
    return "tie" if label == 2 else pair[label]
