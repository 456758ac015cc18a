"""The rule registry of the verl export: what a rule returns (`Row`), how rules register, and
how a setting finds its rule (exact name first, then a prefix)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["exact", "difference", "refused", "unused"]
JOB_DIR = "{job_dir}"


@dataclass
class Row:
    """One spec setting and what the export does with it."""

    setting: str
    value: Any
    status: Status
    keys: dict[str, Any]
    note: str
    acknowledged: str | None = None
    #: False for a refusal no acknowledgement can lift (the job would be another algorithm)
    acknowledgeable: bool = True


# ---------------------------------------------------------------------------------------------
# The rules: one per setting (or family), each returning its Row


Rule = Callable[[str, Any, dict[str, Any]], Row]
RULES: dict[str, Rule] = {}
PREFIX_RULES: dict[str, Rule] = {}


def rule(*settings: str) -> Callable[[Rule], Rule]:
    def register(func: Rule) -> Rule:
        for name in settings:
            RULES[name] = func
        return func

    return register


def _exact(setting: str, value: Any, keys: dict[str, Any], note: str) -> Row:
    return Row(setting, value, "exact", keys, note)


def ppo_block(s: dict[str, Any]) -> dict[str, Any]:
    ppo: dict[str, Any] = s["policy"].get("ppo", {})
    return ppo


def gpus(s: dict[str, Any]) -> int:
    return int(s["compute"]["num_processes"]) * int(s["export"]["verl"]["nnodes"])


def no_rule(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return Row(
        setting,
        value,
        "refused",
        {},
        "this version of the verl export has no mapping for it (a setting newer than the "
        "table in compiler/targets/verl.py). If acknowledged: not exported",
    )


def rule_for(setting: str) -> Rule | None:
    if setting in RULES:
        return RULES[setting]
    for prefix, func in PREFIX_RULES.items():
        if setting.startswith(prefix):
            return func
    return None
