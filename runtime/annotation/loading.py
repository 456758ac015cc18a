"""Every batch the spec lists, read and un-blinded once, for QC and aggregation alike.

QC and aggregation must see the same votes: both call `load_annotations`, which reads each
batch in its format, passes every record through the batch's unblinding key (when the spec
names one) and collects what QC reports about the files: fingerprints, cancelled
annotations, bad rows skipped, and tasks completed by someone other than their assignee.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import file_fingerprint
from rlhfspec.common.jsonl import read_rows
from rlhfspec.runtime.annotation.blinding import Unblinder
from rlhfspec.runtime.annotation.records import read_batches
from rlhfspec.runtime.project import Project


@dataclass
class Loaded:
    records: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    cancelled: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    reassigned: dict[str, list[str]] = field(default_factory=dict)


def load_annotations(project: Project, *, skip_bad_rows: bool = False) -> Loaded:
    """Read every batch of a validated project; bad rows refuse it unless `skip_bad_rows`."""
    batches = project.spec["annotation"]["batches"]
    if not batches:
        raise RunError(f"{project.display}: annotation.batches is empty; there is nothing to read")
    keys = {
        entry["id"]: Unblinder.read(
            project.path(entry["key"]), entry["key"], project.spec["annotation"]["annotator_ids"]
        )
        for entry in batches
        if entry.get("key")
    }
    reads = read_batches(
        batches,
        project.folder,
        skip_bad=skip_bad_rows,
        resolvers={b: key.resolve for b, key in keys.items()},
    )
    out = Loaded()
    for entry, read in zip(batches, reads, strict=True):
        out.records.extend(read.records)
        out.cancelled[entry["id"]] = read.cancelled
        if read.problems:
            out.skipped[entry["id"]] = [str(p) for p in read.problems]
        key = keys.get(entry["id"])
        if key and key.reassigned:
            out.reassigned[entry["id"]] = list(key.reassigned)
        fmt = entry["format"]
        out.files.append(
            {
                "batch": entry["id"],
                "path": entry["path"],
                "format": fmt,
                **file_fingerprint(project.path(entry["path"])),
            }
        )
    return out


def response_lengths(project: Project) -> dict[str, int]:
    """Words per response id from `annotation.responses` (for the length-preference check)."""
    rel = project.spec["annotation"].get("responses")
    if not rel:
        return {}
    rows = read_rows(project.path(rel), rel, ("id", "text"))
    return {str(r["id"]): len(str(r["text"]).split()) for r in rows}
