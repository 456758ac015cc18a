"""The plan of one `rlhfspec tasks` run: who annotates, in which batch, under which rules.

Built once from the spec's `annotation` block after checking that the criteria
are locked (labels must name a version the lock can prove), so the drawing,
assignment and writing code that follows reads settings from one value
rather than from the spec.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rlhfspec.common.errors import RunError
from rlhfspec.compiler.lockfile import criteria_hash, lock_path_for, read_lock
from rlhfspec.runtime.annotation.blinding import opaque_id
from rlhfspec.runtime.annotation.qc_model import asked_dimensions
from rlhfspec.runtime.annotation.task_inputs import Item, calibration_pairs
from rlhfspec.runtime.project import Project


@dataclass
class TaskPlan:
    """The spec's annotation settings as `generate_tasks` uses them."""

    seed: int
    version: str
    batch: str
    per_item: int
    blind: bool
    randomize: bool
    minutes: float
    session_max: float
    per_session: int
    names: list[str]
    gold_share: tuple[float, float] | None
    dimensions: tuple[str, ...]
    calibration_pairs: frozenset[frozenset[str]] = frozenset()
    """Response pairs of the calibration set: never drawn as live items, since an annotator
    who calibrated on a pair knows its answer."""

    def shown(self, response_id: str) -> str:
        if not self.blind:
            return response_id
        return opaque_id(self.seed, "response", response_id, prefix="resp")

    def shown_item(self, item: Item) -> str:
        """Ordinary item ids are opaque already; a gold item's id (`gold-043`) would say so."""
        return (
            opaque_id(self.seed, "item", "gold", item.item_id, prefix="item")
            if item.gold
            else item.item_id
        )


def require_locked_criteria(project: Project) -> None:
    """Tasks only from criteria the lock file records, content and version both.

    Annotators label against a version; if that version is not locked, nothing proves later
    which criteria the labels followed.
    """
    criteria = project.spec["criteria"]
    lock = lock_path_for(project.spec_path)
    hint = f"run `rlhfspec lock {project.display}` and commit the lock file"
    if not lock.exists():
        raise RunError(f"{project.display}: the criteria are not locked (no {lock.name}); {hint}")
    entries = {e.version: e for e in read_lock(lock)}
    entry = entries.get(str(criteria["version"]))
    if entry is None or entry.sha256 != criteria_hash(criteria):
        raise RunError(
            f"{project.display}: criteria version {criteria['version']} is "
            + ("not in the lock file" if entry is None else "changed since it was locked")
            + f"; {hint}"
        )


def make_plan(project: Project, annotators: Sequence[str], batch: str | None) -> TaskPlan:
    spec = project.spec
    ann = spec["annotation"]
    names = list(annotators)
    if any(not isinstance(a, str) or not a.strip() for a in names):
        raise RunError("annotator ids must be non-empty strings")
    dupes = sorted(a for a, c in Counter(names).items() if c > 1)
    if dupes:
        raise RunError(f"annotator(s) listed twice: {', '.join(dupes)}")
    per_item = int(ann["annotators_per_item"])
    if len(names) < per_item:
        raise RunError(
            f"annotation.annotators_per_item is {per_item} but only {len(names)} annotator(s) "
            f"were given; every item needs {per_item} distinct annotators"
        )
    minutes = float(ann["minutes_per_task"])
    session_max = float(ann["session_max_minutes"])
    per_session = math.floor(session_max / minutes + 1e-9)
    if per_session < 1:
        raise RunError(
            f"one task takes {minutes:g} minutes, longer than a session "
            f"(annotation.session_max_minutes = {session_max:g})"
        )
    gold = ann.get("gold")
    version = str(spec["criteria"]["version"])
    return TaskPlan(
        seed=project.seed,
        version=version,
        batch=batch or f"tasks-{version}",
        per_item=per_item,
        blind=bool(ann["blind"]),
        randomize=bool(ann["randomize_order"]),
        minutes=minutes,
        session_max=session_max,
        per_session=per_session,
        names=sorted(names),
        gold_share=(float(gold["share"][0]), float(gold["share"][1])) if gold else None,
        dimensions=asked_dimensions(spec),
        calibration_pairs=calibration_pairs(project),
    )
