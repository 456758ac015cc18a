"""Which AI labels aggregation may use: none unless the agreement gate passed.

With the gate passed (or overridden, which lineage records), an AI label is
used for a pair no person labelled; where people did (the review sample, or
pairs they labelled anyway) their votes decide and the AI's is left out, so
a judge is never outvoted-by-itself into the training data nor allowed to
outvote the people it is measured against.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rlhfspec.runtime.annotation.judge.items import is_ai, pair_key
from rlhfspec.runtime.annotation.judge.review import GATE_NAME


def gate_state(qc_report: dict[str, Any], overrides: frozenset[str] = frozenset()) -> str:
    """`none` (no AI records), `passed`, `overridden` or `failed`."""
    section = (qc_report.get("metrics") or {}).get("ai_judge")
    if not section:
        return "none"
    if section["gate"]["passed"]:
        return "passed"
    return "overridden" if GATE_NAME in overrides else "failed"


def records_for_aggregation(
    records: list[dict[str, Any]], state: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records aggregation may use, and what was done with the AI labels (for lineage)."""
    ai = [r for r in records if is_ai(r) and not r["gold"]]
    if not ai:
        return records, {}
    humans = {pair_key(r) for r in records if not is_ai(r)}
    use = state in ("passed", "overridden")
    kept = [r for r in records if not is_ai(r) or (use and pair_key(r) not in humans)]
    used = [r for r in kept if is_ai(r) and not r["gold"]]
    judges: dict[str, Any] = {}
    for record in ai:
        info = judges.setdefault(
            record["annotator"], {"prompt_sha256": set(), "labels": 0, "used": 0}
        )
        info["prompt_sha256"].add((record.get("judge") or {}).get("prompt_sha256"))
        info["labels"] += 1
    for name, count in Counter(r["annotator"] for r in used).items():
        judges[name]["used"] = count
    return kept, {
        "gate": state,
        "ai_labels": len(ai),
        "ai_labels_used": len(used),
        "ai_labels_left_to_humans": sum(pair_key(r) in humans for r in ai),
        "judges": {
            name: {**info, "prompt_sha256": sorted(str(p) for p in info["prompt_sha256"])}
            for name, info in sorted(judges.items())
        },
    }
