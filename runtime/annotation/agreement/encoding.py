"""Input handling shared by every agreement statistic: arrays, missing values, label codes.

Each statistic turns its labels into int64 codes (positions in the sorted distinct values, or
in a given domain; -1 where missing) before counting, so strings, ints, floats and any other
hashable labels go through the same vectorised counting code.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Level = Literal["nominal", "ordinal", "interval", "ratio"]
"""Krippendorff's levels of measurement."""

Labels = npt.ArrayLike | Sequence[object]
"""A 1-D sequence of labels: strings, ints, floats or any hashable values."""

LabelMatrix = npt.ArrayLike | Sequence[Sequence[object]]
"""A 2-D annotators x items (coders x units) matrix of labels, ``None``/NaN where missing."""

_LEVELS: tuple[str, ...] = ("nominal", "ordinal", "interval", "ratio")


class AgreementError(ValueError):
    """Invalid or degenerate input to an agreement statistic; `message` is written for users."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
