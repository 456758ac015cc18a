"""Krippendorff's alpha: any number of coders, missing labels, four levels of measurement.

Checked against the ``krippendorff`` package in tests/annotation/test_agreement.py and
benchmarks/bench_agreement.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from rlhfspec.runtime.annotation.agreement.encoding import (
    _LEVELS,
    AgreementError,
    LabelMatrix,
    Labels,
    Level,
    _encode_matrix,
)

# The Krippendorff coincidence matrix is built from a dense units x values count matrix while it
# has at most this many cells (32 MiB of float64); beyond that a sparse path is used.
_DENSE_CELL_LIMIT = 1 << 22


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
    _check_fits(codes, domain, level, value_domain is not None)
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
        coincidences_all = _coincidences(codes, weight, n_values)
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
    x = _positions(level, n_v, domain[used])
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


def _check_fits(
    codes: npt.NDArray[np.int64], domain: npt.NDArray[Any], level: str, ordered: bool
) -> None:
    """Two coders and a unit at least, and values the level can measure."""
    n_coders, n_units = codes.shape
    if n_coders < 2:
        raise AgreementError(f"Krippendorff's alpha needs at least two coders, got {n_coders}")
    if n_units == 0:
        raise AgreementError("Krippendorff's alpha needs at least one unit, got none")
    numeric = domain.dtype.kind in "biuf"
    if level in ("interval", "ratio") and not numeric:
        raise AgreementError(f"level {level!r} needs numeric values, got {domain.dtype} labels")
    if level == "ordinal" and not numeric and not ordered:
        raise AgreementError(
            "ordinal labels that are not numbers need value_domain=[...] giving their order"
        )
    if level in ("interval", "ratio") and not bool(np.all(np.isfinite(domain.astype(np.float64)))):
        raise AgreementError("interval and ratio values must be finite")


def _coincidences(
    codes: npt.NDArray[np.int64], weight: npt.NDArray[np.float64], n_values: int
) -> npt.NDArray[np.float64]:
    """The values x values coincidence matrix, from a dense units x values count matrix."""
    n_units = codes.shape[1]
    # units x values counts in one bincount: unit u, code c -> bin u * (V + 1) + c + 1, so
    # missing cells (c = -1) fall in a column 0 that is dropped
    key = codes + (np.arange(n_units) * (n_values + 1) + 1)
    table = np.bincount(key.ravel(), minlength=n_units * (n_values + 1))
    counts = table.reshape(n_units, n_values + 1)[:, 1:].astype(np.float64)
    # coincidence matrix o = sum_u (n_u n_u^T - diag(n_u)) / (m_u - 1), as matrix products
    coincidences: npt.NDArray[np.float64] = (counts * weight[:, None]).T @ counts
    coincidences[np.diag_indices(n_values)] -= weight @ counts
    return coincidences


def _positions(
    level: str, n_v: npt.NDArray[np.float64], values: npt.NDArray[Any]
) -> npt.NDArray[np.float64]:
    """Where each used value sits for the distance: mid-ranks (ordinal), indices (nominal, where
    only equality matters), or the values themselves (interval, ratio)."""
    if level == "ordinal":
        ranks: npt.NDArray[np.float64] = np.cumsum(n_v) - n_v / 2.0  # delta^2 = (x_c - x_k)^2
        return ranks
    if level == "nominal":
        return np.arange(values.size, dtype=np.float64)
    return values.astype(np.float64)
