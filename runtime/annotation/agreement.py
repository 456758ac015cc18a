"""Inter-annotator agreement statistics for annotation quality control.

Preference and label data for RLHF is only as good as the people who produce it, so the
annotation-QC stage measures how far annotators agree beyond what chance alone would give.
Raw percent agreement is misleading when one label dominates (two annotators who both answer
"A" 90 % of the time agree 82 % of the time by chance), so every coefficient here compares the
observed agreement with the agreement expected from the label frequencies.

Which statistic to use:

* `cohen_kappa` -- exactly two raters who labelled the same items. Chance agreement comes from
  each rater's own label distribution, so a rater who over-uses one label is not rewarded for it.
  Used for annotator-vs-annotator and annotator-vs-gold comparisons.
* `fleiss_kappa` -- every item was labelled by the same number of raters (not necessarily the
  same people), summarised as an items x categories count matrix. The usual choice for a fixed
  design such as "every comparison gets 3 votes".
* `krippendorff_alpha` -- any number of coders, missing labels allowed, and nominal, ordinal,
  interval or ratio data. The right choice for real annotation queues, where coverage is uneven
  and labels are often Likert scores rather than categories.
* `pairwise_agreement` -- Cohen's kappa for every pair of annotators on the items both labelled,
  to find the pair (and so the annotator) that disagrees with everyone.
* `leave_one_out_agreement` -- each annotator against the majority of the others, the standard
  screen for a careless or adversarial annotator.
* `cohen_kappa_interval` -- Cohen's kappa with its large-sample confidence interval (Fleiss,
  Cohen & Everitt 1969), for an AI judge against the human majority on a review sample: a
  small sample must not pass an agreement gate by luck.
* `landis_koch_band` -- the verbal bands of Landis & Koch (1977), for reports.
* `wilson_interval` and `binomial_test_two_sided` -- accuracy on gold questions needs a
  confidence interval that behaves near 0 % and 100 % (Wilson's does, the Wald interval does
  not), and position bias ("the annotator picks the left response 70 % of the time") is an exact
  binomial test against p = 0.5.

All values match the reference implementations (scikit-learn's ``cohen_kappa_score``,
statsmodels' ``fleiss_kappa``, the ``krippendorff`` package and ``scipy.stats.binomtest``) to
1e-9; this module needs only numpy and is vectorised so that it stays fast on hundreds of
thousands of items.

Conventions for degenerate input, shared by all functions:

* Invalid input (empty data, mismatched lengths, ragged matrices, fewer than two raters, no
  item labelled by two raters, unknown levels, non-numeric interval data, ...) raises
  `AgreementError`, a `ValueError` whose message says what is wrong. No other exception type
  escapes for bad data.
* When every rating is the same single value, chance agreement is 1 and the chance-corrected
  coefficients are 0/0. Observed agreement is then perfect too, so ``cohen_kappa``,
  ``fleiss_kappa`` and ``krippendorff_alpha`` return ``1.0`` instead of NaN (scikit-learn and
  statsmodels return NaN, the ``krippendorff`` package raises). Such a batch carries no
  information about reliability; a QC report should also look at how many distinct labels were
  used before trusting the 1.0.
* Missing labels are ``None`` or NaN (and, for string arrays, the string ``"nan"``, which is what
  numpy makes of NaN in a list of strings); matrix functions also accept a ``missing=`` sentinel.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "AgreementError",
    "LeaveOneOutResult",
    "Level",
    "PairwiseAgreement",
    "binomial_test_two_sided",
    "category_counts",
    "KappaInterval",
    "cohen_kappa",
    "cohen_kappa_interval",
    "fleiss_kappa",
    "krippendorff_alpha",
    "landis_koch_band",
    "leave_one_out_agreement",
    "pairwise_agreement",
    "wilson_interval",
]

Level = Literal["nominal", "ordinal", "interval", "ratio"]
"""Krippendorff's levels of measurement."""

Labels = npt.ArrayLike | Sequence[object]
"""A 1-D sequence of labels: strings, ints, floats or any hashable values."""

LabelMatrix = npt.ArrayLike | Sequence[Sequence[object]]
"""A 2-D annotators x items (coders x units) matrix of labels, ``None``/NaN where missing."""

_LEVELS: tuple[str, ...] = ("nominal", "ordinal", "interval", "ratio")

# The Krippendorff coincidence matrix is built from a dense units x values count matrix while it
# has at most this many cells (32 MiB of float64); beyond that a sparse path is used.
_DENSE_CELL_LIMIT = 1 << 22
# Item chunk for the one-hot products in `pairwise_agreement` (elements of the one-hot block).
_ONE_HOT_BLOCK = 1 << 22
# Tolerance for floating-point noise at the Landis-Koch band boundaries.
_BAND_TOL = 1e-12


class AgreementError(ValueError):
    """Invalid or degenerate input to an agreement statistic; `message` is written for users."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------------------------
# Input handling: arrays, missing values, label encoding
# ---------------------------------------------------------------------------------------------


def _as_array(data: object, ndim: int, name: str) -> npt.NDArray[Any]:
    """`np.asarray` that reports ragged or wrongly shaped input as an `AgreementError`."""
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise AgreementError(f"{name} must be a rectangular {ndim}-D array ({exc})") from exc
    if arr.ndim != ndim:
        raise AgreementError(
            f"{name} must be {ndim}-dimensional, got an array of shape {arr.shape}"
        )
    if arr.dtype.kind in "mMVc":
        raise AgreementError(f"{name} has unsupported dtype {arr.dtype}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    return arr


def _is_missing_scalar(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return bool(math.isnan(value))
    return False


def _object_equals(arr: npt.NDArray[Any], other: object) -> npt.NDArray[np.bool_]:
    """Element-wise ``arr == other`` for object arrays, robust to odd ``__eq__`` results."""
    try:
        target: Any = other
        found = np.equal(arr, target)
        if isinstance(found, np.ndarray) and found.shape == arr.shape and found.dtype == bool:
            return found
    except (TypeError, ValueError):
        pass

    def _equals(value: object) -> bool:
        try:
            return bool(value == other)
        except (TypeError, ValueError):
            return False

    return np.asarray(np.frompyfunc(_equals, 1, 1)(arr), dtype=np.bool_)


def _missing_mask(arr: npt.NDArray[Any], missing: object) -> npt.NDArray[np.bool_]:
    """True where `arr` holds a missing label (None, NaN, "nan" in string arrays, `missing`)."""
    kind = arr.dtype.kind
    if kind == "f":
        found: object = np.isnan(arr)
    elif kind in "iu":
        found = np.zeros(arr.shape, dtype=bool)
    elif kind == "U":
        found = arr == "nan"
    elif kind == "S":
        found = arr == b"nan"
    else:  # object: None, or anything unequal to itself (NaN)
        try:
            none: Any = None
            found = np.equal(arr, none) | np.not_equal(arr, arr)
        except (TypeError, ValueError):
            found = np.frompyfunc(_is_missing_scalar, 1, 1)(arr)
    mask = np.asarray(found, dtype=np.bool_)
    if missing is None or _is_missing_scalar(missing):
        return mask
    if kind == "O":
        return mask | _object_equals(arr, missing)
    if (kind in "US") == isinstance(missing, str | bytes):
        return mask | np.asarray(arr == missing, dtype=np.bool_)
    return mask  # a numeric sentinel cannot occur in a string array, and vice versa


def _object_domain(values: list[object]) -> npt.NDArray[Any]:
    """Array of distinct values: sorted if they can be ordered, else in order of appearance."""
    try:
        distinct: list[object] = sorted(set(values))  # type: ignore[type-var]
    except TypeError:
        distinct = list(dict.fromkeys(values))
    if all(isinstance(v, str) for v in distinct):
        return np.array(distinct, dtype=str)
    domain = np.empty(len(distinct), dtype=object)
    domain[:] = distinct
    return domain


def _encode_objects(
    values: list[object], domain: object, unknown_ok: bool, name: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
    """Dictionary encoding for object labels (strings mixed with None, or other hashables)."""
    try:
        dom = _object_domain(values) if domain is None else _as_array(domain, 1, name)
        listed = dom.tolist()
        index = {v: i for i, v in enumerate(listed)}
        if len(index) != len(listed):
            raise AgreementError(f"{name} contains duplicate values")
        codes = np.fromiter(
            map(index.get, values, itertools.repeat(-1)), dtype=np.int64, count=len(values)
        )
    except TypeError as exc:
        raise AgreementError(f"labels must be hashable ({exc})") from exc
    return codes, dom


def _encode_numeric(
    values: npt.NDArray[Any], mask: npt.NDArray[np.bool_] | None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]] | None:
    """Fast path for integer-valued numbers in a small range: bincount instead of sorting.

    Works on the whole array (``mask`` marks missing cells, which get code -1) so that no
    compaction or scatter is needed; returns None when the values do not qualify.
    """
    if values.size == 0:
        return None
    has_missing = mask is not None and bool(mask.any())
    is_float = values.dtype.kind == "f"
    if is_float:
        vmin, vmax = np.fmin.reduce(values, axis=None), np.fmax.reduce(values, axis=None)
    else:
        present = values[~mask] if mask is not None and has_missing else values
        if present.size == 0:
            return None
        vmin, vmax = present.min(), present.max()
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
        return None
    span = int(vmax) - int(vmin)
    if float(vmax) - float(vmin) >= (1 << 20) or span >= (1 << 20):
        return None
    # int64 before subtracting: small integer dtypes would overflow
    shifted = values - vmin if is_float else values.astype(np.int64) - int(vmin)
    if mask is not None and has_missing:
        shifted = np.where(mask, -1, shifted)  # missing cells: offset (and code) -1
    offsets = shifted.astype(np.int64)
    if is_float and not np.array_equal(offsets, shifted):
        return None
    marks = np.zeros(span + 2, dtype=bool)
    marks[offsets.ravel()] = True  # offset -1 (missing) lands in the spare last slot
    seen = marks[: span + 1]
    domain = (np.flatnonzero(seen) + vmin).astype(values.dtype)
    if bool(seen.all()):  # every value in the range occurs: the offsets are the codes
        return offsets, domain
    lookup = np.append(np.cumsum(seen) - 1, -1)  # lookup[-1] = -1 keeps missing missing
    return lookup[offsets], domain


def _encode(
    values: npt.NDArray[Any], domain: object = None, unknown_ok: bool = False, name: str = "labels"
) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
    """Codes for a 1-D array of present labels: positions in the sorted distinct values, or in
    ``domain`` when given (-1 for values not in it if ``unknown_ok``, else an error)."""
    if values.dtype.kind == "O":
        listed = values.tolist()
        if listed and all(issubclass(t, numbers.Real) for t in set(map(type, listed))):
            values = values.astype(np.float64)
        else:
            codes, dom = _encode_objects(listed, domain, unknown_ok, name)
            return _check_known(codes, values, unknown_ok, name), dom
    if domain is None:
        fast = _encode_numeric(values, None) if values.dtype.kind in "iuf" else None
        if fast is not None:
            return fast
        try:
            dom = np.unique(values)
            return np.searchsorted(dom, values).astype(np.int64), dom
        except TypeError as exc:
            raise AgreementError(f"labels cannot be compared ({exc})") from exc
    dom = _as_array(domain, 1, name)
    if dom.dtype.kind == "O":
        codes, dom = _encode_objects(values.tolist(), dom, unknown_ok, name)
        return _check_known(codes, values, unknown_ok, name), dom
    try:
        order = np.argsort(dom, kind="stable")
        sorted_dom = dom[order]
        if sorted_dom.size > 1 and bool(np.any(sorted_dom[1:] == sorted_dom[:-1])):
            raise AgreementError(f"{name} contains duplicate values")
        pos = np.clip(np.searchsorted(sorted_dom, values), 0, max(dom.size - 1, 0))
        found = np.asarray(sorted_dom[pos] == values, dtype=bool) if dom.size else None
        if found is None or found.shape != values.shape:
            raise TypeError("incomparable")
        codes = np.where(found, order[pos], -1).astype(np.int64)
    except (TypeError, np.exceptions.DTypePromotionError):
        codes, dom = _encode_objects(values.tolist(), dom, unknown_ok, name)
    return _check_known(codes, values, unknown_ok, name), dom


def _check_known(
    codes: npt.NDArray[np.int64], values: npt.NDArray[Any], unknown_ok: bool, name: str
) -> npt.NDArray[np.int64]:
    if not unknown_ok and codes.size and bool(codes.min() < 0):
        first = values[int(np.argmax(codes < 0))]
        raise AgreementError(f"value {first!r} is not in {name}")
    return codes


def _encode_matrix(
    data: object,
    name: str,
    missing: object = None,
    domain: object = None,
    domain_name: str = "value_domain",
) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
    """2-D labels -> (int64 codes with -1 where missing, domain of the codes)."""
    arr = _as_array(data, 2, name)
    mask = _missing_mask(arr, missing)
    if domain is None and arr.dtype.kind in "iuf":
        fast = _encode_numeric(arr, mask)
        if fast is not None:
            return fast
    present = ~mask
    codes = np.full(arr.shape, -1, dtype=np.int64)
    value_codes, dom = _encode(arr[present], domain, name=domain_name)
    codes[present] = value_codes
    return codes, dom


# ---------------------------------------------------------------------------------------------
# Cohen's kappa
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Fleiss' kappa
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Krippendorff's alpha
# ---------------------------------------------------------------------------------------------


def _pair_distance(
    level: str, x1: npt.NDArray[np.float64], x2: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Squared distance metric delta^2 of Krippendorff for positions x (ordinal: mid-ranks)."""
    if level == "nominal":
        return np.asarray(x1 != x2, dtype=np.float64)
    if level == "ratio":
        total = x1 + x2
        ratio = np.divide(
            x1 - x2, total, out=np.zeros(np.broadcast(x1, x2).shape), where=total != 0
        )
        return ratio * ratio
    diff = x1 - x2  # interval; ordinal on mid-rank positions
    return diff * diff


def _expected_disagreement(
    level: str, n_v: npt.NDArray[np.float64], x: npt.NDArray[np.float64]
) -> float:
    """``sum_{c,k} n_c n_k delta^2(c, k)`` (the expected coincidences times n-1)."""
    n = n_v.sum()
    if level == "nominal":
        return float(n * n - (n_v * n_v).sum())
    if level in ("interval", "ordinal"):
        # sum_{c,k} n_c n_k (x_c - x_k)^2 = 2 n sum_c n_c (x_c - mean)^2 (two-pass, stable)
        mean = (n_v * x).sum() / n
        return float(2.0 * n * (n_v * (x - mean) ** 2).sum())
    total = 0.0  # ratio: no closed form; row blocks keep memory bounded
    step = max(1, _DENSE_CELL_LIMIT // max(1, x.size))
    for start in range(0, x.size, step):
        block = _pair_distance(level, x[start : start + step, None], x[None, :])
        total += float((n_v[start : start + step, None] * block * n_v[None, :]).sum())
    return total


def _observed_sparse(
    level: str,
    unit: npt.NDArray[np.int64],
    code: npt.NDArray[np.int64],
    weight: npt.NDArray[np.float64],
    n_v: npt.NDArray[np.float64],
    x: npt.NDArray[np.float64],
) -> float:
    """``sum(o * delta^2)`` from the pairs of distinct values inside each unit.

    Used instead of the dense coincidence matrix when units x values is too large to hold (many
    distinct interval values); only pairs of *different* values contribute because
    delta^2(c, c) = 0.
    """
    n_values = n_v.size
    keys, multiplicity = np.unique(unit * n_values + code, return_counts=True)
    key_unit, key_code = keys // n_values, keys % n_values
    group_size = np.bincount(key_unit, minlength=weight.size)
    group_start = np.cumsum(group_size) - group_size
    position = np.arange(keys.size) - group_start[key_unit]
    partners = group_size[key_unit] - 1 - position  # later entries of the same unit
    n_pairs = int(partners.sum())
    if n_pairs == 0:
        return 0.0
    left = np.repeat(np.arange(keys.size), partners)
    run_start = np.cumsum(partners) - partners
    right = left + 1 + (np.arange(n_pairs) - np.repeat(run_start, partners))
    contrib = (
        weight[key_unit[left]]
        * multiplicity[left]
        * multiplicity[right]
        * _pair_distance(level, x[key_code[left]], x[key_code[right]])
    )
    return float(2.0 * contrib.sum())


def krippendorff_alpha(
    data: LabelMatrix,
    level: Level = "nominal",
    *,
    value_domain: Labels | None = None,
    missing: object = None,
) -> float:
    """Krippendorff's alpha for coders x units data with missing values.

    Why: alpha works for any number of coders, tolerates missing labels (each unit counts with
    the coders who labelled it) and supports ordinal/interval/ratio distances, so it is the
    agreement statistic for real annotation queues with uneven coverage and Likert-style
    scores. ``alpha = 1 - D_o / D_e`` from the coincidence matrix of pairable values. Equals
    ``krippendorff.alpha(reliability_data=data, level_of_measurement=level)``.

    Args:
        data: coders x units matrix; ``None``/NaN (or ``missing``) where a coder did not label a
            unit. Units with fewer than two values are not pairable and are ignored.
        level: "nominal", "ordinal", "interval" or "ratio". Interval and ratio need numeric
            values; ordinal needs numeric values or an ordered ``value_domain``.
        value_domain: the possible values, in order (needed for ordinal string labels such as
            ``["low", "mid", "high"]``); a value outside it is an error.
        missing: an extra sentinel meaning "not labelled".

    Returns:
        Alpha (1 = perfect agreement, 0 = chance level). If every pairable value is the same,
        D_e = D_o = 0: this returns ``1.0`` where the ``krippendorff`` package raises (one
        value in the whole domain) or returns NaN.

    Raises:
        AgreementError: fewer than two coders, no units, no unit with two or more values
            ("no overlap"), an unknown level, or values that do not fit the level.
    """
    if level not in _LEVELS:
        raise AgreementError(f"level must be one of {', '.join(_LEVELS)}; got {level!r}")
    codes, domain = _encode_matrix(data, "data", missing, value_domain)
    n_coders, n_units = codes.shape
    if n_coders < 2:
        raise AgreementError(f"Krippendorff's alpha needs at least two coders, got {n_coders}")
    if n_units == 0:
        raise AgreementError("Krippendorff's alpha needs at least one unit, got none")
    numeric = domain.dtype.kind in "biuf"
    if level in ("interval", "ratio") and not numeric:
        raise AgreementError(f"level {level!r} needs numeric values, got {domain.dtype} labels")
    if level == "ordinal" and not numeric and value_domain is None:
        raise AgreementError(
            "ordinal labels that are not numbers need value_domain=[...] giving their order"
        )
    if level in ("interval", "ratio") and not bool(np.all(np.isfinite(domain.astype(np.float64)))):
        raise AgreementError("interval and ratio values must be finite")

    n_units, n_values = codes.shape[1], domain.size
    present = codes >= 0
    per_unit = present.sum(axis=0)
    pairable = per_unit >= 2
    if not bool(pairable.any()):
        raise AgreementError(
            "no unit has values from two or more coders, so there is nothing to compare "
            "(the coders' labels do not overlap)"
        )
    # 1 / (m_u - 1) for pairable units, 0 for the others (which so drop out)
    weight = np.divide(1.0, per_unit - 1.0, out=np.zeros(n_units), where=pairable)
    dense = n_units * n_values <= _DENSE_CELL_LIMIT
    if dense:
        # units x values counts in one bincount: unit u, code c -> bin u * (V + 1) + c + 1, so
        # missing cells (c = -1) fall in a column 0 that is dropped
        key = codes + (np.arange(n_units) * (n_values + 1) + 1)
        table = np.bincount(key.ravel(), minlength=n_units * (n_values + 1))
        counts = table.reshape(n_units, n_values + 1)[:, 1:].astype(np.float64)
        # coincidence matrix o = sum_u (n_u n_u^T - diag(n_u)) / (m_u - 1), as matrix products
        coincidences_all = (counts * weight[:, None]).T @ counts
        coincidences_all[np.diag_indices(n_values)] -= weight @ counts
        n_v_all = np.rint(coincidences_all.sum(axis=0))  # pairable values per value (exact)
    else:
        codes = codes[:, pairable]
        weight = weight[pairable]
        present = codes >= 0
        unit = np.broadcast_to(np.arange(codes.shape[1], dtype=np.int64), codes.shape)[present]
        code = codes[present]
        n_v_all = np.bincount(code, minlength=n_values).astype(np.float64)
    used = np.flatnonzero(n_v_all)
    if used.size == 1:
        return 1.0  # one value only: 0/0, defined as perfect agreement (documented)
    n_v = n_v_all[used]
    if level == "ordinal":
        x = np.cumsum(n_v) - n_v / 2.0  # mid-rank positions: delta^2 = (x_c - x_k)^2
    elif level == "nominal":
        x = np.arange(used.size, dtype=np.float64)
    else:
        x = domain[used].astype(np.float64)

    expected = _expected_disagreement(level, n_v, x)
    if expected == 0.0:
        return 1.0  # e.g. ratio data of only c and -c: no distance anywhere, as above
    if dense:
        coincidences = coincidences_all[np.ix_(used, used)]
        observed = float((coincidences * _pair_distance(level, x[:, None], x[None, :])).sum())
    else:
        lookup = np.full(n_values, -1, dtype=np.int64)
        lookup[used] = np.arange(used.size)
        observed = _observed_sparse(level, unit, lookup[code], weight, n_v, x)
    return float(1.0 - (n_v.sum() - 1.0) * observed / expected)


# ---------------------------------------------------------------------------------------------
# Per-annotator views: pairwise kappa, leave-one-out
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Reporting and tests for gold accuracy / position bias
# ---------------------------------------------------------------------------------------------

_BANDS: tuple[tuple[float, str], ...] = (
    (0.20, "slight"),
    (0.40, "fair"),
    (0.60, "moderate"),
    (0.80, "substantial"),
    (1.00, "almost perfect"),
)


def landis_koch_band(kappa: float) -> str:
    """The Landis & Koch (1977) verbal band for a kappa (or alpha) value.

    Why: reviewers of an annotation report read "moderate" faster than 0.47; the bands are the
    conventional ones, not a statistical test. Boundaries as published, upper bounds inclusive:
    < 0 "poor", 0.00-0.20 "slight", 0.21-0.40 "fair", 0.41-0.60 "moderate",
    0.61-0.80 "substantial", 0.81-1.00 "almost perfect" (so 0.20 is "slight" and 0.2001 is
    "fair"). A 1e-12 tolerance absorbs floating-point noise at the boundaries.

    Raises:
        AgreementError: NaN, or a value above 1.
    """
    value = float(kappa)
    if math.isnan(value):
        raise AgreementError("kappa is NaN (undefined); there is no Landis-Koch band for it")
    if value < -_BAND_TOL:
        return "poor"
    for upper, name in _BANDS:
        if value <= upper + _BAND_TOL:
            return name
    raise AgreementError(f"kappa cannot exceed 1, got {value!r}")


def _check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise AgreementError(f"{name} must be an integer, got {value!r}")
    return int(value)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (e.g. accuracy on gold questions).

    Why: unlike the Wald interval it stays inside [0, 1] and keeps its coverage for small n and
    for proportions near 0 or 1, which is exactly where gold accuracy lives. Equals
    ``scipy.stats.binomtest(successes, n).proportion_ci(confidence, method="wilson")``.

    Raises:
        AgreementError: ``n < 1``, ``successes`` outside ``[0, n]``, or ``confidence`` not in
            (0, 1).
    """
    k = _check_count(successes, "successes")
    trials = _check_count(n, "n")
    if trials < 1:
        raise AgreementError(f"n must be at least 1, got {trials}")
    if not 0 <= k <= trials:
        raise AgreementError(f"successes must be between 0 and n={trials}, got {k}")
    if not 0.0 < confidence < 1.0:
        raise AgreementError(f"confidence must be between 0 and 1, got {confidence!r}")
    z = NormalDist().inv_cdf(0.5 + 0.5 * confidence)
    p = k / trials
    denom = 2.0 * (trials + z * z)
    center = (2.0 * trials * p + z * z) / denom
    delta = z / denom * math.sqrt(4.0 * trials * p * (1.0 - p) + z * z)
    low = 0.0 if k == 0 else max(0.0, center - delta)
    high = 1.0 if k == trials else min(1.0, center + delta)
    return low, high


_LN_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# stirlerr(m) = log(m!) - log(sqrt(2 pi m) (m/e)^m) for m = 0..15 (m = 0 is never used).
_STIRLERR_TABLE = np.array(
    [0.0]
    + [math.lgamma(m + 1.0) - (m + 0.5) * math.log(m) + m - _LN_SQRT_2PI for m in range(1, 16)]
)


def _stirlerr(m: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Error of Stirling's formula for log(m!), accurate to full precision (Loader 2000)."""
    small = m <= 15
    big = np.where(small, 16.0, m)
    m2 = big * big
    series = (
        1.0 / 12 - (1.0 / 360 - (1.0 / 1260 - (1.0 / 1680 - 1.0 / 1188 / m2) / m2) / m2) / m2
    ) / big
    return np.where(small, _STIRLERR_TABLE[np.minimum(m, 15).astype(np.int64)], series)


def _bd0(x: npt.NDArray[np.float64], mean: float) -> npt.NDArray[np.float64]:
    """Deviance term ``x log(x/mean) + mean - x`` without cancellation (Loader 2000)."""
    with np.errstate(over="ignore", divide="ignore"):  # tiny means: the pmf underflows to 0
        out = x * np.log(x / mean) + mean - x
    near = np.flatnonzero(np.abs(x - mean) < 0.1 * (x + mean))
    if near.size:
        xn = x[near]
        v = (xn - mean) / (xn + mean)
        series = (xn - mean) * v
        term = 2.0 * xn * v
        v2 = v * v
        for j in range(1, 13):  # |v| < 0.1: term j is below |v|^(2j-1) of the sum
            term = term * v2
            series = series + term / (2 * j + 1)
        out[near] = series
    return out


def _binomial_pmf(n: int, p: float) -> npt.NDArray[np.float64]:
    """P(X = i) for i = 0..n, X ~ Binomial(n, p), to full relative precision (Loader 2000)."""
    pmf = np.zeros(n + 1, dtype=np.float64)
    if p == 0.0:
        pmf[0] = 1.0
        return pmf
    if p == 1.0:
        pmf[n] = 1.0
        return pmf
    q = 1.0 - p
    pmf[0] = math.exp(n * math.log1p(-p))
    pmf[n] = math.exp(n * math.log(p))
    if n >= 2:
        i = np.arange(1, n, dtype=np.float64)
        log_core = (
            _stirlerr(np.array([float(n)]))[0]
            - _stirlerr(i)
            - _stirlerr(n - i)
            - _bd0(i, n * p)
            - _bd0(n - i, n * q)
        )
        log_scale = math.log(2.0 * math.pi) + np.log(i) + np.log1p(-i / n)
        pmf[1:n] = np.exp(log_core - 0.5 * log_scale)
    return pmf


def binomial_test_two_sided(k: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test p-value, as ``scipy.stats.binomtest(k, n, p).pvalue``.

    Why: position bias ("chose the first response in k of n comparisons") and gold accuracy
    against a known rate are counts of successes; the exact test is valid for any n, where the
    normal approximation fails for the small per-annotator counts seen in QC. The p-value sums
    the probabilities of all outcomes no more likely than the observed one (with scipy's
    relative slack of 1e-7 for ties).

    Raises:
        AgreementError: ``n < 1``, ``k`` outside ``[0, n]`` or ``p`` outside ``[0, 1]``.
    """
    successes = _check_count(k, "k")
    trials = _check_count(n, "n")
    if trials < 1:
        raise AgreementError(f"n must be at least 1, got {trials}")
    if not 0 <= successes <= trials:
        raise AgreementError(f"k must be between 0 and n={trials}, got {successes}")
    prob = float(p)
    if not 0.0 <= prob <= 1.0:
        raise AgreementError(f"p must be between 0 and 1, got {p!r}")
    if successes == prob * trials:
        return 1.0
    pmf = _binomial_pmf(trials, prob)
    threshold = pmf[successes] * (1.0 + 1e-7)
    if successes < prob * trials:
        # lower tail: all outcomes <= k; upper tail: outcomes past the mean no more likely
        lower = pmf[: successes + 1].sum()
        tail = pmf[math.ceil(prob * trials) :]
        other = tail[tail <= threshold].sum()
    else:
        lower = pmf[successes:].sum()
        tail = pmf[: math.floor(prob * trials) + 1]
        other = tail[tail <= threshold].sum()
    return float(min(1.0, lower + other))


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
