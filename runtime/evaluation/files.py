"""The evaluation's two index files: the prompt sets and the per-checkpoint summary.

Both carry a `format` field like every JSON file rlhfspec writes (docs/artifacts.md).
Run directories written before they had one hold the bare shape (a set-name mapping,
a list of rows); the readers accept both, so an older run still evaluates, selects and
packages.
"""

from __future__ import annotations

import json
from typing import Any

from rlhfspec.common.errors import RunError

PROMPT_SETS = "eval/prompt_sets.json"
PROMPT_SETS_FORMAT = "rlhfspec.prompt_sets/1"
EVAL_SUMMARY = "eval/summary.json"
EVAL_SUMMARY_FORMAT = "rlhfspec.eval_summary/1"

#: set name -> rows of ``id``, ``text`` and, for a multi-turn prompt, ``messages``
PromptSets = dict[str, list[dict[str, Any]]]


def prompt_sets_text(sets: PromptSets) -> str:
    """eval/prompt_sets.json: set name to its prompts (id and text), in the sets' order."""
    doc = {"format": PROMPT_SETS_FORMAT, "sets": sets}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def read_prompt_sets(data: Any, where: str) -> PromptSets:
    """The sets of a parsed prompt_sets.json (or of the older bare mapping)."""
    if isinstance(data, dict) and "format" in data:
        if data["format"] != PROMPT_SETS_FORMAT or not isinstance(data.get("sets"), dict):
            raise RunError(f"{where}: not an rlhfspec prompt-sets file ({data['format']!r})")
        sets: PromptSets = data["sets"]
        return sets
    if not isinstance(data, dict):
        raise RunError(f"{where}: not an rlhfspec prompt-sets file")
    return data


def summary_text(rows: list[dict[str, Any]]) -> str:
    """eval/summary.json: one row per evaluated checkpoint, the start first."""
    return json.dumps({"format": EVAL_SUMMARY_FORMAT, "checkpoints": rows}, indent=2) + "\n"


def read_summary(data: Any, where: str) -> list[dict[str, Any]]:
    """The rows of a parsed eval/summary.json (or of the older bare list)."""
    if isinstance(data, dict):
        if data.get("format") != EVAL_SUMMARY_FORMAT or not isinstance(
            data.get("checkpoints"), list
        ):
            raise RunError(f"{where}: not an rlhfspec evaluation summary")
        rows: list[dict[str, Any]] = data["checkpoints"]
        return rows
    if not isinstance(data, list):
        raise RunError(f"{where}: not an rlhfspec evaluation summary")
    return data
