"""QC's data model: codes, thresholds, findings and the report (no analysis here)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from rlhfspec.common.findings import FindingsReport
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


class QcCode(NamedTuple):
    severity: str
    name: str
    meaning: str
    excludes: bool = False


QC_CODES: dict[str, QcCode] = {
    "Q001": QcCode("error", "agreement_below_floor", "Overall agreement below the floor."),
    "Q002": QcCode("warning", "agreement_below_target", "Overall agreement below the target."),
    "Q003": QcCode(
        "error", "gold_accuracy_low", "Annotator's gold accuracy below the minimum.", True
    ),
    "Q004": QcCode("error", "position_bias", "Annotator favours the first-shown response.", True),
    "Q005": QcCode("error", "fatigue", "Annotator's agreement drops late in sessions.", True),
    "Q006": QcCode("error", "session_over_limit", "Annotator's sessions exceed the session limit."),
    "Q007": QcCode(
        "error",
        "consensus_below_floor",
        "Annotator's kappa with the others' consensus below the floor.",
        True,
    ),
    "Q008": QcCode(
        "warning",
        "consensus_below_target",
        "Annotator's kappa with the others' consensus below the target.",
    ),
    "Q009": QcCode("error", "batch_agreement_below_floor", "A batch's agreement below the floor."),
    "Q010": QcCode(
        "warning", "batch_agreement_below_target", "A batch's agreement below the target."
    ),
    "Q011": QcCode(
        "warning", "batch_agreement_drift", "A batch's agreement dropped versus the first batch."
    ),
    "Q012": QcCode(
        "warning", "batch_gold_accuracy_low", "A batch's pooled gold accuracy below the minimum."
    ),
    "Q013": QcCode("warning", "split_votes", "Too many items without a strict majority vote."),
    "Q014": QcCode(
        "error",
        "criteria_version_mismatch",
        "Records follow another criteria version than their batch's tag.",
    ),
    "Q015": QcCode(
        "warning", "gold_share", "Annotator's share of gold tasks outside the spec's range."
    ),
    "Q016": QcCode("warning", "justification_missing", "Required justifications are missing."),
    "Q017": QcCode("warning", "rows_skipped", "Bad rows were skipped."),
    "Q018": QcCode(
        "warning", "gold_without_key", "Records marked gold have no answer in the gold file."
    ),
    "Q019": QcCode(
        "warning", "under_covered", "Items with fewer annotators than annotators_per_item."
    ),
    "Q020": QcCode("warning", "agreement_undefined", "Agreement could not be computed."),
    "Q021": QcCode("warning", "empty_batch", "A batch listed in the spec has no records."),
    "Q022": QcCode(
        "warning", "completed_by_other", "Tasks completed by someone other than their assignee."
    ),
    "Q023": QcCode(
        "error", "length_preference", "Annotator prefers the longer response beyond the pool.", True
    ),
    "Q024": QcCode(
        "error", "too_fast", "Annotator's median time per task far below the pool's.", True
    ),
    "Q025": QcCode(
        "warning", "poor_justifications", "Required justifications are empty or boilerplate."
    ),
    "Q026": QcCode(
        "warning", "dimension_agreement_low", "Agreement on a quality dimension below the floor."
    ),
    "Q027": QcCode("error", "not_qualified", "Annotator has no passing calibration result.", True),
    "Q028": QcCode(
        "warning", "split_votes_in_period", "A batch or week with too many split votes."
    ),
}
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


@dataclass(frozen=True)
class Finding:
    """One QC problem. `subject` is "overall", "annotator <id>" or "batch <id>"."""

    code: str
    severity: str
    subject: str
    message: str
    value: float | None = None
    threshold: float | None = None

    @property
    def name(self) -> str:
        return QC_CODES[self.code].name

    @property
    def annotator(self) -> str | None:
        return self.subject[len("annotator ") :] if self.subject.startswith("annotator ") else None

    @property
    def batch(self) -> str | None:
        return self.subject[len("batch ") :] if self.subject.startswith("batch ") else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "name": self.name,
            "subject": self.subject,
            "message": self.message,
            "value": _clean(self.value),
            "threshold": _clean(self.threshold),
        }


def _finding(
    code: str,
    subject: str,
    message: str,
    value: float | None = None,
    threshold: float | None = None,
) -> Finding:
    """A finding whose severity comes from the registry, so a code's severity never varies."""
    return Finding(code, QC_CODES[code].severity, subject, message, value, threshold)


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
            "findings": [f.to_dict() for f in self.findings],
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
