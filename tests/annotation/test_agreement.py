"""Agreement statistics: published worked examples, the reference libraries, degenerate input.

The reference libraries (scikit-learn, statsmodels, krippendorff, scipy) are optional: tests
that need one are skipped when it is not installed, everything else still runs.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhfspec.runtime.annotation.agreement import (
    AgreementError,
    LeaveOneOutResult,
    binomial_test_two_sided,
    category_counts,
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha,
    landis_koch_band,
    leave_one_out_agreement,
    pairwise_agreement,
    wilson_interval,
)
from rlhfspec.runtime.annotation.agreement import krippendorff as ag

TOL = 1e-9
LEVELS = ("nominal", "ordinal", "interval", "ratio")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sklearn_kappa() -> Callable[..., float]:
    metrics = pytest.importorskip("sklearn.metrics")
    return metrics.cohen_kappa_score  # type: ignore[no-any-return]


def _statsmodels_fleiss() -> Callable[..., float]:
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    return inter_rater.fleiss_kappa  # type: ignore[no-any-return]


def _krippendorff() -> Any:
    return pytest.importorskip("krippendorff")


def _binomtest() -> Any:
    return pytest.importorskip("scipy.stats").binomtest


def _reference_alpha(data: np.ndarray, level: str) -> float | None:
    """The krippendorff package's alpha, or None where it refuses the data."""
    krippendorff = _krippendorff()
    try:
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore")
            return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))
    except ValueError:
        return None


@pytest.fixture
def sparse_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Force Krippendorff's alpha through the sparse (pairs-within-units) code path."""
    monkeypatch.setattr(ag, "_DENSE_CELL_LIMIT", 0)
    yield


# ---------------------------------------------------------------------------------------------
# Published worked examples
# ---------------------------------------------------------------------------------------------

# Fleiss (1971) as tabulated on Wikipedia ("Fleiss' kappa", worked example): 10 items,
# 5 categories, 14 raters per item; kappa = 0.210.
FLEISS_WIKIPEDIA = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the 4 coders x 12 units
# example with missing data.
NAN = math.nan
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
]
KRIPPENDORFF_2011_ALPHA = {"nominal": 0.743, "ordinal": 0.815, "interval": 0.849, "ratio": 0.797}


def test_fleiss_wikipedia_example() -> None:
    assert round(fleiss_kappa(FLEISS_WIKIPEDIA), 3) == 0.210
    # by hand: P-bar = 0.378, P-e = 0.213 -> (0.378 - 0.213) / (1 - 0.213)
    assert fleiss_kappa(FLEISS_WIKIPEDIA) == pytest.approx(0.20993070442195522, abs=1e-12)


def test_fleiss_wikipedia_matches_statsmodels() -> None:
    reference = _statsmodels_fleiss()
    assert abs(fleiss_kappa(FLEISS_WIKIPEDIA) - reference(FLEISS_WIKIPEDIA)) < TOL


def test_cohen_wikipedia_example() -> None:
    # 50 proposals: 20 both yes, 5 A yes / B no, 10 A no / B yes, 15 both no.
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    # p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5 -> kappa = 0.4
    assert cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)
    assert cohen_kappa(b, a) == pytest.approx(0.4, abs=1e-12)


@pytest.mark.parametrize("level", LEVELS)
def test_krippendorff_2011_example(level: str) -> None:
    assert round(krippendorff_alpha(KRIPPENDORFF_2011, level), 3) == KRIPPENDORFF_2011_ALPHA[level]


@pytest.mark.parametrize("level", LEVELS)
def test_krippendorff_2011_example_matches_package(level: str) -> None:
    reference = _reference_alpha(np.array(KRIPPENDORFF_2011), level)
    assert reference is not None
    assert round(reference, 3) == KRIPPENDORFF_2011_ALPHA[level]  # the numbers quoted above
    assert abs(krippendorff_alpha(KRIPPENDORFF_2011, level) - reference) < TOL


def test_krippendorff_2011_example_with_none_and_strings() -> None:
    names = {1: "very low", 2: "low", 3: "mid", 4: "high", 5: "very high"}
    words = [[None if math.isnan(v) else names[int(v)] for v in row] for row in KRIPPENDORFF_2011]
    order = ["very low", "low", "mid", "high", "very high"]
    assert round(krippendorff_alpha(words, "nominal"), 3) == 0.743
    assert round(krippendorff_alpha(words, "ordinal", value_domain=order), 3) == 0.815
    as_none = [[None if math.isnan(v) else int(v) for v in row] for row in KRIPPENDORFF_2011]
    assert krippendorff_alpha(as_none, "interval") == pytest.approx(
        krippendorff_alpha(KRIPPENDORFF_2011, "interval"), abs=1e-12
    )


def test_krippendorff_package_docstring_example() -> None:
    data = [
        [NAN, NAN, NAN, NAN, NAN, 3, 4, 1, 2, 1, 1, 3, 3, NAN, 3],
        [1, NAN, 2, 1, 3, 3, 4, 3, NAN, NAN, NAN, NAN, NAN, NAN, NAN],
        [NAN, NAN, 2, 1, 3, 4, 4, NAN, 2, 1, 1, 3, 3, NAN, 4],
    ]
    assert round(krippendorff_alpha(data, "nominal"), 6) == 0.691358
    assert round(krippendorff_alpha(data, "interval"), 6) == 0.810845


def test_krippendorff_2011_example_sparse_path(sparse_path: None) -> None:
    for level, expected in KRIPPENDORFF_2011_ALPHA.items():
        assert round(krippendorff_alpha(KRIPPENDORFF_2011, level), 3) == expected


# ---------------------------------------------------------------------------------------------
# Against the reference libraries on random data
# ---------------------------------------------------------------------------------------------


def _rater_pair(seed: int, n: int, k: int, agree: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, k, n)
    b = np.where(rng.random(n) < agree, a, rng.integers(0, k, n))
    return a, b


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 400),
    k=st.integers(1, 6),
    agree=st.floats(0.0, 1.0),
    as_str=st.booleans(),
)
def test_cohen_matches_sklearn(seed: int, n: int, k: int, agree: float, as_str: bool) -> None:
    reference = _sklearn_kappa()
    a, b = _rater_pair(seed, n, k, agree)
    if as_str:
        names = np.array(["A", "B", "tie", "skip", "bad", "x"])
        a, b = names[a], names[b]
    ours = cohen_kappa(a, b)
    if len(set(a.tolist()) | set(b.tolist())) == 1:
        assert ours == 1.0  # sklearn: NaN (0/0); ours: documented 1.0
        return
    assert abs(ours - reference(a, b)) < TOL


@pytest.mark.parametrize(("n", "k"), [(2, 2), (50, 3), (1000, 2), (20000, 5)])
def test_cohen_matches_sklearn_seeded(n: int, k: int) -> None:
    reference = _sklearn_kappa()
    for seed in range(3):
        a, b = _rater_pair(seed, n, k, 0.6)
        if len(set(a.tolist()) | set(b.tolist())) == 1:
            continue
        assert abs(cohen_kappa(a, b) - reference(a, b)) < TOL
        assert abs(cohen_kappa(a.astype(float), b) - reference(a, b)) < TOL


def test_cohen_labels_subset_matches_sklearn() -> None:
    reference = _sklearn_kappa()
    a, b = _rater_pair(7, 300, 4, 0.5)
    for labels in ([0, 1], [0, 2, 3], [3, 1, 0, 2], [0, 1, 2, 3, 9]):
        assert abs(cohen_kappa(a, b, labels=labels) - reference(a, b, labels=labels)) < TOL


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    items=st.integers(1, 60),
    categories=st.integers(1, 6),
    raters=st.integers(2, 9),
)
def test_fleiss_matches_statsmodels(seed: int, items: int, categories: int, raters: int) -> None:
    reference = _statsmodels_fleiss()
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(raters, rng.dirichlet(np.ones(categories)), size=items)
    ours = fleiss_kappa(counts)
    if np.count_nonzero(counts.sum(axis=0)) == 1:
        assert ours == 1.0  # statsmodels: NaN (0/0); ours: documented 1.0
        return
    assert abs(ours - reference(counts, method="fleiss")) < TOL


@pytest.mark.parametrize(("items", "categories", "raters"), [(5000, 3, 5), (300, 7, 12)])
def test_fleiss_matches_statsmodels_seeded(items: int, categories: int, raters: int) -> None:
    reference = _statsmodels_fleiss()
    rng = np.random.default_rng(items)
    counts = rng.multinomial(raters, rng.dirichlet(np.ones(categories)), size=items)
    assert abs(fleiss_kappa(counts) - reference(counts, method="fleiss")) < TOL
    assert abs(fleiss_kappa(counts.astype(float)) - reference(counts, method="fleiss")) < TOL


def _reliability(
    seed: int, coders: int, units: int, values: int, missing: float, continuous: bool = False
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, values + 1, units)
    noise = rng.integers(1, values + 1, (coders, units))
    data = np.where(rng.random((coders, units)) < 0.6, truth, noise).astype(float)
    if continuous:
        data = np.round(data * 7.3 + rng.normal(0, 3, data.shape), 2)
    data[rng.random(data.shape) < missing] = np.nan
    return data


def _check_alpha_against_package(data: np.ndarray) -> None:
    for level in LEVELS:
        reference = _reference_alpha(data, level)
        if reference is None:  # the package refuses: one value in the domain, or no pairs
            with contextlib.suppress(AgreementError):
                assert krippendorff_alpha(data, level) == 1.0
            continue
        ours = krippendorff_alpha(data, level)
        if math.isnan(reference):  # 0/0 in the package: one pairable value
            assert ours == 1.0
        else:
            assert abs(ours - reference) < TOL, level


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    coders=st.integers(2, 6),
    units=st.integers(1, 50),
    values=st.integers(1, 6),
    missing=st.floats(0.0, 0.7),
)
def test_krippendorff_matches_package(
    seed: int, coders: int, units: int, values: int, missing: float
) -> None:
    _check_alpha_against_package(_reliability(seed, coders, units, values, missing))


@pytest.mark.parametrize(
    ("coders", "units", "values", "missing", "continuous"),
    [
        (2, 500, 2, 0.0, False),
        (5, 3000, 3, 0.2, False),
        (8, 400, 7, 0.5, False),
        (3, 40, 5, 0.3, True),  # ~100 distinct values: the package's memory is units x V x V
    ],
)
def test_krippendorff_matches_package_seeded(
    coders: int, units: int, values: int, missing: float, continuous: bool
) -> None:
    for seed in range(2):
        data = _reliability(seed, coders, units, max(values, 5), missing, continuous)
        _check_alpha_against_package(data)


@pytest.mark.parametrize("continuous", [False, True])
def test_krippendorff_sparse_path_matches_package(sparse_path: None, continuous: bool) -> None:
    for seed in range(3):
        units = 40 if continuous else 300
        _check_alpha_against_package(_reliability(seed, 4, units, 5, 0.3, continuous))


# ---------------------------------------------------------------------------------------------
# Per-annotator views
# ---------------------------------------------------------------------------------------------


def _gappy_labels(seed: int, annotators: int, items: int, k: int, missing: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    names = np.array(["A", "B", "tie", "D", "E"][:k], dtype=object)
    truth = rng.integers(0, k, items)
    codes = np.where(
        rng.random((annotators, items)) < 0.6, truth, rng.integers(0, k, (annotators, items))
    )
    matrix = names[codes]
    matrix[rng.random(matrix.shape) < missing] = None
    return matrix


@pytest.mark.parametrize("seed", range(4))
def test_pairwise_matches_cohen_on_overlap(seed: int) -> None:
    matrix = _gappy_labels(seed, 5, 120, 3, 0.4)
    kappa, overlap = pairwise_agreement(matrix)
    assert kappa.shape == overlap.shape == (5, 5)
    for i in range(5):
        for j in range(5):
            both = [t for t in range(120) if matrix[i, t] is not None and matrix[j, t] is not None]
            assert overlap[i, j] == len(both)
            if len(both) < 2:
                assert math.isnan(kappa[i, j])
            else:
                expected = cohen_kappa(list(matrix[i, both]), list(matrix[j, both]))
                assert kappa[i, j] == pytest.approx(expected, abs=1e-12)
    assert np.array_equal(kappa, kappa.T, equal_nan=True)


def test_pairwise_matches_sklearn() -> None:
    reference = _sklearn_kappa()
    matrix = _gappy_labels(11, 4, 400, 4, 0.3)
    kappa, _ = pairwise_agreement(matrix)
    for i in range(4):
        for j in range(i + 1, 4):
            both = np.array(
                [x is not None and y is not None for x, y in zip(matrix[i], matrix[j], strict=True)]
            )
            expected = reference(matrix[i, both].astype(str), matrix[j, both].astype(str))
            assert abs(kappa[i, j] - expected) < TOL


def test_pairwise_sentinel_and_no_overlap() -> None:
    matrix = np.array([[0, 1, -1, -1], [-1, -1, 1, 0]])
    kappa, overlap = pairwise_agreement(matrix, missing=-1)
    assert overlap.tolist() == [[2, 0], [0, 2]]
    assert math.isnan(kappa[0, 1]) and math.isnan(kappa[1, 0])
    assert kappa[0, 0] == 1.0
    everything_missing = pairwise_agreement([[None, None], [None, None]])
    assert np.isnan(everything_missing.kappa).all()
    assert not everything_missing.overlap.any()


def _brute_leave_one_out(
    matrix: np.ndarray, min_others: int
) -> list[tuple[int, int, float, float]]:
    out = []
    for a in range(matrix.shape[0]):
        own, consensus, skipped = [], [], 0
        for t in range(matrix.shape[1]):
            if matrix[a, t] is None:
                continue
            others = [
                matrix[b, t] for b in range(matrix.shape[0]) if b != a and matrix[b, t] is not None
            ]
            top = max((others.count(v), v) for v in set(others)) if others else (0, None)
            if len(others) >= min_others and 2 * top[0] > len(others):
                own.append(matrix[a, t])
                consensus.append(top[1])
            else:
                skipped += 1
        rate = (
            float(np.mean([x == y for x, y in zip(own, consensus, strict=True)]))
            if own
            else math.nan
        )
        kappa = cohen_kappa(own, consensus) if len(own) >= 2 else math.nan
        out.append((len(own), skipped, rate, kappa))
    return out


@pytest.mark.parametrize(("seed", "min_others"), [(0, 1), (1, 1), (2, 2), (3, 3)])
def test_leave_one_out_matches_brute_force(seed: int, min_others: int) -> None:
    matrix = _gappy_labels(seed, 5, 150, 3, 0.35)
    results = leave_one_out_agreement(matrix, min_others=min_others)
    assert [r.annotator for r in results] == list(range(5))
    for result, (n_items, skipped, rate, kappa) in zip(
        results, _brute_leave_one_out(matrix, min_others), strict=True
    ):
        assert isinstance(result, LeaveOneOutResult)
        assert (result.n_items, result.n_skipped) == (n_items, skipped)
        assert result.agreement == pytest.approx(rate, abs=1e-12, nan_ok=True)
        assert result.kappa == pytest.approx(kappa, abs=1e-12, nan_ok=True)


def test_leave_one_out_ties_are_skipped() -> None:
    # item 0: others of annotator 0 split 1-1 (tie) -> skipped; item 1: others agree on "B".
    matrix = [["A", "A"], ["A", "B"], ["B", "B"]]
    first = leave_one_out_agreement(matrix)[0]
    assert (first.n_items, first.n_skipped, first.agreement) == (1, 1, 0.0)
    assert math.isnan(first.kappa)  # fewer than 2 items
    # a plurality that is not a majority (2-1-1 among four others) is skipped too
    plurality = [["A"], ["A"], ["A"], ["B"], ["tie"]]
    assert leave_one_out_agreement(plurality)[0].n_skipped == 1


def test_category_counts() -> None:
    counts, cats = category_counts([["A", "B", None], ["A", "tie", "B"]])
    assert cats.tolist() == ["A", "B", "tie"]
    assert counts.tolist() == [[2, 0, 0], [0, 1, 1], [0, 1, 0]]
    counts, cats = category_counts([["A", ""], ["B", "A"]], categories=["B", "A"], missing="")
    assert counts.tolist() == [[1, 1], [0, 1]]


# ---------------------------------------------------------------------------------------------
# Degenerate input: a defined value or AgreementError, never another exception
# ---------------------------------------------------------------------------------------------


def test_single_category_conventions() -> None:
    assert cohen_kappa(["A"] * 5, ["A"] * 5) == 1.0
    assert cohen_kappa(["A"] * 5, ["B"] * 5) == 0.0  # defined: p_o = p_e = 0
    assert fleiss_kappa([[3, 0], [3, 0]]) == 1.0
    assert fleiss_kappa([[4], [4], [4]]) == 1.0
    assert krippendorff_alpha([[1, 1, 1], [1, 1, 1]]) == 1.0
    for level in LEVELS:
        assert krippendorff_alpha([[2, 2, None], [2, 2, 5]], level) == 1.0  # 5 is not pairable
    kappa, _ = pairwise_agreement([["A", "A"], ["A", "A"]])
    assert (kappa == 1.0).all()


@pytest.mark.parametrize(
    ("function", "args", "fragment"),
    [
        (cohen_kappa, ([], []), "at least one"),
        (cohen_kappa, ([1, 2], [1]), "same items"),
        (cohen_kappa, ([1, None], [1, 2]), "missing"),
        (cohen_kappa, ([1, math.nan], [1, 2]), "missing"),
        (cohen_kappa, ([[1]], [[1]]), "1-dimensional"),
        (cohen_kappa, ([{}, {}], [{}, {}]), "hashable"),
        (cohen_kappa, ([1, 2], [1, 2], [7]), "labels"),
        (fleiss_kappa, ([[1, 2], [2, 2]],), "row 1"),
        (fleiss_kappa, ([[3, 0], [3, 0], [2, 2]],), "row 2"),
        (fleiss_kappa, ([[1], [1]],), "at least 2"),
        (fleiss_kappa, ([[-1, 3], [1, 1]],), "non-negative"),
        (fleiss_kappa, ([[0.5, 1.5], [1, 1]],), "whole"),
        (fleiss_kappa, ([[]],), "at least one"),
        (fleiss_kappa, ([["a", "b"]],), "numeric"),
        (fleiss_kappa, ([1, 2],), "2-dimensional"),
        (krippendorff_alpha, ([[1, None], [None, 2]],), "overlap"),
        (krippendorff_alpha, ([[1, 2, 3]],), "two coders"),
        (krippendorff_alpha, ([[], []],), "at least one unit"),
        (krippendorff_alpha, ([],), "2-dimensional"),
        (krippendorff_alpha, ([[1, 2], [1]],), "rectangular"),
        (krippendorff_alpha, ([[1, 2], [1, 2]], "cardinal"), "level"),
        (krippendorff_alpha, ([["a", "b"], ["a", "c"]], "interval"), "numeric"),
        (krippendorff_alpha, ([["a", "b"], ["a", "c"]], "ordinal"), "value_domain"),
        (krippendorff_alpha, ([[1, math.inf], [1, 2]], "interval"), "finite"),
        (pairwise_agreement, ([[1, 2]],), "two annotators"),
        (pairwise_agreement, ([[], []],), "at least one item"),
        (leave_one_out_agreement, ([["A", "B"]],), "two annotators"),
        (landis_koch_band, (math.nan,), "NaN"),
        (landis_koch_band, (1.2,), "exceed 1"),
        (wilson_interval, (3, 2), "between 0 and n"),
        (wilson_interval, (0, 0), "at least 1"),
        (wilson_interval, (1, 2, 1.5), "confidence"),
        (wilson_interval, (1.5, 2), "integer"),
        (binomial_test_two_sided, (1, 0), "at least 1"),
        (binomial_test_two_sided, (3, 2), "between 0 and n"),
        (binomial_test_two_sided, (1, 2, 1.5), "between 0 and 1"),
    ],
)
def test_invalid_input_raises_agreement_error(
    function: Callable[..., object], args: tuple[object, ...], fragment: str
) -> None:
    with pytest.raises(AgreementError) as info:
        function(*args)
    assert fragment in info.value.message
    assert isinstance(info.value, ValueError)


def test_krippendorff_value_domain() -> None:
    data = [["low", "mid", None], ["low", "high", "mid"]]
    with pytest.raises(AgreementError, match="not in value_domain"):
        krippendorff_alpha(data, "ordinal", value_domain=["low", "mid"])
    with pytest.raises(AgreementError, match="duplicate"):
        krippendorff_alpha(data, "ordinal", value_domain=["low", "mid", "mid", "high"])
    value = krippendorff_alpha(data, "ordinal", value_domain=["low", "mid", "high"])
    numeric = krippendorff_alpha([[1, 2, None], [1, 3, 2]], "ordinal")
    assert value == pytest.approx(numeric, abs=1e-12)


MESSY = st.one_of(
    st.none(),
    st.just(math.nan),
    st.integers(-3, 3),
    st.sampled_from([0.5, 1.0, 2.0, math.inf]),
    st.sampled_from(["A", "B", "tie", "", "nan"]),
)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(0, 4),
    cols=st.integers(0, 5),
    cells=st.lists(MESSY, min_size=20, max_size=20),
    level=st.sampled_from(LEVELS),
)
def test_messy_matrices_never_raise_other_errors(
    rows: int, cols: int, cells: list[object], level: str
) -> None:
    matrix = [[cells[(r * cols + c) % 20] for c in range(cols)] for r in range(rows)]
    checks: list[Callable[[], object]] = [
        lambda: krippendorff_alpha(matrix, level),
        lambda: pairwise_agreement(matrix),
        lambda: leave_one_out_agreement(matrix),
        lambda: category_counts(matrix),
        lambda: cohen_kappa(matrix[0] if matrix else [], matrix[-1] if matrix else []),
        lambda: fleiss_kappa(category_counts(matrix)[0]),
    ]
    for check in checks:
        try:
            result = check()
        except AgreementError:
            continue
        if isinstance(result, float):
            assert result <= 1.0 + 1e-12 or math.isnan(result)


# ---------------------------------------------------------------------------------------------
# Landis-Koch bands, Wilson interval, binomial test
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kappa", "band"),
    [
        (-1.0, "poor"),
        (-0.01, "poor"),
        (-1e-15, "slight"),  # floating-point noise around 0
        (0.0, "slight"),
        (0.2, "slight"),
        (0.1 + 0.1, "slight"),
        (0.7 - 0.5, "slight"),
        (0.2001, "fair"),
        (0.21, "fair"),
        (0.4, "fair"),
        (0.41, "moderate"),
        (0.6, "moderate"),
        (0.61, "substantial"),
        (0.8, "substantial"),
        (0.81, "almost perfect"),
        (1.0, "almost perfect"),
    ],
)
def test_landis_koch_bands(kappa: float, band: str) -> None:
    assert landis_koch_band(kappa) == band


def test_wilson_interval_by_hand() -> None:
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    # z = 1.959964; centre = (0.8 + z^2/20) / (1 + z^2/10); half-width by the same formula
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z / (1 + z * z / 10) * math.sqrt(0.8 * 0.2 / 10 + z * z / 400)
    assert low == pytest.approx(centre - half, abs=1e-12)
    assert high == pytest.approx(centre + half, abs=1e-12)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0


def test_wilson_interval_matches_scipy() -> None:
    binomtest = _binomtest()
    for n in (1, 2, 7, 30, 250):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for confidence in (0.8, 0.95, 0.99):
                ref = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
                low, high = wilson_interval(k, n, confidence)
                assert abs(low - ref.low) < TOL and abs(high - ref.high) < TOL


def test_binomial_test_matches_scipy_grid() -> None:
    binomtest = _binomtest()
    for n in (1, 2, 5, 17, 60, 301):
        for p in (0.0, 0.03, 0.25, 0.5, 0.6, 0.97, 1.0):
            for k in range(0, n + 1, max(1, n // 23)):
                assert abs(binomial_test_two_sided(k, n, p) - binomtest(k, n, p).pvalue) < TOL


@FAST
@given(
    n=st.integers(1, 5000),
    data=st.data(),
    p=st.one_of(st.floats(1e-6, 1 - 1e-6), st.sampled_from([0.0, 0.5, 1.0])),
)
def test_binomial_test_matches_scipy_random(n: int, data: st.DataObject, p: float) -> None:
    binomtest = _binomtest()
    k = data.draw(st.integers(0, n))
    ours = binomial_test_two_sided(k, n, p)
    reference = binomtest(k, n, p).pvalue
    assert abs(ours - reference) < TOL
    if reference > 1e-300:
        assert abs(ours - reference) <= 1e-9 * reference + 1e-15


def test_binomial_test_known_values() -> None:
    assert binomial_test_two_sided(5, 10) == 1.0
    # P(X <= 1) + P(X >= 9) for Binomial(10, 1/2) = 22 / 1024
    assert binomial_test_two_sided(1, 10) == pytest.approx(22 / 1024, abs=1e-15)
    assert binomial_test_two_sided(0, 5, 0.0) == 1.0
    assert binomial_test_two_sided(1, 5, 0.0) == 0.0


# ---------------------------------------------------------------------------------------------
# Packaging
# ---------------------------------------------------------------------------------------------


def test_module_imports_only_numpy() -> None:
    code = (
        "import sys; import rlhfspec.runtime.annotation.agreement; "
        "bad = [m for m in ('torch', 'sklearn', 'statsmodels', 'scipy', 'krippendorff') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
