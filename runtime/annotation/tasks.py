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

import hashlib
import hmac
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
from rlhfspec.common.jsonl import missing_strings, read_objects, refusal
from rlhfspec.runtime.annotation.label_studio import write_label_studio
from rlhfspec.runtime.project import Project
from rlhfspec.runtime.prompts.pool import load_prompt_pool

MAX_LISTED = 20
RESPONSE_FIELDS = ("id", "prompt_id", "system", "text")
GOLD_FIELDS = (
    "item_id",
    "prompt_id",
    "prompt",
    "response_a",
    "response_b",
    "text_a",
    "text_b",
    "preferred",
)
GOLD_CHOICES = ("A", "B", "tie")


def _rng(seed: int, *parts: str) -> random.Random:
    """An independent stream per purpose (and per prompt or annotator)."""
    return random.Random("\x1f".join([str(seed), *parts]))


def opaque_id(seed: int, kind: str, *parts: str, prefix: str) -> str:
    """A stable id that reveals nothing without the seed: HMAC-SHA256, 12 hex digits."""
    digest = hmac.new(str(seed).encode(), "\x1f".join([kind, *parts]).encode(), hashlib.sha256)
    return f"{prefix}-{digest.hexdigest()[:12]}"


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


def _read_jsonl(
    path: Path, display: str, required: tuple[str, ...], what: str, unique: str
) -> list[tuple[int, dict[str, Any]]]:
    """Rows with every required field a non-empty string; one RunError lists the bad ones."""
    problems: list[str] = []
    rows: list[tuple[int, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for number, row in read_objects(path, display, problems):
        bad = missing_strings(row, required)
        problems.extend(f"{display}: line {number}: field '{f}': {m}" for f, m in bad)
        if bad:
            continue
        if row[unique] in seen:
            problems.append(
                f"{display}: line {number}: field '{unique}': '{row[unique]}' already used "
                f"at line {seen[row[unique]]}"
            )
            continue
        seen[row[unique]] = number
        rows.append((number, row))
    if problems:
        raise refusal(f"{what} refused", problems)
    return rows


@dataclass
class _Item:
    item_id: str
    prompt_id: str
    prompt: str
    first: dict[str, Any]  # canonical order: the gold file's, or sorted by shown id
    second: dict[str, Any]
    gold: bool
    kind: str


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
        return json.dumps(self.data, indent=2, ensure_ascii=False) + "\n"

    def format_text(self) -> str:
        d = self.data
        s = d["skipped"]
        lines = [
            f"batch {d['batch']}: {d['items']} items x {d['annotators_per_item']} annotators"
            f" + {d['gold_tasks']} gold tasks = {d['tasks']} tasks",
            f"skipped: {s['holdout_prompts']} holdout prompt(s), {s['unknown_prompts']} unknown prompt id(s) "
            f"({s['unknown_prompt_responses']} responses), {s['single_system_prompts']} prompt(s) with fewer than "
            f"2 systems, {s['gold_duplicate_pairs']} drawn pair(s) skipped as already gold, {s['over_limit']} over --limit",
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
) -> TaskSummary:
    """Build the annotation tasks for `responses` and write them into `out_dir`.

    `responses` is JSONL of `{"id", "prompt_id", "system", "text"}`;
    `annotators` are the pool's ids (order does not matter: the output is
    the same bytes for any order); `pairs_per_prompt` system pairs are drawn
    per prompt (at most all pairs); `limit` keeps a seeded random sample of
    that many items, which keeps the source mix rather than the first
    prompts in file order; `batch` names the batch (default
    `tasks-<criteria version>`) and prefixes task and session ids so they stay
    unique across batches. Writes tasks.jsonl, unblinding_key.json,
    summary.json, label_studio/tasks.json and label_studio/config.xml, each
    atomically. Bad rows, too few annotators or a task longer than a
    session raise RunError; everything skipped is counted in the summary.
    """
    spec = project.spec
    ann = spec["annotation"]
    seed = project.seed
    version = str(spec["criteria"]["version"])
    batch = batch or f"tasks-{version}"
    per_item = int(ann["annotators_per_item"])
    blind = bool(ann["blind"])
    display = responses_display or str(responses)

    names = list(annotators)
    if any(not isinstance(a, str) or not a.strip() for a in names):
        raise RunError("annotator ids must be non-empty strings")
    dupes = sorted(a for a, c in Counter(names).items() if c > 1)
    if dupes:
        raise RunError(f"annotator(s) listed twice: {', '.join(dupes)}")
    names = sorted(names)
    if len(names) < per_item:
        raise RunError(
            f"annotation.annotators_per_item is {per_item} but only {len(names)} annotator(s) "
            f"were given; every item needs {per_item} distinct annotators"
        )
    if pairs_per_prompt < 1:
        raise RunError(f"pairs per prompt must be at least 1, got {pairs_per_prompt}")
    if limit is not None and limit < 1:
        raise RunError(f"--limit must be at least 1, got {limit}")
    minutes = float(ann["minutes_per_task"])
    session_max = float(ann["session_max_minutes"])
    per_session = math.floor(session_max / minutes + 1e-9)
    if per_session < 1:
        raise RunError(
            f"one task takes {minutes:g} minutes, longer than a session "
            f"(annotation.session_max_minutes = {session_max:g})"
        )

    pool = load_prompt_pool(project)

    # Responses, grouped by prompt and system -------------------------------
    by_prompt: dict[str, dict[str, list[dict[str, Any]]]] = {}
    system_of: dict[str, str] = {}
    unknown: Counter[str] = Counter()
    holdout_prompts: set[str] = set()
    rows = _read_jsonl(responses, display, RESPONSE_FIELDS, "responses", "id")
    for _, row in rows:
        system_of[row["id"]] = row["system"]
        if row["prompt_id"] not in pool.by_id:
            unknown[row["prompt_id"]] += 1
            continue
        if row["prompt_id"] in pool.holdout_ids:
            holdout_prompts.add(row["prompt_id"])
            continue
        by_prompt.setdefault(row["prompt_id"], {}).setdefault(row["system"], []).append(row)

    # Gold ------------------------------------------------------------------
    gold_items: list[_Item] = []
    gold_pairs: set[frozenset[str]] = set()
    gold_cfg = ann.get("gold")
    if gold_cfg:
        gold_display = gold_cfg["path"]
        problems: list[str] = []
        for number, row in _read_jsonl(
            project.path(gold_cfg["path"]), gold_display, GOLD_FIELDS, "gold items", "item_id"
        ):
            where = f"{gold_display}: line {number}:"
            if row["preferred"] not in GOLD_CHOICES:
                problems.append(
                    f"{where} field 'preferred': must be A, B or tie, got {row['preferred']!r}"
                )
            elif row["response_a"] == row["response_b"]:
                problems.append(f"{where} field 'response_b': is the same response as response_a")
            elif row["prompt_id"] in pool.holdout_ids:
                problems.append(
                    f"{where} field 'prompt_id': '{row['prompt_id']}' is a production-holdout "
                    "prompt, which is never annotated"
                )
            else:
                prompt = pool.by_id.get(row["prompt_id"])
                gold_items.append(
                    _Item(
                        row["item_id"],
                        row["prompt_id"],
                        row["prompt"],
                        {
                            "id": row["response_a"],
                            "text": row["text_a"],
                            "system": system_of.get(row["response_a"]),
                            "prompt_id": row["prompt_id"],
                        },
                        {
                            "id": row["response_b"],
                            "text": row["text_b"],
                            "system": system_of.get(row["response_b"]),
                            "prompt_id": row["prompt_id"],
                        },
                        True,
                        prompt.kind if prompt else "unknown",
                    )
                )
                gold_pairs.add(frozenset((row["response_a"], row["response_b"])))
        if problems:
            raise refusal("gold items refused", problems)

    def shown(response_id: str) -> str:
        return opaque_id(seed, "response", response_id, prefix="resp") if blind else response_id

    # Items -----------------------------------------------------------------
    items: list[_Item] = []
    single_system = gold_duplicates = no_responses = 0
    for prompt in pool.focused:  # prompts.focus narrows annotation to a high-value subset
        systems = by_prompt.get(prompt.id)
        if systems is None:
            no_responses += 1
            continue
        if len(systems) < 2:
            single_system += 1
            continue
        rng = _rng(seed, "pair", prompt.id)
        combos = list(itertools.combinations(sorted(systems), 2))
        rng.shuffle(combos)
        taken = 0
        for one, two in combos:
            if taken == pairs_per_prompt:
                break
            first, second = rng.choice(systems[one]), rng.choice(systems[two])
            if frozenset((first["id"], second["id"])) in gold_pairs:
                # Already a gold item: the annotator would see the same pair twice.
                gold_duplicates += 1
                continue
            taken += 1
            first, second = sorted((first, second), key=lambda r: shown(r["id"]))
            item_id = opaque_id(
                seed, "item", prompt.id, *sorted((first["id"], second["id"])), prefix="item"
            )
            items.append(_Item(item_id, prompt.id, prompt.text, first, second, False, prompt.kind))
    over_limit = 0
    if limit is not None and len(items) > limit:
        keep = sorted(_rng(seed, "limit").sample(range(len(items)), limit))
        over_limit = len(items) - limit
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

    # Opaque ids must stay one-to-one (48 bits: a clash is astronomically rare, but never silent).
    key: dict[str, dict[str, Any]] = {}
    for item in items + gold_items:
        for response in (item.first, item.second):
            opaque = shown(response["id"])
            entry = {
                "response_id": response["id"],
                "system": response.get("system"),
                "prompt_id": response["prompt_id"],
            }
            if opaque in key and key[opaque]["response_id"] != response["id"]:
                raise RunError(
                    f"opaque id clash for responses {key[opaque]['response_id']} and {response['id']}; "
                    "change the spec's seed"
                )
            key[opaque] = entry

    # Assignment: least-loaded first, then least overlap with those already chosen.
    assign_rng = _rng(seed, "assign")
    order = list(range(len(items)))
    assign_rng.shuffle(order)
    load = dict.fromkeys(names, 0)
    together: Counter[tuple[str, str]] = Counter()
    queues: dict[str, list[_Item]] = {a: [] for a in names}
    for index in order:
        tiebreak = {a: assign_rng.random() for a in names}
        chosen: list[str] = []
        for _ in range(per_item):
            best = min(
                (a for a in names if a not in chosen),
                key=lambda a: (load[a], sum(together[(a, c)] for c in chosen), tiebreak[a]),
            )
            chosen.append(best)
        for a in chosen:
            load[a] += 1
            queues[a].append(items[index])
        for a, b in itertools.permutations(chosen, 2):
            together[(a, b)] += 1

    # Queues: shuffle, mix gold in, flip orders, cut sessions --------------
    share_range = (
        (float(gold_cfg["share"][0]), float(gold_cfg["share"][1])) if gold_cfg else (0.0, 0.0)
    )
    warnings: list[str] = []
    tasks: list[dict[str, Any]] = []
    per_annotator: dict[str, Any] = {}
    for name in names:
        regular = sorted(queues[name], key=lambda i: i.item_id)
        _rng(seed, "queue", name).shuffle(regular)
        queue: list[_Item] = list(regular)
        n_gold = 0
        if gold_cfg:
            n_gold = gold_count(len(regular), share_range, len(gold_items))
            gold_rng = _rng(seed, "gold", name)
            picked = gold_rng.sample(gold_items, n_gold)
            for position, item in zip(
                sorted(gold_rng.sample(range(len(regular) + n_gold), n_gold)), picked, strict=True
            ):
                queue.insert(position, item)
            value = n_gold / len(queue) if queue else 0.0
            if not (share_range[0] - 1e-9 <= value <= share_range[1] + 1e-9):
                warnings.append(
                    f"{name}: gold share {value:.3f} is outside [{share_range[0]:g}, "
                    f"{share_range[1]:g}] ({len(regular)} tasks, {len(gold_items)} gold items)"
                )
        order_rng = _rng(seed, "order", name)
        total = len(queue)
        if ann["randomize_order"]:
            swapped_count = total // 2 + (1 if total % 2 and order_rng.random() < 0.5 else 0)
            flips = [True] * swapped_count + [False] * (total - swapped_count)
            order_rng.shuffle(flips)
        else:
            flips = [False] * total
        n_sessions = math.ceil(total / per_session) if total else 0
        sizes = [
            total // n_sessions + (1 if s < total % n_sessions else 0) for s in range(n_sessions)
        ]
        index = 0
        for s, size in enumerate(sizes, start=1):
            session = f"{batch}-{name}-s{s:03d}"
            for position in range(1, size + 1):
                item, swap = queue[index], flips[index]
                left, right = (item.second, item.first) if swap else (item.first, item.second)
                tasks.append(
                    {
                        "task_id": f"{batch}-t{len(tasks) + 1:06d}",
                        "batch": batch,
                        "item_id": item.item_id,
                        "prompt_id": item.prompt_id,
                        "prompt": item.prompt,
                        "response_a": shown(left["id"]),
                        "response_b": shown(right["id"]),
                        "text_a": left["text"],
                        "text_b": right["text"],
                        "swapped": swap,
                        "annotator": name,
                        "session": session,
                        "position": position,
                        "gold": item.gold,
                        "criteria_version": version,
                    }
                )
                index += 1
        per_annotator[name] = {
            "tasks": total,
            "regular": len(regular),
            "gold": n_gold,
            "gold_share": round(n_gold / total, 4) if total else 0.0,
            "swapped": sum(flips),
            "sessions": n_sessions,
            "tasks_per_session": sizes,
            "estimated_minutes": round(total * minutes, 2),
            "longest_session_minutes": round(max(sizes, default=0) * minutes, 2),
        }

    kinds = Counter(item.kind for item in items)
    data = {
        "spec": project.name,
        "batch": batch,
        "criteria_version": version,
        "seed": seed,
        "blind": blind,
        "randomize_order": bool(ann["randomize_order"]),
        "annotators_per_item": per_item,
        "minutes_per_task": minutes,
        "session_max_minutes": session_max,
        "tasks_per_session_max": per_session,
        "items": len(items),
        "items_per_kind": dict(sorted(kinds.items())),
        "gold_items_available": len(gold_items),
        "gold_tasks": sum(a["gold"] for a in per_annotator.values()),
        "tasks": len(tasks),
        "responses": len(rows),
        "skipped": {
            "holdout_prompts": len(holdout_prompts),
            "unknown_prompts": len(unknown),
            "unknown_prompt_responses": sum(unknown.values()),
            "unknown_prompt_ids": sorted(unknown)[:MAX_LISTED],
            "single_system_prompts": single_system,
            "prompts_without_responses": no_responses,
            "outside_focus_prompts": len(pool.outside_focus),
            "gold_duplicate_pairs": gold_duplicates,
            "over_limit": over_limit,
        },
        "per_annotator": per_annotator,
        "warnings": warnings,
    }
    used = {t["response_a"] for t in tasks} | {t["response_b"] for t in tasks}
    unblinding = {
        "spec": project.name,
        "batch": batch,
        "seed": seed,
        "blind": blind,
        "method": "resp-<first 12 hex digits of HMAC-SHA256(key=seed, 'response' 0x1f response id)>"
        if blind
        else "identity (annotation.blind is false)",
        "responses": {k: key[k] for k in sorted(used)},
    }

    paths = [out_dir / "tasks.jsonl", out_dir / "unblinding_key.json", out_dir / "summary.json"]
    atomic_write_text(paths[0], "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tasks))
    atomic_write_text(paths[1], json.dumps(unblinding, indent=2, ensure_ascii=False) + "\n")
    summary = TaskSummary(data, [])
    atomic_write_text(paths[2], summary.to_json())
    paths += write_label_studio(
        tasks,
        out_dir / "label_studio",
        criteria_version=version,
        allow_tie=bool(ann["allow_tie"]),
        justification=str(ann["justification"]),
    )
    summary.paths = paths
    return summary
