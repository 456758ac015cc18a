"""Which prompts an annotation batch, gold file or demonstration file shows, for the leak check.

Read loosely on purpose: this is a leak check, not the annotation reader, so a row that only
lacks other fields still has its prompt checked, and a Label Studio task counts whatever
happened to its annotations (cancelled or broken, its prompt was shown to someone).

A row names its prompt in one of three ways:

* its own `prompt_id` (our JSONL records, unblinded Label Studio tasks);
* through the batch's unblinding key: under the default `blind: true` the annotators' answers
  and the Label Studio tasks carry only opaque task, item and response ids, and the prompt ids
  are in `unblinding_key.json` (`tasks[task_id]`, `items[item_id]`, `responses[id]`);
* by text, for exports of Label Studio's stock templates (`label_studio_pairwise`), whose
  tasks hold the prompt and answer texts only (`annotation.stock.StockMatcher`).

Every prompt id a row names this way counts, so a key that disagrees with a row cannot hide a
holdout prompt.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.annotation.blinding import Unblinder

PromptsByText = Callable[[dict[str, Any]], list[str]]
"""A stock-template task's `data` -> the prompt ids its texts match (none: unreadable)."""


def _label_studio_rows(text: str, display: str) -> Iterator[dict[str, Any] | None]:
    """Each task's `data` with its `meta` underneath (our tasks keep `task_id` in both)."""
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunError(f"{display}: not a Label Studio JSON export: {exc.msg}") from None
    if not isinstance(tasks, list):
        raise RunError(f"{display}: a Label Studio export is a JSON list of tasks")
    for task in tasks:
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            yield None
            continue
        meta = task.get("meta")
        yield {**(meta if isinstance(meta, dict) else {}), **data}


def _jsonl_rows(text: str) -> Iterator[dict[str, Any] | None]:
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            yield None
            continue
        yield row if isinstance(row, dict) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _via_key(row: dict[str, Any], key: Unblinder) -> list[str]:
    """The prompt ids the key gives a row's task, item and response ids."""
    entries = [
        key.tasks.get(_text(row.get("task_id")) or ""),
        key.items.get(_text(row.get("item_id")) or ""),
        key.responses.get(_text(row.get("response_a")) or ""),
        key.responses.get(_text(row.get("response_b")) or ""),
    ]
    return [e["prompt_id"] for e in entries if e and _text(e.get("prompt_id"))]


def row_prompt_ids(
    row: dict[str, Any], key: Unblinder | None, by_text: PromptsByText | None
) -> list[str]:
    """Every prompt id one row names: its own, through the key, by its texts."""
    ids = [row["prompt_id"]] if _text(row.get("prompt_id")) else []
    if key is not None:
        ids += _via_key(row, key)
    if by_text is not None:
        ids += by_text(row)
    return sorted(set(ids))


def read_prompt_ids(
    path: Path,
    display: str,
    fmt: str,
    *,
    key: Unblinder | None = None,
    by_text: PromptsByText | None = None,
) -> tuple[list[str], int]:
    """The prompt ids a file names (one entry per row and prompt) and its unreadable rows."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{display}: cannot read: {exc}") from None
    rows = _jsonl_rows(text) if fmt == "jsonl" else _label_studio_rows(text, display)
    ids: list[str] = []
    bad = 0
    for row in rows:
        found = row_prompt_ids(row, key, by_text) if row is not None else []
        ids += found
        bad += not found
    return ids, bad
