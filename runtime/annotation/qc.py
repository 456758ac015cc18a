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

An error with a code marked `excludes` (Q003, Q004, Q005, Q007) puts the annotator in `QcReport.excluded_annotators`:
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

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rlhfspec.common.codes import Code, family
from rlhfspec.common.errors import RunError
from rlhfspec.common.findings import Finding, FindingsReport
from rlhfspec.common.hashing import file_fingerprint
from rlhfspec.common.jsonl import missing_strings, read_objects, refusal
from rlhfspec.compiler.lockfile import criteria_hash
from rlhfspec.compiler.plan import generator
from rlhfspec.compiler.schemas import default_of
from rlhfspec.runtime.annotation.agreement import (
    AgreementError,
    binomial_test_two_sided,
    fleiss_kappa,
    krippendorff_alpha,
    landis_koch_band,
    leave_one_out_agreement,
    pairwise_agreement,
    wilson_interval,
)
from rlhfspec.runtime.annotation.records import CHOICES, SKIP_HINT, AnnotationTable, read_batches
from rlhfspec.runtime.project import Project

__all__ = [
    "DRIFT_TOLERANCE",
    "QC_CODES",
    "Finding",
    "QcCode",
    "QcInputs",
    "QcReport",
    "QcSettings",
    "analyse",
    "canonical_gold_label",
    "read_gold",
    "run_qc",
]

REPORT_SCHEMA = "rlhfspec-qc/1"
DRIFT_TOLERANCE = 0.10
"""Largest drop in a batch's agreement versus the first batch before Q011 warns."""
MIN_PAIR_OVERLAP = 20
"""Annotator pairs sharing fewer items are left out of the mean pairwise kappa: too noisy."""
MIN_FATIGUE_SAMPLE = 30
"""Early and late samples must each hold this many records before Q005 can fire."""
FATIGUE_BIN_MINUTES = 15.0
MAX_SAMPLES_PER_ANNOTATOR = 3
SAMPLE_CHARS = 240
_NDIGITS = 6


# QC's codes (registered in common/codes.py with every other family's); `excludes` marks the
# (*) codes above.
QC_CODES: dict[str, Code] = family("Q")
QcCode = Code
JSON_KEYS = ("code", "severity", "name", "subject", "message", "value", "threshold")
"""The keys of one finding in qc/report.json, in order."""
_SEVERITY_RANK = {"error": 0, "warning": 1}
_LABELS = len(CHOICES)  # 0 = canonical first, 1 = canonical second, 2 = tie


# ---------------------------------------------------------------------------------------------
# Settings, findings, report
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QcSettings:
    """The thresholds QC applies; `from_spec` reads them from the resolved spec."""

    # spec thresholds default to the schema's defaults (the single source); a resolved spec
    # sets them all through `from_spec`
    metric: str = default_of("annotation.agreement.metric")
    target: float = default_of("annotation.agreement.target")
    floor: float = default_of("annotation.agreement.floor")
    has_gold: bool = True
    gold_share: tuple[float, float] = tuple(default_of("annotation.gold.share"))
    min_accuracy: float = default_of("annotation.gold.min_accuracy")
    max_first_share: float = default_of("annotation.position_bias.max_first_share")
    significance: float = default_of("annotation.position_bias.significance")
    late_after_minutes: float = default_of("annotation.fatigue.late_after_minutes")
    max_drop: float = default_of("annotation.fatigue.max_drop")
    session_max_minutes: float = default_of("annotation.session_max_minutes")
    max_split_vote_share: float = default_of("annotation.max_split_vote_share")
    annotators_per_item: int = default_of("annotation.annotators_per_item")
    justification: str = default_of("annotation.justification")
    batches: tuple[tuple[str, str], ...] = ()
    """(batch id, tagged criteria version), in spec order; the first is the drift baseline."""
    min_pair_overlap: int = MIN_PAIR_OVERLAP
    min_fatigue_sample: int = MIN_FATIGUE_SAMPLE
    drift_tolerance: float = DRIFT_TOLERANCE
    fatigue_bin_minutes: float = FATIGUE_BIN_MINUTES
    confidence: float = 0.95

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> QcSettings:
        """Thresholds from a resolved spec (defaults already written out by the compiler;
        only `annotation.gold`, which has no default, may be absent)."""
        ann = spec["annotation"]
        agreement = ann["agreement"]
        gold = ann.get("gold")
        bias = ann["position_bias"]
        fatigue = ann["fatigue"]
        return cls(
            metric=str(agreement["metric"]),
            target=float(agreement["target"]),
            floor=float(agreement["floor"]),
            has_gold=gold is not None,
            gold_share=(float(gold["share"][0]), float(gold["share"][1]))
            if gold
            else cls.gold_share,
            min_accuracy=float(gold["min_accuracy"]) if gold else cls.min_accuracy,
            max_first_share=float(bias["max_first_share"]),
            significance=float(bias["significance"]),
            late_after_minutes=float(fatigue["late_after_minutes"]),
            max_drop=float(fatigue["max_drop"]),
            session_max_minutes=float(ann["session_max_minutes"]),
            max_split_vote_share=float(ann["max_split_vote_share"]),
            annotators_per_item=int(ann["annotators_per_item"]),
            justification=str(ann["justification"]),
            batches=tuple((str(b["id"]), str(b["criteria_version"])) for b in ann["batches"]),
        )


def _finding(
    code: str,
    subject: str,
    message: str,
    value: float | None = None,
    threshold: float | None = None,
) -> Finding:
    """A finding about `subject` ("overall", "annotator <id>", "batch <id>")."""
    return Finding(code, message, subject=subject, value=value, threshold=threshold)


@dataclass(frozen=True)
class QcInputs:
    """What `run_qc` knows about the files that `analyse` (arrays only) cannot see."""

    meta: Mapping[str, Any] = field(default_factory=dict)
    files: Sequence[Mapping[str, Any]] = ()
    cancelled: Mapping[str, int] = field(default_factory=dict)
    skipped: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Bad-row problems per batch id (or "gold"), as text; only with `skip_bad_rows`."""
    gold_items: int = 0


@dataclass
class QcReport(FindingsReport):
    """QC result: findings, metrics (JSON-ready) and the annotators that failed."""

    findings: list[Finding]
    metrics: dict[str, Any]
    excluded_annotators: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """1 when any finding is an error, else 0 (what `rlhfspec qc` exits with)."""
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "meta": _clean(self.meta),
            "verdict": "pass" if self.ok else "fail",
            "summary": {"errors": len(self.errors), "warnings": len(self.warnings)},
            "excluded_annotators": list(self.excluded_annotators),
            "findings": [_clean(f.to_dict(JSON_KEYS)) for f in self.findings],
            "metrics": _clean(self.metrics),
            "samples": _clean(self.samples),
        }

    def to_json(self) -> str:
        """Deterministic JSON. `<`, `>` and `&` are written as \\u escapes, so annotator text in
        the report stays inert even if someone pastes the JSON into a web page."""
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)
        text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
        return text + "\n"


def _clean(value: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, floats rounded to 6 places, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        if not math.isfinite(number):
            return None
        rounded = round(number, _NDIGITS)
        return 0.0 if rounded == 0 else rounded
    return value


def _rate(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def _p_text(p: float) -> str:
    """A p-value for a message; exact zero means it underflowed double precision."""
    return "< 1e-300" if p == 0 else f"= {p:.2g}"


# ---------------------------------------------------------------------------------------------
# Array helpers
# ---------------------------------------------------------------------------------------------


def _compact(codes: npt.NDArray[Any], size: int) -> tuple[npt.NDArray[np.int64], int]:
    """Renumber the codes that occur to 0..m-1 (order kept) in O(n), without sorting."""
    present = np.zeros(size, dtype=bool)
    present[codes] = True
    remap = np.cumsum(present) - 1
    return remap[codes].astype(np.int64), int(present.sum())


def _label_matrix(
    item: npt.NDArray[Any],
    annotator: npt.NDArray[Any],
    label: npt.NDArray[Any],
    n_items: int,
    n_annotators: int,
) -> npt.NDArray[np.int8]:
    """annotators x (items that occur) matrix of canonical labels, -1 where not labelled."""
    local, m = _compact(item, n_items)
    matrix = np.full((n_annotators, m), -1, dtype=np.int8)
    matrix[annotator, local] = label
    return matrix


def _reference_labels(
    item: npt.NDArray[Any], label: npt.NDArray[Any], gold_label: npt.NDArray[Any], n_items: int
) -> npt.NDArray[np.int8]:
    """Per record: the gold answer on gold items, else the others' strict majority, else -1.

    `agreement.leave_one_out_agreement` gives per-annotator totals; fatigue and drift need the
    consensus per record (to split by minutes into the session or by batch), so it is
    recomputed here with the same rule: more than half of the *other* votes on the item.
    """
    is_gold = gold_label[item] >= 0
    counts = np.bincount(
        item[~is_gold].astype(np.int64) * _LABELS + label[~is_gold], minlength=n_items * _LABELS
    ).reshape(n_items, _LABELS)
    others = counts[item]
    others[np.arange(item.size), label] -= 1
    n_others = others.sum(axis=1)
    top = others.max(axis=1)
    consensus = np.where((2 * top > n_others) & (n_others >= 1), others.argmax(axis=1), -1)
    return np.where(is_gold, gold_label[item], consensus).astype(np.int8)


def _iso_weeks(seconds: npt.NDArray[np.float64]) -> tuple[list[str], npt.NDArray[np.int64]]:
    """ISO week ("2026-W45") of each UTC timestamp, as sorted labels and codes."""
    days = np.floor(seconds / 86400.0).astype(np.int64)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    thursday = days - weekday + 3
    year = thursday.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
    jan1 = (year - 1970).astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64)
    week = (thursday - jan1) // 7 + 1
    key = year * 100 + week
    uniq, codes = np.unique(key, return_inverse=True)
    return [f"{k // 100}-W{k % 100:02d}" for k in uniq.tolist()], codes.astype(np.int64)


@dataclass
class _Agreement:
    value: float
    metric: str
    note: str
    cohen_mean: float
    fleiss: float
    alpha: float
    pairs_used: int
    kappa: npt.NDArray[np.float64]
    overlap: npt.NDArray[np.int64]
    matrix: npt.NDArray[np.int8]


def _agreement(
    item: npt.NDArray[Any],
    annotator: npt.NDArray[Any],
    label: npt.NDArray[Any],
    n_items: int,
    n_annotators: int,
    settings: QcSettings,
) -> _Agreement:
    """Overall agreement on a set of records, by the spec's metric (all three kept for context)."""
    nan_matrix = np.full((n_annotators, n_annotators), np.nan)
    empty = _Agreement(
        math.nan, settings.metric, "no records", math.nan, math.nan, math.nan, 0,
        nan_matrix, np.zeros((n_annotators, n_annotators), dtype=np.int64),
        np.full((n_annotators, 0), -1, dtype=np.int8),
    )  # fmt: skip
    if item.size == 0 or n_annotators < 2:
        empty.note = "no records" if item.size == 0 else "fewer than two annotators"
        return empty
    matrix = _label_matrix(item, annotator, label, n_items, n_annotators)
    try:
        pairwise = pairwise_agreement(matrix, missing=-1)
    except AgreementError as exc:
        empty.note = exc.message
        empty.matrix = matrix
        return empty
    kappa, overlap = pairwise.kappa, pairwise.overlap
    upper = np.triu(np.ones_like(overlap, dtype=bool), k=1)
    usable = upper & (overlap >= settings.min_pair_overlap) & np.isfinite(kappa)
    cohen_mean = float(kappa[usable].mean()) if usable.any() else math.nan

    counts = np.bincount(
        _compact(item, n_items)[0] * _LABELS + label, minlength=matrix.shape[1] * _LABELS
    ).reshape(matrix.shape[1], _LABELS)
    raters = counts.sum(axis=1)
    balanced = bool(raters.min() == raters.max()) and int(raters[0]) >= 2
    fleiss = math.nan
    if balanced:
        try:
            fleiss = fleiss_kappa(counts)
        except AgreementError:
            fleiss = math.nan
    try:
        alpha = krippendorff_alpha(matrix, "nominal", missing=-1)
    except AgreementError:
        alpha = math.nan

    note = ""
    metric = settings.metric
    if metric == "cohen_kappa":
        value = cohen_mean
        note = f"mean Cohen's kappa over {int(usable.sum())} annotator pair(s) sharing at least {settings.min_pair_overlap} items"
        if not usable.any():
            note = f"no annotator pair shares {settings.min_pair_overlap} or more items"
    elif metric == "fleiss_kappa" and balanced:
        value = fleiss
        note = f"Fleiss' kappa, {int(raters[0])} raters on every item"
    elif metric == "fleiss_kappa":
        metric = "krippendorff_alpha"
        value = alpha
        note = (
            f"items have {int(raters.min())} to {int(raters.max())} raters; Fleiss' kappa needs the "
            "same number on every item, so Krippendorff's alpha (nominal) is used instead"
        )
    else:
        value = alpha
        note = "Krippendorff's alpha, nominal"
    return _Agreement(
        value, metric, note, cohen_mean, fleiss, alpha, int(usable.sum()), kappa, overlap, matrix
    )


def _band(value: float) -> str | None:
    return landis_koch_band(value) if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------
# The analysis
# ---------------------------------------------------------------------------------------------


def _gold_per_item(table: AnnotationTable, gold: Mapping[str, int]) -> npt.NDArray[np.int8]:
    """Gold label per item code (-1: not a gold item), matched without a loop over items."""
    out = np.full(len(table.items), -1, dtype=np.int8)
    if not gold or not table.items:
        return out
    keys = np.asarray(list(gold.keys()), dtype=str)
    values = np.asarray(list(gold.values()), dtype=np.int8)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    items = np.asarray(table.items, dtype=str)
    pos = np.clip(np.searchsorted(keys, items), 0, keys.size - 1)
    hit = keys[pos] == items
    out[hit] = values[pos[hit]]
    return out


@dataclass
class _Frame:
    """The table's columns plus everything derived per record, computed once."""

    names: list[str]
    n_items: int
    item: npt.NDArray[np.int64]
    ann: npt.NDArray[np.int64]
    canon: npt.NDArray[np.int64]
    choice: npt.NDArray[np.int64]
    gold_item: npt.NDArray[np.int8]  # per item code
    has_key: npt.NDArray[np.bool_]  # record's item has a gold answer
    gold_row: npt.NDArray[np.bool_]  # gold task (answer key or gold flag)
    main: npt.NDArray[np.bool_]  # counts for inter-annotator agreement
    reference: npt.NDArray[np.int8]
    scored: npt.NDArray[np.bool_]  # has a reference label
    match: npt.NDArray[np.bool_]  # agrees with its reference label
    minutes: npt.NDArray[np.float64]  # minutes into the (annotator, session)
    sess_minutes: npt.NDArray[np.float64]  # length of each (annotator, session)
    sess_ann: npt.NDArray[np.int64]

    @property
    def n_ann(self) -> int:
        return len(self.names)

    def count(self, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
        """Records per annotator where `mask` holds."""
        return np.bincount(self.ann[mask], minlength=self.n_ann)

    def agreement(self, mask: npt.NDArray[np.bool_], settings: QcSettings) -> _Agreement:
        return _agreement(
            self.item[mask], self.ann[mask], self.canon[mask], self.n_items, self.n_ann, settings
        )

    def gold_accuracy(self, mask: npt.NDArray[np.bool_]) -> tuple[int, int]:
        """(correct, scored) gold answers among the records in `mask`."""
        sel = mask & self.has_key
        return int((self.canon[sel] == self.gold_item[self.item[sel]]).sum()), int(sel.sum())


def _prepare(table: AnnotationTable, gold: Mapping[str, int]) -> _Frame:
    item = table.item.astype(np.int64)
    ann = table.annotator.astype(np.int64)
    canon = table.canon.astype(np.int64)
    n_items = len(table.items)
    gold_item = _gold_per_item(table, gold)
    has_key = gold_item[item] >= 0
    gold_row = has_key | table.gold.astype(bool)
    reference = _reference_labels(item, canon, gold_item, n_items)
    scored = reference >= 0

    # sessions keyed by (annotator, session), so that a reused session id cannot merge people
    n_codes = max(len(table.sessions), 1)
    keys, sess = np.unique(ann * n_codes + table.session.astype(np.int64), return_inverse=True)
    start = np.full(keys.size, np.inf)
    end = np.full(keys.size, -np.inf)
    np.minimum.at(start, sess, table.started)
    np.maximum.at(end, sess, table.submitted)
    return _Frame(
        names=list(table.annotators),
        n_items=n_items,
        item=item,
        ann=ann,
        canon=canon,
        choice=table.choice.astype(np.int64),
        gold_item=gold_item,
        has_key=has_key,
        gold_row=gold_row,
        main=~gold_row,
        reference=reference,
        scored=scored,
        match=scored & (canon == reference),
        minutes=(table.started - start[sess]) / 60.0,
        sess_minutes=(end - start) / 60.0,
        sess_ann=keys // n_codes,
    )


def _pair_means(overall: _Agreement, min_overlap: int) -> npt.NDArray[np.float64]:
    """Each annotator's mean kappa with the others (pairs with enough overlap only)."""
    n = overall.kappa.shape[0]
    usable = ~np.eye(n, dtype=bool) & (overall.overlap >= min_overlap) & np.isfinite(overall.kappa)
    total = np.where(usable, overall.kappa, 0.0).sum(axis=1)
    count = usable.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _check_annotators(
    frame: _Frame, settings: QcSettings, overall: _Agreement
) -> tuple[list[Finding], dict[str, Any], dict[str, Any]]:
    """Per-annotator checks: consensus, gold accuracy and share, position, sessions, fatigue."""
    findings: list[Finding] = []
    n_ann = frame.n_ann
    everything = np.ones(frame.ann.size, dtype=bool)
    records = frame.count(everything)
    loo: list[Any] = []
    if overall.matrix.shape[1] and n_ann >= 2:
        try:
            loo = leave_one_out_agreement(overall.matrix, missing=-1)
        except AgreementError:
            loo = []
    pair_mean = _pair_means(overall, settings.min_pair_overlap)

    gold_n = frame.count(frame.has_key)
    gold_ok = frame.count(frame.has_key & (frame.canon == frame.gold_item[frame.item]))
    gold_tasks = frame.count(frame.gold_row)
    non_tie = frame.choice < 2
    first_n = frame.count(non_tie)
    first_k = frame.count(non_tie & (frame.choice == 0))
    ties = frame.count(frame.choice == 2)

    late = (frame.minutes >= settings.late_after_minutes).astype(np.int64)
    fat_n = np.bincount(frame.ann[frame.scored] * 2 + late[frame.scored], minlength=2 * n_ann)
    fat_ok = np.bincount(frame.ann[frame.match] * 2 + late[frame.match], minlength=2 * n_ann)
    fat_n, fat_ok = fat_n.reshape(n_ann, 2), fat_ok.reshape(n_ann, 2)

    width = settings.fatigue_bin_minutes
    bins = np.floor(frame.minutes / width).astype(np.int64)
    n_bins = int(bins.max()) + 1 if bins.size else 0
    curve_n = np.bincount(
        frame.ann[frame.scored] * n_bins + bins[frame.scored], minlength=n_ann * n_bins
    ).reshape(n_ann, n_bins)
    curve_ok = np.bincount(
        frame.ann[frame.match] * n_bins + bins[frame.match], minlength=n_ann * n_bins
    ).reshape(n_ann, n_bins)

    metrics: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for a, name in enumerate(frame.names):
        subject = f"annotator {name}"
        # agreement with the leave-one-out consensus of the others
        result = loo[a] if a < len(loo) else None
        c_kappa = result.kappa if result is not None else math.nan
        c_agree = result.agreement if result is not None else math.nan
        c_n = result.n_items if result is not None else 0
        if c_n >= settings.min_pair_overlap and math.isfinite(c_kappa):
            detail = f"(raw agreement {c_agree:.2f} on {c_n} items)"
            if c_kappa < settings.floor:
                findings.append(
                    _finding(
                        "Q007", subject,
                        f"kappa with the others' consensus {c_kappa:.2f} {detail} below the "
                        f"floor {settings.floor:g}",
                        c_kappa, settings.floor,
                    )
                )  # fmt: skip
            elif c_kappa < settings.target:
                findings.append(
                    _finding(
                        "Q008", subject,
                        f"kappa with the others' consensus {c_kappa:.2f} {detail} below the "
                        f"target {settings.target:g}",
                        c_kappa, settings.target,
                    )
                )  # fmt: skip

        # gold accuracy with a Wilson interval, and the share of gold tasks
        g_n, g_ok = int(gold_n[a]), int(gold_ok[a])
        g_acc = _rate(g_ok, g_n)
        g_ci = wilson_interval(g_ok, g_n, settings.confidence) if g_n else (math.nan, math.nan)
        if g_n and g_acc < settings.min_accuracy:
            also = (
                "the whole interval is below it"
                if g_ci[1] < settings.min_accuracy
                else "the interval still reaches it"
            )
            findings.append(
                _finding(
                    "Q003", subject,
                    f"gold accuracy {g_acc:.2f} ({settings.confidence:.0%} CI {g_ci[0]:.2f}-"
                    f"{g_ci[1]:.2f}, {g_ok}/{g_n}) below {settings.min_accuracy:g}; {also}",
                    g_acc, settings.min_accuracy,
                )
            )  # fmt: skip
        share = _rate(int(gold_tasks[a]), int(records[a]))
        low, high = settings.gold_share
        if settings.has_gold and records[a] and not low - 1e-12 <= share <= high + 1e-12:
            findings.append(
                _finding(
                    "Q015", subject,
                    f"gold share {share:.3f} ({int(gold_tasks[a])} of {int(records[a])} tasks) "
                    f"outside {low:g}-{high:g}",
                    share, low if share < low else high,
                )
            )  # fmt: skip

        # position bias: first-shown picks among non-tie answers, exact binomial test vs 0.5
        f_n, f_k = int(first_n[a]), int(first_k[a])
        f_share = _rate(f_k, f_n)
        f_p = binomial_test_two_sided(f_k, f_n, 0.5) if f_n else math.nan
        f_ci = wilson_interval(f_k, f_n, settings.confidence) if f_n else (math.nan, math.nan)
        if f_n and f_share > settings.max_first_share and f_p < settings.significance:
            findings.append(
                _finding(
                    "Q004", subject,
                    f"picks the first-shown response in {f_share:.2f} of {f_n} non-tie answers "
                    f"(binomial p {_p_text(f_p)}), above {settings.max_first_share:g}",
                    f_share, settings.max_first_share,
                )
            )  # fmt: skip

        # sessions longer than the spec allows
        mine = frame.sess_minutes[frame.sess_ann == a]
        over = mine > settings.session_max_minutes
        if over.any():
            findings.append(
                _finding(
                    "Q006", subject,
                    f"{int(over.sum())} of {mine.size} sessions longer than "
                    f"{settings.session_max_minutes:g} minutes (longest {mine.max():.0f})",
                    float(mine.max()), settings.session_max_minutes,
                )
            )  # fmt: skip

        # fatigue: agreement with the reference, early versus late in the session
        e_n, l_n = int(fat_n[a, 0]), int(fat_n[a, 1])
        e_rate, l_rate = _rate(fat_ok[a, 0], e_n), _rate(fat_ok[a, 1], l_n)
        drop = e_rate - l_rate if e_n and l_n else math.nan
        enough = min(e_n, l_n) >= settings.min_fatigue_sample
        if enough and drop > settings.max_drop:
            findings.append(
                _finding(
                    "Q005", subject,
                    f"agreement with the reference drops from {e_rate:.2f} ({e_n} tasks) to "
                    f"{l_rate:.2f} ({l_n} tasks) after {settings.late_after_minutes:g} minutes "
                    f"into a session: {drop:.2f} > {settings.max_drop:g}",
                    drop, settings.max_drop,
                )
            )  # fmt: skip

        curves[name] = [
            {
                "start": b * width,
                "n": int(curve_n[a, b]),
                "agreement": _rate(curve_ok[a, b], curve_n[a, b]),
            }
            for b in np.flatnonzero(curve_n[a]).tolist()
        ]
        metrics[name] = {
            "records": int(records[a]),
            "pairwise_mean_kappa": float(pair_mean[a]) if pair_mean.size else math.nan,
            "consensus": {
                "items": c_n,
                "agreement": c_agree,
                "kappa": c_kappa,
                "band": _band(c_kappa),
            },
            "gold": {
                "tasks": int(gold_tasks[a]),
                "share": share,
                "scored": g_n,
                "correct": g_ok,
                "accuracy": g_acc,
                "ci_low": g_ci[0],
                "ci_high": g_ci[1],
            },
            "position": {
                "non_tie": f_n,
                "first": f_k,
                "first_share": f_share,
                "ci_low": f_ci[0],
                "ci_high": f_ci[1],
                "p_value": f_p,
                "ties": int(ties[a]),
            },
            "fatigue": {
                "early_n": e_n,
                "early_agreement": e_rate,
                "late_n": l_n,
                "late_agreement": l_rate,
                "drop": drop,
                "assessed": enough,
            },
            "sessions": {
                "count": int(mine.size),
                "over_limit": int(over.sum()),
                "max_minutes": float(mine.max()) if mine.size else math.nan,
                "median_minutes": float(np.median(mine)) if mine.size else math.nan,
            },
        }
    return findings, metrics, curves


def _check_votes(
    frame: _Frame, settings: QcSettings, table: AnnotationTable
) -> tuple[list[Finding], dict[str, Any]]:
    """Split votes, coverage, unkeyed gold records and required justifications."""
    findings: list[Finding] = []
    main = frame.main
    counts = np.bincount(
        frame.item[main] * _LABELS + frame.canon[main], minlength=frame.n_items * _LABELS
    ).reshape(frame.n_items, _LABELS)
    votes = counts.sum(axis=1)
    voted = votes >= 2
    split = voted & (2 * counts.max(axis=1) <= votes)
    n_voted, n_split = int(voted.sum()), int(split.sum())
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
        "justification": {
            "required": settings.justification,
            "missing": int(by_annotator.sum()),
            "share_by_annotator": {
                name: _rate(int(frame.count(justified)[a]), int(frame.count(frame.ann >= 0)[a]))
                for a, name in enumerate(frame.names)
            },
        },
    }
    return findings, metrics


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
        out.append(entry)
        value = judged.value
        if not math.isfinite(value):
            if (rows & frame.main & kept).any():
                findings.append(
                    _finding("Q020", subject, f"{judged.metric} undefined: {judged.note}")
                )
        elif value < settings.floor:
            findings.append(
                _finding(
                    "Q009", subject,
                    f"{judged.metric} {value:.3f} below the floor {settings.floor:g}",
                    value, settings.floor,
                )
            )  # fmt: skip
        elif value < settings.target and kept_overall >= settings.target:
            findings.append(
                _finding(
                    "Q010", subject,
                    f"{judged.metric} {value:.3f} below the target {settings.target:g} (all "
                    f"batches together: {kept_overall:.3f})",
                    value, settings.target,
                )
            )  # fmt: skip
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


def _excluding(overall: _Agreement, kept_value: float, excluded: list[str]) -> str:
    if not excluded:
        return ""
    return f"; without {', '.join(excluded)}: {kept_value:.3f} ({_band(kept_value) or 'undefined'})"


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
    names = frame.names

    overall = frame.agreement(frame.main, settings)
    findings, annotators, curves = _check_annotators(frame, settings, overall)
    excluded = sorted(
        {
            f.annotator
            for f in findings
            if f.annotator and f.severity == "error" and QC_CODES[f.code].excludes
        }
    )
    keep = np.ones(len(names), dtype=bool)
    keep[[names.index(a) for a in excluded]] = False
    kept = keep[frame.ann]
    without = frame.agreement(frame.main & kept, settings) if excluded else overall

    # overall agreement gate: on every annotator, as collected (the spec's gate)
    value = overall.value
    if not math.isfinite(value):
        findings.append(_finding("Q020", "overall", f"{overall.metric} undefined: {overall.note}"))
    elif value < settings.floor:
        findings.append(
            _finding(
                "Q001", "overall",
                f"{overall.metric} {value:.3f} ({_band(value)}) below the floor {settings.floor:g}"
                + _excluding(overall, without.value, excluded),
                value, settings.floor,
            )
        )  # fmt: skip
    elif value < settings.target:
        findings.append(
            _finding(
                "Q002", "overall",
                f"{overall.metric} {value:.3f} ({_band(value)}) below the target "
                f"{settings.target:g}" + _excluding(overall, without.value, excluded),
                value, settings.target,
            )
        )  # fmt: skip

    vote_findings, vote_metrics = _check_votes(frame, settings, table)
    version_findings, version_metrics = _check_versions(settings, table)
    batch_findings, batches = _check_batches(frame, settings, table, kept, without.value)
    findings += vote_findings + version_findings + batch_findings
    for where, problems in sorted(inputs.skipped.items()):
        if problems:
            shown = "; ".join(problems[:3]) + (
                f"; ... and {len(problems) - 3} more" if len(problems) > 3 else ""
            )
            subject = "overall" if where == "gold" else f"batch {where}"
            findings.append(
                _finding(
                    "Q017",
                    subject,
                    f"{len(problems)} bad row(s) skipped: {shown}",
                    float(len(problems)),
                )
            )
    findings.sort(key=lambda f: (_SEVERITY_RANK[f.severity], f.code, f.subject))

    has_rows = frame.item.size > 0
    metrics: dict[str, Any] = {
        "overview": {
            "records": int(frame.item.size),
            "gold_records": int(frame.gold_row.sum()),
            "items": int(np.unique(frame.item).size) if has_rows else 0,
            "non_gold_items": vote_metrics["coverage"]["items"],
            "gold_items": int(np.unique(frame.item[frame.has_key]).size) if has_rows else 0,
            "gold_items_in_file": inputs.gold_items or len(gold),
            "annotators": len(names),
            "batches": len(_batch_order(settings, table)),
            "sessions": int(frame.sess_minutes.size),
            "cancelled": int(sum(inputs.cancelled.values())),
            "skipped_rows": int(sum(len(p) for p in inputs.skipped.values())),
            "records_with_reference": int(frame.scored.sum()),
        },
        "agreement": {
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
        },
        "annotators": annotators,
        **vote_metrics,
        "criteria_versions": version_metrics,
        "batches": batches,
        "over_time": _over_time(frame, settings, table.started, kept),
        "fatigue_curve": {
            "bin_minutes": settings.fatigue_bin_minutes,
            "late_after_minutes": settings.late_after_minutes,
            "annotators": curves,
        },
        "thresholds": {
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
        },
        "inputs": [dict(f) for f in inputs.files],
    }
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


def run_qc(project: Project, *, skip_bad_rows: bool = False) -> QcReport:
    """Read every batch and the gold file of a validated project, then `analyse` them.

    Bad rows refuse the whole run (a silently dropped row changes agreement); with
    `skip_bad_rows` they are skipped and reported as Q017 warnings instead.
    """
    spec = project.spec
    ann_spec = spec["annotation"]
    batches = ann_spec["batches"]
    if not batches:
        raise RunError(f"{project.display}: annotation.batches is empty; there is nothing to check")
    records: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    cancelled: dict[str, int] = {}
    skipped: dict[str, list[str]] = {}
    reads = read_batches(batches, project.folder, skip_bad=skip_bad_rows)
    for entry, read in zip(batches, reads, strict=True):
        path = project.path(entry["path"])
        records.extend(read.records)
        cancelled[entry["id"]] = read.cancelled
        if read.problems:
            skipped[entry["id"]] = [str(p) for p in read.problems]
        files.append({"batch": entry["id"], "path": entry["path"], "format": entry["format"],
                      **file_fingerprint(path)})  # fmt: skip

    gold: dict[str, int] = {}
    if "gold" in ann_spec:
        gold_rel = ann_spec["gold"]["path"]
        gold_path = project.path(gold_rel)
        gold, pairs, problems = read_gold(gold_path, display=gold_rel)
        # a gold record must show the same two responses as the answer key, else the key is wrong
        for index, record in enumerate(records):
            pair = pairs.get(record["item_id"])
            if pair is not None and pair != tuple(
                sorted((record["response_a"], record["response_b"]))
            ):
                problems.append(
                    f"{record['batch']}: record {index + 1} (item {record['item_id']}, annotator "
                    f"{record['annotator']}): responses differ from the gold file's {pair[0]}, {pair[1]}"
                )
                record["_drop"] = True
        if problems and not skip_bad_rows:
            raise refusal(f"gold file {gold_rel} refused", problems, SKIP_HINT)
        if problems:
            skipped["gold"] = problems
            records = [r for r in records if not r.pop("_drop", False)]
        files.append(
            {"batch": None, "path": gold_rel, "format": "gold", **file_fingerprint(gold_path)}
        )
    if not records:
        raise RunError(f"{project.display}: the annotation batches hold no records")

    from rlhfspec.runtime.annotation.judge.review import review_judges, split_ai

    records, ai_records = split_ai(records)  # the AI judge is measured against people, apart
    if not records:
        raise RunError(f"{project.display}: the annotation batches hold no human records")
    table = AnnotationTable.from_records(records)
    meta = {
        "name": project.name,
        "spec_file": project.spec_path.name,
        "criteria_version": spec["criteria"]["version"],
        "criteria_sha256": criteria_hash(spec["criteria"]),
        "generator": generator(),
    }
    inputs = QcInputs(
        meta=meta, files=files, cancelled=cancelled, skipped=skipped, gold_items=len(gold)
    )
    settings = QcSettings.from_spec(spec)
    ai_only = {r["batch"] for r in ai_records} - {r["batch"] for r in records}
    settings = replace(settings, batches=tuple(b for b in settings.batches if b[0] not in ai_only))
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
