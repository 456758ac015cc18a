"""The verl export's rules: one per spec setting, saying which verl keys it becomes.

Each rule returns a `Row`: the verl keys and values, and whether the mapping is
exact, differs in a stated way, is refused (an error unless the spec
acknowledges it) or is unused by the chosen method. The notes are what
MAPPING.md prints, so each states the difference or the reason in words.

The registry lives in `base`; the rules in `policy` (seed, method, KL, PPO, DPO) and
`compute` (compute, data sets, tracking) register themselves when this package is imported.
"""

from __future__ import annotations

from rlhfspec.compiler.targets.verl_rules import compute, policy
from rlhfspec.compiler.targets.verl_rules.base import (
    JOB_DIR,
    PREFIX_RULES,
    RULES,
    Row,
    Rule,
    Status,
    gpus,
    no_rule,
    ppo_block,
    rule,
    rule_for,
)

__all__ = [
    "JOB_DIR",
    "PREFIX_RULES",
    "RULES",
    "Row",
    "Rule",
    "Status",
    "compute",
    "gpus",
    "no_rule",
    "policy",
    "ppo_block",
    "rule",
    "rule_for",
]
