"""Reading what `rlhfspec tasks` is built from: responses, gold items, calibration items.

Each reader checks its rows whole (every required field a non-empty string,
ids unique) and refuses the file with one error that lists every bad line, so
a team fixes its files in one pass rather than one line per run. The
calibration items are read here too because live drawing must avoid their
pairs (a new annotator's test would otherwise reappear as live work).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfspec.common.jsonl import missing_strings, read_objects, refusal
from rlhfspec.runtime.project import Project

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


def read_rows(
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
class Item:
    item_id: str
    prompt_id: str
    prompt: str
    first: dict[str, Any]  # canonical order: the gold file's, or sorted by shown id
    second: dict[str, Any]
    gold: bool
    kind: str


def calibration_pairs(project: Project) -> frozenset[frozenset[str]]:
    block = project.spec["annotation"].get("calibration")
    if not block:
        return frozenset()
    rows = read_rows(
        project.path(block["path"]), block["path"], GOLD_FIELDS, "calibration items", "item_id"
    )
    return frozenset(frozenset((row["response_a"], row["response_b"])) for _, row in rows)


@dataclass
class Responses:
    rows: list[tuple[int, dict[str, Any]]]
    by_prompt: dict[str, dict[str, list[dict[str, Any]]]]
    system_of: dict[str, str]
    unknown: Counter[str]
    holdout_prompts: set[str]


def read_responses(path: Path, display: str, pool: Any) -> Responses:
    """Responses grouped by prompt and system; unknown and holdout prompts counted apart."""
    out = Responses(
        read_rows(path, display, RESPONSE_FIELDS, "responses", "id"), {}, {}, Counter(), set()
    )
    for _, row in out.rows:
        out.system_of[row["id"]] = row["system"]
        if row["prompt_id"] not in pool.by_id:
            out.unknown[row["prompt_id"]] += 1
        elif row["prompt_id"] in pool.holdout_ids:
            out.holdout_prompts.add(row["prompt_id"])
        else:
            out.by_prompt.setdefault(row["prompt_id"], {}).setdefault(row["system"], []).append(row)
    return out


def gold_item(row: dict[str, Any], system_of: dict[str, str], kind: str) -> Item:
    def side(key: str, text: str) -> dict[str, Any]:
        return {
            "id": row[key],
            "text": row[text],
            "system": system_of.get(row[key]),
            "prompt_id": row["prompt_id"],
        }

    return Item(
        row["item_id"],
        row["prompt_id"],
        row["prompt"],
        side("response_a", "text_a"),
        side("response_b", "text_b"),
        True,
        kind,
    )


def read_gold(project: Project, pool: Any, system_of: dict[str, str]) -> list[Item]:
    """The gold file's items (answers stay in the file); bad rows refuse it whole."""
    gold_cfg = project.spec["annotation"].get("gold")
    if not gold_cfg:
        return []
    display = gold_cfg["path"]
    problems: list[str] = []
    items: list[Item] = []
    for number, row in read_rows(
        project.path(display), display, GOLD_FIELDS, "gold items", "item_id"
    ):
        where = f"{display}: line {number}:"
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
            items.append(gold_item(row, system_of, prompt.kind if prompt else "unknown"))
    if problems:
        raise refusal("gold items refused", problems)
    return items
