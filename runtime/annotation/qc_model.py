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
from rlhfspec.compiler.schemas import default_of
from rlhfspec.runtime.annotation.records import CHOICES

REPORT_FORMAT = "rlhfspec.qc_report/1"
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
    asked = spec["annotation"]["dimension_judgements"]
    if asked["mode"] == "off":
        return ()
    ranked = [str(d["id"]) for d in spec["criteria"]["dimensions"]]
    chosen = set(asked["dimensions"] or ranked)
    return tuple(d for d in ranked if d in chosen)


@dataclass(frozen=True)
class QcSettings:
    """The thresholds QC applies; `from_spec` reads them from the resolved spec."""

    # spec thresholds default to the schema's defaults (the single source); a resolved spec
    # sets them all through `from_spec`
    metric: str = default_of("annotation.agreement.metric")
    target: float = default_of("annotation.agreement.target")
    floor: float = default_of("annotation.agreement.floor")
    has_gold: bool = True
    gold_share: tuple[float, float] = tuple(default_of("annotation.gold.share"))
    min_accuracy: float = default_of("annotation.gold.min_accuracy")
    max_first_share: float = default_of("annotation.position_bias.max_first_share")
    significance: float = default_of("annotation.position_bias.significance")
    late_after_minutes: float = default_of("annotation.fatigue.late_after_minutes")
    max_drop: float = default_of("annotation.fatigue.max_drop")
    session_max_minutes: float = default_of("annotation.session_max_minutes")
    max_split_vote_share: float = default_of("annotation.max_split_vote_share")
    annotators_per_item: int = default_of("annotation.annotators_per_item")
    justification: str = default_of("annotation.justification")
    batches: tuple[tuple[str, str], ...] = ()
    """(batch id, tagged criteria version), in spec order; the first is the drift baseline."""
    min_pair_overlap: int = MIN_PAIR_OVERLAP
    min_fatigue_sample: int = MIN_FATIGUE_SAMPLE
    drift_tolerance: float = DRIFT_TOLERANCE
    fatigue_bin_minutes: float = FATIGUE_BIN_MINUTES
    confidence: float = 0.95
    max_longer_excess: float = default_of("annotation.gaming.max_longer_excess")
    min_speed_ratio: float = default_of("annotation.gaming.min_speed_ratio")
    min_justification_words: int = default_of("annotation.gaming.min_justification_words")
    max_repeated_justification_share: float = default_of(
        "annotation.gaming.max_repeated_justification_share"
    )
    min_gaming_sample: int = MIN_GAMING_SAMPLE
    dimensions: tuple[str, ...] = ()
    """Quality dimensions annotators judge one by one, in rank order (empty: not asked)."""
    """Calibration results per annotator ({"passed", "score", "pass_mark"}); None: not required."""

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> QcSettings:
        """Thresholds from a resolved spec (defaults already written out by the compiler;
        only `annotation.gold`, which has no default, may be absent)."""
        ann = spec["annotation"]
        agreement = ann["agreement"]
        gold = ann.get("gold")
        bias = ann["position_bias"]
        fatigue = ann["fatigue"]
        gaming = ann["gaming"]
        return cls(
            metric=str(agreement["metric"]),
            target=float(agreement["target"]),
            floor=float(agreement["floor"]),
            has_gold=gold is not None,
            gold_share=(float(gold["share"][0]), float(gold["share"][1]))
            if gold
            else cls.gold_share,
            min_accuracy=float(gold["min_accuracy"]) if gold else cls.min_accuracy,
            max_first_share=float(bias["max_first_share"]),
            significance=float(bias["significance"]),
            late_after_minutes=float(fatigue["late_after_minutes"]),
            max_drop=float(fatigue["max_drop"]),
            session_max_minutes=float(ann["session_max_minutes"]),
            max_split_vote_share=float(ann["max_split_vote_share"]),
            annotators_per_item=int(ann["annotators_per_item"]),
            justification=str(ann["justification"]),
            batches=tuple((str(b["id"]), str(b["criteria_version"])) for b in ann["batches"]),
            max_longer_excess=float(gaming["max_longer_excess"]),
            min_speed_ratio=float(gaming["min_speed_ratio"]),
            min_justification_words=int(gaming["min_justification_words"]),
            max_repeated_justification_share=float(gaming["max_repeated_justification_share"]),
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
    qualification: Mapping[str, Any] | None = None
    """`calibration.qualification`: each annotator's calibration result, or None without a
    calibration set."""


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
            "format": REPORT_FORMAT,
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
