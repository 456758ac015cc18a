"""Blinding and un-blinding: what annotators see, and the key that maps it back.

`tasks` shows annotators only opaque ids: `resp-<hmac>` for responses (when the spec says
`blind`), `item-<hmac>` for every item, gold or not, and no prompt id, gold flag or planned
A/B swap. Everything needed to turn an answer back into a vote on real responses is in
`unblinding_key.json`, which stays with the annotation lead. A batch lists its key in the
spec (`batches[].key`); the readers pass every record through `Unblinder.resolve` before it
is checked, so QC recognises gold items and aggregation joins the real response texts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError

KEY_FORMAT = "rlhfspec.unblinding-key/2"
Problem = tuple[str | None, str]


def opaque_id(seed: int, kind: str, *parts: str, prefix: str) -> str:
    """A stable id that reveals nothing without the seed: HMAC-SHA256, 12 hex digits."""
    digest = hmac.new(str(seed).encode(), "\x1f".join([kind, *parts]).encode(), hashlib.sha256)
    return f"{prefix}-{digest.hexdigest()[:12]}"


@dataclass
class Unblinder:
    """One batch's key: shown task, item and response ids back to the real ones.

    `tasks` maps a task id to the real item id, prompt id, gold flag, the real response ids in
    the shown order and the planned annotator; `responses` maps a shown response id to the
    real one; `items` maps a shown item id to the real item id, prompt id and gold flag.
    """

    display: str
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    annotator_ids: dict[str, str] = field(default_factory=dict)
    """The spec's `annotation.annotator_ids`: a tool's user (email or numeric id) -> annotator."""
    reassigned: list[str] = field(default_factory=list)
    """Tasks answered by someone other than their planned annotator, as text."""

    @classmethod
    def read(
        cls, path: Path, display: str, annotator_ids: dict[str, str] | None = None
    ) -> Unblinder:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunError(f"{display}: cannot read the unblinding key: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != KEY_FORMAT:
            raise RunError(
                f"{display}: not an unblinding key written by `rlhfspec tasks` "
                f'(expected "format": "{KEY_FORMAT}"); regenerate the tasks'
            )
        return cls(display, doc["tasks"], doc["responses"], doc["items"], dict(annotator_ids or {}))

    def resolve(self, record: dict[str, Any]) -> list[Problem]:
        """Replace shown ids in `record` by the real ones, in place; problems as (field, message).

        A record names its task (`task_id`, what Label Studio and our JSONL keep), or at least
        the shown response ids. Shown ids must belong to the task; an id the key does not know
        is a problem, never passed through (it would be an unknown response downstream).
        """
        task_id = record.pop("task_id", None)
        task = self.tasks.get(task_id) if isinstance(task_id, str) else None
        if task_id is not None and task is None:
            return [("task_id", f"task {task_id!r} is not in the unblinding key {self.display}")]
        if task is not None:
            return self._from_task(record, task)
        problems = self._responses(record)
        item = self.items.get(str(record.get("item_id")))
        if item is not None:
            record.update(item_id=item["item_id"], prompt_id=item["prompt_id"], gold=item["gold"])
        return problems

    def _from_task(self, record: dict[str, Any], task: dict[str, Any]) -> list[Problem]:
        problems: list[Problem] = []
        for side in ("response_a", "response_b"):
            shown = record.get(side)
            if shown is not None and shown not in (task["shown_" + side], task[side]):
                problems.append((side, f"{shown!r} is not the response the task showed there"))
        record.update(
            item_id=task["item_id"],
            prompt_id=task["prompt_id"],
            response_a=task["response_a"],
            response_b=task["response_b"],
            gold=task["gold"],
        )
        who = self._annotator(record.get("annotator"), task["annotator"])
        record["annotator"] = who
        if who != task["annotator"]:
            self.reassigned.append(
                f"task {task['task_id']} planned for {task['annotator']}, done by {who}"
            )
        return problems

    def _responses(self, record: dict[str, Any]) -> list[Problem]:
        problems: list[Problem] = []
        for side in ("response_a", "response_b"):
            shown = record.get(side)
            if not isinstance(shown, str):
                continue
            entry = self.responses.get(shown)
            if entry is None:
                problems.append((side, f"{shown!r} is not in the unblinding key {self.display}"))
            else:
                record[side] = entry["response_id"]
        return problems

    def _annotator(self, who: Any, planned: str) -> str:
        """The spec's id for a tool user: mapped, else the task's planned annotator.

        Label Studio reports users as `ls-user-<id>` or by email; the spec maps either. An
        unmapped tool user falls back to the annotator the task was planned for (Label
        Studio keeps it in the task's `meta`), so one person is one annotator across batches.
        """
        if not isinstance(who, str) or not who:
            return planned
        raw = who[len("ls-user-") :] if who.startswith("ls-user-") else who
        if raw in self.annotator_ids:
            return self.annotator_ids[raw]
        if who.startswith("ls-user-") or "@" in who:
            return planned
        return who
