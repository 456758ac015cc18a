"""Benchmark `rlhfspec.runtime.annotation.agreement` against the reference implementations.

Usage::

    python benchmarks/bench_agreement.py [--items 200000] [--annotators 5] [--repeats 5]

Generates seeded preference labels ("A", "B", "tie") for ``--items`` items from ``--annotators``
annotators, then times each statistic of ours against scikit-learn, statsmodels and the
``krippendorff`` package on the same data (best of ``--repeats`` runs, ours and the
reference interleaved so both see the same machine load) and prints, per statistic: our
seconds, the reference's seconds, the speed ratio (reference time / our time; the goal is
>= 1.0) and the largest absolute difference between the two values.

Rows: Cohen's kappa between the first two annotators (string labels); Fleiss' kappa from a
ready count matrix, and from the label matrix (ours: `category_counts`, statsmodels:
`aggregate_raters`); Krippendorff's alpha on complete data and with ``--missing`` labels
missing (A/tie/B coded 0/1/2 for the ordinal/interval/ratio rows); and the pairwise kappa
matrix on the data with gaps, against scikit-learn called once per annotator pair.

A reference library that is not installed is reported as "n/a".
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlhfspec.runtime.annotation import agreement

LABELS = np.array(["A", "B", "tie"])
# Ordinal/interval coding used for the Krippendorff rows: A < tie < B.
SCALE = {"A": 0.0, "tie": 1.0, "B": 2.0}


@dataclass
class Row:
    statistic: str
    ours_s: float
    ref_s: float
    diff: float


def best_of(
    ours: Callable[[], Any], ref: Callable[[], Any] | None, repeats: int
) -> tuple[float, Any, float, Any]:
    """Best wall time and last value of each function, the two calls interleaved so that both
    see the same machine load."""
    best = [float("inf"), float("inf")]
    values: list[Any] = [None, None]
    for _ in range(repeats):
        for slot, fn in enumerate((ours, ref)):
            if fn is None:
                continue
            start = time.perf_counter()
            values[slot] = fn()
            best[slot] = min(best[slot], time.perf_counter() - start)
    return best[0], values[0], best[1], values[1]


def make_data(items: int, annotators: int, seed: int) -> np.ndarray:
    """annotators x items labels: each annotator copies a latent label with probability 0.7."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(3, size=items, p=[0.45, 0.40, 0.15])
    noise = rng.choice(3, size=(annotators, items))
    codes = np.where(rng.random((annotators, items)) < 0.7, truth, noise)
    return LABELS[codes]


def optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--annotators", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--missing", type=float, default=0.2, help="share of missing labels")
    parser.add_argument("--seed", type=int, default=20240607)
    args = parser.parse_args(argv)

    labels = make_data(args.items, args.annotators, args.seed)  # annotators x items, str
    numeric = np.vectorize(SCALE.__getitem__, otypes=[float])(labels)
    rng = np.random.default_rng(args.seed + 1)
    gappy = numeric.copy()
    gappy[rng.random(gappy.shape) < args.missing] = np.nan
    gappy_labels = labels.astype(object)  # None where missing, as annotation exports have it
    gappy_labels[np.isnan(gappy)] = None
    counts, _ = agreement.category_counts(labels)

    sklearn_metrics = optional("sklearn.metrics")
    inter_rater = optional("statsmodels.stats.inter_rater")
    krippendorff = optional("krippendorff")

    cases: list[tuple[str, Callable[[], float], Callable[[], float] | None]] = []
    rater_a, rater_b = labels[0], labels[1]
    cases.append(
        (
            f"cohen_kappa ({args.items} str labels)",
            lambda: agreement.cohen_kappa(rater_a, rater_b),
            (lambda: sklearn_metrics.cohen_kappa_score(rater_a, rater_b))
            if sklearn_metrics
            else None,
        )
    )
    cases.append(
        (
            "fleiss_kappa (counts)",
            lambda: agreement.fleiss_kappa(counts),
            (lambda: inter_rater.fleiss_kappa(counts, method="fleiss")) if inter_rater else None,
        )
    )
    cases.append(
        (
            "fleiss_kappa (from labels)",
            lambda: agreement.fleiss_kappa(agreement.category_counts(labels)[0]),
            (
                lambda: inter_rater.fleiss_kappa(
                    inter_rater.aggregate_raters(labels.T)[0], method="fleiss"
                )
            )
            if inter_rater
            else None,
        )
    )

    def alpha_case(
        level: agreement.Level, data: np.ndarray, note: str
    ) -> tuple[str, Callable[[], float], Callable[[], float] | None]:
        def ours() -> float:
            return float(agreement.krippendorff_alpha(data, level))

        def reference() -> float:
            return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))

        return f"krippendorff_alpha {level} ({note})", ours, reference if krippendorff else None

    gaps = f"{args.missing:.0%} missing"
    cases.append(alpha_case("nominal", numeric, "complete"))
    levels: tuple[agreement.Level, ...] = ("nominal", "ordinal", "interval", "ratio")
    for level in levels:
        cases.append(alpha_case(level, gappy, gaps))

    def sklearn_pairwise() -> float:
        worst = -np.inf
        for i in range(args.annotators):
            for j in range(i + 1, args.annotators):
                both = ~np.isnan(gappy[i]) & ~np.isnan(gappy[j])
                value = sklearn_metrics.cohen_kappa_score(labels[i, both], labels[j, both])
                worst = max(worst, value)
        return float(worst)

    def ours_pairwise() -> float:
        kappa = agreement.pairwise_agreement(gappy_labels).kappa
        return float(np.nanmax(np.where(np.eye(args.annotators, dtype=bool), np.nan, kappa)))

    cases.append(
        (
            f"pairwise_agreement (max of {args.annotators * (args.annotators - 1) // 2} pairs)",
            ours_pairwise,
            sklearn_pairwise if sklearn_metrics else None,
        )
    )

    print(
        f"items={args.items} annotators={args.annotators} categories=A/B/tie "
        f"repeats={args.repeats} (best of) missing={args.missing:.0%} seed={args.seed}"
    )
    header = f"{'statistic':<48} {'ours s':>9} {'ref s':>9} {'ratio':>8} {'max |diff|':>11}"
    print(header)
    print("-" * len(header))
    for name, ours, ref in cases:
        ours_s, ours_value, ref_s, ref_value = best_of(ours, ref, args.repeats)
        if ref is None:
            print(f"{name:<48} {ours_s:>9.4f} {'n/a':>9} {'n/a':>8} {'n/a':>11}")
            continue
        diff = abs(float(ours_value) - float(ref_value))
        print(f"{name:<48} {ours_s:>9.4f} {ref_s:>9.4f} {ref_s / ours_s:>7.1f}x {diff:>11.2e}")


if __name__ == "__main__":
    main()
