"""Cohen's kappa (two raters, with its confidence interval) and Fleiss' kappa (n raters).

Checked against scikit-learn's ``cohen_kappa_score`` and statsmodels' ``fleiss_kappa`` and
``cohens_kappa`` in tests/annotation/test_agreement.py and benchmarks/bench_agreement.py.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from rlhfspec.runtime.annotation.agreement.encoding import (
    AgreementError,
    LabelMatrix,
    Labels,
    _as_array,
    _encode,
    _encode_matrix,
    _missing_mask,
)


def _kappa_from_confusion(confusion: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Cohen's kappa of confusion matrices (..., K, K); NaN where empty, 1.0 where degenerate.

    Written as sklearn does, ``1 - sum(off-diagonal observed) / sum(off-diagonal expected)``,
    but in exact integer arithmetic up to the final division:
    ``kappa = 1 - n (n - trace) / (n^2 - sum_k rows_k cols_k)``.
    """
    n = confusion.sum(axis=(-2, -1))
    trace = np.einsum("...kk->...", confusion)
    chance = (confusion.sum(axis=-1) * confusion.sum(axis=-2)).sum(axis=-1)
    numerator = (n - trace) * n
    denominator = n * n - chance
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = 1.0 - numerator.astype(np.float64) / denominator.astype(np.float64)
    kappa = np.where(denominator == 0, 1.0, kappa)
    return np.where(n == 0, np.nan, kappa)


def cohen_kappa(a: Labels, b: Labels, labels: Labels | None = None) -> float:
    """Cohen's (unweighted) kappa between two raters who labelled the same items.

    Why: two raters' raw agreement is inflated by whichever labels both use often; kappa
    subtracts the agreement expected if each rater labelled independently with their own label
    frequencies, ``kappa = (p_o - p_e) / (1 - p_e)``. Equals
    ``sklearn.metrics.cohen_kappa_score(a, b, labels=labels)``.

    Args:
        a, b: the two raters' labels for the same items, in the same order (any hashable values;
            strings, ints and floats are vectorised).
        labels: if given, only items where *both* labels are in ``labels`` are used (as in
            scikit-learn).

    Returns:
        Kappa in [-1, 1]. If both raters used one and the same label for every item, chance
        agreement is 1 and kappa is 0/0: this returns ``1.0`` (observed agreement is perfect
        too) where scikit-learn returns NaN.

    Raises:
        AgreementError: empty input, different lengths, missing labels (None/NaN -- use
            `pairwise_agreement` for data with gaps), or no item left after ``labels``.
    """
    arr_a = _as_array(a, 1, "a")
    arr_b = _as_array(b, 1, "b")
    if arr_a.shape[0] != arr_b.shape[0]:
        raise AgreementError(
            f"a and b must label the same items: got {arr_a.shape[0]} and {arr_b.shape[0]} labels"
        )
    if arr_a.shape[0] == 0:
        raise AgreementError("cohen_kappa needs at least one labelled item; got empty input")
    try:
        both = np.concatenate([arr_a, arr_b])
    except (TypeError, ValueError, np.exceptions.DTypePromotionError):
        both = np.concatenate([arr_a.astype(object), arr_b.astype(object)])
    if bool(_missing_mask(both, None).any()):
        raise AgreementError(
            "cohen_kappa does not accept missing labels (None/NaN); drop those items or use "
            "pairwise_agreement, which uses the items both raters labelled"
        )
    codes, domain = _encode(both, labels, unknown_ok=True, name="labels")
    n_items = arr_a.shape[0]
    code_a, code_b = codes[:n_items], codes[n_items:]
    if labels is not None:
        keep = (code_a >= 0) & (code_b >= 0)
        code_a, code_b = code_a[keep], code_b[keep]
        if code_a.size == 0:
            raise AgreementError("no item has both labels in `labels`")
    k = domain.size
    confusion = np.bincount(code_a * k + code_b, minlength=k * k).reshape(k, k)
    return float(_kappa_from_confusion(confusion.astype(np.int64)))


def category_counts(
    matrix: LabelMatrix, *, categories: Labels | None = None, missing: object = None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
    """Turn an annotators x items label matrix into the items x categories counts of Fleiss.

    Args:
        matrix: annotators x items labels, ``None``/NaN (or ``missing``) where not labelled.
        categories: the category order of the columns; default: sorted distinct labels.
        missing: an extra sentinel meaning "not labelled" (e.g. ``""`` or ``-1``).

    Returns:
        ``(counts, categories)``: ``counts[i, k]`` is how many annotators gave item ``i``
        category ``categories[k]``.

    Raises:
        AgreementError: not a 2-D matrix, or a label not in ``categories``.
    """
    codes, domain = _encode_matrix(matrix, "matrix", missing, categories, "categories")
    n_items = codes.shape[1]
    k = domain.size
    item, code = np.broadcast_to(np.arange(n_items), codes.shape), codes
    present = code >= 0
    counts = np.bincount(item[present] * k + code[present], minlength=n_items * k)
    return counts.reshape(n_items, k).astype(np.int64), domain


def fleiss_kappa(counts: npt.ArrayLike) -> float:
    """Fleiss' kappa for items each rated by the same number of raters.

    Why: with a fixed number ``n`` of votes per item (not necessarily from the same people),
    Fleiss' kappa compares the mean pairwise agreement within items with the agreement expected
    from the overall category proportions. Equals
    ``statsmodels.stats.inter_rater.fleiss_kappa(counts, method="fleiss")``.

    Args:
        counts: items x categories matrix of non-negative integer counts; every row must sum to
            the same number of raters ``n >= 2`` (see `category_counts`).

    Returns:
        Kappa (at most 1; its minimum is ``-1/(n-1)``). If only one category is ever used,
        chance agreement is 1 and kappa is 0/0: this returns ``1.0`` (every item is unanimous)
        where statsmodels returns NaN.

    Raises:
        AgreementError: not a non-empty 2-D matrix of non-negative integers, rows with
            different sums (the message names the first such row), or fewer than 2 raters.
    """
    table = _as_array(counts, 2, "counts")
    if table.size == 0:
        raise AgreementError(
            f"counts must have at least one item and one category, got {table.shape}"
        )
    if table.dtype.kind not in "iuf":
        raise AgreementError(f"counts must be numeric, got dtype {table.dtype}")
    if table.dtype.kind == "f":
        if not bool(np.all(np.isfinite(table))):
            raise AgreementError("counts must be finite")
        if not np.array_equal(table, np.floor(table)):
            raise AgreementError("counts must be whole numbers of raters")
    if bool(table.min() < 0):
        raise AgreementError("counts must be non-negative")
    table = table.astype(np.float64)  # exact for whole counts; lets BLAS do the sums
    row_sums = table @ np.ones(table.shape[1])
    n_raters = row_sums[0]
    bad = np.flatnonzero(row_sums != n_raters)
    if bad.size:
        row = int(bad[0])
        raise AgreementError(
            f"every item must be rated by the same number of raters: row {row} (0-based) sums "
            f"to {row_sums[row]:g} but row 0 sums to {n_raters:g}; use krippendorff_alpha for "
            "items with different numbers of ratings"
        )
    if n_raters < 2:
        raise AgreementError(f"Fleiss' kappa needs at least 2 raters per item, got {n_raters:g}")
    category_totals = np.ones(table.shape[0]) @ table
    if np.count_nonzero(category_totals) == 1:
        return 1.0  # single category used: 0/0, defined as perfect agreement (documented)
    n_raters = float(n_raters)
    p_cat = category_totals / float(category_totals.sum())
    p_item = (np.einsum("ij,ij->i", table, table) - n_raters) / (n_raters * (n_raters - 1.0))
    p_mean = p_item.mean()
    p_exp = (p_cat * p_cat).sum()
    return float((p_mean - p_exp) / (1.0 - p_exp))


class KappaInterval(NamedTuple):
    """Cohen's kappa, its standard error and confidence interval over `n` items."""

    kappa: float
    low: float
    high: float
    se: float
    n: int


def cohen_kappa_interval(a: Labels, b: Labels, confidence: float = 0.95) -> KappaInterval:
    """Cohen's kappa with the Fleiss-Cohen-Everitt (1969) large-sample confidence interval.

    Why: a gate on agreement measured on a review sample of a few hundred pairs must know how
    far the estimate can be off. The variance is the non-null asymptotic one,
    ``var = (A + B - C) / ((1 - p_e)^2 n)`` with ``A = sum_i p_ii (1 - (p_i. + p_.i)(1 - k))^2``,
    ``B = (1 - k)^2 sum_{i != j} p_ij (p_.i + p_j.)^2`` and ``C = (k - p_e (1 - k))^2``; the
    interval is ``k -+ z se``. Equals ``statsmodels.stats.inter_rater.cohens_kappa(table)``'s
    ``kappa``, ``std_kappa``, ``kappa_low`` and ``kappa_upp`` (at ``alpha = 1 - confidence``).

    Raises:
        AgreementError: as `cohen_kappa`, or ``confidence`` not in (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise AgreementError(f"confidence must be between 0 and 1, got {confidence!r}")
    kappa = cohen_kappa(a, b)
    codes, domain = _encode(
        np.concatenate([_as_array(a, 1, "a").astype(object), _as_array(b, 1, "b").astype(object)]),
        None,
        unknown_ok=True,
        name="labels",
    )
    n = codes.size // 2
    k = domain.size
    table = np.bincount(codes[:n] * k + codes[n:], minlength=k * k).reshape(k, k) / n
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    expected = float((rows * cols).sum())
    if expected >= 1.0:  # one label throughout: no spread to estimate
        return KappaInterval(kappa, kappa, kappa, 0.0, n)
    term_a = float((np.diag(table) * (1 - (rows + cols) * (1 - kappa)) ** 2).sum())
    weights = table * (cols[:, None] + rows[None, :]) ** 2
    np.fill_diagonal(weights, 0.0)
    term_b = (1 - kappa) ** 2 * float(weights.sum())
    term_c = (kappa - expected * (1 - kappa)) ** 2
    se = math.sqrt(max(0.0, (term_a + term_b - term_c) / (1 - expected) ** 2 / n))
    z = NormalDist().inv_cdf(0.5 + 0.5 * confidence)
    return KappaInterval(kappa, kappa - z * se, kappa + z * se, se, n)
