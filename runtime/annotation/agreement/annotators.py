"""Per-annotator views: pairwise Cohen's kappa, and each annotator against the others' majority.

Pairwise entries equal ``cohen_kappa`` on the items both annotators labelled (tested against
scikit-learn); leave-one-out is checked against a direct loop in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from rlhfspec.runtime.annotation.agreement.encoding import (
    AgreementError,
    LabelMatrix,
    _encode_matrix,
)
from rlhfspec.runtime.annotation.agreement.kappa import _kappa_from_confusion

# Item chunk for the one-hot products in `pairwise_agreement` (elements of the one-hot block).
_ONE_HOT_BLOCK = 1 << 22


class PairwiseAgreement(NamedTuple):
    """Result of `pairwise_agreement`; unpacks as ``kappa, overlap``."""

    kappa: npt.NDArray[np.float64]
    """annotators x annotators Cohen's kappa on shared items; NaN where overlap < 2."""
    overlap: npt.NDArray[np.int64]
    """annotators x annotators number of items both labelled (diagonal: items labelled)."""


def _annotator_codes(
    matrix: LabelMatrix, missing: object, what: str
) -> tuple[npt.NDArray[np.int64], int]:
    codes, domain = _encode_matrix(matrix, "matrix", missing)
    n_annotators, n_items = codes.shape
    if n_annotators < 2:
        raise AgreementError(f"{what} needs at least two annotators, got {n_annotators}")
    if n_items == 0:
        raise AgreementError(f"{what} needs at least one item, got none")
    return codes, int(domain.size)


def pairwise_agreement(matrix: LabelMatrix, *, missing: object = None) -> PairwiseAgreement:
    """Cohen's kappa for every pair of annotators, on the items both of them labelled.

    Why: a low overall alpha does not say *who* disagrees; the pairwise matrix shows an
    annotator whose row is low against everyone. Entry ``[i, j]`` equals
    ``cohen_kappa(matrix[i, both], matrix[j, both])`` where ``both`` are the items labelled by
    both (so a pair that used one identical label on all shared items gets 1.0, as there).

    Args:
        matrix: annotators x items labels, ``None``/NaN (or ``missing``) where not labelled.
        missing: an extra sentinel meaning "not labelled".

    Returns:
        ``PairwiseAgreement(kappa, overlap)``: symmetric matrices; ``kappa`` is NaN where the
        overlap is below 2 items (including all pairs when nothing overlaps).

    Raises:
        AgreementError: not a 2-D matrix, fewer than two annotators or no items.
    """
    codes, k = _annotator_codes(matrix, missing, "pairwise_agreement")
    n_annotators, n_items = codes.shape
    width = n_annotators * k
    gram = np.zeros((width, width), dtype=np.float64)
    if k:
        # one-hot (annotator, category) x item blocks; float32 products of 0/1 summed over at
        # most _ONE_HOT_BLOCK < 2**24 items are exact
        step = max(1, _ONE_HOT_BLOCK // width)
        categories = np.arange(k)[None, :, None]
        for start in range(0, n_items, step):
            block = codes[:, None, start : start + step] == categories
            one_hot = block.reshape(width, -1).astype(np.float32)
            gram += one_hot @ one_hot.T
    confusion = np.rint(gram).astype(np.int64).reshape(n_annotators, k, n_annotators, k)
    confusion = confusion.transpose(0, 2, 1, 3)
    overlap = confusion.sum(axis=(-2, -1))
    kappa = np.where(overlap >= 2, _kappa_from_confusion(confusion), np.nan)
    return PairwiseAgreement(kappa=kappa, overlap=overlap)


@dataclass(frozen=True)
class LeaveOneOutResult:
    """One annotator compared with the majority label of the other annotators."""

    annotator: int
    """Row index of the annotator in the input matrix."""
    n_items: int
    """Items this annotator labelled on which the others had a strict majority."""
    agreement: float
    """Share of those items where the annotator's label equals the majority; NaN if none."""
    kappa: float
    """Cohen's kappa between the annotator and the majority on those items; NaN if < 2."""
    n_skipped: int
    """Items this annotator labelled that had no usable majority (tie or too few others)."""


def leave_one_out_agreement(
    matrix: LabelMatrix, *, min_others: int = 1, missing: object = None
) -> list[LeaveOneOutResult]:
    """Agreement of each annotator with the majority consensus of the *other* annotators.

    Why: leaving the annotator out of the consensus keeps them from agreeing with themselves,
    which matters most with few votes per item; this is the standard screen for careless or
    adversarial annotators.

    Ties: the consensus on an item is the label that *more than half* of the other annotators
    who labelled it gave (a strict majority). Items where the others tie (e.g. 1-1, 2-2) or only
    have a plurality (e.g. 2-1-1), or where fewer than ``min_others`` others labelled it, are
    skipped and counted in ``n_skipped``; they are never broken at random.

    Args:
        matrix: annotators x items labels, ``None``/NaN (or ``missing``) where not labelled.
        min_others: minimum number of other annotators on an item for it to count (1 allows
            designs with two votes per item, where the "majority" is the other vote).
        missing: an extra sentinel meaning "not labelled".

    Returns:
        One `LeaveOneOutResult` per annotator, in row order.

    Raises:
        AgreementError: not a 2-D matrix, fewer than two annotators, no items, or
            ``min_others < 1``.
    """
    if min_others < 1:
        raise AgreementError(f"min_others must be at least 1, got {min_others}")
    codes, k = _annotator_codes(matrix, missing, "leave_one_out_agreement")
    n_annotators, n_items = codes.shape
    present = codes >= 0
    per_item = present.sum(axis=0)
    item = np.broadcast_to(np.arange(n_items), codes.shape)
    totals = np.bincount(item[present] * k + codes[present], minlength=n_items * k)
    totals = totals.reshape(n_items, k)
    results: list[LeaveOneOutResult] = []
    for annotator in range(n_annotators):  # loop over annotators; items are vectorised
        items = np.flatnonzero(present[annotator])
        own = codes[annotator, items]
        others = totals[items].copy()
        others[np.arange(items.size), own] -= 1
        n_others = per_item[items] - 1
        top = others.max(axis=1) if k else np.zeros(items.size, dtype=np.int64)
        has_majority = (2 * top > n_others) & (n_others >= min_others)
        consensus = others.argmax(axis=1)[has_majority] if k else own[has_majority]
        own = own[has_majority]
        n_used = int(own.size)
        agreement = float(np.mean(own == consensus)) if n_used else math.nan
        kappa = math.nan
        if n_used >= 2:
            confusion = np.bincount(own * k + consensus, minlength=k * k).reshape(k, k)
            kappa = float(_kappa_from_confusion(confusion.astype(np.int64)))
        results.append(
            LeaveOneOutResult(
                annotator=annotator,
                n_items=n_used,
                agreement=agreement,
                kappa=kappa,
                n_skipped=int(items.size) - n_used,
            )
        )
    return results
