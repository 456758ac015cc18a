"""Per-annotator QC checks, one function per check family.

Each check looks at every annotator at once (vectorised counts, then a short loop over
annotators to word the findings) and returns its findings plus a metrics fragment per
annotator; `check_annotators` merges the fragments into the report's `annotators` block.
The families: agreement with the others' consensus, gold accuracy and gold share, position
bias, sessions over the limit, fatigue, and the gaming and care checks (preference for the
longer response, speed, empty or boilerplate justifications).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from rlhfspec.common.findings import Finding
from rlhfspec.runtime.annotation.agreement import (
    AgreementError,
    binomial_test_two_sided,
    leave_one_out_agreement,
    wilson_interval,
)
from rlhfspec.runtime.annotation.qc_frame import _Agreement, _band, _Frame, _pair_means
from rlhfspec.runtime.annotation.qc_model import QcSettings, _finding, _p_text, _rate

Part = tuple[list[Finding], dict[str, dict[str, Any]]]


def _subject(name: str) -> str:
    return f"annotator {name}"


def check_consensus(frame: _Frame, settings: QcSettings, overall: _Agreement) -> Part:
    """Q007/Q008: each annotator's kappa with the leave-one-out consensus of the others."""
    findings: list[Finding] = []
    loo: list[Any] = []
    if overall.matrix.shape[1] and frame.n_ann >= 2:
        try:
            loo = leave_one_out_agreement(overall.matrix, missing=-1)
        except AgreementError:
            loo = []
    pair_mean = _pair_means(overall, settings.min_pair_overlap)
    metrics: dict[str, dict[str, Any]] = {}
    for a, name in enumerate(frame.names):
        result = loo[a] if a < len(loo) else None
        kappa = result.kappa if result is not None else math.nan
        agree = result.agreement if result is not None else math.nan
        n = result.n_items if result is not None else 0
        if n >= settings.min_pair_overlap and math.isfinite(kappa):
            detail = f"(raw agreement {agree:.2f} on {n} items)"
            for code, limit, word in (
                ("Q007", settings.floor, "floor"),
                ("Q008", settings.target, "target"),
            ):
                if kappa < limit:
                    findings.append(
                        _finding(
                            code, _subject(name),
                            f"kappa with the others' consensus {kappa:.2f} {detail} below the "
                            f"{word} {limit:g}",
                            kappa, limit,
                        )
                    )  # fmt: skip
                    break
        metrics[name] = {
            "pairwise_mean_kappa": float(pair_mean[a]) if pair_mean.size else math.nan,
            "consensus": {"items": n, "agreement": agree, "kappa": kappa, "band": _band(kappa)},
        }
    return findings, metrics


def check_gold(frame: _Frame, settings: QcSettings) -> Part:
    """Q003 gold accuracy (with a Wilson interval) and Q015 the share of gold tasks."""
    findings: list[Finding] = []
    records = frame.count(np.ones(frame.ann.size, dtype=bool))
    gold_n = frame.count(frame.has_key)
    gold_ok = frame.count(frame.has_key & (frame.canon == frame.gold_item[frame.item]))
    gold_tasks = frame.count(frame.gold_row)
    low, high = settings.gold_share
    metrics: dict[str, dict[str, Any]] = {}
    for a, name in enumerate(frame.names):
        n, ok = int(gold_n[a]), int(gold_ok[a])
        acc = _rate(ok, n)
        ci = wilson_interval(ok, n, settings.confidence) if n else (math.nan, math.nan)
        if n and acc < settings.min_accuracy:
            also = (
                "the whole interval is below it"
                if ci[1] < settings.min_accuracy
                else "the interval still reaches it"
            )
            findings.append(
                _finding(
                    "Q003", _subject(name),
                    f"gold accuracy {acc:.2f} ({settings.confidence:.0%} CI {ci[0]:.2f}-"
                    f"{ci[1]:.2f}, {ok}/{n}) below {settings.min_accuracy:g}; {also}",
                    acc, settings.min_accuracy,
                )
            )  # fmt: skip
        share = _rate(int(gold_tasks[a]), int(records[a]))
        if settings.has_gold and records[a] and not low - 1e-12 <= share <= high + 1e-12:
            findings.append(
                _finding(
                    "Q015", _subject(name),
                    f"gold share {share:.3f} ({int(gold_tasks[a])} of {int(records[a])} tasks) "
                    f"outside {low:g}-{high:g}",
                    share, low if share < low else high,
                )
            )  # fmt: skip
        metrics[name] = {
            "records": int(records[a]),
            "gold": {
                "tasks": int(gold_tasks[a]),
                "share": share,
                "scored": n,
                "correct": ok,
                "accuracy": acc,
                "ci_low": ci[0],
                "ci_high": ci[1],
            },
        }
    return findings, metrics


def check_position(frame: _Frame, settings: QcSettings) -> Part:
    """Q004: first-shown picks among non-tie answers, exact binomial test against 0.5."""
    findings: list[Finding] = []
    non_tie = frame.choice < 2
    first_n = frame.count(non_tie)
    first_k = frame.count(non_tie & (frame.choice == 0))
    ties = frame.count(frame.choice == 2)
    metrics: dict[str, dict[str, Any]] = {}
    for a, name in enumerate(frame.names):
        n, k = int(first_n[a]), int(first_k[a])
        share = _rate(k, n)
        p = binomial_test_two_sided(k, n, 0.5) if n else math.nan
        ci = wilson_interval(k, n, settings.confidence) if n else (math.nan, math.nan)
        if n and share > settings.max_first_share and p < settings.significance:
            findings.append(
                _finding(
                    "Q004", _subject(name),
                    f"picks the first-shown response in {share:.2f} of {n} non-tie answers "
                    f"(binomial p {_p_text(p)}), above {settings.max_first_share:g}",
                    share, settings.max_first_share,
                )
            )  # fmt: skip
        metrics[name] = {
            "position": {
                "non_tie": n,
                "first": k,
                "first_share": share,
                "ci_low": ci[0],
                "ci_high": ci[1],
                "p_value": p,
                "ties": int(ties[a]),
            }
        }
    return findings, metrics


def check_sessions(frame: _Frame, settings: QcSettings) -> Part:
    """Q006: sessions longer than the spec allows."""
    findings: list[Finding] = []
    metrics: dict[str, dict[str, Any]] = {}
    for a, name in enumerate(frame.names):
        mine = frame.sess_minutes[frame.sess_ann == a]
        over = mine > settings.session_max_minutes
        if over.any():
            findings.append(
                _finding(
                    "Q006", _subject(name),
                    f"{int(over.sum())} of {mine.size} sessions longer than "
                    f"{settings.session_max_minutes:g} minutes (longest {mine.max():.0f})",
                    float(mine.max()), settings.session_max_minutes,
                )
            )  # fmt: skip
        metrics[name] = {
            "sessions": {
                "count": int(mine.size),
                "over_limit": int(over.sum()),
                "max_minutes": float(mine.max()) if mine.size else math.nan,
                "median_minutes": float(np.median(mine)) if mine.size else math.nan,
            }
        }
    return findings, metrics


def _by_annotator_and_bin(
    frame: _Frame, mask: npt.NDArray[np.bool_], bins: npt.NDArray[np.int64], n_bins: int
) -> npt.NDArray[np.int64]:
    return np.bincount(
        frame.ann[mask] * n_bins + bins[mask], minlength=frame.n_ann * n_bins
    ).reshape(frame.n_ann, n_bins)


def check_fatigue(
    frame: _Frame, settings: QcSettings
) -> tuple[list[Finding], dict[str, Any], dict[str, Any]]:
    """Q005: agreement with the reference early versus late in the session; plus the curves."""
    findings: list[Finding] = []
    late = (frame.minutes >= settings.late_after_minutes).astype(np.int64)
    fat_n = _by_annotator_and_bin(frame, frame.scored, late, 2)
    fat_ok = _by_annotator_and_bin(frame, frame.match, late, 2)
    width = settings.fatigue_bin_minutes
    bins = np.floor(frame.minutes / width).astype(np.int64)
    n_bins = int(bins.max()) + 1 if bins.size else 0
    curve_n = _by_annotator_and_bin(frame, frame.scored, bins, n_bins)
    curve_ok = _by_annotator_and_bin(frame, frame.match, bins, n_bins)
    metrics: dict[str, dict[str, Any]] = {}
    curves: dict[str, Any] = {}
    for a, name in enumerate(frame.names):
        e_n, l_n = int(fat_n[a, 0]), int(fat_n[a, 1])
        e_rate, l_rate = _rate(fat_ok[a, 0], e_n), _rate(fat_ok[a, 1], l_n)
        drop = e_rate - l_rate if e_n and l_n else math.nan
        enough = min(e_n, l_n) >= settings.min_fatigue_sample
        if enough and drop > settings.max_drop:
            findings.append(
                _finding(
                    "Q005", _subject(name),
                    f"agreement with the reference drops from {e_rate:.2f} ({e_n} tasks) to "
                    f"{l_rate:.2f} ({l_n} tasks) after {settings.late_after_minutes:g} minutes "
                    f"into a session: {drop:.2f} > {settings.max_drop:g}",
                    drop, settings.max_drop,
                )
            )  # fmt: skip
        curves[name] = [
            {"start": b * width, "n": int(curve_n[a, b]), "agreement": _rate(curve_ok[a, b], curve_n[a, b])}
            for b in np.flatnonzero(curve_n[a]).tolist()
        ]  # fmt: skip
        metrics[name] = {
            "fatigue": {
                "early_n": e_n,
                "early_agreement": e_rate,
                "late_n": l_n,
                "late_agreement": l_rate,
                "drop": drop,
                "assessed": enough,
            }
        }
    return findings, metrics, curves


def check_length_preference(frame: _Frame, settings: QcSettings) -> Part:
    """Q023: an annotator picks the longer response far more often than the pool does.

    Measured on non-tie answers to pairs of different lengths; the pool's share is the
    baseline, because whether the longer answer is better depends on the data, not on the
    annotator. Flagged when the annotator's share exceeds the pool's by more than
    `max_longer_excess` and a binomial test against the pool's share is significant.
    """
    findings: list[Finding] = []
    usable = (frame.choice < 2) & (frame.longer >= 0)
    longer = usable & (frame.choice == frame.longer)
    n_all, k_all = int(usable.sum()), int(longer.sum())
    pool = _rate(k_all, n_all)
    counts_n, counts_k = frame.count(usable), frame.count(longer)
    metrics: dict[str, dict[str, Any]] = {}
    for a, name in enumerate(frame.names):
        n, k = int(counts_n[a]), int(counts_k[a])
        share = _rate(k, n)
        p = binomial_test_two_sided(k, n, pool) if n and 0 < pool < 1 else math.nan
        if (
            n >= settings.min_gaming_sample
            and share - pool > settings.max_longer_excess
            and p < settings.significance
        ):
            findings.append(
                _finding(
                    "Q023", _subject(name),
                    f"picks the longer response in {share:.2f} of {n} answers, the pool "
                    f"{pool:.2f} (binomial p {_p_text(p)}); length is not a criterion",
                    share - pool, settings.max_longer_excess,
                )
            )  # fmt: skip
        metrics[name] = {
            "length": {"answers": n, "longer_share": share, "pool_share": pool, "p_value": p}
        }
    return findings, metrics


def check_speed(frame: _Frame, settings: QcSettings) -> Part:
    """Q024: an annotator's median seconds per task far below the pool's median."""
    findings: list[Finding] = []
    seconds = frame.seconds
    pool = float(np.median(seconds)) if seconds.size else math.nan
    metrics: dict[str, dict[str, Any]] = {}
    for a, name in enumerate(frame.names):
        mine = seconds[frame.ann == a]
        median = float(np.median(mine)) if mine.size else math.nan
        ratio = median / pool if pool > 0 and mine.size else math.nan
        if mine.size >= settings.min_gaming_sample and ratio < settings.min_speed_ratio:
            findings.append(
                _finding(
                    "Q024", _subject(name),
                    f"median {median:.0f} s per task, {ratio:.2f} of the pool's {pool:.0f} s "
                    f"(below {settings.min_speed_ratio:g}): too fast to read both responses",
                    ratio, settings.min_speed_ratio,
                )
            )  # fmt: skip
        metrics[name] = {
            "speed": {"median_seconds": median, "pool_median_seconds": pool, "ratio": ratio}
        }
    return findings, metrics


def check_justifications(frame: _Frame, settings: QcSettings) -> Part:
    """Q025: empty or boilerplate justifications where the spec requires them.

    Boilerplate is a justification shorter than `min_justification_words` words, or the same
    text (case and spacing folded) reused in more than `max_repeated_justification_share` of
    the annotator's tasks.
    """
    findings: list[Finding] = []
    metrics: dict[str, dict[str, Any]] = {}
    for a, name in enumerate(frame.names):
        rows = frame.ann == a
        n = int(rows.sum())
        words = frame.just_words[rows]
        empty = int((words == 0).sum())
        short = int(((words > 0) & (words < settings.min_justification_words)).sum())
        codes = frame.just_text[rows & (frame.just_words > 0)]
        top = int(np.bincount(codes).max()) if codes.size else 0
        repeated = _rate(top, n)
        poor = empty + short
        if (
            settings.justification == "required"
            and n
            and (
                _rate(poor, n) > settings.max_repeated_justification_share
                or repeated > settings.max_repeated_justification_share
            )
        ):
            findings.append(
                _finding(
                    "Q025", _subject(name),
                    f"{empty} empty and {short} very short justification(s) in {n} tasks; the "
                    f"most reused text covers {repeated:.0%} of them",
                    max(_rate(poor, n), repeated), settings.max_repeated_justification_share,
                )
            )  # fmt: skip
        metrics[name] = {
            "justifications": {"empty": empty, "short": short, "most_repeated_share": repeated}
        }
    return findings, metrics


def check_annotators(
    frame: _Frame, settings: QcSettings, overall: _Agreement
) -> tuple[list[Finding], dict[str, Any], dict[str, Any]]:
    """Every per-annotator check; metrics merged per annotator in a fixed key order."""
    fatigue_findings, fatigue_metrics, curves = check_fatigue(frame, settings)
    parts: list[Part] = [
        check_gold(frame, settings),
        check_consensus(frame, settings, overall),
        check_position(frame, settings),
        (fatigue_findings, fatigue_metrics),
        check_sessions(frame, settings),
    ]
    gaming: list[Callable[[_Frame, QcSettings], Part]] = [
        check_length_preference,
        check_speed,
        check_justifications,
    ]
    parts += [check(frame, settings) for check in gaming]
    findings = [f for part in parts for f in part[0]]
    metrics: dict[str, Any] = {}
    for name in frame.names:
        merged: dict[str, Any] = {}
        for _, fragment in parts:
            merged.update(fragment.get(name, {}))
        metrics[name] = merged
    return findings, metrics, curves
