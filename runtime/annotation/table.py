"""Annotations as numpy columns, for vectorised QC: one row per record.

Built from the records the readers in `records` return (`AnnotationTable.from_records`), or
from arrays directly (benchmarks, property tests). Kept apart from the readers, which check
rows one by one; QC only ever sees checked records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlhfspec.runtime.annotation.records import CHOICES, parse_time


@dataclass
class AnnotationTable:
    """Columnar view of annotations for vectorised QC (numpy arrays, one row per record).

    `choice` is relative to the shown order (0 = first shown, 1 = second,
    2 = tie): what position bias is measured on. `canon` is relative to the
    item's canonical order (the two response ids sorted): what agreement is
    measured on, since annotators saw the pair in different orders.
    """

    items: list[str]
    annotators: list[str]
    sessions: list[str]
    batches: list[str]
    versions: list[str]
    item: np.ndarray
    annotator: np.ndarray
    session: np.ndarray
    batch: np.ndarray
    version: np.ndarray
    gold: np.ndarray
    choice: np.ndarray
    canon: np.ndarray
    started: np.ndarray  # seconds since the epoch
    submitted: np.ndarray
    minutes_into_session: np.ndarray
    has_justification: np.ndarray
    longer: np.ndarray  # shown position (0/1) of the longer response; -1 equal or unknown
    just_words: np.ndarray  # words in the justification (0: none)
    just_text: np.ndarray  # code of the justification, case and spacing folded
    dimensions: list[str]  # dimensions judged one by one, in rank order
    dim_canon: np.ndarray  # records x dimensions, canonical labels as `canon`, -1 not given

    def __len__(self) -> int:
        return int(self.item.shape[0])

    @classmethod
    def from_records(
        cls,
        records: Sequence[dict[str, Any]],
        *,
        lengths: dict[str, int] | None = None,
        dimensions: Sequence[str] = (),
    ) -> AnnotationTable:
        """Columns of `records`; `lengths` (response id -> words) enables the length check,
        `dimensions` the per-dimension agreement."""

        def codes(values: list[str]) -> tuple[list[str], np.ndarray]:
            uniques, inverse = np.unique(
                np.asarray(values, dtype=object).astype(str), return_inverse=True
            )
            return [str(u) for u in uniques], inverse.astype(np.int32)

        n = len(records)
        items, item = codes([r["item_id"] for r in records])
        annotators, annotator = codes([r["annotator"] for r in records])
        sessions, session = codes([r["session"] for r in records])
        batches, batch = codes([r["batch"] for r in records])
        versions, version = codes([r["criteria_version"] for r in records])
        choice = np.fromiter((CHOICES.index(r["choice"]) for r in records), dtype=np.int8, count=n)
        swapped = np.fromiter(
            (r["response_a"] > r["response_b"] for r in records), dtype=bool, count=n
        )
        canon = choice.copy()
        flip = swapped & (choice < 2)
        canon[flip] = 1 - choice[flip]
        started = np.fromiter(
            (parse_time(r["started_at"]).timestamp() for r in records), dtype=np.float64, count=n
        )
        submitted = np.fromiter(
            (parse_time(r["submitted_at"]).timestamp() for r in records), dtype=np.float64, count=n
        )
        return cls.from_arrays(
            items=items,
            annotators=annotators,
            sessions=sessions,
            batches=batches,
            versions=versions,
            item=item,
            annotator=annotator,
            session=session,
            batch=batch,
            version=version,
            gold=np.fromiter((bool(r["gold"]) for r in records), dtype=bool, count=n),
            choice=choice,
            canon=canon,
            started=started,
            submitted=submitted,
            has_justification=np.fromiter(
                (bool(r.get("justification")) for r in records), dtype=bool, count=n
            ),
            **_extra_columns(records, lengths or {}, list(dimensions), swapped),
        )

    @classmethod
    def from_arrays(cls, **columns: Any) -> AnnotationTable:
        """Build from columns; minutes into each session are derived here, and the optional
        columns (length, justification text, dimensions) default to "unknown"."""
        n = columns["item"].shape[0]
        columns.setdefault("longer", np.full(n, -1, dtype=np.int8))
        columns.setdefault(
            "just_words", np.where(columns["has_justification"], 5, 0).astype(np.int32)
        )
        columns.setdefault("just_text", np.arange(n, dtype=np.int32))
        columns.setdefault("dimensions", [])
        columns.setdefault("dim_canon", np.full((n, 0), -1, dtype=np.int8))
        session = columns["session"]
        started = columns["started"]
        n_sessions = len(columns["sessions"])
        first = np.full(n_sessions, np.inf)
        np.minimum.at(first, session, started)
        columns["minutes_into_session"] = (started - first[session]) / 60.0
        return cls(**columns)


def _extra_columns(
    records: Sequence[dict[str, Any]],
    lengths: dict[str, int],
    dimensions: list[str],
    swapped: np.ndarray,
) -> dict[str, Any]:
    """Length, justification and per-dimension columns of `AnnotationTable.from_records`."""
    n = len(records)
    longer = np.full(n, -1, dtype=np.int8)
    for i, r in enumerate(records):
        a, b = lengths.get(r["response_a"]), lengths.get(r["response_b"])
        if a is not None and b is not None and a != b:
            longer[i] = 0 if a > b else 1
    folded = [" ".join(str(r.get("justification") or "").lower().split()) for r in records]
    _, just_text = np.unique(
        np.asarray(folded + [""], dtype=object).astype(str), return_inverse=True
    )
    just_words = np.fromiter((len(t.split()) for t in folded), dtype=np.int32, count=n)
    dim_canon = np.full((n, len(dimensions)), -1, dtype=np.int8)
    for i, r in enumerate(records):
        given = r.get("dimension_choices") or {}
        for d, name in enumerate(dimensions):
            value = given.get(name)
            if value in CHOICES:
                label = CHOICES.index(value)
                dim_canon[i, d] = 1 - label if swapped[i] and label < 2 else label
    return {
        "longer": longer,
        "just_words": just_words,
        "just_text": just_text[:n].astype(np.int32),
        "dimensions": dimensions,
        "dim_canon": dim_canon,
    }
