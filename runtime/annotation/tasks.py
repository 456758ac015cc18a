"""`rlhfspec tasks SPEC --responses FILE -o DIR`: turn model responses into annotation work.

An item is a pair of responses from two different systems to one prompt.
This module decides who labels which item, in which order, in which
session, and what they are allowed to see, following the spec's
`annotation` block:

* overlap: every item goes to `annotators_per_item` distinct annotators
  (agreement needs it), greedily to the least-loaded ones, so loads differ
  by at most one item; among equally loaded annotators it prefers the one
  that has shared the fewest items with the others already chosen, so every
  pair of annotators overlaps (pairwise kappa needs shared items);
* order: with `randomize_order` each task's A/B order is a seeded coin,
  balanced per annotator (half of their tasks are swapped), and recorded in
  `swapped`: relative to the item's canonical order, which is the two shown
  response ids sorted for ordinary items (the convention the QC's
  AnnotationTable uses) and the gold file's order for gold items (the order
  `preferred` refers to);
* blinding: with `blind` response ids become `resp-<hmac-sha256(seed, id)[:12]>`
  and no system name is written; the map back is in `unblinding_key.json`
  only, which is not given to annotators;
* gold: gold items are mixed into each annotator's queue at seeded random
  positions, as many as put their share nearest the middle of
  `gold.share`; their answers (`preferred`, `rationale`) never leave the
  gold file;
* sessions: each queue is cut into as few sessions as keep every session
  within `session_max_minutes` at `minutes_per_task`, sized evenly.

Production-holdout prompts (the rule of `prompt_check`) and prompts no
source has are never turned into items. All randomness derives from the
spec's seed and a purpose label, per prompt or per annotator, so the same
inputs give the same bytes, and adding one prompt does not reshuffle the
rest.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.jsonl import read_objects, refusal
from rlhfspec.runtime.annotation.blinding import KEY_FORMAT, opaque_id
from rlhfspec.runtime.annotation.label_studio import write_label_studio
from rlhfspec.runtime.annotation.task_inputs import (
    Item,
    Responses,
    read_gold,
    read_responses,
)
from rlhfspec.runtime.annotation.task_plan import TaskPlan, make_plan, require_locked_criteria
from rlhfspec.runtime.project import Project
from rlhfspec.runtime.prompts.pool import load_prompt_pool

MAX_LISTED = 20


def _rng(seed: int, *parts: str) -> random.Random:
    """An independent stream per purpose (and per prompt or annotator)."""
    return random.Random("\x1f".join([str(seed), *parts]))


def gold_count(regular: int, share: tuple[float, float], available: int) -> int:
    """Gold tasks for an annotator with `regular` ordinary tasks.

    The count whose share g / (regular + g) is inside the range and nearest
    its middle; if none fits (too few tasks, too few gold items), the
    nearest to the middle, and the summary warns.
    """
    low, high = share
    middle = (low + high) / 2
    best: tuple[bool, float, int] | None = None
    for g in range(available + 1):
        value = g / (regular + g) if regular + g else 0.0
        key = (not (low - 1e-9 <= value <= high + 1e-9), abs(value - middle), g)
        if best is None or key < best:
            best = key
    return best[2] if best else 0


@dataclass
class TaskSummary:
    """What was generated; `to_json` is what summary.json holds (no paths: byte-stable)."""

    data: dict[str, Any]
    paths: list[Path] = field(default_factory=list)

    @property
    def tasks(self) -> int:
        return int(self.data["tasks"])

    @property
    def items(self) -> int:
        return int(self.data["items"])

    @property
    def warnings(self) -> list[str]:
        return list(self.data["warnings"])

    def to_json(self) -> str:
        doc = {"format": "rlhfspec.tasks_summary/1", **self.data}
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"

    def format_text(self) -> str:
        d = self.data
        s = d["skipped"]
        lines = [
            f"batch {d['batch']}: {d['items']} items x {d['annotators_per_item']} annotators"
            f" + {d['gold_tasks']} gold tasks = {d['tasks']} tasks",
            f"skipped: {s['holdout_prompts']} holdout prompt(s), {s['unknown_prompts']} unknown prompt id(s) "
            f"({s['unknown_prompt_responses']} responses), {s['single_system_prompts']} prompt(s) with fewer than "
            f"2 systems, {s['gold_duplicate_pairs']} drawn pair(s) skipped as already gold or calibration, {s['over_limit']} over --limit",
        ]
        for name, a in d["per_annotator"].items():
            lines.append(
                f"  {name}: {a['tasks']} tasks ({a['gold']} gold, share {a['gold_share']:.3f}), "
                f"{a['sessions']} sessions, ~{a['estimated_minutes']:g} min "
                f"(longest session {a['longest_session_minutes']:g} min)"
            )
        lines += [f"warning: {w}" for w in d["warnings"]]
        lines += [f"wrote {p}" for p in self.paths]
        return "\n".join(lines) + "\n"


def _draw_items(
    plan: TaskPlan,
    pool: Any,
    responses: Responses,
    gold_items: list[Item],
    pairs_per_prompt: int,
    counts: Counter[str],
) -> list[Item]:
    """`pairs_per_prompt` seeded system pairs per prompt, never a pair that is already gold."""
    gold_pairs = {frozenset((g.first["id"], g.second["id"])) for g in gold_items}
    gold_pairs |= plan.calibration_pairs
    items: list[Item] = []
    counts["outside_focus_prompts"] = len(pool.outside_focus)
    for prompt in pool.focused:  # prompts.focus narrows annotation to a high-value subset
        systems = responses.by_prompt.get(prompt.id)
        if systems is None or len(systems) < 2:
            counts["prompts_without_responses" if systems is None else "single_system_prompts"] += 1
            continue
        rng = _rng(plan.seed, "pair", prompt.id)
        combos = list(itertools.combinations(sorted(systems), 2))
        rng.shuffle(combos)
        taken = 0
        for one, two in combos:
            if taken == pairs_per_prompt:
                break
            first, second = rng.choice(systems[one]), rng.choice(systems[two])
            if frozenset((first["id"], second["id"])) in gold_pairs:
                counts["gold_duplicate_pairs"] += 1  # seen as gold or in calibration already
                continue
            taken += 1
            first, second = sorted((first, second), key=lambda r: plan.shown(r["id"]))
            item_id = opaque_id(
                plan.seed, "item", prompt.id, *sorted((first["id"], second["id"])), prefix="item"
            )
            items.append(Item(item_id, prompt.id, prompt.text, first, second, False, prompt.kind))
    return items


def _requeued_items(
    path: Path, responses: Responses, pool: Any
) -> tuple[list[Item], dict[str, set[str]]]:
    """Items from aggregate's requeue.jsonl, with the annotators who already voted on each."""
    by_id = {row["id"]: row for _, row in responses.rows}
    items: list[Item] = []
    voted: dict[str, set[str]] = {}
    problems: list[str] = []
    for number, row in read_objects(path, str(path), problems):
        lo, hi = by_id.get(str(row.get("response_lo"))), by_id.get(str(row.get("response_hi")))
        prompt = pool.by_id.get(row.get("prompt_id"))
        if lo is None or hi is None or prompt is None:
            problems.append(
                f"{path}: line {number}: responses or prompt not in --responses / the prompt pool"
            )
            continue
        items.append(Item(str(row["item_id"]), prompt.id, prompt.text, lo, hi, False, prompt.kind))
        voted[str(row["item_id"])] = set(row.get("annotators") or [])
    if problems:
        raise refusal("requeue file refused", problems)
    return items, voted


def _assign(plan: TaskPlan, items: list[Item], voted: dict[str, set[str]]) -> dict[str, list[Item]]:
    """Least-loaded first, then least overlap with those already chosen; never someone who
    already voted on the item (requeue)."""
    assign_rng = _rng(plan.seed, "assign")
    order = list(range(len(items)))
    assign_rng.shuffle(order)
    load = dict.fromkeys(plan.names, 0)
    together: Counter[tuple[str, str]] = Counter()
    queues: dict[str, list[Item]] = {a: [] for a in plan.names}
    for index in order:
        tiebreak = {a: assign_rng.random() for a in plan.names}
        done = voted.get(items[index].item_id, set())
        free = [a for a in plan.names if a not in done]
        chosen: list[str] = []
        for _ in range(min(plan.per_item, len(free))):
            best = min(
                (a for a in free if a not in chosen),
                key=lambda a: (load[a], sum(together[(a, c)] for c in chosen), tiebreak[a]),
            )
            chosen.append(best)
        for a in chosen:
            load[a] += 1
            queues[a].append(items[index])
        for a, b in itertools.permutations(chosen, 2):
            together[(a, b)] += 1
    return queues


def _queue(
    plan: TaskPlan, name: str, regular: list[Item], gold_items: list[Item], warnings: list[str]
) -> tuple[list[Item], int]:
    """An annotator's shuffled queue with gold items mixed in at seeded positions."""
    regular = sorted(regular, key=lambda i: i.item_id)
    _rng(plan.seed, "queue", name).shuffle(regular)
    queue = list(regular)
    if plan.gold_share is None:
        return queue, 0
    low, high = plan.gold_share
    n_gold = gold_count(len(regular), plan.gold_share, len(gold_items))
    gold_rng = _rng(plan.seed, "gold", name)
    picked = gold_rng.sample(gold_items, n_gold)
    for position, item in zip(
        sorted(gold_rng.sample(range(len(regular) + n_gold), n_gold)), picked, strict=True
    ):
        queue.insert(position, item)
    value = n_gold / len(queue) if queue else 0.0
    if not (low - 1e-9 <= value <= high + 1e-9):
        warnings.append(
            f"{name}: gold share {value:.3f} is outside [{low:g}, {high:g}] ({len(regular)} tasks, "
            f"{len(gold_items)} gold items)"
        )
    return queue, n_gold


def _flips(plan: TaskPlan, name: str, total: int) -> list[bool]:
    """Seeded A/B swaps, balanced per annotator (half of the tasks, the odd one by coin)."""
    if not plan.randomize:
        return [False] * total
    order_rng = _rng(plan.seed, "order", name)
    swapped = total // 2 + (1 if total % 2 and order_rng.random() < 0.5 else 0)
    flips = [True] * swapped + [False] * (total - swapped)
    order_rng.shuffle(flips)
    return flips


def _session_sizes(plan: TaskPlan, total: int) -> list[int]:
    """As few sessions as keep each within the limit, sized evenly."""
    n = math.ceil(total / plan.per_session) if total else 0
    return [total // n + (1 if s < total % n else 0) for s in range(n)]


def _annotator_tasks(
    plan: TaskPlan,
    name: str,
    queue: list[Item],
    flips: list[bool],
    sizes: list[int],
    first_number: int,
) -> list[dict[str, Any]]:
    """The task rows of one annotator, sessions in order."""
    rows: list[dict[str, Any]] = []
    index = 0
    for s, size in enumerate(sizes, start=1):
        session = f"{plan.batch}-{name}-s{s:03d}"
        for position in range(1, size + 1):
            item, swap = queue[index], flips[index]
            left, right = (item.second, item.first) if swap else (item.first, item.second)
            rows.append(
                {
                    "task_id": f"{plan.batch}-t{first_number + len(rows):06d}",
                    "batch": plan.batch,
                    "item_id": item.item_id,
                    "prompt_id": item.prompt_id,
                    "prompt": item.prompt,
                    "response_a": plan.shown(left["id"]),
                    "response_b": plan.shown(right["id"]),
                    "text_a": left["text"],
                    "text_b": right["text"],
                    "swapped": swap,
                    "annotator": name,
                    "session": session,
                    "position": position,
                    "gold": item.gold,
                    "criteria_version": plan.version,
                    "_raw": (left["id"], right["id"], plan.shown_item(item)),
                }
            )
            index += 1
    return rows


def _key(
    plan: TaskPlan, project: Project, items: list[Item], tasks: list[dict[str, Any]]
) -> dict[str, Any]:
    """unblinding_key.json: shown response, item and task ids back to the real ones."""
    responses: dict[str, dict[str, Any]] = {}
    for item in items:
        for response in (item.first, item.second):
            opaque = plan.shown(response["id"])
            if opaque in responses and responses[opaque]["response_id"] != response["id"]:
                raise RunError(
                    f"opaque id clash for responses {responses[opaque]['response_id']} and "
                    f"{response['id']}; change the spec's seed"
                )
            responses[opaque] = {
                "response_id": response["id"],
                "system": response.get("system"),
                "prompt_id": response["prompt_id"],
            }
    used = {t["response_a"] for t in tasks} | {t["response_b"] for t in tasks}
    key_tasks: dict[str, Any] = {}
    shown_items: dict[str, Any] = {}
    for t in tasks:
        raw_a, raw_b, shown_item = t["_raw"]
        shown_items[shown_item] = {
            "item_id": t["item_id"],
            "prompt_id": t["prompt_id"],
            "gold": t["gold"],
        }
        key_tasks[t["task_id"]] = {
            "task_id": t["task_id"], "item_id": t["item_id"], "prompt_id": t["prompt_id"], "gold": t["gold"],
            "annotator": t["annotator"], "session": t["session"], "position": t["position"], "swapped": t["swapped"],
            "response_a": raw_a, "response_b": raw_b,
            "shown_response_a": t["response_a"], "shown_response_b": t["response_b"], "shown_item_id": shown_item,
        }  # fmt: skip
    return {
        "format": KEY_FORMAT,
        "spec": project.name,
        "batch": plan.batch,
        "seed": plan.seed,
        "blind": plan.blind,
        "method": "resp-<first 12 hex digits of HMAC-SHA256(key=seed, 'response' 0x1f response id)>"
        if plan.blind
        else "identity (annotation.blind is false)",
        "responses": {k: responses[k] for k in sorted(used)},
        "items": dict(sorted(shown_items.items())),
        "tasks": key_tasks,
    }


ANNOTATOR_FIELDS = (
    "task_id",
    "batch",
    "item_id",
    "prompt",
    "response_a",
    "response_b",
    "text_a",
    "text_b",
    "annotator",
    "session",
    "position",
    "criteria_version",
)
"""What an annotator's own task file shows: no prompt id, gold flag or planned swap."""


def annotator_view(task: dict[str, Any]) -> dict[str, Any]:
    """A task as the annotator sees it: opaque item id, nothing that tells gold or source."""
    row = {name: task[name] for name in ANNOTATOR_FIELDS}
    row["item_id"] = task["_raw"][2]
    return row


def generate_tasks(
    project: Project,
    responses: Path,
    out_dir: Path,
    *,
    annotators: Sequence[str],
    pairs_per_prompt: int = 1,
    limit: int | None = None,
    batch: str | None = None,
    responses_display: str | None = None,
    per_annotator: bool = False,
    requeue: Path | None = None,
) -> TaskSummary:
    """Build the annotation tasks for `responses` and write them into `out_dir`.

    `responses` is JSONL of `{"id", "prompt_id", "system", "text"}`; `annotators` are the
    pool's ids (order does not matter: the output is the same bytes for any order);
    `pairs_per_prompt` system pairs are drawn per prompt (at most all pairs); `limit` keeps a
    seeded random sample of that many items, which keeps the source mix rather than the first
    prompts in file order; `batch` names the batch (default `tasks-<criteria version>`) and
    prefixes task and session ids so they stay unique across batches; `requeue` (aggregate's
    requeue.jsonl) sends those items out again, to annotators who have not voted on them;
    `per_annotator` also writes one Label Studio import per annotator (Label Studio Community
    cannot assign tasks). Writes tasks.jsonl (the lead's full view), annotators/<id>.jsonl (what
    each annotator sees), unblinding_key.json, summary.json and label_studio/, each
    atomically. Unlocked criteria, bad rows, too few annotators or a task longer than a
    session raise RunError; everything skipped is counted in the summary.
    """
    require_locked_criteria(project)
    if pairs_per_prompt < 1:
        raise RunError(f"pairs per prompt must be at least 1, got {pairs_per_prompt}")
    if limit is not None and limit < 1:
        raise RunError(f"--limit must be at least 1, got {limit}")
    plan = make_plan(project, annotators, batch)
    display = responses_display or str(responses)
    pool = load_prompt_pool(project)
    read = read_responses(responses, display, pool)
    gold_items = read_gold(project, pool, read.system_of)
    counts: Counter[str] = Counter()
    voted: dict[str, set[str]] = {}
    if requeue is not None:
        items, voted = _requeued_items(requeue, read, pool)
    else:
        items = _draw_items(plan, pool, read, gold_items, pairs_per_prompt, counts)
    if limit is not None and len(items) > limit:
        keep = sorted(_rng(plan.seed, "limit").sample(range(len(items)), limit))
        counts["over_limit"] = len(items) - limit
        items = [items[i] for i in keep]
    if not items:
        raise RunError(
            f"{display}: no items to annotate (every prompt was held out, unknown, or had "
            "responses from fewer than 2 systems)"
        )
    clash = {i.item_id for i in items} & {g.item_id for g in gold_items}
    if clash:
        raise RunError(
            f"gold item id(s) {', '.join(sorted(clash))} collide with generated item ids"
        )
    queues = _assign(plan, items, voted)
    warnings: list[str] = []
    tasks, per_annotator_stats = _all_tasks(plan, queues, gold_items, warnings)
    data = _summary(
        plan, project, items, gold_items, tasks, read, counts, per_annotator_stats, warnings
    )
    return _write(plan, project, out_dir, items + gold_items, tasks, data, per_annotator)


def _all_tasks(
    plan: TaskPlan, queues: dict[str, list[Item]], gold_items: list[Item], warnings: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every annotator's tasks in plan order (gold mixed in, A/B flips, sessions), and the
    per-annotator figures summary.json reports."""
    tasks: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    for name in plan.names:
        queue, n_gold = _queue(plan, name, queues[name], gold_items, warnings)
        flips, sizes = _flips(plan, name, len(queue)), _session_sizes(plan, len(queue))
        tasks += _annotator_tasks(plan, name, queue, flips, sizes, len(tasks) + 1)
        stats[name] = {
            "tasks": len(queue),
            "regular": len(queue) - n_gold,
            "gold": n_gold,
            "gold_share": round(n_gold / len(queue), 4) if queue else 0.0,
            "swapped": sum(flips),
            "sessions": len(sizes),
            "tasks_per_session": sizes,
            "estimated_minutes": round(len(queue) * plan.minutes, 2),
            "longest_session_minutes": round(max(sizes, default=0) * plan.minutes, 2),
        }
    return tasks, stats


def _summary(
    plan: TaskPlan,
    project: Project,
    items: list[Item],
    gold_items: list[Item],
    tasks: list[dict[str, Any]],
    read: Responses,
    counts: Counter[str],
    per_annotator: dict[str, Any],
    warnings: list[str],
) -> dict[str, Any]:
    return {
        "spec": project.name,
        "batch": plan.batch,
        "criteria_version": plan.version,
        "seed": plan.seed,
        "blind": plan.blind,
        "randomize_order": plan.randomize,
        "annotators_per_item": plan.per_item,
        "minutes_per_task": plan.minutes,
        "session_max_minutes": plan.session_max,
        "tasks_per_session_max": plan.per_session,
        "dimensions_asked": list(plan.dimensions),
        "items": len(items),
        "items_per_kind": dict(sorted(Counter(item.kind for item in items).items())),
        "gold_items_available": len(gold_items),
        "gold_tasks": sum(a["gold"] for a in per_annotator.values()),
        "tasks": len(tasks),
        "responses": len(read.rows),
        "skipped": {
            "holdout_prompts": len(read.holdout_prompts),
            "unknown_prompts": len(read.unknown),
            "unknown_prompt_responses": sum(read.unknown.values()),
            "unknown_prompt_ids": sorted(read.unknown)[:MAX_LISTED],
            "single_system_prompts": counts["single_system_prompts"],
            "prompts_without_responses": counts["prompts_without_responses"],
            "outside_focus_prompts": counts["outside_focus_prompts"],
            "gold_duplicate_pairs": counts["gold_duplicate_pairs"],
            "over_limit": counts["over_limit"],
        },
        "per_annotator": per_annotator,
        "warnings": warnings,
    }


def _write(
    plan: TaskPlan,
    project: Project,
    out_dir: Path,
    items: list[Item],
    tasks: list[dict[str, Any]],
    data: dict[str, Any],
    per_annotator: bool,
) -> TaskSummary:
    """Every output, atomically: the lead's tasks, the key, the summary, the annotators' views."""
    key = _key(plan, project, items, tasks)
    views = [annotator_view(t) for t in tasks]
    for t in tasks:
        del t["_raw"]
    paths = [out_dir / "tasks.jsonl", out_dir / "unblinding_key.json", out_dir / "summary.json"]
    atomic_write_text(paths[0], "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tasks))
    atomic_write_text(paths[1], json.dumps(key, indent=2, ensure_ascii=False) + "\n")
    summary = TaskSummary(data, [])
    atomic_write_text(paths[2], summary.to_json())
    ann = project.spec["annotation"]
    settings = {
        "criteria_version": plan.version,
        "allow_tie": bool(ann["allow_tie"]),
        "justification": str(ann["justification"]),
        "dimensions": [(d, _dimension_name(project, d)) for d in plan.dimensions],
        "dimensions_required": ann["dimension_judgements"]["mode"] == "required",
    }
    paths += write_label_studio(views, out_dir / "label_studio", **settings)
    for name in plan.names if per_annotator else []:
        mine = [v for v in views if v["annotator"] == name]
        paths += write_label_studio(mine, out_dir / "label_studio" / name, **settings)
    for name in plan.names:
        path = out_dir / "annotators" / f"{name}.jsonl"
        mine = [v for v in views if v["annotator"] == name]
        atomic_write_text(path, "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in mine))
        paths.append(path)
    summary.paths = paths
    return summary


def _dimension_name(project: Project, dim: str) -> str:
    return next(
        str(d.get("name") or d["id"])
        for d in project.spec["criteria"]["dimensions"]
        if d["id"] == dim
    )
