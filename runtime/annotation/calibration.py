"""Calibration: gold items with rationales that every annotator answers before live work.

A new annotator who misreads the criteria costs every item they touch; gold items mixed into
live work find them only after the damage. The calibration set (`annotation.calibration`,
in the gold file's format) is answered first: `rlhfspec tasks` writes it as its own batch,
`calibration-<criteria version>`, into `calibration/` beside the live tasks, blinded exactly
like them (opaque item and response ids, the key in `calibration/unblinding_key.json`); each
annotator gets every item, in their own seeded order with balanced A/B swaps. The answers
come back as batches listed under `annotation.calibration.batches`, are un-blinded through
the key, and `qualification` scores them: per annotator and attempt, the share of all
calibration items answered as the gold answer says (an unanswered item counts as missed),
against `pass_mark`. A later attempt (after retraining) is its own batch; the annotator
qualifies when any attempt passes. QC reports the table and flags (Q028, votes excluded)
everyone with live votes who has not qualified.

Why the version in the batch id: qualifying is qualifying for one version of the criteria;
after a criteria change annotators take the new version's calibration.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.jsonl import refusal
from rlhfspec.runtime.annotation.blinding import Unblinder
from rlhfspec.runtime.annotation.records import SKIP_HINT, Resolve, read_batches
from rlhfspec.runtime.annotation.task_inputs import (
    GOLD_CHOICES,
    GOLD_FIELDS,
    Item,
    gold_item,
    read_rows,
)
from rlhfspec.runtime.annotation.task_plan import make_plan, require_locked_criteria
from rlhfspec.runtime.annotation.tasks import (
    TaskSummary,
    _annotator_tasks,
    _flips,
    _rng,
    _session_sizes,
    _write,
)
from rlhfspec.runtime.project import Project

FOLDER = "calibration"


def batch_id(version: str) -> str:
    return f"calibration-{version}"


def _rows(project: Project) -> list[dict[str, Any]]:
    """The calibration items; a bad row refuses the file whole (with its line)."""
    display = project.spec["annotation"]["calibration"]["path"]
    rows = read_rows(project.path(display), display, GOLD_FIELDS, "calibration items", "item_id")
    problems = [
        f"{display}: line {n}: field 'preferred': must be A, B or tie, got {row['preferred']!r}"
        for n, row in rows
        if row["preferred"] not in GOLD_CHOICES
    ]
    problems += [
        f"{display}: line {n}: field 'response_b': is the same response as response_a"
        for n, row in rows
        if row["response_a"] == row["response_b"]
    ]
    if problems:
        raise refusal("calibration items refused", problems)
    if not rows:
        raise RunError(f"{display}: holds no calibration items; add some or drop the block")
    return [row for _, row in rows]


def write_calibration(
    project: Project, out_dir: Path, *, annotators: list[str], per_annotator: bool = False
) -> TaskSummary | None:
    """Write the calibration batch into `out_dir/calibration/` (None without a calibration set).

    The same writers as live tasks: tasks.jsonl (the lead's view), annotators/<id>.jsonl,
    unblinding_key.json, summary.json and label_studio/ (one import per annotator with
    `per_annotator`).
    """
    require_locked_criteria(project)
    cfg = project.spec["annotation"].get("calibration")
    if not cfg:
        return None
    plan = make_plan(project, annotators, None)
    plan = replace(plan, batch=batch_id(plan.version), gold_share=None)
    items: list[Item] = [gold_item(row, {}, "calibration") for row in _rows(project)]
    tasks: list[dict[str, Any]] = []
    per: dict[str, Any] = {}
    for name in plan.names:
        queue = sorted(items, key=lambda i: i.item_id)
        _rng(plan.seed, "calibration", name).shuffle(queue)
        flips, sizes = _flips(plan, name, len(queue)), _session_sizes(plan, len(queue))
        tasks += _annotator_tasks(plan, name, queue, flips, sizes, len(tasks) + 1)
        per[name] = {"tasks": len(queue), "swapped": sum(flips), "sessions": len(sizes)}
    data = {
        "spec": project.name,
        "batch": plan.batch,
        "calibration": True,
        "criteria_version": plan.version,
        "seed": plan.seed,
        "blind": plan.blind,
        "pass_mark": cfg["pass_mark"],
        "items": len(items),
        "tasks": len(tasks),
        "per_annotator": per,
        "warnings": [],
    }
    return _write(plan, project, out_dir / FOLDER, items, tasks, data, per_annotator)


def format_text(summary: TaskSummary) -> str:
    d = summary.data
    lines = [
        f"calibration {d['batch']}: {d['items']} items x {len(d['per_annotator'])} annotators "
        f"= {d['tasks']} tasks, answered before live work (pass mark {d['pass_mark']:g})"
    ]
    return "\n".join(lines + [f"wrote {p}" for p in summary.paths]) + "\n"


def _correct(record: dict[str, Any], gold: dict[str, Any]) -> bool:
    """The answer names the response the gold answer prefers (or both say tie)."""
    if gold["preferred"] == "tie" or record["choice"] == "tie":
        return bool(gold["preferred"] == record["choice"])
    preferred = gold["response_a"] if gold["preferred"] == "A" else gold["response_b"]
    chosen = record["response_a"] if record["choice"] == "A" else record["response_b"]
    return bool(preferred == chosen)


def _score(
    records: list[dict[str, Any]], gold: dict[str, dict[str, Any]], problems: list[str]
) -> dict[str, dict[str, bool]]:
    """Per annotator: item id -> answered as the gold says."""
    out: dict[str, dict[str, bool]] = {}
    for record in records:
        item = gold.get(record["item_id"])
        shown = {record["response_a"], record["response_b"]}
        if item is None or shown != {item["response_a"], item["response_b"]}:
            problems.append(
                f"{record['batch']}: item {record['item_id']} (annotator {record['annotator']}) "
                "is not a calibration item with these responses; list the calibration key"
            )
            continue
        out.setdefault(record["annotator"], {})[record["item_id"]] = _correct(record, item)
    return out


def qualification(project: Project, *, skip_bad_rows: bool = False) -> dict[str, Any] | None:
    """Each annotator's calibration result (None without a calibration set).

    The result is for the current criteria version (`criteria_version`): QC checks the live
    votes under that version against it. `annotators` maps an annotator to `items` (the set's size), `answered`, `correct`,
    `agreement` (correct / items), `passed`, and `attempts` (one per batch they answered in,
    in the spec's order); `problems` lists answers that match no calibration item.
    """
    cfg = project.spec["annotation"].get("calibration")
    if not cfg:
        return None
    gold = {row["item_id"]: row for row in _rows(project)}
    ids = project.spec["annotation"]["annotator_ids"]
    problems: list[str] = []
    attempts: dict[str, list[dict[str, Any]]] = {}
    for entry in cfg["batches"]:
        key = (
            Unblinder.read(project.path(entry["key"]), entry["key"], ids)
            if "key" in entry
            else None
        )
        resolvers: dict[str, Resolve] | None = {str(entry["id"]): key.resolve} if key else None
        (read,) = read_batches([entry], project.folder, skip_bad=skip_bad_rows, resolvers=resolvers)
        for name, done in sorted(_score(read.records, gold, problems).items()):
            correct = sum(done.values())
            attempts.setdefault(name, []).append(
                {"batch": entry["id"], "answered": len(done), "correct": correct,
                 "agreement": round(correct / len(gold), 4),
                 "passed": correct >= cfg["pass_mark"] * len(gold) - 1e-9}
            )  # fmt: skip
    if problems and not skip_bad_rows:
        raise refusal("calibration answers refused", problems, SKIP_HINT)
    annotators = {}
    for name, tries in sorted(attempts.items()):
        best = max(tries, key=lambda t: (t["passed"], t["agreement"]))
        annotators[name] = {"items": len(gold), **{k: best[k] for k in best if k != "batch"}}
        annotators[name]["attempts"] = tries
    return {
        "criteria_version": str(project.spec["criteria"]["version"]),
        "items": len(gold),
        "pass_mark": cfg["pass_mark"],
        "batches": [e["id"] for e in cfg["batches"]],
        "annotators": annotators,
        "problems": problems,
    }
