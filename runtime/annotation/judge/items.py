"""Which pairs the judge labels: the items `tasks` would give humans, or a named subset.

* `tasks`: exactly the items `rlhfspec tasks` draws from `annotation.responses`
  (same seeded pairing, same item ids, gold items included, production
  holdout left out): task generation runs into a scratch folder and its
  tasks and unblinding key are read back, so the two can never drift apart.
* `batches`: the items of the spec's human annotation batches (to measure a
  judge against labels that exist already, or to back-fill them).
* a JSONL file of `item_id`, `prompt_id`, `response_a`, `response_b` (and
  optionally `gold`): any named subset.

Every pair is kept in canonical order (the two response ids sorted), the
convention QC and aggregation use; the judge itself sees both orders.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.jsonl import read_rows
from rlhfspec.runtime.annotation.records import read_batch
from rlhfspec.runtime.project import Project
from rlhfspec.runtime.prompts.pool import load_prompt_pool

AI_PREFIX = "ai:"


def is_ai(record: dict[str, Any]) -> bool:
    """Records of an AI judge name their annotator `ai:<model>`."""
    return str(record.get("annotator", "")).startswith(AI_PREFIX)


def pair_key(record: dict[str, Any]) -> tuple[str, str, str]:
    """(prompt, lower id, higher id): one pair however its item was named or shown."""
    low, high = sorted((str(record["response_a"]), str(record["response_b"])))
    return str(record["prompt_id"]), low, high


@dataclass(frozen=True)
class Item:
    item_id: str
    prompt_id: str
    prompt: str
    first: str  # canonical order: the smaller response id
    second: str
    text_first: str
    text_second: str
    gold: bool
    strata: dict[str, str] = field(default_factory=dict)


def _responses(project: Project) -> dict[str, dict[str, Any]]:
    rel = project.spec["annotation"].get("responses")
    if not rel:
        raise RunError(
            f"{project.display}: annotation.responses is not set; the judge needs the response texts"
        )
    rows = read_rows(project.path(rel), rel, ("id", "prompt_id", "text"))
    return {str(r["id"]): r for r in rows}


def _gold_texts(project: Project) -> dict[str, str]:
    gold = project.spec["annotation"].get("gold")
    if not gold:
        return {}
    texts: dict[str, str] = {}
    for row in read_rows(project.path(gold["path"]), gold["path"], ("response_a", "response_b")):
        texts[str(row["response_a"])] = str(row.get("text_a", ""))
        texts[str(row["response_b"])] = str(row.get("text_b", ""))
    return texts


def _from_tasks(project: Project) -> list[dict[str, Any]]:
    from rlhfspec.runtime.annotation.tasks import generate_tasks

    rel = project.spec["annotation"].get("responses")
    if not rel:
        raise RunError(f"{project.display}: annotation.responses is not set; `tasks` items need it")
    per_item = int(project.spec["annotation"]["annotators_per_item"])
    with tempfile.TemporaryDirectory(prefix="rlhfspec-judge-") as scratch:
        out = Path(scratch)
        generate_tasks(
            project,
            project.path(rel),
            out,
            annotators=[f"judge-{i}" for i in range(per_item)],
            responses_display=rel,
        )
        key = json.loads((out / "unblinding_key.json").read_text(encoding="utf-8"))["responses"]
        rows = [json.loads(line) for line in (out / "tasks.jsonl").read_text("utf-8").splitlines()]
    seen: dict[str, dict[str, Any]] = {}
    for task in rows:
        if task["item_id"] not in seen:
            seen[task["item_id"]] = {
                "item_id": task["item_id"],
                "prompt_id": task["prompt_id"],
                "response_a": key[task["response_a"]]["response_id"],
                "response_b": key[task["response_b"]]["response_id"],
                "gold": bool(task["gold"]),
            }
    return list(seen.values())


def _from_batches(project: Project) -> list[dict[str, Any]]:
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for batch in project.spec["annotation"]["batches"]:
        read = read_batch(
            project.path(batch["path"]),
            batch=batch["id"],
            fmt=batch["format"],
            criteria_version=batch["criteria_version"],
            display=batch["path"],
        )
        for record in read.records:
            if not is_ai(record):
                seen.setdefault(pair_key(record), record)
    return list(seen.values())


def load_items(project: Project, source: str, *, limit: int | None = None) -> list[Item]:
    """The pairs to judge from `source` (`tasks`, `batches` or a JSONL path), in item order."""
    if source == "tasks":
        rows = _from_tasks(project)
    elif source == "batches":
        rows = _from_batches(project)
    else:
        path = Path(source)
        rows = read_rows(path, source, ("item_id", "prompt_id", "response_a", "response_b"))
    responses = _responses(project)
    gold_texts = _gold_texts(project)
    pool = load_prompt_pool(project)
    fields = list(project.spec["judge"]["review"]["stratify_by"])
    items: list[Item] = []
    problems: list[str] = []
    seen: set[str] = set()
    for row in rows:
        prompt = pool.by_id.get(str(row["prompt_id"]))
        if prompt is not None and prompt.id not in pool.holdout_ids and not pool.in_focus(prompt):
            continue  # prompts.focus: outside the subset this project annotates
        if prompt is None or prompt.id in pool.holdout_ids:
            problems.append(
                f"item {row['item_id']}: prompt {row['prompt_id']} is "
                + ("a production-holdout prompt" if prompt else "in no prompt source")
            )
            continue
        first, second = sorted((str(row["response_a"]), str(row["response_b"])))
        texts = [
            responses.get(rid, {}).get("text") or gold_texts.get(rid) for rid in (first, second)
        ]
        missing = [rid for rid, text in zip((first, second), texts, strict=True) if text is None]
        problems.extend(
            f"item {row['item_id']}: response {r} is not in the responses" for r in missing
        )
        if missing or str(row["item_id"]) in seen:
            continue
        seen.add(str(row["item_id"]))
        strata = {
            f: prompt.kind if f == "source" else str(prompt.row.get(f, "-"))
            for f in fields
            if f != "confidence"
        }
        items.append(
            Item(
                str(row["item_id"]), prompt.id, prompt.text, first, second, str(texts[0]), str(texts[1]),
                bool(row.get("gold", False)), strata,
            )
        )  # fmt: skip
    if problems:
        shown = "\n  ".join(problems[:20])
        raise RunError(f"{len(problems)} item(s) cannot be judged:\n  {shown}")
    items.sort(key=lambda i: i.item_id)
    if limit is not None and limit < len(items):
        keep = sorted(
            random.Random(f"{project.seed}\x1fjudge-limit").sample(range(len(items)), limit)
        )
        items = [items[i] for i in keep]
    if not items:
        raise RunError(f"{project.display}: no pairs to judge from '{source}'")
    return items
