"""Every batch the spec lists, read and un-blinded once, for QC and aggregation alike.

QC and aggregation must see the same votes: both call `load_annotations`, which reads each
batch in its format, passes every record through the batch's unblinding key (when the spec
names one) and collects what QC reports about the files: fingerprints, cancelled
annotations, bad rows skipped, and tasks completed by someone other than their assignee.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import file_fingerprint
from rlhfspec.common.jsonl import read_rows
from rlhfspec.runtime.annotation.blinding import Unblinder
from rlhfspec.runtime.annotation.records import Resolve, TaskMap, read_batches
from rlhfspec.runtime.annotation.stock import FORMAT as stock_format
from rlhfspec.runtime.annotation.stock import StockMatcher, annotator_mapper, batch_fields
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
    resolvers: dict[str, Resolve] = {b: key.resolve for b, key in keys.items()}
    task_maps = stock_task_maps(project)
    mapper = annotator_mapper(project.spec["annotation"]["annotator_ids"])
    resolvers.update({b: mapper for b in task_maps if b not in resolvers})
    reads = read_batches(
        batches, project.folder, skip_bad=skip_bad_rows, resolvers=resolvers, task_maps=task_maps
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


def stock_task_maps(project: Project) -> dict[str, TaskMap]:
    """Batch id -> how its stock-template tasks map to our ids (`label_studio_pairwise`)."""
    stock = [b for b in project.spec["annotation"]["batches"] if b["format"] == stock_format]
    if not stock:
        return {}
    matcher = StockMatcher.build(project)
    maps = {}
    for entry in stock:
        fields = batch_fields(entry)
        maps[entry["id"]] = TaskMap(
            partial(matcher.match, fields=fields), matcher.choice_aliases(fields)
        )
    return maps


def response_lengths(project: Project) -> dict[str, int]:
    """Words per response id from `annotation.responses` (for the length-preference check)."""
    rel = project.spec["annotation"].get("responses")
    if not rel:
        return {}
    rows = read_rows(project.path(rel), rel, ("id", "text"))
    return {str(r["id"]): len(str(r["text"]).split()) for r in rows}
