"""QC's data model: codes, thresholds, findings and the report (no analysis here)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhfspec.common.codes import Code, family
from rlhfspec.common.findings import Finding, FindingsReport
from rlhfspec.runtime.annotation.records import CHOICES

REPORT_SCHEMA = "rlhfspec-qc/1"
DRIFT_TOLERANCE = 0.10
"""Largest drop in a batch's agreement versus the first batch before Q011 warns."""
MIN_PAIR_OVERLAP = 20
"""Annotator pairs sharing fewer items are left out of the mean pairwise kappa: too noisy."""
MIN_FATIGUE_SAMPLE = 30
"""Early and late samples must each hold this many records before Q005 can fire."""
FATIGUE_BIN_MINUTES = 15.0
MIN_GAMING_SAMPLE = 30
"""Annotators with fewer answers are not judged by the length and speed checks: too noisy."""
MAX_SAMPLES_PER_ANNOTATOR = 3
SAMPLE_CHARS = 240
_NDIGITS = 6


# QC's codes (registered in common/codes.py with every other family's); `excludes` marks the
# codes whose error leaves the annotator's votes out.
QC_CODES: dict[str, Code] = family("Q")
QcCode = Code
JSON_KEYS = ("code", "severity", "name", "subject", "message", "value", "threshold")
"""The keys of one finding in qc/report.json, in order."""
_SEVERITY_RANK = {"error": 0, "warning": 1}
_LABELS = len(CHOICES)  # 0 = canonical first, 1 = canonical second, 2 = tie


# ---------------------------------------------------------------------------------------------
# Settings, findings, report
# ---------------------------------------------------------------------------------------------


def asked_dimensions(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The dimensions annotators judge one by one, in rank order; () when not asked.

    `annotation.dimension_judgements.dimensions` empty means every dimension of the criteria.
    """
    asked = spec.get("annotation", {}).get("dimension_judgements", {})
    if asked.get("mode", "off") == "off":
        return ()
    ranked = [str(d["id"]) for d in spec.get("criteria", {}).get("dimensions", [])]
    chosen = set(asked.get("dimensions") or ranked)
    return tuple(d for d in ranked if d in chosen)


@dataclass(frozen=True)
class QcSettings:
    """The thresholds QC applies; `from_spec` reads them from the resolved spec."""

    metric: str = "cohen_kappa"
    target: float = 0.6
    floor: float = 0.4
    has_gold: bool = True
    gold_share: tuple[float, float] = (0.05, 0.10)
    min_accuracy: float = 0.8
    max_first_share: float = 0.65
    significance: float = 0.01
    late_after_minutes: float = 60.0
    max_drop: float = 0.15
    session_max_minutes: float = 90.0
    max_split_vote_share: float = 0.2
    annotators_per_item: int = 3
    justification: str = "optional"
    batches: tuple[tuple[str, str], ...] = ()
    """(batch id, tagged criteria version), in spec order; the first is the drift baseline."""
    min_pair_overlap: int = MIN_PAIR_OVERLAP
    min_fatigue_sample: int = MIN_FATIGUE_SAMPLE
    drift_tolerance: float = DRIFT_TOLERANCE
    fatigue_bin_minutes: float = FATIGUE_BIN_MINUTES
    confidence: float = 0.95
    max_longer_excess: float = 0.15
    min_speed_ratio: float = 0.4
    min_justification_words: int = 3
    max_repeated_justification_share: float = 0.5
    min_gaming_sample: int = MIN_GAMING_SAMPLE
    dimensions: tuple[str, ...] = ()
    """Quality dimensions annotators judge one by one, in rank order (empty: not asked)."""
    qualification: Mapping[str, Any] | None = None
    """Calibration results per annotator ({"passed": bool, "score": float}); None: not required."""

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> QcSettings:
        """Thresholds from a resolved spec (defaults already written out by validation)."""
        ann = spec.get("annotation", {})
        agreement = ann.get("agreement", {})
        gold = ann.get("gold")
        bias = ann.get("position_bias", {})
        fatigue = ann.get("fatigue", {})
        share = (gold or {}).get("share", [0.05, 0.10])
        gaming = ann.get("gaming", {})
        return cls(
            metric=str(agreement.get("metric", "cohen_kappa")),
            target=float(agreement.get("target", 0.6)),
            floor=float(agreement.get("floor", 0.4)),
            has_gold=gold is not None,
            gold_share=(float(share[0]), float(share[1])),
            min_accuracy=float((gold or {}).get("min_accuracy", 0.8)),
            max_first_share=float(bias.get("max_first_share", 0.65)),
            significance=float(bias.get("significance", 0.01)),
            late_after_minutes=float(fatigue.get("late_after_minutes", 60)),
            max_drop=float(fatigue.get("max_drop", 0.15)),
            session_max_minutes=float(ann.get("session_max_minutes", 90)),
            max_split_vote_share=float(ann.get("max_split_vote_share", 0.2)),
            annotators_per_item=int(ann.get("annotators_per_item", 3)),
            justification=str(ann.get("justification", "optional")),
            batches=tuple(
                (str(b["id"]), str(b["criteria_version"])) for b in ann.get("batches", [])
            ),
            max_longer_excess=float(gaming.get("max_longer_excess", 0.15)),
            min_speed_ratio=float(gaming.get("min_speed_ratio", 0.4)),
            min_justification_words=int(gaming.get("min_justification_words", 3)),
            max_repeated_justification_share=float(
                gaming.get("max_repeated_justification_share", 0.5)
            ),
            dimensions=asked_dimensions(spec),
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
    reassigned: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Per batch id: tasks completed by someone other than their planned annotator, as text."""
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
