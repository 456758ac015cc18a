"""QC's arrays: label matrices, consensus labels, agreement, the per-record frame.

Everything here is vectorised over records and items; the checks in `qc_annotators` and
`qc_batches` read the `_Frame` built once by `_prepare`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from rlhfspec.runtime.annotation.agreement import (
    AgreementError,
    fleiss_kappa,
    krippendorff_alpha,
    landis_koch_band,
    pairwise_agreement,
)
from rlhfspec.runtime.annotation.qc_model import _LABELS, QcSettings
from rlhfspec.runtime.annotation.table import AnnotationTable


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
    seconds: npt.NDArray[np.float64]  # seconds spent on each task
    longer: npt.NDArray[np.int8]  # shown position of the longer response, -1 equal or unknown
    just_words: npt.NDArray[np.int64]  # words in the justification
    just_text: npt.NDArray[np.int64]  # code of the folded justification text

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
        seconds=table.submitted - table.started,
        longer=table.longer.astype(np.int8),
        just_words=table.just_words.astype(np.int64),
        just_text=table.just_text.astype(np.int64),
    )


def _pair_means(overall: _Agreement, min_overlap: int) -> npt.NDArray[np.float64]:
    """Each annotator's mean kappa with the others (pairs with enough overlap only)."""
    n = overall.kappa.shape[0]
    usable = ~np.eye(n, dtype=bool) & (overall.overlap >= min_overlap) & np.isfinite(overall.kappa)
    total = np.where(usable, overall.kappa, 0.0).sum(axis=1)
    count = usable.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
