"""Tasks as a team would import them into Label Studio's stock pairwise templates: the
example's prompt and response texts under the templates' own data fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

EXAMPLE = ROOT / "specs" / "support-assistant"
RLHF_TITLE = "Human Preference collection for RLHF"
PAIRWISE_TITLE = "Pairwise classification"
HOLDOUT = {f"usage-{n:04d}" for n in range(352, 391)}


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def prompt_texts() -> dict[str, str]:
    return {
        row["id"]: row["text"]
        for path in sorted((EXAMPLE / "data" / "prompts").glob("*.jsonl"))
        for row in rows(path)
    }


def response_ids() -> dict[str, str]:
    """Exact response text -> id (the example's few repeated texts are left out)."""
    seen: dict[str, list[str]] = {}
    for row in rows(EXAMPLE / "data" / "responses.jsonl"):
        seen.setdefault(row["text"], []).append(row["id"])
    return {text: ids[0] for text, ids in seen.items() if len(ids) == 1}


def _pairs(skip: int, count: int) -> list[tuple[str, str, str]]:
    """(prompt id, first text, second text) of `count` prompts outside the holdout."""
    unique = response_ids()
    by_prompt: dict[str, list[str]] = {}
    for row in rows(EXAMPLE / "data" / "responses.jsonl"):
        if row["text"] in unique and row["prompt_id"] not in HOLDOUT:
            by_prompt.setdefault(row["prompt_id"], []).append(row["text"])
    chosen = [p for p in sorted(by_prompt) if len(by_prompt[p]) >= 2][skip : skip + count]
    return [(p, by_prompt[p][0], by_prompt[p][1]) for p in chosen]


def rlhf_tasks(count: int = 11) -> list[dict[str, Any]]:
    """`prompt` / `answer1` / `answer2` tasks, the first reflowed as a paste may be, the last
    a gold item's pair (the gold file's own texts)."""
    prompts = prompt_texts()
    tasks = [
        {"data": {"prompt": prompts[p], "answer1": a, "answer2": b}} for p, a, b in _pairs(0, count)
    ]
    first = tasks[0]["data"]
    first["prompt"] = "  " + first["prompt"].replace(" ", "\n", 2) + "\n"
    first["answer1"] = first["answer1"].replace(" ", "  ", 3)
    gold = rows(EXAMPLE / "data" / "gold.jsonl")[0]
    tasks.append(
        {"data": {"prompt": gold["prompt"], "answer1": gold["text_a"], "answer2": gold["text_b"]}}
    )
    return tasks


def pairwise_tasks(count: int = 6) -> list[dict[str, Any]]:
    """The Pairwise classification template's `pairText1` / `pairText2`, no prompt."""
    return [{"data": {"pairText1": a, "pairText2": b}} for _, a, b in _pairs(40, count)]


def pairwise_result(name: str, selected: str, seed: int) -> list[dict[str, Any]]:
    """The result Label Studio's frontend posts for a `<Pairwise>` click (Pairwise.js:
    `createResult({}, {selected}, self, self.name)`: to_name is the control's own name)."""
    return [
        {
            "id": f"pw{seed:08d}",
            "from_name": name,
            "to_name": name,
            "type": "pairwise",
            "origin": "manual",
            "value": {"selected": selected},
        }
    ]
